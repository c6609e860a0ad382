//! Placement: building the allocator's view from the store, and claiming capacity.
//!
//! The view is *reconciled*: VM records, what each server reports it runs (its last
//! heartbeat), and open reservations. A record the server does not report is counted as
//! the record says — unless the record is incomplete (a "ghost"), which then counts as
//! nothing and is named in a warning. A record that does not decode (*damaged*) counts as
//! the server reports it, else as far as its sizes can be read, and is named. A record
//! older than a minute that the server's inventory lacks is *suspect*: counted as it says,
//! and flagged wherever placement explains itself. A VM the server runs without a record
//! counts as the server reports it.
//!
//! Claiming: the decision is written in one transaction with a bump of the chosen
//! server's claim object, conditional on the generation the decision read. Two placements
//! decided from the same view of a server cannot both commit; the loser decides again.

use std::collections::{HashMap, HashSet};

use nereid_alloc::{Cap, Server as AServer, Source, Status, VmUsage};
use nereid_store::{Cond, Filter, ListQuery, Op};
use nereid_types::ApiError;
use nereid_types::damaged::Stored;
use nereid_types::server::Server;
use nereid_types::vm::{CapState, Vm};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::servers::HeartbeatRecord;
use super::{App, encode, store_error};
use crate::buckets::{RESERVATIONS, SERVER_CLAIMS, SERVERS};

/// Capacity held for an in-flight provision or resize (keyed by its job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub job_uuid: Uuid,
    pub vm_uuid: Uuid,
    pub server_uuid: Uuid,
    pub owner_uuid: Uuid,
    pub ram_mib: u64,
    pub disk_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cap: Option<u32>,
    /// `provision` or `resize` (a resize holds only the growth).
    pub kind: String,
}

/// The allocator's view of every server, and each server's claim generation.
pub struct View {
    pub servers: Vec<AServer>,
    pub claims: HashMap<Uuid, i64>,
}

/// Active VM records (an absent state counts, as in Moray).
pub fn active_filter() -> Filter {
    Filter::Not(Box::new(Filter::Or(vec![Filter::eq("state", "destroyed"), Filter::eq("state", "failed")])))
}

fn cap_of(vm: &Vm, reported: Option<&nereid_types::agent::VmStatus>) -> Cap {
    match vm.cap() {
        CapState::Capped(c) => Cap::Capped(c),
        CapState::Uncapped => Cap::Uncapped,
        CapState::Unknown => match reported {
            Some(r) => r.cpu_cap.map(Cap::Capped).unwrap_or(Cap::Uncapped),
            None => Cap::Unknown,
        },
    }
}

/// How long after its creation a record must appear in its server's inventory before a
/// record the inventory lacks is *suspect* (the provision's last report may lag).
const REPORT_GRACE_MS: i64 = 60_000;

