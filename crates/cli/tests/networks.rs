//! NAPI over HTTP: nic tags, networks, pools, NICs and IP allocation — on both stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{Value, json};

both_backends!(
    concurrent_nics_get_distinct_ips_until_the_pool_is_exhausted,
    nic_lifecycle,
    pools_fall_through_full_networks,
    guards_and_validation
);

const OWNER: &str = "930896af-bf8c-48d4-885c-6573a94b1853";

async fn setup_net(c: &nereid_client::Client, name: &str, subnet: &str, start: &str, end: &str, gateway: Option<&str>) -> String {
    let _ = c.post("/nic_tags", &json!({"name": "external"})).await;
    let mut body = json!({"name": name, "nic_tag": "external", "vlan_id": 0, "subnet": subnet, "provision_start_ip": start, "provision_end_ip": end, "resolvers": ["8.8.8.8"]});
    if let Some(g) = gateway {
        body["gateway"] = json!(g);
    }
    c.post("/networks", &body).await.unwrap()["uuid"].as_str().unwrap().to_string()
}

fn nic_body(i: usize) -> Value {
    json!({"owner_uuid": OWNER, "belongs_to_uuid": format!("00000000-0000-4000-8000-{i:012}"), "belongs_to_type": "zone"})
}

/// 200 concurrent creations, then the rest of a 254-address range, then a clear SubnetFull.
async fn exhaust(clouds: &[&Cloud], net: &str) {
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = clouds[i % clouds.len()].client.clone();
        let net = net.to_string();
        tasks.push(tokio::spawn(async move { c.post(&format!("/networks/{net}/nics"), &nic_body(i)).await }));
    }
    let mut ips = HashSet::new();
    let mut macs = HashSet::new();
    for t in tasks {
        let nic = t.await.unwrap().unwrap();
        assert!(ips.insert(nic["ip"].as_str().unwrap().to_string()), "duplicate IP {}", nic["ip"]);
        assert!(macs.insert(nic["mac"].as_str().unwrap().to_string()));
    }
    assert_eq!(ips.len(), 200);
    for i in 200..254 {
        let nic = clouds[0].client.post(&format!("/networks/{net}/nics"), &nic_body(i)).await.unwrap();
        assert!(ips.insert(nic["ip"].as_str().unwrap().to_string()));
    }
    let want: HashSet<String> = (1..=254).map(|i| format!("10.20.0.{i}")).collect();
    assert_eq!(ips, want, "every address of the range, each once");
    let body = api_err(clouds[0].client.post(&format!("/networks/{net}/nics"), &nic_body(999)).await, 507, "SubnetFull");
    assert_eq!(body["network_uuid"], net);
    assert!(body["message"].as_str().unwrap().contains("10.20.0.1-10.20.0.254"), "{body}");
    let listed = clouds[0].client.get(&format!("/nics?network_uuid={net}")).await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 254);
}

async fn concurrent_nics_get_distinct_ips_until_the_pool_is_exhausted(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let net = setup_net(&cloud.client, "big", "10.20.0.0/24", "10.20.0.1", "10.20.0.254", None).await;
    if b == Backend::Postgres {
        // Two headnodes on one database race for the same addresses.
        let second = Cloud::start_on(&cloud.store_url).await.unwrap();
        exhaust(&[&cloud, &second], &net).await;
    } else {
        exhaust(&[&cloud], &net).await;
    }
}

