//! The SQLite backend: one database file in WAL mode, `synchronous=FULL`, 32 MiB of page
//! cache per pooled connection.
//!
//! Write batches go through [`GroupCommit`]: batches that arrive while a transaction is
//! being written are committed together in the next one (each under its own savepoint,
//! so each stays atomic and fails alone), one fsync for the group. Writers take an
//! in-process mutex and then `BEGIN IMMEDIATE`, so they queue fairly instead of spinning
//! on SQLITE_BUSY; readers run concurrently on the other pooled connections.
//!
//! The store holds secrets (every server's agent secret), so its file is created mode
//! 0600 before SQLite opens it, and SQLite gives the `-wal` and `-shm` files it creates
//! the database file's mode. Files an older version left readable by others are
//! tightened at open, with a warning naming them.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqlitePool};
use tokio::sync::Mutex;

use crate::group_commit::GroupCommit;
use crate::migrations::{LEDGER_SQLITE, SQLITE};
use crate::ops::{self, impl_exec};
use crate::sql::{Dialect, create_index};
use crate::{BucketDef, Filter, ListQuery, Object, Op, RawObject, Result, Store, StoreError};

impl_exec!(SqliteConnection);

pub(crate) struct SqliteStore {
    pool: SqlitePool,
    /// Held while writing: by each group of batches, and by DDL.
    writer: Arc<Mutex<()>>,
    pub(crate) group: GroupCommit,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self> {
        if path.as_os_str().is_empty() {
            return Err(StoreError::Config("sqlite: needs a file path".into()));
        }
        private_files(path)?;
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| StoreError::Config(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // 32 MiB of page cache per connection (SQLite's default is 2 MiB): a big
            // cloud's lists and lookups read from memory, not through read(2) per page.
            .pragma("cache_size", "-32768")
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).min_connections(1).connect_with(opts).await?;
        let writer = Arc::new(Mutex::new(()));
        let store = Self { group: GroupCommit::new(pool.clone(), writer.clone()), pool, writer };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let _w = self.writer.lock().await;
        let mut conn = self.pool.acquire().await?;
        sqlx::raw_sql(LEDGER_SQLITE).execute(&mut *conn).await?;
        for m in SQLITE {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            if ops::migrate_one(&mut *tx, Dialect::Sqlite, m).await? {
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// The database file and the files SQLite keeps beside it.
pub(crate) fn store_files(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_os_string();
        name.push(suffix);
        out.push(PathBuf::from(name));
    }
    out
}

/// Creates the database file mode 0600 if it is missing (SQLite then creates `-wal` and
/// `-shm` with the same mode), and takes group and other permissions off any of the
/// store's files that has them.
fn private_files(path: &Path) -> Result<()> {
    let io = |what: &str, p: &Path, e: std::io::Error| StoreError::Config(format!("sqlite: {what} {}: {e}", p.display()));
    match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating", path, e)),
    }
    for p in store_files(path) {
        let mode = match fs::metadata(&p) {
            Ok(m) => m.permissions().mode() & 0o7777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading the mode of", &p, e)),
        };
        if mode & 0o077 != 0 {
            let want = mode & 0o700;
            fs::set_permissions(&p, fs::Permissions::from_mode(want)).map_err(|e| io("setting the mode of", &p, e))?;
            tracing::warn!(
                path = %p.display(),
                was = format!("{mode:o}"),
                now = format!("{want:o}"),
                "the store file was readable by other users (it holds secrets); tightened its mode"
            );
        }
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn ensure_bucket(&self, def: &BucketDef) -> Result<()> {
        let _w = self.writer.lock().await;
        for idx in def.indexes {
            let ddl = create_index(Dialect::Sqlite, def.name, idx)?;
            sqlx::query(&ddl).execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        let mut conn = self.pool.acquire().await?;
        ops::get(&mut *conn, Dialect::Sqlite, bucket, key).await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Vec<i64>> {
        self.group.batch(ops).await
    }

    async fn list(&self, bucket: &str, query: &ListQuery) -> Result<Vec<Object>> {
        let mut conn = self.pool.acquire().await?;
        ops::list(&mut *conn, Dialect::Sqlite, bucket, query).await
    }

    async fn list_raw(&self, bucket: &str, query: &ListQuery) -> Result<Vec<RawObject>> {
        let mut conn = self.pool.acquire().await?;
        ops::list_raw(&mut *conn, Dialect::Sqlite, bucket, query).await
    }

    async fn count(&self, bucket: &str, filter: &Filter) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        ops::count(&mut *conn, Dialect::Sqlite, bucket, filter).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    async fn write_some(store: &SqliteStore) {
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS t (x TEXT); INSERT INTO t VALUES ('a secret');").execute(&store.pool).await.unwrap();
    }

    #[tokio::test]
    async fn a_new_store_and_its_wal_are_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nereid.db");
        let store = SqliteStore::open(&path).await.unwrap();
        write_some(&store).await;
        let files = store_files(&path);
        assert!(files[1].exists() && files[2].exists(), "WAL mode keeps -wal and -shm beside the database");
        for f in &files[..3] {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        store.close().await;
    }

    #[tokio::test]
    async fn an_old_store_left_readable_is_tightened_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nereid.db");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            write_some(&store).await;
            store.close().await;
        }
        let files = store_files(&path);
        for f in &files[..3] {
            if !f.exists() {
                fs::write(f, b"").unwrap_or(());
            }
        }
        for f in &files[..3] {
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        write_some(&store).await;
        for f in &files[..3] {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        store.close().await;
    }
}
