//! Unit tests of the rule language: every form parses, prints canonically, each invalid
//! rule gets Triton's message, and the compiler gives each VM what the rules say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::ast::{Action, IcmpType};
use super::*;
use crate::netpolicy::{Direction, FwEntry, PortRange, Protocol};

const VM1: &str = "04128191-d2cb-43fc-a970-e4deefe970d8";
const VM2: &str = "0f570678-c007-4610-a2c0-bbfcaab9f4e6";

fn canon(text: &str) -> String {
    canonical(text).unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
}

fn err(text: &str) -> String {
    match canonical(text) {
        Ok(c) => panic!("{text:?} accepted as {c:?}"),
        Err(e) => e,
    }
}

fn tag(name: &str, value: Option<&str>) -> Target {
    Target::Tag { name: name.into(), value: value.map(Into::into) }
}

#[test]
fn every_target_form_parses() {
    let to = |text: &str| parse(&format!("FROM any TO {text} ALLOW tcp PORT 80")).unwrap().to;
    assert_eq!(to("all vms"), Targets::AllVms);
    assert_eq!(to("( all vms )"), Targets::AllVms);
    assert_eq!(to(&format!("vm {VM1}")), Targets::List(vec![Target::Vm(VM1.parse().unwrap())]));
    assert_eq!(to("tag role"), Targets::List(vec![tag("role", None)]));
    assert_eq!(to("tag \"role\""), Targets::List(vec![tag("role", None)]));
    assert_eq!(to("tag role = web"), Targets::List(vec![tag("role", Some("web"))]));
    assert_eq!(to("tag role=web"), Targets::List(vec![tag("role", Some("web"))]));
    assert_eq!(to("tag \"VM type\" = \"LDAP server\""), Targets::List(vec![tag("VM type", Some("LDAP server"))]));
    assert_eq!(to("tag version = 10"), Targets::List(vec![tag("version", Some("10"))]));
    assert_eq!(to("tag \"a\\\"b\\\\c\\(d\\)\\n\\u00e9\\/\" = \"\""), Targets::List(vec![tag("a\"b\\c(d)\né/", Some(""))]));
    assert_eq!(to("tag \"\\uD83D\\uDE00\""), Targets::List(vec![tag("😀", None)]));

    let from = |text: &str| parse(&format!("FROM {text} TO all vms ALLOW tcp PORT 80")).unwrap().from;
    assert_eq!(from("any"), Targets::Any);
    assert_eq!(from("(any)"), Targets::Any);
    assert_eq!(from("ip 10.1.2.3"), Targets::List(vec![Target::Ip(Ipv4Addr::new(10, 1, 2, 3))]));
    assert_eq!(from("subnet 10.0.0.0/24"), Targets::List(vec![Target::Subnet { addr: Ipv4Addr::new(10, 0, 0, 0), prefix: 24 }]));
    assert_eq!(from("subnet 0.0.0.0/0"), Targets::List(vec![Target::Subnet { addr: Ipv4Addr::UNSPECIFIED, prefix: 0 }]));
    assert_eq!(
        from(&format!("(vm {VM2} OR tag db OR subnet 10.2.2.0/24 OR ip 10.3.0.1)")),
        Targets::List(vec![
            Target::Ip(Ipv4Addr::new(10, 3, 0, 1)),
            Target::Subnet { addr: Ipv4Addr::new(10, 2, 2, 0), prefix: 24 },
            tag("db", None),
            Target::Vm(VM2.parse().unwrap()),
        ])
    );
}

