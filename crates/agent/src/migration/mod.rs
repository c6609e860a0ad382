//! The agent's side of a VM migration (see `nereid_types::migration` for the orders and
//! the table of steps): one migration per VM at a time, driven by the headnode's orders.
//!
//! ```text
//!   PUT order ──► Migrations::order ──► step task (background) ──► progress (GET)
//!                      │                    │ source: backend mirror/RAM into local sockets
//!                      │                    │         ──► relay ──► target agent
//!                      ▼                    │ target: supervisor slot (held), backend incoming
//!          <node dir>/migrations/<vm>.json (survives a restart; a step that was running
//!                                           then reports failed)
//! ```
//!
//! A VM in migration is *held* by its supervisor slot (see [`Node::hold`]): the supervisor
//! creates and deletes it but never starts, stops or restarts it on its own; the steps do.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nereid_types::agent::Desired;
use nereid_types::migration::{AgentProgress, Order, Role, Step};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backend::RamOptions;
use crate::supervisor::Node;

pub mod bucket;
pub mod relay;
#[cfg(test)]
mod tests;

/// How long a VM may take to be created on the target (an image may be fetched first).
const CREATE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a VM may take to stop or start.
const STATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a live RAM migration may take to converge before the switch goes offline.
const RAM_DEADLINE: Duration = Duration::from_secs(120);

/// An order that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// Another migration of the VM is open (or the order does not fit the one that is).
    #[error("{0}")]
    Conflict(String),
    /// The order itself is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// What is kept of a VM's migration (`<node dir>/migrations/<vm>.json`, private: it holds
/// the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    /// The orders so far, merged (the latest peer, token, cap, definition).
    order: Order,
    progress: AgentProgress,
    /// Target: the VM was created here by this migration's prepare.
    #[serde(default)]
    created: bool,
    /// Target, live: the backend's incoming sockets `(ram, nbd)`.
    #[serde(default)]
    incoming: Option<(PathBuf, PathBuf)>,
    /// Source: the live switch converged; the guest is paused here.
    #[serde(default)]
    paused_at_switch: bool,
    /// Source: the VM was stopped for an offline switch (resume or abort starts it again).
    #[serde(default)]
    stopped_for_switch: bool,
    /// Target: what the source sent last, `ram` (the guest moved live) or `file` (it was
    /// stopped and copied, maybe after a RAM migration that did not converge).
    #[serde(default)]
    last_transfer: Option<String>,
    /// A failed step's failure was answered: the same order again runs the step again.
    #[serde(default)]
    failure_reported: bool,
}

impl Record {
    /// Whether nothing of the migration is open here any more: the target runs the VM as
    /// its own, the source released it, or the migration was aborted.
    fn finished(&self) -> bool {
        self.progress.is_done()
            && matches!(
                (self.progress.role, self.progress.step),
                (Role::Target, Step::Resume) | (Role::Source, Step::Release) | (_, Step::Abort)
            )
    }

    /// Whether the supervisor must keep its hands off the VM.
    fn holds(&self) -> bool {
        match self.progress.role {
            _ if self.progress.step == Step::Abort => false,
            Role::Target => !self.finished(),
            Role::Source => self.paused_at_switch || self.stopped_for_switch || self.progress.step == Step::Release,
        }
    }
}

/// A step's good outcome.
#[derive(Debug, Default)]
struct Done {
    live: bool,
    pause_ms: Option<u64>,
}

/// One VM's migration here.
struct Entry {
    vm: Uuid,
    rec: Mutex<Record>,
    /// Which step run is current (a finished task of an older run records nothing).
    run: AtomicU64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Source: the relay's listeners for the backend's streams, by channel.
    forwards: Mutex<HashMap<&'static str, (PathBuf, tokio::task::JoinHandle<()>)>>,
    source: Mutex<Option<Arc<relay::Source>>>,
    /// Bytes this side put on or took off the wire.
    wire: Arc<AtomicU64>,
    meter: Mutex<(Instant, u64, u64)>,
}

