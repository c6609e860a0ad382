//! Pure translations between Nereid's records and CloudAPI's objects: machines (as
//! sdc-cloudapi's `translate()`), images, packages, networks; and CreateMachine's input
//! (flattened `metadata.*`/`tag.*`, `networks` in both forms, `affinity` rules).
//!
//! ListMachines and GetMachine both render [`machine`]'s object, so the two are equal,
//! as the CLI assumes: GetMachine through the `Value`, ListMachines serialized straight
//! from a [`MachineView`] (the same members in the same order, without the nulls CloudAPI
//! leaves out; a test holds the two equal). [`machine_row`] and [`image_row`] are the
//! ListMachines and ListImages renderings the lists' cache keeps per record version
//! (`app::lists`).

use crate::app::lists::{Cached, Made, decode_or_log, to_bytes};
use crate::buckets::{IMAGES, VMS};
use nereid_types::image::Image;
use nereid_types::network::{Network, NetworkPool};
use nereid_types::package::Package;
use nereid_types::vm::Vm;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// CloudAPI's state for a VMAPI state (sdc-cloudapi `translateState`).
pub fn machine_state(vmapi: &str) -> &'static str {
    match vmapi {
        "configured" | "incomplete" | "unavailable" | "provisioning" => "provisioning",
        "running" => "running",
        "halting" | "stopping" | "shutting_down" => "stopping",
        "off" | "down" | "installed" | "stopped" => "stopped",
        "unreachable" => "offline",
        "destroyed" => "deleted",
        "failed" => "failed",
        "ready" => "ready",
        _ => "unknown",
    }
}

/// Drops `null` members from every object in `v`, however deep: CloudAPI leaves unset
/// fields out. (Tag and metadata values are never null, so nothing a tenant set is lost.)
pub fn omit_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, omit_nulls(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(omit_nulls).collect()),
        other => other,
    }
}

/// The machine object the CLI reads.
pub fn machine(vm: &Vm, credentials: bool) -> Value {
    let nics = vm.nics.clone().unwrap_or_default();
    let ips: Vec<&str> = nics.iter().filter_map(|n| n.ip.as_deref()).collect();
    let primary_ip = nics.iter().find(|n| n.primary).and_then(|n| n.ip.clone()).or_else(|| ips.first().map(|s| s.to_string()));
    let mut networks: Vec<Uuid> = Vec::new();
    for n in nics.iter().filter_map(|n| n.network_uuid) {
        if !networks.contains(&n) {
            networks.push(n);
        }
    }
    let mut metadata = vm.customer_metadata.clone().unwrap_or_default();
    if !credentials {
        metadata.remove("credentials");
    }
    let brand = vm.brand.clone().unwrap_or_default();
    json!({
        "id": vm.uuid,
        "name": vm.alias.clone().unwrap_or_default(),
        "type": if brand == "bhyve" || brand == "kvm" { "virtualmachine" } else { "smartmachine" },
        "brand": brand,
        "state": machine_state(vm.state.as_deref().unwrap_or("")),
        "image": vm.image_uuid,
        "ips": ips,
        "memory": vm.ram.unwrap_or(0),
        "disk": vm.quota.unwrap_or(0) * 1024,
        "metadata": metadata,
        "tags": vm.tags.clone().unwrap_or_default(),
        "created": vm.create_timestamp,
        "updated": vm.last_modified.clone().or_else(|| vm.create_timestamp.clone()),
        "docker": false,
        "networks": networks,
        "nics": nics.iter().map(|n| json!({
            "mac": n.mac, "ip": n.ip, "primary": n.primary, "gateway": n.gateway, "netmask": n.netmask,
            "state": "running", "network": n.network_uuid,
        })).collect::<Vec<_>>(),
        "primaryIp": primary_ip,
        "firewall_enabled": vm.firewall_enabled.unwrap_or(false),
        "deletion_protection": vm.deletion_protection.unwrap_or(false),
        "compute_node": vm.server_uuid,
        "package": vm.package_name.clone().unwrap_or_default(),
    })
}

