//! Images made from VMs (CloudAPI `CreateImageFromMachine`, VMAPI's `create_image`
//! action, `triton image create`): what is checked before the job, the new image's
//! manifest, and the image-side pieces the `create_image` job's steps use.
//!
//! ```text
//!   request ── checks (VM, its image, the manifest) ──► image (state creating) + job,
//!                                                       written in one batch
//!   job: stop VM ► [guest prepares itself] ► receive its flattened boot disk ►
//!        start VM again ► activate
//!              └─ any failure: file dropped, image failed {message, code}, VM as before
//!
//!   creating ──► active
//!       └──────► failed (error: {message, code?})
//! ```
//! The new image inherits what describes the disk from the VM's image (type, os,
//! requirements, drivers, cpu_type, users, generate_passwords) and names it as its
//! `origin`; its `image_size` is the exported disk's. The boot disk arrives through the
//! image store's own receive path ([`super::image_files`]): hashed while streamed,
//! committed under its SHA-1 only when complete, shared with any image of the same bytes.

use std::time::Duration;

use nereid_store::{Cond, Filter, Op, Path};
use nereid_types::image::{self, Image, ImageFile, Origin};
use nereid_types::job::Job;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::agents::AgentError;
use super::image_files::{ReceiveError, Received};
use super::{App, RETRIES, encode, store_error};
use crate::buckets::IMAGES;
use crate::jobs::new_job;

/// What a caller may set on an image made from a VM (CloudAPI's and IMGAPI's inputs);
/// everything else comes from the VM's image.
pub const INPUTS: &[&str] = &["name", "version", "description", "homepage", "eula", "acl", "tags"];

/// How long a guest has to say it is preparing (`prepare-image:state` = `running`)
/// before the image fails with `PrepareImageDidNotRun`, unless the request says (imgadm's
/// default: five minutes).
pub const PREPARE_TIMEOUT_SECS: u64 = 300;

/// VMAPI `create_image`'s own inputs (operators only, never CloudAPI's): the guest's
/// prepare-image script, run as its `sdc:operator-script` before the disk is taken, and
/// how long it has to start.
pub const PREPARE_INPUTS: &[&str] = &["prepare_image_script", "prepare_image_timeout"];

/// What the guest is asked to run before its disk becomes an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub script: String,
    pub timeout_secs: u64,
}

/// A `create_image` body without its prepare-image inputs, and what they ask.
pub type Split = (Map<String, Value>, Option<Prepare>);

