//! One damaged VM record never takes the cloud down: records written straight into the
//! store (as a bad migration, an old backup or a buggy tool leaves them) are read, counted,
//! listed, repaired and removed through the API, and no other request fails because of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_store::Cond;
use nereid_testkit::Options;
use serde_json::{Value, json};

async fn sim(backend: Backend, servers: usize) -> Cloud {
    Cloud::start_with(Options { sim_servers: servers, ..Options::new(backend) }).await.unwrap()
}

async fn servers(cloud: &Cloud) -> Vec<String> {
    let mut s: Vec<String> =
        cloud.client.get("/servers").await.unwrap().as_array().unwrap().iter().map(|s| s["uuid"].as_str().unwrap().to_string()).collect();
    s.sort();
    s
}

/// GetVm with its ETag.
async fn get_with_etag(cloud: &Cloud, uuid: &str) -> (Value, String) {
    let resp = cloud.client.request(reqwest::Method::GET, &format!("/vms/{uuid}")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET /vms/{uuid}");
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    (resp.json().await.unwrap(), etag)
}

async fn put_vm(cloud: &Cloud, uuid: &str, etag: &str, body: &Value) -> Result<Value, nereid_client::Error> {
    let c = &cloud.client;
    c.send(c.request(reqwest::Method::PUT, &format!("/vms/{uuid}")).header("if-match", etag).json(body)).await
}

/// A provisioned, running VM on `server`.
async fn running_vm(cloud: &Cloud, seed: &nereid_testkit::Seed, alias: &str, server: &str) -> Value {
    let mut body = seed.vm_body(alias);
    body["server_uuid"] = json!(server);
    let (uuid, job) = cloud.create_vm(&body).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()
}

/// The damaged shapes the issue names: a wrong type, a negative size, a retyped cap, no
/// uuid, and a value that is not an object at all.
fn corruptions(server: &str, owner: &str) -> Vec<(&'static str, Value)> {
    let base = |extra: Value| {
        let mut v = json!({"brand": "bhyve", "owner_uuid": owner, "server_uuid": server, "state": "running", "ram": 1024, "quota": 10});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    vec![
        ("ram as a string", base(json!({"ram": "1024"}))),
        ("negative ram", base(json!({"ram": -5}))),
        ("cpu_cap as a string", base(json!({"cpu_cap": "100"}))),
        ("no uuid", base(json!({}))),
        ("nics as a string", base(json!({"nics": "eth0"}))),
    ]
}

async fn a_damaged_record_is_listed_read_repaired_and_deleted(backend: Backend) {
    let cloud = sim(backend, 2).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud).await;
    let good = running_vm(&cloud, &seed, "good", &s[0]).await;
    let good_id = good["uuid"].as_str().unwrap().to_string();
    let mut damaged = Vec::new();
    for (i, (what, mut raw)) in corruptions(&s[0], &seed.owner).into_iter().enumerate() {
        let key = format!("dddddddd-0000-4000-8000-00000000000{i}");
        if what != "no uuid" {
            raw["uuid"] = json!(key);
        }
        cloud.headnode.app.store.put("vms", &key, raw, Cond::Absent).await.unwrap();
        damaged.push((what, key));
    }
    // Null bookkeeping counters are read as zero, not as damage.
    let nulls = "dddddddd-0000-4000-8000-0000000000aa";
    cloud
        .headnode
        .app
        .store
        .put("vms", nulls, json!({"uuid": nulls, "brand": "bhyve", "owner_uuid": seed.owner, "state": "stopped", "ram": 256, "agent_generation": null, "definition_generation": null}), Cond::Absent)
        .await
        .unwrap();
    assert!(cloud.client.get(&format!("/vms/{nulls}")).await.unwrap().get("damaged").is_none());

    // CreateVm on the damaged records' server works, and the explanation names them.
    let mut body = seed.vm_body("after-damage");
    body["server_uuid"] = json!(s[0]);
    let r = cloud.client.post("/vms", &body).await.unwrap();
    assert_eq!(r["placement"]["server_uuid"], s[0].as_str(), "{r}");
    let warnings = r["placement"]["warnings"].to_string();
    for (what, key) in &damaged {
        assert!(warnings.contains(key.as_str()) && warnings.contains("is damaged"), "{what}: {warnings}");
    }
    assert_eq!(cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap()["execution"], "succeeded");
    // And on the other server too.
    let mut body = seed.vm_body("elsewhere");
    body["server_uuid"] = json!(s[1]);
    cloud.client.post("/vms", &body).await.unwrap();

    // Lists answer, each damaged record marked with its error.
    let list = cloud.client.get("/vms").await.unwrap();
    let list = list.as_array().unwrap();
    for (what, key) in &damaged {
        let e = list.iter().find(|v| v["uuid"] == key.as_str()).unwrap_or_else(|| panic!("{what} is listed"));
        assert!(e["damaged"]["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {e}");
        assert!(e["damaged"]["repair"].as_str().unwrap().contains("PUT /vms/"), "{e}");
    }
    assert!(list.iter().any(|v| v["uuid"] == good_id.as_str() && v.get("damaged").is_none()));
    // doctor names each one with its repair, and never "repairs" it by itself.
    let report = cloud.client.get("/doctor").await.unwrap();
    for (what, key) in &damaged {
        let f = report["findings"].as_array().unwrap().iter().find(|f| f["subject"] == format!("vms/{key}").as_str());
        let f = f.unwrap_or_else(|| panic!("doctor reports {what}: {report}"));
        assert_eq!(f["kind"], "damaged_record", "{f}");
        assert!(f["repair"].as_str().unwrap().contains(&format!("PUT /vms/{key}")) && f.get("safe_repair").is_none(), "{f}");
    }
    // Other VMs answer as before.
    assert_eq!(cloud.client.get(&format!("/vms/{good_id}")).await.unwrap()["state"], "running");
    assert_eq!(cloud.client.get(&format!("/vms/{good_id}?sync=true")).await.unwrap()["state"], "running");

    // The operator reads each raw; actions on it say how to repair it.
    let (ram_str, _) = &damaged[0];
    assert_eq!(*ram_str, "ram as a string");
    let key0 = &damaged[0].1;
    let (raw, etag) = get_with_etag(&cloud, key0).await;
    assert_eq!(raw["ram"], "1024", "the raw value is shown: {raw}");
    let e = api_err(cloud.client.post(&format!("/vms/{key0}?action=stop"), &json!({})).await, 409, "VmDamaged");
    assert!(e["message"].as_str().unwrap().contains("PUT /vms/"), "{e}");

    // Repair with PutVm: a bad value is refused per field, a good one makes it a VM again.
    let e = api_err(put_vm(&cloud, key0, &etag, &json!({"ram": "lots"})).await, 409, "ValidationFailed");
    assert_eq!(e["errors"][0]["field"], "ram", "{e}");
    let fixed = put_vm(&cloud, key0, &etag, &json!({"ram": 1024})).await.unwrap();
    assert_eq!((fixed["ram"].clone(), fixed.get("damaged")), (json!(1024), None), "{fixed}");

    // The record without a uuid: PutVm gives it back its key.
    let (what, key3) = &damaged[3];
    assert_eq!(*what, "no uuid");
    let (raw, etag) = get_with_etag(&cloud, key3).await;
    assert_eq!(raw["uuid"], key3.as_str());
    assert!(raw["damaged"]["error"].as_str().unwrap().contains("uuid"), "{raw}");
    let fixed = put_vm(&cloud, key3, &etag, &json!({})).await.unwrap();
    assert!(fixed.get("damaged").is_none(), "{fixed}");

    // ?sync=true on a damaged record: its server does not have it, no server does, so it
    // is destroyed (and stays readable).
    let key1 = &damaged[1].1;
    let synced = cloud.client.get(&format!("/vms/{key1}?sync=true")).await.unwrap();
    assert_eq!(synced["state"], "destroyed", "{synced}");
    assert_eq!(synced["damaged_record"]["ram"], -5, "the original is kept: {synced}");

    // DELETE a damaged record: a destroy job that succeeds.
    let key2 = &damaged[2].1;
    let r = cloud.client.delete(&format!("/vms/{key2}")).await.unwrap();
    let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
    assert_eq!(j["execution"], "succeeded", "{j}");
    assert_eq!(cloud.client.get(&format!("/vms/{key2}")).await.unwrap()["state"], "destroyed");

    // A tenant's own listing (VMAPI with owner_uuid) answers; another tenant never sees them.
    let other = "11111111-2222-4333-8444-555555555555";
    let theirs = cloud.client.get(&format!("/vms?owner_uuid={other}")).await.unwrap();
    assert_eq!(theirs, json!([]));
    api_err(cloud.client.get(&format!("/vms/{}?owner_uuid={other}", damaged[4].1)).await, 404, "ResourceNotFound");
}

async fn putvm_refuses_values_that_cannot_be_true(backend: Backend) {
    let cloud = sim(backend, 1).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud).await;
    let v = running_vm(&cloud, &seed, "sized", &s[0]).await;
    let uuid = v["uuid"].as_str().unwrap();
    let (current, etag) = get_with_etag(&cloud, uuid).await;
    let mut disks = current["disks"].clone();
    disks[0]["size"] = json!(1u64 << 40);
    let e = api_err(
        put_vm(&cloud, uuid, &etag, &json!({"ram": 10_000_000, "cpu_cap": "100", "quota": -1, "disks": disks})).await,
        409,
        "ValidationFailed",
    );
    let mut fields: Vec<&str> = e["errors"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(fields, ["cpu_cap", "disks", "quota", "ram"], "{e}");
    assert!(e.to_string().contains("more than any server has"), "{e}");
    // Nothing was written.
    assert_eq!(cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()["ram"], 1024);
}

both_backends!(a_damaged_record_is_listed_read_repaired_and_deleted, putvm_refuses_values_that_cannot_be_true);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_names_the_records_that_take_a_refused_servers_capacity() {
    let cloud = sim(Backend::Sqlite, 1).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud).await;
    let real = running_vm(&cloud, &seed, "real", &s[0]).await;
    // A complete, well-formed record its server does not run, holding all the RAM.
    let phantom = "eeeeeeee-0000-4000-8000-000000000001";
    cloud
        .headnode
        .app
        .store
        .put(
            "vms",
            phantom,
            json!({"uuid": phantom, "brand": "bhyve", "owner_uuid": seed.owner, "server_uuid": s[0], "state": "running", "ram": 10_000_000, "quota": 10, "create_timestamp": "2020-01-01T00:00:00.000Z"}),
            Cond::Absent,
        )
        .await
        .unwrap();
    let e = api_err(cloud.client.post("/vms", &seed.vm_body("refused")).await, 409, "NoAllocatableServersError");
    let why = e["errors"][0]["message"].as_str().unwrap();
    assert!(why.contains("not enough RAM"), "{why}");
    assert!(why.contains(&format!("VM {phantom} 10000000 MiB (record the server does not report: suspect)")), "{why}");
    assert!(why.contains(&format!("VM {}", real["uuid"].as_str().unwrap())), "the real VM is named too: {why}");
    assert!(e["warnings"].to_string().contains(&format!("VM record {phantom}")), "{e}");
    // sync finds it nowhere and frees the server.
    assert_eq!(cloud.client.get(&format!("/vms/{phantom}?sync=true")).await.unwrap()["state"], "destroyed");
    cloud.client.post("/vms", &seed.vm_body("fits-now")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_moves_a_record_to_the_server_that_runs_the_vm_and_keeps_its_address() {
    let cloud = sim(Backend::Sqlite, 2).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud).await;
    let v = running_vm(&cloud, &seed, "migrated", &s[1]).await;
    let uuid = v["uuid"].as_str().unwrap().to_string();
    let ip = v["nics"][0]["ip"].as_str().unwrap().to_string();
    // The shape a half-finished migration leaves: the record names the other server.
    let o = cloud.headnode.app.store.get("vms", &uuid).await.unwrap().unwrap();
    let mut moved = o.value.clone();
    moved["server_uuid"] = json!(s[0]);
    cloud.headnode.app.store.put("vms", &uuid, moved, Cond::Generation(o.generation)).await.unwrap();

    let synced = cloud.client.get(&format!("/vms/{uuid}?sync=true")).await.unwrap();
    assert_eq!((synced["state"].as_str(), synced["server_uuid"].as_str()), (Some("running"), Some(s[1].as_str())), "{synced}");
    assert_eq!(synced["nics"][0]["ip"], ip.as_str(), "its NIC is kept");
    let nic = cloud.client.get(&format!("/nics/{}", v["nics"][0]["mac"].as_str().unwrap().replace(':', ""))).await.unwrap();
    assert_eq!((nic["belongs_to_uuid"].as_str(), nic["cn_uuid"].as_str()), (Some(uuid.as_str()), Some(s[1].as_str())), "{nic}");
    // Its address is never handed out again.
    for i in 0..3 {
        let n = running_vm(&cloud, &seed, &format!("next-{i}"), &s[i % 2]).await;
        assert_ne!(n["nics"][0]["ip"], ip.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_cannot_decide_while_another_server_is_silent() {
    let mut o = Options::new(Backend::Sqlite);
    o.sim_servers = 2;
    o.heartbeat = std::time::Duration::from_millis(200);
    o.app.server_timeout = std::time::Duration::from_millis(1500);
    let cloud = Cloud::start_with(o).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud).await;
    // A record naming s[0], which does not run it, while s[1] cannot be asked.
    let uuid = "eeeeeeee-0000-4000-8000-000000000002".to_string();
    let rec =
        json!({"uuid": uuid, "brand": "bhyve", "owner_uuid": seed.owner, "server_uuid": s[0], "state": "running", "ram": 512, "quota": 10});
    cloud.headnode.app.store.put("vms", &uuid, rec, Cond::Absent).await.unwrap();
    let o = cloud.headnode.app.store.get("servers", &s[1]).await.unwrap().unwrap();
    let mut unreachable = o.value.clone();
    unreachable["agent_url"] = json!("http://127.0.0.1:9");
    cloud.headnode.app.store.put("servers", &s[1], unreachable, Cond::Generation(o.generation)).await.unwrap();
    // (Written behind the headnode's back: it forgets what it remembered, as its own writes do.)
    cloud.headnode.app.agents.targets.forget(s[1].parse().unwrap());
    cloud.agent.as_ref().unwrap().pause_heartbeats(true);
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let e = api_err(cloud.client.get(&format!("/vms/{uuid}?sync=true")).await, 409, "SyncUndecided");
    assert!(e["message"].as_str().unwrap().contains(&s[1]), "{e}");
    // Nothing was changed.
    assert_eq!(cloud.client.get(&format!("/vms/{uuid}")).await.unwrap()["state"], "running");
}

/// A small deterministic generator (the property test must fail the same way twice).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Any JSON value, nested a little.
    fn json(&mut self, depth: u32) -> Value {
        match self.below(if depth == 0 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => json!(self.below(2) == 0),
            2 => json!(self.next() as i64 % 100_000 - 50_000),
            3 => json!(f64::from(self.below(1000) as u32) / 7.0),
            4 => json!(["", "running", "1024", "bhyve", "00000000-0000-0000-0000-000000000000", "ünïcode"][self.below(6)]),
            5 => json!(u64::MAX - self.below(3) as u64),
            6 => Value::Array((0..self.below(3)).map(|_| self.json(depth - 1)).collect()),
            _ => Value::Object((0..self.below(3)).map(|i| (format!("k{i}"), self.json(depth - 1))).collect()),
        }
    }
}

/// Random corruption of one VM record — a field dropped, nulled or retyped, or the whole
/// value replaced — never makes a request about another VM fail, and placement sees every
/// other server exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_corruption_of_one_record_never_touches_the_rest() {
    let cloud = sim(Backend::Sqlite, 3).await;
    let seed = cloud.seed().await.unwrap();
    let s = servers(&cloud).await;
    let victim = running_vm(&cloud, &seed, "victim", &s[0]).await["uuid"].as_str().unwrap().to_string();
    let mut other_vms = Vec::new();
    for (i, srv) in s[1..].iter().enumerate() {
        other_vms.push(running_vm(&cloud, &seed, &format!("other-{i}"), srv).await["uuid"].as_str().unwrap().to_string());
    }
    let view_of_others = || async {
        let v = cloud.headnode.app.placement_view().await.unwrap();
        v.servers.into_iter().filter(|x| x.uuid.to_string() != s[0]).collect::<Vec<_>>()
    };
    // The baseline once every server's inventory has its VMs (a heartbeat may lag).
    let mut baseline_view = view_of_others().await;
    for _ in 0..100 {
        if baseline_view.iter().all(|s| s.vms.iter().all(|v| v.on_server)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        baseline_view = view_of_others().await;
    }
    assert!(baseline_view.iter().all(|s| s.vms.iter().all(|v| v.on_server)), "{baseline_view:?}");
    let mut baseline = Vec::new();
    for u in &other_vms {
        baseline.push(cloud.client.get(&format!("/vms/{u}")).await.unwrap());
    }
    let original = cloud.headnode.app.store.get("vms", &victim).await.unwrap().unwrap().value;
    let keys: Vec<String> = original.as_object().unwrap().keys().cloned().collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..80 {
        let mut bad = original.clone();
        let key = &keys[rng.below(keys.len())];
        let what = match rng.below(4) {
            0 => {
                bad.as_object_mut().unwrap().remove(key);
                format!("dropped {key}")
            }
            1 => {
                bad[key.as_str()] = Value::Null;
                format!("nulled {key}")
            }
            2 => {
                bad[key.as_str()] = rng.json(2);
                format!("{key} = {}", bad[key.as_str()])
            }
            _ => {
                bad = rng.json(2);
                format!("whole record = {bad}")
            }
        };
        cloud.headnode.app.store.put("vms", &victim, bad, Cond::Any).await.unwrap();
        let list = cloud.client.get("/vms").await.unwrap_or_else(|e| panic!("round {round} ({what}): ListVms: {e}"));
        for (u, b) in other_vms.iter().zip(&baseline) {
            let listed = list.as_array().unwrap().iter().find(|v| v["uuid"] == u.as_str());
            assert_eq!(listed, Some(b), "round {round} ({what}): {u} in the list");
            let got = cloud.client.get(&format!("/vms/{u}")).await.unwrap_or_else(|e| panic!("round {round} ({what}): GetVm: {e}"));
            assert_eq!(&got, b, "round {round} ({what})");
            cloud.client.get(&format!("/vms/{u}/jobs")).await.unwrap_or_else(|e| panic!("round {round} ({what}): jobs: {e}"));
        }
        cloud.client.get(&format!("/vms/{victim}")).await.unwrap_or_else(|e| panic!("round {round} ({what}): the victim itself: {e}"));
        assert_eq!(view_of_others().await, baseline_view, "round {round} ({what}): placement's view of the other servers");
        if round % 20 == 0 {
            // A job on another VM runs to the end while the record is bad.
            let u = &other_vms[round / 20 % other_vms.len()];
            let r = cloud.client.post(&format!("/vms/{u}?action=update"), &json!({"set_tags": {"round": round}})).await.unwrap();
            let j = cloud.wait_job(r["job_uuid"].as_str().unwrap()).await.unwrap();
            assert_eq!(j["execution"], "succeeded", "round {round} ({what}): {j}");
            let i = other_vms.iter().position(|x| x == u).unwrap();
            baseline[i] = cloud.client.get(&format!("/vms/{u}")).await.unwrap();
        }
    }
    // CreateVm on every other server still works with the last corruption in place.
    for srv in &s[1..] {
        let mut body = seed.vm_body("still-works");
        body["server_uuid"] = json!(srv);
        cloud.client.post("/vms", &body).await.unwrap();
    }
}
