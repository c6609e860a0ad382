//! CNAPI servers: compute nodes as the headnode records them.
//!
//! A server record is created when an agent joins and refreshed from its sysinfo. Its
//! liveness is not stored in it: `status` is computed when read, from the time of the last
//! heartbeat (`running` while heartbeats arrive, `unknown` after a configurable silence).
//! ServerUpdate changes the operator-owned fields; unlike Triton, `overprovision_ratios`
//! are persisted and used by placement.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::spec::{self, Field, Kind, Mode};

/// Overprovision ratios; Triton's defaults are cpu 4, ram 1, disk 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub cpu: f64,
    pub ram: f64,
    pub disk: f64,
}

impl Default for Ratios {
    fn default() -> Self {
        Ratios { cpu: 4.0, ram: 1.0, disk: 1.0 }
    }
}

/// A server as stored (its secret lives elsewhere and is never rendered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub uuid: Uuid,
    pub hostname: String,
    pub sysinfo: Map<String, Value>,
    pub setup: bool,
    pub headnode: bool,
    pub reserved: bool,
    pub reservoir: bool,
    pub traits: Map<String, Value>,
    pub overprovision_ratios: Ratios,
    pub reservation_ratio: f64,
    /// Where the headnode reaches the agent.
    pub agent_url: String,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_boot: Option<String>,
    pub current_platform: String,
    pub system_type: String,
    /// RAM, MiB.
    pub ram: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack_identifier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

impl Server {
    /// A new record with Triton's defaults (not reserved, no traits, ratios cpu 4 ram 1
    /// disk 1, 15 % of RAM held back), filled in from sysinfo by the caller.
    pub fn new(uuid: Uuid, now: &str) -> Self {
        Server {
            uuid,
            hostname: String::new(),
            sysinfo: Map::new(),
            setup: true,
            headnode: false,
            reserved: false,
            reservoir: false,
            traits: Map::new(),
            overprovision_ratios: Ratios::default(),
            reservation_ratio: 0.15,
            agent_url: String::new(),
            created: now.to_string(),
            last_boot: None,
            current_platform: String::new(),
            system_type: "Linux".into(),
            ram: 0,
            rack_identifier: None,
            comments: None,
        }
    }
}

/// Fields ServerUpdate (`POST /servers/{uuid}`) may change.
pub const UPDATE_FIELDS: &[Field] = &[
    Field::new("reserved", Kind::Bool, "Keep the server out of placement."),
    Field::new("reservoir", Kind::Bool, "Use the server only when nothing else fits."),
    Field::new("traits", Kind::Object, "Traits placement matches against (exact key set)."),
    Field::new(
        "overprovision_ratios",
        Kind::Custom { check: check_ratios, schema: ratios_schema },
        "{cpu, ram, disk} overprovision ratios; persisted and used by placement (Triton drops them).",
    ),
    Field::new(
        "reservation_ratio",
        Kind::Custom { check: check_fraction, schema: fraction_schema },
        "Share of RAM held back for the host, 0 to 1 (default 0.15).",
    ),
    Field::new("rack_identifier", Kind::Str { max: 256, check: None }, "Where the server is."),
    Field::new("comments", Kind::Str { max: 4096, check: None }, "Operator notes."),
];

fn check_ratios(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("must be an object {cpu, ram, disk}")?;
    for (k, r) in o {
        if !matches!(k.as_str(), "cpu" | "ram" | "disk") {
            return Err(format!("unknown ratio {k:?} (cpu, ram, disk)"));
        }
        match r.as_f64() {
            Some(x) if x > 0.0 && x <= 100.0 => {}
            _ => return Err(format!("{k} must be a number above 0 and at most 100")),
        }
    }
    Ok(())
}

fn ratios_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {"cpu": {"type": "number"}, "ram": {"type": "number"}, "disk": {"type": "number"}}})
}

fn check_fraction(v: &Value) -> Result<(), String> {
    match v.as_f64() {
        Some(x) if (0.0..1.0).contains(&x) => Ok(()),
        _ => Err("must be a number from 0 to below 1".into()),
    }
}

