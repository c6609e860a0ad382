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
    /// Per nic tag: this server's IPv4 address on the tag's link (the first global one).
    async fn nic_tag_addresses(&self) -> std::collections::BTreeMap<String, String> {
        Default::default()
    }
}