/// [`machine`]'s object after [`omit_nulls`], serialized straight from the record (no
/// `Value` tree, no copies): what ListMachines streams for each machine.
pub struct MachineView<'a> {
    pub vm: &'a Vm,
    pub credentials: bool,
}

impl Serialize for MachineView<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let vm = self.vm;
        let nics = vm.nics.as_deref().unwrap_or_default();
        let brand = vm.brand.as_deref().unwrap_or_default();
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("id", &vm.uuid)?;
        m.serialize_entry("name", vm.alias.as_deref().unwrap_or_default())?;
        m.serialize_entry("type", if brand == "bhyve" || brand == "kvm" { "virtualmachine" } else { "smartmachine" })?;
        m.serialize_entry("brand", brand)?;
        m.serialize_entry("state", machine_state(vm.state.as_deref().unwrap_or("")))?;
        if let Some(image) = &vm.image_uuid {
            m.serialize_entry("image", image)?;
        }
        m.serialize_entry("ips", &Each(|| nics.iter().filter_map(|n| n.ip.as_deref())))?;
        m.serialize_entry("memory", &vm.ram.unwrap_or(0))?;
        m.serialize_entry("disk", &(vm.quota.unwrap_or(0) * 1024))?;
        m.serialize_entry("metadata", &Metadata { map: vm.customer_metadata.as_ref(), credentials: self.credentials })?;
        m.serialize_entry("tags", &Metadata { map: vm.tags.as_ref(), credentials: true })?;
        if let Some(created) = &vm.create_timestamp {
            m.serialize_entry("created", created)?;
        }
        if let Some(updated) = vm.last_modified.as_ref().or(vm.create_timestamp.as_ref()) {
            m.serialize_entry("updated", updated)?;
        }
        m.serialize_entry("docker", &false)?;
        let mut networks: Vec<Uuid> = Vec::new();
        for n in nics.iter().filter_map(|n| n.network_uuid) {
            if !networks.contains(&n) {
                networks.push(n);
            }
        }
        m.serialize_entry("networks", &networks)?;
        m.serialize_entry("nics", &Each(|| nics.iter().map(MachineNic)))?;
        let primary_ip =
            nics.iter().find(|n| n.primary).and_then(|n| n.ip.as_deref()).or_else(|| nics.iter().find_map(|n| n.ip.as_deref()));
        if let Some(ip) = primary_ip {
            m.serialize_entry("primaryIp", ip)?;
        }
        m.serialize_entry("firewall_enabled", &vm.firewall_enabled.unwrap_or(false))?;
        m.serialize_entry("deletion_protection", &vm.deletion_protection.unwrap_or(false))?;
        if let Some(cn) = &vm.server_uuid {
            m.serialize_entry("compute_node", cn)?;
        }
        m.serialize_entry("package", vm.package_name.as_deref().unwrap_or_default())?;
        m.end()
    }
}

/// A VM row as ListMachines lists it: its [`MachineView`] bytes (cached), or left out
/// (logged) when the record is damaged, as `App::list` does.
pub fn machine_row(row: nereid_store::RawObject, credentials: bool) -> Made {
    match decode_or_log::<Vm>(VMS.name, row) {
        Some(vm) => Made::Keep(Cached::one(to_bytes(&MachineView { vm: &vm, credentials }))),
        None => Made::Skip,
    }
}

/// An image row as CloudAPI's ListImages lists it: [`image`]'s object without nulls, for
/// the owner and (without the ACL, see [`image_for`]) for everyone else; a damaged record
/// is left out (logged), as `App::list` does.
pub fn image_row(row: nereid_store::RawObject) -> Made {
    let Some(img) = decode_or_log::<Image>(IMAGES.name, row) else { return Made::Skip };
    let full = image(&img);
    let others = without_acl(full.clone());
    Made::Keep(Cached::ByOwner {
        owner: img.owner,
        owner_view: to_bytes(&omit_nulls(full)).into(),
        others: to_bytes(&omit_nulls(others)).into(),
    })
}

/// A sequence serialized from an iterator made on demand.
struct Each<F>(F);

impl<F, I> Serialize for Each<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(None)?;
        for item in (self.0)() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

