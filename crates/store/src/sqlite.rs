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
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use tokio::sync::Mutex;

use crate::group_commit::GroupCommit;
use crate::migrations::{LEDGER_SQLITE, SQLITE};
use crate::ops::{self, impl_exec};
use crate::sql::Dialect;
use crate::sqlite_conns::Conns;
use crate::{BucketDef, Filter, ListQuery, Object, Op, RawObject, Result, Store, StoreError};

impl_exec!(SqliteConnection);

pub(crate) struct SqliteStore {
    conns: Arc<Conns>,
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
        // Four connections, without sqlx's pool and its ping on every return (see
        // `sqlite_conns`).
        let conns = Conns::new(opts, 4);
        let writer = Arc::new(Mutex::new(()));
        let store = Self { group: GroupCommit::new(conns.clone(), writer.clone()), conns, writer };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        let _w = self.writer.lock().await;
        let mut conn = self.conns.acquire().await?;
        sqlx::raw_sql(LEDGER_SQLITE).execute(&mut *conn).await?;
        for m in SQLITE {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            if ops::migrate_one(&mut *tx, Dialect::Sqlite, m).await? {
                tx.commit().await?;
            }
        }
        // Creates sqlite_stat1 if this database has none yet, then the table's own rows
        // of the planner statistics (each field index gets its row with the index).
        sqlx::query("ANALYZE sqlite_schema").execute(&mut *conn).await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        for (idx, stat) in TABLE_STATS {
            set_planner_stat(&mut tx, idx, stat).await?;
        }
        tx.commit().await?;
        conn.release();
        Ok(())
    }
}

/// The statistics SQLite's planner reads for the objects table and its indexes: fixed
/// numbers, never measured. Measured ones (ANALYZE) mislead it here: they are gathered
/// once, while buckets are still empty or small, and they are averages, so the index of a
/// field with two values (a job's `execution`: thousands `succeeded`, a few `running`)
/// looks useless for finding the few. Without any, SQLite guesses that `bucket = ?`
/// selects ten rows, so it sorts a whole bucket rather than walk a sort index for one
/// page. These say: the bucket asked for is large (as large as the table: a bucket's
/// partial index then costs no more to walk than the bucket does to read) and a field's
/// value picks few of its rows (10), so filters use their field's index and a sorted page
/// walks its sort field's index. (Smaller buckets in these numbers make SQLite 3.46
/// prefer reading and sorting the bucket again.) `None` is the table's own row.
const TABLE_STATS: [(Option<&str>, &str); 2] = [(None, "100000"), (Some("sqlite_autoindex_objects_1"), "100000 100000 1")];

/// A field index's row of the planner statistics (see [`TABLE_STATS`]).
const INDEX_STAT: &str = "100000 10 1";