/// Takes the prepare-image inputs out of a `create_image` body (pure).
pub fn split_prepare(input: &Map<String, Value>) -> Result<Split, Vec<FieldError>> {
    let mut rest = input.clone();
    let script = rest.remove("prepare_image_script");
    let timeout = rest.remove("prepare_image_timeout");
    let mut errors = Vec::new();
    let script = match script {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 64 * 1024 => Some(s),
        Some(_) => {
            errors.push(FieldError::invalid("prepare_image_script", "must be a non-empty script of at most 64 KiB (a string)"));
            None
        }
    };
    let timeout_secs = match timeout {
        None | Some(Value::Null) => PREPARE_TIMEOUT_SECS,
        Some(v) => match v.as_u64().filter(|n| (1..=3600).contains(n)) {
            Some(n) if script.is_some() => n,
            Some(_) => {
                errors.push(FieldError::invalid("prepare_image_timeout", "only goes with prepare_image_script"));
                0
            }
            None => {
                errors.push(FieldError::invalid("prepare_image_timeout", "must be a whole number of seconds from 1 to 3600"));
                0
            }
        },
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((rest, script.map(|script| Prepare { script, timeout_secs })))
}

/// Fields copied from the VM's image: they describe the disk, which the new image keeps.
pub const INHERITED: &[&str] =
    &["type", "os", "requirements", "nic_driver", "disk_driver", "cpu_type", "image_size", "users", "generate_passwords"];

/// The new image's manifest (pure): the caller's `INPUTS`, the source's `INHERITED`
/// fields, `owner`, and the source as `origin`. Unknown inputs are refused by name.
pub fn manifest_from_vm(source: &Image, input: &Map<String, Value>, owner: Uuid) -> Result<Map<String, Value>, Vec<FieldError>> {
    let unknown: Vec<FieldError> = input
        .keys()
        .filter(|k| !INPUTS.contains(&k.as_str()))
        .map(|k| FieldError::invalid(k, format!("cannot be set on an image made from a VM (allowed: {})", INPUTS.join(", "))))
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let mut m: Map<String, Value> = input.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let src = encode(source);
    for f in INHERITED {
        if let Some(v) = src.get(*f).filter(|v| !v.is_null()) {
            m.insert((*f).into(), v.clone());
        }
    }
    m.insert("owner".into(), json!(owner));
    m.insert("origin".into(), json!(source.uuid));
    m.insert("public".into(), json!(false));
    Ok(m)
}

/// A failure's reason as the image's owner may read it (pure): words of our own for the
/// step that failed, never the agent's, reqwest's or qemu-img's text (which name servers,
/// addresses and host paths). `said` is what the step judged safe to show, if anything:
/// a preparation's verdict with the guest's own `prepare-image:error`, or a receive's
/// short cause. The job keeps the whole reason for operators.
pub fn tenant_message(step: &str, said: Option<&str>) -> String {
    let fixed = match step {
        "check" => "the image is no longer being created",
        "stop" | "wait stopped" => "the VM could not be stopped",
        "prepare" => "the VM could not be booted to prepare its disk",
        "receive disk" => "the VM's disk could not be exported",
        "start again" => "the VM could not be started again",
        "activate" => "the image could not be activated",
        _ => "the image could not be made",
    };
    let why = said.filter(|s| !s.trim().is_empty() && matches!(step, "prepare" | "receive disk")).unwrap_or(fixed);
    if step.is_empty() { why.to_string() } else { format!("{step}: {why}") }
}

/// Why a boot disk could not be received: `tenant` for the image's owner, `detail` (which
/// may name the server, its address and paths on it) for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFailure {
    pub tenant: String,
    pub detail: String,
}

impl DiskFailure {
    fn new(tenant: &str, detail: impl Into<String>) -> DiskFailure {
        DiskFailure { tenant: tenant.into(), detail: detail.into() }
    }
}

/// What VMAPI `create_image` takes besides the manifest (Triton's body): the new image's
/// UUID, and what Nereid accepts without needing it.
pub const VMAPI_KEYS: &[&str] = &["manifest", "image_uuid", "imgapi_url", "compression", "incremental", "max_origin_depth"];

/// The manifest inputs of a VMAPI `create_image` body and the UUID it chose, if any.
pub type VmapiBody = (Map<String, Value>, Option<Uuid>);