/// A machine's NIC as CloudAPI shows it.
struct MachineNic<'a>(&'a nereid_types::agent::NicDef);

impl Serialize for MachineNic<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("mac", &n.mac)?;
        if let Some(ip) = &n.ip {
            m.serialize_entry("ip", ip)?;
        }
        m.serialize_entry("primary", &n.primary)?;
        if let Some(gw) = &n.gateway {
            m.serialize_entry("gateway", gw)?;
        }
        if let Some(mask) = &n.netmask {
            m.serialize_entry("netmask", mask)?;
        }
        m.serialize_entry("state", "running")?;
        if let Some(net) = &n.network_uuid {
            m.serialize_entry("network", net)?;
        }
        m.end()
    }
}

/// Metadata or tags without null members (at any depth), `credentials` left out unless asked.
struct Metadata<'a> {
    map: Option<&'a Map<String, Value>>,
    credentials: bool,
}

impl Serialize for Metadata<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(None)?;
        let Some(map) = self.map else { return m.end() };
        let entries: Vec<(&String, &Value)> = map.iter().collect();
        // [`machine`] takes `credentials` out with `Map::remove`, which (order preserved)
        // moves the last member into its place: the same order here.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        if !self.credentials
            && let Some(i) = entries.iter().position(|(k, _)| *k == "credentials")
        {
            order.swap_remove(i);
        }
        for (k, v) in order.into_iter().map(|i| entries[i]) {
            if !v.is_null() {
                m.serialize_entry(k, &NoNulls(v))?;
            }
        }
        m.end()
    }
}

/// A value as [`omit_nulls`] leaves it, serialized without copying it.
struct NoNulls<'a>(&'a Value);

impl Serialize for NoNulls<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(o) => {
                let mut m = ser.serialize_map(None)?;
                for (k, v) in o.iter().filter(|(_, v)| !v.is_null()) {
                    m.serialize_entry(k, &NoNulls(v))?;
                }
                m.end()
            }
            Value::Array(a) => {
                let mut seq = ser.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&NoNulls(v))?;
                }
                seq.end()
            }
            other => other.serialize(ser),
        }
    }
}

/// An image as CloudAPI lists it (`id`, files reduced to `{compression, sha1, size}`).
pub fn image(img: &Image) -> Value {
    let mut v = img.render(false);
    let Some(o) = v.as_object_mut() else { return v };
    let mut out = Map::new();
    out.insert("id".into(), json!(img.uuid));
    for (k, val) in o.iter_mut() {
        match k.as_str() {
            "uuid" | "v" | "disabled" | "billing_tags" | "traits" | "channels" | "stor" => {}
            "files" => {
                let files: Vec<Value> =
                    img.files.iter().map(|f| json!({"compression": f.compression, "sha1": f.sha1, "size": f.size})).collect();
                out.insert("files".into(), Value::Array(files));
            }
            _ => {
                out.insert(k.clone(), val.take());
            }
        }
    }
    out.entry("tags").or_insert_with(|| json!({}));
    // sdc-cloudapi also names the RAM bounds `min_memory`/`max_memory`.
    if let Some(Value::Object(req)) = out.get_mut("requirements") {
        for (ram, memory) in [("min_ram", "min_memory"), ("max_ram", "max_memory")] {
            if let Some(v) = req.get(ram).cloned() {
                req.insert(memory.into(), v);
            }
        }
    }
    Value::Object(out)
}

/// An image as `viewer` sees it through CloudAPI: [`image`], without the ACL unless the
/// viewer owns the image (an account an image is shared with does not learn who else it
/// is shared with).
pub fn image_for(img: &Image, viewer: Uuid) -> Value {
    let v = image(img);
    if img.owner != viewer { without_acl(v) } else { v }
}

/// [`image`]'s object as an account other than the owner sees it.
fn without_acl(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("acl");
    }
    v
}

