//! CloudAPI over HTTP with a signing test client: authentication failures, tenant
//! isolation across every endpoint, the operator's view, deletion protection, 410 for
//! deleted machines, paging with x-resource-count. (The real `triton` CLI drives the
//! happy paths in `triton.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nereid_testkit::Options;
use nereid_testkit::cloudapi::{Client as Tenant, Key, Signing};
use serde_json::{Value, json};

struct World {
    cloud: Cloud,
    seed: nereid_testkit::Seed,
    alice: Tenant,
    bob: Tenant,
}

async fn world(backend: Backend) -> World {
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(backend) }.cloudapi_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let mut tenants = Vec::new();
    for (login, seed_byte, operator) in [("alice", 1u8, false), ("bob", 2, false), ("root.op", 9, true)] {
        let key = Key::from_seed(seed_byte);
        cloud
            .client
            .post(
                "/accounts",
                &json!({"login": login, "email": format!("{login}@example.com"), "operator": operator, "keys": [{"key": key.openssh()}]}),
            )
            .await
            .unwrap();
        tenants.push(Tenant::new(&url, login, key));
    }
    let _op = tenants.pop();
    let bob = tenants.pop().unwrap();
    let alice = tenants.pop().unwrap();
    World { cloud, seed, alice, bob }
}

/// Creates a machine as `t` and waits until it runs.
async fn machine(w: &World, t: &Tenant, name: &str) -> Value {
    let a = t
        .post("/my/machines", &json!({"image": w.seed.image, "package": "sample", "name": name, "metadata.foo": "bar", "tag.role": "web"}))
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["state"], "provisioning");
    assert_eq!(a.headers["location"].to_str().unwrap(), format!("/{}/machines/{}", t.login, a.body["id"].as_str().unwrap()));
    let id = a.body["id"].as_str().unwrap().to_string();
    wait_state(t, &id, "running").await
}

async fn wait_state(t: &Tenant, id: &str, state: &str) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = t.get(&format!("/my/machines/{id}")).await.unwrap();
        if m.body["state"] == state {
            return m.body;
        }
        assert!(std::time::Instant::now() < end, "machine {id} never became {state}: {}", m.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn signatures_are_checked_and_failures_leak_nothing() {
    let w = world(Backend::Sqlite).await;
    // Ping needs no signature; every answer says which CloudAPI it is.
    let p = w.alice.send("GET", "/--ping", None, Signing::None).await.unwrap();
    assert_eq!((p.status, p.body["ping"].as_str()), (200, Some("pong")));
    assert_eq!(p.headers["server"], "cloudapi/9.20.0");
    assert!(p.headers.contains_key("request-id") && p.headers.contains_key("api-version") && p.headers.contains_key("date"));

    let ok = w.alice.get("/my").await.unwrap();
    assert_eq!((ok.status, ok.body["login"].as_str()), (200, Some("alice")), "{}", ok.text);

    let none = w.alice.send("GET", "/my/machines", None, Signing::None).await.unwrap();
    assert_eq!((none.status, none.body["code"].as_str()), (401, Some("InvalidCredentials")));
    assert_eq!(none.body["message"], "You must make authenticated requests to use CloudAPI");

    let refused = |a: &nereid_testkit::cloudapi::Answer| {
        assert_eq!(a.status, 401, "{}", a.text);
        assert_eq!(a.body, json!({"code": "InvalidCredentials", "message": "Invalid authorization credentials supplied"}));
    };
    refused(&w.alice.send("GET", "/my/machines", None, Signing::Corrupt).await.unwrap());
    refused(&w.alice.send("GET", "/my/machines", None, Signing::StaleBy(301)).await.unwrap());
    refused(&w.alice.send("GET", "/my/machines", None, Signing::StaleBy(-301)).await.unwrap());
    // Inside the window is fine.
    assert_eq!(w.alice.send("GET", "/my/machines", None, Signing::StaleBy(200)).await.unwrap().status, 200);
    // An unknown key and an unknown login answer exactly alike.
    let url = w.cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    refused(&Tenant::new(&url, "alice", Key::from_seed(7)).get("/my").await.unwrap());
    refused(&Tenant::new(&url, "nobody", Key::from_seed(1)).get("/my").await.unwrap());
    // Bob's key cannot sign as alice.
    refused(&Tenant::new(&url, "alice", Key::from_seed(2)).get("/my").await.unwrap());
    // The signature covers the raw request line: the same request to another path fails.
    let a = w.alice.send("GET", "/my/keys", None, Signing::Good).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.body[0]["fingerprint"], w.alice.key.md5());
    // A disabled account's keys stop working at once.
    w.cloud.client.put("/accounts/alice", &json!({"disabled": true})).await.unwrap();
    refused(&w.alice.get("/my").await.unwrap());
    w.cloud.client.put("/accounts/alice", &json!({"disabled": false})).await.unwrap();
    assert_eq!(w.alice.get("/my").await.unwrap().status, 200);
    // Unknown paths are behind authentication too.
    assert_eq!(w.alice.send("GET", "/my/nothing-here", None, Signing::None).await.unwrap().status, 401);
    assert_eq!(w.alice.get("/my/nothing-here").await.unwrap().body["code"], "ResourceNotFound");
}

