//! The generic saga tests, on every job type: every step run twice still succeeds; a
//! failure injected at each step unwinds to a clean state; undo run twice is harmless.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use nereid_testkit::{Options, Seed};
use serde_json::{Value, json};

struct Env {
    cloud: Cloud,
    seed: Seed,
}

async fn env() -> Env {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    Env { cloud, seed }
}

impl Env {
    fn hooks(&self) -> &nereid_headnode::jobs::Hooks {
        &self.cloud.headnode.app.hooks
    }

    fn fail_at(&self, task: &str, step: Option<&str>) {
        *self.hooks().fail_at.lock().unwrap() = step.map(|s| (task.to_string(), s.to_string()));
    }

    async fn vm(&self, uuid: &str) -> Value {
        self.cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()
    }

    async fn on_server(&self, uuid: &str) -> Option<Value> {
        let server = self.cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
        self.cloud.client.get(&format!("/servers/{server}/vms/{uuid}")).await.ok()
    }

    /// A running VM made without hooks.
    async fn running_vm(&self, alias: &str) -> String {
        let (uuid, job) = self.cloud.create_vm(&self.seed.vm_body(alias)).await.unwrap();
        assert_eq!(self.cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
        uuid
    }

    async fn stopped_vm(&self, alias: &str) -> String {
        let uuid = self.running_vm(alias).await;
        let j = self.action(&uuid, "stop", json!({})).await;
        assert_eq!(j["execution"], "succeeded");
        uuid
    }

    async fn action(&self, uuid: &str, action: &str, body: Value) -> Value {
        let r = if action == "destroy" {
            self.cloud.client.delete(&format!("/vms/{uuid}")).await.unwrap()
        } else {
            self.cloud.client.post(&format!("/vms/{uuid}?action={action}"), &body).await.unwrap()
        };
        self.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()
    }

    async fn reservations(&self) -> i64 {
        self.cloud.headnode.app.store.count("reservations", &nereid_store::Filter::True).await.unwrap()
    }

    async fn nics_of(&self, uuid: &str) -> usize {
        self.cloud.client.get(&format!("/nics?belongs_to_uuid={uuid}")).await.unwrap().as_array().unwrap().len()
    }

    /// The VM's record once it says `state` (or after 10 s, as it is then).
    async fn record_settles(&self, uuid: &str, state: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.vm(uuid).await;
            if v["state"] == state || Instant::now() > end {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the server reports the VM in `state` (or, for `None`, not at all).
    async fn server_settles(&self, uuid: &str, state: Option<&str>) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.on_server(uuid).await;
            let now = s.as_ref().map(|v| v["state"].as_str().unwrap_or("").to_string());
            if now.as_deref() == state {
                return;
            }
            assert!(Instant::now() < end, "server has {now:?} for {uuid}, expected {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn step_names(job: &Value) -> Vec<String> {
    job["chain_results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
}

const PROVISION: &[&str] = &["reserve", "nics", "definition", "create", "wait", "finish"];
const POWER: &[&str] = &["ensure", "wait", "record"];
const UPDATE: &[&str] = &["reserve", "stop", "apply", "start", "finish"];
const DESTROY: &[&str] = &["delete", "mark_destroyed", "free_nics", "release"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_step_twice_still_succeeds() {
    let e = env().await;
    e.hooks().double_run.store(true, Ordering::SeqCst);
    let uuid = e.running_vm("twice").await;
    let v = e.vm(&uuid).await;
    assert_eq!((v["state"].as_str(), v["nics"].as_array().unwrap().len()), (Some("running"), 1), "{v}");
    assert_eq!(e.nics_of(&uuid).await, 1, "running the NIC step twice made one NIC");
    assert_eq!(e.action(&uuid, "stop", json!({})).await["execution"], "succeeded");
    assert_eq!(e.vm(&uuid).await["state"], "stopped");
    assert_eq!(e.action(&uuid, "start", json!({})).await["execution"], "succeeded");
    assert_eq!(e.action(&uuid, "reboot", json!({})).await["execution"], "succeeded");
    assert_eq!(e.action(&uuid, "update", json!({"ram": 2048})).await["execution"], "succeeded");
    let v = e.vm(&uuid).await;
    assert_eq!((v["ram"].as_u64(), v["state"].as_str()), (Some(2048), Some("running")));
    assert_eq!(e.on_server(&uuid).await.unwrap()["ram"], 2048);
    assert_eq!(e.action(&uuid, "update", json!({"set_tags": {"a": "b"}})).await["execution"], "succeeded");
    assert_eq!(e.action(&uuid, "destroy", json!({})).await["execution"], "succeeded");
    assert_eq!(e.vm(&uuid).await["state"], "destroyed");
    assert_eq!(e.nics_of(&uuid).await, 0);
    assert_eq!(e.reservations().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provision_failure_at_each_step_unwinds_to_nothing() {
    let e = env().await;
    for (i, step) in PROVISION.iter().enumerate() {
        e.fail_at("provision", Some(step));
        // The last run also undoes twice.
        e.hooks().double_undo.store(i == PROVISION.len() - 1, Ordering::SeqCst);
        let (uuid, job) = e.cloud.create_vm(&e.seed.vm_body(&format!("fail-{step}"))).await.unwrap();
        let j = e.cloud.wait_job(&job).await.unwrap();
        assert_eq!(j["execution"], "failed", "{step}: {j}");
        assert_eq!(j["error"], format!("{step}: injected failure at step {step}"));
        assert_eq!(j["onerror_results"].as_array().unwrap().len(), i + 1, "{step}: every completed step is undone: {j}");
        assert!(j["onerror_results"].as_array().unwrap().iter().all(|r| r["error"] == ""), "{step}: {j}");
        let v = e.vm(&uuid).await;
        assert_eq!(v["state"], "failed", "{step}");
        e.server_settles(&uuid, None).await;
        assert_eq!(e.nics_of(&uuid).await, 0, "{step}: NICs left");
        assert_eq!(e.reservations().await, 0, "{step}: reservation left");
        let ips = e.cloud.client.get(&format!("/networks/{}/ips?belongs_to_uuid={uuid}", e.seed.network)).await.unwrap();
        assert_eq!(ips, json!([]), "{step}: addresses left");
    }
    e.fail_at("provision", None);
    e.hooks().double_undo.store(false, Ordering::SeqCst);
    // Capacity and addresses came back: a normal provision works.
    e.running_vm("after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_failures_unwind_to_the_previous_state() {
    let e = env().await;
    for (task, start_running) in [("start", false), ("stop", true), ("reboot", true)] {
        for (i, step) in POWER.iter().enumerate() {
            let uuid =
                if start_running { e.running_vm(&format!("{task}-{step}")).await } else { e.stopped_vm(&format!("{task}-{step}")).await };
            e.fail_at(task, Some(step));
            e.hooks().double_undo.store(i == POWER.len() - 1, Ordering::SeqCst);
            let j = e.action(&uuid, task, json!({})).await;
            e.fail_at(task, None);
            e.hooks().double_undo.store(false, Ordering::SeqCst);
            assert_eq!(j["execution"], "failed", "{task}/{step}: {j}");
            assert_eq!(step_names(&j).last().map(String::as_str), Some(*step));
            let before = if start_running { "running" } else { "stopped" };
            e.server_settles(&uuid, Some(before)).await;
            // The record follows the server's next report (after a failed `record`
            // step, nothing else writes it).
            let v = e.record_settles(&uuid, before).await;
            assert_eq!(v["state"], before, "{task}/{step}: {v}");
            // And the VM still works.
            let next = if start_running { "stop" } else { "start" };
            assert_eq!(e.action(&uuid, next, json!({})).await["execution"], "succeeded", "{task}/{step}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resize_failures_restore_the_old_size() {
    let e = env().await;
    for (i, step) in UPDATE.iter().enumerate() {
        let uuid = e.running_vm(&format!("resize-{step}")).await;
        e.fail_at("update", Some(step));
        e.hooks().double_undo.store(i == UPDATE.len() - 1, Ordering::SeqCst);
        let j = e.action(&uuid, "update", json!({"ram": 2048, "quota": 20})).await;
        e.fail_at("update", None);
        e.hooks().double_undo.store(false, Ordering::SeqCst);
        assert_eq!(j["execution"], "failed", "{step}: {j}");
        e.server_settles(&uuid, Some("running")).await;
        let v = e.vm(&uuid).await;
        assert_eq!((v["ram"].as_u64(), v["quota"].as_u64(), v["state"].as_str()), (Some(1024), Some(10), Some("running")), "{step}: {v}");
        assert_eq!(e.on_server(&uuid).await.unwrap()["ram"], 1024, "{step}");
        assert_eq!(e.reservations().await, 0, "{step}: reservation left");
    }
    // Metadata-only updates unwind too.
    for step in UPDATE {
        let uuid = e.running_vm(&format!("meta-{step}")).await;
        e.fail_at("update", Some(step));
        let j = e.action(&uuid, "update", json!({"set_customer_metadata": {"k": "v"}})).await;
        e.fail_at("update", None);
        assert_eq!(j["execution"], "failed");
        assert_eq!(e.vm(&uuid).await["customer_metadata"], json!({}), "{step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_destroy_is_finished_by_destroying_again() {
    let e = env().await;
    for step in DESTROY {
        let uuid = e.running_vm(&format!("destroy-{step}")).await;
        e.fail_at("destroy", Some(step));
        let j = e.action(&uuid, "destroy", json!({})).await;
        e.fail_at("destroy", None);
        assert_eq!(j["execution"], "failed", "{step}: {j}");
        // Destroy only goes forward; asking again finishes it (its steps are idempotent).
        // A record already marked destroyed whose NICs or capacity are still held runs the
        // cleanup again; one with nothing left answers VmDestroyed. Which of the two it is
        // depends on whether the server's own "destroyed" report (which frees them too) has
        // landed yet, so both are accepted, each with what it promises.
        match e.cloud.client.delete(&format!("/vms/{uuid}")).await {
            Ok(r) => {
                let j = e.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
                assert_eq!(j["execution"], "succeeded", "{step}: {j}");
            }
            Err(r) => {
                assert_eq!(r.code(), Some("VmDestroyed"), "{step}");
                assert_eq!(e.cloud.headnode.app.vm_leftovers(uuid.parse().unwrap()).await.unwrap(), 0, "{step}");
            }
        }
        assert_eq!(e.vm(&uuid).await["state"], "destroyed");
        e.server_settles(&uuid, None).await;
        assert_eq!(e.nics_of(&uuid).await, 0);
        assert_eq!(e.reservations().await, 0);
    }
}
