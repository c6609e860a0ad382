//! Disk health end to end: a server whose agent reads failing disks (a fake `smartctl` at
//! the edge that prints real captured output, `crates/agent/tests/data/smart/`; the parser,
//! the heartbeat, the headnode's record and CNAPI are real) shows them in `GET
//! /servers/:uuid`, as its problems (`disk_failing`), on the agent's `/metrics` and in
//! `nereid admin server get`; when the disks read healthy again the problems go away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nereid_testkit::Options;
use serde_json::{Value, json};

/// A fake smartctl: `--scan-open` prints the captured scan (sda, nvme0, nvme1); each device
/// prints its fixture from `DIR/mode` (`failing` or `healthy`), with smartctl's exit status.
fn fake_smartctl(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let data = format!("{}/../agent/tests/data/smart", env!("CARGO_MANIFEST_DIR"));
    let mode = dir.join("mode");
    let script = format!(
        r#"#!/bin/sh
case "$*" in
  *--scan-open*) cat {data}/scan-open.json; exit 0 ;;
esac
if [ "$(cat {mode})" = failing ]; then
  case "$*" in
    */dev/sda) cat {data}/ata-qemu-failing-edited.json; exit 28 ;;
    */dev/nvme0) cat {data}/nvme-qemu-x.json ;;
    */dev/nvme1) cat {data}/nvme-qemu-critical-warning-x.json; exit 8 ;;
  esac
else
  case "$*" in
    */dev/sda) cat {data}/ata-qemu-x.json; exit 4 ;;
    */dev/nvme0) cat {data}/nvme-qemu-x.json ;;
    */dev/nvme1) sed 's#/dev/nvme0#/dev/nvme1#; s#NEREIDNVME0#NEREIDNVME1#' {data}/nvme-qemu-x.json ;;
  esac
fi
"#,
        mode = mode.display()
    );
    std::fs::write(&mode, "failing").unwrap();
    let path = dir.join("smartctl");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Waits (30 s at most) until the server's CNAPI object satisfies `ok`.
async fn wait_server(cloud: &Cloud, server: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cloud.client.get(&format!("/servers/{server}")).await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < end, "{what} never happened: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn disk_problems(s: &Value) -> Vec<Value> {
    s["problems"].as_array().unwrap().iter().filter(|p| p["kind"] == "disk_failing").cloned().collect()
}

