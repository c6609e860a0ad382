//! PAPI packages: the sizes a VM is provisioned with.
//!
//! Units follow Triton: `max_physical_memory`, `max_swap` and `quota` in MiB (quota a
//! multiple of 1024), `cpu_cap` in percent of one CPU (100 = one core, absent = uncapped).
//! Billing dimensions are immutable (changing them needs `force=true`); Triton's advice
//! stands: publish a new version and deactivate the old one.
//!
//! Nereid adds two checks Triton lacks (its pitfall #1, a quota smaller than the image
//! fails silently much later):
//! - [`check_create`]/[`check_update`] refuse a package whose flexible `disks` cannot fit
//!   in its quota;
//! - [`boot_disk_mib`] is *the* rule provisioning uses to size an HVM boot disk, and it
//!   refuses an image whose `image_size` is larger than the disk the package gives it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::spec::{self, Field, Kind, Mode};

/// The brands Triton knows. Nereid runs the hardware-VM brands (`bhyve`, `kvm`) on QEMU.
pub const BRANDS: &[&str] = &["bhyve", "kvm", "joyent", "joyent-minimal", "lx"];
/// Brands that run a hardware VM with a boot disk cloned from an image.
pub const HVM_BRANDS: &[&str] = &["bhyve", "kvm"];
/// Triton's floor for every package quota.
pub const MIN_QUOTA_MIB: i64 = 1024;

const fn int(min: i64, max: i64, unit: &'static str) -> Kind {
    Kind::Int { min, max, multiple_of: None, unit: Some(unit) }
}

/// PAPI's field table.
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Package UUID; generated when absent.").immutable(),
    Field::new("name", Kind::Str { max: 128, check: Some(check_name) }, "Name, e.g. `g1.small`: letters, digits and single `_.-` between them.").required().immutable(),
    Field::new("version", Kind::Str { max: 64, check: Some(check_semver) }, "Semantic version, e.g. `1.0.0`.").required().immutable(),
    Field::new("active", Kind::Bool, "Whether the package can be provisioned (default true); how packages are retired."),
    Field::new("brand", Kind::Enum(BRANDS), "Brand VMs of this package must use (bhyve, kvm, joyent, joyent-minimal, lx)."),
    Field::new("cpu_cap", int(20, 102_400, "% of one CPU"), "CPU cap in percent of one CPU (100 = one core); absent = uncapped.").immutable(),
    Field::new("max_lwps", int(250, 1 << 30, "threads"), "Maximum threads (default 4000).").immutable(),
    Field::new("max_physical_memory", int(64, 4 << 20, "MiB"), "RAM in MiB (guest RAM for bhyve/kvm).").required().immutable(),
    Field::new("max_swap", int(128, 8 << 20, "MiB"), "Swap in MiB, at least the RAM (default twice the RAM).").immutable(),
    Field::new("quota", Kind::Int { min: MIN_QUOTA_MIB, max: 1 << 30, multiple_of: Some(1024), unit: Some("MiB") }, "Disk in MiB, a multiple of 1024. For bhyve/kvm the boot disk is grown to it.").required().immutable(),
    Field::new("zfs_io_priority", int(0, 16383, "shares"), "Relative I/O priority (default 100).").immutable(),
    Field::new("vcpus", int(1, 64, "vCPUs"), "Virtual CPUs for bhyve/kvm (default 1).").immutable(),
    Field::new("os", Kind::Str { max: 64, check: None }, "OS the image must have, if set.").immutable(),
    Field::new("flexible_disk", Kind::Bool, "bhyve: quota covers all disks, laid out by `disks`.").immutable(),
    Field::new("disks", Kind::Custom { check: check_disks, schema: disks_schema }, "bhyve flexible disks: `[{}, {\"size\": 10240}]`; the first is the boot disk (image size when no size), one may be `\"remaining\"`.").immutable(),
    Field::new("fss", int(1, 65_535, "shares"), "CPU shares (`cpu_shares` of the VM).").immutable(),
    Field::new("owner_uuids", Kind::UuidList, "Accounts that may use the package; absent = everyone."),
    Field::new("networks", Kind::UuidList, "Networks VMs of this package go on by default."),
    Field::new("traits", Kind::Object, "Placement traits servers must match."),
    Field::new("min_platform", Kind::Object, "Minimum platform per SDC version, e.g. {\"7.0\": \"20141030T081701Z\"}."),
    Field::new("alloc_server_spread", Kind::Enum(&["min-ram", "random", "min-owner"]), "Placement spread (min-ram, random, min-owner)."),
    Field::new("group", Kind::Str { max: 128, check: None }, "Group name for display."),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Free text."),
    Field::new("common_name", Kind::Str { max: 128, check: None }, "Display name."),
    Field::new("parent", Kind::Str { max: 128, check: None }, "Package this one derives from."),
    Field::new("billing_tag", Kind::Str { max: 128, check: None }, "Billing tag."),
    Field::new("default", Kind::Bool, "Whether this is the default package."),
    Field::new("created_at", Kind::Str { max: 40, check: None }, "Creation time (ISO 8601).").read_only(),
    Field::new("updated_at", Kind::Str { max: 40, check: None }, "Last update time (ISO 8601).").read_only(),
    Field::new("v", Kind::Int { min: 1, max: 1, multiple_of: None, unit: None }, "Schema version (1).").read_only(),
];

