//! Provisioning limits (Triton's `capilimit` records and CloudAPI's `provision_limits`
//! plugin): an operator caps an account's instances, RAM (MiB) or disk quota (GiB), all of
//! them or only those of one image, image os or brand. A CreateVm or a resize that would
//! go over any limit is refused with Triton's `NotAuthorized` "Quota exceeded" (403).
//!
//! A limit's `value` follows Triton: 0 is unlimited, -1 refuses every matching provision.
//! `check: image` matches the image's name (Triton) or its UUID.
//!
//! Atomicity: usage is recomputed from the account's active VM records each time (it never
//! drifts; destroys give back by themselves), and the account's `account_usage` record is
//! only the serialization point: read before the VMs are counted and rewritten under its
//! generation in the same store batch as the new VM record. Two creates that counted the
//! same VMs cannot both commit; the loser re-counts. An account without limits costs one
//! indexed read and no write.
//!
//! A resize changes the VM record only when its job runs, so until then the growth it was
//! granted is in its `resize` reservation: the account's open resize reservations are
//! counted too (RAM and disk, never as machines), and a second resize racing the first
//! cannot pass a limit the two together exceed. A loser of the race backs off a random
//! few milliseconds ([`limit_conflict_backoff`]) before re-counting, so racing creates do
//! not retry in lockstep.

use std::collections::HashMap;

use nereid_store::{Cond, Filter, ListQuery, Op};
use nereid_types::image::Image;
use nereid_types::vm::Vm;
use nereid_types::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::allocation::Reservation;
use super::{App, encode, store_error};
use crate::buckets::{ACCOUNT_LIMITS, ACCOUNT_USAGE, IMAGES, RESERVATIONS};

/// CloudAPI's refusal (sdc-cloudapi `plugins/provision_limits.js`, `NotAuthorizedError`).
pub const QUOTA_CODE: &str = "NotAuthorized";
pub const QUOTA_MESSAGE: &str = "Quota exceeded; to have your limits raised please contact Support";
/// What a limit counts.
pub const BY: &[&str] = &["machines", "ram", "quota"];
/// What a limit may be narrowed to.
pub const CHECK: &[&str] = &["image", "os", "brand"];

/// One limit of one account (key `<account uuid>/<id>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Limit {
    pub id: Uuid,
    pub account_uuid: Uuid,
    /// `machines` (a count), `ram` (MiB) or `quota` (GiB).
    pub by: String,
    /// 0: unlimited; -1: no provision matching it.
    pub value: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default)]
    pub created: String,
}

impl Limit {
    /// The narrowing value (`image`, `os` or `brand`), if any.
    fn target(&self) -> Option<&str> {
        match self.check.as_deref() {
            Some("image") => self.image.as_deref(),
            Some("os") => self.os.as_deref(),
            Some("brand") => self.brand.as_deref(),
            _ => None,
        }
        .filter(|t| *t != "any")
    }

    /// Whether a VM counts against this limit.
    pub fn matches(&self, u: &Usage) -> bool {
        match (self.check.as_deref(), self.target()) {
            (_, None) => true,
            (Some("image"), Some(t)) => u.image_name.as_deref() == Some(t) || u.image_uuid.is_some_and(|i| i.to_string() == t),
            (Some("os"), Some(t)) => u.os.as_deref() == Some(t),
            (Some("brand"), Some(t)) => u.brand.as_deref() == Some(t),
            _ => true,
        }
    }

    /// How much of it the given VMs (and resizes' growth) use.
    pub fn used(&self, vms: &[Usage]) -> u64 {
        let m = vms.iter().filter(|u| self.matches(u));
        match self.by.as_str() {
            "ram" => m.map(|u| u.ram).sum(),
            "quota" => m.map(|u| u.quota).sum(),
            _ => m.filter(|u| !u.growth).count() as u64,
        }
    }

    /// As CloudAPI's `GET /:login/limits` answers it (Triton's fields, plus `used`).
    pub fn render_tenant(&self, used: u64) -> Value {
        let mut v = json!({"by": self.by, "value": self.value, "used": used});
        if let (Some(c), Some(t)) = (&self.check, self.target()) {
            v["check"] = json!(c);
            v[c.as_str()] = json!(t);
        }
        v
    }
}

