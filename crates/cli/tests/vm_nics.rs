//! VMAPI's NIC actions on simulated servers: `add_nics`, `update_nics`, `remove_nics`.
//! After every job NAPI and VMAPI agree (same MACs, addresses, one primary, addresses
//! held by the VM); failures — a full network, or a failure injected at each step —
//! unwind to the NICs the VM had; every step run twice still succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use common::*;
use nereid_testkit::{Options, Seed};
use serde_json::{Value, json};

const STEPS: &[&str] = &["napi", "stop", "apply", "start", "finish"];

struct Env {
    cloud: Cloud,
    seed: Seed,
    second: String,
}

async fn env(b: Backend) -> Env {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(b) }).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let second = cloud
        .client
        .post(
            "/networks",
            &json!({"name": "second", "nic_tag": "external", "vlan_id": 5, "subnet": "10.88.0.0/24",
            "provision_start_ip": "10.88.0.10", "provision_end_ip": "10.88.0.200", "gateway": "10.88.0.1",
                "dhcp_server": false}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    Env { cloud, seed, second }
}

impl Env {
    async fn running_vm(&self, alias: &str) -> String {
        let (uuid, job) = self.cloud.create_vm(&self.seed.vm_body(alias)).await.unwrap();
        assert_eq!(self.cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
        uuid
    }

    async fn vm(&self, uuid: &str) -> Value {
        self.cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()
    }

    /// The VM as its server reports it.
    async fn on_server(&self, uuid: &str) -> Value {
        let v = self.vm(uuid).await;
        self.cloud.client.get(&format!("/servers/{}/vms/{uuid}", v["server_uuid"].as_str().unwrap())).await.unwrap()
    }

    /// Queues an action and waits for its job.
    async fn action(&self, uuid: &str, action: &str, body: Value) -> Value {
        let r = self.cloud.client.post(&format!("/vms/{uuid}?action={action}"), &body).await.unwrap();
        self.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()
    }

    async fn ok(&self, uuid: &str, action: &str, body: Value) -> Value {
        let j = self.action(uuid, action, body).await;
        assert_eq!(j["execution"], "succeeded", "{action}: {j}");
        j
    }

    /// Destroys a VM (making room for the next).
    async fn destroy(&self, uuid: &str) {
        let r = self.cloud.client.delete(&format!("/vms/{uuid}")).await.unwrap();
        assert_eq!(self.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    }

    fn hooks(&self) -> &nereid_headnode::jobs::Hooks {
        &self.cloud.headnode.app.hooks
    }

    fn fail_at(&self, task: &str, step: Option<&str>) {
        *self.hooks().fail_at.lock().unwrap() = step.map(|s| (task.to_string(), s.to_string()));
    }

    /// NAPI and VMAPI agree on the VM's NICs; returns VMAPI's.
    async fn agree(&self, uuid: &str) -> Vec<Value> {
        let c = &self.cloud.client;
        let v = self.vm(uuid).await;
        let vmapi = v["nics"].as_array().unwrap().clone();
        let napi = c.get(&format!("/nics?belongs_to_uuid={uuid}")).await.unwrap().as_array().unwrap().clone();
        let key =
            |n: &Value| (n["mac"].as_str().unwrap().to_string(), n["ip"].as_str().unwrap().to_string(), n["primary"].as_bool().unwrap());
        let a: BTreeSet<_> = vmapi.iter().map(key).collect();
        let b: BTreeSet<_> = napi.iter().map(key).collect();
        assert_eq!(a, b, "VMAPI {vmapi:?} and NAPI {napi:?} disagree");
        assert_eq!(vmapi.iter().filter(|n| n["primary"] == true).count(), 1, "exactly one primary: {vmapi:?}");
        for n in &napi {
            assert_eq!(n["state"], "running", "{n}");
            let ip = c.get(&format!("/networks/{}/ips/{}", n["network_uuid"].as_str().unwrap(), n["ip"].as_str().unwrap())).await.unwrap();
            assert_eq!(ip["belongs_to_uuid"], uuid, "{ip}");
        }
        // For VMAPI's flags, NAPI's: a flag is on in one exactly when on in the other.
        for d in &vmapi {
            let n = napi.iter().find(|n| n["mac"] == d["mac"]).unwrap();
            for f in ["allow_ip_spoofing", "allow_mac_spoofing", "allow_dhcp_spoofing", "allow_unfiltered_promisc"] {
                assert_eq!(d[f] == true, n[f] == true, "{f}: VMAPI {d} NAPI {n}");
            }
        }
        // The server runs this definition.
        let (rec, _) = self.cloud.headnode.app.get_vm(uuid.parse().unwrap(), None).await.unwrap();
        assert!(self.on_server(uuid).await["definition_generation"].as_i64().unwrap() >= rec.definition_generation);
        vmapi
    }

    async fn ip_free(&self, net: &str, ip: &str) -> bool {
        self.cloud.client.get(&format!("/networks/{net}/ips/{ip}")).await.unwrap()["free"] == true
    }
}

fn results(j: &Value) -> Vec<String> {
    j["chain_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}: {}", r["name"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect()
}

both_backends!(nic_actions_keep_napi_and_vmapi_in_step);

async fn nic_actions_keep_napi_and_vmapi_in_step(b: Backend) {
    let e = env(b).await;
    let c = &e.cloud.client;
    let uuid = e.running_vm("nics-1").await;
    let first = e.agree(&uuid).await[0].clone();
    let boot = e.on_server(&uuid).await["boot_timestamp"].clone();

    // add_nics on a running VM: stopped, changed, started again; the primary stays.
    let j = e.ok(&uuid, "add_nics", json!({"networks": [{"uuid": e.second, "allow_ip_spoofing": true}]})).await;
    assert!(results(&j).contains(&"stop: VM stopped to change its NICs".to_string()), "{:?}", results(&j));
    let nics = e.agree(&uuid).await;
    assert_eq!(nics.len(), 2);
    let second = nics.iter().find(|n| n["network_uuid"] == json!(e.second)).unwrap().clone();
    assert_eq!(
        (second["interface"].as_str(), second["primary"].as_bool(), second["allow_ip_spoofing"].as_bool()),
        (Some("net1"), Some(false), Some(true))
    );
    assert!(second["ip"].as_str().unwrap().starts_with("10.88.0."), "{second}");
    assert_eq!(second["vlan_id"], 5);
    // The second network's guests get DHCP elsewhere: its NIC says so; the first's is answered.
    assert_eq!((second["dhcp_server"].as_bool(), nics[0].get("dhcp_server")), (Some(false), None), "{nics:?}");
    assert_eq!(c.get(&format!("/networks/{}", e.seed.network)).await.unwrap()["dhcp_server"], true);
    assert_eq!(e.vm(&uuid).await["state"], "running");
    let boot2 = e.on_server(&uuid).await["boot_timestamp"].clone();
    assert_ne!(boot, boot2, "the VM restarted to get its NIC");
    let mac2 = second["mac"].as_str().unwrap().to_string();

    // Flags alone: no restart, the new definition is pushed.
    let j = e
        .ok(
            &uuid,
            "update_nics",
            json!({"nics": [{"mac": mac2.replace(':', ""), "allow_dhcp_spoofing": true, "allow_ip_spoofing": false}]}),
        )
        .await;
    assert!(results(&j).iter().any(|r| r.starts_with("stop: no restart needed")), "{:?}", results(&j));
    let nics = e.agree(&uuid).await;
    let n2 = nics.iter().find(|n| n["mac"] == json!(mac2)).unwrap();
    assert_eq!((n2["allow_dhcp_spoofing"].as_bool(), n2.get("allow_ip_spoofing")), (Some(true), None), "{n2}");
    assert_eq!(e.on_server(&uuid).await["boot_timestamp"], boot2, "flags apply live");

    // A new primary restarts the VM; the old primary stops being one.
    let j = e.ok(&uuid, "update_nics", json!({"nics": [{"mac": mac2, "primary": true}]})).await;
    assert!(results(&j).contains(&"stop: VM stopped to change its NICs".to_string()), "{:?}", results(&j));
    let nics = e.agree(&uuid).await;
    assert_eq!(nics.iter().find(|n| n["primary"] == true).unwrap()["mac"], json!(mac2));

    // Removing the primary passes it to the NIC left, and frees the address.
    let ip2 = n2["ip"].as_str().unwrap().to_string();
    e.ok(&uuid, "remove_nics", json!({"macs": [mac2]})).await;
    let nics = e.agree(&uuid).await;
    assert_eq!((nics.len(), nics[0]["mac"].clone(), nics[0]["primary"].as_bool()), (1, first["mac"].clone(), Some(true)));
    assert!(e.ip_free(&e.second, &ip2).await, "the removed NIC's address is free");
    api_err(c.get(&format!("/nics/{}", mac2.replace(':', ""))).await, 404, "ResourceNotFound");

    // add_nics with a NIC already made in NAPI for the VM, on a stopped VM: it stays stopped.
    e.ok(&uuid, "stop", json!({})).await;
    let owner = e.vm(&uuid).await["owner_uuid"].clone();
    let made = c
        .post(
            &format!("/networks/{}/nics", e.second),
            &json!({"owner_uuid": owner, "belongs_to_uuid": uuid, "belongs_to_type": "zone", "ip": "10.88.0.77"}),
        )
        .await
        .unwrap();
    let j = e.ok(&uuid, "add_nics", json!({"macs": [made["mac"]]})).await;
    assert!(results(&j).contains(&"stop: VM already stopped".to_string()), "{:?}", results(&j));
    let nics = e.agree(&uuid).await;
    assert!(nics.iter().any(|n| n["ip"] == "10.88.0.77"), "{nics:?}");
    assert_eq!(e.vm(&uuid).await["state"], "stopped");
    assert_eq!(e.on_server(&uuid).await["state"], "stopped");

    // What cannot work is refused before a job exists.
    let refused = |r: Result<Value, nereid_client::Error>, field: &str| {
        let body = api_err(r, 409, "ValidationFailed");
        assert!(body.to_string().contains(field), "{body}");
    };
    let all: Vec<Value> = nics.iter().map(|n| n["mac"].clone()).collect();
    refused(c.post(&format!("/vms/{uuid}?action=remove_nics"), &json!({"macs": all})).await, "without a NIC");
    refused(c.post(&format!("/vms/{uuid}?action=remove_nics"), &json!({"macs": ["90:b8:d0:ff:ff:ff"]})).await, "has no NIC");
    refused(
        c.post(&format!("/vms/{uuid}?action=update_nics"), &json!({"nics": [{"mac": "90b8d0ffffff", "primary": true}]})).await,
        "has no NIC",
    );
    refused(
        c.post(&format!("/vms/{uuid}?action=add_nics"), &json!({"networks": [e.second], "macs": [mac2]})).await,
        "either networks or macs",
    );
    refused(c.post(&format!("/vms/{uuid}?action=add_nics"), &json!({"macs": [made["mac"]]})).await, "already has");
    let stray = c
        .post(
            &format!("/networks/{}/nics", e.second),
            &json!({"owner_uuid": owner, "belongs_to_uuid": e.second, "belongs_to_type": "other"}),
        )
        .await
        .unwrap();
    refused(c.post(&format!("/vms/{uuid}?action=add_nics"), &json!({"macs": [stray["mac"]]})).await, "not to VM");
    let private = c
        .post(
            "/networks",
            &json!({"name": "private", "nic_tag": "external", "vlan_id": 9, "subnet": "10.66.0.0/24",
            "provision_start_ip": "10.66.0.10", "provision_end_ip": "10.66.0.20", "owner_uuids": ["00000000-0000-4000-8000-000000000001"]}),
        )
        .await
        .unwrap();
    refused(c.post(&format!("/vms/{uuid}?action=add_nics"), &json!({"networks": [private["uuid"]]})).await, "may not use");
    c.post("/nic_tags", &json!({"name": "storage"})).await.unwrap();
    let elsewhere = c
        .post(
            "/networks",
            &json!({"name": "storage", "nic_tag": "storage", "vlan_id": 0, "subnet": "10.55.0.0/24",
            "provision_start_ip": "10.55.0.10", "provision_end_ip": "10.55.0.20"}),
        )
        .await
        .unwrap();
    refused(c.post(&format!("/vms/{uuid}?action=add_nics"), &json!({"networks": [elsewhere["uuid"]]})).await, "no nic tag storage");
    let jobs = c.get(&format!("/vms/{uuid}/jobs")).await.unwrap();
    let tasks: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["task"].as_str().unwrap()).collect();
    assert_eq!(tasks, ["add_nics", "stop", "remove_nics", "update_nics", "update_nics", "add_nics", "provision"]);
    // Destroying the VM frees every address it held.
    let r = c.delete(&format!("/vms/{uuid}")).await.unwrap();
    assert_eq!(e.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    assert_eq!(c.get(&format!("/nics?belongs_to_uuid={uuid}")).await.unwrap(), json!([]));
    assert!(e.ip_free(&e.second, "10.88.0.77").await);
}

/// A network that fills up halfway through an add_nics: the NIC already made on the
/// other network is deleted and its address freed; the VM keeps running as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_network_unwinds_add_nics() {
    let e = env(Backend::Sqlite).await;
    let c = &e.cloud.client;
    let full = c
        .post(
            "/networks",
            &json!({"name": "full", "nic_tag": "external", "vlan_id": 7, "subnet": "10.99.0.0/24",
            "provision_start_ip": "10.99.0.10", "provision_end_ip": "10.99.0.10"}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    c.post(&format!("/networks/{full}/nics"), &json!({"owner_uuid": e.seed.owner, "belongs_to_uuid": full, "belongs_to_type": "other"}))
        .await
        .unwrap();
    let uuid = e.running_vm("full-1").await;
    let before = e.agree(&uuid).await;
    let boot = e.on_server(&uuid).await["boot_timestamp"].clone();
    let j = e.action(&uuid, "add_nics", json!({"networks": [e.second, full]})).await;
    assert_eq!(j["execution"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("No more free IPs"), "{j}");
    let undone: Vec<&str> = j["onerror_results"].as_array().unwrap().iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert!(undone[0].starts_with("1 NIC(s) deleted"), "{undone:?}");
    assert_eq!(e.agree(&uuid).await, before);
    assert_eq!(e.vm(&uuid).await["state"], "running");
    assert_eq!(e.on_server(&uuid).await["boot_timestamp"], boot, "nothing reached the VM");
    assert!(e.ip_free(&e.second, "10.88.0.10").await, "the address taken on the other network is free again");
    let held = c.get(&format!("/networks/{}/ips?belongs_to_uuid={uuid}", e.second)).await.unwrap();
    assert_eq!(held, json!([]));
}

/// A failure injected at each step of each NIC job unwinds to the NICs the VM had, running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nic_job_failures_at_each_step_unwind() {
    let e = env(Backend::Sqlite).await;
    for task in ["add_nics", "update_nics", "remove_nics"] {
        for (i, step) in STEPS.iter().enumerate() {
            let uuid = e.running_vm(&format!("{task}-{step}")).await;
            // remove_nics and update_nics need a second NIC to act on.
            if task != "add_nics" {
                e.ok(&uuid, "add_nics", json!({"networks": [e.second]})).await;
            }
            let before = e.agree(&uuid).await;
            let other = before.iter().find(|n| n["primary"] == false).map(|n| n["mac"].clone());
            let body = match task {
                "add_nics" => json!({"networks": [{"uuid": e.second, "primary": true}]}),
                "update_nics" => json!({"nics": [{"mac": other, "primary": true, "allow_mac_spoofing": true}]}),
                _ => json!({"macs": [before.iter().find(|n| n["primary"] == true).unwrap()["mac"]]}),
            };
            e.fail_at(task, Some(step));
            e.hooks().double_undo.store(i == STEPS.len() - 1, Ordering::SeqCst);
            let j = e.action(&uuid, task, body).await;
            e.fail_at(task, None);
            e.hooks().double_undo.store(false, Ordering::SeqCst);
            assert_eq!(j["execution"], "failed", "{task}/{step}: {j}");
            assert_eq!(j["onerror_results"].as_array().unwrap().len(), i + 1, "{task}/{step}: {j}");
            assert!(j["onerror_results"].as_array().unwrap().iter().all(|r| r["error"] == ""), "{task}/{step}: {j}");
            let after = e.agree(&uuid).await;
            if *step == "finish" && task == "remove_nics" {
                // finish had deleted the NIC (freeing its address) before it was made to
                // fail: the record follows NAPI, so the removal stands, consistently.
                assert_eq!(after.len(), 1, "{after:?}");
                assert_eq!(e.vm(&uuid).await["state"], "running");
                e.destroy(&uuid).await;
                continue;
            }
            let strip = |v: &[Value]| {
                v.iter()
                    .map(|n| (n["mac"].clone(), n["ip"].clone(), n["primary"].clone(), n["allow_mac_spoofing"].clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&after), strip(&before), "{task}/{step}");
            assert_eq!(e.vm(&uuid).await["state"], "running", "{task}/{step}");
            assert_eq!(e.on_server(&uuid).await["state"], "running", "{task}/{step}");
            let held = e.cloud.client.get(&format!("/networks/{}/ips?belongs_to_uuid={uuid}", e.second)).await.unwrap();
            assert_eq!(held.as_array().unwrap().len(), before.len() - 1, "{task}/{step}: addresses on the second network: {held}");
            e.destroy(&uuid).await;
        }
    }
}

/// Every step of every NIC job run twice still does the job once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nic_job_steps_twice_still_succeed() {
    let e = env(Backend::Sqlite).await;
    e.hooks().double_run.store(true, Ordering::SeqCst);
    let uuid = e.running_vm("twice").await;
    e.ok(&uuid, "add_nics", json!({"networks": [e.second]})).await;
    let nics = e.agree(&uuid).await;
    assert_eq!(nics.len(), 2, "running the NAPI step twice made one NIC");
    let mac2 = nics[1]["mac"].clone();
    e.ok(&uuid, "update_nics", json!({"nics": [{"mac": mac2, "primary": true, "allow_ip_spoofing": true}]})).await;
    let nics = e.agree(&uuid).await;
    assert_eq!(nics[1]["primary"], true);
    e.ok(&uuid, "remove_nics", json!({"macs": [mac2]})).await;
    assert_eq!(e.agree(&uuid).await.len(), 1);
    assert_eq!(e.vm(&uuid).await["state"], "running");
}

/// The NIC actions' bodies are validated like every other (the bad-input walk only
/// sends update's): wrong types, unknown keys and missing fields are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nic_action_bodies_are_checked() {
    let e = env(Backend::Sqlite).await;
    let uuid = e.running_vm("bad").await;
    let c = &e.cloud.client;
    for (action, body, names) in [
        ("add_nics", json!({}), "networks"),
        ("add_nics", json!({"networks": "x"}), "networks"),
        ("add_nics", json!({"macs": [1]}), "macs[0]"),
        ("add_nics", json!({"zzz": 1}), "zzz"),
        ("update_nics", json!({}), "nics"),
        ("update_nics", json!({"nics": [{"mac": "nope", "primary": true}]}), "nics[0].mac"),
        ("update_nics", json!({"nics": [{"mac": "90b8d0000001", "allow_ip_spoofing": "yes"}]}), "allow_ip_spoofing"),
        ("update_nics", json!({"nics": [{"mac": "90b8d0000001", "mtu": 9000}]}), "mtu"),
        ("remove_nics", json!({"macs": []}), "macs"),
        ("remove_nics", json!({"macs": "90b8d0000001"}), "macs"),
    ] {
        let body = api_err(c.post(&format!("/vms/{uuid}?action={action}"), &body).await, 409, "ValidationFailed");
        assert!(body.to_string().contains(names), "{action}: {body}");
    }
    let jobs = c.get(&format!("/vms/{uuid}/jobs")).await.unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "no job was queued: {jobs}");
}
