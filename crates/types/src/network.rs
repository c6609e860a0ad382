//! NAPI networks and network pools: logical IPv4 networks on a nic tag, with IPAM.
//!
//! A network's provisionable range (`provision_start_ip`..=`provision_end_ip`, both
//! inclusive) must lie inside its subnet; the gateway is reserved at creation so it is
//! never handed to a NIC. A pool is an ordered list of networks tried in turn.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::ipv4::{Subnet, parse_addr};
use crate::spec::{self, Field, Kind, Mode};

fn check_routes(v: &Value) -> Result<(), String> {
    let routes = v.as_object().ok_or("must be an object of {destination: gateway}")?;
    for (dst, gw) in routes {
        if dst.contains('/') {
            Subnet::parse(dst).map_err(|e| format!("route destination {dst:?}: {e}"))?;
        } else {
            parse_addr(dst).map_err(|e| format!("route destination {dst:?}: {e}"))?;
        }
        let gw = gw.as_str().ok_or_else(|| format!("route gateway for {dst:?} must be a string"))?;
        if gw != "linklocal" {
            parse_addr(gw).map_err(|e| format!("route gateway for {dst:?}: {e}"))?;
        }
    }
    Ok(())
}

fn routes_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}, "description": "{destination IP or CIDR: gateway IP or \"linklocal\"}"})
}

fn check_name(s: &str) -> Result<(), String> {
    if s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')) {
        Ok(())
    } else {
        Err(format!("may only contain letters, digits, _ - and . (got {:?})", spec::truncate(s, 60)))
    }
}

/// NAPI's network field table.
pub const FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Network UUID.").read_only(),
    Field::new("name", Kind::Str { max: 64, check: Some(check_name) }, "Unique name, e.g. `external`.").required(),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Free text."),
    Field::new("nic_tag", Kind::Str { max: 31, check: None }, "Nic tag the network lives on (must exist).").required().immutable(),
    Field::new("vlan_id", Kind::Int { min: 0, max: 4094, multiple_of: None, unit: None }, "VLAN ID, 0 = untagged.").required().immutable(),
    Field::new("subnet", Kind::Cidr, "IPv4 subnet, e.g. 10.0.0.0/24.").required().immutable(),
    Field::new("family", Kind::Enum(&["ipv4"]), "Address family (ipv4).").immutable(),
    Field::new("provision_start_ip", Kind::Ipv4, "First address handed out (inclusive).").required(),
    Field::new("provision_end_ip", Kind::Ipv4, "Last address handed out (inclusive).").required(),
    Field::new("gateway", Kind::Ipv4, "Default gateway; reserved, never given to a NIC."),
    Field::new("resolvers", Kind::Ipv4List, "DNS resolvers, in order."),
    Field::new("routes", Kind::Custom { check: check_routes, schema: routes_schema }, "Static routes {destination: gateway}."),
    Field::new("owner_uuids", Kind::UuidList, "Accounts that may provision on it; absent = everyone."),
    Field::new(
        "mtu",
        Kind::Int { min: 576, max: 9000, multiple_of: None, unit: Some("bytes") },
        "MTU (576-9000, at most the nic tag's; default 1500).",
    ),
    Field::new(
        "dhcp_server",
        Kind::Bool,
        "Whether compute nodes answer DHCP for this network's NICs (default true); false when the guests' DHCP comes from elsewhere.",
    ),
    Field::new("netmask", Kind::Ipv4, "Netmask of the subnet.").read_only(),
    Field::new("fabric", Kind::Bool, "Whether this is a fabric (overlay) network.").read_only(),
];

/// A network as NAPI stores and renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub uuid: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub nic_tag: String,
    pub vlan_id: u16,
    pub subnet: String,
    pub netmask: String,
    pub family: String,
    pub provision_start_ip: String,
    pub provision_end_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default)]
    pub resolvers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuids: Option<Vec<Uuid>>,
    pub mtu: u32,
    pub fabric: bool,
    /// Whether compute nodes answer DHCP for this network's NICs (each NIC gets exactly
    /// its NAPI address); false when the guests' DHCP comes from elsewhere.
    #[serde(default = "yes")]
    pub dhcp_server: bool,
    /// Fabric networks: the VXLAN segment of their fabric VLAN (NAPI's `vnet_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Fabric networks: whether VMs reach the outside through NAT at the gateway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internet_nat: bool,
}

fn yes() -> bool {
    true
}

impl Network {
    pub fn subnet(&self) -> Subnet {
        // Stored networks were validated on the way in.
        Subnet::parse(&self.subnet).unwrap_or(Subnet { base: 0, prefix: 32 })
    }
    /// The provisionable range as integers (inclusive).
    pub fn range(&self) -> (u32, u32) {
        let a = parse_addr(&self.provision_start_ip).map(u32::from).unwrap_or(0);
        let b = parse_addr(&self.provision_end_ip).map(u32::from).unwrap_or(0);
        (a, b)
    }
    /// Whether `owner` may put NICs on this network.
    pub fn provisionable_by(&self, owner: &Uuid) -> bool {
        self.owner_uuids.as_ref().is_none_or(|o| o.contains(owner))
    }
    /// Number of addresses in the provisionable range.
    pub fn range_len(&self) -> u64 {
        let (a, b) = self.range();
        u64::from(b.saturating_sub(a)) + 1
    }
}

