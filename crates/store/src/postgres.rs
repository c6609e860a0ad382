//! The PostgreSQL backend: for several headnodes on one database, and the engine's HA.
//!
//! Batches run in READ COMMITTED transactions; every conditional write is a single
//! statement whose `WHERE generation = …` is re-checked on the latest row version, and
//! checks lock their row (`FOR UPDATE`) until commit, so a batch's conditions all hold
//! at its commit. A batch is one statement, one round trip ([`crate::pg_batch`]). `?schema=NAME` in the URL keeps Nereid's tables in their own schema.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::migrations::{LEDGER_POSTGRES, POSTGRES};
use crate::ops::{self, impl_exec};
use crate::pg_batch;
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
    // The batch function, where the search path creates things (this store's schema).
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(DDL_LOCK).execute(&mut *tx).await?;
    let here: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM pg_proc WHERE proname = $1 AND pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
    )
    .bind(pg_batch::FUNCTION)
    .fetch_optional(&mut *tx)
    .await?;
    if here.is_none() {
        sqlx::raw_sql(pg_batch::CREATE).execute(&mut *tx).await?;
        tx.commit().await?;
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
        if pg_batch::applies(&ops) {
            let doc = pg_batch::document(&ops)?;
            let mut conn = self.pool.acquire().await?;
            return sqlx::query_scalar::<_, Vec<i64>>("SELECT nereid_batch_v1($1::jsonb, $2)")
                .bind(doc)
                .bind(crate::now_ms())
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| pg_batch::conflict(&ops, e));
        }
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

    /// A sorted page reads its rows back by key, one lookup each, even when the
    /// statistics were taken while the bucket held one row (an image, say) and a thousand
    /// were added since: as a plain join, PostgreSQL planned a nested loop over the whole
    /// bucket per row (15 times slower at 1,000 rows, and quadratic).
    #[tokio::test]
    async fn a_sorted_page_is_read_by_key_whatever_the_statistics_say() {
        use crate::{BucketDef, Cond, Index, Kind, ListQuery, Op, Path, Store, sql::Dialect};
        let url = crate::testing::fresh_pg_url().await.unwrap_or_else(|e| panic!("{e}"));
        let store = PgStore::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
        const IMAGES: BucketDef = BucketDef {
            name: "images",
            indexes: &[Index { path: &["state"], kind: Kind::Text }, Index { path: &["published_at"], kind: Kind::Text }],
        };
        store.ensure_bucket(&IMAGES).await.unwrap_or_else(|e| panic!("{e}"));
        store.ensure_bucket(&BucketDef { name: "vms", indexes: &[] }).await.unwrap_or_else(|e| panic!("{e}"));
        let image = |i: usize| serde_json::json!({"state": "active", "published_at": format!("t{:04}", (i * 7919) % 1000)});
        let vms = (0..5000).map(|i| Op::put("vms", format!("v{i:05}"), serde_json::json!({"state": "running"}), Cond::Absent));
        store.batch(vms.collect()).await.unwrap_or_else(|e| panic!("{e}"));
        store.put("images", "i0000", image(0), Cond::Absent).await.unwrap_or_else(|e| panic!("{e}"));
        sqlx::raw_sql("ANALYZE objects").execute(&store.pool).await.unwrap_or_else(|e| panic!("{e}"));
        let more = (1..1000).map(|i| Op::put("images", format!("i{i:04}"), image(i), Cond::Absent));
        store.batch(more.collect()).await.unwrap_or_else(|e| panic!("{e}"));

        let q = ListQuery::filter(crate::Filter::eq("state", "active")).sort(Path::field("published_at"), Kind::Text, false).page(1000, 0);
        let s = crate::ops::list_sql(Dialect::Postgres, "images", &q).unwrap_or_else(|e| panic!("{e}"));
        let text = format!("EXPLAIN (ANALYZE, COSTS OFF) {}", s.text);
        let rows: Vec<(String,)> =
            crate::ops::bind_all!(sqlx::query_as(&text), s).fetch_all(&store.pool).await.unwrap_or_else(|e| panic!("{e}"));
        let plan = rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n");
        assert!(!plan.contains("Join Filter"), "rows matched by a filter over the bucket, not looked up by key:\n{plan}");
        assert!(plan.contains("key = objects.key") || plan.contains("key = p.k"), "no lookup by key:\n{plan}");
        // And the page is the bucket's, in order.
        let got = store.list_raw("images", &q).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len(), 1000);
        let published: Vec<String> = got
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(&r.json).ok().and_then(|v| v["published_at"].as_str().map(str::to_string)))
            .map(Option::unwrap_or_default)
            .collect();
        assert!(published.windows(2).all(|w| w[0] < w[1]), "sorted by published_at");
        store.close().await;
    }
}
