//! Durable jobs (sagas): each VM operation is a chain of named steps, each idempotent and
//! with an undo, run by whichever headnode holds the job's lease.
//!
//! ```text
//!            claim lease                    step ok: cursor+1, persist
//!   queued ───────────────► running ──┬──────────────────────────────► … ──► succeeded
//!                               ▲     │ step fails / misses its deadline
//!      lease expired or         │     ▼
//!      headnode restarted ──────┘   unwinding: undo steps cursor-1 … 0, persist each ──► failed
//! ```
//!
//! Theory of operation:
//! - The job record (types::job::Job) is rewritten after every step, in the same
//!   transaction as a check that this headnode still holds the lease; a headnode that lost
//!   its lease stops at once. A crash leaves the record at the last finished step. One
//!   write records a step's end together with the next step's start (or the job's end),
//!   so a chain of N steps costs N + 1 writes; the last one also gives the lease up. A
//!   queued job's first write also takes its lease ([`Runner::claim_and_start`]).
//! - A lease (`job_leases`) names the headnode and an expiry; the holder renews it. Another
//!   headnode takes over an expired lease; a restarted headnode takes back its own at once.
//! - The step under the cursor is simply run again after a takeover, so every step must be
//!   idempotent (and every undo harmless when there is nothing to undo).
//! - Jobs of one VM run in the order they were created.
//!
//! A new job type is a chain in [`chain`] and its steps in a file beside this one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nereid_store::{Cond, Filter, ListQuery, Op};
use nereid_types::job::{Job, Phase, StepResult};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex as AsyncMutex;
use uuid::Uuid;

use crate::app::{App, encode};
use crate::buckets::{JOB_LEASES, JOBS};
use crate::fence::{Fence, fenced};

pub mod destroy;
pub mod image_create;
pub mod migrate;
pub mod nics;
pub mod power;
pub mod provision;
pub mod push;
pub mod snapshot;
pub mod update;

/// What a step returns: a line for `chain_results`, or why it failed.
pub type StepResultT = Result<String, String>;

/// One step of a job.
#[async_trait]
pub trait Step: Send + Sync {
    fn name(&self) -> &'static str;
    /// How long the step may take before the job gives up on it and unwinds.
    fn deadline(&self, _app: &App) -> Duration {
        Duration::from_secs(120)
    }
    /// Does the step. Must be idempotent: it may run again after a crash.
    async fn run(&self, app: &App, job: &mut Job) -> StepResultT;
    /// Undoes the step. Must be harmless when the step did nothing or was undone already.
    async fn undo(&self, _app: &App, _job: &mut Job) -> StepResultT {
        Ok("nothing to undo".into())
    }
}

/// The steps of a job type.
pub fn chain(task: &str) -> Vec<Box<dyn Step>> {
    match task {
        "provision" => provision::chain(),
        "destroy" => destroy::chain(),
        "start" | "stop" | "reboot" => power::chain(),
        "update" => update::chain(),
        "snapshot" => snapshot::chain(),
        "create_image" => image_create::chain(),
        t if t.starts_with("migrate-") => migrate::chain(t),
        "add_nics" | "update_nics" | "remove_nics" => nics::chain(),
        _ => Vec::new(),
    }
}

/// A fresh job record.
pub fn new_job(task: &str, vm: Uuid, server: Option<Uuid>, owner: Option<Uuid>, params: Map<String, Value>) -> Job {
    let now = nereid_types::time::now_iso();
    Job {
        uuid: Uuid::new_v4(),
        name: format!("{task}-nereid-1"),
        task: task.into(),
        vm_uuid: vm,
        server_uuid: server,
        owner_uuid: owner,
        execution: "queued".into(),
        phase: Phase::Forward,
        cursor: 0,
        chain: chain(task).iter().map(|s| s.name().to_string()).collect(),
        chain_results: Vec::new(),
        onerror_results: Vec::new(),
        params,
        data: Map::new(),
        created_at: now,
        created_ms: nereid_types::time::now_ms(),
        started: None,
        finished: None,
        error: None,
        timeout: 3600,
    }
}

/// The op writing a new job (put it in the same batch as what the job is for).
pub fn job_op(j: &Job) -> Op {
    Op::put(JOBS.name, j.uuid.to_string(), encode(j), Cond::Absent)
}

/// When a pause hook fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