#[test]
fn every_protocol_form_parses() {
    let proto = |text: &str| parse(&format!("FROM any TO all vms ALLOW {text}")).unwrap();
    let single = |p: u16| Port::Single(p);
    assert_eq!(proto("tcp PORT 80").protocol, ProtocolSpec::Tcp(Ports::List(vec![single(80)])));
    assert_eq!(proto("udp port 514").protocol, ProtocolSpec::Udp(Ports::List(vec![single(514)])));
    assert_eq!(proto("tcp (PORT 443 AND PORT 80)").protocol, ProtocolSpec::Tcp(Ports::List(vec![single(80), single(443)])));
    assert_eq!(
        proto("tcp PORTS 80, 443, 1000 - 2000").protocol,
        ProtocolSpec::Tcp(Ports::List(vec![single(80), single(443), Port::Range(1000, 2000)]))
    );
    assert_eq!(proto("tcp ports 8000-8100").protocol, ProtocolSpec::Tcp(Ports::List(vec![Port::Range(8000, 8100)])));
    assert_eq!(proto("tcp ports 20 -22").protocol, ProtocolSpec::Tcp(Ports::List(vec![Port::Range(20, 22)])));
    assert_eq!(proto("tcp PORT all").protocol, ProtocolSpec::Tcp(Ports::All));
    assert_eq!(proto("tcp (PORT all)").protocol, ProtocolSpec::Tcp(Ports::All));
    assert_eq!(proto("udp all ports").protocol, ProtocolSpec::Udp(Ports::All));
    let t = |icmp_type: u8, code: Option<u8>| IcmpType { icmp_type, code };
    assert_eq!(proto("icmp TYPE 8").protocol, ProtocolSpec::Icmp(IcmpTypes::List(vec![t(8, None)])));
    assert_eq!(proto("icmp TYPE 8 CODE 0").protocol, ProtocolSpec::Icmp(IcmpTypes::List(vec![t(8, Some(0))])));
    assert_eq!(proto("icmp (TYPE 8 AND TYPE 0)").protocol, ProtocolSpec::Icmp(IcmpTypes::List(vec![t(0, None), t(8, None)])));
    assert_eq!(proto("icmp TYPE all").protocol, ProtocolSpec::Icmp(IcmpTypes::All));
    assert_eq!(proto("icmp6 type 128 code 0").protocol, ProtocolSpec::Icmp6(IcmpTypes::List(vec![t(128, Some(0))])));
    assert_eq!(proto("icmp6 (TYPE all)").protocol, ProtocolSpec::Icmp6(IcmpTypes::All));
    let r = proto("tcp PORT 22 PRIORITY 10");
    assert_eq!((r.priority, r.action), (10, Action::Allow));
    assert_eq!(parse("from any to all vms block tcp port 22 priority 0").unwrap().action, Action::Block);
}

#[test]
fn prints_the_canonical_form() {
    assert_eq!(canon("from any to tag role = web allow TCP port 80"), "FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 80");
    assert_eq!(canon("  FROM   any TO (all vms)\tALLOW tcp PORT 22  "), "FROM any TO all vms ALLOW tcp PORT 22");
    assert_eq!(canon("\u{feff}FROM any TO all vms ALLOW tcp PORT 22\r\n"), "FROM any TO all vms ALLOW tcp PORT 22");
    // Targets grouped ip, subnet, tag, vm and sorted; a bare tag covers its valued forms.
    assert_eq!(
        canon(&format!(
            "FROM (vm {VM2} OR tag db OR tag b = 2 OR tag db = x OR ip 10.3.0.1 OR subnet 10.2.2.0/24 OR ip 10.3.0.1) TO tag x BLOCK udp port 53"
        )),
        format!("FROM (ip 10.3.0.1 OR subnet 10.2.2.0/24 OR tag \"b\" = \"2\" OR tag \"db\" OR vm {VM2}) TO tag \"x\" BLOCK udp PORT 53")
    );
    // PORTS only with a range; ports sorted.
    assert_eq!(canon("FROM tag www TO any ALLOW tcp ports 443, 80"), "FROM tag \"www\" TO any ALLOW tcp (PORT 80 AND PORT 443)");
    assert_eq!(
        canon("FROM tag www TO any ALLOW tcp ports 8000-8100, 443, 80"),
        "FROM tag \"www\" TO any ALLOW tcp PORTS 80, 443, 8000 - 8100"
    );
    assert_eq!(canon("FROM tag a TO any ALLOW udp all ports"), "FROM tag \"a\" TO any ALLOW udp PORT all");
    assert_eq!(
        canon("FROM any TO all vms ALLOW icmp (TYPE 8 CODE 0 AND type 0)"),
        "FROM any TO all vms ALLOW icmp (TYPE 0 AND TYPE 8 CODE 0)"
    );
    assert_eq!(canon("FROM any TO all vms ALLOW icmp6 TYPE ALL"), "FROM any TO all vms ALLOW icmp6 TYPE all");
    // PRIORITY only when not 0.
    assert_eq!(canon("FROM any TO all vms ALLOW tcp PORT 22 PRIORITY 0"), "FROM any TO all vms ALLOW tcp PORT 22");
    assert_eq!(canon("FROM any TO all vms ALLOW tcp PORT 22 priority 100"), "FROM any TO all vms ALLOW tcp PORT 22 PRIORITY 100");
    // Tag strings are always quoted, escapes as sdc-fwrule writes them.
    assert_eq!(
        canon("FROM any TO tag \"a(b)\\\"c\\\\\\t\\u00a0\" ALLOW tcp PORT 1"),
        "FROM any TO tag \"a\\(b\\)\\\"c\\\\\\t\\u00A0\" ALLOW tcp PORT 1"
    );
    // Canonical text is a fixed point.
    for text in CORPUS {
        let c = canon(text);
        assert_eq!(canon(&c), c, "{text}");
    }
}

