//! The managed network `nereid up` owns on a single host, the way libvirt's default
//! network or Incus's managed bridge work: a bridge for a nic tag, the gateway address of
//! each of the tag's networks on it (VLAN 0 on the bridge itself, VLAN N on the VLAN's own
//! bridge, `links::vlan_bridge`), IPv4 forwarding, and — when the host has a default
//! route — masquerading of the networks' traffic out of it, in the nftables table
//! `ip nereid_nat`. `up` is idempotent (re-run at every start); `down` removes all of it.
//!
//! Only this host's view changes; guests reach each other on the bridge, the host at the
//! gateway, other networks through the gateway, and the outside through NAT.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::filter::nft;
use super::links;

/// The nftables table of the NAT and forwarding rules.
pub const NAT_TABLE: &str = "nereid_nat";

/// One network on the managed bridge: its VLAN and gateway address with the subnet's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayNet {
    pub vlan_id: u16,
    pub gateway: Ipv4Net,
}

/// What `nereid up` manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub bridge: String,
    pub networks: Vec<GatewayNet>,
    /// Masquerade out of the default route (if the host has one).
    pub nat: bool,
}

/// What `up` did, for the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether traffic to the outside is masqueraded (a default route exists).
    pub nat: bool,
}

/// The interface carrying a network's gateway.
pub fn gateway_iface(bridge: &str, vlan_id: u16) -> String {
    links::vlan_bridge(bridge, vlan_id)
}

/// The NAT and forwarding table (pure).
pub fn nat_ruleset(m: &Managed, nat: bool) -> String {
    let subnets: Vec<String> = m.networks.iter().map(|n| n.gateway.trunc().to_string()).collect();
    let ifaces: Vec<String> = m.networks.iter().map(|n| format!("\"{}\"", gateway_iface(&m.bridge, n.vlan_id))).collect();
    let mut s = format!("table ip {NAT_TABLE} {{}}\ndelete table ip {NAT_TABLE}\ntable ip {NAT_TABLE} {{\n");
    if !ifaces.is_empty() {
        let set = ifaces.join(", ");
        s.push_str(&format!(
            "  chain forward {{\n    type filter hook forward priority -10; policy accept;\n    iifname {{ {set} }} accept\n    oifname {{ {set} }} ct state established,related accept\n    oifname {{ {set} }} iifname {{ {set} }} accept\n  }}\n"
        ));
    }
    if nat && !subnets.is_empty() {
        let set = subnets.join(", ");
        s.push_str(&format!(
            "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr {{ {set} }} ip daddr != {{ {set} }} masquerade\n  }}\n"
        ));
    }
    s.push_str("}\n");
    s
}

async fn has_default_route() -> bool {
    links::run("ip", &["-j", "route", "show", "default"]).await.map(|o| o.contains("\"dst\"")).unwrap_or(false)
}

/// Makes the bridge, gateways, forwarding and NAT be there.
pub async fn up(m: &Managed) -> Result<Report, String> {
    links::ensure_bridge(&m.bridge).await?;
    for n in &m.networks {
        let iface = gateway_iface(&m.bridge, n.vlan_id);
        links::ensure_bridge(&iface).await?;
        links::run("ip", &["addr", "replace", &n.gateway.to_string(), "dev", &iface]).await?;
        links::run("ip", &["link", "set", "dev", &iface, "up"]).await?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| format!("switching on IPv4 forwarding: {e}"))?;
    let nat = m.nat && has_default_route().await;
    nft(&nat_ruleset(m, nat)).await?;
    Ok(Report { nat })
}

/// Removes everything `up` made (the VLANs' bridges, the bridge, the NAT table).
pub async fn down(m: &Managed) {
    let _ = nft(&format!("table ip {NAT_TABLE} {{}}\ndelete table ip {NAT_TABLE}\n")).await;
    // The VLANs' bridges: those with a gateway, and those VMs' NICs made since.
    let vlans = links::named_like(&format!("{}v", m.bridge));
    for b in vlans.iter().filter(|b| b[m.bridge.len() + 1..].parse::<u16>().is_ok()) {
        links::delete(b).await;
    }
    for n in m.networks.iter().filter(|n| n.vlan_id != 0) {
        links::delete(&gateway_iface(&m.bridge, n.vlan_id)).await;
    }
    links::delete(&m.bridge).await;
}

/// A gateway address with its subnet's prefix (`10.88.0.1` in `10.88.0.0/24` → `10.88.0.1/24`).
pub fn gateway_net(gateway: &str, subnet: &str) -> Option<Ipv4Net> {
    let gw: Ipv4Addr = gateway.parse().ok()?;
    let net: Ipv4Net = subnet.parse().ok()?;
    net.contains(&gw).then(|| Ipv4Net::new(gw, net.prefix_len()).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_rules_and_names() {
        let m = Managed {
            bridge: "nereid0".into(),
            networks: vec![
                GatewayNet { vlan_id: 0, gateway: gateway_net("10.88.0.1", "10.88.0.0/24").unwrap() },
                GatewayNet { vlan_id: 7, gateway: gateway_net("10.89.0.1", "10.89.0.0/24").unwrap() },
            ],
            nat: true,
        };
        let s = nat_ruleset(&m, true);
        assert!(s.contains("ip saddr { 10.88.0.0/24, 10.89.0.0/24 } ip daddr != { 10.88.0.0/24, 10.89.0.0/24 } masquerade"), "{s}");
        assert!(s.contains("iifname { \"nereid0\", \"nereid0v7\" } accept"), "{s}");
        assert!(!nat_ruleset(&m, false).contains("masquerade"));
        assert_eq!(gateway_net("10.88.1.1", "10.88.0.0/24"), None);
        assert_eq!(gateway_net("10.88.0.1", "10.88.0.0/24").unwrap().to_string(), "10.88.0.1/24");
    }
}
