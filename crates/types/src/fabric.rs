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

// ---------------------------------------------------------------------------------------
// Validation and pure rules (NAPI's fabric VLAN and fabric network models).
//
// Messages are NAPI's, so the errors the `triton` CLI prints read as Triton's:
// CloudAPI renders each `errors[]` entry as `property "<field>": <message>`.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, FieldError};
use crate::ipv4::Subnet;
use crate::network::Network;
use crate::spec::{self, Field, Kind, Mode};

/// NAPI's message for a VLAN id outside 0-4094 (or 1, the untagged default VLAN of switches).
pub const VLAN_MSG: &str = "VLAN ID must be a number between 0 and 4094, and not 1";
/// NAPI's message for a second VLAN with the same id in one account.
pub const VLAN_USED: &str = "VLAN ID is already in use";
/// NAPI's message for deleting a VLAN that still has networks.
pub const NET_ON_VLAN: &str = "VLAN must have no networks";
/// NAPI's message for deleting a network that still has NICs.
pub const NIC_ON_NET: &str = "network must have no NICs provisioned";
/// NAPI's message for a fabric subnet outside RFC 1918.
pub const PRIV_RANGE_ONLY: &str = "subnet must be within private ranges";
/// NAPI's message for a fabric subnet overlapping another of the same account.
pub const OVERLAP_MSG: &str = "subnet overlaps with another network";
/// NAPI's message for a network name the account already uses.
pub const NET_NAME_IN_USE: &str = "name is in use by another network";

/// Triton's default fabric for new accounts (sdc `fabric_cfg` / napi-ufds-watcher defaults).
pub const DEFAULT_VLAN_ID: u16 = 2;
pub const DEFAULT_VLAN_NAME: &str = "default";
pub const DEFAULT_NETWORK_NAME: &str = "My-Fabric-Network";

/// The body of the default fabric network of a new account.
pub fn default_network_body() -> Map<String, Value> {
    let v = json!({
        "name": DEFAULT_NETWORK_NAME,
        "subnet": "192.168.128.0/22",
        "provision_start_ip": "192.168.128.5",
        "provision_end_ip": "192.168.131.250",
        "gateway": "192.168.128.1",
        "resolvers": ["8.8.8.8", "8.8.4.4"],
        "internet_nat": true,
    });
    v.as_object().cloned().unwrap_or_default()
}

/// A VLAN id as given (a number, or a number in a string as paths and forms carry it).
pub fn parse_vlan_id(v: &Value) -> Result<u16, String> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (0..=4094).contains(&n) && n != 1 => Ok(n as u16),
        _ => Err(VLAN_MSG.into()),
    }
}

fn check_vlan_value(v: &Value) -> Result<(), String> {
    parse_vlan_id(v).map(|_| ())
}

fn vlan_schema() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": 4094, "description": "0 or 2-4094"})
}

fn check_net_name(s: &str) -> Result<(), String> {
    if s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/')) {
        Ok(())
    } else {
        Err(format!("may only contain letters, digits, _ - . and / (got {:?})", spec::truncate(s, 60)))
    }
}

/// NAPI's fabric VLAN fields.
pub const VLAN_FIELDS: &[Field] = &[
    Field::new("vlan_id", Kind::Custom { check: check_vlan_value, schema: vlan_schema }, "VLAN ID (0 or 2-4094), unique in the account.")
        .required()
        .immutable(),
    Field::new("name", Kind::Str { max: 64, check: Some(check_net_name) }, "Name.").required(),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Free text."),
    Field::new(
        "vnet_id",
        Kind::Int { min: 1, max: MAX_VNI as i64, multiple_of: None, unit: None },
        "The VXLAN segment (VNI) carrying this VLAN.",
    )
    .read_only(),
    Field::new("owner_uuid", Kind::Uuid, "The account.").read_only(),
];

/// Validates a VLAN create body for `owner`, carried by segment `vni`.
pub fn check_vlan_create(owner: Uuid, input: &Map<String, Value>, vni: u32) -> Result<FabricVlan, ApiError> {
    let errors = spec::check(VLAN_FIELDS, input, Mode::Create, &[]);
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let vlan_id = input
        .get("vlan_id")
        .map(parse_vlan_id)
        .transpose()
        .map_err(|m| ApiError::invalid_parameters(vec![FieldError::invalid("vlan_id", m)]))?;
    Ok(FabricVlan {
        owner_uuid: owner,
        vlan_id: vlan_id.unwrap_or_default(),
        name: input.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        description: input.get("description").and_then(Value::as_str).map(str::to_string),
        vni,
    })
}

