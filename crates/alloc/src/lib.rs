//! The allocator: which server a new VM goes on, decided by a pure function.
//!
//! Theory of operation. Input: every server with its capacity and the VMs counted on it
//! (records reconciled with what the server reports, plus open reservations), and the
//! request. The pipeline mirrors Triton's DAPI (`operator-apis.md` §5): hard filters
//! drop servers, soft filters prefer some without ever emptying the set, scorers rank
//! the rest, the best wins (ties broken randomly).
//!
//! ```text
//!  servers ─► setup ─► running ─► reserved ─► headnode ─► pinned ─► nic tags ─► traits
//!          ─► vcpus ─► capness ─► vm count ─► RAM ─► CPU ─► disk ─► locality (strict)
//!          ─► [reservoir] ─► [emptiest 15 %] ─► [locality / owner spread]  (soft)
//!          ─► score (pack by RAM and disk, + randomness) ─► pick
//! ```
//!
//! Nereid differs from Triton where Triton's behaviour is a known pitfall:
//! - every server is evaluated (no 1000-server cap, no random chunks of 50);
//! - a server pinned by `server_uuid` still passes the hard filters (only scoring is skipped);
//! - a VM whose CPU cap is *unknown* (a half-empty "ghost" record) never zeroes a server's
//!   CPU or fails the capness rule: it is counted by what the server reports and named in a
//!   [`Warning`] for repair;
//! - disk is checked by default;
//! - when nothing fits, [`NoFit`] says, for every server, which step rejected it and why.
//!
//! [`allocate`] is the exact reference over a slice of servers. A [`Fleet`] kept between
//! decisions (the headnode's) decides the common request from an index by unreserved RAM
//! without visiting every server, and falls back to this exact pipeline for the rest and
//! whenever nothing fits (fleet.rs says how). Filters and scorers see a server with its
//! `Summary` (unreserved capacity, VM count, capness), computed once per server.
//!
//! Capacity is *claimed* by the caller writing a reservation in the same transaction as
//! its decision (see the headnode's `app::allocation`); this crate only decides.

use std::collections::BTreeSet;

use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

mod filters;
mod fleet;
mod score;

pub use fleet::Fleet;

#[cfg(test)]
mod fleet_tests;
#[cfg(test)]
mod tests;

/// A VM's CPU cap as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Cap {
    /// Capped at this many percent of one CPU.
    Capped(u32),
    /// Explicitly uncapped (`cpu_cap` 0 or absent on a complete record).
    Uncapped,
    /// Not known (a damaged or half-empty record); never used to reject a server.
    Unknown,
}

/// Overprovision ratios (Triton forces cpu 4, ram 1, disk 1; Nereid persists per server).
pub use nereid_types::server::Ratios;

/// Where a server's liveness stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    Running,
    /// No heartbeat for this many seconds.
    Unknown {
        silent_secs: u64,
    },
}

/// A compute node as placement sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    pub uuid: Uuid,
    pub hostname: String,
    pub setup: bool,
    pub status: Status,
    pub reserved: bool,
    pub reservoir: bool,
    pub headnode: bool,
    pub traits: Map<String, Value>,
    /// Nic tags on its NICs that are up.
    pub nic_tags: Vec<String>,
    /// Nic tags it has that cannot carry their networks now, with why (from its problems).
    pub nic_tag_problems: std::collections::BTreeMap<String, String>,
    pub cpus: u32,
    pub ram_mib: u64,
    /// Usable disk for VMs (MiB).
    pub disk_mib: u64,
    /// Share of RAM held back for the host (Triton default 0.15).
    pub reservation_ratio: f64,
    pub ratios: Ratios,
    /// The VMs counted on it.
    pub vms: Vec<VmUsage>,
}

/// Where a counted VM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    /// A VMAPI record (the server may or may not report it).
    Record,
    /// A reservation of an in-flight provision or resize.
    Reservation,
    /// Reported by the server, with no record: it is running there whatever the store says.
    ServerOnly,
}

