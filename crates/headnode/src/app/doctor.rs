//! `doctor`: every way the records can have drifted from reality, each finding with the
//! exact repair it calls for, and `--repair` applying the safe ones.
//!
//! ```text
//!   gather (store, heartbeats, image files) ──► diagnose (pure) ──► findings
//!                                                                  │ --repair: the safe ones
//!                                                                  ▼
//!                                   repair each (sync a VM, free a NIC/IP, drop a reservation),
//!                                   record it as a `repair` job, then diagnose again
//! ```
//!
//! Safe repairs only ever free what provably belongs to nothing, or ask the servers
//! (`sync`, which looks for a VM on every server before freeing anything and never frees a
//! VM with a live job). Everything else — damaged records, VMs running without a record,
//! silent servers, missing image files, stuck jobs — is reported with the manual repair.
//! A new check is a new arm in [`diagnose`] and, if it can be repaired safely, a [`Repair`].

use std::collections::{HashMap, HashSet};

use nereid_store::ListQuery;
use nereid_types::ApiError;
use nereid_types::damaged::{Damaged, Stored};
use nereid_types::image::Image;
use nereid_types::job::{Job, Phase, StepResult};
use nereid_types::nic::{IpRecord, Nic};
use nereid_types::server::Server;
use nereid_types::vm::{self, Vm};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::allocation::Reservation;
use super::servers::HeartbeatRecord;
use super::{App, encode, store_error};
use crate::buckets;

/// How long after its creation a VM must be in its server's inventory before its absence
/// is drift (the provision's last report may lag).
const GRACE_MS: i64 = 60_000;

/// Every kind of finding.
pub const KINDS: &[&str] = &[
    "damaged_record",
    "incomplete_vm",
    "vm_not_on_server",
    "vm_without_record",
    "orphan_nic",
    "orphan_ip",
    "orphan_reservation",
    "server_unknown",
    "image_file",
    "stuck_job",
];

/// A safe repair.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Repair {
    /// Ask the servers where the VM is (`GET /vms/{uuid}?sync=true`).
    SyncVm { vm: Uuid },
    /// Delete a NIC that belongs to no VM, freeing its address.
    DeleteNic { mac: String },
    /// Release an address held for a NIC or VM that does not exist.
    ReleaseIp { key: String },
    /// Drop capacity held for a job that has finished or does not exist.
    DeleteReservation { key: String },
}

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// What kind of drift (`damaged_record`, `incomplete_vm`, `vm_not_on_server`,
    /// `vm_without_record`, `orphan_nic`, `orphan_ip`, `orphan_reservation`,
    /// `server_unknown`, `image_file`, `stuck_job`).
    pub kind: &'static str,
    /// The record it is about (`vms/<uuid>`, `nics/<mac>`, …).
    pub subject: String,
    /// The VM it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_uuid: Option<Uuid>,
    pub message: String,
    /// The exact repair: what `--repair` does, or what the operator must do.
    pub repair: String,
    /// `--repair` applies it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe_repair: Option<Repair>,
}

/// What `doctor` found (and, with `repair`, did).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Repairs made, each with its outcome (with `repair` only).
    pub repairs: Vec<Value>,
    /// How many records of each kind were looked at.
    pub checked: Map<String, Value>,
}

/// Everything [`diagnose`] looks at, read once.
#[derive(Default)]
pub struct Snapshot {
    pub now_ms: i64,
    pub server_timeout_ms: i64,
    pub vms: Vec<Stored<Vm>>,
    pub servers: Vec<Server>,
    pub heartbeats: HashMap<Uuid, HeartbeatRecord>,
    pub nics: Vec<Stored<Nic>>,
    pub ips: Vec<(String, Stored<IpRecord>)>,
    pub reservations: Vec<(String, Stored<Reservation>)>,
    pub jobs: Vec<Stored<Job>>,
    /// Migrations that hold something (a target VM, a reservation, a source copy).
    pub migrations: Vec<nereid_types::migration::Migration>,
    /// Damaged records of buckets not otherwise checked.
    pub other_damaged: Vec<Damaged>,
    /// Active images whose file is missing or does not match its manifest: (image, why).
    pub bad_image_files: Vec<(Image, String)>,
}

