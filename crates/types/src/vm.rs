//! VMAPI VMs: the record, the CreateVm and update field tables, and how a VM renders.
//!
//! The record tolerates anything a store may hold — including Triton's infamous
//! half-empty "ghost" `{uuid, server_uuid}` — so every field but `uuid` is optional and
//! unknown keys are kept. Rendering follows VMAPI's `translateVm`: a fixed field set with
//! gaps filled (`null`, `{}` for metadata and tags, `[]` for nics, snapshots and datasets,
//! `false` for firewall_enabled).
//!
//! Units: `ram`/`max_physical_memory` MiB, `quota` **GiB** (VMAPI's), disk sizes MiB,
//! `cpu_cap` percent of one CPU.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::agent::{Definition, DiskDef, NicDef};
use crate::spec::{Field, Kind};

/// Brands Nereid runs (hardware VMs on QEMU).
pub const SUPPORTED_BRANDS: &[&str] = &["bhyve", "kvm"];
/// States VMAPI's `state` filter accepts.
pub const STATE_FILTERS: &[&str] = &["running", "stopped", "active", "destroyed", "provisioning", "failed"];
/// Jobs that act on a VM.
pub const ACTIONS: &[&str] = &[
    "start",
    "stop",
    "reboot",
    "update",
    "create_snapshot",
    "rollback_snapshot",
    "delete_snapshot",
    "add_nics",
    "update_nics",
    "remove_nics",
    "create_image",
    "migrate",
];
/// The `allow_*` flags `update_nics` may set on a NIC.
pub const NIC_FLAGS: &[&str] =
    &["allow_dhcp_spoofing", "allow_ip_spoofing", "allow_mac_spoofing", "allow_restricted_traffic", "allow_unfiltered_promisc"];

/// A VM record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub uuid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_physical_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_swap: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lwps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_io_priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoboot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall_enabled: Option<bool>,
    /// Refuses deletion while true (CloudAPI's `deletion_protection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_protection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<NicDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskDef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolvers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootrom: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<Value>>,
    /// What the headnode wants (`running`/`stopped`); the agent converges to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state: Option<String>,
    /// The newest agent report accepted (only the agent increments it).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub agent_generation: i64,
    /// Increases whenever the definition sent to the agent changes.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub definition_generation: i64,
    /// Increases once per requested reboot.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub reboot_generation: i64,
    /// Increases once per requested rollback (to `rollback_to`).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub rollback_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// Why the VM failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Keys Nereid does not model, kept as they are.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Nereid's own counters were written by every version; a null one (a hand edit, an old
/// backup) reads as never incremented rather than making the record unreadable.
fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(Option::<i64>::deserialize(d)?.unwrap_or(0))
}

/// Decodes a stored VM record; one that does not decode, or whose `uuid` is not its key,
/// is [`Stored::Damaged`](crate::damaged::Stored) and never an error for anyone else.
pub fn decode(key: &str, raw: Value) -> crate::damaged::Stored<Vm> {
    use crate::damaged::{Damaged, Stored};
    match crate::damaged::decode::<Vm>("vms", key, raw) {
        Stored::Ok(vm) if vm.uuid.to_string() != key => Stored::Damaged(Damaged {
            bucket: "vms".into(),
            key: key.into(),
            error: format!("its uuid {} is not its key {key}", vm.uuid),
            raw: serde_json::to_value(&vm).unwrap_or(Value::Null),
        }),
        other => other,
    }
}

/// What an operator does about a damaged VM record.
pub fn damaged_repair(key: &str) -> String {
    format!(
        "read it with GET /vms/{key}, then PUT /vms/{key} (If-Match: its ETag) with the fields that make it a VM again, \
         or DELETE /vms/{key}"
    )
}

/// The destroyed record that replaces a damaged one: what can be read of it (so the
/// owner and server still find it), the original kept under `damaged_record`.
pub fn destroyed_from_damaged(uuid: Uuid, d: &crate::damaged::Damaged, now: &str) -> Vm {
    let mut rest = Map::new();
    rest.insert("damaged_record".into(), d.raw.clone());
    rest.insert("damaged_error".into(), json!(d.error));
    Vm {
        uuid,
        alias: d.str_field("alias").map(str::to_string),
        brand: d.str_field("brand").map(str::to_string),
        owner_uuid: d.uuid_field("owner_uuid"),
        server_uuid: d.uuid_field("server_uuid"),
        state: Some("destroyed".into()),
        zone_state: Some("destroyed".into()),
        create_timestamp: d.str_field("create_timestamp").map(str::to_string),
        destroyed: Some(now.into()),
        last_modified: Some(now.into()),
        rest,
        ..Vm::default()
    }
}

/// PutVm's per-field checks: every field must have the type the record has, and sizes
/// must be possible — at most what the largest server has (`largest`: its RAM and disk,
/// MiB), and within CreateVm's bounds.
pub fn check_put(input: &Map<String, Value>, largest: Option<(u64, u64)>) -> Vec<crate::FieldError> {
    use crate::FieldError;
    let mut errors = Vec::new();
    for (k, v) in input.iter().filter(|(_, v)| !v.is_null()) {
        let probe = Value::Object(Map::from_iter([("uuid".to_string(), json!(Uuid::nil())), (k.clone(), v.clone())]));
        if let Err(e) = serde_json::from_value::<Vm>(probe) {
            errors.push(FieldError::invalid(k, format!("has the wrong type: {e}")));
            continue;
        }
        if let ("ram" | "max_physical_memory", Some((ram, _))) = (k.as_str(), largest)
            && v.as_u64().is_some_and(|r| r > ram)
        {
            errors.push(FieldError::invalid(k, format!("{v} MiB is more than any server has (the largest has {ram} MiB)")));
            continue;
        }
        let bounded = CREATE_FIELDS.iter().find(|f| f.name == k && matches!(k.as_str(), "ram" | "vcpus" | "quota" | "cpu_cap"));
        if let Some(f) = bounded
            && let Err(m) = crate::spec::check_value(&f.kind, v)
        {
            errors.push(FieldError::invalid(k, m));
            continue;
        }
        if k == "disks" {
            let disks: Vec<DiskDef> = serde_json::from_value(v.clone()).unwrap_or_default();
            if let Some((i, d)) = disks.iter().enumerate().find(|(_, d)| d.size > MAX_DISK_MIB) {
                errors.push(FieldError::invalid(k, format!("disks[{i}].size {} MiB is more than {MAX_DISK_MIB} MiB", d.size)));
            } else if let Some((_, disk)) = largest {
                let total: u64 = disks.iter().filter(|d| d.media != "cdrom").map(|d| d.size).sum();
                if disk > 0 && total > disk {
                    errors.push(FieldError::invalid(
                        k,
                        format!("{total} MiB of disks is more than any server has (the largest has {disk} MiB)"),
                    ));
                }
            }
        }
    }
    errors
}

