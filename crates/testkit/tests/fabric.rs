//! The agent's fabric data plane without QEMU: each "compute node" is a network namespace
//! running `nereid-netnode` (the agent's `net::Net`, driven over stdin), joined to the
//! other by a veth pair as the underlay; each "VM" is a namespace whose NIC is a veth
//! whose node end is named (and plugged) like the VM's tap. Everything the test makes
//! lives in namespaces it creates and removes; nothing touches the host's interfaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use nereid_agent::net::tap_name;
use nereid_testkit::netns::NetNs;
use serde_json::{Value, json};
use uuid::Uuid;

/// A node: its namespace and its `nereid-netnode`.
struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    ns: NetNs,
}

impl Node {
    /// A node whose underlay (`sdc_underlay`) is `u0` with `addr`.
    fn start(what: &str) -> Node {
        let ns = NetNs::new(what).unwrap();
        let (child, stdin, stdout) = Node::spawn(&ns);
        Node { child, stdin, stdout, ns }
    }

    fn spawn(ns: &NetNs) -> (Child, ChildStdin, BufReader<ChildStdout>) {
        let mut child = ns
            .cmd(env!("CARGO_BIN_EXE_nereid-netnode"))
            .args(["--nic-tag", "sdc_underlay=u0", "--underlay", "sdc_underlay"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdin, stdout) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        (child, stdin, stdout)
    }

    /// The "agent" stops (its devices stay) and a new one starts in the same node.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        (self.child, self.stdin, self.stdout) = Node::spawn(&self.ns);
    }

