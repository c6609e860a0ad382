//! The migration jobs (`migrate-begin`, `-sync`, `-switch`, `-automatic`, `-abort`): the
//! headnode's half of a migration, driving the source's and the target's agents with
//! orders (see [`nereid_types::migration`]) and keeping the record and its progress.
//!
//! ```text
//!   begin:     check ─► prepare target ─► prepare source ─► begun (paused)
//!   sync:      check ─► sync ─► synced (paused)          (a pause asked meanwhile stops it)
//!   switch:    check ─► switch ─► commit ─► resume target ─► release source ─► switched
//!   automatic: all of the above in one chain
//!   abort:     check ─► abort (target removed, source told, capacity given back)
//!
//!   undo of check (any failure): the source runs on (resumed if the switch paused it),
//!   the target's VM removed, the reservation dropped, the record `failed` with the phase
//!   and the reason.   undo of commit: the VM record and NICs back on the source.
//! ```
//! The commit is the one moment the VM changes servers: its record (`server_uuid`, the
//! agent generation it expects, which the target's counter starts again) and the target's
//! reservation change in one transaction; its NICs follow. Until the target runs the guest,
//! the source can take it back; once it does (resume target), nothing unwinds.

use std::time::Duration;

use async_trait::async_trait;
use nereid_store::{Cond, Op};
use nereid_types::agent::Desired;
use nereid_types::job::Job;
use nereid_types::migration::{AgentProgress, Migration, Order, ProgressEntry, Role, Step as AStep};
use nereid_types::vm::Vm;
use serde_json::json;
use uuid::Uuid;

use super::{Step, StepResultT, data, param};
use crate::app::migrations::entry;
use crate::app::{App, encode, store_error};
use crate::buckets::{RESERVATIONS, VMS};

/// How long the data of a sync or switch may take to move.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// How often the agents are asked how it goes.
const POLL: Duration = Duration::from_millis(300);

pub fn chain(task: &str) -> Vec<Box<dyn Step>> {
    let begin: Vec<Box<dyn Step>> = vec![Box::new(PrepareTarget), Box::new(PrepareSource), Box::new(Begun)];
    let sync: Vec<Box<dyn Step>> = vec![Box::new(Sync), Box::new(Synced)];
    let switch: Vec<Box<dyn Step>> =
        vec![Box::new(Switch), Box::new(Commit), Box::new(ResumeTarget), Box::new(ReleaseSource), Box::new(Switched)];
    let mut out: Vec<Box<dyn Step>> = vec![Box::new(Check)];
    match task {
        "migrate-begin" => out.extend(begin),
        "migrate-sync" => out.extend(sync),
        "migrate-switch" => out.extend(switch),
        "migrate-automatic" => {
            out.extend(begin);
            out.extend(sync);
            out.extend(switch);
        }
        _ => out.push(Box::new(Abort)),
    }
    out
}

fn migration_id(job: &Job) -> Result<Uuid, String> {
    param::<Uuid>(job, "migration").ok_or_else(|| "the job names no migration".to_string())
}

async fn record(app: &App, job: &Job) -> Result<Migration, String> {
    Ok(app.read_migration(migration_id(job)?).await.map_err(|e| e.message)?.0)
}

fn target_of(m: &Migration) -> Result<Uuid, String> {
    m.target_server_uuid.ok_or_else(|| "the migration has no target server".to_string())
}

/// Whether a pause stopped this job's sync (the rest of an automatic chain then waits).
fn paused(job: &Job) -> bool {
    data::<bool>(job, "paused") == Some(true)
}

/// The order for one side, as the record alone says it (no VM, no peer).
fn bare_order(m: &Migration, role: Role, step: AStep) -> Order {
    Order {
        migration: m.id,
        role,
        step,
        token: m.token.clone(),
        live: m.mechanism != "offline",
        ensure: None,
        peer: None,
        peer_server: None,
        bandwidth_mbps: m.bandwidth_mbps,
    }
}