fn damaged_finding(d: &Damaged) -> Finding {
    let vm_uuid = (d.bucket == "vms").then(|| d.key_uuid()).flatten();
    let repair = if d.bucket == "vms" {
        vm::damaged_repair(&d.key)
    } else {
        format!("read {}/{} and rewrite or remove it through its API (nothing reads it until then)", d.bucket, d.key)
    };
    Finding {
        kind: "damaged_record",
        subject: format!("{}/{}", d.bucket, d.key),
        vm_uuid,
        message: d.describe(),
        repair,
        safe_repair: None,
    }
}

/// Every inconsistency in a snapshot (pure).
pub fn diagnose(s: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    let live_job_vms: HashSet<Uuid> = s.jobs.iter().filter_map(|j| j.clone().ok()).filter(|j| !j.is_done()).map(|j| j.vm_uuid).collect();
    let jobs_by_id: HashMap<Uuid, &Job> =
        s.jobs.iter().filter_map(|j| if let Stored::Ok(j) = j { Some((j.uuid, j)) } else { None }).collect();
    let fresh = |server: Uuid| {
        s.heartbeats
            .get(&server)
            .filter(|h| s.now_ms - h.at_ms <= s.server_timeout_ms)
            .map(|h| h.vms.iter().filter(|v| v.state != "destroyed").map(|v| v.uuid).collect::<HashSet<Uuid>>())
    };
    let mut records: HashMap<Uuid, &Vm> = HashMap::new();
    let cutoff = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.now_ms - GRACE_MS) * 1_000_000)
        .map(nereid_types::time::iso)
        .unwrap_or_default();

    for e in &s.vms {
        let vm = match e {
            Stored::Ok(vm) => vm,
            Stored::Damaged(d) => {
                out.push(damaged_finding(d));
                continue;
            }
        };
        records.insert(vm.uuid, vm);
        let Some(server) = vm.server_uuid else { continue };
        if !vm.is_active() {
            continue;
        }
        let subject = format!("vms/{}", vm.uuid);
        if !vm.is_complete() {
            out.push(Finding {
                kind: "incomplete_vm",
                subject,
                vm_uuid: Some(vm.uuid),
                message: format!(
                    "VM record {} on server {server} lacks what every VM has (owner_uuid, brand or RAM): Triton's ghost record",
                    vm.uuid
                ),
                repair: format!(
                    "ask the servers where it is (GET /vms/{}?sync=true): found, it is filled in; found nowhere, it is marked destroyed",
                    vm.uuid
                ),
                safe_repair: Some(Repair::SyncVm { vm: vm.uuid }),
            });
            continue;
        }
        let settled = matches!(vm.state.as_deref(), Some("running" | "stopped"));
        let old = vm.create_timestamp.as_deref().is_none_or(|t| t < cutoff.as_str());
        if let Some(inv) = fresh(server)
            && settled
            && old
            && !inv.contains(&vm.uuid)
            && !live_job_vms.contains(&vm.uuid)
        {
            out.push(Finding {
                kind: "vm_not_on_server",
                subject,
                vm_uuid: Some(vm.uuid),
                message: format!("VM {} is {} in VMAPI, but its server {server} does not run it", vm.uuid, vm.state.as_deref().unwrap_or("")),
                repair: format!(
                    "ask the servers where it is (GET /vms/{}?sync=true): found on another server, the record moves there; found nowhere, it is marked destroyed and its NICs and capacity freed",
                    vm.uuid
                ),
                safe_repair: Some(Repair::SyncVm { vm: vm.uuid }),
            });
        }
    }
    let damaged_vm_keys: HashSet<Uuid> = s.vms.iter().filter_map(|e| e.damaged().and_then(Damaged::key_uuid)).collect();
    // Any server reporting a VM (even one silent now) means its addresses are in use.
    let reported: HashSet<Uuid> =
        s.heartbeats.values().flat_map(|h| h.vms.iter().filter(|v| v.state != "destroyed").map(|v| v.uuid)).collect();
    // A VM is held when a record has it (damaged or not) and it is not destroyed or failed,
    // or when a server runs it.
    let held = |vm: &Uuid| damaged_vm_keys.contains(vm) || records.get(vm).is_some_and(|v| v.is_active()) || reported.contains(vm);

    // VMs on servers that VMAPI does not know (reported, never deleted).
    for srv in &s.servers {
        let Some(inv) = fresh(srv.uuid) else { continue };
        let mut ids: Vec<&Uuid> = inv.iter().collect();
        ids.sort();
        for id in ids {
            let rec = records.get(id);
            let known_here = rec.is_some_and(|r| r.is_active() && r.server_uuid == Some(srv.uuid));
            // A migration's target (before its switch) and source (until finalize) hold
            // the VM on purpose.
            let migrating = s
                .migrations
                .iter()
                .any(|m| m.vm_uuid == *id && (m.source_server_uuid == srv.uuid || m.target_server_uuid == Some(srv.uuid)));
            if known_here || damaged_vm_keys.contains(id) || live_job_vms.contains(id) || migrating {
                continue;
            }
            let why = match rec {
                None => "has no VMAPI record".to_string(),
                Some(r) if !r.is_active() => format!("is {} in VMAPI", r.state.as_deref().unwrap_or("")),
                Some(r) => format!("is recorded on server {}", r.server_uuid.map(|u| u.to_string()).unwrap_or_else(|| "(none)".into())),
            };
            out.push(Finding {
                kind: "vm_without_record",
                subject: format!("servers/{}/vms/{id}", srv.uuid),
                vm_uuid: Some(*id),
                message: format!("server {} ({}) runs VM {id}, which {why}", srv.hostname, srv.uuid),
                repair: format!(
                    "never deleted automatically: inspect it with GET /servers/{}/vms/{id}; if it is the VM the record means, GET /vms/{id}?sync=true moves the record; if it should not run, remove it on the server",
                    srv.uuid
                ),
                safe_repair: None,
            });
        }
    }

    // NICs of VMs that are gone.
    let mut nic_macs = HashSet::new();
    for e in &s.nics {
        let nic = match e {
            Stored::Ok(n) => n,
            Stored::Damaged(d) => {
                out.push(damaged_finding(d));
                continue;
            }
        };
        nic_macs.insert(nereid_types::mac::Mac::parse(&nic.mac).map(|m| m.key()).unwrap_or_else(|_| nic.mac.clone()));
        if nic.belongs_to_type != "zone" || held(&nic.belongs_to_uuid) || live_job_vms.contains(&nic.belongs_to_uuid) {
            continue;
        }
        let why = match records.get(&nic.belongs_to_uuid) {
            None => "does not exist".to_string(),
            Some(v) => format!("is {}", v.state.as_deref().unwrap_or("")),
        };
        out.push(Finding {
            kind: "orphan_nic",
            subject: format!("nics/{}", nic.mac),
            vm_uuid: Some(nic.belongs_to_uuid),
            message: format!(
                "NIC {} ({}) belongs to VM {}, which {why}",
                nic.mac,
                nic.ip.as_deref().unwrap_or("no address"),
                nic.belongs_to_uuid
            ),
            repair: format!("delete NIC {} (DELETE /nics/{}), which frees its address", nic.mac, nic.mac.replace(':', "")),
            safe_repair: Some(Repair::DeleteNic { mac: nic.mac.clone() }),
        });
    }

    // Addresses held for NICs or VMs that are gone.
    for (key, e) in &s.ips {
        let ip = match e {
            Stored::Ok(ip) => ip,
            Stored::Damaged(d) => {
                out.push(damaged_finding(d));
                continue;
            }
        };
        let nic_gone = ip.nic.as_ref().is_some_and(|m| !nic_macs.contains(m));
        let vm_gone = !ip.reserved
            && ip.nic.is_none()
            && ip.belongs_to_type.as_deref() == Some("zone")
            && ip.belongs_to_uuid.is_some_and(|u| !held(&u) && !live_job_vms.contains(&u));
        if !(nic_gone || vm_gone) {
            continue;
        }
        let holder = match (&ip.nic, ip.belongs_to_uuid) {
            (Some(m), _) => format!("NIC {m}, which does not exist"),
            (None, Some(u)) => format!("VM {u}, which is gone"),
            _ => "nothing".into(),
        };
        out.push(Finding {
            kind: "orphan_ip",
            subject: format!("ips/{key}"),
            vm_uuid: ip.belongs_to_uuid,
            message: format!("address {} of network {} is held for {holder}", ip.ip, ip.network_uuid),
            repair: format!(
                "release address {} (it becomes free to provision{})",
                ip.ip,
                if ip.reserved { ", still reserved" } else { "" }
            ),
            safe_repair: Some(Repair::ReleaseIp { key: key.clone() }),
        });
    }

    // Capacity held for jobs that are over.
    for (key, e) in &s.reservations {
        let r = match e {
            Stored::Ok(r) => r,
            Stored::Damaged(d) => {
                out.push(damaged_finding(d));
                continue;
            }
        };
        if r.kind == "migration" {
            if s.migrations.iter().any(|m| m.id == r.job_uuid) {
                continue;
            }
            out.push(Finding {
                kind: "orphan_reservation",
                subject: format!("reservations/{key}"),
                vm_uuid: Some(r.vm_uuid),
                message: format!(
                    "{} MiB RAM and {} MiB disk are held on server {} for migration {} of VM {}, which holds nothing any more",
                    r.ram_mib, r.disk_mib, r.server_uuid, r.job_uuid, r.vm_uuid
                ),
                repair: "drop the reservation, giving the capacity back to placement".into(),
                safe_repair: Some(Repair::DeleteReservation { key: key.clone() }),
            });
            continue;
        }
        let why = match jobs_by_id.get(&r.job_uuid) {
            None => "does not exist".to_string(),
            Some(j) if j.is_done() => format!("{} already", j.execution),
            Some(_) => continue,
        };
        out.push(Finding {
            kind: "orphan_reservation",
            subject: format!("reservations/{key}"),
            vm_uuid: Some(r.vm_uuid),
            message: format!(
                "{} MiB RAM and {} MiB disk are held on server {} for job {} of VM {}, which {why}",
                r.ram_mib, r.disk_mib, r.server_uuid, r.job_uuid, r.vm_uuid
            ),
            repair: "drop the reservation, giving the capacity back to placement".into(),
            safe_repair: Some(Repair::DeleteReservation { key: key.clone() }),
        });
    }

    for srv in &s.servers {
        let silent = s.heartbeats.get(&srv.uuid).map(|h| (s.now_ms - h.at_ms) / 1000);
        if s.heartbeats.get(&srv.uuid).is_some_and(|h| s.now_ms - h.at_ms <= s.server_timeout_ms) {
            continue;
        }
        out.push(Finding {
            kind: "server_unknown",
            subject: format!("servers/{}", srv.uuid),
            vm_uuid: None,
            message: match silent {
                Some(secs) => format!("server {} ({}) has not sent a heartbeat for {secs} s: placement skips it", srv.hostname, srv.uuid),
                None => format!("server {} ({}) has never sent a heartbeat: placement skips it", srv.hostname, srv.uuid),
            },
            repair: format!(
                "start `nereid agent` on {} (or check that it reaches the headnode); if the server is gone for good, destroy or move its VMs and DELETE /servers/{}",
                srv.hostname, srv.uuid
            ),
            safe_repair: None,
        });
    }

    for (img, why) in &s.bad_image_files {
        out.push(Finding {
            kind: "image_file",
            subject: format!("images/{}", img.uuid),
            vm_uuid: None,
            message: format!("image {} ({}): {why}; VMs cannot be provisioned from it", img.label(), img.uuid),
            repair: format!("upload the file again (PUT /images/{}/file) or disable the image", img.uuid),
            safe_repair: None,
        });
    }

    for e in &s.jobs {
        let j = match e {
            Stored::Ok(j) => j,
            Stored::Damaged(d) => {
                out.push(damaged_finding(d));
                continue;
            }
        };
        if j.is_done() || s.now_ms - j.created_ms <= (j.timeout as i64) * 1000 {
            continue;
        }
        out.push(Finding {
            kind: "stuck_job",
            subject: format!("jobs/{}", j.uuid),
            vm_uuid: Some(j.vm_uuid),
            message: format!(
                "job {} ({} of VM {}) is still {} {} s after it was created (its deadline is {} s){}",
                j.uuid,
                j.task,
                j.vm_uuid,
                j.execution,
                (s.now_ms - j.created_ms) / 1000,
                j.timeout,
                if j.phase == Phase::Unwinding { ", unwinding" } else { "" }
            ),
            repair: format!(
                "see where it stands with GET /jobs/{}; a job whose headnode died is taken over when its lease expires",
                j.uuid
            ),
            safe_repair: None,
        });
    }

    for d in &s.other_damaged {
        out.push(damaged_finding(d));
    }
    out
}

