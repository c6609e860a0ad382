//! IMGAPI image manifests (v2): the field table, validation and the lifecycle.
//!
//! ```text
//!   CreateImage / AdminImportImage
//!              │
//!              ▼
//!        unactivated ──AddImageFile (repeatable)──┐
//!              │  ◄─────────────────────────────────┘
//!      ActivateImage (needs a file; sets published_at, freezes files)
//!              ▼
//!           active ◄──── EnableImage ────┐
//!              └────── DisableImage ────► disabled
//! ```
//!
//! `files[0].sha1` hashes the bytes exactly as stored (compressed). `image_size` is the
//! boot disk's size in MiB and is required for `type: zvol` (the hardware-VM disk
//! image every Nereid VM boots from); provisioning compares it with the package quota
//! through [`crate::package::boot_disk_mib`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::spec::{self, Field, Kind, Mode};

pub const TYPES: &[&str] = &["zone-dataset", "lx-dataset", "zvol", "docker", "lxd", "other"];
pub const OSES: &[&str] = &["smartos", "linux", "windows", "bsd", "illumos", "other"];
pub const STATES: &[&str] = &["active", "unactivated", "disabled", "creating", "failed"];
/// File compressions IMGAPI accepts; `zstd` is Nereid's addition.
pub const COMPRESSIONS: &[&str] = &["gzip", "bzip2", "xz", "zstd", "none"];
/// IMGAPI's `MAX_IMAGE_SIZE`: 20 GiB per file.
pub const MAX_FILE_SIZE: u64 = 20 << 30;
/// The owner meaning "unset" on public image servers.
pub const NIL_OWNER: Uuid = Uuid::nil();
/// Fields only a zvol (hardware-VM disk) image has.
const ZVOL_FIELDS: &[&str] = &["nic_driver", "disk_driver", "cpu_type", "image_size"];
/// Keys a manifest fetched from another IMGAPI carries and that create/import ignore.
const TOLERATED: &[&str] = &["v", "files", "state", "disabled", "icon", "error"];

fn check_name(s: &str) -> Result<(), String> {
    if s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b' ' | b'-')) {
        Ok(())
    } else {
        Err(format!("may only contain letters, digits and . _ / - and spaces (got {:?})", spec::truncate(s, 60)))
    }
}

fn check_version(s: &str) -> Result<(), String> {
    if s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'+' | b'-')) {
        Ok(())
    } else {
        Err(format!("may only contain letters, digits and . _ / + - (got {:?})", spec::truncate(s, 60)))
    }
}

fn check_url(s: &str) -> Result<(), String> {
    if (s.starts_with("https://") || s.starts_with("http://")) && !s.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(format!("must be an http(s) URL (got {:?})", spec::truncate(s, 60)))
    }
}

fn check_requirements(v: &Value) -> Result<(), String> {
    let obj = v.as_object().ok_or("must be an object")?;
    for (k, val) in obj {
        match k.as_str() {
            "networks" => {
                let nets = val.as_array().ok_or("networks must be an array of {name, description}")?;
                for n in nets {
                    let n = n.as_object().ok_or("networks items must be objects")?;
                    if !n.get("name").is_some_and(Value::is_string) || n.keys().any(|k| k != "name" && k != "description") {
                        return Err("networks items must be {name, description}".into());
                    }
                }
            }
            "brand" => {
                let b = val.as_str().ok_or("brand must be a string")?;
                if !crate::package::BRANDS.contains(&b) {
                    return Err(format!("brand must be one of {}", crate::package::BRANDS.join(", ")));
                }
            }
            "ssh_key" => {
                val.as_bool().ok_or("ssh_key must be a boolean")?;
            }
            "min_ram" | "max_ram" => {
                val.as_u64().filter(|n| *n >= 1).ok_or_else(|| format!("{k} must be a positive integer (MiB)"))?;
            }
            "min_platform" | "max_platform" => {
                let m = val.as_object().ok_or_else(|| format!("{k} must be an object like {{\"7.0\": \"20141030T081701Z\"}}"))?;
                if m.values().any(|p| !p.is_string()) {
                    return Err(format!("{k} values must be platform stamps (strings)"));
                }
            }
            "bootrom" => {
                let b = val.as_str().ok_or("bootrom must be a string")?;
                if b != "bios" && b != "uefi" {
                    return Err("bootrom must be bios or uefi".into());
                }
                if obj.get("brand").and_then(Value::as_str) != Some("bhyve") {
                    return Err("bootrom is only allowed with brand bhyve".into());
                }
            }
            other => {
                return Err(format!(
                    "unknown requirement {other:?} (networks, brand, ssh_key, min_ram, max_ram, min_platform, max_platform, bootrom)"
                ));
            }
        }
    }
    if let (Some(min), Some(max)) = (obj.get("min_ram").and_then(Value::as_u64), obj.get("max_ram").and_then(Value::as_u64))
        && min > max
    {
        return Err(format!("min_ram ({min} MiB) is larger than max_ram ({max} MiB)"));
    }
    Ok(())
}

fn requirements_schema() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "networks": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}}}},
        "brand": {"type": "string", "enum": crate::package::BRANDS},
        "ssh_key": {"type": "boolean"},
        "min_ram": {"type": "integer", "minimum": 1, "description": "MiB"},
        "max_ram": {"type": "integer", "minimum": 1, "description": "MiB"},
        "min_platform": {"type": "object", "additionalProperties": {"type": "string"}},
        "max_platform": {"type": "object", "additionalProperties": {"type": "string"}},
        "bootrom": {"type": "string", "enum": ["bios", "uefi"], "description": "only with brand bhyve"}}})
}

