//! The agent's `/metrics` (Prometheus text): host CPU and memory, VMs by state, and
//! hardware temperatures from `/sys/class/hwmon` where the host has sensors. The same
//! readings go to the headnode with each heartbeat ([`readings`]).

use std::fmt::Write;
use std::path::Path;

use nereid_types::agent::{Temperature, VmStatus};

/// Where Linux puts its hardware monitors.
pub const HWMON: &str = "/sys/class/hwmon";

/// `(sensor, label, degrees Celsius)` from a hwmon directory.
pub fn temperatures(root: &Path) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return out };
    let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let chip = std::fs::read_to_string(dir.join("name"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        let Ok(files) = std::fs::read_dir(&dir) else { continue };
        let mut inputs: Vec<String> = files
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("temp") && n.ends_with("_input"))
            .collect();
        inputs.sort();
        for f in inputs {
            let Some(milli) = std::fs::read_to_string(dir.join(&f)).ok().and_then(|s| s.trim().parse::<f64>().ok()) else { continue };
            let label_file = f.replace("_input", "_label");
            let label = std::fs::read_to_string(dir.join(label_file))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| f.trim_end_matches("_input").to_string());
            out.push((chip.clone(), label, milli / 1000.0));
        }
    }
    out
}

/// [`temperatures`] as a heartbeat carries them; none without a root (a simulated server).
pub fn readings(root: Option<&Path>) -> Vec<Temperature> {
    root.map(temperatures).unwrap_or_default().into_iter().map(|(sensor, label, celsius)| Temperature { sensor, label, celsius }).collect()
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ")
}

/// The whole exposition for one agent process.
pub fn render(nodes: &[(uuid::Uuid, Vec<VmStatus>)], hwmon: &Path) -> String {
    let mut out = String::new();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).unwrap_or(0.0)
    };
    let load: Vec<f64> =
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    let _ = writeln!(out, "# HELP nereid_host_load1 One-minute load average of the host.\n# TYPE nereid_host_load1 gauge");
    let _ = writeln!(out, "nereid_host_load1 {}", load.first().copied().unwrap_or(0.0));
    let _ = writeln!(out, "# HELP nereid_host_cpus Online CPUs of the host.\n# TYPE nereid_host_cpus gauge");
    let _ = writeln!(out, "nereid_host_cpus {}", crate::sysinfo::host_cpus());
    let _ = writeln!(out, "# HELP nereid_host_memory_bytes Host memory.\n# TYPE nereid_host_memory_bytes gauge");
    let _ = writeln!(out, "nereid_host_memory_bytes{{kind=\"total\"}} {}", kb("MemTotal:") * 1024.0);
    let _ = writeln!(out, "nereid_host_memory_bytes{{kind=\"available\"}} {}", kb("MemAvailable:") * 1024.0);
    let _ =
        writeln!(out, "# HELP nereid_vm_state VMs on this agent by state (1 for the VM's current state).\n# TYPE nereid_vm_state gauge");
    for (server, vms) in nodes {
        for v in vms {
            let _ = writeln!(out, "nereid_vm_state{{server=\"{server}\",vm=\"{}\",state=\"{}\"}} 1", v.uuid, label(&v.state));
        }
    }
    let _ = writeln!(out, "# HELP nereid_vms VMs per server and state.\n# TYPE nereid_vms gauge");
    for (server, vms) in nodes {
        let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
        for v in vms {
            *by.entry(v.state.as_str()).or_default() += 1;
        }
        for (state, n) in by {
            let _ = writeln!(out, "nereid_vms{{server=\"{server}\",state=\"{}\"}} {n}", label(state));
        }
    }
    let temps = temperatures(hwmon);
    let _ = writeln!(
        out,
        "# HELP nereid_hardware_temperature_celsius Hardware temperatures from /sys/class/hwmon.\n# TYPE nereid_hardware_temperature_celsius gauge"
    );
    for (chip, l, c) in temps {
        let _ = writeln!(out, "nereid_hardware_temperature_celsius{{chip=\"{}\",sensor=\"{}\"}} {c}", label(&chip), label(&l));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hwmon_and_renders() {
        let d = tempfile::tempdir().unwrap();
        let chip = d.path().join("hwmon0");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("name"), "coretemp\n").unwrap();
        std::fs::write(chip.join("temp1_input"), "45500\n").unwrap();
        std::fs::write(chip.join("temp1_label"), "Package id 0\n").unwrap();
        std::fs::write(chip.join("temp2_input"), "40000\n").unwrap();
        assert_eq!(
            temperatures(d.path()),
            vec![("coretemp".into(), "Package id 0".into(), 45.5), ("coretemp".into(), "temp2".into(), 40.0)]
        );
        let text = render(&[], d.path());
        assert!(text.contains("nereid_hardware_temperature_celsius{chip=\"coretemp\",sensor=\"Package id 0\"} 45.5"), "{text}");
        assert!(text.contains("nereid_host_memory_bytes{kind=\"total\"}"));
    }
}
