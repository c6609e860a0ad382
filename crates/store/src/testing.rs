//! Helpers for tests that need a real PostgreSQL: where it is, and a fresh schema per test.
//!
//! The server comes from `NEREID_TEST_PG_URL`, else `postgres://postgres@127.0.0.1:5432/test`
//! (the README's test command makes sure one of them answers, starting a throwaway cluster
//! when needed). Each test gets its own schema, so runs never collide; schemas older than
//! six hours from earlier runs are dropped on the way.

use sqlx::Connection;

/// The PostgreSQL server tests use.
pub fn pg_base_url() -> String {
    std::env::var("NEREID_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A store URL for a brand-new schema on the test server.
///
/// Fails (rather than skipping the test) when the server does not answer.
pub async fn fresh_pg_url() -> Result<String, String> {
    let base = pg_base_url();
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .map_err(|e| format!("PostgreSQL for tests is not reachable at {base} ({e}); run the README's test command, which starts one, or set NEREID_TEST_PG_URL"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let stale: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'nereid\\_test\\_%'")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    for name in stale {
        let born: u64 = name.split('_').nth(2).and_then(|t| t.parse().ok()).unwrap_or(0);
        if born + 6 * 3600 < now {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).execute(&mut conn).await;
        }
    }
    let _ = conn.close().await;
    let tag: u32 = rand_u32();
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}schema=nereid_test_{now}_{tag:08x}"))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() as u32
}

/// `n` single-put batches into bucket `bench` by `tasks` concurrent writers (what the
/// store benchmarks time); writes per second.
pub async fn concurrent_puts(store: std::sync::Arc<dyn crate::Store>, n: usize, tasks: usize) -> f64 {
    let start = std::time::Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(tasks) {
                let v = serde_json::json!({"i": i, "name": format!("object {i}"), "tags": {"a": "b"}});
                if let Err(e) = s.put("bench", &format!("w{tasks}-{i}"), v, crate::Cond::Absent).await {
                    panic!("a benchmark write failed: {e}");
                }
            }
        }));
    }
    for h in handles {
        if let Err(e) = h.await {
            panic!("a benchmark writer died: {e}");
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}
