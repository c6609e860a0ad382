//! VM firewalls (Triton's firewall rules, compiled by the headnode into
//! `NetPolicy.firewalls`): one nftables table of their own, `bridge nereid_fw`, rewritten
//! whole and atomically (one `nft -f`) from the plugged taps and the policy whenever
//! either changes. A VM absent from the policy has no chains here (anti-spoofing only).
//!
//! ```text
//!   frames to the VM   (bridge forward/output, oifname tap) ─► in_<tap>:
//!       replies of flows already let through (below) → accept
//!       ICMP errors, IPv6 neighbour discovery, DHCP replies → accept
//!       Direction::In entries in order: Allow → accept (flow remembered), Block → drop
//!       any other IPv4/IPv6 → drop (ARP passes)
//!   frames from the VM (bridge prerouting, iifname tap, after anti-spoofing) ─► out_<tap>:
//!       replies of flows let in → accept
//!       Direction::Out entries in order: Block → drop, Allow → accept
//!       default accept, the flow remembered
//! ```
//! Stateful without conntrack: this kernel family has no conntrack in bridge tables
//! (`ct state` there needs nf_conntrack_bridge, often not built), so each tap has dynamic
//! sets of the TCP/UDP flows (remote address, local address, protocol, remote port,
//! local port) and ICMP echo ids its traffic opened, and a frame towards the VM that
//! belongs to one is a reply. A rewrite flushes the rules and keeps the sets (only those
//! of taps that went are deleted, in the same transaction), so flows survive it.
//! The agent's DHCP responder sends on the tap itself, so its replies never pass here.

use std::fmt::Write;
use std::net::IpAddr;

use nereid_types::netpolicy::{Action, Direction, FwEntry, Protocol};

use super::filter::{Port, nft};

/// The nftables table of the firewalls.
pub const TABLE: &str = "nereid_fw";

/// How long a flow is remembered after its last packet from the VM (or let in).
const FLOW_TIMEOUT: &str = "1h";

fn ident(tap: &str) -> String {
    tap.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

/// The key of a TCP/UDP flow, remote end first: as a frame to the VM reads it (`inbound`)
/// or as one from it.
fn flow_key(v6: bool, inbound: bool) -> String {
    let ip = if v6 { "ip6" } else { "ip" };
    let (remote, local, rport, lport) = if inbound { ("saddr", "daddr", "sport", "dport") } else { ("daddr", "saddr", "dport", "sport") };
    format!("{ip} {remote} . {ip} {local} . meta l4proto . th {rport} . th {lport}")
}

fn icmp_key(inbound: bool) -> &'static str {
    if inbound { "ip saddr . ip daddr . icmp id" } else { "ip daddr . ip saddr . icmp id" }
}

/// The peers of an entry split by family (`None`: any address of either).
fn peers(e: &FwEntry) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let Some(p) = &e.peers else { return (None, None) };
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for a in p {
        let addr = a.split('/').next().unwrap_or("");
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => v4.push(a.clone()),
            Ok(IpAddr::V6(_)) => v6.push(a.clone()),
            Err(_) => {}
        }
    }
    (Some(v4), Some(v6))
}