impl Entry {
    fn new(vm: Uuid, rec: Record) -> Arc<Entry> {
        let wire = Arc::new(AtomicU64::new(rec.progress.bytes_sent));
        Arc::new(Entry {
            vm,
            rec: Mutex::new(rec),
            run: AtomicU64::new(0),
            task: Mutex::default(),
            forwards: Mutex::default(),
            source: Mutex::default(),
            wire,
            meter: Mutex::new((Instant::now(), 0, 0)),
        })
    }

    fn rec(&self) -> Record {
        self.rec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.rec.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The progress now, with the wire's bytes and rate (a failure, once answered, may be
    /// retried by the same order).
    fn progress(&self) -> AgentProgress {
        let mut p = {
            let mut r = self.rec.lock().unwrap_or_else(|p| p.into_inner());
            if r.progress.is_failed() {
                r.failure_reported = true;
            }
            r.progress.clone()
        };
        let sent = self.wire.load(Ordering::Relaxed);
        p.bytes_sent = sent;
        let mut m = self.meter.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = m.0.elapsed();
        if elapsed >= Duration::from_millis(500) {
            m.2 = ((sent.saturating_sub(m.1)) as f64 / elapsed.as_secs_f64()) as u64;
            *m = (Instant::now(), sent, m.2);
        }
        p.rate = if p.state == "running" { m.2 } else { 0 };
        p
    }

    fn stop_task(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }

    fn stop_forwards(&self) {
        for (_, (path, t)) in self.forwards.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            t.abort();
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The migrations of one server's VMs.
pub struct Migrations {
    node: Arc<Node>,
    dir: PathBuf,
    entries: Mutex<HashMap<Uuid, Arc<Entry>>>,
}

impl Migrations {
    /// Loads the node's migrations: a step that was running when the agent stopped is
    /// failed; VMs still in migration are held again.
    pub fn open(node: Arc<Node>) -> anyhow::Result<Arc<Migrations>> {
        let dir = node.dir().join("migrations");
        std::fs::create_dir_all(&dir)?;
        let mut entries = HashMap::new();
        for f in std::fs::read_dir(&dir)?.flatten() {
            let path = f.path();
            let Some(vm) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| Uuid::parse_str(s).ok()) else { continue };
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Some(mut rec) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok()) else {
                tracing::warn!(path = %path.display(), "ignoring a damaged migration state file");
                continue;
            };
            if rec.progress.state == "running" {
                rec.progress.state = "failed".into();
                rec.progress.error = Some(format!("the agent restarted during {}", step_name(rec.progress.step)));
            }
            if rec.holds() {
                node.hold(vm, true);
            }
            entries.insert(vm, Entry::new(vm, rec));
        }
        let m = Arc::new(Migrations { node, dir, entries: Mutex::new(entries) });
        for e in m.entries.lock().unwrap_or_else(|p| p.into_inner()).values() {
            m.persist(e);
        }
        Ok(m)
    }

    /// The VM's migration progress here, if it has one.
    pub fn get(&self, vm: Uuid) -> Option<AgentProgress> {
        self.entry(vm).map(|e| e.progress())
    }

    fn entry(&self, vm: Uuid) -> Option<Arc<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(&vm).cloned()
    }

    fn persist(&self, e: &Entry) {
        let mut rec = e.rec();
        rec.progress.bytes_sent = e.wire.load(Ordering::Relaxed);
        let path = self.dir.join(format!("{}.json", e.vm));
        let result = serde_json::to_vec(&rec).map_err(std::io::Error::other).and_then(|b| crate::durable::write_atomic_private(&path, &b));
        if let Err(err) = result {
            tracing::error!(path = %path.display(), error = %err, "could not persist the migration's state");
        }
    }

