//! Migrations (VMAPI's `migrate` action, CloudAPI's `…/migrate`): checking an action
//! against the migration's state as Triton does, placing the target, and queueing the
//! job that does the work (see [`crate::jobs::migrate`]).
//!
//! ```text
//!   begin     VM running or stopped, no open migration, user migration allowed ──►
//!             place (allocator: any server but the VM's own, or the operator's) ─►
//!             one transaction: claim + reservation on the target + record + job
//!   sync      record paused (begin or sync) ───────────────────────────► job
//!   switch    record paused after ≥ 1 sync ────────────────────────────► job
//!   pause     a running sync: asked through the record; the sync job stops it
//!   abort     record paused or failed ─────────────────────────────────► job
//!   finalize  record successful: the source's copy deleted, here and now
//! ```
//! Every refusal is Triton's 412 `PreconditionFailed` with Triton's words. A VM has one
//! open migration at a time; records stay as history.

use std::sync::Arc;
use std::time::Duration;

use nereid_alloc::{Locality, Request};
use nereid_store::{Cond, Filter, Kind, ListQuery, Op, Path, StoreError};
use nereid_types::ApiError;
use nereid_types::job::Job;
use nereid_types::migration::{Migration, ProgressEntry, USER_MIGRATION_NOT_ALLOWED, VMAPI_ACTIONS};
use nereid_types::vm::Vm;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::allocation::{Reservation, claim_op, explain, no_fit_error, reservation_op};
use super::{App, RETRIES, encode, store_error};
use crate::buckets::{MIGRATIONS, NETWORKS, NICS};
use crate::jobs::{job_op, new_job};

/// What a migration request asks.
#[derive(Debug, Clone, Default)]
pub struct MigrateRequest {
    /// VMAPI's `migration_action`.
    pub action: String,
    /// Begin, sync and switch in one job.
    pub automatic: bool,
    /// A tenant's request: the VM must be theirs, and user migrations allowed.
    pub owner: Option<Uuid>,
    /// Triton affinity rules for the target (begin).
    pub affinity: Vec<String>,
    /// The operator's target (`override_server_uuid`).
    pub target_server: Option<Uuid>,
    /// Stop, copy, start (operators).
    pub offline: bool,
    pub bandwidth_mbps: Option<u64>,
    /// `operator` or the account's login.
    pub requested_by: String,
}

/// What an accepted action answers.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateAnswer {
    pub migration: Migration,
    pub job_uuid: Option<Uuid>,
    /// `estimate`'s answer.
    pub estimate: Option<Value>,
}

/// `GET /migrations` filters.
#[derive(Debug, Clone, Default)]
pub struct MigrationQuery {
    pub owner: Option<Uuid>,
    pub vm: Option<Uuid>,
    pub state: Option<String>,
    /// Source or target.
    pub server: Option<Uuid>,
}

/// How long a migration job may take (its transfers have deadlines of their own).
pub const JOB_TIMEOUT_SECS: u64 = 24 * 3600;

/// Triton's 412.
pub fn precondition(message: impl Into<String>) -> ApiError {
    ApiError::new(412, "PreconditionFailed", message)
}

/// The 404 of a VM that was never migrated.
fn no_migration(vm: Uuid) -> ApiError {
    ApiError::not_found(format!("VM {vm} has no migration"))
}

/// The job task of an action.
pub fn task_of(action: &str, automatic: bool) -> &'static str {
    match (action, automatic) {
        ("begin", true) => "migrate-automatic",
        ("begin", false) => "migrate-begin",
        ("sync", _) => "migrate-sync",
        ("switch", _) => "migrate-switch",
        _ => "migrate-abort",
    }
}

/// Whether a tenant may migrate this VM (Triton: the cloud's switch, overridden by the VM's
/// `internal_metadata.user_migration_allowed`).
pub fn user_may_migrate(vm: &Vm, cloud_allows: bool) -> bool {
    match vm.internal_metadata.as_ref().and_then(|m| m.get("user_migration_allowed")) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => cloud_allows,
    }
}