/// The order for one side: the target's prepare and resume say how the VM is to be
/// there; the source's name the target's migration address.
async fn order(app: &App, m: &Migration, role: Role, step: AStep) -> Result<Order, String> {
    let target = target_of(m)?;
    let mut o = bare_order(m, role, step);
    match role {
        Role::Target if step == AStep::Prepare => {
            let (vm, _) = app.get_vm(m.vm_uuid, None).await.map_err(|e| e.message)?;
            let mut e = vm.ensure(Desired::Stopped, None)?;
            e.snapshots.clear();
            e.rollback_to = None;
            o.ensure = Some(e);
        }
        Role::Target if step == AStep::Resume => {
            // The state the VM is to be in there: a VM stopped when it left stays stopped.
            let (vm, _) = app.get_vm(m.vm_uuid, None).await.map_err(|e| e.message)?;
            o.ensure = Some(vm.ensure(desired_there(&vm), None)?);
        }
        Role::Source => {
            let (srv, _) = app.get_server_record(target).await.map_err(|e| e.message)?;
            let addr = nereid_types::sysinfo::migration_address(&srv.sysinfo).ok_or_else(|| {
                format!("the target server {} ({target}) reports no migration address: is its agent up to date?", srv.hostname)
            })?;
            o.peer = Some(addr);
            o.peer_server = Some(target);
        }
        Role::Target => {}
    }
    Ok(o)
}

/// How the VM is to be on the target: a VM stopped when it left stays stopped.
fn desired_there(vm: &Vm) -> Desired {
    if vm.desired_state.as_deref() == Some("stopped") { Desired::Stopped } else { Desired::Running }
}

/// What a driven order does between polls besides waiting (nothing, for `()`).
#[async_trait]
trait Watch: Send {
    /// An answer of the order's own step, not failed (done or not).
    async fn progress(&mut self, _p: &AgentProgress) {}
    /// Between two polls, the side not done yet: whether to stop driving it now.
    async fn stop(&mut self) -> Result<bool, String> {
        Ok(false)
    }
}

impl Watch for () {}

/// A transfer's watch: the agent's progress goes into the record's running entry; a
/// sync's also looks (every other poll) for a pause asked through the record, and then
/// pauses the source and stops.
struct Transfer<'a> {
    app: &'a App,
    job: &'a Job,
    m: &'a Migration,
    /// The sync order, which a pause asked through the record stops (none for a switch).
    pausable: Option<&'a Order>,
    tick: u32,
    /// Whether a pause stopped it.
    paused: bool,
}

impl<'a> Transfer<'a> {
    fn new(app: &'a App, job: &'a Job, m: &'a Migration, pausable: Option<&'a Order>) -> Self {
        Transfer { app, job, m, pausable, tick: 0, paused: false }
    }
}

#[async_trait]
impl Watch for Transfer<'_> {
    async fn progress(&mut self, p: &AgentProgress) {
        note_progress(self.app, self.job, p).await;
    }
    async fn stop(&mut self) -> Result<bool, String> {
        let Some(o) = self.pausable else { return Ok(false) };
        self.tick += 1;
        if !self.tick.is_multiple_of(2) {
            return Ok(false);
        }
        let (cur, _) = self.app.read_migration(self.m.id).await.map_err(|e| e.message)?;
        if cur.action != "pause" {
            return Ok(false);
        }
        let po = Order { step: AStep::Pause, ..o.clone() };
        drive(self.app, self.m.source_server_uuid, self.m.vm_uuid, &po, &mut ()).await?;
        self.paused = true;
        Ok(true)
    }
}

