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
    // (Written behind the headnode's back: it forgets what it remembered, as its own writes do.)
    cloud.headnode.app.agents.targets.forget(server.parse().unwrap());
    let e = api_err(cloud.client.get(&format!("/vms/{uuid}?sync=true")).await, 503, "ServiceUnavailable");
    assert!(e["message"].as_str().unwrap().contains("404"), "{e}");
    let v = cloud.client.get(&format!("/vms/{uuid}")).await.unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &uuid).await, 1);
}

/// `nereid admin doctor` through the real binary: (exit status, stdout).
async fn doctor(cloud: &Cloud, args: &[&str]) -> (i32, String) {
    let mut all = vec!["admin", "doctor"];
    all.extend_from_slice(args);
    let o = nereid_async(cloud, &all).await;
    (o.status.code().unwrap_or(-1), format!("{}{}", stdout(&o), stderr(&o)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_finds_and_repairs_the_ghost_a_vm_gone_behind_vmapis_back_and_orphans() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    let (clean, out) = doctor(&cloud, &[]).await;
    assert_eq!(clean, 0, "a fresh cloud is healthy: {out}");
    assert!(out.contains("no problems found"), "{out}");

    // The seed's ghost: uuid and server_uuid, everything else null.
    let ghost = "6a7e59f5-4ddc-4b39-9b1c-2d5d3e0d9a02";
    cloud.headnode.app.store.put("vms", ghost, json!({"uuid": ghost, "server_uuid": server}), Cond::Absent).await.unwrap();
    // A VM deleted on its server behind VMAPI's back, whose report never arrived.
    let (gone, job) = cloud.create_vm(&seed.vm_body("gone")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let before = cloud.headnode.app.store.get("vms", &gone).await.unwrap().unwrap().value;
    let id = |s: &str| uuid::Uuid::parse_str(s).unwrap();
    cloud.headnode.app.agent_delete_and_wait(id(&server), id(&gone), Duration::from_secs(10)).await.unwrap();
    let mut lost = before.clone();
    lost["create_timestamp"] = json!("2020-01-01T00:00:00.000Z");
    // The agent's report of the delete lands after the delete answers (how long after
    // depends on its push queue), and its next heartbeat no longer lists the VM: wait for
    // both (the doctor trusts only an inventory that lacks the VM), then put the record
    // back as VMAPI had it before, so no later report can undo the loss.
    for _ in 0..400 {
        let o = cloud.headnode.app.store.get("vms", &gone).await.unwrap().unwrap();
        let hbs = cloud.headnode.app.heartbeats().await.unwrap();
        let listed = hbs.get(&id(&server)).is_none_or(|h| h.vms.iter().any(|v| v.uuid == id(&gone) && v.state != "destroyed"));
        if o.value["state"] == "destroyed" && !listed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cloud.headnode.app.store.put("vms", &gone, lost.clone(), Cond::Any).await.unwrap();
    // A NIC of a VM that never existed (Triton's leftovers after a headnode move).
    let nic = cloud
        .client
        .post(
            &format!("/networks/{}/nics", seed.network),
            &json!({"owner_uuid": seed.owner, "belongs_to_uuid": "7d1a1f4e-0c55-4a8e-9a39-3e2c9b2f0a11", "belongs_to_type": "zone"}),
        )
        .await
        .unwrap();
    let orphan_ip = nic["ip"].as_str().unwrap().to_string();
    // Capacity held for a job that does not exist.
    let res_key = "0b6f8f5e-6b7a-4f0e-8e5c-2f9d1c3a4b5c";
    cloud
        .headnode
        .app
        .store
        .put(
            "reservations",
            res_key,
            json!({"job_uuid": res_key, "vm_uuid": "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "server_uuid": server, "owner_uuid": seed.owner, "ram_mib": 4096, "disk_mib": 0, "kind": "provision"}),
            Cond::Absent,
        )
        .await
        .unwrap();

    let (status, out) = doctor(&cloud, &[]).await;
    assert_eq!(status, 1, "{out}");
    for needle in [
        format!("incomplete_vm  vms/{ghost}"),
        format!("vm_not_on_server  vms/{gone}"),
        format!("orphan_nic  nics/{}", nic["mac"].as_str().unwrap()),
        format!("orphan_reservation  reservations/{res_key}"),
        "4 problem(s); 4 can be repaired with --repair".to_string(),
    ] {
        assert!(out.contains(&needle), "{needle:?} in:\n{out}");
    }
    let (_, js) = doctor(&cloud, &["--json"]).await;
    let report: serde_json::Value = serde_json::from_str(&js).unwrap_or_else(|e| panic!("{e}: {js}"));
    assert_eq!(report["findings"].as_array().unwrap().len(), 4, "{report}");
    assert_eq!(report["findings"][0]["safe_repair"]["action"], "sync_vm", "{report}");

    let (status, out) = doctor(&cloud, &["--repair"]).await;
    assert_eq!(status, 0, "everything was repairable: {out}");
    assert!(out.contains(&format!("repaired vms/{ghost}")) && out.contains("no problems found"), "{out}");
    assert_eq!(cloud.client.get(&format!("/vms/{ghost}")).await.unwrap()["state"], "destroyed");
    assert_eq!(cloud.client.get(&format!("/vms/{gone}")).await.unwrap()["state"], "destroyed");
    assert_eq!(count(&cloud, "reservations", "server_uuid", &server).await, 0);
    // Each repair is in the job log.
    let repairs = cloud.client.get("/jobs?task=repair").await.unwrap();
    assert_eq!(repairs.as_array().unwrap().len(), 4, "{repairs}");
    assert!(repairs.as_array().unwrap().iter().all(|j| j["execution"] == "succeeded"), "{repairs}");
    // Placement uses the server normally: a capped package (which a ghost's unknown cap
    // would block in Triton) places with no warning, and the orphan's address is free again.
    let capped = cloud
        .client
        .post(
            "/packages",
            &json!({"name": "capped", "version": "1.0.0", "max_physical_memory": 1024, "quota": 10240, "cpu_cap": 100, "brand": "bhyve"}),
        )
        .await
        .unwrap();
    let mut body = seed.vm_body("capped");
    body["billing_id"] = capped["uuid"].clone();
    let r = cloud.client.post("/vms", &body).await.unwrap();
    assert_eq!(r["placement"]["warnings"], json!([]), "{r}");
    assert_eq!(cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    let ips = cloud.client.get(&format!("/networks/{}/ips/{orphan_ip}", seed.network)).await.unwrap();
    assert_eq!(ips["free"], true, "{ips}");
    assert_eq!(doctor(&cloud, &[]).await.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_reports_a_vm_running_without_a_record_and_never_deletes_it() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    let (uuid, job) = cloud.create_vm(&seed.vm_body("unrecorded")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    // Once the server's inventory has it, the record vanishes (a restore from an old backup).
    for _ in 0..100 {
        let inv = cloud.client.get(&format!("/servers/{server}/vms")).await.unwrap();
        if inv.to_string().contains(&uuid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cloud.headnode.app.store.delete("vms", &uuid, Cond::Any).await.unwrap();
    let (status, out) = doctor(&cloud, &["--repair"]).await;
    assert_eq!(status, 1, "{out}");
    assert!(out.contains(&format!("vm_without_record  servers/{server}/vms/{uuid}")) && out.contains("has no VMAPI record"), "{out}");
    assert!(out.contains("never deleted automatically"), "{out}");
    let on_server = cloud.client.get(&format!("/servers/{server}/vms/{uuid}")).await.unwrap();
    assert_eq!(on_server["state"], "running", "the VM still runs: {on_server}");
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &uuid).await, 1, "its NIC (and address) is kept");
}

/// Waits until every job of the VM has finished.
async fn settle(cloud: &Cloud, vm: &str) {
    for _ in 0..300 {
        let jobs = cloud.client.get(&format!("/vms/{vm}/jobs")).await.unwrap();
        if jobs.as_array().unwrap().iter().all(|j| matches!(j["execution"].as_str(), Some("succeeded" | "failed"))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("jobs of {vm} never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_and_metadata_updates_queued_one_after_another_all_land() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("tagged")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    // Ten updates answered 202 before any of them ran.
    for i in 0..10 {
        let body = json!({"set_tags": {format!("k{i}"): i}, "set_customer_metadata": {format!("m{i}"): "v"}});
        let r = cloud.client.post(&format!("/vms/{vm}?action=update"), &body).await.unwrap();
        assert!(r["job_uuid"].is_string());
    }
    // A removal queued behind them removes only its key.
    cloud.client.post(&format!("/vms/{vm}?action=update"), &json!({"remove_tags": ["k3"]})).await.unwrap();
    settle(&cloud, &vm).await;
    let v = cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    let tags = v["tags"].as_object().unwrap();
    let mut keys: Vec<&str> = tags.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["k0", "k1", "k2", "k4", "k5", "k6", "k7", "k8", "k9"], "{v}");
    assert_eq!(v["customer_metadata"].as_object().unwrap().len(), 10, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_update_undoes_exactly_its_own_change() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("undo")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    cloud.client.post(&format!("/vms/{vm}?action=update&sync=true"), &json!({"set_tags": {"keep": 1, "shared": "old"}})).await.unwrap();
    // The next update fails after applying; its undo must restore what it changed and no more.
    cloud.headnode.app.hooks.fail_at.lock().unwrap().replace(("update".into(), "finish".into()));
    let r = cloud.client.post(&format!("/vms/{vm}?action=update"), &json!({"set_tags": {"shared": "new", "added": true}})).await.unwrap();
    let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(j["execution"], "failed", "{j}");
    cloud.headnode.app.hooks.fail_at.lock().unwrap().take();
    let tags = cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["tags"].clone();
    assert_eq!(tags, json!({"keep": 1, "shared": "old"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_and_tags_are_bounded_per_vm_at_the_request() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("big")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let chunk = "x".repeat(200 * 1024);
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..12 {
        match cloud
            .client
            .post(&format!("/vms/{vm}?action=update&sync=true"), &json!({"set_customer_metadata": {format!("k{i}"): chunk}}))
            .await
        {
            Ok(v) => {
                assert_eq!(v["job_execution"], "succeeded", "every accepted update applies: {v}");
                accepted += 1;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(accepted, 5, "1 MiB holds five 200 KiB values");
    let e = api_err(Err(refused.unwrap()), 409, "ValidationFailed");
    assert!(e["message"].as_str().unwrap().contains("at most 1048576 bytes"), "{e}");
    // Removing some makes room again.
    cloud.client.post(&format!("/vms/{vm}?action=update&sync=true"), &json!({"remove_customer_metadata": ["k0"]})).await.unwrap();
    cloud.client.post(&format!("/vms/{vm}?action=update&sync=true"), &json!({"set_customer_metadata": {"k5": chunk}})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destroy_that_failed_half_way_is_finished_by_the_next_delete() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("half")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    // A destroy that died after marking the record: the VM is gone from its server, the
    // record says destroyed, its NIC (and address) and a reservation are still held.
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    let before = cloud.headnode.app.store.get("vms", &vm).await.unwrap().unwrap().value;
    let id = |s: &str| uuid::Uuid::parse_str(s).unwrap();
    cloud.headnode.app.agent_delete_and_wait(id(&server), id(&vm), Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut half = before.clone();
    half["state"] = json!("destroyed");
    cloud.headnode.app.store.put("vms", &vm, half, Cond::Any).await.unwrap();
    let nic = &before["nics"][0];
    let leaked = json!({"owner_uuid": seed.owner, "belongs_to_uuid": vm, "belongs_to_type": "zone", "mac": nic["mac"], "ip": nic["ip"]});
    if count(&cloud, "nics", "belongs_to_uuid", &vm).await == 0 {
        cloud.client.post(&format!("/networks/{}/nics", seed.network), &leaked).await.unwrap();
    }
    let res_key = "5e0c7b1a-4d2f-4c3b-8a9e-1f2d3c4b5a69";
    cloud
        .headnode
        .app
        .store
        .put(
            "reservations",
            res_key,
            json!({"job_uuid": res_key, "vm_uuid": vm, "server_uuid": server, "owner_uuid": seed.owner, "ram_mib": 1024, "disk_mib": 10240, "kind": "provision"}),
            Cond::Absent,
        )
        .await
        .unwrap();
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &vm).await, 1);
    // DeleteVm again finishes the cleanup instead of answering VmDestroyed.
    let r = cloud.client.delete(&format!("/vms/{vm}")).await.unwrap();
    let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &vm).await, 0);
    assert_eq!(count(&cloud, "reservations", "vm_uuid", &vm).await, 0);
    // Only now is there nothing left to do.
    api_err(cloud.client.delete(&format!("/vms/{vm}")).await, 409, "VmDestroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_learns_an_agents_new_address_instead_of_failing() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("moved")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    // The agent restarted: the record still names an address nothing listens on…
    let o = cloud.headnode.app.store.get("servers", &server).await.unwrap().unwrap();
    let real = o.value["agent_url"].clone();
    let mut stale = o.value.clone();
    stale["agent_url"] = json!("http://127.0.0.1:9");
    cloud.headnode.app.store.put("servers", &server, stale, Cond::Generation(o.generation)).await.unwrap();
    // (Written behind the headnode's back: it forgets what it remembered, as its own writes
    // do; the fixed address below is then learnt from the failed calls alone.)
    cloud.headnode.app.agents.targets.forget(server.parse().unwrap());
    let r = cloud.client.post(&format!("/vms/{vm}?action=stop"), &json!({})).await.unwrap();
    // …until the agent re-joins a moment later with its new one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let o = cloud.headnode.app.store.get("servers", &server).await.unwrap().unwrap();
    let mut fixed = o.value.clone();
    fixed["agent_url"] = real;
    cloud.headnode.app.store.put("servers", &server, fixed, Cond::Generation(o.generation)).await.unwrap();
    let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["state"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_step_that_lost_its_lease_cannot_write_and_the_job_is_taken_over() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let marker = cloud.data_dir.join("paused");
    let hooks = &cloud.headnode.app.hooks;
    *hooks.pause_at.lock().unwrap() = Some(("provision".into(), "nics".into(), nereid_headnode::jobs::When::Before, marker.clone()));
    let (vm, job) = cloud.create_vm(&seed.vm_body("fenced")).await.unwrap();
    wait_for(&marker).await;
    // Another headnode takes the lease while this one is stalled before the step.
    cloud.headnode.app.store.put("job_leases", &job, json!({"owner": "another-headnode", "until_ms": 0}), Cond::Any).await.unwrap();
    hooks.pause_at.lock().unwrap().take();
    hooks.resume.notify_one();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &vm).await, 0, "the stalled step wrote nothing");
    // The other headnode never renews: a lease period later (by this headnode's own
    // clock) the job is taken over and finishes, with one NIC.
    let j = cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(count(&cloud, "nics", "belongs_to_uuid", &vm).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unique_names_and_affinity_hold_under_concurrent_creates() {
    use nereid_headnode::app::vms::CreateOptions;
    let cloud = sim(2).await;
    let seed = cloud.seed().await.unwrap();
    let app = cloud.headnode.app.clone();
    // Eight creates of one name at once: exactly one wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (app, body) = (app.clone(), seed.vm_body("only-one"));
        tasks.push(tokio::spawn(async move {
            app.create_vm_with(body.as_object().unwrap(), &CreateOptions { unique_alias: true, locality: None }).await.map(|c| c.vm.uuid)
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert!(e.message.contains("is already the name of instance"), "{e:?}"),
        }
    }
    assert_eq!(won, 1);
    // `instance!=web*` (strict) for two webs created at once: never on the same server.
    let far_from_webs = |vms: &[nereid_types::vm::Vm]| {
        let webs: Vec<String> =
            vms.iter().filter(|v| v.alias.as_deref().is_some_and(|a| a.starts_with("web"))).map(|v| v.uuid.to_string()).collect();
        Ok(Some(json!({"strict": true, "far": webs})))
    };
    let mut tasks = Vec::new();
    for i in 0..2 {
        let (app, body) = (app.clone(), seed.vm_body(&format!("web-{i}")));
        tasks.push(tokio::spawn(async move {
            let opts = CreateOptions { unique_alias: true, locality: Some(&far_from_webs) };
            app.create_vm_with(body.as_object().unwrap(), &opts).await.map(|c| c.vm.server_uuid)
        }));
    }
    let a = tasks.remove(0).await.unwrap().unwrap();
    let b = tasks.remove(0).await.unwrap().unwrap();
    assert_ne!(a, b, "two webs on one server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reconciler_repairs_provable_drift_reports_the_rest_and_counts_it() {
    let mut o = Options::new(Backend::Sqlite);
    o.sim_servers = 1;
    o.app.reconcile_every = Duration::from_millis(300);
    let cloud = Cloud::start_with(o).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    // A VM whose server lost it without a report (its record says running, from long ago).
    let gone = "3f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
    let rec = json!({"uuid": gone, "brand": "bhyve", "owner_uuid": seed.owner, "server_uuid": server, "state": "running", "ram": 512, "quota": 10, "create_timestamp": "2020-01-01T00:00:00.000Z"});
    cloud.headnode.app.store.put("vms", gone, rec, Cond::Absent).await.unwrap();
    // And a VM that runs without a record: reported, never deleted.
    let (unrecorded, job) = cloud.create_vm(&seed.vm_body("unrecorded")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    for _ in 0..100 {
        if cloud.client.get(&format!("/servers/{server}/vms")).await.unwrap().to_string().contains(&unrecorded) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cloud.headnode.app.store.delete("vms", &unrecorded, Cond::Any).await.unwrap();
    let mut destroyed = false;
    for _ in 0..100 {
        if cloud.client.get(&format!("/vms/{gone}")).await.unwrap()["state"] == "destroyed" {
            destroyed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(destroyed, "the reconciler marked the lost VM destroyed");
    let repairs = cloud.client.get("/jobs?task=repair").await.unwrap();
    assert!(repairs.to_string().contains(gone), "{repairs}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let metrics = cloud.client.request(reqwest::Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("nereid_reconciled_total{kind=\"vm_not_on_server\"} 1"), "{metrics}");
    assert!(metrics.contains("nereid_drift{kind=\"vm_without_record\"} 1"), "{metrics}");
    assert!(metrics.contains("nereid_drift{kind=\"vm_not_on_server\"} 0"), "{metrics}");
    let on_server = cloud.client.get(&format!("/servers/{server}/vms/{unrecorded}")).await.unwrap();
    assert_eq!(on_server["state"], "running", "never deleted: {on_server}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_headnode_of_the_cluster_holds_the_reconciler() {
    use nereid_headnode::reconcile::Singleton;
    let cloud = sim(0).await;
    let app = &cloud.headnode.app;
    let a = Singleton::new("test", Duration::from_millis(400));
    let b = Singleton::new("test", Duration::from_millis(400));
    assert!(a.hold(app).await, "the first takes it");
    assert!(a.hold(app).await, "and renews it");
    // Another headnode (another id) does not take a lease that is being renewed.
    let mut other_cfg = app.cfg.clone();
    other_cfg.headnode_id = "other".into();
    let other = nereid_headnode::app::App::new(app.store.clone(), cloud.data_dir.join("other"), other_cfg).await.unwrap();
    assert!(!b.hold(&other).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.hold(app).await);
    assert!(!b.hold(&other).await, "renewed in the meantime");
    // The holder stops renewing: a whole period later (by the other's clock) it takes over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b.hold(&other).await, "taken over");
    assert!(!a.hold(app).await, "the old holder sees the new one and stands back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_past_its_deadline_is_failed_and_unwound() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("late")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    // A stop job that waited (behind a wedged job, on a dead headnode) past its deadline.
    let mut late = nereid_headnode::jobs::new_job("stop", uuid::Uuid::parse_str(&vm).unwrap(), None, None, serde_json::Map::new());
    let server = cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    late.server_uuid = Some(uuid::Uuid::parse_str(&server).unwrap());
    late.timeout = 5;
    late.created_ms = nereid_types::time::now_ms() - 60_000;
    cloud.headnode.app.store.batch(vec![nereid_headnode::jobs::job_op(&late)]).await.unwrap();
    cloud.headnode.app.jobs_notify.notify_one();
    let j = cloud.wait_job(&late.uuid.to_string()).await.unwrap();
    assert_eq!(j["execution"], "failed", "{j}");
    assert!(j["error"].as_str().unwrap().contains("passed its deadline of 5 s"), "{j}");
    assert_eq!(cloud.client.get(&format!("/vms/{vm}")).await.unwrap()["state"], "running", "nothing was done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doctor_finds_a_missing_or_corrupt_image_file_and_disk_sizes_are_bounded() {
    let cloud = sim(1).await;
    let seed = cloud.seed().await.unwrap();
    let img = cloud.client.get(&format!("/images/{}", seed.image)).await.unwrap();
    let sha1 = img["files"][0]["sha1"].as_str().unwrap().to_string();
    let path = cloud.data_dir.join("images").join("sha1").join(&sha1[..2]).join(&sha1);
    assert!(path.exists(), "{}", path.display());
    std::fs::write(&path, vec![9u8; 4096]).unwrap();
    let report = cloud.client.get("/doctor").await.unwrap();
    let f = report["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "image_file").cloned().unwrap_or_default();
    assert!(f["message"].as_str().unwrap_or_default().contains("is corrupt"), "{report}");
    std::fs::remove_file(&path).unwrap();
    let report = cloud.client.get("/doctor").await.unwrap();
    assert!(report.to_string().contains("cannot be read"), "{report}");
    // A disk larger than any disk can be is refused at the request, before any sum.
    let mut body = seed.vm_body("huge");
    body["disks"] = json!([{"image_uuid": seed.image}, {"size": u64::MAX / 2}, {"size": u64::MAX / 2}]);
    let e = api_err(cloud.client.post("/vms", &body).await, 409, "ValidationFailed");
    assert!(e.to_string().contains("1 PiB"), "{e}");
}
