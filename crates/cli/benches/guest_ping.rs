//! Benchmark: the time from CreateVm to the guest answering ping at its NAPI address —
//! placement, the provision job, the image cache, QEMU, the guest's boot, its DHCP lease
//! from the agent, and the first echo reply — as a new user sees it: `nereid up --backend
//! qemu --demo` in a network namespace the benchmark makes (the managed bridge lives
//! there), VMs from the banner's command, `ping` from the namespace. Guests boot under TCG
//! (see qemu_provision for why). Numbers are printed, never asserted.
//!
//! `cargo bench -p nereid --bench guest_ping` (`NEREID_BENCH_VMS` changes the count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use nereid_testkit::netns::NetNs;
use nereid_testkit::qemu::{Reaper, test_image};

#[path = "../tests/common/mod.rs"]
mod common;

const NEREID: &str = env!("CARGO_BIN_EXE_nereid");

fn main() {
    let n: usize = std::env::var("NEREID_BENCH_VMS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let image = test_image().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _reaper = Reaper(data.join("agent"));
    let ns = NetNs::new("pingbench").unwrap();
    let mut up = ns
        .cmd(NEREID)
        .args(["up", "--data-dir", data.to_str().unwrap(), "--admin-listen", "127.0.0.1:0", "--cloudapi-listen", "127.0.0.1:0"])
        .args(["--backend", "qemu", "--accel", "tcg", "--demo", "--demo-image", image.to_str().unwrap()])
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = up.stdout.take().unwrap();
    let (banner, create) = common::up_banner(&mut stdout);
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let create = create.unwrap_or_else(|| panic!("no vm create example in:\n{banner}")).replacen("nereid", NEREID, 1);
    let mut times = Vec::new();
    for i in 0..n {
        let cmd = create.replace("alias=web-1", &format!("alias=bench-{i}"));
        let t0 = Instant::now();
        let out = ns.cmd("sh").arg("-c").arg(&cmd).output().unwrap();
        let printed = common::stdout(&out);
        assert!(out.status.success(), "{cmd}\n{printed}{}", common::stderr(&out));
        let vm = printed.split_whitespace().nth(1).unwrap().to_string();
        let got = ns.cmd(NEREID).args(["admin", "--data-dir", data.to_str().unwrap(), "--json", "vm", "get", &vm]).output().unwrap();
        let rec: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
        let ip = rec["nics"][0]["ip"].as_str().unwrap().to_string();
        while !ns.pings(&ip, 1) {
            assert!(t0.elapsed() < Duration::from_secs(300), "{ip} never answered ping");
        }
        times.push(t0.elapsed());
    }
    let _ = std::process::Command::new("kill").args(["-INT", &up.id().to_string()]).status();
    let _ = up.wait();
    times.sort();
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "CreateVm → guest answers ping (TCG, test image, DHCP from the agent), {n} VMs one after another: p50 {:.1} s, min {:.1} s, max {:.1} s",
        s(times[times.len() / 2]),
        s(times[0]),
        s(times[times.len() - 1])
    );
}