/// What a VM weighs against limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub ram: u64,
    /// GiB.
    pub quota: u64,
    pub brand: Option<String>,
    pub image_uuid: Option<Uuid>,
    pub image_name: Option<String>,
    pub os: Option<String>,
    /// The growth of a resize in flight (RAM and disk only: not a machine).
    pub growth: bool,
}

impl Usage {
    /// A VM's weight; `images` gives the name and os of the images limits narrow by.
    pub fn of(vm: &Vm, images: &HashMap<Uuid, (String, String)>) -> Self {
        let img = vm.image_uuid.and_then(|i| images.get(&i));
        Usage {
            ram: vm.ram_mib().unwrap_or(0),
            quota: vm.quota.unwrap_or(0),
            brand: vm.brand.clone(),
            image_uuid: vm.image_uuid,
            image_name: img.map(|i| i.0.clone()),
            os: img.map(|i| i.1.clone()),
            growth: false,
        }
    }
}

/// The growth of the account's resizes in flight (`resize` reservations of VMs in `vms`),
/// as weights like their VMs' (so narrowed limits match them) but counting no machine;
/// `resizing`'s own is left out (its new size replaces it).
pub fn pending_growth(vms: &[Usage], uuids: &[Uuid], reservations: &[Reservation], resizing: Option<Uuid>) -> Vec<Usage> {
    reservations
        .iter()
        .filter(|r| r.kind == "resize" && Some(r.vm_uuid) != resizing)
        .filter_map(|r| {
            let vm = uuids.iter().position(|u| *u == r.vm_uuid).and_then(|i| vms.get(i))?;
            Some(Usage { ram: r.ram_mib, quota: r.disk_mib.div_ceil(1024), growth: true, ..vm.clone() })
        })
        .collect()
}

/// Whether a resize (update) job has written its new size into the VM record: its apply
/// step is done, or the job is over. A job in its apply step still counts (the record may
/// or may not have the size yet: counting it twice for that moment only errs on the safe side).
pub fn resize_applied(job: &nereid_types::job::Job) -> bool {
    let done = job.chain_results.iter().any(|r| r.name == crate::jobs::update::APPLY_STEP && r.error.is_empty());
    done || job.is_done()
}

/// A random 5–50 ms pause before a provision or resize that lost the usage stamp's race
/// checks the limits again, so racing ones do not retry in lockstep.
pub async fn limit_conflict_backoff() {
    tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(5..=50))).await;
}

/// A refusal: the limit that would be exceeded.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRefusal {
    pub limit: Box<Limit>,
    pub used: u64,
    pub asked: u64,
}

impl From<LimitRefusal> for ApiError {
    fn from(r: LimitRefusal) -> Self {
        tracing::info!(limit = %r.limit.id, by = %r.limit.by, value = r.limit.value, used = r.used, asked = r.asked, "provision limit exceeded");
        ApiError::new(403, QUOTA_CODE, QUOTA_MESSAGE)
    }
}

/// Whether `new` fits the account's limits beside its `existing` active VMs. `resizing`
/// is the VM's current weight when `new` is its new size (it is among `existing`, and
/// subtracted here, as Triton does); like Triton, a resize is never refused by a count of
/// machines.
pub fn check(limits: &[Limit], existing: &[Usage], new: &Usage, resizing: Option<&Usage>) -> Result<(), LimitRefusal> {
    for l in limits.iter().filter(|l| l.value != 0 && l.matches(new)) {
        let refuse = |used, asked| Err(LimitRefusal { limit: Box::new(l.clone()), used, asked });
        if l.value < 0 {
            return refuse(l.used(existing), 0);
        }
        let used = l.used(existing);
        let (add, back) = match l.by.as_str() {
            "ram" => (new.ram, resizing.filter(|r| l.matches(r)).map_or(0, |r| r.ram)),
            "quota" => (new.quota, resizing.filter(|r| l.matches(r)).map_or(0, |r| r.quota)),
            _ if resizing.is_some() => continue,
            _ => (1, 0),
        };
        if (used + add).saturating_sub(back) > l.value as u64 {
            return refuse(used, add);
        }
    }
    Ok(())
}

