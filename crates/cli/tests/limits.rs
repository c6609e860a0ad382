//! Provisioning limits (issue 17 item 6): an operator's limit of 2 instances refuses the
//! third CreateMachine with CloudAPI's 403 `NotAuthorized` "Quota exceeded" — also when 10
//! creates race (exactly 2 get through, no record is left of the others) — and on VMAPI;
//! destroying one lets one more in; a RAM limit refuses a big package and a resize past it;
//! a per-image limit counts only that image; the real `triton account limits` lists them
//! with what is used; the operator API names bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{nereid_async, stdout};
use futures_util::future::join_all;
use nereid_testkit::cloudapi::{Answer, Client as Tenant, Key, Signing};
use nereid_testkit::triton::KeyType;
use nereid_testkit::{Backend, Cloud, Options, Seed};
use serde_json::{Value, json};

const MESSAGE: &str = "Quota exceeded; to have your limits raised please contact Support";

fn refused(a: &Answer) {
    assert_eq!(a.status, 403, "{}", a.text);
    assert_eq!((a.body["code"].as_str(), a.body["message"].as_str()), (Some("NotAuthorized"), Some(MESSAGE)), "{}", a.text);
}

fn machine(seed: &Seed, image: &str, package: &str) -> Value {
    json!({"image": image, "package": package, "networks": [seed.network]})
}

