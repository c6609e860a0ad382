//! Links, bridges and taps on the host, through iproute2 (`ip`, `bridge`). Every function
//! is idempotent: it makes the host look a certain way, whatever it looked like before.
//!
//! VLANs, the "traditional" Linux way (as Proxmox's `vmbr0v7`): VLAN 0 ("untagged") is
//! the nic tag's bridge itself; VLAN N is a bridge of its own, [`vlan_bridge`], whose
//! uplink — when the tag has one — is an 802.1Q interface on the tag's link or bridge.
//! A VM's tap is an access port on its VLAN's bridge: the guest never sees tags, and
//! VLANs meet nowhere on the host. (Bridge VLAN filtering would share one bridge, but
//! kernels built without CONFIG_BRIDGE_VLAN_FILTERING — common in VMs and minimal
//! builds — refuse it; separate bridges work on every kernel with a bridge.)

use std::path::Path;

use serde_json::Value;

/// The bridge that carries VLAN `vlan_id` of a tag whose (VLAN 0) bridge is `base`.
pub fn vlan_bridge(base: &str, vlan_id: u16) -> String {
    if vlan_id == 0 {
        return base.to_string();
    }
    let suffix = format!("v{vlan_id}");
    let keep = 15usize.saturating_sub(suffix.len()).min(base.len());
    format!("{}{suffix}", &base[..keep])
}

/// The 802.1Q interface carrying VLAN `vlan_id` of `link`.
pub fn vlan_port(link: &str, vlan_id: u16) -> String {
    let suffix = format!(".{vlan_id}");
    let keep = 15usize.saturating_sub(suffix.len()).min(link.len());
    format!("{}{suffix}", &link[..keep])
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

/// The first global IPv4 address of an interface.
pub async fn ipv4_address(iface: &str) -> Option<std::net::Ipv4Addr> {
    let out = run("ip", &["-4", "-j", "addr", "show", "dev", iface, "scope", "global"]).await.ok()?;
    first_ipv4(&out)
}

/// The first address in `ip -4 -j addr show`'s output.
pub fn first_ipv4(json: &str) -> Option<std::net::Ipv4Addr> {
    let v: Value = serde_json::from_str(json).ok()?;
    v.as_array()?
        .iter()
        .flat_map(|l| l.get("addr_info").and_then(Value::as_array).into_iter().flatten())
        .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
        .find_map(|a| a.get("local")?.as_str()?.parse().ok())
}

/// Interfaces whose names start with `prefix`.
pub fn named_like(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.starts_with(prefix)).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Makes a bridge named `name` if there is none, and brings it up.
pub async fn ensure_bridge(name: &str) -> Result<(), String> {
    if !exists(name) {
        ip(&["link", "add", "name", name, "type", "bridge"]).await?;
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

/// The uid a tap belongs to (`None`: anyone with `CAP_NET_ADMIN` only).
pub fn tap_owner(tap: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{tap}/owner")).ok()?.trim().parse().ok()
}

/// The clone device every tap is opened through: its mode lets anyone open it, as the
/// distributions' udev rules do — a process without `CAP_NET_ADMIN` can then attach only to
/// a tap made for its own uid, which is how an unprivileged QEMU reaches its NICs.
pub fn open_tun_to_owners() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dev = std::path::Path::new("/dev/net/tun");
    let mode = std::fs::metadata(dev).map_err(|e| format!("{}: {e}", dev.display()))?.permissions().mode();
    if mode & 0o666 != 0o666 {
        std::fs::set_permissions(dev, std::fs::Permissions::from_mode((mode & 0o7777) | 0o666))
            .map_err(|e| format!("letting unprivileged QEMUs open {}: {e}", dev.display()))?;
        tracing::info!("made /dev/net/tun mode 0666 (the distributions' default): guests' QEMUs open their own taps through it");
    }
    Ok(())
}

/// Makes `tap` a port of `bridge`, with `mtu`, up. An existing tap (a running VM's, after
/// an agent restart or a bridge re-creation) is re-plugged, not re-made — unless it
/// belongs to another uid than `owner` (the uid of the QEMU that will open it).
pub async fn ensure_tap(tap: &str, bridge: &str, mtu_want: u32, owner: Option<u32>) -> Result<(), String> {
    if let Some(u) = owner
        && exists(tap)
        && tap_owner(tap) != Some(u)
    {
        ip(&["link", "del", tap]).await?;
    }
    if !exists(tap) {
        match owner {
            Some(u) => {
                let u = u.to_string();
                ip(&["tuntap", "add", "dev", tap, "mode", "tap", "user", &u, "group", &u]).await?
            }
            None => ip(&["tuntap", "add", "dev", tap, "mode", "tap"]).await?,
        };
    }
    if master(tap).as_deref() != Some(bridge) {
        ip(&["link", "set", "dev", tap, "master", bridge]).await?;
    }
    if mtu(tap) != Some(mtu_want) {
        ip(&["link", "set", "dev", tap, "mtu", &mtu_want.to_string()]).await?;
    }
    ip(&["link", "set", "dev", tap, "up"]).await
}

/// Makes the 802.1Q interface for `vlan_id` on `link` a port of `bridge`.
pub async fn ensure_vlan_port(link: &str, vlan_id: u16, bridge: &str) -> Result<(), String> {
    let port = vlan_port(link, vlan_id);
    if !exists(&port) {
        ip(&["link", "add", "link", link, "name", &port, "type", "vlan", "id", &vlan_id.to_string()])
            .await
            .map_err(|e| format!("{e} (does this kernel support 802.1Q VLANs?)"))?;
    }
    if master(&port).as_deref() != Some(bridge) {
        ip(&["link", "set", "dev", &port, "master", bridge]).await?;
    }
    ip(&["link", "set", "dev", &port, "up"]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_vlans() {
        assert!(valid_name("nereid0") && valid_name("eth1") && !valid_name("a/b") && !valid_name("") && !valid_name("sixteen-chars-xx"));
        assert_eq!(
            (vlan_bridge("nereid0", 0), vlan_bridge("nereid0", 7), vlan_bridge("a-long-bridge-x", 4094)),
            ("nereid0".into(), "nereid0v7".into(), "a-long-briv4094".into())
        );
        assert_eq!(vlan_port("eth1", 7), "eth1.7");
        assert!(exists("lo") && !is_bridge("lo") && !exists("no-such-if"));
        assert_eq!(mtu("lo"), Some(65536));
        let out = r#"[{"ifindex":3,"ifname":"nb-x","addr_info":[{"family":"inet","local":"192.0.2.7","prefixlen":24,"scope":"global"},
            {"family":"inet","local":"192.0.2.8","prefixlen":24,"scope":"global"}]}]"#;
        assert_eq!(first_ipv4(out), Some("192.0.2.7".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert_eq!(first_ipv4("[]"), None);
        assert_eq!(first_ipv4("[{}]"), None);
    }
}