fn fraction_schema() -> Value {
    json!({"type": "number", "minimum": 0, "exclusiveMaximum": 1})
}

fn check_temperatures(v: &Value) -> Result<(), String> {
    v.as_array().map(|_| ()).ok_or_else(|| "must be an array of readings".into())
}

fn temperatures_schema() -> Value {
    json!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["sensor", "label", "celsius", "at"],
            "properties": {
                "sensor": {"type": "string", "description": "The chip that reports it (hwmon name), e.g. coretemp."},
                "label": {"type": "string", "description": "What it measures, e.g. Package id 0."},
                "celsius": {"type": "number"},
                "at": {"type": "string", "format": "date-time", "description": "The heartbeat that carried it."}
            }
        }
    })
}

fn check_disks(v: &Value) -> Result<(), String> {
    v.as_array().map(|_| ()).ok_or_else(|| "must be an array of disks".into())
}

/// One disk's health as a heartbeat carries it and CNAPI shows it ([`crate::agent::DiskHealth`]).
pub fn disk_schema() -> Value {
    let count = |d: &str| json!({"type": "integer", "minimum": 0, "description": d});
    json!({
        "type": "object",
        "required": ["device", "protocol"],
        "properties": {
            "device": {"type": "string", "description": "The device smartctl read, e.g. /dev/sda, /dev/nvme0."},
            "protocol": {"type": "string", "description": "ATA, NVMe or SCSI."},
            "model": {"type": "string"},
            "serial": {"type": "string"},
            "passed": {"type": "boolean", "description": "smartctl's overall verdict; absent when it could not tell."},
            "temperature_celsius": {"type": "integer"},
            "power_on_hours": count("Hours powered on."),
            "reallocated_sectors": count("ATA attribute 5 (raw)."),
            "pending_sectors": count("ATA attribute 197 (raw): unreadable sectors waiting to be remapped."),
            "offline_uncorrectable": count("ATA attribute 198 (raw)."),
            "percentage_used": count("Wear: NVMe percentage_used or ATA's endurance indicator."),
            "media_errors": count("NVMe media and data integrity errors."),
            "error_count": count("Errors the disk logged."),
            "critical_warning": count("NVMe critical warning bits."),
            "failing": {"type": "array", "items": {"type": "string"}, "description": "Why the disk is failing; absent while it is not."},
            "error": {"type": "string", "description": "Why it could not be read."}
        }
    })
}

fn disks_schema() -> Value {
    json!({"type": "array", "items": disk_schema()})
}

/// Fields a rendered server has (for the API document).
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Server UUID (SMBIOS system UUID, pinned by the agent).").read_only(),
    Field::new("hostname", Kind::Str { max: 256, check: None }, "Host name.").read_only(),
    Field::new("status", Kind::Enum(&["running", "unknown"]), "running while heartbeats arrive, else unknown.").read_only(),
    Field::new("last_heartbeat", Kind::Str { max: 40, check: None }, "Time of the last heartbeat.").read_only(),
    Field::new("setup", Kind::Bool, "Whether the server is set up.").read_only(),
    Field::new("headnode", Kind::Bool, "Whether this is a headnode.").read_only(),
    Field::new("reserved", Kind::Bool, "Kept out of placement."),
    Field::new("reservoir", Kind::Bool, "Used only when nothing else fits."),
    Field::new("traits", Kind::Object, "Placement traits."),
    Field::new("overprovision_ratios", Kind::Object, "{cpu, ram, disk}."),
    Field::new("reservation_ratio", Kind::Custom { check: check_fraction, schema: fraction_schema }, "Share of RAM held back."),
    Field::new("ram", Kind::Int { min: 0, max: i64::MAX, multiple_of: None, unit: Some("MiB") }, "RAM in MiB.").read_only(),
    Field::new("sysinfo", Kind::Object, "The server's sysinfo.").read_only(),
    Field::new(
        "temperatures",
        Kind::Custom { check: check_temperatures, schema: temperatures_schema },
        "Hardware temperatures from the last heartbeat (hwmon sensors); empty when the server reports none.",
    )
    .read_only(),
    Field::new(
        "disks",
        Kind::Custom { check: check_disks, schema: disks_schema },
        "Its disks' SMART / NVMe health from the last heartbeat (read by the agent with smartctl every few minutes); a failing one is also a problem (disk_failing).",
    )
    .read_only(),
    Field::new("vms", Kind::Object, "The VMs the server reports (extras=vms).").read_only(),
    Field::new("nic_tag_addresses", Kind::Object, "Its IPv4 address on each nic tag's link, from the last heartbeat.").read_only(),
    Field::new(
        "netpolicy_digest",
        Kind::Str { max: 128, check: None },
        "The digest of the network policy (overlay peers, firewalls) it applied last; absent before any.",
    )
    .read_only(),
];