    /// Takes an order (idempotent per migration and step); answers the progress now.
    pub fn order(self: &Arc<Self>, vm: Uuid, o: Order) -> Result<AgentProgress, OrderError> {
        check(vm, &o)?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let existing = entries.get(&vm).cloned();
        let entry = match existing {
            Some(e) => {
                let rec = e.rec();
                let same = rec.order.migration == o.migration;
                // An abort of another migration than the open one is not this one's: it
                // has nothing here (a headnode that lost a race for the VM cleans up).
                if !same && !rec.finished() && o.step == Step::Abort {
                    return Ok(aborted(&o));
                }
                if !same && !rec.finished() && o.step != Step::Abort {
                    return Err(OrderError::Conflict(format!(
                        "VM {vm} is in migration {} here ({} at {}, {}); it must be aborted first",
                        rec.order.migration,
                        role_name(rec.progress.role),
                        step_name(rec.progress.step),
                        rec.progress.state
                    )));
                }
                if same && rec.order.role != o.role && o.step != Step::Abort {
                    return Err(OrderError::Conflict(format!(
                        "VM {vm} is the {} of migration {} here, not its {}",
                        role_name(rec.order.role),
                        o.migration,
                        role_name(o.role)
                    )));
                }
                // The same order again: how it goes (a failure is answered once before the
                // order runs the step again).
                if same && rec.progress.step == o.step && !(rec.progress.is_failed() && rec.failure_reported) {
                    return Ok(e.progress());
                }
                if same && rec.finished() {
                    return Err(OrderError::Conflict(format!(
                        "migration {} of VM {vm} is over here ({} {} done); it takes no {}",
                        o.migration,
                        role_name(rec.progress.role),
                        step_name(rec.progress.step),
                        step_name(o.step)
                    )));
                }
                if !same && rec.finished() {
                    if o.step == Step::Abort {
                        return Ok(aborted(&o));
                    }
                    let fresh = Entry::new(vm, new_record(&o));
                    entries.insert(vm, fresh.clone());
                    fresh
                } else {
                    e
                }
            }
            None if o.step == Step::Abort => return Ok(aborted(&o)),
            None => {
                let fresh = Entry::new(vm, new_record(&o));
                entries.insert(vm, fresh.clone());
                fresh
            }
        };
        drop(entries);
        entry.stop_task();
        let run = entry.run.fetch_add(1, Ordering::SeqCst) + 1;
        entry.update(|r| {
            // An abort is of whatever is open here, on the side it is on.
            let role = if o.step == Step::Abort { r.progress.role } else { o.role };
            merge(&mut r.order, &o);
            r.order.role = role;
            r.failure_reported = false;
            r.progress = AgentProgress {
                migration: r.order.migration,
                role,
                step: o.step,
                state: "running".into(),
                error: None,
                bytes_total: 0,
                bytes_done: 0,
                bytes_sent: r.progress.bytes_sent,
                rate: 0,
                live: r.progress.live,
                pause_ms: r.progress.pause_ms,
            };
        });
        self.persist(&entry);
        let step = o.step;
        let (me, e2) = (self.clone(), entry.clone());
        let task = tokio::spawn(async move {
            let result = me.run(&e2, step).await;
            if e2.run.load(Ordering::SeqCst) != run {
                return;
            }
            match &result {
                Ok(_) => tracing::info!(vm = %e2.vm, step = step_name(step), "migration step done"),
                Err(err) => tracing::warn!(vm = %e2.vm, step = step_name(step), error = %err, "migration step failed"),
            }
            e2.update(|r| match result {
                Ok(d) => {
                    r.progress.state = "done".into();
                    if step == Step::Switch {
                        r.progress.live = d.live;
                        r.progress.pause_ms = d.pause_ms;
                    }
                }
                Err(err) => {
                    r.progress.state = "failed".into();
                    r.progress.error = Some(err);
                }
            });
            me.persist(&e2);
        });
        *entry.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(entry.progress())
    }

