//! Fabrics: each account's private layer-2 networks (Triton's fabric VLANs and the
//! networks inside them), carried between compute nodes over VXLAN.
//!
//! ```text
//!   account ──► fabric VLAN (vlan_id 0-4094, unique per account) ──► fabric networks
//!                  │ vni: a 24-bit VXLAN segment id, unique in the cloud, one per
//!                  │      (account, VLAN) — overlapping VLAN ids and subnets of two
//!                  │      accounts never share a segment
//!   NIC on a fabric network: nic_tag "sdc_overlay", NicDef.vni = the VLAN's vni
//!   compute node: a VXLAN device + bridge per vni over the underlay nic tag's link;
//!                 a NAT gateway per `internet_nat` network on every node hosting one
//!                 of its VMs
//! ```
//! Pure records and rules only; the headnode's app layer stores them, the agent wires them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The nic tag every fabric network (and so every fabric NIC) is on, as in Triton.
pub const OVERLAY_TAG: &str = "sdc_overlay";

/// The default underlay nic tag (the operator chooses another with a headnode flag).
pub const DEFAULT_UNDERLAY_TAG: &str = "sdc_underlay";

/// Bytes the VXLAN encapsulation adds to every frame over IPv4 (outer IP 20 + UDP 8 +
/// VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The UDP port VXLAN uses (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// The largest VXLAN segment id (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The MTU of fabric networks over an underlay of `underlay_mtu`.
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
}

/// A fabric VLAN as NAPI stores it (`/fabrics/:owner/vlans/:vlan_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FabricVlan {
    pub owner_uuid: Uuid,
    pub vlan_id: u16,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The VXLAN segment id carrying this VLAN (rendered as NAPI's `vnet_id`).
    pub vni: u32,
}