/// Checks `begin` against the VM and its latest migration (pure).
pub fn check_begin(vm: &Vm, latest: Option<&Migration>, tenant: bool, cloud_allows: bool) -> Result<(), ApiError> {
    if tenant && !user_may_migrate(vm, cloud_allows) {
        return Err(precondition(USER_MIGRATION_NOT_ALLOWED));
    }
    if let Some(m) = latest {
        if m.state == "successful" && !m.is_finalized() && m.phase != "abort" {
            return Err(precondition("A previous migration exists for this instance, use migration finalize to complete it."));
        }
        if m.state == "running" || m.state == "paused" {
            return Err(precondition("An active migration already exists for this instance"));
        }
        if let Some(e) = &m.cleanup_error {
            return Err(precondition(format!(
                "The last migration of this instance could not remove what it made on the target ({e}): abort it first"
            )));
        }
    }
    let tags = vm.tags.as_ref();
    let tag = |k: &str| tags.and_then(|t| t.get(k)).and_then(Value::as_str);
    if tag("smartdc_type") == Some("core") && tag("smartdc_role") != Some("nat") {
        return Err(precondition("Cannot migrate a core instance"));
    }
    match vm.state.as_deref() {
        Some("running" | "stopped") => {}
        other => return Err(precondition(format!("Cannot migrate an instance that is {}", other.unwrap_or("in no state")))),
    }
    let snaps = vm.snapshot_names();
    if !snaps.is_empty() {
        return Err(precondition(format!(
            "Cannot migrate an instance with snapshots ({}): snapshots do not move between servers; delete them first",
            snaps.join(", ")
        )));
    }
    Ok(())
}

/// Checks an action other than begin against the migration (pure; Triton's rules).
pub fn check_action(action: &str, m: &Migration) -> Result<(), ApiError> {
    let (phase, state) = (m.phase.as_str(), m.state.as_str());
    let finished = m.is_finalized() || (phase == "abort" && state == "successful");
    if finished {
        return Err(precondition(format!(
            "The migration is over ({}); begin a new one",
            if m.is_finalized() { "finalized" } else { "aborted" }
        )));
    }
    match action {
        "abort" if state == "running" || state == "successful" => Err(precondition(format!("Abort cannot work on a {state} migration"))),
        "finalize" if state != "successful" => Err(precondition("Finalize only works on a successful migration")),
        "pause" if phase != "sync" || state != "running" => Err(precondition("Pause requires a running migration sync action")),
        "switch" if phase != "begin" && phase != "sync" => Err(precondition(format!("Cannot switch in migration phase: {phase}"))),
        "switch" if state != "paused" => Err(precondition(format!("Cannot switch in migration state: {state}"))),
        "switch" if m.num_sync_phases == 0 => {
            Err(precondition("You must perform at least one \"migration sync\" operation before switching"))
        }
        "sync" if state != "paused" => Err(precondition(format!("Cannot sync in migration state: {state}"))),
        "sync" if phase != "begin" && phase != "sync" => Err(precondition(format!("Cannot sync when in migration phase: {phase}"))),
        _ => Ok(()),
    }
}

/// A progress entry starting now.
pub fn entry(phase: &str, message: &str) -> ProgressEntry {
    ProgressEntry {
        kind: "progress".into(),
        phase: phase.into(),
        state: "running".into(),
        message: Some(message.into()),
        error: None,
        current_progress: 0,
        total_progress: 100,
        started_timestamp: nereid_types::time::now_iso(),
        finished_timestamp: None,
        duration_ms: None,
        transfer_bytes_second: None,
    }
}

/// `estimate`'s answer: what a migration of the VM moves (its disks and its memory).
pub fn estimate(vm: &Vm) -> Value {
    let disk = vm.disk_mib().unwrap_or(0) << 20;
    let ram = vm.ram_mib().unwrap_or(0) << 20;
    json!({"size": disk + ram, "disk_bytes": disk, "ram_bytes": ram})
}

