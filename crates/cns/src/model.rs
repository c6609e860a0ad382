//! The CNS model: what the headnode fills in (configuration, accounts, instances) and what
//! [`crate::names::build`] makes of it (zones of records).
//!
//! Everything here is plain data. Names are absolute, lowercase and written without the
//! trailing dot (`web.inst.<owner>.dc1.example.com`); the server adds the root label on the
//! wire.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use uuid::Uuid;

/// CNS configuration (Triton's `config.json` of the CNS zone, reduced to what Nereid uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The datacenter name (`dc1`).
    pub datacenter: String,
    /// The DNS suffix (`example.com`).
    pub suffix: String,
    /// Zone of public addresses; default `<dc>.<suffix>`.
    pub public_zone: String,
    /// Zone of private addresses; default `<dc>.cns.<suffix>`.
    pub private_zone: String,
    /// Publish `<alias>.inst.…` names (Triton default true).
    pub use_alias: bool,
    /// Publish `….inst.<login>.…` names (Triton default false).
    pub use_login: bool,
    /// The operator account: its VMs' services are also published at `<svc>.<zone>`.
    pub admin_uuid: Uuid,
    /// TTL of instance and service records, and of the SOA (30 s).
    pub ttl: u32,
    /// TTL of the NS record (3600 s).
    pub ns_ttl: u32,
    /// SOA RNAME in DNS form (`hostmaster.example.com`); an `@` is read as the first dot.
    pub hostmaster: String,
    /// This server's name: SOA MNAME and the zones' NS.
    pub my_name: String,
    /// Who may AXFR/IXFR the zones (addresses or CIDR blocks).
    pub allow_transfer: Vec<IpNet>,
    /// Secondaries sent a NOTIFY when a zone's serial changes.
    pub notify_peers: Vec<SocketAddr>,
}

impl Config {
    /// Triton's defaults for a datacenter and DNS suffix: zones `<dc>.<suffix>` (public) and
    /// `<dc>.cns.<suffix>` (private), aliases on, logins off, TTL 30 s, NS TTL 3600 s,
    /// `hostmaster.<suffix>`, server name `cns.<dc>.<suffix>`, no transfers, no peers.
    pub fn new(datacenter: &str, suffix: &str, admin_uuid: Uuid) -> Self {
        let dc = datacenter.to_ascii_lowercase();
        let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
        Self {
            public_zone: format!("{dc}.{suffix}"),
            private_zone: format!("{dc}.cns.{suffix}"),
            use_alias: true,
            use_login: false,
            admin_uuid,
            ttl: 30,
            ns_ttl: 3600,
            hostmaster: format!("hostmaster.{suffix}"),
            my_name: format!("cns.{dc}.{suffix}"),
            allow_transfer: Vec::new(),
            notify_peers: Vec::new(),
            datacenter: dc,
            suffix,
        }
    }

    /// The zones this server is authoritative for, public first.
    pub fn zones(&self) -> [&str; 2] {
        [&self.public_zone, &self.private_zone]
    }

    /// Whether `ip` may transfer zones (an IPv4-mapped IPv6 peer counts as IPv4).
    pub fn may_transfer(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow_transfer.iter().any(|net| net.contains(&ip))
    }
}

/// An account as CNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub uuid: Uuid,
    pub login: String,
    /// `triton_cns_enabled`: without it nothing of the account is published.
    pub cns_enabled: bool,
}

/// A NIC's fixed address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub ip: IpAddr,
    pub network_uuid: Uuid,
    pub network_name: String,
    /// Public network: the address goes to the public zone, otherwise to the private one.
    pub public: bool,
    /// The network belongs to the VM's owner (a fabric): names get a network-name variant.
    pub owner_network: bool,
}

/// An instance (VM) as CNS sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub uuid: Uuid,
    pub alias: Option<String>,
    pub owner_uuid: Uuid,
    /// The VM runs; a stopped VM leaves its services (its instance names stay).
    pub running: bool,
    /// The VM's server is up; a VM on a down server leaves its services.
    pub server_up: bool,
    pub tags: serde_json::Map<String, serde_json::Value>,
    pub customer_metadata: serde_json::Map<String, serde_json::Value>,
    pub nics: Vec<Nic>,
}

/// The data of a published record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// One character-string.
    Txt(String),
    /// A service's port; `target` is an absolute name without the trailing dot.
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

/// One published record (the zone's SOA and NS are made by the server).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    pub name: String,
    pub ttl: u32,
    pub data: Data,
}

/// Zone name → its records, in a deterministic order.
pub type Zones = BTreeMap<String, BTreeSet<Record>>;
