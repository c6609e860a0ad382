//! A simulated hypervisor: VMs with realistic state transitions and delays, kept on disk so
//! they "outlive" the agent like real ones, and faults on demand.
//!
//! Faults come from the VM's `internal_metadata["nereid:sim_fault"]`:
//! `fail-create`, `hang-create` (never finishes), `fail-start`, `fail-stop`,
//! `crash` (stops by itself shortly after booting), `fail-delete`, `fail-export`.
//!
//! A simulated VM's boot disk, when exported for an image, is a small raw disk
//! ([`SIM_DISK_SIZE`]) whose first sector names the VM, so tests can tell images apart.
//!
//! Migration: the sim migrates live through the agent's real relay. The target listens on
//! two UNIX sockets (`mig-<vm>-nbd.sock`, `mig-<vm>-ram.sock` next to its state file) and
//! counts what arrives ([`Sim::received`]); the source's mirror writes a synthetic disk
//! ([`SIM_MIRROR_BYTES`] per disk) and its RAM migration `ram` KiB (the VM's MiB, scaled
//! down). An offline copy moves one small file, `disk0` ([`sim_disk`]). Migration faults:
//! `fail-migrate-prepare` (the target's live prepare fails; nothing is left there),
//! `fail-migrate-transfer` (the source's mirror is cut halfway: every sync of that VM
//! fails), `fail-migrate-switch` (the target's guest dies at the switch: its live resume
//! fails and the VM is stopped there).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use async_trait::async_trait;
use nereid_types::agent::{Definition, SIM_FAULT_KEY};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Backend, BackendError, IncomingSockets, MirrorStatus, RamOptions, RamOutcome, SnapshotOp};

/// How long simulated operations take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    pub create: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub crash_after: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        Delays {
            create: Duration::from_millis(300),
            start: Duration::from_millis(100),
            stop: Duration::from_millis(100),
            crash_after: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SimVm {
    running: bool,
    fault: Option<String>,
    /// When a crashing VM stops by itself (ms since the epoch).
    crash_at_ms: Option<i64>,
    #[serde(default)]
    snapshots: Vec<String>,
    /// Sizes for the synthetic migration streams.
    #[serde(default)]
    ram_mib: u64,
    #[serde(default)]
    disks: u64,
}

/// Bytes a simulated live mirror moves per disk (256 KiB).
pub const SIM_MIRROR_BYTES: u64 = 256 << 10;