    /// Aborts the VM's migration here (`DELETE`), whichever it is.
    /// `None`: no migration of the VM is known here.
    pub fn abort(self: &Arc<Self>, vm: Uuid) -> Option<Result<AgentProgress, OrderError>> {
        let rec = self.entry(vm)?.rec();
        let mut o = rec.order.clone();
        o.step = Step::Abort;
        Some(self.order(vm, o))
    }

    async fn run(&self, e: &Arc<Entry>, step: Step) -> Result<Done, String> {
        let role = e.rec().progress.role;
        match (role, step) {
            (Role::Target, Step::Prepare) => self.target_prepare(e).await,
            (Role::Target, Step::Resume) => self.target_resume(e).await,
            (Role::Target, Step::Abort) => self.target_abort(e).await,
            (Role::Source, Step::Prepare) => Ok(Done::default()),
            (Role::Source, Step::Sync) => self.source_sync(e).await,
            (Role::Source, Step::Pause) => self.source_pause(e).await,
            (Role::Source, Step::Switch) => self.source_switch(e).await,
            (Role::Source, Step::Resume) => self.source_resume(e).await,
            (Role::Source, Step::Release) => self.source_release(e).await,
            (Role::Source, Step::Abort) => self.source_abort(e).await,
            (r, s) => Err(format!("the {} of a migration has no step {}", role_name(r), step_name(s))),
        }
    }

    // ---- target ----

    async fn target_prepare(&self, e: &Arc<Entry>) -> Result<Done, String> {
        let rec = e.rec();
        let vm = e.vm;
        let mut ensure = rec.order.ensure.clone().ok_or("prepare on the target needs the VM as it must exist there (ensure)")?;
        ensure.state = Desired::Stopped;
        let def = ensure.definition.clone();
        if !rec.created && self.node.get(vm).is_some() {
            return Err(format!("VM {vm} already exists on server {}: it cannot be a migration's target", self.node.uuid));
        }
        e.update(|r| r.created = true);
        self.persist(e);
        self.node.ensure(ensure);
        self.node.hold(vm, true);
        let result = async {
            wait_state(&self.node, vm, "stopped", CREATE_TIMEOUT).await.map_err(|err| format!("creating the VM on the target: {err}"))?;
            if rec.order.live && self.node.backend().can_migrate_live() {
                let s =
                    self.node.backend().migrate_incoming(&def).await.map_err(|err| format!("preparing the incoming migration: {err}"))?;
                e.update(|r| r.incoming = Some((s.ram, s.nbd)));
            }
            Ok(Done::default())
        }
        .await;
        if result.is_err() {
            // Nothing is left on the target of a prepare that failed.
            self.node.delete(vm);
            let _ = wait_gone(&self.node, vm, STATE_TIMEOUT).await;
            e.update(|r| {
                r.created = false;
                r.incoming = None;
            });
        }
        result
    }

    async fn target_resume(&self, e: &Arc<Entry>) -> Result<Done, String> {
        let vm = e.vm;
        if self.node.get(vm).is_none() {
            return Err(format!("VM {vm} is not on server {} (its prepare did not finish)", self.node.uuid));
        }
        let rec = e.rec();
        if rec.last_transfer.is_none() {
            return Err(format!("nothing of VM {vm} has reached server {} yet: the source has not switched", self.node.uuid));
        }
        if rec.incoming.is_some() && rec.last_transfer.as_deref() == Some("ram") {
            if let Err(err) = self.node.backend().migrate_resume_target(vm).await {
                self.node.record_state(vm, false);
                return Err(format!("running the migrated guest: {err}"));
            }
            self.node.record_state(vm, true);
            self.node.hold(vm, false);
        } else {
            if rec.incoming.is_some() {
                // Copied offline: the process waiting for a live migration goes first.
                self.node.backend().stop(vm).await.map_err(|err| format!("ending the wait for a live migration: {err}"))?;
                e.update(|r| r.incoming = None);
            }
            // The resume order says how the VM is to be (a VM stopped when it left stays
            // stopped: it is not booted just to be stopped again).
            let want = rec.order.ensure.as_ref().map(|en| en.state).unwrap_or(Desired::Running);
            self.node.hold(vm, false);
            self.node.set_wanted(vm, want);
            if want == Desired::Running {
                wait_state(&self.node, vm, "running", STATE_TIMEOUT).await.map_err(|err| format!("starting the copied VM: {err}"))?;
            }
        }
        Ok(Done::default())
    }