    fn call(&mut self, verb: &str, arg: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{}", json!({ verb: arg })).and_then(|()| self.stdin.flush()).map_err(|e| format!("nereid-netnode: {e}"))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| format!("nereid-netnode: {e}"))?;
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("nereid-netnode said {line:?}: {e}"));
        match v.get("err") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
            None => Ok(v["ok"].clone()),
        }
    }

    fn ok(&mut self, verb: &str, arg: Value) -> Value {
        self.call(verb, arg).unwrap_or_else(|e| panic!("{verb} on {}: {e}", self.ns.name))
    }

    /// The node's interfaces of the fabric's kinds, and its nftables tables.
    fn leftovers(&mut self) -> (Vec<String>, String, Vec<String>) {
        let links: Vec<String> = self
            .ns
            .sh("ip -o link show | cut -d: -f2 | cut -d@ -f1")
            .unwrap()
            .split_whitespace()
            .filter(|l| ["nvx", "nfb", "ngb", "ngh", "nt"].iter().any(|p| l.starts_with(p)))
            .map(str::to_string)
            .collect();
        let tables = self.ns.sh("nft list tables").unwrap();
        let gateways: Vec<String> = serde_json::from_value(self.ok("gateways", Value::Null)).unwrap();
        (links, tables, gateways)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Gateway namespaces the node left (a failed test): their names go too.
        if let Ok(Value::Array(gws)) = self.call("gateways", Value::Null) {
            for g in gws.iter().filter_map(Value::as_str) {
                let _ = std::process::Command::new("ip").args(["netns", "del", g]).status();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two nodes joined by an underlay veth pair (192.168.77.1 and .2, MTU 1500).
fn two_nodes() -> (Node, Node) {
    let (a, b) = (Node::start("fab-a"), Node::start("fab-b"));
    a.ns.sh(&format!("ip link add u0 type veth peer name u0 netns {}", b.ns.name)).unwrap();
    a.ns.sh("ip addr add 192.168.77.1/24 dev u0; ip link set u0 up").unwrap();
    b.ns.sh("ip addr add 192.168.77.2/24 dev u0; ip link set u0 up").unwrap();
    (a, b)
}

/// A VM with one fabric NIC: its definition and the namespace playing it.
struct Guest {
    ns: NetNs,
    def: Value,
    vm: Uuid,
    mac: String,
}

/// Makes a guest on `node`: its NIC (`eth0`, MAC, `ip`/24, default route via .1) is a veth
/// whose node end is the VM's tap, then attaches it as the agent would at VM start.
fn guest(node: &mut Node, what: &str, vni: u32, ip: &str, nat: bool) -> Guest {
    let ns = NetNs::new(what).unwrap();
    let vm = Uuid::new_v4();
    let mac = format!("90:b8:d0:{:02x}:{:02x}:{:02x}", vni & 0xff, ip.split('.').next_back().unwrap().parse::<u8>().unwrap(), rand_byte());
    let tap = tap_name(vm, 0);
    node.ns.sh(&format!("ip link add {tap} type veth peer name eth0 netns {}", ns.name)).unwrap();
    ns.sh(&format!("ip link set eth0 address {mac} mtu 1450 up; ip addr add {ip}/24 dev eth0; ip route add default via 10.1.0.1")).unwrap();
    let def = json!({"uuid": vm, "brand": "bhyve", "owner_uuid": Uuid::nil(), "ram": 1, "vcpus": 1, "disks": [],
        "nics": [{"mac": mac, "interface": "net0", "ip": ip, "netmask": "255.255.255.0", "gateway": "10.1.0.1", "vlan_id": 5,
            "nic_tag": "sdc_overlay", "mtu": 1450, "primary": true, "model": "virtio", "vni": vni, "internet_nat": nat,
            "dhcp_server": false}]});
    node.ok("attach", def.clone());
    Guest { ns, def, vm, mac }
}

fn rand_byte() -> u8 {
    (Uuid::new_v4().as_u128() & 0xff) as u8
}

fn neighbour_mac(g: &Guest, ip: &str) -> String {
    g.ns.sh(&format!("ip neigh show {ip} dev eth0 | grep -o 'lladdr [0-9a-f:]*' | cut -d' ' -f2")).unwrap().trim().to_string()
}

#[test]
fn fabric_segments_reach_across_nodes_stay_apart_nat_out_and_leave_nothing_behind() {
    let (mut a, mut b) = two_nodes();
    // The outside world: reachable from node A only (its default route).
    let outside = NetNs::new("fab-out").unwrap();
    a.ns.sh(&format!("ip link add e0 type veth peer name e0 netns {}", outside.name)).unwrap();
    a.ns.sh("ip addr add 203.0.113.1/24 dev e0; ip link set e0 up; ip route add default via 203.0.113.2").unwrap();
    outside.sh("ip addr add 203.0.113.2/24 dev e0; ip link set e0 up").unwrap();

    // Segment 0x101 (internet_nat) on both nodes; segment 0x102 on B with the same subnet
    // and the very address of A's guest; segment 0x103 on A without internet_nat.
    let ga = guest(&mut a, "fab-ga", 0x101, "10.1.0.5", true);
    let gb = guest(&mut b, "fab-gb", 0x101, "10.1.0.6", true);
    let gb2 = guest(&mut b, "fab-gb2", 0x102, "10.1.0.5", false);
    let ga3 = guest(&mut a, "fab-ga3", 0x103, "10.1.0.9", false);
    a.ok("policy", json!({"digest": "a1", "overlays": {"257": ["192.168.77.2"], "259": []}}));
    b.ok("policy", json!({"digest": "b1", "overlays": {"257": ["192.168.77.1"], "258": []}}));

    let vx = a.ns.sh("ip -d -j link show nvx101").unwrap();
    let vx: Value = serde_json::from_str(&vx).unwrap();
    let info = &vx[0]["linkinfo"]["info_data"];
    assert_eq!((info["id"].as_u64(), info["port"].as_u64(), info["local"].as_str()), (Some(0x101), Some(4789), Some("192.168.77.1")));
    assert_eq!(vx[0]["mtu"].as_u64(), Some(1450));
    assert!(a.ns.sh("bridge fdb show dev nvx101").unwrap().contains("00:00:00:00:00:00 dst 192.168.77.2"));

    // Across the VXLAN, on the right segment: B's guest reaches A's, whose MAC answers.
    assert!(gb.ns.pings("10.1.0.5", 10), "the fabric does not carry 0x101 from B to A");
    assert_eq!(neighbour_mac(&gb, "10.1.0.5"), ga.mac, "10.1.0.5 answered from another segment");
    assert!(ga.ns.pings("10.1.0.6", 5));
    // TCP too (checksums offloaded through the encapsulation), with a reply bigger than a
    // ping's.
    listen(&ga, 8080);
    assert!(connects(&gb, "10.1.0.5:8080"), "TCP does not cross the fabric");
    // The same subnet on segment 0x102 sees nothing of 0x101.
    assert!(!gb2.ns.pings("10.1.0.6", 2), "segment 0x102 reached 0x101");

    // NAT: A's internet_nat guest reaches the outside through A's own gateway; the guest
    // of the segment without internet_nat does not (there is no gateway to answer).
    assert!(ga.ns.pings("203.0.113.2", 10), "the NAT gateway does not take A's guest outside");
    assert_eq!(neighbour_mac(&ga, "10.1.0.1"), "02:4e:47:00:01:01");
    assert!(!ga3.ns.pings("203.0.113.2", 2), "a segment without internet_nat reached the outside");
    // Each node's gateway answers its own VMs: B's guest gets B's gateway (B has no way
    // out, so it only answers the ping to itself), and A's never sees B's ARP for it.
    assert!(gb.ns.pings("10.1.0.1", 5));
    for node in [&a, &b] {
        let fdb = node.ns.sh("bridge fdb show br nfb101 | grep -i 02:4e:47:00:01:01 || true").unwrap();
        assert!(
            fdb.contains("dev ngb101") && !fdb.contains("dev nvx101"),
            "{}: the gateway MAC is learnt across the VXLAN:\n{fdb}",
            node.ns.name
        );
    }

    // The peers are exactly the policy's: a changed policy drops the stale one.
    a.ok("policy", json!({"digest": "a2", "overlays": {"257": ["192.168.77.9"]}}));
    let fdb = a.ns.sh("bridge fdb show dev nvx101 | grep 00:00:00:00:00:00").unwrap();
    assert!(fdb.contains("dst 192.168.77.9") && !fdb.contains("dst 192.168.77.2"), "{fdb}");

    // The underlay must carry the fabric MTU plus the VXLAN header: raised when asked.
    let problems = a.ok("mtus", json!({"sdc_overlay": 1500}));
    assert_eq!(problems, json!([]));
    assert_eq!(a.ns.sh("cat /sys/class/net/u0/mtu").unwrap().trim(), "1550");

    // VMs leave: the last NIC of a segment takes its devices and gateway with it.
    a.ok("detach", json!([ga3.vm, 1]));
    let (links, _, gws) = a.leftovers();
    assert!(!links.iter().any(|l| l.ends_with("103")), "{links:?}");
    assert_eq!(gws.len(), 1, "only segment 0x101's gateway remains: {gws:?}");
    a.ok("detach", json!([ga.vm, 1]));
    b.ok("detach", json!([gb.vm, 1]));
    b.ok("detach", json!([gb2.vm, 1]));
    a.ok("policy", json!({"digest": "a3"}));
    b.ok("policy", json!({"digest": "b3"}));
    for node in [&mut a, &mut b] {
        let (links, tables, gws) = node.leftovers();
        assert!(links.is_empty(), "left behind on {}: {links:?}", node.ns.name);
        assert!(gws.is_empty(), "gateway namespaces left behind on {}: {gws:?}", node.ns.name);
        for t in ["nereid_fw", "nereid_fabgw", "nereid_fabnat"] {
            assert!(!tables.contains(t), "table {t} left on {}:\n{tables}", node.ns.name);
        }
    }
}

/// A TCP listener on `port` inside the guest, accepting (and dropping) connections.
fn listen(g: &Guest, port: u16) {
    let l = g.ns.enter(|| TcpListener::bind(("0.0.0.0", port))).unwrap().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            // A reply of many segments, each as large as the MTU allows.
            let _ = c.map(|mut c| c.write_all(&[b'x'; 20_000]));
        }
    });
}

