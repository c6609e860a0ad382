//! Per-VM supervisors: one task per VM converges what the headnode asked for ("ensure")
//! with what the backend has, one operation at a time.
//!
//! ```text
//!                ensure / delete (HTTP)            backend ops, one at a time
//!   headnode ───────────────────────► slot ──wake──► task: decide → act → record
//!                                        │                         │
//!                                        └──── status (+generation) ──► pusher ──► headnode
//! ```
//!
//! `decide` is pure: from the wanted state and the applied one it picks the next action
//! (create, update, start, stop, reboot, delete, or nothing). Every status change takes a
//! new generation from the node's counter, which only grows (it is persisted), so the
//! headnode can drop reports that arrive out of order. A slot's state is written to disk
//! after each change; a restarted agent reloads it and re-adopts its VMs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::{Definition, Desired, Ensure, VmStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::backend::{Backend, SnapshotOp};
use crate::console::Console;
use crate::metadata::{MetadataWrite, Source, VmView};

/// Where guests' metadata writes are persisted (VMAPI, through the headnode).
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Ok once the write is in the VM's record.
    async fn metadata_write(&self, vm: Uuid, w: &MetadataWrite) -> Result<(), String>;
}

/// What a slot remembers (persisted as `vms/<uuid>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlotState {
    pub ensure: Option<Ensure>,
    pub delete: bool,
    pub created: bool,
    pub applied: Option<Definition>,
    pub applied_definition_generation: i64,
    pub applied_reboot_generation: i64,
    /// A definition generation whose operation failed: not retried until the next ensure.
    pub failed_definition_generation: Option<i64>,
    #[serde(default)]
    pub applied_rollback_generation: i64,
    pub status: VmStatus,
}

/// The next thing a VM's task does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Idle,
    Create(Box<Definition>),
    Update(Box<Definition>, Box<Definition>),
    Start(Box<Definition>),
    Stop,
    Reboot(Box<Definition>),
    /// A reboot asked of a stopped VM: nothing to do but remember it.
    SkipReboot(i64),
    Snapshot(SnapshotOp, String, Box<Definition>),
    /// Roll back to the snapshot (the VM is stopped), for this rollback generation.
    Rollback(String, i64, Box<Definition>),
    Delete,
}

/// Picks the next action (pure).
pub fn decide(s: &SlotState) -> Action {
    if s.delete {
        return Action::Delete;
    }
    let Some(e) = &s.ensure else { return Action::Idle };
    if s.failed_definition_generation == Some(e.definition_generation) {
        return Action::Idle;
    }
    if !s.created {
        return Action::Create(Box::new(e.definition.clone()));
    }
    if e.definition_generation > s.applied_definition_generation {
        let old = s.applied.clone().unwrap_or_else(|| e.definition.clone());
        return Action::Update(Box::new(old), Box::new(e.definition.clone()));
    }
    let running = s.status.state == "running";
    if let Some(n) = e.snapshots.iter().find(|n| !s.status.snapshots.contains(n)) {
        return Action::Snapshot(SnapshotOp::Create, n.clone(), Box::new(e.definition.clone()));
    }
    if let Some(n) = s.status.snapshots.iter().find(|n| !e.snapshots.contains(n)) {
        return Action::Snapshot(SnapshotOp::Delete, n.clone(), Box::new(e.definition.clone()));
    }
    if e.rollback_generation > s.applied_rollback_generation
        && let Some(to) = &e.rollback_to
    {
        // A rollback needs the VM stopped; it is brought back to `state` afterwards.
        return if running { Action::Stop } else { Action::Rollback(to.clone(), e.rollback_generation, Box::new(e.definition.clone())) };
    }
    match (e.state, running) {
        (Desired::Running, false) => Action::Start(Box::new(e.definition.clone())),
        (Desired::Stopped, true) => Action::Stop,
        (_, true) if e.reboot_generation > s.applied_reboot_generation => Action::Reboot(Box::new(e.definition.clone())),
        (_, false) if e.reboot_generation > s.applied_reboot_generation => Action::SkipReboot(e.reboot_generation),
        _ => Action::Idle,
    }
}

struct Slot {
    state: Mutex<SlotState>,
    wake: Notify,
    /// Interrupts a long backend operation when the VM is to be deleted.
    cancel: Notify,
    /// Deaths in a row soon after booting (autoboot restarts back off, then give up).
    crashes: Mutex<Crashes>,
    /// The metadata server and console keeper (backends with real guests).
    metadata: Mutex<Option<tokio::task::JoinHandle<()>>>,
    console: Option<Arc<Console>>,
    /// Held by a migration: the task creates and deletes, nothing else on its own (no
    /// start, stop, restart or death check) — the migration drives the VM.
    held: AtomicBool,
}

