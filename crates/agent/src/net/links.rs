//! Links, bridges and taps on the host, through iproute2 (`ip`, `bridge`). Every function
//! is idempotent: it makes the host look a certain way, whatever it looked like before.
//!
//! VLANs: bridges Nereid makes filter VLANs (`vlan_filtering 1`), so networks with
//! different VLAN ids share one bridge per nic tag. A VM's tap is an access port: untagged
//! towards the guest, in the NIC's VLAN on the bridge (VLAN 0, "untagged", is the bridge's
//! default VLAN 1). An operator's own bridge without VLAN filtering takes VLAN 0 NICs only.

use std::path::Path;

use serde_json::Value;

/// The bridge VLAN that carries a network's `vlan_id` (0 = untagged = the default VLAN 1).
pub fn bridge_vid(vlan_id: u16) -> u16 {
    if vlan_id == 0 { 1 } else { vlan_id }
}

pub async fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(cmd).args(args).output().await.map_err(|e| format!("could not run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

async fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).await.map(drop)
}

fn sys(iface: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(iface)
}

/// Whether a network interface of this name exists.
pub fn exists(iface: &str) -> bool {
    valid_name(iface) && sys(iface).exists()
}

/// Linux interface names: 1–15 bytes, no `/`, no whitespace.
pub fn valid_name(iface: &str) -> bool {
    !iface.is_empty() && iface.len() <= 15 && !iface.contains(['/', ' ', '\t', '\n', ':']) && iface != "." && iface != ".."
}

pub fn is_bridge(iface: &str) -> bool {
    exists(iface) && sys(iface).join("bridge").is_dir()
}

pub fn vlan_filtering(bridge: &str) -> bool {
    std::fs::read_to_string(sys(bridge).join("bridge/vlan_filtering")).map(|s| s.trim() == "1").unwrap_or(false)
}

/// The bridge an interface is a port of.
pub fn master(iface: &str) -> Option<String> {
    std::fs::read_link(sys(iface).join("master")).ok()?.file_name()?.to_str().map(str::to_string)
}

pub fn mtu(iface: &str) -> Option<u32> {
    std::fs::read_to_string(sys(iface).join("mtu")).ok()?.trim().parse().ok()
}

pub fn is_up(iface: &str) -> bool {
    std::fs::read_to_string(sys(iface).join("flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 == 1)
}

/// The largest MTU the link's driver accepts (`ip -d -j link show`'s `max_mtu`).
pub async fn max_mtu(iface: &str) -> Option<u32> {
    let out = run("ip", &["-d", "-j", "link", "show", "dev", iface]).await.ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v.get(0)?.get("max_mtu")?.as_u64().map(|m| m as u32)
}

/// Interfaces whose names start with `prefix`.
pub fn named_like(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.starts_with(prefix)).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Makes a VLAN-filtering bridge named `name` if there is none, and brings it up.
pub async fn ensure_bridge(name: &str) -> Result<(), String> {
    if !exists(name) {
        ip(&["link", "add", "name", name, "type", "bridge", "vlan_filtering", "1"]).await?;
    } else if !is_bridge(name) {
        return Err(format!("{name} exists and is not a bridge"));
    }
    ip(&["link", "set", name, "up"]).await
}

/// Sets a link's MTU and reads it back: a driver that silently keeps another MTU is an error.
pub async fn set_mtu(iface: &str, want: u32) -> Result<(), String> {
    if mtu(iface) == Some(want) {
        return Ok(());
    }
    let set = ip(&["link", "set", "dev", iface, "mtu", &want.to_string()]).await;
    match (set, mtu(iface)) {
        (_, Some(got)) if got == want => Ok(()),
        (Err(e), got) => Err(format!("{iface} refused MTU {want} (it has {}): {e}", got.map(|m| m.to_string()).unwrap_or("none".into()))),
        (Ok(()), got) => Err(format!("{iface} accepted MTU {want} but kept {}", got.map(|m| m.to_string()).unwrap_or("none".into()))),
    }
}

/// Removes an interface if it exists.
pub async fn delete(iface: &str) {
    if exists(iface) {
        let _ = ip(&["link", "del", iface]).await;
    }
}

/// Makes `tap` a port of `bridge` in `vlan_id`, with `mtu`, up. An existing tap (a running
/// VM's, after an agent restart or a bridge re-creation) is re-plugged, not re-made.
pub async fn ensure_tap(tap: &str, bridge: &str, mtu_want: u32, vlan_id: u16) -> Result<(), String> {
    if !exists(tap) {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
    }
    if master(tap).as_deref() != Some(bridge) {
        ip(&["link", "set", "dev", tap, "master", bridge]).await?;
    }
    if mtu(tap) != Some(mtu_want) {
        ip(&["link", "set", "dev", tap, "mtu", &mtu_want.to_string()]).await?;
    }
    if vlan_filtering(bridge) {
        let vid = bridge_vid(vlan_id);
        // An access port: exactly one VLAN, untagged towards the guest.
        let ports: Value = serde_json::from_str(&run("bridge", &["-j", "vlan", "show", "dev", tap]).await?).unwrap_or(Value::Null);
        let have: Vec<u64> = ports
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p.get("vlans").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|v| v.get("vlan").and_then(Value::as_u64))
            .collect();
        for v in have.iter().filter(|v| **v != u64::from(vid)) {
            run("bridge", &["vlan", "del", "dev", tap, "vid", &v.to_string()]).await?;
        }
        if !have.contains(&u64::from(vid)) {
            run("bridge", &["vlan", "add", "dev", tap, "vid", &vid.to_string(), "pvid", "untagged"]).await?;
        }
    } else if vlan_id != 0 {
        return Err(format!(
            "bridge {bridge} does not filter VLANs, so it cannot carry VLAN {vlan_id}: switch on its vlan_filtering, or let Nereid make the bridge"
        ));
    }
    ip(&["link", "set", "dev", tap, "up"]).await
}

/// Lets `port` (an uplink) carry `vlan_id` tagged (VLAN 0 stays the untagged default).
pub async fn trunk_vlan(port: &str, vlan_id: u16) -> Result<(), String> {
    if vlan_id == 0 {
        return Ok(());
    }
    run("bridge", &["vlan", "add", "dev", port, "vid", &vlan_id.to_string()]).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_vlans() {
        assert!(valid_name("nereid0") && valid_name("eth1") && !valid_name("a/b") && !valid_name("") && !valid_name("sixteen-chars-xx"));
        assert_eq!((bridge_vid(0), bridge_vid(5)), (1, 5));
        assert!(exists("lo") && !is_bridge("lo") && !exists("no-such-if"));
        assert_eq!(mtu("lo"), Some(65536));
    }
}
