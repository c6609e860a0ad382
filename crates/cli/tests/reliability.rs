//! Records never drift from reality: the holes a careful read of the code found, each shown
//! closed, and `nereid admin doctor` finding and repairing drift.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nereid_store::{Cond, Filter};
use nereid_testkit::Options;
use serde_json::json;

async fn sim(servers: usize) -> Cloud {
    Cloud::start_with(Options { sim_servers: servers, ..Options::new(Backend::Sqlite) }).await.unwrap()
}

async fn count(cloud: &Cloud, bucket: &str, field: &str, value: &str) -> i64 {
    cloud.headnode.app.store.count(bucket, &Filter::eq(field, value)).await.unwrap()
}

/// Waits for a file a paused job step writes.
async fn wait_for(path: &std::path::Path) {
    for _ in 0..300 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_never_declares_a_vm_with_a_live_job_gone() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    // Stop the provision between NIC creation and the agent's create.
    let marker = cloud.data_dir.join("paused");
    *cloud.headnode.app.hooks.pause_at.lock().unwrap() =
        Some(("provision".into(), "create".into(), nereid_headnode::jobs::When::Before, marker.clone()));
    let (uuid, _job) = cloud.create_vm(&seed.vm_body("mid-provision")).await.unwrap();
    wait_for(&marker).await;
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &uuid).await, 1);
    // The server does not have it yet; sync must not fail it, free its NIC or its capacity.
    let v = cloud.client.get(&format!("/vms/{uuid}?sync=true")).await.unwrap();
    assert_eq!(v["state"], "provisioning", "{v}");
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &uuid).await, 1, "the NIC (and its address) is kept");
    assert_eq!(count(&cloud, "reservations", "vm_uuid", &uuid).await, 1, "the capacity is still held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_404_that_is_not_the_agents_vm_not_found_never_frees_a_vm() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let (uuid, job) = cloud.create_vm(&seed.vm_body("skewed")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    // Version skew: the agent URL now leads to routes the agent does not have (404).
    let o = cloud.headnode.app.store.get("servers", &server).await.unwrap().unwrap();
    let mut skewed = o.value.clone();
    skewed["agent_url"] = json!(format!("{}/v0", o.value["agent_url"].as_str().unwrap().trim_end_matches('/')));
    cloud.headnode.app.store.put("servers", &server, skewed, Cond::Generation(o.generation)).await.unwrap();
    let e = api_err(cloud.client.get(&format!("/vms/{uuid}?sync=true")).await, 503, "ServiceUnavailable");
    assert!(e["message"].as_str().unwrap().contains("404"), "{e}");
    let v = cloud.client.get(&format!("/vms/{uuid}")).await.unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &uuid).await, 1);
}