/// Test hooks: run every step twice, fail at a step, undo twice, or stop the job at a
/// step so a test can kill the process there.
#[derive(Default)]
pub struct Hooks {
    pub double_run: AtomicBool,
    pub double_undo: AtomicBool,
    pub fail_at: std::sync::Mutex<Option<(String, String)>>,
    /// `(task, step, when, marker file)`: write the marker and hang (until [`resume`]).
    ///
    /// [`resume`]: Hooks::resume
    pub pause_at: std::sync::Mutex<Option<(String, String, When, std::path::PathBuf)>>,
    /// Wakes a job paused by `pause_at` (in-process tests).
    pub resume: tokio::sync::Notify,
}

impl Hooks {
    /// `NEREID_TEST_PAUSE_AT=task:step:before|after` and `NEREID_TEST_FAIL_AT=task:step`
    /// (used by the crash tests; an undo is named `undo <step>`). Read only by builds with
    /// the `test-hooks` feature, which the tests enable and release builds do not: a
    /// production headnode says it ignores them.
    pub fn from_env(data_dir: &std::path::Path) -> Hooks {
        let fail = std::env::var("NEREID_TEST_FAIL_AT").ok();
        let pause = std::env::var("NEREID_TEST_PAUSE_AT").ok();
        if !cfg!(feature = "test-hooks") {
            if fail.is_some() || pause.is_some() {
                tracing::warn!("NEREID_TEST_FAIL_AT / NEREID_TEST_PAUSE_AT are ignored: this build has no test hooks");
            }
            return Hooks::default();
        }
        Hooks::parse(fail.as_deref(), pause.as_deref(), data_dir)
    }

    /// The hooks the two variables' values ask for (pure).
    pub fn parse(fail: Option<&str>, pause: Option<&str>, data_dir: &std::path::Path) -> Hooks {
        let h = Hooks::default();
        if let Some((t, s)) = fail.and_then(|v| v.split_once(':')) {
            *h.fail_at.lock().unwrap_or_else(|p| p.into_inner()) = Some((t.into(), s.into()));
        }
        if let Some(v) = pause {
            let parts: Vec<&str> = v.split(':').collect();
            if parts.len() == 3 {
                let when = if parts[2] == "before" { When::Before } else { When::After };
                *h.pause_at.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((parts[0].into(), parts[1].into(), when, data_dir.join("paused-at")));
            }
        }
        h
    }

    fn fails(&self, task: &str, step: &str) -> bool {
        self.fail_at.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|(t, s)| t == task && s == step)
    }

    async fn maybe_pause(&self, task: &str, step: &str, when: When) {
        let hit = self
            .pause_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|(t, s, w, f)| (t == task && s == step && *w == when).then(|| f.clone()));
        if let Some(marker) = hit {
            let _ = std::fs::write(&marker, format!("{task}:{step}:{when:?}"));
            tracing::warn!(task, step, ?when, "paused by NEREID_TEST_PAUSE_AT");
            self.resume.notified().await;
            let _ = std::fs::remove_file(&marker);
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    owner: String,
    until_ms: i64,
}

/// What the runner needs of an open job to order and claim it (the rest of the record,
/// its parameters and results, is read by the drive that runs it).
#[derive(Debug, Clone)]
struct Head {
    uuid: Uuid,
    vm_uuid: Uuid,
    server_uuid: Option<Uuid>,
    created_ms: i64,
    /// A queued job's whole record and its generation, as this tick read it: claimed and
    /// started in one write ([`Runner::claim_and_start`]).
    queued: Option<Arc<(Job, i64)>>,
}

/// Runs queued jobs and takes over abandoned ones.
pub struct Runner {
    app: Arc<App>,
    /// The jobs this headnode drives or is claiming, by UUID.
    running: std::sync::Mutex<std::collections::HashMap<Uuid, Head>>,
    /// Leases this headnode held before it restarted may be taken back at once.
    started_ms: i64,
    /// Leases held by others: the generation last seen and when it was first seen (this
    /// headnode's monotonic clock).
    seen: std::sync::Mutex<std::collections::HashMap<Uuid, (i64, std::time::Instant)>>,
}

/// Takes a job off [`Runner::running`] when dropped.
struct Unmark<'a> {
    runner: &'a Runner,
    job: Uuid,
}

impl Drop for Unmark<'_> {
    fn drop(&mut self) {
        self.runner.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.job);
    }
}

