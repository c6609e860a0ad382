//! CloudAPI migrations (Triton's `lib/migrations.js`): a tenant moves their own machine to
//! another server, and watches it go.
//!
//! ```text
//!   POST /:login/machines/:id/migrate  action=begin|sync|switch|automatic|abort|pause|finalize
//!        │                             (body or query; affinity for begin/automatic)
//!        ├─ action=watch ──► 200 application/x-json-stream: progress lines, then one `end`
//!        ├─ finalize ──────► 200, no body
//!        └─ others ────────► 201, the migration (`vm_uuid` named `machine`)
//!   GET  /:login/machines/:id/migrate  the estimate
//!   GET  /:login/migrations[/:id]      the account's migrations; :id is the machine's uuid
//! ```
//!
//! Every call names the account as the owner, so the headnode's checks (ownership, whether
//! user migration is allowed, what state the migration is in) are the same as VMAPI's with
//! `owner_uuid`; another account's machine is a 404, as in Triton ("VM not found").

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::IntoResponse;
use nereid_types::ApiError;
use nereid_types::migration::{CLOUDAPI_ACTIONS, Migration};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{CloudError, CloudResult, Params, Scoped, invalid, machines, ok, render};
use crate::app::migrations::{MigrateRequest, MigrationQuery};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

fn doc(id: &'static str, summary: &'static str, body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query: &[], body, response }
}

fn migrate_schema() -> Value {
    json!({"type": "object", "required": ["action"], "properties": {
        "action": {"type": "string", "enum": ["begin", "sync", "switch", "automatic", "abort", "pause", "finalize", "watch"]},
        "affinity": {"type": "array", "items": {"type": "string"}, "example": ["instance!=db*"],
            "description": "begin and automatic: rules for choosing the target server."}}})
}

/// A migration as CloudAPI shows it.
pub fn migration_schema() -> Value {
    json!({"type": "object", "properties": {
        "machine": {"type": "string", "format": "uuid"}, "automatic": {"type": "boolean"},
        "phase": {"type": "string", "enum": ["begin", "sync", "switch", "abort"]},
        "state": {"type": "string", "enum": ["running", "paused", "failed", "successful"]},
        "created_timestamp": {"type": "string"}, "started_timestamp": {"type": "string"},
        "finished_timestamp": {"type": "string"}, "duration_ms": {"type": "integer"}, "error": {"type": "string"},
        "progress_history": {"type": "array", "items": {"type": "object", "properties": {
            "type": {"type": "string"}, "phase": {"type": "string"}, "state": {"type": "string"}, "message": {"type": "string"},
            "current_progress": {"type": "integer"}, "total_progress": {"type": "integer"},
            "started_timestamp": {"type": "string"}, "finished_timestamp": {"type": "string"},
            "duration_ms": {"type": "integer"}, "transfer_bytes_second": {"type": "integer"}}}}}})
}

fn migration_list_schema() -> Value {
    json!({"type": "array", "items": migration_schema()})
}

fn estimate_schema() -> Value {
    json!({"type": "object", "description": "VMAPI's estimate: the size to move and how long it may take."})
}

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::POST,
            "/{account}/machines/{id}/migrate",
            doc(
                "Migrate",
                "A migration action (begin, sync, switch, automatic, abort, pause: 201 with the migration; finalize: 200), or \
                 action=watch: 200, the progress as a JSON stream (one object a line, the last of type end).",
                BodyDoc::Schema(migrate_schema),
                RespDoc::Schema(201, migration_schema),
            ),
            migrate,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/machines/{id}/migrate",
            doc(
                "MigrateMachineEstimate",
                "How much a migration of the machine would move.",
                BodyDoc::None,
                RespDoc::Schema(200, estimate_schema),
            ),
            estimate,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/migrations",
            doc("ListMigrations", "The account's migrations.", BodyDoc::None, RespDoc::Schema(200, migration_list_schema)),
            list,
        )
        .auth(Auth::Signature),
        Route::new(
            Method::GET,
            "/{account}/migrations/{id}",
            doc(
                "GetMigration",
                "The machine's latest migration (id: the machine's uuid).",
                BodyDoc::None,
                RespDoc::Schema(200, migration_schema),
            ),
            get,
        )
        .auth(Auth::Signature),
    ]
}

/// What a tenant asked for: the headnode's action and whether it is `automatic` (pure).
pub fn parse_action(p: &Map<String, Value>) -> Result<(&'static str, bool), CloudError> {
    let Some(action) = p.get("action").filter(|v| !v.is_null()) else {
        return Err(CloudError(ApiError::new(409, "MissingParameter", "\"action\" must be specified")));
    };
    let text = match action {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match CLOUDAPI_ACTIONS.iter().find(|a| **a == text) {
        Some(&"automatic") => Ok(("begin", true)),
        Some(a) => Ok((a, false)),
        None => Err(CloudError(ApiError::new(409, "InvalidArgument", format!("{text} is not a valid migration action")))),
    }
}

/// The affinity rules of begin/automatic, checked as CreateMachine checks them (pure): one
/// rule or an array of them.
pub fn affinity(p: &Map<String, Value>) -> Result<Vec<String>, CloudError> {
    let rules = match p.get("affinity") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => json!([s]),
        Some(v) => v.clone(),
    };
    render::affinity_rules(&rules).map_err(|m| invalid("affinity", m))?;
    Ok(rules.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect())
}