/// One entry of a flexible-disk package's `disks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageDisk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<DiskSize>,
}

/// A disk size: MiB, or whatever is left of the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DiskSize {
    Mib(u64),
    Remaining(Remaining),
}

/// The literal string `"remaining"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Remaining {
    #[serde(rename = "remaining")]
    Remaining,
}

/// A package as PAPI stores and renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub uuid: Uuid,
    pub name: String,
    pub version: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    pub max_lwps: u32,
    pub max_physical_memory: u64,
    pub max_swap: u64,
    pub quota: u64,
    pub zfs_io_priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flexible_disk: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<PackageDisk>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuids: Option<Vec<Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traits: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_platform: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_server_spread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    pub created_at: String,
    pub updated_at: String,
    pub v: u32,
}

impl Package {
    pub fn is_hvm(&self) -> bool {
        self.brand.as_deref().is_none_or(|b| HVM_BRANDS.contains(&b))
    }
    /// `name@version`, how operators refer to a package in messages.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

fn check_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    let punct = |c: u8| matches!(c, b'_' | b'.' | b'-');
    let ok = b.len() >= 2
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|&c| alnum(c) || punct(c))
        && !b.windows(2).any(|w| punct(w[0]) && punct(w[1]));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must have at least 2 characters, start and end with a letter or digit and use only letters, digits and single _ . - (got {:?})",
            spec::truncate(s, 60)
        ))
    }
}

/// `MAJOR.MINOR.PATCH` with optional `-prerelease` and `+build`.
pub fn check_semver(s: &str) -> Result<(), String> {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0'));
    let rest_ok = s[core.len()..].bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+'));
    if parts.len() == 3 && parts.iter().all(numeric) && rest_ok {
        Ok(())
    } else {
        Err(format!("must be a semantic version like 1.0.0 (got {:?})", spec::truncate(s, 60)))
    }
}

fn check_disks(v: &Value) -> Result<(), String> {
    let disks = v.as_array().ok_or("must be an array of {size} objects")?;
    if disks.is_empty() || disks.len() > 8 {
        return Err("must list 1 to 8 disks".into());
    }
    let mut remaining = 0;
    for (i, d) in disks.iter().enumerate() {
        let obj = d.as_object().ok_or_else(|| format!("disks[{i}] must be an object"))?;
        if let Some(k) = obj.keys().find(|k| *k != "size") {
            return Err(format!("disks[{i}]: unknown key {k:?} (only size)"));
        }
        match obj.get("size") {
            None => {
                if i != 0 {
                    return Err(format!("disks[{i}].size is required (only the boot disk may take the image's size)"));
                }
            }
            Some(Value::String(s)) if s == "remaining" => remaining += 1,
            Some(n) => match n.as_u64() {
                Some(n) if n >= 1 => {}
                _ => return Err(format!("disks[{i}].size must be a positive integer (MiB) or \"remaining\"")),
            },
        }
    }
    if remaining > 1 {
        return Err("only one disk may use \"remaining\"".into());
    }
    Ok(())
}

