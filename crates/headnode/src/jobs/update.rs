//! The update job: metadata, tags and names change live; a resize (RAM, vCPUs, disk, a
//! new package) needs a hardware VM stopped, so the job stops it, applies, and starts it
//! again if it was running.
//!
//! ```text
//!   reserve ─► stop (if resizing a running VM) ─► apply ─► start (if it was running) ─► finish
//!   undo: release      start it again               put the old values back
//! ```
//!
//! The request computed `after` (the changed fields; map changes as `set_*`/`remove_*`
//! deltas) and, for growth, reserved the extra capacity in the same transaction as this
//! job. `apply` merges into the record as it is then, under its generation, and keeps the
//! exact inverse for undo — so updates queued one after another never undo each other.

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::job::Job;
use serde_json::{Map, Value};

use super::{Step, StepResultT, param, push};
use crate::app::App;
use crate::app::vms::apply_with_inverse;

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

/// Applies a set of field values (map deltas merged into the record as it is now) and
/// waits for the server to have the new definition; keeps what undoes exactly this in
/// `job.data[inverse_key]`. A running VM being resized stays stopped until the start step.
async fn apply(app: &App, job: &mut Job, fields: &Map<String, Value>, gen_key: &str, inverse_key: &str) -> Result<i64, String> {
    let held = push::held(job, resize);
    let inverse = std::sync::Mutex::new(None);
    let g = push::push(
        app,
        job,
        gen_key,
        |v| {
            let inv = apply_with_inverse(v, fields)?;
            *inverse.lock().unwrap_or_else(|p| p.into_inner()) = Some(inv);
            Ok(())
        },
        held,
    )
    .await?;
    // A re-run after a crash finds the change applied already: keep the first inverse.
    if let Some(inv) = inverse.into_inner().unwrap_or_else(|p| p.into_inner())
        && !job.data.contains_key(inverse_key)
    {
        job.data.insert(inverse_key.into(), Value::Object(inv));
    }
    Ok(g)
}

struct Apply;

/// The apply step's name (after it, the VM record holds the new size: see `app::limits`).
pub const APPLY_STEP: &str = "apply";

#[async_trait]
impl Step for Apply {
    fn name(&self) -> &'static str {
        APPLY_STEP
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let after: Map<String, Value> = param(job, "after").unwrap_or_default();
        let g = apply(app, job, &after, "definition_target", "undo_fields").await?;
        let keys: Vec<&String> = after.keys().collect();
        Ok(format!("applied {} (definition generation {g})", keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        if !job.data.contains_key("definition_target") {
            return Ok("nothing was applied".into());
        }
        // What undoes exactly what was applied (older jobs: the request's `before`).
        let before: Map<String, Value> = super::data(job, "undo_fields").or_else(|| param(job, "before")).unwrap_or_default();
        apply(app, job, &before, "undo_definition_target", "redo_fields").await?;
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
