//! Keeping the PostgreSQL table lean when the server's autovacuum does not.
//!
//! Every write of a record leaves the old row version behind, and with expression indexes
//! on `value` no update is HOT, so every index of the bucket gains an entry too. Nereid's
//! table is small and rewritten all the time (a heartbeat per server every few seconds, a
//! dozen writes per provision), so dead versions pile up fast: with nothing removing them,
//! lookups on indexed fields (the job runner's "open jobs", every filtered list) visit
//! every version their index ever held, and a cloud of 1,000 servers ran a third slower
//! after a few minutes and kept slowing.
//!
//! PostgreSQL's autovacuum removes them, and when it is on for the table this does
//! nothing. When it is off (`autovacuum = off`, or the table's `autovacuum_enabled`
//! storage parameter is false), each headnode looks every [`EVERY`] and runs
//! `VACUUM (SKIP_LOCKED)` on the table once dead versions exceed a tenth of it
//! ([`should_vacuum`]): a second or less on a cloud of 20,000 VMs, and several headnodes
//! never queue behind each other's (`SKIP_LOCKED`).
//!
//! It does not `ANALYZE`. Statistics from a nearly empty bucket once turned sorted pages
//! into a scan of the whole bucket per row; pages now look their rows up by key whatever
//! the statistics say (`ops::list_sql_cols`). Measured at 1,000 servers and 5,000 VMs,
//! analyzing showed no gain over the planner's defaults (within this machine's noise),
//! and those defaults serve every query of the store well, so they stay.

use std::time::Duration;

use sqlx::PgPool;

/// How often the table's dead versions are counted.
pub const EVERY: Duration = Duration::from_secs(10);

/// Dead versions tolerated whatever the table's size.
const SLACK: i64 = 2_000;

/// The table's counts and whether PostgreSQL vacuums it itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableState {
    pub live: i64,
    pub dead: i64,
    pub autovacuum: bool,
    /// Whether Nereid's role may vacuum the table (owns it, or is a superuser): one that
    /// may not gets a warning from PostgreSQL, not an error, and nothing is vacuumed.
    pub may_vacuum: bool,
}

/// Whether Nereid should vacuum now: only when PostgreSQL will not, and once dead
/// versions are more than [`SLACK`] plus a tenth of the live rows.
pub fn should_vacuum(t: TableState) -> bool {
    !t.autovacuum && t.may_vacuum && t.dead > SLACK + t.live / 10
}

/// A PostgreSQL boolean setting's text (`on`, `true`, `1`, `yes`…) read as a bool.
fn pg_bool(s: &str) -> bool {
    matches!(s.trim().to_ascii_lowercase().as_str(), "on" | "true" | "t" | "1" | "yes" | "y")
}

/// Reads the table's state.
pub async fn table_state(pool: &PgPool) -> sqlx::Result<TableState> {
    let (live, dead, global, table, may_vacuum): (i64, i64, String, Option<String>, bool) = sqlx::query_as(
        "SELECT s.n_live_tup, s.n_dead_tup, current_setting('autovacuum'), \
                (SELECT option_value FROM pg_options_to_table(c.reloptions) WHERE option_name = 'autovacuum_enabled'), \
                pg_has_role(c.relowner, 'USAGE') \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE s.relid = 'objects'::regclass",
    )
    .fetch_one(pool)
    .await?;
    Ok(TableState { live, dead, autovacuum: pg_bool(&global) && table.as_deref().is_none_or(pg_bool), may_vacuum })
}