/// The example rules of Triton's documentation (sdc-fwrule docs/rules.md, fwrule(7), the
/// cloud firewall reference), as written there (IPv6 examples left out).
pub(super) const CORPUS: &[&str] = &[
    "FROM any TO all vms ALLOW tcp port 22",
    "FROM any to vm 04128191-d2cb-43fc-a970-e4deefe970d8 ALLOW tcp port 80",
    "FROM all vms to ip 10.2.0.1 BLOCK tcp port 25",
    "FROM subnet 10.8.0.0/16 TO vm 0f570678-c007-4610-a2c0-bbfcaab9f4e6 ALLOW tcp port 443",
    "FROM all vms TO tag syslog ALLOW udp port 514",
    "FROM tag role = db TO tag role = www ALLOW tcp port 5432",
    "FROM all vms TO tag \"VM type\" = \"LDAP server\" ALLOW tcp PORT 389",
    "FROM all vms TO all vms ALLOW tcp port 22",
    "FROM any TO all vms ALLOW tcp port 80",
    "FROM (vm 163dcedb-828d-43c9-b076-625423250ee2 OR tag db) TO (subnet 10.2.2.0/24 OR ip 10.3.0.1) BLOCK tcp port 443",
    "FROM any TO all vms BLOCK tcp port 143",
    "FROM all vms TO any ALLOW tcp port 25",
    "FROM tag www TO any ALLOW tcp (port 80 AND port 443)",
    "FROM tag www TO any ALLOW tcp ports 80, 443, 8000-8100",
    "FROM any TO all vms ALLOW icmp TYPE 8 CODE 0",
    "FROM any TO all vms ALLOW icmp6 TYPE 128 CODE 0",
    "FROM all vms TO any BLOCK icmp TYPE 0",
    "FROM all vms TO any BLOCK icmp6 TYPE 129",
    "FROM any TO tag mta ALLOW tcp PORT 25",
    "FROM subnet 10.20.30.0/24 TO tag mta BLOCK tcp PORT 25 PRIORITY 1",
    "FROM all vms TO any BLOCK tcp PORT all",
    "FROM all vms TO any ALLOW tcp PORT 22 PRIORITY 1",
    "FROM any TO all vms BLOCK TCP PORT all",
    "FROM any TO all vms BLOCK UDP PORT all",
    "FROM all vms TO any ALLOW UDP PORT all",
    "FROM ip 10.99.99.254 TO vm 04128191-d2cb-43fc-a970-e4deefe970d8 ALLOW tcp PORTS 15 - 30 PRIORITY 1",
    "FROM ip 10.0.0.1 TO all vms ALLOW TCP port 53",
    "FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 80",
];

#[test]
fn triton_examples_parse_and_round_trip() {
    for text in CORPUS {
        let rule = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parse(&rule.to_string()).unwrap(), rule, "{text}");
    }
    // Rules whose text sdc-fwrule's own tests show already canonical come back unchanged.
    for text in [
        "FROM ip 10.99.99.254 TO vm 04128191-d2cb-43fc-a970-e4deefe970d8 BLOCK tcp PORT 22 PRIORITY 2",
        "FROM subnet 10.99.99.0/24 TO vm 04128191-d2cb-43fc-a970-e4deefe970d8 BLOCK tcp PORT all PRIORITY 1",
        "FROM ip 10.99.99.254 TO vm 04128191-d2cb-43fc-a970-e4deefe970d8 ALLOW tcp PORTS 15 - 30 PRIORITY 1",
        "FROM any TO vm 04128191-d2cb-43fc-a970-e4deefe970d8 ALLOW tcp PORT all",
    ] {
        assert_eq!(canon(text), text);
    }
}

