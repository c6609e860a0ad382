//! The `create_image` job: an image from a VM's boot disk (`triton image create`,
//! CloudAPI CreateImageFromMachine, VMAPI `create_image`). The image was written in
//! state `creating` with the job (see [`crate::app::image_create`]).
//!
//! ```text
//!   check ─► stop ─► wait stopped ─► prepare ─► receive disk ─► start again ─► activate
//!     │       │                           │                                     │
//!     │       │                           └ undo: operator-script removed,      └ undo: back
//!     │       │                             VM stopped                            to creating
//!     │       └ undo: asks for the state the VM had again (restarts it)
//!     └ remembers whether the VM ran and its autoboot, before anything is changed;
//!       undo: the image failed {message: for its owner, code?}, its file removed
//! ```
//! `check` changes nothing, so what it remembers is saved with it before `stop` or
//! `prepare` change the VM: a crash in the middle of either reruns it knowing the VM's
//! state and autoboot from before the job, not the ones the job itself set.
//!
//! The image's owner reads its `error`: it says which step failed in words of its own
//! (and, for a preparation, what the guest itself said), never the agent's or qemu-img's
//! text, which name servers, addresses and paths; the job keeps the whole reason.
//!
//! `prepare` runs only when the request carried a `prepare_image_script` (VMAPI): the
//! guest is booted with it as its `sdc:operator-script` (autoboot off, so its own power-off
//! sticks) and follows Triton's prepare-image protocol, writing
//! `prepare-image:state` = `running`, then `success` or `error` (`prepare-image:error`
//! says why), then powering itself off:
//!
//! ```text
//!   booted ──running──► preparing ──success + stopped──► done (script removed, stopped)
//!     │                     └──────error + stopped──────► PrepareImageError
//!     └ no "running" within prepare_image_timeout ──────► PrepareImageDidNotRun
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

use serde_json::{Map, Value};

use super::power::send;
use super::push::push;
use super::{Seen, Step, StepResultT, data, param, wait_for_server};
use crate::app::App;
use crate::app::image_create::{PREPARE_TIMEOUT_SECS, image_error, tenant_message};

/// Where the guest says how its preparation goes (`customer_metadata`, as imgadm reads it).
pub const STATE_KEY: &str = "prepare-image:state";
pub const ERROR_KEY: &str = "prepare-image:error";

pub fn chain() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(Check),
        Box::new(Stop),
        Box::new(WaitStopped),
        Box::new(PrepareImage),
        Box::new(ReceiveDisk),
        Box::new(StartAgain),
        Box::new(Activate),
    ]
}

fn image_uuid(job: &Job) -> Result<Uuid, String> {
    param::<Uuid>(job, "image_uuid").ok_or_else(|| "the job has no image_uuid".to_string())
}

/// What `check` remembers of the VM before the job changes it (idempotent: recorded once).
fn remember(job: &mut Job, vm: &nereid_types::vm::Vm) {
    if !job.data.contains_key("previous") {
        let previous = vm.desired_state.clone().or_else(|| vm.state.clone()).unwrap_or_default();
        job.data.insert("previous".into(), json!(previous));
    }
    if !job.data.contains_key("autoboot_before") {
        job.data.insert("autoboot_before".into(), json!(vm.autoboot));
    }
}

/// Whether the VM ran when the job began (recorded by `check`).
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
        if !matches!(img.state.as_str(), "creating" | "active") {
            return Err(format!("image {uuid} is {}, not creating", img.state));
        }
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
        remember(job, &vm);
        Ok(format!("image {uuid} ({}) is {}; the VM is {}", img.label(), img.state, data::<String>(job, "previous").unwrap_or_default()))
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        let uuid = image_uuid(job)?;
        let step = failed_step(job);
        let why = tenant_message(&step, data::<String>(job, "tenant_error").as_deref());
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
        // Recorded by `check` (a job queued before it was, records it here).
        let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
        remember(job, &vm);
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

/// The step whose failure unwinds the job: the last with an error, else the one named
/// at the head of the job's error.
fn failed_step(job: &Job) -> String {
    job.chain_results
        .iter()
        .rev()
        .find(|r| !r.error.is_empty())
        .map(|r| r.name.clone())
        .or_else(|| job.error.as_deref().and_then(|e| e.split_once(": ")).map(|(s, _)| s.to_string()))
        .unwrap_or_default()
}

/// At most this much of what a guest says of its failed preparation reaches the image.
const GUEST_ERROR_MAX: usize = 1024;

/// Where a guest's preparation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prep {
    Pending,
    Done,
    /// IMGAPI's error code and why.
    Failed(&'static str, String),
}