/// Gives `server` the order again and again (idempotent) until its side is done, or
/// `watch` stops it; the last answer. A failed side is an error with the agent's reason.
async fn drive(app: &App, server: Uuid, vm: Uuid, o: &Order, watch: &mut dyn Watch) -> Result<AgentProgress, String> {
    loop {
        let p = app.agent_migration(server, vm, o).await.map_err(|e| e.to_string())?;
        if p.migration == o.migration && p.step == o.step {
            if p.is_failed() {
                return Err(p.error.clone().unwrap_or_else(|| format!("{:?} failed on server {server}", o.step)));
            }
            watch.progress(&p).await;
            if p.is_done() {
                return Ok(p);
            }
        }
        if watch.stop().await? {
            return Ok(p);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Starts a phase in the record (idempotent: a phase already running stays as it is).
async fn start_phase(app: &App, job: &Job, phase: &str, message: &str) -> Result<Migration, String> {
    let id = migration_id(job)?;
    app.modify_migration(id, |m| {
        m.state = "running".into();
        if m.phase == phase && m.progress_history.last().is_some_and(|e| e.phase == phase && e.state == "running") {
            return;
        }
        m.phase = phase.into();
        m.progress_history.push(entry(phase, message));
    })
    .await
    .map_err(|e| e.message)
}

/// Ends the running phase: its entry `successful` with `message`, the record in `state`.
async fn end_phase(app: &App, job: &Job, state: &str, message: &str, change: impl Fn(&mut Migration)) -> Result<Migration, String> {
    let id = migration_id(job)?;
    let now = nereid_types::time::now_iso();
    app.modify_migration(id, |m| {
        if let Some(e) = close_running(m, "successful", &now) {
            e.message = Some(message.into());
            e.current_progress = e.total_progress;
        }
        m.state = state.into();
        m.finished_timestamp = Some(now.clone());
        change(m);
    })
    .await
    .map_err(|e| e.message)
}

/// Ends the record's running progress entry (if any) as `state`, now; the entry, for
/// its message or error.
fn close_running<'m>(m: &'m mut Migration, state: &str, now: &str) -> Option<&'m mut ProgressEntry> {
    let e = m.progress_history.last_mut().filter(|e| e.state == "running")?;
    e.state = state.into();
    e.finished_timestamp = Some(now.into());
    e.transfer_bytes_second = None;
    Some(e)
}

/// Writes the agent's progress into the running entry (bytes done of bytes total).
async fn note_progress(app: &App, job: &Job, p: &AgentProgress) {
    let Ok(id) = migration_id(job) else { return };
    let _ = app
        .modify_migration(id, |m| {
            if let Some(e) = m.progress_history.last_mut().filter(|e| e.state == "running") {
                if p.bytes_total > 0 {
                    e.total_progress = p.bytes_total;
                    e.current_progress = p.bytes_done.min(p.bytes_total);
                }
                e.transfer_bytes_second = (p.rate > 0).then_some(p.rate);
            }
        })
        .await;
}

/// The reason the job unwinds: the last step's error.
fn failure(job: &Job) -> String {
    job.chain_results
        .iter()
        .rev()
        .find(|r| !r.error.is_empty())
        .map(|r| r.error.clone())
        .or_else(|| job.error.clone())
        .unwrap_or_else(|| "the job failed".into())
}

/// Whether the target's agent runs the guest already (its `resume` is done): from then on
/// the migration only goes forward — nothing may take the VM back to the source.
async fn target_runs(app: &App, m: &Migration) -> bool {
    let Some(target) = m.target_server_uuid else { return false };
    matches!(
        app.agent_migration_progress(target, m.vm_uuid).await,
        Ok(Some(p)) if p.migration == m.id && p.step == AStep::Resume && p.is_done()
    )
}

/// Removes the target's VM and tells the source to forget the migration (each side's
/// abort is idempotent; a side that cannot be reached is an error, the job retries).
async fn clean_up(app: &App, m: &Migration) -> Result<(), String> {
    if let Some(target) = m.target_server_uuid {
        let o = bare_order(m, Role::Target, AStep::Abort);
        drive(app, target, m.vm_uuid, &o, &mut ()).await.map_err(|e| format!("removing the VM from the target server {target}: {e}"))?;
        let o = bare_order(m, Role::Source, AStep::Abort);
        drive(app, m.source_server_uuid, m.vm_uuid, &o, &mut ())
            .await
            .map_err(|e| format!("telling the source server {} to forget the migration: {e}", m.source_server_uuid))?;
    }
    app.release_reservations(m.vm_uuid, Some(m.id)).await.map_err(|e| e.message)?;
    Ok(())
}

/// Tells the source to stop its copy of the migrated VM (kept until finalize). Past the
/// point of no return, so only said: the error is what to tell (finalize deletes it anyway).
async fn release_source(app: &App, m: &Migration) -> Result<(), String> {
    let o = order(app, m, Role::Source, AStep::Release)
        .await
        .map_err(|e| format!("the source was not told to release the VM ({e}); finalize deletes it"))?;
    drive(app, m.source_server_uuid, m.vm_uuid, &o, &mut ()).await.map_err(|e| {
        tracing::warn!(vm = %m.vm_uuid, error = %e, "the source did not release the migrated VM");
        format!("the source did not release the VM ({e}); finalize deletes it")
    })?;
    Ok(())
}

struct Check;

#[async_trait]
impl Step for Check {
    fn name(&self) -> &'static str {
        "check"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = record(app, job).await?;
        let (vm, _) = app.get_vm(m.vm_uuid, None).await.map_err(|e| e.message)?;
        Ok(format!(
            "migration {} of VM {} ({}) from {} to {}",
            m.id,
            vm.uuid,
            vm.alias.as_deref().unwrap_or("no alias"),
            m.source_server_uuid,
            m.target_server_uuid.map(|t| t.to_string()).unwrap_or_else(|| "(none)".into())
        ))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = record(app, job).await?;
        if job.task == "migrate-abort" {
            // An abort that fails keeps the record as it was (paused or failed): retryable.
            let why = failure(job);
            app.modify_migration(m.id, |r| {
                r.state = if r.state == "running" { "failed".into() } else { r.state.clone() };
                r.error = Some(format!("abort failed: {why}"));
            })
            .await
            .map_err(|e| e.message)?;
            return Ok("abort failed; the record says why".into());
        }
        let why = failure(job);
        let now = nereid_types::time::now_iso();
        if target_runs(app, &m).await {
            // Past the point of no return: the guest runs on the target. Forward only.
            let target = target_of(&m)?;
            move_record(app, m.vm_uuid, target, Some(m.id)).await?;
            let _ = release_source(app, &m).await;
            app.modify_migration(m.id, |r| {
                if let Some(e) = close_running(r, "successful", &now) {
                    e.message = Some(format!("switched; the VM runs on the target (the job's last steps failed: {why})"));
                }
                r.phase = "switch".into();
                r.state = "successful".into();
                r.finished_timestamp = Some(now.clone());
            })
            .await
            .map_err(|e| e.message)?;
            return Ok(format!("the VM runs on the target {target}: the migration is switched, not unwound"));
        }
        let cleanup = clean_up(app, &m).await.err();
        let phase = m.phase.clone();
        app.modify_migration(m.id, |r| {
            if let Some(e) = close_running(r, "failed", &now) {
                e.error = Some(why.clone());
            }
            r.state = "failed".into();
            r.error = Some(format!("{phase} failed: {why}"));
            r.cleanup_error = cleanup.clone();
            r.finished_timestamp = Some(now.clone());
        })
        .await
        .map_err(|e| e.message)?;
        Ok(match cleanup {
            None => format!("{phase} failed and was unwound: the VM stays on {}, nothing is left on the target", m.source_server_uuid),
            Some(e) => format!(
                "{phase} failed; the VM stays on {}, but the target could not be cleaned up ({e}): abort retries it",
                m.source_server_uuid
            ),
        })
    }
}