/// Fills a route's path parameters.
fn fill(path: &str, account: &str, id: &str, mac: &str) -> String {
    path.replace("{account}", account)
        .replace("{id}", id)
        .replace("{key}", "role")
        .replace("{name}", "snap1")
        .replace("{mac}", mac)
        .replace("{ip}", "10.77.0.10")
        .replace("{vlan_id}", "2")
        .trim_end()
        .to_string()
}

#[tokio::test]
async fn a_tenant_cannot_touch_another_tenants_machine_through_any_endpoint() {
    let w = world(Backend::Sqlite).await;
    let m = machine(&w, &w.alice, "web-1").await;
    let id = m["id"].as_str().unwrap();
    let snap = w.alice.post(&format!("/my/machines/{id}/snapshots"), &json!({"name": "snap1"})).await.unwrap();
    assert_eq!(snap.status, 201, "{}", snap.text);
    let before = wait_snapshot(&w.alice, id, "snap1").await;
    assert_eq!(before["state"], "created");
    let mac = m["nics"][0]["mac"].as_str().unwrap().replace(':', "");

    let mut walked = 0;
    for r in nereid_headnode::cloudapi::routes() {
        if r.path == "/--ping" {
            continue;
        }
        let method = r.method.as_str();
        let body = json!({"action": "stop", "name": "mine", "package": "sample", "role": "db", "key": Key::from_seed(5).openssh(),
                          "default_network": w.seed.network, "email": "evil@example.com", "network": w.seed.network, "reserved": true});
        // Bob through his own account: alice's machine does not exist for him.
        if r.path.contains("{id}") {
            let a = w.bob.send(method, &fill(r.path, "my", id, &mac), Some(&body), Signing::Good).await.unwrap();
            assert_eq!(a.status, 404, "{method} {} as bob: {}", r.path, a.text);
            assert_eq!(a.body["code"], "ResourceNotFound");
            assert!(!a.text.contains("web-1") && !a.text.contains("alice"), "the 404 leaks: {}", a.text);
        }
        // Bob naming alice's account: refused whatever the endpoint.
        let a = w.bob.send(method, &fill(r.path, "alice", id, &mac), Some(&body), Signing::Good).await.unwrap();
        assert_eq!(a.status, 403, "{method} {} on alice's account as bob: {}", r.path, a.text);
        assert_eq!(a.body["code"], "NotAuthorized");
        // And without a signature nothing is even looked at.
        let a = w.bob.send(method, &fill(r.path, "alice", id, &mac), Some(&body), Signing::None).await.unwrap();
        assert_eq!(a.status, 401, "{method} {} unsigned: {}", r.path, a.text);
        walked += 1;
    }
    assert_eq!(walked, nereid_headnode::cloudapi::routes().len() - 1, "every endpoint but /--ping");
    assert!(walked >= 46, "walked {walked} endpoints");

    // Alice's machine is untouched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = w.alice.get(&format!("/my/machines/{id}")).await.unwrap().body;
    assert_eq!(after["state"], "running");
    assert_eq!(after["name"], "web-1");
    assert_eq!(after["tags"], json!({"role": "web"}));
    assert_eq!(after["metadata"]["foo"], "bar");
    assert_eq!(after["package"], "sample");
    let snaps = w.alice.get(&format!("/my/machines/{id}/snapshots")).await.unwrap().body;
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(after["nics"], m["nics"], "no NIC was added or removed");
    let nics = w.alice.get(&format!("/my/machines/{id}/nics")).await.unwrap().body;
    assert_eq!(nics.as_array().unwrap().len(), 1, "{nics}");
    let ip = w.cloud.client.get(&format!("/networks/{}/ips/10.77.0.10", w.seed.network)).await.unwrap();
    assert_eq!(ip["reserved"], false, "bob reserved nothing: {ip}");
    let alice = w.alice.get("/my").await.unwrap().body;
    assert_eq!(alice["email"], "alice@example.com");
    assert_eq!(w.alice.get("/my/keys").await.unwrap().body.as_array().unwrap().len(), 1);
    // Bob's own list does not show it.
    let list = w.bob.get("/my/machines").await.unwrap();
    assert_eq!((list.body, list.headers["x-resource-count"].to_str().unwrap()), (json!([]), "0"));
}