/// The most a VM's customer_metadata, internal_metadata and tags may hold together (bytes
/// of JSON): a bigger record could not be sent to its server.
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// Refuses metadata and tags that together exceed [`MAX_METADATA_BYTES`].
pub fn check_metadata_total(
    customer: Option<&Map<String, Value>>,
    internal: Option<&Map<String, Value>>,
    tags: Option<&Map<String, Value>>,
) -> Result<(), crate::FieldError> {
    let size = |m: Option<&Map<String, Value>>| m.map(|m| serde_json::to_vec(m).map(|v| v.len()).unwrap_or(0)).unwrap_or(0);
    let total = size(customer) + size(internal) + size(tags);
    if total > MAX_METADATA_BYTES {
        return Err(crate::FieldError::invalid(
            "metadata",
            format!(
                "the VM's metadata and tags would take {total} bytes; together they may take at most {MAX_METADATA_BYTES} bytes (1 MiB): remove some first"
            ),
        ));
    }
    Ok(())
}

/// A VM's CPU cap as far as the record knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapState {
    Capped(u32),
    Uncapped,
    /// The record is incomplete: its cap is not known.
    Unknown,
}

impl Vm {
    /// Whether the record has what every real VM has (owner, brand, RAM).
    pub fn is_complete(&self) -> bool {
        self.owner_uuid.is_some() && self.brand.is_some() && (self.ram.is_some() || self.max_physical_memory.is_some())
    }

    /// Guest RAM (MiB).
    pub fn ram_mib(&self) -> Option<u64> {
        self.ram.or(self.max_physical_memory)
    }

    /// Disk in MiB: the disks' sizes, else the quota. Saturating: a stored record's sizes
    /// are not bounded (an old or hand-edited one), and an overflow must neither panic nor
    /// wrap to a small size that placement would under-count (found by the vm_payload fuzz
    /// target).
    pub fn disk_mib(&self) -> Option<u64> {
        match &self.disks {
            Some(d) if !d.is_empty() => Some(d.iter().filter(|d| d.media != "cdrom").fold(0u64, |t, d| t.saturating_add(d.size))),
            _ => self.quota.map(|q| q.saturating_mul(1024)),
        }
    }

    pub fn cap(&self) -> CapState {
        match (self.is_complete(), self.cpu_cap) {
            (_, Some(c)) if c > 0 => CapState::Capped(c),
            (true, _) => CapState::Uncapped,
            (false, _) => CapState::Unknown,
        }
    }

    /// Counts against capacity: not destroyed and not failed (an absent state counts).
    pub fn is_active(&self) -> bool {
        !matches!(self.state.as_deref(), Some("destroyed") | Some("failed"))
    }

    /// What the agent needs to run it.
    pub fn definition(&self) -> Result<Definition, String> {
        let owner = self.owner_uuid.ok_or("the VM record has no owner_uuid")?;
        let brand = self.brand.clone().ok_or("the VM record has no brand")?;
        let ram = self.ram_mib().ok_or("the VM record has no ram")?;
        Ok(Definition {
            uuid: self.uuid,
            brand,
            owner_uuid: owner,
            alias: self.alias.clone(),
            hostname: self.hostname.clone(),
            ram,
            vcpus: self.vcpus.unwrap_or(1),
            cpu_cap: self.cpu_cap.filter(|c| *c > 0),
            cpu_shares: self.cpu_shares,
            zfs_io_priority: self.zfs_io_priority,
            disks: self.disks.clone().unwrap_or_default(),
            nics: self.nics.clone().unwrap_or_default(),
            bootrom: self.bootrom.clone(),
            cpu_type: self.cpu_type.clone(),
            customer_metadata: self.customer_metadata.clone().unwrap_or_default(),
            internal_metadata: self.internal_metadata.clone().unwrap_or_default(),
            tags: self.tags.clone().unwrap_or_default(),
            resolvers: self.resolvers.clone().unwrap_or_default(),
            routes: self.routes.clone(),
            image_uuid: self.image_uuid.or_else(|| self.disks.as_ref()?.iter().find_map(|d| d.image_uuid)),
            billing_id: self.billing_id,
            package_name: self.package_name.clone(),
            internal_metadata_namespaces: self
                .rest
                .get("internal_metadata_namespaces")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default(),
            autoboot: self.autoboot,
        })
    }