/// Validates a VLAN update (name and description; the id may be repeated, not changed).
pub fn check_vlan_update(cur: &FabricVlan, input: &Map<String, Value>) -> Result<FabricVlan, ApiError> {
    let mut input = input.clone();
    if input.get("vlan_id").map(parse_vlan_id) == Some(Ok(cur.vlan_id)) {
        input.remove("vlan_id");
    }
    let mut errors = spec::check(VLAN_FIELDS, &input, Mode::Update, &[]);
    if input.contains_key("vlan_id") {
        errors.push(FieldError::invalid("vlan_id", "cannot be changed on an existing VLAN"));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let mut next = cur.clone();
    if let Some(n) = input.get("name").and_then(Value::as_str) {
        next.name = n.to_string();
    }
    match input.get("description") {
        Some(Value::Null) => next.description = None,
        Some(Value::String(d)) => next.description = Some(d.clone()),
        _ => {}
    }
    Ok(next)
}

/// A VLAN as NAPI renders it.
pub fn render_vlan(v: &FabricVlan) -> Value {
    let mut out = json!({"name": v.name, "owner_uuid": v.owner_uuid, "vlan_id": v.vlan_id, "vnet_id": v.vni});
    if let Some(d) = &v.description {
        out["description"] = json!(d);
    }
    out
}

fn check_routes_any(v: &Value) -> Result<(), String> {
    if v.is_object() { Ok(()) } else { Err("must be an object of {destination: gateway}".into()) }
}

fn routes_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

/// What a fabric network create or update may carry (the rest comes from its VLAN).
pub const NETWORK_FIELDS: &[Field] = &[
    Field::new("name", Kind::Str { max: 64, check: Some(check_net_name) }, "Name, unique in the account.").required(),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Free text."),
    Field::new("subnet", Kind::Cidr, "IPv4 subnet inside RFC 1918 (10/8, 172.16/12, 192.168/16).").required().immutable(),
    Field::new("provision_start_ip", Kind::Ipv4, "First address handed out (inclusive).").required(),
    Field::new("provision_end_ip", Kind::Ipv4, "Last address handed out (inclusive).").required(),
    Field::new("gateway", Kind::Ipv4, "Gateway (reserved, never given to a NIC); needed for internet_nat.").immutable(),
    Field::new("resolvers", Kind::Ipv4List, "DNS resolvers, in order."),
    Field::new("routes", Kind::Custom { check: check_routes_any, schema: routes_schema }, "Static routes {destination: gateway}."),
    Field::new("internet_nat", Kind::Bool, "VMs reach the outside through NAT at the gateway (default true)."),
];

/// Keys callers may send that come from the path or the VLAN anyway (ignored).
const IMPLIED: &[&str] = &["vlan_id", "fabric", "owner_uuid", "fields"];

fn strip_implied(input: &Map<String, Value>) -> Map<String, Value> {
    input.iter().filter(|(k, _)| !IMPLIED.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Whether a subnet lies inside RFC 1918's private ranges.
pub fn is_private(s: Subnet) -> bool {
    const RANGES: [(u32, u8); 3] = [(0x0a00_0000, 8), (0xac10_0000, 12), (0xc0a8_0000, 16)];
    RANGES.iter().any(|&(base, prefix)| {
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        s.prefix >= prefix && s.base & mask == base
    })
}

/// Whether two subnets share an address.
pub fn overlaps(a: Subnet, b: Subnet) -> bool {
    let mask = a.mask() & b.mask();
    a.base & mask == b.base & mask
}

/// The errors for `net` overlapping any of `others` (the same account's fabric networks).
pub fn overlap_errors(net: &Network, others: &[Network]) -> Vec<FieldError> {
    others
        .iter()
        .filter(|o| o.uuid != net.uuid && overlaps(o.subnet(), net.subnet()))
        .map(|_| FieldError { field: "subnet".into(), code: "UsedBy".into(), message: OVERLAP_MSG.into() })
        .collect()
}

/// Validates a fabric network create body on `vlan`, with MTU `mtu` (the underlay's
/// minus the VXLAN overhead).
pub fn check_network_create(vlan: &FabricVlan, input: &Map<String, Value>, mtu: u32) -> Result<Network, ApiError> {
    let input = strip_implied(input);
    let errors = spec::check(NETWORK_FIELDS, &input, Mode::Create, &[]);
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let internet_nat = input.get("internet_nat").and_then(Value::as_bool).unwrap_or(true);
    let mut body = input.clone();
    body.remove("internet_nat");
    body.insert("nic_tag".into(), json!(OVERLAY_TAG));
    body.insert("vlan_id".into(), json!(vlan.vlan_id));
    body.insert("owner_uuids".into(), json!([vlan.owner_uuid]));
    body.insert("mtu".into(), json!(mtu));
    let mut net = crate::network::check_create(&body, Some(mtu))?;
    net.fabric = true;
    net.vni = Some(vlan.vni);
    net.internet_nat = internet_nat;
    finish_network(&net)?;
    Ok(net)
}

/// Validates a fabric network update (name, description, provision range, resolvers,
/// routes, internet_nat; the subnet and gateway are fixed, as in NAPI).
pub fn check_network_update(cur: &Network, input: &Map<String, Value>) -> Result<Network, ApiError> {
    let mut input = strip_implied(input);
    for k in ["subnet", "gateway"] {
        if input.get(k) == serde_json::to_value(cur).ok().as_ref().and_then(|c| c.get(k)) {
            input.remove(k);
        }
    }
    let mut errors = spec::check(NETWORK_FIELDS, &input, Mode::Update, &[]);
    for k in ["subnet", "gateway"] {
        if input.contains_key(k) {
            errors.push(FieldError::invalid(k, "cannot be changed on a fabric network"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameters(errors));
    }
    let internet_nat = input.get("internet_nat").and_then(Value::as_bool).unwrap_or(cur.internet_nat);
    let mut body = input.clone();
    body.remove("internet_nat");
    let mut net = crate::network::check_update(cur, &body, Some(cur.mtu))?;
    net.internet_nat = internet_nat;
    finish_network(&net)?;
    Ok(net)
}

fn finish_network(net: &Network) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if !is_private(net.subnet()) {
        errors.push(FieldError::invalid("subnet", PRIV_RANGE_ONLY));
    }
    if net.internet_nat && net.gateway.is_none() {
        errors.push(FieldError::invalid(
            "gateway",
            "is needed for internet_nat (the NAT answers at the gateway); give one or set internet_nat false",
        ));
    }
    if errors.is_empty() { Ok(()) } else { Err(ApiError::invalid_parameters(errors)) }
}

/// A fabric network as NAPI renders it: the network plus `fabric`, `vnet_id`,
/// `internet_nat`, `gateway_provisioned`, `owner_uuid`, and its nic tag as
/// `sdc_overlay/<vnet_id>` (the stored tag stays [`OVERLAY_TAG`]). Other networks as they are.
pub fn render_network(net: &Network) -> Value {
    let mut v = serde_json::to_value(net).unwrap_or(Value::Null);
    if !net.fabric {
        return v;
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("vni");
        o.insert("fabric".into(), json!(true));
        o.insert("internet_nat".into(), json!(net.internet_nat));
        o.insert("gateway_provisioned".into(), json!(false));
        if let Some(vni) = net.vni {
            o.insert("vnet_id".into(), json!(vni));
            o.insert("nic_tag".into(), json!(format!("{}/{vni}", net.nic_tag)));
        }
        if let Some(owner) = net.owner_uuids.as_ref().and_then(|u| u.first()) {
            o.insert("owner_uuid".into(), json!(owner));
        }
    }
    v
}

/// A fresh VXLAN segment id candidate (1..=MAX_VNI) from a random UUID; the caller
/// claims it with a conditional create and draws again when it is taken.
pub fn random_vni() -> u32 {
    let r = Uuid::new_v4().as_u128();
    (r as u32 % MAX_VNI) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn vlan() -> FabricVlan {
        FabricVlan { owner_uuid: Uuid::nil(), vlan_id: 5, name: "v".into(), description: None, vni: 77 }
    }

    #[test]
    fn vlan_ids_follow_napi() {
        assert_eq!(parse_vlan_id(&json!(0)), Ok(0));
        assert_eq!(parse_vlan_id(&json!("4094")), Ok(4094));
        for bad in [json!(1), json!(4095), json!(4096), json!(-1), json!("x"), json!(2.5)] {
            assert_eq!(parse_vlan_id(&bad), Err(VLAN_MSG.to_string()), "{bad}");
        }
        let e = check_vlan_create(Uuid::nil(), &obj(json!({"vlan_id": 4096, "name": "x"})), 9).unwrap_err();
        assert_eq!((e.code.as_str(), e.errors[0].field.as_str(), e.errors[0].message.as_str()), ("InvalidParameters", "vlan_id", VLAN_MSG));
        let v = check_vlan_create(Uuid::nil(), &obj(json!({"vlan_id": 5, "name": "x", "description": "d"})), 9).unwrap();
        assert_eq!((v.vlan_id, v.vni, v.description.as_deref()), (5, 9, Some("d")));
        let u = check_vlan_update(&v, &obj(json!({"vlan_id": 5, "name": "y", "description": null}))).unwrap();
        assert_eq!((u.name.as_str(), u.description), ("y", None));
        assert!(check_vlan_update(&v, &obj(json!({"vlan_id": 6}))).is_err());
    }

    #[test]
    fn fabric_networks_are_private_and_carry_their_vlan() {
        let body = obj(json!({"name": "n", "subnet": "10.1.0.0/24", "provision_start_ip": "10.1.0.5",
            "provision_end_ip": "10.1.0.250", "gateway": "10.1.0.1", "vlan_id": 5}));
        let n = check_network_create(&vlan(), &body, 1450).unwrap();
        assert_eq!((n.fabric, n.vni, n.internet_nat, n.mtu, n.nic_tag.as_str(), n.vlan_id), (true, Some(77), true, 1450, OVERLAY_TAG, 5));
        assert_eq!(n.owner_uuids, Some(vec![Uuid::nil()]));
        let r = render_network(&n);
        assert_eq!(
            (r["nic_tag"].as_str(), r["vnet_id"].as_u64(), r["gateway_provisioned"].as_bool()),
            (Some("sdc_overlay/77"), Some(77), Some(false))
        );
        let mut public = body.clone();
        public.insert("subnet".into(), json!("8.8.8.0/24"));
        public.insert("provision_start_ip".into(), json!("8.8.8.5"));
        public.insert("provision_end_ip".into(), json!("8.8.8.9"));
        public.insert("gateway".into(), json!("8.8.8.1"));
        assert_eq!(check_network_create(&vlan(), &public, 1450).unwrap_err().errors[0].message, PRIV_RANGE_ONLY);
        let mut outside = body.clone();
        outside.insert("gateway".into(), json!("10.2.0.1"));
        assert_eq!(check_network_create(&vlan(), &outside, 1450).unwrap_err().errors[0].field, "gateway");
        let mut no_gw = body.clone();
        no_gw.remove("gateway");
        assert!(check_network_create(&vlan(), &no_gw, 1450).is_err(), "NAT needs a gateway");
        no_gw.insert("internet_nat".into(), json!(false));
        assert!(check_network_create(&vlan(), &no_gw, 1450).unwrap().gateway.is_none());
        let other = check_network_create(
            &vlan(),
            &obj(json!({"name": "m", "subnet": "10.1.0.128/25", "provision_start_ip": "10.1.0.130",
            "provision_end_ip": "10.1.0.140", "internet_nat": false})),
            1450,
        )
        .unwrap();
        assert_eq!(overlap_errors(&other, std::slice::from_ref(&n)).len(), 1);
        assert!(overlap_errors(&n, std::slice::from_ref(&n)).is_empty(), "a network does not overlap itself");
        let u = check_network_update(&n, &obj(json!({"name": "n2", "internet_nat": false, "subnet": "10.1.0.0/24"}))).unwrap();
        assert_eq!((u.name.as_str(), u.internet_nat), ("n2", false));
        assert!(check_network_update(&n, &obj(json!({"gateway": "10.1.0.2"}))).is_err());
    }

    #[test]
    fn private_ranges() {
        for (s, want) in [
            ("10.0.0.0/8", true),
            ("172.16.0.0/12", true),
            ("172.32.0.0/16", false),
            ("192.168.128.0/22", true),
            ("192.0.0.0/8", false),
            ("11.0.0.0/24", false),
        ] {
            assert_eq!(is_private(Subnet::parse(s).unwrap()), want, "{s}");
        }
        assert!((1..=MAX_VNI).contains(&random_vni()));
    }
}
