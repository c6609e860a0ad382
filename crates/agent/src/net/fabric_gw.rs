//! The distributed NAT gateway of fabric networks with `internet_nat`: every node hosting
//! a VM of such a network answers as its gateway for its own VMs and masquerades their
//! traffic out of its default route — there is no single NAT box to lose.
//!
//! ```text
//!   nfb<vni> ── ngb<vni> ══veth══ fab0 [gateway IPs, MAC 02:4e:47:<vni>]  ┐ namespace
//!   (bridge)                             masquerade out of up0            │ nfgw-<vni>-<node>
//!   host ────── ngh<vni> ══veth══ up0  [169.254.x.y/31, default via host] ┘
//!   host: IPv4 forwarding, `ip nereid_fabnat` masquerades the namespaces' link addresses
//!         out of the host's own route; `bridge nereid_fabgw` keeps ARP for the gateways
//!         and frames from/to the gateway MAC off the VXLAN devices, so each node's
//!         gateway (same IP, same MAC everywhere) serves only the VMs beside it
//! ```
//! One namespace per segment keeps overlapping subnets of different accounts apart. Its
//! name carries this node's network-namespace id ([`node_suffix`]), so two agents on one
//! machine (each in its own namespace) never share one. Everything is derived (pure
//! functions below) from the plugged NICs; `sync` makes the host match and removes the
//! gateways no NIC needs any more.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::filter::nft;
use super::{links, overlay};

/// The prefix of every gateway namespace.
pub const NS_PREFIX: &str = "nfgw-";
/// The interfaces inside a gateway namespace: towards the segment, towards the host.
pub const NS_PORT: &str = "fab0";
pub const NS_UPLINK: &str = "up0";
/// The host's masquerading of the gateways' traffic.
pub const NAT_TABLE: &str = "nereid_fabnat";
/// The bridge rules that keep each node's gateway to its own VMs.
pub const ISOLATION_TABLE: &str = "nereid_fabgw";
/// The gateway namespace's own masquerading (to its link address).
pub const NS_TABLE: &str = "nereid_gw";

/// The gateway of one segment on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub vni: u32,
    /// Each `internet_nat` network's gateway address, with its subnet's prefix.
    pub addresses: Vec<Ipv4Net>,
    pub mtu: u32,
}

/// This node's network-namespace id (the inode of `/proc/self/ns/net`), which keeps the
/// gateway namespaces of two agents on one machine apart.
pub fn node_suffix() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|l| l.to_str().map(|s| s.chars().filter(char::is_ascii_digit).collect::<String>()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "0".into())
}

/// The gateway namespace of segment `vni` on node `suffix`.
pub fn namespace(vni: u32, suffix: &str) -> String {
    format!("{NS_PREFIX}{vni:x}-{suffix}")
}

/// The segment of one of node `suffix`'s gateway namespaces.
pub fn vni_of_namespace(name: &str, suffix: &str) -> Option<u32> {
    let hex = name.strip_prefix(NS_PREFIX)?.strip_suffix(suffix)?.strip_suffix('-')?;
    overlay::vni_of(&format!("{}{hex}", overlay::BRIDGE_PREFIX), overlay::BRIDGE_PREFIX)
}

/// The host end of the veth into segment `vni`'s bridge.
pub fn port_name(vni: u32) -> String {
    format!("ngb{vni:x}")
}

/// The host end of the veth to segment `vni`'s gateway namespace.
pub fn uplink_name(vni: u32) -> String {
    format!("ngh{vni:x}")
}

/// The gateway's MAC: the same on every node, locally administered, from the segment.
pub fn mac(vni: u32) -> String {
    let b = vni.to_be_bytes();
    format!("02:4e:47:{:02x}:{:02x}:{:02x}", b[1], b[2], b[3])
}

