//! VMAPI: creating VMs (validation, sizes from the package and image, placement and the
//! capacity claim in one transaction), listing and reading them (with `sync=true`),
//! actions as jobs, operator repair (PutVm as a checked patch), and the state reports
//! servers push.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nereid_alloc::{Locality, Request, Spread};
use nereid_store::{Cond, Filter, Kind, ListQuery, Op, Path, StoreError};
use nereid_types::agent::{Desired, DiskDef, VmStatus};
use nereid_types::damaged::{Damaged, Stored};
use nereid_types::image::{self, Image};
use nereid_types::job::Job;
use nereid_types::network::{Network, NetworkPool};
use nereid_types::package::{self, Package};
use nereid_types::query::Query;
use nereid_types::spec::{self, Mode};
use nereid_types::vm::{self, Vm};
use nereid_types::{ApiError, FieldError};
use rand::SeedableRng;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::allocation::{Reservation, claim_op, explain, no_fit_error, reservation_op};
use super::capacity::Decided;
use super::{App, RETRIES, encode, store_error};
use crate::buckets::{IMAGES, NETWORK_NAMES, NETWORK_POOLS, NETWORKS, NICS, PACKAGES, RESERVATIONS, VMS};
use crate::jobs::provision::NetRequest;
use crate::jobs::{job_op, new_job};

/// Triton's exact refusal (users and scripts match on it).
pub const DELETION_PROTECTED: &str = "Instance has \"deletion_protection\" enabled, preventing deletion";

/// What CreateVm did.
pub struct Created {
    pub vm: Vm,
    pub job: Job,
    pub placement: Value,
}

/// CreateVm's `locality` (`{strict, near, far}`, each a UUID or a list of them).
pub(crate) fn locality_of(loc: &Map<String, Value>) -> Locality {
    let ids = |k: &str| -> Vec<Uuid> {
        match loc.get(k) {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().and_then(|s| Uuid::parse_str(s).ok())).collect(),
            Some(Value::String(s)) => Uuid::parse_str(s).ok().into_iter().collect(),
            _ => Vec::new(),
        }
    };
    Locality { strict: loc.get("strict").and_then(Value::as_bool).unwrap_or(false), near: ids("near"), far: ids("far") }
}

/// What CloudAPI adds to CreateVm, checked inside the placement claim.
#[derive(Default)]
pub struct CreateOptions<'a> {
    /// Refuse an alias another active VM of the owner has (CloudAPI's unique names).
    pub unique_alias: bool,
    /// Turns the owner's active VMs into `locality` (CloudAPI's affinity rules).
    #[allow(clippy::type_complexity)]
    pub locality: Option<&'a (dyn Fn(&[Vm]) -> Result<Option<Value>, ApiError> + Send + Sync)>,
}

/// Where a VM its record's server does not have was found.
enum Located {
    On(Uuid, Box<VmStatus>),
    Nowhere,
    /// Some server could not be asked; why.
    Undecided(String),
}

/// The refusal of any action on a damaged record.
pub fn damaged_error(d: &Damaged) -> ApiError {
    ApiError::conflict(
        "VmDamaged",
        format!("VM {}'s record is damaged ({}); an operator can {}", d.key, d.error, vm::damaged_repair(&d.key)),
    )
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation_409(vec![FieldError::invalid(field, message)])
}

fn uuid_of(input: &Map<String, Value>, k: &str) -> Option<Uuid> {
    input.get(k).and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok())
}

/// Applies prepared field values to a record (update jobs, and their undo).
pub fn apply_fields(vm: &mut Vm, fields: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in fields {
        let bad = |e: serde_json::Error| format!("{k}: {e}");
        match k.as_str() {
            "ram" => {
                vm.ram = serde_json::from_value(v.clone()).map_err(bad)?;
                vm.max_physical_memory = vm.ram;
            }
            "vcpus" => vm.vcpus = serde_json::from_value(v.clone()).map_err(bad)?,
            "quota" => vm.quota = serde_json::from_value(v.clone()).map_err(bad)?,
            "cpu_cap" => vm.cpu_cap = serde_json::from_value::<Option<u32>>(v.clone()).map_err(bad)?.filter(|c| *c > 0),
            "billing_id" => vm.billing_id = serde_json::from_value(v.clone()).map_err(bad)?,
            "package_name" => vm.package_name = serde_json::from_value(v.clone()).map_err(bad)?,
            "package_version" => vm.package_version = serde_json::from_value(v.clone()).map_err(bad)?,
            "disks" => vm.disks = serde_json::from_value(v.clone()).map_err(bad)?,
            "alias" => vm.alias = serde_json::from_value(v.clone()).map_err(bad)?,
            "hostname" => vm.hostname = serde_json::from_value(v.clone()).map_err(bad)?,
            "firewall_enabled" => vm.firewall_enabled = serde_json::from_value(v.clone()).map_err(bad)?,
            "deletion_protection" => vm.deletion_protection = serde_json::from_value(v.clone()).map_err(bad)?,
            "autoboot" => vm.autoboot = serde_json::from_value(v.clone()).map_err(bad)?,
            "resolvers" => vm.resolvers = serde_json::from_value(v.clone()).map_err(bad)?,
            "customer_metadata" => vm.customer_metadata = serde_json::from_value(v.clone()).map_err(bad)?,
            "internal_metadata" => vm.internal_metadata = serde_json::from_value(v.clone()).map_err(bad)?,
            "tags" => vm.tags = serde_json::from_value(v.clone()).map_err(bad)?,
            delta if map_delta(delta).is_some() => {
                let (name, set) = map_delta(delta).unwrap_or(("tags", true));
                let map = map_of(vm, name);
                let mut m = map.take().unwrap_or_default();
                match (set, v) {
                    (true, Value::Object(o)) => m.extend(o.iter().map(|(k, x)| (k.clone(), x.clone()))),
                    (false, Value::Array(a)) => a.iter().filter_map(Value::as_str).for_each(|k| {
                        m.remove(k);
                    }),
                    _ => return Err(format!("{delta} must be an {}", if set { "object" } else { "array of keys" })),
                }
                *map = Some(m);
            }
            other => return Err(format!("{other} cannot be changed by an update")),
        }
    }
    Ok(())
}

/// The maps an update changes by delta (`set_<map>`, `remove_<map>`).
const MAPS: [&str; 3] = ["customer_metadata", "internal_metadata", "tags"];

/// `set_tags` → (`tags`, true), `remove_tags` → (`tags`, false).
fn map_delta(key: &str) -> Option<(&'static str, bool)> {
    MAPS.iter().find_map(|m| {
        if key.strip_prefix("set_") == Some(m) {
            Some((*m, true))
        } else if key.strip_prefix("remove_") == Some(m) {
            Some((*m, false))
        } else {
            None
        }
    })
}

fn map_of<'a>(vm: &'a mut Vm, name: &str) -> &'a mut Option<Map<String, Value>> {
    match name {
        "customer_metadata" => &mut vm.customer_metadata,
        "internal_metadata" => &mut vm.internal_metadata,
        _ => &mut vm.tags,
    }
}

/// Applies `fields` to the record as it is *now* and returns what undoes exactly that:
/// the old value of every field set, and for map deltas the old value of every key they
/// touched (or its removal). Deltas merge into the current map, so updates queued one
/// after another never undo each other.
pub fn apply_with_inverse(vm: &mut Vm, fields: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut inverse = Map::new();
    let plain: Vec<&String> = fields.keys().filter(|k| map_delta(k).is_none()).collect();
    inverse.extend(current_values(vm, &plain));
    for name in MAPS {
        let set = fields.get(&format!("set_{name}")).and_then(Value::as_object);
        let remove = fields.get(&format!("remove_{name}")).and_then(Value::as_array);
        if set.is_none() && remove.is_none() {
            continue;
        }
        let current = map_of(vm, name).clone().unwrap_or_default();
        let touched = set
            .into_iter()
            .flat_map(|o| o.keys().cloned())
            .chain(remove.into_iter().flatten().filter_map(|k| k.as_str().map(str::to_string)));
        let (mut back, mut gone) = (Map::new(), Vec::new());
        for k in touched {
            match current.get(&k) {
                Some(old) => {
                    back.insert(k, old.clone());
                }
                None if !gone.contains(&Value::String(k.clone())) => gone.push(Value::String(k)),
                None => {}
            }
        }
        inverse.insert(format!("set_{name}"), Value::Object(back));
        inverse.insert(format!("remove_{name}"), Value::Array(gone));
    }
    apply_fields(vm, fields)?;
    Ok(inverse)
}

/// The record's value of each key in `keys`, for undo.
fn current_values(vm: &Vm, keys: &[&String]) -> Map<String, Value> {
    let all = encode(vm);
    keys.iter().map(|k| ((*k).clone(), all.get(k.as_str()).cloned().unwrap_or(Value::Null))).collect()
}