    /// Names of the snapshots the VM should have (those being deleted excluded).
    pub fn snapshot_names(&self) -> Vec<String> {
        self.snapshots
            .iter()
            .flatten()
            .filter(|s| s.get("state").and_then(Value::as_str) != Some("deleting"))
            .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// What the VM's server is asked to make true: this definition, in `state`.
    pub fn ensure(&self, state: crate::agent::Desired, reboot_generation: Option<i64>) -> Result<crate::agent::Ensure, String> {
        Ok(crate::agent::Ensure {
            state,
            definition: self.definition()?,
            definition_generation: self.definition_generation.max(1),
            reboot_generation: reboot_generation.unwrap_or(self.reboot_generation),
            snapshots: self.snapshot_names(),
            rollback_to: self.rollback_to.clone(),
            rollback_generation: self.rollback_generation,
        })
    }

    /// Marks the record destroyed (or failed, if it never finished provisioning), as
    /// VMAPI's markAsDestroyed does — on this record, never on a partial copy of it.
    pub fn mark_destroyed(&mut self, now: &str) {
        let state = if self.state.as_deref() == Some("provisioning") { "failed" } else { "destroyed" };
        self.state = Some(state.into());
        self.zone_state = Some(state.into());
        self.destroyed = Some(now.into());
        self.last_modified = Some(now.into());
    }
}

/// A stored VM as VMAPI lists it: rendered, or (damaged) its raw fields with a `damaged`
/// marker saying why and how to repair it.
pub fn render_entry(e: &crate::damaged::Stored<Vm>) -> Value {
    match e {
        crate::damaged::Stored::Ok(vm) => render(vm),
        crate::damaged::Stored::Damaged(d) => d.render(&damaged_repair(&d.key)),
    }
}

/// The VM as VMAPI renders it (translateVm).
pub fn render(vm: &Vm) -> Value {
    serde_json::to_value(Rendered(vm)).unwrap_or(Value::Null)
}

/// [`render`]'s object, serialized straight from the record (no `Value` tree, no
/// copies): ListVms streams these.
pub struct Rendered<'a>(pub &'a Vm);

/// [`render_entry`]'s object, serialized straight for a good record.
pub struct RenderedEntry<'a>(pub &'a crate::damaged::Stored<Vm>);

impl Serialize for RenderedEntry<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            crate::damaged::Stored::Ok(vm) => Rendered(vm).serialize(ser),
            crate::damaged::Stored::Damaged(d) => d.render(&damaged_repair(&d.key)).serialize(ser),
        }
    }
}

/// An absent map or list renders empty.
struct OrEmpty<'a, T>(Option<&'a T>);

impl<T: Serialize> Serialize for OrEmpty<'_, T> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.0 {
            Some(t) => t.serialize(ser),
            None => ser.serialize_seq(Some(0))?.end(),
        }
    }
}

impl Serialize for Rendered<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let vm = self.0;
        let hvm = vm.brand.as_deref().is_some_and(|b| SUPPORTED_BRANDS.contains(&b));
        let empty = Map::new();
        let none: Option<()> = None;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("uuid", &vm.uuid)?;
        m.serialize_entry("alias", &vm.alias)?;
        m.serialize_entry("autoboot", &vm.autoboot)?;
        m.serialize_entry("brand", &vm.brand)?;
        m.serialize_entry("billing_id", &vm.billing_id)?;
        m.serialize_entry("cpu_cap", &vm.cpu_cap)?;
        m.serialize_entry("cpu_shares", &vm.cpu_shares)?;
        m.serialize_entry("create_timestamp", &vm.create_timestamp)?;
        m.serialize_entry("customer_metadata", vm.customer_metadata.as_ref().unwrap_or(&empty))?;
        m.serialize_entry("datasets", &[(); 0])?;
        m.serialize_entry("destroyed", &vm.destroyed)?;
        m.serialize_entry("firewall_enabled", &vm.firewall_enabled.unwrap_or(false))?;
        m.serialize_entry("image_uuid", &vm.image_uuid)?;
        m.serialize_entry("internal_metadata", vm.internal_metadata.as_ref().unwrap_or(&empty))?;
        m.serialize_entry("last_modified", &vm.last_modified)?;
        m.serialize_entry("limit_priv", &none)?;
        m.serialize_entry("max_locked_memory", &none)?;
        m.serialize_entry("max_lwps", &vm.max_lwps)?;
        m.serialize_entry("max_physical_memory", &vm.max_physical_memory)?;
        m.serialize_entry("max_swap", &vm.max_swap)?;
        m.serialize_entry("nics", &OrEmpty(vm.nics.as_ref()))?;
        m.serialize_entry("owner_uuid", &vm.owner_uuid)?;
        m.serialize_entry("platform_buildstamp", &none)?;
        m.serialize_entry("quota", &vm.quota)?;
        m.serialize_entry("ram", &vm.ram)?;
        m.serialize_entry("resolvers", &vm.resolvers)?;
        m.serialize_entry("server_uuid", &vm.server_uuid)?;
        m.serialize_entry("snapshots", &OrEmpty(vm.snapshots.as_ref()))?;
        m.serialize_entry("state", &vm.state)?;
        m.serialize_entry("tags", vm.tags.as_ref().unwrap_or(&empty))?;
        m.serialize_entry("zfs_filesystem", &none)?;
        m.serialize_entry("zfs_io_priority", &vm.zfs_io_priority)?;
        m.serialize_entry("zone_state", &vm.zone_state)?;
        m.serialize_entry("zonepath", &none)?;
        m.serialize_entry("zpool", &none)?;
        if hvm {
            m.serialize_entry("vcpus", &vm.vcpus)?;
            m.serialize_entry("cpu_type", &vm.cpu_type)?;
            m.serialize_entry("disks", &OrEmpty(vm.disks.as_ref()))?;
            m.serialize_entry("bootrom", &vm.bootrom)?;
        }
        for (k, v) in [
            ("boot_timestamp", &vm.boot_timestamp),
            ("hostname", &vm.hostname),
            ("package_name", &vm.package_name),
            ("package_version", &vm.package_version),
        ] {
            if let Some(v) = v {
                m.serialize_entry(k, v)?;
            }
        }
        if let Some(r) = &vm.routes {
            m.serialize_entry("routes", r)?;
        }
        if let Some(e) = &vm.error {
            m.serialize_entry("error", e)?;
        }
        // What a damaged record was before it was destroyed (see destroyed_from_damaged).
        for k in ["damaged_record", "damaged_error"] {
            if let Some(v) = vm.rest.get(k) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

pub fn check_alias(s: &str) -> Result<(), String> {
    let ok = s.len() <= 189
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must start with a letter or digit and use only letters, digits, _ . - (at most 189; got {:?})",
            crate::spec::truncate(s, 60)
        ))
    }
}