/// The /31 between the host (first) and segment `vni`'s gateway namespace (second), in
/// 169.254.0.0/16 — past 169.254.0.0/24 and never the 169.254.169.254 metadata address.
/// Two segments share a /31 only if their vnis are equal modulo 32511.
pub fn link_addresses(vni: u32) -> (Ipv4Addr, Ipv4Addr) {
    let mut index = 128 + vni % 32511;
    if index >= 0xa9fe / 2 {
        index += 1;
    }
    let base = u32::from(Ipv4Addr::new(169, 254, 0, 0)) + 2 * index;
    (Ipv4Addr::from(base), Ipv4Addr::from(base + 1))
}

/// The gateway each segment needs on this node, from its plugged NICs: those with a vni,
/// `internet_nat`, a gateway and a netmask.
pub fn wanted<'a>(nics: impl IntoIterator<Item = &'a nereid_types::agent::NicDef>) -> BTreeMap<u32, Gateway> {
    let mut out: BTreeMap<u32, Gateway> = BTreeMap::new();
    for n in nics {
        let (Some(vni), true, Some(gw), Some(mask)) = (n.vni, n.internet_nat, n.gateway.as_deref(), n.netmask.as_deref()) else { continue };
        let (Ok(gw), Ok(mask)) = (gw.parse::<Ipv4Addr>(), mask.parse::<Ipv4Addr>()) else { continue };
        let Ok(net) = Ipv4Net::new(gw, u32::from(mask).leading_ones() as u8) else { continue };
        let g = out.entry(vni).or_insert(Gateway { vni, addresses: Vec::new(), mtu: n.mtu });
        g.mtu = g.mtu.max(n.mtu);
        if !g.addresses.contains(&net) {
            g.addresses.push(net);
        }
    }
    out
}

/// The `ip` commands that make segment `g.vni`'s gateway (run after the namespace
/// exists and the segment's bridge is up; each is idempotent).
pub fn setup_commands(g: &Gateway, ns: &str) -> Vec<Vec<String>> {
    let (port, up) = (port_name(g.vni), uplink_name(g.vni));
    let (host, inside) = link_addresses(g.vni);
    let mtu = g.mtu.to_string();
    let mut c: Vec<Vec<&str>> = Vec::new();
    let br = overlay::bridge_name(g.vni);
    let mac = mac(g.vni);
    let (host_a, inside_a, host_s) = (format!("{host}/31"), format!("{inside}/31"), host.to_string());
    c.push(vec!["link", "set", "dev", &port, "mtu", &mtu, "master", &br, "up"]);
    c.push(vec!["addr", "replace", &host_a, "dev", &up]);
    c.push(vec!["link", "set", "dev", &up, "up"]);
    c.push(vec!["-n", ns, "link", "set", "dev", "lo", "up"]);
    c.push(vec!["-n", ns, "link", "set", "dev", NS_PORT, "address", &mac, "mtu", &mtu, "up"]);
    c.push(vec!["-n", ns, "addr", "replace", &inside_a, "dev", NS_UPLINK]);
    c.push(vec!["-n", ns, "link", "set", "dev", NS_UPLINK, "up"]);
    c.push(vec!["-n", ns, "route", "replace", "default", "via", &host_s, "dev", NS_UPLINK]);
    let addrs: Vec<String> = g.addresses.iter().map(|a| a.to_string()).collect();
    let mut out: Vec<Vec<String>> = c.into_iter().map(|v| v.into_iter().map(str::to_string).collect()).collect();
    for a in addrs {
        out.push(["-n", ns, "addr", "replace", &a, "dev", NS_PORT].iter().map(|s| s.to_string()).collect());
    }
    out
}

/// The gateway namespace's own table: what leaves for the host is masqueraded to its link
/// address (so overlapping subnets of different segments never meet on the host).
pub fn namespace_ruleset() -> String {
    format!(
        "table ip {NS_TABLE} {{}}\ndelete table ip {NS_TABLE}\ntable ip {NS_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"{NS_UPLINK}\" masquerade\n  }}\n}}\n"
    )
}