async fn nic_lifecycle(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let c = &cloud.client;
    let net = setup_net(c, "ext", "10.30.0.0/24", "10.30.0.10", "10.30.0.20", Some("10.30.0.1")).await;
    // The gateway is reserved, never allocated; allocation starts at the range.
    let gw = c.get(&format!("/networks/{net}/ips/10.30.0.1")).await.unwrap();
    assert_eq!((gw["reserved"].clone(), gw["free"].clone()), (json!(true), json!(false)));
    let a = c
        .post(
            &format!("/networks/{net}/nics"),
            &json!({"owner_uuid": OWNER, "belongs_to_uuid": OWNER, "belongs_to_type": "zone", "primary": true}),
        )
        .await
        .unwrap();
    assert_eq!(a["ip"], "10.30.0.10");
    assert_eq!(
        (a["gateway"].as_str(), a["netmask"].as_str(), a["nic_tag"].as_str()),
        (Some("10.30.0.1"), Some("255.255.255.0"), Some("external"))
    );
    assert_eq!(a["resolvers"], json!(["8.8.8.8"]));
    // A specific address; taking it twice names the holder.
    let bmac = "90:b8:d0:00:00:0b";
    let bnic = c.post("/nics", &json!({"mac": bmac, "network_uuid": net, "ip": "10.30.0.15", "owner_uuid": OWNER, "belongs_to_uuid": OWNER, "belongs_to_type": "zone", "primary": true})).await.unwrap();
    assert_eq!(bnic["ip"], "10.30.0.15");
    let body = api_err(
        c.post(
            "/nics",
            &json!({"network_uuid": net, "ip": "10.30.0.15", "owner_uuid": OWNER, "belongs_to_uuid": OWNER, "belongs_to_type": "zone"}),
        )
        .await,
        422,
        "InvalidParameters",
    );
    assert_eq!(body["errors"][0]["code"], "UsedBy");
    // The same MAC twice is a duplicate.
    api_err(
        c.post("/nics", &json!({"mac": bmac, "owner_uuid": OWNER, "belongs_to_uuid": OWNER, "belongs_to_type": "zone"})).await,
        422,
        "InvalidParameters",
    );
    // Primary moved to the newer NIC.
    let a_now = c.get(&format!("/nics/{}", a["mac"].as_str().unwrap())).await.unwrap();
    assert_eq!(a_now["primary"], false);
    // MACs work with and without colons.
    assert_eq!(c.get("/nics/90b8d000000b").await.unwrap()["ip"], "10.30.0.15");
    // Fixing belongs_to_uuid on an orphan moves its IP record too.
    let vm = "5d2c0c59-4a70-4c4b-9ab3-51b9f8c8d9aa";
    let fixed = c.put("/nics/90b8d000000b", &json!({"belongs_to_uuid": vm})).await.unwrap();
    assert_eq!(fixed["belongs_to_uuid"], vm);
    assert_eq!(c.get(&format!("/networks/{net}/ips/10.30.0.15")).await.unwrap()["belongs_to_uuid"], vm);
    assert_eq!(c.get(&format!("/nics?belongs_to_uuid={vm}")).await.unwrap().as_array().unwrap().len(), 1);
    // Moving a NIC to another address frees the old one.
    let moved = c.put("/nics/90b8d000000b", &json!({"ip": "10.30.0.18"})).await.unwrap();
    assert_eq!(moved["ip"], "10.30.0.18");
    assert_eq!(c.get(&format!("/networks/{net}/ips/10.30.0.15")).await.unwrap()["free"], true);
    // A reserved address is skipped by allocation but can be asked for.
    c.put(&format!("/networks/{net}/ips/10.30.0.11"), &json!({"reserved": true, "owner_uuid": OWNER})).await.unwrap();
    let n = c.post(&format!("/networks/{net}/nics"), &nic_body(1)).await.unwrap();
    assert_eq!(n["ip"], "10.30.0.12");
    // An address held by a NIC cannot be freed behind its back.
    api_err(c.put(&format!("/networks/{net}/ips/10.30.0.12"), &json!({"free": true})).await, 422, "InUse");
    // Deleting a NIC frees its address.
    c.delete("/nics/90:b8:d0:00:00:0b").await.unwrap();
    api_err(c.get("/nics/90b8d000000b").await, 404, "ResourceNotFound");
    assert_eq!(c.get(&format!("/networks/{net}/ips/10.30.0.18")).await.unwrap()["free"], true);
    // Network delete is refused while NICs use it, and names them.
    let body = api_err(c.delete(&format!("/networks/{net}")).await, 422, "InUse");
    assert!(body["message"].as_str().unwrap().contains("nic"), "{body}");
}

async fn pools_fall_through_full_networks(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let c = &cloud.client;
    let small = setup_net(c, "small", "10.40.0.0/24", "10.40.0.10", "10.40.0.11", None).await;
    let other = setup_net(c, "other", "10.41.0.0/24", "10.41.0.10", "10.41.0.20", None).await;
    let pool = c.post("/network_pools", &json!({"name": "pool", "networks": [small, other]})).await.unwrap();
    let pid = pool["uuid"].as_str().unwrap();
    assert_eq!(pool["nic_tag"], "external");
    let ips: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(c.post(&format!("/networks/{pid}/nics"), &nic_body(i)).await.unwrap()["ip"].as_str().unwrap().to_string());
        }
        v
    };
    assert_eq!(ips, ["10.40.0.10", "10.40.0.11", "10.41.0.10"]);
    // Names are shared between networks and pools.
    api_err(c.post("/network_pools", &json!({"name": "small", "networks": [other]})).await, 422, "InvalidParameters");
    // A network in a pool cannot be deleted.
    let net3 = setup_net(c, "third", "10.42.0.0/24", "10.42.0.10", "10.42.0.10", None).await;
    c.put(&format!("/network_pools/{pid}"), &json!({"networks": [net3]})).await.unwrap();
    assert_eq!(api_err(c.delete(&format!("/networks/{net3}")).await, 422, "InUse")["errors"][0]["field"], "network_pool");
    c.delete(&format!("/network_pools/{pid}")).await.unwrap();
    c.delete(&format!("/networks/{net3}")).await.unwrap();
    // A full pool says so.
    let p2 = c.post("/network_pools", &json!({"name": "tiny", "networks": [small]})).await.unwrap();
    let body = api_err(c.post(&format!("/networks/{}/nics", p2["uuid"].as_str().unwrap()), &nic_body(9)).await, 422, "InvalidParameters");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("are full"));
}