#[derive(Default)]
struct Crashes {
    in_a_row: u32,
    last_start: Option<std::time::Instant>,
}

/// A VM that dies within this long of booting counts as crashing in a loop.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// After this many crashes in a row, autoboot stops restarting the VM.
const MAX_CRASHES: u32 = 5;

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(t) = self.metadata.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

/// One compute node's VMs.
pub struct Node {
    pub uuid: Uuid,
    backend: Arc<dyn Backend>,
    upstream: Arc<dyn Upstream>,
    dir: PathBuf,
    slots: Mutex<HashMap<Uuid, Arc<Slot>>>,
    generation: AtomicI64,
    /// The durable high-water mark: no generation above it has been handed out, and the
    /// file says so (moved ahead in blocks, so a counter is never reused after a crash
    /// without an fsync per report).
    generation_mark: std::sync::Mutex<i64>,
    events: mpsc::UnboundedSender<VmStatus>,
    /// How often a running VM is checked for having died.
    pub check_every: Duration,
    stopping: AtomicBool,
    /// The network policy the headnode pushed (saved in `dir`).
    netpolicy: crate::netpolicy::PolicyStore,
    /// This server's address on each nic tag, as last read.
    addresses: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

/// How far ahead the durable generation mark moves at a time.
const GENERATION_BLOCK: i64 = 1000;

fn now_iso() -> String {
    nereid_types::time::now_iso()
}

impl Node {
    /// Loads the node's VMs from `dir` and starts their tasks.
    pub async fn open(
        uuid: Uuid,
        backend: Arc<dyn Backend>,
        upstream: Arc<dyn Upstream>,
        dir: PathBuf,
        events: mpsc::UnboundedSender<VmStatus>,
    ) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(dir.join("vms"))?;
        let hw: i64 = std::fs::read_to_string(dir.join("generation")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let node = Arc::new(Node {
            uuid,
            backend,
            upstream,
            dir: dir.clone(),
            slots: Mutex::new(HashMap::new()),
            // Start past the last mark: generations up to it may have been handed out.
            generation: AtomicI64::new(hw),
            generation_mark: std::sync::Mutex::new(hw),
            events,
            check_every: Duration::from_secs(1),
            stopping: AtomicBool::new(false),
            netpolicy: crate::netpolicy::PolicyStore::new(&dir),
            addresses: Default::default(),
        });
        // The policy in force before a restart is in force again at once.
        if let Some(p) = node.netpolicy.load() {
            match node.put_netpolicy(&p).await {
                Ok(()) => tracing::info!(digest = %p.digest, "network policy applied again"),
                Err(e) => tracing::warn!(digest = %p.digest, error = %e, "applying the saved network policy"),
            }
        }
        node.refresh_nic_tag_addresses().await;
        let mut loaded = Vec::new();
        for entry in std::fs::read_dir(dir.join("vms"))?.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<SlotState>(&b).ok()) {
                Some(s) => loaded.push(s),
                None => tracing::warn!(path = %path.display(), "ignoring a damaged VM state file"),
            }
        }
        for mut s in loaded {
            node.generation.fetch_max(s.status.generation, Ordering::SeqCst);
            // A VM a migration holds is the migration's to look after (a target's process
            // waiting for the incoming guest is not a VM that started by itself).
            let held = node.held_marker(s.status.uuid).exists();
            // Re-adopt: what runs now is what the backend says.
            if s.created && !s.delete && !held {
                let runs = node.backend.is_running(s.status.uuid).await;
                let was = s.status.state.clone();
                match (was.as_str(), runs) {
                    ("running", false) | ("stopping", false) => {
                        s.status.state = "stopped".into();
                        if was == "running" {
                            s.status.error = Some("the VM stopped while the agent was down".into());
                            if !autoboot(&s) {
                                stay_stopped(&mut s);
                            }
                        }
                        s.status.generation = node.next_generation();
                    }
                    (w, true) if w != "running" => {
                        s.status.state = "running".into();
                        s.status.generation = node.next_generation();
                    }
                    _ => {}
                }
                if s.status.state != was {
                    node.persist(&s);
                    let _ = node.events.send(s.status.clone());
                }
            }
            let uuid = s.status.uuid;
            tracing::info!(vm = %uuid, state = %s.status.state, held, "re-adopted VM");
            node.spawn_slot(uuid, s, held);
        }
        Ok(node)
    }

    /// The backend's check of the host networking against what the headnode wants.
    pub async fn check_network(&self, wanted: &std::collections::BTreeMap<String, u32>) -> Vec<nereid_types::agent::Problem> {
        self.backend.check_network(wanted).await
    }

    /// Saves and applies the node's network policy (whole); an error is the apply's.
    pub async fn put_netpolicy(&self, p: &nereid_types::netpolicy::NetPolicy) -> Result<(), String> {
        self.netpolicy.put(p, || self.backend.apply_netpolicy(p)).await
    }

    /// The digest of the network policy applied last.
    pub fn netpolicy_digest(&self) -> Option<String> {
        self.netpolicy.digest()
    }

    /// Reads this server's nic tag addresses again (before each heartbeat).
    pub async fn refresh_nic_tag_addresses(&self) {
        let a = self.backend.nic_tag_addresses().await;
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = a;
    }

    /// This server's address on each nic tag, as last read.
    pub fn nic_tag_addresses(&self) -> std::collections::BTreeMap<String, String> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn next_generation(&self) -> i64 {
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut mark = self.generation_mark.lock().unwrap_or_else(|p| p.into_inner());
        if g > *mark {
            // Durably move the mark a block ahead before handing out anything past it.
            let next = g + GENERATION_BLOCK;
            match crate::durable::write_atomic(&self.dir.join("generation"), next.to_string().as_bytes()) {
                Ok(()) => *mark = next,
                Err(e) => tracing::error!(error = %e, "could not persist the generation counter"),
            }
        }
        g
    }

    fn spawn_slot(self: &Arc<Self>, uuid: Uuid, s: SlotState, held: bool) -> Arc<Slot> {
        let console = self.backend.console_paths(uuid).map(|(sock, log)| Arc::new(Console::spawn(sock, log)));
        let slot = Arc::new(Slot {
            state: Mutex::new(s),
            wake: Notify::new(),
            cancel: Notify::new(),
            crashes: Mutex::new(Crashes::default()),
            metadata: Mutex::new(None),
            console,
            held: AtomicBool::new(held),
        });
        // In the map before the metadata server starts: it looks the VM up there, and
        // ends when the VM is not found.
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).insert(uuid, slot.clone());
        if let Some(sock) = self.backend.metadata_socket(uuid) {
            let source = Arc::new(SlotSource { node: Arc::downgrade(self), uuid });
            *slot.metadata.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::metadata::spawn(sock, source));
        }
        let (node, s2) = (self.clone(), slot.clone());
        tokio::spawn(async move { node.run(uuid, s2).await });
        slot
    }

    fn slot(&self, uuid: Uuid) -> Option<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&uuid).cloned()
    }

    /// Makes the VM converge to `e`; returns its status now.
    pub fn ensure(self: &Arc<Self>, e: Ensure) -> VmStatus {
        let uuid = e.definition.uuid;
        if let Some(slot) = self.slot(uuid) {
            let status = {
                let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                let newer = s.ensure.as_ref().is_none_or(|cur| e.definition_generation >= cur.definition_generation);
                if newer && !s.delete {
                    s.ensure = Some(e);
                    // Each ensure is a fresh request: a failed operation may be tried again,
                    // and an old failure no longer describes the VM.
                    s.failed_definition_generation = None;
                    s.status.error = None;
                    s.status.agent_decided = None;
                }
                s.status.clone()
            };
            slot.wake.notify_one();
            return status;
        }
        let status = VmStatus {
            definition_generation: e.definition_generation,
            reboot_generation: e.reboot_generation,
            ram: Some(e.definition.ram),
            vcpus: Some(e.definition.vcpus),
            cpu_cap: e.definition.cpu_cap,
            disk_mib: Some(e.definition.disk_mib()),
            owner_uuid: Some(e.definition.owner_uuid),
            ..VmStatus::new(uuid, "provisioning", self.next_generation())
        };
        let s = SlotState {
            ensure: Some(e.clone()),
            delete: false,
            created: false,
            applied: None,
            applied_definition_generation: 0,
            applied_reboot_generation: e.reboot_generation,
            failed_definition_generation: None,
            applied_rollback_generation: e.rollback_generation,
            status: status.clone(),
        };
        self.persist(&s);
        let _ = self.events.send(status.clone());
        self.spawn_slot(uuid, s, false);
        status
    }

    /// Makes the VM not exist; returns its status now (`destroyed` once it is gone).
    pub fn delete(&self, uuid: Uuid) -> VmStatus {
        match self.slot(uuid) {
            Some(slot) => {
                let status = {
                    let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
                    s.delete = true;
                    s.status.clone()
                };
                slot.cancel.notify_one();
                slot.wake.notify_one();
                status
            }
            None => VmStatus::new(uuid, "destroyed", self.generation.load(Ordering::SeqCst)),
        }
    }

    pub fn get(&self, uuid: Uuid) -> Option<VmStatus> {
        self.slot(uuid).map(|s| s.state.lock().unwrap_or_else(|p| p.into_inner()).status.clone())
    }

    /// Each VM's status with the definition it was last asked to have (`/metrics` labels).
    pub fn list_defined(&self) -> Vec<(VmStatus, Option<Definition>)> {
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        slots
            .iter()
            .map(|s| {
                let st = s.state.lock().unwrap_or_else(|p| p.into_inner());
                (st.status.clone(), st.ensure.as_ref().map(|e| e.definition.clone()))
            })
            .collect()
    }

    pub fn list(&self) -> Vec<VmStatus> {
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut out: Vec<VmStatus> = slots.iter().map(|s| s.state.lock().unwrap_or_else(|p| p.into_inner()).status.clone()).collect();
        out.sort_by_key(|s| s.uuid);
        out
    }

    /// Stops the VM tasks (the VMs themselves keep running, as real ones would).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let slots: Vec<Arc<Slot>> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, s)| s).collect();
        for s in slots {
            if let Some(t) = s.metadata.lock().unwrap_or_else(|p| p.into_inner()).take() {
                t.abort();
            }
            s.wake.notify_one();
        }
    }

    /// The VM's backend (the migration drives its hooks).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The node's state directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// A migration holds the VM (`true`) or lets it go: while held, its task only creates
    /// and deletes it, never starts, stops or restarts it on its own. `false`: no such VM.
    /// The hold outlives a restart of the agent (a marker in the node's directory).
    pub fn hold(&self, uuid: Uuid, held: bool) -> bool {
        let Some(slot) = self.slot(uuid) else { return false };
        let marker = self.held_marker(uuid);
        let result = if held {
            std::fs::create_dir_all(self.dir.join("held")).and_then(|()| crate::durable::write_atomic(&marker, b""))
        } else {
            crate::durable::remove(&marker)
        };
        if let Err(e) = result {
            tracing::error!(vm = %uuid, path = %marker.display(), error = %e, "could not record the migration's hold on the VM");
        }
        slot.held.store(held, Ordering::SeqCst);
        slot.wake.notify_one();
        true
    }

    fn held_marker(&self, uuid: Uuid) -> PathBuf {
        self.dir.join("held").join(uuid.to_string())
    }

    /// Sets the state the VM is to be in (as an ensure would, same definition) and wakes
    /// its task. `false`: no such VM.
    pub fn set_wanted(&self, uuid: Uuid, state: Desired) -> bool {
        let Some(slot) = self.slot(uuid) else { return false };
        {
            let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = s.ensure.as_mut() {
                e.state = state;
            }
            s.failed_definition_generation = None;
            s.status.agent_decided = None;
            s.status.error = None;
        }
        slot.wake.notify_one();
        true
    }

    /// Records that the VM runs (or stopped) by a migration's doing, not the task's: a
    /// migrated guest continued here, or a paused source stopped. Wanted state follows.
    pub fn record_state(&self, uuid: Uuid, running: bool) -> bool {
        let Some(slot) = self.slot(uuid) else { return false };
        self.set_status(&slot, |s| {
            if let Some(e) = s.ensure.as_mut() {
                e.state = if running { Desired::Running } else { Desired::Stopped };
            }
            s.status.state = if running { "running".into() } else { "stopped".into() };
            if running {
                s.status.boot_timestamp = Some(now_iso());
            }
            s.status.error = None;
        });
        slot.wake.notify_one();
        true
    }

    /// The VM's serial console, for backends with real guests.
    pub fn console(&self, uuid: Uuid) -> Option<Arc<Console>> {
        self.slot(uuid)?.console.clone()
    }

    /// The VM's VNC socket, for backends with real guests.
    pub fn vnc_socket(&self, uuid: Uuid) -> Option<PathBuf> {
        self.slot(uuid)?;
        self.backend.vnc_socket(uuid)
    }

    /// The VM's boot disk flattened into a new file the caller streams and removes (see
    /// [`Backend::export_boot_disk`]): only while the VM is stopped and asked to stay so,
    /// so the supervisor never starts it under the export. `Ok(None)`: no such VM here.
    pub async fn export_boot_disk(&self, uuid: Uuid) -> Result<Option<PathBuf>, String> {
        let Some(slot) = self.slot(uuid) else { return Ok(None) };
        {
            let s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            let stays_stopped = s.ensure.as_ref().is_some_and(|e| e.state == Desired::Stopped);
            if s.status.state != "stopped" || !stays_stopped || s.delete {
                return Err(format!(
                    "VM {uuid} is {}: its disk is exported only while it is stopped (and asked to stay so)",
                    s.status.state
                ));
            }
        }
        self.backend.export_boot_disk(uuid).await.map(Some).map_err(|e| e.0)
    }

    /// Persists a guest's metadata write upstream, then into the VM's definition here.
    async fn guest_write(&self, uuid: Uuid, w: MetadataWrite) -> Result<(), String> {
        self.upstream.metadata_write(uuid, &w).await?;
        let Some(slot) = self.slot(uuid) else { return Err("the VM is gone".into()) };
        let snapshot = {
            let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = s.ensure.as_mut() {
                w.apply(&mut e.definition);
            }
            if let Some(a) = s.applied.as_mut() {
                w.apply(a);
            }
            s.clone()
        };
        self.persist(&snapshot);
        Ok(())
    }

    fn persist(&self, s: &SlotState) {
        let path = self.dir.join("vms").join(format!("{}.json", s.status.uuid));
        // Durably: after a host crash the agent must still know every VM it runs.
        let result = serde_json::to_vec(s).map_err(std::io::Error::other).and_then(|b| crate::durable::write_atomic(&path, &b));
        if let Err(e) = result {
            tracing::error!(path = %path.display(), error = %e, "could not persist VM state");
        }
    }

    /// Records a new status (new generation), persists and reports it.
    fn set_status(&self, slot: &Slot, f: impl FnOnce(&mut SlotState)) {
        let snapshot = {
            let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            s.status.generation = self.next_generation();
            s.clone()
        };
        self.persist(&snapshot);
        let _ = self.events.send(snapshot.status);
    }

    /// The VM died on its own: restart it (autoboot, backing off if it keeps dying), or
    /// record it stopped and leave it so.
    async fn died(&self, uuid: Uuid, slot: &Slot) {
        let delay = {
            let mut c = slot.crashes.lock().unwrap_or_else(|p| p.into_inner());
            let quick = c.last_start.is_some_and(|t| t.elapsed() < CRASH_WINDOW);
            c.in_a_row = if quick { c.in_a_row + 1 } else { 1 };
            c.in_a_row
        };
        let restart = autoboot(&slot.state.lock().unwrap_or_else(|p| p.into_inner())) && delay <= MAX_CRASHES;
        if restart {
            let wait = Duration::from_secs(1 << (delay - 1).min(6));
            tracing::warn!(vm = %uuid, "the VM stopped on its own; restarting it in {} s (autoboot)", wait.as_secs());
            self.set_status(slot, |s| {
                s.status.state = "stopped".into();
                s.status.error = Some(format!("the VM stopped on its own; autoboot restarts it (crash {delay} in a row)"));
            });
            tokio::select! { _ = slot.wake.notified() => {} _ = tokio::time::sleep(wait) => {} }
        } else {
            let why = if delay > MAX_CRASHES {
                format!("the VM stopped on its own {delay} times in a row soon after booting; it stays stopped")
            } else {
                "the VM stopped on its own".to_string()
            };
            tracing::warn!(vm = %uuid, "{why}");
            self.set_status(slot, |s| {
                s.status.state = "stopped".into();
                s.status.error = Some(why.clone());
                stay_stopped(s);
            });
        }
    }

    async fn run(self: Arc<Self>, uuid: Uuid, slot: Arc<Slot>) {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let mut action = decide(&slot.state.lock().unwrap_or_else(|p| p.into_inner()));
            let held = slot.held.load(Ordering::SeqCst);
            if held && !matches!(action, Action::Create(_) | Action::Delete) {
                action = Action::Idle;
            }
            match action {
                Action::Idle => {
                    let running = slot.state.lock().unwrap_or_else(|p| p.into_inner()).status.state == "running";
                    tokio::select! {
                        _ = slot.wake.notified() => {}
                        _ = tokio::time::sleep(self.check_every) => {
                            if running && !held && !slot.held.load(Ordering::SeqCst) && !self.backend.is_running(uuid).await {
                                self.died(uuid, &slot).await;
                            }
                        }
                    }
                }
                Action::Delete => match self.backend.delete(uuid).await {
                    Ok(()) => {
                        if let Some(t) = slot.metadata.lock().unwrap_or_else(|p| p.into_inner()).take() {
                            t.abort();
                        }
                        self.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
                        let _ = crate::durable::remove(&self.dir.join("vms").join(format!("{uuid}.json")));
                        let _ = crate::durable::remove(&self.held_marker(uuid));
                        let mut s = slot.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        s.status.state = "destroyed".into();
                        s.status.error = None;
                        s.status.generation = self.next_generation();
                        let _ = self.events.send(s.status);
                        tracing::info!(vm = %uuid, "VM deleted");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(vm = %uuid, error = %e, "deleting the VM failed; retrying");
                        self.set_status(&slot, |s| s.status.error = Some(format!("delete failed: {e}")));
                        tokio::select! { _ = slot.wake.notified() => {} _ = tokio::time::sleep(Duration::from_secs(2)) => {} }
                    }
                },
                Action::Create(def) => {
                    let generation =
                        slot.state.lock().unwrap_or_else(|p| p.into_inner()).ensure.as_ref().map(|e| e.definition_generation).unwrap_or(0);
                    let result = tokio::select! {
                        r = self.backend.create(&def) => Some(r),
                        _ = slot.cancel.notified() => None,
                    };
                    match result {
                        None => continue,
                        Some(Ok(())) => self.set_status(&slot, |s| {
                            s.created = true;
                            s.applied = Some((*def).clone());
                            s.applied_definition_generation = generation;
                            s.status.state = "stopped".into();
                            s.status.definition_generation = generation;
                            s.status.error = None;
                        }),
                        Some(Err(e)) => {
                            tracing::warn!(vm = %uuid, error = %e, "creating the VM failed");
                            self.set_status(&slot, |s| {
                                s.failed_definition_generation = Some(generation);
                                s.status.state = "failed".into();
                                s.status.error = Some(e.0.clone());
                            });
                        }
                    }
                }
                Action::Update(old, new) => {
                    let generation =
                        slot.state.lock().unwrap_or_else(|p| p.into_inner()).ensure.as_ref().map(|e| e.definition_generation).unwrap_or(0);
                    match self.backend.update(&old, &new).await {
                        Ok(()) => self.set_status(&slot, |s| {
                            s.applied = Some((*new).clone());
                            s.applied_definition_generation = generation;
                            s.status.definition_generation = generation;
                            s.status.ram = Some(new.ram);
                            s.status.vcpus = Some(new.vcpus);
                            s.status.cpu_cap = new.cpu_cap;
                            s.status.disk_mib = Some(new.disk_mib());
                            s.status.error = None;
                        }),
                        Err(e) => {
                            tracing::warn!(vm = %uuid, error = %e, "updating the VM failed");
                            // Not retried until asked again: the job that asked reports it.
                            self.set_status(&slot, |s| {
                                s.status.error = Some(format!("update failed: {e}"));
                                s.failed_definition_generation = Some(generation);
                            });
                        }
                    }
                }
                Action::Start(def) => {
                    let result = tokio::select! { r = self.backend.start(&def) => Some(r), _ = slot.cancel.notified() => None };
                    match result {
                        None => continue,
                        Some(Ok(())) => {
                            slot.crashes.lock().unwrap_or_else(|p| p.into_inner()).last_start = Some(std::time::Instant::now());
                            self.set_status(&slot, |s| {
                                s.status.state = "running".into();
                                s.status.boot_timestamp = Some(now_iso());
                                s.status.error = None;
                            })
                        }
                        Some(Err(e)) => {
                            tracing::warn!(vm = %uuid, error = %e, "starting the VM failed");
                            self.set_status(&slot, |s| {
                                let first_boot = s.status.boot_timestamp.is_none();
                                s.status.state = if first_boot { "failed".into() } else { "stopped".into() };
                                s.status.error = Some(e.0.clone());
                                // Do not retry on its own; a new ensure asks again.
                                if let Some(en) = &s.ensure {
                                    s.failed_definition_generation = Some(en.definition_generation);
                                }
                            });
                        }
                    }
                }
                Action::Stop => {
                    self.set_status(&slot, |s| s.status.state = "stopping".into());
                    match self.backend.stop(uuid).await {
                        Ok(()) => self.set_status(&slot, |s| {
                            s.status.state = "stopped".into();
                            s.status.error = None;
                        }),
                        Err(e) => {
                            self.set_status(&slot, |s| {
                                s.status.state = "running".into();
                                s.status.error = Some(format!("stop failed: {e}"));
                                if let Some(en) = &s.ensure {
                                    s.failed_definition_generation = Some(en.definition_generation);
                                }
                            });
                        }
                    }
                }
                Action::Reboot(def) => {
                    let target =
                        slot.state.lock().unwrap_or_else(|p| p.into_inner()).ensure.as_ref().map(|e| e.reboot_generation).unwrap_or(0);
                    match self.backend.reboot(&def).await {
                        Ok(()) => self.set_status(&slot, |s| {
                            s.applied_reboot_generation = target;
                            s.status.reboot_generation = target;
                            s.status.state = "running".into();
                            s.status.boot_timestamp = Some(now_iso());
                            s.status.error = None;
                        }),
                        Err(e) => self.set_status(&slot, |s| {
                            s.applied_reboot_generation = target;
                            s.status.reboot_generation = target;
                            s.status.state = if self.stopping.load(Ordering::SeqCst) { s.status.state.clone() } else { "stopped".into() };
                            s.status.error = Some(format!("reboot failed: {e}"));
                        }),
                    }
                }
                Action::SkipReboot(g) => self.set_status(&slot, |s| {
                    s.applied_reboot_generation = g;
                    s.status.reboot_generation = g;
                }),
                Action::Snapshot(op, name, def) => match self.backend.snapshot(&def, op, &name).await {
                    Ok(()) => self.set_status(&slot, |s| {
                        match op {
                            SnapshotOp::Create => s.status.snapshots.push(name.clone()),
                            _ => s.status.snapshots.retain(|n| n != &name),
                        }
                        s.status.error = None;
                    }),
                    Err(e) => {
                        tracing::warn!(vm = %uuid, snapshot = %name, error = %e, "snapshot failed");
                        self.set_status(&slot, |s| {
                            s.status.error = Some(format!("snapshot {name:?}: {e}"));
                            if let Some(en) = &s.ensure {
                                s.failed_definition_generation = Some(en.definition_generation);
                            }
                        });
                    }
                },
                Action::Rollback(name, generation, def) => {
                    let result = self.backend.snapshot(&def, SnapshotOp::Rollback, &name).await;
                    if let Err(e) = &result {
                        tracing::warn!(vm = %uuid, snapshot = %name, error = %e, "rollback failed");
                    }
                    self.set_status(&slot, |s| {
                        s.applied_rollback_generation = generation;
                        s.status.rollback_generation = generation;
                        s.status.error = result.as_ref().err().map(|e| format!("rollback to {name:?}: {e}"));
                        if result.is_err()
                            && let Some(en) = &s.ensure
                        {
                            s.failed_definition_generation = Some(en.definition_generation);
                        }
                    });
                }
            }
        }
    }
}

