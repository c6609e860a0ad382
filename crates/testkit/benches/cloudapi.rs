//! Benchmark: signed `GET /my/machines` (HTTP Signature check, the account's machines,
//! rendering 1,000 machine objects) with 1,000 machines, on SQLite and PostgreSQL.
//! Numbers are printed, never asserted.
//!
//! One machine is provisioned for real (sim backend); 999 copies of its record with new
//! UUIDs and names are written straight to the store, so the list renders realistic
//! objects (NICs, metadata, tags) without minutes of provisioning.
//!
//! `cargo bench -p nereid-testkit --bench cloudapi` (`NEREID_BENCH_REQUESTS` changes the count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nereid_store::{Cond, Op};
use nereid_testkit::cloudapi::{Client, Key};
use nereid_testkit::{Backend, Cloud, Options};
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests: usize = std::env::var("NEREID_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    for b in Backend::ALL {
        let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(b) }.cloudapi_http()).await.unwrap();
        let seed = cloud.seed().await.unwrap();
        let key = Key::from_seed(1);
        let acct = cloud
            .client
            .post("/accounts", &json!({"login": "bench", "email": "bench@example.com", "keys": [{"key": key.openssh()}]}))
            .await
            .unwrap();
        let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
        let tenant = Client::new(&url, "bench", key);
        let mut body = seed.vm_body("m-0");
        body["owner_uuid"] = acct["uuid"].clone();
        body["customer_metadata"] = json!({"user-script": "#!/bin/sh\necho hello\n", "role": "bench"});
        body["tags"] = json!({"role": "web", "tier": 1});
        let (vm, job) = cloud.create_vm(&body).await.unwrap();
        cloud.wait_job(&job).await.unwrap();
        let record = cloud.headnode.app.store.get("vms", &vm).await.unwrap().unwrap().value;
        let mut ops = Vec::new();
        for i in 1..1000 {
            let mut r = record.clone();
            let u = uuid::Uuid::new_v4();
            r["uuid"] = json!(u);
            r["alias"] = json!(format!("m-{i}"));
            r["create_timestamp"] = json!(format!("2026-01-01T00:00:{:02}.{:03}Z", i / 1000, i % 1000));
            ops.push(Op::put("vms", u.to_string(), r, Cond::Absent));
            if ops.len() == 200 {
                cloud.headnode.app.store.batch(std::mem::take(&mut ops)).await.unwrap();
            }
        }
        cloud.headnode.app.store.batch(ops).await.unwrap();
        let first = tenant.get("/my/machines?limit=1000&offset=0").await.unwrap();
        assert_eq!(first.status, 200, "{}", first.text);
        assert_eq!(first.headers["x-resource-count"].to_str().unwrap(), "1000");
        let bytes = first.text.len();
        let mut lat = Vec::with_capacity(requests);
        let start = Instant::now();
        for _ in 0..requests {
            let t = Instant::now();
            let a = tenant.get("/my/machines?limit=1000&offset=0").await.unwrap();
            assert_eq!(a.status, 200);
            lat.push(t.elapsed());
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort();
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
        let name = format!("{b:?}").to_lowercase();
        println!(
            "{name:<9} signed GET /my/machines, 1000 machines ({} KiB each answer), {requests} sequential requests: {:.1} requests/s; p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            bytes / 1024,
            requests as f64 / secs,
            p(0.5),
            p(0.99),
            lat.last().copied().unwrap_or(Duration::ZERO).as_secs_f64() * 1000.0
        );
    }
}
