//! Benchmark: DHCP answers per second from one of the agent's responders (the per-tap
//! DHCP server), and the round-trip time of one answer. Numbers are printed, never
//! asserted.
//!
//! In a network namespace the benchmark makes: a veth pair, one end where the responder
//! listens (as on a VM's tap), the other playing the guest, which renews its lease (DHCP
//! REQUEST with its address) over a UDP socket, with 32 requests in flight.
//!
//! `cargo bench -p nereid-testkit --bench dhcp` (`NEREID_BENCH_REQUESTS` changes the count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use nereid_agent::net::dhcp::lease_for;
use nereid_agent::net::responder::{Counters, Responder};
use nereid_testkit::netns::NetNs;
use nereid_types::agent::Definition;
use serde_json::json;

fn request(xid: u32, ip: Ipv4Addr, mac: &[u8]) -> Vec<u8> {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, ip, z, z, z, mac);
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    m.to_vec().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: u32 = std::env::var("NEREID_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let ns = NetNs::new("dhcpbench").unwrap();
    ns.sh("ip link add t0 type veth peer name g0; ip link set g0 address 90:b8:d0:11:22:33; ip link set t0 up; ip link set g0 up; \
         ip addr add 10.88.0.10/24 dev g0; ip neigh replace 10.88.0.1 lladdr $(cat /sys/class/net/t0/address) dev g0")
        .unwrap();
    let def: Definition = serde_json::from_value(json!({
        "uuid": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10", "brand": "bhyve", "owner_uuid": uuid::Uuid::nil(), "hostname": "bench",
        "ram": 1, "vcpus": 1, "disks": [],
        "nics": [{"mac": "90:b8:d0:11:22:33", "interface": "net0", "ip": "10.88.0.10", "netmask": "255.255.255.0",
            "gateway": "10.88.0.1", "vlan_id": 0, "nic_tag": "external", "mtu": 1500, "primary": true, "model": "virtio",
            "resolvers": ["10.88.0.1"]}]}))
    .unwrap();
    let lease = lease_for(&def, &def.nics[0]).unwrap();
    let counters = Arc::new(Counters::default());
    let (_responder, sock) = ns
        .enter(|| {
            let r = Responder::start("t0", lease.clone(), counters.clone()).unwrap();
            let s = UdpSocket::bind("10.88.0.10:68").unwrap();
            (r, s)
        })
        .unwrap();
    sock.connect("10.88.0.1:67").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (ip, mac) = (lease.ip, lease.mac);
    let (rtts, elapsed, answered, lost) = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1500];
        // Round trips, one at a time.
        let mut rtts = Vec::new();
        for xid in 0..500u32 {
            let t = Instant::now();
            sock.send(&request(xid, ip, &mac)).unwrap();
            if sock.recv(&mut buf).is_ok() {
                rtts.push(t.elapsed());
            }
        }
        // Throughput, 32 in flight.
        let window = 32;
        let (mut sent, mut answered, mut lost) = (0u32, 0u32, 0u32);
        let start = Instant::now();
        while sent < window.min(total) {
            sock.send(&request(1000 + sent, ip, &mac)).unwrap();
            sent += 1;
        }
        while answered + lost < total {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let m = Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
                    assert_eq!((m.yiaddr(), m.opts().msg_type()), (ip, Some(MessageType::Ack)));
                    answered += 1;
                }
                Err(_) => lost += window.min(total - answered - lost),
            }
            if sent < total {
                sock.send(&request(1000 + sent, ip, &mac)).unwrap();
                sent += 1;
            }
        }
        (rtts, start.elapsed(), answered, lost)
    })
    .await
    .unwrap();
    let mut rtts = rtts;
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "dhcp round trip (REQUEST → ACK, one responder): p50 {:.0} µs, p99 {:.0} µs over {} requests",
        us(rtts[rtts.len() / 2]),
        us(rtts[rtts.len() * 99 / 100]),
        rtts.len()
    );
    println!(
        "dhcp answers per second from one responder: {:.0}/s ({answered} answered, {lost} lost, {:.2} s, 32 in flight)",
        f64::from(answered) / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