impl Runner {
    pub fn new(app: Arc<App>) -> Arc<Runner> {
        Arc::new(Runner { app, running: Default::default(), started_ms: nereid_types::time::now_ms(), seen: Default::default() })
    }

    /// The runner's loop; wakes on new jobs and every half second. The jobs it drives
    /// belong to it: when the loop is dropped (the headnode halts), they stop where they
    /// stand, as in a crash.
    pub async fn run(self: Arc<Self>) {
        let mut drives = tokio::task::JoinSet::new();
        loop {
            while drives.try_join_next().is_some() {}
            if let Err(e) = self.tick(&mut drives).await {
                tracing::warn!(error = %e, "job runner could not scan jobs");
            }
            tokio::select! {
                _ = self.app.jobs_notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The open jobs: one lookup on the `execution` index (both stores answer the OR of
    /// its values from the index, so it does not grow with the job history), as versions
    /// only; the heads of jobs this headnode drives are known, the others are fetched (a
    /// job record, with its parameters and results, is the largest thing a tick would
    /// otherwise read and parse, every time a job starts or ends).
    async fn open_jobs(&self) -> Result<Vec<Head>, nereid_types::ApiError> {
        let states = vec![Value::from("queued"), Value::from("running")];
        let q = ListQuery::filter(Filter::any_of("execution", states));
        let listed = self.app.store.list_versions(JOBS.name, &q).await.map_err(crate::app::store_error)?;
        let mut open = Vec::with_capacity(listed.len());
        let mut missing = Vec::new();
        {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            for v in listed {
                match Uuid::parse_str(&v.key).ok().and_then(|u| running.get(&u)) {
                    Some(h) => open.push(h.clone()),
                    None => missing.push(v.key),
                }
            }
        }
        if !missing.is_empty() {
            for row in self.app.store.get_raw_many(JOBS.name, &missing).await.map_err(crate::app::store_error)? {
                // Decoded whole: a record the drive could not read is never claimed.
                match serde_json::from_str::<Job>(&row.json) {
                    Ok(j) => open.push(Head {
                        uuid: j.uuid,
                        vm_uuid: j.vm_uuid,
                        server_uuid: j.server_uuid,
                        created_ms: j.created_ms,
                        queued: (j.execution == "queued").then(|| Arc::new((j, row.generation))),
                    }),
                    // One damaged job record never stops the others.
                    Err(e) => tracing::warn!(job = %row.key, error = %e, "a job record does not decode; skipped"),
                }
            }
        }
        Ok(open)
    }

    async fn tick(self: &Arc<Self>, drives: &mut tokio::task::JoinSet<()>) -> Result<(), nereid_types::ApiError> {
        let mut open = self.open_jobs().await?;
        // Oldest first, ties by key, as the store sorts.
        open.sort_by_cached_key(|j| (j.created_ms, j.uuid.to_string()));
        let mut first_per_vm = std::collections::HashSet::new();
        for job in open {
            // Jobs of one VM run in order: only the oldest open one may go.
            if !first_per_vm.insert(job.vm_uuid) {
                continue;
            }
            // Taken here (so the next tick leaves it alone) and claimed in its own task: the
            // claims of a tick's new jobs go to the store together, in one commit, instead
            // of each waiting for the one before.
            match self.running.lock().unwrap_or_else(|p| p.into_inner()).entry(job.uuid) {
                std::collections::hash_map::Entry::Occupied(_) => continue,
                std::collections::hash_map::Entry::Vacant(v) => {
                    // (Kept without the record: its drive has its own copy.)
                    v.insert(Head { queued: None, ..job.clone() });
                }
            }
            let me = self.clone();
            let mut job = job;
            drives.spawn(async move {
                let id = job.uuid;
                // However the task ends (a claim the store refused, a drive that panicked),
                // the job is no longer this headnode's: a later tick looks at it again.
                let unmark = Unmark { runner: &me, job: id };
                // (The record read by the tick goes once the claim is made: the drive has its own.)
                let started = match job.queued.take() {
                    Some(q) => me.claim_and_start(&q).await,
                    None => None,
                };
                match started {
                    Some((lease_gen, run)) => me.drive(id, lease_gen, Some(run)).await,
                    None => {
                        let Some(lease_gen) = me.claim(id).await else {
                            return;
                        };
                        me.drive(id, lease_gen, None).await;
                    }
                }
                // What the job held or changed on its server counts differently now.
                if let Some(server) = job.server_uuid {
                    me.app.capacity_touch(server);
                }
                drop(unmark);
                me.app.jobs_notify.notify_one();
                // A VM came, went or changed (tags, firewall_enabled, NICs).
                me.app.netpolicy_notify.notify_one();
                // ... and its DNS names with it.
                me.app.cns_notify.notify_one();
            });
        }
        Ok(())
    }

    /// A queued job nobody holds, as this tick read it: its lease taken and the job marked
    /// running, in one write (instead of a claim, a read and a write). `None` when the
    /// lease is held or the record changed since it was read: the usual claim decides.
    async fn claim_and_start(&self, queued: &(Job, i64)) -> Option<(i64, (Job, i64))> {
        let (job, generation) = queued;
        let mut job = job.clone();
        let id = job.uuid;
        if !start(&mut job) {
            return None;
        }
        let now = nereid_types::time::now_ms();
        let lease = Lease { owner: self.app.cfg.headnode_id.clone(), until_ms: now + self.app.cfg.job_lease.as_millis() as i64 };
        let ops = vec![
            Op::put(JOB_LEASES.name, id.to_string(), encode(&lease), Cond::Absent),
            Op::put(JOBS.name, id.to_string(), encode(&job), Cond::Generation(*generation)),
        ];
        let gens = match self.app.store.batch(ops).await {
            Ok(g) => g,
            Err(e) => {
                if !e.is_conflict() {
                    tracing::debug!(job = %id, error = %e, "could not claim and start a queued job in one write; claiming it alone");
                }
                return None;
            }
        };
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.app.metrics.job_event(&job.task, "running");
        Some((gens[0], (job, gens[1])))
    }

    /// Takes the job's lease if it is free, expired, or ours from before a restart.
    ///
    /// Expiry is judged by this headnode's own monotonic clock, never by comparing another
    /// headnode's wall clock with ours: a lease is expired once its generation has not
    /// changed (no renewal) for a whole lease period *as seen from here*.
    async fn claim(&self, job: Uuid) -> Option<i64> {
        let now = nereid_types::time::now_ms();
        let lease = Lease { owner: self.app.cfg.headnode_id.clone(), until_ms: now + self.app.cfg.job_lease.as_millis() as i64 };
        // The common case, a new job nobody holds, takes one write.
        match self.app.store.put(JOB_LEASES.name, &job.to_string(), encode(&lease), Cond::Absent).await {
            Ok(g) => {
                self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
                return Some(g);
            }
            Err(e) if e.is_conflict() => {}
            Err(_) => return None,
        }
        let cond = match self.app.store.get(JOB_LEASES.name, &job.to_string()).await.ok()? {
            None => Cond::Absent,
            Some(o) => {
                let cur: Option<Lease> = serde_json::from_value(o.value).ok();
                let ours_from_before = cur.as_ref().is_some_and(|c| c.owner == self.app.cfg.headnode_id) && o.mtime < self.started_ms;
                if !ours_from_before && !self.silent_for_a_lease(job, o.generation) {
                    return None;
                }
                Cond::Generation(o.generation)
            }
        };
        let taken = self.app.store.put(JOB_LEASES.name, &job.to_string(), encode(&lease), cond).await.ok();
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&job);
        taken
    }

    /// Whether the lease at `generation` has gone unrenewed for a lease period, measured here.
    fn silent_for_a_lease(&self, job: Uuid, generation: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if seen.len() > 10_000 {
            seen.retain(|_, (_, t)| now.duration_since(*t) < self.app.cfg.job_lease * 4);
        }
        match seen.get(&job) {
            Some((g, since)) if *g == generation => now.duration_since(*since) >= self.app.cfg.job_lease,
            _ => {
                seen.insert(job, (generation, now));
                false
            }
        }
    }

    /// Runs the job under the lease at `lease_gen`; `started` is the record when
    /// [`Self::claim_and_start`] has marked it running already.
    async fn drive(self: &Arc<Self>, id: Uuid, lease_gen: i64, started: Option<(Job, i64)>) {
        let lease = Arc::new(AsyncMutex::new(Some(lease_gen)));
        // Aborted with the drive, however it ends (a halted headnode renews nothing).
        let keeper = AbortOnDrop({
            let (app, lease) = (self.app.clone(), lease.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(app.cfg.job_lease / 3).await;
                    let mut g = lease.lock().await;
                    let Some(cur) = *g else { return };
                    let l = Lease {
                        owner: app.cfg.headnode_id.clone(),
                        until_ms: nereid_types::time::now_ms() + app.cfg.job_lease.as_millis() as i64,
                    };
                    match app.store.put(JOB_LEASES.name, &id.to_string(), encode(&l), Cond::Generation(cur)).await {
                        Ok(next) => *g = Some(next),
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "lost the job lease");
                            *g = None;
                            return;
                        }
                    }
                }
            })
        });
        if let Err(e) = self.steps(id, &lease, started).await {
            tracing::warn!(job = %id, error = %e, "job driver stopped");
        }
        drop(keeper);
        let g = lease.lock().await.take();
        if let Some(g) = g {
            let _ = self.app.store.delete(JOB_LEASES.name, &id.to_string(), Cond::Generation(g)).await;
        }
    }

    /// Writes the job if we still hold the lease. A job that is done gives the lease up in
    /// the same write (one commit fewer per job than deleting it afterwards).
    async fn persist(&self, job: &Job, job_gen: &mut i64, lease: &AsyncMutex<Option<i64>>) -> Result<(), String> {
        let mut g = lease.lock().await;
        let Some(lg) = *g else { return Err("the lease was lost".into()) };
        let done = job.is_done();
        let held = Cond::Generation(lg);
        let ops = vec![
            if done {
                Op::delete(JOB_LEASES.name, job.uuid.to_string(), held)
            } else {
                Op::check(JOB_LEASES.name, job.uuid.to_string(), held)
            },
            Op::put(JOBS.name, job.uuid.to_string(), encode(job), Cond::Generation(*job_gen)),
        ];
        match self.app.store.batch(ops).await {
            Ok(gens) => {
                *job_gen = gens[1];
                if done {
                    // Nothing left to renew or to delete.
                    *g = None;
                    // Whoever waits for the job's end is answered now.
                    self.app.job_waits.wake(job.uuid, || None);
                }
                Ok(())
            }
            Err(e) => Err(format!("could not record progress: {e}")),
        }
    }

    async fn steps(&self, id: Uuid, lease: &Arc<AsyncMutex<Option<i64>>>, started: Option<(Job, i64)>) -> Result<(), String> {
        let app = &self.app;
        let (mut job, mut job_gen) = match started {
            Some(s) => s,
            None => {
                let Some(read) = app.read::<Job>(JOBS.name, &id.to_string()).await.map_err(|e| e.message)? else { return Ok(()) };
                read
            }
        };
        let steps = chain(&job.task);
        if job.is_done() {
            return Ok(());
        }
        if start(&mut job) {
            self.persist(&job, &mut job_gen, lease).await?;
            app.metrics.job_event(&job.task, "running");
        }
        let hooks = &app.hooks;
        loop {
            match job.phase {
                Phase::Forward => {
                    if job.cursor >= steps.len() {
                        job.execution = "succeeded".into();
                        job.finished = Some(nereid_types::time::now_iso());
                        self.persist(&job, &mut job_gen, lease).await?;
                        app.metrics.job_event(&job.task, "succeeded");
                        tracing::info!(job = %id, task = %job.task, vm = %job.vm_uuid, "job succeeded");
                        return Ok(());
                    }
                    let step = &steps[job.cursor];
                    let name = step.name();
                    let started = nereid_types::time::now_iso();
                    if job.chain_results.len() <= job.cursor {
                        job.chain_results.push(StepResult { name: name.into(), started_at: Some(started), ..Default::default() });
                        self.persist(&job, &mut job_gen, lease).await?;
                    }
                    hooks.maybe_pause(&job.task, name, When::Before).await;
                    // The job's own deadline bounds every step: a job past it is failed
                    // and unwound, whoever runs it.
                    let left_ms = job.created_ms + (job.timeout as i64) * 1000 - nereid_types::time::now_ms();
                    let deadline = step.deadline(app).min(Duration::from_millis(left_ms.max(0) as u64));
                    let fence = Fence { job: id, lease: lease.clone() };
                    let mut outcome = if left_ms <= 0 {
                        Err(format!("the job passed its deadline of {} s", job.timeout))
                    } else {
                        fenced(fence.clone(), run_with_deadline(step.as_ref(), app, &mut job, deadline)).await
                    };
                    if outcome.is_ok() && hooks.double_run.load(Ordering::SeqCst) {
                        outcome = fenced(fence, run_with_deadline(step.as_ref(), app, &mut job, deadline)).await;
                    }
                    if outcome.is_ok() && hooks.fails(&job.task, name) {
                        outcome = Err(format!("injected failure at step {name}"));
                    }
                    hooks.maybe_pause(&job.task, name, When::After).await;
                    let r = &mut job.chain_results[job.cursor];
                    r.finished_at = Some(nereid_types::time::now_iso());
                    let mut succeeded = false;
                    match outcome {
                        Ok(msg) => {
                            r.result = msg;
                            job.cursor += 1;
                            // One write records this step's end and the next one's start
                            // (or the job's end).
                            let now = nereid_types::time::now_iso();
                            match steps.get(job.cursor) {
                                Some(next) => job.chain_results.push(StepResult {
                                    name: next.name().into(),
                                    started_at: Some(now),
                                    ..Default::default()
                                }),
                                None => {
                                    job.execution = "succeeded".into();
                                    job.finished = Some(now);
                                    succeeded = true;
                                }
                            }
                        }
                        Err(e) => {
                            r.error = e.clone();
                            job.error = Some(format!("{name}: {e}"));
                            job.phase = Phase::Unwinding;
                            job.cursor += 1;
                            tracing::warn!(job = %id, task = %job.task, step = name, error = %e, "job step failed; unwinding");
                        }
                    }
                    self.persist(&job, &mut job_gen, lease).await?;
                    if succeeded {
                        app.metrics.job_event(&job.task, "succeeded");
                        tracing::info!(job = %id, task = %job.task, vm = %job.vm_uuid, "job succeeded");
                        return Ok(());
                    }
                }
                Phase::Unwinding => {
                    if job.cursor == 0 {
                        job.execution = "failed".into();
                        job.finished = Some(nereid_types::time::now_iso());
                        self.persist(&job, &mut job_gen, lease).await?;
                        app.metrics.job_event(&job.task, "failed");
                        return Ok(());
                    }
                    let step = &steps[job.cursor - 1];
                    let started = nereid_types::time::now_iso();
                    let undo_name = format!("undo {}", step.name());
                    hooks.maybe_pause(&job.task, &undo_name, When::Before).await;
                    let fence = Fence { job: id, lease: lease.clone() };
                    let mut outcome = fenced(fence.clone(), undo_with_retries(step.as_ref(), app, &mut job)).await;
                    if outcome.is_ok() && hooks.double_undo.load(Ordering::SeqCst) {
                        outcome = fenced(fence, undo_with_retries(step.as_ref(), app, &mut job)).await;
                    }
                    hooks.maybe_pause(&job.task, &undo_name, When::After).await;
                    let (result, error) = match outcome {
                        Ok(m) => (m, String::new()),
                        Err(e) => {
                            tracing::error!(job = %id, step = step.name(), error = %e, "undo failed; the operator may need to clean up");
                            (String::new(), e)
                        }
                    };
                    job.onerror_results.push(StepResult {
                        name: format!("undo {}", step.name()),
                        result,
                        error,
                        started_at: Some(started),
                        finished_at: Some(nereid_types::time::now_iso()),
                    });
                    job.cursor -= 1;
                    self.persist(&job, &mut job_gen, lease).await?;
                }
            }
        }
    }
}

