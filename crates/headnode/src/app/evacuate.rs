//! Evacuating a server (`nereid admin server evacuate`): the server is reserved (placement
//! puts nothing new on it), then every VM on it is migrated away, a few at a time, each an
//! automatic migration followed by its finalize.
//!
//! ```text
//!   start: reserve the server ─► record {vms: pending…} ─► task
//!   task, every second, until no VM is pending or migrating:
//!     pending VMs, up to `concurrency` migrating at once ─► begin (automatic)
//!        └ refused (nothing fits, a precondition) ─► unplaceable / failed, with why
//!     migrating VMs ─► their migration: successful ─► finalize ─► migrated
//!                                       failed ─► failed, with the error (the VM stays)
//! ```
//! The record (bucket `evacuations`, keyed by server) is rewritten at each change; a
//! headnode that restarts picks a running evacuation up again the next time it is read.

use std::sync::Arc;
use std::time::Duration;

use nereid_store::{Cond, ListQuery};
use nereid_types::ApiError;
use nereid_types::damaged::Stored;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::migrations::MigrateRequest;
use super::{App, encode, store_error};
use crate::buckets::EVACUATIONS;

/// One VM of an evacuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvacuatedVm {
    pub vm_uuid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// `pending`, `migrating`, `migrated`, `failed` or `unplaceable`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why nothing fits: each server's reason, as the allocator gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_server_uuid: Option<Uuid>,
}

/// An evacuation of one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evacuation {
    pub server_uuid: Uuid,
    /// `running` or `done`.
    pub state: String,
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    pub concurrency: usize,
    #[serde(default)]
    pub offline: bool,
    pub vms: Vec<EvacuatedVm>,
}

impl Evacuation {
    /// Whether every VM has left.
    pub fn complete(&self) -> bool {
        self.vms.iter().all(|v| v.state == "migrated")
    }
}

/// What to do next for a VM whose migration reads `m` (pure): `None` while it runs.
pub fn outcome(m: &nereid_types::migration::Migration) -> Option<Result<(), String>> {
    match (m.phase.as_str(), m.state.as_str()) {
        ("switch", "successful") => Some(Ok(())),
        (_, "failed") => Some(Err(m.error.clone().unwrap_or_else(|| "the migration failed".into()))),
        (_, "successful") if m.phase == "abort" => Some(Err("the migration was aborted".into())),
        _ => None,
    }
}

impl App {
    /// Reserves the server and starts migrating every VM off it.
    pub async fn start_evacuation(self: &Arc<Self>, server: Uuid, concurrency: usize, offline: bool) -> Result<Evacuation, ApiError> {
        self.get_server_record(server).await?;
        if let Some((e, _)) = self.read::<Evacuation>(EVACUATIONS.name, &server.to_string()).await?
            && e.state == "running"
        {
            return Err(ApiError::conflict(
                "EvacuationRunning",
                format!("server {server} is being evacuated already; watch it with GET /servers/{server}/evacuation"),
            ));
        }
        let Value::Object(reserve) = json!({"reserved": true}) else { unreachable!("an object") };
        self.update_server(server, &reserve).await?;
        let mut vms = Vec::new();
        for e in self.vms_on(server).await? {
            match e {
                Stored::Ok(vm) => vms.push(EvacuatedVm {
                    vm_uuid: vm.uuid,
                    alias: vm.alias.clone(),
                    state: "pending".into(),
                    error: None,
                    explanation: None,
                    target_server_uuid: None,
                }),
                Stored::Damaged(d) => vms.push(EvacuatedVm {
                    vm_uuid: d.key_uuid().unwrap_or_default(),
                    alias: None,
                    state: "failed".into(),
                    error: Some(format!("its record is damaged ({}): repair it first", d.error)),
                    explanation: None,
                    target_server_uuid: None,
                }),
            }
        }
        vms.sort_by(|a, b| a.alias.cmp(&b.alias).then(a.vm_uuid.cmp(&b.vm_uuid)));
        let ev = Evacuation {
            server_uuid: server,
            state: "running".into(),
            started: nereid_types::time::now_iso(),
            finished: None,
            concurrency: concurrency.max(1),
            offline,
            vms,
        };
        self.store.put(EVACUATIONS.name, &server.to_string(), encode(&ev), Cond::Any).await.map_err(store_error)?;
        tracing::info!(%server, vms = ev.vms.len(), "evacuation started");
        self.spawn_evacuation(server);
        Ok(ev)
    }