/// A package as CloudAPI lists it (MiB throughout; `vcpus` 0 when unset).
pub fn package(p: &Package) -> Value {
    let mut v = json!({
        "id": p.uuid,
        "name": p.name,
        "memory": p.max_physical_memory,
        "disk": p.quota,
        "swap": p.max_swap,
        "lwps": p.max_lwps,
        "vcpus": p.vcpus.unwrap_or(0),
        "version": p.version,
        "default": p.default.unwrap_or(false),
    });
    // sdc-cloudapi sends these only when they are set.
    for (k, val) in [("group", &p.group), ("description", &p.description)] {
        if let Some(val) = val.as_deref().filter(|s| !s.is_empty()) {
            v[k] = json!(val);
        }
    }
    if let Some(b) = &p.brand {
        v["brand"] = json!(b);
    }
    if p.flexible_disk == Some(true) {
        v["flexible_disk"] = json!(true);
        if let Some(d) = &p.disks {
            v["disks"] = json!(d);
        }
    }
    v
}

/// A network as CloudAPI lists it; `public` = usable by every account.
pub fn network(n: &Network) -> Value {
    let mut v = json!({
        "id": n.uuid,
        "name": n.name,
        "public": n.owner_uuids.is_none(),
        "fabric": n.fabric,
        "subnet": n.subnet,
        "provision_start_ip": n.provision_start_ip,
        "provision_end_ip": n.provision_end_ip,
        "resolvers": n.resolvers,
        "routes": n.routes.clone().unwrap_or_default(),
        "internet_nat": n.internet_nat,
    });
    if let Some(g) = &n.gateway {
        v["gateway"] = json!(g);
    }
    if let Some(d) = n.description.as_deref().filter(|d| !d.is_empty()) {
        v["description"] = json!(d);
    }
    if n.fabric {
        v["vlan_id"] = json!(n.vlan_id);
    }
    v
}

/// A network pool as CloudAPI lists it (a network the CLI can name in `-N`).
pub fn network_pool(p: &NetworkPool) -> Value {
    let mut v = json!({"id": p.uuid, "name": p.name, "public": p.owner_uuids.is_none(), "fabric": false});
    if let Some(d) = p.description.as_deref().filter(|d| !d.is_empty()) {
        v["description"] = json!(d);
    }
    v
}

/// CreateMachine's metadata and tags: the flattened `metadata.<k>` / `tag.<k>` keys the
/// CLI sends, plus nested `metadata{}` / `tags{}` objects (which upstream ignores; other
/// clients send them). Metadata values become strings, as in Triton; tag values keep
/// their JSON type (string, number, boolean).
/// A bad input field and what is wrong with it.
pub type FieldProblem = (String, String);
/// Customer metadata and tags.
pub type MetadataAndTags = (Map<String, Value>, Map<String, Value>);

pub fn metadata_and_tags(body: &Map<String, Value>) -> Result<MetadataAndTags, FieldProblem> {
    let mut md = Map::new();
    let mut tags = Map::new();
    let scalar = |field: &str, v: &Value| -> Result<Value, FieldProblem> {
        match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(v.clone()),
            _ => Err((field.to_string(), "must be a string, number or boolean".into())),
        }
    };
    let as_md = |v: Value| match v {
        Value::String(s) => Value::String(s),
        other => Value::String(other.to_string()),
    };
    for (k, v) in body {
        if let Some(key) = k.strip_prefix("metadata.") {
            md.insert(key.to_string(), as_md(scalar(k, v)?));
        } else if let Some(key) = k.strip_prefix("tag.") {
            tags.insert(key.to_string(), scalar(k, v)?);
        }
    }
    for (field, target, is_md) in [("metadata", &mut md, true), ("tags", &mut tags, false)] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let v = scalar(&format!("{field}.{k}"), v)?;
                    target.entry(k.clone()).or_insert(if is_md { as_md(v) } else { v });
                }
            }
            Some(_) => return Err((field.to_string(), "must be an object".into())),
        }
    }
    for k in md.keys().chain(tags.keys()) {
        if k.is_empty() || k.len() > 128 {
            return Err((k.clone(), "keys must be 1 to 128 characters".into()));
        }
    }
    Ok((md, tags))
}

