//! The state store: a Moray-shaped store of buckets of JSON objects.
//!
//! Every object lives under `(bucket, key)` with a JSON value, a *generation* that
//! starts at 1 and grows by one on each write, and the time of its last write. Writes
//! can be conditional ([`Cond`]): a write whose expected generation is stale fails with
//! [`StoreError::Conflict`] and changes nothing. [`Store::batch`] applies several
//! conditional writes (and pure checks) in one transaction: all land or none do.
//! Listing takes a [`Filter`] over fields of the JSON value, a sort, and a page.
//!
//! Two backends implement [`Store`], chosen by URL in [`open`]:
//! - `sqlite:PATH`: the embedded default, one file in WAL mode with `synchronous=FULL`
//!   (an acknowledged write survives a crash of the process or the machine). Writes are
//!   serialised in-process, concurrent batches committed together (one fsync per group,
//!   each batch still atomic on its own); one headnode process owns the file.
//! - `postgres://…[?schema=NAME]`: for several headnodes and the engine's own HA.
//!
//! Schema changes are versioned migrations ([`migrations`]) applied at open. Buckets
//! declare the fields they query by ([`BucketDef`]); [`Store::ensure_bucket`] creates
//! expression indexes for them. Filters may name any field; indexed ones are fast.

use async_trait::async_trait;
use serde_json::Value;

pub mod filter;
mod group_commit;
pub mod migrations;
mod ops;
mod pg_batch;
mod pg_vacuum;
mod postgres;
mod sql;
mod sqlite;
mod sqlite_conns;
pub mod testing;

pub use filter::{Filter, Path};

/// One stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: String,
    pub value: Value,
    /// 1 after the first write, +1 on each later one.
    pub generation: i64,
    /// Time of the last write, ms since the epoch.
    pub mtime: i64,
}

/// One stored object with its value as the JSON text the store holds, for lists that
/// decode straight into their own types (no [`Value`] tree in between).
#[derive(Debug, Clone, PartialEq)]
pub struct RawObject {
    pub key: String,
    /// The value's JSON text (compact on PostgreSQL, as written on SQLite).
    pub json: String,
    pub generation: i64,
    pub mtime: i64,
}

/// Which write of an object a listed row is, without its value: what a cache of
/// renderings compares ([`Store::list_versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowVersion {
    pub key: String,
    pub generation: i64,
    pub mtime: i64,
    /// The stored value's size in bytes as the backend keeps it (its text on SQLite, its
    /// `jsonb` datum on PostgreSQL): comparable only with the same backend's.
    pub size: i64,
}

/// The condition a write or check needs to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Always holds (blind upsert / idempotent delete).
    Any,
    /// The object must not exist (create).
    Absent,
    /// The object must exist.
    Exists,
    /// The object must exist at exactly this generation.
    Generation(i64),
}

impl std::fmt::Display for Cond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cond::Any => write!(f, "any"),
            Cond::Absent => write!(f, "absent"),
            Cond::Exists => write!(f, "present"),
            Cond::Generation(g) => write!(f, "at generation {g}"),
        }
    }
}

/// One step of a [`Store::batch`].
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Put {
        bucket: String,
        key: String,
        value: Value,
        cond: Cond,
    },
    Delete {
        bucket: String,
        key: String,
        cond: Cond,
    },
    /// Writes nothing; fails the batch unless `cond` holds when it commits.
    Check {
        bucket: String,
        key: String,
        cond: Cond,
    },
    /// Overwrites the object if it exists, whatever its generation; an absent one stays
    /// absent and the op answers generation 0 instead of failing the batch. For soft
    /// state written often by many writers (servers' liveness): consecutive refreshes of
    /// one bucket are written by one statement.
    Refresh {
        bucket: String,
        key: String,
        value: Value,
    },
}

impl Op {
    pub fn put(bucket: &str, key: impl Into<String>, value: Value, cond: Cond) -> Self {
        Op::Put { bucket: bucket.into(), key: key.into(), value, cond }
    }
    pub fn delete(bucket: &str, key: impl Into<String>, cond: Cond) -> Self {
        Op::Delete { bucket: bucket.into(), key: key.into(), cond }
    }
    pub fn check(bucket: &str, key: impl Into<String>, cond: Cond) -> Self {
        Op::Check { bucket: bucket.into(), key: key.into(), cond }
    }
    pub fn refresh(bucket: &str, key: impl Into<String>, value: Value) -> Self {
        Op::Refresh { bucket: bucket.into(), key: key.into(), value }
    }
    pub(crate) fn target(&self) -> (&str, &str, Cond) {
        match self {
            Op::Put { bucket, key, cond, .. } | Op::Delete { bucket, key, cond } | Op::Check { bucket, key, cond } => (bucket, key, *cond),
            Op::Refresh { bucket, key, .. } => (bucket, key, Cond::Exists),
        }
    }
}

/// How a sort or index treats a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Strings, compared byte-wise.
    Text,
    /// Numbers (and booleans), compared numerically.
    Number,
}

/// One sort key.
#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    pub path: Path,
    pub kind: Kind,
    pub desc: bool,
}

