//! The NIC jobs: `add_nics`, `update_nics` and `remove_nics` (VMAPI's actions of those
//! names, and CloudAPI's AddNic and RemoveNic).
//!
//! ```text
//!   napi ─► stop (a running VM, when the hardware changes) ─► apply ─► start ─► finish
//!   undo: put the NAPI       start it again        put the old NIC definitions back
//!   NICs and flags back,
//!   delete the NICs made
//! ```
//!
//! - `napi` makes the NICs `add_nics` asks for (MACs derived from the job, so a re-run
//!   finds them), sets the new primary (NAPI clears the old one) and the `allow_*` flags.
//!   It records the primary it found and the flags it changed, for its undo.
//! - `stop`/`start`: QEMU never hot-plugs, so adding or removing a NIC, or changing the
//!   primary, restarts a running VM (as resize does). Flags alone apply live: the agent
//!   re-applies its filters when the definition changes.
//! - `apply` rebuilds the VM record's `nics` from NAPI (existing NICs keep their
//!   interface names, new ones take the next free `netN`) and waits until the server
//!   has that definition.
//! - `finish` marks new NICs `running` in NAPI, deletes removed ones (freeing their
//!   addresses), and records the VM's state.

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::NicDef;
use nereid_types::job::Job;
use nereid_types::nic::Nic;
use nereid_types::vm::NIC_FLAGS;
use serde_json::{Map, Value, json};

use super::provision::{NetRequest, derived_nic, nic_def};
use super::{Step, StepResultT, data, param, push};
use crate::app::App;
use crate::app::vm_nics::same_mac;

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(Napi),
        Box::new(push::Stop {
            needs: restart,
            live: "no restart needed: the server applies the change live",
            stopped: "VM stopped to change its NICs",
        }),
        Box::new(Apply),
        Box::new(push::Start { needs: restart }),
        Box::new(Finish),
    ]
}

fn e(err: nereid_types::ApiError) -> String {
    err.message
}

/// Whether this job changes the VM's hardware (and so restarts it if it runs).
fn restart(job: &Job) -> bool {
    param::<bool>(job, "restart").unwrap_or(false)
}

/// The MACs the job takes off the VM.
fn removed(job: &Job) -> Vec<String> {
    if job.task == "remove_nics" { param(job, "macs").unwrap_or_default() } else { Vec::new() }
}

/// The MACs the job puts on the VM: those it made, then those it was given.
fn added(job: &Job) -> Vec<String> {
    if job.task != "add_nics" {
        return Vec::new();
    }
    let mut out: Vec<String> = data(job, "made").unwrap_or_default();
    out.extend(param::<Vec<String>>(job, "macs").unwrap_or_default());
    out
}

async fn set_nic(app: &App, mac: &str, body: Value) -> Result<Nic, String> {
    let Value::Object(m) = body else { return Err("NIC change is not an object".into()) };
    app.update_nic(mac, &m).await.map_err(|er| format!("NIC {mac}: {}", er.message))
}

/// Deletes a NIC; one already gone is fine.
async fn drop_nic(app: &App, mac: &str) -> Result<(), String> {
    match app.delete_nic(mac).await {
        Ok(()) => Ok(()),
        Err(er) if er.status == 404 => Ok(()),
        Err(er) => Err(format!("NIC {mac}: {}", er.message)),
    }
}

/// NAPI's side: new NICs, the primary, the flags.
struct Napi;