impl App {
    /// Reads everything `diagnose` looks at.
    pub async fn doctor_snapshot(&self) -> Result<Snapshot, ApiError> {
        let all = ListQuery::all();
        let vms = self.vm_entries(&all).await?;
        let mut other_damaged = Vec::new();
        // One read of the servers: the good records for the checks, the damaged ones reported.
        let mut servers: Vec<Server> = Vec::new();
        for e in self.list_entries::<Server>(buckets::SERVERS.name, &all).await? {
            match e {
                Stored::Ok(s) => servers.push(s),
                Stored::Damaged(d) => other_damaged.push(d),
            }
        }
        let heartbeats = self.heartbeats().await?;
        let nics = self.list_entries(buckets::NICS.name, &all).await?;
        let ips = self.keyed_entries(buckets::IPS.name).await?;
        let reservations = self.keyed_entries(buckets::RESERVATIONS.name).await?;
        let jobs = self.list_entries(buckets::JOBS.name, &all).await?;
        let migrations =
            self.list_migrations(&Default::default()).await?.into_iter().filter(crate::app::migrations::holds_something).collect();
        other_damaged.extend(self.damaged_in::<nereid_types::package::Package>(buckets::PACKAGES.name).await?);
        other_damaged.extend(self.damaged_in::<nereid_types::network::Network>(buckets::NETWORKS.name).await?);
        other_damaged.extend(self.damaged_in::<nereid_types::network::NetworkPool>(buckets::NETWORK_POOLS.name).await?);
        other_damaged.extend(self.damaged_in::<nereid_types::account::Account>(buckets::ACCOUNTS.name).await?);
        let images: Vec<Stored<Image>> = self.list_entries(buckets::IMAGES.name, &all).await?;
        let mut bad_image_files = Vec::new();
        for e in images {
            let img = match e {
                Stored::Ok(i) => i,
                Stored::Damaged(d) => {
                    other_damaged.push(d);
                    continue;
                }
            };
            if img.state != "active" {
                continue;
            }
            for f in &img.files {
                if let Some(why) = self.files.verify(&f.sha1, f.size).await {
                    bad_image_files.push((img.clone(), why));
                }
            }
        }
        Ok(Snapshot {
            now_ms: nereid_types::time::now_ms(),
            server_timeout_ms: self.cfg.server_timeout.as_millis() as i64,
            vms,
            servers,
            heartbeats,
            nics,
            ips,
            reservations,
            jobs,
            migrations,
            other_damaged,
            bad_image_files,
        })
    }