fn check_users(v: &Value) -> Result<(), String> {
    let users = v.as_array().ok_or("must be an array of {name}")?;
    for u in users {
        let u = u.as_object().ok_or("items must be {name} objects")?;
        if u.get("name").and_then(Value::as_str).is_none_or(str::is_empty) || u.len() != 1 {
            return Err("items must be {name} objects".into());
        }
    }
    Ok(())
}

fn users_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}})
}

fn check_tags(v: &Value) -> Result<(), String> {
    let tags = v.as_object().ok_or("must be an object of string, number or boolean values")?;
    if let Some((k, _)) = tags.iter().find(|(_, v)| !(v.is_string() || v.is_number() || v.is_boolean())) {
        return Err(format!("tag {k:?} must be a string, number or boolean"));
    }
    if v.to_string().len() > 100 * 1024 {
        return Err("must be at most 100 KiB in total".into());
    }
    Ok(())
}

fn tags_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}})
}

fn check_traits(v: &Value) -> Result<(), String> {
    let traits = v.as_object().ok_or("must be an object")?;
    for (k, t) in traits {
        let ok = t.is_string() || t.is_boolean() || t.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err(format!("trait {k:?} must be a string, boolean or array of strings"));
        }
    }
    Ok(())
}

fn traits_schema() -> Value {
    json!({"type": "object"})
}

/// IMGAPI's manifest field table (v2).
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Image UUID; set by the server (kept only by AdminImportImage).").read_only(),
    Field::new("owner", Kind::Uuid, "Owning account; 00000000-0000-0000-0000-000000000000 means unset.").required(),
    Field::new("name", Kind::Str { max: 512, check: Some(check_name) }, "Name (not unique), e.g. `ubuntu-24.04`.").required().immutable(),
    Field::new("version", Kind::Str { max: 128, check: Some(check_version) }, "Version, e.g. `20261125`.").required().immutable(),
    Field::new("description", Kind::Str { max: 10 * 1024, check: None }, "Free text."),
    Field::new("homepage", Kind::Str { max: 1024, check: Some(check_url) }, "URL with more about the image."),
    Field::new("eula", Kind::Str { max: 1024, check: Some(check_url) }, "URL of the end-user licence."),
    Field::new("public", Kind::Bool, "Visible to every account (default false)."),
    Field::new("type", Kind::Enum(TYPES), "zvol (hardware-VM disk), zone-dataset, lx-dataset, docker, lxd or other.").required(),
    Field::new("os", Kind::Enum(OSES), "smartos, linux, windows, bsd, illumos or other.").required(),
    Field::new("origin", Kind::Uuid, "Origin image of an incremental image; must exist and be active.").immutable(),
    Field::new("acl", Kind::UuidList, "Accounts that may see this private image."),
    Field::new(
        "requirements",
        Kind::Custom { check: check_requirements, schema: requirements_schema },
        "Provisioning requirements (networks, brand, ssh_key, min_ram, max_ram, min_platform, max_platform, bootrom).",
    ),
    Field::new("users", Kind::Custom { check: check_users, schema: users_schema }, "Users the image has, `[{\"name\": \"root\"}]`."),
    Field::new("generate_passwords", Kind::Bool, "Generate `<user>_pw` passwords at provision (default true)."),
    Field::new("billing_tags", Kind::StrList { max_item: 128 }, "Billing tags."),
    Field::new(
        "traits",
        Kind::Custom { check: check_traits, schema: traits_schema },
        "Placement traits (string, boolean or string array values).",
    ),
    Field::new(
        "tags",
        Kind::Custom { check: check_tags, schema: tags_schema },
        "Tags (string, number or boolean values; at most 100 KiB).",
    ),
    Field::new("inherited_directories", Kind::StrList { max_item: 1024 }, "zone-dataset only: directories inherited from the global zone."),
    Field::new("nic_driver", Kind::Str { max: 64, check: None }, "zvol only (required): NIC model, e.g. virtio."),
    Field::new("disk_driver", Kind::Str { max: 64, check: None }, "zvol only (required): disk model, e.g. virtio."),
    Field::new("cpu_type", Kind::Str { max: 64, check: None }, "zvol only (required): qemu64 or host."),
    Field::new(
        "image_size",
        Kind::Int { min: 1, max: 64 << 20, multiple_of: None, unit: Some("MiB") },
        "zvol only (required): boot-disk size in MiB.",
    ),
    Field::new("channels", Kind::StrList { max_item: 128 }, "Update channels the image is in.").immutable(),
    Field::new("urn", Kind::Str { max: 1024, check: None }, "Legacy URN, kept on import.").immutable(),
    Field::new(
        "published_at",
        Kind::Str { max: 40, check: Some(crate::time::check_iso) },
        "Activation time (ISO 8601); kept by AdminImportImage.",
    )
    .read_only(),
    Field::new("state", Kind::Enum(STATES), "unactivated, active or disabled.").read_only(),
    Field::new("disabled", Kind::Bool, "Set by DisableImage/EnableImage.").read_only(),
    Field::new("files", Kind::Custom { check: |_| Ok(()), schema: files_schema }, "The image file: [{sha1, size, compression}].")
        .read_only(),
    Field::new("v", Kind::Int { min: 2, max: 2, multiple_of: None, unit: None }, "Manifest version (2).").read_only(),
    Field::new("icon", Kind::Bool, "Whether the image has an icon.").read_only(),
    Field::new("error", Kind::Object, "Why a creating image failed.").read_only(),
];

fn files_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "properties": {
        "sha1": {"type": "string"}, "size": {"type": "integer"}, "compression": {"type": "string", "enum": COMPRESSIONS},
        "dataset_guid": {"type": "string"}, "stor": {"type": "string"},
        "source_sha1": {"type": "string"}, "source_size": {"type": "integer"}}}})
}