async fn wait_snapshot(t: &Tenant, id: &str, name: &str) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = t.get(&format!("/my/machines/{id}/snapshots/{name}")).await.unwrap();
        assert_eq!(s.status, 200, "{}", s.text);
        if s.body["state"] != "creating" {
            return s.body;
        }
        assert!(std::time::Instant::now() < end, "snapshot {name} stays {}", s.body["state"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operators_see_every_account_and_tenants_only_their_own() {
    let w = world(Backend::Sqlite).await;
    let m = machine(&w, &w.alice, "web-1").await;
    let url = w.cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let op = Tenant::new(&url, "root.op", Key::from_seed(9));
    let list = op.get("/alice/machines").await.unwrap();
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body[0]["id"], m["id"]);
    assert_eq!(op.get("/my/machines").await.unwrap().body, json!([]), "an operator's own account is its own");
    assert_eq!(op.get("/nobody/machines").await.unwrap().status, 404);
    assert_eq!(w.bob.get("/nobody/machines").await.unwrap().status, 403, "a tenant cannot probe logins");
}

#[tokio::test]
async fn deletion_protection_paging_and_deleted_machines() {
    let w = world(Backend::Postgres).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(machine(&w, &w.alice, &format!("web-{i}")).await["id"].as_str().unwrap().to_string());
    }
    // Names are unique per account.
    let dup = w.alice.post("/my/machines", &json!({"image": w.seed.image, "package": "sample", "name": "web-0"})).await.unwrap();
    assert_eq!((dup.status, dup.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", dup.text);
    // Paging: x-resource-count is the size of this page.
    let page = w.alice.get("/my/machines?limit=2&offset=0").await.unwrap();
    assert_eq!((page.body.as_array().unwrap().len(), page.headers["x-resource-count"].to_str().unwrap()), (2, "2"));
    let page = w.alice.get("/my/machines?limit=2&offset=2").await.unwrap();
    assert_eq!((page.body.as_array().unwrap().len(), page.headers["x-resource-count"].to_str().unwrap()), (1, "1"));
    let head = w.alice.send("HEAD", "/my/machines", None, Signing::Good).await.unwrap();
    assert_eq!((head.status, head.headers["x-resource-count"].to_str().unwrap()), (200, "3"));
    let by_name = w.alice.get("/my/machines?name=web-1&limit=1000&offset=0&stray=ignored").await.unwrap();
    assert_eq!(by_name.body.as_array().unwrap().len(), 1);
    assert_eq!(by_name.body[0], w.alice.get(&format!("/my/machines/{}", ids[1])).await.unwrap().body, "list and get agree");

    let id = &ids[0];
    let a = w.alice.post(&format!("/my/machines/{id}"), &json!({"action": "enable_deletion_protection"})).await.unwrap();
    assert_eq!(a.status, 202, "{}", a.text);
    assert!(a.headers.contains_key("date"));
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while w.alice.get(&format!("/my/machines/{id}")).await.unwrap().body["deletion_protection"] != true {
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = w.alice.send("DELETE", &format!("/my/machines/{id}"), None, Signing::Good).await.unwrap();
    assert_eq!(d.status, 409);
    assert_eq!(
        d.body,
        json!({"code": "CannotDestroyMachineError", "message": "Instance has \"deletion_protection\" enabled, preventing deletion"})
    );
    w.alice.post(&format!("/my/machines/{id}"), &json!({"action": "disable_deletion_protection"})).await.unwrap();
    while w.alice.get(&format!("/my/machines/{id}")).await.unwrap().body["deletion_protection"] != false {
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = w.alice.send("DELETE", &format!("/my/machines/{id}"), None, Signing::Good).await.unwrap();
    assert_eq!(d.status, 204, "{}", d.text);
    // A deleted machine answers 410 with its body (the CLI's delete -w depends on it).
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let gone = loop {
        let g = w.alice.get(&format!("/my/machines/{id}")).await.unwrap();
        if g.status == 410 {
            break g;
        }
        assert!(std::time::Instant::now() < end, "never deleted: {}", g.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((gone.body["state"].as_str(), gone.body["id"].as_str()), (Some("deleted"), Some(id.as_str())));
    let act = w.alice.post(&format!("/my/machines/{id}"), &json!({"action": "start"})).await.unwrap();
    assert_eq!(act.status, 410);
    assert_eq!(w.alice.get("/my/machines").await.unwrap().body.as_array().unwrap().len(), 2);
    // The audit shows what was done, newest first.
    let audit = w.alice.get(&format!("/my/machines/{}/audit", ids[1])).await.unwrap().body;
    assert_eq!(audit[0]["action"], "provision");
    assert_eq!(audit[0]["success"], "yes");
}

#[tokio::test]
async fn start_from_a_snapshot_rolls_back_then_boots() {
    let w = world(Backend::Sqlite).await;
    let id = machine(&w, &w.alice, "web-1").await["id"].as_str().unwrap().to_string();
    let snap = w.alice.post(&format!("/my/machines/{id}/snapshots"), &json!({})).await.unwrap();
    assert_eq!(snap.status, 201, "{}", snap.text);
    let name = snap.body["name"].as_str().unwrap().to_string();
    assert!(name.len() == 16 && name.ends_with('Z'), "a default name from the time: {name}");
    assert_eq!(wait_snapshot(&w.alice, &id, &name).await["state"], "created");
    // A running machine is rolled back as Triton does it: stopped, rolled back, booted.
    let a = w.alice.post(&format!("/my/machines/{id}/snapshots/{name}"), &json!({})).await.unwrap();
    assert_eq!(a.status, 202, "{}", a.text);
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let audit = w.alice.get(&format!("/my/machines/{id}/audit")).await.unwrap().body;
        if audit[0]["action"] == "rollback_snapshot" {
            assert_eq!(audit[0]["success"], "yes", "{audit}");
            break;
        }
        assert!(std::time::Instant::now() < end, "no rollback: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_state(&w.alice, &id, "running").await;
    // A stopped one is rolled back, then started.
    w.alice.post(&format!("/my/machines/{id}"), &json!({"action": "stop"})).await.unwrap();
    wait_state(&w.alice, &id, "stopped").await;
    let a = w.alice.post(&format!("/my/machines/{id}/snapshots/{name}"), &json!({"id": id, "name": name})).await.unwrap();
    assert_eq!(a.status, 202, "{}", a.text);
    wait_state(&w.alice, &id, "running").await;
    // The start job is in the audit once it has finished (it may still be recording).
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let audit = w.alice.get(&format!("/my/machines/{id}/audit")).await.unwrap().body;
        let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        if actions[0] == "start" {
            assert_eq!(&actions[..5], &["start", "rollback_snapshot", "stop", "rollback_snapshot", "create_snapshot"], "{audit}");
            break;
        }
        assert!(std::time::Instant::now() < end, "no start after the rollback: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = w.alice.get(&format!("/my/machines/{id}/snapshots/nope")).await.unwrap();
    assert_eq!((missing.status, missing.body["code"].as_str()), (404, Some("ResourceNotFound")));
}

/// `nereid admin account …` as an operator types it, and what each answer means for
/// CloudAPI at once (a removed key stops signing, a disabled account stops at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_accounts_and_keys_with_the_cli() {
    let cloud = Cloud::start_with(Options::new(Backend::Sqlite).cloudapi_http()).await.unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (Key::from_seed(11), Key::from_seed(12));
    let (f1, f2) = (dir.path().join("one.pub"), dir.path().join("two.pub"));
    std::fs::write(&f1, k1.openssh() + "\n").unwrap();
    std::fs::write(&f2, k2.openssh()).unwrap();
    let run = |args: Vec<String>| {
        let cloud = &cloud;
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            nereid_async(cloud, &a).await
        }
    };
    let args = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let out = run(args(&[
        "admin",
        "account",
        "create",
        "--login",
        "carol",
        "--email",
        "carol@example.com",
        "--key-file",
        f1.to_str().unwrap(),
        "first_name=Carol",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("account carol") && stdout(&out).contains(&k1.md5()), "{}", stdout(&out));
    let carol = Tenant::new(&url, "carol", Key::from_seed(11));
    let me = carol.get("/my").await.unwrap();
    assert_eq!((me.status, me.body["firstName"].as_str()), (200, Some("Carol")));

    // Bad input is refused with the reason, and nothing is created.
    let out = run(args(&["admin", "account", "create", "--login", "9lives", "--email", "x@example.com"])).await;
    assert!(!out.status.success() && stderr(&out).contains("login"), "{}", stderr(&out));
    let bad = dir.path().join("bad.pub");
    std::fs::write(&bad, "ssh-dss AAAAB3NzaC1kc3MAAACBAP== old\n").unwrap();
    let out = run(args(&["admin", "account", "key", "add", "carol", bad.to_str().unwrap()])).await;
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = run(args(&["admin", "account", "create", "--login", "carol", "--email", "c2@example.com"])).await;
    assert!(stderr(&out).contains("login carol is taken"), "{}", stderr(&out));

    let out = run(args(&["admin", "account", "key", "add", "carol", f2.to_str().unwrap(), "--name", "laptop"])).await;
    assert!(out.status.success() && stdout(&out).contains("key laptop"), "{}{}", stdout(&out), stderr(&out));
    let out = run(args(&["admin", "account", "key", "list", "carol"])).await;
    let list = stdout(&out);
    assert!(list.contains("laptop") && list.contains(&k1.md5()) && list.contains("ed25519-256"), "{list}");
    let out = run(args(&["admin", "--json", "account", "get", "carol"])).await;
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    assert_eq!(Tenant::new(&url, "carol", Key::from_seed(12)).get("/my").await.unwrap().status, 200);

    let out = run(args(&["admin", "account", "key", "remove", "carol", "laptop"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(Tenant::new(&url, "carol", Key::from_seed(12)).get("/my").await.unwrap().status, 401, "a removed key stops at once");

    let out = run(args(&["admin", "account", "update", "carol", "phone=555-0100", "first_name=null"])).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let me = carol.get("/my").await.unwrap().body;
    assert_eq!((me["phone"].as_str(), me["firstName"].as_str()), (Some("555-0100"), None));

    let out = run(args(&["admin", "account", "disable", "carol"])).await;
    assert!(stdout(&out).contains("disabled"), "{}", stdout(&out));
    assert_eq!(carol.get("/my").await.unwrap().status, 401);
    run(args(&["admin", "account", "enable", "carol"])).await;
    assert_eq!(carol.get("/my").await.unwrap().status, 200);
    let out = run(args(&["admin", "account", "list"])).await;
    assert!(stdout(&out).contains("carol@example.com"), "{}", stdout(&out));
}

/// Polls `GET path` until `done` holds for the answer.
async fn wait_for(t: &Tenant, path: &str, done: impl Fn(&nereid_testkit::cloudapi::Answer) -> bool) -> nereid_testkit::cloudapi::Answer {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let a = t.get(path).await.unwrap();
        if done(&a) {
            return a;
        }
        assert!(std::time::Instant::now() < end, "GET {path} never got there: {} {}", a.status, a.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Machine NICs as the CLI drives them (201 provisioning → running, 302 for a network the
/// machine is on already, 204 → 404), agreeing with NAPI and VMAPI; audit entries name
/// add_nics and remove_nics; bad input is refused with CloudAPI's codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machine_nics_are_added_listed_and_removed() {
    let w = world(Backend::Sqlite).await;
    let c = &w.cloud.client;
    let alice_uuid = c.get("/accounts/alice").await.unwrap()["uuid"].clone();
    let bob_uuid = c.get("/accounts/bob").await.unwrap()["uuid"].clone();
    let second = c
        .post(
            "/networks",
            &json!({"name": "alice-net", "nic_tag": "external", "vlan_id": 3, "subnet": "10.88.0.0/24",
            "provision_start_ip": "10.88.0.10", "provision_end_ip": "10.88.0.20", "gateway": "10.88.0.1", "owner_uuids": [alice_uuid]}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let bobs = c
        .post(
            "/networks",
            &json!({"name": "bob-net", "nic_tag": "external", "vlan_id": 4, "subnet": "10.89.0.0/24",
            "provision_start_ip": "10.89.0.10", "provision_end_ip": "10.89.0.20", "owner_uuids": [bob_uuid]}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let m = machine(&w, &w.alice, "web-1").await;
    let id = m["id"].as_str().unwrap();
    let list = w.alice.get(&format!("/my/machines/{id}/nics?id={id}")).await.unwrap();
    assert_eq!((list.status, list.headers["x-resource-count"].to_str().unwrap()), (200, "1"));
    assert_eq!(list.body[0]["state"], "running");
    assert_eq!(list.body[0]["primary"], true);
    assert_eq!(list.body[0]["gateway"], "10.77.0.1");

    let a = w.alice.post(&format!("/my/machines/{id}/nics"), &json!({"network": second, "primary": true})).await.unwrap();
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["state"], "provisioning");
    assert_eq!((a.body["network"].as_str(), a.body["primary"].as_bool()), (Some(second.as_str()), Some(false)), "{}", a.body);
    assert_eq!(a.body["netmask"], "255.255.255.0");
    let mac = a.body["mac"].as_str().unwrap().replace(':', "");
    assert_eq!(a.headers["location"].to_str().unwrap(), format!("/alice/machines/{id}/nics/{mac}"));
    let nic = wait_for(&w.alice, &format!("/my/machines/{id}/nics/{mac}"), |a| a.body["state"] == "running").await.body;
    assert_eq!((nic["primary"].as_bool(), nic["ip"].as_str()), (Some(true), Some("10.88.0.10")), "{nic}");
    // The machine follows: its primaryIp is the new primary NIC's.
    let got = w.alice.get(&format!("/my/machines/{id}")).await.unwrap().body;
    assert_eq!(got["primaryIp"], "10.88.0.10", "{got}");
    assert_eq!(got["ips"].as_array().unwrap().len(), 2);
    assert_eq!(got["state"], "running");
    let napi = c.get(&format!("/nics?belongs_to_uuid={id}")).await.unwrap();
    let vmapi = c.get(&format!("/vms/{id}")).await.unwrap()["nics"].clone();
    let cloud = w.alice.get(&format!("/my/machines/{id}/nics")).await.unwrap().body;
    for n in cloud.as_array().unwrap() {
        let napi_n = napi.as_array().unwrap().iter().find(|x| x["mac"] == n["mac"]).unwrap();
        let vmapi_n = vmapi.as_array().unwrap().iter().find(|x| x["mac"] == n["mac"]).unwrap();
        assert_eq!((&napi_n["ip"], &napi_n["primary"]), (&n["ip"], &n["primary"]));
        assert_eq!((&vmapi_n["ip"], &vmapi_n["primary"]), (&n["ip"], &n["primary"]));
    }
    // Once more on the same network: a 302 to the NIC it has.
    let again = w.alice.post(&format!("/my/machines/{id}/nics"), &json!({"network": {"ipv4_uuid": second}})).await.unwrap();
    assert_eq!(again.status, 302, "{}", again.text);
    assert_eq!(again.headers["location"].to_str().unwrap(), format!("/alice/machines/{id}/nics/{mac}"));

    // Bad input, with the codes the CLI knows.
    let code = |a: &nereid_testkit::cloudapi::Answer| (a.status, a.body["code"].as_str().unwrap_or_default().to_string());
    let post = |body: Value| {
        let (t, path) = (&w.alice, format!("/my/machines/{id}/nics"));
        async move { t.post(&path, &body).await.unwrap() }
    };
    assert_eq!(code(&post(json!({})).await), (409, "MissingParameter".into()));
    assert_eq!(code(&post(json!({"network": "nope"})).await), (409, "InvalidArgument".into()));
    assert_eq!(code(&post(json!({"network": 5})).await), (409, "InvalidArgument".into()));
    assert_eq!(code(&post(json!({"network": {"ipv4_uuid": second, "ipv4_count": 2}})).await), (409, "InvalidArgument".into()));
    assert_eq!(code(&post(json!({"network": w.seed.network, "primary": "maybe"})).await), (409, "InvalidArgument".into()));
    let a = post(json!({"network": bobs})).await;
    assert_eq!((code(&a), a.body["message"].as_str()), ((409, "InvalidArgument".into()), Some("network: network not found")), "{}", a.text);
    let a = w.alice.get(&format!("/my/machines/{id}/nics/90b8d0")).await.unwrap();
    assert_eq!((code(&a), a.body["message"].as_str()), ((409, "InvalidArgument".into()), Some("mac: mac has invalid format")));
    assert_eq!(code(&w.alice.get(&format!("/my/machines/{id}/nics/90b8d0ffffff")).await.unwrap()), (404, "ResourceNotFound".into()));
    let other = machine(&w, &w.bob, "bob-1").await;
    let bob_mac = other["nics"][0]["mac"].as_str().unwrap().replace(':', "");
    let a = w.alice.get(&format!("/my/machines/{id}/nics/{bob_mac}")).await.unwrap();
    assert_eq!(code(&a), (404, "ResourceNotFound".into()), "another account's NIC does not exist for alice");
    let a = w.alice.send("DELETE", &format!("/my/machines/{id}/nics/{bob_mac}"), None, Signing::Good).await.unwrap();
    assert_eq!(code(&a), (404, "ResourceNotFound".into()));

    // Removing the primary NIC: 204, the NIC is gone (404), its address free, the other primary.
    let d = w.alice.send("DELETE", &format!("/my/machines/{id}/nics/{mac}"), None, Signing::Good).await.unwrap();
    assert_eq!(d.status, 204, "{}", d.text);
    wait_for(&w.alice, &format!("/my/machines/{id}/nics/{mac}"), |a| a.status == 404).await;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = w.alice.get(&format!("/my/machines/{id}")).await.unwrap().body;
        if got["state"] == "running" && got["nics"].as_array().unwrap().len() == 1 {
            break got;
        }
        assert!(std::time::Instant::now() < end, "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got["primaryIp"], m["primaryIp"], "{got}");
    assert_eq!(c.get(&format!("/networks/{second}/ips/10.88.0.10")).await.unwrap()["free"], true);
    // The last NIC stays.
    let last = got["nics"][0]["mac"].as_str().unwrap().replace(':', "");
    let a = w.alice.send("DELETE", &format!("/my/machines/{id}/nics/{last}"), None, Signing::Good).await.unwrap();
    assert_eq!(code(&a), (409, "InvalidArgument".into()), "{}", a.text);
    // The audit names the actions the CLI's waits know.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let audit = w.alice.get(&format!("/my/machines/{id}/audit")).await.unwrap().body;
        let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        if actions.len() >= 3 {
            assert_eq!(&actions[..3], &["remove_nics", "add_nics", "provision"], "{audit}");
            assert!(audit.as_array().unwrap()[..2].iter().all(|e| e["success"] == "yes"), "{audit}");
            break;
        }
        assert!(std::time::Instant::now() < end, "{audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Network IPs as sdc-cloudapi shows them: on a public network a tenant sees and reads only
/// its own addresses and reserves none; on its own network it sees every held or reserved
/// address, holders only of its own, and reserves free ones; managed addresses (the
/// gateway) are never changed; operators see everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_ips_follow_ownership() {
    let w = world(Backend::Sqlite).await;
    let c = &w.cloud.client;
    let alice_uuid = c.get("/accounts/alice").await.unwrap()["uuid"].as_str().unwrap().to_string();
    let bob_uuid = c.get("/accounts/bob").await.unwrap()["uuid"].as_str().unwrap().to_string();
    let shared = c
        .post("/networks", &json!({"name": "shared", "nic_tag": "external", "vlan_id": 3, "subnet": "10.88.0.0/24",
            "provision_start_ip": "10.88.0.10", "provision_end_ip": "10.88.0.20", "gateway": "10.88.0.1", "owner_uuids": [alice_uuid, bob_uuid]}))
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let am = machine(&w, &w.alice, "a-1").await;
    let bm = machine(&w, &w.bob, "b-1").await;
    let public = w.seed.network.clone();

    // Public network: each tenant sees its own address, with its machine as holder.
    let list = w.alice.get(&format!("/my/networks/{public}/ips")).await.unwrap();
    assert_eq!((list.status, list.headers["x-resource-count"].to_str().unwrap()), (200, "1"), "{}", list.text);
    assert_eq!(
        list.body[0],
        json!({"ip": am["primaryIp"], "reserved": false, "managed": false, "owner_uuid": alice_uuid, "belongs_to_uuid": am["id"], "belongs_to_type": "zone"})
    );
    let theirs = w.alice.get(&format!("/my/networks/{public}/ips/{}", bm["primaryIp"].as_str().unwrap())).await.unwrap();
    assert_eq!((theirs.status, theirs.body["code"].as_str()), (404, Some("ResourceNotFound")), "{}", theirs.text);
    let mine = w.alice.get(&format!("/my/networks/{public}/ips/{}", am["primaryIp"].as_str().unwrap())).await.unwrap();
    assert_eq!(mine.body, list.body[0]);
    let put = w
        .alice
        .send("PUT", &format!("/my/networks/{public}/ips/10.77.0.200"), Some(&json!({"reserved": true})), Signing::Good)
        .await
        .unwrap();
    assert_eq!((put.status, put.body["code"].as_str()), (409, Some("InvalidArgument")));
    assert!(put.body["message"].as_str().unwrap().contains("cannot update an IP on a public network"), "{}", put.text);

    // A shared private network: both tenants' addresses show, holders only to their owners.
    for (t, m) in [(&w.alice, &am), (&w.bob, &bm)] {
        let a = t.post(&format!("/my/machines/{}/nics", m["id"].as_str().unwrap()), &json!({"network": shared})).await.unwrap();
        assert_eq!(a.status, 201, "{}", a.text);
        let mac = a.body["mac"].as_str().unwrap().replace(':', "");
        wait_for(t, &format!("/my/machines/{}/nics/{mac}", m["id"].as_str().unwrap()), |a| a.body["state"] == "running").await;
    }
    let list = w.alice.get(&format!("/my/networks/{shared}/ips?limit=10&offset=0")).await.unwrap().body;
    let ips: Vec<&Value> = list.as_array().unwrap().iter().collect();
    assert_eq!(ips.len(), 3, "the gateway and two NICs: {list}");
    assert_eq!(ips[0], &json!({"ip": "10.88.0.1", "reserved": true, "managed": true}), "the gateway is managed and anonymous");
    let alices = ips.iter().find(|i| i["owner_uuid"] == json!(alice_uuid)).unwrap();
    let bobs = ips.iter().find(|i| i["owner_uuid"] == json!(bob_uuid)).unwrap();
    assert_eq!(alices["belongs_to_uuid"], am["id"]);
    assert!(bobs.get("belongs_to_uuid").is_none(), "bob's holder stays bob's: {bobs}");
    let page = w.alice.get(&format!("/my/networks/{shared}/ips?limit=1&offset=1")).await.unwrap();
    assert_eq!((page.body.as_array().unwrap().len(), page.headers["x-resource-count"].to_str().unwrap()), (1, "1"));
    assert_eq!(page.body[0], *ips[1]);

    // Reserving: a free address yes, and back; the gateway and bob's address no.
    let path = format!("/my/networks/{shared}/ips/10.88.0.15");
    let put = w.alice.send("PUT", &path, Some(&json!({"reserved": true})), Signing::Good).await.unwrap();
    assert_eq!((put.status, put.body.clone()), (200, json!({"ip": "10.88.0.15", "reserved": true, "managed": false})), "{}", put.text);
    assert_eq!(c.get(&format!("/networks/{shared}/ips/10.88.0.15")).await.unwrap()["reserved"], true, "NAPI has it reserved");
    assert_eq!(w.alice.get(&path).await.unwrap().body["reserved"], true);
    let put = w.alice.send("PUT", &path, Some(&json!({"reserved": "false"})), Signing::Good).await.unwrap();
    assert_eq!(put.body["reserved"], false, "{}", put.text);
    let refused = |a: nereid_testkit::cloudapi::Answer, text: &str| {
        assert_eq!((a.status, a.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", a.text);
        assert!(a.body["message"].as_str().unwrap().contains(text), "{}", a.text);
    };
    let gw = format!("/my/networks/{shared}/ips/10.88.0.1");
    refused(
        w.alice.send("PUT", &gw, Some(&json!({"reserved": false})), Signing::Good).await.unwrap(),
        "cannot update managed IP: 10.88.0.1",
    );
    let bob_ip = bobs["ip"].as_str().unwrap();
    refused(
        w.alice.send("PUT", &format!("/my/networks/{shared}/ips/{bob_ip}"), Some(&json!({"reserved": true})), Signing::Good).await.unwrap(),
        "in use by another account",
    );
    let missing = w.alice.send("PUT", &path, Some(&json!({})), Signing::Good).await.unwrap();
    assert_eq!((missing.status, missing.body["code"].as_str()), (409, Some("MissingParameter")));
    refused(w.alice.send("PUT", &path, Some(&json!({"reserved": "yes"})), Signing::Good).await.unwrap(), "true or false");
    refused(w.alice.get(&format!("/my/networks/{shared}/ips/10.99.0.1")).await.unwrap(), "10.99.0.1");
    refused(w.alice.get(&format!("/my/networks/{shared}/ips/nope")).await.unwrap(), "ip");
    refused(w.alice.get(&format!("/my/networks/{shared}/ips?limit=0")).await.unwrap(), "limit");
    // Networks the account may not use, and pools, are not there.
    let bobs_only = c
        .post(
            "/networks",
            &json!({"name": "bobs", "nic_tag": "external", "vlan_id": 4, "subnet": "10.89.0.0/24",
            "provision_start_ip": "10.89.0.10", "provision_end_ip": "10.89.0.20", "owner_uuids": [bob_uuid]}),
        )
        .await
        .unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let a = w.alice.get(&format!("/my/networks/{bobs_only}/ips")).await.unwrap();
    assert_eq!((a.status, a.body["code"].as_str()), (404, Some("ResourceNotFound")));
    let pool =
        c.post("/network_pools", &json!({"name": "pool", "networks": [public]})).await.unwrap()["uuid"].as_str().unwrap().to_string();
    refused(w.alice.get(&format!("/my/networks/{pool}/ips")).await.unwrap(), "network pool");

    // An operator sees every address of the public network, holders included, and may reserve.
    let url = w.cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let op = Tenant::new(&url, "root.op", Key::from_seed(9));
    let all = op.get(&format!("/my/networks/{public}/ips")).await.unwrap().body;
    let holders: Vec<&Value> = all.as_array().unwrap().iter().map(|i| &i["belongs_to_uuid"]).collect();
    assert!(holders.contains(&&am["id"]) && holders.contains(&&bm["id"]), "{all}");
    let put =
        op.send("PUT", &format!("/my/networks/{public}/ips/10.77.0.200"), Some(&json!({"reserved": true})), Signing::Good).await.unwrap();
    assert_eq!((put.status, put.body["reserved"].as_bool()), (200, Some(true)), "{}", put.text);
}
