//! Disk health: the host's disks' SMART / NVMe health, read with `smartctl --json` every few
//! minutes, sent with each heartbeat ([`DiskHealth`]), shown on `/metrics`, and a server
//! problem (`disk_failing`) for each disk that is failing.
//!
//! ```text
//!   Monitor::run (a task of its own; heartbeats only read the last result)
//!     every `every` (or at once when the settings change):
//!       smartctl --scan-open --json                  → devices (name, -d type, protocol)
//!       smartctl --json=c -x -d TYPE [-n standby] DEV → parse() → DiskHealth   (each with a timeout)
//!     smartctl missing, a scan or a device that fails: named (the scan's error, the disk's
//!     `error`), never fatal; the next round tries again.
//!     a disk asleep (ATA, `-n standby`: exit status 2, "Device is in STANDBY mode") is not
//!     woken: it keeps its last reading, `read_at` unchanged, marked `standby`.
//! ```
//!
//! [`parse`] is pure and tested against real smartctl output captured from QEMU-emulated
//! ATA and NVMe drives (`tests/data/smart/`, see its README). A disk is failing when
//! smartctl's verdict is FAILED, an NVMe critical warning is set, an ATA attribute is at or
//! below its threshold now, sectors are pending or offline-uncorrectable (as smartd's
//! defaults warn), or its rated endurance is used up.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nereid_types::agent::{DiskHealth, Problem};
use serde_json::Value;

/// The problem kind of a failing disk.
pub const DISK_FAILING: &str = "disk_failing";

/// How often disks are read unless told otherwise (`--smart-interval-secs`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);

/// How long one smartctl run may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to read the disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The smartctl binary (`smartctl` from the PATH by default).
    pub smartctl: PathBuf,
    pub every: Duration,
    /// Per smartctl run.
    pub timeout: Duration,
}

impl Settings {
    pub fn new(smartctl: PathBuf) -> Self {
        Settings { smartctl, every: DEFAULT_INTERVAL, timeout: DEFAULT_TIMEOUT }
    }
}

/// A device `smartctl --scan-open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    /// smartctl's `-d` type, e.g. `sat`, `nvme`.
    pub kind: String,
    pub protocol: String,
}

/// One round's result: the disks, and why the scan itself failed (smartctl missing, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    pub disks: Vec<DiskHealth>,
    pub error: Option<String>,
}

fn u(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_i64().map(|i| i.max(0) as u64))
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().trim().to_string()
}

/// An ATA attribute's raw count: the leading number of smartctl's decoded `raw.string`
/// (vendors pack other fields in the high bytes of `raw.value`), else `raw.value`.
fn raw_count(attr: &Value) -> Option<u64> {
    let raw = attr.get("raw")?;
    raw.get("string")
        .and_then(Value::as_str)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse::<u64>().ok())
        .or_else(|| raw.get("value").and_then(u))
}