/// The one file of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    pub sha1: String,
    pub size: u64,
    pub compression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_guid: Option<String>,
    /// Where the bytes live (`local`); shown only with `inclAdminFields`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stor: Option<String>,
    /// Base64 MD5 of the file, served as `Content-MD5`; never rendered in manifests.
    #[serde(default, rename = "contentMD5", skip_serializing_if = "Option::is_none")]
    pub content_md5: Option<String>,
    /// For a file converted on import (a zvol's ZFS send stream, stored as the disk it
    /// holds): the SHA-1 and size of the file as it was uploaded, which is what the
    /// image's source (e.g. another IMGAPI's manifest) says. A Nereid extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_size: Option<u64>,
}

/// An image as IMGAPI stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub v: u32,
    pub uuid: Uuid,
    pub owner: Uuid,
    pub name: String,
    pub version: String,
    pub state: String,
    pub disabled: bool,
    pub public: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub os: String,
    pub files: Vec<ImageFile>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Image {
    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
    pub fn published_at(&self) -> Option<&str> {
        self.rest.get("published_at").and_then(Value::as_str)
    }
    pub fn image_size(&self) -> Option<u64> {
        self.rest.get("image_size").and_then(Value::as_u64)
    }
    pub fn origin(&self) -> Option<&str> {
        self.rest.get("origin").and_then(Value::as_str)
    }

    /// The manifest as clients see it: internal file fields removed, `stor` only for admins.
    pub fn render(&self, incl_admin_fields: bool) -> Value {
        let mut img = self.clone();
        for f in &mut img.files {
            f.content_md5 = None;
            if !incl_admin_fields {
                f.stor = None;
            }
        }
        serde_json::to_value(img).unwrap_or(Value::Null)
    }
}

/// Whether the manifest is being created fresh or imported with its UUID.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Origin {
    /// CreateImage: the server picks the UUID.
    Create,
    /// AdminImportImage: the UUID (and `published_at`) come from the manifest.
    Import(Uuid),
}

/// Validates a CreateImage/AdminImportImage body and returns the unactivated image.
///
/// Errors are IMGAPI's 422s: unknown keys → `InvalidParameter`, bad values → `ValidationFailed`.
pub fn check_create(input: &Map<String, Value>, origin: Origin) -> Result<Image, ApiError> {
    let mut obj = input.clone();
    for key in TOLERATED {
        obj.remove(*key);
    }
    let unknown: Vec<FieldError> =
        obj.keys().filter(|k| !FIELDS.iter().any(|f| f.name == k.as_str())).map(|k| FieldError::unknown(k.clone())).collect();
    if !unknown.is_empty() {
        let mut err = ApiError::invalid_parameter(unknown);
        err.message = format!("invalid extra parameters: {}", err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>().join(", "));
        return Err(err);
    }
    let allowed: &[&str] = match origin {
        Origin::Create => &[],
        Origin::Import(_) => &["uuid", "published_at"],
    };
    let mut errors = spec::check(FIELDS, &obj, Mode::Create, allowed);
    if let Origin::Create = origin
        && obj.contains_key("uuid")
    {
        errors.retain(|e| e.field != "uuid");
        errors.push(FieldError::invalid("uuid", "is chosen by the server on CreateImage; use AdminImportImage to keep a UUID"));
    }
    if let Origin::Import(uuid) = origin {
        match obj.get("uuid").and_then(Value::as_str) {
            None => errors.push(FieldError::missing("uuid")),
            Some(u) if !u.eq_ignore_ascii_case(&uuid.to_string()) => {
                errors.push(FieldError::invalid("uuid", format!("must equal the UUID in the path ({uuid})")))
            }
            Some(_) => {}
        }
    }
    errors.extend(check_type_rules(&obj));
    if !errors.is_empty() {
        return Err(ApiError::validation_422(errors));
    }
    let uuid = match origin {
        Origin::Create => Uuid::new_v4(),
        Origin::Import(u) => u,
    };
    obj.insert("uuid".into(), json!(uuid));
    obj.insert("v".into(), json!(2));
    obj.insert("state".into(), json!("unactivated"));
    obj.insert("disabled".into(), json!(false));
    obj.entry("public").or_insert(json!(false));
    obj.insert("files".into(), json!([]));
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::internal(format!("image record: {e}")))
}

/// zvol images need the four HVM fields; other types may not have them.
fn check_type_rules(obj: &Map<String, Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    for f in ZVOL_FIELDS {
        match (kind == "zvol", obj.get(*f).is_some_and(|v| !v.is_null())) {
            (true, false) => {
                errors.push(FieldError { field: (*f).into(), code: "MissingParameter".into(), message: "is required for type zvol".into() })
            }
            (false, true) if !kind.is_empty() => {
                errors.push(FieldError::invalid(*f, format!("is only allowed for type zvol (this image is {kind})")))
            }
            _ => {}
        }
    }
    if kind != "zone-dataset" && !kind.is_empty() && obj.contains_key("inherited_directories") {
        errors.push(FieldError::invalid("inherited_directories", "is only allowed for type zone-dataset"));
    }
    errors
}

/// Validates an UpdateImage body against the stored image and returns the new one.
pub fn check_update(current: &Image, input: &Map<String, Value>) -> Result<Image, ApiError> {
    let mut errors = spec::check(FIELDS, input, Mode::Update, &[]);
    let Value::Object(mut obj) = serde_json::to_value(current).map_err(|e| ApiError::internal(e.to_string()))? else {
        return Err(ApiError::internal("image did not serialize to an object"));
    };
    errors.extend(spec::immutable_changes(FIELDS, &obj, input).into_iter().map(|mut e| {
        e.message = "cannot be changed on an existing image".into();
        e
    }));
    if !errors.is_empty() {
        return Err(ApiError::validation_422(errors));
    }
    spec::merge(&mut obj, input);
    let type_errors = check_type_rules(&obj);
    if !type_errors.is_empty() {
        return Err(ApiError::validation_422(type_errors));
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::internal(format!("image record: {e}")))
}