/// Whether the VM restarts by itself when it dies (vmadm's `autoboot`).
fn autoboot(s: &SlotState) -> bool {
    s.ensure.as_ref().is_some_and(|e| e.state == Desired::Running && e.definition.autoboot == Some(true))
}

/// The VM is to stay stopped until asked again (a new ensure from the headnode).
fn stay_stopped(s: &mut SlotState) {
    if let Some(e) = s.ensure.as_mut() {
        e.state = Desired::Stopped;
    }
    s.status.agent_decided = Some(Desired::Stopped);
}

/// The metadata server's view of one VM: its slot's definition; writes go upstream.
struct SlotSource {
    node: std::sync::Weak<Node>,
    uuid: Uuid,
}

#[async_trait]
impl Source for SlotSource {
    fn view(&self) -> Option<VmView> {
        let node = self.node.upgrade()?;
        let slot = node.slot(self.uuid)?;
        let def = slot.state.lock().unwrap_or_else(|p| p.into_inner()).ensure.as_ref()?.definition.clone();
        Some(VmView { def, server_uuid: node.uuid, datacenter_name: None, dns_domain: None })
    }

    async fn write(&self, w: MetadataWrite) -> Result<(), String> {
        let node = self.node.upgrade().ok_or("the agent is shutting down")?;
        node.guest_write(self.uuid, w).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_types::agent::Definition;

    fn def() -> Definition {
        serde_json::from_value(serde_json::json!({"uuid": Uuid::nil(), "brand": "bhyve", "owner_uuid": Uuid::nil(), "ram": 512, "vcpus": 1, "disks": [], "nics": []})).unwrap()
    }

    fn state(desired: Desired, created: bool, running: bool) -> SlotState {
        SlotState {
            ensure: Some(Ensure {
                state: desired,
                definition: def(),
                definition_generation: 1,
                reboot_generation: 0,
                snapshots: vec![],
                rollback_to: None,
                rollback_generation: 0,
            }),
            delete: false,
            created,
            applied: created.then(def),
            applied_definition_generation: if created { 1 } else { 0 },
            applied_reboot_generation: 0,
            failed_definition_generation: None,
            applied_rollback_generation: 0,
            status: VmStatus::new(Uuid::nil(), if running { "running" } else { "stopped" }, 1),
        }
    }

    /// A headnode that cannot be reached.
    struct Away;

    #[async_trait]
    impl Upstream for Away {
        async fn metadata_write(&self, _vm: Uuid, _w: &MetadataWrite) -> Result<(), String> {
            Err("cannot reach the headnode: connection refused".into())
        }
    }

    #[tokio::test]
    async fn while_the_headnode_is_away_vms_run_and_metadata_is_served_from_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(crate::backend::sim::Sim::open(dir.path().join("sim.json"), crate::backend::sim::Delays::default()));
        let (tx, _rx) = mpsc::unbounded_channel();
        let node = Node::open(Uuid::new_v4(), backend, Arc::new(Away), dir.path().join("node"), tx).await.unwrap();
        let mut d = def();
        d.customer_metadata.insert("user-script".into(), serde_json::json!("#!/bin/sh\necho hi"));
        let ensure = Ensure {
            state: Desired::Running,
            definition: d,
            definition_generation: 1,
            reboot_generation: 0,
            snapshots: vec![],
            rollback_to: None,
            rollback_generation: 0,
        };
        node.ensure(ensure);
        for _ in 0..100 {
            if node.get(Uuid::nil()).is_some_and(|s| s.state == "running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(node.get(Uuid::nil()).map(|s| s.state), Some("running".to_string()));
        // What the metadata server reads comes from the agent's own copy of the VM.
        let source = SlotSource { node: Arc::downgrade(&node), uuid: Uuid::nil() };
        let view = source.view().expect("the VM is served");
        assert_eq!(view.def.customer_metadata["user-script"], "#!/bin/sh\necho hi");
        // A guest's write needs the headnode: it fails with why, and nothing changes.
        let mut w = MetadataWrite::default();
        w.set_customer_metadata.insert("k".into(), serde_json::json!("v"));
        let e = source.write(w).await.unwrap_err();
        assert!(e.contains("cannot reach the headnode"), "{e}");
        assert!(!source.view().unwrap().def.customer_metadata.contains_key("k"));
        assert_eq!(node.get(Uuid::nil()).map(|s| s.state), Some("running".to_string()), "the VM keeps running");
    }

    #[tokio::test]
    async fn generations_are_never_reused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("node");
        let open = || async {
            let backend = Arc::new(crate::backend::sim::Sim::open(dir.path().join("sim.json"), crate::backend::sim::Delays::default()));
            let (tx, _rx) = mpsc::unbounded_channel();
            Node::open(Uuid::nil(), backend, Arc::new(Away), node_dir.clone(), tx).await.unwrap()
        };
        let node = open().await;
        let handed: Vec<i64> = (0..5).map(|_| node.next_generation()).collect();
        drop(node);
        // The file (what a crash leaves) is ahead of everything handed out.
        let on_disk: i64 = std::fs::read_to_string(node_dir.join("generation")).unwrap().trim().parse().unwrap();
        assert!(on_disk >= *handed.iter().max().unwrap(), "{on_disk} vs {handed:?}");
        let node = open().await;
        assert!(node.next_generation() > on_disk);
    }

    #[test]
    fn decides_one_step_at_a_time() {
        assert!(matches!(decide(&state(Desired::Running, false, false)), Action::Create(_)));
        assert!(matches!(decide(&state(Desired::Running, true, false)), Action::Start(_)));
        assert_eq!(decide(&state(Desired::Running, true, true)), Action::Idle);
        assert_eq!(decide(&state(Desired::Stopped, true, true)), Action::Stop);
        let mut s = state(Desired::Running, true, true);
        s.ensure.as_mut().unwrap().reboot_generation = 1;
        assert!(matches!(decide(&s), Action::Reboot(_)));
        s.status.state = "stopped".into();
        s.ensure.as_mut().unwrap().state = Desired::Stopped;
        assert_eq!(decide(&s), Action::SkipReboot(1));
        let mut s = state(Desired::Stopped, true, false);
        s.ensure.as_mut().unwrap().definition_generation = 2;
        assert!(matches!(decide(&s), Action::Update(_, _)));
        s.delete = true;
        assert_eq!(decide(&s), Action::Delete);
        let mut s = state(Desired::Running, false, false);
        s.failed_definition_generation = Some(1);
        assert_eq!(decide(&s), Action::Idle, "a failed operation is not retried until asked again");
    }

    #[test]
    fn snapshots_converge_and_rollbacks_stop_the_vm_first() {
        let mut s = state(Desired::Running, true, true);
        s.ensure.as_mut().unwrap().snapshots = vec!["a".into(), "b".into()];
        s.status.snapshots = vec!["a".into(), "old".into()];
        assert!(matches!(decide(&s), Action::Snapshot(SnapshotOp::Create, ref n, _) if n == "b"));
        s.status.snapshots.push("b".into());
        assert!(matches!(decide(&s), Action::Snapshot(SnapshotOp::Delete, ref n, _) if n == "old"));
        s.status.snapshots.retain(|n| n != "old");
        assert_eq!(decide(&s), Action::Idle);
        let e = s.ensure.as_mut().unwrap();
        e.rollback_to = Some("a".into());
        e.rollback_generation = 1;
        assert_eq!(decide(&s), Action::Stop, "rollback needs the VM stopped");
        s.status.state = "stopped".into();
        assert!(matches!(decide(&s), Action::Rollback(ref n, 1, _) if n == "a"));
        s.applied_rollback_generation = 1;
        assert!(matches!(decide(&s), Action::Start(_)), "and then it runs again");
    }

    #[test]
    fn autoboot_decides_whether_a_dead_vm_restarts() {
        let mut s = state(Desired::Running, true, false);
        assert!(!autoboot(&s));
        s.ensure.as_mut().unwrap().definition.autoboot = Some(true);
        assert!(autoboot(&s));
        stay_stopped(&mut s);
        assert!(!autoboot(&s));
        assert_eq!(decide(&s), Action::Idle, "a VM that stays stopped is not started again");
    }
}
