//! The provision job: NICs from NAPI, the VM on its server, wait for it to run.
//!
//! ```text
//!   reserve ─► nics ─► definition ─► create ─► wait ─► finish
//!   undo:  mark failed,   free NICs,        delete the VM
//!          release the    and addresses     on the server
//!          reservation
//! ```
//!
//! CreateVm has already placed the VM and written its record (`provisioning`), its
//! reservation and this job in one transaction.

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::{Desired, NicDef};
use nereid_types::job::Job;
use nereid_types::network::Network;
use nereid_types::nic::Nic;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Seen, Step, StepResultT, data, param, wait_for_server};
use crate::app::App;

/// One network a new VM asked for, resolved at CreateVm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetRequest {
    /// A network or a pool.
    pub target: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub primary: bool,
    #[serde(default)]
    pub flags: Map<String, Value>,
}

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![Box::new(Reserve), Box::new(Nics), Box::new(Define), Box::new(Create), Box::new(Wait), Box::new(Finish)]
}

fn server(job: &Job) -> Result<Uuid, String> {
    job.server_uuid.ok_or_else(|| "the job has no server".to_string())
}

/// The MAC a VM's NIC number `i` gets: derived from the VM, so re-running the step
/// finds the NIC it made before instead of making another. SHA-256, not the standard
/// library's hasher, whose output may change with any Rust release (and with it the MAC
/// a job re-run after an upgrade looks for).
pub fn nic_mac(vm: Uuid, i: usize) -> String {
    nic_mac_candidate(vm, i, 0)
}

/// Candidate `k` for NIC `i` of `seed`: 24 bits of hash under NAPI's `90:b8:d0` prefix,
/// so two VMs' first candidates collide once in 16.7 million pairs — certain somewhere
/// in a cloud of a few thousand NICs (one in fifteen runs of 1,500 provisions). The next
/// candidates are the way around a MAC another VM holds, still derived, so a re-run
/// walks the same sequence and finds what it made. Candidate 0 is [`nic_mac`]'s, pinned.
fn nic_mac_candidate(seed: Uuid, i: usize, k: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"nereid-nic\0");
    h.update(seed.as_bytes());
    h.update((i as u64).to_le_bytes());
    if k > 0 {
        h.update(k.to_le_bytes());
    }
    let x = h.finalize();
    nereid_types::mac::Mac([0x90, 0xb8, 0xd0, x[0], x[1], x[2]]).to_string()
}

/// How many derived MACs a NIC tries before giving up: eight collisions in a row need a
/// cloud of millions of NICs.
const MAC_CANDIDATES: u32 = 8;