/// What [`Store::list`] returns: filter, order, page.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: Filter,
    /// Applied in order, then by key (ascending) so pages are stable.
    pub sort: Vec<Sort>,
    pub limit: Option<i64>,
    pub offset: i64,
}

impl ListQuery {
    /// Everything matching `filter`, by key.
    pub fn filter(filter: Filter) -> Self {
        Self { filter, sort: Vec::new(), limit: None, offset: 0 }
    }
    pub fn all() -> Self {
        Self::filter(Filter::True)
    }
    pub fn sort(mut self, path: Path, kind: Kind, desc: bool) -> Self {
        self.sort.push(Sort { path, kind, desc });
        self
    }
    pub fn page(mut self, limit: i64, offset: i64) -> Self {
        self.limit = Some(limit);
        self.offset = offset;
        self
    }
}

/// A field a bucket is queried by.
#[derive(Debug, Clone, Copy)]
pub struct Index {
    pub path: &'static [&'static str],
    pub kind: Kind,
}

/// A bucket and the fields it is indexed on.
#[derive(Debug, Clone, Copy)]
pub struct BucketDef {
    pub name: &'static str,
    pub indexes: &'static [Index],
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A condition did not hold; nothing in the batch was written.
    #[error("{bucket}/{key} changed: expected it {expected}, found {}", found.map(|g| format!("at generation {g}")).unwrap_or_else(|| "absent".into()))]
    Conflict { bucket: String, key: String, expected: Cond, found: Option<i64>, op_index: usize },
    #[error("invalid filter: {0}")]
    InvalidFilter(String),
    #[error("invalid store URL: {0}")]
    Config(String),
    #[error("stored value of {bucket}/{key} is not JSON: {source}")]
    Corrupt { bucket: String, key: String, source: serde_json::Error },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration { version: i64, name: &'static str, source: sqlx::Error },
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store. Both backends pass the same conformance suite (`tests/conformance.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Creates the indexes a bucket declares (idempotent).
    async fn ensure_bucket(&self, def: &BucketDef) -> Result<()>;
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Object>>;
    /// Applies all ops in one transaction; returns the new generation of each put (0 for others).
    async fn batch(&self, ops: Vec<Op>) -> Result<Vec<i64>>;
    async fn list(&self, bucket: &str, query: &ListQuery) -> Result<Vec<Object>>;
    async fn count(&self, bucket: &str, filter: &Filter) -> Result<i64>;

    /// [`list`](Self::list), each value left as its JSON text. Both backends answer it
    /// without building a [`Value`]; this default (for wrappers) re-serializes.
    async fn list_raw(&self, bucket: &str, query: &ListQuery) -> Result<Vec<RawObject>> {
        Ok(self
            .list(bucket, query)
            .await?
            .into_iter()
            .map(|o| RawObject { json: o.value.to_string(), key: o.key, generation: o.generation, mtime: o.mtime })
            .collect())
    }

    /// What [`list_raw`](Self::list_raw) would answer, in the same order, as versions
    /// only: no value is read. This default (for wrappers) reads them.
    async fn list_versions(&self, bucket: &str, query: &ListQuery) -> Result<Vec<RowVersion>> {
        Ok(self
            .list_raw(bucket, query)
            .await?
            .into_iter()
            .map(|o| RowVersion { size: o.json.len() as i64, key: o.key, generation: o.generation, mtime: o.mtime })
            .collect())
    }

    /// The objects of `bucket` with these keys, as text, in no particular order (absent
    /// keys are left out). This default (for wrappers) reads them one by one.
    async fn get_raw_many(&self, bucket: &str, keys: &[String]) -> Result<Vec<RawObject>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(o) = self.get(bucket, k).await? {
                out.push(RawObject { json: o.value.to_string(), key: o.key, generation: o.generation, mtime: o.mtime });
            }
        }
        Ok(out)
    }

    /// Closes the connections (a headnode halting in-process, so another can open the
    /// same store); the store answers errors afterwards.
    async fn close(&self) {}

    /// Writes one object; returns its new generation.
    async fn put(&self, bucket: &str, key: &str, value: Value, cond: Cond) -> Result<i64> {
        let gens = self.batch(vec![Op::put(bucket, key, value, cond)]).await?;
        Ok(gens.first().copied().unwrap_or(0))
    }
    /// Deletes one object (with `Cond::Any`, deleting a missing object is not an error).
    async fn delete(&self, bucket: &str, key: &str, cond: Cond) -> Result<()> {
        self.batch(vec![Op::delete(bucket, key, cond)]).await.map(|_| ())
    }
}

/// Opens the store a URL names and applies pending migrations.
///
/// `sqlite:PATH` / `sqlite://PATH` (created if missing) or `postgres://…` / `postgresql://…`
/// with an optional `schema=NAME` query parameter (created if missing).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(std::path::Path::new(path)).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(postgres::PgStore::open(url).await?))
    } else {
        Err(StoreError::Config(format!("{url:?}: expected sqlite:PATH or postgres://USER@HOST/DB")))
    }
}

/// Milliseconds since the epoch, the `mtime` of writes.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
