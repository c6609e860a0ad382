//! Firewall rules as tenants write them (`triton fwrule create '…'`, nereid-types
//! fwrule/parse.rs): the text goes through the lexer, parser and validation.
//!
//! Invariants: no panic; an error's position lies within the text and its message is not
//! empty; an accepted rule prints to text that parses to the same rule, that text is a
//! fixed point of `canonical`, and compiling the rule against a small inventory (a VM on
//! each side, tags matching it) neither panics nor names a VM the rule cannot reach.

use nereid_types::fwrule::{self, FwRule, FwVm};
use uuid::Uuid;

pub const DICTIONARY: &[&[u8]] = &[
    b"FROM ",
    b" TO ",
    b"any",
    b"all vms",
    b"(all vms)",
    b"ip 10.0.0.1",
    b"subnet 10.0.0.0/24",
    b"subnet 0.0.0.0/0",
    b"vm 04128191-d2cb-43fc-a970-e4deefe970d8",
    b"tag role",
    b"tag \"role\" = \"web\"",
    b"tag \"a\\\"b\\\\c\\u00A0\\(\\)\"",
    b"\\uD83D\\uDE00",
    b" OR ",
    b" AND ",
    b" ALLOW ",
    b" BLOCK ",
    b"tcp ",
    b"udp ",
    b"icmp ",
    b"icmp6 ",
    b"PORT 80",
    b"PORT all",
    b"all ports",
    b"PORTS 80, 443, 1000 - 2000",
    b"(PORT 80 AND PORT 443)",
    b"TYPE 8 CODE 0",
    b"TYPE all",
    b"(TYPE 0 AND TYPE 8)",
    b" PRIORITY 100",
    b"65535",
    b"65536",
    b"fd00::1",
    b"ah",
    b"(",
    b")",
    b"\"",
    b"=",
    b",",
    b"-",
];

fn inventory() -> Vec<FwVm> {
    let owner = Uuid::from_u128(1);
    let mut tags = serde_json::Map::new();
    tags.insert("role".into(), "web".into());
    tags.insert("n".into(), 10.into());
    vec![
        FwVm {
            uuid: "04128191-d2cb-43fc-a970-e4deefe970d8".parse().expect("a uuid"),
            owner_uuid: owner,
            tags,
            ips: vec!["10.0.0.5".into()],
            firewall_enabled: true,
        },
        FwVm {
            uuid: Uuid::from_u128(2),
            owner_uuid: Uuid::from_u128(3),
            tags: serde_json::Map::new(),
            ips: vec!["10.9.0.2".into()],
            firewall_enabled: true,
        },
    ]
}

pub fn run(data: &[u8]) {
    let text = super::text(data);
    let rule = match fwrule::parse(&text) {
        Ok(rule) => rule,
        Err(e) => {
            assert!(e.position <= text.chars().count(), "error position {} beyond the text: {e:?}", e.position);
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let printed = rule.to_string();
    let again = fwrule::parse(&printed).unwrap_or_else(|e| panic!("the printed form of an accepted rule is refused: {e} ({printed:?})"));
    assert_eq!(again, rule, "{text:?} printed as {printed:?}");
    assert_eq!(fwrule::canonical(&printed).as_deref(), Ok(printed.as_str()));

    let vms = inventory();
    let record = FwRule {
        uuid: Uuid::from_u128(9),
        owner_uuid: Some(Uuid::from_u128(1)),
        rule: printed,
        enabled: true,
        global: false,
        description: None,
        log: false,
        created: None,
        updated: None,
    };
    let compiled = fwrule::compile(std::slice::from_ref(&record), &vms);
    assert!(compiled[&vms[1].uuid].is_empty(), "another owner's VM got entries: {:?}", compiled[&vms[1].uuid]);
    let affected = fwrule::affected(&record, &vms);
    assert!(affected.iter().all(|u| *u == vms[0].uuid), "{affected:?}");
    if !compiled[&vms[0].uuid].is_empty() {
        assert_eq!(affected, vec![vms[0].uuid], "a VM with entries is affected");
    }
    crate::note_accepted();
}