/// NIC `i` of the job's VM on `req`'s network, with a MAC derived from `seed` (the VM for
/// a provision, the job for `add_nics`): the NIC this VM already has under any of the
/// candidate MACs (made before a crash, or by an earlier drive of the job), else a new
/// one under the first candidate no other VM's NIC holds. The VM's own NICs are looked
/// at first, all candidates at once: which candidates are free may change between runs
/// (another VM's NIC deleted meanwhile), which NIC is this VM's does not. A store error
/// fails the step (the job retries it) rather than being taken for "no such NIC".
pub async fn derived_nic(
    app: &App,
    job: &Job,
    (owner, cn): (Uuid, Uuid),
    req: &NetRequest,
    (seed, i): (Uuid, usize),
    fields: &[(&'static str, Value)],
) -> Result<Nic, String> {
    let candidates: Vec<String> = (0..MAC_CANDIDATES).map(|k| nic_mac_candidate(seed, i, k)).collect();
    if let Some(n) = own_nic(app, job, &candidates).await? {
        return Ok(n);
    }
    // Each candidate is simply asked for: NAPI refuses a MAC another NIC holds (one read
    // fewer per NIC than looking first, in the common case of no collision).
    for mac in &candidates {
        let mut with_mac = fields.to_vec();
        with_mac.push(("mac", json!(mac)));
        match make_nic(app, job, owner, cn, req, with_mac).await {
            Ok(n) => return Ok(n),
            // Taken: by another VM's NIC (next candidate), or by another drive of this
            // job since the look at the VM's own NICs (that NIC is ours).
            Err(e) if e.errors.iter().any(|f| f.field == "mac" && f.code == "Duplicate") => {
                if let Some(n) = own_nic(app, job, std::slice::from_ref(mac)).await? {
                    return Ok(n);
                }
            }
            Err(e) => return Err(format!("network {}: {}", req.target, e.message)),
        }
    }
    Err(format!("NIC {i}: all {MAC_CANDIDATES} MACs derived for it belong to other VMs' NICs"))
}

/// The job's VM's NIC under one of these MACs, if it has one.
async fn own_nic(app: &App, job: &Job, macs: &[String]) -> Result<Option<Nic>, String> {
    use nereid_store::{Filter, ListQuery};
    let q = ListQuery::filter(Filter::eq("belongs_to_uuid", job.vm_uuid.to_string()));
    let mine: Vec<Nic> = app.list(crate::buckets::NICS.name, &q).await.map_err(|e| format!("the VM's NICs: {}", e.message))?;
    Ok(mine.into_iter().find(|n| macs.iter().any(|m| crate::app::vm_nics::same_mac(m, &n.mac))))
}

/// The vmadm NIC a VM gets from a NAPI NIC.
pub fn nic_def(n: &Nic, net: Option<&Network>, index: usize, model: &str) -> NicDef {
    NicDef {
        mac: n.mac.clone(),
        interface: format!("net{index}"),
        ip: n.ip.clone(),
        netmask: net.map(|x| x.netmask.clone()),
        gateway: net.and_then(|x| x.gateway.clone()),
        vlan_id: net.map(|x| x.vlan_id).or(n.vlan_id).unwrap_or(0),
        nic_tag: net.map(|x| x.nic_tag.clone()).or(n.nic_tag.clone()).unwrap_or_default(),
        mtu: net.map(|x| x.mtu).unwrap_or(1500),
        primary: n.primary,
        model: model.to_string(),
        network_uuid: n.network_uuid,
        resolvers: net.map(|x| x.resolvers.clone()).unwrap_or_default(),
        routes: net.and_then(|x| x.routes.clone()),
        allow_mac_spoofing: n.flags.get("allow_mac_spoofing").copied().unwrap_or(false),
        allow_ip_spoofing: n.flags.get("allow_ip_spoofing").copied().unwrap_or(false),
        allow_dhcp_spoofing: n.flags.get("allow_dhcp_spoofing").copied().unwrap_or(false),
        allow_unfiltered_promisc: n.flags.get("allow_unfiltered_promisc").copied().unwrap_or(false),
        dhcp_server: net.is_none_or(|x| x.dhcp_server),
        vni: net.and_then(|x| x.vni),
        internet_nat: net.is_some_and(|x| x.internet_nat),
    }
}

/// Asks NAPI for a `provisioning` NIC of the job's VM on `req`'s network (with its IP
/// and flags), owned by `owner`, on server `cn`; `fields` adds the rest (`primary`, and
/// `mac` or `model` when the caller sets them; NAPI picks a MAC otherwise).
async fn make_nic(
    app: &App,
    job: &Job,
    owner: Uuid,
    cn: Uuid,
    req: &NetRequest,
    fields: impl IntoIterator<Item = (&'static str, Value)>,
) -> Result<Nic, nereid_types::error::ApiError> {
    let mut body = json!({"owner_uuid": owner, "belongs_to_uuid": job.vm_uuid, "belongs_to_type": "zone", "cn_uuid": cn,
        "state": "provisioning", "network_uuid": req.target});
    for (k, v) in fields {
        body[k] = v;
    }
    if let Some(ip) = &req.ip {
        body["ip"] = json!(ip);
    }
    for (k, v) in &req.flags {
        body[k] = v.clone();
    }
    let Value::Object(m) = body else {
        return Err(nereid_types::error::ApiError::internal("bad NIC body"));
    };
    app.create_nic(&m).await
}

/// The capacity claimed at CreateVm; undone by releasing it and marking the VM failed.
struct Reserve;

#[async_trait]
impl Step for Reserve {
    fn name(&self) -> &'static str {
        "reserve"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let explanation = job.params.get("placement").cloned().unwrap_or(Value::Null);
        let warnings = explanation.get("warnings").and_then(Value::as_array).map(|w| w.len()).unwrap_or(0);
        // Named at CreateVm; a job from before that reads the server's record.
        let host = match explanation.get("hostname").and_then(Value::as_str) {
            Some(h) => h.to_string(),
            None => app.get_server_record(server(job)?).await.map(|(s, _)| s.hostname).unwrap_or_default(),
        };
        Ok(format!("placed on {host} ({}); {warnings} warning(s) about other records", server(job)?))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        app.release_reservations(job.vm_uuid, Some(job.uuid)).await.map_err(|e| e.message)?;
        let why = job.error.clone().unwrap_or_else(|| "the provision failed".into());
        app.modify_vm(job.vm_uuid, |vm| {
            vm.state = Some("failed".into());
            vm.zone_state = Some("failed".into());
            vm.error = Some(why.clone());
            vm.last_modified = Some(nereid_types::time::now_iso());
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        Ok("reservation released; VM marked failed".into())
    }
}

/// NICs on the requested networks, from NAPI.
struct Nics;

#[async_trait]
impl Step for Nics {
    fn name(&self) -> &'static str {
        "nics"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let nets: Vec<NetRequest> = param(job, "networks").unwrap_or_default();
        let owner = job.owner_uuid.ok_or("the job has no owner")?;
        let cn = server(job)?;
        let mut macs: Vec<String> = data(job, "macs").unwrap_or_default();
        for (i, req) in nets.iter().enumerate() {
            if macs.len() > i {
                continue;
            }
            let nic = derived_nic(app, job, (owner, cn), req, (job.vm_uuid, i), &[("primary", json!(req.primary))]).await?;
            macs.push(nic.mac.clone());
            job.data.insert("macs".into(), json!(macs));
        }
        Ok(format!("{} NIC(s): {}", macs.len(), macs.join(", ")))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let n = app.free_vm_nics(job.vm_uuid).await.map_err(|e| e.message)?;
        Ok(format!("{n} NIC(s) deleted and their addresses freed"))
    }
}

/// The VM record gets its NICs and resolvers: the definition the server will run.
struct Define;

#[async_trait]
impl Step for Define {
    fn name(&self) -> &'static str {
        "definition"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let macs: Vec<String> = data(job, "macs").unwrap_or_default();
        let mut nics = Vec::new();
        for mac in &macs {
            nics.push(app.get_nic(mac).await.map_err(|e| e.message)?.0);
        }
        let nets = app.networks_of(&nics.iter().collect::<Vec<_>>()).await.map_err(|e| e.message)?;
        let model: String = param(job, "nic_model").unwrap_or_else(|| "virtio".into());
        let defs: Vec<NicDef> =
            nics.iter().enumerate().map(|(i, n)| nic_def(n, n.network_uuid.and_then(|u| nets.get(&u)), i, &model)).collect();
        let mut resolvers: Vec<String> = Vec::new();
        for n in &nics {
            if let Some(net) = n.network_uuid.and_then(|u| nets.get(&u)) {
                for r in &net.resolvers {
                    if !resolvers.contains(r) {
                        resolvers.push(r.clone());
                    }
                }
            }
        }
        let primary_ip = defs.iter().find(|d| d.primary).or(defs.first()).and_then(|d| d.ip.clone());
        app.modify_vm(job.vm_uuid, |vm| {
            vm.nics = Some(defs.clone());
            if vm.resolvers.as_ref().is_none_or(|r| r.is_empty()) {
                vm.resolvers = Some(resolvers.clone());
            }
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        Ok(format!("definition has {} NIC(s), primary IP {}", defs.len(), primary_ip.unwrap_or_else(|| "none".into())))
    }
}

/// The server is asked to create (and, with autoboot, start) the VM.
struct Create;

#[async_trait]
impl Step for Create {
    fn name(&self) -> &'static str {
        "create"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
        let state = if vm.autoboot == Some(false) { Desired::Stopped } else { Desired::Running };
        let e = vm.ensure(state, None)?;

        // What the wait step waits for, so it need not read the record again.
        job.data.insert("want".into(), json!(if state == Desired::Stopped { "stopped" } else { "running" }));
        let st = app.agent_ensure(server(job)?, &e).await.map_err(|e| e.to_string())?;
        Ok(format!("server accepted the VM ({})", st.state))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        // The record is the job's again while it unwinds (reports of the deletion must
        // not turn it into a destroyed VM: the provision failed).
        app.modify_vm(job.vm_uuid, |vm| {
            if vm.state.as_deref() != Some("failed") {
                vm.state = Some("provisioning".into());
            }
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        app.agent_delete_and_wait(server(job)?, job.vm_uuid, app.cfg.step_deadline).await.map_err(|e| e.to_string())?;
        Ok("VM deleted from its server".into())
    }
}

/// Until the server reports the VM running (or stopped, without autoboot).
struct Wait;

#[async_trait]
impl Step for Wait {
    fn name(&self) -> &'static str {
        "wait"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.provision_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let want: String = match data(job, "want") {
            Some(w) => w,
            // A job the create step of an older version ran.
            None => {
                let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
                if vm.autoboot == Some(false) { "stopped" } else { "running" }.to_string()
            }
        };
        let want = want.as_str();
        let st = wait_for_server(app, job, |st| match st.state.as_str() {
            s if s == want => Seen::Done,
            "failed" => {
                Seen::Failed(format!("the server could not run the VM: {}", st.error.clone().unwrap_or_else(|| "no reason given".into())))
            }
            _ => Seen::Pending,
        })
        .await?;
        // What the finish step records, so it need not ask the server again straight away.
        job.data.insert("seen".into(), json!(Sighting::now(st)));
        Ok(format!("VM is {want}"))
    }
}

/// What the wait step saw the server report, for the finish step.
#[derive(Serialize, Deserialize)]
struct Sighting {
    state: String,
    boot_timestamp: Option<String>,
    /// When (ms since the epoch, by this process's clock).
    at: i64,
    /// Which process saw it ([`PROCESS`]).
    by: u64,
}

impl Sighting {
    /// What this process sees the server report now.
    fn now(st: nereid_types::agent::VmStatus) -> Sighting {
        Sighting { state: st.state, boot_timestamp: st.boot_timestamp, at: nereid_types::time::now_ms(), by: *PROCESS }
    }

    /// Whether the finish step may record it without asking the server again: seen by
    /// this very process (another headnode's clock, or this one's before a restart, is
    /// never compared with ours) and under [`SEEN_FOR_MS`] ago by its clock.
    fn recent(&self, now_ms: i64) -> bool {
        self.by == *PROCESS && (0..SEEN_FOR_MS).contains(&(now_ms - self.at))
    }
}

/// How old the wait step's sighting may be for the finish step to record it.
const SEEN_FOR_MS: i64 = 5_000;

/// This process, among every headnode process that may drive a job (random at start).
static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(rand::random);

/// The record says what the server runs; the reservation is released.
struct Finish;

#[async_trait]
impl Step for Finish {
    fn name(&self) -> &'static str {
        "finish"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let cn = server(job)?;
        let (state, boot) = match data::<Sighting>(job, "seen").filter(|s| s.recent(nereid_types::time::now_ms())) {
            Some(seen) => (seen.state, seen.boot_timestamp),
            // An older job, or one resumed elsewhere or after a restart: ask again.
            None => {
                let st =
                    app.agent_get_patient(cn, job.vm_uuid).await.map_err(|e| e.to_string())?.ok_or("the server no longer has the VM")?;
                (st.state, st.boot_timestamp)
            }
        };
        let state = if state == "running" { "running" } else { "stopped" };
        app.settle_provision(job.vm_uuid, job.uuid, state, |vm| {
            vm.state = Some(state.into());
            vm.zone_state = Some(state.into());
            vm.boot_timestamp = boot.clone().or(vm.boot_timestamp.clone());
            vm.error = None;
            vm.last_modified = Some(nereid_types::time::now_iso());
        })
        .await
        .map_err(|e| e.message)?;
        Ok(format!("VM {state}; reservation released"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_macs_are_stable_across_builds_and_distinct_per_nic() {
        let vm = Uuid::parse_str("6a7e59f5-4ddc-4b39-9b1c-2d5d3e0d9a01").unwrap_or_default();
        // Pinned: these must never change (a re-run job looks its NIC up by this MAC).
        assert_eq!(nic_mac(vm, 0), nic_mac(vm, 0));
        assert_eq!(nic_mac(Uuid::nil(), 0), PINNED_NIL_0);
        assert_ne!(nic_mac(vm, 0), nic_mac(vm, 1));
        assert!(nic_mac(vm, 3).starts_with("90:b8:d0:"));
    }

    #[test]
    fn a_nics_later_candidates_are_derived_distinct_and_start_with_the_pinned_one() {
        let vm = Uuid::parse_str("6a7e59f5-4ddc-4b39-9b1c-2d5d3e0d9a01").unwrap_or_default();
        assert_eq!(nic_mac_candidate(vm, 0, 0), nic_mac(vm, 0));
        let all: std::collections::BTreeSet<String> =
            (0..2).flat_map(|i| (0..MAC_CANDIDATES).map(move |k| nic_mac_candidate(vm, i, k))).collect();
        assert_eq!(all.len(), 2 * MAC_CANDIDATES as usize, "{all:?}");
        assert_eq!(nic_mac_candidate(vm, 1, 5), nic_mac_candidate(vm, 1, 5));
    }

    /// SHA-256("nereid-nic\0" ‖ 16 zero bytes ‖ 0u64 LE) starts f5 9e 5e (checked with Python's hashlib).
    const PINNED_NIL_0: &str = "90:b8:d0:f5:9e:5e";

    #[test]
    fn only_this_processs_recent_sightings_are_recorded_without_asking() {
        let at = 1_000_000;
        let seen = |at, by| Sighting { state: "running".into(), boot_timestamp: None, at, by };
        assert!(seen(at, *PROCESS).recent(at + 10));
        assert!(!seen(at, *PROCESS).recent(at + SEEN_FOR_MS), "too old");
        assert!(!seen(at, *PROCESS).recent(at - 10), "a clock that went back proves nothing");
        assert!(!seen(at, PROCESS.wrapping_add(1)).recent(at + 10), "another process (headnode, or before a restart)");
        // What the wait step records is what the finish step reads back.
        let st: nereid_types::agent::VmStatus =
            serde_json::from_value(json!({"uuid": Uuid::nil(), "state": "running", "generation": 2})).unwrap();
        let back: Sighting = serde_json::from_value(json!(Sighting::now(st))).expect("the recorded sighting reads back");
        assert!(back.recent(nereid_types::time::now_ms()) && back.state == "running");
    }
}
