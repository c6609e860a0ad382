//! start, stop and reboot jobs: ask the server, wait for it, record it.
//!
//! ```text
//!   ensure ─► wait ─► record          undo of ensure: ask for the previous state again
//! ```

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::Desired;
use nereid_types::job::Job;
use serde_json::json;

use super::{Seen, Step, StepResultT, data, wait_for_server};
use crate::app::App;

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![Box::new(EnsureState), Box::new(WaitState), Box::new(Record)]
}

fn target(job: &Job) -> &'static str {
    match job.task.as_str() {
        "stop" => "stopped",
        _ => "running",
    }
}

/// Sends the VM's definition with the wanted state (and, for reboot, one more reboot).
pub async fn send(app: &App, job: &Job, desired: Desired, reboot_generation: Option<i64>) -> Result<(), String> {
    let server = job.server_uuid.ok_or("the job has no server")?;
    let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
    let e = vm.ensure(desired, reboot_generation)?;
    app.agent_ensure(server, &e).await.map_err(|e| e.to_string())?;
    Ok(())
}

struct EnsureState;

#[async_trait]
impl Step for EnsureState {
    fn name(&self) -> &'static str {
        "ensure"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
        if !job.data.contains_key("previous") {
            job.data.insert("previous".into(), json!(vm.desired_state.clone().unwrap_or_else(|| vm.state.clone().unwrap_or_default())));
        }
        let desired = if job.task == "stop" { Desired::Stopped } else { Desired::Running };
        let mut reboot = None;
        if job.task == "reboot" {
            let t: i64 = data(job, "reboot_target").unwrap_or(vm.reboot_generation + 1);
            job.data.insert("reboot_target".into(), json!(t));
            reboot = Some(t);
        }
        let desired_text = if desired == Desired::Running { "running" } else { "stopped" };
        app.modify_vm(job.vm_uuid, |v| {
            v.desired_state = Some(desired_text.into());
            if let Some(t) = reboot {
                v.reboot_generation = v.reboot_generation.max(t);
            }
            if v.autoboot.is_some() || desired == Desired::Stopped {
                v.autoboot = Some(desired == Desired::Running);
            }
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        send(app, job, desired, reboot).await?;
        Ok(format!("asked the server for {}", if job.task == "reboot" { "a reboot" } else { desired_text }))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let Some(prev) = data::<String>(job, "previous") else { return Ok("nothing was asked".into()) };
        let desired = if prev == "stopped" { Desired::Stopped } else { Desired::Running };
        app.modify_vm(job.vm_uuid, |v| {
            v.desired_state = Some(prev.clone());
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        send(app, job, desired, None).await?;
        Ok(format!("asked the server for {prev} again"))
    }
}

struct WaitState;

#[async_trait]
impl Step for WaitState {
    fn name(&self) -> &'static str {
        "wait"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let want = target(job);
        let reboot: Option<i64> = data(job, "reboot_target");
        wait_for_server(app, job, |st| {
            if st.state == want && reboot.is_none_or(|t| st.reboot_generation >= t) {
                Seen::Done
            } else if st.error.is_some() && st.state != "stopping" && st.state != want {
                Seen::Failed(st.error.clone().unwrap_or_default())
            } else {
                Seen::Pending
            }
        })
        .await?;
        Ok(format!("VM is {want}"))
    }
}

struct Record;

#[async_trait]
impl Step for Record {
    fn name(&self) -> &'static str {
        "record"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let want = target(job);
        app.modify_vm(job.vm_uuid, |v| {
            v.state = Some(want.into());
            v.zone_state = Some(want.into());
            v.last_modified = Some(nereid_types::time::now_iso());
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        Ok(format!("record says {want}"))
    }
}
