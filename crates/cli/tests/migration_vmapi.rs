//! VMAPI's migration surface on simulated servers, as an operator's tooling drives it:
//! a stopped VM moves (offline, by its files) and stays stopped; while a migration holds
//! a VM, other changes to it are refused; `GET /migrations` and the NDJSON watch stream
//! tell how it went; the record's escape hatch (`DELETE /migrations/{vm}`) removes only a
//! record that holds nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use serde_json::{Value, json};

async fn cloud(backend: Backend) -> Cloud {
    Cloud::start_with(Options { sim_servers: 2, ..Options::new(backend) }).await.unwrap()
}

fn on_agent(cloud: &Cloud, server: &str, vm: &str) -> Option<String> {
    let node = cloud.agent.as_ref().unwrap().nodes.iter().find(|n| n.uuid.to_string() == server).unwrap().clone();
    node.node.get(vm.parse().unwrap()).map(|s| s.state).filter(|s| s != "destroyed")
}

async fn migrate(cloud: &Cloud, vm: &str, body: Value) -> Result<Value, nereid_client::Error> {
    cloud.client.post(&format!("/vms/{vm}?action=migrate"), &body).await
}

async fn a_stopped_vm_moves_and_stays_stopped(backend: Backend) {
    let cloud = cloud(backend).await;
    let seed = cloud.seed().await.unwrap();
    let servers: Vec<String> = cloud.agent.as_ref().unwrap().servers().iter().map(|s| s.to_string()).collect();
    let mut body = seed.vm_body("quiet");
    body["server_uuid"] = json!(servers[0]);
    let (vm, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let stop = cloud.client.post(&format!("/vms/{vm}?action=stop"), &json!({})).await.unwrap();
    assert_eq!(cloud.wait_job(stop["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");

    // Begun: the VM is held; another change to it waits for the migration.
    let begun = migrate(&cloud, &vm, json!({"migration_action": "begin"})).await.unwrap();
    assert_eq!(begun["migration"]["phase"], "begin", "{begun}");
    assert_eq!(cloud.wait_job(begun["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    let refused = cloud.client.post(&format!("/vms/{vm}?action=start"), &json!({})).await.unwrap_err();
    assert!(refused.to_string().contains("is being migrated") && refused.to_string().contains("abort"), "{refused}");
    let early = cloud.client.delete(&format!("/migrations/{vm}")).await.unwrap_err();
    assert!(early.to_string().contains("holds"), "the escape hatch keeps a record that holds a target: {early}");

    for action in ["sync", "switch"] {
        let a = migrate(&cloud, &vm, json!({"migration_action": action})).await.unwrap();
        assert_eq!(cloud.wait_job(a["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded", "{action}");
    }
    let v = cloud.vm(&vm).await.unwrap();
    assert_eq!(v["server_uuid"], servers[1].as_str(), "{v}");
    assert_eq!(v["state"], "stopped", "a VM stopped when it left is stopped where it arrived: {v}");
    assert_eq!(on_agent(&cloud, &servers[1], &vm).as_deref(), Some("stopped"));

    // How it went: the list (raw, for operators: servers and mechanism), and the watch
    // stream of a migration that is over: its end event at once.
    let all = cloud.client.get(&format!("/migrations?vm_uuid={vm}&format=raw")).await.unwrap();
    let m = &all[0];
    assert_eq!((m["phase"].as_str(), m["state"].as_str()), (Some("switch"), Some("successful")), "{all}");
    assert_eq!(m["source_server_uuid"], servers[0].as_str());
    assert_eq!(m["target_server_uuid"], servers[1].as_str());
    assert_eq!(m["mechanism"], "offline", "a stopped VM cannot move live: {m}");
    assert!(m.get("token").is_none(), "the agents' secret is never shown: {m}");
    let phases: Vec<&str> = m["progress_history"].as_array().unwrap().iter().map(|e| e["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["begin", "sync", "switch"], "{m}");
    let public = cloud.client.get(&format!("/migrations/{vm}")).await.unwrap();
    assert!(public.get("source_server_uuid").is_none() && public["duration_ms"].as_i64().is_some(), "Triton's public form: {public}");
    let mut stream = cloud.client.get_lines(&format!("/migrations/{vm}/watch")).await.unwrap();
    let mut lines = Vec::new();
    while let Some(l) = stream.next().await.unwrap() {
        lines.push(l);
    }
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last, json!({"type": "end", "phase": "switch", "state": "successful"}), "{lines:?}");

    let fin = migrate(&cloud, &vm, json!({"migration_action": "finalize"})).await.unwrap();
    assert_eq!(fin, json!({}));
    assert_eq!(on_agent(&cloud, &servers[0], &vm), None, "finalize deletes the source's copy");
    assert_eq!(on_agent(&cloud, &servers[1], &vm).as_deref(), Some("stopped"));
    let again = migrate(&cloud, &vm, json!({"migration_action": "finalize"})).await.unwrap_err();
    assert!(again.to_string().contains("The migration is over (finalized)"), "{again}");
    cloud.client.delete(&format!("/migrations/{vm}")).await.unwrap();
    let none = cloud.client.get(&format!("/migrations/{vm}")).await.unwrap_err();
    assert!(none.to_string().contains("has no migration"), "{none}");
}

both_backends!(a_stopped_vm_moves_and_stays_stopped);
