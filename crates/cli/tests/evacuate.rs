//! `nereid admin server evacuate` empties a server for maintenance: every VM on it is
//! migrated to the other servers (running there, its record and NICs saying so), and the
//! server is left reserved. A VM no other server has room for is reported with the
//! allocator's explanation and stays where it was, running; the command then exits 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use serde_json::{Value, json};

async fn cloud(backend: Backend) -> Cloud {
    Cloud::start_with(Options { sim_servers: 3, ..Options::new(backend) }).await.unwrap()
}

fn servers(cloud: &Cloud) -> Vec<String> {
    cloud.agent.as_ref().unwrap().servers().iter().map(|s| s.to_string()).collect()
}

/// A running VM on `server` with `package`.
async fn vm_on(cloud: &Cloud, seed: &nereid_testkit::Seed, alias: &str, server: &str, package: &str) -> String {
    let mut body = seed.vm_body(alias);
    body["server_uuid"] = json!(server);
    body["billing_id"] = json!(package);
    let (uuid, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded", "{alias}");
    uuid
}

fn on_agent(cloud: &Cloud, server: &str, vm: &str) -> Option<String> {
    let node = cloud.agent.as_ref().unwrap().nodes.iter().find(|n| n.uuid.to_string() == server).unwrap().clone();
    node.node.get(vm.parse().unwrap()).map(|s| s.state).filter(|s| s != "destroyed")
}

async fn nics_of(cloud: &Cloud, vm: &str) -> Vec<Value> {
    cloud.client.get(&format!("/nics?belongs_to_uuid={vm}")).await.unwrap().as_array().cloned().unwrap()
}

async fn evacuate_moves_every_vm(backend: Backend) {
    let cloud = cloud(backend).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud);
    let (drained, others) = (&s[0], &s[1..]);
    let mut vms = Vec::new();
    for i in 0..10 {
        vms.push(vm_on(&cloud, &seed, &format!("vm-{i}"), drained, &seed.package).await);
    }

    let out = nereid_async(&cloud, &["admin", "server", "evacuate", drained, "--concurrency", "3", "-w"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("10 of 10 VM(s) moved off server {drained}")), "{text}");
    for vm in &vms {
        assert!(text.contains(&format!("VM {vm} (")) && text.contains("migrated"), "{vm}: {text}");
        let v = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
        let now = v["server_uuid"].as_str().unwrap().to_string();
        assert!(others.contains(&now), "{vm} is on another server: {v}");
        assert_eq!(v["state"], "running", "{v}");
        assert_eq!(on_agent(&cloud, &now, vm).as_deref(), Some("running"), "{vm} runs on {now}");
        for n in nics_of(&cloud, vm).await {
            assert_eq!(n["cn_uuid"].as_str(), Some(now.as_str()), "{vm}'s NIC moved with it: {n}");
        }
    }
    let server = cloud.client.get(&format!("/servers/{drained}")).await.unwrap();
    assert_eq!(server["reserved"], true, "the server stays reserved: {server}");
    let ev = cloud.client.get(&format!("/servers/{drained}/evacuation")).await.unwrap();
    assert_eq!(ev["state"], "done", "{ev}");
    assert!(ev["vms"].as_array().unwrap().iter().all(|v| v["state"] == "migrated"), "{ev}");
    let left: Vec<Value> =
        cloud.client.get(&format!("/vms?server_uuid={drained}&state=running")).await.unwrap().as_array().cloned().unwrap();
    assert!(left.is_empty(), "nothing runs on the drained server: {left:?}");
}

