//! The PostgreSQL backend: for several headnodes on one database, and the engine's HA.
//!
//! Batches run in READ COMMITTED transactions; every conditional write is a single
//! statement whose `WHERE generation = …` is re-checked on the latest row version, and
//! checks lock their row (`FOR UPDATE`) until commit, so a batch's conditions all hold
//! at its commit. `?schema=NAME` in the URL keeps Nereid's tables in their own schema.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::migrations::{LEDGER_POSTGRES, POSTGRES};
use crate::ops::{self, impl_exec};
use crate::sql::Dialect;
use crate::{BucketDef, Filter, ListQuery, Object, Op, RawObject, Result, Store, StoreError};

impl_exec!(PgConnection);

/// Advisory lock key serialising migrations and index creation across headnodes.
const DDL_LOCK: i64 = 0x6e65_7265_6964; // "nereid"

pub(crate) struct PgStore {
    pub(crate) pool: PgPool,
    /// Vacuums the table when PostgreSQL's autovacuum does not ([`crate::pg_vacuum`]).
    vacuum: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.vacuum.abort();
    }
}

/// Splits `?schema=NAME` off a URL; checks the name.
pub(crate) fn split_schema(url: &str) -> Result<(String, Option<String>)> {
    let mut parsed = url::Url::parse(url).map_err(|e| StoreError::Config(format!("{url:?}: {e}")))?;
    let mut schema = None;
    let rest: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == "schema" {
                schema = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if let Some(s) = &schema
        && (s.is_empty() || s.len() > 63 || !s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'))
    {
        return Err(StoreError::Config(format!("schema {s:?} must be 1-63 lowercase letters, digits and _")));
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((parsed.to_string(), schema))
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self> {
        let (base, schema) = split_schema(url)?;
        let mut opts = PgConnectOptions::from_str(&base).map_err(|e| StoreError::Config(e.to_string()))?;
        if let Some(schema) = &schema {
            let mut conn = PgConnection::connect_with(&opts).await?;
            sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).execute(&mut conn).await?;
            conn.close().await?;
            opts = opts.options([("search_path", schema.as_str())]);
        }
        // A database that went away answers requests with an error within seconds (the
        // headnode's 503) instead of holding them; the pool reconnects by itself once it
        // is back.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(true)
            .connect_with(opts)
            .await?;
        migrate(&pool).await?;
        let vacuum = tokio::spawn(crate::pg_vacuum::run(pool.clone()));
        Ok(Self { pool, vacuum })
    }
}

/// Applies the migrations not yet applied, one transaction each.
async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(DDL_LOCK).execute(&mut *tx).await?;
    sqlx::raw_sql(LEDGER_POSTGRES).execute(&mut *tx).await?;
    tx.commit().await?;
    for m in POSTGRES {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(DDL_LOCK).execute(&mut *tx).await?;
        if ops::migrate_one(&mut *tx, Dialect::Postgres, m).await? {
            tx.commit().await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn close(&self) {
        self.vacuum.abort();
        self.pool.close().await;
    }

    async fn ensure_bucket(&self, def: &BucketDef) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(DDL_LOCK).execute(&mut *tx).await?;
        ops::ensure_indexes(&mut *tx, Dialect::Postgres, def).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>> {
        let mut conn = self.pool.acquire().await?;
        ops::get(&mut *conn, Dialect::Postgres, bucket, key).await
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let gens = ops::batch(&mut *tx, Dialect::Postgres, &ops, crate::now_ms()).await?;
        tx.commit().await?;
        Ok(gens)
    }

    async fn list(&self, bucket: &str, query: &ListQuery) -> Result<Vec<Object>> {
        let mut conn = self.pool.acquire().await?;
        ops::list(&mut *conn, Dialect::Postgres, bucket, query).await
    }

    async fn list_raw(&self, bucket: &str, query: &ListQuery) -> Result<Vec<RawObject>> {
        let mut conn = self.pool.acquire().await?;
        ops::list_raw(&mut *conn, Dialect::Postgres, bucket, query).await
    }

    async fn list_versions(&self, bucket: &str, query: &ListQuery) -> Result<Vec<crate::RowVersion>> {
        let mut conn = self.pool.acquire().await?;
        ops::list_versions(&mut *conn, Dialect::Postgres, bucket, query).await
    }

    async fn get_raw_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<RawObject>> {
        let mut conn = self.pool.acquire().await?;
        ops::get_raw_many(&mut *conn, Dialect::Postgres, bucket, keys).await
    }

    async fn count(&self, bucket: &str, filter: &Filter) -> Result<i64> {
        let mut conn = self.pool.acquire().await?;
        ops::count(&mut *conn, Dialect::Postgres, bucket, filter).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_split_off_the_url() {
        let (u, s) = split_schema("postgres://postgres@127.0.0.1:5432/test?schema=n1&sslmode=disable").unwrap();
        assert_eq!(u, "postgres://postgres@127.0.0.1:5432/test?sslmode=disable");
        assert_eq!(s.as_deref(), Some("n1"));
        assert!(split_schema("postgres://x/y?schema=Bad;drop").is_err());
        assert_eq!(split_schema("postgres://x/y").unwrap(), ("postgres://x/y".into(), None));
    }
}