/// CreateMachine's `networks`: UUID strings (before CloudAPI 7.3) or objects
/// `{ipv4_uuid, ipv4_ips?, ipv4_count?, primary?}`, mixed if need be (upstream's check
/// against mixing is broken, so clients mix); repeated UUIDs are dropped. Returns VMAPI's
/// form.
pub fn networks(v: &Value) -> Result<Vec<Value>, String> {
    let Value::Array(items) = v else {
        return Err("must be an array of network UUIDs or {ipv4_uuid, ipv4_ips, primary} objects".into());
    };
    let mut out: Vec<Value> = Vec::new();
    let mut seen: Vec<Uuid> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (id, obj) = match item {
            Value::String(s) => (s.as_str(), None),
            Value::Object(o) => (o.get("ipv4_uuid").and_then(Value::as_str).unwrap_or(""), Some(o)),
            _ => return Err(format!("[{i}] must be a network UUID or an object")),
        };
        let uuid = Uuid::parse_str(id).map_err(|_| format!("[{i}] {id:?} is not a network UUID"))?;
        if seen.contains(&uuid) {
            continue;
        }
        seen.push(uuid);
        let mut n = json!({"uuid": uuid});
        if let Some(o) = obj {
            if let Some(ips) = o.get("ipv4_ips") {
                match ips.as_array().map(Vec::as_slice) {
                    Some([Value::String(ip)]) => n["ip"] = json!(ip),
                    Some([]) | None if ips.is_null() => {}
                    _ => return Err(format!("[{i}].ipv4_ips must hold exactly one IPv4 address")),
                }
            }
            if let Some(c) = o.get("ipv4_count")
                && c.as_u64() != Some(1)
            {
                return Err(format!("[{i}].ipv4_count: only 1 address per NIC is supported"));
            }
            if let Some(p) = o.get("primary") {
                n["primary"] = json!(p.as_bool().ok_or(format!("[{i}].primary must be a boolean"))?);
            }
        }
        out.push(n);
    }
    Ok(out)
}

/// One CloudAPI affinity rule, e.g. `instance!=web*` or `role==~db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityRule {
    /// `instance` (also `container`) or a tag name.
    pub key: String,
    /// `==` (near) or `!=` (far).
    pub near: bool,
    /// `~`: a soft rule (best effort).
    pub soft: bool,
    /// A name, UUID, glob (`*`) or `/regex/` (regexes are refused).
    pub value: String,
}

/// Parses CloudAPI's `affinity` rules.
pub fn affinity_rules(v: &Value) -> Result<Vec<AffinityRule>, String> {
    let Value::Array(items) = v else { return Err("must be an array of rules like \"instance!=web*\"".into()) };
    let mut out = Vec::new();
    for item in items {
        let s = item.as_str().ok_or("every rule must be a string like \"instance!=web*\"")?;
        let (key, near, rest) = match (s.find("=="), s.find("!=")) {
            (Some(i), None) => (&s[..i], true, &s[i + 2..]),
            (None, Some(i)) => (&s[..i], false, &s[i + 2..]),
            _ => return Err(format!("{s:?} is not a rule: use KEY==VALUE or KEY!=VALUE (~ after the operator makes it soft)")),
        };
        let (soft, value) = match rest.strip_prefix('~') {
            Some(v) => (true, v),
            None => (false, rest),
        };
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() || value.is_empty() {
            return Err(format!("{s:?}: the key and the value must not be empty"));
        }
        if value.starts_with('/') {
            return Err(format!("{s:?}: regular expressions are not supported; use a name, a UUID or a * glob"));
        }
        let key = if key == "container" { "instance" } else { key };
        out.push(AffinityRule { key: key.to_string(), near, soft, value: value.to_string() });
    }
    Ok(out)
}

/// Whether `text` matches a `*` glob.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(at) => rest = &rest[at + p.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Whether a machine is matched by a rule's value.
pub fn rule_matches(rule: &AffinityRule, vm: &Vm) -> bool {
    if rule.key == "instance" {
        vm.uuid.to_string() == rule.value || vm.alias.as_deref().is_some_and(|a| glob(&rule.value, a))
    } else {
        vm.tags.as_ref().and_then(|t| t.get(&rule.key)).is_some_and(|v| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            glob(&rule.value, &text)
        })
    }
}

