//! The snapshot job: create, roll back to, or delete a VM snapshot.
//!
//! ```text
//!   ensure ─► wait ─► record
//!   create:   list it (state creating), ask the server      → it has it        → created
//!   delete:   mark it deleting, ask the server               → it no longer has → gone from the record
//!   rollback: ask for one more rollback to it (the server    → rollback done,   → state recorded
//!             stops the VM, rolls back, restarts it if it ran)  VM as before
//!   undo of ensure: put the record back and ask the server again
//! ```
//! Snapshots are part of what the server is asked to make true (`Ensure.snapshots`), so
//! a repeated step or a crashed agent converges to the same result.

use std::time::Duration;

use async_trait::async_trait;
use nereid_types::agent::Desired;
use nereid_types::job::Job;
use serde_json::{Value, json};

use super::power::send;
use super::{Seen, Step, StepResultT, data, param, wait_for_server};
use crate::app::App;

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![Box::new(EnsureSnapshot), Box::new(WaitSnapshot), Box::new(Record)]
}

fn op_and_name(job: &Job) -> Result<(String, String), String> {
    Ok((param::<String>(job, "op").ok_or("the job has no op")?, param::<String>(job, "name").ok_or("the job has no name")?))
}

fn is(s: &Value, name: &str) -> bool {
    s.get("name").and_then(Value::as_str) == Some(name)
}

/// What the VM should be doing around the snapshot (as the record wants it).
async fn desired(app: &App, job: &Job) -> Result<Desired, String> {
    let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
    Ok(if vm.desired_state.as_deref().unwrap_or(vm.state.as_deref().unwrap_or("")) == "running" {
        Desired::Running
    } else {
        Desired::Stopped
    })
}

struct EnsureSnapshot;

#[async_trait]
impl Step for EnsureSnapshot {
    fn name(&self) -> &'static str {
        "ensure"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let (op, name) = op_and_name(job)?;
        let now = nereid_types::time::now_iso();
        let mut target = None;
        if op == "rollback" {
            let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
            let t: i64 = data(job, "rollback_target").unwrap_or(vm.rollback_generation + 1);
            job.data.insert("rollback_target".into(), json!(t));
            target = Some(t);
        }
        app.modify_vm(job.vm_uuid, |v| {
            let list = v.snapshots.get_or_insert_with(Vec::new);
            match op.as_str() {
                "create" if !list.iter().any(|s| is(s, &name)) => {
                    list.push(json!({"name": name, "created_at": now, "state": "creating"}));
                }
                "delete" => {
                    for s in list.iter_mut().filter(|s| is(s, &name)) {
                        s["state"] = json!("deleting");
                    }
                }
                _ => {}
            }
            if let Some(t) = target {
                v.rollback_to = Some(name.clone());
                v.rollback_generation = v.rollback_generation.max(t);
            }
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        let want = desired(app, job).await?;
        send(app, job, want, None).await?;
        Ok(format!("asked the server to {op} snapshot {name:?}"))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let (op, name) = op_and_name(job)?;
        if op == "rollback" {
            return Ok("a rollback cannot be undone".into());
        }
        app.modify_vm(job.vm_uuid, |v| {
            let list = v.snapshots.get_or_insert_with(Vec::new);
            match op.as_str() {
                "create" => list.retain(|s| !is(s, &name)),
                _ => {
                    for s in list.iter_mut().filter(|s| is(s, &name)) {
                        if let Some(o) = s.as_object_mut() {
                            o.remove("state");
                        }
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        let want = desired(app, job).await?;
        send(app, job, want, None).await?;
        Ok(format!("snapshot {name:?} put back as it was"))
    }
}

struct WaitSnapshot;

#[async_trait]
impl Step for WaitSnapshot {
    fn name(&self) -> &'static str {
        "wait"
    }
    fn deadline(&self, app: &App) -> Duration {
        app.cfg.step_deadline
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let (op, name) = op_and_name(job)?;
        let target: i64 = data(job, "rollback_target").unwrap_or(0);
        let want = if desired(app, job).await? == Desired::Running { "running" } else { "stopped" };
        wait_for_server(app, job, |st| {
            let has = st.snapshots.iter().any(|n| n == &name);
            let done = match op.as_str() {
                "create" => has,
                "delete" => !has,
                _ => st.rollback_generation >= target && st.state == want,
            };
            match (&st.error, done) {
                (_, true) => Seen::Done,
                (Some(e), false) => Seen::Failed(e.clone()),
                (None, false) => Seen::Pending,
            }
        })
        .await?;
        Ok(format!("the server did {op} snapshot {name:?}"))
    }
}

struct Record;

#[async_trait]
impl Step for Record {
    fn name(&self) -> &'static str {
        "record"
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let (op, name) = op_and_name(job)?;
        let want = if desired(app, job).await? == Desired::Running { "running" } else { "stopped" };
        app.modify_vm(job.vm_uuid, |v| {
            let list = v.snapshots.get_or_insert_with(Vec::new);
            match op.as_str() {
                "create" => {
                    for s in list.iter_mut().filter(|s| is(s, &name)) {
                        if let Some(o) = s.as_object_mut() {
                            o.remove("state");
                        }
                    }
                }
                "delete" => list.retain(|s| !is(s, &name)),
                _ => {
                    v.state = Some(want.into());
                    v.zone_state = Some(want.into());
                }
            }
            v.last_modified = Some(nereid_types::time::now_iso());
            Ok(())
        })
        .await
        .map_err(|e| e.message)?;
        Ok(format!("snapshot {name:?}: {op} recorded"))
    }
}