/// A VM waiting for an incoming migration: what its sockets received.
#[derive(Default)]
struct Incoming {
    nbd: Arc<AtomicU64>,
    ram: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// An outgoing mirror.
struct Mirror {
    done: Arc<AtomicU64>,
    total: u64,
    ready: Arc<AtomicBool>,
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Sim {
    delays: Delays,
    file: PathBuf,
    vms: Mutex<HashMap<Uuid, SimVm>>,
    /// What the simulated server reports as its address on each nic tag.
    addresses: Mutex<std::collections::BTreeMap<String, String>>,
    incoming: Mutex<HashMap<Uuid, Incoming>>,
    mirrors: Mutex<HashMap<Uuid, Mirror>>,
}

/// Bytes of a simulated boot disk as exported (1 MiB).
pub const SIM_DISK_SIZE: usize = 1 << 20;

/// The simulated boot disk of `vm` (pure): a raw disk whose first sector reads
/// `NEREID-SIM-DISK vm=<uuid>`, zeros after.
pub fn sim_disk(vm: Uuid) -> Vec<u8> {
    let mut disk = vec![0u8; SIM_DISK_SIZE];
    let label = format!("NEREID-SIM-DISK vm={vm}\n");
    disk[..label.len()].copy_from_slice(label.as_bytes());
    disk
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn fault(def: &Definition) -> Option<String> {
    def.internal_metadata.get(SIM_FAULT_KEY).and_then(|v| v.as_str()).map(str::to_string)
}

impl Sim {
    /// A simulated hypervisor whose VMs live in `file`.
    pub fn open(file: PathBuf, delays: Delays) -> Self {
        let vms = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Sim { delays, file, vms: Mutex::new(vms), addresses: Mutex::default(), incoming: Mutex::default(), mirrors: Mutex::default() }
    }

    /// Sets the addresses the server reports on its nic tags (it has no links of its own).
    pub fn set_nic_tag_addresses(&self, addresses: std::collections::BTreeMap<String, String>) {
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    /// Reads the VMs (nothing written: the simulated hypervisor is asked whether a VM runs
    /// every second per VM).
    fn read<R>(&self, f: impl FnOnce(&HashMap<Uuid, SimVm>) -> R) -> R {
        f(&self.vms.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes the VMs and writes them to the file.
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Uuid, SimVm>) -> R) -> R {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut vms);
        // Whole or not at all, but not flushed: a simulator need not survive a power cut.
        if let Ok(bytes) = serde_json::to_vec(&*vms) {
            let _ = crate::durable::write_swapped(&self.file, &bytes);
        }
        r
    }

    fn has_fault(&self, uuid: Uuid, f: &str) -> bool {
        self.read(|v| v.get(&uuid).and_then(|x| x.fault.as_deref()) == Some(f))
    }

    fn dir(&self) -> PathBuf {
        self.file.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn disk_file(&self, uuid: Uuid) -> PathBuf {
        self.dir().join(format!("sim-disk-{uuid}.raw"))
    }

    /// Bytes received so far by the VM's incoming migration: `(disks, RAM)`.
    pub fn received(&self, uuid: Uuid) -> (u64, u64) {
        let inc = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        inc.get(&uuid).map(|i| (i.nbd.load(Ordering::SeqCst), i.ram.load(Ordering::SeqCst))).unwrap_or_default()
    }
}

/// Accepts connections on `listener` and counts every byte they bring into `count`.
fn count_into(listener: tokio::net::UnixListener, count: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    count.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
        }
    })
}

fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, BackendError> {
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).map_err(|e| BackendError(format!("listening on {}: {e}", path.display())))
}

/// Writes `total` synthetic bytes to `to` in chunks, counting them in `done`; stops after
/// `cut_at` bytes with an error when given.
async fn write_synthetic(to: &Path, total: u64, done: &AtomicU64, cut_at: Option<u64>) -> Result<(), String> {
    let mut c = tokio::net::UnixStream::connect(to).await.map_err(|e| format!("connecting to {}: {e}", to.display()))?;
    let chunk = vec![0x5au8; 16 << 10];
    let mut sent = 0u64;
    while sent < total {
        if cut_at.is_some_and(|at| sent >= at) {
            return Err(format!(
                "simulated: the transfer was cut after {sent} of {total} bytes (nereid:sim_fault={})",
                nereid_types::migration::SIM_FAULT_TRANSFER
            ));
        }
        let n = (total - sent).min(chunk.len() as u64) as usize;
        c.write_all(&chunk[..n]).await.map_err(|e| format!("writing to {}: {e}", to.display()))?;
        sent += n as u64;
        done.store(sent, Ordering::SeqCst);
    }
    c.shutdown().await.map_err(|e| format!("closing {}: {e}", to.display()))?;
    // The far end closes once it has taken everything (end to end, through the relay).
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.map_err(|e| format!("waiting for {} to take everything: {e}", to.display()))?;
    Ok(())
}