/// Judges the prepare-image protocol from what the guest wrote and whether its server
/// reports it stopped, `elapsed` after it was booted for it (pure).
pub fn judge_prepare(state: Option<&str>, error: Option<&str>, stopped: bool, elapsed: Duration, timeout: Duration) -> Prep {
    match (state, stopped) {
        (Some("success"), true) => Prep::Done,
        (Some("error"), true) => {
            let said = error.map(|e| e.chars().take(GUEST_ERROR_MAX).collect::<String>());
            Prep::Failed(
                "PrepareImageError",
                format!("the guest could not prepare itself: {}", said.as_deref().unwrap_or("it gave no reason")),
            )
        }
        (Some("running"), true) => Prep::Failed("PrepareImageError", "the guest stopped before it said its preparation succeeded".into()),
        (Some("running" | "success" | "error"), false) => Prep::Pending,
        _ if elapsed > timeout => Prep::Failed(
            "PrepareImageDidNotRun",
            format!(
                "the guest did not start preparing itself within {} s (it never set {STATE_KEY} to running): \
                 its image must run sdc:operator-script at boot",
                timeout.as_secs()
            ),
        ),
        _ => Prep::Pending,
    }
}

fn remove_prepare_keys(v: &mut nereid_types::vm::Vm) {
    if let Some(c) = v.customer_metadata.as_mut() {
        c.remove(STATE_KEY);
        c.remove(ERROR_KEY);
    }
}

/// Takes the operator-script out again, restores autoboot and leaves the VM stopped
/// (after a preparation, or to undo one; harmless when none was begun).
async fn unprepare(app: &App, job: &mut Job) -> Result<(), String> {
    if !job.data.contains_key("prepare_gen") {
        return Ok(());
    }
    let autoboot: Option<bool> = data::<Option<bool>>(job, "autoboot_before").flatten();
    push(
        app,
        job,
        "unprepare_gen",
        |v| {
            if let Some(m) = v.internal_metadata.as_mut() {
                m.remove("operator-script");
            }
            remove_prepare_keys(v);
            v.autoboot = autoboot;
            v.desired_state = Some("stopped".into());
            Ok(())
        },
        true,
    )
    .await?;
    wait_for(app, job, "stopped").await
}

struct PrepareImage;

#[async_trait]
impl Step for PrepareImage {
    fn name(&self) -> &'static str {
        "prepare"
    }
    /// The guest's timeout (at most an hour) plus its preparation and power-off.
    fn deadline(&self, app: &App) -> Duration {
        prepare_deadline(app.cfg.step_deadline)
    }
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT {
        let Some(script) = param::<String>(job, "prepare_image_script") else {
            return Ok("no prepare-image script: the disk is taken as it is".into());
        };
        let timeout = Duration::from_secs(param::<u64>(job, "prepare_image_timeout").unwrap_or(PREPARE_TIMEOUT_SECS));
        let server = job.server_uuid.ok_or("the job has no server")?;
        if !job.data.contains_key("autoboot_before") {
            // Recorded by `check`; only a job queued before it was gets here.
            let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
            remember(job, &vm);
        }
        if !job.data.contains_key("prepare_started_ms") {
            push(
                app,
                job,
                "prepare_gen",
                |v| {
                    v.internal_metadata.get_or_insert_with(Map::new).insert("operator-script".into(), json!(script));
                    remove_prepare_keys(v);
                    // Its own power-off ends the preparation: nothing may boot it again.
                    v.autoboot = Some(false);
                    v.desired_state = Some("running".into());
                    Ok(())
                },
                false,
            )
            .await?;
            job.data.insert("prepare_started_ms".into(), json!(nereid_types::time::now_ms()));
        }
        let started: i64 = data(job, "prepare_started_ms").unwrap_or_else(nereid_types::time::now_ms);
        loop {
            let (vm, _) = app.get_vm(job.vm_uuid, None).await.map_err(|e| e.message)?;
            let said = |k: &str| vm.customer_metadata.as_ref().and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_string);
            let stopped = matches!(app.agent_get(server, job.vm_uuid).await, Ok(Some(st)) if st.state == "stopped");
            let elapsed = Duration::from_millis((nereid_types::time::now_ms() - started).max(0) as u64);
            match judge_prepare(said(STATE_KEY).as_deref(), said(ERROR_KEY).as_deref(), stopped, elapsed, timeout) {
                Prep::Pending => tokio::time::sleep(Duration::from_millis(500)).await,
                Prep::Done => break,
                Prep::Failed(code, why) => {
                    job.data.insert("error_code".into(), json!(code));
                    // Our words and the guest's own: its owner may read them.
                    job.data.insert("tenant_error".into(), json!(why));
                    return Err(why);
                }
            }
        }
        unprepare(app, job).await?;
        Ok("the guest prepared itself and stopped".into())
    }
    async fn undo(&self, app: &App, job: &mut Job) -> StepResultT {
        if !job.data.contains_key("prepare_gen") {
            return Ok("nothing was prepared".into());
        }
        unprepare(app, job).await?;
        Ok("operator-script removed, VM stopped".into())
    }
}

/// `prepare`'s deadline: the guest's timeout (at most an hour) plus its preparation and
/// power-off.
pub fn prepare_deadline(step_deadline: Duration) -> Duration {
    step_deadline.max(Duration::from_secs(1800)) + Duration::from_secs(3600)
}