fn check_hostname(s: &str) -> Result<(), String> {
    let ok = s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !s.starts_with('-') && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("must be a host name of letters, digits and inner hyphens, at most 63 (got {:?})", crate::spec::truncate(s, 60)))
    }
}

/// Metadata and tags: an object of string, number or boolean values.
pub fn check_scalar_map(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("must be an object of string, number or boolean values")?;
    for (k, x) in o {
        if k.is_empty() || k.len() > 128 {
            return Err(format!("key {:?} must be 1 to 128 characters", crate::spec::truncate(k, 40)));
        }
        if !(x.is_string() || x.is_number() || x.is_boolean()) {
            return Err(format!("{k:?} must be a string, number or boolean, not {}", crate::spec::type_name(x)));
        }
    }
    if v.to_string().len() > 256 * 1024 {
        return Err("must be at most 256 KiB in total".into());
    }
    Ok(())
}

fn scalar_map_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}})
}

fn check_networks(v: &Value) -> Result<(), String> {
    let nets = v.as_array().ok_or("must be an array of network UUIDs or {uuid|name|ipv4_uuid, ip, primary} objects")?;
    if nets.is_empty() || nets.len() > 32 {
        return Err("must list 1 to 32 networks".into());
    }
    let mut primaries = 0;
    for (i, n) in nets.iter().enumerate() {
        match n {
            Value::String(s) => crate::spec::check_uuid(s).map_err(|e| format!("networks[{i}]: {e}"))?,
            Value::Object(o) => {
                for (k, x) in o {
                    match k.as_str() {
                        "uuid" | "ipv4_uuid" => {
                            crate::spec::check_uuid(x.as_str().unwrap_or("")).map_err(|e| format!("networks[{i}].{k}: {e}"))?
                        }
                        "name" => {
                            if !x.is_string() {
                                return Err(format!("networks[{i}].name must be a string"));
                            }
                        }
                        "ip" => {
                            crate::ipv4::parse_addr(x.as_str().unwrap_or("")).map(|_| ()).map_err(|e| format!("networks[{i}].ip: {e}"))?
                        }
                        "ipv4_ips" => {
                            let a = x.as_array().filter(|a| a.len() == 1).ok_or(format!("networks[{i}].ipv4_ips must hold one address"))?;
                            crate::ipv4::parse_addr(a[0].as_str().unwrap_or("")).map_err(|e| format!("networks[{i}].ipv4_ips: {e}"))?;
                        }
                        "ipv4_count" => {
                            if x.as_u64() != Some(1) {
                                return Err(format!("networks[{i}].ipv4_count must be 1"));
                            }
                        }
                        "primary" => {
                            if x.as_bool().ok_or(format!("networks[{i}].primary must be a boolean"))? {
                                primaries += 1;
                            }
                        }
                        f if f.starts_with("allow_") => {
                            x.as_bool().ok_or(format!("networks[{i}].{f} must be a boolean"))?;
                        }
                        other => return Err(format!("networks[{i}] has unknown key {other:?}")),
                    }
                }
                if ["uuid", "ipv4_uuid", "name"].iter().filter(|k| o.contains_key(**k)).count() != 1 {
                    return Err(format!("networks[{i}] needs exactly one of uuid, ipv4_uuid or name"));
                }
            }
            other => return Err(format!("networks[{i}] must be a UUID string or an object, not {}", crate::spec::type_name(other))),
        }
    }
    if primaries > 1 {
        return Err("only one network may be primary".into());
    }
    Ok(())
}

fn networks_schema() -> Value {
    json!({"type": "array", "minItems": 1, "items": {"oneOf": [{"type": "string", "format": "uuid"}, {"type": "object", "properties": {
        "uuid": {"type": "string", "format": "uuid"}, "ipv4_uuid": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
        "ip": {"type": "string", "format": "ipv4"}, "ipv4_ips": {"type": "array", "items": {"type": "string"}}, "ipv4_count": {"type": "integer"},
        "primary": {"type": "boolean"}}}]}})
}

fn check_macs(v: &Value) -> Result<(), String> {
    let macs = v.as_array().ok_or("must be an array of MAC addresses")?;
    if macs.is_empty() || macs.len() > 32 {
        return Err("must list 1 to 32 MAC addresses".into());
    }
    let mut seen = Vec::new();
    for (i, m) in macs.iter().enumerate() {
        let s = m.as_str().ok_or(format!("macs[{i}] must be a MAC address string"))?;
        let mac = crate::mac::Mac::parse(s).map_err(|e| format!("macs[{i}]: {e}"))?;
        if seen.contains(&mac) {
            return Err(format!("macs[{i}]: {mac} is listed twice"));
        }
        seen.push(mac);
    }
    Ok(())
}

fn macs_schema() -> Value {
    json!({"type": "array", "minItems": 1, "items": {"type": "string", "description": "MAC, with or without colons"}})
}