    async fn keyed_entries<T: serde::de::DeserializeOwned>(&self, bucket: &str) -> Result<Vec<(String, Stored<T>)>, ApiError> {
        let objs = self.store.list(bucket, &ListQuery::all()).await.map_err(store_error)?;
        Ok(objs.into_iter().map(|o| (o.key.clone(), nereid_types::damaged::decode(bucket, &o.key, o.value))).collect())
    }

    async fn damaged_in<T: serde::de::DeserializeOwned>(&self, bucket: &str) -> Result<Vec<Damaged>, ApiError> {
        Ok(self.list_entries::<T>(bucket, &ListQuery::all()).await?.into_iter().filter_map(|e| e.damaged().cloned()).collect())
    }

    /// `doctor`: every finding; with `repair`, the safe repairs applied (each recorded as a
    /// `repair` job) and the findings that remain.
    pub async fn doctor(&self, repair: bool) -> Result<Report, ApiError> {
        let snap = self.doctor_snapshot().await?;
        let mut checked = Map::new();
        checked.insert("vms".into(), json!(snap.vms.len()));
        checked.insert("servers".into(), json!(snap.servers.len()));
        checked.insert("nics".into(), json!(snap.nics.len()));
        checked.insert("ips".into(), json!(snap.ips.len()));
        checked.insert("reservations".into(), json!(snap.reservations.len()));
        checked.insert("jobs".into(), json!(snap.jobs.len()));
        let findings = diagnose(&snap);
        if !repair {
            return Ok(Report { findings, repairs: Vec::new(), checked });
        }
        let mut repairs = Vec::new();
        for f in findings.iter().filter(|f| f.safe_repair.is_some()) {
            let Some(r) = &f.safe_repair else { continue };
            let outcome = self.apply_repair(r).await;
            let (ok, result) = match &outcome {
                Ok(m) => (true, m.clone()),
                Err(e) => (false, e.message.clone()),
            };
            let job = self.record_repair(f, ok, &result).await?;
            repairs.push(json!({"subject": f.subject, "kind": f.kind, "repair": r, "ok": ok, "result": result, "job_uuid": job}));
        }
        let after = diagnose(&self.doctor_snapshot().await?);
        Ok(Report { findings: after, repairs, checked })
    }

