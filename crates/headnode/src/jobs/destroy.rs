//! The destroy job: the server deletes the VM, then the record is marked destroyed (Nereid
//! does not wait for a separate agent to notice, unlike Triton), and its NICs, addresses
//! and any reservation are released. Destroy only goes forward: a failed step fails the
//! job and leaves the rest as it was, reported — and DeleteVm on a destroyed VM that still
//! holds NICs or capacity runs the cleanup again (without a server), until it is done.

use async_trait::async_trait;
use nereid_types::job::Job;

use super::{Step, StepResultT};
use crate::app::App;

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![Box::new(Delete), Box::new(MarkDestroyed), Box::new(FreeNics), Box::new(Release)]
}

struct Delete;

#[async_trait]
impl Step for Delete {
    fn name(&self) -> &'static str {
        "delete"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let Some(server) = job.server_uuid else { return Ok("no server to ask: the VM runs nowhere".into()) };
        app.agent_delete_and_wait(server, job.vm_uuid, app.cfg.step_deadline).await.map_err(|e| e.to_string())?;
        Ok("the server deleted the VM".into())
    }
}

struct MarkDestroyed;

#[async_trait]
impl Step for MarkDestroyed {
    fn name(&self) -> &'static str {
        "mark_destroyed"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        app.mark_vm_destroyed(job.vm_uuid, true).await.map_err(|e| e.message)?;
        Ok("record marked destroyed".into())
    }
}

struct FreeNics;

#[async_trait]
impl Step for FreeNics {
    fn name(&self) -> &'static str {
        "free_nics"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let n = app.free_vm_nics(job.vm_uuid).await.map_err(|e| e.message)?;
        Ok(format!("{n} NIC(s) deleted and their addresses freed"))
    }
}

struct Release;

#[async_trait]
impl Step for Release {
    fn name(&self) -> &'static str {
        "release"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        app.release_reservations(job.vm_uuid, None).await.map_err(|e| e.message)?;
        Ok("capacity released".into())
    }
}
