//! Which value a metadata key names, and where a guest's write goes: SmartOS's key
//! namespaces, applied to a snapshot of the VM. Pure.
//!
//! | Key | Read from | Guest may write |
//! |---|---|---|
//! | `sdc:uuid`, `sdc:hostname`, `sdc:alias`, `sdc:owner_uuid`, `sdc:server_uuid`, `sdc:image_uuid`, `sdc:billing_id`, `sdc:brand`, `sdc:datacenter_name`, `sdc:dns_domain`, `sdc:package_name` | the VM (missing → NOTFOUND) | no |
//! | `sdc:nics`, `sdc:resolvers`, `sdc:routes` | the VM, as JSON | no |
//! | `sdc:operator-script` | `internal_metadata["operator-script"]` | no |
//! | `sdc:tags.<name>` | the tag | no |
//! | other `sdc:*` | NOTFOUND | no |
//! | `<ns>:*`, `ns` in `internal_metadata_namespaces` | `internal_metadata` | no |
//! | `*_pw` | `internal_metadata` | yes, to `internal_metadata` |
//! | `operator-script` | `customer_metadata` | yes, to `internal_metadata` (as SmartOS) |
//! | anything else | `customer_metadata` | yes, to `customer_metadata` |
//!
//! Values are strings; numbers and booleans are sent as their JSON text, objects and arrays
//! are a `FAILURE`. `KEYS` lists the keys a plain `GET` would find: customer keys that are
//! neither `*_pw` nor namespaced, then internal keys that are; never `sdc:` ones.

use std::net::Ipv4Addr;

use nereid_types::agent::{Definition, NicDef};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// What the guest can see of its VM, re-read on every request.
#[derive(Debug, Clone, PartialEq)]
pub struct VmView {
    pub def: Definition,
    pub server_uuid: Uuid,
    pub datacenter_name: Option<String>,
    pub dns_domain: Option<String>,
}

/// The answer to a `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NotFound,
    /// The key exists but cannot be served (e.g. its value is not a string).
    Failure(String),
}

/// A guest's write, persisted to VMAPI as an update (set_*/remove_*).
pub use nereid_types::agent::MetadataWrite;

/// The value `key` names for this VM.
pub fn get(view: &VmView, key: &str) -> Lookup {
    if let Some(name) = key.strip_prefix("sdc:") {
        return vm_fact(view, name);
    }
    let def = &view.def;
    let map = if is_internal(def, key) { &def.internal_metadata } else { &def.customer_metadata };
    string_value(map.get(key), key)
}

/// The keys `KEYS` lists, sorted.
pub fn keys(view: &VmView) -> Vec<String> {
    let def = &view.def;
    let customer = def.customer_metadata.iter().filter(|(k, _)| !is_internal(def, k));
    let internal = def.internal_metadata.iter().filter(|(k, _)| is_internal(def, k));
    let mut keys: Vec<String> =
        customer.chain(internal).filter(|(k, v)| !k.starts_with("sdc:") && !v.is_null()).map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The update a guest's `PUT key value` makes, or why it is refused.
pub fn put(view: &VmView, key: &str, value: &str) -> Result<MetadataWrite, String> {
    let mut write = MetadataWrite::default();
    let map = match writable(view, key)? {
        Store::Customer => &mut write.set_customer_metadata,
        Store::Internal => &mut write.set_internal_metadata,
    };
    map.insert(key.to_string(), Value::String(value.to_string()));
    Ok(write)
}

/// The update a guest's `DELETE key` makes, or why it is refused. Deleting a key that does
/// not exist is allowed (and changes nothing).
pub fn delete(view: &VmView, key: &str) -> Result<MetadataWrite, String> {
    let mut write = MetadataWrite::default();
    let list = match writable(view, key)? {
        Store::Customer => &mut write.remove_customer_metadata,
        Store::Internal => &mut write.remove_internal_metadata,
    };
    list.push(key.to_string());
    Ok(write)
}

/// Where a guest's write to a key is stored.
enum Store {
    Customer,
    Internal,
}

fn writable(view: &VmView, key: &str) -> Result<Store, String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.starts_with("sdc:") {
        return Err("Cannot update the \"sdc\" Namespace.".into());
    }
    if let Some(ns) = internal_namespace(&view.def, key) {
        return Err(format!("Cannot update the \"{ns}\" Namespace."));
    }
    if is_password(key) || key == "operator-script" { Ok(Store::Internal) } else { Ok(Store::Customer) }
}