/// An active zvol image `name` of `os`, public.
async fn image(cloud: &Cloud, name: &str, os: &str) -> String {
    let c = &cloud.client;
    let img = c
        .post("/images", &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": name, "version": "1", "type": "zvol", "os": os, "public": true, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 1024}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    c.send(c.request(reqwest::Method::PUT, &format!("/images/{img}/file?compression=none")).body(vec![0u8; 4096])).await.unwrap();
    c.post(&format!("/images/{img}?action=activate"), &json!({})).await.unwrap();
    img
}

/// Waits for the VM's job of `task` to succeed.
async fn settle(cloud: &Cloud, vm: &str, task: &str) {
    let jobs = cloud.client.get(&format!("/jobs?vm_uuid={vm}&task={task}")).await.unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(cloud.wait_job(jobs[0]["uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
}

async fn owned(cloud: &Cloud, owner: &str) -> Vec<Value> {
    cloud.client.get(&format!("/vms?owner_uuid={owner}")).await.unwrap().as_array().unwrap().clone()
}

both_backends!(
    a_limit_of_two_refuses_the_third_even_when_ten_race,
    two_headnodes_on_one_store_admit_exactly_two,
    ram_image_and_resize_limits,
    operator_api_and_cli_name_bad_input
);

async fn a_limit_of_two_refuses_the_third_even_when_ten_race(backend: Backend) {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(backend) }.cloudapi_http()).await.unwrap();
    let seed = cloud.seed_sized(256, 2048).await.unwrap();
    let (alice_uuid, _) = common::alice_and_bob(&cloud).await;
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let alice = Tenant::new(&url, "alice", Key::from_seed(1));
    let l = cloud.client.post("/accounts/alice/limits", &json!({"value": 2})).await.unwrap();
    assert_eq!((l["by"].as_str(), l["value"].as_i64(), l["account_uuid"].as_str()), (Some("machines"), Some(2), Some(alice_uuid.as_str())));

    // Ten creates at once: exactly two get through, the others are refused with Triton's error.
    let body = machine(&seed, &seed.image, &seed.package);
    let answers = join_all((0..10).map(|_| alice.send("POST", "/my/machines", Some(&body), Signing::Good))).await;
    let answers: Vec<Answer> = answers.into_iter().map(Result::unwrap).collect();
    let accepted: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
    assert_eq!(accepted.len(), 2, "{:?}", answers.iter().map(|a| (a.status, a.text.clone())).collect::<Vec<_>>());
    answers.iter().filter(|a| a.status != 201).for_each(refused);
    // No record of the refused ones: two VMs, two provision jobs.
    let vms = owned(&cloud, &alice_uuid).await;
    assert_eq!(vms.len(), 2, "{vms:?}");
    for a in &accepted {
        settle(&cloud, a.body["id"].as_str().unwrap(), "provision").await;
    }
    let jobs = cloud.client.get("/jobs?task=provision").await.unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");

    // The third, alone, through CloudAPI and VMAPI.
    refused(&alice.send("POST", "/my/machines", Some(&body), Signing::Good).await.unwrap());
    let mut vmapi = seed.vm_body("third");
    vmapi["owner_uuid"] = json!(alice_uuid);
    let e = common::api_err(cloud.client.post("/vms", &vmapi).await, 403, "NotAuthorized");
    assert_eq!(e["message"], MESSAGE);

    // CloudAPI's ListLimits: the limit and what is used.
    let listed = alice.send("GET", "/my/limits", None, Signing::Good).await.unwrap();
    assert_eq!(listed.body, json!([{"by": "machines", "value": 2, "used": 2}]), "{}", listed.text);

    // Destroying one gives it back: one more gets in, and then no more.
    let first = accepted[0].body["id"].as_str().unwrap();
    let del = alice.send("DELETE", &format!("/my/machines/{first}"), None, Signing::Good).await.unwrap();
    assert_eq!(del.status, 204, "{}", del.text);
    settle(&cloud, first, "destroy").await;
    let again = alice.send("POST", "/my/machines", Some(&body), Signing::Good).await.unwrap();
    assert_eq!(again.status, 201, "{}", again.text);
    refused(&alice.send("POST", "/my/machines", Some(&body), Signing::Good).await.unwrap());

    // Other accounts are not limited by alice's limit.
    let bob = Tenant::new(&url, "bob", Key::from_seed(2));
    for _ in 0..3 {
        let a = bob.send("POST", "/my/machines", Some(&body), Signing::Good).await.unwrap();
        assert_eq!(a.status, 201, "{}", a.text);
    }
    assert_eq!(bob.send("GET", "/my/limits", None, Signing::Good).await.unwrap().body, json!([]));

    // Removing the limit lifts it.
    let id = l["id"].as_str().unwrap();
    cloud.client.delete(&format!("/accounts/alice/limits/{id}")).await.unwrap();
    let a = alice.send("POST", "/my/machines", Some(&body), Signing::Good).await.unwrap();
    assert_eq!(a.status, 201, "{}", a.text);
}

/// Ten creates for an account limited to 2, half through each of two headnodes sharing the
/// store, each pinned to its own server so no capacity claim serializes them: only the
/// limit's own serialization can hold the line.
async fn two_headnodes_on_one_store_admit_exactly_two(backend: Backend) {
    let cloud = Cloud::start_with(Options { sim_servers: 10, ..Options::new(backend) }.cloudapi_http()).await.unwrap();
    let second = Cloud::start_with(Options { store_url: Some(cloud.store_url.clone()), ..Options::new(backend) }).await.unwrap();
    let seed = cloud.seed_sized(256, 2048).await.unwrap();
    let (alice_uuid, _) = common::alice_and_bob(&cloud).await;
    second.client.post("/accounts/alice/limits", &json!({"value": 2})).await.unwrap();
    let servers = cloud.client.get("/servers").await.unwrap();
    let servers: Vec<&str> = servers.as_array().unwrap().iter().map(|s| s["uuid"].as_str().unwrap()).collect();
    assert_eq!(servers.len(), 10);
    let bodies: Vec<Value> = servers
        .iter()
        .map(|s| {
            let mut b = seed.vm_body("racer");
            b["owner_uuid"] = json!(alice_uuid);
            b["server_uuid"] = json!(s);
            b
        })
        .collect();
    let answers = join_all(bodies.iter().enumerate().map(|(i, b)| if i % 2 == 0 { &cloud } else { &second }.client.post("/vms", b))).await;
    let accepted = answers.iter().filter(|a| a.is_ok()).count();
    let outcomes: Vec<String> =
        answers.iter().map(|a| a.as_ref().map(|v| v["vm_uuid"].to_string()).unwrap_or_else(|e| e.to_string())).collect();
    assert_eq!(accepted, 2, "{outcomes:?}");
    for a in answers.into_iter().filter(|a| a.is_err()) {
        let e = common::api_err(a, 403, "NotAuthorized");
        assert_eq!(e["message"], MESSAGE);
    }
    assert_eq!(owned(&second, &alice_uuid).await.len(), 2);
}

async fn ram_image_and_resize_limits(backend: Backend) {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(backend) }.cloudapi_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let big = cloud
        .client
        .post("/packages", &json!({"name": "big", "version": "1.0.0", "max_physical_memory": 2048, "quota": 10240, "brand": "bhyve"}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let other = image(&cloud, "other", "linux").await;
    let (alice_uuid, bob_uuid) = common::alice_and_bob(&cloud).await;
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let alice = Tenant::new(&url, "alice", Key::from_seed(1));
    let bob = Tenant::new(&url, "bob", Key::from_seed(2));

    // RAM: 1536 MiB lets a 1 GiB instance in, not a 2 GiB one, nor a second 1 GiB one.
    cloud.client.post(&format!("/accounts/{alice_uuid}/limits"), &json!({"by": "ram", "value": 1536})).await.unwrap();
    refused(&alice.send("POST", "/my/machines", Some(&machine(&seed, &seed.image, &big)), Signing::Good).await.unwrap());
    let small = alice.send("POST", "/my/machines", Some(&machine(&seed, &seed.image, &seed.package)), Signing::Good).await.unwrap();
    assert_eq!(small.status, 201, "{}", small.text);
    refused(&alice.send("POST", "/my/machines", Some(&machine(&seed, &seed.image, &seed.package)), Signing::Good).await.unwrap());
    let vm = small.body["id"].as_str().unwrap().to_string();
    settle(&cloud, &vm, "provision").await;
    // A resize past it is refused too (CloudAPI and VMAPI), and nothing is queued.
    let r = alice.send("POST", &format!("/my/machines/{vm}?action=resize&package={big}"), None, Signing::Good).await.unwrap();
    refused(&r);
    common::api_err(cloud.client.post(&format!("/vms/{vm}?action=update"), &json!({"billing_id": big})).await, 403, "NotAuthorized");
    let jobs = cloud.client.get(&format!("/jobs?vm_uuid={vm}&task=update")).await.unwrap();
    assert_eq!(jobs, json!([]));
    let listed = alice.send("GET", "/my/limits", None, Signing::Good).await.unwrap();
    assert_eq!(listed.body, json!([{"by": "ram", "value": 1536, "used": 1024}]), "{}", listed.text);

    // Per image (by name): one instance of `other`, any number of `tiny`.
    let lim = cloud.client.post("/accounts/bob/limits", &json!({"value": 1, "image": "other"})).await.unwrap();
    assert_eq!(lim["check"], "image");
    let a = bob.send("POST", "/my/machines", Some(&machine(&seed, &other, &seed.package)), Signing::Good).await.unwrap();
    assert_eq!(a.status, 201, "{}", a.text);
    refused(&bob.send("POST", "/my/machines", Some(&machine(&seed, &other, &seed.package)), Signing::Good).await.unwrap());
    for _ in 0..2 {
        let a = bob.send("POST", "/my/machines", Some(&machine(&seed, &seed.image, &seed.package)), Signing::Good).await.unwrap();
        assert_eq!(a.status, 201, "{}", a.text);
    }
    assert_eq!(owned(&cloud, &bob_uuid).await.len(), 3);
    let listed = bob.send("GET", "/my/limits", None, Signing::Good).await.unwrap();
    assert_eq!(listed.body, json!([{"by": "machines", "value": 1, "used": 1, "check": "image", "image": "other"}]), "{}", listed.text);

    // The real triton CLI lists an account's limits (by→type, value→limit).
    let (_carol, triton) = cloud.triton_user("carol", KeyType::Ed25519).await.unwrap();
    cloud.client.post("/accounts/carol/limits", &json!({"value": 5})).await.unwrap();
    cloud.client.post("/accounts/carol/limits", &json!({"by": "quota", "value": 100, "os": "linux"})).await.unwrap();
    let j = triton.json_async(&["account", "limits", "-j"]).await;
    assert_eq!(
        j,
        json!([{"used": 0, "limit": 5, "type": "machines"}, {"used": 0, "check": "os", "os": "linux", "limit": 100, "type": "quota"}])
    );
    let table = triton.ok_async(&["account", "limits"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].split_whitespace().eq(["TYPE", "USED", "LIMIT", "OS", "IMAGE"]), "{table}");
    assert!(lines[1].split_whitespace().eq(["machines", "0", "5", "-", "-"]), "{table}");
    assert!(lines[2].split_whitespace().eq(["quota", "0", "100", "linux", "-"]), "{table}");
}

async fn operator_api_and_cli_name_bad_input(backend: Backend) {
    let cloud = Cloud::start_with(Options::new(backend)).await.unwrap();
    common::alice_and_bob(&cloud).await;
    let e = common::api_err(cloud.client.post("/accounts/alice/limits", &json!({"by": "cpus", "value": 1})).await, 409, "ValidationFailed");
    assert_eq!(e["errors"][0]["field"], "by", "{e}");
    let e = common::api_err(cloud.client.post("/accounts/alice/limits", &json!({"value": -5})).await, 409, "ValidationFailed");
    assert_eq!(e["errors"][0]["field"], "value", "{e}");
    let e = common::api_err(cloud.client.post("/accounts/alice/limits", &json!({"by": "ram"})).await, 409, "ValidationFailed");
    assert_eq!(e["errors"][0]["field"], "value", "{e}");
    common::api_err(cloud.client.post("/accounts/nobody/limits", &json!({"value": 1})).await, 404, "ResourceNotFound");
    common::api_err(cloud.client.get("/accounts/nobody/limits").await, 404, "ResourceNotFound");
    assert_eq!(cloud.client.get("/accounts/alice/limits").await.unwrap(), json!([]));

    // Update and delete through the operator API.
    let l = cloud.client.post("/accounts/alice/limits", &json!({"value": 3, "brand": "bhyve"})).await.unwrap();
    let id = l["id"].as_str().unwrap();
    let u = cloud.client.put(&format!("/accounts/alice/limits/{id}"), &json!({"value": 4})).await.unwrap();
    assert_eq!((u["value"].as_i64(), u["check"].as_str(), u["brand"].as_str()), (Some(4), Some("brand"), Some("bhyve")));
    common::api_err(cloud.client.put(&format!("/accounts/bob/limits/{id}"), &json!({"value": 4})).await, 404, "ResourceNotFound");
    cloud.client.delete(&format!("/accounts/alice/limits/{id}")).await.unwrap();
    common::api_err(cloud.client.delete(&format!("/accounts/alice/limits/{id}")).await, 404, "ResourceNotFound");

    // The CLI: add, list (table and JSON), remove; bad input named.
    let out = nereid_async(&cloud, &["admin", "account", "limit", "add", "alice", "--by", "ram", "--value", "2048", "--os", "linux"]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = nereid_async(&cloud, &["admin", "account", "limit", "list", "alice", "--json"]).await;
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((listed[0]["by"].as_str(), listed[0]["value"].as_i64(), listed[0]["os"].as_str()), (Some("ram"), Some(2048), Some("linux")));
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let table = stdout(&nereid_async(&cloud, &["admin", "account", "limit", "list", "alice"]).await);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.contains(&id) && l.contains("ram") && l.contains("2048") && l.contains("os=linux")),
        "{table}"
    );
    let bad = nereid_async(&cloud, &["admin", "account", "limit", "add", "alice", "--by", "cpus", "--value", "1"]).await;
    assert!(!bad.status.success() && common::stderr(&bad).contains("by"), "{}", common::stderr(&bad));
    let bad = nereid_async(&cloud, &["admin", "account", "limit", "list", "nobody"]).await;
    assert!(!bad.status.success() && common::stderr(&bad).contains("nobody"), "{}", common::stderr(&bad));
    let out = nereid_async(&cloud, &["admin", "account", "limit", "remove", "alice", &id]).await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(cloud.client.get("/accounts/alice/limits").await.unwrap(), json!([]));
}
