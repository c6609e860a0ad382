//! Fabric VLANs and fabric networks, the control plane: NAPI's `/fabrics/…` for
//! operators (and `nereid admin fabric`), CloudAPI's `/:login/fabrics/default/vlans…`
//! for tenants (signed client), every error Triton gives, two accounts with the same
//! VLAN id and subnet each seeing only their own, NICs on fabric networks, placement on
//! the underlay nic tag, and the default fabric for new accounts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nereid_testkit::Options;
use nereid_testkit::cloudapi::{Client as Tenant, Key};
use serde_json::{Value, json};

const VLAN_MSG: &str = "VLAN ID must be a number between 0 and 4094, and not 1";

/// A cloud whose fabrics ride on the `external` nic tag (MTU 1500 → fabric MTU 1450),
/// which the simulated servers have; alice and bob as tenants.
async fn world(sim: usize, mut opts: Options) -> (Cloud, nereid_testkit::Seed, Tenant, Tenant, String, String) {
    opts.sim_servers = sim;
    opts.app.fabric.underlay_tag = "external".into();
    let cloud = Cloud::start_with(opts.cloudapi_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let mut out = Vec::new();
    for (login, byte) in [("alice", 1u8), ("bob", 2)] {
        let key = Key::from_seed(byte);
        let a = cloud
            .client
            .post("/accounts", &json!({"login": login, "email": format!("{login}@example.com"), "keys": [{"key": key.openssh()}]}))
            .await
            .unwrap();
        out.push((Tenant::new(&url, login, key), a["uuid"].as_str().unwrap().to_string()));
    }
    let (bob, bob_id) = out.pop().unwrap();
    let (alice, alice_id) = out.pop().unwrap();
    (cloud, seed, alice, bob, alice_id, bob_id)
}

fn net_body(name: &str, third: u8) -> Value {
    json!({"name": name, "subnet": format!("10.{third}.0.0/24"), "provision_start_ip": format!("10.{third}.0.10"),
        "provision_end_ip": format!("10.{third}.0.250"), "gateway": format!("10.{third}.0.1"), "resolvers": ["10.0.0.2"],
        "routes": {"10.99.0.0/16": format!("10.{third}.0.254")}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_manage_every_accounts_fabric() {
    let (cloud, _seed, _alice, _bob, alice, bob) = world(0, Options::new(Backend::Sqlite)).await;
    let c = &cloud.client;

    let v = c.post(&format!("/fabrics/{alice}/vlans"), &json!({"vlan_id": 5, "name": "five", "description": "d"})).await.unwrap();
    assert_eq!((v["vlan_id"].as_u64(), v["name"].as_str(), v["owner_uuid"].as_str()), (Some(5), Some("five"), Some(alice.as_str())), "{v}");
    let vni = v["vnet_id"].as_u64().unwrap();
    assert!((1..1 << 24).contains(&vni), "{v}");
    // Errors as NAPI gives them.
    let e = api_err(c.post(&format!("/fabrics/{alice}/vlans"), &json!({"vlan_id": 5, "name": "again"})).await, 422, "InUse");
    assert_eq!(e["message"], "VLAN ID is already in use", "{e}");
    for bad in [4096, 4095, 1] {
        let e = api_err(c.post(&format!("/fabrics/{alice}/vlans"), &json!({"vlan_id": bad, "name": "x"})).await, 422, "InvalidParameters");
        assert_eq!((e["errors"][0]["field"].as_str(), e["errors"][0]["message"].as_str()), (Some("vlan_id"), Some(VLAN_MSG)), "{e}");
    }
    api_err(c.get(&format!("/fabrics/{alice}/vlans/77")).await, 404, "ResourceNotFound");
    // Another account's VLAN 5 is its own, on another segment.
    let bv = c.post(&format!("/fabrics/{bob}/vlans"), &json!({"vlan_id": 5, "name": "five"})).await.unwrap();
    assert_ne!(bv["vnet_id"], v["vnet_id"], "every VLAN has its own VXLAN segment");

    // Networks: MTU from the underlay tag, NAPI's fabric rendering.
    let n = c.post(&format!("/fabrics/{alice}/vlans/5/networks"), &net_body("front", 50)).await.unwrap();
    assert_eq!(n["fabric"], true);
    assert_eq!(n["mtu"], 1450, "external's 1500 minus the VXLAN overhead: {n}");
    assert_eq!(n["nic_tag"], format!("sdc_overlay/{vni}"));
    assert_eq!(
        (n["vnet_id"].as_u64(), n["internet_nat"].as_bool(), n["gateway_provisioned"].as_bool()),
        (Some(vni), Some(true), Some(false))
    );
    assert_eq!((n["vlan_id"].as_u64(), n["owner_uuids"].clone()), (Some(5), json!([alice])));
    let nid = n["uuid"].as_str().unwrap().to_string();
    // The same subnet and name in another account is fine.
    c.post(&format!("/fabrics/{bob}/vlans/5/networks"), &net_body("front", 50)).await.unwrap();
    // Within one account: overlap (on any of its VLANs), names, private ranges, ranges.
    c.post(&format!("/fabrics/{alice}/vlans"), &json!({"vlan_id": 6, "name": "six"})).await.unwrap();
    let mut overlap = net_body("back", 50);
    overlap["subnet"] = json!("10.50.0.128/25");
    overlap["provision_start_ip"] = json!("10.50.0.130");
    overlap["provision_end_ip"] = json!("10.50.0.140");
    overlap["gateway"] = json!("10.50.0.129");
    let e = api_err(c.post(&format!("/fabrics/{alice}/vlans/6/networks"), &overlap).await, 422, "InvalidParameters");
    assert_eq!(
        (e["errors"][0]["field"].as_str(), e["errors"][0]["message"].as_str()),
        (Some("subnet"), Some("subnet overlaps with another network"))
    );
    let e = api_err(c.post(&format!("/fabrics/{alice}/vlans/6/networks"), &net_body("front", 51)).await, 422, "InvalidParameters");
    assert_eq!(e["errors"][0]["field"], "name", "{e}");
    let mut public = net_body("pub", 0);
    public["subnet"] = json!("8.8.8.0/24");
    public["provision_start_ip"] = json!("8.8.8.10");
    public["provision_end_ip"] = json!("8.8.8.20");
    public["gateway"] = json!("8.8.8.1");
    let e = api_err(c.post(&format!("/fabrics/{alice}/vlans/6/networks"), &public).await, 422, "InvalidParameters");
    assert_eq!(e["errors"][0]["message"], "subnet must be within private ranges");
    let mut outside = net_body("out", 52);
    outside["gateway"] = json!("10.53.0.1");
    let e = api_err(c.post(&format!("/fabrics/{alice}/vlans/6/networks"), &outside).await, 422, "InvalidParameters");
    assert_eq!(e["errors"][0]["field"], "gateway", "{e}");
    api_err(c.post(&format!("/fabrics/{alice}/vlans/9/networks"), &net_body("nine", 59)).await, 404, "ResourceNotFound");
    // Plain NAPI networks cannot be put on the overlay.
    let e = api_err(
        c.post(
            "/networks",
            &json!({"name": "sneaky", "nic_tag": "sdc_overlay", "vlan_id": 5, "subnet": "10.60.0.0/24",
            "provision_start_ip": "10.60.0.5", "provision_end_ip": "10.60.0.9"}),
        )
        .await,
        422,
        "InvalidParameters",
    );
    assert!(e["errors"][0]["message"].as_str().unwrap().contains("/fabrics/"), "{e}");

    // The generic network list shows fabric networks, filtered.
    let mine = c.get(&format!("/networks?fabric=true&owner_uuid={alice}")).await.unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(c.get("/networks?fabric=true").await.unwrap().as_array().unwrap().len(), 2);
    let plain = c.get("/networks?fabric=false").await.unwrap();
    assert!(plain.as_array().unwrap().iter().all(|n| n["fabric"] == false), "{plain}");
    assert_eq!(c.get(&format!("/networks/{nid}")).await.unwrap()["vnet_id"].as_u64(), Some(vni));

    // A VLAN with networks stays.
    let e = api_err(c.delete(&format!("/fabrics/{alice}/vlans/5")).await, 422, "InUse");
    assert_eq!(e["message"], "VLAN must have no networks");
    assert_eq!(e["errors"][0]["message"], format!("In use by network \"{nid}\""));

    // nereid admin fabric: every account's VLANs, one account's, JSON.
    let out = nereid_async(&cloud, &["admin", "fabric", "vlan", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("VLAN_ID") && text.contains(&alice) && text.contains(&bob) && text.contains("six"), "{text}");
    let out = nereid_async(&cloud, &["admin", "--json", "fabric", "vlan", "list", "--owner", "alice"]).await;
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{} {}", stdout(&out), stderr(&out)));
    assert_eq!(list.as_array().unwrap().iter().map(|v| v["vlan_id"].as_u64().unwrap()).collect::<Vec<_>>(), [5, 6]);
    let out = nereid_async(&cloud, &["admin", "fabric", "vlan", "update", "--owner", "alice", "6", "name=renamed"]).await;
    assert!(out.status.success() && stdout(&out).contains("renamed"), "{} {}", stdout(&out), stderr(&out));
    let out = nereid_async(&cloud, &["admin", "fabric", "vlan", "create", "--owner", "bob", "vlan_id=4096", "name=x"]).await;
    assert!(!out.status.success() && stderr(&out).contains(VLAN_MSG), "{}", stderr(&out));
    let out = nereid_async(&cloud, &["admin", "fabric", "network", "list", "--owner", "alice"]).await;
    assert!(out.status.success() && stdout(&out).contains("front") && stdout(&out).contains("10.50.0.0/24"), "{}", stdout(&out));
    let out = nereid_async(
        &cloud,
        &[
            "admin",
            "fabric",
            "network",
            "create",
            "--owner",
            "alice",
            "--vlan",
            "6",
            "name=db",
            "subnet=172.16.3.0/24",
            "provision_start_ip=172.16.3.5",
            "provision_end_ip=172.16.3.9",
            "internet_nat=false",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = nereid_async(&cloud, &["admin", "--json", "fabric", "network", "list", "--owner", "alice", "--vlan", "6"]).await;
    let db: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((db[0]["name"].as_str(), db[0]["internet_nat"].as_bool()), (Some("db"), Some(false)), "{db}");
    let db_id = db[0]["uuid"].as_str().unwrap().to_string();
    let out = nereid_async(&cloud, &["admin", "fabric", "network", "update", &db_id, "description=database"]).await;
    assert!(out.status.success() && stdout(&out).contains("database"), "{}", stderr(&out));
    let out = nereid_async(&cloud, &["admin", "fabric", "network", "delete", &db_id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = nereid_async(&cloud, &["admin", "fabric", "vlan", "delete", "--owner", "alice", "6"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // Updates through the API; subnet and gateway stay.
    let u = c.put(&format!("/fabrics/{alice}/vlans/5/networks/{nid}"), &json!({"name": "front2", "internet_nat": false})).await.unwrap();
    assert_eq!((u["name"].as_str(), u["internet_nat"].as_bool()), (Some("front2"), Some(false)));
    api_err(c.put(&format!("/fabrics/{alice}/vlans/5/networks/{nid}"), &json!({"gateway": "10.50.0.2"})).await, 422, "InvalidParameters");
    // Another account's path does not find it.
    api_err(c.get(&format!("/fabrics/{bob}/vlans/5/networks/{nid}")).await, 404, "ResourceNotFound");
    c.delete(&format!("/fabrics/{alice}/vlans/5/networks/{nid}")).await.unwrap();
    c.delete(&format!("/fabrics/{alice}/vlans/5")).await.unwrap();
    api_err(c.get(&format!("/fabrics/{alice}/vlans/5")).await, 404, "ResourceNotFound");
    // The VNI is free again, and nothing of alice's fabric is left.
    assert!(c.get(&format!("/fabrics/{alice}/vlans")).await.unwrap().as_array().unwrap().is_empty());
    assert!(c.get(&format!("/networks?fabric=true&owner_uuid={alice}")).await.unwrap().as_array().unwrap().is_empty());
}

async fn wait_state(t: &Tenant, id: &str, state: &str) -> Value {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = t.get(&format!("/my/machines/{id}")).await.unwrap();
        if m.body["state"] == state || (state == "deleted" && m.status == 410) {
            return m.body;
        }
        assert!(std::time::Instant::now() < end, "machine {id} never became {state}: {}", m.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn tenants_see_only_their_own_fabric(backend: Backend) {
    let (cloud, seed, alice, bob, _a, _b) = world(1, Options::new(backend)).await;
    // CloudAPI's own checks, then NAPI's, in CloudAPI's words.
    let e = alice.post("/my/fabrics/default/vlans", &json!({"vlan_id": 4096, "name": "x"})).await.unwrap();
    assert_eq!((e.status, e.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", e.text);
    assert_eq!(e.body["message"], "property \"vlan_id\": must have a maximum value of 4095");
    let e = alice.post("/my/fabrics/default/vlans", &json!({"vlan_id": 4095, "name": "x"})).await.unwrap();
    assert_eq!(e.body["message"], format!("property \"vlan_id\": {VLAN_MSG}"), "{}", e.text);
    let v = alice.post("/my/fabrics/default/vlans", &json!({"vlan_id": 10, "name": "ten"})).await.unwrap();
    assert_eq!(v.status, 201, "{}", v.text);
    assert_eq!(v.body, json!({"vlan_id": 10, "name": "ten"}), "no VNI or owner for tenants");
    let e = alice.post("/my/fabrics/default/vlans", &json!({"vlan_id": 10, "name": "again"})).await.unwrap();
    assert_eq!((e.status, e.body["message"].as_str()), (409, Some("property \"vlan_id\": VLAN ID is already in use")), "{}", e.text);
    // Update by POST (the CLI) and by PUT.
    let u = alice.post("/my/fabrics/default/vlans/10", &json!({"name": "ten-b", "description": "tenth"})).await.unwrap();
    assert_eq!((u.status, u.body["name"].as_str()), (202, Some("ten-b")), "{}", u.text);
    let u = alice
        .send("PUT", "/my/fabrics/default/vlans/10", Some(&json!({"name": "ten"})), nereid_testkit::cloudapi::Signing::Good)
        .await
        .unwrap();
    assert_eq!((u.status, u.body["description"].as_str()), (202, Some("tenth")), "{}", u.text);
    let l = alice.get("/my/fabrics/default/vlans").await.unwrap();
    assert_eq!(l.body, json!([{"vlan_id": 10, "name": "ten", "description": "tenth"}]));
    let nf = alice.get("/my/fabrics/default/vlans/99").await.unwrap();
    assert_eq!((nf.status, nf.body["code"].as_str()), (404, Some("ResourceNotFound")));

    // A network on it, as the CLI sends it (vlan_id repeated, empty resolvers and routes).
    let mut body = net_body("web", 40);
    body["vlan_id"] = json!(10);
    let n = alice.post("/my/fabrics/default/vlans/10/networks?vlan_id=10", &body).await.unwrap();
    assert_eq!(n.status, 201, "{}", n.text);
    let nid = n.body["id"].as_str().unwrap().to_string();
    for (k, want) in [
        ("fabric", json!(true)),
        ("public", json!(false)),
        ("vlan_id", json!(10)),
        ("internet_nat", json!(true)),
        ("subnet", json!("10.40.0.0/24")),
        ("gateway", json!("10.40.0.1")),
        ("provision_start_ip", json!("10.40.0.10")),
        ("provision_end_ip", json!("10.40.0.250")),
        ("resolvers", json!(["10.0.0.2"])),
        ("routes", json!({"10.99.0.0/16": "10.40.0.254"})),
    ] {
        assert_eq!(n.body[k], want, "{k}: {}", n.text);
    }
    let listed = alice.get("/my/fabrics/default/vlans/10/networks?vlan_id=10").await.unwrap();
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "{}", listed.text);
    assert_eq!(alice.get(&format!("/my/fabrics/default/vlans/10/networks/{nid}")).await.unwrap().body["name"], "web");
    let mut overlap = net_body("web2", 40);
    overlap["name"] = json!("web2");
    let e = alice.post("/my/fabrics/default/vlans/10/networks", &overlap).await.unwrap();
    assert_eq!(
        (e.status, e.body["message"].as_str()),
        (409, Some("property \"subnet\": subnet overlaps with another network")),
        "{}",
        e.text
    );

    // bob: the same VLAN id and subnet are his own; neither sees the other's.
    assert_eq!(bob.get("/my/fabrics/default/vlans/10").await.unwrap().status, 404);
    assert_eq!(bob.get(&format!("/my/networks/{nid}")).await.unwrap().status, 404);
    assert_eq!(
        bob.send("DELETE", &format!("/my/fabrics/default/vlans/10/networks/{nid}"), None, nereid_testkit::cloudapi::Signing::Good)
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(bob.post("/my/fabrics/default/vlans", &json!({"vlan_id": 10, "name": "bobs"})).await.unwrap().status, 201);
    let bn = bob.post("/my/fabrics/default/vlans/10/networks", &net_body("web", 40)).await.unwrap();
    assert_eq!(bn.status, 201, "{}", bn.text);
    let bnid = bn.body["id"].as_str().unwrap().to_string();
    let alice_nets = alice.get("/my/networks").await.unwrap().body;
    let ids: Vec<&str> = alice_nets.as_array().unwrap().iter().filter(|n| n["fabric"] == true).map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [nid.as_str()], "{alice_nets}");
    let bob_nets = bob.get("/my/networks").await.unwrap().body;
    let ids: Vec<&str> = bob_nets.as_array().unwrap().iter().filter(|n| n["fabric"] == true).map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [bnid.as_str()], "{bob_nets}");
    let only = alice.get("/my/networks?fabric=true").await.unwrap().body;
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    let got = alice.get(&format!("/my/networks/{nid}")).await.unwrap().body;
    assert_eq!((got["fabric"].as_bool(), got["vlan_id"].as_u64()), (Some(true), Some(10)), "{got}");
    // bob cannot provision on alice's network.
    let m = bob.post("/my/machines", &json!({"image": seed.image, "package": "sample", "networks": [nid]})).await.unwrap();
    assert!(m.status >= 400, "{}", m.text);

    // An instance on the fabric network gets an address of it.
    let m = alice.post("/my/machines", &json!({"image": seed.image, "package": "sample", "name": "f1", "networks": [nid]})).await.unwrap();
    assert_eq!(m.status, 201, "{}", m.text);
    let id = m.body["id"].as_str().unwrap().to_string();
    let running = wait_state(&alice, &id, "running").await;
    let ip = running["ips"][0].as_str().unwrap();
    assert!(ip.starts_with("10.40.0."), "{running}");
    // NAPI shows the NIC on the overlay segment, with the fabric MTU.
    let vnet = cloud.client.get(&format!("/networks/{nid}")).await.unwrap()["vnet_id"].as_u64().unwrap();
    let nics = cloud.client.get(&format!("/nics?belongs_to_uuid={id}")).await.unwrap();
    assert_eq!(
        (nics[0]["nic_tag"].clone(), nics[0]["mtu"].clone(), nics[0]["fabric"].clone()),
        (json!(format!("sdc_overlay/{vnet}")), json!(1450), json!(true)),
        "{nics}"
    );
    // Deleting the network in use names the NIC.
    let e = alice
        .send("DELETE", &format!("/my/fabrics/default/vlans/10/networks/{nid}"), None, nereid_testkit::cloudapi::Signing::Good)
        .await
        .unwrap();
    assert_eq!((e.status, e.body["code"].as_str()), (409, Some("InvalidArgument")), "{}", e.text);
    assert!(e.body["message"].as_str().unwrap().starts_with("In use by nic \""), "{}", e.text);
    let e = alice.send("DELETE", "/my/fabrics/default/vlans/10", None, nereid_testkit::cloudapi::Signing::Good).await.unwrap();
    assert_eq!(e.body["message"], format!("In use by network \"{nid}\""), "{}", e.text);

    let d = alice.send("DELETE", &format!("/my/machines/{id}"), None, nereid_testkit::cloudapi::Signing::Good).await.unwrap();
    assert!(d.status < 300, "{}", d.text);
    wait_state(&alice, &id, "deleted").await;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let d = alice
            .send("DELETE", &format!("/my/fabrics/default/vlans/10/networks/{nid}"), None, nereid_testkit::cloudapi::Signing::Good)
            .await
            .unwrap();
        if d.status == 204 {
            break;
        }
        assert!(std::time::Instant::now() < end, "the NIC never went: {}", d.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = alice.send("DELETE", "/my/fabrics/default/vlans/10", None, nereid_testkit::cloudapi::Signing::Good).await.unwrap();
    assert_eq!(d.status, 204, "{}", d.text);
    assert_eq!(alice.get("/my/fabrics/default/vlans").await.unwrap().body, json!([]));
    // bob's twin is untouched.
    assert_eq!(bob.get(&format!("/my/fabrics/default/vlans/10/networks/{bnid}")).await.unwrap().status, 200);
}

both_backends!(tenants_see_only_their_own_fabric);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_accounts_get_a_default_fabric_and_placement_needs_the_underlay() {
    let mut opts = Options::new(Backend::Sqlite);
    opts.sim_servers = 1;
    opts.app.fabric.default_for_new_accounts = true;
    let cloud = Cloud::start_with(opts.cloudapi_http()).await.unwrap();
    let seed = cloud.seed().await.unwrap();
    let c = &cloud.client;
    // Without the underlay nic tag the default fabric cannot be made: the account is not
    // created, and the answer says why.
    let r = c.post("/accounts", &json!({"login": "carol", "email": "carol@example.com"})).await;
    let e = api_err(r, 501, "NotImplemented");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("carol was not created") && msg.contains("sdc_underlay does not exist"), "{e}");
    api_err(c.get("/accounts/carol").await, 404, "ResourceNotFound");

    c.post("/nic_tags", &json!({"name": "sdc_underlay", "mtu": 9000})).await.unwrap();
    let key = Key::from_seed(7);
    let a = c.post("/accounts", &json!({"login": "carol", "email": "carol@example.com", "keys": [{"key": key.openssh()}]})).await.unwrap();
    let carol = a["uuid"].as_str().unwrap();
    let vlans = c.get(&format!("/fabrics/{carol}/vlans")).await.unwrap();
    assert_eq!((vlans[0]["vlan_id"].as_u64(), vlans[0]["name"].as_str()), (Some(2), Some("default")), "{vlans}");
    let nets = c.get(&format!("/fabrics/{carol}/vlans/2/networks")).await.unwrap();
    let n = &nets[0];
    assert_eq!(
        (n["name"].as_str(), n["subnet"].as_str(), n["gateway"].as_str(), n["provision_start_ip"].as_str(), n["provision_end_ip"].as_str()),
        (Some("My-Fabric-Network"), Some("192.168.128.0/22"), Some("192.168.128.1"), Some("192.168.128.5"), Some("192.168.131.250")),
        "{n}"
    );
    assert_eq!((n["mtu"].as_u64(), n["internet_nat"].as_bool()), (Some(8950), Some(true)), "underlay 9000 → fabric 8950");
    // It is the account's default network, which CloudAPI will not delete.
    assert_eq!(c.get("/accounts/carol").await.unwrap()["default_network"], n["uuid"]);
    let tenant = Tenant::new(&cloud.headnode.cloudapi.as_ref().unwrap().url, "carol", key);
    let path = format!("/my/fabrics/default/vlans/2/networks/{}", n["uuid"].as_str().unwrap());
    let e = tenant.send("DELETE", &path, None, nereid_testkit::cloudapi::Signing::Good).await.unwrap();
    assert_eq!((e.status, e.body["message"].as_str()), (409, Some("cannot delete default network")), "{}", e.text);
    let mine = tenant.get("/my/networks").await.unwrap().body;
    assert!(mine.as_array().unwrap().iter().any(|x| x["name"] == "My-Fabric-Network" && x["fabric"] == true), "{mine}");
    // A second account gets its own default fabric (same names and subnet, another segment).
    let d = c.post("/accounts", &json!({"login": "dave", "email": "dave@example.com"})).await.unwrap();
    let dv = c.get(&format!("/fabrics/{}/vlans", d["uuid"].as_str().unwrap())).await.unwrap();
    assert_ne!(dv[0]["vnet_id"], vlans[0]["vnet_id"]);

    // The simulated server has no sdc_underlay link: placement on the fabric network is
    // refused, and the operator is told which underlay is missing.
    let body = json!({"owner_uuid": carol, "brand": "bhyve", "billing_id": seed.package, "image_uuid": seed.image,
        "networks": [n["uuid"]], "alias": "f"});
    let e = api_err(cloud.create_vm(&body).await.map(|_| Value::Null), 409, "NoAllocatableServersError");
    assert!(e.to_string().contains("has no underlay nic tag sdc_underlay"), "{e}");
}
