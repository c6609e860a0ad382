//! NAPI NICs and IP records.
//!
//! NICs are keyed by MAC (accepted with or without colons). A NIC on a network holds one
//! IP record of that network; the record says who the address belongs to. Deleting the
//! NIC frees the address (a reserved address keeps its owner and stays reserved).
//! Network-level fields (gateway, netmask, resolvers, routes, mtu, vlan_id, nic_tag) are
//! not stored on the NIC but merged in when it is rendered, so a network change shows on
//! every NIC at once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::network::Network;
use crate::spec::{Field, Kind};

pub const BELONGS_TO_TYPES: &[&str] = &["zone", "server", "other"];
pub const STATES: &[&str] = &["provisioning", "stopped", "running"];
/// Spoofing and filtering flags; rendered only when true.
pub const FLAGS: &[&str] =
    &["allow_dhcp_spoofing", "allow_ip_spoofing", "allow_mac_spoofing", "allow_restricted_traffic", "allow_unfiltered_promisc", "underlay"];

/// Fields a NIC create body may carry (`POST /nics`, `POST /networks/:uuid/nics`).
pub const FIELDS: &[Field] = &[
    Field::new("mac", Kind::Str { max: 17, check: Some(check_mac) }, "MAC address; generated under 90:b8:d0 when absent.").immutable(),
    Field::new("owner_uuid", Kind::Uuid, "Account owning the NIC.").required(),
    Field::new("belongs_to_uuid", Kind::Uuid, "VM or server the NIC belongs to.").required(),
    Field::new("belongs_to_type", Kind::Enum(BELONGS_TO_TYPES), "zone (a VM), server or other.").required(),
    Field::new("primary", Kind::Bool, "Primary NIC of its owner (at most one)."),
    Field::new("state", Kind::Enum(STATES), "provisioning, stopped or running (default running)."),
    Field::new("cn_uuid", Kind::Uuid, "Compute node the NIC is on."),
    Field::new("model", Kind::Str { max: 32, check: None }, "Device model, e.g. virtio."),
    Field::new("network_uuid", Kind::Uuid, "Network (or pool) to take an address from."),
    Field::new("ip", Kind::Ipv4, "A specific address (within network_uuid)."),
    Field::new("nic_tag", Kind::Str { max: 31, check: None }, "Nic tag, for a NIC without a network."),
    Field::new("vlan_id", Kind::Int { min: 0, max: 4094, multiple_of: None, unit: None }, "VLAN, for a NIC without a network."),
    Field::new("reserved", Kind::Bool, "Mark the address reserved (kept out of automatic allocation)."),
    Field::new("nic_tags_provided", Kind::StrList { max_item: 31 }, "Server NICs: the tags this NIC provides."),
    Field::new("check_owner", Kind::Bool, "Check that owner_uuid may use the network (default true)."),
    Field::new("allow_dhcp_spoofing", Kind::Bool, "May act as a DHCP server."),
    Field::new("allow_ip_spoofing", Kind::Bool, "May send from other IPs."),
    Field::new("allow_mac_spoofing", Kind::Bool, "May send from other MACs."),
    Field::new("allow_restricted_traffic", Kind::Bool, "May send non-IP/ARP ethertypes."),
    Field::new("allow_unfiltered_promisc", Kind::Bool, "May use several MACs."),
    Field::new("underlay", Kind::Bool, "Server NIC carrying overlay traffic."),
];

/// Fields `PUT /nics/:mac` may carry.
pub const UPDATE_FIELDS: &[Field] = &[
    Field::new("owner_uuid", Kind::Uuid, "Account owning the NIC."),
    Field::new("belongs_to_uuid", Kind::Uuid, "VM or server the NIC belongs to (fix orphans with this)."),
    Field::new("belongs_to_type", Kind::Enum(BELONGS_TO_TYPES), "zone, server or other."),
    Field::new("primary", Kind::Bool, "Primary NIC of its owner."),
    Field::new("state", Kind::Enum(STATES), "provisioning, stopped or running."),
    Field::new("cn_uuid", Kind::Uuid, "Compute node the NIC is on."),
    Field::new("model", Kind::Str { max: 32, check: None }, "Device model."),
    Field::new("network_uuid", Kind::Uuid, "Move the NIC to this network (a new address is allocated unless ip is given)."),
    Field::new("ip", Kind::Ipv4, "Move the NIC to this address."),
    Field::new("nic_tags_provided", Kind::StrList { max_item: 31 }, "Server NICs: tags provided."),
    Field::new("check_owner", Kind::Bool, "Check that owner_uuid may use the network (default true)."),
    Field::new("allow_dhcp_spoofing", Kind::Bool, "May act as a DHCP server."),
    Field::new("allow_ip_spoofing", Kind::Bool, "May send from other IPs."),
    Field::new("allow_mac_spoofing", Kind::Bool, "May send from other MACs."),
    Field::new("allow_restricted_traffic", Kind::Bool, "May send non-IP/ARP ethertypes."),
    Field::new("allow_unfiltered_promisc", Kind::Bool, "May use several MACs."),
    Field::new("underlay", Kind::Bool, "Server NIC carrying overlay traffic."),
];