/// One VM (or reservation) using a server's capacity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmUsage {
    pub uuid: Uuid,
    pub owner: Option<Uuid>,
    pub ram_mib: Option<u64>,
    pub disk_mib: Option<u64>,
    pub cap: Cap,
    pub source: Source,
    /// Whether the server reports this VM.
    pub on_server: bool,
    /// A record the server's inventory should list by now but does not: what it takes is
    /// probably not in use (flagged in every explanation that names it).
    pub suspect: bool,
    /// The record does not decode: why (counted as far as it can be read).
    pub damaged: Option<String>,
}

impl VmUsage {
    /// Half-empty records that Triton would silently let block the server.
    pub fn problems(&self) -> Vec<&'static str> {
        let mut p = Vec::new();
        if self.damaged.is_some() {
            p.push("damaged");
        }
        if self.owner.is_none() {
            p.push("no owner_uuid");
        }
        if self.ram_mib.is_none() {
            p.push("no RAM");
        }
        if self.cap == Cap::Unknown {
            p.push("no cpu_cap");
        }
        p
    }
}

/// Locality hints (`near`/`far` name VMs of the same owner).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Locality {
    pub strict: bool,
    pub near: Vec<Uuid>,
    pub far: Vec<Uuid>,
}

/// Package `alloc_server_spread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Spread {
    MinRam,
    Random,
    MinOwner,
}

/// What is being placed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request {
    pub vm_uuid: Uuid,
    pub owner: Uuid,
    pub ram_mib: u64,
    pub disk_mib: u64,
    pub vcpus: u32,
    /// `Some(n)`: capped at n %; `None`: uncapped.
    pub cpu_cap: Option<u32>,
    pub traits: Map<String, Value>,
    /// One entry per network: the tags any of which the server must have.
    pub nic_tags: Vec<Vec<String>>,
    pub locality: Locality,
    /// Pinned server: hard filters still apply, scoring is skipped.
    pub server: Option<Uuid>,
    pub spread: Option<Spread>,
}

/// Tunables (Triton's SAPI `ALLOC_*` knobs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub filter_headnode: bool,
    pub filter_capness: bool,
    pub filter_large_servers: bool,
    pub vm_limit: usize,
    pub weight_ram: f64,
    pub weight_disk: f64,
    pub weight_random: f64,
    /// The nic tag fabric (overlay) networks are carried over: a request for it is
    /// explained as the underlay a fabric network needs.
    pub underlay_tag: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            filter_headnode: true,
            filter_capness: true,
            filter_large_servers: true,
            vm_limit: 224,
            weight_ram: 2.0,
            weight_disk: 1.0,
            weight_random: 0.5,
            underlay_tag: None,
        }
    }
}

/// A record placement counted but that needs an operator's attention.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    pub server: Uuid,
    pub vm: Uuid,
    pub message: String,
}

/// Why one server was not chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub server: Uuid,
    pub hostname: String,
    pub step: &'static str,
    pub reason: String,
}

/// One pipeline step and how many servers were left after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub remaining: usize,
}

/// The chosen server and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub server: Uuid,
    pub steps: Vec<Step>,
    /// Servers dropped on the way (also when placement succeeded).
    pub rejected: Vec<Rejection>,
    pub warnings: Vec<Warning>,
}

/// Nothing fits: every server's rejection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NoFit {
    pub rejected: Vec<Rejection>,
    pub warnings: Vec<Warning>,
}

impl NoFit {
    /// Triton's message prefix, then every server's reason.
    pub fn message(&self) -> String {
        if self.rejected.is_empty() {
            return "No compute resources available: there are no servers".into();
        }
        let parts: Vec<String> = self.rejected.iter().map(|r| format!("{} ({}): {}", r.hostname, r.server, r.reason)).collect();
        format!("No compute resources available: {}", parts.join("; "))
    }
}

/// What a server has left, after the VMs counted on it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Unreserved {
    pub ram_mib: f64,
    pub disk_mib: f64,
    /// Centi-CPUs left for capped VMs.
    pub cpu: f64,
}

