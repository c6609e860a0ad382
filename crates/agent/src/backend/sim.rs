//! A simulated hypervisor: VMs with realistic state transitions and delays, kept on disk so
//! they "outlive" the agent like real ones, and faults on demand.
//!
//! Faults come from the VM's `internal_metadata["nereid:sim_fault"]`:
//! `fail-create`, `hang-create` (never finishes), `fail-start`, `fail-stop`,
//! `crash` (stops by itself shortly after booting), `fail-delete`, `fail-export`.
//!
//! A simulated VM's boot disk, when exported for an image, is a small raw disk
//! ([`SIM_DISK_SIZE`]) whose first sector names the VM, so tests can tell images apart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::{Definition, SIM_FAULT_KEY};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Backend, BackendError, SnapshotOp};

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
}

pub struct Sim {
    delays: Delays,
    file: PathBuf,
    vms: Mutex<HashMap<Uuid, SimVm>>,
    /// What the simulated server reports as its address on each nic tag.
    addresses: Mutex<std::collections::BTreeMap<String, String>>,
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
        Sim { delays, file, vms: Mutex::new(vms), addresses: Mutex::default() }
    }

    /// Sets the addresses the server reports on its nic tags (it has no links of its own).
    pub fn set_nic_tag_addresses(&self, addresses: std::collections::BTreeMap<String, String>) {
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Uuid, SimVm>) -> R) -> R {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut vms);
        if let Ok(bytes) = serde_json::to_vec(&*vms) {
            let tmp = self.file.with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &self.file);
            }
        }
        r
    }

    fn has_fault(&self, uuid: Uuid, f: &str) -> bool {
        self.with(|v| v.get(&uuid).and_then(|x| x.fault.as_deref()) == Some(f))
    }
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
        self.with(|v| v.insert(def.uuid, SimVm { running: false, fault, crash_at_ms: None, snapshots: Vec::new() }));
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
        let state = self.with(|v| v.get(&uuid).map(|vm| (vm.running, vm.fault.clone())));
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
        Ok(())
    }

    async fn is_running(&self, uuid: Uuid) -> bool {
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
        self.with(|v| v.contains_key(&uuid))
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
