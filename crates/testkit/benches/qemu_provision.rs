//! Benchmark: real VMs. For each provision, the time from CreateVm to the VM's QEMU
//! running (control plane + agent: placement, job, image cache, overlay, QEMU start;
//! no guest boot), to the guest's first console output, and to the test image's
//! `nereid-test: ready` (booted, metadata read and written) — for 10 provisions one
//! after another and 10 at once. Numbers are printed, never asserted.
//!
//! Guests boot UEFI (OVMF) under TCG, as the tests do, so numbers compare across machines
//! (CI's may have a /dev/kvm that cannot run firmware); `NEREID_BENCH_ACCEL=auto|kvm`
//! measures KVM.
//! `cargo bench -p nereid-testkit --bench qemu_provision` (`NEREID_BENCH_VMS` changes the count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nereid_testkit::qemu::{Reaper, boots, console_log, import_image, test_image, vm_dir};
use nereid_testkit::{Backend, Cloud};
use serde_json::{Value, json};

/// When each milestone of one provision was reached, from CreateVm.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    create: Duration,
    qemu: Duration,
    console: Duration,
    ready: Duration,
}

fn qemu_running(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("qemu.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

async fn provision(cloud: &Cloud, agent_dir: PathBuf, body: Value) -> (String, Times) {
    let t0 = Instant::now();
    let r = cloud.client.post("/vms", &body).await.unwrap();
    let mut t = Times { create: t0.elapsed(), ..Times::default() };
    let vm = r["vm_uuid"].as_str().unwrap().to_string();
    let dir = vm_dir(&agent_dir, &vm);
    let deadline = t0 + Duration::from_secs(600);
    while t.ready.is_zero() {
        assert!(Instant::now() < deadline, "VM {vm} did not boot in 10 minutes");
        if t.qemu.is_zero() && qemu_running(&dir) {
            t.qemu = t0.elapsed();
        }
        if !t.qemu.is_zero() {
            let log = console_log(&agent_dir, &vm);
            if t.console.is_zero() && !log.is_empty() {
                t.console = t0.elapsed();
            }
            if boots(&log) >= 1 {
                t.ready = t0.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (vm, t)
}

fn report(what: &str, ts: &[Times]) {
    let stat = |f: fn(&Times) -> Duration| {
        let mut v: Vec<f64> = ts.iter().map(|t| f(t).as_secs_f64() * 1000.0).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (c50, cmax) = stat(|t| t.create);
    let (q50, qmax) = stat(|t| t.qemu);
    let (f50, fmax) = stat(|t| t.console);
    let (r50, rmax) = stat(|t| t.ready);
    println!(
        "{what:<14} CreateVm answered p50 {c50:.0} ms max {cmax:.0} ms | QEMU running p50 {q50:.0} ms max {qmax:.0} ms | first console output p50 {:.1} s max {:.1} s | guest ready p50 {:.1} s max {:.1} s",
        f50 / 1000.0,
        fmax / 1000.0,
        r50 / 1000.0,
        rmax / 1000.0
    );
}

async fn destroy_all(cloud: &Cloud, vms: &[String]) {
    let mut jobs = Vec::new();
    for vm in vms {
        jobs.push(cloud.client.delete(&format!("/vms/{vm}")).await.unwrap()["job_uuid"].as_str().unwrap().to_string());
    }
    for j in jobs {
        cloud.wait_job(&j).await.unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("NEREID_BENCH_VMS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let image_file = tokio::task::spawn_blocking(test_image).await.unwrap().unwrap();
    let cloud = Cloud::start(Backend::Sqlite).await.unwrap();
    let seed = cloud.seed_sized(256, 1024).await.unwrap();
    let image = import_image(&cloud.client, &image_file, "nereid-test").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let agent_dir = tmp.path().join("agent");
    let _reaper = Reaper(agent_dir.clone());
    let accel = std::env::var("NEREID_BENCH_ACCEL").unwrap_or_else(|_| "tcg".into()).parse().unwrap();
    let o = nereid_agent::QemuOptions { stop_timeout: Duration::from_secs(10), accel, ..nereid_agent::QemuOptions::default() };
    let agent = cloud.start_qemu_agent(&agent_dir, o).await.unwrap();
    let servers = cloud.wait_servers(1).await.unwrap();
    let server = cloud.client.get(&format!("/servers/{}", servers[0]["uuid"].as_str().unwrap())).await.unwrap();
    let backend = server["sysinfo"]["Nereid Backend"].as_str().unwrap_or("qemu").to_string();
    let body = |i: usize| {
        json!({"owner_uuid": seed.owner, "brand": "bhyve", "billing_id": seed.package, "image_uuid": image, "networks": [seed.network],
            "bootrom": "uefi", "alias": format!("bench-{i}"), "customer_metadata": {"test-message": "bench"}})
    };
    println!("{n} VMs of 256 MiB from the {} MiB test image, UEFI, on {backend}:", std::fs::metadata(&image_file).unwrap().len() >> 20);

    // The first provision also installs the image in the node's cache; measured apart.
    let (vm, first) = provision(&cloud, agent_dir.clone(), body(0)).await;
    report("first (cold)", &[first]);
    destroy_all(&cloud, &[vm]).await;

    let mut seq = Vec::new();
    for i in 0..n {
        let (vm, t) = provision(&cloud, agent_dir.clone(), body(i + 1)).await;
        seq.push(t);
        destroy_all(&cloud, &[vm]).await;
    }
    report("sequential", &seq);

    let results = futures_util::future::join_all((0..n).map(|i| provision(&cloud, agent_dir.clone(), body(100 + i)))).await;
    let (vms, ts): (Vec<String>, Vec<Times>) = results.into_iter().unzip();
    report("concurrent", &ts);
    destroy_all(&cloud, &vms).await;
    agent.shutdown().await;
}