/// Builds one server's view (pure). Damaged records are counted too: as the server reports
/// them, else as far as their sizes can be read, and named.
pub fn server_view(
    s: &Server,
    hb: Option<&HeartbeatRecord>,
    status: Status,
    records: &[&Stored<Vm>],
    reservations: &[&Reservation],
) -> AServer {
    let reported: HashMap<Uuid, &nereid_types::agent::VmStatus> =
        hb.map(|h| h.vms.iter().filter(|v| v.state != "destroyed").map(|v| (v.uuid, v)).collect()).unwrap_or_default();
    // Records older than this that the inventory lacks are suspect.
    let cutoff = hb.and_then(|h| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(h.at_ms - REPORT_GRACE_MS) * 1_000_000).ok().map(nereid_types::time::iso)
    });
    let reserved_vms: HashSet<Uuid> = reservations.iter().filter(|r| r.kind == "provision").map(|r| r.vm_uuid).collect();
    let mut vms = Vec::new();
    let mut seen = HashSet::new();
    for entry in records {
        let usage = match entry {
            Stored::Ok(vm) => {
                let rep = reported.get(&vm.uuid).copied();
                let complete = vm.is_complete();
                let old = cutoff.as_deref().is_some_and(|c| vm.create_timestamp.as_deref().is_none_or(|t| t < c));
                VmUsage {
                    uuid: vm.uuid,
                    owner: vm.owner_uuid,
                    ram_mib: if complete { vm.ram_mib() } else { rep.and_then(|r| r.ram) },
                    disk_mib: if complete { vm.disk_mib() } else { rep.and_then(|r| r.disk_mib) },
                    cap: cap_of(vm, rep),
                    source: Source::Record,
                    on_server: rep.is_some(),
                    suspect: rep.is_none() && old && vm.state.as_deref() != Some("provisioning"),
                    damaged: None,
                }
            }
            Stored::Damaged(d) => {
                let Some(uuid) = d.key_uuid() else { continue };
                let rep = reported.get(&uuid).copied();
                VmUsage {
                    uuid,
                    owner: d.uuid_field("owner_uuid").or(rep.and_then(|r| r.owner_uuid)),
                    ram_mib: rep.and_then(|r| r.ram).or_else(|| d.u64_field("ram").or(d.u64_field("max_physical_memory"))),
                    disk_mib: rep.and_then(|r| r.disk_mib).or_else(|| d.u64_field("quota").map(|q| q.saturating_mul(1024))),
                    cap: match rep {
                        Some(r) => r.cpu_cap.map(Cap::Capped).unwrap_or(Cap::Uncapped),
                        None => Cap::Unknown,
                    },
                    source: Source::Record,
                    on_server: rep.is_some(),
                    suspect: rep.is_none() && hb.is_some(),
                    damaged: Some(d.error.clone()),
                }
            }
        };
        seen.insert(usage.uuid);
        if reserved_vms.contains(&usage.uuid) {
            continue;
        }
        vms.push(usage);
    }
    for r in reservations {
        seen.insert(r.vm_uuid);
        vms.push(reservation_usage(r, reported.contains_key(&r.vm_uuid)));
    }
    for (id, rep) in &reported {
        if !seen.contains(id) {
            vms.push(VmUsage {
                uuid: *id,
                owner: rep.owner_uuid,
                ram_mib: rep.ram,
                disk_mib: rep.disk_mib,
                cap: rep.cpu_cap.map(Cap::Capped).unwrap_or(Cap::Uncapped),
                source: Source::ServerOnly,
                on_server: true,
                suspect: false,
                damaged: None,
            });
        }
    }
    vms.sort_by_key(|v| v.uuid);
    let si = &s.sysinfo;
    AServer {
        uuid: s.uuid,
        hostname: s.hostname.clone(),
        setup: s.setup,
        status,
        reserved: s.reserved,
        reservoir: s.reservoir,
        headnode: s.headnode,
        traits: s.traits.clone(),
        nic_tags: nereid_types::sysinfo::nic_tags(si),
        nic_tag_problems: hb
            .map(|h| h.problems.iter().filter(|p| !p.nic_tag.is_empty()).map(|p| (p.nic_tag.clone(), p.message.clone())).collect())
            .unwrap_or_default(),
        cpus: nereid_types::sysinfo::cpus(si).unwrap_or(1),
        ram_mib: s.ram,
        disk_mib: nereid_types::sysinfo::disk_mib(si).unwrap_or(0),
        reservation_ratio: s.reservation_ratio,
        ratios: s.overprovision_ratios,
        vms,
    }
}