fn check_nic_updates(v: &Value) -> Result<(), String> {
    let nics = v.as_array().ok_or("must be an array of {mac, primary, allow_*} objects")?;
    if nics.is_empty() || nics.len() > 32 {
        return Err("must list 1 to 32 NICs".into());
    }
    let mut seen = Vec::new();
    let mut primaries = 0;
    for (i, n) in nics.iter().enumerate() {
        let o = n.as_object().ok_or(format!("nics[{i}] must be an object {{mac, primary, allow_*}}"))?;
        let mac = o.get("mac").ok_or(format!("nics[{i}].mac is required"))?;
        let mac = crate::mac::Mac::parse(mac.as_str().ok_or(format!("nics[{i}].mac must be a string"))?)
            .map_err(|e| format!("nics[{i}].mac: {e}"))?;
        if seen.contains(&mac) {
            return Err(format!("nics[{i}]: {mac} is listed twice"));
        }
        seen.push(mac);
        for (k, x) in o {
            match k.as_str() {
                "mac" => {}
                "interface" => {
                    x.as_str().ok_or(format!("nics[{i}].interface must be a string"))?;
                }
                "primary" => match x.as_bool().ok_or(format!("nics[{i}].primary must be a boolean"))? {
                    true => primaries += 1,
                    false => {
                        return Err(format!(
                            "nics[{i}].primary: a NIC stops being primary when another becomes primary; set primary: true on that one"
                        ));
                    }
                },
                f if NIC_FLAGS.contains(&f) => {
                    x.as_bool().ok_or(format!("nics[{i}].{f} must be a boolean"))?;
                }
                other => {
                    return Err(format!("nics[{i}] has unknown key {other:?} (mac, primary, {})", NIC_FLAGS.join(", ")));
                }
            }
        }
        if o.len() == 1 {
            return Err(format!("nics[{i}] changes nothing: give primary or an allow_* flag"));
        }
    }
    if primaries > 1 {
        return Err("only one NIC may be primary".into());
    }
    Ok(())
}

fn nic_updates_schema() -> Value {
    let mut props = json!({"mac": {"type": "string"}, "primary": {"type": "boolean", "enum": [true]}, "interface": {"type": "string"}});
    for f in NIC_FLAGS {
        props[*f] = json!({"type": "boolean"});
    }
    json!({"type": "array", "minItems": 1, "items": {"type": "object", "required": ["mac"], "properties": props}})
}

/// The largest disk (and quota) a VM may have: 1 PiB, so 16 of them never overflow a sum.
pub const MAX_DISK_MIB: u64 = 1 << 30;

fn check_disks(v: &Value) -> Result<(), String> {
    let disks = v.as_array().ok_or("must be an array of disks")?;
    if disks.is_empty() || disks.len() > 16 {
        return Err("must list 1 to 16 disks".into());
    }
    for (i, d) in disks.iter().enumerate() {
        let o = d.as_object().ok_or(format!("disks[{i}] must be an object"))?;
        for (k, x) in o {
            match k.as_str() {
                "image_uuid" => crate::spec::check_uuid(x.as_str().unwrap_or("")).map_err(|e| format!("disks[{i}].image_uuid: {e}"))?,
                "size" => {
                    if x.as_u64().filter(|s| (1..=MAX_DISK_MIB).contains(s)).is_none() {
                        return Err(format!("disks[{i}].size must be an integer from 1 to {MAX_DISK_MIB} (MiB, 1 PiB)"));
                    }
                }
                "boot" => {
                    x.as_bool().ok_or(format!("disks[{i}].boot must be a boolean"))?;
                }
                "model" => {
                    if !matches!(x.as_str(), Some("virtio" | "ahci" | "nvme" | "ide" | "scsi")) {
                        return Err(format!("disks[{i}].model must be virtio, ahci, nvme, ide or scsi"));
                    }
                }
                "media" => {
                    if !matches!(x.as_str(), Some("disk" | "cdrom")) {
                        return Err(format!("disks[{i}].media must be disk or cdrom"));
                    }
                }
                "path" => {
                    x.as_str().ok_or(format!("disks[{i}].path must be a string"))?;
                }
                other => return Err(format!("disks[{i}] has unknown key {other:?} (image_uuid, size, boot, model, media, path)")),
            }
        }
        if i > 0 && o.contains_key("image_uuid") {
            return Err(format!("disks[{i}]: only the first disk may come from an image"));
        }
        let cdrom = o.get("media").and_then(Value::as_str) == Some("cdrom");
        if cdrom && !o.get("path").and_then(Value::as_str).is_some_and(|p| p.starts_with('/')) {
            return Err(format!("disks[{i}] is a cdrom: it needs path, the ISO's absolute path on the compute node"));
        }
        if cdrom && o.get("path").and_then(Value::as_str).is_some_and(|p| p.split('/').any(|c| c == "..")) {
            return Err(format!(
                "disks[{i}].path has a \"..\" component: name the ISO directly (its compute node allows only files in its --iso-dir)"
            ));
        }
        if !cdrom && o.contains_key("path") {
            return Err(format!("disks[{i}].path is only for cdroms (the compute node makes disks itself)"));
        }
        if i == 0 && cdrom {
            return Err("disks[0] is the boot disk and cannot be a cdrom (list the cdrom after it)".into());
        }
        if i > 0 && !o.contains_key("size") && o.get("media").and_then(Value::as_str) != Some("cdrom") {
            return Err(format!("disks[{i}].size is required"));
        }
    }
    Ok(())
}

fn disks_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "properties": {
        "image_uuid": {"type": "string", "format": "uuid"}, "size": {"type": "integer", "description": "MiB"}, "boot": {"type": "boolean"},
        "model": {"type": "string", "enum": ["virtio", "ahci", "nvme", "ide", "scsi"]}, "media": {"type": "string", "enum": ["disk", "cdrom"]}, "path": {"type": "string"}}}})
}

