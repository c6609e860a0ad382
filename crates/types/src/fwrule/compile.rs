//! From an account's rules and the VMs around them to each VM's concrete firewall entries
//! (what the agent turns into nftables rules), and to the VMs a rule affects.
//!
//! ```text
//!   rule (enabled; owner's, or global)          VM with firewall_enabled
//!     VM on the TO side   ──► Direction::In,  peers = the FROM side's addresses
//!     VM on the FROM side ──► Direction::Out, peers = the TO side's addresses
//!   peers: any → None (any address) · ip/subnet → as written · vm/tag/all vms → the IPv4
//!          addresses of the matching VMs in the rule's scope (the owner's VMs; every VM for
//!          a global rule), sorted, deduplicated; a side that names only VMs and resolves to
//!          no address gives no entry (it would match nothing)
//!   order (first match wins): higher priority first; at equal priority the action that
//!          goes against the default (inbound ALLOW, outbound BLOCK) first; then rule uuid
//! ```
//!
//! `icmp6` rules take the VMs' IPv6 addresses as peers; [`super::FwVm`] lists IPv4 ones only
//! today, so an `icmp6` rule whose other side names VMs gives no entry (with `any`, it does).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;
use uuid::Uuid;

use super::ast::{Action, IcmpTypes, Port, Ports, ProtocolSpec, Rule, Target, Targets};
use super::{FwRule, FwVm};
use crate::netpolicy::{Direction, FwEntry, IcmpType, PortRange};

/// Whether `rule` applies to every owner's VMs.
fn is_global(rule: &FwRule) -> bool {
    rule.owner_uuid.is_none() || rule.global
}

/// Whether `vm` is within `rule`'s reach (its owner's, or anyone's for a global rule).
fn in_scope(rule: &FwRule, vm: &FwVm) -> bool {
    is_global(rule) || rule.owner_uuid == Some(vm.owner_uuid)
}

/// A tag's value as text, as the rule language compares it (`10`, `true`, `web`).
fn tag_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn target_matches(t: &Target, vm: &FwVm) -> bool {
    match t {
        Target::Vm(u) => *u == vm.uuid,
        Target::Tag { name, value: None } => vm.tags.contains_key(name),
        Target::Tag { name, value: Some(want) } => vm.tags.get(name).and_then(tag_text).is_some_and(|have| have == *want),
        Target::Ip(_) | Target::Subnet { .. } => false,
    }
}

/// Whether a side names `vm` (by `all vms`, its uuid, or one of its tags).
fn side_matches(side: &Targets, vm: &FwVm) -> bool {
    match side {
        Targets::Any => false,
        Targets::AllVms => true,
        Targets::List(l) => l.iter().any(|t| target_matches(t, vm)),
    }
}

