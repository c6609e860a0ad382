//! Fabric overlays: each VXLAN segment (a fabric VLAN, `NicDef.vni`) with a NIC on this
//! node is a bridge of its own with a VXLAN device as its uplink over the underlay nic
//! tag (`--fabric-underlay-tag`, by default [`DEFAULT_UNDERLAY_TAG`]).
//!
//! ```text
//!   VM tap ─┐
//!   VM tap ─┤ nfb<vni hex> (bridge, the NICs' MTU)
//!   gateway ┤   (fabric_gw: the NAT gateway's port, when a network has internet_nat)
//!           └ nvx<vni hex> (vxlan id <vni>, dstport 4789, local <underlay address>,
//!                           dev <underlay link>, MAC learning on)
//!                 FDB 00:00:00:00:00:00 dst <peer>  ← NetPolicy.overlays[vni], exactly
//! ```
//! Broadcast and unknown unicast go to every peer (head-end replication); replies are
//! learned. Devices are made on demand when a NIC of the segment is plugged and removed
//! when the last one leaves (or, at agent start, when no running VM has one).
//! Names and FDB changes are pure functions; the rest runs `ip`/`bridge` here.

use std::collections::BTreeSet;

use serde_json::Value;

use super::links;

pub use nereid_types::fabric::{DEFAULT_UNDERLAY_TAG, OVERLAY_TAG, VXLAN_OVERHEAD, VXLAN_PORT};

/// The prefix of every segment bridge.
pub const BRIDGE_PREFIX: &str = "nfb";
/// The prefix of every VXLAN device.
pub const VXLAN_PREFIX: &str = "nvx";

/// The bridge of segment `vni` (≤ 9 characters).
pub fn bridge_name(vni: u32) -> String {
    format!("{BRIDGE_PREFIX}{vni:x}")
}

/// The VXLAN device of segment `vni`.
pub fn vxlan_name(vni: u32) -> String {
    format!("{VXLAN_PREFIX}{vni:x}")
}

/// The segment a device name of `prefix` belongs to (`nfb1a2b` → 0x1a2b).
pub fn vni_of(name: &str, prefix: &str) -> Option<u32> {
    let hex = name.strip_prefix(prefix)?;
    if hex.is_empty() || hex.len() > 6 || !hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Where the VXLAN traffic goes out: the underlay's interface and this node's address on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub dev: String,
    pub local: std::net::Ipv4Addr,
}