fn is_password(key: &str) -> bool {
    key.ends_with("_pw")
}

/// The namespace of `key` (`<ns>:…`) when it is one of the VM's internal namespaces.
fn internal_namespace<'a>(def: &Definition, key: &'a str) -> Option<&'a str> {
    let (ns, _) = key.split_once(':')?;
    def.internal_metadata_namespaces.iter().any(|n| n == ns).then_some(ns)
}

/// Is `key` read from `internal_metadata`?
fn is_internal(def: &Definition, key: &str) -> bool {
    is_password(key) || internal_namespace(def, key).is_some()
}

/// A metadata value as the protocol sends it.
fn string_value(value: Option<&Value>, key: &str) -> Lookup {
    match value {
        None | Some(Value::Null) => Lookup::NotFound,
        Some(Value::String(s)) => Lookup::Found(s.clone()),
        Some(Value::Number(n)) => Lookup::Found(n.to_string()),
        Some(Value::Bool(b)) => Lookup::Found(b.to_string()),
        Some(Value::Array(_) | Value::Object(_)) => Lookup::Failure(format!("the value of {key} is not a string")),
    }
}

/// `sdc:<name>`.
fn vm_fact(view: &VmView, name: &str) -> Lookup {
    let def = &view.def;
    let optional = |value: Option<String>| value.map_or(Lookup::NotFound, Lookup::Found);
    let json = |value: Value| Lookup::Found(value.to_string());
    match name {
        "uuid" => Lookup::Found(def.uuid.to_string()),
        "hostname" => optional(def.hostname.clone()),
        "alias" => optional(def.alias.clone()),
        "owner_uuid" => Lookup::Found(def.owner_uuid.to_string()),
        "server_uuid" => Lookup::Found(view.server_uuid.to_string()),
        "image_uuid" => optional(def.image_uuid.map(|u| u.to_string())),
        "billing_id" => optional(def.billing_id.map(|u| u.to_string())),
        "brand" => Lookup::Found(def.brand.clone()),
        "datacenter_name" => optional(view.datacenter_name.clone()),
        "dns_domain" => optional(view.dns_domain.clone()),
        "package_name" => optional(def.package_name.clone()),
        "nics" => json(Value::Array(def.nics.iter().map(nic_json).collect())),
        "resolvers" => json(json!(def.resolvers)),
        "routes" => json(Value::Array(routes_json(def))),
        "operator-script" => string_value(def.internal_metadata.get("operator-script"), "sdc:operator-script"),
        other => match other.strip_prefix("tags.") {
            Some(tag) => string_value(def.tags.get(tag), &format!("sdc:tags.{tag}")),
            None => Lookup::NotFound,
        },
    }
}

/// One NIC as vmadm shows it (what cloud-init's SmartOS source configures the guest from).
fn nic_json(nic: &NicDef) -> Value {
    let mut o = Map::new();
    o.insert("interface".into(), json!(nic.interface));
    o.insert("mac".into(), json!(nic.mac));
    o.insert("vlan_id".into(), json!(nic.vlan_id));
    o.insert("nic_tag".into(), json!(nic.nic_tag));
    if let Some(ip) = &nic.ip {
        o.insert("ip".into(), json!(ip));
        o.insert("ips".into(), json!([cidr(ip, nic.netmask.as_deref())]));
    }
    if let Some(netmask) = &nic.netmask {
        o.insert("netmask".into(), json!(netmask));
    }
    if let Some(gateway) = &nic.gateway {
        o.insert("gateway".into(), json!(gateway));
        o.insert("gateways".into(), json!([gateway]));
    }
    if let Some(network) = nic.network_uuid {
        o.insert("network_uuid".into(), json!(network));
    }
    o.insert("mtu".into(), json!(nic.mtu));
    o.insert("primary".into(), json!(nic.primary));
    o.insert("model".into(), json!(nic.model));
    Value::Object(o)
}