async fn guards_and_validation(b: Backend) {
    let cloud = Cloud::start(b).await.unwrap();
    let c = &cloud.client;
    let net = setup_net(c, "ext", "10.50.0.0/24", "10.50.0.10", "10.50.0.20", Some("10.50.0.1")).await;
    // Overlapping subnets on one tag and VLAN are refused.
    let body = api_err(
        c.post("/networks", &json!({"name": "clash", "nic_tag": "external", "vlan_id": 0, "subnet": "10.50.0.0/16", "provision_start_ip": "10.50.1.1", "provision_end_ip": "10.50.1.9"})).await,
        422,
        "InvalidParameters",
    );
    assert_eq!(body["errors"][0]["code"], "UsedBy");
    // Unknown nic tag, range outside the subnet, duplicate name.
    let body = api_err(c.post("/networks", &json!({"name": "n2", "nic_tag": "nope", "vlan_id": 0, "subnet": "10.60.0.0/24", "provision_start_ip": "10.60.0.10", "provision_end_ip": "10.61.0.20"})).await, 422, "InvalidParameters");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("nic tag nope does not exist"));
    let body = api_err(c.post("/networks", &json!({"name": "n2", "nic_tag": "external", "vlan_id": 0, "subnet": "10.60.0.0/24", "provision_start_ip": "10.60.0.10", "provision_end_ip": "10.61.0.20"})).await, 422, "InvalidParameters");
    assert_eq!(body["errors"][0]["field"], "provision_end_ip");
    let body = api_err(c.post("/networks", &json!({"name": "ext", "nic_tag": "external", "vlan_id": 5, "subnet": "10.70.0.0/24", "provision_start_ip": "10.70.0.10", "provision_end_ip": "10.70.0.20"})).await, 422, "InvalidParameters");
    assert_eq!(body["errors"][0]["code"], "Duplicate");
    // Immutable network fields.
    api_err(c.put(&format!("/networks/{net}"), &json!({"subnet": "10.51.0.0/24"})).await, 422, "InvalidParameters");
    // Renames and gateway moves work.
    let u = c.put(&format!("/networks/{net}"), &json!({"name": "renamed", "gateway": "10.50.0.2"})).await.unwrap();
    assert_eq!(u["name"], "renamed");
    assert_eq!(c.get(&format!("/networks/{net}/ips/10.50.0.1")).await.unwrap()["free"], true);
    assert_eq!(c.get(&format!("/networks/{net}/ips/10.50.0.2")).await.unwrap()["reserved"], true);
    assert_eq!(c.get("/networks?name=renamed").await.unwrap().as_array().unwrap().len(), 1);
    // A nic tag in use can be neither deleted nor renamed.
    api_err(c.delete("/nic_tags/external").await, 422, "InUse");
    api_err(c.put("/nic_tags/external", &json!({"name": "ext2"})).await, 422, "InUse");
    // An owner-restricted network refuses other owners.
    let private = c.post("/networks", &json!({"name": "priv", "nic_tag": "external", "vlan_id": 9, "subnet": "10.80.0.0/24", "provision_start_ip": "10.80.0.10", "provision_end_ip": "10.80.0.20", "owner_uuids": ["11111111-1111-4111-8111-111111111111"]})).await.unwrap();
    let body =
        api_err(c.post(&format!("/networks/{}/nics", private["uuid"].as_str().unwrap()), &nic_body(1)).await, 422, "InvalidParameters");
    assert_eq!(body["errors"][0]["field"], "owner_uuid");
    // Deleting an unused network removes it and its gateway record.
    c.delete(&format!("/networks/{}", private["uuid"].as_str().unwrap())).await.unwrap();
    c.delete(&format!("/networks/{net}")).await.unwrap();
    c.delete("/nic_tags/external").await.unwrap();
    assert_eq!(c.get("/networks").await.unwrap(), json!([]));
}