fn disks_schema() -> Value {
    json!({"type": "array", "maxItems": 8, "items": {"type": "object", "additionalProperties": false,
        "properties": {"size": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "enum": ["remaining"]}],
        "description": "MiB, or \"remaining\""}}}})
}

/// Validates a create body and returns the package to store (defaults filled in).
pub fn check_create(input: &Map<String, Value>, now: &str) -> Result<Package, ApiError> {
    let errors = spec::check(FIELDS, input, Mode::Create, &[]);
    if !errors.is_empty() {
        return Err(ApiError::validation_409(errors));
    }
    let mut obj = input.clone();
    obj.entry("uuid").or_insert_with(|| json!(Uuid::new_v4()));
    obj.entry("active").or_insert(json!(true));
    obj.entry("max_lwps").or_insert(json!(4000));
    obj.entry("zfs_io_priority").or_insert(json!(100));
    let ram = obj.get("max_physical_memory").and_then(Value::as_u64).unwrap_or(0);
    obj.entry("max_swap").or_insert(json!((2 * ram).max(256)));
    let hvm = obj.get("brand").and_then(Value::as_str).is_none_or(|b| HVM_BRANDS.contains(&b));
    if hvm {
        obj.entry("vcpus").or_insert(json!(1));
    }
    obj.insert("created_at".into(), json!(now));
    obj.insert("updated_at".into(), json!(now));
    obj.insert("v".into(), json!(1));
    finish(obj)
}

/// Validates an update against the stored package and returns the new one.
///
/// Immutable fields answer 409 "Attempt to update immutables" unless `force`.
pub fn check_update(current: &Package, input: &Map<String, Value>, force: bool, now: &str) -> Result<Package, ApiError> {
    let errors = spec::check(FIELDS, input, Mode::Update, &[]);
    if !errors.is_empty() {
        return Err(ApiError::validation_409(errors));
    }
    let Value::Object(mut obj) = serde_json::to_value(current).map_err(|e| ApiError::internal(e.to_string()))? else {
        return Err(ApiError::internal("package did not serialize to an object"));
    };
    if !force {
        let changes = spec::immutable_changes(FIELDS, &obj, input);
        if !changes.is_empty() {
            return Err(ApiError::conflict("ValidationFailed", "Attempt to update immutables").with_errors(changes));
        }
    }
    if input.get("uuid").is_some_and(|u| Some(u) != obj.get("uuid")) {
        return Err(ApiError::validation_409(vec![FieldError::invalid("uuid", "a package's uuid never changes")]));
    }
    spec::merge(&mut obj, input);
    obj.insert("updated_at".into(), json!(now));
    finish(obj)
}

/// Cross-field rules on a complete package object.
fn finish(obj: Map<String, Value>) -> Result<Package, ApiError> {
    let pkg: Package = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ApiError::validation_409(vec![FieldError::invalid("package", e.to_string())]))?;
    let mut errors = Vec::new();
    if pkg.max_swap < pkg.max_physical_memory {
        errors.push(FieldError::invalid(
            "max_swap",
            format!("must be at least max_physical_memory ({} MiB), got {} MiB", pkg.max_physical_memory, pkg.max_swap),
        ));
    }
    let brand = pkg.brand.as_deref();
    if (pkg.flexible_disk == Some(true) || pkg.disks.is_some()) && brand.is_some_and(|b| b != "bhyve") {
        errors.push(FieldError::invalid(
            "flexible_disk",
            format!("flexible disks are a bhyve feature, but brand is {}", brand.unwrap_or("")),
        ));
    }
    if pkg.disks.is_some() && pkg.flexible_disk != Some(true) {
        errors.push(FieldError::invalid("disks", "needs flexible_disk: true"));
    }
    if let Err(e) = check_disks_fit(&pkg) {
        errors.push(e);
    }
    if errors.is_empty() { Ok(pkg) } else { Err(ApiError::validation_409(errors)) }
}

