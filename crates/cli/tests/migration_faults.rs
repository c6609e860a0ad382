//! A migration that fails at any phase leaves the VM running where it was and nothing on
//! the target: the simulated servers' faults (`internal_metadata["nereid:sim_fault"]`, set
//! when the VM is created) break the target's prepare (begin), the transfer halfway
//! through sync, and the target's guest during switch. Each time the migration is `failed`
//! with an error naming what failed, the target's agent has no such VM and no capacity is
//! held on the target; `abort` then succeeds and changes nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nereid_store::Filter;
use nereid_testkit::Options;
use nereid_types::migration::{SIM_FAULT_PREPARE, SIM_FAULT_SWITCH, SIM_FAULT_TRANSFER};
use serde_json::{Value, json};

/// `POST /vms/{vm}?action=migrate` with `migration_action`, and its job's outcome.
async fn act(cloud: &Cloud, vm: &str, action: &str) -> (Value, Value) {
    let out = cloud.client.post(&format!("/vms/{vm}?action=migrate"), &json!({"migration_action": action})).await.unwrap();
    let job = out["job_uuid"].as_str().unwrap_or_else(|| panic!("{action}: no job in {out}")).to_string();
    let j = cloud.wait_job(&job).await.unwrap();
    (out, j)
}

async fn migration(cloud: &Cloud, vm: &str) -> Value {
    cloud.client.get(&format!("/migrations/{vm}?format=raw")).await.unwrap()
}

fn on_agent(cloud: &Cloud, server: &str, vm: &str) -> Option<String> {
    let agent = cloud.agent.as_ref().unwrap();
    let node = agent.nodes.iter().find(|n| n.uuid.to_string() == server).unwrap();
    node.node.get(vm.parse().unwrap()).map(|s| s.state).filter(|s| s != "destroyed")
}

async fn gone_from(cloud: &Cloud, server: &str, vm: &str) -> bool {
    for _ in 0..200 {
        if on_agent(cloud, server, vm).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn reservations(cloud: &Cloud, server: &str, vm: &str) -> i64 {
    let f = Filter::and(vec![Filter::eq("server_uuid", server), Filter::eq("vm_uuid", vm)]);
    cloud.headnode.app.store.count("reservations", &f).await.unwrap()
}

/// Migrates a VM carrying `fault` up to the phase that breaks, then checks the wreckage
/// is none and that abort cleans up.
async fn fails_cleanly(cloud: &Cloud, seed: &nereid_testkit::Seed, fault: &str, phase: &str) {
    let mut body = seed.vm_body(fault);
    body["internal_metadata"] = json!({"nereid:sim_fault": fault});
    let (vm, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let before = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    let source = before["server_uuid"].as_str().unwrap().to_string();

    let steps: &[&str] = match phase {
        "begin" => &["begin"],
        "sync" => &["begin", "sync"],
        _ => &["begin", "sync", "switch"],
    };
    let mut target = None;
    for step in steps {
        let (_, j) = act(cloud, &vm, step).await;
        let m = migration(cloud, &vm).await;
        target = target.or(m["target_server_uuid"].as_str().map(str::to_string));
        if *step != phase {
            assert_eq!((j["execution"].as_str(), m["state"].as_str()), (Some("succeeded"), Some("paused")), "{fault}: {step}: {m}");
        } else {
            assert_eq!(j["execution"], "failed", "{fault}: the {step} job fails: {j}");
        }
    }
    let m = migration(cloud, &vm).await;
    assert_eq!((m["phase"].as_str(), m["state"].as_str()), (Some(phase), Some("failed")), "{fault}: {m}");
    let err = m["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(err.contains(phase) || (phase == "begin" && err.contains("prepare")), "{fault}: the error names the phase: {err:?}");

    // The VM runs where it ran, unchanged; the target has nothing of it.
    let after = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!((after["server_uuid"].as_str(), after["state"].as_str()), (Some(source.as_str()), Some("running")), "{fault}: {after}");
    assert_eq!(after["nics"], before["nics"], "{fault}: NICs untouched");
    assert_eq!(on_agent(cloud, &source, &vm).as_deref(), Some("running"), "{fault}");
    let servers: Vec<String> = cloud.agent.as_ref().unwrap().servers().iter().map(|s| s.to_string()).collect();
    let target = target.unwrap_or_else(|| servers.iter().find(|s| **s != source).unwrap().clone());
    assert!(gone_from(cloud, &target, &vm).await, "{fault}: the target's agent has no copy");
    assert_eq!(reservations(cloud, &target, &vm).await, 0, "{fault}: no capacity held on the target");

    // abort: succeeds and leaves the VM as it was.
    let (_, j) = act(cloud, &vm, "abort").await;
    assert_eq!(j["execution"], "succeeded", "{fault}: abort: {j}");
    let m = migration(cloud, &vm).await;
    assert_eq!((m["phase"].as_str(), m["state"].as_str()), (Some("abort"), Some("successful")), "{fault}: {m}");
    let after = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!((after["server_uuid"].as_str(), after["state"].as_str()), (Some(source.as_str()), Some("running")), "{fault}: {after}");
    assert_eq!(on_agent(cloud, &source, &vm).as_deref(), Some("running"), "{fault}");
}

async fn a_failure_at_each_phase_leaves_the_vm_on_the_source(backend: Backend) {
    let cloud = Cloud::start_with(Options { sim_servers: 2, ..Options::new(backend) }).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    fails_cleanly(&cloud, &seed, SIM_FAULT_PREPARE, "begin").await;
    fails_cleanly(&cloud, &seed, SIM_FAULT_TRANSFER, "sync").await;
    fails_cleanly(&cloud, &seed, SIM_FAULT_SWITCH, "switch").await;
}

both_backends!(a_failure_at_each_phase_leaves_the_vm_on_the_source);

/// `nereid admin vm migrate -w` on a VM whose transfer breaks: exit status 1 and a message
/// that says which phase failed and that the VM stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_cli_reports_a_failed_migration() {
    let cloud = Cloud::start_with(Options { sim_servers: 2, ..Options::new(Backend::Sqlite) }).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let mut body = seed.vm_body("cut");
    body["internal_metadata"] = json!({"nereid:sim_fault": SIM_FAULT_TRANSFER});
    let (vm, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let source = cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["server_uuid"].as_str().unwrap().to_string();
    let out = nereid_async(&cloud, &["admin", "vm", "migrate", &vm, "-w"]).await;
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("failed in phase sync") && text.contains(&format!("stays on server {source}")), "{text}");
    let v = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(source.as_str()), Some("running")), "{v}");
}