/// The addresses a side stands for, seen from the other side; `None` is any address, and
/// `Some(empty)` a side that matches nothing.
fn peers(side: &Targets, scope: &[&FwVm], v6: bool) -> Option<Vec<String>> {
    let vm_addresses =
        |vm: &FwVm| -> Vec<IpAddr> { vm.ips.iter().filter_map(|a| a.parse::<IpAddr>().ok()).filter(|a| a.is_ipv6() == v6).collect() };
    let mut out: Vec<(IpAddr, u8)> = Vec::new();
    match side {
        Targets::Any => return None,
        Targets::AllVms => scope.iter().for_each(|vm| out.extend(vm_addresses(vm).into_iter().map(|a| (a, 128)))),
        Targets::List(l) => {
            for t in l {
                match t {
                    Target::Ip(ip) => out.push((IpAddr::V4(*ip), 128)),
                    Target::Subnet { addr, prefix } => out.push((IpAddr::V4(*addr), *prefix)),
                    t => scope
                        .iter()
                        .filter(|vm| target_matches(t, vm))
                        .for_each(|vm| out.extend(vm_addresses(vm).into_iter().map(|a| (a, 128)))),
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Some(out.into_iter().map(|(a, p)| if p == 128 { a.to_string() } else { format!("{a}/{p}") }).collect())
}

fn ports(p: &Ports) -> Vec<PortRange> {
    match p {
        Ports::All => Vec::new(),
        Ports::List(l) => l.iter().map(|p: &Port| PortRange { start: p.start(), end: p.end() }).collect(),
    }
}

fn types(t: &IcmpTypes) -> Vec<IcmpType> {
    match t {
        IcmpTypes::All => Vec::new(),
        IcmpTypes::List(l) => l.clone(),
    }
}

/// The entry `rule` gives a VM in `direction`, with the other side `other`; `None` when
/// the other side resolves to no address.
fn entry(record: &FwRule, rule: &Rule, direction: Direction, other: &Targets, scope: &[&FwVm]) -> Option<FwEntry> {
    let v6 = matches!(rule.protocol, ProtocolSpec::Icmp6(_));
    let peers = match peers(other, scope, v6) {
        Some(p) if p.is_empty() => return None,
        p => p,
    };
    let (ports, icmp) = match &rule.protocol {
        ProtocolSpec::Tcp(p) | ProtocolSpec::Udp(p) => (ports(p), Vec::new()),
        ProtocolSpec::Icmp(t) | ProtocolSpec::Icmp6(t) => (Vec::new(), types(t)),
    };
    Some(FwEntry {
        rule: record.uuid,
        direction,
        action: rule.action,
        protocol: rule.protocol.protocol(),
        ports,
        icmp,
        peers,
        priority: rule.priority,
    })
}

/// 0 for the action that goes against the direction's default (inbound ALLOW, outbound
/// BLOCK): it wins a tie of priority.
fn against_default(e: &FwEntry) -> u8 {
    match (e.direction, e.action) {
        (Direction::In, Action::Allow) | (Direction::Out, Action::Block) => 0,
        _ => 1,
    }
}

/// The enabled rules that parse, with their ASTs (stored rules are canonical text; one
/// that no longer parses is skipped rather than failing every VM's policy).
fn parsed(rules: &[FwRule]) -> Vec<(&FwRule, Rule)> {
    rules.iter().filter(|r| r.enabled).filter_map(|r| super::parse(&r.rule).ok().map(|ast| (r, ast))).collect()
}

/// Each VM's entries (only VMs with `firewall_enabled`), in the order they apply. A VM
/// with its firewall enabled and no rule still appears, with no entries (its defaults:
/// inbound blocked, outbound allowed).
pub fn compile(rules: &[FwRule], vms: &[FwVm]) -> BTreeMap<Uuid, Vec<FwEntry>> {
    // A rule's entries are the same for every VM it matches: work them out once per rule.
    struct Compiled<'a> {
        record: &'a FwRule,
        rule: Rule,
        inbound: Option<FwEntry>,
        outbound: Option<FwEntry>,
    }
    let compiled: Vec<Compiled> = parsed(rules)
        .into_iter()
        .map(|(record, rule)| {
            let scope: Vec<&FwVm> = vms.iter().filter(|v| in_scope(record, v)).collect();
            let inbound = entry(record, &rule, Direction::In, &rule.from, &scope);
            let outbound = entry(record, &rule, Direction::Out, &rule.to, &scope);
            Compiled { record, rule, inbound, outbound }
        })
        .collect();
    let mut out = BTreeMap::new();
    for vm in vms.iter().filter(|v| v.firewall_enabled) {
        let mut entries = Vec::new();
        for c in compiled.iter().filter(|c| in_scope(c.record, vm)) {
            if let Some(e) = &c.inbound
                && side_matches(&c.rule.to, vm)
            {
                entries.push(e.clone());
            }
            if let Some(e) = &c.outbound
                && side_matches(&c.rule.from, vm)
            {
                entries.push(e.clone());
            }
        }
        entries.sort_by_key(|e| (std::cmp::Reverse(e.priority), against_default(e), e.rule, e.direction));
        out.insert(vm.uuid, entries);
    }
    out
}

/// The VMs `rule` names on either side (of its owner; of every owner for a global rule),
/// whether or not their firewall is enabled, sorted: CloudAPI's
/// `GET /:login/fwrules/:id/machines`. Empty for text that does not parse.
pub fn affected(rule: &FwRule, vms: &[FwVm]) -> Vec<Uuid> {
    let Ok(ast) = super::parse(&rule.rule) else { return Vec::new() };
    let mut out: Vec<Uuid> = vms
        .iter()
        .filter(|vm| in_scope(rule, vm) && (side_matches(&ast.from, vm) || side_matches(&ast.to, vm)))
        .map(|vm| vm.uuid)
        .collect();
    out.sort();
    out.dedup();
    out
}