#[async_trait]
impl Backend for Sim {
    async fn nic_tag_addresses(&self) -> std::collections::BTreeMap<String, String> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn name(&self) -> &'static str {
        "sim"
    }

    async fn create(&self, def: &Definition) -> Result<(), BackendError> {
        let fault = fault(def);
        tokio::time::sleep(self.delays.create).await;
        match fault.as_deref() {
            Some("fail-create") => return Err(BackendError("simulated failure creating the VM (nereid:sim_fault=fail-create)".into())),
            Some("hang-create") => std::future::pending::<()>().await,
            _ => {}
        }
        let (ram_mib, disks) = (def.ram, def.disks.len() as u64);
        self.with(|v| v.insert(def.uuid, SimVm { running: false, fault, crash_at_ms: None, snapshots: Vec::new(), ram_mib, disks }));
        Ok(())
    }

    async fn start(&self, def: &Definition) -> Result<(), BackendError> {
        tokio::time::sleep(self.delays.start).await;
        let fault = fault(def);
        if fault.as_deref() == Some("fail-start") {
            return Err(BackendError("simulated failure starting the VM (nereid:sim_fault=fail-start)".into()));
        }
        let crash = (fault.as_deref() == Some("crash")).then(|| now_ms() + self.delays.crash_after.as_millis() as i64);
        self.with(|v| match v.get_mut(&def.uuid) {
            Some(vm) => {
                vm.running = true;
                vm.fault = fault;
                vm.crash_at_ms = crash;
                Ok(())
            }
            None => Err(BackendError(format!("VM {} does not exist", def.uuid))),
        })
    }

    async fn stop(&self, uuid: Uuid) -> Result<(), BackendError> {
        tokio::time::sleep(self.delays.stop).await;
        if self.has_fault(uuid, "fail-stop") {
            return Err(BackendError("simulated failure stopping the VM (nereid:sim_fault=fail-stop)".into()));
        }
        self.with(|v| {
            if let Some(vm) = v.get_mut(&uuid) {
                vm.running = false;
                vm.crash_at_ms = None;
            }
        });
        Ok(())
    }

    async fn export_boot_disk(&self, uuid: Uuid) -> Result<PathBuf, BackendError> {
        let state = self.read(|v| v.get(&uuid).map(|vm| (vm.running, vm.fault.clone())));
        match state {
            None => Err(BackendError(format!("VM {uuid} does not exist"))),
            Some((true, _)) => Err(BackendError(format!("VM {uuid} is running: its disk is exported only while it is stopped"))),
            Some((false, Some(f))) if f == "fail-export" => {
                Err(BackendError("simulated failure exporting the boot disk (nereid:sim_fault=fail-export)".into()))
            }
            Some((false, _)) => {
                let out = self.file.with_file_name(format!("export-{uuid}-{}.raw", Uuid::new_v4()));
                std::fs::write(&out, sim_disk(uuid)).map_err(|e| BackendError(format!("writing {}: {e}", out.display())))?;
                Ok(out)
            }
        }
    }

    async fn reboot(&self, def: &Definition) -> Result<(), BackendError> {
        self.stop(def.uuid).await?;
        self.start(def).await
    }

    async fn update(&self, _old: &Definition, new: &Definition) -> Result<(), BackendError> {
        self.with(|v| {
            if let Some(vm) = v.get_mut(&new.uuid) {
                vm.fault = fault(new);
            }
        });
        Ok(())
    }

    async fn delete(&self, uuid: Uuid) -> Result<(), BackendError> {
        if self.has_fault(uuid, "fail-delete") {
            return Err(BackendError("simulated failure deleting the VM (nereid:sim_fault=fail-delete)".into()));
        }
        self.with(|v| v.remove(&uuid));
        self.incoming.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
        self.mirrors.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
        let _ = std::fs::remove_file(self.disk_file(uuid));
        Ok(())
    }

    fn can_migrate_live(&self) -> bool {
        true
    }

    async fn migration_files(&self, uuid: Uuid) -> Result<Vec<(String, PathBuf)>, BackendError> {
        if !self.read(|v| v.contains_key(&uuid)) {
            return Err(BackendError(format!("VM {uuid} does not exist")));
        }
        let path = self.disk_file(uuid);
        if !path.exists() {
            std::fs::write(&path, sim_disk(uuid)).map_err(|e| BackendError(format!("writing {}: {e}", path.display())))?;
        }
        Ok(vec![("disk0".into(), path)])
    }

    fn migration_file_path(&self, uuid: Uuid, name: &str) -> Result<PathBuf, BackendError> {
        match name {
            "disk0" => Ok(self.disk_file(uuid)),
            _ => Err(BackendError(format!("the sim backend takes no migration file {name:?} (only disk0)"))),
        }
    }

    async fn migrate_incoming(&self, def: &Definition) -> Result<IncomingSockets, BackendError> {
        if fault(def).as_deref() == Some(nereid_types::migration::SIM_FAULT_PREPARE) {
            return Err(BackendError(format!(
                "simulated failure preparing the incoming migration (nereid:sim_fault={})",
                nereid_types::migration::SIM_FAULT_PREPARE
            )));
        }
        let short = &def.uuid.to_string()[..8];
        let socks = IncomingSockets {
            ram: self.dir().join(format!("mig-{short}-ram.sock")),
            nbd: self.dir().join(format!("mig-{short}-nbd.sock")),
        };
        let mut inc = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        if inc.contains_key(&def.uuid) {
            return Ok(socks);
        }
        let mut i = Incoming::default();
        i.tasks.push(count_into(bind_unix(&socks.nbd)?, i.nbd.clone()));
        i.tasks.push(count_into(bind_unix(&socks.ram)?, i.ram.clone()));
        inc.insert(def.uuid, i);
        Ok(socks)
    }

    async fn migrate_mirror_start(&self, uuid: Uuid, nbd: &Path) -> Result<(), BackendError> {
        let Some((disks, fault)) = self.read(|v| v.get(&uuid).map(|vm| (vm.disks, vm.fault.clone()))) else {
            return Err(BackendError(format!("VM {uuid} does not exist")));
        };
        let mut mirrors = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        if mirrors.get(&uuid).is_some_and(|m| m.error.lock().unwrap_or_else(|p| p.into_inner()).is_none()) {
            return Ok(());
        }
        let total = disks.max(1) * SIM_MIRROR_BYTES;
        let cut = (fault.as_deref() == Some(nereid_types::migration::SIM_FAULT_TRANSFER)).then_some(total / 2);
        let (done, ready, error) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(None)));
        let (d, r, e, to) = (done.clone(), ready.clone(), error.clone(), nbd.to_path_buf());
        let task = tokio::spawn(async move {
            match write_synthetic(&to, total, &d, cut).await {
                Ok(()) => r.store(true, Ordering::SeqCst),
                Err(m) => *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(m),
            }
        });
        mirrors.insert(uuid, Mirror { done, total, ready, error, task });
        Ok(())
    }

    async fn migrate_mirror_status(&self, uuid: Uuid) -> Result<MirrorStatus, BackendError> {
        let mirrors = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        let m = mirrors.get(&uuid).ok_or_else(|| BackendError(format!("no mirror of VM {uuid} is running")))?;
        if let Some(e) = m.error.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(BackendError(e));
        }
        Ok(MirrorStatus { done: m.done.load(Ordering::SeqCst), total: m.total, ready: m.ready.load(Ordering::SeqCst) })
    }

    async fn migrate_mirror_cancel(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.mirrors.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
        Ok(())
    }

    async fn migrate_ram(&self, uuid: Uuid, ram: &Path, _opts: &RamOptions) -> Result<RamOutcome, BackendError> {
        let Some(ram_mib) = self.read(|v| v.get(&uuid).map(|vm| vm.ram_mib)) else {
            return Err(BackendError(format!("VM {uuid} does not exist")));
        };
        let total = ram_mib.max(1) * 1024;
        let done = AtomicU64::new(0);
        let t = std::time::Instant::now();
        write_synthetic(ram, total, &done, None).await.map_err(BackendError)?;
        // The last round (a tenth of the RAM) is what a paused guest would wait for.
        let pause_ms = (t.elapsed().as_millis() as u64 / 10).max(1);
        self.mirrors.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
        Ok(RamOutcome { converged: true, pause_ms, ram_bytes: total })
    }

    async fn migrate_resume_source(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.with(|v| v.get_mut(&uuid).map(|vm| vm.running = true));
        Ok(())
    }

    async fn migrate_resume_target(&self, uuid: Uuid) -> Result<(), BackendError> {
        self.incoming.lock().unwrap_or_else(|p| p.into_inner()).remove(&uuid);
        if self.has_fault(uuid, nereid_types::migration::SIM_FAULT_SWITCH) {
            self.with(|v| v.get_mut(&uuid).map(|vm| vm.running = false));
            return Err(BackendError(format!(
                "simulated: the migrated guest died as it was resumed (nereid:sim_fault={})",
                nereid_types::migration::SIM_FAULT_SWITCH
            )));
        }
        match self.with(|v| v.get_mut(&uuid).map(|vm| vm.running = true)) {
            Some(()) => Ok(()),
            None => Err(BackendError(format!("VM {uuid} does not exist"))),
        }
    }

    /// Synthetic: no CPU time or I/O (zero, one series per disk and NIC), the configured RAM resident.
    async fn vm_counters(&self, def: &Definition) -> Result<Option<crate::vm_stats::Counters>, BackendError> {
        use crate::vm_stats::{Counters, DiskIo, NicIo};
        let disks = (0..def.disks.len()).map(|i| DiskIo { device: format!("disk{i}"), ..Default::default() }).collect();
        let nics = (0..def.nics.len()).map(|i| NicIo { nic: format!("net{i}"), ..Default::default() }).collect();
        Ok(self.is_running(def.uuid).await.then_some(Counters { cpu_seconds: 0.0, rss_bytes: def.ram << 20, disks, nics }))
    }

    async fn is_running(&self, uuid: Uuid) -> bool {
        let crashes = |vm: &SimVm| vm.crash_at_ms.is_some_and(|t| now_ms() >= t);
        // Written only when a simulated crash happens now.
        if let Some(running) = self.read(|v| v.get(&uuid).map(|vm| (!crashes(vm)).then_some(vm.running))).unwrap_or(Some(false)) {
            return running;
        }
        self.with(|v| match v.get_mut(&uuid) {
            Some(vm) if vm.crash_at_ms.is_some_and(|t| now_ms() >= t) => {
                vm.running = false;
                vm.crash_at_ms = None;
                false
            }
            Some(vm) => vm.running,
            None => false,
        })
    }

    async fn exists(&self, uuid: Uuid) -> bool {
        self.read(|v| v.contains_key(&uuid))
    }

    async fn snapshot(&self, def: &Definition, op: SnapshotOp, name: &str) -> Result<(), BackendError> {
        self.with(|v| {
            let vm = v.get_mut(&def.uuid).ok_or_else(|| BackendError(format!("VM {} does not exist", def.uuid)))?;
            let has = vm.snapshots.iter().any(|s| s == name);
            match op {
                SnapshotOp::Create if !has => vm.snapshots.push(name.to_string()),
                SnapshotOp::Create => {}
                SnapshotOp::Rollback if vm.running => return Err(BackendError("the VM must be stopped to roll back".into())),
                SnapshotOp::Rollback if !has => return Err(BackendError(format!("no snapshot named {name:?}"))),
                SnapshotOp::Rollback => {}
                SnapshotOp::Delete => vm.snapshots.retain(|s| s != name),
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(uuid: Uuid, fault: Option<&str>) -> Definition {
        let mut d: Definition = serde_json::from_value(serde_json::json!({
            "uuid": uuid, "brand": "bhyve", "owner_uuid": Uuid::nil(), "ram": 256, "vcpus": 1, "disks": [], "nics": []
        }))
        .unwrap();
        if let Some(f) = fault {
            d.internal_metadata.insert(SIM_FAULT_KEY.into(), serde_json::json!(f));
        }
        d
    }

    #[tokio::test]
    async fn a_stopped_vm_exports_a_disk_that_names_it_and_a_running_or_faulty_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::open(dir.path().join("sim.json"), Delays { create: Duration::ZERO, ..Delays::default() });
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        sim.create(&def(a, None)).await.unwrap();
        let out = sim.export_boot_disk(a).await.unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes, sim_disk(a));
        assert!(bytes.starts_with(format!("NEREID-SIM-DISK vm={a}\n").as_bytes()));
        assert_ne!(sim_disk(a), sim_disk(b), "disks of two VMs differ");
        sim.start(&def(a, None)).await.unwrap();
        assert!(sim.export_boot_disk(a).await.unwrap_err().0.contains("is running"));
        assert!(sim.export_boot_disk(b).await.unwrap_err().0.contains("does not exist"));
        sim.create(&def(b, Some("fail-export"))).await.unwrap();
        assert!(sim.export_boot_disk(b).await.unwrap_err().0.contains("fail-export"));
    }
}