/// Marks a queued job running, with its first step's start in the same write; false (and
/// nothing changed) for a job that is not queued.
fn start(job: &mut Job) -> bool {
    if job.execution != "queued" {
        return false;
    }
    job.execution = "running".into();
    let now = nereid_types::time::now_iso();
    job.started = Some(now.clone());
    if let Some(first) = chain(&job.task).first().filter(|_| job.chain_results.is_empty() && job.cursor == 0) {
        job.chain_results.push(StepResult { name: first.name().into(), started_at: Some(now), ..Default::default() });
    }
    true
}

async fn run_with_deadline(step: &dyn Step, app: &App, job: &mut Job, deadline: Duration) -> StepResultT {
    match tokio::time::timeout(deadline, step.run(app, job)).await {
        Ok(r) => r,
        Err(_) => Err(format!("did not finish within its deadline of {} s", deadline.as_secs_f64())),
    }
}

async fn undo_with_retries(step: &dyn Step, app: &App, job: &mut Job) -> StepResultT {
    let mut last = String::new();
    for attempt in 0..3 {
        match tokio::time::timeout(step.deadline(app), step.undo(app, job)).await {
            Ok(Ok(m)) => return Ok(m),
            Ok(Err(e)) => last = e,
            Err(_) => last = "undo did not finish within the step's deadline".into(),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last)
}

/// Reads a typed value a step left in `job.data`.
pub fn data<T: serde::de::DeserializeOwned>(job: &Job, key: &str) -> Option<T> {
    job.data.get(key).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Reads a job parameter.
pub fn param<T: serde::de::DeserializeOwned>(job: &Job, key: &str) -> Option<T> {
    job.params.get(key).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// What a wait makes of one report from the VM's server.
pub enum Seen {
    /// Not yet: ask again.
    Pending,
    /// What the step waits for.
    Done,
    /// The server says it will not happen.
    Failed(String),
}

/// Waits until `judge` says done (or failed) of what the VM's server reports: a report
/// it pushed here (already recorded on the VM), else what the server answers when asked
/// (at most every 200 ms; recorded on the VM when done). The step's deadline bounds the
/// wait; an unreachable server is asked again; a server that does not have the VM fails
/// the wait.
pub async fn wait_for_server(
    app: &App,
    job: &Job,
    judge: impl Fn(&nereid_types::agent::VmStatus) -> Seen,
) -> Result<nereid_types::agent::VmStatus, String> {
    let server = job.server_uuid.ok_or("the job has no server")?;
    let vm = job.vm_uuid;
    // The report and whether it is on the record already, once judged done.
    let judge = |st: nereid_types::agent::VmStatus, applied: bool| match judge(&st) {
        Seen::Pending => None,
        Seen::Done => Some(Ok((st, applied))),
        Seen::Failed(e) => Some(Err(e)),
    };
    let judge = &judge;
    // The server's reports of the VM (pushed to this headnode) wake the wait at once, and
    // carry the report once it is applied to the record: then nothing need be asked.
    let wake = app.vm_reports.watch(vm);
    let (st, applied) = crate::app::wakeups::poll(&wake, doubling(WAIT_FIRST), |pushed| async move {
        if let Some((_, st)) = pushed.filter(|(from, _)| *from == server) {
            return judge(st, true);
        }
        match app.agent_get(server, vm).await {
            Ok(Some(st)) => judge(st, false),
            Ok(None) => Some(Err("the server does not have the VM".to_string())),
            Err(e) => {
                tracing::debug!(job = %job.uuid, error = %e, "server not answering; asking again");
                None
            }
        }
    })
    .await?;
    if !applied {
        app.apply_vm_status(server, &st).await.map_err(|e| e.message)?;
    }
    Ok(st)
}

/// The first pause between asks in [`wait_for_server`] when no report woke it; each pause
/// doubles up to [`WAIT_EVERY`]. The server's report of a change wakes the wait at once,
/// so these only set the pace for a server whose reports go to another headnode.
pub const WAIT_FIRST: Duration = Duration::from_millis(25);
/// The longest pause between asks in [`wait_for_server`].
pub const WAIT_EVERY: Duration = Duration::from_millis(200);

/// The pauses of [`wait_for_server`]: `first`, then doubling up to [`WAIT_EVERY`].
fn doubling(first: Duration) -> impl FnMut() -> Duration {
    let mut pause = first;
    move || {
        let p = pause;
        pause = (pause * 2).min(WAIT_EVERY.max(first));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_variables_name_a_task_a_step_and_when() {
        let dir = std::path::Path::new("/data");
        let h = Hooks::parse(Some("provision:wait"), Some("destroy:agent delete:before"), dir);
        assert!(h.fails("provision", "wait") && !h.fails("provision", "reserve"));
        let pause = h.pause_at.lock().unwrap().clone().unwrap();
        assert_eq!(pause, ("destroy".into(), "agent delete".into(), When::Before, dir.join("paused-at")));
        // Malformed values set nothing.
        let h = Hooks::parse(Some("no-colon"), Some("only:two"), dir);
        assert!(h.fail_at.lock().unwrap().is_none() && h.pause_at.lock().unwrap().is_none());
    }
}