/// A VMAPI `create_image` body as the manifest inputs (with any prepare-image inputs) and
/// the new image's UUID if the caller chose it (pure). Triton's form nests the manifest
/// (`{manifest: {name, version, …}, image_uuid, imgapi_url, compression, incremental}`);
/// Nereid's flat form (`{name, version, …}`) is taken too. `imgapi_url` is accepted and
/// unused (the image is stored by this cloud's own IMGAPI), `compression` likewise (the
/// disk is stored as the server exports it), `incremental: true` is refused: images made
/// from VMs here are whole disks.
pub fn vmapi_body(body: &Map<String, Value>) -> Result<VmapiBody, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut input: Map<String, Value> =
        body.iter().filter(|(k, _)| !VMAPI_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut uuid = None;
    let uuid_of = |field: &str, v: &Value, errors: &mut Vec<FieldError>| match v.as_str().map(Uuid::parse_str) {
        Some(Ok(u)) => Some(u),
        _ => {
            errors.push(FieldError::invalid(field, "must be a UUID (a string)"));
            None
        }
    };
    match body.get("manifest") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match k.as_str() {
                    // The manifest format's version: Nereid writes its own.
                    "v" => {}
                    "uuid" => uuid = uuid_of("manifest.uuid", v, &mut errors),
                    _ if input.contains_key(k) => {
                        errors.push(FieldError::invalid(k, "is given both in manifest and beside it"));
                    }
                    _ => {
                        input.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Some(_) => errors.push(FieldError::invalid("manifest", "must be the new image's manifest (an object)")),
    }
    match body.get("image_uuid") {
        None | Some(Value::Null) => {}
        Some(v) => match (uuid_of("image_uuid", v, &mut errors), uuid) {
            (Some(a), Some(b)) if a != b => errors.push(FieldError::invalid("image_uuid", "differs from manifest.uuid")),
            (Some(a), _) => uuid = Some(a),
            (None, _) => {}
        },
    }
    if body.get("imgapi_url").is_some_and(|v| !v.is_null() && !v.is_string()) {
        errors.push(FieldError::invalid("imgapi_url", "must be a URL (a string)"));
    }
    match body.get("compression") {
        None | Some(Value::Null) => {}
        Some(Value::String(c)) if ["none", "gzip", "bzip2", "xz"].contains(&c.as_str()) => {}
        Some(_) => errors.push(FieldError::invalid("compression", "must be one of none, gzip, bzip2, xz")),
    }
    match body.get("incremental") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::String(s)) if s == "false" => {}
        Some(Value::Bool(true)) => errors.push(FieldError::invalid(
            "incremental",
            "incremental images of VMs are not supported: Nereid makes an image of the VM's whole disk (omit incremental or send false)",
        )),
        Some(Value::String(s)) if s == "true" => errors.push(FieldError::invalid(
            "incremental",
            "incremental images of VMs are not supported: Nereid makes an image of the VM's whole disk (omit incremental or send false)",
        )),
        Some(_) => errors.push(FieldError::invalid("incremental", "must be a boolean")),
    }
    if body.get("max_origin_depth").is_some_and(|v| !v.is_null() && !v.is_u64()) {
        errors.push(FieldError::invalid("max_origin_depth", "must be a whole number"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((input, uuid))
}

/// A failed image's `error` (IMGAPI's `{message, code}`; `code` only when one is known).
pub fn image_error(message: &str, code: Option<&str>) -> Value {
    match code {
        Some(c) => json!({"message": message, "code": c}),
        None => json!({"message": message}),
    }
}

/// The image as it is once its disk is in: the file attached, `image_size` the disk's
/// (pure). Only a `creating` image takes a file.
pub fn with_file(img: &Image, file: ImageFile, image_size_mib: u64) -> Result<Image, ApiError> {
    if img.state != "creating" {
        return Err(ApiError::conflict("InvalidState", format!("image {} is {}, not creating", img.uuid, img.state)));
    }
    let mut out = img.clone();
    out.files = vec![file];
    out.rest.insert("image_size".into(), json!(image_size_mib.max(1)));
    Ok(out)
}

/// The created image activated (pure): `active` and published, as ActivateImage makes it.
pub fn activated(img: &Image, now: &str) -> Result<Image, ApiError> {
    if img.state == "active" {
        return Ok(img.clone());
    }
    if img.state != "creating" {
        return Err(ApiError::conflict("InvalidState", format!("image {} is {}, not creating", img.uuid, img.state)));
    }
    let mut staged = img.clone();
    staged.state = "unactivated".into();
    image::activate(&staged, now)
}

/// The image failed (pure): no file, `error` saying why. An active image stays active.
pub fn failed(img: &Image, error: Value) -> Image {
    let mut out = img.clone();
    if out.state == "active" {
        return out;
    }
    out.state = "failed".into();
    out.files.clear();
    out.rest.insert("error".into(), error);
    out
}

impl App {
    /// CreateImageFromVm: checks the VM and the manifest, then writes the image (state
    /// `creating`) and the `create_image` job together. With `owner`, the VM must be
    /// that account's (CloudAPI); the image always belongs to the VM's owner.
    /// `image_uuid` is the new image's UUID when the caller chose it (VMAPI).
    pub async fn create_image_from_vm(
        &self,
        vm_uuid: Uuid,
        input: &Map<String, Value>,
        owner: Option<Uuid>,
        image_uuid: Option<Uuid>,
    ) -> Result<(Image, Job), ApiError> {
        let (vm, _) = self.get_vm(vm_uuid, owner).await?;
        let vm_owner = vm.owner_uuid.ok_or_else(|| ApiError::conflict("InvalidState", format!("VM {vm_uuid} has no owner")))?;
        let Some(source_uuid) = vm.image_uuid else {
            return Err(ApiError::new(
                422,
                "VmHasNoOrigin",
                format!("VM {vm_uuid} was not made from an image, so it has no disk to make one of"),
            ));
        };
        let Some((source, _)) = self.read::<Image>(IMAGES.name, &source_uuid.to_string()).await? else {
            return Err(ApiError::new(422, "VmHasNoOrigin", format!("VM {vm_uuid}'s image {source_uuid} no longer exists")));
        };
        if source.kind != "zvol" {
            return Err(ApiError::new(
                422,
                "NotSupported",
                format!("VM {vm_uuid}'s image is type {}: only hardware-VM (zvol) images can be made from VMs here", source.kind),
            ));
        }
        let (input, prepare) = split_prepare(input).map_err(ApiError::invalid_parameter)?;
        let manifest = manifest_from_vm(&source, &input, vm_owner).map_err(ApiError::invalid_parameter)?;
        let mut img = image::check_create(&manifest, Origin::Create)?;
        img.state = "creating".into();
        if let Some(u) = image_uuid {
            if self.read::<Image>(IMAGES.name, &u.to_string()).await?.is_some() {
                return Err(ApiError::validation_409(vec![FieldError::duplicate("image_uuid", format!("image {u} already exists"))]));
            }
            img.uuid = u;
        }
        // The request is well-formed: now whether the VM can be imaged at all.
        let server = Self::check_actionable(&vm)?;
        let mut params = Map::new();
        params.insert("image_uuid".into(), json!(img.uuid));
        let prepares = prepare.is_some();
        if let Some(p) = prepare {
            params.insert("prepare_image_script".into(), json!(p.script));
            params.insert("prepare_image_timeout".into(), json!(p.timeout_secs));
        }
        let mut job = new_job("create_image", vm_uuid, Some(server), vm.owner_uuid, params);
        // Its steps may take hours (a guest preparing itself, a large disk): the job's
        // own deadline must not end it before they do.
        job.timeout = crate::jobs::image_create::job_timeout_secs(self.cfg.step_deadline, prepares);
        let job = self.queue(job, vec![Op::put(IMAGES.name, img.uuid.to_string(), encode(&img), Cond::Absent)]).await?;
        tracing::info!(vm = %vm_uuid, image = %img.uuid, job = %job.uuid, "creating an image from a VM");
        Ok((img, job))
    }

    /// Applies `f` to the image, retrying on concurrent change.
    async fn change_created_image(&self, uuid: Uuid, f: impl Fn(&Image) -> Result<Image, ApiError>) -> Result<Image, ApiError> {
        for _ in 0..RETRIES {
            let (img, generation) = self.get_image(uuid, None).await?;
            let next = f(&img)?;
            if next == img {
                return Ok(next);
            }
            match self.store.put(IMAGES.name, &uuid.to_string(), encode(&next), Cond::Generation(generation)).await {
                Ok(_) => return Ok(next),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("image {uuid} kept changing; retry")))
    }

    /// Streams the stopped VM's flattened boot disk from its server into the image store
    /// and attaches it to the `creating` image. Once attached, a repeat does nothing.
    pub async fn receive_vm_disk(&self, image_uuid: Uuid, server: Uuid, vm: Uuid, within: Duration) -> Result<String, DiskFailure> {
        const EXPORT: &str = "the VM's disk could not be exported";
        let (img, _) = self.get_image(image_uuid, None).await.map_err(|e| DiskFailure::new(EXPORT, e.message))?;
        if let Some(f) = img.files.first() {
            return Ok(format!("the disk is in already ({} bytes, sha1 {})", f.size, f.sha1));
        }
        // Patient with a server that cannot be reached for a moment (an agent restarting
        // re-joins within seconds), as the other agent calls of jobs are.
        let end = std::time::Instant::now() + super::agents::PATIENCE;
        let stream = loop {
            match self.agent_boot_disk(server, vm, within).await {
                Ok(s) => break s,
                Err(AgentError::Unreachable { .. }) if std::time::Instant::now() < end => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e @ AgentError::Unreachable { .. }) => {
                    return Err(DiskFailure::new(
                        "the VM's server could not be reached",
                        format!("asking the server for the VM's disk: {e}"),
                    ));
                }
                Err(e) => return Err(DiskFailure::new(EXPORT, format!("asking the server for the VM's disk: {e}"))),
            }
        };
        let received = self.files.receive(Box::pin(stream), image::MAX_FILE_SIZE).await.map_err(|e| match e {
            ReceiveError::TooLarge(n) => {
                let m = format!("the VM's disk is larger than the {n}-byte limit of an image file");
                DiskFailure::new(&m, m.clone())
            }
            other => DiskFailure::new("the VM's disk could not be received from its server", format!("receiving the VM's disk: {other}")),
        })?;
        let result = self.attach_vm_disk(image_uuid, &received).await.map_err(|e| DiskFailure::new("the VM's disk could not be stored", e));
        if result.is_err() {
            self.files.discard(&received).await;
        }
        result
    }

    async fn attach_vm_disk(&self, image_uuid: Uuid, r: &Received) -> Result<String, String> {
        if r.size == 0 {
            return Err("the server sent an empty disk".into());
        }
        let tmp = r.tmp.clone();
        let facts = tokio::task::spawn_blocking(move || nereid_diskimage::inspect(&tmp, &mut |_| {}))
            .await
            .map_err(|e| format!("inspecting the disk: {e}"))?
            .map_err(|e| format!("the server sent something that is not a usable disk: {e}"))?;
        if facts.sha1 != r.sha1 {
            return Err("the disk changed while it was inspected".into());
        }
        let file = ImageFile {
            sha1: r.sha1.clone(),
            size: r.size,
            compression: facts.compression.as_str().into(),
            dataset_guid: None,
            stor: Some("local".into()),
            content_md5: Some(r.md5.clone()),
            ..Default::default()
        };
        let _refs = self.files.refs.lock().await;
        self.files.commit(r).await.map_err(|e| format!("storing the disk: {e}"))?;
        let size_mib = facts.image_size_mib();
        let stored = self.change_created_image(image_uuid, |img| with_file(img, file.clone(), size_mib)).await;
        if let Err(e) = stored {
            // Committed under its hash but attached to nothing: remove it unless shared.
            self.drop_unused_file(&r.sha1).await;
            return Err(e.message);
        }
        Ok(format!("received the {} disk ({} bytes, {size_mib} MiB to the guest, sha1 {})", facts.format.as_str(), r.size, r.sha1))
    }

    /// Removes a file no image refers to. Call with `files.refs` held.
    async fn drop_unused_file(&self, sha1: &str) {
        let users = self.store.count(IMAGES.name, &Filter::Eq(Path::field("files").index(0).key("sha1"), json!(sha1))).await;
        if users.is_ok_and(|n| n == 0) {
            self.files.remove(sha1).await;
        }
    }

    /// Marks the image made from a VM failed, saying why, and removes its file (unless
    /// another image shares it). An image already active is left alone.
    pub async fn fail_created_image(&self, image_uuid: Uuid, error: Value) -> Result<Image, ApiError> {
        let _refs = self.files.refs.lock().await;
        let (before, _) = self.get_image(image_uuid, None).await?;
        let after = self.change_created_image(image_uuid, |img| Ok(failed(img, error.clone()))).await?;
        if after.state == "failed"
            && let Some(f) = before.files.first()
        {
            self.drop_unused_file(&f.sha1).await;
        }
        Ok(after)
    }

    /// Activates the image made from a VM (idempotent).
    pub async fn activate_created_image(&self, image_uuid: Uuid) -> Result<Image, ApiError> {
        let now = nereid_types::time::now_iso();
        self.change_created_image(image_uuid, |img| activated(img, &now)).await
    }

    /// Puts an activated image back to `creating` (the job unwinds past activation).
    pub async fn deactivate_created_image(&self, image_uuid: Uuid) -> Result<Image, ApiError> {
        self.change_created_image(image_uuid, |img| {
            let mut out = img.clone();
            if out.state == "active" {
                out.state = "creating".into();
                out.rest.remove("published_at");
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Image {
        let mut m = nereid_types::image::DiskImage::new("debian", "12").manifest(2048);
        m.insert("owner".into(), json!(Uuid::nil()));
        m.insert("requirements".into(), json!({"min_ram": 512}));
        let mut img = image::check_create(&m, Origin::Create).unwrap();
        img.state = "active".into();
        img
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_manifest_takes_the_callers_fields_and_the_disk_facts_of_the_source() {
        let src = source();
        let owner = Uuid::from_u128(7);
        let m = manifest_from_vm(&src, &obj(json!({"name": "mine", "version": "1.0", "tags": {"role": "web"}, "acl": []})), owner).unwrap();
        let img = image::check_create(&m, Origin::Create).unwrap();
        assert_eq!((img.name.as_str(), img.version.as_str(), img.owner, img.public), ("mine", "1.0", owner, false));
        assert_eq!((img.kind.as_str(), img.os.as_str()), (src.kind.as_str(), src.os.as_str()));
        assert_eq!(img.origin(), Some(src.uuid.to_string().as_str()));
        assert_eq!(img.rest["requirements"], json!({"min_ram": 512}));
        assert_eq!(img.rest["tags"], json!({"role": "web"}));
        for f in ["nic_driver", "disk_driver", "cpu_type", "image_size"] {
            assert_eq!(img.rest[f], encode(&src)[f], "{f}");
        }
    }

    #[test]
    fn unknown_or_inherited_inputs_are_refused_by_name_and_bad_values_by_the_manifest_rules() {
        let src = source();
        let e =
            manifest_from_vm(&src, &obj(json!({"name": "x", "version": "1", "os": "windows", "public": true})), Uuid::nil()).unwrap_err();
        let mut fields: Vec<&str> = e.iter().map(|f| f.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["os", "public"]);
        let m = manifest_from_vm(&src, &obj(json!({"version": "1", "homepage": "ftp://x"})), Uuid::nil()).unwrap();
        let e = image::check_create(&m, Origin::Create).unwrap_err();
        let fields: Vec<&str> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert!(fields.contains(&"name") && fields.contains(&"homepage"), "{fields:?}");
    }

    #[test]
    fn prepare_inputs_are_taken_out_and_checked() {
        let (rest, p) = split_prepare(&obj(json!({"name": "x", "prepare_image_script": "echo hi", "prepare_image_timeout": 30}))).unwrap();
        assert_eq!(rest, obj(json!({"name": "x"})));
        assert_eq!(p, Some(Prepare { script: "echo hi".into(), timeout_secs: 30 }));
        let (_, p) = split_prepare(&obj(json!({"prepare_image_script": "true"}))).unwrap();
        assert_eq!(p.unwrap().timeout_secs, PREPARE_TIMEOUT_SECS);
        assert_eq!(split_prepare(&obj(json!({"name": "x"}))).unwrap().1, None);
        for (bad, field) in [
            (json!({"prepare_image_script": ""}), "prepare_image_script"),
            (json!({"prepare_image_script": 5}), "prepare_image_script"),
            (json!({"prepare_image_script": "x", "prepare_image_timeout": 0}), "prepare_image_timeout"),
            (json!({"prepare_image_script": "x", "prepare_image_timeout": "10"}), "prepare_image_timeout"),
            (json!({"prepare_image_timeout": 10}), "prepare_image_timeout"),
        ] {
            let e = split_prepare(&obj(bad.clone())).unwrap_err();
            assert_eq!(e[0].field, field, "{bad}");
        }
    }

    #[test]
    fn tenants_read_words_of_our_own_not_the_agents_or_qemu_imgs() {
        for step in ["check", "stop", "wait stopped", "prepare", "receive disk", "start again", "activate"] {
            let m = tenant_message(step, None);
            assert!(m.starts_with(&format!("{step}: ")) && m.len() > step.len() + 10, "{m}");
        }
        // What the agent or qemu-img said never reaches the image, whatever it names.
        assert_eq!(tenant_message("receive disk", None), "receive disk: the VM's disk could not be exported");
        assert_eq!(
            tenant_message("receive disk", Some("the VM's server could not be reached")),
            "receive disk: the VM's server could not be reached"
        );
        // A preparation's verdict carries the guest's own words.
        let said = "the guest could not prepare itself: disk full";
        assert_eq!(tenant_message("prepare", Some(said)), format!("prepare: {said}"));
        // Only the steps that judge what is safe to show may add to the fixed words.
        assert_eq!(
            tenant_message("start again", Some("server x (https://10.0.0.1:4444)")),
            "start again: the VM could not be started again"
        );
        assert_eq!(tenant_message("", None), "the image could not be made");
        assert_eq!(tenant_message("prepare", Some(" ")), "prepare: the VM could not be booted to prepare its disk");
    }

    #[test]
    fn vmapi_takes_tritons_nested_body_and_the_flat_one() {
        let u = Uuid::from_u128(0x1234);
        // Triton's body: the manifest nested, the image's UUID beside it.
        let (input, uuid) = vmapi_body(&obj(json!({
            "manifest": {"v": 2, "name": "mine", "version": "1.0", "tags": {"a": "b"}},
            "image_uuid": u.to_string(),
            "imgapi_url": "http://imgapi.example.com",
            "compression": "gzip",
            "incremental": false,
            "max_origin_depth": 3,
            "prepare_image_script": "true",
        })))
        .unwrap();
        assert_eq!(input, obj(json!({"name": "mine", "version": "1.0", "tags": {"a": "b"}, "prepare_image_script": "true"})));
        assert_eq!(uuid, Some(u));
        let (_, uuid) = vmapi_body(&obj(json!({"manifest": {"uuid": u.to_string(), "name": "m", "version": "1"}}))).unwrap();
        assert_eq!(uuid, Some(u), "manifest.uuid names the image too");
        // Nereid's flat body.
        let (input, uuid) = vmapi_body(&obj(json!({"name": "flat", "version": "2"}))).unwrap();
        assert_eq!((input, uuid), (obj(json!({"name": "flat", "version": "2"})), None));
        // What cannot be done is refused by name.
        for (bad, field, says) in [
            (json!({"manifest": {"name": "x"}, "incremental": true}), "incremental", "whole disk"),
            (json!({"manifest": {"name": "x"}, "incremental": "true"}), "incremental", "whole disk"),
            (json!({"manifest": "name=x"}), "manifest", "object"),
            (json!({"manifest": {"name": "x"}, "image_uuid": "nope"}), "image_uuid", "UUID"),
            (json!({"manifest": {"name": "x", "uuid": u.to_string()}, "image_uuid": Uuid::nil().to_string()}), "image_uuid", "differs"),
            (json!({"manifest": {"name": "x"}, "name": "y"}), "name", "both"),
            (json!({"manifest": {"name": "x"}, "compression": "lz4"}), "compression", "gzip"),
        ] {
            let e = vmapi_body(&obj(bad.clone())).unwrap_err();
            assert_eq!(e[0].field, field, "{bad}");
            assert!(e[0].message.contains(says), "{bad}: {}", e[0].message);
        }
    }

    #[test]
    fn lifecycle_creating_to_active_or_failed() {
        let mut img = source();
        img.state = "creating".into();
        img.rest.remove("published_at");
        assert_eq!(activated(&img, "2026-12-05T00:00:00.000Z").unwrap_err().code, "NoActivationNoFile");
        let file = ImageFile {
            sha1: "ab".repeat(20),
            size: 5,
            compression: "none".into(),
            dataset_guid: None,
            stor: Some("local".into()),
            content_md5: None,
            ..Default::default()
        };
        let with = with_file(&img, file.clone(), 10240).unwrap();
        assert_eq!((with.files.len(), with.image_size()), (1, Some(10240)));
        let active = activated(&with, "2026-12-05T00:00:00.000Z").unwrap();
        assert_eq!((active.state.as_str(), active.published_at()), ("active", Some("2026-12-05T00:00:00.000Z")));
        assert_eq!(activated(&active, "later").unwrap(), active, "activating twice changes nothing");
        assert!(with_file(&active, file, 1).is_err(), "an active image's file is fixed");
        assert_eq!(failed(&active, image_error("x", None)), active, "an active image does not fail");
        let f = failed(&with, image_error("the VM's disk could not be read", Some("PrepareImageDidNotRun")));
        assert_eq!(f.state, "failed");
        assert!(f.files.is_empty());
        assert_eq!(f.rest["error"], json!({"message": "the VM's disk could not be read", "code": "PrepareImageDidNotRun"}));
        assert_eq!(image_error("m", None), json!({"message": "m"}));
    }
}
