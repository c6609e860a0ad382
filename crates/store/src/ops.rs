//! The store operations, written once for both backends.
//!
//! A backend only knows how to run a [`Sql`] statement on one of its connections
//! ([`Exec`]); everything else — the statements for conditional puts and deletes, batch
//! semantics, conflict reporting, listing — lives here, so SQLite and PostgreSQL cannot
//! drift apart.

use async_trait::async_trait;
use serde_json::Value;

use crate::sql::{Dialect, Param, Sql, bucket_literal, create_index, field_indexes_query, stale_indexes};
use crate::{Cond, Filter, ListQuery, Object, Op, RawObject, Result, StoreError};

/// A raw object row: key, JSON text, generation, mtime.
pub(crate) type Row = (String, String, i64, i64);

/// Runs statements on one backend connection (or transaction).
#[async_trait]
pub(crate) trait Exec: Send {
    /// Rows of (key, value, generation, mtime).
    async fn rows(&mut self, sql: &Sql) -> Result<Vec<Row>, sqlx::Error>;
    /// The first column of the first row, if any, as an integer.
    async fn scalar(&mut self, sql: &Sql) -> Result<Option<i64>, sqlx::Error>;
    /// Rows affected.
    async fn exec(&mut self, sql: &Sql) -> Result<u64, sqlx::Error>;
    /// Runs `;`-separated statements without parameters (migrations).
    async fn script(&mut self, sql: &str) -> Result<(), sqlx::Error>;
    /// Rows of two text columns of a statement without parameters (catalog lookups).
    async fn pairs(&mut self, sql: &str) -> Result<Vec<(String, String)>, sqlx::Error>;
}

/// Applies one migration inside the caller's (locked) transaction unless the ledger has it;
/// returns whether it ran. The caller commits.
pub(crate) async fn migrate_one(c: &mut dyn Exec, d: Dialect, m: &crate::migrations::Migration) -> Result<bool> {
    let (version, name, sql) = *m;
    let mut q = Sql::new(d, "SELECT version FROM nereid_migrations WHERE version = ");
    q.bind(Param::Int(version));
    if c.scalar(&q).await?.is_some() {
        return Ok(false);
    }
    let wrap = |source| StoreError::Migration { version, name, source };
    c.script(sql).await.map_err(wrap)?;
    let mut ins = Sql::new(d, "INSERT INTO nereid_migrations (version, name, applied_at) VALUES (");
    ins.bind(Param::Int(version)).push(", ").bind(Param::Text(name.to_string())).push(", ").bind(Param::Int(crate::now_ms())).push(")");
    c.exec(&ins).await.map_err(wrap)?;
    tracing::info!(version, name, backend = ?d, "applied migration");
    Ok(true)
}

fn select(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "SELECT key, value, generation, mtime FROM objects",
        Dialect::Postgres => "SELECT key, value::text, generation, mtime FROM objects",
    }
}

fn to_object(bucket: &str, row: Row) -> Result<Object> {
    let (key, text, generation, mtime) = row;
    let value =
        serde_json::from_str(&text).map_err(|source| StoreError::Corrupt { bucket: bucket.to_string(), key: key.clone(), source })?;
    Ok(Object { key, value, generation, mtime })
}

fn where_key(s: &mut Sql, bucket: &str, key: &str) -> Result<()> {
    s.push(&format!(" WHERE bucket = {} AND key = ", bucket_literal(bucket)?));
    s.bind(Param::Text(key.to_string()));
    Ok(())
}

pub(crate) async fn get(c: &mut dyn Exec, d: Dialect, bucket: &str, key: &str) -> Result<Option<Object>> {
    let mut s = Sql::new(d, select(d));
    where_key(&mut s, bucket, key)?;
    let row = c.rows(&s).await?.into_iter().next();
    row.map(|r| to_object(bucket, r)).transpose()
}

async fn generation_of(c: &mut dyn Exec, d: Dialect, bucket: &str, key: &str, lock: bool) -> Result<Option<i64>> {
    let mut s = Sql::new(d, "SELECT generation FROM objects");
    where_key(&mut s, bucket, key)?;
    if lock && d == Dialect::Postgres {
        // Holds the row until commit, so the check stays true for the whole batch.
        s.push(" FOR UPDATE");
    }
    Ok(c.scalar(&s).await?)
}

fn bind_value(s: &mut Sql, v: &Value) {
    s.bind(Param::Text(v.to_string()));
    if s.dialect == Dialect::Postgres {
        s.push("::jsonb");
    }
}

