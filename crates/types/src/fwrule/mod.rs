//! Firewall rules in Triton's rule language (`FROM any TO tag "role" = "web" ALLOW tcp
//! PORT 443`): the stored record (FWAPI's shape), the parser and printer, and the
//! compiler that turns an account's rules into each VM's concrete entries.
//!
//! ```text
//!   text ──parse──► Rule (AST) ──Display──► canonical text (parse ∘ print = id)
//!   FwRule records + FwVm inventory ──compile──► per VM: Vec<netpolicy::FwEntry>
//! ```

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

/// Parses rule text and prints it back canonically, or says precisely what is wrong.
/// (Placeholder until the parser lands: accepts any non-empty text as is.)
pub fn canonical(text: &str) -> Result<String, String> {
    let t = text.trim();
    if t.is_empty() { Err("rule: is empty".into()) } else { Ok(t.to_string()) }
}

/// Each VM's compiled entries (only VMs with `firewall_enabled`), from the enabled rules
/// that affect it, in the order they apply. (Placeholder until the compiler lands.)
pub fn compile(_rules: &[FwRule], _vms: &[FwVm]) -> std::collections::BTreeMap<Uuid, Vec<crate::netpolicy::FwEntry>> {
    std::collections::BTreeMap::new()
}

/// The VMs a rule affects (CloudAPI's `/fwrules/:id/machines`). (Placeholder until the
/// compiler lands.)
pub fn affected(_rule: &FwRule, _vms: &[FwVm]) -> Vec<Uuid> {
    Vec::new()
}
