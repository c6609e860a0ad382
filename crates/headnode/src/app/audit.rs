//! The audit log: who changed what, from where, when, and how it ended — for every
//! mutating request on the operator API, CloudAPI and the web console, and every failed
//! authentication on any method (the seed's "headnode console session history").
//!
//! ```text
//!   request ──► http::audit_layer (one per router)
//!                  │  who: operator token / account + key / web session / anonymous
//!                  │  (the name a failed attempt tried: token fingerprint, login)
//!                  ▼
//!              scope()      a task-local slot: app code that queues a job while the
//!                  │        request runs names it with note_job()
//!                  ▼
//!              App::record_audit   enqueues (never waits for the store); a failed
//!                  │                   authentication passes the flood limiter first
//!                  ▼
//!              writer task   one per process: drains the queue, one store batch of
//!                            create-only puts (Cond::Absent) per round
//! ```
//!
//! The request only enqueues into a bounded queue ([`QUEUE`] records): the store round
//! trip is off the answer's path. A full queue drops the record, counts it in
//! `nereid_audit_write_failures` and logs at most once a minute — it never blocks or
//! fails the request. [`App::audit_flush`] waits until everything queued before it is
//! written (`GET /audit` calls it, so a reader on this headnode sees its own changes), and
//! the headnode drains the queue when it stops.
//!
//! Failed authentications are limited per client address ([`FloodLimiter`]): at most
//! [`FLOOD_RECORDS`] records a minute; the rest are counted, and one summary record (the
//! last suppressed attempt, with `suppressed: N`) says how many went unrecorded — written
//! when the minute ends, or at a flush. The address table is capped ([`FLOOD_ADDRESSES`]).
//!
//! Records are append-only: a record's key is new when it is written (time-ordered id, a
//! create that fails rather than overwrites), nothing updates one, and no API route writes
//! or deletes the bucket — the operator API only reads it (`GET /audit`). The one deleter
//! is the retention pruner ([`run_pruner`], on one headnode of the cluster at a time):
//! records older than `--audit-retention-days` (default 90) go, oldest first, so the log's growth is bounded by age.
//!
//! Writing never changes the answer of the request it records: a failed write is logged
//! and counted (`nereid_audit_write_failures` on `/metrics`). Paths are recorded without
//! their query string and bodies never are, so no password or token reaches the log; a
//! tried bearer token is kept only as a short SHA-256 fingerprint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nereid_store::{Cond, Filter, Kind, ListQuery, Op, Path, Store};
use nereid_types::ApiError;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use uuid::Uuid;

use super::{App, encode, store_error};
use crate::buckets::AUDIT;

/// How long records are kept unless the operator says otherwise.
pub const DEFAULT_RETENTION_DAYS: u64 = 90;
/// How often the pruner looks for expired records.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Records deleted per batch by the pruner.
const PRUNE_BATCH: i64 = 500;
/// Records waiting for the writer; past this, new ones are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Records written per store batch.
const WRITE_BATCH: usize = 64;
/// Failed-authentication records per client address per minute.
pub const FLOOD_RECORDS: u32 = 10;
/// Client addresses the flood limiter remembers.
pub const FLOOD_ADDRESSES: usize = 10_000;
/// The flood limiter's window.
const FLOOD_WINDOW_MS: i64 = 60_000;
/// How long a flush (a reader's, or the headnode's at shutdown) waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Admin,
    Cloudapi,
    Web,
}

/// What kind of caller made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// The operator API's bearer token.
    Operator,
    /// A CloudAPI account, by an HTTP Signature with one of its keys.
    Account,
    /// A web console session (or a sign-in attempt).
    WebSession,
    /// No credentials at all.
    Anonymous,
}