/// Applies ops in order inside the caller's transaction; the caller commits on `Ok`.
pub(crate) async fn batch(c: &mut dyn Exec, d: Dialect, ops: &[Op], now: i64) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        if matches!(ops[i], Op::Refresh { .. }) {
            let run = refresh_run(&ops[i..]);
            out.extend(refresh(c, d, run, now).await?);
            i += run.len();
            continue;
        }
        let op = &ops[i];
        let (bucket, key, cond) = op.target();
        let lit = bucket_literal(bucket)?;
        let done: Option<i64> = match op {
            Op::Put { value, .. } => {
                let mut s = Sql::new(d, "");
                match cond {
                    Cond::Any | Cond::Absent => {
                        s.push(&format!("INSERT INTO objects (bucket, key, value, generation, mtime) VALUES ({lit}, "));
                        s.bind(Param::Text(key.to_string())).push(", ");
                        bind_value(&mut s, value);
                        s.push(", 1, ").bind(Param::Int(now)).push(")");
                        if cond == Cond::Any {
                            s.push(" ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value, generation = objects.generation + 1, mtime = excluded.mtime");
                        } else {
                            s.push(" ON CONFLICT (bucket, key) DO NOTHING");
                        }
                    }
                    Cond::Exists | Cond::Generation(_) => {
                        s.push("UPDATE objects SET value = ");
                        bind_value(&mut s, value);
                        s.push(", generation = generation + 1, mtime = ").bind(Param::Int(now));
                        where_key(&mut s, bucket, key)?;
                        if let Cond::Generation(g) = cond {
                            s.push(" AND generation = ").bind(Param::Int(g));
                        }
                    }
                }
                s.push(" RETURNING generation");
                c.scalar(&s).await?
            }
            Op::Delete { .. } => {
                let mut s = Sql::new(d, "DELETE FROM objects");
                where_key(&mut s, bucket, key)?;
                if let Cond::Generation(g) = cond {
                    s.push(" AND generation = ").bind(Param::Int(g));
                }
                let n = c.exec(&s).await?;
                match cond {
                    Cond::Any => Some(0),
                    Cond::Absent => {
                        if n == 0 {
                            Some(0)
                        } else {
                            None
                        }
                    }
                    _ => (n > 0).then_some(0),
                }
            }
            // (Runs are written above; this is never reached with one.)
            Op::Refresh { .. } => refresh(c, d, std::slice::from_ref(op), now).await?.first().copied(),
            Op::Check { .. } => {
                let found = generation_of(c, d, bucket, key, true).await?;
                let holds = match cond {
                    Cond::Any => true,
                    Cond::Absent => found.is_none(),
                    Cond::Exists => found.is_some(),
                    Cond::Generation(g) => found == Some(g),
                };
                holds.then_some(0)
            }
        };
        match done {
            Some(g) => out.push(g),
            None => {
                let found = generation_of(c, d, bucket, key, false).await?;
                return Err(StoreError::Conflict { bucket: bucket.to_string(), key: key.to_string(), expected: cond, found, op_index: i });
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Refreshes written by one statement, at most.
const REFRESH_CHUNK: usize = 256;

/// The refreshes at the head of `ops` one statement writes: consecutive, of one bucket,
/// no key twice (a statement updates a row once), at most [`REFRESH_CHUNK`].
fn refresh_run(ops: &[Op]) -> &[Op] {
    let mut keys = std::collections::HashSet::new();
    let mut bucket0 = None;
    let n = ops
        .iter()
        .take(REFRESH_CHUNK)
        .take_while(|op| match op {
            Op::Refresh { bucket, key, .. } => *bucket0.get_or_insert(bucket.as_str()) == bucket.as_str() && keys.insert(key.as_str()),
            _ => false,
        })
        .count();
    &ops[..n.max(1)]
}

/// Writes a run of refreshes (see [`refresh_run`]) with one `UPDATE … FROM (VALUES …)`;
/// answers each op's new generation, 0 where the object is absent.
async fn refresh(c: &mut dyn Exec, d: Dialect, run: &[Op], now: i64) -> Result<Vec<i64>> {
    let Some(Op::Refresh { bucket, .. }) = run.first() else { return Ok(Vec::new()) };
    let lit = bucket_literal(bucket)?;
    let mut s = Sql::new(d, "WITH v(k, val) AS (VALUES ");
    for (n, op) in run.iter().enumerate() {
        let Op::Refresh { key, value, .. } = op else { continue };
        s.push(if n == 0 { "(" } else { ", (" });
        s.bind(Param::Text(key.clone())).push(", ");
        bind_value(&mut s, value);
        s.push(")");
    }
    s.push(") UPDATE objects SET value = v.val, generation = objects.generation + 1, mtime = ").bind(Param::Int(now));
    s.push(&format!(" FROM v WHERE objects.bucket = {lit} AND objects.key = v.k RETURNING key, "));
    s.push(match d {
        Dialect::Sqlite => "'', generation, mtime",
        Dialect::Postgres => "''::text, generation, mtime",
    });
    let written: std::collections::HashMap<String, i64> = c.rows(&s).await?.into_iter().map(|(k, _, g, _)| (k, g)).collect();
    Ok(run
        .iter()
        .map(|op| match op {
            Op::Refresh { key, .. } => written.get(key).copied().unwrap_or(0),
            _ => 0,
        })
        .collect())
}

pub(crate) async fn list(c: &mut dyn Exec, d: Dialect, bucket: &str, q: &ListQuery) -> Result<Vec<Object>> {
    list_rows(c, d, bucket, q).await?.into_iter().map(|r| to_object(bucket, r)).collect()
}

/// [`list`] without parsing the values.
pub(crate) async fn list_raw(c: &mut dyn Exec, d: Dialect, bucket: &str, q: &ListQuery) -> Result<Vec<RawObject>> {
    let rows = list_rows(c, d, bucket, q).await?;
    Ok(rows.into_iter().map(|(key, json, generation, mtime)| RawObject { key, json, generation, mtime }).collect())
}

/// [`list_raw`] as versions: the value's size in the second column instead of its text
/// (SQLite's `octet_length` and PostgreSQL's `pg_column_size` read only the row's header).
pub(crate) async fn list_versions(c: &mut dyn Exec, d: Dialect, bucket: &str, q: &ListQuery) -> Result<Vec<crate::RowVersion>> {
    let rows = c.rows(&list_sql_cols(d, bucket, q, Cols::Version)?).await?;
    Ok(rows
        .into_iter()
        .map(|(key, size, generation, mtime)| crate::RowVersion { key, generation, mtime, size: size.parse().unwrap_or(-1) })
        .collect())
}

/// Keys looked up by one statement, at most.
const KEYS_CHUNK: usize = 500;

/// The objects with these keys (absent ones left out), in no particular order.
pub(crate) async fn get_raw_many(c: &mut dyn Exec, d: Dialect, bucket: &str, keys: &[String]) -> Result<Vec<RawObject>> {
    let lit = bucket_literal(bucket)?;
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(KEYS_CHUNK) {
        let mut s = Sql::new(d, select(d));
        s.push(&format!(" WHERE bucket = {lit} AND key IN ("));
        for (i, k) in chunk.iter().enumerate() {
            if i > 0 {
                s.push(", ");
            }
            s.bind(Param::Text(k.clone()));
        }
        s.push(")");
        out.extend(c.rows(&s).await?.into_iter().map(|(key, json, generation, mtime)| RawObject { key, json, generation, mtime }));
    }
    Ok(out)
}

/// What a listing selects of each row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cols {
    /// key, value text, generation, mtime.
    Whole,
    /// key, the value's size (as text), generation, mtime.
    Version,
}

/// A sorted page is chosen by keys only: the subquery sorts the matching rows' keys and
/// sort fields and cuts the page, then only the page's rows are read whole, by key, and
/// put back in the same order. Sorting whole rows (values of kilobytes) made the database
/// copy every matching value through its sorter. Lists without a sort walk the key index
/// in order, and lists without a limit read every row anyway: those stay one plain query.
async fn list_rows(c: &mut dyn Exec, d: Dialect, bucket: &str, q: &ListQuery) -> Result<Vec<Row>> {
    Ok(c.rows(&list_sql(d, bucket, q)?).await?)
}

/// The statement [`list_rows`] runs (see there).
pub(crate) fn list_sql(d: Dialect, bucket: &str, q: &ListQuery) -> Result<Sql> {
    list_sql_cols(d, bucket, q, Cols::Whole)
}

fn list_sql_cols(d: Dialect, bucket: &str, q: &ListQuery, cols: Cols) -> Result<Sql> {
    let lit = bucket_literal(bucket)?;
    let size = |t: &str| match d {
        Dialect::Sqlite => format!("CAST(octet_length({t}value) AS TEXT)"),
        Dialect::Postgres => format!("pg_column_size({t}value)::text"),
    };
    if q.sort.is_empty() || q.limit.is_none() {
        let head = match cols {
            Cols::Whole => select(d).to_string(),
            Cols::Version => format!("SELECT key, {}, generation, mtime FROM objects", size("")),
        };
        let mut s = Sql::new(d, &head);
        s.push(&format!(" WHERE bucket = {lit}"));
        s.where_filter(&q.filter)?;
        s.order(&q.sort)?;
        s.page(q.limit, q.offset);
        return Ok(s);
    }
    let value = match (cols, d) {
        (Cols::Version, _) => size("o."),
        (Cols::Whole, Dialect::Sqlite) => "o.value".to_string(),
        (Cols::Whole, Dialect::Postgres) => "o.value::text".to_string(),
    };
    let mut s = Sql::new(d, &format!("SELECT o.key, {value}, o.generation, o.mtime FROM (SELECT key AS k"));
    s.sort_columns(&q.sort)?;
    s.push(&format!(" FROM objects WHERE bucket = {lit}"));
    s.where_filter(&q.filter)?;
    s.order(&q.sort)?;
    s.page(q.limit, q.offset);
    match d {
        Dialect::Sqlite => s.push(&format!(") AS p JOIN objects AS o ON o.bucket = {lit} AND o.key = p.k")),
        // One lookup by primary key per page row, whatever the statistics say: as a plain
        // join, statistics gathered while the bucket was nearly empty made PostgreSQL
        // plan a nested loop over the whole bucket per row (`LIMIT 1` keeps the planner
        // from folding the subquery back into that join; a key is unique in its bucket).
        Dialect::Postgres => s.push(&format!(
            ") AS p CROSS JOIN LATERAL (SELECT key, value, generation, mtime FROM objects \
             WHERE bucket = {lit} AND key = p.k LIMIT 1) AS o"
        )),
    };
    s.order_page("p", &q.sort);
    Ok(s)
}

pub(crate) async fn count(c: &mut dyn Exec, d: Dialect, bucket: &str, f: &Filter) -> Result<i64> {
    let mut s = Sql::new(d, "SELECT COUNT(*) FROM objects");
    s.push(&format!(" WHERE bucket = {}", bucket_literal(bucket)?));
    s.where_filter(f)?;
    Ok(c.scalar(&s).await?.unwrap_or(0))
}

/// Gives a bucket its declared field indexes and drops those of its indexes it no longer
/// declares (an older shape, or a field no longer indexed), inside the caller's locked
/// transaction; returns the declared indexes' names. The caller commits.
pub(crate) async fn ensure_indexes(c: &mut dyn Exec, d: Dialect, def: &crate::BucketDef) -> Result<Vec<String>> {
    let mut wanted = Vec::new();
    for idx in def.indexes {
        let (name, ddl) = create_index(d, def.name, idx)?;
        c.script(&ddl).await?;
        wanted.push(name);
    }
    let found = c.pairs(field_indexes_query(d)).await?;
    for name in stale_indexes(d, def.name, &found, &wanted) {
        tracing::info!(bucket = def.name, index = name, "dropping an index of an older shape");
        c.script(&format!("DROP INDEX IF EXISTS {name}")).await?;
    }
    Ok(wanted)
}

/// Binds a statement's parameters on any sqlx query.
macro_rules! bind_all {
    ($q:expr, $sql:expr) => {{
        let mut q = $q;
        for p in &$sql.params {
            q = match p {
                crate::sql::Param::Text(t) => q.bind(t.clone()),
                crate::sql::Param::Int(i) => q.bind(*i),
                crate::sql::Param::Float(f) => q.bind(*f),
            };
        }
        q
    }};
}
pub(crate) use bind_all;

/// Implements [`Exec`] for a sqlx connection type.
macro_rules! impl_exec {
    ($conn:ty) => {
        #[async_trait::async_trait]
        impl crate::ops::Exec for $conn {
            async fn rows(&mut self, sql: &crate::sql::Sql) -> Result<Vec<crate::ops::Row>, sqlx::Error> {
                crate::ops::bind_all!(sqlx::query_as::<_, crate::ops::Row>(&sql.text), sql).fetch_all(&mut *self).await
            }
            async fn scalar(&mut self, sql: &crate::sql::Sql) -> Result<Option<i64>, sqlx::Error> {
                crate::ops::bind_all!(sqlx::query_scalar::<_, i64>(&sql.text), sql).fetch_optional(&mut *self).await
            }
            async fn exec(&mut self, sql: &crate::sql::Sql) -> Result<u64, sqlx::Error> {
                Ok(crate::ops::bind_all!(sqlx::query(&sql.text), sql).execute(&mut *self).await?.rows_affected())
            }
            async fn script(&mut self, sql: &str) -> Result<(), sqlx::Error> {
                // Migrations separate their statements with `;` at the end of a line.
                for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.trim_end_matches(';').trim().is_empty()) {
                    sqlx::query(stmt.trim_end_matches(';')).execute(&mut *self).await?;
                }
                Ok(())
            }
            async fn pairs(&mut self, sql: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
                sqlx::query_as::<_, (String, String)>(sql).fetch_all(&mut *self).await
            }
        }
    };
}
pub(crate) use impl_exec;
