//! Benchmark: the scale harness (issue 16). Starts N simulated servers, provisions M VMs
//! K at a time, and prints, per store: the time to start the servers, provisions/s in
//! windows as they complete (first window against last), CreateVm latency, the process
//! CPU while provisioning and while the big cloud sits idle, and API latencies on it
//! (signed CloudAPI `GET /my/machines` for an account with 1,000 machines, admin
//! `GET /images` with 1,000 images, `GET /vms?limit=1000`). Then a short second section:
//! 100 servers, an empty cloud, 1,000 provisions on SQLite. Numbers are printed, never
//! asserted.
//!
//! The headnode and every simulated agent run in this process, so its CPU time
//! (utime + stime from `/proc/self/stat`) is the cloud's. The timed list requests read
//! the answer's bytes without decoding them, as the `cloudapi` bench does (decoding a
//! 1.5 MB list is the client's time, not the server's; each is decoded once, untimed).
//!
//! `cargo bench -p nereid-testkit --bench scale`; knobs (environment):
//! `NEREID_SCALE_SERVERS` (1000), `NEREID_SCALE_VMS` (500, sized so CI finishes in minutes
//! with today's placement; the acceptance run is 20000),
//! `NEREID_SCALE_CONCURRENCY` (16), `NEREID_SCALE_BACKENDS` (sqlite,postgres),
//! `NEREID_SCALE_IDLE_SECS` (20), `NEREID_SCALE_HEARTBEAT_SECS` (5, `nereid agent`'s
//! default), `NEREID_SCALE_REQUESTS` (200 per API latency), `NEREID_SCALE_SMALL` (1000
//! provisions in the 100-server section; 0 skips it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use nereid_store::{Cond, Op};
use nereid_testkit::cloudapi::{Client, Key};
use nereid_testkit::{Backend, Cloud, Options, Seed};
use nereid_types::bench::{env_usize, percentile_ms};
use serde_json::{Value, json};

/// This process's CPU time (user + system) so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) start at state, field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| f.get(i)?.parse::<u64>().ok()).sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU used between two readings, as % of one core over `wall`.
fn cpu_pct(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9) * 100.0
}

fn options(b: Backend, heartbeat: Duration) -> Options {
    let mut o = Options::new(b);
    // The product's timeouts (Options::new shortens them for tests).
    o.app = nereid_headnode::app::AppConfig::default();
    o.heartbeat = heartbeat;
    // Small enough never to be the bottleneck.
    o.sim_delays.create = Duration::from_millis(20);
    o.sim_delays.start = Duration::from_millis(10);
    o
}

/// A cloud with `servers` simulated servers, and how long they took to start and report.
async fn start_cloud(o: &Options, servers: usize) -> (Cloud, Duration) {
    let mut cloud = Cloud::start_with(o.clone()).await.unwrap();
    let t = Instant::now();
    let agent = cloud.start_agent(&Options { sim_servers: servers, ..o.clone() }).await.unwrap();
    cloud.agent = Some(agent);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = cloud.client.get(&format!("/servers?limit={}", servers.max(1))).await.unwrap();
        let running = list.as_array().map(|l| l.iter().filter(|s| s["status"] == "running").count()).unwrap_or(0);
        if running >= servers {
            break;
        }
        assert!(Instant::now() < deadline, "only {running} of {servers} servers running after 10 minutes");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (cloud, t.elapsed())
}

/// What [`provision`] measured.
struct Provisioned {
    wall: Duration,
    cpu: Duration,
    ok: usize,
    create: Vec<Duration>,
    /// provisions/s per window, in order.
    windows: Vec<f64>,
}

/// Provisions `n` VMs `concurrency` at a time (the first `owned` of them owned by `owner`),
/// printing the rate of each window of `window` completions as it closes.
async fn provision(cloud: &Cloud, seed: &Seed, n: usize, concurrency: usize, owned: usize, owner: &str, window: usize) -> Provisioned {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cpu0 = cpu_time();
    let start = Instant::now();
    let feeder = {
        let (c, seed, owner) = (cloud.client.clone(), seed.clone(), owner.to_string());
        tokio::spawn(async move {
            for i in 0..n {
                let permit = sem.clone().acquire_owned().await.unwrap();
                let c = c.clone();
                let mut body = seed.vm_body(&format!("scale-{i}"));
                if i < owned {
                    body["owner_uuid"] = json!(owner);
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = c.post("/vms", &body).await;
                    let created = t.elapsed();
                    let ok = match r {
                        Ok(r) => {
                            let job = r["job_uuid"].as_str().unwrap_or_default().to_string();
                            let j = c.get(&format!("/jobs/{job}/wait?timeout=600")).await;
                            j.is_ok_and(|j| j["execution"] == "succeeded")
                        }
                        Err(e) => {
                            eprintln!("CreateVm failed: {e}");
                            false
                        }
                    };
                    drop(permit);
                    let _ = tx.send((created, ok));
                });
            }
        })
    };
    let (mut done, mut ok, mut create, mut windows) = (0, 0, Vec::with_capacity(n), Vec::new());
    let mut window_start = start;
    while let Some((c, s)) = rx.recv().await {
        done += 1;
        ok += usize::from(s);
        create.push(c);
        if done % window == 0 || done == n {
            let now = Instant::now();
            let size = if done % window == 0 { window } else { done % window };
            let rate = size as f64 / (now - window_start).as_secs_f64();
            println!(
                "    provisions {:>6}..{:<6} {:>7.1} provisions/s   ({:.0} s in)",
                done - size + 1,
                done,
                rate,
                (now - start).as_secs_f64()
            );
            if size == window {
                windows.push(rate);
            }
            window_start = now;
        }
        if done == n {
            break;
        }
    }
    feeder.await.unwrap();
    create.sort();
    Provisioned { wall: start.elapsed(), cpu: cpu_time() - cpu0, ok, create, windows }
}

