//! Firewall rules in Triton's rule language (`FROM any TO tag "role" = "web" ALLOW tcp
//! PORT 443`): the stored record (FWAPI's shape), the parser and printer, and the
//! compiler that turns an account's rules into each VM's concrete entries.
//!
//! ```text
//!   text ──parse──► Rule (AST) ──Display──► canonical text (parse ∘ print = id)
//!   FwRule records + FwVm inventory ──compile──► per VM: Vec<netpolicy::FwEntry>
//! ```
//!
//! * [`ast`]: the typed rule, its canonical order and its printer.
//! * [`parse`](mod@parse): lexer, parser, validation, Triton-shaped error messages.
//! * [`compile`](mod@compile): rules + VMs → each VM's entries; the VMs a rule affects.
//! * `tests.rs` (unit tests, Triton's documented examples) and `proptest.rs` (seeded random
//!   rules: print/parse round trips, equivalent spellings, mutations); `crates/fuzz` has
//!   the `fwrule` fuzz target.
//!
//! Where Nereid differs from sdc-fwrule: IPv6 addresses and subnets, and the `ah`/`esp`
//! protocols, are refused with their own messages (the firewall is IPv4 only; `icmp6`
//! is accepted, with VM-side peers resolving to IPv6 addresses); keywords are
//! case-insensitive in any mix (Triton takes all-lower or all-upper); `all ports` is read
//! as `PORT all`; duplicate ports and ICMP types are dropped from the canonical text.
//! Everything else — limits, validation, messages, canonical form — follows sdc-fwrule.

pub mod ast;
pub mod compile;
pub mod parse;
#[cfg(test)]
mod proptest;
#[cfg(test)]
mod tests;

pub use ast::{IcmpTypes, Port, Ports, ProtocolSpec, Rule, Target, Targets};
pub use parse::{ParseError, ParseErrorKind, parse};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A firewall rule as FWAPI stores and CloudAPI renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FwRule {
    pub uuid: Uuid,
    /// The account the rule belongs to; `None` for an operator-wide (global) rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uuid: Option<Uuid>,
    /// The rule text, as the parser prints it (canonical).
    pub rule: String,
    pub enabled: bool,
    #[serde(default)]
    pub global: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// What the compiler needs to know of a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct FwVm {
    pub uuid: Uuid,
    pub owner_uuid: Uuid,
    pub tags: Map<String, Value>,
    /// Its IPv4 addresses (every NIC).
    pub ips: Vec<String>,
    pub firewall_enabled: bool,
}

/// Parses rule text and prints it back canonically (the text FWAPI stores and CloudAPI
/// echoes), or says precisely what is wrong, in sdc-fwrule's words.
pub fn canonical(text: &str) -> Result<String, String> {
    parse(text).map(|r| r.to_string()).map_err(|e| e.to_string())
}

/// Each VM's compiled entries (only VMs with `firewall_enabled`, each present even with no
/// entry), from the enabled rules that affect it, in the order they apply. See [`compile`](compile::compile).
pub fn compile(rules: &[FwRule], vms: &[FwVm]) -> std::collections::BTreeMap<Uuid, Vec<crate::netpolicy::FwEntry>> {
    compile::compile(rules, vms)
}

/// The VMs a rule affects (CloudAPI's `/fwrules/:id/machines`): those it names on either
/// side, of its owner (of everyone for a global rule), firewall enabled or not, sorted.
pub fn affected(rule: &FwRule, vms: &[FwVm]) -> Vec<Uuid> {
    compile::affected(rule, vms)
}