    /// The server's evacuation (the latest); a running one no task drives is picked up.
    pub async fn evacuation(self: &Arc<Self>, server: Uuid) -> Result<Evacuation, ApiError> {
        let (e, _) = self
            .read::<Evacuation>(EVACUATIONS.name, &server.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("server {server} has not been evacuated")))?;
        if e.state == "running" {
            self.spawn_evacuation(server);
        }
        Ok(e)
    }

    /// Evacuations, any server.
    pub async fn list_evacuations(&self) -> Result<Vec<Evacuation>, ApiError> {
        self.list(EVACUATIONS.name, &ListQuery::all()).await
    }

    fn spawn_evacuation(self: &Arc<Self>, server: Uuid) {
        {
            let mut running = self.evacuations.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(server) {
                return;
            }
        }
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.drive_evacuation(server).await {
                tracing::warn!(%server, error = %e.message, "evacuation interrupted; reading it again resumes it");
            }
            app.evacuations.lock().unwrap_or_else(|p| p.into_inner()).remove(&server);
        });
    }

    async fn drive_evacuation(&self, server: Uuid) -> Result<(), ApiError> {
        loop {
            let (mut ev, g) = self
                .read::<Evacuation>(EVACUATIONS.name, &server.to_string())
                .await?
                .ok_or_else(|| ApiError::not_found("the evacuation record is gone"))?;
            if ev.state != "running" {
                return Ok(());
            }
            let before = ev.clone();
            self.evacuation_round(&mut ev).await;
            if !ev.vms.iter().any(|v| v.state == "pending" || v.state == "migrating") {
                ev.state = "done".into();
                ev.finished = Some(nereid_types::time::now_iso());
                let left = ev.vms.iter().filter(|v| v.state != "migrated").count();
                tracing::info!(%server, left, "evacuation done");
            }
            if ev != before {
                match self.store.put(EVACUATIONS.name, &server.to_string(), encode(&ev), Cond::Generation(g)).await {
                    Ok(_) => {}
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err(store_error(e)),
                }
            }
            if ev.state != "running" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One look at every VM of the evacuation.
    async fn evacuation_round(&self, ev: &mut Evacuation) {
        let server = ev.server_uuid;
        for v in ev.vms.iter_mut().filter(|v| v.state == "migrating") {
            let m = match self.vm_migration(v.vm_uuid, None).await {
                Ok(m) => m,
                Err(e) => {
                    v.state = "failed".into();
                    v.error = Some(e.message);
                    continue;
                }
            };
            match outcome(&m) {
                None => {}
                Some(Ok(())) => {
                    let req =
                        MigrateRequest { action: "finalize".into(), requested_by: "operator (evacuation)".into(), ..Default::default() };
                    match self.migrate(v.vm_uuid, req).await {
                        Ok(_) => v.state = "migrated".into(),
                        Err(e) if e.message.contains("Finalize only works") || e.message.contains("is over") => v.state = "migrated".into(),
                        Err(e) => tracing::warn!(vm = %v.vm_uuid, error = %e.message, "finalize after evacuation; trying again"),
                    }
                }
                Some(Err(why)) => {
                    v.state = "failed".into();
                    v.error = Some(why);
                }
            }
        }
        let mut busy = ev.vms.iter().filter(|v| v.state == "migrating").count();
        for v in ev.vms.iter_mut().filter(|v| v.state == "pending") {
            if busy >= ev.concurrency {
                break;
            }
            // A migration of it already under way (begun by an earlier round whose record
            // was not written, or by hand) is adopted, not begun again.
            if let Ok(Some((m, _))) = self.latest_migration(v.vm_uuid).await
                && m.source_server_uuid == server
            {
                if m.state == "running" && m.automatic {
                    v.state = "migrating".into();
                    v.target_server_uuid = m.target_server_uuid;
                    busy += 1;
                    continue;
                }
                if m.state == "running" || m.state == "paused" {
                    v.state = "failed".into();
                    v.error = Some(format!(
                        "a migration of it begun by hand is {} in phase {}: finish or abort it, then evacuate again",
                        m.state, m.phase
                    ));
                    continue;
                }
            }
            // A VM that left (destroyed meanwhile, or moved by hand) is done.
            match self.get_vm(v.vm_uuid, None).await {
                Ok((vm, _)) if vm.server_uuid != Some(server) || !vm.is_active() => {
                    v.state = "migrated".into();
                    v.target_server_uuid = vm.server_uuid;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    v.state = "failed".into();
                    v.error = Some(e.message);
                    continue;
                }
            }
            let req = MigrateRequest {
                action: "begin".into(),
                automatic: true,
                offline: ev.offline,
                requested_by: "operator (evacuation)".into(),
                ..Default::default()
            };
            match self.migrate(v.vm_uuid, req).await {
                Ok(a) => {
                    v.state = "migrating".into();
                    v.target_server_uuid = a.migration.target_server_uuid;
                    busy += 1;
                }
                Err(e) if e.code == "NoAllocatableServersError" => {
                    v.state = "unplaceable".into();
                    v.error = Some(e.message.clone());
                    v.explanation = Some(json!(e.errors));
                }
                Err(e) => {
                    v.state = "failed".into();
                    v.error = Some(e.message);
                }
            }
        }
    }
}

/// The evacuation as `GET /servers/{uuid}/evacuation` shows it, with counts.
pub fn render(ev: &Evacuation) -> Value {
    let mut v = encode(ev);
    let mut counts = Map::new();
    for vm in &ev.vms {
        let n = counts.get(&vm.state).and_then(Value::as_u64).unwrap_or(0) + 1;
        counts.insert(vm.state.clone(), json!(n));
    }
    v["counts"] = Value::Object(counts);
    v
}