/// A migration in CloudAPI's form: the public record with `vm_uuid` named `machine` (pure).
pub fn translate(m: &Migration, now_ms: i64) -> Value {
    let mut v = m.public(now_ms);
    if let Some(o) = v.as_object_mut()
        && let Some(id) = o.remove("vm_uuid")
    {
        o.insert("machine".into(), id);
    }
    v
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Triton's answer for a migration of a machine that is not the account's.
fn vm_not_found() -> CloudError {
    CloudError(ApiError::new(404, "ResourceNotFound", "VM not found"))
}

fn machine_uuid(id: &str) -> Result<Uuid, CloudError> {
    Uuid::parse_str(id).map_err(|_| vm_not_found())
}

async fn migrate(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>, Params(p): Params) -> CloudResult {
    if p.get("action").and_then(Value::as_str) == Some("watch") {
        let vm = machines::machine_of(&s, &acct, &id).await?;
        return watch(&s, vm.uuid, acct.uuid).await;
    }
    // The machine first: another account's is a 404 whatever the request says.
    let vm = machines::machine_of(&s, &acct, &id).await?;
    let (action, automatic) = parse_action(&p)?;
    let rules = if action == "begin" { affinity(&p)? } else { Vec::new() };
    let req = MigrateRequest {
        action: action.to_string(),
        automatic,
        owner: Some(acct.uuid),
        affinity: rules,
        target_server: None,
        offline: false,
        bandwidth_mbps: None,
        requested_by: acct.login.clone(),
    };
    let answer = s.app.migrate(vm.uuid, req).await?;
    if action == "finalize" {
        return Ok(StatusCode::OK.into_response());
    }
    Ok(super::reply(StatusCode::CREATED, &translate(&answer.migration, now_ms())))
}

/// The watch stream: each line as the headnode produces it, until its `end` line.
async fn watch(s: &AppState, vm: Uuid, owner: Uuid) -> CloudResult {
    let rx = crate::app::migrations::watch(s.app.clone(), vm, Some(owner)).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let line = if line.ends_with('\n') { line } else { line + "\n" };
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line)), rx))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-json-stream"));
    Ok(resp)
}

async fn estimate(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = machines::machine_of(&s, &acct, &id).await?;
    let req = MigrateRequest {
        action: "estimate".into(),
        automatic: false,
        owner: Some(acct.uuid),
        affinity: Vec::new(),
        target_server: None,
        offline: false,
        bandwidth_mbps: None,
        requested_by: acct.login.clone(),
    };
    let answer = s.app.migrate(vm.uuid, req).await?;
    ok(&answer.estimate.unwrap_or_else(|| json!({})))
}

async fn list(State(s): State<AppState>, Scoped(acct): Scoped) -> CloudResult {
    let q = MigrationQuery { owner: Some(acct.uuid), vm: None, state: None, server: None };
    let now = now_ms();
    let all: Vec<Value> =
        s.app.list_migrations(&q).await?.iter().filter(|m| m.owner_uuid == acct.uuid).map(|m| translate(m, now)).collect();
    ok(&all)
}

async fn get(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, id)): Path<(String, String)>) -> CloudResult {
    let vm = machine_uuid(&id)?;
    match s.app.vm_migration(vm, Some(acct.uuid)).await {
        Ok(m) if m.owner_uuid == acct.uuid => ok(&translate(&m, now_ms())),
        Ok(_) => Err(vm_not_found()),
        Err(e) if e.status == 404 || e.status == 403 || e.code == "PreconditionFailed" => Err(vm_not_found()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn actions_as_triton_reads_them() {
        assert_eq!(parse_action(&params(json!({"action": "automatic"}))).unwrap(), ("begin", true));
        assert_eq!(parse_action(&params(json!({"action": "sync"}))).unwrap(), ("sync", false));
        assert_eq!(parse_action(&params(json!({"action": "finalize"}))).unwrap(), ("finalize", false));
        let e = parse_action(&params(json!({}))).unwrap_err().0;
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (409, "MissingParameter", "\"action\" must be specified"));
        let e = parse_action(&params(json!({"action": "estimate"}))).unwrap_err().0;
        assert_eq!((e.code.as_str(), e.message.as_str()), ("InvalidArgument", "estimate is not a valid migration action"));
    }

    #[test]
    fn affinity_is_one_rule_or_many() {
        assert_eq!(affinity(&params(json!({"affinity": "instance!=db"}))).unwrap(), ["instance!=db"]);
        assert_eq!(affinity(&params(json!({"affinity": ["instance!=a", "instance==~b"]}))).unwrap().len(), 2);
        assert!(affinity(&params(json!({}))).unwrap().is_empty());
        assert_eq!(affinity(&params(json!({"affinity": "nonsense"}))).unwrap_err().0.code, "InvalidArgument");
    }
}
