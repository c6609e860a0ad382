//! VMAPI on simulated servers: the lifecycle, resize, capacity races, ghosts, silence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use serde_json::{Value, json};

async fn sim(backend: Backend, servers: usize) -> Cloud {
    Cloud::start_with(Options { sim_servers: servers, ..Options::new(backend) }).await.unwrap()
}

async fn vm(cloud: &Cloud, uuid: &str) -> Value {
    cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()
}

async fn agent_view(cloud: &Cloud, vm: &Value) -> Option<Value> {
    let server = vm["server_uuid"].as_str()?;
    cloud.client.get(&format!("/servers/{server}/vms/{}", vm["uuid"].as_str()?)).await.ok()
}

async fn act(cloud: &Cloud, uuid: &str, action: &str, body: Value) -> Value {
    let r = cloud.client.post(&format!("/vms/{uuid}?action={action}"), &body).await.unwrap();
    let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{action}: {j}");
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_on_three_simulated_servers() {
    let cloud = sim(Backend::Sqlite, 3).await;
    let seed = cloud.seed().await.unwrap();
    let (uuid, job) = cloud.create_vm(&seed.vm_body("web-1")).await.unwrap();
    let j = cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    let names: Vec<&str> = j["chain_results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["reserve", "nics", "definition", "create", "wait", "finish"]);
    let v = vm(&cloud, &uuid).await;
    assert_eq!(v["state"], "running");
    let ip = v["nics"][0]["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.77."), "{v}");
    assert_eq!(agent_view(&cloud, &v).await.unwrap()["state"], "running");
    // No reservation is left once the VM runs.
    assert_eq!(cloud.headnode.app.store.count("reservations", &nereid_store::Filter::True).await.unwrap(), 0);

    act(&cloud, &uuid, "stop", json!({})).await;
    assert_eq!(vm(&cloud, &uuid).await["state"], "stopped");
    assert_eq!(agent_view(&cloud, &vm(&cloud, &uuid).await).await.unwrap()["state"], "stopped");
    act(&cloud, &uuid, "start", json!({})).await;
    assert_eq!(vm(&cloud, &uuid).await["state"], "running");
    let before = agent_view(&cloud, &vm(&cloud, &uuid).await).await.unwrap();
    act(&cloud, &uuid, "reboot", json!({})).await;
    let after = agent_view(&cloud, &vm(&cloud, &uuid).await).await.unwrap();
    assert_eq!(after["state"], "running");
    assert!(after["reboot_generation"].as_i64() > before["reboot_generation"].as_i64());

    // Resize while running: stopped, applied, started again.
    let j = act(&cloud, &uuid, "update", json!({"ram": 2048, "quota": 20})).await;
    let steps: Vec<String> = j["chain_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}: {}", r["name"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert!(steps.iter().any(|s| s == "stop: VM stopped for the resize"), "{steps:?}");
    let v = vm(&cloud, &uuid).await;
    assert_eq!(
        (v["state"].as_str(), v["ram"].as_u64(), v["quota"].as_u64(), v["disks"][0]["size"].as_u64()),
        (Some("running"), Some(2048), Some(20), Some(20480))
    );
    let a = agent_view(&cloud, &v).await.unwrap();
    assert_eq!((a["ram"].as_u64(), a["state"].as_str()), (Some(2048), Some("running")));
    // Resize while stopped stays stopped.
    act(&cloud, &uuid, "stop", json!({})).await;
    act(&cloud, &uuid, "update", json!({"vcpus": 2})).await;
    let v = vm(&cloud, &uuid).await;
    assert_eq!((v["state"].as_str(), v["vcpus"].as_u64()), (Some("stopped"), Some(2)));
    assert_eq!(agent_view(&cloud, &v).await.unwrap()["vcpus"], 2);
    // Disks never shrink.
    let e = cloud.client.post(&format!("/vms/{uuid}?action=update"), &json!({"quota": 5})).await.unwrap_err();
    assert!(e.to_string().contains("disks can only grow"), "{e}");
    // Metadata changes apply without a restart.
    act(&cloud, &uuid, "start", json!({})).await;
    act(&cloud, &uuid, "update", json!({"set_customer_metadata": {"k": "v"}, "alias": "web-2"})).await;
    let v = vm(&cloud, &uuid).await;
    assert_eq!(
        (v["alias"].as_str(), v["customer_metadata"]["k"].as_str(), v["state"].as_str()),
        (Some("web-2"), Some("v"), Some("running"))
    );

    // Destroy frees the IP and the capacity.
    let r = cloud.client.delete(&format!("/vms/{uuid}")).await.unwrap();
    assert_eq!(cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    let v = vm(&cloud, &uuid).await;
    assert_eq!(v["state"], "destroyed");
    assert!(v["destroyed"].is_string());
    assert!(agent_view(&cloud, &v).await.is_none());
    let ipobj = cloud.client.get(&format!("/networks/{}/ips/{ip}", seed.network)).await.unwrap();
    assert_eq!(ipobj["free"], true, "{ipobj}");
    assert_eq!(cloud.client.get(&format!("/nics?belongs_to_uuid={uuid}")).await.unwrap(), json!([]));
    let jobs = cloud.client.get(&format!("/vms/{uuid}/jobs")).await.unwrap();
    let tasks: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["destroy", "update", "start", "update", "stop", "update", "reboot", "start", "stop", "provision"]);
    assert!(jobs.as_array().unwrap().iter().all(|j| j["execution"] == "succeeded"));
}