/// Whether a TCP connection from inside `from` to `to` is accepted.
fn connects(from: &Guest, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    from.ns
        .enter(|| {
            let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_secs(3)) else { return false };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let _ = std::io::Read::read_to_end(&mut c, &mut got);
            assert_eq!(got.len(), 20_000, "connected to {to}, but the reply did not all come back");
            true
        })
        .unwrap()
}

#[test]
fn firewall_entries_let_port_80_in_block_81_and_keep_replies_flowing() {
    let (mut a, _b) = two_nodes();
    let web = guest(&mut a, "fw-web", 0x201, "10.1.0.5", false);
    let client = guest(&mut a, "fw-cli", 0x201, "10.1.0.6", false);
    listen(&web, 80);
    listen(&web, 81);
    listen(&client, 22);
    // No firewall yet: everything goes.
    assert!(connects(&client, "10.1.0.5:81"));

    let rule = Uuid::new_v4();
    let policy = json!({"digest": "fw1", "overlays": {},
        "firewalls": {web.vm.to_string(): [
            {"rule": rule, "direction": "in", "action": "allow", "protocol": "tcp", "ports": [{"start": 80, "end": 80}], "priority": 0}]}});
    a.ok("policy", policy);
    assert!(connects(&client, "10.1.0.5:80"), "the allowed port is blocked");
    assert!(!connects(&client, "10.1.0.5:81"), "a port no rule allows is open");
    assert!(!client.ns.pings("10.1.0.5", 2), "ICMP in is not allowed by any rule");
    // Outbound is allowed, and the replies of what the VM opened come back in.
    assert!(connects(&web, "10.1.0.6:22"), "the firewalled VM cannot open a connection");
    assert!(web.ns.pings("10.1.0.6", 5), "the echo replies of the firewalled VM's ping were dropped");
    // ARP still works through the default drop (the client learnt the VM's MAC).
    assert_eq!(neighbour_mac(&client, "10.1.0.5"), web.mac);

    // A block entry for the client's address, before the allow: port 80 closes for it.
    let policy = json!({"digest": "fw2", "overlays": {},
        "firewalls": {web.vm.to_string(): [
            {"rule": rule, "direction": "in", "action": "block", "protocol": "tcp", "peers": ["10.1.0.6"], "priority": 1},
            {"rule": rule, "direction": "in", "action": "allow", "protocol": "tcp", "ports": [{"start": 80, "end": 80}], "priority": 0}]}});
    a.ok("policy", policy);
    assert!(!connects(&client, "10.1.0.5:80"));
    // The rewrite kept the flows the VM opened (its connection to the client's port 22).
    let flows = a.ns.sh(&format!("nft list set bridge nereid_fw f4_{}", tap_name(web.vm, 0))).unwrap();
    assert!(flows.contains("10.1.0.6 . 10.1.0.5 . tcp . 22 . "), "{flows}");

    // Without the VM in the policy, the table goes and the VM is open again.
    a.ok("policy", json!({"digest": "fw3"}));
    assert!(connects(&client, "10.1.0.5:81"));
    assert!(!a.ns.sh("nft list tables").unwrap().contains("nereid_fw"));
    for g in [&web, &client] {
        a.ok("detach", json!([g.vm, 1]));
    }
    let (links, tables, _) = a.leftovers();
    assert!(links.is_empty(), "{links:?}");
    assert!(!tables.contains("nereid_fw"), "{tables}");
}

