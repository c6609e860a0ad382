//! What the headnode tells each compute node about the networks around its VMs, beyond
//! the VMs' own definitions: the other ends of each fabric segment, and each VM's firewall.
//!
//! ```text
//!   headnode: VMs + NICs + servers' underlay addresses + firewall rules
//!             ──(pure: overlay peers, fwrule::compile)──► NetPolicy per server
//!             ──PUT /servers/{server}/netpolicy──► agent (when the digest differs
//!                                                  from what the heartbeat reports)
//!   agent:    FDB entries of each VXLAN device, the nftables firewall table
//! ```
//! The agent applies a policy whole (never merged), so a repeated or restarted push
//! converges; it reports the digest of the one it applied in every heartbeat.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The network policy of one compute node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetPolicy {
    /// Identifies this policy (the headnode's hash of the rest); echoed in heartbeats.
    #[serde(default)]
    pub digest: String,
    /// Per VXLAN segment with a NIC on this server: the underlay IPv4 addresses of the
    /// other servers with NICs on it (where its broadcasts go).
    #[serde(default)]
    pub overlays: BTreeMap<u32, Vec<String>>,
    /// Per VM on this server whose firewall is enabled: its rules, in the order they
    /// apply (first match wins). A VM absent here has no firewall.
    #[serde(default)]
    pub firewalls: BTreeMap<Uuid, Vec<FwEntry>>,
}

/// Which way a rule filters, seen from the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the VM (blocked by default).
    In,
    /// Traffic from the VM (allowed by default).
    Out,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Block,
}

/// The protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmp6,
}

/// An inclusive port range (`PORT 80` is 80-80).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// An ICMP type, with or without a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IcmpType {
    #[serde(rename = "type")]
    pub icmp_type: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// One compiled firewall rule for one VM: concrete addresses, ports and types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwEntry {
    /// The firewall rule it comes from.
    pub rule: Uuid,
    pub direction: Direction,
    pub action: Action,
    pub protocol: Protocol,
    /// For tcp/udp: the ports; empty means all ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
    /// For icmp/icmp6: the types; empty means all types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmp: Vec<IcmpType>,
    /// The other end: IPv4 addresses or CIDR blocks; `None` is any address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    pub priority: u8,
}