/// A map after `set_*` / `remove_*` (or a full replacement).
fn merged_map(
    current: Option<&Map<String, Value>>,
    replace: Option<&Value>,
    set: Option<&Value>,
    remove: Option<&Value>,
) -> Option<Map<String, Value>> {
    if replace.is_none() && set.is_none() && remove.is_none() {
        return None;
    }
    let mut m = match replace {
        Some(Value::Object(r)) => r.clone(),
        _ => current.cloned().unwrap_or_default(),
    };
    if let Some(Value::Object(s)) = set {
        for (k, v) in s {
            m.insert(k.clone(), v.clone());
        }
    }
    if let Some(Value::Array(r)) = remove {
        for k in r.iter().filter_map(Value::as_str) {
            m.remove(k);
        }
    }
    Some(m)
}

/// The filter of `GET /vms`.
pub fn list_filter(q: &Query) -> Result<Filter, Vec<FieldError>> {
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    for f in ["owner_uuid", "server_uuid", "brand", "billing_id", "image_uuid"] {
        if let Some(v) = q.str(f) {
            parts.push(Filter::any_of(f, v.split(',').map(|s| json!(s.trim())).collect()));
        }
    }
    if let Some(a) = q.str("alias") {
        parts.push(Filter::prefix("alias", a));
    }
    if let Some(u) = q.str("uuids").or(q.str("uuid")) {
        parts.push(Filter::any_of("uuid", u.split(',').map(|s| json!(s.trim())).collect()));
    }
    match q.str("state") {
        None => {}
        Some("active") => parts.push(super::allocation::active_filter()),
        Some(s) => parts.push(Filter::eq("state", s)),
    }
    for (name, value) in q.prefixed.iter().filter(|(n, _)| n.starts_with("tag.")) {
        match super::tag_filter(name, value) {
            Ok(f) => parts.push(f),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(Filter::and(parts)) } else { Err(errors) }
}

impl App {
    /// Reads a VM record as stored: decoded, or damaged (never an error for a bad record).
    pub async fn read_vm(&self, uuid: Uuid) -> Result<Option<(Stored<Vm>, i64)>, ApiError> {
        let o = self.store.get(VMS.name, &uuid.to_string()).await.map_err(store_error)?;
        Ok(o.map(|o| (vm::decode(&o.key, o.value), o.generation)))
    }

    /// Reads a record, damaged or not; with `owner`, 404 unless it is that owner's (a
    /// damaged record whose owner cannot be read is nobody's).
    pub async fn get_vm_entry(&self, uuid: Uuid, owner: Option<Uuid>) -> Result<(Stored<Vm>, i64), ApiError> {
        let not_found = || ApiError::not_found(format!("VM {uuid} does not exist"));
        let (entry, g) = self.read_vm(uuid).await?.ok_or_else(not_found)?;
        let record_owner = match &entry {
            Stored::Ok(vm) => vm.owner_uuid,
            Stored::Damaged(d) => d.uuid_field("owner_uuid"),
        };
        if owner.is_some_and(|o| record_owner != Some(o)) {
            return Err(not_found());
        }
        Ok((entry, g))
    }

    /// Reads a record to act on it; a damaged one answers 409 `VmDamaged` saying how to
    /// repair it.
    pub async fn get_vm(&self, uuid: Uuid, owner: Option<Uuid>) -> Result<(Vm, i64), ApiError> {
        match self.get_vm_entry(uuid, owner).await? {
            (Stored::Ok(vm), g) => Ok((vm, g)),
            (Stored::Damaged(d), _) => Err(damaged_error(&d)),
        }
    }

    pub async fn list_vms(&self, q: &Query) -> Result<(Vec<Stored<Vm>>, i64), ApiError> {
        let filter = list_filter(q).map_err(ApiError::validation_409)?;
        let lq = ListQuery::filter(filter.clone()).sort(Path::field("create_timestamp"), Kind::Text, false).page(q.limit(1000), q.offset());
        let vms = self.vm_entries(&lq).await?;
        let total = self.store.count(VMS.name, &filter).await.map_err(store_error)?;
        Ok((vms, total))
    }

    /// Active VM records with a server, decoded one at a time (placement, doctor).
    pub async fn placed_vm_entries(&self) -> Result<Vec<Stored<Vm>>, ApiError> {
        self.vm_entries(&placed_query()).await
    }

    /// The VM records a query selects, each decoded on its own (a damaged one stays in
    /// the list as damaged, never failing the others).
    pub async fn vm_entries(&self, q: &ListQuery) -> Result<Vec<Stored<Vm>>, ApiError> {
        Ok(self.store.list(VMS.name, q).await.map_err(store_error)?.into_iter().map(|o| vm::decode(&o.key, o.value)).collect())
    }

    /// The owner's active VMs (damaged records left out).
    pub async fn owner_active_vms(&self, owner: Uuid) -> Result<Vec<Vm>, ApiError> {
        let f = Filter::and(vec![Filter::eq("owner_uuid", owner.to_string()), super::allocation::active_filter()]);
        self.list(VMS.name, &ListQuery::filter(f)).await
    }

    /// The VM's jobs that have not finished.
    pub async fn live_jobs(&self, vm: Uuid) -> Result<Vec<Job>, ApiError> {
        let f =
            Filter::and(vec![Filter::eq("vm_uuid", vm.to_string()), Filter::any_of("execution", vec![json!("queued"), json!("running")])]);
        self.list(crate::buckets::JOBS.name, &ListQuery::filter(f)).await
    }

    /// Changes a record, retrying on concurrent change.
    pub async fn modify_vm(&self, uuid: Uuid, f: impl FnMut(&mut Vm) -> Result<(), String>) -> Result<Vm, ApiError> {
        self.modify_read_vm(uuid, None, f).await
    }

    /// [`Self::modify_vm`] starting from the record (and its generation) the caller has
    /// just read, if any: one read fewer when nothing changed it since.
    pub(crate) async fn modify_read_vm(
        &self,
        uuid: Uuid,
        mut read: Option<(Vm, i64)>,
        mut f: impl FnMut(&mut Vm) -> Result<(), String>,
    ) -> Result<Vm, ApiError> {
        for _ in 0..RETRIES * 2 {
            let (mut vm, g) = match read.take() {
                Some(r) => r,
                None => self.get_vm(uuid, None).await?,
            };
            f(&mut vm).map_err(|m| invalid("vm", m))?;
            match self.store.put(VMS.name, &uuid.to_string(), encode(&vm), Cond::Generation(g)).await {
                Ok(_) => {
                    self.vm_written(&vm);
                    return Ok(vm);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("VM {uuid} kept changing; retry")))
    }

    /// What follows every write of a VM record: its state or sizes may count differently
    /// on its server now, and its state, tags, metadata or alias may change its DNS names.
    fn vm_written(&self, vm: &Vm) {
        if let Some(server) = vm.server_uuid {
            self.capacity_touch(server);
        }
        self.cns_notify.notify_one();
    }

    /// Releases a job's reservation, or every reservation of the VM.
    pub async fn release_reservations(&self, vm: Uuid, job: Option<Uuid>) -> Result<(), ApiError> {
        match job {
            Some(j) => self.store.delete(RESERVATIONS.name, &j.to_string(), Cond::Any).await.map_err(store_error),
            None => {
                let rs = self
                    .store
                    .list(RESERVATIONS.name, &ListQuery::filter(Filter::eq("vm_uuid", vm.to_string())))
                    .await
                    .map_err(store_error)?;
                for r in rs {
                    self.store.delete(RESERVATIONS.name, &r.key, Cond::Any).await.map_err(store_error)?;
                }
                Ok(())
            }
        }
    }

    /// Deletes every NIC of the VM (freeing their addresses); returns how many.
    pub async fn free_vm_nics(&self, vm: Uuid) -> Result<usize, ApiError> {
        let nics: Vec<nereid_types::nic::Nic> =
            self.list(NICS.name, &ListQuery::filter(Filter::eq("belongs_to_uuid", vm.to_string()))).await?;
        for n in &nics {
            match self.delete_nic(&n.mac).await {
                Ok(()) => {}
                Err(e) if e.status == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(nics.len())
    }

    /// A provision's end in one write: the record says what the server runs (`f`), every
    /// NIC of the VM takes `nic_state`, and the job's reservation goes. (Done one by one it
    /// took three commits and nine store round trips per provision.) A NIC record that does
    /// not decode is left as it is, named in the log; the others still change.
    pub async fn settle_provision(&self, uuid: Uuid, job: Uuid, nic_state: &str, mut f: impl FnMut(&mut Vm)) -> Result<Vm, ApiError> {
        for _ in 0..RETRIES * 2 {
            let (mut vm, g) = self.get_vm(uuid, None).await?;
            f(&mut vm);
            let q = ListQuery::filter(Filter::eq("belongs_to_uuid", uuid.to_string()));
            let nics = self.store.list(NICS.name, &q).await.map_err(store_error)?;
            let mut ops = vec![Op::put(VMS.name, uuid.to_string(), encode(&vm), Cond::Generation(g))];
            let now = nereid_types::time::now_iso();
            for o in nics {
                match serde_json::from_value::<nereid_types::nic::Nic>(o.value) {
                    Ok(n) if n.state == nic_state => {}
                    Ok(mut n) => {
                        n.state = nic_state.to_string();
                        n.modified_timestamp = now.clone();
                        ops.push(Op::put(NICS.name, o.key, encode(&n), Cond::Generation(o.generation)));
                    }
                    Err(e) => tracing::warn!(vm = %uuid, nic = %o.key, error = %e, "a NIC record does not decode; its state is left"),
                }
            }
            ops.push(Op::delete(RESERVATIONS.name, job.to_string(), Cond::Any));
            match self.store.batch(ops).await {
                Ok(_) => {
                    self.vm_written(&vm);
                    return Ok(vm);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("VM {uuid} or its NICs kept changing; retry")))
    }

    /// Asks the server to delete the VM and waits until it is gone.
    pub async fn agent_delete_and_wait(&self, server: Uuid, vm: Uuid, deadline: Duration) -> Result<(), super::agents::AgentError> {
        let end = Instant::now() + deadline;
        if self.agent_delete(server, vm).await?.is_none_or(|s| s.state == "destroyed") {
            return Ok(());
        }
        loop {
            match self.agent_get_patient(server, vm).await? {
                None => return Ok(()),
                Some(s) if s.state == "destroyed" => return Ok(()),
                Some(s) if Instant::now() > end => {
                    return Err(super::agents::AgentError::Other(format!(
                        "the server did not delete VM {vm} in time (it is {}{})",
                        s.state,
                        s.error.map(|e| format!(": {e}")).unwrap_or_default()
                    )));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// A state a server reports; ignored when older than what the record has. A job step
    /// waiting for the VM is woken either way: with the report when the record took it
    /// (the step need not ask the server, nor apply it again), else to go and ask.
    pub async fn apply_vm_status(&self, server: Uuid, st: &VmStatus) -> Result<(), ApiError> {
        let r = self.apply_vm_status_once(server, st).await;
        // (The report is copied only for a waiter.)
        self.vm_reports.wake(st.uuid, || matches!(r, Ok(true)).then(|| (server, st.clone())));
        r.map(|_| ())
    }

    /// [`App::apply_vm_status`]: whether the record took the report.
    async fn apply_vm_status_once(&self, server: Uuid, st: &VmStatus) -> Result<bool, ApiError> {
        let (current, g) = match self.read_vm(st.uuid).await? {
            None => return Ok(false),
            Some((Stored::Ok(vm), g)) => (vm, g),
            Some((Stored::Damaged(d), _)) => {
                tracing::debug!(vm = %st.uuid, error = %d.error, "not applying a report to a damaged record");
                return Ok(false);
            }
        };
        if current.server_uuid != Some(server) {
            tracing::debug!(vm = %st.uuid, %server, "ignoring a report from a server the VM is not on");
            return Ok(false);
        }
        if st.generation <= current.agent_generation {
            return Ok(false);
        }
        let now = nereid_types::time::now_iso();
        let (mut gone, mut took) = (false, false);
        self.modify_read_vm(st.uuid, Some((current, g)), |vm| {
            // Decided afresh on every attempt (a retry's record may say otherwise).
            (gone, took) = (false, false);
            // (Checked again: on a retry the record is a newer one, maybe of a VM moved since.)
            if vm.server_uuid != Some(server) || st.generation <= vm.agent_generation {
                return Ok(());
            }
            took = true;
            vm.agent_generation = st.generation;
            vm.zone_state = Some(st.state.clone());
            vm.last_modified = Some(now.clone());
            if st.boot_timestamp.is_some() {
                vm.boot_timestamp = st.boot_timestamp.clone();
            }
            match (vm.state.as_deref(), st.state.as_str()) {
                (Some("destroyed"), _) => {}
                // Provisioning outcomes are the provision job's to record.
                (Some("provisioning"), _) => {}
                // A failed VM stays failed, with its error, until its owner deletes it (as
                // in Triton): the server's report that the unwound VM is gone arrives
                // after the provision job marked it failed, sooner or later by load.
                (Some("failed"), "destroyed") => {}
                (_, "destroyed") => {
                    vm.mark_destroyed(&now);
                    gone = true;
                }
                (_, "provisioning") => {}
                (_, s) => {
                    vm.state = Some(s.to_string());
                    vm.error = st.error.clone();
                    // The agent keeps a VM that died on its own stopped: so does the record.
                    if s == "stopped" && st.agent_decided == Some(Desired::Stopped) && vm.desired_state.as_deref() == Some("running") {
                        vm.desired_state = Some("stopped".into());
                    }
                }
            }
            Ok(())
        })
        .await?;
        if gone {
            self.free_vm_nics(st.uuid).await?;
            self.release_reservations(st.uuid, None).await?;
            // A VM gone on its own leaves its server's firewall and overlays.
            self.netpolicy_notify.notify_one();
        }
        Ok(took)
    }

    /// `GET /vms/{uuid}?sync=true`: the server says what is true. A VM its server does
    /// not have is looked for on every other server before anything is freed: found
    /// elsewhere, the record moves there (NICs kept); found nowhere, it is marked destroyed
    /// (failed, if it never finished provisioning) and its NICs and capacity freed. A VM
    /// with a job still running is never declared gone (the job may be about to create it).
    pub async fn sync_vm(&self, uuid: Uuid) -> Result<(), ApiError> {
        let (entry, _) = self.get_vm_entry(uuid, None).await?;
        let (server, state) = match &entry {
            Stored::Ok(vm) => (vm.server_uuid, vm.state.clone()),
            Stored::Damaged(d) => (d.uuid_field("server_uuid"), d.str_field("state").map(str::to_string)),
        };
        let Some(server) = server else { return Ok(()) };
        if state.as_deref() == Some("destroyed") {
            return Ok(());
        }
        match self.agent_get(server, uuid).await {
            Ok(Some(st)) => self.apply_vm_status(server, &st).await,
            Ok(None) => self.vm_not_on_server(uuid, server, entry.ok()).await,
            Err(e) => Err(ApiError::unavailable(format!("cannot sync VM {uuid}: {e}"))),
        }
    }

    async fn vm_not_on_server(&self, uuid: Uuid, server: Uuid, vm: Option<Vm>) -> Result<(), ApiError> {
        if let Some(j) = self.live_jobs(uuid).await?.first() {
            tracing::info!(vm = %uuid, %server, job = %j.uuid, task = %j.task, "server does not have the VM yet; a job is running, so it is left alone");
            return Ok(());
        }
        match self.locate_vm(uuid, server).await? {
            Located::On(other, st) => {
                let Some(_) = vm else {
                    tracing::warn!(vm = %uuid, server = %other, "a damaged record's VM runs on another server; repair the record with PUT /vms");
                    return Ok(());
                };
                self.modify_vm(uuid, |v| {
                    v.server_uuid = Some(other);
                    // The new server's reports start from its own counter.
                    v.agent_generation = 0;
                    Ok(())
                })
                .await?;
                self.move_vm_nics(uuid, other).await?;
                self.release_reservations(uuid, None).await?;
                self.apply_vm_status(other, &st).await?;
                tracing::warn!(vm = %uuid, from = %server, to = %other, "the VM runs on another server: its record moved there");
                Ok(())
            }
            Located::Nowhere => {
                self.mark_vm_destroyed(uuid, false).await?;
                self.free_vm_nics(uuid).await?;
                self.release_reservations(uuid, None).await?;
                tracing::info!(vm = %uuid, %server, "no server has the VM: marked destroyed");
                Ok(())
            }
            Located::Undecided(why) => Err(ApiError::conflict(
                "SyncUndecided",
                format!(
                    "server {server} does not have VM {uuid}, but {why}, so it may run there; nothing was changed. \
                     Sync again once those servers report, or mark it destroyed with PUT /vms/{uuid} {{\"state\": \"destroyed\"}} if they are gone for good"
                ),
            )),
        }
    }

    /// Where a VM its own server does not have runs: every other server is asked (at most
    /// 16 at a time) — inventories in heartbeats may be seconds old, and freeing an address
    /// a running guest holds is the one mistake sync must never make.
    async fn locate_vm(&self, uuid: Uuid, not_on: Uuid) -> Result<Located, ApiError> {
        let servers: Vec<nereid_types::server::Server> = self.list(crate::buckets::SERVERS.name, &ListQuery::all()).await?;
        let others: Vec<&nereid_types::server::Server> = servers.iter().filter(|s| s.uuid != not_on).collect();
        let mut asked = Vec::new();
        for chunk in others.chunks(16) {
            let answers = futures_util::future::join_all(chunk.iter().map(|s| self.agent_get(s.uuid, uuid))).await;
            asked.extend(chunk.iter().copied().zip(answers));
        }
        let mut silent = Vec::new();
        for (s, answer) in asked {
            match answer {
                Ok(Some(st)) if st.state != "destroyed" => return Ok(Located::On(s.uuid, Box::new(st))),
                Ok(_) => {}
                Err(e) => silent.push(format!("{} ({}) cannot be asked ({e})", s.hostname, s.uuid)),
            }
        }
        if silent.is_empty() { Ok(Located::Nowhere) } else { Ok(Located::Undecided(silent.join("; "))) }
    }

    /// Points the VM's NICs at the server it runs on.
    pub(crate) async fn move_vm_nics(&self, vm: Uuid, server: Uuid) -> Result<(), ApiError> {
        let nics: Vec<nereid_types::nic::Nic> =
            self.list(NICS.name, &ListQuery::filter(Filter::eq("belongs_to_uuid", vm.to_string()))).await?;
        for n in nics.iter().filter(|n| n.cn_uuid != Some(server)) {
            let Value::Object(m) = json!({"cn_uuid": server}) else { continue };
            self.update_nic(&n.mac, &m).await?;
        }
        Ok(())
    }

    /// Marks the record destroyed (failed, if it never finished provisioning). A damaged
    /// record is replaced by a destroyed one built from what can be read of it, the
    /// original kept under `damaged_record`.
    /// `by_request`: a destroy the user asked for is `destroyed` even mid-provision.
    pub async fn mark_vm_destroyed(&self, uuid: Uuid, by_request: bool) -> Result<(), ApiError> {
        let now = nereid_types::time::now_iso();
        for _ in 0..RETRIES {
            let Some((entry, g)) = self.read_vm(uuid).await? else { return Ok(()) };
            let next = match entry {
                Stored::Ok(mut vm) => {
                    if vm.state.as_deref() == Some("destroyed") {
                        return Ok(());
                    }
                    vm.mark_destroyed(&now);
                    if by_request {
                        vm.state = Some("destroyed".into());
                        vm.zone_state = Some("destroyed".into());
                    }
                    vm
                }
                Stored::Damaged(d) => vm::destroyed_from_damaged(uuid, &d, &now),
            };
            match self.store.put(VMS.name, &uuid.to_string(), encode(&next), Cond::Generation(g)).await {
                Ok(_) => {
                    self.vm_written(&next);
                    return Ok(());
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("VM {uuid} kept changing; retry")))
    }

    pub(crate) async fn resolve_networks(&self, owner: Uuid, raw: &Value) -> Result<(Vec<NetRequest>, Vec<Vec<String>>), ApiError> {
        let items = raw.as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        let mut tags = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("networks[{i}]");
            let (id, ip, primary, flags) = match item {
                Value::String(s) => (Uuid::parse_str(s).ok(), None, false, Map::new()),
                Value::Object(o) => {
                    let id = match o.get("name").and_then(Value::as_str) {
                        Some(name) => match self.store.get(NETWORK_NAMES.name, name).await.map_err(store_error)? {
                            Some(obj) => obj.value.get("uuid").and_then(Value::as_str).and_then(|u| Uuid::parse_str(u).ok()),
                            None => return Err(invalid(&field, format!("no network or pool is named {name:?}"))),
                        },
                        None => uuid_of(o, "uuid").or(uuid_of(o, "ipv4_uuid")),
                    };
                    let ip = o
                        .get("ip")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| o.get("ipv4_ips").and_then(|a| a.get(0)).and_then(Value::as_str).map(str::to_string));
                    let flags: Map<String, Value> =
                        o.iter().filter(|(k, _)| k.starts_with("allow_")).map(|(k, v)| (k.clone(), v.clone())).collect();
                    (id, ip, o.get("primary").and_then(Value::as_bool).unwrap_or(false), flags)
                }
                _ => (None, None, false, Map::new()),
            };
            let id = id.ok_or_else(|| invalid(&field, "names no network"))?;
            if let Some((net, _)) = self.read::<Network>(NETWORKS.name, &id.to_string()).await? {
                if !net.provisionable_by(&owner) {
                    return Err(invalid(&field, format!("owner {owner} may not use network {} ({id})", net.name)));
                }
                if let Some(ip) = &ip {
                    nereid_types::network::parse_ip_in(&net, &field, ip).map_err(|e| ApiError::validation_409(vec![e]))?;
                }
                // Fabric networks need the underlay their VXLAN segments are carried over.
                tags.push(vec![if net.fabric { self.cfg.fabric.underlay_tag.clone() } else { net.nic_tag.clone() }]);
            } else if let Some((pool, _)) = self.read::<NetworkPool>(NETWORK_POOLS.name, &id.to_string()).await? {
                if pool.owner_uuids.as_ref().is_some_and(|o| !o.contains(&owner)) {
                    return Err(invalid(&field, format!("owner {owner} may not use network pool {} ({id})", pool.name)));
                }
                if ip.is_some() {
                    return Err(invalid(&field, "an ip needs a network, not a pool"));
                }
                tags.push(pool.nic_tags_present.clone());
            } else {
                return Err(invalid(&field, format!("network or pool {id} does not exist")));
            }
            out.push(NetRequest { target: id, ip, primary, flags });
        }
        if !out.iter().any(|n| n.primary)
            && let Some(first) = out.first_mut()
        {
            first.primary = true;
        }
        Ok((out, tags))
    }

    /// CreateVm: validates, sizes, places, and writes the record, the reservation and the
    /// provision job in one transaction (nothing is written when placement fails).
    pub async fn create_vm(&self, input: &Map<String, Value>) -> Result<Created, ApiError> {
        self.create_vm_with(input, &CreateOptions::default()).await
    }

    /// [`create_vm`](Self::create_vm) with CloudAPI's checks that depend on the owner's
    /// other VMs (a unique name, affinity rules), made inside the placement claim so two
    /// concurrent creates cannot both pass them.
    pub async fn create_vm_with(&self, input: &Map<String, Value>, opts: &CreateOptions<'_>) -> Result<Created, ApiError> {
        let mut errors = spec::check(vm::CREATE_FIELDS, input, Mode::Create, &[]);
        let map = |k: &str| input.get(k).and_then(Value::as_object);
        if let Err(e) = vm::check_metadata_total(map("customer_metadata"), map("internal_metadata"), map("tags")) {
            errors.push(e);
        }
        if !errors.is_empty() {
            return Err(ApiError::validation_409(errors));
        }
        let brand = input.get("brand").and_then(Value::as_str).unwrap_or_default().to_string();
        if !vm::SUPPORTED_BRANDS.contains(&brand.as_str()) {
            return Err(ApiError::conflict(
                "BrandNotSupported",
                format!("brand {brand} is not supported: Nereid runs hardware VMs (bhyve, kvm)"),
            ));
        }
        let owner = uuid_of(input, "owner_uuid").unwrap_or_default();
        // The package.
        let pkg: Option<Package> = match uuid_of(input, "billing_id") {
            Some(id) => {
                let (p, _) = self
                    .read::<Package>(PACKAGES.name, &id.to_string())
                    .await?
                    .ok_or_else(|| invalid("billing_id", format!("package {id} does not exist")))?;
                if !p.active {
                    return Err(invalid("billing_id", format!("package {} is not active", p.label())));
                }
                if p.brand.as_ref().is_some_and(|b| *b != brand) {
                    return Err(invalid("brand", format!("package {} is for brand {}", p.label(), p.brand.clone().unwrap_or_default())));
                }
                if p.owner_uuids.as_ref().is_some_and(|o| !o.contains(&owner)) {
                    return Err(invalid("billing_id", format!("owner {owner} may not use package {}", p.label())));
                }
                Some(p)
            }
            None => None,
        };
        // The image.
        let disks_in: Vec<Map<String, Value>> = input
            .get("disks")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|d| d.as_object().cloned()).collect())
            .unwrap_or_default();
        let image_id = uuid_of(input, "image_uuid").or_else(|| disks_in.first().and_then(|d| uuid_of(d, "image_uuid")));
        if let (Some(a), Some(b)) = (uuid_of(input, "image_uuid"), disks_in.first().and_then(|d| uuid_of(d, "image_uuid")))
            && a != b
        {
            return Err(invalid("image_uuid", "differs from disks[0].image_uuid"));
        }
        let image: Option<Image> = match image_id {
            Some(id) => {
                let (img, _) = self
                    .read::<Image>(IMAGES.name, &id.to_string())
                    .await?
                    .ok_or_else(|| invalid("image_uuid", format!("image {id} does not exist")))?;
                if img.state != "active" {
                    return Err(invalid("image_uuid", format!("image {} is {}, not active", img.label(), img.state)));
                }
                if img.kind != "zvol" {
                    return Err(invalid(
                        "image_uuid",
                        format!("image {} is a {} image; bhyve and kvm VMs boot zvol images", img.label(), img.kind),
                    ));
                }
                if !super::images::visible_to(&img, owner) {
                    return Err(invalid("image_uuid", format!("owner {owner} may not use image {id}")));
                }
                Some(img)
            }
            None => None,
        };
        let req = image.as_ref().and_then(|i| i.rest.get("requirements")).cloned().unwrap_or(Value::Null);
        if let (Some(p), Some(img)) = (&pkg, &image)
            && p.os.as_ref().is_some_and(|o| *o != img.os)
        {
            return Err(invalid(
                "billing_id",
                format!("package {} is for os {}, image {} is {}", p.label(), p.os.clone().unwrap_or_default(), img.label(), img.os),
            ));
        }
        // Sizes: the request wins, then the package.
        let ram = input.get("ram").and_then(Value::as_u64).or(pkg.as_ref().map(|p| p.max_physical_memory));
        let Some(ram) = ram else {
            return Err(ApiError::validation_409(vec![
                FieldError::missing("ram"),
                FieldError::invalid("billing_id", "either billing_id or ram is required"),
            ]));
        };
        // The image's requirements: the one check CloudAPI's CreateMachine meets too.
        if let Some(img) = &image {
            let nics = input.get("networks").and_then(Value::as_array).map_or(0, Vec::len);
            let asked = image::Provision { ram, brand: &brand, bootrom: input.get("bootrom").and_then(Value::as_str), nics };
            let unmet = image::unmet_requirements(img, &asked);
            if !unmet.is_empty() {
                return Err(ApiError::validation_409(unmet));
            }
        }
        let vcpus = input.get("vcpus").and_then(Value::as_u64).map(|v| v as u32).or(pkg.as_ref().and_then(|p| p.vcpus)).unwrap_or(1);
        let cpu_cap =
            input.get("cpu_cap").and_then(Value::as_u64).map(|c| c as u32).or(pkg.as_ref().and_then(|p| p.cpu_cap)).filter(|c| *c > 0);
        // Unless the request names one, the image's required bootrom.
        let bootrom = input.get("bootrom").and_then(Value::as_str).or(req.get("bootrom").and_then(Value::as_str)).map(str::to_string);
        let disk_model = input
            .get("disk_driver")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| image.as_ref().and_then(|i| i.rest.get("disk_driver")).and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "virtio".into());
        let nic_model = input
            .get("nic_driver")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| image.as_ref().and_then(|i| i.rest.get("nic_driver")).and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "virtio".into());
        // Disks: the boot disk must hold the image (Triton never checks; pitfall #1).
        let image_size = image.as_ref().and_then(Image::image_size);
        let image_label = image.as_ref().map(Image::label).unwrap_or_default();
        let boot_size = match (disks_in.first().and_then(|d| d.get("size")).and_then(Value::as_u64), &pkg, image_size) {
            (Some(s), _, Some(is)) if s < is => {
                return Err(ApiError::validation_409(vec![FieldError {
                    field: "disks".into(),
                    code: "InsufficientCapacity".into(),
                    message: format!("disks[0].size {s} MiB is smaller than image {image_label}'s image_size {is} MiB"),
                }]));
            }
            (Some(s), _, _) => s,
            (None, Some(p), _) => {
                package::boot_disk_mib(p, &image_label, image_size.unwrap_or(0)).map_err(|e| ApiError::validation_409(vec![e]))?
            }
            (None, None, Some(is)) => input.get("quota").and_then(Value::as_u64).map(|q| (q * 1024).max(is)).unwrap_or(is),
            (None, None, None) => return Err(invalid("disks", "disks[0].size is required without an image or a package")),
        };
        let mut disks = vec![DiskDef {
            image_uuid: image_id,
            image_size,
            size: boot_size,
            boot: true,
            model: disk_model.clone(),
            media: "disk".into(),
            path: None,
        }];
        for d in disks_in.iter().skip(1) {
            disks.push(DiskDef {
                image_uuid: None,
                image_size: None,
                size: d.get("size").and_then(Value::as_u64).unwrap_or(0),
                boot: d.get("boot").and_then(Value::as_bool).unwrap_or(false),
                model: d.get("model").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| disk_model.clone()),
                media: d.get("media").and_then(Value::as_str).unwrap_or("disk").to_string(),
                path: d.get("path").and_then(Value::as_str).map(str::to_string),
            });
        }
        if disks_in.len() <= 1
            && let Some(p) = &pkg
            && let Some(pd) = &p.disks
        {
            let others: u64 =
                pd.iter().skip(1).filter_map(|d| if let Some(package::DiskSize::Mib(n)) = d.size { Some(n) } else { None }).sum();
            for d in pd.iter().skip(1) {
                let size = match d.size {
                    Some(package::DiskSize::Mib(n)) => n,
                    _ => p.quota.saturating_sub(boot_size + others),
                };
                disks.push(DiskDef {
                    image_uuid: None,
                    image_size: None,
                    size,
                    boot: false,
                    model: disk_model.clone(),
                    media: "disk".into(),
                    path: None,
                });
            }
        }
        let disk_mib: u64 = disks.iter().filter(|d| d.media != "cdrom").map(|d| d.size).sum();
        // Networks.
        let (nets, nic_tags) = self.resolve_networks(owner, input.get("networks").unwrap_or(&Value::Null)).await?;
        // Placement.
        let uuid = uuid_of(input, "uuid").unwrap_or_else(Uuid::new_v4);
        let mut traits = pkg.as_ref().and_then(|p| p.traits.clone()).unwrap_or_default();
        if let Some(Value::Object(it)) = image.as_ref().and_then(|i| i.rest.get("traits")) {
            for (k, v) in it {
                traits.insert(k.clone(), v.clone());
            }
        }
        let loc = input.get("locality").and_then(Value::as_object);
        let request = Request {
            vm_uuid: uuid,
            owner,
            ram_mib: ram,
            disk_mib,
            vcpus,
            cpu_cap,
            traits,
            nic_tags,
            locality: loc.map(locality_of).unwrap_or_default(),
            server: uuid_of(input, "server_uuid"),
            spread: match pkg.as_ref().and_then(|p| p.alloc_server_spread.as_deref()) {
                Some("min-ram") => Some(Spread::MinRam),
                Some("random") => Some(Spread::Random),
                Some("min-owner") => Some(Spread::MinOwner),
                _ => None,
            },
        };
        let now = nereid_types::time::now_iso();
        let autoboot = input.get("autoboot").and_then(Value::as_bool).unwrap_or(true);
        let obj_field = |k: &str| input.get(k).and_then(Value::as_object).cloned();
        let base = Vm {
            uuid,
            alias: input.get("alias").and_then(Value::as_str).map(str::to_string),
            brand: Some(brand.clone()),
            owner_uuid: Some(owner),
            billing_id: pkg.as_ref().map(|p| p.uuid),
            package_name: pkg.as_ref().map(|p| p.name.clone()),
            package_version: pkg.as_ref().map(|p| p.version.clone()),
            image_uuid: image_id,
            state: Some("provisioning".into()),
            zone_state: Some("provisioning".into()),
            server_uuid: None,
            ram: Some(ram),
            max_physical_memory: Some(ram),
            max_swap: input.get("max_swap").and_then(Value::as_u64).or(pkg.as_ref().map(|p| p.max_swap)),
            max_lwps: input.get("max_lwps").and_then(Value::as_u64).or(pkg.as_ref().map(|p| u64::from(p.max_lwps))),
            quota: Some(disk_mib.div_ceil(1024)),
            cpu_cap,
            cpu_shares: input.get("cpu_shares").and_then(Value::as_u64).map(|c| c as u32).or(pkg.as_ref().and_then(|p| p.fss)),
            vcpus: Some(vcpus),
            zfs_io_priority: input
                .get("zfs_io_priority")
                .and_then(Value::as_u64)
                .map(|c| c as u32)
                .or(pkg.as_ref().map(|p| p.zfs_io_priority)),
            autoboot: Some(autoboot),
            firewall_enabled: Some(input.get("firewall_enabled").and_then(Value::as_bool).unwrap_or(false)),
            deletion_protection: input.get("deletion_protection").and_then(Value::as_bool).filter(|d| *d),
            customer_metadata: Some(obj_field("customer_metadata").unwrap_or_default()),
            internal_metadata: Some(obj_field("internal_metadata").unwrap_or_default()),
            tags: Some(obj_field("tags").unwrap_or_default()),
            nics: Some(Vec::new()),
            disks: Some(disks),
            resolvers: input.get("resolvers").and_then(|r| serde_json::from_value(r.clone()).ok()),
            routes: None,
            bootrom,
            cpu_type: input
                .get("cpu_type")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| image.as_ref().and_then(|i| i.rest.get("cpu_type")).and_then(Value::as_str).map(str::to_string)),
            hostname: input.get("hostname").and_then(Value::as_str).map(str::to_string),
            create_timestamp: Some(now.clone()),
            last_modified: Some(now),
            destroyed: None,
            boot_timestamp: None,
            snapshots: Some(Vec::new()),
            desired_state: Some(if autoboot { "running".into() } else { "stopped".into() }),
            agent_generation: 0,
            definition_generation: 1,
            reboot_generation: 0,
            rollback_generation: 0,
            rollback_to: None,
            error: None,
            rest: input
                .get("internal_metadata_namespaces")
                .map(|ns| Map::from_iter([("internal_metadata_namespaces".to_string(), ns.clone())]))
                .unwrap_or_default(),
        };
        // Per owner when names must be unique or locality is asked: two creates of one
        // owner cannot both take a name or both miss each other's VMs. Placement itself
        // is not serialised (see `capacity`).
        let _owner =
            if opts.unique_alias || opts.locality.is_some() { Some(self.vm_locks.lock(&format!("owner:{owner}")).await) } else { None };
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut request = request;
        for _ in 0..RETRIES * 4 {
            if opts.unique_alias || opts.locality.is_some() {
                let mine = self.owner_active_vms(owner).await?;
                if opts.unique_alias
                    && let Some(alias) = base.alias.as_deref()
                    && let Some(other) = mine.iter().find(|v| v.alias.as_deref() == Some(alias))
                {
                    return Err(invalid("alias", format!("{alias} is already the name of instance {}", other.uuid)));
                }
                if let Some(f) = opts.locality {
                    request.locality = f(&mine)?.as_ref().and_then(Value::as_object).map(locality_of).unwrap_or_default();
                }
            }
            let alloc_cfg = nereid_alloc::Config { underlay_tag: Some(self.cfg.fabric.underlay_tag.clone()), ..self.cfg.alloc.clone() };
            // (The claim lock is held until this attempt's write is answered.)
            let Decided { placement, fresh, claiming: _claiming } = self.place(&request, &alloc_cfg, &mut rng).await?;
            let server = placement.server;
            let mut record = base.clone();
            record.server_uuid = Some(server);
            let mut params = Map::new();
            params.insert("networks".into(), json!(nets));
            params.insert("nic_model".into(), json!(nic_model));
            let mut explained = explain(&placement);
            // Named for the operator, and so the reserve step's message names the server
            // without reading its record.
            explained["hostname"] = json!(fresh.server.hostname);
            params.insert("placement".into(), explained);
            let job = new_job("provision", uuid, Some(server), Some(owner), params);
            let res = Reservation {
                job_uuid: job.uuid,
                vm_uuid: uuid,
                server_uuid: server,
                owner_uuid: owner,
                ram_mib: ram,
                disk_mib,
                cpu_cap,
                kind: "provision".into(),
            };
            let mut ops = vec![
                claim_op(server, fresh.claim),
                reservation_op(&res),
                Op::put(VMS.name, uuid.to_string(), encode(&record), Cond::Absent),
                job_op(&job),
            ];
            ops.extend(self.limit_guard(&record, None).await?); // provisioning limits: op 4
            match self.store.batch(ops).await {
                Ok(_) => {
                    self.capacity_claimed(fresh, &res);
                    self.jobs_notify.notify_one();
                    super::audit::note_job(job.uuid);
                    // The explanation the job records, hostname included.
                    let placement = job.params.get("placement").cloned().unwrap_or_default();
                    return Ok(Created { vm: record, job, placement });
                }
                Err(StoreError::Conflict { op_index: 0, .. }) => {
                    self.capacity_touch(server);
                    continue;
                }
                Err(StoreError::Conflict { op_index: 2, .. }) => {
                    return Err(ApiError::validation_409(vec![FieldError::duplicate("uuid", format!("VM {uuid} already exists"))]));
                }
                // Another create of this account counted first (the usage stamp): count again,
                // after a random pause so racing creates do not retry in lockstep.
                Err(StoreError::Conflict { op_index: 4, .. }) => super::limits::limit_conflict_backoff().await,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::unavailable("placement kept racing with other provisions; retry"))
    }

    /// Queues a job on a VM (and whatever must land with it).
    pub(crate) async fn queue(&self, job: Job, mut ops: Vec<Op>) -> Result<Job, ApiError> {
        // Under the VM's lock: a migration's begin and this job cannot pass each other.
        let _no_begin_meanwhile = self.vm_locks.lock(&job.vm_uuid.to_string()).await;
        self.refuse_while_migrating(job.vm_uuid).await?;
        ops.push(job_op(&job));
        self.store.batch(ops).await.map_err(store_error)?;
        self.jobs_notify.notify_one();
        super::audit::note_job(job.uuid);
        Ok(job)
    }

    /// Refuses a change to a VM that is being migrated (begun, not yet switched or
    /// aborted): its target is being made from the VM as it is.
    pub(crate) async fn refuse_while_migrating(&self, vm: Uuid) -> Result<(), ApiError> {
        match self.latest_migration(vm).await? {
            Some((m, _)) if m.state == "running" || m.state == "paused" => Err(ApiError::conflict(
                "VmMigrating",
                format!("VM {vm} is being migrated (phase {}, {}): switch and finalize, or abort, the migration first", m.phase, m.state),
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn check_actionable(vm: &Vm) -> Result<Uuid, ApiError> {
        match vm.state.as_deref() {
            Some("destroyed") => Err(ApiError::conflict("VmDestroyed", format!("VM {} is destroyed", vm.uuid))),
            Some("failed") => Err(ApiError::conflict(
                "VmFailed",
                format!("VM {} failed to provision ({}); delete it", vm.uuid, vm.error.clone().unwrap_or_default()),
            )),
            Some("provisioning") => Err(ApiError::conflict("UnallocatedVM", format!("VM {} is still provisioning", vm.uuid))),
            _ => vm.server_uuid.ok_or_else(|| ApiError::conflict("UnallocatedVM", format!("VM {} has no server", vm.uuid))),
        }
    }

    /// start, stop or reboot.
    pub async fn power_vm(&self, uuid: Uuid, action: &str) -> Result<Job, ApiError> {
        let (vm, _) = self.get_vm(uuid, None).await?;
        let server = Self::check_actionable(&vm)?;
        let state = vm.state.as_deref().unwrap_or("");
        match (action, state) {
            ("start", "running") => return Err(ApiError::conflict("VmNotStopped", format!("VM {uuid} is already running"))),
            ("stop" | "reboot", s) if s != "running" => {
                return Err(ApiError::conflict("VmNotRunning", format!("VM {uuid} is {s}, not running")));
            }
            _ => {}
        }
        self.queue(new_job(action, uuid, Some(server), vm.owner_uuid, Map::new()), Vec::new()).await
    }

    /// `?action=update`: metadata, tags, names live; a resize with its capacity checked
    /// and reserved on the VM's server (unless `force`).
    pub async fn update_vm(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Job, ApiError> {
        self.update_vm_as(uuid, input, None).await
    }

    /// [`update_vm`](Self::update_vm) with the action its audit entry names (CloudAPI's
    /// `set_metadata`, `rename`, `resize`, …; the CLI's waits look for them).
    pub async fn update_vm_as(&self, uuid: Uuid, input: &Map<String, Value>, action: Option<&str>) -> Result<Job, ApiError> {
        let errors = spec::check(vm::UPDATE_FIELDS, input, Mode::Update, &[]);
        if !errors.is_empty() {
            return Err(ApiError::validation_409(errors));
        }
        let (vm, _) = self.get_vm(uuid, None).await?;
        let server = Self::check_actionable(&vm)?;
        let force = input.get("force").and_then(Value::as_bool).unwrap_or(false);
        let mut after = Map::new();
        let mut pkg: Option<Package> = None;
        if let Some(id) = uuid_of(input, "billing_id") {
            let (p, _) = self
                .read::<Package>(PACKAGES.name, &id.to_string())
                .await?
                .ok_or_else(|| invalid("billing_id", format!("package {id} does not exist")))?;
            if !p.active {
                return Err(invalid("billing_id", format!("package {} is not active", p.label())));
            }
            if p.brand.as_ref().is_some_and(|b| Some(b) != vm.brand.as_ref()) {
                return Err(invalid("billing_id", format!("package {} is for brand {}", p.label(), p.brand.clone().unwrap_or_default())));
            }
            after.insert("billing_id".into(), json!(p.uuid));
            after.insert("package_name".into(), json!(p.name));
            after.insert("package_version".into(), json!(p.version));
            after.insert("ram".into(), json!(p.max_physical_memory));
            after.insert("vcpus".into(), json!(p.vcpus.unwrap_or(1)));
            after.insert("cpu_cap".into(), json!(p.cpu_cap.unwrap_or(0)));
            pkg = Some(p);
        }
        for k in ["ram", "vcpus", "cpu_cap", "alias", "hostname", "firewall_enabled", "deletion_protection", "autoboot", "resolvers"] {
            if let Some(v) = input.get(k) {
                after.insert(k.into(), v.clone());
            }
        }
        // Maps: a full replacement is absolute; `set_*`/`remove_*` travel as deltas and
        // merge into the record as it is when the job applies them.
        let mut projected = Vec::new();
        for (name, current) in [
            ("customer_metadata", vm.customer_metadata.as_ref()),
            ("internal_metadata", vm.internal_metadata.as_ref()),
            ("tags", vm.tags.as_ref()),
        ] {
            let replace = if name == "internal_metadata" { None } else { input.get(name) };
            let (set, remove) = (input.get(&format!("set_{name}")), input.get(&format!("remove_{name}")));
            let merged = merged_map(current, replace, set, remove);
            projected.push(merged.clone().or_else(|| current.cloned()));
            match (replace, merged) {
                (Some(_), Some(m)) => {
                    after.insert(name.into(), Value::Object(m));
                }
                (None, Some(_)) => {
                    for (k, v) in [("set", set), ("remove", remove)] {
                        if let Some(v) = v {
                            after.insert(format!("{k}_{name}"), v.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        vm::check_metadata_total(projected[0].as_ref(), projected[1].as_ref(), projected[2].as_ref())
            .map_err(|e| ApiError::validation_409(vec![e]))?;
        // Disk: the boot disk follows the quota (or the new package) and only grows.
        let mut disks = vm.disks.clone().unwrap_or_default();
        let image_size = disks.first().and_then(|d| d.image_size).unwrap_or(0);
        let image_label = vm.image_uuid.map(|u| u.to_string()).unwrap_or_else(|| "(none)".into());
        let new_boot = match (&pkg, input.get("quota").and_then(Value::as_u64)) {
            (_, Some(q)) => {
                let others: u64 = disks.iter().skip(1).filter(|d| d.media != "cdrom").map(|d| d.size).sum();
                Some((q * 1024).saturating_sub(others))
            }
            (Some(p), None) => Some(package::boot_disk_mib(p, &image_label, image_size).map_err(|e| ApiError::validation_409(vec![e]))?),
            (None, None) => None,
        };
        if let (Some(nb), Some(boot)) = (new_boot, disks.first_mut()) {
            if nb < boot.size {
                return Err(ApiError::validation_409(vec![FieldError::invalid(
                    "quota",
                    format!("disks can only grow: the boot disk has {} MiB, the new size would be {nb} MiB", boot.size),
                )]));
            }
            if nb < image_size {
                return Err(ApiError::validation_409(vec![FieldError {
                    field: "quota".into(),
                    code: "InsufficientCapacity".into(),
                    message: format!("the boot disk would be {nb} MiB, smaller than the image's image_size {image_size} MiB"),
                }]));
            }
            if nb != boot.size {
                boot.size = nb;
                let total: u64 = disks.iter().filter(|d| d.media != "cdrom").map(|d| d.size).sum();
                after.insert("disks".into(), json!(disks));
                after.insert("quota".into(), json!(total.div_ceil(1024)));
            }
        }
        // Only what changes.
        let current = encode(&vm);
        after.retain(|k, v| {
            map_delta(k).is_some() || (current.get(k) != Some(v) && !(k == "cpu_cap" && v == &json!(0) && current.get(k).is_none()))
        });
        if after.is_empty() {
            return Err(ApiError::validation_409(vec![FieldError::invalid("update", "changes nothing")]));
        }
        let before = current_values(&vm, &after.keys().filter(|k| map_delta(k).is_none()).collect::<Vec<_>>());
        let resize = ["ram", "vcpus", "disks"].iter().any(|k| after.contains_key(*k));
        let mut params = Map::new();
        params.insert("after".into(), Value::Object(after.clone()));
        params.insert("before".into(), Value::Object(before));
        params.insert("resize".into(), json!(resize));
        if let Some(a) = action {
            params.insert("action".into(), json!(a));
        }
        let job = new_job("update", uuid, Some(server), vm.owner_uuid, params);
        // Growth needs capacity on the VM's own server.
        let new_ram = after.get("ram").and_then(Value::as_u64).unwrap_or(vm.ram_mib().unwrap_or(0));
        let new_disk: u64 = after
            .get("disks")
            .and_then(|d| serde_json::from_value::<Vec<DiskDef>>(d.clone()).ok())
            .map(|d| d.iter().filter(|x| x.media != "cdrom").map(|x| x.size).sum())
            .unwrap_or(vm.disk_mib().unwrap_or(0));
        let new_cap = match after.get("cpu_cap") {
            Some(v) => v.as_u64().map(|c| c as u32).filter(|c| *c > 0),
            None => vm.cpu_cap,
        };
        let new_vcpus = after.get("vcpus").and_then(Value::as_u64).map(|v| v as u32).unwrap_or(vm.vcpus.unwrap_or(1));
        let grow_ram = new_ram.saturating_sub(vm.ram_mib().unwrap_or(0));
        let grow_disk = new_disk.saturating_sub(vm.disk_mib().unwrap_or(0));
        let grow_cap = new_cap.unwrap_or(0).saturating_sub(vm.cpu_cap.unwrap_or(0));
        if grow_ram == 0 && grow_disk == 0 && grow_cap == 0 {
            return self.queue(job, Vec::new()).await;
        }
        self.refuse_while_migrating(uuid).await?;
        for _ in 0..RETRIES * 4 {
            // Read fresh (claim generation first) and claimed conditionally: no lock needed.
            let fresh = self.fresh_server(server).await?;
            let claim = fresh.as_ref().and_then(|f| f.claim);
            let mut ops = Vec::new();
            if !force {
                let mut servers: Vec<nereid_alloc::Server> = fresh.map(|f| f.server).into_iter().collect();
                for s in &mut servers {
                    // The VM itself is asked about at its new size.
                    s.vms.retain(|v| v.uuid != uuid);
                }
                let traits = servers.first().map(|s| s.traits.clone()).unwrap_or_default();
                let request = Request {
                    vm_uuid: uuid,
                    owner: vm.owner_uuid.unwrap_or_default(),
                    ram_mib: new_ram,
                    disk_mib: new_disk,
                    vcpus: new_vcpus,
                    cpu_cap: new_cap,
                    traits,
                    nic_tags: Vec::new(),
                    locality: Locality::default(),
                    server: Some(server),
                    spread: None,
                };
                let cfg = nereid_alloc::Config { filter_headnode: false, ..self.cfg.alloc.clone() };
                if let Err(nf) = nereid_alloc::allocate(&servers, &request, &cfg, &mut rand::rngs::StdRng::from_os_rng()) {
                    let mut e = no_fit_error(&nf);
                    e.code = "InsufficientCapacity".into();
                    e.message = format!(
                        "the VM's server cannot hold the new size: {}",
                        nf.message().trim_start_matches("No compute resources available: ")
                    );
                    return Err(e);
                }
            }
            ops.push(claim_op(server, claim));
            let res = Reservation {
                job_uuid: job.uuid,
                vm_uuid: uuid,
                server_uuid: server,
                owner_uuid: vm.owner_uuid.unwrap_or_default(),
                ram_mib: grow_ram,
                disk_mib: grow_disk,
                cpu_cap: (grow_cap > 0).then_some(grow_cap),
                kind: "resize".into(),
            };
            ops.push(reservation_op(&res));
            ops.push(job_op(&job));
            ops.extend(self.limit_guard(&super::limits::resized(&vm, new_ram, new_disk), Some(&vm)).await?); // op 3
            match self.store.batch(ops).await {
                Ok(_) => {
                    self.capacity_touch(server);
                    self.jobs_notify.notify_one();
                    super::audit::note_job(job.uuid);
                    return Ok(job);
                }
                Err(StoreError::Conflict { op_index: 0, .. }) => continue,
                Err(StoreError::Conflict { op_index: 3, .. }) => super::limits::limit_conflict_backoff().await,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::unavailable("placement kept racing with other provisions; retry"))
    }

    /// DeleteVm: a destroy job. A damaged record can be deleted too (its server, if it can
    /// be read, is asked to delete the VM). Deleting a destroyed VM whose cleanup did not
    /// finish (NICs or capacity still held) runs the cleanup again; only a VM with nothing
    /// left answers `VmDestroyed`.
    pub async fn delete_vm(&self, uuid: Uuid) -> Result<Job, ApiError> {
        let (entry, _) = self.get_vm_entry(uuid, None).await?;
        let (state, protected, server, owner) = match &entry {
            Stored::Ok(vm) => (vm.state.clone(), vm.deletion_protection == Some(true), vm.server_uuid, vm.owner_uuid),
            Stored::Damaged(d) => (
                d.str_field("state").map(str::to_string),
                d.raw.get("deletion_protection") == Some(&json!(true)),
                d.uuid_field("server_uuid"),
                d.uuid_field("owner_uuid"),
            ),
        };
        if state.as_deref() == Some("destroyed") {
            if self.vm_leftovers(uuid).await? == 0 {
                return Err(ApiError::conflict("VmDestroyed", format!("VM {uuid} is already destroyed")));
            }
            // The record says destroyed but cleanup did not finish: the server is not
            // asked again (the VM is gone), the rest runs.
            return self.queue(new_job("destroy", uuid, None, owner, Map::new()), Vec::new()).await;
        }
        if protected {
            return Err(ApiError::conflict("CannotDestroyMachineError", DELETION_PROTECTED));
        }
        match (server, &entry) {
            (Some(server), _) => self.queue(new_job("destroy", uuid, Some(server), owner, Map::new()), Vec::new()).await,
            // A damaged record that names no server runs nowhere: destroy it in the store.
            (None, Stored::Damaged(_)) => self.queue(new_job("destroy", uuid, None, owner, Map::new()), Vec::new()).await,
            (None, Stored::Ok(_)) => Err(ApiError::conflict("UnallocatedVM", "Cannot delete a VM with no server_uuid")),
        }
    }

    /// NICs and reservations a VM still holds.
    pub async fn vm_leftovers(&self, uuid: Uuid) -> Result<i64, ApiError> {
        let nics = self.store.count(NICS.name, &Filter::eq("belongs_to_uuid", uuid.to_string())).await.map_err(store_error)?;
        let res = self.store.count(RESERVATIONS.name, &Filter::eq("vm_uuid", uuid.to_string())).await.map_err(store_error)?;
        Ok(nics + res)
    }

    /// PutVm for operator repair: a patch, checked against the generation the operator
    /// read (`If-Match`), that refuses to erase what every VM must have and values that
    /// cannot be true. A damaged record is repaired the same way: the patch is applied to
    /// what is stored, and the result must be a VM.
    pub async fn put_vm(&self, uuid: Uuid, input: &Map<String, Value>, if_match: i64) -> Result<(Vm, i64), ApiError> {
        let (entry, g) = self.get_vm_entry(uuid, None).await?;
        if g != if_match {
            return Err(ApiError::new(
                412,
                "PreconditionFailed",
                format!("VM {uuid} changed since it was read (it is at generation {g}, the request is for {if_match}); read it again"),
            ));
        }
        if input.get("uuid").is_some_and(|u| u.as_str() != Some(&uuid.to_string())) {
            return Err(invalid("uuid", "must equal the VM in the path"));
        }
        let mut errors = Vec::new();
        if let Stored::Ok(_) = &entry {
            for k in ["owner_uuid", "billing_id", "brand", "ram", "cpu_cap"] {
                if input.get(k).is_some_and(Value::is_null) {
                    errors.push(FieldError::invalid(k, "PutVm applies a patch and will not erase this field"));
                }
            }
        }
        if let Some(s) = input.get("state").and_then(Value::as_str)
            && !["running", "stopped", "destroyed", "failed"].contains(&s)
        {
            errors.push(FieldError::invalid("state", "may be set to running, stopped, destroyed or failed"));
        }
        let largest = self.largest_server().await?;
        errors.extend(vm::check_put(input, largest));
        if !errors.is_empty() {
            return Err(ApiError::validation_409(errors));
        }
        let prev_server = super::allocation::record_server(&entry);
        let (mut obj, prev_state) = match &entry {
            Stored::Ok(vm) => (encode(vm), vm.state.clone()),
            Stored::Damaged(d) => (d.raw.clone(), d.str_field("state").map(str::to_string)),
        };
        let Value::Object(obj_map) = &mut obj else { return Err(invalid("vm", "the stored record is not an object; send every field")) };
        obj_map.insert("uuid".into(), json!(uuid));
        spec::merge(obj_map, input);
        let mut next = match vm::decode(&uuid.to_string(), obj) {
            Stored::Ok(v) => v,
            Stored::Damaged(d) => {
                return Err(ApiError::validation_409(vec![FieldError::invalid(
                    "vm",
                    format!("the patched record is not a VM: {}", d.error),
                )]));
            }
        };
        let destroying = next.state.as_deref() == Some("destroyed") && prev_state.as_deref() != Some("destroyed");
        if destroying {
            next.state = prev_state;
            next.mark_destroyed(&nereid_types::time::now_iso());
        }
        next.last_modified = Some(nereid_types::time::now_iso());
        let ng = self.store.put(VMS.name, &uuid.to_string(), encode(&next), Cond::Generation(g)).await.map_err(|e| {
            if e.is_conflict() {
                ApiError::new(412, "PreconditionFailed", format!("VM {uuid} changed while being written; read it again"))
            } else {
                store_error(e)
            }
        })?;
        if let Some(server) = prev_server.filter(|p| Some(*p) != next.server_uuid) {
            self.capacity_touch(server);
        }
        self.vm_written(&next);
        if destroying {
            self.free_vm_nics(uuid).await?;
            self.release_reservations(uuid, None).await?;
        }
        Ok((next, ng))
    }

    /// The most RAM and disk any one server has (what no VM can exceed), if any server exists.
    async fn largest_server(&self) -> Result<Option<(u64, u64)>, ApiError> {
        let servers: Vec<nereid_types::server::Server> = self.list(crate::buckets::SERVERS.name, &ListQuery::all()).await?;
        Ok(servers
            .iter()
            .map(|s| (s.ram, nereid_types::sysinfo::disk_mib(&s.sysinfo).unwrap_or(0)))
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1))))
    }

    /// Jobs, newest first, filtered.
    pub async fn list_jobs(&self, q: &Query, vm: Option<Uuid>) -> Result<Vec<Job>, ApiError> {
        let mut parts = Vec::new();
        if let Some(v) = vm.map(|u| u.to_string()).or(q.str("vm_uuid").map(str::to_string)) {
            parts.push(Filter::eq("vm_uuid", v));
        }
        if let Some(e) = q.str("execution") {
            parts.push(Filter::eq("execution", e));
        }
        if let Some(t) = q.str("task") {
            parts.push(Filter::eq("task", t));
        }
        self.list(
            crate::buckets::JOBS.name,
            &ListQuery::filter(Filter::and(parts)).sort(Path::field("created_ms"), Kind::Number, true).page(q.limit(1000), q.offset()),
        )
        .await
    }

    pub async fn get_job(&self, uuid: Uuid) -> Result<Job, ApiError> {
        self.read::<Job>(crate::buckets::JOBS.name, &uuid.to_string())
            .await?
            .map(|(j, _)| j)
            .ok_or_else(|| ApiError::not_found(format!("job {uuid} does not exist")))
    }

    /// Waits (at most `timeout`) for a job to finish; returns it as it is then.
    pub async fn wait_job(&self, uuid: Uuid, timeout: Duration) -> Result<Job, ApiError> {
        let end = Instant::now() + timeout;
        // Woken as soon as this headnode's runner ends the job; a job another headnode
        // runs is seen at the next look.
        let wake = self.job_waits.watch(uuid);
        let pace = || JOB_WAIT_POLL.min(end.saturating_duration_since(Instant::now()));
        super::wakeups::poll(&wake, pace, |_| async {
            match self.get_job(uuid).await {
                Ok(j) if !j.is_done() && Instant::now() < end => None,
                r => Some(r),
            }
        })
        .await
    }

    /// Counts for `/metrics`: VMs by state.
    pub async fn vm_state_counts(&self) -> Result<HashMap<String, i64>, ApiError> {
        let mut out = HashMap::new();
        for s in ["provisioning", "running", "stopped", "stopping", "failed", "destroyed"] {
            out.insert(s.to_string(), self.store.count(VMS.name, &Filter::eq("state", s)).await.map_err(store_error)?);
        }
        Ok(out)
    }
}

/// How often [`App::wait_job`] looks at the job record when nothing woke it.
const JOB_WAIT_POLL: Duration = Duration::from_millis(100);

/// Active VM records with a server: what placement counts.
pub fn placed_query() -> ListQuery {
    ListQuery::filter(Filter::and(vec![super::allocation::active_filter(), Filter::Present(Path::field("server_uuid"))]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_field_application_and_maps() {
        let mut vm: Vm = serde_json::from_value(json!({"uuid": Uuid::nil(), "ram": 1024, "tags": {"a": 1}})).unwrap();
        let fields = json!({"ram": 2048, "cpu_cap": 0, "alias": "x"});
        apply_fields(&mut vm, fields.as_object().unwrap()).unwrap();
        assert_eq!((vm.ram, vm.max_physical_memory, vm.cpu_cap, vm.alias.as_deref()), (Some(2048), Some(2048), None, Some("x")));
        assert!(apply_fields(&mut vm, json!({"uuid": "x"}).as_object().unwrap()).is_err());
        let m = merged_map(vm.tags.as_ref(), None, Some(&json!({"b": 2})), Some(&json!(["a"]))).unwrap();
        assert_eq!(Value::Object(m), json!({"b": 2}));
        assert!(merged_map(None, None, None, None).is_none());
    }
}
