//! The SQLite backend: one database file in WAL mode, `synchronous=FULL`.
//!
//! Writers take an in-process mutex and then `BEGIN IMMEDIATE`, so concurrent batches
//! queue fairly instead of spinning on SQLITE_BUSY; readers run concurrently on the
//! other pooled connections.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqlitePool};
use tokio::sync::Mutex;

use crate::migrations::{LEDGER_SQLITE, SQLITE};
use crate::ops::{self, impl_exec};
use crate::sql::{Dialect, create_index};
use crate::{BucketDef, Filter, ListQuery, Object, Op, Result, Store, StoreError};

impl_exec!(SqliteConnection);

pub(crate) struct SqliteStore {
    pool: SqlitePool,
    writer: Mutex<()>,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self> {
        if path.as_os_str().is_empty() {
            return Err(StoreError::Config("sqlite: needs a file path".into()));
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| StoreError::Config(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).min_connections(1).connect_with(opts).await?;
        let store = Self { pool, writer: Mutex::new(()) };
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
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let gens = ops::batch(&mut *tx, Dialect::Sqlite, &ops, crate::now_ms()).await?;
        tx.commit().await?;
        Ok(gens)
    }

    async fn list(&self, bucket: &str, query: &ListQuery) -> Result<Vec<Object>> {
        let mut conn = self.pool.acquire().await?;
        ops::list(&mut *conn, Dialect::Sqlite, bucket, query).await
    }

    async fn count(&self, bucket: &str, filter: &Filter) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        ops::count(&mut *conn, Dialect::Sqlite, bucket, filter).await
    }
}
