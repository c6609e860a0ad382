//! The agent protocol: what the headnode and a compute node's agent say to each other.
//!
//! ```text
//!   agent ── POST /servers/join (join token) ──────────────► headnode   → {server_uuid, secret}
//!   agent ── POST /servers/{uuid}/sysinfo ──────────────────► headnode   (at start and on change)
//!   agent ── POST /servers/{uuid}/events/heartbeat ─────────► headnode   (every few seconds: usage + inventory or its delta)
//!   agent ── POST /servers/{uuid}/vms/{vm}/status ──────────► headnode   (each state change, retried until acknowledged)
//!   headnode ── PUT /servers/{uuid}/vms/{vm} (Ensure) ──────► agent      ("make this VM be in this state with this definition")
//!   headnode ── DELETE /servers/{uuid}/vms/{vm} ────────────► agent      ("make this VM not exist")
//! ```
//!
//! Every request after the join carries `Authorization: Bearer <secret>`, the per-server
//! secret the join issued. "Ensure" requests are idempotent: sending one twice changes
//! nothing. The agent owns reality and numbers each VM's states with a generation only it
//! increments; the headnode ignores a report older than the last one it accepted.
//!
//! Heartbeats cost nothing when nothing changed: the agent numbers its VM inventory
//! (`inventory_generation`, bumped whenever any VM's status changes) and sends it whole
//! only when the headnode has none acknowledged; otherwise a delta against the acknowledged
//! generation, empty when nothing changed. The headnode writes the inventory only when it
//! changes; a delta on another base than the one it holds is refused with `send_full`.
//!
//! ```text
//!   agent                                                        headnode (inventories/{server})
//!     ── {vms: [a, b], inventory_generation: 1} ───────────────►  {gen 1, [a, b]} written
//!     ◄── {inventory_ack: 1} ──────────────────────────────────
//!     ── {delta: {base_generation: 1}, inventory_generation: 1} ►  nothing written
//!     ◄── {inventory_ack: 1} ──────────────────────────────────
//!        (a stops)
//!     ── {delta: {base 1, changed: [a'], removed: []}, gen 2} ──►  {gen 2, [a', b]} written, a' applied
//!     ◄── {inventory_ack: 2} ──────────────────────────────────
//!        (the headnode lost it, or another wrote gen 3)
//!     ── {delta: {base 2, …}, gen 2} ───────────────────────────►  base ≠ held: nothing applied
//!     ◄── {send_full: true} ───────────────────────────────────
//!     ── {vms: [a', b], inventory_generation: 2} ──────────────►  written, all applied
//! ```
//!
//! An agent older than deltas sends `vms` every time (no generation): taken as a full
//! inventory. A headnode older than deltas acknowledges nothing: the agent keeps sending
//! full inventories to it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The error code of the agent's 404 that means "this VM is not on this server".
pub const VM_NOT_FOUND: &str = "VmNotFound";

/// The state the headnode wants a VM in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// One disk of a VM (vmadm `disks[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuid: Option<Uuid>,
    /// MiB of the image's disk, when cloned from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
    /// MiB.
    pub size: u64,
    #[serde(default)]
    pub boot: bool,
    pub model: String,
    /// `disk` or `cdrom`.
    #[serde(default = "disk_media")]
    pub media: String,
    /// For cdroms: a path on the compute node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn disk_media() -> String {
    "disk".into()
}

/// One NIC of a VM (vmadm `nics[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicDef {
    pub mac: String,
    pub interface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub vlan_id: u16,
    pub nic_tag: String,
    pub mtu: u32,
    pub primary: bool,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_uuid: Option<Uuid>,
    /// The NIC's network's resolvers (DHCP option 6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
    /// The NIC's network's static routes, `{destination CIDR: gateway IP}` (DHCP option 121).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Map<String, Value>>,
    /// May send from MACs other than its own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_mac_spoofing: bool,
    /// May send from IPs other than its NAPI addresses.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_ip_spoofing: bool,
    /// May act as a DHCP server (and the agent's responder leaves this NIC alone).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_dhcp_spoofing: bool,
    /// May use several MACs (promiscuous mode: receive for them, send from them).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_unfiltered_promisc: bool,
    /// Whether the agent answers this NIC's DHCP requests (off when the network's
    /// `dhcp_server` is false).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub dhcp_server: bool,
    /// On a fabric network: the VXLAN segment (the fabric VLAN's vni) the NIC is on; its
    /// `nic_tag` is then [`crate::fabric::OVERLAY_TAG`] and `vlan_id` the fabric VLAN's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// On a fabric network with `internet_nat`: the node hosting this NIC answers as the
    /// network's `gateway` and masquerades to the outside.
    #[serde(default, skip_serializing_if = "is_false")]
    pub internet_nat: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// A VM as a hypervisor runs it: the part of the vmadm payload Nereid's backends use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub uuid: Uuid,
    pub brand: String,
    pub owner_uuid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Guest RAM, MiB.
    pub ram: u64,
    pub vcpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    /// Relative CPU weight (the package's `fss`; 100 = default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
    /// Relative I/O weight (100 = default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zfs_io_priority: Option<u32>,
    pub disks: Vec<DiskDef>,
    pub nics: Vec<NicDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootrom: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_type: Option<String>,
    #[serde(default)]
    pub customer_metadata: Map<String, Value>,
    #[serde(default)]
    pub internal_metadata: Map<String, Value>,
    #[serde(default)]
    pub tags: Map<String, Value>,
    #[serde(default)]
    pub resolvers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Map<String, Value>>,
    /// The image the VM was provisioned from (guests read it as `sdc:image_uuid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uuid: Option<Uuid>,
    /// The package (`sdc:billing_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_name: Option<String>,
    /// Namespaces of `internal_metadata` the guest may read (`<ns>:key`), never write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal_metadata_namespaces: Vec<String>,
    /// Start the VM again if it dies on its own, and when its host restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoboot: Option<bool>,
}