fn check_mac(s: &str) -> Result<(), String> {
    crate::mac::Mac::parse(s).map(|_| ())
}

/// A NIC as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub mac: String,
    pub primary: bool,
    pub owner_uuid: Uuid,
    pub belongs_to_uuid: Uuid,
    pub belongs_to_type: String,
    pub state: String,
    pub created_timestamp: String,
    pub modified_timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_uuid: Option<Uuid>,
    /// For NICs without a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cn_uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_tags_provided: Option<Vec<String>>,
    /// `allow_*` and `underlay` flags that are true.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", flatten)]
    pub flags: BTreeMap<String, bool>,
}

impl Nic {
    /// Sets or clears the flags named in [`FLAGS`] from an input object.
    pub fn apply_flags(&mut self, input: &Map<String, Value>) {
        for f in FLAGS {
            match input.get(*f).and_then(Value::as_bool) {
                Some(true) => {
                    self.flags.insert((*f).to_string(), true);
                }
                Some(false) => {
                    self.flags.remove(*f);
                }
                None => {}
            }
        }
    }
}

/// The NIC as NAPI renders it, with its network's fields merged in.
pub fn render(nic: &Nic, net: Option<&Network>) -> Value {
    let mut v = serde_json::to_value(nic).unwrap_or(Value::Null);
    if let (Some(net), Value::Object(o)) = (net, &mut v) {
        o.insert("netmask".into(), json!(net.netmask));
        o.insert("vlan_id".into(), json!(net.vlan_id));
        o.insert("nic_tag".into(), json!(net.nic_tag));
        o.insert("mtu".into(), json!(net.mtu));
        o.insert("resolvers".into(), json!(net.resolvers));
        if let Some(gw) = &net.gateway {
            o.insert("gateway".into(), json!(gw));
        }
        if let Some(routes) = &net.routes {
            let rendered: Map<String, Value> = routes
                .iter()
                .map(|(dst, gw)| {
                    let gw = if gw == "linklocal" { json!(format!("macs[{}]", nic.mac)) } else { gw.clone() };
                    (dst.clone(), gw)
                })
                .collect();
            o.insert("routes".into(), Value::Object(rendered));
        }
        // Fabric NICs as NAPI shows them: the overlay tag with the segment, NAT and the
        // (never provisioned) gateway flag. The stored tag stays plain `sdc_overlay`.
        if net.fabric {
            if let Some(vni) = net.vni {
                o.insert("nic_tag".into(), json!(format!("{}/{vni}", net.nic_tag)));
            }
            o.insert("fabric".into(), json!(true));
            o.insert("internet_nat".into(), json!(net.internet_nat));
            o.insert("gateway_provisioned".into(), json!(false));
        }
    }
    v
}

/// An IP record of a network. Addresses without a record are free and never used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpRecord {
    pub ip: String,
    pub network_uuid: Uuid,
    pub reserved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub belongs_to_uuid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub belongs_to_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    /// MAC key of the NIC holding the address (internal; never rendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
}

impl IpRecord {
    /// Free: not reserved and not assigned to anything.
    pub fn is_free(&self) -> bool {
        !self.reserved && self.belongs_to_uuid.is_none() && self.nic.is_none()
    }

    /// The record after its NIC lets go: a reserved address keeps its owner.
    pub fn released(&self) -> IpRecord {
        IpRecord {
            ip: self.ip.clone(),
            network_uuid: self.network_uuid,
            reserved: self.reserved,
            belongs_to_uuid: None,
            belongs_to_type: None,
            owner_uuid: if self.reserved { self.owner_uuid } else { None },
            nic: None,
        }
    }
}

/// The IP as NAPI renders it.
pub fn render_ip(ip: &IpRecord) -> Value {
    let mut v = json!({"ip": ip.ip, "network_uuid": ip.network_uuid, "reserved": ip.reserved, "free": ip.is_free()});
    if let Some(b) = ip.belongs_to_uuid {
        v["belongs_to_uuid"] = json!(b);
    }
    if let Some(t) = &ip.belongs_to_type {
        v["belongs_to_type"] = json!(t);
    }
    if let Some(o) = ip.owner_uuid {
        v["owner_uuid"] = json!(o);
    }
    v
}