/// Who made a request (or, for a failed authentication, who it claimed to be).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    /// The operator token's fingerprint (`sha256:` 16 hex digits), the account's login, or
    /// the session's account login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The CloudAPI key id the request was signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Actor {
    pub fn anonymous() -> Self {
        Actor { kind: ActorKind::Anonymous, name: None, key: None }
    }

    /// The account login the record is filed under (`--account`), if the actor names one.
    pub fn account(&self) -> Option<String> {
        match self.kind {
            ActorKind::Account | ActorKind::WebSession => self.name.clone(),
            ActorKind::Operator | ActorKind::Anonymous => None,
        }
    }

    /// One line for people: `operator sha256:…`, `account alice key/…`, `web_session alice`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            ActorKind::Operator => "operator",
            ActorKind::Account => "account",
            ActorKind::WebSession => "web_session",
            ActorKind::Anonymous => "anonymous",
        };
        [Some(kind), self.name.as_deref(), self.key.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ")
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Time-ordered: `<unix ms, 13 digits>-<8 hex digits>`; ids sort as records were made.
    pub id: String,
    /// When the request arrived (RFC 3339, UTC).
    pub time: String,
    pub api: Api,
    pub actor: Actor,
    /// The account login of the actor (what `?account=` filters on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub method: String,
    /// The request's path, without its query string.
    pub path: String,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// `ok`, or the error code answered (`InvalidCredentials`, `ValidationFailed`, …).
    pub result: String,
    /// Whether the request failed authentication (a 401).
    pub auth_failed: bool,
    /// The job the request started, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_uuid: Option<Uuid>,
    /// How long the request took, in milliseconds.
    pub duration_ms: u64,
    /// What the request did, where its path does not say it (oneachnode: the command's
    /// SHA-256, the file moved, the servers targeted). Never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// A flood summary: how many failed authentications from this address went
    /// unrecorded (this record is the last of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

/// A new record id for a request that arrived at `ms` (unix milliseconds).
pub fn new_id(ms: i64) -> String {
    format!("{:013}-{:08x}", ms.max(0), rand::random::<u32>())
}

/// The smallest id a record made at or after `ms` can have.
pub fn id_floor(ms: i64) -> String {
    format!("{:013}", ms.max(0))
}

/// `since` as unix ms: an RFC 3339 time, or an age before `now_ms` (`90s`, `30m`, `2h`, `7d`).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = nereid_types::time::parse_iso(s) {
        return Ok((t.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let bad = || format!("{s:?} is neither an RFC 3339 time (2026-12-06T12:00:00Z) nor an age (90s, 30m, 2h, 7d)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86400),
        _ => return Err(bad()),
    };
    Ok(now_ms.saturating_sub(secs.saturating_mul(1000)))
}

/// A bearer token's fingerprint: `sha256:` and the first 16 hex digits of its SHA-256
/// (enough to tell tokens apart, useless to recover one).
pub fn token_fingerprint(token: &str) -> String {
    let d = sha2::Sha256::digest(token.as_bytes());
    format!("sha256:{}", &hex::encode(d)[..16])
}

/// Whether a method changes something (everything but GET, HEAD and OPTIONS).
pub fn is_mutating(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Whether a request is recorded: every mutating one, and every failed authentication.
pub fn should_record(method: &str, status: u16) -> bool {
    is_mutating(method) || status == 401
}

/// The operator API's caller, from its `Authorization` header: the operator (by the
/// token's fingerprint, whether or not it was the right one), or anonymous.
pub fn admin_actor(authorization: Option<&str>) -> Actor {
    match authorization.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim) {
        Some(t) if !t.is_empty() => Actor { kind: ActorKind::Operator, name: Some(token_fingerprint(t)), key: None },
        _ => Actor::anonymous(),
    }
}

/// CloudAPI's caller, from the keyId of its `Authorization: Signature` header (the login
/// and key it signed as; whether the signature held is the answer's status).
pub fn cloud_actor(authorization: Option<&str>) -> Actor {
    use crate::cloudapi::signature::{KeyId, parse_authorization, parse_key_id};
    let Some(auth) = authorization.and_then(|v| parse_authorization(v).ok()) else {
        return Actor::anonymous();
    };
    match parse_key_id(&auth.key_id) {
        Ok(KeyId::Account { login, key }) => Actor { kind: ActorKind::Account, name: Some(login), key: Some(key) },
        Ok(KeyId::User { login, user, key }) => Actor { kind: ActorKind::Account, name: Some(login), key: Some(format!("{user}/{key}")) },
        // A keyId of no known shape: kept (bounded) as what was tried.
        Err(_) => Actor { kind: ActorKind::Account, name: None, key: Some(auth.key_id.chars().take(200).collect()) },
    }
}

/// `ok` for a success or redirect, else the error code of the answer (its JSON `code`,
/// or the status's name).
pub fn result_of(status: u16, code: Option<&str>) -> String {
    if status < 400 {
        return "ok".into();
    }
    match code {
        Some(c) if !c.is_empty() => c.chars().take(100).collect(),
        _ => {
            crate::http::status_code_name(axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR))
        }
    }
}

/// What a small JSON answer says: its error `code` and its `job_uuid`.
pub fn answer_fields(body: &[u8]) -> (Option<String>, Option<Uuid>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return (None, None) };
    let code = v.get("code").and_then(|c| c.as_str()).map(str::to_string);
    let job = v.get("job_uuid").and_then(|j| j.as_str()).and_then(|j| Uuid::parse_str(j).ok());
    (code, job)
}