struct PrepareTarget;

#[async_trait]
impl Step for PrepareTarget {
    fn name(&self) -> &'static str {
        "prepare target"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.provision_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = start_phase(app, job, "begin", "preparing the instance on the target server").await?;
        let target = target_of(&m)?;
        let o = order(app, &m, Role::Target, AStep::Prepare).await?;
        drive(app, target, m.vm_uuid, &o, &mut ())
            .await
            .map_err(|e| format!("the target server {target} could not prepare the VM: {e}"))?;
        Ok(format!("the VM is ready on the target server {target}"))
    }
}

struct PrepareSource;

#[async_trait]
impl Step for PrepareSource {
    fn name(&self) -> &'static str {
        "prepare source"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = record(app, job).await?;
        let o = order(app, &m, Role::Source, AStep::Prepare).await?;
        drive(app, m.source_server_uuid, m.vm_uuid, &o, &mut ())
            .await
            .map_err(|e| format!("the source server {} could not prepare: {e}", m.source_server_uuid))?;
        Ok(format!("the source server {} sends to {}", m.source_server_uuid, o.peer.unwrap_or_default()))
    }
}

struct Begun;

#[async_trait]
impl Step for Begun {
    fn name(&self) -> &'static str {
        "begun"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let automatic = job.task == "migrate-automatic";
        end_phase(app, job, if automatic { "running" } else { "paused" }, "the instance is ready on the target server", |_| {}).await?;
        Ok("begin done".into())
    }
}

struct Sync;