/// The messages smartctl printed with this severity or worse (`error`, `warning`).
fn messages(v: &Value, errors_only: bool) -> Vec<String> {
    v.pointer("/smartctl/messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| !errors_only || m.get("severity").and_then(Value::as_str) == Some("error"))
        .filter_map(|m| m.get("string").and_then(Value::as_str).map(|t| t.trim().to_string()))
        .collect()
}

/// NVMe critical warning bits, as the NVMe base specification names them.
const NVME_WARNINGS: &[(u64, &str)] = &[
    (0x01, "available spare below its threshold"),
    (0x02, "temperature beyond a threshold"),
    (0x04, "NVM subsystem reliability degraded (media or internal errors)"),
    (0x08, "media placed in read-only mode"),
    (0x10, "volatile memory backup device failed"),
    (0x20, "persistent memory region read-only or unreliable"),
];

/// Why a disk read as `v` (with its counters in `d`) is failing (pure).
fn failing_reasons(v: &Value, d: &DiskHealth) -> Vec<String> {
    let mut why = Vec::new();
    let warning = d.critical_warning.unwrap_or(0);
    if warning != 0 {
        let named: Vec<&str> = NVME_WARNINGS.iter().filter(|(bit, _)| warning & bit != 0).map(|(_, w)| *w).collect();
        let other = warning & !NVME_WARNINGS.iter().fold(0, |a, (b, _)| a | b);
        let mut text = format!("NVMe critical warning 0x{warning:02x}");
        if !named.is_empty() {
            text.push_str(&format!(": {}", named.join(", ")));
        }
        if other != 0 {
            text.push_str(&format!(" (and unknown bits 0x{other:02x})"));
        }
        why.push(text);
    } else if d.passed == Some(false) {
        why.push("SMART overall-health self-assessment: FAILED".into());
    }
    for a in v.pointer("/ata_smart_attributes/table").and_then(Value::as_array).into_iter().flatten() {
        if a.get("when_failed").and_then(Value::as_str) == Some("now") {
            why.push(format!(
                "attribute {} {} at {}, at or below its threshold {}",
                a.get("id").and_then(u).unwrap_or(0),
                s(&a["name"]),
                a.get("value").and_then(u).unwrap_or(0),
                a.get("thresh").and_then(u).unwrap_or(0)
            ));
        }
    }
    if let Some(n) = d.pending_sectors.filter(|n| *n > 0) {
        why.push(format!("{n} sector(s) pending reallocation (unreadable)"));
    }
    if let Some(n) = d.offline_uncorrectable.filter(|n| *n > 0) {
        why.push(format!("{n} sector(s) uncorrectable in the offline scan"));
    }
    if let Some(p) = d.percentage_used.filter(|p| *p >= 100) {
        why.push(format!("rated endurance used up ({p}% used)"));
    }
    why
}

/// Reads one device's `smartctl --json -a`/`-x` output (pure). `device` names the disk
/// when the output does not (it failed before saying). Output that is not JSON, or
/// smartctl's failure to open or read the device, gives a record with `error` set.
pub fn parse(device: &str, text: &str) -> DiskHealth {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let mut d = DiskHealth { device: device.to_string(), ..Default::default() };
            d.error = Some(format!("smartctl's output is not JSON ({e}): {}", text.trim().chars().take(200).collect::<String>()));
            return d;
        }
    };
    let nvme = v.get("nvme_smart_health_information_log").unwrap_or(&Value::Null);
    let attr = |id: u64| -> Option<u64> {
        v.pointer("/ata_smart_attributes/table")?.as_array()?.iter().find(|a| a.get("id").and_then(u) == Some(id)).and_then(raw_count)
    };
    // ATA device statistics (from -x): the wear indicator of SSDs.
    let ata_used = v.pointer("/ata_device_statistics/pages").and_then(Value::as_array).and_then(|pages| {
        pages
            .iter()
            .filter_map(|p| p.get("table").and_then(Value::as_array))
            .flatten()
            .find(|e| e.get("name").and_then(Value::as_str) == Some("Percentage Used Endurance Indicator"))
            .and_then(|e| e.get("value").and_then(u))
    });
    let mut d = DiskHealth {
        device: v.pointer("/device/name").map(s).filter(|n| !n.is_empty()).unwrap_or_else(|| device.to_string()),
        protocol: v.pointer("/device/protocol").map(s).unwrap_or_default(),
        model: [v.get("model_name"), v.get("scsi_model_name"), v.get("product")]
            .into_iter()
            .flatten()
            .map(s)
            .find(|m| !m.is_empty())
            .unwrap_or_default(),
        serial: v.get("serial_number").map(s).unwrap_or_default(),
        passed: v.pointer("/smart_status/passed").and_then(Value::as_bool),
        temperature_celsius: v
            .pointer("/temperature/current")
            .and_then(Value::as_i64)
            .or_else(|| nvme.get("temperature").and_then(Value::as_i64)),
        power_on_hours: v.pointer("/power_on_time/hours").and_then(u).or_else(|| nvme.get("power_on_hours").and_then(u)),
        reallocated_sectors: attr(5),
        pending_sectors: attr(197),
        offline_uncorrectable: attr(198),
        percentage_used: nvme
            .get("percentage_used")
            .and_then(u)
            .or(ata_used)
            .or_else(|| v.get("scsi_percentage_used_endurance_indicator").and_then(u)),
        media_errors: nvme.get("media_errors").and_then(u),
        error_count: nvme.get("num_err_log_entries").and_then(u).or_else(|| {
            v.pointer("/ata_smart_error_log/extended/count")
                .and_then(u)
                .or_else(|| v.pointer("/ata_smart_error_log/summary/count").and_then(u))
        }),
        critical_warning: nvme.get("critical_warning").and_then(u),
        failing: Vec::new(),
        error: None,
        standby: false,
        read_at: None,
    };
    // Exit status bits 0 and 1: bad command line, or the device could not be opened (or
    // is asleep, with -n standby). Bit 2 (some command failed) still leaves usable data.
    let exit = v.pointer("/smartctl/exit_status").and_then(u).unwrap_or(0);
    if exit & 0b10 != 0 && asleep(&v) {
        // Not read, so as not to wake it: no values, no error (see [`carry_standby`]).
        return DiskHealth { device: d.device, protocol: d.protocol, standby: true, ..Default::default() };
    }
    if exit & 0b11 != 0 {
        let said = messages(&v, true);
        let said = if said.is_empty() { messages(&v, false) } else { said };
        d.error = Some(if said.is_empty() { format!("smartctl could not read the device (exit status {exit})") } else { said.join("; ") });
    } else if d.passed.is_none() && d.protocol.is_empty() {
        d.error = Some("smartctl said nothing about the device".into());
    }
    d.failing = failing_reasons(&v, &d);
    d
}

