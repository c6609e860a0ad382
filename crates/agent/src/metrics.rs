//! The agent's `/metrics` (Prometheus text): host CPU and memory, VMs by state,
//! hardware temperatures from `/sys/class/hwmon` where the host has sensors, and the
//! disks' SMART / NVMe health as last read ([`render_disks`], see [`crate::smart`]). The
//! same readings go to the headnode with each heartbeat ([`readings`]).

use std::fmt::Write;
use std::path::Path;

use nereid_types::agent::{DiskHealth, Temperature, VmStatus};

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

/// One server's disk readings for [`render_disks`]: its UUID, whether it reads disks at
/// all, whether the last scan worked, and the disks.
pub struct ServerDisks {
    pub server: uuid::Uuid,
    pub enabled: bool,
    pub scan_ok: bool,
    pub disks: Vec<DiskHealth>,
}

/// The disks' health metrics (Prometheus text, one family after another); a counter a
/// disk does not report has no sample. Servers that read no disks (simulated ones) give
/// nothing.
pub fn render_disks(servers: &[ServerDisks]) -> String {
    type Get = fn(&DiskHealth) -> Option<f64>;
    let families: [(&str, &str, Get); 9] = [
        ("nereid_disk_health_ok", "1 while smartctl says the disk passed and nothing else says it is failing, 0 when failing.", |d| {
            d.passed.map(|p| if p && d.failing.is_empty() { 1.0 } else { 0.0 }).or_else(|| (!d.failing.is_empty()).then_some(0.0))
        }),
        ("nereid_disk_read_ok", "1 when the last reading of the disk worked, 0 when smartctl could not read it.", |d| {
            Some(if d.error.is_none() { 1.0 } else { 0.0 })
        }),
        ("nereid_disk_temperature_celsius", "Disk temperature (SMART / NVMe).", |d| d.temperature_celsius.map(|t| t as f64)),
        ("nereid_disk_reallocated_sectors", "ATA attribute 5: sectors remapped to spares.", |d| d.reallocated_sectors.map(|n| n as f64)),
        ("nereid_disk_pending_sectors", "ATA attribute 197: unreadable sectors waiting to be remapped.", |d| {
            d.pending_sectors.map(|n| n as f64)
        }),
        ("nereid_disk_offline_uncorrectable_sectors", "ATA attribute 198: sectors the offline scan could not read.", |d| {
            d.offline_uncorrectable.map(|n| n as f64)
        }),
        ("nereid_disk_percentage_used", "Wear: NVMe percentage_used or ATA's endurance indicator (may pass 100).", |d| {
            d.percentage_used.map(|n| n as f64)
        }),
        ("nereid_disk_media_errors", "NVMe media and data integrity errors.", |d| d.media_errors.map(|n| n as f64)),
        ("nereid_disk_power_on_seconds", "Time the disk has been powered on (SMART keeps hours).", |d| {
            d.power_on_hours.map(|n| n as f64 * 3600.0)
        }),
    ];
    let mut out = String::new();
    let servers: Vec<&ServerDisks> = servers.iter().filter(|s| s.enabled).collect();
    if servers.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "# HELP nereid_disk_scan_ok 1 when the last smartctl scan of the server's disks worked, 0 when it did not (smartctl missing, …).\n# TYPE nereid_disk_scan_ok gauge"
    );
    for s in &servers {
        let _ = writeln!(out, "nereid_disk_scan_ok{{server=\"{}\"}} {}", s.server, u8::from(s.scan_ok));
    }
    let errors: fn(&DiskHealth) -> Option<f64> = |d| d.error_count.map(|n| n as f64);
    for (name, help, get) in families.iter().chain(std::iter::once(&(
        "nereid_disk_logged_errors",
        "Errors the disk logged (NVMe error log entries, ATA SMART error log).",
        errors,
    ))) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &servers {
            for d in &s.disks {
                if let Some(x) = get(d) {
                    let _ = writeln!(
                        out,
                        "{name}{{server=\"{}\",device=\"{}\",model=\"{}\",serial=\"{}\"}} {x}",
                        s.server,
                        label(&d.device),
                        label(&d.model),
                        label(&d.serial)
                    );
                }
            }
        }
    }
    out
}