impl Definition {
    /// Total disk the VM uses (MiB); saturates rather than overflowing on sizes no real
    /// disk has (a debug build would panic, a release one wrap to a small size).
    pub fn disk_mib(&self) -> u64 {
        self.disks.iter().filter(|d| d.media != "cdrom").fold(0u64, |a, d| a.saturating_add(d.size))
    }
}

/// `PUT /servers/{uuid}/vms/{vm}`: make the VM exist with this definition, in this state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ensure {
    pub state: Desired,
    pub definition: Definition,
    /// Increases each time the definition changes; an older one than the agent has is ignored.
    pub definition_generation: i64,
    /// Increases once per requested reboot; the agent reboots once per increase.
    #[serde(default)]
    pub reboot_generation: i64,
    /// The snapshots the VM should have (created or deleted to match).
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// The snapshot to roll back to, once per increase of `rollback_generation` (the
    /// agent stops the VM for it, then brings it to `state` again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    #[serde(default)]
    pub rollback_generation: i64,
}

/// What a server says about one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub uuid: Uuid,
    /// `provisioning`, `running`, `stopping`, `stopped`, `failed` or `destroyed`.
    pub state: String,
    /// Increases with every change the agent sees; only the agent increments it.
    pub generation: i64,
    #[serde(default)]
    pub definition_generation: i64,
    #[serde(default)]
    pub reboot_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_timestamp: Option<String>,
    /// Why the VM failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    /// The snapshots the VM has.
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// The last rollback done.
    #[serde(default)]
    pub rollback_generation: i64,
    /// Set when the agent itself changed the state it keeps the VM in (a VM that died
    /// without autoboot stays stopped); cleared by the headnode's next request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_decided: Option<Desired>,
}

impl VmStatus {
    /// A report with nothing but the essentials.
    pub fn new(uuid: Uuid, state: &str, generation: i64) -> Self {
        VmStatus {
            uuid,
            state: state.into(),
            generation,
            definition_generation: 0,
            reboot_generation: 0,
            boot_timestamp: None,
            error: None,
            ram: None,
            vcpus: None,
            cpu_cap: None,
            disk_mib: None,
            owner_uuid: None,
            snapshots: Vec::new(),
            rollback_generation: 0,
            agent_decided: None,
        }
    }
}

/// `POST /servers/{uuid}/vms/{vm}/metadata`: a guest wrote its metadata (`mdata-put`,
/// `mdata-delete`); VMAPI records it as an update would (`set_*` / `remove_*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataWrite {
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub set_customer_metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_customer_metadata: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub set_internal_metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_internal_metadata: Vec<String>,
}

impl MetadataWrite {
    /// Applies the write to two metadata maps (customer, internal).
    pub fn apply_to(&self, customer: &mut Map<String, Value>, internal: &mut Map<String, Value>) {
        for (k, v) in &self.set_customer_metadata {
            customer.insert(k.clone(), v.clone());
        }
        for k in &self.remove_customer_metadata {
            customer.remove(k);
        }
        for (k, v) in &self.set_internal_metadata {
            internal.insert(k.clone(), v.clone());
        }
        for k in &self.remove_internal_metadata {
            internal.remove(k);
        }
    }

    /// Applies the write to a definition.
    pub fn apply(&self, def: &mut Definition) {
        self.apply_to(&mut def.customer_metadata, &mut def.internal_metadata);
    }

    pub fn is_empty(&self) -> bool {
        self.set_customer_metadata.is_empty()
            && self.remove_customer_metadata.is_empty()
            && self.set_internal_metadata.is_empty()
            && self.remove_internal_metadata.is_empty()
    }
}

