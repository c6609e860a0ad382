//! Benchmark: store writes per second and `GET /images` latency with 10,000 images,
//! on SQLite and PostgreSQL. Numbers are printed, never asserted (these machines are noisy).
//!
//! `cargo bench -p nereid-testkit --bench store_and_images`
//! (`NEREID_BENCH_IMAGES` and `NEREID_BENCH_WRITES` change the sizes.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use nereid_store::testing::concurrent_puts;
use nereid_store::{Cond, Op};
use nereid_testkit::{Backend, Cloud};
use nereid_types::bench::{env_usize, percentile_ms};
use serde_json::json;

fn image(i: usize) -> serde_json::Value {
    json!({"v": 2, "uuid": uuid::Uuid::new_v4(), "owner": "00000000-0000-0000-0000-000000000000", "name": format!("image-{}", i % 50), "version": format!("{i}"),
        "state": if i.is_multiple_of(10) { "disabled" } else { "active" }, "disabled": i.is_multiple_of(10), "public": true, "type": "zvol", "os": "linux",
        "published_at": format!("2026-{:02}-{:02}T{:02}:{:02}:{:02}.000Z", 1 + i % 12, 1 + i % 28, i % 24, i % 60, (i / 60) % 60),
        "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 10240, "description": "a benchmark image with a typical description",
        "tags": {"role": "os"}, "files": [{"sha1": format!("{i:040x}"), "size": 1 << 30, "compression": "gzip", "stor": "local"}]})
}

async fn get_latency(cloud: &Cloud, path: &str, n: usize) -> (f64, f64, usize) {
    let mut times = Vec::new();
    let mut items = 0;
    for _ in 0..n {
        let t = Instant::now();
        let v = cloud.client.get(path).await.unwrap();
        times.push(t.elapsed());
        items = v.as_array().map(Vec::len).unwrap_or(0);
    }
    times.sort();
    (percentile_ms(&times, 0.5), percentile_ms(&times, 0.99), items)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n_images = env_usize("NEREID_BENCH_IMAGES", 10_000);
    let n_writes = env_usize("NEREID_BENCH_WRITES", 2_000);
    println!("backend    measurement                                       result");
    for b in Backend::ALL {
        let name = format!("{b:?}").to_lowercase();
        let cloud = Cloud::start(b).await.unwrap();
        let store = cloud.headnode.app.store.clone();
        let seq = concurrent_puts(store.clone(), n_writes, 1).await;
        let conc = concurrent_puts(store.clone(), n_writes, 16).await;
        println!("{name:<10} store writes/s, 1 writer (fsync'd commits)          {seq:>8.0}");
        println!("{name:<10} store writes/s, 16 concurrent writers               {conc:>8.0}");
        let t = Instant::now();
        for chunk in (0..n_images).collect::<Vec<_>>().chunks(500) {
            let ops = chunk.iter().map(|&i| {
                let img = image(i);
                Op::put("images", img["uuid"].as_str().unwrap().to_string(), img, Cond::Absent)
            });
            store.batch(ops.collect()).await.unwrap();
        }
        let seeded = t.elapsed();
        println!(
            "{name:<10} seed {n_images} images in batches of 500 ({:.0} writes/s)  {:>8.1} s",
            n_images as f64 / seeded.as_secs_f64(),
            seeded.as_secs_f64()
        );
        for (label, path) in [
            ("GET /images (active, first 1000)", "/images".to_string()),
            ("GET /images?limit=100", "/images?limit=100".to_string()),
            ("GET /images?name=image-7 (filtered)", "/images?name=image-7".to_string()),
            ("GET /images?tag.role=os&limit=100", "/images?tag.role=os&limit=100".to_string()),
            ("GET /images?sort=published_at.desc", "/images?sort=published_at.desc".to_string()),
        ] {
            let (p50, p99, items) = get_latency(&cloud, &path, 30).await;
            println!("{name:<10} {label:<44} p50 {p50:>7.1} ms  p99 {p99:>7.1} ms  ({items} items)");
        }
    }
}