impl App {
    /// Every server as placement sees it now.
    pub async fn placement_view(&self) -> Result<View, ApiError> {
        // Claims first: a placement that commits after this read bumps a claim, so a
        // decision made from records read afterwards can never commit on stale data.
        let claims = self.store.list(SERVER_CLAIMS.name, &ListQuery::all()).await.map_err(store_error)?;
        let claims: HashMap<Uuid, i64> = claims.into_iter().filter_map(|o| Some((Uuid::parse_str(&o.key).ok()?, o.generation))).collect();
        let servers: Vec<Server> = self.list(SERVERS.name, &ListQuery::all()).await?;
        let hbs = self.heartbeats().await?;
        let records = self.vm_entries_cached(&super::vms::placed_query()).await?;
        // Records no longer placed leave the cache of decoded ones.
        self.vm_cache.retain(&records);
        let reservations: Vec<Reservation> = self.list(RESERVATIONS.name, &ListQuery::all()).await?;
        let mut by_server: HashMap<Uuid, Vec<&Stored<Vm>>> = HashMap::new();
        for r in records.iter().map(|r| &**r) {
            if let Some(sv) = record_server(r) {
                by_server.entry(sv).or_default().push(r);
            }
        }
        let mut res_by_server: HashMap<Uuid, Vec<&Reservation>> = HashMap::new();
        for r in &reservations {
            res_by_server.entry(r.server_uuid).or_default().push(r);
        }
        let mut out = Vec::new();
        for s in &servers {
            let hb = hbs.get(&s.uuid);
            let (st, silent) = self.server_status(hb);
            let status = if st == "running" { Status::Running } else { Status::Unknown { silent_secs: silent } };
            let recs = by_server.remove(&s.uuid).unwrap_or_default();
            let res = res_by_server.remove(&s.uuid).unwrap_or_default();
            out.push(server_view(s, hb, status, &recs, &res));
        }
        Ok(View { servers: out, claims })
    }

    /// VM records counted on a server, damaged ones included.
    pub async fn vms_on(&self, server: Uuid) -> Result<Vec<Stored<Vm>>, ApiError> {
        self.vm_entries(&on_server_query(server)).await
    }
}

/// The active VM records on `server`.
fn on_server_query(server: Uuid) -> ListQuery {
    ListQuery::filter(Filter::and(vec![active_filter(), Filter::eq("server_uuid", server.to_string())]))
}

/// The server a record (damaged or not) names.
pub fn record_server(e: &Stored<Vm>) -> Option<Uuid> {
    match e {
        Stored::Ok(vm) => vm.server_uuid,
        Stored::Damaged(d) => d.uuid_field("server_uuid"),
    }
}

/// The op that claims capacity on `server`, conditional on the generation the decision saw.
pub fn claim_op(server: Uuid, seen: Option<i64>) -> Op {
    let cond = match seen {
        Some(g) => Cond::Generation(g),
        None => Cond::Absent,
    };
    Op::put(SERVER_CLAIMS.name, server.to_string(), json!({"server_uuid": server}), cond)
}

/// What a reservation counts on its server (`on_server`: the server already reports the VM).
pub fn reservation_usage(r: &Reservation, on_server: bool) -> VmUsage {
    VmUsage {
        uuid: r.vm_uuid,
        owner: Some(r.owner_uuid),
        ram_mib: Some(r.ram_mib),
        disk_mib: Some(r.disk_mib),
        cap: r.cpu_cap.map(Cap::Capped).unwrap_or(Cap::Uncapped),
        source: Source::Reservation,
        on_server,
        suspect: false,
        damaged: None,
    }
}

/// The op that records a reservation.
pub fn reservation_op(r: &Reservation) -> Op {
    Op::put(RESERVATIONS.name, r.job_uuid.to_string(), encode(r), Cond::Absent)
}

/// Triton's 409 with every server's reason (Nereid's addition: `errors` and `servers`).
pub fn no_fit_error(nf: &nereid_alloc::NoFit) -> ApiError {
    let errors = nf
        .rejected
        .iter()
        .map(|r| nereid_types::FieldError {
            field: r.server.to_string(),
            code: r.step.to_string(),
            message: format!("{}: {}", r.hostname, r.reason),
        })
        .collect();
    ApiError::conflict("NoAllocatableServersError", nf.message())
        .with_errors(errors)
        .with_extra("servers", json!(nf.rejected))
        .with_extra("warnings", json!(nf.warnings.iter().map(|w| w.message.clone()).collect::<Vec<_>>()))
}

/// A placement's explanation, for the job record and the CreateVm answer.
pub fn explain(p: &nereid_alloc::Placement) -> Value {
    json!({
        "server_uuid": p.server,
        "steps": p.steps,
        "rejected": p.rejected,
        "warnings": p.warnings.iter().map(|w| w.message.clone()).collect::<Vec<_>>(),
    })
}