#[async_trait]
impl Step for Sync {
    fn name(&self) -> &'static str {
        "sync"
    }
    fn deadline(&self, _app: &App) -> Duration {
        TRANSFER_DEADLINE
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = start_phase(app, job, "sync", "syncing the disks").await?;
        let o = order(app, &m, Role::Source, AStep::Sync).await?;
        // Progress, and a pause asked through the record, are looked at between polls.
        let mut watch = Transfer::new(app, job, &m, Some(&o));
        let p = drive(app, m.source_server_uuid, m.vm_uuid, &o, &mut watch).await?;
        let pause = watch.paused;
        if pause {
            job.data.insert("paused".into(), json!(true));
            end_phase(app, job, "paused", "sync paused", |m| m.action = "sync".into()).await?;
            return Ok("paused on request".into());
        }
        Ok(format!("the disks are in sync ({} bytes)", p.bytes_total))
    }
}

struct Synced;

#[async_trait]
impl Step for Synced {
    fn name(&self) -> &'static str {
        "synced"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if paused(job) {
            return Ok("paused".into());
        }
        // A pause asked as the sync finished still stops an automatic migration here.
        let late_pause = record(app, job).await?.action == "pause";
        if late_pause {
            job.data.insert("paused".into(), json!(true));
        }
        let automatic = job.task == "migrate-automatic" && !late_pause;
        end_phase(app, job, if automatic { "running" } else { "paused" }, "the disks are in sync", |m| {
            m.num_sync_phases += 1;
            if m.action == "pause" {
                m.action = "sync".into();
            }
        })
        .await?;
        Ok(if late_pause { "sync done; paused on request".into() } else { "sync done".into() })
    }
}

struct Switch;

#[async_trait]
impl Step for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }
    fn deadline(&self, _app: &App) -> Duration {
        TRANSFER_DEADLINE
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if paused(job) {
            return Ok("paused: no switch".into());
        }
        let m = start_phase(app, job, "switch", "switching the instance to the target server").await?;
        let o = order(app, &m, Role::Source, AStep::Switch).await?;
        let p = drive(app, m.source_server_uuid, m.vm_uuid, &o, &mut Transfer::new(app, job, &m, None)).await?;
        job.data.insert("live".into(), json!(p.live));
        if let Some(ms) = p.pause_ms {
            job.data.insert("pause_ms".into(), json!(ms));
        }
        Ok(if p.live {
            format!("the guest moved live; it paused {} ms", p.pause_ms.unwrap_or(0))
        } else {
            "the VM was stopped and its disks copied".into()
        })
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = record(app, job).await?;
        if target_runs(app, &m).await {
            return Ok("the target runs the VM already: the source stays paused".into());
        }
        let o = order(app, &m, Role::Source, AStep::Resume).await?;
        drive(app, m.source_server_uuid, m.vm_uuid, &o, &mut ()).await.map_err(|e| format!("resuming the VM on the source: {e}"))?;
        // The record says so now, not at the source's next report: whoever reads it after
        // the failed switch sees the VM as it runs.
        if let Ok(Some(st)) = app.agent_get(m.source_server_uuid, m.vm_uuid).await
            && let Err(e) = app.apply_vm_status(m.source_server_uuid, &st).await
        {
            tracing::warn!(vm = %m.vm_uuid, error = %e.message, "recording the resumed VM's state");
        }
        Ok("the VM runs on the source again".into())
    }
}

struct Commit;

#[async_trait]
impl Step for Commit {
    fn name(&self) -> &'static str {
        "commit"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if paused(job) {
            return Ok("paused: nothing to commit".into());
        }
        let m = record(app, job).await?;
        let target = target_of(&m)?;
        move_record(app, m.vm_uuid, target, Some(m.id)).await?;
        Ok(format!("the VM's record and NICs are on {target}"))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = record(app, job).await?;
        if target_runs(app, &m).await {
            return Ok("the target runs the VM already: its record stays there".into());
        }
        move_record(app, m.vm_uuid, m.source_server_uuid, None).await?;
        Ok(format!("the VM's record and NICs are back on {}", m.source_server_uuid))
    }
}