/// RAM, disk and CPU a server has left (§5.5 with Nereid's cap semantics).
pub fn unreserved(s: &Server) -> Unreserved {
    let ram_total = s.ram_mib as f64 * (1.0 - s.reservation_ratio) * s.ratios.ram;
    let ram_used: u64 = s.vms.iter().filter_map(|v| v.ram_mib).sum();
    let disk_used: u64 = s.vms.iter().filter_map(|v| v.disk_mib).sum();
    let cpu_used: f64 = s.vms.iter().map(|v| if let Cap::Capped(c) = v.cap { f64::from(c) / s.ratios.cpu } else { 0.0 }).sum();
    Unreserved {
        ram_mib: ram_total - ram_used as f64,
        disk_mib: s.disk_mib as f64 * s.ratios.disk - disk_used as f64,
        cpu: f64::from(s.cpus) * 100.0 - cpu_used,
    }
}

/// Warnings for records that are damaged, incomplete or suspect (named so an operator can
/// repair them).
fn warnings(servers: &[Server]) -> Vec<Warning> {
    servers.iter().flat_map(server_warnings).collect()
}

/// One server's warnings (see [`warnings`]); a [`Fleet`] keeps them per server.
pub(crate) fn server_warnings(s: &Server) -> Vec<Warning> {
    let mut out = Vec::new();
    for v in s.vms.iter().filter(|v| v.source == Source::Record) {
        // Only records that need attention cost anything here (this runs per placement).
        if v.damaged.is_none() && !v.suspect && v.problems().is_empty() {
            continue;
        }
        let counted = if v.on_server {
            "counted as the server reports it".to_string()
        } else if let Some(r) = v.ram_mib {
            format!("not reported by the server, so counted as the record says ({r} MiB RAM)")
        } else {
            "not on the server, so counted as using nothing".to_string()
        };
        let message = if let Some(err) = &v.damaged {
            format!(
                "VM record {} on {} is damaged ({err}); {counted}; repair it with PUT /vms/{} or remove it with DELETE /vms/{}",
                v.uuid, s.hostname, v.uuid, v.uuid
            )
        } else if !v.problems().is_empty() {
            format!(
                "VM record {} on {} is incomplete ({}); {counted}; repair it with GET /vms/{}?sync=true or PUT /vms/{}",
                v.uuid,
                s.hostname,
                v.problems().join(", "),
                v.uuid,
                v.uuid
            )
        } else if v.suspect {
            format!(
                "VM record {} on {} is not in the server's inventory; {counted}; check it with GET /vms/{}?sync=true",
                v.uuid, s.hostname, v.uuid
            )
        } else {
            continue;
        };
        out.push(Warning { server: s.uuid, vm: v.uuid, message });
    }
    out
}

/// What the filters and scorers need of one server, computed once per server (per
/// [`allocate`] call, or per [`Fleet::upsert`]) instead of once per filter. Owners are
/// not kept: [`hosts_owner`] scans the VMs, which costs no more than a lookup at 20 VMs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub free: Unreserved,
    /// VMs counted against the `vm count` limit (a reservation for a VM that also has a
    /// record or is reported counts once).
    pub vm_count: usize,
    /// The first VM (in the server's order) explicitly uncapped / capped: what the capness
    /// rule names.
    pub first_uncapped: Option<Uuid>,
    pub first_capped: Option<Uuid>,
}

impl Summary {
    /// One pass over the server's VMs, allocating nothing (this runs for every server on
    /// every [`allocate`]).
    pub fn of(s: &Server) -> Summary {
        // A reservation for a VM that also has a record or is reported counts once.
        let vm_count = s
            .vms
            .iter()
            .filter(|v| v.source != Source::Reservation || !s.vms.iter().any(|o| o.uuid == v.uuid && o.source != Source::Reservation))
            .count();
        Summary {
            free: unreserved(s),
            vm_count,
            first_uncapped: s.vms.iter().find(|v| v.cap == Cap::Uncapped).map(|v| v.uuid),
            first_capped: s.vms.iter().find(|v| matches!(v.cap, Cap::Capped(_))).map(|v| v.uuid),
        }
    }
}