/// Debian's `promtool check metrics` (from the `prometheus` package, which `scripts/test`
/// installs) on `text`: its complaints, lint included, or empty when it has none. For the
/// tests of every `/metrics` (the agent's and the headnode's), so they all hold to one bar.
pub fn promtool_problems(text: &str) -> String {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return format!("could not run promtool (Debian's prometheus package; scripts/test installs it): {e}"),
    };
    if let Some(Err(e)) = child.stdin.take().map(|mut stdin| stdin.write_all(text.as_bytes())) {
        return format!("could not write to promtool: {e}");
    }
    match child.wait_with_output() {
        Ok(out) => {
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if out.status.success() && said.trim().is_empty() { String::new() } else { format!("exit {}: {said}", out.status) }
        }
        Err(e) => format!("promtool failed: {e}"),
    }
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

    #[test]
    fn disk_metrics_are_one_family_each_with_a_sample_per_reported_counter() {
        let data = format!("{}/tests/data/smart", env!("CARGO_MANIFEST_DIR"));
        let read = |dev: &str, f: &str| crate::smart::parse(dev, &std::fs::read_to_string(format!("{data}/{f}")).unwrap());
        let server = uuid::Uuid::nil();
        let text = render_disks(&[
            ServerDisks {
                server,
                enabled: true,
                scan_ok: true,
                disks: vec![
                    read("/dev/sda", "ata-qemu-failing-edited.json"),
                    read("/dev/nvme0", "nvme-qemu-x.json"),
                    read("/dev/sdz", "open-failed.json"),
                ],
            },
            ServerDisks { server: uuid::Uuid::max(), enabled: false, scan_ok: false, disks: vec![] },
        ]);
        let l = |dev: &str, model: &str, serial: &str| {
            format!("{{server=\"{server}\",device=\"{dev}\",model=\"{model}\",serial=\"{serial}\"}}")
        };
        let ata = l("/dev/sda", "QEMU HARDDISK", "QM00005");
        let nvme = l("/dev/nvme0", "QEMU NVMe Ctrl", "NEREIDNVME0");
        for want in [
            format!("nereid_disk_scan_ok{{server=\"{server}\"}} 1"),
            format!("nereid_disk_health_ok{ata} 0"),
            format!("nereid_disk_health_ok{nvme} 1"),
            format!("nereid_disk_temperature_celsius{ata} 31"),
            format!("nereid_disk_temperature_celsius{nvme} 50"),
            format!("nereid_disk_reallocated_sectors{ata} 1234"),
            format!("nereid_disk_pending_sectors{ata} 8"),
            format!("nereid_disk_offline_uncorrectable_sectors{ata} 2"),
            format!("nereid_disk_percentage_used{nvme} 0"),
            format!("nereid_disk_media_errors{nvme} 0"),
            format!("nereid_disk_power_on_seconds{ata} 148442400"),
            format!("nereid_disk_logged_errors{ata} 3"),
            format!("nereid_disk_read_ok{} 0", l("/dev/sdz", "", "")),
        ] {
            assert!(text.contains(&format!("{want}\n")), "{want} missing from\n{text}");
        }
        assert!(!text.contains("nereid_disk_reallocated_sectors{server=\"{server}\",device=\"/dev/nvme0\""), "NVMe has no such attribute");
        assert!(!text.contains(&uuid::Uuid::max().to_string()), "a server that reads no disks has no samples");
        // Valid exposition: every family declared once, before its samples, which are
        // contiguous; every sample line is `name{labels} number`.
        let mut declared = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(declared.insert(name.clone()), "{name} declared twice");
                assert!(rest.ends_with(" gauge"));
                current = name;
            } else if !line.starts_with("# HELP ") {
                let (name, value) = line.split_once('{').map(|(n, r)| (n, r.rsplit_once("} ").unwrap().1)).unwrap();
                assert_eq!(name, current, "{line}: a sample outside its family");
                value.parse::<f64>().unwrap();
            }
        }
        assert_eq!(render_disks(&[]), "", "no disks read: no families");
    }

    /// Debian's promtool (scripts/test installs it) finds no problem, lint included, in the
    /// host, temperature and disk families; the per-VM ones are checked in crate::vm_stats
    /// and on live agents (crates/cli/tests/monitoring.rs).
    #[test]
    fn promtool_finds_no_problem() {
        let d = tempfile::tempdir().unwrap();
        let chip = d.path().join("hwmon0");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("temp1_input"), "45500\n").unwrap();
        let data = format!("{}/tests/data/smart", env!("CARGO_MANIFEST_DIR"));
        let read = |dev: &str, f: &str| crate::smart::parse(dev, &std::fs::read_to_string(format!("{data}/{f}")).unwrap());
        let mut vm = VmStatus::new(uuid::Uuid::max(), "running", 1);
        vm.ram = Some(256);
        let mut text = render(&[(uuid::Uuid::nil(), vec![vm])], d.path());
        text.push_str(&render_disks(&[ServerDisks {
            server: uuid::Uuid::nil(),
            enabled: true,
            scan_ok: true,
            disks: vec![read("/dev/sda", "ata-qemu-failing-edited.json"), read("/dev/nvme0", "nvme-qemu-x.json")],
        }]));
        assert_eq!(promtool_problems(&text), "", "{text}");
    }
}