/// The host's tables for these gateways: masquerading of their link addresses out of any
/// other interface, and the bridge rules keeping each gateway off the VXLAN devices.
/// With no gateways, both tables are removed.
pub fn host_ruleset(gws: &BTreeMap<u32, Gateway>) -> String {
    let mut s = String::new();
    for (family, t) in [("ip", NAT_TABLE), ("bridge", ISOLATION_TABLE)] {
        let _ = writeln!(s, "table {family} {t} {{}}\ndelete table {family} {t}");
    }
    if gws.is_empty() {
        return s;
    }
    let inside: Vec<String> = gws.keys().map(|v| link_addresses(*v).1.to_string()).collect();
    let _ = writeln!(
        s,
        "table ip {NAT_TABLE} {{\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr {{ {} }} oifname != \"ngh*\" masquerade\n  }}\n}}",
        inside.join(", ")
    );
    let _ = writeln!(s, "table bridge {ISOLATION_TABLE} {{");
    for (hook, dir, prio) in [("prerouting", "iifname", -250), ("forward", "oifname", -250)] {
        let _ = writeln!(s, "  chain {hook} {{\n    type filter hook {hook} priority {prio}; policy accept;");
        for g in gws.values() {
            let (vx, mac) = (overlay::vxlan_name(g.vni), mac(g.vni));
            let ips: Vec<String> = g.addresses.iter().map(|a| a.addr().to_string()).collect();
            let _ = writeln!(s, "    {dir} \"{vx}\" ether saddr {mac} drop");
            let _ = writeln!(s, "    {dir} \"{vx}\" ether daddr {mac} drop");
            let _ = writeln!(s, "    {dir} \"{vx}\" arp daddr ip {{ {} }} drop", ips.join(", "));
            let _ = writeln!(s, "    {dir} \"{vx}\" arp saddr ip {{ {} }} drop", ips.join(", "));
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

fn namespace_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// The gateway namespaces of node `suffix` on this host, by segment.
pub fn present(suffix: &str) -> BTreeMap<u32, String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_string();
            Some((vni_of_namespace(&n, suffix)?, n))
        })
        .collect()
}

async fn ip(args: &[String]) -> Result<(), String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    links::run("ip", &a).await.map(drop)
}

/// Makes segment `g.vni`'s gateway (its bridge must exist).
async fn ensure(g: &Gateway, suffix: &str) -> Result<(), String> {
    let ns = namespace(g.vni, suffix);
    let err = |e: String| format!("the NAT gateway of fabric segment {}: {e}", g.vni);
    // A name left without its namespace (the agent's mount namespace ended) is made again.
    if namespace_exists(&ns) && links::run("ip", &["-n", &ns, "link", "show", "lo"]).await.is_err() {
        let _ = links::run("ip", &["netns", "del", &ns]).await;
    }
    if !namespace_exists(&ns) {
        links::run("ip", &["netns", "add", &ns]).await.map_err(err)?;
    }
    let (port, up) = (port_name(g.vni), uplink_name(g.vni));
    if !links::exists(&port) {
        links::run("ip", &["link", "add", &port, "type", "veth", "peer", "name", NS_PORT, "netns", &ns]).await.map_err(err)?;
    }
    if !links::exists(&up) {
        links::run("ip", &["link", "add", &up, "type", "veth", "peer", "name", NS_UPLINK, "netns", &ns]).await.map_err(err)?;
    }
    // Addresses no longer wanted (a network that went) are dropped first.
    let have = links::run("ip", &["-n", &ns, "-4", "-j", "addr", "show", "dev", NS_PORT]).await.unwrap_or_default();
    let want: Vec<String> = g.addresses.iter().map(|a| a.to_string()).collect();
    for a in addresses(&have).into_iter().filter(|a| !want.contains(a)) {
        links::run("ip", &["-n", &ns, "addr", "del", &a, "dev", NS_PORT]).await.map_err(err)?;
    }
    for c in setup_commands(g, &ns) {
        ip(&c).await.map_err(err)?;
    }
    links::run("ip", &["netns", "exec", &ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]).await.map_err(err)?;
    nft_in(&ns, &namespace_ruleset()).await.map_err(err)
}

/// `addr/prefix` of every IPv4 address in `ip -4 -j addr show`'s output.
fn addresses(json: &str) -> Vec<String> {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    links
        .iter()
        .flat_map(|l| l.get("addr_info").and_then(|a| a.as_array()).cloned().unwrap_or_default())
        .filter_map(|a| Some(format!("{}/{}", a.get("local")?.as_str()?, a.get("prefixlen")?.as_u64()?)))
        .collect()
}