    async fn target_abort(&self, e: &Arc<Entry>) -> Result<Done, String> {
        let vm = e.vm;
        let rec = e.rec();
        if !rec.created {
            return Ok(Done::default());
        }
        self.node.delete(vm);
        wait_gone(&self.node, vm, STATE_TIMEOUT).await.map_err(|err| format!("removing the target's VM: {err}"))?;
        e.update(|r| {
            r.created = false;
            r.incoming = None;
        });
        Ok(Done::default())
    }

    // ---- source ----

    /// The relay's source side, for the order in force.
    fn source(&self, e: &Arc<Entry>) -> Result<Arc<relay::Source>, String> {
        let o = e.rec().order;
        let peer = o.peer.clone().ok_or("the order names no peer (the target agent's migration address)")?;
        let server = o.peer_server.ok_or("the order names no peer_server (the target server)")?;
        let mut cur = e.source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cur.as_ref().filter(|s| s.peer == peer && s.server == server && s.token == o.token) {
            *s.error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(s.clone());
        }
        let s = Arc::new(relay::Source {
            migration: o.migration,
            server,
            vm: e.vm,
            token: o.token.clone(),
            peer,
            sent: e.wire.clone(),
            bucket: bucket::Bucket::from_mbps(o.bandwidth_mbps, Instant::now()).map(Mutex::new),
            error: Mutex::new(None),
        });
        *cur = Some(s.clone());
        drop(cur);
        e.stop_forwards();
        Ok(s)
    }

    /// The local socket of the `channel` stream (listening), in a directory the VM's
    /// process can reach.
    fn forward(&self, e: &Arc<Entry>, src: &Arc<relay::Source>, channel: &'static str) -> Result<PathBuf, String> {
        let mut f = e.forwards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((path, t)) = f.get(channel)
            && !t.is_finished()
        {
            return Ok(path.clone());
        }
        let (path, mode) = match self.node.backend().migration_socket_dir(e.vm) {
            Some(d) => (d.join(format!("mig-{channel}.sock")), 0o666),
            None => (self.dir.join(format!("{}.{channel}.sock", e.vm)), 0o600),
        };
        let t = src.forward(&path, channel, mode)?;
        f.insert(channel, (path.clone(), t));
        Ok(path)
    }

    fn live_here(&self, e: &Arc<Entry>) -> bool {
        let running = self.node.get(e.vm).is_some_and(|s| s.state == "running");
        running && e.rec().order.live && self.node.backend().can_migrate_live()
    }