/// AddImageFile is allowed only before activation.
pub fn check_can_add_file(img: &Image) -> Result<(), ApiError> {
    if img.state != "unactivated" {
        return Err(ApiError::new(
            422,
            "ImageFilesImmutable",
            format!("image {} is {}: its file cannot change after activation", img.uuid, img.state),
        ));
    }
    Ok(())
}

/// ActivateImage: needs a file; keeps an imported `published_at`.
pub fn activate(img: &Image, now: &str) -> Result<Image, ApiError> {
    if img.state != "unactivated" {
        return Err(ApiError::new(422, "ImageAlreadyActivated", format!("image {} is already activated", img.uuid)));
    }
    if img.files.is_empty() {
        return Err(ApiError::new(
            422,
            "NoActivationNoFile",
            format!("image {} has no file: add one with AddImageFile before activating", img.uuid),
        ));
    }
    let mut out = img.clone();
    out.state = if img.disabled { "disabled".into() } else { "active".into() };
    out.rest.entry("published_at").or_insert_with(|| json!(now));
    Ok(out)
}

/// DisableImage / EnableImage.
pub fn set_disabled(img: &Image, disabled: bool) -> Image {
    let mut out = img.clone();
    out.disabled = disabled;
    if out.state == "active" || out.state == "disabled" {
        out.state = if disabled { "disabled".into() } else { "active".into() };
    }
    out
}

/// The compression a file's first bytes show: `gzip`, `bzip2`, `xz`, `zstd`, or `none`.
pub fn sniff_compression(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if head.starts_with(b"BZh") {
        "bzip2"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        "xz"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else {
        "none"
    }
}

/// Refuses a declared compression the bytes contradict (a gzip file declared `none` would
/// be handed to guests as a corrupt disk). `none` is only refused when the bytes are clearly
/// compressed.
pub fn check_compression(declared: &str, head: &[u8]) -> Result<(), FieldError> {
    let seen = sniff_compression(head);
    if declared == seen || head.is_empty() {
        return Ok(());
    }
    let what = if seen == "none" { "not compressed".to_string() } else { format!("{seen}-compressed") };
    Err(FieldError::invalid("compression", format!("is {declared}, but the file's first bytes show it is {what}")))
}

/// The compression implied by a file name's extension, as `sdc-imgadm` guesses it.
pub fn compression_from_extension(path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".gz") || lower.ends_with(".tgz") {
        "gzip"
    } else if lower.ends_with(".bz2") {
        "bzip2"
    } else if lower.ends_with(".xz") {
        "xz"
    } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
        "zstd"
    } else {
        "none"
    }
}

/// What `nereid image create-from-disk` and the web console's upload know about a disk
/// file before inspecting it; [`DiskImage::manifest`] is the one place their manifest is
/// built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    pub name: String,
    pub version: String,
    /// One of [`OSES`].
    pub os: String,
    pub description: Option<String>,
    /// `bios` or `uefi`: sets `requirements.brand` bhyve and `requirements.bootrom`.
    pub bootrom: Option<String>,
    /// Owning account; `None` is [`NIL_OWNER`] (the operator).
    pub owner: Option<Uuid>,
    pub public: bool,
    pub nic_driver: String,
    pub disk_driver: String,
    /// `host` or `qemu64`.
    pub cpu_type: String,
}

/// The NIC and disk model a disk image is assumed to expect unless told otherwise.
pub const DEFAULT_DRIVER: &str = "virtio";
/// The CPU type a disk image gets unless told otherwise.
pub const DEFAULT_CPU_TYPE: &str = "host";
/// Firmware a disk image may require.
pub const BOOTROMS: &[&str] = &["bios", "uefi"];

impl DiskImage {
    /// A public Linux image with the default drivers.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        DiskImage {
            name: name.into(),
            version: version.into(),
            os: "linux".into(),
            description: None,
            bootrom: None,
            owner: None,
            public: true,
            nic_driver: DEFAULT_DRIVER.into(),
            disk_driver: DEFAULT_DRIVER.into(),
            cpu_type: DEFAULT_CPU_TYPE.into(),
        }
    }

    /// The CreateImage body for a zvol image whose disk is `image_size_mib` MiB.
    pub fn manifest(&self, image_size_mib: u64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("owner".into(), json!(self.owner.unwrap_or(NIL_OWNER)));
        m.insert("name".into(), json!(self.name));
        m.insert("version".into(), json!(self.version));
        m.insert("type".into(), json!("zvol"));
        m.insert("os".into(), json!(self.os));
        m.insert("public".into(), json!(self.public));
        m.insert("nic_driver".into(), json!(self.nic_driver));
        m.insert("disk_driver".into(), json!(self.disk_driver));
        m.insert("cpu_type".into(), json!(self.cpu_type));
        m.insert("image_size".into(), json!(image_size_mib));
        if let Some(d) = &self.description {
            m.insert("description".into(), json!(d));
        }
        if let Some(b) = &self.bootrom {
            m.insert("requirements".into(), json!({"brand": "bhyve", "bootrom": b}));
        }
        m
    }
}

/// What a provision asks of an image, compared with its `requirements` by
/// [`unmet_requirements`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provision<'a> {
    /// The VM's RAM in MiB (the package's, or VMAPI's `ram`).
    pub ram: u64,
    /// The VM's brand (`bhyve` or `kvm`).
    pub brand: &'a str,
    /// The bootrom the request names, if it names one (the image's requirement is the
    /// default otherwise, so only an explicit one can disagree).
    pub bootrom: Option<&'a str>,
    /// How many NICs the VM gets.
    pub nics: usize,
}