fn check_locality(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("must be an object {strict, near, far}")?;
    for (k, x) in o {
        match k.as_str() {
            "strict" => {
                x.as_bool().ok_or("strict must be a boolean")?;
            }
            "near" | "far" => {
                let list: Vec<&Value> = match x {
                    Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for u in list {
                    crate::spec::check_uuid(u.as_str().unwrap_or("")).map_err(|e| format!("{k}: {e}"))?;
                }
            }
            other => return Err(format!("unknown key {other:?} (strict, near, far)")),
        }
    }
    Ok(())
}

fn locality_schema() -> Value {
    json!({"type": "object", "properties": {"strict": {"type": "boolean"}, "near": {}, "far": {}}})
}

const fn int(min: i64, max: i64, unit: &'static str) -> Kind {
    Kind::Int { min, max, multiple_of: None, unit: Some(unit) }
}

/// CreateVm (`POST /vms`).
pub const CREATE_FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "VM UUID; generated when absent."),
    Field::new("owner_uuid", Kind::Uuid, "Owning account.").required(),
    Field::new("brand", Kind::Enum(crate::package::BRANDS), "bhyve or kvm (hardware VMs; other Triton brands are refused).").required(),
    Field::new("billing_id", Kind::Uuid, "Package UUID; its sizes fill what the request leaves unset."),
    Field::new("image_uuid", Kind::Uuid, "Image to boot from (same as disks[0].image_uuid)."),
    Field::new(
        "networks",
        Kind::Custom { check: check_networks, schema: networks_schema },
        "Networks: UUIDs, or {uuid|name|ipv4_uuid, ip|ipv4_ips, primary}.",
    )
    .required(),
    Field::new("ram", int(64, 4 << 20, "MiB"), "Guest RAM in MiB (default: the package's)."),
    Field::new("vcpus", int(1, 64, "vCPUs"), "Virtual CPUs (default: the package's, else 1)."),
    Field::new("quota", int(1, 1 << 20, "GiB"), "Disk quota in GiB (VMAPI's unit)."),
    Field::new("cpu_cap", int(0, 102_400, "% of one CPU"), "CPU cap (100 = one core, 0 = uncapped)."),
    Field::new("max_swap", int(128, 8 << 20, "MiB"), "Swap in MiB."),
    Field::new("max_lwps", int(250, 1 << 30, "threads"), "Maximum threads."),
    Field::new("zfs_io_priority", int(0, 16383, "shares"), "I/O priority."),
    Field::new("cpu_shares", int(1, 65_535, "shares"), "CPU shares."),
    Field::new("alias", Kind::Str { max: 189, check: Some(check_alias) }, "Display name."),
    Field::new("hostname", Kind::Str { max: 63, check: Some(check_hostname) }, "Guest host name."),
    Field::new(
        "customer_metadata",
        Kind::Custom { check: check_scalar_map, schema: scalar_map_schema },
        "Metadata the guest reads (string, number or boolean values).",
    ),
    Field::new(
        "internal_metadata",
        Kind::Custom { check: check_scalar_map, schema: scalar_map_schema },
        "Operator metadata (read-only to the guest).",
    ),
    Field::new(
        "internal_metadata_namespaces",
        Kind::StrList { max_item: 64 },
        "Namespaces of internal_metadata the guest may read as <ns>:<key> (never write).",
    ),
    Field::new("tags", Kind::Custom { check: check_scalar_map, schema: scalar_map_schema }, "Tags (string, number or boolean values)."),
    Field::new("bootrom", Kind::Enum(&["bios", "uefi"]), "Firmware (bhyve): bios or uefi."),
    Field::new(
        "disks",
        Kind::Custom { check: check_disks, schema: disks_schema },
        "Disks: the first may come from image_uuid; the others need size (MiB).",
    ),
    Field::new("server_uuid", Kind::Uuid, "Pin to this server (hard filters still apply)."),
    Field::new("autoboot", Kind::Bool, "Start after provisioning (default true)."),
    Field::new("firewall_enabled", Kind::Bool, "Enable the firewall."),
    Field::new("deletion_protection", Kind::Bool, "Refuse deletion until this is turned off."),
    Field::new("resolvers", Kind::Ipv4List, "DNS resolvers (default: the networks')."),
    Field::new(
        "locality",
        Kind::Custom { check: check_locality, schema: locality_schema },
        "Placement hints {strict, near, far} (VM UUIDs of the same owner).",
    ),
    Field::new("cpu_type", Kind::Enum(&["host", "qemu64"]), "CPU model presented to the guest."),
    Field::new("disk_driver", Kind::Enum(&["virtio", "ahci", "nvme", "ide", "scsi"]), "Default disk model."),
    Field::new("nic_driver", Kind::Enum(&["virtio", "e1000", "rtl8139"]), "Default NIC model."),
    Field::new("sync", Kind::Bool, "Wait for the provision job to finish before answering."),
];

/// `POST /vms/{uuid}?action=update`.
pub const UPDATE_FIELDS: &[Field] = &[
    Field::new("billing_id", Kind::Uuid, "Resize to this package."),
    Field::new("ram", int(64, 4 << 20, "MiB"), "New guest RAM (MiB)."),
    Field::new("vcpus", int(1, 64, "vCPUs"), "New vCPU count."),
    Field::new("quota", int(1, 1 << 20, "GiB"), "New disk quota (GiB); the boot disk grows, never shrinks."),
    Field::new("cpu_cap", int(0, 102_400, "% of one CPU"), "New CPU cap (0 = uncapped)."),
    Field::new("alias", Kind::Str { max: 189, check: Some(check_alias) }, "New display name."),
    Field::new("hostname", Kind::Str { max: 63, check: Some(check_hostname) }, "New guest host name."),
    Field::new("firewall_enabled", Kind::Bool, "Enable or disable the firewall."),
    Field::new("deletion_protection", Kind::Bool, "Refuse deletion while true."),
    Field::new("autoboot", Kind::Bool, "Start with the server."),
    Field::new("resolvers", Kind::Ipv4List, "DNS resolvers."),
    Field::new("customer_metadata", Kind::Custom { check: check_scalar_map, schema: scalar_map_schema }, "Replace customer metadata."),
    Field::new(
        "set_customer_metadata",
        Kind::Custom { check: check_scalar_map, schema: scalar_map_schema },
        "Add or change customer metadata keys.",
    ),
    Field::new("remove_customer_metadata", Kind::StrList { max_item: 128 }, "Remove customer metadata keys."),
    Field::new(
        "set_internal_metadata",
        Kind::Custom { check: check_scalar_map, schema: scalar_map_schema },
        "Add or change internal metadata keys.",
    ),
    Field::new("remove_internal_metadata", Kind::StrList { max_item: 128 }, "Remove internal metadata keys."),
    Field::new("tags", Kind::Custom { check: check_scalar_map, schema: scalar_map_schema }, "Replace tags."),
    Field::new("set_tags", Kind::Custom { check: check_scalar_map, schema: scalar_map_schema }, "Add or change tags."),
    Field::new("remove_tags", Kind::StrList { max_item: 128 }, "Remove tags."),
    Field::new("force", Kind::Bool, "Skip the capacity check."),
];

