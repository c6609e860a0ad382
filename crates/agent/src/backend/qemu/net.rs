//! A VM's NICs on the host. The agent's `--nic-tag TAG=IFACE` says which interface
//! carries each nic tag (default: an interface named like the tag). A NIC whose tag's
//! interface is a Linux bridge gets a tap device plugged into it (`nt<vm uuid
//! prefix><index>`); otherwise the NIC is isolated (the guest sees a link with nothing
//! behind it), and the agent says so in its log. DHCP and anti-spoofing filters come with
//! the networking work; this module only wires the link.

use std::path::Path;

use nereid_types::agent::Definition;

use super::argv::NetAttach;

/// The tap device of NIC `i` (≤ 15 characters, as Linux requires).
pub fn tap_name(def: &Definition, i: usize) -> String {
    format!("nt{}{i:x}", &def.uuid.simple().to_string()[..8])
}

fn is_bridge(iface: &str) -> bool {
    !iface.contains('/') && !iface.is_empty() && Path::new("/sys/class/net").join(iface).join("bridge").is_dir()
}

/// The interface carrying `tag` on this host.
fn interface<'a>(tags: &'a [(String, String)], tag: &'a str) -> &'a str {
    tags.iter().find(|(t, _)| t == tag).map(|(_, i)| i.as_str()).unwrap_or(tag)
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip").args(args).output().await.map_err(|e| format!("could not run ip: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())) }
}

/// Makes the host side of every NIC; returns how each attaches, in `def.nics` order.
pub async fn attach(def: &Definition, tags: &[(String, String)]) -> Result<Vec<NetAttach>, String> {
    let mut out = Vec::new();
    for (i, n) in def.nics.iter().enumerate() {
        let bridge = interface(tags, &n.nic_tag);
        if !is_bridge(bridge) {
            tracing::warn!(vm = %def.uuid, nic = %n.mac, tag = %n.nic_tag, "nic tag {:?} is not on a bridge here ({bridge:?}): the NIC is isolated", n.nic_tag);
            out.push(NetAttach::Isolated);
            continue;
        }
        let tap = tap_name(def, i);
        let _ = ip(&["link", "del", &tap]).await;
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).await?;
        let mtu = n.mtu.to_string();
        ip(&["link", "set", &tap, "master", bridge, "mtu", &mtu, "up"]).await?;
        out.push(NetAttach::Tap(tap));
    }
    Ok(out)
}

/// Removes the taps `attach` made (those that exist).
pub async fn detach(def: &Definition) {
    for i in 0..def.nics.len() {
        let tap = tap_name(def, i);
        if Path::new("/sys/class/net").join(&tap).exists() {
            let _ = ip(&["link", "del", &tap]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_linux() {
        let def: Definition = serde_json::from_value(serde_json::json!({
            "uuid": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10", "brand": "bhyve", "owner_uuid": uuid::Uuid::nil(),
            "ram": 1, "vcpus": 1, "disks": [], "nics": []}))
        .unwrap();
        assert_eq!(tap_name(&def, 11), "nt6f3d3f1cb");
        assert!(tap_name(&def, 15).len() <= 15);
        assert!(!is_bridge("no-such-bridge-here") && !is_bridge("lo"));
        let tags = vec![("external".to_string(), "br0".to_string())];
        assert_eq!((interface(&tags, "external"), interface(&tags, "admin")), ("br0", "admin"));
    }
}