/// `ip/prefix` from an address and a dotted netmask; `dhcp`, `addrconf`, an address already
/// in CIDR form, or one without a usable netmask are left as they are.
fn cidr(ip: &str, netmask: Option<&str>) -> String {
    if ip == "dhcp" || ip == "addrconf" || ip.contains('/') {
        return ip.to_string();
    }
    match netmask.and_then(prefix_len) {
        Some(prefix) => format!("{ip}/{prefix}"),
        None => ip.to_string(),
    }
}

/// `255.255.255.0` → 24; `None` for a mask that is not contiguous ones then zeros.
fn prefix_len(netmask: &str) -> Option<u32> {
    let bits = u32::from(netmask.parse::<Ipv4Addr>().ok()?);
    (bits.leading_ones() == bits.count_ones()).then_some(bits.count_ones())
}

/// `sdc:routes`: `{dst: gateway}` as given; `{dst: "nics[N]"}` or `{dst: "macs[MAC]"}` is a
/// link-local route through that NIC's own address, left out when the NIC has none.
fn routes_json(def: &Definition) -> Vec<Value> {
    let Some(routes) = &def.routes else { return Vec::new() };
    let mut out = Vec::new();
    for (dst, target) in routes {
        let Some(target) = target.as_str() else { continue };
        match route_nic(def, target) {
            None => out.push(json!({"dst": dst, "gateway": target, "linklocal": false})),
            Some(nic) => {
                let ip = nic.and_then(|n| n.ip.as_deref()).filter(|ip| *ip != "dhcp" && *ip != "addrconf");
                if let Some(ip) = ip {
                    out.push(json!({"dst": dst, "gateway": ip, "linklocal": true}));
                }
            }
        }
    }
    out
}

/// For a link-local route target (`nics[N]`, `macs[MAC]`), the NIC it names (`Some(None)`
/// when there is no such NIC); `None` for an ordinary gateway.
fn route_nic<'a>(def: &'a Definition, target: &str) -> Option<Option<&'a NicDef>> {
    if let Some(index) = target.strip_prefix("nics[").and_then(|s| s.strip_suffix(']')) {
        return Some(index.parse::<usize>().ok().and_then(|i| def.nics.get(i)));
    }
    let mac = target.strip_prefix("macs[").and_then(|s| s.strip_suffix(']'))?;
    Some(def.nics.iter().find(|n| same_mac(&n.mac, mac)))
}