/// The nft rules of one entry, for the chain of `tap`.
fn entry_rules(e: &FwEntry, tap: &str) -> Vec<String> {
    let id = ident(tap);
    let inbound = e.direction == Direction::In;
    let remote = if inbound { "saddr" } else { "daddr" };
    let (p4, p6) = peers(e);
    let mut out = Vec::new();
    for v6 in [false, true] {
        let peers = if v6 { &p6 } else { &p4 };
        // Peers given, none of this family: the entry does not apply to it.
        if peers.as_ref().is_some_and(Vec::is_empty) {
            continue;
        }
        let ip = if v6 { "ip6" } else { "ip" };
        let mut m = format!("ether type {ip}");
        if let Some(p) = peers {
            let _ = write!(m, " {ip} {remote} {{ {} }}", p.join(", "));
        }
        let matches: Vec<String> = match e.protocol {
            Protocol::Tcp | Protocol::Udp => {
                let proto = if e.protocol == Protocol::Tcp { "tcp" } else { "udp" };
                let mut r = format!("{m} meta l4proto {proto}");
                if !e.ports.is_empty() {
                    let ports: Vec<String> = e
                        .ports
                        .iter()
                        .map(|p| if p.start == p.end { p.start.to_string() } else { format!("{}-{}", p.start, p.end) })
                        .collect();
                    let _ = write!(r, " th dport {{ {} }}", ports.join(", "));
                }
                vec![r]
            }
            Protocol::Icmp | Protocol::Icmp6 => {
                if (e.protocol == Protocol::Icmp6) != v6 {
                    continue;
                }
                let (l4, kw) = if v6 { ("ipv6-icmp", "icmpv6") } else { ("icmp", "icmp") };
                if e.icmp.is_empty() {
                    vec![format!("{m} meta l4proto {l4}")]
                } else {
                    e.icmp
                        .iter()
                        .map(|t| {
                            let mut r = format!("{m} meta l4proto {l4} {kw} type {}", t.icmp_type);
                            if let Some(c) = t.code {
                                let _ = write!(r, " {kw} code {c}");
                            }
                            r
                        })
                        .collect()
                }
            }
        };
        let track = matches!(e.protocol, Protocol::Tcp | Protocol::Udp);
        let set = if v6 { format!("f6_{id}") } else { format!("f4_{id}") };
        for r in matches {
            out.push(match e.action {
                Action::Block => format!("{r} drop"),
                Action::Allow if track => format!("{r} update @{set} {{ {} }} accept", flow_key(v6, inbound)),
                Action::Allow => format!("{r} accept"),
            });
        }
    }
    out
}

/// The chains and sets the table has now (`nft -j list table`), by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub chains: Vec<String>,
    pub sets: Vec<String>,
}

/// Reads `nft -j list table bridge nereid_fw`'s output.
pub fn existing(json: &str) -> Existing {
    let mut e = Existing::default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    for item in v.get("nftables").and_then(|n| n.as_array()).into_iter().flatten() {
        for (kind, list) in [("chain", &mut e.chains), ("set", &mut e.sets)] {
            if let Some(name) = item.get(kind).and_then(|c| c.get("name")).and_then(|n| n.as_str()) {
                list.push(name.to_string());
            }
        }
    }
    e
}

