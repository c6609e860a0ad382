//! Anti-spoofing: what a VM may send onto the bridge, as one nftables table (`bridge
//! nereid`) the agent rewrites whole — atomically, in one `nft -f` transaction — whenever
//! a VM's NICs come, go or change. The table is computed (pure) from the NICs the agent
//! has plugged, so restoring missing rules and removing stale ones is the same operation.
//!
//! Per tap, by default (Triton's semantics for the `allow_*` NIC flags):
//! - frames only from the NIC's MAC (`allow_mac_spoofing`, `allow_unfiltered_promisc` lift it);
//! - IPv4 only from the NIC's NAPI addresses, ARP only for them (`allow_ip_spoofing`);
//!   a DHCP client's `0.0.0.0` discover and ARP probe are allowed;
//! - IPv6 only from link-local and unspecified addresses (`allow_ip_spoofing`);
//! - never DHCP server replies (UDP from port 67, DHCPv6 from 547) (`allow_dhcp_spoofing`);
//! - only IPv4, IPv6 and ARP frames.

use std::fmt::Write;

use nereid_types::agent::NicDef;

/// The nftables table the agent owns.
pub const TABLE: &str = "nereid";

/// One plugged NIC: its tap and what NAPI says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub tap: String,
    pub nic: NicDef,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace(['"', '\\'], ""))
}

/// The rules of one port's chain.
fn port_rules(p: &Port) -> Vec<String> {
    let n = &p.nic;
    let mac = n.mac.to_lowercase();
    let mut r = Vec::new();
    if !(n.allow_mac_spoofing || n.allow_unfiltered_promisc) {
        r.push(format!("ether saddr != {mac} counter drop comment \"mac spoofing\""));
        r.push(format!("ether type arp arp saddr ether != {mac} counter drop comment \"arp mac spoofing\""));
    }
    if !n.allow_dhcp_spoofing {
        r.push("ether type ip ip protocol udp udp sport 67 counter drop comment \"dhcp server\"".into());
        r.push("ether type ip6 ip6 nexthdr udp udp sport 547 counter drop comment \"dhcpv6 server\"".into());
    }
    if !n.allow_ip_spoofing {
        let ips: Vec<&str> = n.ip.iter().map(String::as_str).filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()).collect();
        let own = if ips.is_empty() { "0.0.0.0".to_string() } else { format!("0.0.0.0, {}", ips.join(", ")) };
        r.push(format!("ether type arp arp saddr ip != {{ {own} }} counter drop comment \"arp ip spoofing\""));
        r.push("ether type ip ip saddr 0.0.0.0 ip protocol udp udp dport 67 accept comment \"dhcp discover\"".into());
        if ips.is_empty() {
            r.push("ether type ip counter drop comment \"no ipv4 address\"".into());
        } else {
            r.push(format!("ether type ip ip saddr != {{ {} }} counter drop comment \"ip spoofing\"", ips.join(", ")));
        }
        r.push("ether type ip6 ip6 saddr != { ::, fe80::/10 } counter drop comment \"ipv6 spoofing\"".into());
    }
    r.push("ether type != { ip, ip6, arp } counter drop comment \"restricted traffic\"".into());
    r
}

fn chain(tap: &str) -> String {
    format!("port_{}", tap.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

/// The whole table for these ports, as an `nft -f` script that replaces any previous one.
pub fn ruleset(ports: &[Port]) -> String {
    let mut s = String::new();
    // Declaring then deleting makes the delete succeed when there was no table yet.
    let _ = writeln!(s, "table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{");
    let _ = writeln!(s, "  chain prerouting {{\n    type filter hook prerouting priority -200; policy accept;");
    for p in ports {
        let _ = writeln!(s, "    iifname {} jump {}", quote(&p.tap), chain(&p.tap));
    }
    let _ = writeln!(s, "  }}");
    for p in ports {
        let _ = writeln!(s, "  chain {} {{", chain(&p.tap));
        for rule in port_rules(p) {
            let _ = writeln!(s, "    {rule}");
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// Replaces the table with one for `ports`.
pub async fn apply(ports: &[Port]) -> Result<(), String> {
    nft(&ruleset(ports)).await
}

/// Whether the table exists.
pub async fn exists() -> bool {
    tokio::process::Command::new("nft")
        .args(["list", "table", "bridge", TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Removes the table (nothing left filtered).
pub async fn remove() -> Result<(), String> {
    nft(&format!("table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n")).await
}

/// Runs an `nft -f -` script.
pub async fn nft(script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run nft (install the nftables package): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("nft: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn port(flags: serde_json::Value) -> Port {
        let mut n = json!({"mac": "90:B8:D0:11:22:33", "interface": "net0", "ip": "10.88.0.10", "vlan_id": 0, "nic_tag": "external",
            "mtu": 1500, "primary": true, "model": "virtio"});
        for (k, v) in flags.as_object().unwrap() {
            n[k] = v.clone();
        }
        Port { tap: "nt6f3d3f1c0".into(), nic: serde_json::from_value(n).unwrap() }
    }

    #[test]
    fn default_rules_pin_mac_and_ip_and_block_dhcp_servers() {
        let s = ruleset(&[port(json!({}))]);
        assert!(s.starts_with("table bridge nereid {}\ndelete table bridge nereid\n"), "{s}");
        assert!(s.contains("iifname \"nt6f3d3f1c0\" jump port_nt6f3d3f1c0"), "{s}");
        for want in [
            "ether saddr != 90:b8:d0:11:22:33 counter drop",
            "arp saddr ip != { 0.0.0.0, 10.88.0.10 } counter drop",
            "ip saddr != { 10.88.0.10 } counter drop",
            "udp sport 67 counter drop",
            "ether type != { ip, ip6, arp } counter drop",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }

    #[test]
    fn each_allow_flag_lifts_exactly_its_rules() {
        let lifted = |flags: serde_json::Value| {
            let all = port_rules(&port(json!({})));
            let some = port_rules(&port(flags));
            all.into_iter().filter(|r| !some.contains(r)).map(|r| r.split(" comment ").nth(1).unwrap_or("").to_string()).collect::<Vec<_>>()
        };
        assert_eq!(lifted(json!({"allow_mac_spoofing": true})), ["\"mac spoofing\"", "\"arp mac spoofing\""]);
        assert_eq!(lifted(json!({"allow_unfiltered_promisc": true})), ["\"mac spoofing\"", "\"arp mac spoofing\""]);
        assert_eq!(lifted(json!({"allow_dhcp_spoofing": true})), ["\"dhcp server\"", "\"dhcpv6 server\""]);
        assert_eq!(
            lifted(json!({"allow_ip_spoofing": true})),
            ["\"arp ip spoofing\"", "\"dhcp discover\"", "\"ip spoofing\"", "\"ipv6 spoofing\""]
        );
        let none = ruleset(&[]);
        assert!(none.contains("policy accept;\n  }\n}"), "{none}");
    }
}