/// Whether smartctl left the disk alone because it is asleep (`-n standby`): its message
/// `Device is in STANDBY mode, exit(2)` (or SLEEP, or `STANDBY (OS)`).
fn asleep(v: &Value) -> bool {
    messages(v, false).iter().any(|m| m.contains("Device is in ") && m.contains(" mode"))
}

/// A round's result with each disk that was asleep given its reading of the round
/// `before` (its values and `read_at` unchanged) marked `standby`; a disk never read awake
/// stays a bare `standby` record (pure).
pub fn carry_standby(mut now: Scan, before: &Scan) -> Scan {
    for d in now.disks.iter_mut().filter(|d| d.standby) {
        if let Some(b) = before.disks.iter().find(|b| b.device == d.device && b.error.is_none() && b.read_at.is_some()) {
            *d = DiskHealth { standby: true, ..b.clone() };
        }
    }
    now
}

/// The devices of `smartctl --scan-open --json` output (pure).
pub fn parse_scan(text: &str) -> Result<Vec<Device>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("smartctl --scan-open's output is not JSON ({e})"))?;
    let exit = v.pointer("/smartctl/exit_status").and_then(u).unwrap_or(0);
    let devices = v.get("devices").and_then(Value::as_array);
    if devices.is_none() && exit != 0 {
        let said = messages(&v, false);
        return Err(format!(
            "smartctl --scan-open failed (exit status {exit}){}",
            if said.is_empty() { String::new() } else { format!(": {}", said.join("; ")) }
        ));
    }
    Ok(devices
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let name = d.get("name").map(s).filter(|n| !n.is_empty())?;
            Some(Device { name, kind: d.get("type").map(s).unwrap_or_default(), protocol: d.get("protocol").map(s).unwrap_or_default() })
        })
        .collect())
}

/// The server problems of these disks: one per failing disk (pure).
pub fn problems(disks: &[DiskHealth]) -> Vec<Problem> {
    disks
        .iter()
        .filter(|d| !d.failing.is_empty())
        .map(|d| {
            let mut what = Vec::new();
            if !d.model.is_empty() {
                what.push(d.model.clone());
            }
            if !d.serial.is_empty() {
                what.push(format!("serial {}", d.serial));
            }
            let what = if what.is_empty() { String::new() } else { format!(" ({})", what.join(", ")) };
            Problem {
                kind: DISK_FAILING.into(),
                nic_tag: String::new(),
                link: String::new(),
                wanted_mtu: None,
                actual_mtu: None,
                message: format!("disk {}{what} is failing: {}", d.device, d.failing.join("; ")),
            }
        })
        .collect()
}

