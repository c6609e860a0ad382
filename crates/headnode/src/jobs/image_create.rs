//! The `create_image` job: an image from a VM's boot disk (`triton image create`,
//! CloudAPI CreateImageFromMachine, VMAPI `create_image`). The image was written in
//! state `creating` with the job (see [`crate::app::image_create`]).
//!
//! ```text
//!   check ─► stop ─► wait stopped ─► receive disk ─► start again ─► activate
//!     │       │                                                        │
//!     │       └ remembers whether the VM ran; undo: asks for that again (restarts it)
//!     │                                                                └ undo: back to creating
//!     └ undo: the image failed {message: why}, its file removed
//! ```
//! A failure anywhere unwinds: the VM is asked for the state it had (a running VM is
//! started again), the half-made image file is removed, and the image is `failed` with
//! the step's reason, as IMGAPI's create-from-vm workflow leaves it. Every step is
//! idempotent: a VM stopped already stays so, a disk received already is not fetched
//! again, an active image stays active.

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::Desired;
use nereid_types::job::Job;
use serde_json::json;
use uuid::Uuid;

use super::power::send;
use super::{Seen, Step, StepResultT, data, param, wait_for_server};
use crate::app::App;
use crate::app::image_create::image_error;

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![Box::new(Check), Box::new(Stop), Box::new(WaitStopped), Box::new(ReceiveDisk), Box::new(StartAgain), Box::new(Activate)]
}

fn image_uuid(job: &Job) -> Result<Uuid, String> {
    param::<Uuid>(job, "image_uuid").ok_or_else(|| "the job has no image_uuid".to_string())
}

/// Whether the VM ran when the job began (recorded by `stop`).
fn was_running(job: &Job) -> bool {
    data::<String>(job, "previous").as_deref() == Some("running")
}

/// The wait for the VM to reach `want` ("running" or "stopped").
async fn wait_for(app: &App, job: &Job, want: &'static str) -> Result<(), String> {
    wait_for_server(app, job, |st| {
        if st.state == want {
            Seen::Done
        } else if st.error.is_some() && st.state != "stopping" && st.state != "provisioning" {
            Seen::Failed(st.error.clone().unwrap_or_default())
        } else {
            Seen::Pending
        }
    })
    .await?;
    app.modify_vm(job.vm_uuid, |v| {
        v.state = Some(want.into());
        v.zone_state = Some(want.into());
        Ok(())
    })
    .await
    .map_err(|e| e.message)?;
    Ok(())
}

/// Asks for the VM in `state` (the record's `desired_state` and the server).
async fn ask(app: &App, job: &Job, state: &str) -> Result<(), String> {
    app.modify_vm(job.vm_uuid, |v| {
        v.desired_state = Some(state.into());
        Ok(())
    })
    .await
    .map_err(|e| e.message)?;
    send(app, job, if state == "running" { Desired::Running } else { Desired::Stopped }, None).await
}

struct Check;

#[async_trait]
impl Step for Check {
    fn name(&self) -> &'static str {
        "check"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let uuid = image_uuid(job)?;
        let (img, _) = app.get_image(uuid, None).await.map_err(|e| e.message)?;
        match img.state.as_str() {
            "creating" | "active" => Ok(format!("image {uuid} ({}) is {}", img.label(), img.state)),
            other => Err(format!("image {uuid} is {other}, not creating")),
        }
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let uuid = image_uuid(job)?;
        let why = job.error.clone().unwrap_or_else(|| "the image could not be made".into());
        let code = data::<String>(job, "error_code");
        match app.fail_created_image(uuid, image_error(&why, code.as_deref())).await {
            Ok(img) => Ok(format!("image {uuid} is {}", img.state)),
            Err(e) if e.status == 404 => Ok(format!("image {uuid} is gone")),
            Err(e) => Err(e.message),
        }
    }
}

struct Stop;

#[async_trait]
impl Step for Stop {
    fn name(&self) -> &'static str {
        "stop"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
        if !job.data.contains_key("previous") {
            let previous = vm.desired_state.clone().or_else(|| vm.state.clone()).unwrap_or_default();
            job.data.insert("previous".into(), json!(previous));
        }
        // Asked even of a stopped VM: the server exports a disk only of a VM asked to
        // stay stopped.
        ask(app, job, "stopped").await?;
        Ok(if was_running(job) { "asked the server to stop the VM".into() } else { "the VM is stopped already".into() })
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let Some(prev) = data::<String>(job, "previous") else { return Ok("nothing was asked".into()) };
        let state = if prev == "running" { "running" } else { "stopped" };
        ask(app, job, state).await?;
        Ok(format!("asked the server for {state} again"))
    }
}

struct WaitStopped;

#[async_trait]
impl Step for WaitStopped {
    fn name(&self) -> &'static str {
        "wait stopped"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        wait_for(app, job, "stopped").await?;
        Ok("VM is stopped".into())
    }
}

struct ReceiveDisk;

impl ReceiveDisk {
    /// A disk of many GiB takes a while to flatten and carry; an hour at least.
    fn within(app: &App) -> Duration {
        app.cfg.step_deadline.max(Duration::from_secs(3600))
    }
}

#[async_trait]
impl Step for ReceiveDisk {
    fn name(&self) -> &'static str {
        "receive disk"
    }
    fn deadline(&self, app: &App) -> Duration {
        Self::within(app)
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let uuid = image_uuid(job)?;
        let server = job.server_uuid.ok_or("the job has no server")?;
        app.receive_vm_disk(uuid, server, job.vm_uuid, Self::within(app)).await
    }
}

struct StartAgain;

#[async_trait]
impl Step for StartAgain {
    fn name(&self) -> &'static str {
        "start again"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        if !was_running(job) {
            return Ok("the VM was stopped before: it stays so".into());
        }
        ask(app, job, "running").await?;
        wait_for(app, job, "running").await?;
        Ok("VM is running again".into())
    }
}

struct Activate;

#[async_trait]
impl Step for Activate {
    fn name(&self) -> &'static str {
        "activate"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let img = app.activate_created_image(image_uuid(job)?).await.map_err(|e| e.message)?;
        Ok(format!("image {} ({}) is {}", img.uuid, img.label(), img.state))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let img = app.deactivate_created_image(image_uuid(job)?).await.map_err(|e| e.message)?;
        Ok(format!("image {} is {} again", img.uuid, img.state))
    }
}