#[test]
fn a_restarted_node_keeps_the_running_vms_segments_and_removes_the_rest() {
    let (mut a, mut b) = two_nodes();
    // Each node is a server of its own: not the machine's identity.
    assert_eq!(a.ok("own_namespace", Value::Null), json!(true));
    let keep = guest(&mut a, "ad-keep", 0x301, "10.1.0.5", true);
    let gone = guest(&mut a, "ad-gone", 0x302, "10.1.0.5", true);
    let peer = guest(&mut b, "ad-peer", 0x301, "10.1.0.6", false);
    let policy_a = json!({"digest": "a1", "overlays": {"769": ["192.168.77.2"], "770": []}});
    a.ok("policy", policy_a);
    b.ok("policy", json!({"digest": "b1", "overlays": {"769": ["192.168.77.1"]}}));
    assert!(peer.ns.pings("10.1.0.5", 10));

    // The agent restarts; only `keep` still runs (`gone` stopped while it was away).
    a.restart();
    a.ok("adopt", json!([keep.def]));
    a.ok("policy", json!({"digest": "a2", "overlays": {"769": ["192.168.77.2"]}}));
    let (links, tables, gws) = a.leftovers();
    assert!(!links.iter().any(|l| l.ends_with("302")), "segment 0x302 outlived its last VM: {links:?}");
    assert!(!links.contains(&tap_name(gone.vm, 0)), "{links:?}");
    for l in ["nvx301", "nfb301", "ngb301", "ngh301"] {
        assert!(links.contains(&l.to_string()), "{l} missing after the restart: {links:?}");
    }
    assert_eq!(gws.len(), 1, "{gws:?}");
    assert!(tables.contains("nereid_fabgw"), "{tables}");
    assert!(peer.ns.pings("10.1.0.5", 10), "the running VM lost the fabric across the restart");
    assert!(keep.ns.pings("10.1.0.1", 5), "the running VM lost its gateway across the restart");

    a.ok("detach", json!([keep.vm, 1]));
    b.ok("detach", json!([peer.vm, 1]));
    for node in [&mut a, &mut b] {
        let (links, tables, gws) = node.leftovers();
        assert!(links.is_empty() && gws.is_empty() && !tables.contains("nereid_fab"), "{links:?} {gws:?} {tables}");
    }
}