/// Validates a create body; `tag_mtu` is the MTU of the named nic tag (checked by the caller to exist).
pub fn check_create(input: &Map<String, Value>, tag_mtu: Option<u32>) -> Result<Network, ApiError> {
    let errors = spec::check(FIELDS, input, Mode::Create, &[]);
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let mut obj = input.clone();
    obj.insert("uuid".into(), json!(Uuid::new_v4()));
    obj.entry("family").or_insert(json!("ipv4"));
    obj.entry("mtu").or_insert(json!(1500));
    obj.entry("resolvers").or_insert(json!([]));
    obj.entry("dhcp_server").or_insert(json!(true));
    obj.insert("fabric".into(), json!(false));
    finish(obj, tag_mtu)
}

/// Validates an update against the stored network.
pub fn check_update(current: &Network, input: &Map<String, Value>, tag_mtu: Option<u32>) -> Result<Network, ApiError> {
    let mut errors = spec::check(FIELDS, input, Mode::Update, &[]);
    let Value::Object(mut obj) = serde_json::to_value(current).map_err(|e| ApiError::internal(e.to_string()))? else {
        return Err(ApiError::internal("network did not serialize"));
    };
    errors.extend(spec::immutable_changes(FIELDS, &obj, input).into_iter().map(|mut e| {
        e.message = "cannot be changed on an existing network".into();
        e
    }));
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    spec::merge(&mut obj, input);
    obj.entry("resolvers").or_insert(json!([]));
    finish(obj, tag_mtu)
}

fn finish(mut obj: Map<String, Value>, tag_mtu: Option<u32>) -> Result<Network, ApiError> {
    let mut errors = Vec::new();
    let subnet = obj.get("subnet").and_then(Value::as_str).and_then(|s| Subnet::parse(s).ok());
    let Some(subnet) = subnet else {
        return Err(ApiError::invalid_parameters(vec![FieldError::invalid("subnet", "must be a CIDR block")]));
    };
    obj.insert("netmask".into(), json!(subnet.netmask().to_string()));
    let ip = |k: &str| obj.get(k).and_then(Value::as_str).and_then(|s| parse_addr(s).ok());
    let (start, end) = (ip("provision_start_ip"), ip("provision_end_ip"));
    for (field, addr) in [("provision_start_ip", start), ("provision_end_ip", end), ("gateway", ip("gateway"))] {
        if let Some(a) = addr
            && !subnet.is_host(a)
        {
            errors.push(FieldError::invalid(field, format!("{a} is not a host address of subnet {subnet}")));
        }
    }
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        errors.push(FieldError::invalid("provision_end_ip", format!("{e} comes before provision_start_ip {s}")));
    }
    let mtu = obj.get("mtu").and_then(Value::as_u64).unwrap_or(1500) as u32;
    if let Some(tag_mtu) = tag_mtu
        && mtu > tag_mtu
    {
        errors.push(FieldError::invalid("mtu", format!("{mtu} is larger than nic tag MTU {tag_mtu}")));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::internal(format!("network record: {e}")))
}

/// An address of `net` given as text, checked to be in its subnet.
pub fn parse_ip_in(net: &Network, field: &str, s: &str) -> Result<Ipv4Addr, FieldError> {
    let ip = parse_addr(s).map_err(|e| FieldError::invalid(field, e))?;
    if !net.subnet().is_host(ip) {
        return Err(FieldError::invalid(field, format!("{ip} is not a host address of network {} ({})", net.name, net.subnet)));
    }
    Ok(ip)
}

/// NAPI's network pool field table.
pub const POOL_FIELDS: &[Field] = &[
    Field::new("uuid", Kind::Uuid, "Pool UUID.").read_only(),
    Field::new("name", Kind::Str { max: 64, check: Some(check_name) }, "Unique name.").required(),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Free text."),
    Field::new("networks", Kind::UuidList, "Networks, tried in this order.").required(),
    Field::new("owner_uuids", Kind::UuidList, "Accounts that may provision on it; absent = everyone."),
    Field::new("nic_tag", Kind::Str { max: 31, check: None }, "Nic tag of the first network.").read_only(),
    Field::new("nic_tags_present", Kind::StrList { max_item: 31 }, "Nic tags of all its networks.").read_only(),
    Field::new("family", Kind::Enum(&["ipv4"]), "Address family.").read_only(),
];

/// A network pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkPool {
    pub uuid: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub networks: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuids: Option<Vec<Uuid>>,
    pub nic_tag: String,
    pub nic_tags_present: Vec<String>,
    pub family: String,
}