/// What app code notes about the request it runs in.
#[derive(Debug, Default)]
pub struct Noted {
    /// The jobs it queued, in order.
    pub jobs: Vec<Uuid>,
    /// What it did ([`Record::detail`]).
    pub detail: Option<serde_json::Value>,
}

tokio::task_local! {
    /// What the request the current task is answering noted.
    static JOBS: Arc<Mutex<Noted>>;
}

/// Runs a request's handling with a slot for what it notes (the jobs it queues, a detail).
pub async fn scope<F: std::future::Future>(f: F) -> (F::Output, Noted) {
    let slot: Arc<Mutex<Noted>> = Arc::default();
    let out = JOBS.scope(slot.clone(), f).await;
    let noted = std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()));
    (out, noted)
}

/// Whether this task is already answering an audited request (a web console page's
/// in-process call to the operator API or CloudAPI: the page's record covers it).
pub fn in_scope() -> bool {
    JOBS.try_with(|_| ()).is_ok()
}

/// Names a job the current request queued (nothing outside an audited request).
pub fn note_job(job: Uuid) {
    let _ = JOBS.try_with(|j| j.lock().unwrap_or_else(|p| p.into_inner()).jobs.push(job));
}

/// Says what the current request did (its record's `detail`; nothing outside an audited
/// request). Never pass a secret: the log is read by every operator.
pub fn note_detail(detail: serde_json::Value) {
    let _ = JOBS.try_with(|j| j.lock().unwrap_or_else(|p| p.into_inner()).detail = Some(detail));
}

/// What the flood limiter decided for one failed authentication.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Record,
    Suppress,
}

/// One address's current window.
#[derive(Debug)]
struct Window {
    start_ms: i64,
    recorded: u32,
    suppressed: u64,
    /// The last suppressed attempt: the summary is written as it, with the count.
    last: Option<Record>,
}

/// Limits failed-authentication records per client address: [`FLOOD_RECORDS`] a minute,
/// the rest counted into one summary record. Pure (the caller gives the time).
#[derive(Debug)]
pub struct FloodLimiter {
    per_window: u32,
    cap: usize,
    windows: HashMap<String, Window>,
}

impl Default for FloodLimiter {
    fn default() -> Self {
        FloodLimiter::new(FLOOD_RECORDS, FLOOD_ADDRESSES)
    }
}

impl FloodLimiter {
    pub fn new(per_window: u32, cap: usize) -> Self {
        FloodLimiter { per_window, cap: cap.max(1), windows: HashMap::new() }
    }