/// Whether `owner` has VMs on the server.
pub(crate) fn hosts_owner(s: &Server, owner: &Uuid) -> bool {
    s.vms.iter().any(|v| v.owner == Some(*owner))
}

/// A server with its summary: what filters and scorers see.
pub(crate) type Seen<'a> = (&'a Server, &'a Summary);

/// The biggest users of one resource on a server, named for an explanation: each VM's
/// share, with whether it is a reservation, a suspect record or a damaged one.
pub fn top_users(s: &Server, resource: impl Fn(&VmUsage) -> Option<f64>, unit: &str) -> String {
    const SHOWN: usize = 5;
    let mut users: Vec<(&VmUsage, f64)> = s.vms.iter().filter_map(|v| resource(v).filter(|x| *x > 0.0).map(|x| (v, x))).collect();
    if users.is_empty() {
        return String::new();
    }
    users.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.uuid.cmp(&b.0.uuid)));
    let mut parts: Vec<String> = users
        .iter()
        .take(SHOWN)
        .map(|(v, x)| {
            let what = match (v.source, &v.damaged, v.suspect) {
                (Source::Reservation, _, _) => " (reserved for a job in flight)".to_string(),
                (Source::ServerOnly, _, _) => " (running without a record)".to_string(),
                (_, Some(_), _) => " (damaged record)".to_string(),
                (_, None, true) => " (record the server does not report: suspect)".to_string(),
                _ => String::new(),
            };
            format!("VM {} {x:.0} {unit}{what}", v.uuid)
        })
        .collect();
    if users.len() > SHOWN {
        parts.push(format!("and {} more", users.len() - SHOWN));
    }
    format!("; taken by {}", parts.join(", "))
}

/// Chooses a server for `req`, or explains why none fits.
pub fn allocate(servers: &[Server], req: &Request, cfg: &Config, rng: &mut impl Rng) -> Result<Placement, NoFit> {
    let summaries: Vec<Summary> = servers.iter().map(Summary::of).collect();
    let all: Vec<Seen<'_>> = servers.iter().zip(&summaries).collect();
    allocate_seen(&all, warnings(servers), req, cfg, rng)
}

/// [`allocate`] over servers whose summaries are known (a [`Fleet`] keeps them).
pub(crate) fn allocate_seen(
    servers: &[Seen<'_>],
    warnings: Vec<Warning>,
    req: &Request,
    cfg: &Config,
    rng: &mut impl Rng,
) -> Result<Placement, NoFit> {
    let mut set: Vec<Seen<'_>> = servers.to_vec();
    let mut rejected = Vec::new();
    let mut steps = vec![Step { step: "received", remaining: set.len() }];
    for (name, filter) in filters::HARD {
        set.retain(|(s, sum)| match filter(s, sum, req, cfg) {
            Ok(()) => true,
            Err(reason) => {
                rejected.push(Rejection { server: s.uuid, hostname: s.hostname.clone(), step: name, reason });
                false
            }
        });
        steps.push(Step { step: name, remaining: set.len() });
        if set.is_empty() {
            return Err(NoFit { rejected, warnings });
        }
    }
    for (name, prefer) in filters::SOFT {
        let kept = prefer(&set, req, cfg);
        if !kept.is_empty() {
            set = kept;
        }
        steps.push(Step { step: name, remaining: set.len() });
    }
    let chosen = if req.server.is_some() || set.len() == 1 { set[0].0.uuid } else { score::pick(&set, req, cfg, rng) };
    steps.push(Step { step: "pick", remaining: 1 });
    Ok(Placement { server: chosen, steps, rejected, warnings })
}

/// Owners with VMs on a server.
pub fn owners_on(s: &Server) -> BTreeSet<Uuid> {
    s.vms.iter().filter_map(|v| v.owner).collect()
}
