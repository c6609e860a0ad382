//! The agent's DHCP responder against a real DHCP client (busybox `udhcpc`), on a veth
//! pair in a network namespace the test makes: one end plays the VM's tap (where the
//! responder listens), the other the guest's NIC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use nereid_agent::net::dhcp::lease_for;
use nereid_agent::net::responder::{Counters, Responder};
use nereid_testkit::netns::NetNs;
use nereid_types::agent::Definition;
use serde_json::json;

const SCRIPT: &str = r#"#!/bin/sh
[ "$1" = bound ] && echo "ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu hostname=$hostname routes=$staticroutes lease=$lease serverid=$serverid"
exit 0
"#;

fn definition() -> Definition {
    serde_json::from_value(json!({
        "uuid": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10", "brand": "bhyve", "owner_uuid": uuid::Uuid::nil(), "hostname": "web-1",
        "ram": 1, "vcpus": 1, "disks": [],
        "nics": [{"mac": "90:b8:d0:11:22:33", "interface": "net0", "ip": "10.88.0.10", "netmask": "255.255.255.0",
            "gateway": "10.88.0.1", "vlan_id": 0, "nic_tag": "external", "mtu": 1400, "primary": true, "model": "virtio",
            "resolvers": ["10.88.0.1", "10.88.0.2"], "routes": {"10.99.0.0/16": "10.88.0.254"}}]}))
    .unwrap()
}

fn udhcpc(ns: &NetNs, iface: &str, script: &std::path::Path) -> std::process::Output {
    ns.cmd("busybox")
        .args(["udhcpc", "-i", iface, "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", script.to_str().unwrap()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_dhcp_client_gets_exactly_the_napi_lease_and_strangers_get_nothing() {
    let ns = Arc::new(NetNs::new("dhcp").unwrap());
    ns.sh("ip link add t0 type veth peer name g0; ip link set g0 address 90:b8:d0:11:22:33; \
         ip link add t1 type veth peer name g1; ip link set g1 address 02:00:00:00:00:99; \
         for i in t0 g0 t1 g1; do ip link set $i up; done")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let def = definition();
    let lease = lease_for(&def, &def.nics[0]).unwrap();
    let counters = Arc::new(Counters::default());
    // Both "taps" answer only the NIC's MAC: g1's client is a stranger to t1's responder.
    let (_r0, _r1) = ns
        .enter(|| {
            (Responder::start("t0", lease.clone(), counters.clone()).unwrap(), Responder::start("t1", lease, counters.clone()).unwrap())
        })
        .unwrap();
    let (n, s) = (ns.clone(), script.clone());
    let out = tokio::task::spawn_blocking(move || udhcpc(&n, "g0", &s)).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "udhcpc failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        text.trim(),
        "ip=10.88.0.10 mask=24 router=10.88.0.1 dns=10.88.0.1 10.88.0.2 mtu=1400 hostname=web-1 \
         routes=10.99.0.0/16 10.88.0.254 0.0.0.0/0 10.88.0.1 lease=3600 serverid=10.88.0.1"
    );
    let n = ns.clone();
    let stranger = tokio::task::spawn_blocking(move || udhcpc(&n, "g1", &script)).await.unwrap();
    assert!(!stranger.status.success(), "a MAC that is not the NIC's got a lease: {}", String::from_utf8_lossy(&stranger.stdout));
    let replies = counters.replies.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(replies, 2, "one OFFER and one ACK, nothing for the stranger");
}
