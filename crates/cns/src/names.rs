//! Triton CNS's naming rules (`triton-cns:lib/vm-to-zones.js`, compat §5.1–5.2), pure.
//!
//! For every listed instance and each of its NICs, in the public zone (public NICs) or the
//! private zone (the others):
//!
//! * instance names `<uuid>.inst.<owner uuid>` and, with `use_alias` and an alias that
//!   dnsifies to fewer than 63 characters, `<alias>.inst.<owner uuid>`; with `use_login` the
//!   same with `<login>` in place of the owner uuid. Each carries the NIC's A/AAAA and a TXT
//!   with the VM uuid;
//! * service names from the tag `triton.cns.services` (`svc[:port][:key=value…][,svc…]`):
//!   `<svc>.svc.<owner uuid|login>` with A/AAAA, TXT (VM uuid) and, for a port, an SRV at the
//!   service name itself targeting the instance's primary name; admin-owned VMs also get
//!   `<svc>` directly under the zone;
//! * on a network the owner owns (a fabric), `<network name>.` before each of these names.
//!
//! Inclusion, in priority order: an account without `cns_enabled` publishes nothing
//! (`user_en_flag`); the tag `triton.cns.disable` (anything but `false`) hides the VM
//! (`inst_en_tag`); a down server (`cn_down`), a stopped VM (`vm_down`) or
//! `triton.cns.status=down` in metadata or tags (`inst_en_flag`) only take the VM out of its
//! services. A malformed services tag gives no services (`invalid_tag`).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use serde_json::Value;

use crate::model::{Account, Config, Data, Instance, Record, Zones};

/// The tag listing an instance's services.
pub const SERVICES_TAG: &str = "triton.cns.services";
/// The tag hiding an instance from CNS.
pub const DISABLE_TAG: &str = "triton.cns.disable";
/// The metadata key (or tag) whose value `down` takes an instance out of its services.
pub const STATUS_KEY: &str = "triton.cns.status";

/// SRV priority and weight when the tag gives none (Triton's defaults).
const DEFAULT_PRIORITY: u16 = 0;
const DEFAULT_WEIGHT: u16 = 10;

/// Lowercases and turns every run of characters outside `[a-z0-9-]` into one `-`.
pub fn dnsify(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_run = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    out
}

/// One entry of the services tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub port: Option<u16>,
    pub priority: u16,
    pub weight: u16,
}

/// Why a services tag was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {SERVICES_TAG} tag: {0}")]
pub struct InvalidTag(pub String);

/// Parses `svc[:port][:key=value…][,svc…]`: labels `[a-z][a-z0-9-]*` of at most 63
/// characters, keys `port`, `priority`, `weight`. Any bad entry rejects the whole tag.
pub fn parse_services(tag: &str) -> Result<Vec<Service>, InvalidTag> {
    let bad = |why: String| Err(InvalidTag(why));
    let mut services = Vec::new();
    for entry in tag.split(',') {
        let mut parts = entry.trim().split(':');
        let name = parts.next().unwrap_or_default();
        if !valid_label(name) {
            return bad(format!("bad service name {name:?}"));
        }
        let mut svc = Service { name: name.to_string(), port: None, priority: DEFAULT_PRIORITY, weight: DEFAULT_WEIGHT };
        for (i, part) in parts.enumerate() {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k, v),
                None if i == 0 => ("port", part),
                None => return bad(format!("{part:?} is not key=value")),
            };
            let Ok(n) = value.parse::<u16>() else {
                return bad(format!("{key} {value:?} is not a number from 0 to 65535"));
            };
            match key {
                "port" if n > 0 => svc.port = Some(n),
                "priority" => svc.priority = n,
                "weight" => svc.weight = n,
                _ => return bad(format!("bad key or value {part:?}")),
            }
        }
        services.push(svc);
    }
    Ok(services)
}

