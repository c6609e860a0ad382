//! Images made from VMs on the sim backend: VMAPI's `create_image` action, CloudAPI's
//! CreateImageFromMachine through the real `triton image create -w`, and the job's
//! unwinding (a failure at every step, a server that cannot export the disk): the VM is
//! left as it was, the half-made file is gone, the image is `failed` saying why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use nereid_headnode::app::image_create::tenant_message;
use nereid_testkit::Options;
use nereid_testkit::triton::KeyType;
use serde_json::{Value, json};

const STEPS: &[&str] = &["check", "stop", "wait stopped", "prepare", "receive disk", "start again", "activate"];

struct Env {
    cloud: Cloud,
    seed: nereid_testkit::Seed,
}

async fn env() -> Env {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }.cloudapi_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    Env { cloud, seed }
}

/// The disk the sim server exports for `vm` (as `nereid_agent::backend::sim::sim_disk`).
fn sim_disk(vm: &str) -> Vec<u8> {
    nereid_agent::backend::sim::sim_disk(vm.parse().unwrap())
}

impl Env {
    fn hooks(&self) -> &nereid_headnode::jobs::Hooks {
        &self.cloud.headnode.app.hooks
    }

    async fn running_vm(&self, alias: &str, internal_metadata: Option<Value>) -> String {
        let mut body = self.seed.vm_body(alias);
        if let Some(m) = internal_metadata {
            body["internal_metadata"] = m;
        }
        let (uuid, job) = self.cloud.create_vm(&body).await.unwrap();
        assert_eq!(self.cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
        uuid
    }

    async fn action(&self, uuid: &str, action: &str, body: Value) -> Value {
        let r = self.cloud.client.post(&format!("/vms/{uuid}?action={action}"), &body).await.unwrap();
        self.cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()
    }

    async fn image(&self, uuid: &str) -> Value {
        self.cloud.client.get(&format!("/images/{uuid}")).await.unwrap()
    }

    async fn images_all(&self) -> usize {
        self.cloud.client.get("/images?state=all").await.unwrap().as_array().unwrap().len()
    }

    /// Waits until the server reports the VM in `state` and the record says so too.
    async fn settles(&self, uuid: &str, state: &str) {
        let server = self.cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let on = self.cloud.client.get(&format!("/servers/{server}/vms/{uuid}")).await.ok();
            let rec = self.cloud.client.get(&format!("/vms/{uuid}")).await.unwrap();
            let now = (on.as_ref().and_then(|v| v["state"].as_str().map(str::to_string)), rec["state"].as_str().map(str::to_string));
            if now.0.as_deref() == Some(state) && now.1.as_deref() == Some(state) {
                return;
            }
            assert!(Instant::now() < end, "VM {uuid}: server and record say {now:?}, expected {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the image store holds a file of these bytes.
    fn stored(&self, bytes: &[u8]) -> bool {
        self.cloud.headnode.app.files.path_of(&sha1_hex(bytes)).exists()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vmapi_create_image_makes_an_active_image_of_the_disk_and_restarts_the_vm() {
    let e = env().await;
    // Every step runs twice: the image and the VM come out the same.
    e.hooks().double_run.store(true, Ordering::SeqCst);
    let vm = e.running_vm("source", None).await;
    let body = json!({"name": "from-vm", "version": "1.0", "description": "made from a VM", "tags": {"role": "web"}});
    let j = e.action(&vm, "create_image", body).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    let steps: Vec<&str> = j["chain_results"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(steps, STEPS);
    let id = j["params"]["image_uuid"].as_str().unwrap().to_string();
    let img = e.image(&id).await;
    let src = e.image(&e.seed.image).await;
    assert_eq!((img["state"].as_str(), img["public"].as_bool()), (Some("active"), Some(false)), "{img}");
    assert_eq!((img["name"].as_str(), img["version"].as_str()), (Some("from-vm"), Some("1.0")));
    assert_eq!(img["owner"], e.seed.owner.as_str(), "owned by the VM's owner");
    assert_eq!(img["origin"], e.seed.image.as_str());
    assert_eq!(img["tags"], json!({"role": "web"}));
    assert_eq!(img["description"], "made from a VM");
    for f in ["type", "os", "nic_driver", "disk_driver", "cpu_type"] {
        assert_eq!(img[f], src[f], "{f} comes from the VM's image");
    }
    assert_eq!(img["image_size"], 1, "the exported disk's size (MiB): {img}");
    assert!(img["published_at"].is_string(), "{img}");
    let disk = sim_disk(&vm);
    assert_eq!(img["files"][0]["size"], disk.len());
    assert_eq!(img["files"][0]["sha1"], sha1_hex(&disk));
    assert_eq!(img["files"][0]["compression"], "none");
    // The file is the VM's disk, byte for byte.
    let r = e.cloud.client.request(reqwest::Method::GET, &format!("/images/{id}/file")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    assert!(bytes.starts_with(format!("NEREID-SIM-DISK vm={vm}\n").as_bytes()));
    assert_eq!(bytes.as_ref(), disk.as_slice());
    // Running before, running after.
    e.settles(&vm, "running").await;
    e.hooks().double_run.store(false, Ordering::SeqCst);

    // A stopped VM stays stopped.
    assert_eq!(e.action(&vm, "stop", json!({})).await["execution"], "succeeded");
    let j = e.action(&vm, "create_image", json!({"name": "from-vm", "version": "2.0"})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(e.image(j["params"]["image_uuid"].as_str().unwrap()).await["state"], "active");
    e.settles(&vm, "stopped").await;

    // The new image provisions.
    let mut body = e.seed.vm_body("from-image");
    body["image_uuid"] = json!(id);
    let (child, job) = e.cloud.create_vm(&body).await.unwrap();
    assert_eq!(e.cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    assert_eq!(e.cloud.client.get(&format!("/vms/{child}")).await.unwrap()["image_uuid"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_at_each_step_fails_the_image_removes_its_file_and_leaves_the_vm_running() {
    let e = env().await;
    for (i, step) in STEPS.iter().enumerate() {
        let vm = e.running_vm(&format!("fail-{}", step.replace(' ', "-")), None).await;
        *e.hooks().fail_at.lock().unwrap() = Some(("create_image".into(), step.to_string()));
        e.hooks().double_undo.store(i == STEPS.len() - 1, Ordering::SeqCst);
        let j = e.action(&vm, "create_image", json!({"name": "doomed", "version": format!("{i}")})).await;
        *e.hooks().fail_at.lock().unwrap() = None;
        e.hooks().double_undo.store(false, Ordering::SeqCst);
        assert_eq!(j["execution"], "failed", "{step}: {j}");
        assert_eq!(j["onerror_results"].as_array().unwrap().len(), i + 1, "{step}: every step done is undone: {j}");
        assert!(j["onerror_results"].as_array().unwrap().iter().all(|r| r["error"] == ""), "{step}: {j}");
        let img = e.image(j["params"]["image_uuid"].as_str().unwrap()).await;
        assert_eq!(img["state"], "failed", "{step}: {img}");
        // The owner reads words of our own for the step; the job keeps the whole reason.
        assert_eq!(img["error"]["message"], tenant_message(step, None), "{step}: {img}");
        assert_eq!(j["error"], format!("{step}: injected failure at step {step}"), "{step}: {j}");
        assert_eq!(img["files"], json!([]), "{step}: {img}");
        assert!(!e.stored(&sim_disk(&vm)), "{step}: the half-made image file is removed");
        e.settles(&vm, "running").await;
    }
    // A failed image is listed only when asked for, and is not provisionable.
    let active = e.cloud.client.get("/images").await.unwrap();
    assert!(active.as_array().unwrap().iter().all(|i| i["name"] != "doomed"), "{active}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_cannot_export_the_disk_fails_the_image_with_its_reason() {
    let e = env().await;
    let vm = e.running_vm("no-export", Some(json!({"nereid:sim_fault": "fail-export"}))).await;
    let j = e.action(&vm, "create_image", json!({"name": "never", "version": "1"})).await;
    assert_eq!(j["execution"], "failed", "{j}");
    let img = e.image(j["params"]["image_uuid"].as_str().unwrap()).await;
    assert_eq!(img["state"], "failed");
    // Tenants read the image's error: no server, address or agent text (the job keeps
    // that for operators).
    assert_eq!(img["error"]["message"], "receive disk: the VM's disk could not be exported", "{img}");
    let server = e.cloud.client.get("/servers").await.unwrap()[0]["uuid"].as_str().unwrap().to_string();
    let full = j["error"].as_str().unwrap();
    assert!(full.contains(&server) && full.contains("simulated failure exporting the boot disk"), "{j}");
    e.settles(&vm, "running").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_that_never_runs_the_prepare_script_fails_the_image_with_prepare_image_did_not_run() {
    let e = env().await;
    let vm = e.running_vm("unprepared", None).await;
    let before = e.cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    let body = json!({"name": "prepared", "version": "1", "prepare_image_script": "mdata put prepare-image:state running", "prepare_image_timeout": 1});
    let j = e.action(&vm, "create_image", body).await;
    assert_eq!(j["execution"], "failed", "{j}");
    assert_eq!(j["params"]["prepare_image_timeout"], 1);
    let img = e.image(j["params"]["image_uuid"].as_str().unwrap()).await;
    assert_eq!((img["state"].as_str(), img["error"]["code"].as_str()), (Some("failed"), Some("PrepareImageDidNotRun")), "{img}");
    assert!(img["error"]["message"].as_str().unwrap().contains("within 1 s"), "{img}");
    // The VM is as it was: running, no operator-script, its autoboot back.
    e.settles(&vm, "running").await;
    let after = e.cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert!(after["internal_metadata"].get("operator-script").is_none(), "{after}");
    assert_eq!(after["autoboot"], before["autoboot"]);
    assert_eq!(after["customer_metadata"], before["customer_metadata"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_name_the_field_and_write_nothing() {
    let e = env().await;
    let vm = e.running_vm("bad", None).await;
    let before = e.images_all().await;
    let post = |body: Value| {
        let c = &e.cloud.client;
        let vm = vm.clone();
        async move { c.post(&format!("/vms/{vm}?action=create_image"), &body).await }
    };
    let err = api_err(post(json!({"version": "1"})).await, 422, "ValidationFailed");
    assert_eq!(err["errors"][0]["field"], "name", "{err}");
    let err = api_err(post(json!({"name": "x", "version": "1", "os": "windows"})).await, 422, "InvalidParameter");
    assert_eq!(err["errors"][0]["field"], "os", "{err}");
    let err = api_err(post(json!({"name": "x", "version": "1", "homepage": "not a url"})).await, 422, "ValidationFailed");
    assert_eq!(err["errors"][0]["field"], "homepage", "{err}");
    let err = api_err(post(json!({"name": "x y!", "version": "1"})).await, 422, "ValidationFailed");
    assert_eq!(err["errors"][0]["field"], "name", "{err}");
    let err = api_err(post(json!({"name": "x", "version": "1", "prepare_image_timeout": 5})).await, 422, "InvalidParameter");
    assert_eq!(err["errors"][0]["field"], "prepare_image_timeout", "{err}");
    let err = api_err(post(json!({"name": "x", "version": "1", "prepare_image_script": ""})).await, 422, "InvalidParameter");
    assert_eq!(err["errors"][0]["field"], "prepare_image_script", "{err}");
    let missing =
        e.cloud.client.post(&format!("/vms/{}?action=create_image", uuid::Uuid::new_v4()), &json!({"name": "x", "version": "1"})).await;
    api_err(missing, 404, "ResourceNotFound");
    assert_eq!(e.images_all().await, before, "no image was written");
    let jobs = e.cloud.client.get(&format!("/vms/{vm}/jobs")).await.unwrap();
    assert!(jobs.as_array().unwrap().iter().all(|j| j["task"] != "create_image"), "no job was queued: {jobs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn triton_image_create_makes_a_private_image_the_owner_can_provision_from() {
    let e = env().await;
    let (_alice, alice) = e.cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();
    let (_bob, bob) = e.cloud.triton_user("bob", KeyType::Ed25519).await.unwrap();
    alice.ok_async(&["instance", "create", "-w", "tiny", "sample", "--name", "web-1"]).await;
    let out = alice.ok_async(&["image", "create", "-w", "web-1", "mine", "1.0.0", "-d", "my web server", "-t", "role=web"]).await;
    assert!(out.contains("mine"), "{out}");
    let img = alice.json_async(&["image", "get", "mine@1.0.0"]).await;
    let me = alice.json_async(&["account", "get", "-j"]).await;
    assert_eq!((img["state"].as_str(), img["public"].as_bool()), (Some("active"), Some(false)), "{img}");
    assert_eq!(img["owner"], me["id"], "{img}");
    assert_eq!(img["origin"], e.seed.image.as_str());
    assert_eq!(img["description"], "my web server");
    assert_eq!(img["tags"]["role"], "web", "{img}");
    let id = img["id"].as_str().unwrap().to_string();
    // The machine was running: it is again.
    assert_eq!(alice.json_async(&["instance", "get", "web-1"]).await["state"], "running");
    // Alice provisions from it; the disk the image carries is web-1's.
    alice.ok_async(&["instance", "create", "-w", "mine@1.0.0", "sample", "--name", "web-2"]).await;
    assert_eq!(alice.json_async(&["instance", "get", "web-2"]).await["image"], id.as_str());
    let web1 = alice.json_async(&["instance", "get", "web-1"]).await["id"].as_str().unwrap().to_string();
    assert_eq!(e.image(&id).await["files"][0]["sha1"], sha1_hex(&sim_disk(&web1)));
    // Bob neither sees nor uses it.
    let (_, err) = bob.fail_async(&["image", "get", &id]).await;
    assert!(err.contains("ResourceNotFound") || err.contains("not found"), "{err}");
    assert!(!bob.ok_async(&["image", "list", "-a"]).await.contains("mine"));
    let (_, err) = bob.fail_async(&["instance", "create", &id, "sample"]).await;
    assert!(err.contains("ResourceNotFound") || err.contains("not found") || err.contains("no image"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloudapi_create_image_from_machine_checks_its_input_and_the_owner() {
    use nereid_testkit::cloudapi::{Client as Tenant, Key};
    let e = env().await;
    let url = e.cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let mut tenants = Vec::new();
    for (login, seed) in [("alice", 1u8), ("bob", 2)] {
        let key = Key::from_seed(seed);
        e.cloud
            .client
            .post("/accounts", &json!({"login": login, "email": format!("{login}@example.com"), "keys": [{"key": key.openssh()}]}))
            .await
            .unwrap();
        tenants.push(Tenant::new(&url, login, key));
    }
    let (alice, bob) = (&tenants[0], &tenants[1]);
    let m = alice.post("/my/machines", &json!({"image": e.seed.image, "package": "sample", "name": "web-1"})).await.unwrap();
    assert_eq!(m.status, 201, "{}", m.text);
    let machine = m.body["id"].as_str().unwrap().to_string();
    let before = e.images_all().await;

    let a = alice.post("/my/images", &json!({"name": "x", "version": "1"})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (409, Some("MissingParameter")), "{}", a.text);
    assert!(a.text.contains("machine"), "{}", a.text);
    let a = alice.post("/my/images", &json!({"machine": "web-1", "name": "x", "version": "1"})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", a.text);
    assert!(a.text.contains("machine"), "{}", a.text);
    let a = alice.post("/my/images", &json!({"machine": machine, "version": "1"})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (409, Some("MissingParameter")), "{}", a.text);
    assert!(a.text.contains("name"), "{}", a.text);
    let a = alice.post("/my/images", &json!({"machine": machine, "name": "x", "version": "1", "eula": "nope"})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", a.text);
    assert!(a.text.contains("eula"), "{}", a.text);
    // Bob cannot image Alice's machine: to him it does not exist.
    let a = bob.post("/my/images", &json!({"machine": machine, "name": "x", "version": "1"})).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (404, Some("ResourceNotFound")), "{}", a.text);
    assert_eq!(e.images_all().await, before, "no image was written");

    // Once the machine runs: 201, creating, then active.
    let end = Instant::now() + Duration::from_secs(60);
    while alice.get(&format!("/my/machines/{machine}")).await.unwrap().body["state"] != "running" {
        assert!(Instant::now() < end, "machine never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = alice.post("/my/images", &json!({"machine": machine, "name": "mine", "version": "1", "ignored": true})).await.unwrap();
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(
        (a.body["state"].as_str(), a.body["name"].as_str(), a.body["public"].as_bool()),
        (Some("creating"), Some("mine"), Some(false))
    );
    let id = a.body["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let g = alice.get(&format!("/my/images/{id}")).await.unwrap();
        if g.body["state"] != "creating" {
            assert_eq!(g.body["state"], "active", "{}", g.text);
            break;
        }
        assert!(Instant::now() < end, "image {id} never left creating");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bob.get(&format!("/my/images/{id}")).await.unwrap().status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_headnode_restarted_after_the_disk_arrived_finishes_the_image_without_fetching_it_again() {
    let mut e = env().await;
    let vm = e.running_vm("crashy", None).await;
    let marker = e.cloud.data_dir.join("paused-image");
    *e.hooks().pause_at.lock().unwrap() =
        Some(("create_image".into(), "receive disk".into(), nereid_headnode::jobs::When::After, marker.clone()));
    let r = e.cloud.client.post(&format!("/vms/{vm}?action=create_image"), &json!({"name": "resumed", "version": "1"})).await.unwrap();
    let job = r["job_uuid"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < end, "the job never reached receive disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The disk is in, the step not yet recorded as done: the headnode stops here.
    e.cloud.restart_headnode().await.unwrap();
    let j = e.cloud.wait_job(&job).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    let received = j["chain_results"].as_array().unwrap().iter().find(|r| r["name"] == "receive disk").unwrap().clone();
    assert!(received["result"].as_str().unwrap().contains("the disk is in already"), "run again, it fetched nothing: {j}");
    let img = e.image(j["params"]["image_uuid"].as_str().unwrap()).await;
    assert_eq!(img["state"], "active", "{img}");
    assert_eq!(img["files"][0]["sha1"], sha1_hex(&sim_disk(&vm)));
    assert!(e.stored(&sim_disk(&vm)));
    e.settles(&vm, "running").await;
}

/// Pauses the next `create_image` job just after `step` (its result not yet saved), then
/// restarts the headnode there, as a crash would; answers the job.
async fn crash_after(e: &mut Env, vm: &str, step: &str, body: Value) -> Value {
    let marker = e.cloud.data_dir.join(format!("paused-{}", step.replace(' ', "-")));
    *e.hooks().pause_at.lock().unwrap() = Some(("create_image".into(), step.into(), nereid_headnode::jobs::When::After, marker.clone()));
    let r = e.cloud.client.post(&format!("/vms/{vm}?action=create_image"), &body).await.unwrap();
    let job = r["job_uuid"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < end, "the job never reached {step}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.cloud.restart_headnode().await.unwrap();
    e.cloud.wait_job(&job).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_after_the_vm_was_stopped_or_its_autoboot_turned_off_still_restores_both() {
    let mut e = env().await;
    // Stop ran (the VM is asked to stay stopped), its step not saved: the rerun must still
    // know the VM ran before the job.
    let vm = e.running_vm("crash-stop", None).await;
    let j = crash_after(&mut e, &vm, "stop", json!({"name": "after-stop", "version": "1"})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    e.settles(&vm, "running").await;

    // Prepare booted the guest with autoboot off and failed, its step not saved: the rerun
    // and the unwind must put back the autoboot from before the job.
    let vm = e.running_vm("crash-prepare", None).await;
    let before = e.cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    let body = json!({"name": "after-prepare", "version": "1", "prepare_image_script": "true", "prepare_image_timeout": 1});
    let j = crash_after(&mut e, &vm, "prepare", body).await;
    assert_eq!(j["execution"], "failed", "{j}");
    e.settles(&vm, "running").await;
    let after = e.cloud.client.get(&format!("/vms/{vm}")).await.unwrap();
    assert_eq!(after["autoboot"], before["autoboot"], "{after}");
    assert!(after["internal_metadata"].get("operator-script").is_none(), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vmapi_create_image_takes_tritons_body_with_its_image_uuid() {
    let e = env().await;
    let vm = e.running_vm("triton-body", None).await;
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "image_uuid": id,
        "imgapi_url": "http://imgapi.example.com",
        "compression": "gzip",
        "incremental": false,
        "manifest": {"v": 2, "name": "nested", "version": "1.0", "description": "Triton's form"},
    });
    let j = e.action(&vm, "create_image", body.clone()).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(j["params"]["image_uuid"], id.as_str());
    assert!(j["timeout"].as_u64().unwrap() > 3600, "{j}");
    let img = e.image(&id).await;
    assert_eq!(
        (img["state"].as_str(), img["name"].as_str(), img["description"].as_str()),
        (Some("active"), Some("nested"), Some("Triton's form"))
    );
    // The same UUID again is refused; an incremental image is refused, saying why.
    let err = api_err(e.cloud.client.post(&format!("/vms/{vm}?action=create_image"), &body).await, 409, "ValidationFailed");
    assert_eq!(err["errors"][0]["field"], "image_uuid", "{err}");
    let mut inc = body.clone();
    inc["image_uuid"] = json!(uuid::Uuid::new_v4());
    inc["incremental"] = json!(true);
    let err = api_err(e.cloud.client.post(&format!("/vms/{vm}?action=create_image"), &inc).await, 422, "InvalidParameter");
    assert_eq!(err["errors"][0]["field"], "incremental", "{err}");
    assert!(err["errors"][0]["message"].as_str().unwrap().contains("whole disk"), "{err}");
    // The flat form still works.
    let j = e.action(&vm, "create_image", json!({"name": "flat", "version": "1"})).await;
    assert_eq!(j["execution"], "succeeded", "{j}");
}