/// Host usage in a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub ram_total_mib: u64,
    #[serde(default)]
    pub ram_used_mib: u64,
    #[serde(default)]
    pub disk_total_mib: u64,
    #[serde(default)]
    pub disk_used_mib: u64,
    /// One-minute load average.
    #[serde(default)]
    pub load1: f64,
}

/// `POST /servers/{uuid}/events/heartbeat`: liveness (usage, problems, temperatures,
/// addresses, policy digest) every time, and the VM inventory either whole (`vms`) or as
/// a [`InventoryDelta`] against the generation the headnode acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub usage: Usage,
    /// Every VM the server has: a full inventory. An agent older than deltas always sends
    /// it; a newer one only at start, when it has no acknowledgement, and when asked
    /// ([`HeartbeatReply::send_full`]). Absent from a delta heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms: Option<Vec<VmStatus>>,
    /// The number of the inventory this heartbeat describes: the agent bumps it whenever
    /// any VM's status it reports changes (absent from an agent older than deltas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_generation: Option<i64>,
    /// The inventory as a change to the one the headnode acknowledged (instead of `vms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<InventoryDelta>,
    /// What is wrong with the server now (empty when nothing is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// The host's hardware temperatures now (hwmon); empty when it has no sensors, and
    /// absent from an agent older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temperatures: Vec<Temperature>,
    /// Its disks' SMART / NVMe health as last read (`smartctl`, every few minutes); empty
    /// when it has none it can read (a simulated server), absent from an older agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskHealth>,
    /// The IPv4 address this server has on each of its nic tags' links (the fabric
    /// underlay's is where other servers send its VXLAN traffic).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub nic_tag_addresses: std::collections::BTreeMap<String, String>,
    /// The digest of the network policy the server applied last (`None` before any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netpolicy_digest: Option<String>,
}

/// A heartbeat's inventory as a change: from the inventory numbered `base_generation`
/// (the one the headnode last acknowledged) to the heartbeat's `inventory_generation`.
/// Both empty when nothing changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InventoryDelta {
    pub base_generation: i64,
    /// VMs new or whose status differs from the base's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<VmStatus>,
    /// VMs of the base the server no longer has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Uuid>,
}

/// One hardware temperature reading of a server (a Linux hwmon `tempN_input`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// The chip that reports it (hwmon `name`), e.g. `coretemp`, `nvme`, `k10temp`.
    pub sensor: String,
    /// What it measures (`tempN_label`), e.g. `Package id 0`; `tempN` when unlabelled.
    pub label: String,
    pub celsius: f64,
}

/// One disk's SMART / NVMe health, from `smartctl --json` (see the agent's `smart`
/// module). A counter the disk does not report is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskHealth {
    /// The device smartctl read, e.g. `/dev/sda`, `/dev/nvme0`.
    pub device: String,
    /// `ATA`, `NVMe` or `SCSI` (smartctl's `device.protocol`).
    #[serde(default)]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// smartctl's overall verdict: passed (true) or FAILED (false); `None` when it could
    /// not tell (the disk could not be read, or has no SMART).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on_hours: Option<u64>,
    /// ATA attribute 5 (raw): sectors remapped to spares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reallocated_sectors: Option<u64>,
    /// ATA attribute 197 (raw): unreadable sectors waiting to be remapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_sectors: Option<u64>,
    /// ATA attribute 198 (raw): sectors the offline scan could not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_uncorrectable: Option<u64>,
    /// Wear: NVMe `percentage_used`, or ATA's "Percentage Used Endurance Indicator" (may pass 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage_used: Option<u64>,
    /// NVMe `media_errors`: unrecovered data integrity errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_errors: Option<u64>,
    /// Errors the disk logged: NVMe `num_err_log_entries`, ATA's SMART error log count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<u64>,
    /// NVMe critical warning bits (0 when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_warning: Option<u64>,
    /// Why the disk is failing; empty while it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
    /// Why it could not be read (smartctl missing, the device refused, a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The disk was asleep (spun down) at the last round and was not woken to be read: the
    /// values are its last reading (of `read_at`), none if it was never read awake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
    /// When the values were read (RFC 3339); none when they never were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
}

/// Something wrong with a server, e.g. a nic tag whose link refuses the MTU its networks
/// need (which keeps some VMs off it) or a failing disk. CNAPI shows it on the server;
/// placement names the nic tag ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `nic_tag_mtu`, `nic_tag_link`, `disk_failing`.
    pub kind: String,
    /// The nic tag of a network problem (empty for others; always sent, as a headnode
    /// older than disk problems requires it).
    #[serde(default)]
    pub nic_tag: String,
    #[serde(default)]
    pub link: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted_mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_mtu: Option<u32>,
    pub message: String,
}