    /// How many addresses are remembered.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Decides for `rec` (a failed authentication from `addr` at `now_ms`); gives back the
    /// summaries that became due (a window of this address that ended, an address
    /// evicted to make room).
    pub fn admit(&mut self, addr: &str, now_ms: i64, rec: &Record) -> (Admit, Vec<Record>) {
        let mut due = Vec::new();
        if !self.windows.contains_key(addr) && self.windows.len() >= self.cap {
            // Forget the finished quiet windows first, then the oldest.
            self.windows.retain(|_, w| w.suppressed > 0 || now_ms - w.start_ms < FLOOD_WINDOW_MS);
            while self.windows.len() >= self.cap {
                let Some(oldest) = self.windows.iter().min_by_key(|(_, w)| w.start_ms).map(|(a, _)| a.clone()) else { break };
                if let Some(w) = self.windows.remove(&oldest) {
                    due.extend(summary(w));
                }
            }
        }
        let w = self.windows.entry(addr.to_string()).or_insert(Window { start_ms: now_ms, recorded: 0, suppressed: 0, last: None });
        if now_ms - w.start_ms >= FLOOD_WINDOW_MS {
            let ended = std::mem::replace(w, Window { start_ms: now_ms, recorded: 0, suppressed: 0, last: None });
            due.extend(summary(ended));
        }
        if w.recorded < self.per_window {
            w.recorded += 1;
            (Admit::Record, due)
        } else {
            w.suppressed += 1;
            w.last = Some(rec.clone());
            (Admit::Suppress, due)
        }
    }

    /// The summaries of the windows that ended by `now_ms` (all pending ones when `all`:
    /// a flush wants the count so far); ended windows are forgotten.
    pub fn due(&mut self, now_ms: i64, all: bool) -> Vec<Record> {
        let mut out = Vec::new();
        self.windows.retain(|_, w| {
            let ended = now_ms - w.start_ms >= FLOOD_WINDOW_MS;
            if ended || all {
                out.extend(summary(Window { start_ms: w.start_ms, recorded: w.recorded, suppressed: w.suppressed, last: w.last.take() }));
                w.suppressed = 0;
            }
            !ended
        });
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// A window's summary record, if it suppressed anything.
fn summary(w: Window) -> Option<Record> {
    let mut rec = w.last?;
    (w.suppressed > 0).then(|| {
        rec.suppressed = Some(w.suppressed);
        rec
    })
}

/// What the writer task is sent.
#[derive(Debug)]
enum Msg {
    Write(Box<Record>),
    /// Answered once everything sent before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The audit log's in-process state.
#[derive(Debug, Default)]
pub struct AuditState {
    /// Records that could not be written (or were dropped) since this process started.
    pub write_failures: Arc<AtomicU64>,
    /// The writer's queue, started with the first record.
    queue: OnceLock<tokio::sync::mpsc::Sender<Msg>>,
    /// Failed authentications per client address.
    flood: Arc<Mutex<FloodLimiter>>,
    /// When a dropped record was last logged (unix ms).
    drop_logged_ms: AtomicI64,
}

/// Writes queued records until every sender is gone (the queue is drained first).
async fn run_writer(
    store: Arc<dyn Store>,
    mut rx: tokio::sync::mpsc::Receiver<Msg>,
    failures: Arc<AtomicU64>,
    flood: Arc<Mutex<FloodLimiter>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(FLOOD_WINDOW_MS as u64 / 4));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut recs = Vec::new();
        let mut acks = Vec::new();
        tokio::select! {
            m = rx.recv() => match m {
                None => return,
                Some(m) => {
                    let mut next = Some(m);
                    while let Some(m) = next.take() {
                        match m {
                            Msg::Write(r) => recs.push(*r),
                            Msg::Flush(ack) => {
                                recs.extend(flood.lock().unwrap_or_else(|p| p.into_inner()).due(nereid_types::time::now_ms(), true));
                                acks.push(ack);
                            }
                        }
                        if recs.len() < WRITE_BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                }
            },
            _ = tick.tick() => recs.extend(flood.lock().unwrap_or_else(|p| p.into_inner()).due(nereid_types::time::now_ms(), false)),
        }
        write_batch(store.as_ref(), recs, &failures).await;
        for a in acks {
            let _ = a.send(());
        }
    }
}

/// One store batch of create-only puts; when it fails, each record alone (one bad record
/// costs only itself). A record that cannot be written is logged and counted.
async fn write_batch(store: &dyn Store, recs: Vec<Record>, failures: &AtomicU64) {
    match recs.len() {
        0 => return,
        1 => {}
        _ => {
            let ops = recs.iter().map(|r| Op::put(AUDIT.name, r.id.clone(), encode(r), Cond::Absent)).collect();
            if store.batch(ops).await.is_ok() {
                return;
            }
        }
    }
    for rec in recs {
        if let Err(e) = store.put(AUDIT.name, &rec.id, encode(&rec), Cond::Absent).await {
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, id = %rec.id, method = %rec.method, path = %rec.path, status = rec.status, "an audit record could not be written");
        }
    }
}

/// Which records a list wants.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Records made at or after this (unix ms).
    pub since_ms: Option<i64>,
    /// Records of this account login.
    pub account: Option<String>,
    /// Records older than this id (the last id of the previous page).
    pub marker: Option<String>,
    pub limit: i64,
}

