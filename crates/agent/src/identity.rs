//! Which server this is: a UUID that survives reinstalls of the same board.
//!
//! Sources, in order (the one used is reported):
//! 1. the UUID pinned in the agent's data directory by an earlier start;
//! 2. the SMBIOS system UUID (`/sys/class/dmi/id/product_uuid`), as Triton uses;
//! 3. a UUID derived from the board serial number (the same board gives the same UUID);
//! 4. a UUID derived from `/etc/machine-id`;
//! 5. a random UUID.
//!
//! Whatever is chosen is pinned (`server.json`) so later starts keep it even if the BMC
//! starts reporting another UUID (Triton's TRITON-2520 duplicate-server problem); when the
//! hardware's UUID no longer matches the pinned one, the agent says so.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for UUIDs derived from serial numbers and machine ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6e65_7265_6964_4e53_8000_0000_0000_0001);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uuid: Uuid,
    /// `smbios`, `board-serial`, `machine-id`, `random` (how it was first chosen).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// Where the hardware facts come from (a directory like `/sys/class/dmi/id`, and `/etc/machine-id`).
pub struct Probe<'a> {
    pub dmi_dir: &'a Path,
    pub machine_id: &'a Path,
}

impl Default for Probe<'static> {
    fn default() -> Self {
        Probe { dmi_dir: Path::new("/sys/class/dmi/id"), machine_id: Path::new("/etc/machine-id") }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?.trim().to_string();
    // Placeholders boards ship with are not identities.
    let junk = [
        "",
        "0",
        "None",
        "Not Specified",
        "To Be Filled By O.E.M.",
        "Default string",
        "System Serial Number",
        "00000000-0000-0000-0000-000000000000",
        "03000200-0400-0500-0006-000700080009",
    ];
    if junk.iter().any(|j| s.eq_ignore_ascii_case(j)) { None } else { Some(s) }
}

/// What the hardware says, without looking at the pin.
pub fn probe(p: &Probe<'_>) -> Identity {
    let serial = read_trim(&p.dmi_dir.join("board_serial")).or_else(|| read_trim(&p.dmi_dir.join("product_serial")));
    if let Some(u) = read_trim(&p.dmi_dir.join("product_uuid")).and_then(|s| Uuid::parse_str(&s).ok()) {
        return Identity { uuid: u, source: "smbios".into(), serial };
    }
    if let Some(s) = &serial {
        return Identity { uuid: Uuid::new_v5(&NAMESPACE, format!("serial:{s}").as_bytes()), source: "board-serial".into(), serial };
    }
    if let Some(m) = read_trim(p.machine_id) {
        return Identity { uuid: Uuid::new_v5(&NAMESPACE, format!("machine-id:{m}").as_bytes()), source: "machine-id".into(), serial };
    }
    Identity { uuid: Uuid::new_v4(), source: "random".into(), serial }
}

/// Whether this process runs in a network namespace other than the machine's (pid 1's):
/// then it is one of several "servers" on the machine (each agent in a namespace of its
/// its own, as tests and nested setups run them) and the machine's hardware identity is
/// not its own. Told by pid 1's namespace where it can be read, else by this namespace
/// being a named one (`ip netns add`, under /run/netns); `false` when neither says so.
pub fn in_own_network_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| std::fs::read_link(p).ok();
    if differs(ns("/proc/self/ns/net"), ns("/proc/1/ns/net")) {
        return true;
    }
    let Ok(me) = std::fs::metadata("/proc/self/ns/net") else { return false };
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .any(|m| m.dev() == me.dev() && m.ino() == me.ino())
}

fn differs(own: Option<std::path::PathBuf>, machine: Option<std::path::PathBuf>) -> bool {
    matches!((own, machine), (Some(a), Some(b)) if a != b)
}

/// The pinned identity, or a new one probed and pinned now. Returns it and a line saying
/// where it came from.
pub fn load_or_pin(dir: &Path, p: &Probe<'_>) -> Result<(Identity, String)> {
    let pin = dir.join("server.json");
    if let Ok(text) = std::fs::read_to_string(&pin) {
        let id: Identity =
            serde_json::from_str(&text).with_context(|| format!("{} is damaged; remove it to re-identify this server", pin.display()))?;
        let now = probe(p);
        let mut line = format!("server UUID {} (pinned in {}, first taken from {})", id.uuid, pin.display(), id.source);
        if now.source == "smbios" && now.uuid != id.uuid {
            line.push_str(&format!(
                "; WARNING: the hardware now reports UUID {}, the pinned one is kept so this server is not duplicated",
                now.uuid
            ));
        }
        return Ok((id, line));
    }
    let id = probe(p);
    std::fs::create_dir_all(dir)?;
    std::fs::write(&pin, serde_json::to_vec_pretty(&id)?).with_context(|| format!("writing {}", pin.display()))?;
    let line = format!("server UUID {} (from {}; pinned in {})", id.uuid, id.source, pin.display());
    Ok((id, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_in_order_and_pinning() {
        let d = tempfile::tempdir().unwrap();
        let dmi = d.path().join("dmi");
        std::fs::create_dir_all(&dmi).unwrap();
        let mid = d.path().join("machine-id");
        let p = Probe { dmi_dir: &dmi, machine_id: &mid };
        assert_eq!(probe(&p).source, "random");
        std::fs::write(&mid, "abc\n").unwrap();
        let m = probe(&p);
        assert_eq!((m.source.as_str(), m.uuid), ("machine-id", probe(&p).uuid), "derived deterministically");
        std::fs::write(dmi.join("board_serial"), "To Be Filled By O.E.M.\n").unwrap();
        assert_eq!(probe(&p).source, "machine-id", "placeholder serials are ignored");
        std::fs::write(dmi.join("board_serial"), "SN123\n").unwrap();
        let s = probe(&p);
        assert_eq!(s.source, "board-serial");
        std::fs::write(dmi.join("product_uuid"), "2b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21\n").unwrap();
        let smbios = probe(&p);
        assert_eq!((smbios.source.as_str(), smbios.uuid.to_string().as_str()), ("smbios", "2b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21"));
        let state = d.path().join("state");
        let (first, line) = load_or_pin(&state, &p).unwrap();
        assert!(line.contains("from smbios"), "{line}");
        std::fs::write(dmi.join("product_uuid"), "3b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21\n").unwrap();
        let (again, line) = load_or_pin(&state, &p).unwrap();
        assert_eq!(again.uuid, first.uuid);
        assert!(line.contains("WARNING") && line.contains("3b4c5a9e"), "{line}");
    }

    #[test]
    fn only_a_namespace_other_than_the_machines_is_one_of_its_own() {
        let ns = |s: &str| Some(std::path::PathBuf::from(s));
        assert!(differs(ns("net:[4026532281]"), ns("net:[4026531840]")));
        assert!(!differs(ns("net:[4026531840]"), ns("net:[4026531840]")));
        assert!(!differs(ns("net:[4026532281]"), None), "unreadable: the hardware's identity");
    }
}