both_backends!(evacuate_moves_every_vm);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_that_fits_nowhere_is_explained_and_stays() {
    let cloud = cloud(Backend::Sqlite).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud);
    // 12 GiB VMs on 16 GiB servers: each other server has room for small VMs only.
    let big = cloud
        .client
        .post(
            "/packages",
            &json!({"name": "big", "version": "1.0.0", "max_physical_memory": 12_288, "quota": 10_240, "vcpus": 1, "brand": "bhyve"}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    vm_on(&cloud, &seed, "filler-1", &s[1], &big).await;
    vm_on(&cloud, &seed, "filler-2", &s[2], &big).await;
    let stuck = vm_on(&cloud, &seed, "huge", &s[0], &big).await;
    let small = vm_on(&cloud, &seed, "small", &s[0], &seed.package).await;

    // While it runs, `server get` shows the migrations in flight (or none once done).
    let out = nereid_async(&cloud, &["admin", "server", "evacuate", &s[0], "-w"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "a VM stayed: {text}{}", stderr(&out));
    assert!(text.contains(&format!("1 of 2 VM(s) moved off server {}", s[0])), "{text}");
    assert!(text.contains(&format!("VM {stuck} (huge): stays: no other server can take it")), "{text}");
    // The explanation: each other server's refusal, by name.
    let explained: Vec<&str> = text.lines().filter(|l| l.starts_with("    ")).collect();
    assert!(!explained.is_empty(), "the allocator's explanation is printed: {text}");
    assert_eq!(explained.len(), 2, "one line for each other server: {text}");
    assert!(explained.iter().all(|l| l.contains("not enough RAM")), "{text}");

    let v = cloud.client.get(&format!("/vms/{stuck}")).await.unwrap();
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(s[0].as_str()), Some("running")), "{v}");
    assert_eq!(on_agent(&cloud, &s[0], &stuck).as_deref(), Some("running"));
    let v = cloud.client.get(&format!("/vms/{small}")).await.unwrap();
    assert_ne!(v["server_uuid"].as_str(), Some(s[0].as_str()), "the small VM moved: {v}");
    assert_eq!(v["state"], "running");

    let ev = cloud.client.get(&format!("/servers/{}/evacuation", s[0])).await.unwrap();
    let e = ev["vms"].as_array().unwrap().iter().find(|v| v["vm_uuid"] == stuck.as_str()).unwrap().clone();
    assert_eq!(e["state"], "unplaceable", "{ev}");
    assert!(!e["explanation"].is_null(), "{ev}");

    // `server get` (human and JSON): no migration in flight once all is done; one begun
    // (and paused) shows on its source with its phase and state.
    let out = nereid_async(&cloud, &["admin", "server", "get", &s[0]]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no migrations in flight"), "{}", stdout(&out));
    let now = v["server_uuid"].as_str().unwrap().to_string();
    let begun = cloud.client.post(&format!("/vms/{small}?action=migrate"), &json!({"migration_action": "begin"})).await.unwrap();
    assert_eq!(cloud.wait_job(begun["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded", "{begun}");
    let out = nereid_async(&cloud, &["admin", "server", "get", &now]).await;
    let text = stdout(&out);
    assert!(text.contains("migrations in flight:"), "{text}");
    let row = text.lines().find(|l| l.starts_with(&small)).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("source") && row.contains("begin") && row.contains("paused"), "{row}");
    let out = nereid_async(&cloud, &["admin", "server", "get", &now, "--json"]).await;
    let j: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", stdout(&out)));
    assert_eq!(j["migrations"].as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j["migrations"][0]["vm_uuid"], small.as_str(), "{j}");
}

/// `nereid admin vm migrate --to SERVER -w`: the VM moves where it was told, the command
/// shows the progress and says where it runs now (exit 0); `--offline` says how it moved;
/// `vm migration` shows the record with its phases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_migrate_moves_a_vm_where_asked() {
    let cloud = cloud(Backend::Sqlite).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud);
    let vm = vm_on(&cloud, &seed, "mover", &s[0], &seed.package).await;

    let out = nereid_async(&cloud, &["admin", "vm", "migrate", &vm, "--to", &s[2], "-w", "--keep-source"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.lines().any(|l| l.starts_with("sync") || l.starts_with("switch")), "progress lines: {text}");
    assert!(text.contains(&format!("VM {vm} migrated to server {}", s[2])), "{text}");
    let v = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!((v["server_uuid"].as_str(), v["state"].as_str()), (Some(s[2].as_str()), Some("running")), "{v}");
    assert_eq!(on_agent(&cloud, &s[2], &vm).as_deref(), Some("running"));

    let out = nereid_async(&cloud, &["admin", "vm", "migration", &vm]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("successful") && text.contains("PHASE") && text.contains("switch"), "{text}");

    // Again, offline, to the allocator's choice (the server it came from is as good as any).
    assert_eq!(on_agent(&cloud, &s[0], &vm).as_deref(), Some("stopped"), "--keep-source keeps the source's copy");
    let out = nereid_async(&cloud, &["admin", "vm", "migrate", &vm, "--finalize"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(&format!("server {} no longer keeps a copy", s[0])), "{}", stdout(&out));
    assert_eq!(on_agent(&cloud, &s[0], &vm), None, "finalized: the source's copy is gone");
    let out = nereid_async(&cloud, &["admin", "vm", "migrate", &vm, "--offline", "-w"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("(offline: stopped, copied, started)"), "{text}");
    assert!(text.contains("finalized"), "-w finalizes by itself: {text}");
    let from = s[2].clone();
    assert_eq!(on_agent(&cloud, &from, &vm), None, "-w finalizes: nothing left on {from}");
    let v = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_ne!(v["server_uuid"].as_str(), Some(s[2].as_str()), "{v}");
    assert_eq!(v["state"], "running", "{v}");
}
