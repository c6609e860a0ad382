//! sysinfo for a Linux compute node, in SmartOS's shape (`operator-apis.md` §3.2).

use std::path::Path;

use serde_json::{Map, Value, json};
use uuid::Uuid;

/// A NIC of the host and the nic tags it provides.
#[derive(Debug, Clone, PartialEq)]
pub struct NicFact {
    pub name: String,
    pub mac: String,
    pub ip: Option<String>,
    pub up: bool,
    pub tags: Vec<String>,
}

/// The facts sysinfo is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub uuid: Uuid,
    pub hostname: String,
    pub serial: Option<String>,
    pub cpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub nics: Vec<NicFact>,
    /// Seconds since the epoch.
    pub boot_time: i64,
    pub agent_port: u16,
    /// `qemu` or `sim`.
    pub backend: String,
}

/// SmartOS-shaped sysinfo.
pub fn sysinfo(f: &Facts) -> Map<String, Value> {
    let mut nics = Map::new();
    for n in &f.nics {
        let mut o = json!({"MAC Address": n.mac, "Link Status": if n.up { "up" } else { "down" }, "NIC Names": n.tags});
        if let Some(ip) = &n.ip {
            o["ip4addr"] = json!(ip);
        }
        nics.insert(n.name.clone(), o);
    }
    let admin_ip = f.nics.iter().find_map(|n| n.ip.clone()).unwrap_or_else(|| "127.0.0.1".into());
    let v = json!({
        "UUID": f.uuid,
        "Hostname": f.hostname,
        "Serial Number": f.serial,
        "System Type": "Linux",
        "Live Image": concat!("nereid-", env!("CARGO_PKG_VERSION")),
        "SDC Version": "7.0",
        "Setup": "true",
        "Boot Time": f.boot_time.to_string(),
        "CPU Total Cores": f.cpus,
        "CPU Online Count": f.cpus,
        "MiB of Memory": f.ram_mib.to_string(),
        "Zpool Size in GiB": f.disk_gib,
        "Bhyve Capable": true,
        "Bhyve Max Vcpus": f.cpus.min(64),
        "HVM API": true,
        "Network Interfaces": nics,
        "Admin IP": admin_ip,
        "CN Agent Port": f.agent_port,
        "Nereid Backend": f.backend,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The migration address other agents reach this one at (pure): the relay's bound
/// address, or, when it listens on every address, the server's first NIC IP there.
pub fn migration_address(bound: std::net::SocketAddr, f: &Facts) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let ip = f
        .nics
        .iter()
        .filter_map(|n| n.ip.as_deref()?.parse::<std::net::IpAddr>().ok())
        .find(|ip| !ip.is_unspecified() && !ip.is_loopback())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    std::net::SocketAddr::new(ip, bound.port()).to_string()
}

/// Reports the migration address in `si` (see [`nereid_types::sysinfo::MIGRATION_ADDRESS`]).
pub fn set_migration_address(si: &mut Map<String, Value>, bound: std::net::SocketAddr, f: &Facts) {
    si.insert(nereid_types::sysinfo::MIGRATION_ADDRESS.into(), Value::String(migration_address(bound, f)));
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Online CPUs of this host.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

/// RAM of this host (MiB).
pub fn host_ram_mib() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

/// Size of the filesystem holding `dir` (GiB), from `df`.
pub fn disk_gib(dir: &Path) -> u64 {
    let out = std::process::Command::new("df").arg("-Pk").arg(dir).output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok())))
        .map(|kb| kb / (1024 * 1024))
        .unwrap_or(0)
}

/// Boot time of this host (seconds since the epoch).
pub fn boot_time() -> i64 {
    read("/proc/stat").lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// This host's name.
pub fn hostname() -> String {
    let h = read("/proc/sys/kernel/hostname").trim().to_string();
    if h.is_empty() { "localhost".into() } else { h }
}

/// This host's NICs; `tags` maps interface names to the nic tags they provide.
pub fn host_nics(tags: &[(String, crate::net::Uplink)]) -> Vec<NicFact> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else { return out };
    let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let base = format!("/sys/class/net/{name}");
        let mac = read(&format!("{base}/address")).trim().to_string();
        let up = matches!(read(&format!("{base}/operstate")).trim(), "up" | "unknown");
        let t: Vec<String> = tags.iter().filter(|(_, up)| up.name() == name).map(|(tag, _)| tag.clone()).collect();
        out.push(NicFact { name, mac, ip: None, up, tags: t });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_has_what_cnapi_reads() {
        let f = Facts {
            uuid: Uuid::nil(),
            hostname: "cn1".into(),
            serial: Some("SN".into()),
            cpus: 4,
            ram_mib: 8192,
            disk_gib: 100,
            nics: vec![NicFact {
                name: "eth0".into(),
                mac: "00:00:00:00:00:01".into(),
                ip: Some("10.0.0.5".into()),
                up: true,
                tags: vec!["external".into()],
            }],
            boot_time: 1_700_000_000,
            agent_port: 5309,
            backend: "sim".into(),
        };
        let s = sysinfo(&f);
        nereid_types::sysinfo::check(&s).unwrap();
        assert_eq!(nereid_types::sysinfo::nic_tags(&s), ["external"]);
        assert_eq!(nereid_types::sysinfo::ram_mib(&s), Some(8192));
        assert_eq!(s["Admin IP"], "10.0.0.5");
        assert!(host_ram_mib() > 0 && host_cpus() > 0 && boot_time() > 0);

        // The migration address: the relay's own, or the NIC's IP when it listens on all.
        let mut s = s;
        set_migration_address(&mut s, "127.0.0.1:4000".parse().unwrap(), &f);
        assert_eq!(nereid_types::sysinfo::migration_address(&s).as_deref(), Some("127.0.0.1:4000"));
        assert_eq!(migration_address("0.0.0.0:4001".parse().unwrap(), &f), "10.0.0.5:4001");
    }
}