/// Writes one row of the planner statistics: `idx` is `None` for the table's own row.
async fn set_planner_stat(c: &mut SqliteConnection, idx: Option<&str>, stat: &str) -> Result<()> {
    sqlx::query("DELETE FROM sqlite_stat1 WHERE tbl = 'objects' AND idx IS ?").bind(idx).execute(&mut *c).await?;
    sqlx::query("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('objects', ?, ?)").bind(idx).bind(stat).execute(&mut *c).await?;
    Ok(())
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

/// Runs the read `$op` on a pooled connection, which goes back to the pool unless the
/// read broke it (see [`Conn::release_after`](crate::sqlite_conns::Conn::release_after)).
macro_rules! read {
    ($self:ident, $op:path, $($arg:expr),+) => {{
        let mut conn = $self.conns.acquire().await?;
        let r = $op(&mut *conn, Dialect::Sqlite, $($arg),+).await;
        conn.release_after(&r);
        r
    }};
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) {
        self.conns.close().await;
    }

    async fn ensure_bucket(&self, def: &BucketDef) -> Result<()> {
        let _w = self.writer.lock().await;
        let mut conn = self.conns.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let wanted = ops::ensure_indexes(&mut *tx, Dialect::Sqlite, def).await?;
        for idx in &wanted {
            set_planner_stat(&mut tx, Some(idx), INDEX_STAT).await?;
        }
        tx.commit().await?;
        // This connection reads them now; the others when they next load the schema (at
        // open, or after the index changes above).
        sqlx::query("ANALYZE sqlite_schema").execute(&mut *conn).await?;
        conn.release();
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        read!(self, ops::get, bucket, key)
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Vec<i64>> {
        self.group.batch(ops).await
    }

    async fn list(&self, bucket: &str, query: &ListQuery) -> Result<Vec<Object>> {
        read!(self, ops::list, bucket, query)
    }

    async fn list_raw(&self, bucket: &str, query: &ListQuery) -> Result<Vec<RawObject>> {
        read!(self, ops::list_raw, bucket, query)
    }

    async fn list_versions(&self, bucket: &str, query: &ListQuery) -> Result<Vec<crate::RowVersion>> {
        read!(self, ops::list_versions, bucket, query)
    }

    async fn get_raw_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<RawObject>> {
        read!(self, ops::get_raw_many, bucket, keys)
    }

    async fn count(&self, bucket: &str, filter: &Filter) -> Result<i64> {
        read!(self, ops::count, bucket, filter)
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
        let mut c = store.conns.acquire().await.unwrap();
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS t (x TEXT); INSERT INTO t VALUES ('a secret');").execute(&mut *c).await.unwrap();
        c.release();
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

    /// The plans SQLite chooses with the statistics [`planner_stats`] gives it: a sorted
    /// page walks its sort field's index (no sort of the whole bucket), a filter on a few
    /// values of a field uses that field's index, and an index of an older shape is gone.
    #[tokio::test]
    async fn sorted_pages_walk_their_index_and_filters_use_theirs() {
        use crate::{Filter, Index, Kind, ListQuery, Path};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nereid.db");
        let store = SqliteStore::open(&path).await.unwrap();
        const OLD: BucketDef = BucketDef { name: "jobs", indexes: &[Index { path: &["gone"], kind: Kind::Text }] };
        store.ensure_bucket(&OLD).await.unwrap();
        const JOBS: BucketDef = BucketDef {
            name: "jobs",
            indexes: &[Index { path: &["execution"], kind: Kind::Text }, Index { path: &["created_at"], kind: Kind::Text }],
        };
        store.ensure_bucket(&JOBS).await.unwrap();
        let ops: Vec<Op> = (0..3000)
            .map(|i| {
                let state = if i < 3 { "running" } else { "succeeded" };
                Op::put(
                    "jobs",
                    format!("j{i:05}"),
                    serde_json::json!({"execution": state, "created_at": format!("t{:05}", (i * 7919) % 3000)}),
                    crate::Cond::Absent,
                )
            })
            .collect();
        store.batch(ops).await.unwrap();
        let plan = |q: ListQuery| {
            let conns = store.conns.clone();
            async move {
                let mut c = conns.acquire().await.unwrap();
                let s = crate::ops::list_sql(Dialect::Sqlite, "jobs", &q).unwrap();
                let text = format!("EXPLAIN QUERY PLAN {}", s.text);
                let explain = crate::ops::bind_all!(sqlx::query_as::<_, (i64, i64, i64, String)>(&text), s);
                let rows = explain.fetch_all(&mut *c).await.unwrap();
                c.release();
                rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
            }
        };
        let created = || Path::field("created_at");
        let page = plan(ListQuery::all().sort(created(), Kind::Text, false).page(100, 0)).await;
        assert!(page.contains("SCAN objects USING INDEX ix_jobs_created_at"), "{page}");
        let filtered =
            ListQuery::filter(Filter::Ne(Path::field("execution"), "queued".into())).sort(created(), Kind::Text, true).page(100, 0);
        let page = plan(filtered).await;
        assert!(page.contains("USING INDEX ix_jobs_created_at"), "{page}");
        let few = plan(ListQuery::filter(Filter::Or(vec![Filter::eq("execution", "queued"), Filter::eq("execution", "running")]))).await;
        assert!(few.contains("USING INDEX ix_jobs_execution"), "{few}");
        let mut c = store.conns.acquire().await.unwrap();
        let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_jobs_%'")
            .fetch_all(&mut *c)
            .await
            .unwrap();
        c.release();
        assert_eq!(names.len(), 2, "the index of the older definition is dropped: {names:?}");
        // The answers are those of the plans.
        let got = store.list_raw("jobs", &ListQuery::all().sort(created(), Kind::Text, false).page(3, 0)).await.unwrap();
        assert_eq!(got.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["j00000", "j01679", "j00358"]);
        store.close().await;
    }
}
