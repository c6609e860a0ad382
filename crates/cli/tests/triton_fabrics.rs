//! The real `triton` CLI (npm `triton@7.17.0`) on fabrics: `vlan create/list/get/delete`, `network create` on a VLAN, `network list` showing it as a fabric network,
//! two instances on it placed on different servers (`--affinity`), and Triton's errors
//! and exit statuses for a VLAN id of 4096, an overlapping subnet and deleting a network
//! in use. The data plane (VXLAN between the servers) is tested elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nereid_testkit::Options;
use nereid_testkit::triton::KeyType;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vlans_fabric_networks_and_instances_on_them() {
    let mut opts = Options { sim_servers: 2, ..Options::new(Backend::Sqlite) };
    opts.app.fabric.underlay_tag = "external".into();
    let cloud = Cloud::start_with(opts.cloudapi_http()).await.unwrap();
    cloud.seed().await.unwrap();
    let (_tenant, t) = cloud.triton_user("alice", KeyType::Ed25519).await.unwrap();
    let t = &t;

    // VLANs.
    let out = t.ok_async(&["vlan", "create", "-n", "dmz", "-D", "Demilitarized zone", "73"]).await;
    assert_eq!(out.trim(), "Created vlan dmz (73)");
    let (code, err) = t.fail_async(&["vlan", "create", "-n", "big", "4096"]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("triton vlan create: error (InvalidArgument): property \"vlan_id\": must have a maximum value of 4095"), "{err}");
    let list = t.ok_async(&["vlan", "list"]).await;
    assert!(list.contains("VLAN_ID") && list.contains("73") && list.contains("dmz"), "{list}");
    let v = t.json_async(&["vlan", "get", "73"]).await;
    assert_eq!(v, json!({"vlan_id": 73, "name": "dmz", "description": "Demilitarized zone"}));
    // `triton vlan update` of 7.17.0 dies before sending anything ("TypeError:
    // tritonapi.updateFabricVlan is not a function"); the POST it would send is tested with
    // the signed client in fabrics.rs.
    let (code, err) = t.fail_async(&["vlan", "get", "99"]).await;
    assert_eq!(code, Some(3), "{err}");

    // A fabric network on it.
    let out = t
        .ok_async(&[
            "network",
            "create",
            "-n",
            "fab",
            "-s",
            "192.168.77.0/24",
            "-S",
            "192.168.77.10",
            "-E",
            "192.168.77.200",
            "-g",
            "192.168.77.1",
            "-r",
            "8.8.8.8",
            "73",
        ])
        .await;
    assert!(out.starts_with("Created network fab ("), "{out}");
    let (code, err) = t
        .fail_async(&[
            "network",
            "create",
            "-n",
            "fab2",
            "-s",
            "192.168.77.128/25",
            "-S",
            "192.168.77.130",
            "-E",
            "192.168.77.140",
            "--no-nat",
            "73",
        ])
        .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("error (InvalidArgument): property \"subnet\": subnet overlaps with another network"), "{err}");
    let nets = t.ok_async(&["network", "list"]).await;
    let row = nets.lines().find(|l| l.contains("fab")).unwrap_or_else(|| panic!("{nets}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..], ["fab", "192.168.77.0/24", "192.168.77.1", "true", "73", "false"], "{nets}");
    let vnets = t.ok_async(&["vlan", "networks", "73"]).await;
    assert!(vnets.contains("fab"), "{vnets}");

    // Two instances on it, kept apart.
    t.ok_async(&["instance", "create", "-w", "-N", "fab", "--name", "f1", "tiny", "sample"]).await;
    t.ok_async(&["instance", "create", "-w", "-N", "fab", "--name", "f2", "--affinity", "instance!=f1", "tiny", "sample"]).await;
    let f1 = t.json_async(&["instance", "get", "f1"]).await;
    let f2 = t.json_async(&["instance", "get", "f2"]).await;
    for m in [&f1, &f2] {
        assert_eq!(m["state"], "running", "{m}");
        assert!(m["primaryIp"].as_str().unwrap().starts_with("192.168.77."), "{m}");
    }
    let mut servers = Vec::new();
    for m in [&f1, &f2] {
        let vm = cloud.client.get(&format!("/vms/{}", m["id"].as_str().unwrap())).await.unwrap();
        servers.push(vm["server_uuid"].as_str().unwrap().to_string());
    }
    assert_ne!(servers[0], servers[1], "the two instances landed on one server");

    // The network in use cannot go.
    let (code, err) = t.fail_async(&["network", "delete", "fab"]).await;
    assert_eq!(code, Some(1), "{err}");
    // The CLI deletes networks in parallel and reports a MultiError (no code in the line).
    assert!(err.contains("triton network delete: error: first of 1 error: In use by nic \"90:b8:d0:"), "{err}");

    t.ok_async(&["instance", "delete", "-f", "-w", "f1", "f2"]).await;
    let out = t.ok_async(&["network", "delete", "fab"]).await;
    assert!(out.contains("Deleted network fab"), "{out}");
    let out = t.ok_async(&["vlan", "delete", "73"]).await;
    assert!(out.contains("Deleted vlan 73"), "{out}");
    let list = t.ok_async(&["vlan", "list", "-j"]).await;
    assert!(list.trim().is_empty(), "{list}");
}