/// The answer to a heartbeat: what the headnode wants the server's networking to carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The largest MTU among each nic tag's networks.
    #[serde(default)]
    pub nic_tag_mtus: std::collections::BTreeMap<String, u32>,
    /// The inventory generation the headnode now holds for the server: the base of the
    /// agent's next delta. Absent from a headnode older than deltas (the agent then keeps
    /// sending full inventories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_ack: Option<i64>,
    /// The headnode could not apply the delta (it holds another generation, or none):
    /// the next heartbeat carries the full inventory.
    #[serde(default, skip_serializing_if = "is_false")]
    pub send_full: bool,
}

/// `POST /servers/join` and `POST /servers/{uuid}/sysinfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub sysinfo: Map<String, Value>,
    /// Where the headnode reaches this agent, e.g. `http://10.0.0.5:5309`.
    pub agent_url: String,
}

/// `POST /servers/join`: the server's sysinfo and where it is reached, and the public key
/// its certificate is to carry (made on the node; the private key never leaves it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub sysinfo: Map<String, Value>,
    /// Where the headnode reaches this agent, e.g. `https://10.0.0.5:5309`.
    pub agent_url: String,
    /// The agent's ECDSA P-256 public key: DER SubjectPublicKeyInfo, base64.
    pub public_key: String,
}

/// The join's answer: the server's certificate, issued by the headnode CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub server_uuid: Uuid,
    /// PEM certificate for the agent's key, naming the server.
    pub certificate: String,
    /// PEM certificate of the CA (what the agent pins).
    pub ca: String,
    /// When the certificate expires (Unix seconds); the agent renews well before.
    pub not_after: i64,
}

/// `POST /servers/{uuid}/certificate`: a new certificate over the authenticated channel,
/// for the same key or a new one (base64 DER SubjectPublicKeyInfo).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub public_key: String,
}

/// `GET /agent-ca`: the CA certificate and, for agents joining with a bare join token,
/// an HMAC of it keyed by each join token of the cluster (see `nereid_trust::token`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaInfo {
    /// PEM.
    pub ca: String,
    pub proofs: Vec<String>,
}

/// The error code of a join that waits for the operator's approval.
pub const APPROVAL_REQUIRED: &str = "ServerApprovalRequired";

/// The metadata key that asks the simulated hypervisor to misbehave (tests, demos).
pub const SIM_FAULT_KEY: &str = "nereid:sim_fault";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_without_temperatures_still_decode_and_none_are_sent_when_there_are_none() {
        let old: Heartbeat = serde_json::from_str(r#"{"usage": {"ram_total_mib": 1024}, "vms": []}"#).unwrap();
        assert!(old.temperatures.is_empty());
        assert!(serde_json::to_value(&old).unwrap().get("temperatures").is_none());
        let hb =
            Heartbeat { temperatures: vec![Temperature { sensor: "coretemp".into(), label: "Package id 0".into(), celsius: 45.0 }], ..old };
        let v = serde_json::to_value(&hb).unwrap();
        assert_eq!(v["temperatures"], serde_json::json!([{"sensor": "coretemp", "label": "Package id 0", "celsius": 45.0}]));
        assert_eq!(serde_json::from_value::<Heartbeat>(v).unwrap(), hb);
    }

    #[test]
    fn disks_are_sent_only_when_read_and_a_disk_problem_still_decodes_on_an_older_headnode() {
        let old: Heartbeat = serde_json::from_str(r#"{"usage": {}}"#).unwrap();
        assert!(old.disks.is_empty());
        assert!(serde_json::to_value(&old).unwrap().get("disks").is_none());
        let disk = DiskHealth { device: "/dev/sda".into(), protocol: "ATA".into(), passed: Some(false), ..Default::default() };
        let problem = Problem {
            kind: "disk_failing".into(),
            nic_tag: String::new(),
            link: String::new(),
            wanted_mtu: None,
            actual_mtu: None,
            message: "disk /dev/sda is failing".into(),
        };
        let hb = Heartbeat { disks: vec![disk], problems: vec![problem.clone()], ..old };
        let v = serde_json::to_value(&hb).unwrap();
        assert_eq!(v["disks"], serde_json::json!([{"device": "/dev/sda", "protocol": "ATA", "passed": false}]));
        assert_eq!(serde_json::from_value::<Heartbeat>(v.clone()).unwrap(), hb);
        // A headnode older than disk problems requires nic_tag and link: they are sent.
        assert_eq!(v["problems"][0]["nic_tag"], "");
        assert_eq!(v["problems"][0]["link"], "");
        // And one without them decodes.
        let bare: Problem = serde_json::from_str(r#"{"kind": "disk_failing", "message": "m"}"#).unwrap();
        assert_eq!(bare.nic_tag, "");
    }
}
