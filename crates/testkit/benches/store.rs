//! Benchmark of the store alone: concurrent single-put write batches (writes/s at 1, 16
//! and 64 writers) and a sorted, limited list (`GET /vms?limit=1000`'s query: 1,000 of
//! 5,000 rows of ~1.5 KB, by the indexed `create_timestamp`), on SQLite and, when it
//! answers, PostgreSQL. Numbers are printed, never asserted (these machines are noisy).
//!
//! `cargo bench -p nereid-testkit --bench store`
//! (`NEREID_BENCH_WRITES`, `NEREID_BENCH_ROWS`, `NEREID_BENCH_LIMIT`, `NEREID_BENCH_LISTS`
//! change the sizes; `NEREID_BENCH_PART=writes` or `lists` runs one part; `NEREID_BENCH_PG=0`
//! skips PostgreSQL; `NEREID_TEST_PG_URL` names it; `NEREID_BENCH_SQLITE` names the SQLite
//! file, kept afterwards.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use nereid_store::testing::concurrent_puts;
use nereid_store::{BucketDef, Cond, Filter, Index, Kind, ListQuery, Op, Path, Store};
use nereid_types::bench::{env_usize, percentile_ms};
use serde_json::json;

const VMS: BucketDef = BucketDef {
    name: "vms",
    indexes: &[
        Index { path: &["owner_uuid"], kind: Kind::Text },
        Index { path: &["state"], kind: Kind::Text },
        Index { path: &["create_timestamp"], kind: Kind::Text },
    ],
};

/// A VM-like record of about 1.5 KB.
fn vm(i: usize) -> serde_json::Value {
    json!({
        "uuid": uuid::Uuid::from_u128(0x5eed_0000_0000 + i as u128).to_string(),
        "alias": format!("vm-{i}"),
        "owner_uuid": uuid::Uuid::from_u128((i % 50) as u128 + 1).to_string(),
        "server_uuid": uuid::Uuid::from_u128((i % 1000) as u128 + 7).to_string(),
        "state": if i.is_multiple_of(10) { "stopped" } else { "running" },
        "brand": "kvm",
        "ram": 1024, "quota": 10, "cpu_cap": 100, "max_lwps": 4000,
        // Timestamps collide every 3,600 records, so ties are broken by key.
        "create_timestamp": format!("2026-{:02}-{:02}T{:02}:{:02}:00.000Z", 1 + i % 12, 1 + i % 28, i % 24, i % 60),
        "image_uuid": uuid::Uuid::from_u128(42).to_string(),
        "nics": [{"mac": format!("90:b8:d0:{:02x}:{:02x}:{:02x}", i >> 16 & 255, i >> 8 & 255, i & 255), "ip": format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
                  "netmask": "255.255.0.0", "nic_tag": "external", "primary": true, "network_uuid": uuid::Uuid::from_u128(9).to_string()}],
        "disks": [{"path": format!("/var/lib/nereid/vms/{i}/disk0.qcow2"), "size": 10240, "boot": true, "image_uuid": uuid::Uuid::from_u128(42).to_string()}],
        "customer_metadata": {"user-script": "#!/bin/sh\necho hello\n".repeat(20)},
        "internal_metadata": {}, "tags": {"role": "web", "env": "prod"},
        "resolvers": ["8.8.8.8", "8.8.4.4"], "autoboot": true, "billing_id": uuid::Uuid::from_u128(77).to_string(),
        "description": "x".repeat(300),
    })
}

async fn seed(store: &Arc<dyn Store>, rows: usize) {
    store.ensure_bucket(&VMS).await.unwrap();
    let mut ops = Vec::new();
    for i in 0..rows {
        ops.push(Op::put(VMS.name, format!("{:08x}", (i * 7919) % rows), vm(i), Cond::Any));
        if ops.len() == 200 {
            store.batch(std::mem::take(&mut ops)).await.unwrap();
        }
    }
    if !ops.is_empty() {
        store.batch(ops).await.unwrap();
    }
}

/// p50/p99 of `n` `list_raw` calls of `q`, after a few untimed ones; and the row count.
async fn list_latency(store: &Arc<dyn Store>, q: &ListQuery, n: usize) -> (f64, f64, usize) {
    let mut rows = 0;
    for _ in 0..3 {
        rows = store.list_raw(VMS.name, q).await.unwrap().len();
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let got = store.list_raw(VMS.name, q).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(got.len(), rows);
    }
    times.sort();
    (percentile_ms(&times, 0.5), percentile_ms(&times, 0.99), rows)
}

async fn run(label: &str, store: Arc<dyn Store>) {
    let part = std::env::var("NEREID_BENCH_PART").unwrap_or_default();
    let n = if part == "lists" { 0 } else { env_usize("NEREID_BENCH_WRITES", 2000) };
    for tasks in [1, 16, 64].into_iter().filter(|_| n > 0) {
        let rate = concurrent_puts(store.clone(), n, tasks).await;
        println!("{label:8} writes   {n} single-put batches, {tasks:2} writers: {rate:8.0} writes/s");
    }
    if part == "writes" {
        return store.close().await;
    }
    let rows = env_usize("NEREID_BENCH_ROWS", 5000);
    let limit = env_usize("NEREID_BENCH_LIMIT", 1000) as i64;
    let lists = env_usize("NEREID_BENCH_LISTS", 50);
    seed(&store, rows).await;
    let ct = || Path::field("create_timestamp");
    let cases = [
        ("all, by create_timestamp", ListQuery::all().sort(ct(), Kind::Text, false).page(limit, 0)),
        ("all, by create_timestamp desc, offset", ListQuery::all().sort(ct(), Kind::Text, true).page(limit, limit)),
        (
            "state=running, by create_timestamp",
            ListQuery::filter(Filter::eq("state", "running")).sort(ct(), Kind::Text, false).page(limit, 0),
        ),
        (
            "one owner, by create_timestamp",
            ListQuery::filter(Filter::eq("owner_uuid", uuid::Uuid::from_u128(3).to_string())).sort(ct(), Kind::Text, false).page(limit, 0),
        ),
    ];
    for (name, q) in &cases {
        let (p50, p99, got) = list_latency(&store, q, lists).await;
        println!("{label:8} list     {name:40} {got:5} of {rows} rows: p50 {p50:7.2} ms  p99 {p99:7.2} ms");
    }
    store.close().await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    // NEREID_BENCH_SQLITE names the file to use (and keep), e.g. for `EXPLAIN QUERY PLAN`.
    let path = std::env::var("NEREID_BENCH_SQLITE").map(std::path::PathBuf::from).unwrap_or_else(|_| dir.path().join("bench.db"));
    let store = nereid_store::open(&format!("sqlite:{}", path.display())).await.unwrap();
    run("sqlite", store).await;
    if std::env::var("NEREID_BENCH_PG").as_deref() == Ok("0") {
        return;
    }
    match nereid_store::testing::fresh_pg_url().await {
        Ok(url) => run("postgres", nereid_store::open(&url).await.unwrap()).await,
        Err(e) => println!("postgres: skipped ({e})"),
    }
}
