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
//!              App::record_audit   one create-only put (Cond::Absent) into `audit`
//! ```
//!
//! Records are append-only: a record's key is new when it is written (time-ordered id, a
//! create that fails rather than overwrites), nothing updates one, and no API route writes
//! or deletes the bucket — the operator API only reads it (`GET /audit`). The one deleter
//! is the retention pruner ([`run_pruner`]): records older than `--audit-retention-days`
//! (default 90) go, oldest first, so the log's growth is bounded by age.
//!
//! Writing never changes the answer of the request it records: a failed write is logged
//! and counted (`nereid_audit_write_failures` on `/metrics`). Paths are recorded without
//! their query string and bodies never are, so no password or token reaches the log; a
//! tried bearer token is kept only as a short SHA-256 fingerprint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nereid_store::{Cond, Filter, Kind, ListQuery, Op, Path};
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

tokio::task_local! {
    /// The jobs queued by the request the current task is answering.
    static JOBS: Arc<Mutex<Vec<Uuid>>>;
}

/// Runs a request's handling with a slot for the jobs it queues; gives them back in order.
pub async fn scope<F: std::future::Future>(f: F) -> (F::Output, Vec<Uuid>) {
    let slot: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let out = JOBS.scope(slot.clone(), f).await;
    let jobs = std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()));
    (out, jobs)
}

/// Whether this task is already answering an audited request (a web console page's
/// in-process call to the operator API or CloudAPI: the page's record covers it).
pub fn in_scope() -> bool {
    JOBS.try_with(|_| ()).is_ok()
}

/// Names a job the current request queued (nothing outside an audited request).
pub fn note_job(job: Uuid) {
    let _ = JOBS.try_with(|j| j.lock().unwrap_or_else(|p| p.into_inner()).push(job));
}

/// The audit log's in-process state.
#[derive(Debug, Default)]
pub struct AuditState {
    /// Records that could not be written since this process started.
    pub write_failures: AtomicU64,
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
    /// Appends a record (a create: it never replaces one). A failure is logged and
    /// counted, never returned: the request it records has been answered already.
    pub async fn record_audit(&self, rec: &Record) {
        if let Err(e) = self.store.put(AUDIT.name, &rec.id, encode(rec), Cond::Absent).await {
            self.audit.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, id = %rec.id, method = %rec.method, path = %rec.path, status = rec.status, "an audit record could not be written");
        }
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

/// Deletes records older than `retention`, now and every hour (several headnodes may
/// prune at once: deleting a deleted record is no error).
pub async fn run_pruner(app: Arc<App>, retention: Duration) {
    loop {
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
        let (inner, jobs) = scope(async {
            note_job(j);
            in_scope()
        })
        .await;
        assert!(inner);
        assert_eq!(jobs, vec![j]);
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