/// `receive disk`'s deadline: a disk of many GiB takes a while to flatten and carry; an
/// hour at least.
pub fn receive_deadline(step_deadline: Duration) -> Duration {
    step_deadline.max(Duration::from_secs(3600))
}

/// Time a job may spend queued behind the VM's other jobs before its first step.
const QUEUED_MARGIN: Duration = Duration::from_secs(1800);

/// The whole job's deadline in seconds (counted from its creation, queueing included):
/// every step's own deadline, `prepare`'s only when the guest prepares itself, plus a
/// margin. Anything less would fail an image whose steps were all within their limits.
pub fn job_timeout_secs(step_deadline: Duration, prepares: bool) -> u64 {
    let short = Duration::from_secs(120); // check, stop, activate: the default step deadline
    let mut total = short * 3 + step_deadline * 2 + receive_deadline(step_deadline) + QUEUED_MARGIN;
    if prepares {
        total += prepare_deadline(step_deadline);
    }
    total.as_secs()
}

struct ReceiveDisk;

impl ReceiveDisk {
    fn within(app: &App) -> Duration {
        receive_deadline(app.cfg.step_deadline)
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
        match app.receive_vm_disk(uuid, server, job.vm_uuid, Self::within(app)).await {
            Ok(m) => Ok(m),
            Err(f) => {
                job.data.insert("tenant_error".into(), json!(f.tenant));
                Err(f.detail)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_deadline_covers_every_steps_own() {
        for sd in [Duration::from_secs(10), Duration::from_secs(300), Duration::from_secs(7200)] {
            let steps = Duration::from_secs(120) * 3 + sd * 2 + receive_deadline(sd);
            assert!(job_timeout_secs(sd, false) > steps.as_secs(), "{sd:?}");
            let with_prepare = steps + prepare_deadline(sd);
            assert!(job_timeout_secs(sd, true) > with_prepare.as_secs(), "{sd:?}");
            // The longest prepare timeout a request may ask for fits in prepare's deadline.
            assert!(prepare_deadline(sd) > Duration::from_secs(3600));
        }
        // More than the hour every other job has, which a slow guest or a big disk overran.
        assert!(job_timeout_secs(Duration::from_secs(300), true) > 3 * 3600);
    }

    #[test]
    fn the_failed_step_is_the_one_with_an_error() {
        use nereid_types::job::StepResult;
        let mut job = crate::jobs::new_job("create_image", Uuid::nil(), None, None, Map::new());
        let ok = |n: &str| StepResult { name: n.into(), result: "ok".into(), ..Default::default() };
        job.chain_results =
            vec![ok("check"), ok("stop"), StepResult { name: "wait stopped".into(), error: "boom".into(), ..Default::default() }];
        assert_eq!(failed_step(&job), "wait stopped");
        job.chain_results.clear();
        job.error = Some("receive disk: server x (https://10.0.0.1:4444) said no".into());
        assert_eq!(failed_step(&job), "receive disk");
    }

    #[test]
    fn what_check_remembers_is_kept_once() {
        let mut job = crate::jobs::new_job("create_image", Uuid::nil(), None, None, Map::new());
        let mut vm: nereid_types::vm::Vm = serde_json::from_value(json!({"uuid": Uuid::nil()})).unwrap();
        vm.desired_state = Some("running".into());
        vm.autoboot = Some(true);
        remember(&mut job, &vm);
        // The job then stops the VM and turns autoboot off; a rerun keeps the first record.
        vm.desired_state = Some("stopped".into());
        vm.autoboot = Some(false);
        remember(&mut job, &vm);
        assert!(was_running(&job));
        assert_eq!(data::<Option<bool>>(&job, "autoboot_before"), Some(Some(true)));
    }

    #[test]
    fn the_prepare_image_protocol() {
        let (t, s) = (Duration::from_secs(300), Duration::from_secs(1));
        let late = Duration::from_secs(301);
        assert_eq!(judge_prepare(None, None, false, s, t), Prep::Pending, "booting");
        assert_eq!(judge_prepare(None, None, true, s, t), Prep::Pending, "not started yet");
        assert_eq!(judge_prepare(Some("running"), None, false, late, t), Prep::Pending, "preparing may take longer than the start timeout");
        assert_eq!(judge_prepare(Some("success"), None, false, s, t), Prep::Pending, "not powered off yet");
        assert_eq!(judge_prepare(Some("success"), None, true, late, t), Prep::Done);
        match judge_prepare(Some("error"), Some("disk full"), true, s, t) {
            Prep::Failed("PrepareImageError", m) => assert!(m.contains("disk full"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(judge_prepare(Some("running"), None, true, s, t), Prep::Failed("PrepareImageError", _)));
        for (state, stopped) in [(None, false), (None, true), (Some("bogus"), false)] {
            match judge_prepare(state, None, stopped, late, t) {
                Prep::Failed("PrepareImageDidNotRun", m) => assert!(m.contains("300 s") && m.contains("operator-script"), "{m}"),
                other => panic!("{state:?}/{stopped}: {other:?}"),
            }
        }
    }
}