/// The whole table for these taps (of the VMs in `firewalls`), as one `nft -f`
/// transaction: every rule replaced, the flow sets of taps still here kept, the chains
/// and sets of taps that went (in `had`) deleted; with no firewalled tap, the table goes.
pub fn ruleset(ports: &[(uuid::Uuid, Port)], firewalls: &std::collections::BTreeMap<uuid::Uuid, Vec<FwEntry>>, had: &Existing) -> String {
    let mine: Vec<(&Port, &Vec<FwEntry>)> = ports.iter().filter_map(|(vm, p)| Some((p, firewalls.get(vm)?))).collect();
    if mine.is_empty() {
        return format!("table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n");
    }
    let mut s = format!("table bridge {TABLE} {{}}\nflush table bridge {TABLE}\n");
    let ids: Vec<String> = mine.iter().map(|(p, _)| ident(&p.tap)).collect();
    let keep_chain =
        |c: &str| ["forward", "output", "prerouting"].contains(&c) || ids.iter().any(|i| c == format!("in_{i}") || c == format!("out_{i}"));
    let keep_set = |c: &str| ids.iter().any(|i| ["f4", "f6", "i4"].iter().any(|k| c == format!("{k}_{i}")));
    for c in had.chains.iter().filter(|c| !keep_chain(c)) {
        let _ = writeln!(s, "delete chain bridge {TABLE} {c}");
    }
    for c in had.sets.iter().filter(|c| !keep_set(c)) {
        let _ = writeln!(s, "delete set bridge {TABLE} {c}");
    }
    let _ = writeln!(s, "table bridge {TABLE} {{");
    for (p, _) in &mine {
        let id = ident(&p.tap);
        for (set, ty) in [
            ("f4", "ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service"),
            ("f6", "ipv6_addr . ipv6_addr . inet_proto . inet_service . inet_service"),
        ] {
            let _ = writeln!(s, "  set {set}_{id} {{\n    type {ty}; flags dynamic, timeout; timeout {FLOW_TIMEOUT}; size 65535;\n  }}");
        }
        let _ =
            writeln!(s, "  set i4_{id} {{\n    typeof ip saddr . ip daddr . icmp id; flags dynamic, timeout; timeout 1m; size 4096;\n  }}");
    }
    for (hook, prio, dir, chain) in
        [("forward", 0, "oifname", "in"), ("output", 0, "oifname", "in"), ("prerouting", -100, "iifname", "out")]
    {
        let _ = writeln!(s, "  chain {hook} {{\n    type filter hook {hook} priority {prio}; policy accept;");
        for (p, _) in &mine {
            let _ = writeln!(s, "    {dir} \"{}\" jump {chain}_{}", p.tap, ident(&p.tap));
        }
        let _ = writeln!(s, "  }}");
    }
    for (p, entries) in &mine {
        let id = ident(&p.tap);
        let _ = writeln!(s, "  chain in_{id} {{");
        let _ = writeln!(s, "    ether type ip meta l4proto {{ tcp, udp }} {} @f4_{id} accept", flow_key(false, true));
        let _ = writeln!(s, "    ether type ip6 meta l4proto {{ tcp, udp }} {} @f6_{id} accept", flow_key(true, true));
        let _ = writeln!(s, "    ether type ip meta l4proto icmp icmp type echo-reply {} @i4_{id} accept", icmp_key(true));
        let _ = writeln!(
            s,
            "    ether type ip meta l4proto icmp icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept"
        );
        let _ = writeln!(
            s,
            "    ether type ip6 meta l4proto ipv6-icmp icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept"
        );
        let _ = writeln!(s, "    ether type ip meta l4proto udp udp sport 67 udp dport 68 accept comment \"dhcp replies\"");
        for e in entries.iter().filter(|e| e.direction == Direction::In) {
            for r in entry_rules(e, &p.tap) {
                let _ = writeln!(s, "    {r} comment \"rule {}\"", e.rule);
            }
        }
        let _ = writeln!(s, "    ether type {{ ip, ip6 }} drop comment \"inbound default\"\n  }}");
        let _ = writeln!(s, "  chain out_{id} {{");
        let _ = writeln!(s, "    ether type ip meta l4proto {{ tcp, udp }} {} @f4_{id} accept", flow_key(false, false));
        let _ = writeln!(s, "    ether type ip6 meta l4proto {{ tcp, udp }} {} @f6_{id} accept", flow_key(true, false));
        for e in entries.iter().filter(|e| e.direction == Direction::Out) {
            for r in entry_rules(e, &p.tap) {
                let _ = writeln!(s, "    {r} comment \"rule {}\"", e.rule);
            }
        }
        let _ = writeln!(s, "    ether type ip meta l4proto {{ tcp, udp }} update @f4_{id} {{ {} }}", flow_key(false, false));
        let _ = writeln!(s, "    ether type ip6 meta l4proto {{ tcp, udp }} update @f6_{id} {{ {} }}", flow_key(true, false));
        let _ = writeln!(s, "    ether type ip meta l4proto icmp icmp type echo-request update @i4_{id} {{ {} }}", icmp_key(false));
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// Replaces the table's rules with those for these taps and firewalls.
pub async fn apply(ports: &[(uuid::Uuid, Port)], firewalls: &std::collections::BTreeMap<uuid::Uuid, Vec<FwEntry>>) -> Result<(), String> {
    let had = match super::links::run("nft", &["-j", "list", "table", "bridge", TABLE]).await {
        Ok(j) => existing(&j),
        Err(_) => Existing::default(),
    };
    nft(&ruleset(ports, firewalls, &had)).await.map_err(|e| format!("the firewall table: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_types::netpolicy::{IcmpType, PortRange};
    use serde_json::json;
    use uuid::Uuid;

    fn port(tap: &str) -> Port {
        let n = json!({"mac": "90:b8:d0:11:22:33", "interface": "net0", "ip": "10.88.0.10", "vlan_id": 0, "nic_tag": "external",
            "mtu": 1500, "primary": true, "model": "virtio"});
        Port { tap: tap.into(), nic: serde_json::from_value(n).unwrap_or_else(|e| panic!("{e}")) }
    }

    fn entry(direction: Direction, action: Action, protocol: Protocol) -> FwEntry {
        FwEntry { rule: Uuid::nil(), direction, action, protocol, ports: vec![], icmp: vec![], peers: None, priority: 0 }
    }

    #[test]
    fn no_firewalled_vm_means_no_table() {
        let vm = Uuid::new_v4();
        let s = ruleset(&[(vm, port("nt6f3d3f1c0"))], &Default::default(), &Existing::default());
        assert_eq!(s, "table bridge nereid_fw {}\ndelete table bridge nereid_fw\n");
        let mut fw = std::collections::BTreeMap::new();
        fw.insert(Uuid::new_v4(), vec![]);
        assert_eq!(ruleset(&[(vm, port("nt6f3d3f1c0"))], &fw, &Existing::default()), s, "a firewalled VM that is not here");
    }

    #[test]
    fn inbound_is_blocked_but_for_replies_and_allowed_entries_in_order_and_outbound_allowed() {
        let vm = Uuid::new_v4();
        let mut allow80 = entry(Direction::In, Action::Allow, Protocol::Tcp);
        allow80.ports = vec![PortRange { start: 80, end: 80 }, PortRange { start: 8000, end: 8080 }];
        let mut block_from = entry(Direction::In, Action::Block, Protocol::Udp);
        block_from.peers = Some(vec!["192.0.2.0/24".into(), "198.51.100.7".into()]);
        let mut ping = entry(Direction::In, Action::Allow, Protocol::Icmp);
        ping.icmp = vec![IcmpType { icmp_type: 8, code: Some(0) }, IcmpType { icmp_type: 13, code: None }];
        let mut no_smtp = entry(Direction::Out, Action::Block, Protocol::Tcp);
        no_smtp.ports = vec![PortRange { start: 25, end: 25 }];
        let mut fw = std::collections::BTreeMap::new();
        fw.insert(vm, vec![block_from, allow80, ping, no_smtp]);
        let s = ruleset(&[(vm, port("nt6f3d3f1c0")), (Uuid::new_v4(), port("nt00000000f"))], &fw, &Existing::default());
        assert!(s.starts_with("table bridge nereid_fw {}\nflush table bridge nereid_fw\ntable bridge nereid_fw {\n"), "{s}");
        for want in [
            "oifname \"nt6f3d3f1c0\" jump in_nt6f3d3f1c0",
            "iifname \"nt6f3d3f1c0\" jump out_nt6f3d3f1c0",
            "ether type ip meta l4proto { tcp, udp } ip saddr . ip daddr . meta l4proto . th sport . th dport @f4_nt6f3d3f1c0 accept",
            "ether type ip ip saddr { 192.0.2.0/24, 198.51.100.7 } meta l4proto udp drop",
            "ether type ip meta l4proto tcp th dport { 80, 8000-8080 } update @f4_nt6f3d3f1c0 { ip saddr . ip daddr . meta l4proto . th sport . th dport } accept",
            "ether type ip6 meta l4proto tcp th dport { 80, 8000-8080 } update @f6_nt6f3d3f1c0 { ip6 saddr . ip6 daddr . meta l4proto . th sport . th dport } accept",
            "ether type ip meta l4proto icmp icmp type 8 icmp code 0 accept",
            "ether type ip meta l4proto icmp icmp type 13 accept",
            "ether type { ip, ip6 } drop comment \"inbound default\"",
            "ether type ip meta l4proto tcp th dport { 25 } drop",
            "ether type ip meta l4proto { tcp, udp } update @f4_nt6f3d3f1c0 { ip daddr . ip saddr . meta l4proto . th dport . th sport }",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // Entries keep their order: the block before the allow.
        assert!(s.find("meta l4proto udp drop") < s.find("th dport { 80, 8000-8080 }"));
        // A v4-only peer list makes no IPv6 rule; ICMP (v4) none either.
        assert!(!s.contains("ether type ip6 ip6 saddr"), "{s}");
        assert!(!s.contains("ether type ip6 meta l4proto icmp"), "{s}");
        // The unfirewalled tap has no chain.
        assert!(!s.contains("nt00000000f"), "{s}");
        // Outbound blocks come before the default (accept with the flow remembered).
        assert!(s.find("th dport { 25 } drop") < s.find("update @f4_nt6f3d3f1c0 { ip daddr"));
    }

    #[test]
    fn icmp6_and_v6_peers_go_to_ipv6_only() {
        let mut e = entry(Direction::In, Action::Allow, Protocol::Icmp6);
        e.icmp = vec![IcmpType { icmp_type: 128, code: None }];
        assert_eq!(entry_rules(&e, "t"), vec!["ether type ip6 meta l4proto ipv6-icmp icmpv6 type 128 accept"]);
        let mut e = entry(Direction::Out, Action::Allow, Protocol::Tcp);
        e.peers = Some(vec!["2001:db8::/32".into()]);
        assert_eq!(
            entry_rules(&e, "t"),
            vec![
                "ether type ip6 ip6 daddr { 2001:db8::/32 } meta l4proto tcp update @f6_t { ip6 daddr . ip6 saddr . meta l4proto . th dport . th sport } accept"
            ]
        );
        e.peers = Some(vec![]);
        assert!(entry_rules(&e, "t").is_empty(), "no peer, no rule");
    }

    #[test]
    fn a_rewrite_keeps_the_flows_of_taps_still_here_and_deletes_those_of_taps_that_went() {
        let (vm, gone) = (Uuid::new_v4(), Uuid::new_v4());
        let mut fw = std::collections::BTreeMap::new();
        fw.insert(vm, vec![entry(Direction::In, Action::Allow, Protocol::Tcp)]);
        fw.insert(gone, vec![]);
        let listed = r#"{"nftables": [{"metainfo": {}}, {"table": {"family": "bridge", "name": "nereid_fw"}},
            {"set": {"family": "bridge", "name": "f4_nt6f3d3f1c0", "table": "nereid_fw"}},
            {"set": {"family": "bridge", "name": "f4_nt00000000f", "table": "nereid_fw"}},
            {"chain": {"family": "bridge", "name": "forward", "table": "nereid_fw"}},
            {"chain": {"family": "bridge", "name": "in_nt6f3d3f1c0", "table": "nereid_fw"}},
            {"chain": {"family": "bridge", "name": "in_nt00000000f", "table": "nereid_fw"}},
            {"rule": {"family": "bridge", "chain": "forward"}}]}"#;
        let had = existing(listed);
        assert_eq!(had.sets, vec!["f4_nt6f3d3f1c0", "f4_nt00000000f"]);
        assert_eq!(had.chains, vec!["forward", "in_nt6f3d3f1c0", "in_nt00000000f"]);
        let s = ruleset(&[(vm, port("nt6f3d3f1c0"))], &fw, &had);
        assert!(
            s.contains(
                "flush table bridge nereid_fw\ndelete chain bridge nereid_fw in_nt00000000f\ndelete set bridge nereid_fw f4_nt00000000f\n"
            ),
            "{s}"
        );
        assert!(!s.contains("delete table"), "{s}");
        assert!(!s.contains("delete set bridge nereid_fw f4_nt6f3d3f1c0") && !s.contains("delete chain bridge nereid_fw forward"), "{s}");
        assert_eq!(existing("not json"), Existing::default());
    }
}