/// Applies a ServerUpdate body.
pub fn check_update(current: &Server, input: &Map<String, Value>) -> Result<Server, ApiError> {
    let errors = spec::check(UPDATE_FIELDS, input, Mode::Update, &[]);
    if !errors.is_empty() {
        return Err(ApiError::new(422, "InvalidParameters", "Invalid parameters").with_errors(errors));
    }
    let mut s = current.clone();
    for (k, v) in input {
        match k.as_str() {
            "reserved" => s.reserved = v.as_bool().unwrap_or(false),
            "reservoir" => s.reservoir = v.as_bool().unwrap_or(false),
            "traits" => s.traits = v.as_object().cloned().unwrap_or_default(),
            "overprovision_ratios" => {
                let mut r = Ratios::default();
                if let Some(o) = v.as_object() {
                    r.cpu = o.get("cpu").and_then(Value::as_f64).unwrap_or(r.cpu);
                    r.ram = o.get("ram").and_then(Value::as_f64).unwrap_or(r.ram);
                    r.disk = o.get("disk").and_then(Value::as_f64).unwrap_or(r.disk);
                }
                s.overprovision_ratios = r;
            }
            "reservation_ratio" => s.reservation_ratio = v.as_f64().unwrap_or(0.15),
            "rack_identifier" => s.rack_identifier = v.as_str().map(str::to_string),
            "comments" => s.comments = v.as_str().map(str::to_string),
            other => return Err(ApiError::invalid_parameters(vec![FieldError::unknown(other)])),
        }
    }
    Ok(s)
}

/// Liveness from the time since the last heartbeat.
pub fn status(last_heartbeat_ms: Option<i64>, now_ms: i64, timeout_ms: i64) -> (&'static str, u64) {
    match last_heartbeat_ms {
        Some(t) if now_ms - t <= timeout_ms => ("running", ((now_ms - t).max(0) / 1000) as u64),
        Some(t) => ("unknown", ((now_ms - t).max(0) / 1000) as u64),
        None => ("unknown", u64::MAX / 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server { hostname: "cn".into(), agent_url: "http://x".into(), ram: 1024, ..Server::new(Uuid::nil(), "t") }
    }

    #[test]
    fn update_persists_ratios_and_refuses_nonsense() {
        let s = check_update(&server(), json!({"overprovision_ratios": {"ram": 1.5}, "reserved": true}).as_object().unwrap()).unwrap();
        assert_eq!((s.overprovision_ratios.ram, s.overprovision_ratios.cpu, s.reserved), (1.5, 4.0, true));
        assert!(check_update(&server(), json!({"overprovision_ratios": {"ram": -1}}).as_object().unwrap()).is_err());
        assert!(check_update(&server(), json!({"reservation_ratio": 1.5}).as_object().unwrap()).is_err());
        assert!(check_update(&server(), json!({"hostname": "x"}).as_object().unwrap()).is_err());
    }

    #[test]
    fn status_from_heartbeats() {
        assert_eq!(status(Some(10_000), 15_000, 11_000), ("running", 5));
        assert_eq!(status(Some(10_000), 30_000, 11_000), ("unknown", 20));
        assert_eq!(status(None, 30_000, 11_000).0, "unknown");
    }
}