async fn nft_in(ns: &str, script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run nft in {ns}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("nft: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("nft in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim())) }
}

/// Removes segment `vni`'s gateway of node `suffix` (its namespace, and with it its veths).
pub async fn remove(vni: u32, suffix: &str) {
    let ns = namespace(vni, suffix);
    if namespace_exists(&ns) {
        if let Err(e) = links::run("ip", &["netns", "del", &ns]).await {
            tracing::warn!(vni, namespace = %ns, error = %e, "removing the NAT gateway's namespace");
        }
        // Still named (its mount held elsewhere): detach the mount and remove the name.
        if namespace_exists(&ns) {
            let path = format!("/run/netns/{ns}");
            let _ = links::run("umount", &["-l", &path]).await;
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(vni, namespace = %ns, error = %e, "the NAT gateway's namespace keeps its name");
            }
        }
    }
    links::delete(&port_name(vni)).await;
    links::delete(&uplink_name(vni)).await;
}

/// Makes the host's gateways `gws` (each segment's bridge must exist) — exactly these
/// when `prune` — with the host's forwarding and tables to match; errors are per
/// gateway, collected. Whether the host tables hold gateways now.
pub async fn sync(gws: &BTreeMap<u32, Gateway>, suffix: &str, tables_written: bool, prune: bool) -> Result<bool, String> {
    let mut errors = Vec::new();
    for (vni, _) in present(suffix).into_iter().filter(|(v, _)| prune && !gws.contains_key(v)) {
        tracing::info!(vni, "removing the NAT gateway no fabric NIC here needs any more");
        remove(vni, suffix).await;
    }
    if !gws.is_empty() {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| format!("switching on IPv4 forwarding: {e}"))?;
    }
    for g in gws.values() {
        if let Err(e) = ensure(g, suffix).await {
            errors.push(e);
        }
    }
    let mut written = tables_written;
    if !gws.is_empty() || tables_written {
        nft(&host_ruleset(gws)).await.map_err(|e| format!("the fabric NAT tables: {e}"))?;
        written = !gws.is_empty();
    }
    if errors.is_empty() { Ok(written) } else { Err(errors.join("; ")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nic(v: serde_json::Value) -> nereid_types::agent::NicDef {
        let mut n = json!({"mac": "90:b8:d0:11:22:33", "interface": "net0", "vlan_id": 5, "nic_tag": "sdc_overlay",
            "mtu": 1450, "primary": true, "model": "virtio", "ip": "10.1.0.5", "netmask": "255.255.255.0", "gateway": "10.1.0.1"});
        for (k, x) in v.as_object().into_iter().flatten() {
            n[k] = x.clone();
        }
        serde_json::from_value(n).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_macs_and_link_addresses_are_derived_from_the_segment() {
        assert_eq!(namespace(0x1a2b, "4026532281"), "nfgw-1a2b-4026532281");
        assert_eq!(vni_of_namespace("nfgw-1a2b-4026532281", "4026532281"), Some(0x1a2b));
        assert_eq!(vni_of_namespace("nfgw-1a2b-4026532281", "4026532282"), None, "another node's");
        assert_eq!(vni_of_namespace("nereid-x-1", "1"), None);
        assert_eq!((port_name(0xffffff), uplink_name(0x12)), ("ngbffffff".to_string(), "ngh12".to_string()));
        assert_eq!(mac(0x00a1b2c3), "02:4e:47:a1:b2:c3");
        let (h, n) = link_addresses(0);
        assert_eq!((h.to_string(), n.to_string()), ("169.254.1.0".to_string(), "169.254.1.1".to_string()));
        for v in [1u32, 77, 4096, 0xffffff, 21759 - 128, 21759 - 129, 32510, 32511] {
            let (h, n) = link_addresses(v);
            assert!(Ipv4Net::new(h, 31).is_ok_and(|net| net.contains(&n) && net.network() == h), "{v}");
            assert!(
                u32::from(h) >= u32::from(Ipv4Addr::new(169, 254, 1, 0)) && u32::from(n) <= u32::from(Ipv4Addr::new(169, 254, 254, 255))
            );
            assert_ne!(n, Ipv4Addr::new(169, 254, 169, 254));
            assert_ne!(h, Ipv4Addr::new(169, 254, 169, 254));
        }
        assert_ne!(link_addresses(1), link_addresses(2));
    }

    #[test]
    fn only_internet_nat_fabric_nics_get_a_gateway() {
        let nics = [
            nic(json!({"vni": 7, "internet_nat": true})),
            nic(json!({"vni": 7, "internet_nat": true, "mac": "90:b8:d0:11:22:34", "ip": "10.1.0.6", "mtu": 1400})),
            nic(json!({"vni": 7, "internet_nat": true, "gateway": "10.2.0.1", "netmask": "255.255.0.0"})),
            nic(json!({"vni": 8})),
            nic(json!({"internet_nat": true})),
            nic(json!({"vni": 9, "internet_nat": true, "gateway": null})),
        ];
        let w = wanted(&nics);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), vec![7]);
        let g = &w[&7];
        assert_eq!(g.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(), vec!["10.1.0.1/24", "10.2.0.1/16"]);
        assert_eq!(g.mtu, 1450);
    }

    #[test]
    fn the_gateway_namespace_is_wired_to_the_bridge_and_the_host() {
        let g = Gateway { vni: 0x1a2b, addresses: vec!["10.1.0.1/24".parse().unwrap_or_else(|e| panic!("{e}"))], mtu: 1450 };
        let cmds: Vec<String> = setup_commands(&g, "nfgw-1a2b-9").iter().map(|c| c.join(" ")).collect();
        let (h, n) = link_addresses(0x1a2b);
        for want in [
            "link set dev ngb1a2b mtu 1450 master nfb1a2b up".to_string(),
            format!("addr replace {h}/31 dev ngh1a2b"),
            "-n nfgw-1a2b-9 link set dev fab0 address 02:4e:47:00:1a:2b mtu 1450 up".to_string(),
            format!("-n nfgw-1a2b-9 addr replace {n}/31 dev up0"),
            format!("-n nfgw-1a2b-9 route replace default via {h} dev up0"),
            "-n nfgw-1a2b-9 addr replace 10.1.0.1/24 dev fab0".to_string(),
        ] {
            assert!(cmds.contains(&want), "missing {want:?} in {cmds:#?}");
        }
        assert!(namespace_ruleset().contains("oifname \"up0\" masquerade"));
    }

    #[test]
    fn host_tables_masquerade_the_gateways_and_keep_them_off_the_vxlan_devices() {
        let mut gws = BTreeMap::new();
        gws.insert(7, Gateway { vni: 7, addresses: vec!["10.1.0.1/24".parse().unwrap_or_else(|e| panic!("{e}"))], mtu: 1450 });
        let s = host_ruleset(&gws);
        let n = link_addresses(7).1;
        for want in [
            format!("ip saddr {{ {n} }} oifname != \"ngh*\" masquerade"),
            "iifname \"nvx7\" ether saddr 02:4e:47:00:00:07 drop".into(),
            "oifname \"nvx7\" ether daddr 02:4e:47:00:00:07 drop".into(),
            "oifname \"nvx7\" arp daddr ip { 10.1.0.1 } drop".into(),
            "iifname \"nvx7\" arp daddr ip { 10.1.0.1 } drop".into(),
        ] {
            assert!(s.contains(&want), "missing {want:?} in\n{s}");
        }
        let empty = host_ruleset(&BTreeMap::new());
        assert_eq!(
            empty,
            "table ip nereid_fabnat {}\ndelete table ip nereid_fabnat\ntable bridge nereid_fabgw {}\ndelete table bridge nereid_fabgw\n"
        );
        assert_eq!(addresses(r#"[{"addr_info":[{"local":"10.1.0.1","prefixlen":24}]}]"#), vec!["10.1.0.1/24"]);
    }
}
