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
use nereid_types::job::Job;
use serde_json::{Map, Value};

use super::{Step, StepResultT, param, push};
use crate::app::App;
use crate::app::vms::apply_fields;

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(Reserve),
        Box::new(push::Stop { needs: resize, live: "no restart needed", stopped: "VM stopped for the resize" }),
        Box::new(Apply),
        Box::new(push::Start { needs: resize }),
        Box::new(Finish),
    ]
}

fn resize(job: &Job) -> bool {
    param::<bool>(job, "resize").unwrap_or(false)
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

/// Applies a set of field values and waits for the server to have the new definition.
/// A running VM being resized stays stopped until the start step.
async fn apply(app: &App, job: &mut Job, fields: &Map<String, Value>, gen_key: &str) -> Result<i64, String> {
    let held = push::held(job, resize);
    push::push(app, job, gen_key, |v| apply_fields(v, fields), held).await
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
