//! A server's capacity as the operator API's answers show it: the server object (RAM,
//! sysinfo's CPUs and pool size, reservation ratio, overprovision ratios) and the active VM
//! records on it (their RAM, vCPUs and disks, counted as placement counts records). Pure:
//! computed from JSON, rendered as text with a `meter` for each resource.

use maud::{Markup, html};
use serde_json::{Map, Value};

/// What a server has and what its VMs use.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// The server's RAM (MiB).
    pub ram_mib: u64,
    /// RAM placement may hand out: RAM less the reservation, times the RAM ratio.
    pub ram_provisionable_mib: f64,
    pub ram_used_mib: u64,
    /// The pool for VM disks (MiB), times the disk ratio.
    pub disk_provisionable_mib: f64,
    pub disk_used_mib: u64,
    /// Online CPUs, if sysinfo says.
    pub cpus: Option<u32>,
    pub vcpus_used: u64,
    /// Active VM records on the server.
    pub vms: usize,
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(|x| x.as_f64().or_else(|| x.as_str().and_then(|s| s.parse().ok())))
}

/// A VM record's disk (MiB): its disks' sizes (not CD-ROMs), else its quota (GiB).
pub fn vm_disk_mib(vm: &Value) -> u64 {
    match vm.get("disks").and_then(Value::as_array) {
        Some(d) if !d.is_empty() => d
            .iter()
            .filter(|x| x.get("media").and_then(Value::as_str) != Some("cdrom"))
            .filter_map(|x| x.get("size").and_then(Value::as_u64))
            .fold(0u64, u64::saturating_add),
        _ => vm.get("quota").and_then(Value::as_u64).map(|q| q.saturating_mul(1024)).unwrap_or(0),
    }
}

/// A VM record's RAM (MiB).
pub fn vm_ram_mib(vm: &Value) -> u64 {
    vm.get("ram").and_then(Value::as_u64).or_else(|| vm.get("max_physical_memory").and_then(Value::as_u64)).unwrap_or(0)
}

/// The capacity of `server` (a CNAPI server object, with sysinfo if it was asked for) with
/// `vms` (the active VM records on it).
pub fn of(server: &Value, vms: &[&Value]) -> Capacity {
    let empty = Map::new();
    let sysinfo = server.get("sysinfo").and_then(Value::as_object).unwrap_or(&empty);
    let ratio = |k: &str, default: f64| server.get("overprovision_ratios").and_then(|r| num(r, k)).unwrap_or(default);
    let ram_mib = server.get("ram").and_then(Value::as_u64).or_else(|| nereid_types::sysinfo::ram_mib(sysinfo)).unwrap_or(0);
    let reservation = num(server, "reservation_ratio").unwrap_or(0.15);
    let disk_mib = nereid_types::sysinfo::disk_mib(sysinfo)
        .or_else(|| server.get("disk_pool_size_bytes").and_then(Value::as_u64).map(|b| b / (1024 * 1024)))
        .unwrap_or(0);
    Capacity {
        ram_mib,
        ram_provisionable_mib: ram_mib as f64 * (1.0 - reservation) * ratio("ram", 1.0),
        ram_used_mib: vms.iter().map(|v| vm_ram_mib(v)).sum(),
        disk_provisionable_mib: disk_mib as f64 * ratio("disk", 1.0),
        disk_used_mib: vms.iter().map(|v| vm_disk_mib(v)).sum(),
        cpus: nereid_types::sysinfo::cpus(sysinfo),
        vcpus_used: vms.iter().filter_map(|v| v.get("vcpus").and_then(Value::as_u64)).sum(),
        vms: vms.len(),
    }
}

/// MiB as people read them (one decimal above a GiB).
pub fn size(mib: f64) -> String {
    let neg = if mib < 0.0 { "-" } else { "" };
    let m = mib.abs();
    if m >= 1024.0 * 1024.0 {
        format!("{neg}{:.1} TiB", m / (1024.0 * 1024.0))
    } else if m >= 1024.0 {
        format!("{neg}{:.1} GiB", m / 1024.0)
    } else {
        format!("{neg}{m:.0} MiB")
    }
}

/// One resource: "used, free of total" and a meter (its words say it all; the meter is a
/// picture of the same).
fn resource(label: &str, used: f64, total: f64, unit: fn(f64) -> String) -> Markup {
    let free = total - used;
    html! {
        span.cap {
            span.cap-label { (label) ": " }
            (unit(used)) " used, "
            @if free < 0.0 { strong { (unit(-free)) " over" } } @else { (unit(free)) " free" }
            " of " (unit(total))
            @if total > 0.0 {
                " " meter min="0" max=(total) value=(used.min(total)) aria-hidden="true" {}
            }
        }
    }
}

/// RAM, disk and vCPUs, one line each.
pub fn render(c: &Capacity) -> Markup {
    html! {
        (resource("RAM", c.ram_used_mib as f64, c.ram_provisionable_mib, size))
        br;
        (resource("Disk", c.disk_used_mib as f64, c.disk_provisionable_mib, size))
        @if let Some(cpus) = c.cpus {
            br;
            span.cap {
                span.cap-label { "vCPUs: " }
                (c.vcpus_used) " assigned to VMs on " (cpus) " CPUs"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capacity_counts_records_against_what_placement_may_hand_out() {
        let server = json!({"ram": 16384, "reservation_ratio": 0.25, "overprovision_ratios": {"cpu": 4, "ram": 1, "disk": 2},
            "sysinfo": {"CPU Online Count": 8, "Zpool Size in GiB": 100}});
        let a = json!({"ram": 1024, "vcpus": 2, "disks": [{"size": 10240}, {"size": 4096, "media": "cdrom"}]});
        let b = json!({"ram": 2048, "vcpus": 1, "quota": 5});
        let c = of(&server, &[&a, &b]);
        assert_eq!(c.ram_provisionable_mib, 12288.0);
        assert_eq!((c.ram_used_mib, c.disk_used_mib, c.vcpus_used, c.vms), (3072, 10240 + 5120, 3, 2));
        assert_eq!(c.disk_provisionable_mib, 204800.0);
        assert_eq!(c.cpus, Some(8));
        let out = render(&c).into_string();
        assert!(out.contains("3.0 GiB used, 9.0 GiB free of 12.0 GiB"), "{out}");
        assert!(out.contains("3 assigned to VMs on 8 CPUs"), "{out}");
    }

    #[test]
    fn an_overfull_server_says_by_how_much() {
        let c = of(&json!({"ram": 1024, "reservation_ratio": 0.0}), &[&json!({"ram": 1536})]);
        assert!(render(&c).into_string().contains("512 MiB over"));
        assert_eq!(size(1536.0), "1.5 GiB");
    }
}
