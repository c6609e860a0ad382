//! The update job: metadata, tags and names change live; a resize (RAM, vCPUs, disk, a
//! new package) needs a hardware VM stopped, so the job stops it, applies, and starts it
//! again if it was running.
//!
//! ```text
//!   reserve ─► stop (if resizing a running VM) ─► apply ─► start (if it was running) ─► finish
//!   undo: release      start it again               put the old values back
//! ```
//!
//! The request computed `before` and `after` (the changed fields) and, for growth,
//! reserved the extra capacity in the same transaction as this job.

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::Desired;
use nereid_types::job::Job;
use serde_json::{Map, Value, json};

use super::power::send;
use super::{Seen, Step, StepResultT, data, param, wait_for_server};
use crate::app::App;
use crate::app::vms::apply_fields;

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![Box::new(Reserve), Box::new(Stop), Box::new(Apply), Box::new(Start), Box::new(Finish)]
}

fn resize(job: &Job) -> bool {
    param::<bool>(job, "resize").unwrap_or(false)
}

async fn wait_for(
    app: &App,
    job: &Job,
    pred: impl Fn(&nereid_types::agent::VmStatus) -> bool,
) -> Result<nereid_types::agent::VmStatus, String> {
    wait_for_server(app, job, |st| if pred(st) { Seen::Done } else { Seen::Pending }).await
}

struct Reserve;

#[async_trait]
impl Step for Reserve {
    fn name(&self) -> &'static str {
        "reserve"
    }
    async fn run(&self, _app: &App, job: &mut Job) -> StepResultT {
        Ok(if resize(job) { "resize capacity checked and reserved on the VM's server".into() } else { "no new capacity needed".into() })
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        app.release_reservations(job.vm_uuid, Some(job.uuid)).await.map_err(|e| e.message)?;
        Ok("reservation released".into())
    }
}

struct Stop;

#[async_trait]
impl Step for Stop {
    fn name(&self) -> &'static str {
        "stop"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if !resize(job) {
            return Ok("no restart needed".into());
        }
        let was_running = match data::<bool>(job, "was_running") {
            Some(w) => w,
            None => {
                let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
                let w = vm.desired_state.as_deref().unwrap_or(vm.state.as_deref().unwrap_or("")) == "running";
                job.data.insert("was_running".into(), json!(w));
                w
            }
        };
        if !was_running {
            return Ok("VM already stopped".into());
        }
        send(app, job, Desired::Stopped, None).await?;
        wait_for(app, job, |s| s.state == "stopped").await?;
        Ok("VM stopped for the resize".into())
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        if data::<bool>(job, "was_running") != Some(true) {
            return Ok("VM was not running".into());
        }
        send(app, job, Desired::Running, None).await?;
        wait_for(app, job, |s| s.state == "running").await?;
        Ok("VM started again".into())
    }
}

/// Applies a set of field values and waits for the server to have the new definition.
async fn apply(app: &App, job: &mut Job, fields: &Map<String, Value>, gen_key: &str) -> Result<i64, String> {
    let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
    let target: i64 = data(job, gen_key).unwrap_or(vm.definition_generation + 1);
    job.data.insert(gen_key.into(), json!(target));
    app.modify_vm(job.vm_uuid, |v| {
        apply_fields(v, fields)?;
        v.definition_generation = v.definition_generation.max(target);
        v.last_modified = Some(nereid_types::time::now_iso());
        Ok(())
    })
    .await
    .map_err(|e| e.message)?;
    let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
    // A running VM being resized stays stopped until the start step.
    let held_stopped = resize(job) && data::<bool>(job, "was_running") == Some(true);
    let desired = if !held_stopped && vm.desired_state.as_deref() == Some("running") { Desired::Running } else { Desired::Stopped };
    send(app, job, desired, None).await?;
    wait_for_server(app, job, move |s| match &s.error {
        _ if s.definition_generation >= target => Seen::Done,
        Some(e) if e.starts_with("update failed") => Seen::Failed(e.clone()),
        _ => Seen::Pending,
    })
    .await?;
    Ok(target)
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
        let after: Map<String, Value> = param(job, "after").unwrap_or_default();
        let g = apply(app, job, &after, "definition_target").await?;
        let keys: Vec<&String> = after.keys().collect();
        Ok(format!("applied {} (definition generation {g})", keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        if !job.data.contains_key("definition_target") {
            return Ok("nothing was applied".into());
        }
        let before: Map<String, Value> = param(job, "before").unwrap_or_default();
        apply(app, job, &before, "undo_definition_target").await?;
        Ok("old values restored".into())
    }
}

struct Start;

#[async_trait]
impl Step for Start {
    fn name(&self) -> &'static str {
        "start"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if !(resize(job) && data::<bool>(job, "was_running") == Some(true)) {
            return Ok("no restart needed".into());
        }
        send(app, job, Desired::Running, None).await?;
        wait_for(app, job, |s| s.state == "running").await?;
        Ok("VM running again".into())
    }
}

struct Finish;

#[async_trait]
impl Step for Finish {
    fn name(&self) -> &'static str {
        "finish"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        app.release_reservations(job.vm_uuid, Some(job.uuid)).await.map_err(|e| e.message)?;
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
        let state = vm.desired_state.clone().unwrap_or_else(|| "running".into());
        app.modify_vm(job.vm_uuid, |v| {
            v.state = Some(state.clone());
            v.zone_state = Some(state.clone());
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        Ok("update recorded".into())
    }
}