/// Moves the VM's record to `server` (the agent generation starts again: each server
/// counts its own), dropping the migration's reservation in the same transaction (the
/// record now counts there); then its NICs.
async fn move_record(app: &App, vm: Uuid, server: Uuid, reservation: Option<Uuid>) -> Result<(), String> {
    for _ in 0..16 {
        let (mut rec, g) = app.get_vm(vm, None).await.map_err(|e| e.message)?;
        if rec.server_uuid != Some(server) {
            rec.server_uuid = Some(server);
            rec.agent_generation = 0;
            rec.last_modified = Some(nereid_types::time::now_iso());
        }
        let mut ops = vec![Op::put(VMS.name, vm.to_string(), encode(&rec), Cond::Generation(g))];
        if let Some(r) = reservation {
            ops.push(Op::delete(RESERVATIONS.name, r.to_string(), Cond::Any));
        }
        match app.store.batch(ops).await {
            Ok(_) => {
                app.move_vm_nics(vm, server).await.map_err(|e| e.message)?;
                app.netpolicy_notify.notify_one();
                app.cns_notify.notify_one();
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(store_error(e).message),
        }
    }
    Err("the VM's record kept changing".into())
}

struct ResumeTarget;

#[async_trait]
impl Step for ResumeTarget {
    fn name(&self) -> &'static str {
        "resume target"
    }
    fn deadline(&self, app: &App) -> Duration {
        // Longer than the agent's own wait for a copied VM to boot.
        app.cfg.step_deadline + Duration::from_secs(300)
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if paused(job) {
            return Ok("paused".into());
        }
        let m = record(app, job).await?;
        let target = target_of(&m)?;
        let o = order(app, &m, Role::Target, AStep::Resume).await?;
        drive(app, target, m.vm_uuid, &o, &mut ()).await.map_err(|e| format!("the target server {target} could not run the VM: {e}"))?;
        // From here on the VM is the target's: an ordinary ensure, as the record wants it.
        let (vm, _) = app.get_vm(m.vm_uuid, None).await.map_err(|e| e.message)?;
        // The guest runs there now: nothing below may unwind the migration (the target's
        // agent has the VM either way; its reports reach the record).
        let e = vm.ensure(desired_there(&vm), None)?;
        match app.agent_ensure(target, &e).await {
            Ok(st) => {
                if let Err(err) = app.apply_vm_status(target, &st).await {
                    tracing::warn!(vm = %m.vm_uuid, error = %err.message, "recording the migrated VM's state");
                }
                Ok(format!("the VM is {} on the target server {target}", st.state))
            }
            Err(err) => {
                tracing::warn!(vm = %m.vm_uuid, error = %err, "the target runs the VM; its ensure did not go through (its reports will)");
                Ok(format!("the VM runs on the target server {target} (its ensure did not go through: {err})"))
            }
        }
    }
}

struct ReleaseSource;

#[async_trait]
impl Step for ReleaseSource {
    fn name(&self) -> &'static str {
        "release source"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if paused(job) {
            return Ok("paused".into());
        }
        // Past the point of no return: never fails (the copy is deleted at finalize).
        let m = record(app, job).await?;
        Ok(match release_source(app, &m).await {
            Ok(()) => "the source keeps a stopped copy until finalize".into(),
            Err(why) => why,
        })
    }
}

struct Switched;

#[async_trait]
impl Step for Switched {
    fn name(&self) -> &'static str {
        "switched"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if paused(job) {
            return Ok("paused".into());
        }
        let live = data::<bool>(job, "live").unwrap_or(false);
        let pause_ms = data::<u64>(job, "pause_ms");
        let message = if live {
            format!("switched live; the guest paused {} ms", pause_ms.unwrap_or(0))
        } else {
            "switched offline: stopped, copied and started on the target".to_string()
        };
        end_phase(app, job, "successful", &message, |m| {
            m.pause_ms = pause_ms;
            if !live {
                m.mechanism = "offline".into();
            }
        })
        .await?;
        Ok(message)
    }
}

struct Abort;

#[async_trait]
impl Step for Abort {
    fn name(&self) -> &'static str {
        "abort"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let m = start_phase(app, job, "abort", "aborting the migration").await?;
        clean_up(app, &m).await?;
        end_phase(app, job, "successful", "the migration is aborted: nothing is left on the target", |m| m.cleanup_error = None).await?;
        Ok("aborted".into())
    }
}