/// Fields `PUT /networks/:uuid/ips/:ip` may carry.
pub const IP_UPDATE_FIELDS: &[Field] = &[
    Field::new("reserved", Kind::Bool, "Keep the address out of automatic allocation."),
    Field::new("owner_uuid", Kind::Uuid, "Account the address is held for."),
    Field::new("belongs_to_uuid", Kind::Uuid, "What the address is assigned to."),
    Field::new("belongs_to_type", Kind::Enum(BELONGS_TO_TYPES), "zone, server or other."),
    Field::new("free", Kind::Bool, "true: wipe every property (not allowed while a NIC holds it)."),
    Field::new("unassign", Kind::Bool, "true: remove belongs_to_* only."),
];

/// What IP allocation knows of one existing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub generation: i64,
    pub free: bool,
    /// When the record last changed (ms since the epoch): the least recently used free address is reused first.
    pub mtime: i64,
}

/// Which address to try next, and how to claim it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// An address that has never had a record: create it.
    Fresh(u32),
    /// A free record: take it if it is still at this generation.
    Reuse(u32, i64),
}

/// NAPI's allocation rule: the lowest never-used address in `range` (inclusive), else the
/// least recently used free one; `None` when the range is exhausted. `skip` lists
/// addresses to pass over (e.g. ones just lost to a concurrent claim).
pub fn pick_ip(range: (u32, u32), used: &BTreeMap<u32, Used>, skip: &[u32]) -> Option<Pick> {
    let (start, end) = range;
    let mut next = start;
    for (&ip, _) in used.range(start..=end) {
        while next < ip {
            if !skip.contains(&next) {
                return Some(Pick::Fresh(next));
            }
            next += 1;
        }
        next = ip.saturating_add(1);
        if ip == u32::MAX {
            break;
        }
    }
    while next <= end && next > 0 {
        if !skip.contains(&next) {
            return Some(Pick::Fresh(next));
        }
        if next == u32::MAX {
            break;
        }
        next += 1;
    }
    used.range(start..=end)
        .filter(|(ip, u)| u.free && !skip.contains(ip))
        .min_by_key(|(ip, u)| (u.mtime, **ip))
        .map(|(ip, u)| Pick::Reuse(*ip, u.generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(entries: &[(u32, bool, i64)]) -> BTreeMap<u32, Used> {
        entries.iter().map(|&(ip, free, mtime)| (ip, Used { generation: 1, free, mtime })).collect()
    }

    #[test]
    fn picks_lowest_never_used_then_lru_free() {
        assert_eq!(pick_ip((10, 20), &used(&[]), &[]), Some(Pick::Fresh(10)));
        assert_eq!(pick_ip((10, 20), &used(&[(10, false, 0), (11, false, 0), (13, false, 0)]), &[]), Some(Pick::Fresh(12)));
        assert_eq!(pick_ip((10, 12), &used(&[(10, false, 0), (11, true, 5), (12, true, 3)]), &[]), Some(Pick::Reuse(12, 1)));
        assert_eq!(pick_ip((10, 12), &used(&[(10, false, 0), (11, false, 0), (12, false, 0)]), &[]), None);
        assert_eq!(pick_ip((10, 12), &used(&[(10, false, 0)]), &[11]), Some(Pick::Fresh(12)));
        // Records outside the range do not matter.
        assert_eq!(pick_ip((10, 11), &used(&[(5, false, 0), (200, false, 0)]), &[]), Some(Pick::Fresh(10)));
    }

    #[test]
    fn released_reserved_ip_keeps_owner() {
        let owner = Uuid::new_v4();
        let ip = IpRecord {
            ip: "10.0.0.5".into(),
            network_uuid: Uuid::nil(),
            reserved: true,
            belongs_to_uuid: Some(owner),
            belongs_to_type: Some("zone".into()),
            owner_uuid: Some(owner),
            nic: Some("x".into()),
        };
        let r = ip.released();
        assert_eq!((r.owner_uuid, r.belongs_to_uuid, r.reserved), (Some(owner), None, true));
        assert!(!r.is_free());
        let mut ip2 = ip.clone();
        ip2.reserved = false;
        assert!(ip2.released().is_free());
        assert_eq!(render_ip(&ip2.released()), json!({"ip": "10.0.0.5", "network_uuid": Uuid::nil(), "reserved": false, "free": true}));
    }
}