/// Validates a pool body (create or update), given the networks it names in order
/// (`None` where a UUID names no network).
pub fn check_pool(
    current: Option<&NetworkPool>,
    input: &Map<String, Value>,
    members: &[(Uuid, Option<Network>)],
) -> Result<NetworkPool, ApiError> {
    let mode = if current.is_some() { Mode::Update } else { Mode::Create };
    let mut errors = spec::check(POOL_FIELDS, input, mode, &[]);
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let mut obj = match current {
        Some(c) => match serde_json::to_value(c) {
            Ok(Value::Object(o)) => o,
            _ => return Err(ApiError::internal("pool did not serialize")),
        },
        None => {
            let mut o = Map::new();
            o.insert("uuid".into(), json!(Uuid::new_v4()));
            o.insert("family".into(), json!("ipv4"));
            o
        }
    };
    spec::merge(&mut obj, input);
    if members.is_empty() {
        errors.push(FieldError::invalid("networks", "must list at least one network"));
    }
    let mut seen = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    for (id, net) in members {
        if seen.contains(id) {
            errors.push(FieldError::invalid("networks", format!("lists {id} twice")));
        }
        seen.push(*id);
        match net {
            None => errors.push(FieldError::invalid("networks", format!("unknown network {id}"))),
            Some(n) if n.fabric => errors
                .push(FieldError::invalid("networks", format!("{id} is a fabric network (one account's own); pools hold shared networks"))),
            Some(n) if !tags.contains(&n.nic_tag) => tags.push(n.nic_tag.clone()),
            Some(_) => {}
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    obj.insert("nic_tag".into(), json!(tags.first().cloned().unwrap_or_default()));
    obj.insert("nic_tags_present".into(), json!(tags));
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::internal(format!("pool record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Map<String, Value> {
        json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.9.0.0/24",
            "provision_start_ip": "10.9.0.10", "provision_end_ip": "10.9.0.250", "gateway": "10.9.0.1",
            "resolvers": ["10.9.0.1"], "routes": {"10.10.0.0/16": "10.9.0.2"}})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn creates_with_derived_fields() {
        let n = check_create(&body(), Some(1500)).unwrap();
        assert_eq!((n.netmask.as_str(), n.family.as_str(), n.mtu, n.fabric), ("255.255.255.0", "ipv4", 1500, false));
        assert_eq!(n.range_len(), 241);
        assert!(n.dhcp_server, "compute nodes answer DHCP unless told not to");
        let off = check_update(&n, json!({"dhcp_server": false}).as_object().unwrap(), Some(1500)).unwrap();
        assert!(!off.dhcp_server);
        let old: Network = serde_json::from_value(json!({"uuid": n.uuid, "name": "old", "nic_tag": "external", "vlan_id": 0,
            "subnet": "10.9.0.0/24", "netmask": "255.255.255.0", "family": "ipv4", "provision_start_ip": "10.9.0.10",
            "provision_end_ip": "10.9.0.20", "mtu": 1500, "fabric": false}))
        .unwrap();
        assert!(old.dhcp_server, "records stored before the field existed keep DHCP on");
    }

    #[test]
    fn range_and_gateway_must_be_inside() {
        let mut b = body();
        b.insert("provision_end_ip".into(), json!("10.9.1.5"));
        b.insert("gateway".into(), json!("10.9.0.255"));
        let err = check_create(&b, Some(1500)).unwrap_err();
        assert_eq!(err.code, "InvalidParameters");
        let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["provision_end_ip", "gateway"]);
        let mut b = body();
        b.insert("provision_start_ip".into(), json!("10.9.0.200"));
        b.insert("provision_end_ip".into(), json!("10.9.0.100"));
        assert!(check_create(&b, Some(1500)).unwrap_err().errors[0].message.contains("comes before"));
    }

    #[test]
    fn mtu_is_bounded_by_tag_and_subnet_is_immutable() {
        let mut b = body();
        b.insert("mtu".into(), json!(9000));
        assert!(check_create(&b, Some(1500)).is_err());
        let n = check_create(&body(), Some(1500)).unwrap();
        assert!(check_update(&n, json!({"subnet": "10.8.0.0/24"}).as_object().unwrap(), Some(1500)).is_err());
        let u = check_update(&n, json!({"gateway": null, "description": "x"}).as_object().unwrap(), Some(1500)).unwrap();
        assert_eq!(u.gateway, None);
    }

    #[test]
    fn pools_need_known_distinct_networks() {
        let n = check_create(&body(), Some(1500)).unwrap();
        let input = json!({"name": "pool", "networks": [n.uuid]});
        let p = check_pool(None, input.as_object().unwrap(), &[(n.uuid, Some(n.clone()))]).unwrap();
        assert_eq!(p.nic_tag, "external");
        let other = Uuid::new_v4();
        let err = check_pool(None, input.as_object().unwrap(), &[(n.uuid, Some(n.clone())), (n.uuid, Some(n)), (other, None)]).unwrap_err();
        assert_eq!(err.errors.len(), 2);
        let mut fabric = check_create(&body(), Some(1500)).unwrap();
        fabric.fabric = true;
        let err = check_pool(None, input.as_object().unwrap(), &[(fabric.uuid, Some(fabric))]).unwrap_err();
        assert!(err.errors[0].message.contains("is a fabric network"), "{err:?}");
    }
}