#[async_trait]
impl Step for Napi {
    fn name(&self) -> &'static str {
        "napi"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(e)?;
        let current = app.vm_nics(&vm).await.map_err(e)?;
        if !job.data.contains_key("previous_primary") {
            let p = current.iter().find(|n| n.primary).map(|n| n.mac.clone());
            job.data.insert("previous_primary".into(), json!(p));
        }
        let mut want_primary: Option<String> = param(job, "primary_mac");
        let mut notes = Vec::new();
        match job.task.as_str() {
            "add_nics" => {
                let nets: Vec<NetRequest> = param(job, "networks").unwrap_or_default();
                let owner = job.owner_uuid.ok_or("the job has no owner")?;
                let cn = job.server_uuid.ok_or("the job has no server")?;
                let model: String = param(job, "nic_model").unwrap_or_else(|| "virtio".into());
                let mut made: Vec<String> = data(job, "made").unwrap_or_default();
                for (i, req) in nets.iter().enumerate() {
                    if made.len() <= i {
                        // Derived from the job: a re-run after a crash finds the NIC it made.
                        let fields = [("primary", json!(false)), ("model", json!(model))];
                        let nic = derived_nic(app, job, (owner, cn), req, (job.uuid, i), &fields).await?;
                        made.push(nic.mac.clone());
                        job.data.insert("made".into(), json!(made));
                    }
                    if req.primary {
                        want_primary = made.get(i).cloned();
                    }
                }
                notes.push(format!("{} NIC(s) made", made.len()));
            }
            "update_nics" => {
                let changes: Vec<Map<String, Value>> = param(job, "nics").unwrap_or_default();
                if !job.data.contains_key("before_flags") {
                    let mut before = Map::new();
                    for c in &changes {
                        let mac = c.get("mac").and_then(Value::as_str).unwrap_or_default();
                        let Some(n) = current.iter().find(|n| same_mac(&n.mac, mac)) else { continue };
                        let old: Map<String, Value> = NIC_FLAGS
                            .iter()
                            .filter(|f| c.contains_key(**f))
                            .map(|f| (f.to_string(), json!(n.flags.get(*f).copied().unwrap_or(false))))
                            .collect();
                        before.insert(n.mac.clone(), Value::Object(old));
                    }
                    job.data.insert("before_flags".into(), Value::Object(before));
                }
                for c in &changes {
                    let mac = c.get("mac").and_then(Value::as_str).unwrap_or_default();
                    let flags: Map<String, Value> =
                        c.iter().filter(|(k, _)| NIC_FLAGS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
                    if !flags.is_empty() {
                        set_nic(app, mac, Value::Object(flags)).await?;
                    }
                    if c.get("primary").and_then(Value::as_bool) == Some(true) {
                        want_primary = Some(mac.to_string());
                    }
                }
                notes.push(format!("{} NIC(s) changed", changes.len()));
            }
            "remove_nics" => {
                let gone = removed(job);
                let primary_goes = current.iter().any(|n| n.primary && gone.iter().any(|g| same_mac(g, &n.mac)));
                if primary_goes {
                    want_primary = current.iter().find(|n| !gone.iter().any(|g| same_mac(g, &n.mac))).map(|n| n.mac.clone());
                }
            }
            other => return Err(format!("{other} is not a NIC job")),
        }
        // Exactly one NIC stays primary.
        let kept: Vec<String> =
            current.iter().map(|n| n.mac.clone()).filter(|m| !removed(job).iter().any(|g| same_mac(g, m))).chain(added(job)).collect();
        if want_primary.is_none() {
            let fresh = app.vm_nics(&vm).await.map_err(e)?;
            let has = fresh.iter().any(|n| n.primary && kept.iter().any(|k| same_mac(k, &n.mac)));
            if !has {
                want_primary = kept.first().cloned();
            }
        }
        if let Some(p) = want_primary {
            let (n, _) = app.get_nic(&p).await.map_err(e)?;
            if !n.primary {
                set_nic(app, &p, json!({"primary": true})).await?;
            }
            notes.push(format!("primary {p}"));
        }
        Ok(if notes.is_empty() { "NAPI unchanged".into() } else { notes.join("; ") })
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let mut gone = data::<Vec<String>>(job, "made").unwrap_or_default();
        gone.extend(param::<Vec<String>>(job, "owned").unwrap_or_default());
        for mac in &gone {
            drop_nic(app, mac).await?;
        }
        let before: Map<String, Value> = data(job, "before_flags").unwrap_or_default();
        for (mac, flags) in &before {
            if app.get_nic(mac).await.is_ok() {
                set_nic(app, mac, flags.clone()).await?;
            }
        }
        if let Some(p) = data::<Option<String>>(job, "previous_primary").flatten()
            && let Ok((n, _)) = app.get_nic(&p).await
            && !n.primary
        {
            set_nic(app, &p, json!({"primary": true})).await?;
        }
        Ok(format!("{} NIC(s) deleted, {} NIC(s)' flags and the primary put back", gone.len(), before.len()))
    }
}