/// `POST /vms/{uuid}?action=add_nics`: new NICs on networks, or existing NAPI NICs by MAC.
pub const ADD_NICS_FIELDS: &[Field] = &[
    Field::new(
        "networks",
        Kind::Custom { check: check_networks, schema: networks_schema },
        "Networks to add NICs on, as in CreateVm: UUIDs, or {uuid|name|ipv4_uuid, ip|ipv4_ips, primary, allow_*}.",
    ),
    Field::new(
        "macs",
        Kind::Custom { check: check_macs, schema: macs_schema },
        "Or: NAPI NICs already made for this VM (belongs_to_uuid = the VM), by MAC.",
    ),
];

/// `POST /vms/{uuid}?action=update_nics`.
pub const UPDATE_NICS_FIELDS: &[Field] = &[Field::new(
    "nics",
    Kind::Custom { check: check_nic_updates, schema: nic_updates_schema },
    "The NICs to change, by MAC: primary: true (the old primary stops being one), allow_* spoofing flags. \
     Flags alone apply live; a new primary restarts a running VM.",
)
.required()];

/// `POST /vms/{uuid}?action=remove_nics`.
pub const REMOVE_NICS_FIELDS: &[Field] = &[Field::new(
    "macs",
    Kind::Custom { check: check_macs, schema: macs_schema },
    "The NICs to remove; their addresses are freed in NAPI. A removed primary passes to the first NIC left.",
)
.required()];

#[cfg(test)]
mod tests {
    use super::*;

    /// `render` as it was written first (through `json!`): the streamed one must equal it.
    fn render_reference(vm: &Vm) -> Value {
        let hvm = vm.brand.as_deref().is_some_and(|b| SUPPORTED_BRANDS.contains(&b));
        let mut out = json!({
            "uuid": vm.uuid,
            "alias": vm.alias,
            "autoboot": vm.autoboot,
            "brand": vm.brand,
            "billing_id": vm.billing_id,
            "cpu_cap": vm.cpu_cap,
            "cpu_shares": vm.cpu_shares,
            "create_timestamp": vm.create_timestamp,
            "customer_metadata": vm.customer_metadata.clone().unwrap_or_default(),
            "datasets": [],
            "destroyed": vm.destroyed,
            "firewall_enabled": vm.firewall_enabled.unwrap_or(false),
            "image_uuid": vm.image_uuid,
            "internal_metadata": vm.internal_metadata.clone().unwrap_or_default(),
            "last_modified": vm.last_modified,
            "limit_priv": null,
            "max_locked_memory": null,
            "max_lwps": vm.max_lwps,
            "max_physical_memory": vm.max_physical_memory,
            "max_swap": vm.max_swap,
            "nics": vm.nics.clone().unwrap_or_default(),
            "owner_uuid": vm.owner_uuid,
            "platform_buildstamp": null,
            "quota": vm.quota,
            "ram": vm.ram,
            "resolvers": vm.resolvers,
            "server_uuid": vm.server_uuid,
            "snapshots": vm.snapshots.clone().unwrap_or_default(),
            "state": vm.state,
            "tags": vm.tags.clone().unwrap_or_default(),
            "zfs_filesystem": null,
            "zfs_io_priority": vm.zfs_io_priority,
            "zone_state": vm.zone_state,
            "zonepath": null,
            "zpool": null,
        });
        if hvm {
            out["vcpus"] = json!(vm.vcpus);
            out["cpu_type"] = json!(vm.cpu_type);
            out["disks"] = json!(vm.disks.clone().unwrap_or_default());
            out["bootrom"] = json!(vm.bootrom);
        }
        for (k, v) in [
            ("boot_timestamp", &vm.boot_timestamp),
            ("hostname", &vm.hostname),
            ("package_name", &vm.package_name),
            ("package_version", &vm.package_version),
        ] {
            if let Some(v) = v {
                out[k] = json!(v);
            }
        }
        if let Some(r) = &vm.routes {
            out["routes"] = json!(r);
        }
        if let Some(e) = &vm.error {
            out["error"] = json!(e);
        }
        // What a damaged record was before it was destroyed (see destroyed_from_damaged).
        for k in ["damaged_record", "damaged_error"] {
            if let Some(v) = vm.rest.get(k) {
                out[k] = v.clone();
            }
        }
        out
    }

