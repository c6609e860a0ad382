//! Benchmark: end-to-end provisions per second with 100 simulated servers (CreateVm →
//! placement and claim → NICs → the agent creates and starts the VM → job succeeded), on
//! SQLite and PostgreSQL. Numbers are printed, never asserted; so is where a provision's
//! time goes (each phase's median, from the jobs' own records).
//!
//! `cargo bench -p nereid-testkit --bench provision` (`NEREID_BENCH_PROVISIONS` changes the count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nereid_testkit::{Backend, Cloud, Options};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("NEREID_BENCH_PROVISIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let concurrency = 16;
    for b in Backend::ALL {
        let mut o = Options::new(b);
        o.sim_servers = 100;
        o.heartbeat = Duration::from_secs(2);
        o.sim_delays.create = Duration::from_millis(20);
        o.sim_delays.start = Duration::from_millis(10);
        let cloud = Cloud::start_with(o).await.unwrap();
        let seed = cloud.seed_sized(512, 10_240).await.unwrap();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let c = cloud.client.clone();
            let body = seed.vm_body(&format!("bench-{i}"));
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = c.post("/vms", &body).await.unwrap();
                let placed = t.elapsed();
                let job = r["job_uuid"].as_str().unwrap().to_string();
                let j = c.get(&format!("/jobs/{job}/wait?timeout=300")).await.unwrap();
                drop(permit);
                (placed, t.elapsed(), j["execution"] == "succeeded")
            }));
        }
        let mut placed = Vec::new();
        let mut total = Vec::new();
        let mut ok = 0;
        for t in tasks {
            let (p, d, s) = t.await.unwrap();
            placed.push(p);
            total.push(d);
            ok += usize::from(s);
        }
        let secs = start.elapsed().as_secs_f64();
        placed.sort();
        total.sort();
        let p = |v: &Vec<Duration>, q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
        let name = format!("{b:?}").to_lowercase();
        println!(
            "{name:<9} {n} provisions on 100 sim servers, {concurrency} at a time: {:.1} provisions/s ({ok} succeeded); CreateVm p50 {:.1} ms p99 {:.1} ms; to running p50 {:.0} ms p99 {:.0} ms",
            n as f64 / secs,
            p(&placed, 0.5),
            p(&placed, 0.99),
            p(&total, 0.5),
            p(&total, 0.99)
        );
        println!("{name:<9} provision job, median ms: {}", nereid_testkit::job_times::provision_medians(&cloud).await);
    }
}