/// Vacuums when [`should_vacuum`] says so for `t`, just read; says whether it did.
async fn vacuum_if_due(pool: &PgPool, t: TableState) -> sqlx::Result<bool> {
    if !should_vacuum(t) {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    sqlx::raw_sql("VACUUM (SKIP_LOCKED) objects").execute(pool).await?;
    tracing::debug!(dead = t.dead, live = t.live, took_ms = started.elapsed().as_millis() as u64, "vacuumed the objects table");
    Ok(true)
}

/// The headnode's loop: says once whether it stands in for autovacuum, then looks every
/// [`EVERY`]. An error (the database away, a role that may not vacuum) is logged and the
/// next look tries again; it never affects the store's requests.
pub async fn run(pool: PgPool) {
    let mut told = false;
    loop {
        tokio::time::sleep(EVERY).await;
        let look = match table_state(&pool).await {
            Ok(t) => {
                if !told {
                    told = true;
                    tell(t);
                }
                vacuum_if_due(&pool, t).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = look {
            tracing::warn!(error = %e, "could not vacuum the objects table; trying again later");
        }
    }
}

/// Says, once, whether Nereid stands in for autovacuum (or cannot).
fn tell(t: TableState) {
    match (t.autovacuum, t.may_vacuum) {
        (true, _) => {}
        (false, true) => tracing::info!(
            "PostgreSQL's autovacuum is off for Nereid's table: Nereid vacuums it itself once a tenth of it is dead row versions"
        ),
        (false, false) => tracing::warn!(
            "PostgreSQL's autovacuum is off for Nereid's table and Nereid's role does not own it: nothing removes dead row \
             versions, so the store slows as the cloud runs; turn autovacuum on, or let the role own the table"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One look of [`run`]'s: vacuums when [`should_vacuum`]; says whether it did.
    async fn maintain_once(pool: &PgPool) -> sqlx::Result<bool> {
        let t = table_state(pool).await?;
        vacuum_if_due(pool, t).await
    }

    #[test]
    fn vacuums_only_without_autovacuum_and_past_a_tenth_dead() {
        let t = |live, dead, autovacuum| TableState { live, dead, autovacuum, may_vacuum: true };
        assert!(!should_vacuum(t(20_000, 1_000, false)), "a little dead is fine");
        assert!(!should_vacuum(t(20_000, 3_900, false)));
        assert!(should_vacuum(t(20_000, 4_100, false)));
        assert!(should_vacuum(t(0, 2_001, false)));
        assert!(!should_vacuum(t(20_000, 1_000_000, true)), "autovacuum's own job");
        assert!(!should_vacuum(TableState { may_vacuum: false, ..t(20_000, 1_000_000, false) }), "not the table's owner");
    }

    #[test]
    fn settings_read_as_postgresql_does() {
        for s in ["on", "true", "TRUE", "1", "yes", " on "] {
            assert!(pg_bool(s), "{s}");
        }
        for s in ["off", "false", "0", "no", ""] {
            assert!(!pg_bool(s), "{s}");
        }
    }

    /// With autovacuum off for the table, rewritten rows are vacuumed away by Nereid.
    #[tokio::test]
    async fn a_table_autovacuum_skips_is_vacuumed_once_a_tenth_is_dead() {
        use crate::{Cond, Store};
        let url = crate::testing::fresh_pg_url().await.unwrap_or_else(|e| panic!("{e}"));
        let store = crate::postgres::PgStore::open(&url).await.unwrap_or_else(|e| panic!("{e}"));
        let pool = store.pool.clone();
        sqlx::raw_sql("ALTER TABLE objects SET (autovacuum_enabled = off)").execute(&pool).await.unwrap_or_else(|e| panic!("{e}"));
        // An indexed field, as every bucket of the headnode has: no update is HOT, so
        // every one leaves its dead version behind (as heartbeats and jobs do).
        let def = crate::BucketDef { name: "beats", indexes: &[crate::Index { path: &["n"], kind: crate::Kind::Number }] };
        store.ensure_bucket(&def).await.unwrap_or_else(|e| panic!("{e}"));
        for k in 0..50 {
            store.put("beats", &format!("s{k}"), serde_json::json!({"n": 0}), Cond::Any).await.unwrap_or_else(|e| panic!("{e}"));
        }
        // Every server's heartbeat rewritten 60 times: 3,000 dead versions of 50 rows.
        for n in 1..=60 {
            let ops = (0..50).map(|k| crate::Op::Put {
                bucket: "beats".into(),
                key: format!("s{k}"),
                value: serde_json::json!({"n": n}),
                cond: Cond::Any,
            });
            store.batch(ops.collect()).await.unwrap_or_else(|e| panic!("{e}"));
        }
        // The server's statistics arrive within a second or so.
        let mut state = table_state(&pool).await.unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..100 {
            if state.dead >= 3_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = table_state(&pool).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!state.autovacuum && state.may_vacuum, "{state:?}");
        assert!(state.dead >= 3_000 || vacuums(&pool).await > 0, "{state:?}");
        // This look vacuums, unless the store's own loop (every 10 s) already has.
        let now = maintain_once(&pool).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(now || vacuums(&pool).await > 0, "vacuumed");
        let mut after = table_state(&pool).await.unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..100 {
            if after.dead < 3_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = table_state(&pool).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(after.dead < 100, "dead versions left after the vacuum: {after:?}");
        assert!(!maintain_once(&pool).await.unwrap_or_else(|e| panic!("{e}")), "nothing left to vacuum");
        // Every record reads back as last written.
        assert!(vacuums(&pool).await > 0);
        assert_eq!(store.get("beats", "s7").await.ok().flatten().map(|o| o.value["n"].clone()), Some(serde_json::json!(60)));
    }

    /// Vacuums of the table so far (the server's statistics may lag a moment).
    async fn vacuums(pool: &PgPool) -> i64 {
        for _ in 0..50 {
            let n: i64 = sqlx::query_scalar("SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'objects'::regclass")
                .fetch_one(pool)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            if n > 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        0
    }
}