/// The `ip link add` arguments of segment `vni`'s VXLAN device.
pub fn vxlan_args(vni: u32, u: &Underlay, mtu: u32) -> Vec<String> {
    [
        "link",
        "add",
        &vxlan_name(vni),
        "mtu",
        &mtu.to_string(),
        "type",
        "vxlan",
        "id",
        &vni.to_string(),
        "dstport",
        &VXLAN_PORT.to_string(),
        "local",
        &u.local.to_string(),
        "dev",
        &u.dev,
        "learning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The all-zero (flood) FDB entries' destinations in `bridge -j fdb show dev …`'s output.
pub fn flood_peers(json: &str) -> BTreeSet<String> {
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(json) else { return BTreeSet::new() };
    entries
        .iter()
        .filter(|e| e.get("mac").and_then(Value::as_str) == Some("00:00:00:00:00:00"))
        .filter_map(|e| e.get("dst").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// What to append and delete so the flood entries are exactly `wanted` (never this node).
pub fn fdb_changes(current: &BTreeSet<String>, wanted: &[String], local: &str) -> (Vec<String>, Vec<String>) {
    let wanted: BTreeSet<String> =
        wanted.iter().filter(|p| p.as_str() != local && p.parse::<std::net::Ipv4Addr>().is_ok()).cloned().collect();
    (wanted.difference(current).cloned().collect(), current.difference(&wanted).cloned().collect())
}

/// The VXLAN device a vxlan link was made with (`ip -d -j link show`): (id, local, dev ifindex).
fn vxlan_info(json: &str) -> Option<(u64, String, u64)> {
    let v: Value = serde_json::from_str(json).ok()?;
    let d = v.get(0)?.get("linkinfo")?.get("info_data")?;
    Some((d.get("id")?.as_u64()?, d.get("local")?.as_str()?.to_string(), d.get("link").and_then(Value::as_u64).unwrap_or(0)))
}

/// Makes segment `vni`'s bridge and VXLAN device (MTU `mtu`) and sets its flood entries
/// to `peers`; returns the bridge.
pub async fn ensure(vni: u32, u: &Underlay, mtu: u32, peers: &[String]) -> Result<String, String> {
    let (br, vx) = (bridge_name(vni), vxlan_name(vni));
    links::ensure_bridge(&br).await?;
    if links::exists(&vx) {
        // Made over another underlay (the node's address changed): made again.
        let info = links::run("ip", &["-d", "-j", "link", "show", "dev", &vx]).await.ok().and_then(|j| vxlan_info(&j));
        let ifindex = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", u.dev)).ok().and_then(|s| s.trim().parse().ok());
        if info.is_none_or(|(id, local, link)| id != u64::from(vni) || local != u.local.to_string() || Some(link) != ifindex) {
            tracing::info!(vni, dev = %vx, "the VXLAN device was made for another underlay; making it again");
            links::delete(&vx).await;
        }
    }
    if !links::exists(&vx) {
        let args = vxlan_args(vni, u, mtu);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        links::run("ip", &args).await.map_err(|e| {
            format!(
                "fabric segment {vni}: making its VXLAN device over {} ({}): {e} (the underlay must carry MTU {mtu} + {VXLAN_OVERHEAD})",
                u.dev, u.local
            )
        })?;
    }
    for dev in [&vx, &br] {
        if links::mtu(dev) != Some(mtu) {
            links::set_mtu(dev, mtu).await.map_err(|e| format!("fabric segment {vni}: {e}"))?;
        }
    }
    if links::master(&vx).as_deref() != Some(br.as_str()) {
        links::run("ip", &["link", "set", "dev", &vx, "master", &br]).await?;
    }
    links::run("ip", &["link", "set", "dev", &vx, "up"]).await?;
    set_peers(vni, &u.local.to_string(), peers).await?;
    Ok(br)
}

/// Makes the flood entries of segment `vni`'s VXLAN device exactly `peers`.
pub async fn set_peers(vni: u32, local: &str, peers: &[String]) -> Result<(), String> {
    let vx = vxlan_name(vni);
    if !links::exists(&vx) {
        return Ok(());
    }
    let current = flood_peers(&links::run("bridge", &["-j", "fdb", "show", "dev", &vx]).await?);
    let (add, del) = fdb_changes(&current, peers, local);
    for p in &del {
        links::run("bridge", &["fdb", "del", "00:00:00:00:00:00", "dev", &vx, "dst", p]).await?;
    }
    for p in &add {
        links::run("bridge", &["fdb", "append", "00:00:00:00:00:00", "dev", &vx, "dst", p]).await?;
    }
    if !add.is_empty() || !del.is_empty() {
        tracing::info!(vni, added = ?add, removed = ?del, "fabric segment peers updated");
    }
    Ok(())
}

/// Removes segment `vni`'s VXLAN device and bridge.
pub async fn remove(vni: u32) {
    links::delete(&vxlan_name(vni)).await;
    links::delete(&bridge_name(vni)).await;
}

/// The segments that have a bridge or VXLAN device on this host.
pub fn present() -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for (prefix, kind) in [(BRIDGE_PREFIX, true), (VXLAN_PREFIX, false)] {
        for n in links::named_like(prefix) {
            if let Some(v) = vni_of(&n, prefix)
                && (!kind || links::is_bridge(&n))
            {
                out.insert(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_and_map_back_to_their_segment() {
        assert_eq!((bridge_name(0x1234), vxlan_name(0xffffff)), ("nfb1234".to_string(), "nvxffffff".to_string()));
        assert!(bridge_name(nereid_types::fabric::MAX_VNI).len() <= 15);
        assert_eq!(vni_of("nfb1234", BRIDGE_PREFIX), Some(0x1234));
        assert_eq!(vni_of("nvxffffff", VXLAN_PREFIX), Some(0xffffff));
        for bad in ["nfb", "nfbxyz", "nfb1234567", "nfbAB", "nb-x", "nvx12"] {
            assert_eq!(vni_of(bad, BRIDGE_PREFIX), None, "{bad}");
        }
    }

    #[test]
    fn the_vxlan_device_goes_over_the_underlay_to_port_4789_and_learns() {
        let u = Underlay { dev: "nb-sdc_underla".into(), local: "192.0.2.5".parse().unwrap_or_else(|e| panic!("{e}")) };
        assert_eq!(
            vxlan_args(0x1a2b, &u, 1450).join(" "),
            "link add nvx1a2b mtu 1450 type vxlan id 6699 dstport 4789 local 192.0.2.5 dev nb-sdc_underla learning"
        );
    }

    #[test]
    fn flood_entries_become_exactly_the_policy_peers() {
        let out = r#"[{"mac":"00:00:00:00:00:00","dst":"192.0.2.6","flags":["self"],"state":"permanent"},
            {"mac":"00:00:00:00:00:00","dst":"192.0.2.9","flags":["self"],"state":"permanent"},
            {"mac":"6a:1b:00:11:22:33","dst":"192.0.2.6","flags":["self"]},
            {"mac":"6a:1b:00:11:22:34","master":"nfb1a2b","state":"permanent"}]"#;
        let current = flood_peers(out);
        assert_eq!(current, ["192.0.2.6".to_string(), "192.0.2.9".to_string()].into());
        let wanted = vec!["192.0.2.6".to_string(), "192.0.2.7".to_string(), "192.0.2.5".to_string(), "not-an-ip".to_string()];
        let (add, del) = fdb_changes(&current, &wanted, "192.0.2.5");
        assert_eq!((add, del), (vec!["192.0.2.7".to_string()], vec!["192.0.2.9".to_string()]));
        assert_eq!(fdb_changes(&current, &[], "192.0.2.5").1.len(), 2, "an empty policy removes every peer");
        assert!(flood_peers("not json").is_empty());
    }

    #[test]
    fn an_existing_vxlan_device_is_read_back() {
        let j =
            r#"[{"ifname":"nvx1a2b","linkinfo":{"info_kind":"vxlan","info_data":{"id":6699,"local":"192.0.2.5","link":4,"port":4789}}}]"#;
        assert_eq!(vxlan_info(j), Some((6699, "192.0.2.5".into(), 4)));
    }
}