#[test]
fn syntax_errors_say_where_and_what_in_tritons_words() {
    assert_eq!(err("invalid"), "Error at character 0: 'invalid', expected: 'FROM', found: word");
    assert_eq!(
        err("FROM foo TO ip 8.8.8.8 ALLOW udp port 53"),
        "Error at character 4: 'foo', expected: '(', 'all', 'any', 'ip', 'subnet', 'vm', 'tag', found: word"
    );
    assert_eq!(err("FROM (all vms OR tag one) TO ip 10.0.0.1 ALLOW udp port 53"), "Error at character 13: 'OR', expected: ')', found: OR");
    assert_eq!(err("FROM (any OR tag one) TO ip 10.0.0.1 ALLOW udp port 53"), "Error at character 9: 'OR', expected: ')', found: OR");
    assert_eq!(
        err("FROM ip 10.0.0.1 TO all vms ALLOW TCP (port 53 AND port ALL)"),
        "Error at character 55: 'ALL', expected: 'WORD', found: ALL"
    );
    assert_eq!(
        err("FROM ip 10.99.99.99.254 TO tag smartdc_role ALLOW tcp port 22"),
        "Error at character 19: '.254 TO tag smartdc_', found: unexpected text"
    );
    assert_eq!(err("FROM any TO all vms"), "Error at character 19: '', expected: 'BLOCK', 'ALLOW', found: EOF");
    assert_eq!(err("FROM any TO all vms ALLOW"), "Error at character 25: '', expected: 'TCP', 'UDP', 'ICMP', 'ICMP6', found: EOF");
    assert_eq!(err("FROM any TO all vms ALLOW tcp"), "Error at character 29: '', expected: '(', 'PORT', 'PORTS', found: EOF");
    assert_eq!(err("FROM any TO all vms ALLOW tcp PORT 80 foo"), "Error at character 37: 'foo', expected: 'EOF', 'PRIORITY', found: word");
    assert_eq!(err("FROM tag a foo"), "Error at character 10: 'foo', expected: 'TO', '=', found: word");
    assert_eq!(
        err("FROM any TO tag \"unterminated ALLOW tcp PORT 1"),
        "Error at character 16: '\"unterminated ALLOW ', found: unexpected text"
    );
    assert_eq!(
        err("FROM any TO tag \"bad \\q escape\" ALLOW tcp PORT 1"),
        "Error at character 16: '\"bad \\q escape\" ALLO', found: unexpected text"
    );

    let e = parse("FROM any TO all vms ALLOW tcp PORT 80 foo").unwrap_err();
    assert_eq!(e.position, 37);
    match e.kind {
        ParseErrorKind::Unexpected { text, expected, found } => {
            assert_eq!((text.as_str(), expected, found), ("foo", vec!["EOF", "PRIORITY"], "word"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_values_get_tritons_messages() {
    let cases: &[(&str, &str)] = &[
        ("FROM tag foo TO ip 10.288.0.0 ALLOW udp port 53", "IPv4 address \"10.288.0.0\" is invalid"),
        ("FROM tag foo TO ip 0.0.0.0 ALLOW udp port 53", "IPv4 address \"0.0.0.0\" is invalid"),
        ("FROM tag foo TO ip 255.255.255.255 ALLOW udp port 53", "IPv4 address \"255.255.255.255\" is invalid"),
        ("FROM tag foo TO subnet 10.350.0.0/24 ALLOW udp port 53", "Subnet \"10.350.0.0/24\" is invalid (bad address component)"),
        ("FROM tag foo TO subnet 10.8.0.0/33 ALLOW udp port 53", "Subnet \"10.8.0.0/33\" is invalid (bad prefix length)"),
        ("FROM tag foo TO subnet 10.8.0.0/5 ALLOW udp port 53", "Subnet \"10.8.0.0/5\" is invalid (bits set to right of mask)"),
        ("FROM tag foo TO subnet 10.0.0.1/24 ALLOW udp port 53", "Subnet \"10.0.0.1/24\" is invalid (bits set to right of mask)"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW udp port 0", "Port number \"0\" is invalid"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW udp port 65537", "Port number \"65537\" is invalid"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW udp port 99999999999999999999999", "Port number \"99999999999999999999999\" is invalid"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW tcp ports 1-20-30", "\"1-20-30\" is not a valid port number or range"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW tcp ports 0-20", "Port number \"0\" is invalid"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW tcp ports 20-65537", "Port number \"65537\" is invalid"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW tcp ports 20-bar", "Port number \"bar\" is invalid"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW tcp ports bar-20", "Port number \"bar\" is invalid"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW tcp ports 20 - 10", "The end of the range (10) cannot be less than the start (20)"),
        ("FROM tag foo TO subnet 10.8.0.0/24 ALLOW tcp ports 20-10", "The end of the range (10) cannot be less than the start (20)"),
        ("FROM vm asdf TO subnet 10.8.0.0/24 ALLOW udp port 50", "UUID \"asdf\" is invalid"),
        (
            "FROM vm 04128191-D2CB-43FC-A970-E4DEEFE970D8 TO any ALLOW udp port 50",
            "UUID \"04128191-D2CB-43FC-A970-E4DEEFE970D8\" is invalid",
        ),
        ("FROM tag a TO tag b ALLOW TCP PORT all PRIORITY 101", "Priority level \"101\" is invalid"),
        ("FROM tag a TO tag b ALLOW TCP PORT all PRIORITY immediate", "Priority level \"immediate\" is invalid"),
        ("FROM all vms TO ip 192.168.5.4 BLOCK ICMP TYPE 260", "ICMP type \"260\" is invalid"),
        ("FROM all vms TO ip 192.168.5.4 BLOCK ICMP TYPE 8 CODE 270", "ICMP code \"270\" is invalid"),
        ("FROM all vms TO ip 1.2.3.4 BLOCK ICMP6 TYPE 128", "rule affects ICMPv6 but contains a non-IPv6 address"),
        ("FROM all vms TO subnet 10.0.0.0/8 BLOCK ICMP6 TYPE 128", "rule affects ICMPv6 but contains a non-IPv6 subnet"),
        ("FROM any TO any ALLOW TCP port 53", "rule does not affect VMs"),
        ("FROM ip 10.8.0.1 TO subnet 10.9.0.0/16 ALLOW TCP port 53", "rule does not affect VMs"),
        ("FROM ip 10.9.0.1 TO any ALLOW TCP port 53", "rule does not affect VMs"),
        (
            "FROM all vms TO ip fd00::45 BLOCK tcp PORT 1",
            "IPv6 address \"fd00::45\" is not supported: Nereid's firewall rules take IPv4 addresses only",
        ),
        (
            "FROM subnet fd00::/64 TO all vms ALLOW tcp PORT 1",
            "IPv6 address \"fd00::\" is not supported: Nereid's firewall rules take IPv4 addresses only",
        ),
        ("FROM all vms TO any ALLOW ah", "Protocol \"ah\" is not supported: Nereid's firewall rules take tcp, udp, icmp and icmp6"),
    ];
    for (text, message) in cases {
        assert_eq!(err(text), *message, "{text}");
    }

    let ips: Vec<String> = (0..25).map(|i| format!("ip 10.0.0.{}", i + 1)).collect();
    assert_eq!(err(&format!("FROM ({}) TO all vms ALLOW TCP port 53", ips.join(" OR "))), "maximum of 24 targets allowed per side");
    let ok: Vec<String> = (0..24).map(|i| format!("ip 10.0.0.{}", i + 1)).collect();
    canon(&format!("FROM ({}) TO all vms ALLOW TCP port 53", ok.join(" OR ")));
    let ports: Vec<String> = (0..25).map(|i| format!("port {}", i + 10)).collect();
    assert_eq!(err(&format!("FROM all vms TO ip 192.168.5.4 BLOCK TCP ({})", ports.join(" AND "))), "maximum of 24 ports allowed");
    let types: Vec<String> = (0..25).map(|i| format!("type {i}")).collect();
    assert_eq!(err(&format!("FROM all vms TO ip 192.168.5.4 BLOCK ICMP ({})", types.join(" AND "))), "maximum of 24 types allowed");
    assert_eq!(err("FROM tag a TO tag b ALLOW tcp PORT 0").as_str(), "Port number \"0\" is invalid");
    let e = parse("FROM tag a TO tag b ALLOW tcp PORT 0").unwrap_err();
    assert_eq!(e.position, 35, "a bad value is located where it starts");
}

// --- compile ------------------------------------------------------------------------------

fn owner(n: u8) -> Uuid {
    Uuid::from_bytes([n; 16])
}

fn vm(n: u8, owner_n: u8, tags: Value, ips: &[&str], firewall_enabled: bool) -> FwVm {
    let tags: Map<String, Value> = match tags {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    FwVm {
        uuid: Uuid::from_u128(u128::from(n)),
        owner_uuid: owner(owner_n),
        tags,
        ips: ips.iter().map(|s| s.to_string()).collect(),
        firewall_enabled,
    }
}

fn rule(n: u8, owner_n: Option<u8>, text: &str) -> FwRule {
    FwRule {
        uuid: Uuid::from_u128(0x1000 + u128::from(n)),
        owner_uuid: owner_n.map(owner),
        rule: canon(text),
        enabled: true,
        global: owner_n.is_none(),
        description: None,
        log: false,
        created: None,
        updated: None,
    }
}

fn ports(l: &[(u16, u16)]) -> Vec<PortRange> {
    l.iter().map(|&(start, end)| PortRange { start, end }).collect()
}

fn peers(l: &[&str]) -> Option<Vec<String>> {
    Some(l.iter().map(|s| s.to_string()).collect())
}

fn inventory() -> Vec<FwVm> {
    vec![
        vm(1, 1, json!({"role": "web"}), &["10.0.0.1"], true),
        vm(2, 1, json!({"role": "db", "tier": 2}), &["10.0.0.2", "192.168.1.2"], true),
        vm(3, 1, json!({"role": "web"}), &["10.0.0.3"], false),
        vm(4, 2, json!({"role": "web"}), &["10.9.0.4"], true),
        vm(5, 1, json!({"role": "web"}), &[], true),
    ]
}

#[test]
fn compile_matches_tags_values_and_owners() {
    let vms = inventory();
    let rules = vec![rule(1, Some(1), "FROM any TO tag role = web ALLOW tcp PORT 80")];
    let out = compile(&rules, &vms);
    // Only VMs with their firewall enabled appear, every one of them, rules or not.
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![vms[0].uuid, vms[1].uuid, vms[3].uuid, vms[4].uuid]);
    let want = FwEntry {
        rule: rules[0].uuid,
        direction: Direction::In,
        action: Action::Allow,
        protocol: Protocol::Tcp,
        ports: ports(&[(80, 80)]),
        icmp: vec![],
        peers: None,
        priority: 0,
    };
    assert_eq!(out[&vms[0].uuid], vec![want.clone()]);
    assert_eq!(out[&vms[1].uuid], vec![], "role=db does not match role=web");
    assert_eq!(out[&vms[3].uuid], vec![], "another owner's VM is untouched");
    assert_eq!(out[&vms[4].uuid], vec![want], "a VM without IPs still gets its own inbound rule");

    // A number tag compares by its text; a bare tag matches any value. At equal priority the
    // outbound BLOCK (against the default) comes before the inbound one.
    let rules = vec![rule(2, Some(1), "FROM tag tier = 2 TO tag tier BLOCK udp PORTS 1000-2000, 53")];
    let out = compile(&rules, &vms);
    assert_eq!(
        out[&vms[1].uuid],
        vec![
            FwEntry {
                rule: rules[0].uuid,
                direction: Direction::Out,
                action: Action::Block,
                protocol: Protocol::Udp,
                ports: ports(&[(53, 53), (1000, 2000)]),
                icmp: vec![],
                peers: peers(&["10.0.0.2", "192.168.1.2"]),
                priority: 0,
            },
            FwEntry {
                rule: rules[0].uuid,
                direction: Direction::In,
                action: Action::Block,
                protocol: Protocol::Udp,
                ports: ports(&[(53, 53), (1000, 2000)]),
                icmp: vec![],
                peers: peers(&["10.0.0.2", "192.168.1.2"]),
                priority: 0,
            },
        ]
    );
    assert_eq!(out[&vms[0].uuid], vec![]);
}

#[test]
fn compile_resolves_peers_in_both_directions() {
    let vms = inventory();
    let rules =
        vec![rule(1, Some(1), "FROM tag role = web TO (tag role = db OR ip 172.16.0.9 OR subnet 10.128.0.0/9) ALLOW tcp PORT 5432")];
    let out = compile(&rules, &vms);
    let base = FwEntry {
        rule: rules[0].uuid,
        direction: Direction::Out,
        action: Action::Allow,
        protocol: Protocol::Tcp,
        ports: ports(&[(5432, 5432)]),
        icmp: vec![],
        peers: peers(&["10.0.0.2", "10.128.0.0/9", "172.16.0.9", "192.168.1.2"]),
        priority: 0,
    };
    // The web VM (and the one without IPs) sends to the db VM's addresses, the ip and the subnet.
    assert_eq!(out[&vms[0].uuid], vec![base.clone()]);
    assert_eq!(out[&vms[4].uuid], vec![base.clone()]);
    // The db VM accepts from the web VMs of its owner — including the one whose firewall is
    // off, not the other owner's.
    assert_eq!(out[&vms[1].uuid], vec![FwEntry { direction: Direction::In, peers: peers(&["10.0.0.1", "10.0.0.3"]), ..base.clone() }]);
    assert_eq!(out[&vms[3].uuid], vec![]);

    // A side that names VMs with no address gives no entry; vm targets resolve by uuid.
    let vms2 = vec![vm(1, 1, json!({}), &["10.0.0.1"], true), vm(2, 1, json!({"x": "y"}), &[], true)];
    let rules = vec![
        rule(3, Some(1), &format!("FROM tag x TO vm {} ALLOW tcp PORT 22", vms2[0].uuid)),
        rule(4, Some(1), &format!("FROM vm {} TO tag x ALLOW tcp PORT 23", vms2[0].uuid)),
    ];
    let out = compile(&rules, &vms2);
    assert_eq!(out[&vms2[0].uuid], vec![], "peers of the only other VM have no address");
    assert_eq!(
        out[&vms2[1].uuid],
        vec![
            FwEntry {
                rule: rules[1].uuid,
                direction: Direction::In,
                action: Action::Allow,
                protocol: Protocol::Tcp,
                ports: ports(&[(23, 23)]),
                icmp: vec![],
                peers: peers(&["10.0.0.1"]),
                priority: 0,
            },
            FwEntry {
                rule: rules[0].uuid,
                direction: Direction::Out,
                action: Action::Allow,
                protocol: Protocol::Tcp,
                ports: ports(&[(22, 22)]),
                icmp: vec![],
                peers: peers(&["10.0.0.1"]),
                priority: 0,
            }
        ]
    );
}

#[test]
fn compile_gives_a_vm_on_both_sides_both_directions() {
    let vms = inventory();
    let rules = vec![rule(1, Some(1), "FROM all vms TO all vms ALLOW icmp TYPE 8 CODE 0")];
    let out = compile(&rules, &vms);
    let all = peers(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.168.1.2"]);
    let e = |direction| FwEntry {
        rule: rules[0].uuid,
        direction,
        action: Action::Allow,
        protocol: Protocol::Icmp,
        ports: vec![],
        icmp: vec![IcmpType { icmp_type: 8, code: Some(0) }],
        peers: all.clone(),
        priority: 0,
    };
    assert_eq!(out[&vms[0].uuid], vec![e(Direction::In), e(Direction::Out)]);
    assert_eq!(out[&vms[3].uuid], vec![], "all vms is the owner's VMs");
}

#[test]
fn compile_applies_global_rules_to_every_owner() {
    let vms = inventory();
    let rules = vec![rule(1, None, "FROM tag role = web TO tag role = web ALLOW tcp PORT all")];
    let out = compile(&rules, &vms);
    let web = peers(&["10.0.0.1", "10.0.0.3", "10.9.0.4"]);
    for v in [&vms[0], &vms[3], &vms[4]] {
        let got = &out[&v.uuid];
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().all(|e| e.peers == web && e.ports.is_empty()), "peers across owners, all ports: {got:?}");
    }
    assert_eq!(out[&vms[1].uuid], vec![]);

    // Disabled rules do nothing.
    let mut off = rules.clone();
    off[0].enabled = false;
    assert!(compile(&off, &vms).values().all(Vec::is_empty));
}

#[test]
fn compile_orders_by_priority_then_against_the_default() {
    // sdc-fwrule's priority tests: inbound ALLOW beats BLOCK at equal priority, outbound
    // BLOCK beats ALLOW, higher priorities first.
    let me = vm(1, 1, json!({}), &["10.0.0.1"], true);
    let id = me.uuid;
    let rules = vec![
        rule(1, Some(1), &format!("FROM ip 10.99.99.254 TO vm {id} BLOCK tcp PORT 22 PRIORITY 2")),
        rule(2, Some(1), &format!("FROM subnet 10.99.99.0/24 TO vm {id} BLOCK tcp PORT all PRIORITY 1")),
        rule(3, Some(1), &format!("FROM ip 10.99.99.254 TO vm {id} ALLOW tcp PORTS 15 - 30 PRIORITY 1")),
        rule(4, Some(1), &format!("FROM any TO vm {id} ALLOW tcp PORT all")),
        rule(5, Some(1), &format!("FROM vm {id} TO ip 10.99.99.254 ALLOW udp PORT 22 PRIORITY 15")),
        rule(6, Some(1), &format!("FROM vm {id} TO subnet 10.99.99.0/24 ALLOW udp PORT all PRIORITY 2")),
        rule(7, Some(1), &format!("FROM vm {id} TO ip 10.99.99.254 BLOCK udp PORTS 15 - 30 PRIORITY 2")),
        rule(8, Some(1), &format!("FROM vm {id} TO any BLOCK udp PORT all")),
        rule(9, Some(1), &format!("FROM any TO vm {id} BLOCK tcp PORT 9")),
    ];
    let out = compile(&rules, std::slice::from_ref(&me));
    let order: Vec<(u8, Direction, Action, u128)> =
        out[&id].iter().map(|e| (e.priority, e.direction, e.action, e.rule.as_u128() - 0x1000)).collect();
    assert_eq!(
        order,
        vec![
            (15, Direction::Out, Action::Allow, 5),
            (2, Direction::Out, Action::Block, 7),
            (2, Direction::In, Action::Block, 1),
            (2, Direction::Out, Action::Allow, 6),
            (1, Direction::In, Action::Allow, 3),
            (1, Direction::In, Action::Block, 2),
            (0, Direction::In, Action::Allow, 4),
            (0, Direction::Out, Action::Block, 8),
            (0, Direction::In, Action::Block, 9),
        ]
    );
    // Input order does not matter.
    let mut reversed = rules.clone();
    reversed.reverse();
    assert_eq!(compile(&reversed, &[me]), out);
}

#[test]
fn compile_icmp6_with_vm_peers_needs_ipv6_addresses() {
    let vms = vec![vm(1, 1, json!({"a": true}), &["10.0.0.1"], true), vm(2, 1, json!({"b": "x"}), &["10.0.0.2", "fd00::2"], true)];
    let rules = vec![
        rule(1, Some(1), "FROM tag b TO tag a = true ALLOW icmp6 TYPE 128"),
        rule(2, Some(1), "FROM any TO tag a ALLOW icmp6 TYPE all"),
    ];
    let out = compile(&rules, &vms);
    let got: Vec<(u128, Option<Vec<String>>)> = out[&vms[0].uuid].iter().map(|e| (e.rule.as_u128() - 0x1000, e.peers.clone())).collect();
    assert_eq!(got, vec![(1, peers(&["fd00::2"])), (2, None)]);
}

#[test]
fn affected_lists_the_vms_a_rule_names() {
    let vms = inventory();
    let r = rule(1, Some(1), "FROM tag role = db TO tag role = web ALLOW tcp PORT 80");
    assert_eq!(affected(&r, &vms), vec![vms[0].uuid, vms[1].uuid, vms[2].uuid, vms[4].uuid], "firewall on or off, owner's only");
    let g = rule(2, None, "FROM any TO tag role = web ALLOW tcp PORT 80");
    assert_eq!(affected(&g, &vms), vec![vms[0].uuid, vms[2].uuid, vms[3].uuid, vms[4].uuid]);
    let one = rule(3, Some(2), &format!("FROM ip 10.1.1.1 TO vm {} ALLOW tcp PORT 80", vms[0].uuid));
    assert_eq!(affected(&one, &vms), Vec::<Uuid>::new(), "another owner's VM is not affected by naming it");
    let all = rule(4, Some(2), "FROM all vms TO any BLOCK tcp PORT 25");
    assert_eq!(affected(&all, &vms), vec![vms[3].uuid]);
}