async fn failing_disks_are_the_servers_problem_until_they_read_healthy(b: Backend) {
    let o = Options { sim_servers: 2, heartbeat: Duration::from_millis(200), ..Options::new(b) };
    let cloud = Cloud::start_with(o).await.unwrap();
    cloud.wait_servers(2).await.unwrap();
    let agent = cloud.agent.as_ref().unwrap();
    let (sick, other) = (agent.nodes[0].uuid.to_string(), agent.nodes[1].uuid.to_string());
    let s = cloud.client.get(&format!("/servers/{sick}")).await.unwrap();
    assert_eq!((&s["disks"], &s["problems"]), (&json!([]), &json!([])), "a simulated server reads no disks of its own");

    let dir = tempfile::tempdir().unwrap();
    agent.nodes[0].set_smartctl(Some(fake_smartctl(dir.path())));
    let s = wait_server(&cloud, &sick, "the failing disks reaching the server", |s| disk_problems(s).len() == 2).await;

    // The disks as read, on the server object.
    let disks = s["disks"].as_array().unwrap();
    let devices: Vec<&str> = disks.iter().map(|d| d["device"].as_str().unwrap()).collect();
    assert_eq!(devices, vec!["/dev/sda", "/dev/nvme0", "/dev/nvme1"], "{s}");
    let (sda, nvme0, nvme1) = (&disks[0], &disks[1], &disks[2]);
    assert_eq!(
        (&sda["protocol"], &sda["model"], &sda["serial"], &sda["passed"]),
        (&json!("ATA"), &json!("QEMU HARDDISK"), &json!("QM00005"), &json!(false))
    );
    assert_eq!((&sda["reallocated_sectors"], &sda["pending_sectors"], &sda["offline_uncorrectable"]), (&json!(1234), &json!(8), &json!(2)));
    assert_eq!((&sda["temperature_celsius"], &sda["power_on_hours"], &sda["error_count"]), (&json!(31), &json!(41234), &json!(3)));
    assert_eq!((&nvme0["passed"], &nvme0["percentage_used"], &nvme0["media_errors"]), (&json!(true), &json!(0), &json!(0)));
    assert!(nvme0.get("failing").is_none(), "a healthy disk has no reasons: {nvme0}");
    assert_eq!((&nvme1["passed"], &nvme1["critical_warning"]), (&json!(false), &json!(4)));

    // Each failing disk is a problem of the server, naming the disk and why.
    let p = disk_problems(&s);
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0]["message"],
        "disk /dev/sda (QEMU HARDDISK, serial QM00005) is failing: SMART overall-health self-assessment: FAILED; \
         attribute 5 Reallocated_Sector_Ct at 30, at or below its threshold 36; 8 sector(s) pending reallocation (unreadable); \
         2 sector(s) uncorrectable in the offline scan"
    );
    assert_eq!(
        p[1]["message"],
        "disk /dev/nvme1 (QEMU NVMe Ctrl, serial NEREIDNVME1) is failing: NVMe critical warning 0x04: NVM subsystem reliability degraded (media or internal errors)"
    );
    // The other server is unaffected; the listing shows the problem too.
    let o = cloud.client.get(&format!("/servers/{other}")).await.unwrap();
    assert_eq!((&o["disks"], &o["problems"]), (&json!([]), &json!([])));
    let all = cloud.client.get("/servers").await.unwrap();
    let listed = all.as_array().unwrap().iter().find(|x| x["uuid"] == json!(sick)).unwrap().clone();
    assert_eq!(disk_problems(&listed).len(), 2, "{listed}");
    // Placement does not take a disk problem for a nic tag's.
    assert!(p.iter().all(|p| p["nic_tag"] == ""), "{p:?}");

    // The agent's /metrics (over mutual TLS, as the headnode calls it).
    let node = &agent.nodes[0];
    let http = cloud.headnode.app.agents.client(node.uuid, &agent.credentials.key().pin()).unwrap();
    let t = http.get(format!("https://{}/metrics", agent.addr)).send().await.unwrap().text().await.unwrap();
    let labels =
        |dev: &str, model: &str, serial: &str| format!("{{server=\"{sick}\",device=\"{dev}\",model=\"{model}\",serial=\"{serial}\"}}");
    for want in [
        format!("nereid_disk_scan_ok{{server=\"{sick}\"}} 1"),
        format!("nereid_disk_health_ok{} 0", labels("/dev/sda", "QEMU HARDDISK", "QM00005")),
        format!("nereid_disk_health_ok{} 1", labels("/dev/nvme0", "QEMU NVMe Ctrl", "NEREIDNVME0")),
        format!("nereid_disk_health_ok{} 0", labels("/dev/nvme1", "QEMU NVMe Ctrl", "NEREIDNVME1")),
        format!("nereid_disk_pending_sectors{} 8", labels("/dev/sda", "QEMU HARDDISK", "QM00005")),
        format!("nereid_disk_temperature_celsius{} 50", labels("/dev/nvme0", "QEMU NVMe Ctrl", "NEREIDNVME0")),
    ] {
        assert!(t.contains(&want), "{want} missing from the agent's metrics:\n{t}");
    }
    assert!(!t.contains(&format!("nereid_disk_scan_ok{{server=\"{other}\"}}")), "the other server reads no disks");

    // `nereid admin server get`: a disks section with why each fails; --json has the field.
    let out = nereid_async(&cloud, &["admin", "server", "get", &sick]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("disk_failing"), "the problems line names them:\n{text}");
    let row = |dev: &str| {
        text.lines().find(|l| l.trim_start().starts_with(&format!("{dev} "))).unwrap_or_else(|| panic!("no row for {dev}:\n{text}"))
    };
    assert!(text.lines().any(|l| l == "disks:"), "{text}");
    assert_eq!(row("/dev/sda").split_whitespace().nth(5), Some("FAILING"), "{text}");
    assert_eq!(row("/dev/nvme0").split_whitespace().nth(6), Some("ok"), "{text}");
    assert!(text.contains("  /dev/sda failing: 8 sector(s) pending reallocation (unreadable)"), "{text}");
    assert!(text.contains("  /dev/nvme1 failing: NVMe critical warning 0x04"), "{text}");
    let out = nereid_async(&cloud, &["admin", "server", "get", &sick, "--json"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["disks"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(disk_problems(&v).len(), 2);

    // The disks read healthy again (replaced, or a false alarm): the problems go away.
    std::fs::write(dir.path().join("mode"), "healthy").unwrap();
    agent.nodes[0].set_smartctl(Some(dir.path().join("smartctl")));
    let s = wait_server(&cloud, &sick, "the problems clearing", |s| disk_problems(s).is_empty()).await;
    assert_eq!(s["problems"], json!([]));
    let passed: Vec<&Value> = s["disks"].as_array().unwrap().iter().map(|d| &d["passed"]).collect();
    assert_eq!(passed, vec![&json!(true); 3], "{s}");
}

both_backends!(failing_disks_are_the_servers_problem_until_they_read_healthy);