/// MiB the package's explicit disks need: the sum of their sizes, counting 1 MiB for a
/// `remaining` disk and for a boot disk that takes the image's size.
fn explicit_disks_mib(disks: &[PackageDisk]) -> u64 {
    disks
        .iter()
        .map(|d| match d.size {
            Some(DiskSize::Mib(n)) => n,
            _ => 1,
        })
        .sum()
}

/// A flexible-disk package must hold all of its disks in its quota.
fn check_disks_fit(pkg: &Package) -> Result<(), FieldError> {
    let Some(disks) = &pkg.disks else { return Ok(()) };
    let need = explicit_disks_mib(disks);
    if need > pkg.quota {
        return Err(FieldError::invalid(
            "quota",
            format!(
                "quota {} MiB is smaller than the {need} MiB its disks need ({}); bhyve flexible disks must all fit in the quota",
                pkg.quota,
                describe_disks(disks)
            ),
        ));
    }
    Ok(())
}

fn describe_disks(disks: &[PackageDisk]) -> String {
    disks
        .iter()
        .enumerate()
        .map(|(i, d)| match d.size {
            Some(DiskSize::Mib(n)) => format!("disks[{i}] {n} MiB"),
            Some(DiskSize::Remaining(_)) => format!("disks[{i}] remaining"),
            None => format!("disks[{i}] image-sized"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The boot-disk size (MiB) a VM of this package gets from an image of `image_size` MiB,
/// or the reason the image does not fit.
///
/// Without flexible disks the boot disk is the whole quota (the image's disk is grown to
/// it). With flexible disks it is `disks[0].size`, the image size when that is absent, or
/// what the other disks leave when it is `remaining`. Either way it must hold the image:
/// this is the check Triton never makes (its pitfall #1), so provisioning and resize call
/// this and answer 409 `ValidationFailed` with the error it returns.
pub fn boot_disk_mib(pkg: &Package, image_label: &str, image_size: u64) -> Result<u64, FieldError> {
    let boot = match &pkg.disks {
        None => pkg.quota,
        Some(disks) => match disks.first().and_then(|d| d.size) {
            Some(DiskSize::Mib(n)) => n,
            None => image_size,
            Some(DiskSize::Remaining(_)) => {
                let others: u64 = explicit_disks_mib(&disks[1..]);
                pkg.quota.saturating_sub(others)
            }
        },
    };
    let total = match &pkg.disks {
        None => boot,
        Some(disks) => boot + explicit_disks_mib(&disks[1..]),
    };
    if boot < image_size || total > pkg.quota {
        return Err(FieldError {
            field: "quota".into(),
            code: "InsufficientCapacity".into(),
            message: format!(
                "package {} gives the boot disk {boot} MiB (quota {} MiB), but image {image_label} needs image_size {image_size} MiB: choose a package with a quota of at least {} MiB",
                pkg.label(),
                pkg.quota,
                image_size.div_ceil(1024) * 1024 + total.saturating_sub(boot)
            ),
        });
    }
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn small() -> Package {
        check_create(
            &obj(json!({"name": "g1.small", "version": "1.0.0", "max_physical_memory": 1024, "quota": 10240})),
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap()
    }

    #[test]
    fn create_fills_triton_defaults() {
        let p = small();
        assert!(p.active);
        assert_eq!((p.max_swap, p.max_lwps, p.zfs_io_priority, p.vcpus, p.v), (2048, 4000, 100, Some(1), 1));
        assert_eq!(p.cpu_cap, None);
    }

    #[test]
    fn create_rejects_bad_fields_with_units() {
        let err = check_create(
            &obj(json!({"name": "-bad", "version": "1", "max_physical_memory": 32, "quota": 1000, "cpu_cap": 5, "colour": "red"})),
            "t",
        )
        .unwrap_err();
        assert_eq!(err.status, 409);
        let msgs: Vec<String> = err.errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        assert!(msgs.contains(&"colour: is not a known parameter".to_string()), "{msgs:?}");
        assert!(msgs.contains(&"max_physical_memory: must be at least 64 (MiB)".to_string()));
        assert!(msgs.contains(&"quota: must be at least 1024 (MiB)".to_string()));
        assert!(msgs.contains(&"cpu_cap: must be at least 20 (% of one CPU)".to_string()));
        assert!(msgs.iter().any(|m| m.starts_with("name: must have at least 2 characters, start and end")));
        assert!(msgs.iter().any(|m| m.starts_with("version: must be a semantic version")));
    }

    #[test]
    fn swap_below_ram_is_refused() {
        let err = check_create(
            &obj(json!({"name": "ab", "version": "1.0.0", "max_physical_memory": 2048, "max_swap": 1024, "quota": 10240})),
            "t",
        )
        .unwrap_err();
        assert_eq!(err.errors[0].field, "max_swap");
    }

    #[test]
    fn flexible_disks_must_fit_the_quota() {
        let err = check_create(
            &obj(json!({"name": "ab", "version": "1.0.0", "brand": "bhyve", "max_physical_memory": 1024, "quota": 10240,
                "flexible_disk": true, "disks": [{}, {"size": 20480}]})),
            "t",
        )
        .unwrap_err();
        assert_eq!(err.errors[0].field, "quota");
        assert!(err.errors[0].message.contains("smaller than the 20481 MiB its disks need"), "{}", err.message);
        let err = check_create(&obj(json!({"name": "ab", "version": "1.0.0", "brand": "kvm", "max_physical_memory": 1024, "quota": 10240, "flexible_disk": true})), "t").unwrap_err();
        assert!(err.message.contains("bhyve feature"));
    }

    #[test]
    fn immutables_need_force_but_active_does_not() {
        let p = small();
        let err = check_update(&p, &obj(json!({"quota": 20480})), false, "t2").unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (409, "Attempt to update immutables"));
        assert_eq!(err.errors[0].field, "quota");
        assert_eq!(check_update(&p, &obj(json!({"quota": 20480})), true, "t2").unwrap().quota, 20480);
        let q = check_update(&p, &obj(json!({"active": false, "description": "old", "max_lwps": 4000})), false, "t2").unwrap();
        assert!(!q.active);
        assert_eq!(q.updated_at, "t2");
        let r = check_update(&q, &obj(json!({"description": null})), false, "t3").unwrap();
        assert_eq!(r.description, None);
    }

    #[test]
    fn boot_disk_must_hold_the_image() {
        let p = small();
        assert_eq!(boot_disk_mib(&p, "ubuntu@1", 8192), Ok(10240));
        let err = boot_disk_mib(&p, "ubuntu@1", 20480).unwrap_err();
        assert_eq!(err.code, "InsufficientCapacity");
        assert!(err.message.contains("image ubuntu@1 needs image_size 20480 MiB"), "{}", err.message);
        assert!(err.message.contains("at least 20480 MiB"));
    }

    #[test]
    fn flexible_boot_disk_sizes() {
        let mut p = small();
        p.brand = Some("bhyve".into());
        p.flexible_disk = Some(true);
        p.disks = Some(vec![PackageDisk { size: None }, PackageDisk { size: Some(DiskSize::Mib(2048)) }]);
        assert_eq!(boot_disk_mib(&p, "i", 4096), Ok(4096));
        p.disks = Some(vec![
            PackageDisk { size: Some(DiskSize::Remaining(Remaining::Remaining)) },
            PackageDisk { size: Some(DiskSize::Mib(2048)) },
        ]);
        assert_eq!(boot_disk_mib(&p, "i", 4096), Ok(8192));
        assert!(boot_disk_mib(&p, "i", 9000).is_err());
        p.disks = Some(vec![PackageDisk { size: None }, PackageDisk { size: Some(DiskSize::Mib(8192)) }]);
        let err = boot_disk_mib(&p, "i", 4096).unwrap_err();
        assert!(err.message.contains("at least 12288 MiB"), "{}", err.message);
    }
}
