//! Benchmark: the three big lists of issue 16, on SQLite and PostgreSQL, p50/p99 printed
//! (never asserted):
//! - signed `GET /my/machines` (HTTP Signature check, the account's machines, rendering
//!   1,000 machine objects) with 1,000 machines of one account;
//! - admin `GET /images` with 1,000 images;
//! - admin `GET /vms?limit=1000` with the same 1,000 VMs.
//!
//! One machine is provisioned for real (sim backend); 999 copies of its record with new
//! UUIDs and names are written straight to the store, so the list renders realistic
//! objects (NICs, metadata, tags) without minutes of provisioning. Images likewise: one is
//! created and activated through IMGAPI, 999 copies are written to the store.
//!
//! The timed requests read the answer's bytes without decoding them (a client's JSON
//! parse of 1.5 MB is the client's time, not the server's); each list is checked once,
//! decoded, before timing.
//!
//! `cargo bench -p nereid-testkit --bench cloudapi` (`NEREID_BENCH_REQUESTS` changes the
//! count; `NEREID_BENCH_ONLY=sqlite|postgres` runs one store).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use nereid_store::{Cond, ListQuery, Op};
use nereid_testkit::cloudapi::{Client, Key};
use nereid_testkit::{Backend, Cloud, Options};
use serde_json::{Value, json};

const KEY_SEED: u8 = 1;

/// Runs `requests` sequential requests and prints requests/s, p50, p99 and max.
async fn measure<F, Fut>(store: &str, what: &str, requests: usize, mut one: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (u16, usize)>,
{
    let (status, bytes) = one().await;
    assert_eq!(status, 200, "{what}");
    let mut lat = Vec::with_capacity(requests);
    let start = Instant::now();
    for _ in 0..requests {
        let t = Instant::now();
        let (status, _) = one().await;
        assert_eq!(status, 200, "{what}");
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "{store:<9} {what:<44} ({:>4} KiB each answer), {requests} sequential requests: {:>6.1} requests/s; p50 {:>5.1} ms p99 {:>5.1} ms max {:>5.1} ms",
        bytes / 1024,
        requests as f64 / secs,
        p(0.5),
        p(0.99),
        lat.last().copied().unwrap_or(Duration::ZERO).as_secs_f64() * 1000.0
    );
}

/// Writes 999 copies of `record` (new UUID, `name_field` = `{prefix}-{i}`, `time_field`
/// stepping by a millisecond) straight to the store.
async fn copies(cloud: &Cloud, bucket: &str, record: &Value, name_field: &str, prefix: &str, time_field: &str) {
    let mut ops = Vec::new();
    for i in 1..1000 {
        let mut r = record.clone();
        let u = uuid::Uuid::new_v4();
        r["uuid"] = json!(u);
        r[name_field] = json!(format!("{prefix}-{i}"));
        r[time_field] = json!(format!("2026-01-01T00:00:{:02}.{:03}Z", i / 1000, i % 1000));
        ops.push(Op::put(bucket, u.to_string(), r, Cond::Absent));
        if ops.len() == 200 {
            cloud.headnode.app.store.batch(std::mem::take(&mut ops)).await.unwrap();
        }
    }
    cloud.headnode.app.store.batch(ops).await.unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests: usize = std::env::var("NEREID_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let only = std::env::var("NEREID_BENCH_ONLY").ok();
    for b in Backend::ALL {
        let name = format!("{b:?}").to_lowercase();
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(b) }.cloudapi_http()).await.unwrap();
        let seed = cloud.seed().await.unwrap();
        let key = Key::from_seed(KEY_SEED);
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
        copies(&cloud, "vms", &record, "alias", "m", "create_timestamp").await;
        let image = cloud.headnode.app.store.get("images", &seed.image).await.unwrap().unwrap().value;
        copies(&cloud, "images", &image, "name", "img", "published_at").await;
        assert_eq!(cloud.headnode.app.store.list("images", &ListQuery::all()).await.unwrap().len(), 1000);

        // Checked once, decoded.
        let first = tenant.get("/my/machines?limit=1000&offset=0").await.unwrap();
        assert_eq!(first.status, 200, "{}", first.text);
        assert_eq!(first.headers["x-resource-count"].to_str().unwrap(), "1000");
        assert_eq!(cloud.client.get("/images").await.unwrap().as_array().unwrap().len(), 1000);
        assert_eq!(cloud.client.get("/vms?limit=1000").await.unwrap().as_array().unwrap().len(), 1000);

        let tenant = &tenant;
        measure(&name, "signed GET /my/machines, 1000 machines", requests, || async {
            tenant.get_bytes("/my/machines?limit=1000&offset=0").await.unwrap()
        })
        .await;
        let cloud = &cloud;
        measure(&name, "admin GET /images, 1000 images", requests, || async { cloud.get_bytes("/images").await.unwrap() }).await;
        measure(&name, "GET /vms?limit=1000, 1000 VMs", requests, || async { cloud.get_bytes("/vms?limit=1000").await.unwrap() }).await;
    }
}