/// The image `requirements` a provision does not meet, each as a [`FieldError`] naming the
/// request field at fault (`ram`, `brand`, `bootrom`, `networks`); empty when it meets
/// them all. The one check VMAPI's CreateVm and CloudAPI's CreateMachine both use, so the
/// two cannot disagree. The RAM texts are Triton's allocator's (`"vm.ram" is smaller than
/// "image.requirements.min_ram"`) with the numbers added.
pub fn unmet_requirements(img: &Image, p: &Provision<'_>) -> Vec<FieldError> {
    let Some(req) = img.rest.get("requirements").and_then(Value::as_object) else { return Vec::new() };
    let label = img.label();
    let mut errors = Vec::new();
    if let Some(min) = req.get("min_ram").and_then(Value::as_u64)
        && p.ram < min
    {
        errors.push(FieldError::invalid(
            "ram",
            format!("\"vm.ram\" ({} MiB) is smaller than \"image.requirements.min_ram\" ({min} MiB) of image {label}", p.ram),
        ));
    }
    if let Some(max) = req.get("max_ram").and_then(Value::as_u64)
        && p.ram > max
    {
        errors.push(FieldError::invalid(
            "ram",
            format!("\"vm.ram\" ({} MiB) is larger than \"image.requirements.max_ram\" ({max} MiB) of image {label}", p.ram),
        ));
    }
    if let Some(b) = req.get("brand").and_then(Value::as_str)
        && b != p.brand
    {
        errors.push(FieldError::invalid(
            "brand",
            format!("brand {} does not match \"image.requirements.brand\" ({b}) of image {label}", p.brand),
        ));
    }
    if let (Some(want), Some(have)) = (req.get("bootrom").and_then(Value::as_str), p.bootrom)
        && want != have
    {
        errors.push(FieldError::invalid(
            "bootrom",
            format!("bootrom {have} does not match \"image.requirements.bootrom\" ({want}) of image {label}"),
        ));
    }
    if let Some(nets) = req.get("networks").and_then(Value::as_array)
        && p.nics < nets.len()
    {
        let names: Vec<&str> = nets.iter().filter_map(|n| n.get("name").and_then(Value::as_str)).collect();
        errors.push(FieldError::invalid(
            "networks",
            format!(
                "image {label} requires at least {} network interface(s) (\"image.requirements.networks\": {}); the request gives {}",
                nets.len(),
                names.join(", "),
                p.nics
            ),
        ));
    }
    errors
}

/// Whether the image has been activated (others may see it only then; IMGAPI's rule).
pub fn activated(img: &Image) -> bool {
    img.state == "active" || img.state == "disabled"
}

/// The accounts on the image's ACL.
pub fn acl(img: &Image) -> Vec<Uuid> {
    img.rest
        .get("acl")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok())).collect())
        .unwrap_or_default()
}

/// The fields CloudAPI's UpdateImage takes (sdc-cloudapi's list, node-triton's
/// `UPDATE_IMAGE_FIELDS`); `triton image share|unshare|tag` send `acl`/`tags` through it.
pub const TENANT_UPDATE_FIELDS: &[&str] = &["name", "version", "description", "homepage", "eula", "acl", "tags"];

/// The most accounts one image may be shared with.
pub const MAX_ACL: usize = 1000;

/// An ACL as given (account UUIDs, as `triton image share IMAGE ACCOUNT` sends them),
/// lowercased and without repeats; an empty list removes the ACL.
pub fn normalize_acl(v: &Value) -> Result<Vec<Uuid>, FieldError> {
    let items = v.as_array().ok_or_else(|| FieldError::invalid("acl", "must be an array of account UUIDs"))?;
    let mut out: Vec<Uuid> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let s = item.as_str().ok_or_else(|| FieldError::invalid(format!("acl[{i}]"), "must be an account UUID string"))?;
        let u = Uuid::parse_str(s).map_err(|_| {
            FieldError::invalid(
                format!("acl[{i}]"),
                format!("{:?} is not an account UUID (share with the account's UUID, not its login)", spec::truncate(s, 60)),
            )
        })?;
        if !out.contains(&u) {
            out.push(u);
        }
    }
    if out.len() > MAX_ACL {
        return Err(FieldError::invalid("acl", format!("may name at most {MAX_ACL} accounts")));
    }
    Ok(out)
}

