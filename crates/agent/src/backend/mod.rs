//! Hypervisor backends: what actually runs VMs. The supervisor decides *what* to do;
//! a backend does it. `sim` simulates a hypervisor; `qemu` (next) runs real guests.

use async_trait::async_trait;
use nereid_types::agent::Definition;
use uuid::Uuid;

pub mod sim;

/// A backend operation that failed; the message reaches the job that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Creates everything the VM needs (disks, …); it exists stopped afterwards.
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
}