fn valid_label(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether and how an instance is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listing {
    /// Nothing is published; the reason is Triton's debug reason.
    Hidden(&'static str),
    /// Instance names are published; `services` is false when the VM is out of its services.
    Listed { services: bool, reasons: Vec<&'static str> },
}

/// Applies the inclusion rules (compat §5.2) to an instance of `account`.
pub fn listing(account: &Account, inst: &Instance) -> Listing {
    if !account.cns_enabled {
        return Listing::Hidden("user_en_flag");
    }
    if inst.tags.get(DISABLE_TAG).is_some_and(|v| *v != Value::Bool(false) && v.as_str() != Some("false")) {
        return Listing::Hidden("inst_en_tag");
    }
    let mut reasons = Vec::new();
    if !inst.server_up {
        reasons.push("cn_down");
    }
    if !inst.running {
        reasons.push("vm_down");
    }
    let down = |m: &serde_json::Map<String, Value>| m.get(STATUS_KEY).and_then(Value::as_str) == Some("down");
    if down(&inst.customer_metadata) || down(&inst.tags) {
        reasons.push("inst_en_flag");
    }
    let services = reasons.is_empty();
    if services_of(inst).is_err() {
        reasons.push("invalid_tag");
    }
    Listing::Listed { services, reasons }
}

/// The instance's services tag, parsed (no tag: no services; a non-string tag is invalid).
pub fn services_of(inst: &Instance) -> Result<Vec<Service>, InvalidTag> {
    match inst.tags.get(SERVICES_TAG) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => parse_services(s),
        Some(other) => Err(InvalidTag(format!("not a string: {other}"))),
    }
}

/// The owner labels of names: the owner uuid, then the login with `use_login`.
fn owner_labels(cfg: &Config, account: &Account) -> Vec<String> {
    let mut v = vec![account.uuid.to_string()];
    let login = dnsify(&account.login);
    if cfg.use_login && !login.is_empty() {
        v.push(login);
    }
    v
}

/// The host labels of instance names: the uuid, then the alias with `use_alias`.
fn host_labels(cfg: &Config, inst: &Instance) -> Vec<String> {
    let mut v = vec![inst.uuid.to_string()];
    if let Some(alias) = inst.alias.as_deref().map(dnsify)
        && cfg.use_alias
        && !alias.is_empty()
        && alias.len() < 63
    {
        v.push(alias);
    }
    v
}

/// Builds every zone from the accounts and instances (instances of unknown owners are
/// skipped). Both configured zones are always present, empty or not.
pub fn build(cfg: &Config, accounts: &[Account], instances: &[Instance]) -> Zones {
    let mut zones: Zones = cfg.zones().iter().map(|z| (z.to_string(), BTreeSet::new())).collect();
    let owners: HashMap<_, _> = accounts.iter().map(|a| (a.uuid, a)).collect();
    for inst in instances {
        if let Some(account) = owners.get(&inst.owner_uuid) {
            add_instance(cfg, account, inst, &mut zones);
        }
    }
    zones
}

fn add_instance(cfg: &Config, account: &Account, inst: &Instance, zones: &mut Zones) {
    let Listing::Listed { services, .. } = listing(account, inst) else {
        return;
    };
    let services = if services { services_of(inst).unwrap_or_default() } else { Vec::new() };
    let owners = owner_labels(cfg, account);
    let hosts = host_labels(cfg, inst);
    let admin = inst.owner_uuid == cfg.admin_uuid;
    let uuid = inst.uuid.to_string();
    for nic in &inst.nics {
        let zone = if nic.public { &cfg.public_zone } else { &cfg.private_zone };
        let records = zones.entry(zone.clone()).or_default();
        let address = match nic.ip {
            IpAddr::V4(a) => Data::A(a),
            IpAddr::V6(a) => Data::Aaaa(a),
        };
        let network = Some(dnsify(&nic.network_name)).filter(|n| nic.owner_network && !n.is_empty() && n.len() <= 63);
        // Every name comes with its network-name variant on the owner's networks.
        let variants = |base: String| {
            let with_net = network.as_ref().map(|n| format!("{n}.{base}"));
            std::iter::once(base).chain(with_net)
        };
        let mut add = |name: String, data: Data| {
            records.insert(Record { name, ttl: cfg.ttl, data });
        };
        // The last labels are the preferred ones (alias, login).
        let primary = format!("{}.inst.{}.{zone}", hosts.last().unwrap_or(&uuid), owners.last().unwrap_or(&uuid));
        for owner in &owners {
            for host in &hosts {
                for name in variants(format!("{host}.inst.{owner}.{zone}")) {
                    add(name.clone(), address.clone());
                    add(name, Data::Txt(uuid.clone()));
                }
            }
        }
        for svc in &services {
            let mut bases: Vec<String> = owners.iter().map(|o| format!("{}.svc.{o}.{zone}", svc.name)).collect();
            if admin {
                bases.push(format!("{}.{zone}", svc.name));
            }
            for name in bases.into_iter().flat_map(variants) {
                add(name.clone(), address.clone());
                add(name.clone(), Data::Txt(uuid.clone()));
                if let Some(port) = svc.port {
                    add(name, Data::Srv { priority: svc.priority, weight: svc.weight, port, target: primary.clone() });
                }
            }
        }
    }
}

/// The names an instance has right now (CloudAPI GetMachine's `dns_names`), sorted.
pub fn dns_names(cfg: &Config, account: &Account, inst: &Instance) -> Vec<String> {
    let zones = build(cfg, std::slice::from_ref(account), std::slice::from_ref(inst));
    let names: BTreeSet<String> = zones.into_values().flatten().map(|r| r.name).collect();
    names.into_iter().collect()
}

/// The resolver search suffixes of an instance with these NICs (Triton's
/// `POST /suffixes-for-vm`, CloudAPI networks' `suffixes[]`): `svc.<owner>.<zone>` and
/// `inst.<owner>.<zone>` for each zone the NICs publish in (and the login forms with
/// `use_login`), in NIC order without repeats.
pub fn suffixes(cfg: &Config, account: &Account, nics: &[crate::model::Nic]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for nic in nics {
        let zone = if nic.public { &cfg.public_zone } else { &cfg.private_zone };
        for owner in owner_labels(cfg, account) {
            for kind in ["svc", "inst"] {
                let s = format!("{kind}.{owner}.{zone}");
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Nic;
    use serde_json::json;
    use uuid::Uuid;

    const OWNER: &str = "11111111-1111-1111-1111-111111111111";
    const VM: &str = "22222222-2222-2222-2222-222222222222";
    const ADMIN: &str = "99999999-9999-9999-9999-999999999999";

    fn cfg() -> Config {
        Config::new("DC1", "example.com", Uuid::parse_str(ADMIN).unwrap())
    }
    fn account() -> Account {
        Account { uuid: Uuid::parse_str(OWNER).unwrap(), login: "Jo.Smith".into(), cns_enabled: true }
    }
    fn nic(ip: &str, public: bool) -> Nic {
        Nic {
            ip: ip.parse().unwrap(),
            network_uuid: Uuid::nil(),
            network_name: if public { "external" } else { "My Fabric" }.into(),
            public,
            owner_network: false,
        }
    }
    fn vm() -> Instance {
        Instance {
            uuid: Uuid::parse_str(VM).unwrap(),
            alias: Some("Web_1".into()),
            owner_uuid: Uuid::parse_str(OWNER).unwrap(),
            running: true,
            server_up: true,
            tags: serde_json::Map::new(),
            customer_metadata: serde_json::Map::new(),
            nics: vec![nic("203.0.113.5", true), nic("10.0.0.5", false)],
        }
    }
    fn tag(mut i: Instance, k: &str, v: Value) -> Instance {
        i.tags.insert(k.into(), v);
        i
    }
    /// The records of `zone` at `name`.
    fn at(z: &Zones, zone: &str, name: &str) -> Vec<Data> {
        z[zone].iter().filter(|r| r.name == name).map(|r| r.data.clone()).collect()
    }
    const PUB: &str = "dc1.example.com";
    const PRIV: &str = "dc1.cns.example.com";

    #[test]
    fn dnsify_lowercases_and_collapses_runs() {
        assert_eq!(dnsify("Web_1"), "web-1");
        assert_eq!(dnsify("a  b__c"), "a-b-c");
        assert_eq!(dnsify("My.Fabric-Net"), "my-fabric-net");
        assert_eq!(dnsify("ok-123"), "ok-123");
        assert_eq!(dnsify("é!x"), "-x");
    }

    #[test]
    fn config_defaults_follow_triton() {
        let c = cfg();
        assert_eq!(c.zones(), [PUB, PRIV]);
        assert!(c.use_alias && !c.use_login);
        assert_eq!((c.ttl, c.ns_ttl), (30, 3600));
    }

    #[test]
    fn instance_names_by_uuid_and_alias_with_addresses_per_zone() {
        let z = build(&cfg(), &[account()], &[vm()]);
        let uuid_pub = format!("{VM}.inst.{OWNER}.{PUB}");
        let alias_pub = format!("web-1.inst.{OWNER}.{PUB}");
        let alias_priv = format!("web-1.inst.{OWNER}.{PRIV}");
        for name in [&uuid_pub, &alias_pub] {
            assert_eq!(at(&z, PUB, name), vec![Data::A("203.0.113.5".parse().unwrap()), Data::Txt(VM.into())]);
        }
        assert_eq!(at(&z, PRIV, &alias_priv), vec![Data::A("10.0.0.5".parse().unwrap()), Data::Txt(VM.into())]);
        // No login names by default, and nothing else.
        assert_eq!(z[PUB].len(), 4);
        assert_eq!(z[PRIV].len(), 4);
    }

    #[test]
    fn ipv6_gets_aaaa() {
        let mut i = vm();
        i.nics = vec![nic("2001:db8::5", true)];
        let z = build(&cfg(), &[account()], &[i]);
        assert!(at(&z, PUB, &format!("{VM}.inst.{OWNER}.{PUB}")).contains(&Data::Aaaa("2001:db8::5".parse().unwrap())));
    }

    #[test]
    fn alias_rules() {
        let mut c = cfg();
        let long = vm_with_alias(Some("x".repeat(63)));
        assert_eq!(dns_names(&c, &account(), &long).len(), 2, "63 chars: uuid only");
        let ok = vm_with_alias(Some("x".repeat(62)));
        assert_eq!(dns_names(&c, &account(), &ok).len(), 4);
        assert_eq!(dns_names(&c, &account(), &vm_with_alias(None)).len(), 2);
        c.use_alias = false;
        assert_eq!(dns_names(&c, &account(), &vm()).len(), 2);
    }

    fn vm_with_alias(alias: Option<String>) -> Instance {
        Instance { alias, ..vm() }
    }

    #[test]
    fn login_names_with_use_login() {
        let mut c = cfg();
        c.use_login = true;
        let names = dns_names(&c, &account(), &vm());
        for n in [
            format!("{VM}.inst.{OWNER}.{PUB}"),
            format!("web-1.inst.{OWNER}.{PUB}"),
            format!("{VM}.inst.jo-smith.{PUB}"),
            format!("web-1.inst.jo-smith.{PUB}"),
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        assert_eq!(names.len(), 8);
    }

    #[test]
    fn network_variant_only_on_owner_networks() {
        let mut i = tag(vm(), SERVICES_TAG, json!("db"));
        i.nics[1].owner_network = true;
        let names = dns_names(&cfg(), &account(), &i);
        assert!(names.contains(&format!("my-fabric.web-1.inst.{OWNER}.{PRIV}")));
        assert!(names.contains(&format!("my-fabric.{VM}.inst.{OWNER}.{PRIV}")));
        assert!(names.contains(&format!("my-fabric.db.svc.{OWNER}.{PRIV}")));
        assert!(!names.iter().any(|n| n.starts_with("external.")));
    }

    #[test]
    fn services_with_srv_at_the_service_name() {
        let i = tag(vm(), SERVICES_TAG, json!("web:8080:priority=5,metrics"));
        let z = build(&cfg(), &[account()], &[i]);
        let web = at(&z, PUB, &format!("web.svc.{OWNER}.{PUB}"));
        assert_eq!(
            web,
            vec![
                Data::A("203.0.113.5".parse().unwrap()),
                Data::Txt(VM.into()),
                Data::Srv { priority: 5, weight: 10, port: 8080, target: format!("web-1.inst.{OWNER}.{PUB}") },
            ]
        );
        // No port, no SRV; no `_web._tcp` names; not under the zone apex for non-admins.
        let metrics = at(&z, PRIV, &format!("metrics.svc.{OWNER}.{PRIV}"));
        assert_eq!(metrics.len(), 2);
        assert!(!z[PUB].iter().any(|r| r.name.starts_with('_')));
        assert!(at(&z, PUB, &format!("web.{PUB}")).is_empty());
    }

    #[test]
    fn admin_services_also_directly_under_the_zone() {
        let admin = Account { uuid: Uuid::parse_str(ADMIN).unwrap(), login: "admin".into(), cns_enabled: true };
        let mut i = tag(vm(), SERVICES_TAG, json!("imgapi:443"));
        i.owner_uuid = admin.uuid;
        let z = build(&cfg(), &[admin], &[i]);
        assert_eq!(at(&z, PUB, &format!("imgapi.{PUB}")).len(), 3);
        assert_eq!(at(&z, PUB, &format!("imgapi.svc.{ADMIN}.{PUB}")).len(), 3);
    }

    #[test]
    fn parse_services_forms() {
        let s = parse_services("a,b:80,c:port=81:weight=3:priority=2, d-1:9").unwrap();
        let ports: Vec<_> = s.iter().map(|s| s.port).collect();
        assert_eq!(ports, vec![None, Some(80), Some(81), Some(9)]);
        assert_eq!((s[2].priority, s[2].weight), (2, 3));
        assert_eq!((s[0].priority, s[0].weight), (0, 10));
    }

    #[test]
    fn parse_services_rejects_bad_tags() {
        for bad in [
            "",
            "Web",
            "1web",
            "web_x",
            "web:http",
            "web:70000",
            "web:0",
            "web:80:90",
            "web:ttl=5",
            "web:priority=x",
            "web,,db",
            "web.svc",
            &"x".repeat(64),
        ] {
            assert!(parse_services(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_services(&"x".repeat(63)).is_ok());
    }

    #[test]
    fn invalid_tag_gives_no_services_but_keeps_instance_names() {
        for v in [json!("web:nope"), json!(true), json!(["web"])] {
            let i = tag(vm(), SERVICES_TAG, v);
            assert_eq!(listing(&account(), &i), Listing::Listed { services: true, reasons: vec!["invalid_tag"] });
            let names = dns_names(&cfg(), &account(), &i);
            assert_eq!(names.len(), 4);
            assert!(!names.iter().any(|n| n.contains(".svc.")));
        }
    }

    #[test]
    fn account_flag_off_publishes_nothing() {
        let mut a = account();
        a.cns_enabled = false;
        let i = tag(vm(), SERVICES_TAG, json!("web"));
        assert_eq!(listing(&a, &i), Listing::Hidden("user_en_flag"));
        let z = build(&cfg(), &[a], &[i]);
        assert!(z[PUB].is_empty() && z[PRIV].is_empty());
    }

    #[test]
    fn unknown_owner_publishes_nothing() {
        let z = build(&cfg(), &[], &[vm()]);
        assert!(z[PUB].is_empty() && z[PRIV].is_empty());
    }

    #[test]
    fn disable_tag_hides_unless_false() {
        for v in [json!(true), json!("true"), json!("yes"), json!(1)] {
            let i = tag(vm(), DISABLE_TAG, v);
            assert_eq!(listing(&account(), &i), Listing::Hidden("inst_en_tag"));
            assert!(dns_names(&cfg(), &account(), &i).is_empty());
        }
        for v in [json!(false), json!("false")] {
            let i = tag(vm(), DISABLE_TAG, v);
            assert_eq!(dns_names(&cfg(), &account(), &i).len(), 4);
        }
    }

    #[test]
    fn down_instances_leave_services_only() {
        let up = tag(vm(), SERVICES_TAG, json!("web:80"));
        let cases: Vec<(Instance, &str)> = vec![
            (Instance { running: false, ..up.clone() }, "vm_down"),
            (Instance { server_up: false, ..up.clone() }, "cn_down"),
            (tag(up.clone(), STATUS_KEY, json!("down")), "inst_en_flag"),
            (
                {
                    let mut i = up.clone();
                    i.customer_metadata.insert(STATUS_KEY.into(), json!("down"));
                    i
                },
                "inst_en_flag",
            ),
        ];
        for (i, reason) in cases {
            assert_eq!(listing(&account(), &i), Listing::Listed { services: false, reasons: vec![reason] });
            let names = dns_names(&cfg(), &account(), &i);
            assert_eq!(names.len(), 4, "{reason}: instance names stay");
            assert!(!names.iter().any(|n| n.contains(".svc.")), "{reason}");
        }
        let i = tag(up, STATUS_KEY, json!("up"));
        assert!(dns_names(&cfg(), &account(), &i).iter().any(|n| n.contains(".svc.")));
    }

    #[test]
    fn build_is_deterministic_and_merges_instances_of_a_service() {
        let a = tag(vm(), SERVICES_TAG, json!("web:80"));
        let mut b = tag(vm(), SERVICES_TAG, json!("web:80"));
        b.uuid = Uuid::from_u128(7);
        b.alias = Some("web-2".into());
        b.nics = vec![nic("203.0.113.6", true)];
        let z1 = build(&cfg(), &[account()], &[a.clone(), b.clone()]);
        let z2 = build(&cfg(), &[account()], &[b, a]);
        assert_eq!(z1, z2);
        let web = at(&z1, PUB, &format!("web.svc.{OWNER}.{PUB}"));
        assert_eq!(web.iter().filter(|d| matches!(d, Data::A(_))).count(), 2);
        assert_eq!(web.iter().filter(|d| matches!(d, Data::Srv { .. })).count(), 2);
    }

    #[test]
    fn suffixes_per_zone_of_the_nics() {
        let a = account();
        assert_eq!(
            suffixes(&cfg(), &a, &vm().nics),
            vec![
                format!("svc.{OWNER}.{PUB}"),
                format!("inst.{OWNER}.{PUB}"),
                format!("svc.{OWNER}.{PRIV}"),
                format!("inst.{OWNER}.{PRIV}"),
            ]
        );
        let mut c = cfg();
        c.use_login = true;
        let private_only = [nic("10.0.0.9", false)];
        assert_eq!(
            suffixes(&c, &a, &private_only),
            vec![
                format!("svc.{OWNER}.{PRIV}"),
                format!("inst.{OWNER}.{PRIV}"),
                format!("svc.jo-smith.{PRIV}"),
                format!("inst.jo-smith.{PRIV}"),
            ]
        );
    }
}