/// MACs compare without case or separators (`90:B8:D0:…`, `90b8d0…`).
fn same_mac(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_lowercase()).collect::<String>();
    norm(a) == norm(b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const VM: &str = "5f5a1a6e-8a5e-4c3f-9c2b-2f0f0d3e1a01";
    const OWNER: &str = "930896af-bf8c-48d4-885c-6573a94b1853";
    const SERVER: &str = "44454c4c-3800-1034-804a-b2c04f354d31";
    const NETWORK: &str = "2e8b1c4b-3f4b-4f8e-9c8a-6a3b2a1f0e11";

    /// A VM with a little of everything.
    pub(crate) fn view() -> VmView {
        let def: Definition = serde_json::from_value(json!({
            "uuid": VM,
            "brand": "kvm",
            "owner_uuid": OWNER,
            "alias": "web0",
            "hostname": "web0",
            "ram": 1024,
            "vcpus": 1,
            "disks": [],
            "nics": [
                {"mac": "90:b8:d0:c0:ff:ee", "interface": "net0", "ip": "10.1.10.100", "netmask": "255.255.255.0",
                 "gateway": "10.1.10.1", "vlan_id": 0, "nic_tag": "external", "mtu": 1500, "primary": true,
                 "model": "virtio", "network_uuid": NETWORK},
                {"mac": "90:b8:d0:00:00:02", "interface": "net1", "ip": "192.168.5.7", "netmask": "255.255.254.0",
                 "vlan_id": 12, "nic_tag": "internal", "mtu": 9000, "primary": false, "model": "virtio"},
                {"mac": "90:b8:d0:00:00:03", "interface": "net2", "vlan_id": 0, "nic_tag": "admin", "mtu": 1500,
                 "primary": false, "model": "e1000"}
            ],
            "customer_metadata": {
                "user-script": "#!/bin/sh\necho hi\n",
                "count": 3,
                "flag": true,
                "nothing": null,
                "nested": {"a": 1},
                "cloud-init:user-data": "#cloud-config\n",
                "prepare-image:state": "customer copy (hidden)",
                "admin_pw": "customer copy (hidden)",
                "sdc:sneaky": "never listed"
            },
            "internal_metadata": {
                "root_pw": "s3cret",
                "operator-script": "#!/bin/sh\necho operator\n",
                "prepare-image:state": "running",
                "other": "not visible"
            },
            "internal_metadata_namespaces": ["prepare-image"],
            "tags": {"role": "web", "weight": 5, "list": [1]},
            "resolvers": ["8.8.8.8", "8.8.4.4"],
            "routes": {
                "10.2.0.0/16": "10.1.10.254",
                "10.3.0.0/16": "nics[1]",
                "10.4.0.0/16": "macs[90B8D0C0FFEE]",
                "10.5.0.0/16": "nics[2]",
                "10.6.0.0/16": "nics[9]"
            },
            "image_uuid": "bb0f0d3e-8a5e-4c3f-9c2b-2f0f0d3e1a02",
            "billing_id": "cc0f0d3e-8a5e-4c3f-9c2b-2f0f0d3e1a03",
            "package_name": "g4-highcpu-1G"
        }))
        .unwrap();
        VmView {
            def,
            server_uuid: SERVER.parse().unwrap(),
            datacenter_name: Some("us-east-1".into()),
            dns_domain: Some("example.org".into()),
        }
    }

    fn found(s: &str) -> Lookup {
        Lookup::Found(s.into())
    }

    #[test]
    fn vm_facts() {
        let v = view();
        assert_eq!(get(&v, "sdc:uuid"), found(VM));
        assert_eq!(get(&v, "sdc:hostname"), found("web0"));
        assert_eq!(get(&v, "sdc:alias"), found("web0"));
        assert_eq!(get(&v, "sdc:owner_uuid"), found(OWNER));
        assert_eq!(get(&v, "sdc:server_uuid"), found(SERVER));
        assert_eq!(get(&v, "sdc:image_uuid"), found("bb0f0d3e-8a5e-4c3f-9c2b-2f0f0d3e1a02"));
        assert_eq!(get(&v, "sdc:billing_id"), found("cc0f0d3e-8a5e-4c3f-9c2b-2f0f0d3e1a03"));
        assert_eq!(get(&v, "sdc:brand"), found("kvm"));
        assert_eq!(get(&v, "sdc:datacenter_name"), found("us-east-1"));
        assert_eq!(get(&v, "sdc:dns_domain"), found("example.org"));
        assert_eq!(get(&v, "sdc:package_name"), found("g4-highcpu-1G"));
    }

    #[test]
    fn missing_vm_facts_are_not_found() {
        let mut v = view();
        v.def.hostname = None;
        v.def.alias = None;
        v.def.image_uuid = None;
        v.def.billing_id = None;
        v.def.package_name = None;
        v.datacenter_name = None;
        v.dns_domain = None;
        for key in
            ["sdc:hostname", "sdc:alias", "sdc:image_uuid", "sdc:billing_id", "sdc:package_name", "sdc:datacenter_name", "sdc:dns_domain"]
        {
            assert_eq!(get(&v, key), Lookup::NotFound, "{key}");
        }
    }

    #[test]
    fn other_sdc_keys_are_not_found() {
        let v = view();
        assert_eq!(get(&v, "sdc:sneaky"), Lookup::NotFound);
        assert_eq!(get(&v, "sdc:ram"), Lookup::NotFound);
        assert_eq!(get(&v, "sdc:"), Lookup::NotFound);
        assert_eq!(get(&v, "sdc:tags"), Lookup::NotFound);
    }

    #[test]
    fn nics_are_vmadm_shaped() {
        let Lookup::Found(text) = get(&view(), "sdc:nics") else { panic!() };
        let nics: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            nics[0],
            json!({"interface": "net0", "mac": "90:b8:d0:c0:ff:ee", "vlan_id": 0, "nic_tag": "external",
                   "ip": "10.1.10.100", "ips": ["10.1.10.100/24"], "netmask": "255.255.255.0",
                   "gateway": "10.1.10.1", "gateways": ["10.1.10.1"], "network_uuid": NETWORK,
                   "mtu": 1500, "primary": true, "model": "virtio"})
        );
        assert_eq!(
            nics[1],
            json!({"interface": "net1", "mac": "90:b8:d0:00:00:02", "vlan_id": 12, "nic_tag": "internal",
                   "ip": "192.168.5.7", "ips": ["192.168.5.7/23"], "netmask": "255.255.254.0",
                   "mtu": 9000, "primary": false, "model": "virtio"})
        );
        assert_eq!(
            nics[2],
            json!({"interface": "net2", "mac": "90:b8:d0:00:00:03", "vlan_id": 0, "nic_tag": "admin",
                   "mtu": 1500, "primary": false, "model": "e1000"})
        );
    }

    #[test]
    fn ips_from_ip_and_netmask() {
        assert_eq!(cidr("10.0.0.5", Some("255.0.0.0")), "10.0.0.5/8");
        assert_eq!(cidr("10.0.0.5", Some("255.255.255.255")), "10.0.0.5/32");
        assert_eq!(cidr("10.0.0.5", Some("255.0.255.0")), "10.0.0.5");
        assert_eq!(cidr("10.0.0.5", None), "10.0.0.5");
        assert_eq!(cidr("dhcp", Some("255.255.255.0")), "dhcp");
        assert_eq!(cidr("fd00::5/64", None), "fd00::5/64");
    }

    #[test]
    fn resolvers_are_a_json_array() {
        let mut v = view();
        assert_eq!(get(&v, "sdc:resolvers"), found(r#"["8.8.8.8","8.8.4.4"]"#));
        v.def.resolvers.clear();
        assert_eq!(get(&v, "sdc:resolvers"), found("[]"));
    }

    #[test]
    fn routes_resolve_link_local_targets() {
        let mut v = view();
        let Lookup::Found(text) = get(&v, "sdc:routes") else { panic!() };
        let routes: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            routes,
            json!([
                {"dst": "10.2.0.0/16", "gateway": "10.1.10.254", "linklocal": false},
                {"dst": "10.3.0.0/16", "gateway": "192.168.5.7", "linklocal": true},
                {"dst": "10.4.0.0/16", "gateway": "10.1.10.100", "linklocal": true}
            ])
        );
        v.def.nics[1].ip = Some("dhcp".into());
        let Lookup::Found(text) = get(&v, "sdc:routes") else { panic!() };
        assert!(!text.contains("10.3.0.0/16"), "{text}");
        v.def.routes = None;
        assert_eq!(get(&v, "sdc:routes"), found("[]"));
    }

    #[test]
    fn operator_script_and_tags() {
        let v = view();
        assert_eq!(get(&v, "sdc:operator-script"), found("#!/bin/sh\necho operator\n"));
        assert_eq!(get(&v, "sdc:tags.role"), found("web"));
        assert_eq!(get(&v, "sdc:tags.weight"), found("5"));
        assert!(matches!(get(&v, "sdc:tags.list"), Lookup::Failure(_)));
        assert_eq!(get(&v, "sdc:tags.missing"), Lookup::NotFound);
        // Without the prefix, operator-script is an ordinary customer key.
        assert_eq!(get(&v, "operator-script"), Lookup::NotFound);
    }

    #[test]
    fn passwords_and_namespaces_come_from_internal_metadata() {
        let v = view();
        assert_eq!(get(&v, "root_pw"), found("s3cret"));
        assert_eq!(get(&v, "admin_pw"), Lookup::NotFound);
        assert_eq!(get(&v, "prepare-image:state"), found("running"));
        assert_eq!(get(&v, "prepare-image:missing"), Lookup::NotFound);
        assert_eq!(get(&v, "other"), Lookup::NotFound);
    }

    #[test]
    fn everything_else_comes_from_customer_metadata() {
        let v = view();
        assert_eq!(get(&v, "user-script"), found("#!/bin/sh\necho hi\n"));
        assert_eq!(get(&v, "cloud-init:user-data"), found("#cloud-config\n"));
        assert_eq!(get(&v, "missing"), Lookup::NotFound);
    }

    #[test]
    fn values_are_strings() {
        let v = view();
        assert_eq!(get(&v, "count"), found("3"));
        assert_eq!(get(&v, "flag"), found("true"));
        assert_eq!(get(&v, "nothing"), Lookup::NotFound);
        assert_eq!(get(&v, "nested"), Lookup::Failure("the value of nested is not a string".into()));
    }

    #[test]
    fn keys_lists_what_get_finds() {
        assert_eq!(keys(&view()), ["cloud-init:user-data", "count", "flag", "nested", "prepare-image:state", "root_pw", "user-script"]);
    }

    #[test]
    fn puts_go_to_the_right_map() {
        let v = view();
        let mut w = MetadataWrite::default();
        w.set_customer_metadata.insert("user-data".into(), json!("x"));
        assert_eq!(put(&v, "user-data", "x"), Ok(w));
        let mut w = MetadataWrite::default();
        w.set_internal_metadata.insert("root_pw".into(), json!("y"));
        assert_eq!(put(&v, "root_pw", "y"), Ok(w));
        let mut w = MetadataWrite::default();
        w.set_internal_metadata.insert("operator-script".into(), json!("z"));
        assert_eq!(put(&v, "operator-script", "z"), Ok(w));
        let mut w = MetadataWrite::default();
        w.set_customer_metadata.insert("cloud-init:state".into(), json!(""));
        assert_eq!(put(&v, "cloud-init:state", ""), Ok(w));
    }

    #[test]
    fn protected_keys_are_refused() {
        let v = view();
        assert_eq!(put(&v, "sdc:uuid", "x"), Err("Cannot update the \"sdc\" Namespace.".into()));
        assert_eq!(delete(&v, "sdc:hostname"), Err("Cannot update the \"sdc\" Namespace.".into()));
        assert_eq!(put(&v, "prepare-image:state", "x"), Err("Cannot update the \"prepare-image\" Namespace.".into()));
        assert_eq!(delete(&v, "prepare-image:state"), Err("Cannot update the \"prepare-image\" Namespace.".into()));
        assert!(put(&v, "", "x").is_err());
    }

    #[test]
    fn deletes_go_to_the_right_map() {
        let v = view();
        let w = MetadataWrite { remove_customer_metadata: vec!["user-script".into()], ..Default::default() };
        assert_eq!(delete(&v, "user-script"), Ok(w));
        let w = MetadataWrite { remove_internal_metadata: vec!["root_pw".into()], ..Default::default() };
        assert_eq!(delete(&v, "root_pw"), Ok(w));
        let w = MetadataWrite { remove_internal_metadata: vec!["operator-script".into()], ..Default::default() };
        assert_eq!(delete(&v, "operator-script"), Ok(w));
        // A missing key is fine.
        let w = MetadataWrite { remove_customer_metadata: vec!["never-set".into()], ..Default::default() };
        assert_eq!(delete(&v, "never-set"), Ok(w));
    }
}