    /// Mirrors the running VM's disks to the target until they are in step.
    async fn mirror(&self, e: &Arc<Entry>, src: &Arc<relay::Source>) -> Result<(), String> {
        let sock = self.forward(e, src, "nbd")?;
        let b = self.node.backend();
        b.migrate_mirror_start(e.vm, &sock).await.map_err(|err| format!("starting the disk mirror: {err}"))?;
        loop {
            let st = b.migrate_mirror_status(e.vm).await.map_err(|err| with_relay_error(format!("the disk mirror failed: {err}"), src))?;
            e.update(|r| {
                r.progress.bytes_total = st.total;
                r.progress.bytes_done = st.done;
            });
            if st.ready {
                return Ok(());
            }
            let relay_error = src.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(err) = relay_error {
                let _ = b.migrate_mirror_cancel(e.vm).await;
                return Err(format!("the disk mirror failed: {err}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Copies the VM's files (it is stopped) to the target.
    async fn copy_files(&self, e: &Arc<Entry>, src: &Arc<relay::Source>) -> Result<(), String> {
        let files = self.node.backend().migration_files(e.vm).await.map_err(|err| format!("listing the VM's files: {err}"))?;
        let total = files.iter().map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
        e.update(|r| {
            r.progress.bytes_total = total;
            r.progress.bytes_done = 0;
        });
        for (name, path) in files {
            let n = src.send_file(&name, &path).await?;
            e.update(|r| r.progress.bytes_done += n);
        }
        Ok(())
    }

    async fn source_sync(&self, e: &Arc<Entry>) -> Result<Done, String> {
        let src = self.source(e)?;
        if self.live_here(e) {
            self.mirror(e, &src).await?;
        } else if self.node.get(e.vm).is_some_and(|s| s.state == "stopped") {
            self.copy_files(e, &src).await?;
        }
        // A running VM moved offline is copied at the switch, once it is stopped.
        Ok(Done::default())
    }

    async fn source_pause(&self, e: &Arc<Entry>) -> Result<Done, String> {
        self.node.backend().migrate_mirror_cancel(e.vm).await.map_err(|err| format!("stopping the disk mirror: {err}"))?;
        Ok(Done::default())
    }

    async fn source_switch(&self, e: &Arc<Entry>) -> Result<Done, String> {
        let vm = e.vm;
        let rec = e.rec();
        if rec.paused_at_switch {
            return Ok(Done { live: true, pause_ms: rec.progress.pause_ms });
        }
        let src = self.source(e)?;
        if self.live_here(e) {
            self.mirror(e, &src).await?;
            self.node.hold(vm, true);
            let sock = self.forward(e, &src, "ram")?;
            let bw = src.bucket.as_ref().map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).rate());
            let opts = RamOptions { max_bandwidth: bw, deadline: RAM_DEADLINE, downtime_limit_ms: 300 };
            match self.node.backend().migrate_ram(vm, &sock, &opts).await {
                Ok(out) if out.converged => {
                    e.update(|r| {
                        r.paused_at_switch = true;
                        r.progress.bytes_total = out.ram_bytes;
                        r.progress.bytes_done = out.ram_bytes;
                    });
                    self.persist(e);
                    return Ok(Done { live: true, pause_ms: Some(out.pause_ms) });
                }
                Ok(_) => {
                    tracing::warn!(vm = %vm, "the guest did not converge in time: switching offline (stopped, copied)");
                    let _ = self.node.backend().migrate_mirror_cancel(vm).await;
                    self.node.hold(vm, false);
                }
                Err(err) => {
                    self.node.hold(vm, false);
                    return Err(with_relay_error(format!("moving the guest's RAM: {err}"), &src));
                }
            }
        }
        if self.node.get(vm).is_some_and(|s| s.state != "stopped") {
            e.update(|r| r.stopped_for_switch = true);
            self.persist(e);
            self.node.set_wanted(vm, Desired::Stopped);
            wait_state(&self.node, vm, "stopped", STATE_TIMEOUT).await.map_err(|err| format!("stopping the VM for the switch: {err}"))?;
        }
        self.node.hold(vm, true);
        self.copy_files(e, &src).await?;
        Ok(Done { live: false, pause_ms: None })
    }

    /// Runs the VM here again after a switch that was not committed.
    async fn run_again(&self, e: &Arc<Entry>) -> Result<(), String> {
        let vm = e.vm;
        let rec = e.rec();
        let b = self.node.backend();
        let _ = b.migrate_mirror_cancel(vm).await;
        if rec.paused_at_switch {
            b.migrate_resume_source(vm).await.map_err(|err| format!("running the paused guest again: {err}"))?;
            e.update(|r| r.paused_at_switch = false);
        } else if !rec.stopped_for_switch && self.node.get(vm).is_some_and(|s| s.state == "running") && b.can_migrate_live() {
            // A RAM migration cut short may have left the guest paused: run it (a no-op
            // for a guest that runs).
            if let Err(err) = b.migrate_resume_source(vm).await {
                tracing::warn!(vm = %vm, error = %err, "making sure the guest runs on the source");
            }
        }
        self.node.hold(vm, false);
        if rec.stopped_for_switch {
            self.node.set_wanted(vm, Desired::Running);
            e.update(|r| r.stopped_for_switch = false);
            self.persist(e);
            wait_state(&self.node, vm, "running", STATE_TIMEOUT).await.map_err(|err| format!("starting the VM again: {err}"))?;
        }
        e.stop_forwards();
        Ok(())
    }

    async fn source_resume(&self, e: &Arc<Entry>) -> Result<Done, String> {
        self.run_again(e).await.map(|()| Done::default())
    }

    async fn source_abort(&self, e: &Arc<Entry>) -> Result<Done, String> {
        self.run_again(e).await.map(|()| Done::default())
    }

    async fn source_release(&self, e: &Arc<Entry>) -> Result<Done, String> {
        let vm = e.vm;
        // Wanted stopped first: nothing restarts it (no autoboot, no crash restart).
        self.node.hold(vm, true);
        self.node.set_wanted(vm, Desired::Stopped);
        let b = self.node.backend();
        let _ = b.migrate_mirror_cancel(vm).await;
        b.stop(vm).await.map_err(|err| format!("stopping the source's copy: {err}"))?;
        self.node.record_state(vm, false);
        e.stop_forwards();
        Ok(Done::default())
    }

    /// The relay asks: may this stream in, and where does it go?
    fn admit(&self, hello: &relay::Hello, nonce: &str) -> Result<(relay::Sink, Arc<AtomicU64>), String> {
        let (vm, server) = (hello.vm, self.node.uuid);
        let e = self.entry(vm).ok_or_else(|| format!("no migration of VM {vm} is expected on server {server}"))?;
        let rec = e.rec();
        if rec.progress.role != Role::Target || rec.order.migration != hello.migration || rec.finished() {
            return Err(format!("migration {} of VM {vm} is not expected on server {server}", hello.migration));
        }
        if !relay::verify(&rec.order.token, nonce, &hello.channel, &hello.proof) {
            return Err(format!("the proof for migration {} does not match its token", hello.migration));
        }
        if !(rec.progress.step == Step::Prepare && rec.progress.is_done()) {
            return Err(format!(
                "the target of migration {} is not ready (it is at {}, {})",
                hello.migration,
                step_name(rec.progress.step),
                rec.progress.state
            ));
        }
        let sink = match (hello.channel.as_str(), &rec.incoming) {
            ("nbd", Some((_, nbd))) => relay::Sink::Socket(nbd.clone()),
            ("ram", Some((ram, _))) => relay::Sink::Socket(ram.clone()),
            ("nbd" | "ram", None) => return Err(format!("migration {} moves offline here: no {} stream", hello.migration, hello.channel)),
            (c, _) => match c.strip_prefix("file:") {
                Some(name) if !name.is_empty() => {
                    relay::Sink::File(self.node.backend().migration_file_path(vm, name).map_err(|err| err.0)?)
                }
                _ => return Err(format!("no such stream {c:?}")),
            },
        };
        let kind = if matches!(sink, relay::Sink::File(_)) { "file" } else { hello.channel.as_str() };
        if kind != "nbd" {
            e.update(|r| r.last_transfer = Some(kind.to_string()));
            self.persist(&e);
        }
        Ok((sink, e.wire.clone()))
    }
}

/// Refuses an order that cannot be right whatever the state (pure).
fn check(vm: Uuid, o: &Order) -> Result<(), OrderError> {
    match (o.role, o.step) {
        (Role::Target, Step::Sync | Step::Pause | Step::Switch | Step::Release) => {
            return Err(OrderError::Invalid(format!("the target of a migration has no step {}", step_name(o.step))));
        }
        (Role::Target, Step::Prepare) => match &o.ensure {
            None => return Err(OrderError::Invalid("prepare on the target needs `ensure` (the VM as it must exist there)".into())),
            Some(en) if en.definition.uuid != vm => {
                return Err(OrderError::Invalid(format!("ensure.definition.uuid {} is not VM {vm}", en.definition.uuid)));
            }
            Some(_) => {}
        },
        _ => {}
    }
    if o.token.is_empty() && o.step != Step::Abort {
        return Err(OrderError::Invalid("the order has no token".into()));
    }
    Ok(())
}

fn new_record(o: &Order) -> Record {
    Record {
        order: o.clone(),
        progress: AgentProgress {
            migration: o.migration,
            role: o.role,
            step: o.step,
            state: "running".into(),
            error: None,
            bytes_total: 0,
            bytes_done: 0,
            bytes_sent: 0,
            rate: 0,
            live: false,
            pause_ms: None,
        },
        created: false,
        incoming: None,
        paused_at_switch: false,
        stopped_for_switch: false,
        last_transfer: None,
        failure_reported: false,
    }
}

/// The answer to an abort of a migration that holds nothing here.
fn aborted(o: &Order) -> AgentProgress {
    AgentProgress { state: "done".into(), step: Step::Abort, ..new_record(o).progress }
}

/// Folds a new order into the one in force: what it leaves out stays.
fn merge(cur: &mut Order, o: &Order) {
    let keep = cur.clone();
    *cur = o.clone();
    if o.step == Step::Abort {
        cur.token = keep.token.clone();
        cur.live = keep.live;
    }
    cur.ensure = o.ensure.clone().or(keep.ensure);
    // A resume that does not say how the VM is to be runs it (prepare's ensure is stopped).
    if o.step == Step::Resume
        && o.ensure.is_none()
        && let Some(en) = cur.ensure.as_mut()
    {
        en.state = Desired::Running;
    }
    cur.peer = o.peer.clone().or(keep.peer);
    cur.peer_server = o.peer_server.or(keep.peer_server);
    cur.bandwidth_mbps = o.bandwidth_mbps.or(keep.bandwidth_mbps);
}

fn with_relay_error(msg: String, src: &relay::Source) -> String {
    match src.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        Some(r) => format!("{msg} ({r})"),
        None => msg,
    }
}

pub fn step_name(s: Step) -> &'static str {
    match s {
        Step::Prepare => "prepare",
        Step::Sync => "sync",
        Step::Pause => "pause",
        Step::Switch => "switch",
        Step::Resume => "resume",
        Step::Release => "release",
        Step::Abort => "abort",
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Source => "source",
        Role::Target => "target",
    }
}

/// Waits until the VM is in `want` (an error the supervisor records, or `failed`, ends it).
async fn wait_state(node: &Node, vm: Uuid, want: &str, timeout: Duration) -> Result<(), String> {
    let end = Instant::now() + timeout;
    loop {
        match node.get(vm) {
            None => return Err(format!("VM {vm} is gone")),
            Some(st) if st.state == want => return Ok(()),
            Some(st) if st.state == "failed" => return Err(st.error.unwrap_or_else(|| "the VM failed".into())),
            Some(st) if st.error.is_some() && !matches!(st.state.as_str(), "provisioning" | "stopping" | "starting") => {
                return Err(st.error.unwrap_or_default());
            }
            Some(st) if Instant::now() > end => {
                return Err(format!("VM {vm} did not become {want} within {} s (it is {})", timeout.as_secs(), st.state));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until the VM no longer exists here.
async fn wait_gone(node: &Node, vm: Uuid, timeout: Duration) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while let Some(st) = node.get(vm) {
        if Instant::now() > end {
            return Err(format!("VM {vm} was not deleted within {} s ({})", timeout.as_secs(), st.error.unwrap_or(st.state)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The path of a VM's migration file (for tests and operators).
pub fn state_file(node_dir: &Path, vm: Uuid) -> PathBuf {
    node_dir.join("migrations").join(format!("{vm}.json"))
}
