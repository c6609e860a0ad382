//! Hypervisor backends: what actually runs VMs. The supervisor decides *what* to do;
//! a backend does it. `qemu` runs real guests; `sim` simulates a hypervisor (tests,
//! scale runs). A new backend implements [`Backend`] and is chosen in `crate::BackendKind`.

use std::path::PathBuf;

use async_trait::async_trait;
use nereid_types::agent::Definition;
use uuid::Uuid;

pub mod qemu;
pub mod sim;

/// A backend operation that failed; the message reaches the job that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What to do with a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotOp {
    Create,
    Rollback,
    Delete,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Creates everything the VM needs (disks, …); it exists stopped afterwards. A failed
    /// create leaves nothing behind.
    async fn create(&self, def: &Definition) -> Result<(), BackendError>;
    async fn start(&self, def: &Definition) -> Result<(), BackendError>;
    async fn stop(&self, uuid: Uuid) -> Result<(), BackendError>;
    async fn reboot(&self, def: &Definition) -> Result<(), BackendError>;
    /// Applies a changed definition (the VM is stopped for hardware changes).
    async fn update(&self, old: &Definition, new: &Definition) -> Result<(), BackendError>;
    /// Removes the VM and everything it had; succeeds if it does not exist.
    async fn delete(&self, uuid: Uuid) -> Result<(), BackendError>;
    /// Whether the VM is running right now.
    async fn is_running(&self, uuid: Uuid) -> bool;
    /// Whether the VM exists.
    async fn exists(&self, uuid: Uuid) -> bool;
    /// Creates, rolls back to (VM stopped) or deletes a snapshot of every disk.
    async fn snapshot(&self, def: &Definition, op: SnapshotOp, name: &str) -> Result<(), BackendError>;
    /// Writes the VM's boot disk (`disks[0]`) flattened — its image base and everything
    /// the guest wrote, one standalone disk without a backing file — to a new file and
    /// returns its path; the caller streams it and removes it. The VM must be stopped.
    async fn export_boot_disk(&self, _uuid: Uuid) -> Result<PathBuf, BackendError> {
        Err(BackendError(format!("the {} backend cannot export disks", self.name())))
    }
    // ---- Migration (see `nereid_types::migration` and `crate::migration`). The agent's
    // migration module drives these; the relay between the two agents is its, not the
    // backend's: a backend only ever sees local UNIX sockets. A backend without live
    // migration keeps the defaults, and its VMs move offline (stopped, files copied).

    /// Whether [`Backend::migrate_incoming`] and the rest of the live path work here.
    fn can_migrate_live(&self) -> bool {
        false
    }
    /// The files that hold the VM's state (its disks and the like), for an offline copy:
    /// `(name, path)`; the target receives each under the same name (see
    /// [`Backend::migration_file_path`]). The VM must be stopped.
    async fn migration_files(&self, _uuid: Uuid) -> Result<Vec<(String, PathBuf)>, BackendError> {
        Ok(Vec::new())
    }
    /// Where the target writes the received file `name` of an offline copy (the VM was
    /// created here by prepare; a name it does not expect is refused).
    fn migration_file_path(&self, _uuid: Uuid, name: &str) -> Result<PathBuf, BackendError> {
        Err(BackendError(format!("the {} backend takes no migration file {name:?}", self.name())))
    }
    /// Target: starts the (created, stopped) VM waiting for an incoming live migration —
    /// paused, its disks exported for the source's mirror. Returns the local sockets the
    /// agent's relay connects the source's streams to. Idempotent.
    async fn migrate_incoming(&self, _def: &Definition) -> Result<IncomingSockets, BackendError> {
        Err(BackendError(format!("the {} backend cannot migrate live", self.name())))
    }
    /// Source: starts mirroring every disk of the running VM into `nbd` (a UNIX socket the
    /// agent's relay listens on, leading to the target's export). Idempotent.
    async fn migrate_mirror_start(&self, _uuid: Uuid, _nbd: &std::path::Path) -> Result<(), BackendError> {
        Err(BackendError(format!("the {} backend cannot migrate live", self.name())))
    }
    /// Source: how far the mirror is.
    async fn migrate_mirror_status(&self, _uuid: Uuid) -> Result<MirrorStatus, BackendError> {
        Err(BackendError(format!("the {} backend cannot migrate live", self.name())))
    }
    /// Source: stops the mirror (the target's disks are then of no use until a new sync).
    async fn migrate_mirror_cancel(&self, _uuid: Uuid) -> Result<(), BackendError> {
        Ok(())
    }
    /// Source: moves the guest's RAM and device state into `ram` (a UNIX socket of the
    /// relay), with the mirror in step; returns once the target holds everything, the
    /// source paused and its mirror completed. A guest that does not converge within
    /// `deadline` is left running here and answered with `converged: false`.
    async fn migrate_ram(&self, _uuid: Uuid, _ram: &std::path::Path, _opts: &RamOptions) -> Result<RamOutcome, BackendError> {
        Err(BackendError(format!("the {} backend cannot migrate live", self.name())))
    }
    /// Source: runs the paused guest again (a switch that could not be committed).
    async fn migrate_resume_source(&self, _uuid: Uuid) -> Result<(), BackendError> {
        Ok(())
    }
    /// Target: runs the migrated guest (ends the export, continues the paused VM).
    async fn migrate_resume_target(&self, _uuid: Uuid) -> Result<(), BackendError> {
        Err(BackendError(format!("the {} backend cannot migrate live", self.name())))
    }
    /// Where the agent puts the VM's migration sockets (the relay's ends the backend's
    /// process connects to): a directory that process can reach. `None`: the agent's own.
    fn migration_socket_dir(&self, _uuid: Uuid) -> Option<PathBuf> {
        None
    }
    /// The UNIX socket of the VM's metadata port (com2), for backends with guests.
    fn metadata_socket(&self, _uuid: Uuid) -> Option<PathBuf> {
        None
    }
    /// The VM's serial console socket (com1) and the ring log the agent keeps of it.
    fn console_paths(&self, _uuid: Uuid) -> Option<(PathBuf, PathBuf)> {
        None
    }
    /// The VM's VNC socket.
    fn vnc_socket(&self, _uuid: Uuid) -> Option<PathBuf> {
        None
    }
    /// Makes the host's nic tags carry the MTUs their networks need (`wanted`, per tag);
    /// what could not be done, as problems for the server record.
    async fn check_network(&self, _wanted: &std::collections::BTreeMap<String, u32>) -> Vec<nereid_types::agent::Problem> {
        Vec::new()
    }
    /// Applies the node's network policy (overlay peers, firewalls) whole; the sim backend
    /// has no devices and only accepts it.
    async fn apply_netpolicy(&self, _policy: &nereid_types::netpolicy::NetPolicy) -> Result<(), String> {
        Ok(())
    }
    /// The running VM's resource counters for `/metrics` (see [`crate::vm_stats`]); `None`:
    /// this backend has none.
    async fn vm_counters(&self, _def: &Definition) -> Result<Option<crate::vm_stats::Counters>, BackendError> {
        Ok(None)
    }
    /// Per nic tag: this server's IPv4 address on the tag's link (the first global one).
    async fn nic_tag_addresses(&self) -> std::collections::BTreeMap<String, String> {
        Default::default()
    }
}

/// The local sockets of a VM waiting for an incoming live migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingSockets {
    /// Where the guest's RAM and device state are received.
    pub ram: PathBuf,
    /// The NBD server exporting the VM's disks (`disk0`, `disk1`, … by disk index).
    pub nbd: PathBuf,
}

/// How far a mirror is: bytes copied of bytes to copy, and whether it is in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MirrorStatus {
    pub done: u64,
    pub total: u64,
    /// Every disk is in step with the guest (the mirror now follows its writes).
    pub ready: bool,
}

/// How to move the RAM.
#[derive(Debug, Clone, PartialEq)]
pub struct RamOptions {
    /// Bytes per second at most (`None`: as fast as it goes).
    pub max_bandwidth: Option<u64>,
    /// How long the guest has to converge before the source gives up and keeps it.
    pub deadline: std::time::Duration,
    /// The longest pause tolerated at the end (QEMU's downtime-limit).
    pub downtime_limit_ms: u64,
}

/// What a RAM migration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RamOutcome {
    /// `false`: the guest did not converge in time and still runs on the source.
    pub converged: bool,
    /// The guest's pause at the end, milliseconds.
    pub pause_ms: u64,
    /// RAM bytes sent.
    pub ram_bytes: u64,
}