/// The VM's NIC definitions as NAPI now has them: the `before` NICs (minus removed ones)
/// keep their interface and model; added NICs get the next free `netN`.
async fn definitions(app: &App, job: &Job, before: &[NicDef]) -> Result<Vec<NicDef>, String> {
    let gone = removed(job);
    let mut order: Vec<String> = before.iter().map(|d| d.mac.clone()).filter(|m| !gone.iter().any(|g| same_mac(g, m))).collect();
    for m in added(job) {
        if !order.iter().any(|o| same_mac(o, &m)) {
            order.push(m);
        }
    }
    let mut nics = Vec::new();
    for mac in &order {
        nics.push(app.get_nic(mac).await.map_err(|er| format!("NIC {mac}: {}", er.message))?.0);
    }
    let nets = app.networks_of(&nics.iter().collect::<Vec<_>>()).await.map_err(e)?;
    let model: String = param(job, "nic_model").unwrap_or_else(|| "virtio".into());
    let mut used: Vec<String> = Vec::new();
    let mut defs = Vec::new();
    for n in &nics {
        let old = before.iter().find(|d| same_mac(&d.mac, &n.mac));
        let mut d = nic_def(n, n.network_uuid.and_then(|u| nets.get(&u)), 0, &model);
        match old {
            Some(o) => {
                d.interface = o.interface.clone();
                d.model = o.model.clone();
            }
            None => {
                let taken = |i: usize| before.iter().any(|b| b.interface == format!("net{i}")) || used.contains(&format!("net{i}"));
                d.interface = format!("net{}", (0..).find(|i| !taken(*i)).unwrap_or(0));
            }
        }
        used.push(d.interface.clone());
        defs.push(d);
    }
    Ok(defs)
}

/// Writes `defs` to the record and waits until the server runs that definition.
async fn apply_defs(app: &App, job: &mut Job, defs: Vec<NicDef>, gen_key: &str) -> Result<i64, String> {
    let held = push::held(job, restart);
    push::push(
        app,
        job,
        gen_key,
        |v| {
            v.nics = Some(defs.clone());
            Ok(())
        },
        held,
    )
    .await
}

struct Apply;

#[async_trait]
impl Step for Apply {
    fn name(&self) -> &'static str {
        "apply"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if !job.data.contains_key("before_nics") {
            let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(e)?;
            job.data.insert("before_nics".into(), json!(vm.nics.clone().unwrap_or_default()));
        }
        let before: Vec<NicDef> = data(job, "before_nics").unwrap_or_default();
        let defs = definitions(app, job, &before).await?;
        let summary: Vec<String> = defs
            .iter()
            .map(|d| format!("{} {}{}", d.interface, d.ip.as_deref().unwrap_or("-"), if d.primary { " (primary)" } else { "" }))
            .collect();
        let g = apply_defs(app, job, defs, "definition_target").await?;
        Ok(format!("NICs {} (definition generation {g})", summary.join(", ")))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        if !job.data.contains_key("definition_target") {
            return Ok("nothing was applied".into());
        }
        let mut before: Vec<NicDef> = data(job, "before_nics").unwrap_or_default();
        // A NIC `finish` already deleted in NAPI stays off the VM: the record follows NAPI.
        let mut dropped = 0;
        let mut napi_primary = Vec::new();
        for d in std::mem::take(&mut before) {
            match app.get_nic(&d.mac).await {
                Ok((n, _)) => {
                    napi_primary.push(n.primary);
                    before.push(d);
                }
                Err(er) if er.status == 404 => dropped += 1,
                Err(er) => return Err(er.message),
            }
        }
        // The primary was among them: NAPI's new primary (set by `napi`) is the VM's.
        if !before.iter().any(|d| d.primary) {
            for (d, p) in before.iter_mut().zip(napi_primary) {
                d.primary = p;
            }
        }
        apply_defs(app, job, before, "undo_definition_target").await?;
        Ok(if dropped == 0 {
            "the old NIC definitions restored".into()
        } else {
            format!("the old NIC definitions restored, but for {dropped} NIC(s) already deleted")
        })
    }
}

struct Finish;

#[async_trait]
impl Step for Finish {
    fn name(&self) -> &'static str {
        "finish"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        for mac in added(job) {
            let (n, _) = app.get_nic(&mac).await.map_err(e)?;
            if n.state != "running" {
                set_nic(app, &mac, json!({"state": "running"})).await?;
            }
        }
        let gone = removed(job);
        for mac in &gone {
            drop_nic(app, mac).await?;
        }
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(e)?;
        let state = vm.desired_state.clone().unwrap_or_else(|| "running".into());
        app.modify_vm(job.vm_uuid, |v| {
            v.state = Some(state.clone());
            v.zone_state = Some(state.clone());
            Ok(())
        })
        .await
        .map_err(e)?;
        Ok(format!("{} NIC(s) running, {} deleted with their addresses freed; VM {state}", added(job).len(), gone.len()))
    }
}