impl AuditQuery {
    fn filter(&self) -> Filter {
        let mut all = Vec::new();
        if let Some(ms) = self.since_ms {
            all.push(Filter::Ge(Path::field("id"), id_floor(ms).into()));
        }
        if let Some(a) = &self.account {
            all.push(Filter::eq("account", a.as_str()));
        }
        if let Some(m) = &self.marker {
            all.push(Filter::Lt(Path::field("id"), m.as_str().into()));
        }
        if all.is_empty() { Filter::True } else { Filter::And(all) }
    }
}

impl App {
    /// Queues a record for the writer (a create: it never replaces one); a failed
    /// authentication passes the flood limiter first. Never waits for the store and never
    /// fails: a full queue drops the record, counted and logged (at most once a minute).
    pub fn record_audit(&self, rec: Record) {
        let mut recs = Vec::with_capacity(2);
        match (&rec.remote, rec.auth_failed) {
            (Some(addr), true) => {
                let (admit, due) =
                    self.audit.flood.lock().unwrap_or_else(|p| p.into_inner()).admit(addr, nereid_types::time::now_ms(), &rec);
                recs.extend(due);
                if admit == Admit::Record {
                    recs.push(rec);
                }
            }
            _ => recs.push(rec),
        }
        for rec in recs {
            if let Err(e) = self.audit_queue().try_send(Msg::Write(Box::new(rec))) {
                self.audit.write_failures.fetch_add(1, Ordering::Relaxed);
                let now = nereid_types::time::now_ms();
                let last = self.audit.drop_logged_ms.load(Ordering::Relaxed);
                if now - last >= 60_000
                    && self.audit.drop_logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    let dropped = match e {
                        tokio::sync::mpsc::error::TrySendError::Full(_) => "the queue is full",
                        tokio::sync::mpsc::error::TrySendError::Closed(_) => "the writer stopped",
                    };
                    tracing::error!(
                        reason = dropped,
                        failures = self.audit.write_failures.load(Ordering::Relaxed),
                        "audit records are being dropped"
                    );
                }
            }
        }
    }

    /// The writer's queue (the writer starts with the first use).
    fn audit_queue(&self) -> &tokio::sync::mpsc::Sender<Msg> {
        self.audit.queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
            tokio::spawn(run_writer(self.store.clone(), rx, self.audit.write_failures.clone(), self.audit.flood.clone()));
            tx
        })
    }

    /// Waits (at most a few seconds) until every record queued before the call is written,
    /// with the flood limiter's pending counts: a reader on this headnode sees its own
    /// changes, and a stopping headnode loses nothing queued.
    pub async fn audit_flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = tokio::time::timeout(FLUSH_WAIT, self.audit_queue().send(Msg::Flush(tx))).await;
        if matches!(sent, Ok(Ok(()))) && tokio::time::timeout(FLUSH_WAIT, rx).await.is_ok() {
            return;
        }
        tracing::warn!("the audit log's writer did not catch up in time");
    }

    /// Records newest first.
    pub async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<Record>, ApiError> {
        let lq = ListQuery::filter(q.filter()).sort(Path::field("id"), Kind::Text, true).page(q.limit.max(1), 0);
        self.list(AUDIT.name, &lq).await
    }

    /// One record by id.
    pub async fn get_audit(&self, id: &str) -> Result<Record, ApiError> {
        match self.read::<Record>(AUDIT.name, id).await? {
            Some((r, _)) => Ok(r),
            None => Err(ApiError::not_found(format!("audit record {id} does not exist"))),
        }
    }

    /// Deletes the records made before `before_ms`, oldest first; how many went.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<usize, ApiError> {
        let mut gone = 0;
        loop {
            let q = ListQuery::filter(Filter::Lt(Path::field("id"), id_floor(before_ms).into()))
                .sort(Path::field("id"), Kind::Text, false)
                .page(PRUNE_BATCH, 0);
            let old = self.store.list_raw(AUDIT.name, &q).await.map_err(store_error)?;
            if old.is_empty() {
                return Ok(gone);
            }
            let n = old.len();
            self.store.batch(old.into_iter().map(|o| Op::delete(AUDIT.name, o.key, Cond::Any)).collect()).await.map_err(store_error)?;
            gone += n;
            if (n as i64) < PRUNE_BATCH {
                return Ok(gone);
            }
        }
    }
}