/// VMAPI's `locality` for affinity rules, given the account's live machines: matched
/// machines go to `near`/`far`; any hard rule makes it strict. A hard `==` rule that
/// matches nothing cannot be satisfied (an error, as in Triton).
pub fn locality(rules: &[AffinityRule], vms: &[Vm]) -> Result<Option<Value>, String> {
    if rules.is_empty() {
        return Ok(None);
    }
    let (mut near, mut far) = (Vec::new(), Vec::new());
    for r in rules {
        let matched: Vec<Uuid> = vms.iter().filter(|v| rule_matches(r, v)).map(|v| v.uuid).collect();
        if matched.is_empty() && r.near && !r.soft {
            return Err(format!("no instance matches the affinity rule {}=={}", r.key, r.value));
        }
        if r.near { near.extend(matched) } else { far.extend(matched) }
    }
    let strict = rules.iter().any(|r| !r.soft);
    Ok(Some(json!({"strict": strict, "near": near, "far": far})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn states() {
        assert_eq!(machine_state("provisioning"), "provisioning");
        assert_eq!(machine_state("destroyed"), "deleted");
        assert_eq!(machine_state("stopped"), "stopped");
        assert_eq!(machine_state("halting"), "stopping");
        assert_eq!(machine_state("what"), "unknown");
    }

    #[test]
    fn flattened_metadata_and_tags() {
        let body = obj(json!({"name": "x", "metadata.foo": "bar", "metadata.n": 5, "tag.role": "web", "tag.on": true,
                              "metadata": {"foo": "ignored", "other": "kept"}, "tags": {"t": 1}}));
        let (md, tags) = metadata_and_tags(&body).unwrap();
        assert_eq!(Value::Object(md), json!({"foo": "bar", "n": "5", "other": "kept"}));
        assert_eq!(Value::Object(tags), json!({"role": "web", "on": true, "t": 1}));
        let e = metadata_and_tags(&obj(json!({"tag.x": [1]}))).unwrap_err();
        assert_eq!(e.0, "tag.x");
    }

    #[test]
    fn networks_in_both_forms() {
        let a = "2b8b0a4e-7d26-4b1c-8f5e-0a1b2c3d4e5f";
        let b = "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60";
        let out = networks(&json!([a, {"ipv4_uuid": b, "ipv4_ips": ["10.0.0.5"], "primary": true}, a])).unwrap();
        assert_eq!(out, vec![json!({"uuid": a}), json!({"uuid": b, "ip": "10.0.0.5", "primary": true})]);
        assert!(networks(&json!(["nope"])).unwrap_err().contains("not a network UUID"));
        assert!(networks(&json!([{"ipv4_uuid": a, "ipv4_count": 2}])).is_err());
    }

    #[test]
    fn affinity() {
        let rules = affinity_rules(&json!(["instance!=web*", "role==~db", "container==3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60"])).unwrap();
        assert_eq!(rules[0], AffinityRule { key: "instance".into(), near: false, soft: false, value: "web*".into() });
        assert_eq!((rules[1].key.as_str(), rules[1].near, rules[1].soft), ("role", true, true));
        assert_eq!(rules[2].key, "instance");
        assert!(affinity_rules(&json!(["instance<>x"])).is_err());
        assert!(affinity_rules(&json!(["instance==/re/"])).is_err());
        assert!(glob("web*", "web-1") && glob("*-1", "web-1") && glob("w*b*1", "web-1") && !glob("db*", "web-1"));
        let mut vm: Vm = serde_json::from_value(json!({"uuid": "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60", "alias": "web-1",
            "tags": {"role": "db"}}))
        .unwrap();
        let loc = locality(&rules[..2], std::slice::from_ref(&vm)).unwrap().unwrap();
        assert_eq!(loc, json!({"strict": true, "near": [vm.uuid], "far": [vm.uuid]}));
        vm.alias = Some("db-1".into());
        assert!(locality(&affinity_rules(&json!(["instance==web*"])).unwrap(), &[vm]).unwrap_err().contains("no instance"));
    }

    #[test]
    fn machine_object() {
        let vm: Vm = serde_json::from_value(json!({
            "uuid": "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60", "alias": "web-1", "brand": "bhyve", "state": "running",
            "ram": 1024, "quota": 10, "package_name": "g1.small", "customer_metadata": {"credentials": "secret", "a": "b"},
            "nics": [{"mac": "90:b8:d0:00:00:01", "interface": "net0", "ip": "10.0.0.5", "netmask": "255.255.255.0",
                      "gateway": "10.0.0.1", "vlan_id": 0, "nic_tag": "external", "mtu": 1500, "primary": true, "model": "virtio",
                      "network_uuid": "2b8b0a4e-7d26-4b1c-8f5e-0a1b2c3d4e5f"}],
        }))
        .unwrap();
        let m = machine(&vm, false);
        assert_eq!(m["primaryIp"], "10.0.0.5");
        assert_eq!(m["memory"], 1024);
        assert_eq!(m["disk"], 10240);
        assert_eq!(m["package"], "g1.small");
        assert_eq!(m["type"], "virtualmachine");
        assert_eq!(m["docker"], false);
        assert_eq!(m["networks"], json!(["2b8b0a4e-7d26-4b1c-8f5e-0a1b2c3d4e5f"]));
        assert_eq!(m["metadata"], json!({"a": "b"}), "credentials only when asked");
        assert_eq!(machine(&vm, true)["metadata"]["credentials"], "secret");
    }

    /// ListMachines streams [`MachineView`]; GetMachine answers [`machine`] without its
    /// nulls: the two must stay equal, member order included.
    #[test]
    fn machine_view_is_the_machine_object_without_nulls() {
        let full: Vm = serde_json::from_value(json!({
            "uuid": "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60", "alias": "web-1", "brand": "bhyve", "state": "stopped",
            "image_uuid": "4c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60", "server_uuid": "5c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60",
            "ram": 1024, "quota": 10, "package_name": "g1.small", "firewall_enabled": true, "deletion_protection": true,
            "create_timestamp": "2026-01-01T00:00:00.000Z", "last_modified": "2026-01-02T00:00:00.000Z",
            "customer_metadata": {"credentials": {"root": "x"}, "a": "b", "n": null, "deep": {"x": null, "y": [1, null, {"z": null}]}},
            "tags": {"role": "web", "tier": 1, "none": null},
            "nics": [
                {"mac": "90:b8:d0:00:00:01", "interface": "net0", "ip": "10.0.0.5", "netmask": "255.255.255.0",
                 "gateway": "10.0.0.1", "vlan_id": 0, "nic_tag": "external", "mtu": 1500, "primary": false, "model": "virtio",
                 "network_uuid": "2b8b0a4e-7d26-4b1c-8f5e-0a1b2c3d4e5f"},
                {"mac": "90:b8:d0:00:00:02", "interface": "net1", "vlan_id": 0, "nic_tag": "internal", "mtu": 1500,
                 "primary": true, "model": "virtio"},
                {"mac": "90:b8:d0:00:00:03", "interface": "net2", "ip": "10.0.0.6", "vlan_id": 0, "nic_tag": "external",
                 "mtu": 1500, "primary": false, "model": "virtio", "network_uuid": "2b8b0a4e-7d26-4b1c-8f5e-0a1b2c3d4e5f"}],
        }))
        .unwrap();
        let bare: Vm = serde_json::from_value(json!({"uuid": "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f61"})).unwrap();
        let made: Vm = serde_json::from_value(json!({"uuid": "3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f62", "brand": "kvm",
            "create_timestamp": "2026-01-01T00:00:00.000Z", "nics": [], "customer_metadata": {}, "tags": {}}))
        .unwrap();
        for vm in [&full, &bare, &made] {
            for credentials in [false, true] {
                let want = serde_json::to_string(&omit_nulls(machine(vm, credentials))).unwrap();
                let got = serde_json::to_string(&MachineView { vm, credentials }).unwrap();
                assert_eq!(got, want);
            }
        }
    }
}