/// p50 and p99 (ms) of `n` sequential calls of `f`.
async fn latency<F, Fut>(n: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        lat.push(t.elapsed());
    }
    lat.sort();
    (percentile_ms(&lat, 0.5), percentile_ms(&lat, 0.99))
}

fn image(i: usize) -> Value {
    json!({"v": 2, "uuid": uuid::Uuid::new_v4(), "owner": "00000000-0000-0000-0000-000000000000", "name": format!("image-{}", i % 50), "version": format!("{i}"),
        "state": "active", "disabled": false, "public": true, "type": "zvol", "os": "linux",
        "published_at": format!("2026-{:02}-{:02}T{:02}:{:02}:{:02}.000Z", 1 + i % 12, 1 + i % 28, i % 24, i % 60, (i / 60) % 60),
        "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 10240, "description": "a benchmark image with a typical description",
        "tags": {"role": "os"}, "files": [{"sha1": format!("{i:040x}"), "size": 1 << 30, "compression": "gzip", "stor": "local"}]})
}

/// The big cloud: N servers, M provisions, idle CPU, API latencies.
async fn big(b: Backend, servers: usize, vms: usize, concurrency: usize, idle: Duration, heartbeat: Duration, requests: usize) {
    let name = format!("{b:?}").to_lowercase();
    println!("{name}: {servers} simulated servers, {vms} VMs provisioned {concurrency} at a time");
    let o = options(b, heartbeat).cloudapi_http();
    let (cloud, started) = start_cloud(&o, servers).await;
    println!("  {servers} servers started and running in {:.1} s", started.as_secs_f64());
    let seed = cloud.seed_sized(512, 10_240).await.unwrap();
    let key = Key::from_seed(7);
    let acct = cloud
        .client
        .post("/accounts", &json!({"login": "scale", "email": "scale@example.com", "keys": [{"key": key.openssh()}]}))
        .await
        .unwrap();
    let owner = acct["uuid"].as_str().unwrap().to_string();
    let window = if vms >= 10_000 { 1000 } else { (vms / 10).max(1) };
    let p = provision(&cloud, &seed, vms, concurrency, vms.min(1000), &owner, window).await;
    let (first, last) = (p.windows.first().copied().unwrap_or(0.0), p.windows.last().copied().unwrap_or(0.0));
    println!(
        "  {name} {vms} provisions: {:.1} provisions/s overall ({} succeeded) in {:.0} s; first {window}: {first:.1}/s, last {window}: {last:.1}/s, last/first {:.2}",
        vms as f64 / p.wall.as_secs_f64(),
        p.ok,
        p.wall.as_secs_f64(),
        last / first.max(1e-9)
    );
    println!("  {name} CreateVm p50 {:.1} ms p99 {:.1} ms", percentile_ms(&p.create, 0.5), percentile_ms(&p.create, 0.99));
    println!("  {name} process CPU while provisioning: {:.0}% of one core", cpu_pct(p.cpu, p.wall));
    println!("  {name} provision job, median ms: {}", nereid_testkit::job_times::provision_medians(&cloud).await);
    let (c0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(idle).await;
    println!(
        "  {name} process CPU idle ({servers} servers, {} VMs, {} s): {:.1}% of one core",
        p.ok,
        idle.as_secs(),
        cpu_pct(cpu_time() - c0, t0.elapsed())
    );

    // The account's machines topped up to 1,000 with copies of one of its real ones (new
    // UUIDs and names, written straight to the store) when fewer were provisioned.
    let owned = vms.min(1000);
    if owned < 1000 {
        let mine = cloud.client.get(&format!("/vms?owner_uuid={owner}&limit=1")).await.unwrap();
        let vm = mine[0]["uuid"].as_str().unwrap().to_string();
        let record = cloud.headnode.app.store.get("vms", &vm).await.unwrap().unwrap().value;
        let mut ops = Vec::new();
        for i in owned..1000 {
            let mut r = record.clone();
            let u = uuid::Uuid::new_v4();
            r["uuid"] = json!(u);
            r["alias"] = json!(format!("copy-{i}"));
            ops.push(Op::put("vms", u.to_string(), r, Cond::Absent));
            if ops.len() == 250 {
                cloud.headnode.app.store.batch(std::mem::take(&mut ops)).await.unwrap();
            }
        }
        cloud.headnode.app.store.batch(ops).await.unwrap();
        println!("  ({} of the account's 1000 machines are record copies of a provisioned one)", 1000 - owned);
    }
    // 999 more active images next to the seed's (straight to the store: seeding is not measured).
    let mut ops = Vec::new();
    for i in 1..1000 {
        let img = image(i);
        ops.push(Op::put("images", img["uuid"].as_str().unwrap().to_string(), img, Cond::Absent));
        if ops.len() == 250 {
            cloud.headnode.app.store.batch(std::mem::take(&mut ops)).await.unwrap();
        }
    }
    cloud.headnode.app.store.batch(ops).await.unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let tenant = Client::new(&url, "scale", key);
    let first = tenant.get("/my/machines?limit=1000&offset=0").await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    let machines = first.headers.get("x-resource-count").and_then(|h| h.to_str().ok()).unwrap_or("?").to_string();
    let (p50, p99) = latency(requests, || async {
        assert_eq!(tenant.get_bytes("/my/machines?limit=1000&offset=0").await.unwrap().0, 200);
    })
    .await;
    println!("  {name} signed CloudAPI GET /my/machines ({machines} machines), {requests} requests: p50 {p50:.1} ms p99 {p99:.1} ms");
    let images = cloud.client.get("/images").await.unwrap().as_array().map(Vec::len).unwrap_or(0);
    let (p50, p99) = latency(requests, || async {
        assert_eq!(cloud.get_bytes("/images").await.unwrap().0, 200);
    })
    .await;
    println!("  {name} admin GET /images ({images} images), {requests} requests: p50 {p50:.1} ms p99 {p99:.1} ms");
    let listed = cloud.client.get("/vms?limit=1000").await.unwrap().as_array().map(Vec::len).unwrap_or(0);
    let (p50, p99) = latency(requests, || async {
        assert_eq!(cloud.get_bytes("/vms?limit=1000").await.unwrap().0, 200);
    })
    .await;
    println!("  {name} admin GET /vms?limit=1000 ({listed} listed of {}), {requests} requests: p50 {p50:.1} ms p99 {p99:.1} ms", p.ok);
}

/// 100 servers, an empty cloud, `n` provisions on SQLite.
async fn small(n: usize, concurrency: usize, heartbeat: Duration) {
    println!("sqlite: 100 simulated servers, empty cloud, {n} VMs provisioned {concurrency} at a time");
    let o = options(Backend::Sqlite, heartbeat);
    let (cloud, started) = start_cloud(&o, 100).await;
    println!("  100 servers started and running in {:.1} s", started.as_secs_f64());
    let seed = cloud.seed_sized(512, 10_240).await.unwrap();
    let p = provision(&cloud, &seed, n, concurrency, 0, "", (n / 10).max(1)).await;
    println!(
        "  sqlite 100 servers, {n} provisions: {:.1} provisions/s ({} succeeded); CreateVm p50 {:.1} ms p99 {:.1} ms; CPU {:.0}% of one core",
        n as f64 / p.wall.as_secs_f64(),
        p.ok,
        percentile_ms(&p.create, 0.5),
        percentile_ms(&p.create, 0.99),
        cpu_pct(p.cpu, p.wall)
    );
    println!("  sqlite provision job, median ms: {}", nereid_testkit::job_times::provision_medians(&cloud).await);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = env_usize("NEREID_SCALE_SERVERS", 1000);
    let vms = env_usize("NEREID_SCALE_VMS", 500);
    let concurrency = env_usize("NEREID_SCALE_CONCURRENCY", 16).max(1);
    let idle = Duration::from_secs(env_usize("NEREID_SCALE_IDLE_SECS", 20) as u64);
    let heartbeat = Duration::from_secs(env_usize("NEREID_SCALE_HEARTBEAT_SECS", 5).max(1) as u64);
    let requests = env_usize("NEREID_SCALE_REQUESTS", 200).max(1);
    let small_n = env_usize("NEREID_SCALE_SMALL", 1000);
    let backends: Vec<Backend> = std::env::var("NEREID_SCALE_BACKENDS")
        .unwrap_or_else(|_| "sqlite,postgres".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "" => None,
            other => panic!("NEREID_SCALE_BACKENDS: unknown store {other:?} (sqlite, postgres)"),
        })
        .collect();
    println!(
        "scale harness: heartbeat every {} s (`nereid agent`'s default; `nereid up` uses 2 s), sim create 20 ms, start 10 ms",
        heartbeat.as_secs()
    );
    if vms < 20_000 {
        println!("  (the acceptance run: NEREID_SCALE_VMS=20000 cargo bench -p nereid-testkit --bench scale)");
    }
    for b in backends {
        big(b, servers, vms, concurrency, idle, heartbeat, requests).await;
    }
    if small_n > 0 {
        small(small_n, concurrency, heartbeat).await;
    }
}
