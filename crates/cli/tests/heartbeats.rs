//! Heartbeats cost nothing when nothing changed: a simulated server's VM changes reach its
//! reported inventory through deltas, an idle server's heartbeats write no inventory (only
//! their small liveness record), and a headnode that lost the inventory asks for the full
//! one and gets it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nereid_testkit::Options;
use serde_json::Value;

/// The server's inventory object: its value and store generation.
async fn inventory(cloud: &Cloud, server: &str) -> Option<(Value, i64)> {
    cloud.headnode.app.store.get("inventories", server).await.unwrap().map(|o| (o.value, o.generation))
}

/// The state the server reports for the VM (`GET /servers/{uuid}?extras=vms`).
async fn reported(cloud: &Cloud, server: &str, vm: &str) -> Option<String> {
    let s = cloud.client.get(&format!("/servers/{server}?extras=vms")).await.unwrap();
    s["vms"][vm]["state"].as_str().map(str::to_string)
}

/// Waits until the server reports the VM as `want` (`None`: not at all, or destroyed).
async fn wait_reported(cloud: &Cloud, server: &str, vm: &str, want: Option<&str>) {
    let mut last = None;
    for _ in 0..200 {
        last = reported(cloud, server, vm).await;
        let gone = last.is_none() || last.as_deref() == Some("destroyed");
        if (want.is_none() && gone) || (want.is_some() && last.as_deref() == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server {server} reports VM {vm} as {last:?}, not {want:?}");
}

async fn job_succeeds(cloud: &Cloud, r: Value) {
    let job = r["job_uuid"].as_str().unwrap();
    assert_eq!(cloud.wait_job(job).await.unwrap()["execution"], "succeeded");
}

async fn changes_travel_as_deltas_and_an_idle_server_writes_no_inventory(b: Backend) {
    let o = Options { sim_servers: 1, heartbeat: Duration::from_millis(200), ..Options::new(b) };
    let cloud = Cloud::start_with(o).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let server = cloud.wait_servers(1).await.unwrap()[0]["uuid"].as_str().unwrap().to_string();

    let (vm, job) = cloud.create_vm(&seed.vm_body("hb-1")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    wait_reported(&cloud, &server, &vm, Some("running")).await;
    job_succeeds(&cloud, cloud.client.post(&format!("/vms/{vm}?action=stop"), &serde_json::json!({})).await.unwrap()).await;
    wait_reported(&cloud, &server, &vm, Some("stopped")).await;

    // The liveness record is small: the inventory is kept apart.
    let live = cloud.headnode.app.store.get("heartbeats", &server).await.unwrap().unwrap();
    assert!(live.value.get("vms").is_none(), "{}", live.value);

    // Idle: several heartbeats land (the liveness record is rewritten), the inventory is not.
    let (_, inv0) = inventory(&cloud, &server).await.unwrap();
    let live0 = live.generation;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let live1 = cloud.headnode.app.store.get("heartbeats", &server).await.unwrap().unwrap().generation;
    assert!(live1 >= live0 + 3, "heartbeats kept coming: liveness record at generation {live0}, then {live1}");
    let (value, inv1) = inventory(&cloud, &server).await.unwrap();
    assert_eq!(inv1, inv0, "an idle server's heartbeats rewrote its inventory: {value}");

    // A headnode that lost the inventory asks for the full one, and gets it.
    cloud.headnode.app.store.delete("inventories", &server, nereid_store::Cond::Any).await.unwrap();
    let mut back = None;
    for _ in 0..100 {
        back = inventory(&cloud, &server).await;
        if back.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (value, _) = back.expect("the inventory never came back");
    let vms = value["vms"].as_array().unwrap();
    assert!(vms.iter().any(|v| v["uuid"] == vm.as_str() && v["state"] == "stopped"), "{value}");
    wait_reported(&cloud, &server, &vm, Some("stopped")).await;

    // Started and destroyed: both reach the inventory.
    job_succeeds(&cloud, cloud.client.post(&format!("/vms/{vm}?action=start"), &serde_json::json!({})).await.unwrap()).await;
    wait_reported(&cloud, &server, &vm, Some("running")).await;
    job_succeeds(&cloud, cloud.client.delete(&format!("/vms/{vm}")).await.unwrap()).await;
    wait_reported(&cloud, &server, &vm, None).await;
    // Every server's view (what placement, the doctor and migrations read) agrees.
    let hbs = cloud.headnode.app.heartbeats().await.unwrap();
    let h = hbs.get(&uuid::Uuid::parse_str(&server).unwrap()).unwrap();
    assert!(h.vms.iter().all(|s| s.uuid.to_string() != vm || s.state == "destroyed"), "{:?}", h.vms);
    let times = cloud.headnode.app.heartbeat_times().await.unwrap();
    assert_eq!(times.len(), 1);
}

/// A heartbeat record written before inventories were kept apart (with its `vms`) is read
/// as before, until the server's next heartbeat replaces it.
async fn an_old_heartbeat_record_with_its_vms_still_reads(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let server = uuid::Uuid::new_v4();
    let vm = uuid::Uuid::new_v4();
    let old = serde_json::json!({"at_ms": 1, "usage": {}, "vms": [{"uuid": vm, "state": "running", "generation": 3}]});
    cloud.headnode.app.store.put("heartbeats", &server.to_string(), old, nereid_store::Cond::Any).await.unwrap();
    let hbs = cloud.headnode.app.heartbeats().await.unwrap();
    assert_eq!(hbs[&server].vms.iter().map(|s| s.uuid).collect::<Vec<_>>(), vec![vm]);
    let one = cloud.headnode.app.heartbeat_of(server).await.unwrap().unwrap();
    assert_eq!(one.vms.len(), 1);
    assert_eq!(cloud.headnode.app.heartbeat_times().await.unwrap()[&server], 1);
}

both_backends!(changes_travel_as_deltas_and_an_idle_server_writes_no_inventory, an_old_heartbeat_record_with_its_vms_still_reads);