/// Validates a CloudAPI UpdateImage body (only [`TENANT_UPDATE_FIELDS`]; unlike IMGAPI's
/// operator UpdateImage, `name` and `version` may change) and returns the new image.
/// `null` removes an optional field. Errors are IMGAPI's 422 `ValidationFailed`.
pub fn check_tenant_update(current: &Image, input: &Map<String, Value>) -> Result<Image, ApiError> {
    if input.is_empty() {
        return Err(ApiError::new(422, "ValidationFailed", "invalid image update data: no parameters provided"));
    }
    let mut errors: Vec<FieldError> = input
        .keys()
        .filter(|k| !TENANT_UPDATE_FIELDS.contains(&k.as_str()))
        .map(|k| FieldError {
            field: k.clone(),
            code: "NotAllowed".into(),
            message: format!("cannot be updated (UpdateImage takes {})", TENANT_UPDATE_FIELDS.join(", ")),
        })
        .collect();
    let mut input = input.clone();
    input.retain(|k, _| TENANT_UPDATE_FIELDS.contains(&k.as_str()));
    for k in ["name", "version"] {
        if input.get(k).is_some_and(Value::is_null) {
            errors.push(FieldError::invalid(k, "is required and cannot be removed"));
        }
    }
    let fields: Vec<Field> = FIELDS.iter().filter(|f| TENANT_UPDATE_FIELDS.contains(&f.name)).cloned().collect();
    // The ACL is checked item by item below, with a hint for a login given as an account.
    errors.extend(spec::check(&fields, &input, Mode::Update, &[]).into_iter().filter(|e| e.code != "UnknownParameter" && e.field != "acl"));
    if let Some(v) = input.get("acl").filter(|v| !v.is_null()) {
        match normalize_acl(v) {
            Ok(acl) if acl.is_empty() => {
                input.insert("acl".into(), Value::Null);
            }
            Ok(acl) => {
                input.insert("acl".into(), json!(acl));
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        let mut e = ApiError::validation_422(errors);
        e.message = format!(
            "invalid image update data: {}",
            e.errors.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ")
        );
        return Err(e);
    }
    let Value::Object(mut obj) = serde_json::to_value(current).map_err(|e| ApiError::internal(e.to_string()))? else {
        return Err(ApiError::internal("image did not serialize to an object"));
    };
    spec::merge(&mut obj, &input);
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::internal(format!("image record: {e}")))
}

/// IMGAPI's `NotImageOwner` (422): only the owner may change or delete an image.
pub fn not_owner(account: Uuid, img: &Image) -> ApiError {
    ApiError::new(422, "NotImageOwner", format!("account {account} is not the owner of image {}", img.uuid))
}

/// Whether `account` may clone `img` (IMGAPI's CloneImage rules): the image is activated,
/// `account` is on its ACL (so not its owner, nor anyone for a public operator image), and
/// it is not a docker image.
pub fn check_clone(img: &Image, account: Uuid) -> Result<(), ApiError> {
    if !activated(img) {
        return Err(ApiError::validation_422(vec![FieldError::invalid(
            "image",
            format!("image {} is {}: only an activated image can be cloned", img.uuid, img.state),
        )]));
    }
    if !acl(img).contains(&account) {
        return Err(ApiError::new(
            422,
            "ImageNotShared",
            format!("image {} is not shared with account {account}: only an image shared with you (its ACL) can be cloned", img.uuid),
        ));
    }
    if img.kind == "docker" {
        return Err(ApiError::validation_422(vec![FieldError::invalid("type", "docker images cannot be cloned")]));
    }
    Ok(())
}

/// A private copy of `img` for `owner`: a new UUID, no ACL, not public, published `now`,
/// the same file (files are stored by their sha1, so the copy shares the bytes), and
/// `origin` as given (the clone of the origin, or the operator's origin itself).
/// `disabled` keeps an intermediate image of a cloned chain out of provisioning lists.
pub fn cloned(img: &Image, owner: Uuid, uuid: Uuid, origin: Option<Uuid>, disabled: bool, now: &str) -> Image {
    let mut out = img.clone();
    out.uuid = uuid;
    out.owner = owner;
    out.public = false;
    out.disabled = disabled;
    out.state = if disabled { "disabled".into() } else { "active".into() };
    out.rest.remove("acl");
    out.rest.insert("published_at".into(), json!(now));
    match origin {
        Some(o) => {
            out.rest.insert("origin".into(), json!(o));
        }
        None => {
            out.rest.remove("origin");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn zvol() -> Value {
        json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "debian-12", "version": "20261125", "type": "zvol", "os": "linux",
            "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host", "image_size": 10240})
    }

    #[test]
    fn creates_unactivated_zvol() {
        let img = check_create(&obj(zvol()), Origin::Create).unwrap();
        assert_eq!((img.state.as_str(), img.v, img.public, img.disabled), ("unactivated", 2, false, false));
        assert_eq!(img.image_size(), Some(10240));
        let rendered = img.render(false);
        assert_eq!(rendered["files"], json!([]));
        assert_eq!(rendered["type"], "zvol");
    }

    #[test]
    fn zvol_fields_are_required_and_exclusive() {
        let mut m = obj(zvol());
        m.remove("image_size");
        let err = check_create(&m, Origin::Create).unwrap_err();
        assert_eq!((err.status, err.errors[0].field.as_str()), (422, "image_size"));
        let mut m = obj(zvol());
        m.insert("type".into(), json!("zone-dataset"));
        let err = check_create(&m, Origin::Create).unwrap_err();
        assert_eq!(err.errors.len(), 4);
    }

    #[test]
    fn unknown_keys_are_invalid_parameters_but_fetched_manifests_are_tolerated() {
        let mut m = obj(zvol());
        m.insert("colour".into(), json!("red"));
        let err = check_create(&m, Origin::Create).unwrap_err();
        assert_eq!((err.code.as_str(), err.message.as_str()), ("InvalidParameter", "invalid extra parameters: colour"));
        let mut m = obj(zvol());
        m.insert("v".into(), json!(2));
        m.insert("state".into(), json!("active"));
        m.insert("files".into(), json!([{"sha1": "x"}]));
        assert!(check_create(&m, Origin::Create).is_ok());
    }

    #[test]
    fn import_keeps_uuid_and_published_at() {
        let id = Uuid::new_v4();
        let mut m = obj(zvol());
        m.insert("uuid".into(), json!(id));
        m.insert("published_at".into(), json!("2020-01-01T00:00:00.000Z"));
        assert!(check_create(&m, Origin::Create).is_err());
        let img = check_create(&m, Origin::Import(id)).unwrap();
        assert_eq!(img.uuid, id);
        let err = check_create(&m, Origin::Import(Uuid::new_v4())).unwrap_err();
        assert!(err.errors[0].message.contains("must equal the UUID in the path"));
        let mut img = img;
        img.files.push(ImageFile {
            sha1: "a".into(),
            size: 1,
            compression: "none".into(),
            dataset_guid: None,
            stor: Some("local".into()),
            content_md5: Some("x".into()),
            ..Default::default()
        });
        let active = activate(&img, "2026-01-01T00:00:00.000Z").unwrap();
        assert_eq!(active.published_at(), Some("2020-01-01T00:00:00.000Z"));
        let r = active.render(false);
        assert!(r["files"][0].get("contentMD5").is_none() && r["files"][0].get("stor").is_none());
        assert_eq!(active.render(true)["files"][0]["stor"], "local");
    }

    #[test]
    fn lifecycle() {
        let img = check_create(&obj(zvol()), Origin::Create).unwrap();
        assert_eq!(activate(&img, "t").unwrap_err().code, "NoActivationNoFile");
        let mut img = img;
        img.files.push(ImageFile {
            sha1: "a".into(),
            size: 1,
            compression: "none".into(),
            dataset_guid: None,
            stor: None,
            content_md5: None,
            ..Default::default()
        });
        let active = activate(&img, "t").unwrap();
        assert_eq!(active.state, "active");
        assert_eq!(check_can_add_file(&active).unwrap_err().code, "ImageFilesImmutable");
        assert_eq!(activate(&active, "t").unwrap_err().code, "ImageAlreadyActivated");
        let disabled = set_disabled(&active, true);
        assert_eq!(disabled.state, "disabled");
        assert_eq!(set_disabled(&disabled, false).state, "active");
        assert_eq!(set_disabled(&img, true).state, "unactivated");
    }

    #[test]
    fn requirements_are_checked() {
        let mut m = obj(zvol());
        m.insert("requirements".into(), json!({"bootrom": "uefi"}));
        assert!(check_create(&m, Origin::Create).unwrap_err().errors[0].message.contains("only allowed with brand bhyve"));
        m.insert("requirements".into(), json!({"bootrom": "uefi", "brand": "bhyve", "min_ram": 512, "max_ram": 256}));
        assert!(check_create(&m, Origin::Create).unwrap_err().errors[0].message.contains("larger than max_ram"));
        m.insert("requirements".into(), json!({"cpu": 1}));
        assert!(check_create(&m, Origin::Create).is_err());
    }

    #[test]
    fn update_refuses_immutables() {
        let img = check_create(&obj(zvol()), Origin::Create).unwrap();
        let err = check_update(&img, &obj(json!({"name": "other"}))).unwrap_err();
        assert_eq!(err.errors[0].field, "name");
        let up = check_update(&img, &obj(json!({"description": "hi", "public": true, "image_size": 20480}))).unwrap();
        assert!(up.public);
        assert_eq!(up.image_size(), Some(20480));
        assert!(check_update(&img, &obj(json!({"state": "active"}))).is_err());
    }

    #[test]
    fn sniffs_compression() {
        assert_eq!(sniff_compression(&[0x1f, 0x8b, 8]), "gzip");
        assert_eq!(sniff_compression(b"BZh91AY"), "bzip2");
        assert_eq!(sniff_compression(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]), "xz");
        assert_eq!(sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd, 0]), "zstd");
        assert_eq!(sniff_compression(b"QFI\xfb"), "none");
        assert!(check_compression("gzip", &[0x1f, 0x8b]).is_ok());
        let e = check_compression("none", &[0x28, 0xb5, 0x2f, 0xfd]).unwrap_err();
        assert_eq!(e.message, "is none, but the file's first bytes show it is zstd-compressed");
        assert!(check_compression("gzip", b"plain").unwrap_err().message.contains("not compressed"));
    }

    #[test]
    fn disk_image_manifests_pass_create_checks() {
        let mut d = DiskImage::new("debian-12", "20261125");
        let m = d.manifest(10240);
        assert_eq!((m["type"].as_str(), m["image_size"].as_u64(), m["public"].as_bool()), (Some("zvol"), Some(10240), Some(true)));
        assert_eq!(m["owner"], json!(NIL_OWNER));
        assert!(!m.contains_key("requirements") && !m.contains_key("description"));
        check_create(&m, Origin::Create).unwrap();
        d.bootrom = Some("uefi".into());
        d.description = Some("Debian".into());
        d.public = false;
        let m = d.manifest(1);
        assert_eq!(m["requirements"], json!({"brand": "bhyve", "bootrom": "uefi"}));
        assert_eq!((m["description"].as_str(), m["public"].as_bool()), (Some("Debian"), Some(false)));
        check_create(&m, Origin::Create).unwrap();
    }

    #[test]
    fn extension_compression() {
        assert_eq!(compression_from_extension("disk.qcow2.ZST"), "zstd");
        assert_eq!(compression_from_extension("disk.raw.gz"), "gzip");
        assert_eq!(compression_from_extension("disk.raw"), "none");
    }

    fn active(v: Value) -> Image {
        let mut img = check_create(&obj(v), Origin::Create).unwrap();
        img.files.push(ImageFile {
            sha1: "a".into(),
            size: 1,
            compression: "none".into(),
            dataset_guid: None,
            stor: None,
            content_md5: None,
            ..Default::default()
        });
        activate(&img, "2026-01-01T00:00:00.000Z").unwrap()
    }

    fn with_requirements(r: Value) -> Image {
        let mut m = zvol();
        m["requirements"] = r;
        active(m)
    }

    #[test]
    fn requirements_refuse_each_unmet_rule_by_field() {
        let p = Provision { ram: 1024, brand: "bhyve", bootrom: None, nics: 1 };
        assert!(unmet_requirements(&active(zvol()), &p).is_empty(), "no requirements, nothing unmet");
        let img = with_requirements(json!({"min_ram": 2048}));
        let e = unmet_requirements(&img, &p);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "ram");
        assert_eq!(
            e[0].message,
            "\"vm.ram\" (1024 MiB) is smaller than \"image.requirements.min_ram\" (2048 MiB) of image debian-12@20261125"
        );
        assert!(unmet_requirements(&img, &Provision { ram: 2048, ..p }).is_empty(), "min_ram is inclusive");
        let img = with_requirements(json!({"max_ram": 512}));
        let e = unmet_requirements(&img, &p);
        assert_eq!(e[0].field, "ram");
        assert!(e[0].message.contains("is larger than \"image.requirements.max_ram\" (512 MiB)"), "{}", e[0].message);
        assert!(unmet_requirements(&img, &Provision { ram: 512, ..p }).is_empty(), "max_ram is inclusive");
        let img = with_requirements(json!({"brand": "kvm"}));
        let e = unmet_requirements(&img, &p);
        assert_eq!((e[0].field.as_str(), e[0].message.contains("brand bhyve does not match")), ("brand", true), "{e:?}");
        assert!(unmet_requirements(&img, &Provision { brand: "kvm", ..p }).is_empty());
        let img = with_requirements(json!({"brand": "bhyve", "bootrom": "uefi"}));
        assert!(unmet_requirements(&img, &p).is_empty(), "no bootrom asked: the image's is used");
        let e = unmet_requirements(&img, &Provision { bootrom: Some("bios"), ..p });
        assert_eq!(e[0].field, "bootrom");
        assert!(e[0].message.contains("bootrom bios does not match \"image.requirements.bootrom\" (uefi)"), "{}", e[0].message);
        assert!(unmet_requirements(&img, &Provision { bootrom: Some("uefi"), ..p }).is_empty());
        let img =
            with_requirements(json!({"networks": [{"name": "net0", "description": "public"}, {"name": "net1", "description": "private"}]}));
        let e = unmet_requirements(&img, &p);
        assert_eq!(e[0].field, "networks");
        assert!(
            e[0].message.contains("requires at least 2 network interface(s)") && e[0].message.contains("net0, net1"),
            "{}",
            e[0].message
        );
        assert!(e[0].message.ends_with("the request gives 1"), "{}", e[0].message);
        assert!(unmet_requirements(&img, &Provision { nics: 2, ..p }).is_empty());
        let img = with_requirements(json!({"min_ram": 4096, "brand": "kvm"}));
        assert_eq!(unmet_requirements(&img, &p).len(), 2, "every unmet rule is reported");
    }

    #[test]
    fn tenant_update_takes_cloudapi_fields_only() {
        let img = active(zvol());
        let up = check_tenant_update(&img, &obj(json!({"name": "renamed", "version": "2", "description": "d", "tags": {"role": "db"}})))
            .unwrap();
        assert_eq!((up.name.as_str(), up.version.as_str()), ("renamed", "2"));
        assert_eq!(up.rest["tags"], json!({"role": "db"}));
        assert_eq!(up.rest["description"], "d");
        let e = check_tenant_update(&img, &obj(json!({"public": true, "state": "x"}))).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (422, "ValidationFailed"));
        assert!(e.errors.iter().any(|f| f.field == "public" && f.code == "NotAllowed"), "{e:?}");
        assert!(e.message.starts_with("invalid image update data: "), "{}", e.message);
        let e = check_tenant_update(&img, &Map::new()).unwrap_err();
        assert_eq!(e.message, "invalid image update data: no parameters provided");
        let e = check_tenant_update(&img, &obj(json!({"homepage": "ftp://x"}))).unwrap_err();
        assert_eq!(e.errors[0].field, "homepage");
        let e = check_tenant_update(&img, &obj(json!({"name": null}))).unwrap_err();
        assert_eq!(e.errors[0].field, "name");
        let d = check_tenant_update(&up, &obj(json!({"description": null}))).unwrap();
        assert!(!d.rest.contains_key("description"), "null removes an optional field");
    }

    #[test]
    fn acl_is_account_uuids_deduplicated() {
        let a = Uuid::from_u128(7);
        let img = active(zvol());
        let up = check_tenant_update(&img, &obj(json!({"acl": [a.to_string().to_uppercase(), a]}))).unwrap();
        assert_eq!(acl(&up), vec![a]);
        assert_eq!(up.rest["acl"], json!([a]));
        let cleared = check_tenant_update(&up, &obj(json!({"acl": []}))).unwrap();
        assert!(!cleared.rest.contains_key("acl"), "an empty ACL is no ACL");
        let e = check_tenant_update(&img, &obj(json!({"acl": ["bob"]}))).unwrap_err();
        assert_eq!(e.errors[0].field, "acl[0]", "{e:?}");
        assert!(e.errors[0].message.contains("not an account UUID"), "{e:?}");
        assert!(normalize_acl(&json!("x")).is_err());
    }

    #[test]
    fn clone_rules() {
        let bob = Uuid::from_u128(9);
        let mut img = active(zvol());
        img.owner = Uuid::from_u128(8);
        assert_eq!(check_clone(&img, bob).unwrap_err().code, "ImageNotShared");
        assert_eq!(check_clone(&img, img.owner).unwrap_err().code, "ImageNotShared", "an owner cannot clone its own image");
        img.rest.insert("acl".into(), json!([bob]));
        check_clone(&img, bob).unwrap();
        let mut unact = img.clone();
        unact.state = "unactivated".into();
        assert_eq!(check_clone(&unact, bob).unwrap_err().errors[0].field, "image");
        let c = cloned(&img, bob, Uuid::from_u128(10), None, false, "2026-02-02T00:00:00.000Z");
        assert_eq!((c.uuid, c.owner, c.public, c.state.as_str()), (Uuid::from_u128(10), bob, false, "active"));
        assert!(acl(&c).is_empty());
        assert_eq!(c.published_at(), Some("2026-02-02T00:00:00.000Z"));
        assert_eq!(c.files, img.files, "the copy shares the file");
        assert_eq!(cloned(&img, bob, Uuid::from_u128(11), Some(Uuid::from_u128(1)), true, "t").state, "disabled");
    }
}