    pub(crate) async fn apply_repair(&self, r: &Repair) -> Result<String, ApiError> {
        match r {
            Repair::SyncVm { vm } => {
                self.sync_vm(*vm).await?;
                let state = match self.read_vm(*vm).await? {
                    Some((Stored::Ok(v), _)) => {
                        format!(
                            "now {} on server {}",
                            v.state.unwrap_or_default(),
                            v.server_uuid.map(|u| u.to_string()).unwrap_or_default()
                        )
                    }
                    _ => "synced".into(),
                };
                Ok(format!("synced VM {vm}: {state}"))
            }
            Repair::DeleteNic { mac } => {
                // Confirm with the NIC's server that its VM does not run there (its last
                // inventory may predate the VM).
                let key = nereid_types::mac::Mac::parse(mac).map(|m| m.key()).unwrap_or_else(|_| mac.clone());
                if let Some((nic, _)) = self.read::<Nic>(buckets::NICS.name, &key).await?
                    && let Some(cn) = nic.cn_uuid
                    && let Ok(Some(st)) = self.agent_get(cn, nic.belongs_to_uuid).await
                    && st.state != "destroyed"
                {
                    return Err(ApiError::conflict(
                        "VmRunning",
                        format!("server {cn} runs VM {} ({}): NIC {mac} is in use and was kept", nic.belongs_to_uuid, st.state),
                    ));
                }
                self.delete_nic(mac).await?;
                Ok(format!("deleted NIC {mac} and freed its address"))
            }
            Repair::ReleaseIp { key } => {
                for _ in 0..super::RETRIES {
                    let Some(o) = self.store.get(buckets::IPS.name, key).await.map_err(store_error)? else {
                        return Ok(format!("{key} is already gone"));
                    };
                    let ip: IpRecord = serde_json::from_value(o.value).map_err(|e| ApiError::conflict("DamagedRecord", e.to_string()))?;
                    let op = if ip.reserved {
                        nereid_store::Op::put(
                            buckets::IPS.name,
                            key.clone(),
                            encode(&ip.released()),
                            nereid_store::Cond::Generation(o.generation),
                        )
                    } else {
                        nereid_store::Op::delete(buckets::IPS.name, key.clone(), nereid_store::Cond::Generation(o.generation))
                    };
                    match self.store.batch(vec![op]).await {
                        Ok(_) => return Ok(format!("released address {}", ip.ip)),
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(store_error(e)),
                    }
                }
                Err(ApiError::conflict("ConcurrentModification", format!("{key} kept changing; run doctor again")))
            }
            Repair::DeleteReservation { key } => {
                self.store.delete(buckets::RESERVATIONS.name, key, nereid_store::Cond::Any).await.map_err(store_error)?;
                Ok(format!("dropped reservation {key}"))
            }
        }
    }

    /// A finished `repair` job, so the job log says what doctor changed.
    pub(crate) async fn record_repair(&self, f: &Finding, ok: bool, result: &str) -> Result<Uuid, ApiError> {
        let mut params = Map::new();
        params.insert("finding".into(), encode(f));
        let mut job = crate::jobs::new_job("repair", f.vm_uuid.unwrap_or_default(), None, None, params);
        let now = nereid_types::time::now_iso();
        job.execution = if ok { "succeeded" } else { "failed" }.into();
        job.started = Some(now.clone());
        job.finished = Some(now.clone());
        job.chain = vec![f.kind.to_string()];
        job.cursor = 1;
        let step = StepResult {
            name: f.kind.to_string(),
            result: if ok { result.to_string() } else { String::new() },
            error: if ok { String::new() } else { result.to_string() },
            started_at: Some(now.clone()),
            finished_at: Some(now),
        };
        job.chain_results = vec![step];
        if !ok {
            job.error = Some(result.to_string());
        }
        self.store.batch(vec![crate::jobs::job_op(&job)]).await.map_err(store_error)?;
        Ok(job.uuid)
    }
}