/// Runs smartctl with `args`, killed after `timeout`; its standard output.
async fn smartctl(settings: &Settings, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&settings.smartctl);
    cmd.args(args).stdin(std::process::Stdio::null()).stderr(std::process::Stdio::null()).kill_on_drop(true);
    let shown = || format!("{} {}", settings.smartctl.display(), args.join(" "));
    match tokio::time::timeout(settings.timeout, cmd.output()).await {
        Err(_) => Err(format!("{} did not finish within {} s", shown(), settings.timeout.as_secs_f64())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{} not found: install smartmontools (scripts/up does) or give --smartctl", settings.smartctl.display()))
        }
        Ok(Err(e)) => Err(format!("running {}: {e}", shown())),
        // smartctl's exit status is a bit mask that is non-zero for failing disks too: the
        // JSON says what happened.
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// Reads every disk smartctl finds, one at a time.
pub async fn scan(settings: &Settings) -> Scan {
    let devices = match smartctl(settings, &["--scan-open", "--json"]).await.and_then(|t| parse_scan(&t)) {
        Ok(d) => d,
        Err(e) => return Scan { disks: Vec::new(), error: Some(e) },
    };
    let mut disks = Vec::new();
    for dev in devices {
        let mut args = vec!["--json=c", "-x"];
        if !dev.kind.is_empty() {
            args.extend(["-d", dev.kind.as_str()]);
        }
        // A sleeping (spun-down) ATA disk is not woken every round.
        if dev.protocol == "ATA" {
            args.extend(["-n", "standby"]);
        }
        args.push(dev.name.as_str());
        let d = match smartctl(settings, &args).await {
            Ok(text) => {
                let mut d = parse(&dev.name, &text);
                if d.error.is_none() && !d.standby {
                    d.read_at = Some(nereid_types::time::now_iso());
                }
                d
            }
            Err(e) => DiskHealth { device: dev.name.clone(), protocol: dev.protocol.clone(), error: Some(e), ..Default::default() },
        };
        disks.push(d);
    }
    Scan { disks, error: None }
}

/// One server's disk reader: its settings (none: it reads nothing, e.g. a simulated
/// server), the last round's result, and a wake-up for when the settings change.
#[derive(Default)]
pub struct Monitor {
    settings: Mutex<Option<Settings>>,
    last: Mutex<Scan>,
    wake: tokio::sync::Notify,
}

impl Monitor {
    pub fn new(settings: Option<Settings>) -> Arc<Self> {
        Arc::new(Monitor { settings: Mutex::new(settings), ..Default::default() })
    }

    /// Reads with these settings from now on (at once); `None` stops reading and forgets.
    pub fn set(&self, settings: Option<Settings>) {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner) = settings;
        self.wake.notify_one();
    }

    /// The disks as last read.
    pub fn disks(&self) -> Vec<DiskHealth> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).disks.clone()
    }

    /// The last round's result, with the scan's own error.
    pub fn last(&self) -> Scan {
        self.last.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether it reads disks at all.
    pub fn enabled(&self) -> bool {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Reads the disks on schedule, forever (spawn it; heartbeats read [`Monitor::disks`]).
    pub async fn run(self: Arc<Self>, server: uuid::Uuid) {
        loop {
            let settings = self.settings.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let every = settings.as_ref().map(|s| s.every);
            let now = match &settings {
                Some(s) => carry_standby(scan(s).await, &self.last()),
                None => Scan::default(),
            };
            let before = std::mem::replace(&mut *self.last.lock().unwrap_or_else(PoisonError::into_inner), now.clone());
            // Said once when it changes, not every round.
            if now.error != before.error
                && let Some(e) = &now.error
            {
                tracing::warn!(%server, error = %e, "cannot read the disks' health");
            }
            for d in &now.disks {
                let was = before.disks.iter().find(|b| b.device == d.device);
                if let Some(e) = d.error.as_ref().filter(|e| was.and_then(|w| w.error.as_ref()) != Some(*e)) {
                    tracing::warn!(%server, device = %d.device, error = %e, "cannot read a disk's health");
                }
                if !d.failing.is_empty() && was.map(|w| &w.failing) != Some(&d.failing) {
                    tracing::error!(%server, device = %d.device, model = %d.model, serial = %d.serial, why = %d.failing.join("; "), "disk failing");
                }
            }
            match every {
                Some(e) if !e.is_zero() => {
                    tokio::select! {
                        _ = tokio::time::sleep(e) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                _ => self.wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/data/smart/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_healthy_qemu_ata_disk_parses_with_its_counters() {
        for f in ["ata-qemu-a.json", "ata-qemu-x.json"] {
            let d = parse("/dev/x", &fixture(f));
            assert_eq!(d.device, "/dev/sda", "{f}");
            assert_eq!(d.protocol, "ATA");
            assert_eq!(d.model, "QEMU HARDDISK");
            assert_eq!(d.serial, "QM00005");
            assert_eq!(d.passed, Some(true));
            assert_eq!(d.temperature_celsius, Some(31));
            assert_eq!(d.power_on_hours, Some(1));
            assert_eq!(d.reallocated_sectors, Some(0));
            // QEMU's attribute table has neither 197 nor 198, and no wear indicator.
            assert_eq!((d.pending_sectors, d.offline_uncorrectable, d.percentage_used), (None, None, None));
            assert_eq!(d.error_count, Some(0));
            assert_eq!((d.media_errors, d.critical_warning), (None, None));
            // -x exits 4 on QEMU's disk (a log it does not have): still read.
            assert_eq!(d.error, None, "{f}");
            assert!(d.failing.is_empty(), "{f}: {:?}", d.failing);
        }
        assert!(problems(&[parse("/dev/sda", &fixture("ata-qemu-x.json"))]).is_empty());
    }

    #[test]
    fn a_healthy_qemu_nvme_disk_parses_with_its_counters() {
        for f in ["nvme-qemu-a.json", "nvme-qemu-x.json"] {
            let d = parse("/dev/x", &fixture(f));
            assert_eq!((d.device.as_str(), d.protocol.as_str()), ("/dev/nvme0", "NVMe"), "{f}");
            assert_eq!((d.model.as_str(), d.serial.as_str()), ("QEMU NVMe Ctrl", "NEREIDNVME0"));
            assert_eq!(d.passed, Some(true));
            assert_eq!(d.temperature_celsius, Some(50));
            assert_eq!(d.percentage_used, Some(0));
            assert_eq!((d.media_errors, d.error_count, d.critical_warning, d.power_on_hours), (Some(0), Some(0), Some(0), Some(0)));
            assert_eq!(d.reallocated_sectors, None);
            assert_eq!(d.error, None);
            assert!(d.failing.is_empty(), "{f}: {:?}", d.failing);
        }
    }

    #[test]
    fn an_nvme_disk_with_a_critical_warning_from_qemu_is_failing_and_raises_the_problem() {
        for f in ["nvme-qemu-critical-warning-a.json", "nvme-qemu-critical-warning-x.json"] {
            let d = parse("/dev/x", &fixture(f));
            assert_eq!((d.device.as_str(), d.serial.as_str()), ("/dev/nvme1", "NEREIDNVME1"), "{f}");
            assert_eq!(d.passed, Some(false));
            assert_eq!(d.critical_warning, Some(4));
            assert_eq!(d.error, None, "exit status 8 (disk failing) is a reading, not an error");
            assert_eq!(d.failing, vec!["NVMe critical warning 0x04: NVM subsystem reliability degraded (media or internal errors)"]);
            let p = problems(&[d]);
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].kind, DISK_FAILING);
            assert_eq!(
                p[0].message,
                "disk /dev/nvme1 (QEMU NVMe Ctrl, serial NEREIDNVME1) is failing: NVMe critical warning 0x04: NVM subsystem reliability degraded (media or internal errors)"
            );
            assert_eq!((p[0].nic_tag.as_str(), p[0].link.as_str()), ("", ""), "not a network problem: placement ignores it");
        }
    }

    #[test]
    fn the_edited_failing_ata_disk_is_failing_for_each_of_its_reasons() {
        let d = parse("/dev/sda", &fixture("ata-qemu-failing-edited.json"));
        assert_eq!(d.passed, Some(false));
        assert_eq!(d.reallocated_sectors, Some(1234));
        assert_eq!(d.pending_sectors, Some(8));
        assert_eq!(d.offline_uncorrectable, Some(2));
        assert_eq!(d.power_on_hours, Some(41234));
        assert_eq!(d.error_count, Some(3));
        assert_eq!(d.error, None);
        assert_eq!(
            d.failing,
            vec![
                "SMART overall-health self-assessment: FAILED",
                "attribute 5 Reallocated_Sector_Ct at 30, at or below its threshold 36",
                "8 sector(s) pending reallocation (unreadable)",
                "2 sector(s) uncorrectable in the offline scan",
            ]
        );
        let healthy = parse("/dev/nvme0", &fixture("nvme-qemu-x.json"));
        let p = problems(&[healthy, d]);
        assert_eq!(p.len(), 1, "only the failing disk: {p:?}");
        assert!(
            p[0].message.starts_with("disk /dev/sda (QEMU HARDDISK, serial QM00005) is failing: SMART overall-health"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn a_device_smartctl_cannot_open_is_named_with_smartctls_message() {
        let d = parse("/dev/sdz", &fixture("open-failed.json"));
        assert_eq!(d.device, "/dev/sdz");
        assert_eq!(d.passed, None);
        assert_eq!(d.error.as_deref(), Some("Smartctl open device: /dev/sdz [SAT] failed: No such device"));
        assert!(d.failing.is_empty(), "unreadable is not failing");
        let garbage = parse("/dev/sdq", "Segmentation fault");
        assert_eq!(garbage.device, "/dev/sdq");
        assert!(garbage.error.unwrap().starts_with("smartctl's output is not JSON"));
    }

    #[test]
    fn wear_and_unknown_critical_bits_are_named() {
        let mut v: Value = serde_json::from_str(&fixture("nvme-qemu-x.json")).unwrap();
        v["nvme_smart_health_information_log"]["percentage_used"] = 104.into();
        v["nvme_smart_health_information_log"]["critical_warning"] = 0x81.into();
        let d = parse("/dev/nvme0", &v.to_string());
        assert_eq!(d.percentage_used, Some(104));
        assert_eq!(
            d.failing,
            vec![
                "NVMe critical warning 0x81: available spare below its threshold (and unknown bits 0x80)",
                "rated endurance used up (104% used)"
            ]
        );
    }

    #[test]
    fn the_scan_lists_every_device_with_its_type() {
        let devs = parse_scan(&fixture("scan-open.json")).unwrap();
        let names: Vec<(&str, &str, &str)> = devs.iter().map(|d| (d.name.as_str(), d.kind.as_str(), d.protocol.as_str())).collect();
        assert_eq!(names, vec![("/dev/sda", "sat", "ATA"), ("/dev/nvme0", "nvme", "NVMe"), ("/dev/nvme1", "nvme", "NVMe")]);
        assert!(parse_scan("no").unwrap_err().contains("not JSON"));
        assert_eq!(parse_scan(r#"{"smartctl": {"exit_status": 0}}"#).unwrap(), vec![], "a host without disks smartctl sees");
    }

    /// A fake smartctl at the edge: the scan fixture, then each device's fixture.
    fn fake_smartctl(dir: &std::path::Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("smartctl");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn a_scan_runs_smartctl_on_each_device_and_names_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let data = format!("{}/tests/data/smart", env!("CARGO_MANIFEST_DIR"));
        let log = dir.path().join("args");
        let body = format!(
            r#"echo "$@" >> {log}
case "$*" in
  *--scan-open*) cat {data}/scan-open.json ;;
  */dev/sda) cat {data}/ata-qemu-failing-edited.json; exit 28 ;;
  */dev/nvme0) cat {data}/nvme-qemu-x.json ;;
  */dev/nvme1) exec sleep 30 ;;
esac"#,
            log = log.display()
        );
        let s = Settings { timeout: Duration::from_millis(500), ..Settings::new(fake_smartctl(dir.path(), &body)) };
        let r = scan(&s).await;
        assert_eq!(r.error, None);
        let devs: Vec<&str> = r.disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(devs, vec!["/dev/sda", "/dev/nvme0", "/dev/nvme1"]);
        assert_eq!(r.disks[0].passed, Some(false), "the exit status 28 of a failing disk still gives its reading");
        assert_eq!(r.disks[1].passed, Some(true));
        let hung = r.disks[2].error.as_deref().unwrap();
        assert!(hung.contains("did not finish within 0.5 s"), "{hung}");
        assert_eq!(r.disks[2].protocol, "NVMe");
        let args = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            vec![
                "--scan-open --json",
                "--json=c -x -d sat -n standby /dev/sda",
                "--json=c -x -d nvme /dev/nvme0",
                "--json=c -x -d nvme /dev/nvme1"
            ]
        );

        let missing = scan(&Settings::new(dir.path().join("no-smartctl"))).await;
        assert!(missing.disks.is_empty());
        assert!(missing.error.unwrap().contains("not found: install smartmontools"));
    }

    #[test]
    fn a_sleeping_disk_is_standby_not_an_error() {
        let d = parse("/dev/sda", &fixture("ata-standby.json"));
        assert_eq!((d.device.as_str(), d.protocol.as_str(), d.standby, d.error.as_deref()), ("/dev/sda", "ATA", true, None));
        assert_eq!((d.passed, d.read_at.as_deref()), (None, None), "nothing was read");
        // A device that cannot be opened (the same exit status 2) is still an error.
        assert!(!parse("/dev/sdz", &fixture("open-failed.json")).standby);
    }

    #[tokio::test]
    async fn a_disk_that_falls_asleep_keeps_its_last_reading() {
        let dir = tempfile::tempdir().unwrap();
        let data = format!("{}/tests/data/smart", env!("CARGO_MANIFEST_DIR"));
        // /dev/sda is awake for the first round, asleep after; /dev/nvme1 has never been awake.
        let body = format!(
            r#"case "$*" in
  *--scan-open*) cat {data}/scan-open.json ;;
  */dev/sda) if [ -e {woke} ]; then cat {data}/ata-standby.json; exit 2; fi; touch {woke}; cat {data}/ata-qemu-x.json; exit 4 ;;
  */dev/nvme0) cat {data}/nvme-qemu-x.json ;;
  */dev/nvme1) sed 's|/dev/sda|/dev/nvme1|' {data}/ata-standby.json; exit 2 ;;
esac"#,
            woke = dir.path().join("woke").display()
        );
        let s = Settings::new(fake_smartctl(dir.path(), &body));
        let first = carry_standby(scan(&s).await, &Scan::default());
        let awake = first.disks[0].clone();
        assert_eq!((awake.standby, awake.passed, awake.error.as_deref()), (false, Some(true), None));
        assert!(awake.read_at.is_some(), "{awake:?}");
        let second = carry_standby(scan(&s).await, &first);
        let devs: Vec<&str> = second.disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(devs, vec!["/dev/sda", "/dev/nvme0", "/dev/nvme1"], "no disk is dropped");
        assert_eq!(second.disks[0], DiskHealth { standby: true, ..awake }, "the last reading, its read_at unchanged");
        let never = &second.disks[2];
        assert_eq!((never.standby, never.error.as_deref(), never.read_at.as_deref()), (true, None, None));
        // Awake again: a fresh reading, no longer standby.
        std::fs::remove_file(dir.path().join("woke")).unwrap();
        let third = carry_standby(scan(&s).await, &second);
        assert!(!third.disks[0].standby && third.disks[0].read_at.is_some());
    }

    #[tokio::test]
    async fn the_monitor_reads_at_once_when_told_and_forgets_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let data = format!("{}/tests/data/smart", env!("CARGO_MANIFEST_DIR"));
        let body = format!(
            r#"case "$*" in
  *--scan-open*) cat {data}/scan-open.json ;;
  */dev/nvme1) cat {data}/nvme-qemu-critical-warning-x.json ;;
  *) cat {data}/nvme-qemu-x.json ;;
esac"#
        );
        let m = Monitor::new(None);
        let task = tokio::spawn(m.clone().run(uuid::Uuid::nil()));
        assert!(!m.enabled());
        m.set(Some(Settings::new(fake_smartctl(dir.path(), &body))));
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while m.disks().len() < 3 {
            assert!(std::time::Instant::now() < end, "the monitor never read the disks");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(problems(&m.disks()).len(), 1);
        m.set(None);
        while !m.disks().is_empty() {
            assert!(std::time::Instant::now() < end, "the monitor kept the disks after being stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
    }
}