/// A fresh secret for the two agents (256 bits, hex).
fn token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl App {
    /// The VM's latest migration and its generation.
    pub async fn latest_migration(&self, vm: Uuid) -> Result<Option<(Migration, i64)>, ApiError> {
        let q =
            ListQuery::filter(Filter::eq("vm_uuid", vm.to_string())).sort(Path::field("created_timestamp"), Kind::Text, true).page(1, 0);
        let Some(o) = self.store.list(MIGRATIONS.name, &q).await.map_err(store_error)?.into_iter().next() else { return Ok(None) };
        let m: Migration = serde_json::from_value(o.value)
            .map_err(|e| ApiError::internal(format!("migration record {} of VM {vm} does not decode: {e}", o.key)))?;
        Ok(Some((m, o.generation)))
    }

    /// A migration by its id, and its generation.
    pub async fn read_migration(&self, id: Uuid) -> Result<(Migration, i64), ApiError> {
        self.read(MIGRATIONS.name, &id.to_string()).await?.ok_or_else(|| ApiError::not_found(format!("migration {id} does not exist")))
    }

    /// The VM's latest migration; a tenant's only for their own VM ("VM not found" else).
    pub async fn vm_migration(&self, vm: Uuid, owner: Option<Uuid>) -> Result<Migration, ApiError> {
        match self.latest_migration(vm).await? {
            Some((m, _)) if owner.is_none_or(|o| o == m.owner_uuid) => Ok(m),
            Some(_) => Err(ApiError::not_found("VM not found")),
            None if owner.is_some() => Err(ApiError::not_found("VM not found")),
            None => Err(no_migration(vm)),
        }
    }

    /// Migrations, newest first.
    pub async fn list_migrations(&self, q: &MigrationQuery) -> Result<Vec<Migration>, ApiError> {
        let mut f = Vec::new();
        if let Some(o) = q.owner {
            f.push(Filter::eq("owner_uuid", o.to_string()));
        }
        if let Some(v) = q.vm {
            f.push(Filter::eq("vm_uuid", v.to_string()));
        }
        if let Some(s) = &q.state {
            f.push(Filter::eq("state", s.clone()));
        }
        if let Some(s) = q.server {
            f.push(Filter::Or(vec![Filter::eq("source_server_uuid", s.to_string()), Filter::eq("target_server_uuid", s.to_string())]));
        }
        let lq = ListQuery::filter(Filter::and(f)).sort(Path::field("created_timestamp"), Kind::Text, true);
        self.list(MIGRATIONS.name, &lq).await
    }

    /// The migrations that hold something on `server` (running, paused, or switched and
    /// not finalized), for `GET /servers/{uuid}` and placement's explanations.
    pub async fn open_migrations_on(&self, server: Uuid) -> Result<Vec<Migration>, ApiError> {
        let q = MigrationQuery { server: Some(server), ..Default::default() };
        Ok(self.list_migrations(&q).await?.into_iter().filter(holds_something).collect())
    }

    /// Changes a migration record, retrying on concurrent change.
    pub async fn modify_migration(&self, id: Uuid, mut f: impl FnMut(&mut Migration)) -> Result<Migration, ApiError> {
        for _ in 0..RETRIES * 2 {
            let (mut m, g) = self.read_migration(id).await?;
            f(&mut m);
            match self.store.put(MIGRATIONS.name, &id.to_string(), encode(&m), Cond::Generation(g)).await {
                Ok(_) => return Ok(m),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("migration {id} kept changing; retry")))
    }

    /// VMAPI's `migrate` action.
    pub async fn migrate(&self, vm_uuid: Uuid, req: MigrateRequest) -> Result<MigrateAnswer, ApiError> {
        if !VMAPI_ACTIONS.contains(&req.action.as_str()) {
            return Err(ApiError::new(409, "InvalidArgument", "Invalid migration action"));
        }
        let _one_at_a_time = self.vm_locks.lock(&vm_uuid.to_string()).await;
        let (vm, _) = self.get_vm(vm_uuid, req.owner).await?;
        let latest = self.latest_migration(vm_uuid).await?;
        match req.action.as_str() {
            "begin" => self.migration_begin(&vm, latest.map(|l| l.0), &req).await,
            "estimate" => {
                check_begin(&vm, latest.as_ref().map(|l| &l.0), req.owner.is_some(), self.cfg.migration.user_migration_allowed)?;
                Ok(MigrateAnswer { migration: blank(&vm, "estimate"), job_uuid: None, estimate: Some(estimate(&vm)) })
            }
            action => {
                let Some((m, g)) = latest else {
                    return Err(no_migration(vm_uuid));
                };
                check_action(action, &m)?;
                match action {
                    "finalize" => self.migration_finalize(m).await,
                    "pause" => {
                        let m = self
                            .modify_migration(m.id, |m| {
                                m.action = "pause".into();
                            })
                            .await?;
                        Ok(MigrateAnswer { job_uuid: m.job_uuid, migration: m, estimate: None })
                    }
                    _ => self.migration_job(m, g, action, &req).await,
                }
            }
        }
    }

    /// Begin: places the target and writes claim, reservation, record and job in one
    /// transaction (nothing is written when nothing fits).
    async fn migration_begin(&self, vm: &Vm, latest: Option<Migration>, req: &MigrateRequest) -> Result<MigrateAnswer, ApiError> {
        check_begin(vm, latest.as_ref(), req.owner.is_some(), self.cfg.migration.user_migration_allowed)?;
        let source = vm.server_uuid.ok_or_else(|| precondition(format!("VM {} has no server", vm.uuid)))?;
        let owner = vm.owner_uuid.ok_or_else(|| precondition(format!("VM {} has no owner", vm.uuid)))?;
        if req.target_server == Some(source) {
            return Err(precondition(format!("VM {} is on server {source} already: name another server", vm.uuid)));
        }
        let nic_tags = self.vm_nic_tags(vm).await?;
        let ram = vm.ram_mib().unwrap_or(0);
        let disk = vm.disk_mib().unwrap_or(0);
        let mut locality = Locality { strict: true, near: Vec::new(), far: vec![vm.uuid] };
        if !req.affinity.is_empty() {
            let bad = |m| ApiError::validation_409(vec![nereid_types::FieldError::invalid("affinity", m)]);
            let rules = crate::cloudapi::render::affinity_rules(&json!(req.affinity)).map_err(bad)?;
            let mine = self.owner_active_vms(owner).await?;
            if let Some(loc) = crate::cloudapi::render::locality(&rules, &mine).map_err(bad)? {
                let extra = loc.as_object().map(super::vms::locality_of).unwrap_or_default();
                locality.near = extra.near;
                locality.far.extend(extra.far);
            }
        }
        let request = Request {
            vm_uuid: vm.uuid,
            owner,
            ram_mib: ram,
            disk_mib: disk,
            vcpus: vm.vcpus.unwrap_or(1),
            cpu_cap: vm.cpu_cap,
            traits: Map::new(),
            nic_tags,
            locality,
            server: req.target_server,
            spread: None,
        };
        let now = nereid_types::time::now_iso();
        let _serial = self.alloc_lock.lock().await;
        let mut rng = rand::rngs::StdRng::from_os_rng();
        for _ in 0..RETRIES * 4 {
            let view = self.placement_view().await?;
            let alloc_cfg = nereid_alloc::Config { underlay_tag: Some(self.cfg.fabric.underlay_tag.clone()), ..self.cfg.alloc.clone() };
            let placement = match nereid_alloc::allocate(&view.servers, &request, &alloc_cfg, &mut rng) {
                Ok(p) => p,
                Err(nf) => return Err(no_fit_error(&nf)),
            };
            let target = placement.server;
            // Always a new record (and id): the agents know a migration by its id, and one
            // that failed and was unwound is over for them.
            let mut m = blank(vm, "begin");
            m.automatic = req.automatic;
            m.started_timestamp = Some(now.clone());
            m.target_server_uuid = Some(target);
            m.mechanism = if req.offline { "offline".into() } else { "live".into() };
            m.bandwidth_mbps = req.bandwidth_mbps.or(self.cfg.migration.bandwidth_mbps);
            m.requested_by = Some(req.requested_by.clone());
            m.placement = Some(explain(&placement));
            m.token = token();
            let job = job_of(task_of("begin", req.automatic), &m);
            m.job_uuid = Some(job.uuid);
            let res = Reservation {
                job_uuid: m.id,
                vm_uuid: vm.uuid,
                server_uuid: target,
                owner_uuid: owner,
                ram_mib: ram,
                disk_mib: disk,
                cpu_cap: vm.cpu_cap,
                kind: "migration".into(),
            };
            let ops = vec![
                claim_op(target, view.claims.get(&target).copied()),
                reservation_op(&res),
                Op::put(MIGRATIONS.name, m.id.to_string(), encode(&m), Cond::Any),
                job_op(&job),
            ];
            match self.store.batch(ops).await {
                Ok(_) => {
                    self.jobs_notify.notify_one();
                    tracing::info!(vm = %vm.uuid, %source, %target, migration = %m.id, "migration begun");
                    return Ok(MigrateAnswer { job_uuid: Some(job.uuid), migration: m, estimate: None });
                }
                Err(StoreError::Conflict { op_index: 0, .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::unavailable("placement kept racing with other provisions; retry"))
    }

    /// The nic tags the VM's NICs need on a target (fabric NICs: the underlay).
    async fn vm_nic_tags(&self, vm: &Vm) -> Result<Vec<Vec<String>>, ApiError> {
        let nics: Vec<nereid_types::nic::Nic> =
            self.list(NICS.name, &ListQuery::filter(Filter::eq("belongs_to_uuid", vm.uuid.to_string()))).await?;
        let mut out = Vec::new();
        for n in nics {
            let fabric = match n.network_uuid {
                Some(net) => {
                    self.read::<nereid_types::network::Network>(NETWORKS.name, &net.to_string()).await?.is_some_and(|(n, _)| n.fabric)
                }
                None => false,
            };
            match (fabric, n.nic_tag) {
                (true, _) => out.push(vec![self.cfg.fabric.underlay_tag.clone()]),
                (false, Some(t)) => out.push(vec![t]),
                (false, None) => {}
            }
        }
        Ok(out)
    }

    /// Queues the job of sync, switch or abort, marking the record running.
    async fn migration_job(&self, m: Migration, g: i64, action: &str, req: &MigrateRequest) -> Result<MigrateAnswer, ApiError> {
        let job = job_of(task_of(action, false), &m);
        let mut next = m.clone();
        next.action = action.into();
        next.state = "running".into();
        next.job_uuid = Some(job.uuid);
        next.requested_by = Some(req.requested_by.clone());
        next.error = None;
        if req.offline {
            next.mechanism = "offline".into();
        }
        if req.bandwidth_mbps.is_some() {
            next.bandwidth_mbps = req.bandwidth_mbps;
        }
        let ops = vec![Op::put(MIGRATIONS.name, m.id.to_string(), encode(&next), Cond::Generation(g)), job_op(&job)];
        match self.store.batch(ops).await {
            Ok(_) => {
                self.jobs_notify.notify_one();
                Ok(MigrateAnswer { job_uuid: Some(job.uuid), migration: next, estimate: None })
            }
            Err(e) if e.is_conflict() => Err(ApiError::conflict("ConcurrentModification", "the migration changed meanwhile; retry")),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Finalize: the source's stopped copy is deleted; the record stays as history.
    async fn migration_finalize(&self, m: Migration) -> Result<MigrateAnswer, ApiError> {
        match self.agent_delete(m.source_server_uuid, m.vm_uuid).await {
            Ok(_) => {}
            Err(e) => {
                return Err(ApiError::unavailable(format!("Migration finalize failed: the source server could not delete its copy: {e}")));
            }
        }
        // The agent deletes in the background: wait (briefly) until it is gone.
        let deadline = std::time::Instant::now() + self.cfg.step_deadline;
        loop {
            match self.agent_get(m.source_server_uuid, m.vm_uuid).await {
                Ok(None) => break,
                Ok(Some(st)) if st.state == "destroyed" => break,
                _ if std::time::Instant::now() > deadline => {
                    return Err(ApiError::unavailable("Migration finalize failed: the source server has not deleted its copy yet; retry"));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let now = nereid_types::time::now_iso();
        let m = self
            .modify_migration(m.id, |m| {
                m.action = "finalize".into();
                m.state = "successful".into();
                m.finished_timestamp = Some(now.clone());
            })
            .await?;
        Ok(MigrateAnswer { migration: m, job_uuid: None, estimate: None })
    }

    /// `DELETE /migrations/{vm}`: Triton's escape hatch, removing the VM's latest record
    /// (only when no job works on it and it holds nothing anywhere).
    pub async fn delete_migration_record(&self, vm: Uuid) -> Result<(), ApiError> {
        let Some((m, g)) = self.latest_migration(vm).await? else {
            return Err(no_migration(vm));
        };
        if m.state == "running" {
            return Err(precondition("Cannot delete a running migration: pause it (sync) or wait for it"));
        }
        if holds_something(&m) {
            return Err(precondition(format!("The migration still holds resources ({} {}): abort or finalize it first", m.phase, m.state)));
        }
        self.store.delete(MIGRATIONS.name, &m.id.to_string(), Cond::Generation(g)).await.map_err(store_error)
    }
}

/// Whether a migration holds anything on its servers: a target (running or paused) or a
/// source copy waiting for finalize.
pub fn holds_something(m: &Migration) -> bool {
    match m.state.as_str() {
        "running" | "paused" => true,
        "failed" => m.cleanup_error.is_some(),
        "successful" => m.phase == "switch" && !m.is_finalized(),
        _ => false,
    }
}

/// The job of `task` for the migration (on its source, for its owner).
fn job_of(task: &str, m: &Migration) -> Job {
    let params = Map::from_iter([("migration".to_string(), json!(m.id))]);
    let mut job = new_job(task, m.vm_uuid, Some(m.source_server_uuid), Some(m.owner_uuid), params);
    job.timeout = JOB_TIMEOUT_SECS;
    job
}

/// A new record for the VM.
fn blank(vm: &Vm, action: &str) -> Migration {
    Migration {
        id: Uuid::new_v4(),
        vm_uuid: vm.uuid,
        owner_uuid: vm.owner_uuid.unwrap_or_default(),
        source_server_uuid: vm.server_uuid.unwrap_or_default(),
        target_server_uuid: None,
        target_vm_uuid: vm.uuid,
        automatic: false,
        action: action.into(),
        phase: "begin".into(),
        state: "running".into(),
        num_sync_phases: 0,
        created_timestamp: nereid_types::time::now_iso(),
        started_timestamp: None,
        finished_timestamp: None,
        error: None,
        progress_history: Vec::new(),
        mechanism: "live".into(),
        job_uuid: None,
        requested_by: None,
        placement: None,
        bandwidth_mbps: None,
        pause_ms: None,
        cleanup_error: None,
        token: String::new(),
    }
}

/// The watch stream of the VM's migration: NDJSON lines, Triton's — the running entry
/// (if any), each progress entry as it changes, then one `end` line once the record is
/// no longer running. The receiver closes after the end line (or when the client goes).
pub async fn watch(app: Arc<App>, vm: Uuid, owner: Option<Uuid>) -> Result<tokio::sync::mpsc::Receiver<String>, ApiError> {
    let first = app.vm_migration(vm, owner).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut sent: Vec<ProgressEntry> = Vec::new();
        let mut m = first;
        let started = std::time::Instant::now();
        // The first look: only the entry still running is news.
        let mut skip = m.progress_history.len();
        if m.progress_history.last().is_some_and(|e| e.state == "running") {
            skip -= 1;
        }
        sent.extend(m.progress_history.iter().take(skip).cloned());
        let mut quiet_since = std::time::Instant::now();
        loop {
            let now_ms = nereid_types::time::now_ms();
            for (i, e) in m.progress_history.iter().enumerate() {
                if sent.get(i) == Some(e) {
                    continue;
                }
                let mut e = e.clone();
                e.duration_ms = Some(nereid_types::migration::entry_duration_ms(&e, now_ms));
                if tx.send(line(&e)).await.is_err() {
                    return;
                }
                quiet_since = std::time::Instant::now();
                if i < sent.len() {
                    sent[i] = m.progress_history[i].clone();
                } else {
                    sent.push(m.progress_history[i].clone());
                }
            }
            // A job queued a moment ago may not have marked the record yet: the record is
            // running from the request on, so a non-running state is final.
            if m.state != "running" {
                let _ = tx.send(format!("{}\n", nereid_types::migration::end_event(&m))).await;
                return;
            }
            if quiet_since.elapsed() > Duration::from_secs(60) {
                // Triton repeats the last event once a minute so proxies keep the stream.
                if let Some(last) = m.progress_history.last() {
                    let _ = tx.send(line(last)).await;
                }
                quiet_since = std::time::Instant::now();
            }
            if started.elapsed() > Duration::from_secs(24 * 3600) || tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            match app.latest_migration(vm).await {
                Ok(Some((next, _))) if next.id == m.id => m = next,
                Ok(_) => {
                    let _ = tx
                        .send(format!(
                            "{}\n",
                            json!({"type": "end", "phase": m.phase, "state": "unknown", "message": "the migration record is gone"})
                        ))
                        .await;
                    return;
                }
                Err(_) => continue,
            }
        }
    });
    Ok(rx)
}

/// A watch line: the entry as Triton's NDJSON.
fn line(e: &ProgressEntry) -> String {
    format!("{}\n", serde_json::to_string(e).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn vm(state: &str) -> Vm {
        let mut v: Vm = serde_json::from_value(json!({"uuid": Uuid::new_v4(), "state": state, "brand": "bhyve", "ram": 256})).unwrap();
        v.server_uuid = Some(Uuid::new_v4());
        v
    }

    fn rec(phase: &str, state: &str, syncs: u32) -> Migration {
        let mut m = blank(&vm("running"), "begin");
        m.phase = phase.into();
        m.state = state.into();
        m.num_sync_phases = syncs;
        m
    }

    #[test]
    fn user_migration_follows_the_cloud_unless_the_vm_says() {
        let mut v = vm("running");
        assert_eq!(check_begin(&v, None, true, false).unwrap_err().message, USER_MIGRATION_NOT_ALLOWED);
        assert!(check_begin(&v, None, false, false).is_ok(), "operators always may");
        v.internal_metadata = Some(Map::from_iter([("user_migration_allowed".to_string(), json!(true))]));
        assert!(check_begin(&v, None, true, false).is_ok());
        v.internal_metadata = Some(Map::from_iter([("user_migration_allowed".to_string(), json!(false))]));
        assert_eq!(check_begin(&v, None, true, true).unwrap_err().status, 412);
    }

    #[test]
    fn begin_refuses_an_open_migration_and_odd_states() {
        let v = vm("running");
        assert!(check_begin(&v, Some(&rec("sync", "paused", 1)), false, true).unwrap_err().message.contains("active migration"));
        assert!(check_begin(&v, Some(&rec("switch", "successful", 1)), false, true).unwrap_err().message.contains("finalize"));
        assert!(check_begin(&v, Some(&rec("sync", "failed", 1)), false, true).is_ok(), "a failed migration left nothing");
        assert!(check_begin(&vm("provisioning"), None, false, true).is_err());
    }

    #[test]
    fn actions_follow_tritons_state_rules() {
        assert!(check_action("switch", &rec("begin", "paused", 0)).unwrap_err().message.contains("at least one"));
        assert!(check_action("switch", &rec("sync", "paused", 1)).is_ok());
        assert!(check_action("switch", &rec("sync", "running", 1)).unwrap_err().message.contains("state: running"));
        assert!(check_action("finalize", &rec("sync", "paused", 1)).unwrap_err().message.contains("successful"));
        assert!(check_action("finalize", &rec("switch", "successful", 1)).is_ok());
        assert!(check_action("abort", &rec("sync", "running", 1)).unwrap_err().message.contains("running"));
        assert!(check_action("abort", &rec("begin", "paused", 0)).is_ok());
        assert!(check_action("pause", &rec("begin", "running", 0)).is_err());
        assert!(check_action("pause", &rec("sync", "running", 0)).is_ok());
        assert!(check_action("sync", &rec("begin", "paused", 0)).is_ok());
        assert!(check_action("sync", &rec("switch", "failed", 1)).is_err());
    }

    #[test]
    fn what_holds_resources() {
        let mut unclean = rec("sync", "failed", 1);
        unclean.cleanup_error = Some("server down".into());
        assert!(holds_something(&unclean), "a target that could not be removed is still held");
        assert!(check_begin(&vm("running"), Some(&unclean), false, true).unwrap_err().message.contains("abort it first"));
        assert!(check_action("abort", &unclean).is_ok());
        assert!(holds_something(&rec("sync", "paused", 1)));
        assert!(holds_something(&rec("switch", "successful", 1)));
        assert!(!holds_something(&rec("sync", "failed", 1)));
        assert!(!holds_something(&rec("abort", "successful", 0)));
    }
}