    #[test]
    fn streamed_render_equals_the_json_one() {
        let u = "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60";
        let vms: Vec<Vm> = [
            json!({"uuid": u}),
            json!({"uuid": u, "brand": "bhyve", "alias": "a", "vcpus": 2, "disks": [{"size": 10240, "boot": true, "model": "virtio"}],
                   "customer_metadata": {"a": null, "b": [1]}, "tags": {"t": 1}, "nics": [], "snapshots": [{"name": "s"}],
                   "hostname": "h", "package_name": "p", "routes": {"10.0.0.0/8": "10.0.0.1"}, "error": "e",
                   "damaged_record": {"x": 1}, "damaged_error": "bad", "other": 5, "resolvers": ["8.8.8.8"]}),
            json!({"uuid": u, "brand": "joyent", "state": "running", "ram": 1024, "quota": 10, "bootrom": "uefi", "boot_timestamp": "t",
                   "package_version": "1", "owner_uuid": u, "server_uuid": u, "image_uuid": u, "billing_id": u}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        for vm in &vms {
            let want = serde_json::to_string(&render_reference(vm)).unwrap();
            assert_eq!(serde_json::to_string(&Rendered(vm)).unwrap(), want);
            assert_eq!(serde_json::to_string(&render(vm)).unwrap(), want);
        }
    }

    #[test]
    fn ghost_records_decode_and_render_with_gaps_filled() {
        let ghost: Vm = serde_json::from_value(
            json!({"uuid": "2b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21", "server_uuid": "3b4c5a9e-8f0d-4a43-9d8f-6c1e0a7f3b21"}),
        )
        .unwrap();
        assert!(!ghost.is_complete());
        assert_eq!(ghost.cap(), CapState::Unknown);
        assert!(ghost.is_active(), "a NULL state counts, as in Moray");
        assert!(ghost.definition().unwrap_err().contains("owner_uuid"));
        let r = render(&ghost);
        assert_eq!(
            (r["customer_metadata"].clone(), r["nics"].clone(), r["firewall_enabled"].clone(), r["state"].clone()),
            (json!({}), json!([]), json!(false), Value::Null)
        );
    }

    #[test]
    fn caps_and_disk() {
        let mut vm: Vm =
            serde_json::from_value(json!({"uuid": Uuid::nil(), "owner_uuid": Uuid::nil(), "brand": "bhyve", "ram": 1024, "quota": 10}))
                .unwrap();
        assert_eq!(vm.cap(), CapState::Uncapped);
        assert_eq!(vm.disk_mib(), Some(10240));
        // Stored records are not bounded: sizes saturate instead of panicking or wrapping.
        let huge: Vm = serde_json::from_value(json!({"uuid": Uuid::nil(), "quota": u64::MAX / 2})).unwrap();
        assert_eq!(huge.disk_mib(), Some(u64::MAX));
        let disks: Vm =
            serde_json::from_value(json!({"uuid": Uuid::nil(), "disks": [{"size": u64::MAX, "model": "virtio"}, {"size": 2, "model": "virtio"}, {"size": 5, "model": "ide", "media": "cdrom"}]}))
                .unwrap();
        assert_eq!(disks.disk_mib(), Some(u64::MAX));
        // The agent's definition of the same VM sums its disks the same way.
        let mut big = disks.clone();
        (big.owner_uuid, big.brand, big.ram) = (Some(Uuid::nil()), Some("bhyve".into()), Some(1024));
        assert_eq!(big.definition().unwrap().disk_mib(), u64::MAX);
        vm.cpu_cap = Some(200);
        assert_eq!(vm.cap(), CapState::Capped(200));
        vm.state = Some("provisioning".into());
        vm.mark_destroyed("t");
        assert_eq!(vm.state.as_deref(), Some("failed"));
        assert_eq!(vm.ram, Some(1024), "markAsDestroyed keeps the record whole");
    }

    #[test]
    fn nic_action_fields() {
        let check = |fields: &[Field], v: Value| {
            crate::spec::check(fields, v.as_object().unwrap(), crate::spec::Mode::Create, &[])
                .into_iter()
                .map(|e| e.message)
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert_eq!(check(REMOVE_NICS_FIELDS, json!({"macs": ["90:b8:d0:00:00:01", "90b8d0000002"]})), "");
        assert!(check(REMOVE_NICS_FIELDS, json!({"macs": ["90:b8:d0:00:00:01", "90b8d0000001"]})).contains("twice"));
        assert!(check(REMOVE_NICS_FIELDS, json!({"macs": ["zz"]})).contains("macs[0]"));
        assert!(check(REMOVE_NICS_FIELDS, json!({})).contains("required"));
        assert_eq!(check(UPDATE_NICS_FIELDS, json!({"nics": [{"mac": "90b8d0000001", "primary": true, "allow_ip_spoofing": true}]})), "");
        assert!(check(UPDATE_NICS_FIELDS, json!({"nics": [{"mac": "90b8d0000001"}]})).contains("changes nothing"));
        assert!(check(UPDATE_NICS_FIELDS, json!({"nics": [{"mac": "90b8d0000001", "primary": false}]})).contains("another"));
        assert!(check(UPDATE_NICS_FIELDS, json!({"nics": [{"mac": "90b8d0000001", "mtu": 9000}]})).contains("unknown key"));
        let two = json!({"nics": [{"mac": "90b8d0000001", "primary": true}, {"mac": "90b8d0000002", "primary": true}]});
        assert!(check(UPDATE_NICS_FIELDS, two).contains("only one"));
        assert_eq!(check(ADD_NICS_FIELDS, json!({"networks": [Uuid::nil()]})), "");
    }

    #[test]
    fn create_fields_check_networks_and_disks() {
        let body = json!({"owner_uuid": Uuid::nil(), "brand": "bhyve", "networks": [{"uuid": Uuid::nil(), "primary": true}, {"name": "x", "primary": true}], "disks": [{"size": 5, "colour": 1}]});
        let errs = crate::spec::check(CREATE_FIELDS, body.as_object().unwrap(), crate::spec::Mode::Create, &[]);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["networks", "disks"]);
        assert!(errs[0].message.contains("only one network may be primary"));
        assert!(check_alias("web-1.prod").is_ok() && check_alias("-x").is_err());
        let disks = |d: Value| check_disks(&d).err().unwrap_or_default();
        assert!(disks(json!([{"size": 5}, {"media": "cdrom"}])).contains("needs path"));
        assert!(disks(json!([{"size": 5}, {"media": "cdrom", "path": "/srv/iso/../../etc/shadow"}])).contains("\"..\""));
        assert!(disks(json!([{"size": 5}, {"media": "cdrom", "path": "x.iso"}])).contains("absolute path"));
        assert!(disks(json!([{"size": 5, "path": "/dev/sda"}])).contains("only for cdroms"));
        assert!(disks(json!([{"media": "cdrom", "path": "/x.iso"}])).contains("cannot be a cdrom"));
        assert_eq!(disks(json!([{"size": 5}, {"media": "cdrom", "model": "ahci", "path": "/srv/iso/x.iso"}])), "");
    }
}
