//! SmartOS `sysinfo`: the keys compute nodes report and the headnode reads.
//!
//! A Linux compute node emits the same shape (`operator-apis.md` §3.2) so CNAPI clients and
//! operators see what they know. The helpers here read the numbers placement needs.

use serde_json::{Map, Value};

pub const UUID: &str = "UUID";
pub const HOSTNAME: &str = "Hostname";
pub const CPU_TOTAL_CORES: &str = "CPU Total Cores";
pub const CPU_ONLINE_COUNT: &str = "CPU Online Count";
pub const MIB_OF_MEMORY: &str = "MiB of Memory";
pub const ZPOOL_SIZE_GIB: &str = "Zpool Size in GiB";
pub const NETWORK_INTERFACES: &str = "Network Interfaces";
pub const BOOT_TIME: &str = "Boot Time";
pub const SERIAL_NUMBER: &str = "Serial Number";
pub const LIVE_IMAGE: &str = "Live Image";
pub const SYSTEM_TYPE: &str = "System Type";
pub const SETUP: &str = "Setup";

fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Online CPUs (else total cores).
pub fn cpus(s: &Map<String, Value>) -> Option<u32> {
    number(s.get(CPU_ONLINE_COUNT)).or_else(|| number(s.get(CPU_TOTAL_CORES))).map(|n| n as u32)
}

/// RAM in MiB.
pub fn ram_mib(s: &Map<String, Value>) -> Option<u64> {
    number(s.get(MIB_OF_MEMORY))
}

/// Disk for VMs in MiB.
pub fn disk_mib(s: &Map<String, Value>) -> Option<u64> {
    number(s.get(ZPOOL_SIZE_GIB)).map(|g| g * 1024)
}

/// Nereid's sysinfo key: where the server's agent takes migration data (`host:port`, its
/// `--migration-address`).
pub const MIGRATION_ADDRESS: &str = "Nereid Migration Address";

/// The server agent's migration address, when it has one.
pub fn migration_address(s: &Map<String, Value>) -> Option<String> {
    s.get(MIGRATION_ADDRESS).and_then(Value::as_str).filter(|a| !a.is_empty()).map(str::to_string)
}

/// Nic tags provided by NICs that are up.
pub fn nic_tags(s: &Map<String, Value>) -> Vec<String> {
    let mut tags = Vec::new();
    if let Some(ifs) = s.get(NETWORK_INTERFACES).and_then(Value::as_object) {
        for nic in ifs.values() {
            if nic.get("Link Status").and_then(Value::as_str) != Some("up") {
                continue;
            }
            for t in nic.get("NIC Names").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !tags.iter().any(|x| x == t) {
                    tags.push(t.to_string());
                }
            }
        }
    }
    tags
}

/// What is missing for placement, if anything (the keys DAPI's server schema requires).
pub fn check(s: &Map<String, Value>) -> Result<(), String> {
    let mut missing = Vec::new();
    if s.get(UUID).and_then(Value::as_str).and_then(|u| uuid::Uuid::parse_str(u).ok()).is_none() {
        missing.push(UUID);
    }
    if s.get(HOSTNAME).and_then(Value::as_str).is_none() {
        missing.push(HOSTNAME);
    }
    if cpus(s).is_none() {
        missing.push(CPU_TOTAL_CORES);
    }
    if ram_mib(s).is_none() {
        missing.push(MIB_OF_MEMORY);
    }
    if s.get(NETWORK_INTERFACES).and_then(Value::as_object).is_none() {
        missing.push(NETWORK_INTERFACES);
    }
    if missing.is_empty() { Ok(()) } else { Err(format!("sysinfo lacks {}", missing.join(", "))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_triton_keys() {
        let s = json!({"UUID": "2b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21", "Hostname": "cn1", "CPU Total Cores": 8, "CPU Online Count": "6",
            "MiB of Memory": "16384", "Zpool Size in GiB": 100,
            "Network Interfaces": {"eth0": {"MAC Address": "00:00:00:00:00:01", "Link Status": "up", "NIC Names": ["admin", "external"]},
                                   "eth1": {"Link Status": "down", "NIC Names": ["internal"]}}});
        let s = s.as_object().unwrap();
        assert_eq!((cpus(s), ram_mib(s), disk_mib(s)), (Some(6), Some(16384), Some(102_400)));
        assert_eq!(nic_tags(s), ["admin", "external"]);
        assert!(check(s).is_ok());
        assert_eq!(check(&Map::new()).unwrap_err(), "sysinfo lacks UUID, Hostname, CPU Total Cores, MiB of Memory, Network Interfaces");
    }
}