/// The VM at a new size (RAM MiB, disks MiB), as a resize's limits weigh it.
pub fn resized(vm: &Vm, ram: u64, disk_mib: u64) -> Vm {
    let mut v = vm.clone();
    v.ram = Some(ram);
    v.max_physical_memory = Some(ram);
    v.quota = Some(disk_mib.div_ceil(1024));
    v
}

/// Checks an operator's limit body (create: every field; update: over the current one).
pub fn parse(input: &Map<String, Value>, current: Option<&Limit>, account: Uuid, now: &str) -> Result<Limit, ApiError> {
    let mut errors = Vec::new();
    for k in input.keys() {
        if !["by", "value", "check", "image", "os", "brand"].contains(&k.as_str()) {
            errors.push(FieldError::unknown(k.clone()));
        }
    }
    let str_of = |k: &str| -> Result<Option<String>, FieldError> {
        match input.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(Some(s.clone())),
            Some(_) => Err(FieldError::invalid(k, "must be a non-empty string")),
        }
    };
    let mut next = current.cloned().unwrap_or(Limit {
        id: Uuid::new_v4(),
        account_uuid: account,
        by: "machines".into(),
        value: 0,
        check: None,
        image: None,
        os: None,
        brand: None,
        created: now.to_string(),
    });
    match str_of("by") {
        Ok(Some(b)) if BY.contains(&b.as_str()) => next.by = b,
        Ok(Some(b)) => errors.push(FieldError::invalid("by", format!("{b} is not one of {}", BY.join(", ")))),
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    match input.get("value") {
        Some(v) => match v.as_i64() {
            Some(n) if n >= -1 => next.value = n,
            _ => errors.push(FieldError::invalid("value", "must be an integer: a positive limit, 0 (unlimited) or -1 (no provisions)")),
        },
        None if current.is_none() => errors.push(FieldError::missing("value")),
        None => {}
    }
    for k in ["image", "os", "brand"] {
        match str_of(k) {
            Ok(Some(v)) => {
                next.check = Some(k.to_string());
                next.image = None;
                next.os = None;
                next.brand = None;
                match k {
                    "image" => next.image = Some(v),
                    "os" => next.os = Some(v),
                    _ => next.brand = Some(v),
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if ["image", "os", "brand"].iter().filter(|k| input.get(**k).is_some_and(|v| !v.is_null())).count() > 1 {
        errors.push(FieldError::invalid("check", "a limit narrows by one of image, os or brand"));
    }
    match str_of("check") {
        Ok(Some(c)) if !CHECK.contains(&c.as_str()) => {
            errors.push(FieldError::invalid("check", format!("{c} is not one of {}", CHECK.join(", "))))
        }
        Ok(Some(c)) if next.check.as_deref() != Some(c.as_str()) => {
            errors.push(FieldError::invalid("check", format!("check {c} needs the field {c}")))
        }
        Ok(_) => {}
        Err(e) => errors.push(e),
    }
    if !errors.is_empty() {
        return Err(ApiError::validation_409(errors));
    }
    Ok(next)
}

impl App {
    /// An account's limits (one indexed read), oldest first.
    pub async fn account_limits(&self, account: Uuid) -> Result<Vec<Limit>, ApiError> {
        let mut l: Vec<Limit> = self.list(ACCOUNT_LIMITS.name, &ListQuery::filter(Filter::eq("account_uuid", account.to_string()))).await?;
        l.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(l)
    }

    /// Adds a limit to an account (by UUID or login).
    pub async fn add_limit(&self, account: &str, input: &Map<String, Value>) -> Result<Limit, ApiError> {
        let (acct, _) = self.find_account(account).await?;
        let l = parse(input, None, acct.uuid, &nereid_types::time::now_iso())?;
        self.write(ACCOUNT_LIMITS.name, &format!("{}/{}", acct.uuid, l.id), &l, Cond::Absent).await.map_err(store_error)?;
        Ok(l)
    }

    /// One limit of an account, with its generation.
    async fn find_limit(&self, account: &str, id: &str) -> Result<(Limit, i64), ApiError> {
        let (acct, _) = self.find_account(account).await?;
        let not_found = || ApiError::not_found(format!("account {} has no limit {id}", acct.login));
        let id = Uuid::parse_str(id).map_err(|_| not_found())?;
        self.read::<Limit>(ACCOUNT_LIMITS.name, &format!("{}/{id}", acct.uuid)).await?.ok_or_else(not_found)
    }

    /// Changes a limit (a conditional write: a concurrent change answers 409).
    pub async fn update_limit(&self, account: &str, id: &str, input: &Map<String, Value>) -> Result<Limit, ApiError> {
        let (cur, g) = self.find_limit(account, id).await?;
        let next = parse(input, Some(&cur), cur.account_uuid, "")?;
        self.write(ACCOUNT_LIMITS.name, &format!("{}/{}", cur.account_uuid, cur.id), &next, Cond::Generation(g))
            .await
            .map_err(store_error)?;
        Ok(next)
    }

    /// Removes a limit.
    pub async fn delete_limit(&self, account: &str, id: &str) -> Result<Limit, ApiError> {
        let (cur, g) = self.find_limit(account, id).await?;
        self.store
            .delete(ACCOUNT_LIMITS.name, &format!("{}/{}", cur.account_uuid, cur.id), Cond::Generation(g))
            .await
            .map_err(store_error)?;
        Ok(cur)
    }

    /// The images' names and os the limits narrow by, for these VMs.
    async fn limit_images(&self, limits: &[Limit], vms: &[&Vm]) -> Result<HashMap<Uuid, (String, String)>, ApiError> {
        let mut out = HashMap::new();
        if !limits.iter().any(|l| matches!(l.check.as_deref(), Some("image" | "os"))) {
            return Ok(out);
        }
        for id in vms.iter().filter_map(|v| v.image_uuid) {
            if out.contains_key(&id) {
                continue;
            }
            if let Some((img, _)) = self.read::<Image>(IMAGES.name, &id.to_string()).await? {
                out.insert(id, (img.name, img.os));
            }
        }
        Ok(out)
    }

    /// An account's limits with what its active VMs use of each (CloudAPI's ListLimits).
    pub async fn limits_used(&self, account: Uuid) -> Result<Vec<Value>, ApiError> {
        let limits = self.account_limits(account).await?;
        if limits.is_empty() {
            return Ok(Vec::new());
        }
        let vms = self.owner_active_vms(account).await?;
        let images = self.limit_images(&limits, &vms.iter().collect::<Vec<_>>()).await?;
        let usage: Vec<Usage> = vms.iter().map(|v| Usage::of(v, &images)).collect();
        Ok(limits.iter().map(|l| l.render_tenant(l.used(&usage))).collect())
    }

    /// The limits' verdict on `vm` (a new VM, or `resizing` at its new size): `None` when
    /// the account has no limits, else the write to put in the same batch as the VM's
    /// record (or job) so a concurrent provision of the account cannot also pass; a
    /// conflict on it means: check again.
    pub async fn limit_guard(&self, vm: &Vm, resizing: Option<&Vm>) -> Result<Option<Op>, ApiError> {
        let Some(owner) = vm.owner_uuid else { return Ok(None) };
        let limits = self.account_limits(owner).await?;
        if limits.iter().all(|l| l.value == 0) {
            return Ok(None);
        }
        // The serialization point first, then the VMs it guards.
        let stamp = self.store.get(ACCOUNT_USAGE.name, &owner.to_string()).await.map_err(store_error)?;
        let (cond, n) = match &stamp {
            Some(o) => (Cond::Generation(o.generation), o.value.get("stamp").and_then(Value::as_u64).unwrap_or(0) + 1),
            None => (Cond::Absent, 1),
        };
        let mine: Vec<Vm> = self.owner_active_vms(owner).await?;
        let mut all: Vec<&Vm> = mine.iter().collect();
        all.push(vm);
        all.extend(resizing);
        let images = self.limit_images(&limits, &all).await?;
        let mut existing: Vec<Usage> = mine.iter().map(|v| Usage::of(v, &images)).collect();
        // Resizes granted but not yet applied to their VM records.
        let open: Vec<Reservation> = self
            .list(
                RESERVATIONS.name,
                &ListQuery::filter(Filter::And(vec![Filter::eq("owner_uuid", owner.to_string()), Filter::eq("kind", "resize")])),
            )
            .await?;
        // Only growth not yet in its VM record: once a resize job is past its apply step the
        // record holds the new size, though the reservation stays until the VM has started.
        let mut unapplied = Vec::with_capacity(open.len());
        for r in open {
            let job = self.read::<nereid_types::job::Job>(crate::buckets::JOBS.name, &r.job_uuid.to_string()).await?;
            if job.is_some_and(|(j, _)| !resize_applied(&j)) {
                unapplied.push(r);
            }
        }
        let uuids: Vec<Uuid> = mine.iter().map(|v| v.uuid).collect();
        existing.extend(pending_growth(&existing, &uuids, &unapplied, resizing.map(|r| r.uuid)));
        let before = resizing.map(|r| Usage::of(r, &images));
        check(&limits, &existing, &Usage::of(vm, &images), before.as_ref())?;
        let value = encode(&json!({"account_uuid": owner, "stamp": n}));
        Ok(Some(Op::put(ACCOUNT_USAGE.name, owner.to_string(), value, cond)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_counts_as_growth_only_until_its_record_holds_the_new_size() {
        use nereid_types::job::StepResult;
        let step =
            |name: &str, error: &str| StepResult { name: name.into(), result: "ok".into(), error: error.into(), ..Default::default() };
        let mut j = crate::jobs::new_job("update", Uuid::nil(), None, None, Map::new());
        j.execution = "running".into();
        j.chain_results = vec![step("reserve", ""), step("stop", "")];
        assert!(!resize_applied(&j), "before apply the record has the old size");
        j.chain_results.push(step(crate::jobs::update::APPLY_STEP, "the server did not answer"));
        assert!(!resize_applied(&j), "a failed apply changed nothing");
        j.chain_results.push(step(crate::jobs::update::APPLY_STEP, ""));
        assert!(resize_applied(&j), "after apply (the VM starting again) the record holds it");
        j.chain_results.truncate(2);
        j.execution = "failed".into();
        assert!(resize_applied(&j), "a finished job's reservation is no growth to come");
    }

    fn limit(by: &str, value: i64, check: Option<(&str, &str)>) -> Limit {
        let mut l = Limit {
            id: Uuid::nil(),
            account_uuid: Uuid::nil(),
            by: by.into(),
            value,
            check: check.map(|c| c.0.to_string()),
            image: None,
            os: None,
            brand: None,
            created: String::new(),
        };
        match check {
            Some(("image", v)) => l.image = Some(v.into()),
            Some(("os", v)) => l.os = Some(v.into()),
            Some(("brand", v)) => l.brand = Some(v.into()),
            _ => {}
        }
        l
    }
    fn vm(ram: u64, quota: u64, image: &str) -> Usage {
        Usage { ram, quota, brand: Some("bhyve".into()), image_name: Some(image.into()), os: Some("linux".into()), ..Default::default() }
    }

    #[test]
    fn machines_limit_refuses_the_third() {
        let l = [limit("machines", 2, None)];
        assert!(check(&l, &[vm(1, 1, "a")], &vm(1, 1, "a"), None).is_ok());
        let r = check(&l, &[vm(1, 1, "a"), vm(1, 1, "a")], &vm(1, 1, "a"), None).unwrap_err();
        assert_eq!((r.used, r.asked), (2, 1));
        let e: ApiError = r.into();
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (403, QUOTA_CODE, QUOTA_MESSAGE));
    }

    #[test]
    fn ram_quota_zero_minus_one_and_narrowing() {
        let ram = [limit("ram", 2048, None)];
        assert!(check(&ram, &[vm(1024, 10, "a")], &vm(1024, 10, "a"), None).is_ok());
        assert!(check(&ram, &[vm(1024, 10, "a")], &vm(1025, 10, "a"), None).is_err());
        assert!(check(&[limit("quota", 20, None)], &[vm(1, 10, "a")], &vm(1, 11, "a"), None).is_err());
        assert!(check(&[limit("machines", 0, None)], &vec![vm(1, 1, "a"); 50], &vm(1, 1, "a"), None).is_ok());
        assert!(check(&[limit("machines", -1, None)], &[], &vm(1, 1, "a"), None).is_err());
        let img = [limit("machines", 1, Some(("image", "a")))];
        assert!(check(&img, &[vm(1, 1, "a")], &vm(1, 1, "b"), None).is_ok());
        assert!(check(&img, &[vm(1, 1, "b"), vm(1, 1, "b")], &vm(1, 1, "a"), None).is_ok());
        assert!(check(&img, &[vm(1, 1, "a")], &vm(1, 1, "a"), None).is_err());
        assert!(check(&[limit("machines", 1, Some(("os", "windows")))], &[vm(1, 1, "a")], &vm(1, 1, "a"), None).is_ok());
        assert!(check(&[limit("machines", 1, Some(("brand", "bhyve")))], &[vm(1, 1, "a")], &vm(1, 1, "a"), None).is_err());
        assert!(check(&[limit("machines", 1, Some(("os", "any")))], &[vm(1, 1, "a")], &vm(1, 1, "a"), None).is_err());
    }

    #[test]
    fn resize_counts_growth_and_ignores_machine_counts() {
        let l = [limit("ram", 3072, None), limit("machines", 1, None)];
        let others = [vm(1024, 1, "a"), vm(1024, 1, "a")];
        assert!(check(&l, &others, &vm(2048, 1, "a"), Some(&vm(1024, 1, "a"))).is_ok());
        assert!(check(&l, &others, &vm(4096, 1, "a"), Some(&vm(1024, 1, "a"))).is_err());
    }

    #[test]
    fn open_resizes_count_their_growth_but_no_machine() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let res = |vm: Uuid, ram: u64, kind: &str| Reservation {
            job_uuid: Uuid::new_v4(),
            vm_uuid: vm,
            server_uuid: Uuid::nil(),
            owner_uuid: Uuid::nil(),
            ram_mib: ram,
            disk_mib: 1536,
            cpu_cap: None,
            kind: kind.into(),
        };
        let mine = [vm(1024, 1, "a"), vm(1024, 1, "b")];
        let open = [res(a, 1024, "resize"), res(b, 512, "resize"), res(a, 4096, "provision"), res(Uuid::from_u128(9), 1, "resize")];
        let g = pending_growth(&mine, &[a, b], &open, Some(b));
        assert_eq!(g.len(), 1, "the other VM's resize only: {g:?}");
        assert_eq!((g[0].ram, g[0].quota, g[0].growth, g[0].image_name.as_deref()), (1024, 2, true, Some("a")));
        // B grows by 1024 while A's resize of +1024 is in flight: 2048 + 1024 + 1024 > 3072.
        let l = [limit("ram", 3072, None), limit("machines", 2, None)];
        let mut existing = mine.to_vec();
        assert!(check(&l, &existing, &vm(2048, 1, "b"), Some(&vm(1024, 1, "b"))).is_ok(), "alone it fits");
        existing.extend(g);
        let r = check(&l, &existing, &vm(2048, 1, "b"), Some(&vm(1024, 1, "b"))).unwrap_err();
        assert_eq!((r.limit.by.as_str(), r.used), ("ram", 3072));
        assert_eq!(limit("machines", 2, None).used(&existing), 2, "growth is not a machine");
        // Narrowed limits match the growth by its VM's image.
        assert_eq!(limit("ram", 1, Some(("image", "b"))).used(&existing), 1024);
    }

    #[test]
    fn parse_names_bad_input() {
        let p = |v: Value| parse(v.as_object().unwrap(), None, Uuid::nil(), "t");
        let l = p(json!({"by": "ram", "value": 1024, "image": "ubuntu"})).unwrap();
        assert_eq!((l.by.as_str(), l.value, l.check.as_deref(), l.image.as_deref()), ("ram", 1024, Some("image"), Some("ubuntu")));
        assert_eq!(p(json!({"value": 2})).unwrap().by, "machines");
        let fields = |v: Value| p(v).unwrap_err().errors.iter().map(|e| e.field.clone()).collect::<Vec<_>>();
        assert_eq!(fields(json!({"by": "cpus", "value": 1})), ["by"]);
        assert_eq!(fields(json!({"value": -5})), ["value"]);
        assert_eq!(fields(json!({"by": "ram"})), ["value"]);
        assert_eq!(fields(json!({"value": 1, "color": "red"})), ["color"]);
        assert_eq!(fields(json!({"value": 1, "os": "linux", "brand": "kvm"})), ["check"]);
    }
}
