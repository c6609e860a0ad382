//! A VM's NICs on the host: each NIC whose `nic_tag` names a Linux bridge on this host
//! gets a tap device plugged into that bridge (`nt<vm uuid prefix><index>`); a NIC whose
//! tag has no bridge here gets an isolated NIC (the guest sees a link with nothing behind
//! it), and the agent says so in its log. DHCP and anti-spoofing filters come with the
//! networking work; this module only wires the link.

use std::path::Path;

use nereid_types::agent::Definition;

use super::argv::NetAttach;

/// The tap device of NIC `i` (≤ 15 characters, as Linux requires).
pub fn tap_name(def: &Definition, i: usize) -> String {
    format!("nt{}{i:x}", &def.uuid.simple().to_string()[..8])
}

fn has_bridge(tag: &str) -> bool {
    !tag.contains('/') && Path::new("/sys/class/net").join(tag).join("bridge").is_dir()
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip").args(args).output().await.map_err(|e| format!("could not run ip: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())) }
}

/// Makes the host side of every NIC; returns how each attaches, in `def.nics` order.
pub async fn attach(def: &Definition) -> Result<Vec<NetAttach>, String> {
    let mut out = Vec::new();
    for (i, n) in def.nics.iter().enumerate() {
        if !has_bridge(&n.nic_tag) {
            tracing::warn!(vm = %def.uuid, nic = %n.mac, tag = %n.nic_tag, "no bridge named {:?} on this host: the NIC is isolated", n.nic_tag);
            out.push(NetAttach::Isolated);
            continue;
        }
        let tap = tap_name(def, i);
        let _ = ip(&["link", "del", &tap]).await;
        ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).await?;
        let mtu = n.mtu.to_string();
        ip(&["link", "set", &tap, "master", &n.nic_tag, "mtu", &mtu, "up"]).await?;
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
        assert!(!has_bridge("no-such-bridge-here"));
    }
}