/// Deletes records older than `retention`, now and every hour, on one headnode of the
/// cluster at a time (the holder of the `audit-pruner` singleton; another takes over when
/// it has gone unrenewed for three rounds). Deleting a deleted record is no error, so an
/// overlap at a takeover is harmless.
pub async fn run_pruner(app: Arc<App>, retention: Duration) {
    let singleton = crate::reconcile::Singleton::new("audit-pruner", PRUNE_EVERY * 3);
    loop {
        if !singleton.hold(&app).await {
            tokio::time::sleep(PRUNE_EVERY).await;
            continue;
        }
        let before = nereid_types::time::now_ms() - retention.as_millis() as i64;
        match app.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, days = retention.as_secs() / 86400, "pruned expired audit records"),
            Err(e) => tracing::warn!(error = %e.message, "pruning the audit log"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let (a, b) = (new_id(999), new_id(1_000));
        assert!(a < b, "{a} < {b}");
        assert!(id_floor(1_000) <= b && b < id_floor(1_001), "{b}");
        assert_eq!(a.len(), 22);
    }

    #[test]
    fn since_is_a_time_or_an_age() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z", 0), Ok(1000));
        assert_eq!(parse_since("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(parse_since("7d", 1_000_000_000), Ok(1_000_000_000 - 604_800_000));
        assert!(parse_since("yesterday", 0).is_err());
        assert!(parse_since("5w", 0).is_err());
        assert!(parse_since("", 0).is_err());
    }

    #[test]
    fn what_is_recorded() {
        assert!(should_record("POST", 200) && should_record("DELETE", 204) && should_record("PUT", 409));
        assert!(should_record("GET", 401), "a failed authentication on any method");
        assert!(!should_record("GET", 200) && !should_record("HEAD", 404) && !should_record("GET", 403));
    }

    #[test]
    fn actors() {
        let op = admin_actor(Some("Bearer s3cret"));
        assert_eq!(op.kind, ActorKind::Operator);
        let fp = op.name.clone().unwrap();
        assert!(fp.starts_with("sha256:") && fp.len() == 23 && !fp.contains("s3cret"), "{fp}");
        assert_eq!(admin_actor(Some("Bearer s3cret")), op, "the same token, the same fingerprint");
        assert_ne!(admin_actor(Some("Bearer other")).name, op.name);
        assert_eq!(admin_actor(None), Actor::anonymous());
        assert_eq!(admin_actor(Some("Basic abc")), Actor::anonymous());
        assert_eq!(op.account(), None);

        let sig = r#"Signature keyId="/alice/keys/aa:bb",algorithm="rsa-sha256",headers="date",signature="AAAA""#;
        let a = cloud_actor(Some(sig));
        assert_eq!((a.kind, a.name.as_deref(), a.key.as_deref()), (ActorKind::Account, Some("alice"), Some("aa:bb")));
        assert_eq!(a.account().as_deref(), Some("alice"));
        assert_eq!(a.describe(), "account alice aa:bb");
        assert_eq!(cloud_actor(None), Actor::anonymous());
        assert_eq!(cloud_actor(Some("Bearer x")), Actor::anonymous());
    }

    #[test]
    fn results_and_answers() {
        assert_eq!(result_of(204, None), "ok");
        assert_eq!(result_of(303, None), "ok");
        assert_eq!(result_of(401, Some("InvalidCredentials")), "InvalidCredentials");
        assert_eq!(result_of(404, None), "ResourceNotFound");
        let (code, job) = answer_fields(br#"{"vm_uuid":"x","job_uuid":"3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60"}"#);
        assert_eq!((code, job.map(|j| j.to_string())), (None, Some("3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60".into())));
        assert_eq!(answer_fields(b"<html>").0, None);
    }

    #[tokio::test]
    async fn jobs_are_noted_only_inside_a_request() {
        note_job(Uuid::nil());
        assert!(!in_scope());
        let j = Uuid::new_v4();
        let (inner, noted) = scope(async {
            note_job(j);
            note_detail(serde_json::json!({"put": "/etc/motd"}));
            in_scope()
        })
        .await;
        assert!(inner);
        assert_eq!(noted.jobs, vec![j]);
        assert_eq!(noted.detail, Some(serde_json::json!({"put": "/etc/motd"})));
    }

    fn failed(remote: &str, id: &str) -> Record {
        Record {
            id: id.into(),
            time: "1970-01-01T00:00:00Z".into(),
            api: Api::Admin,
            actor: Actor::anonymous(),
            account: None,
            method: "GET".into(),
            path: "/packages".into(),
            remote: Some(remote.into()),
            status: 401,
            result: "Unauthorized".into(),
            auth_failed: true,
            job_uuid: None,
            duration_ms: 0,
            detail: None,
            suppressed: None,
        }
    }

    #[test]
    fn failed_logins_are_limited_per_address_and_summed_up() {
        let mut l = FloodLimiter::new(10, 100);
        let admitted =
            (0..50).filter(|i| l.admit("10.0.0.1", 1_000 + i, &failed("10.0.0.1", &format!("{i:02}"))) == (Admit::Record, vec![])).count();
        assert_eq!(admitted, 10, "ten records a minute");
        // Another address has its own allowance.
        assert_eq!(l.admit("10.0.0.2", 2_000, &failed("10.0.0.2", "x")), (Admit::Record, vec![]));
        // Nothing is due while the minute runs, unless a flush asks.
        assert!(l.due(30_000, false).is_empty());
        let sums = l.due(30_000, true);
        assert_eq!(sums.len(), 1, "{sums:?}");
        assert_eq!(
            (sums[0].suppressed, sums[0].id.as_str(), sums[0].result.as_str()),
            (Some(40), "49", "Unauthorized"),
            "the last one, counted"
        );
        // The count restarts after a flush; a new minute gives the summary of the old one
        // with the first attempt of the new.
        assert_eq!(l.admit("10.0.0.1", 40_000, &failed("10.0.0.1", "a")).0, Admit::Suppress);
        let (admit, due) = l.admit("10.0.0.1", 61_000, &failed("10.0.0.1", "b"));
        assert_eq!((admit, due.len(), due[0].suppressed, due[0].id.as_str()), (Admit::Record, 1, Some(1), "a"));
        // Windows that ended are forgotten by the tick.
        assert!(l.due(200_000, false).is_empty());
        assert!(l.is_empty());
    }

    #[test]
    fn the_address_table_is_capped() {
        let mut l = FloodLimiter::new(1, 3);
        for (i, a) in ["a", "b", "c"].into_iter().enumerate() {
            l.admit(a, i as i64, &failed(a, "1"));
            l.admit(a, i as i64, &failed(a, "2"));
        }
        assert_eq!(l.len(), 3);
        // A fourth address evicts the oldest, whose count is given back as its summary.
        let (admit, due) = l.admit("d", 10, &failed("d", "1"));
        assert_eq!((admit, l.len()), (Admit::Record, 3));
        assert_eq!((due.len(), due[0].remote.as_deref(), due[0].suppressed), (1, Some("a"), Some(1)));
    }

    #[test]
    fn list_filters() {
        let q = AuditQuery { since_ms: Some(5), account: Some("alice".into()), marker: None, limit: 10 };
        match q.filter() {
            Filter::And(f) => assert_eq!(f.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(AuditQuery::default().filter(), Filter::True));
    }
}
