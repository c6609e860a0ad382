//! Changing a VM's definition on its server, shared by the jobs that change a VM in
//! place (`update`, and the NIC jobs).
//!
//! ```text
//!   stop (a running VM, when the change needs it) ─► push ─► start (if it was stopped here)
//!   undo: start it again                             push the old definition (another key)
//! ```
//!
//! - [`Stop`] and [`Start`] are the chains' `stop` and `start` steps. QEMU never
//!   hot-plugs, so a hardware change (a resize, a NIC added or removed) restarts a
//!   running VM; `stop` records in `job.data["was_running"]` whether it was running, and
//!   the VM is *held* stopped until `start` (see [`held`]).
//! - [`push`] changes the VM record and bumps its `definition_generation`, sends the
//!   definition (running unless the VM is held stopped or not meant to run), and waits
//!   until the server reports that generation. The generation it aims for is kept in
//!   `job.data` under a key of the caller's choosing, so a re-run aims for the same one.

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::Desired;
use nereid_types::job::Job;
use nereid_types::vm::Vm;
use serde_json::json;

use super::power::send;
use super::{Seen, Step, StepResultT, data, wait_for_server};
use crate::app::App;

/// Whether a job's change needs a running VM stopped (read from the job's parameters).
pub type Needs = fn(&Job) -> bool;

/// Whether the VM is held stopped between `stop` and `start`.
pub fn held(job: &Job, needs: Needs) -> bool {
    needs(job) && data::<bool>(job, "was_running") == Some(true)
}

/// Changes the VM record with `change`, bumps its definition generation (the target
/// kept in `job.data[gen_key]`), sends the definition and waits until the server runs
/// it. The VM is asked to run if its record wants it running and it is not `held`
/// stopped. Returns the generation.
pub async fn push(
    app: &App,
    job: &mut Job,
    gen_key: &str,
    mut change: impl FnMut(&mut Vm) -> Result<(), String>,
    held: bool,
) -> Result<i64, String> {
    let read = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
    let target: i64 = data(job, gen_key).unwrap_or(read.0.definition_generation + 1);
    job.data.insert(gen_key.into(), json!(target));
    let vm = app
        .modify_read_vm(job.vm_uuid, Some(read), |v| {
            change(v)?;
            v.definition_generation = v.definition_generation.max(target);
            v.last_modified = Some(nereid_types::time::now_iso());
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
    let desired = if !held && vm.desired_state.as_deref() == Some("running") { Desired::Running } else { Desired::Stopped };
    send(app, job, desired, None).await?;
    wait_for_server(app, job, move |s| match &s.error {
        _ if s.definition_generation >= target => Seen::Done,
        Some(e) if e.starts_with("update failed") => Seen::Failed(e.clone()),
        _ => Seen::Pending,
    })
    .await?;
    Ok(target)
}

/// Sends the definition with `desired` and waits until the server reports `state`.
async fn power(app: &App, job: &Job, desired: Desired, state: &'static str) -> Result<(), String> {
    send(app, job, desired, None).await?;
    wait_for_server(app, job, |s| if s.state == state { Seen::Done } else { Seen::Pending }).await.map(|_| ())
}

/// The `stop` step: stops a running VM when the job's change `needs` it.
pub struct Stop {
    pub needs: Needs,
    /// The step's result when the change needs no restart.
    pub live: &'static str,
    /// The step's result when it stopped the VM.
    pub stopped: &'static str,
}

#[async_trait]
impl Step for Stop {
    fn name(&self) -> &'static str {
        "stop"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if !(self.needs)(job) {
            return Ok(self.live.into());
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
        power(app, job, Desired::Stopped, "stopped").await?;
        Ok(self.stopped.into())
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        if data::<bool>(job, "was_running") != Some(true) {
            return Ok("VM was not running".into());
        }
        power(app, job, Desired::Running, "running").await?;
        Ok("VM started again".into())
    }
}

/// The `start` step: starts the VM again if `stop` stopped it.
pub struct Start {
    pub needs: Needs,
}

#[async_trait]
impl Step for Start {
    fn name(&self) -> &'static str {
        "start"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if !held(job, self.needs) {
            return Ok("no restart needed".into());
        }
        power(app, job, Desired::Running, "running").await?;
        Ok("VM running again".into())
    }
}
