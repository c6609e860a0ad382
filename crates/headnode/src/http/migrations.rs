//! VMAPI's migration endpoints: `POST /vms/{uuid}?action=migrate` (dispatched here from
//! the VM action handler), `GET /migrations`, `GET/DELETE /migrations/{vm_uuid}`, and the
//! NDJSON watch stream `GET /migrations/{vm_uuid}/watch`. The logic is in
//! [`crate::app::migrations`].

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use nereid_types::migration::{Migration, PHASES, STATES, VMAPI_ACTIONS};
use nereid_types::query::{Param, QKind, Query};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json as json_resp, ok, parse_query, path_uuid};
use crate::app::migrations::{MigrateRequest, MigrationQuery, watch};

/// The migration parameters of `POST /vms/{uuid}?action=migrate` (query or JSON body).
pub const MIGRATE_PARAMS: &[Param] = &[
    Param::new("migration_action", QKind::Enum(VMAPI_ACTIONS), "migrate: begin, sync, switch, pause, abort, finalize or estimate."),
    Param::new("migration_automatic", QKind::Bool, "migrate begin: also sync and switch, in one job."),
    Param::new("override_server_uuid", QKind::Uuid, "migrate begin: the target server (the allocator's checks still apply)."),
    Param::new("migration_offline", QKind::Bool, "migrate: stop, copy and start instead of moving the guest live (Nereid)."),
    Param::new(
        "migration_bandwidth_mbps",
        QKind::Int { min: 1, max: 1_000_000 },
        "migrate: cap the data rate, megabits per second (Nereid).",
    ),
    Param::new("owner_uuid", QKind::Uuid, "migrate: a tenant's request (CloudAPI): the VM must be theirs, and user migration allowed."),
];

const LIST_PARAMS: &[Param] = &[
    Param::new("owner_uuid", QKind::Uuid, "Migrations of this owner's VMs."),
    Param::new("vm_uuid", QKind::Uuid, "Migrations of this VM."),
    Param::new("state", QKind::Enum(STATES), "Migrations in this state."),
    Param::new("server_uuid", QKind::Uuid, "Migrations from or to this server."),
    Param::new("format", QKind::Enum(&["raw"]), "raw: the whole record (servers, job, placement), not Triton's public form."),
];
const GET_PARAMS: &[Param] = &[
    Param::new("owner_uuid", QKind::Uuid, "404 unless the VM is this owner's."),
    Param::new("format", QKind::Enum(&["raw"]), "raw: the whole record."),
];
const OWNER: &[Param] = &[Param::new("owner_uuid", QKind::Uuid, "404 unless the VM is this owner's.")];

fn migration_schema() -> Value {
    json!({"type": "object", "properties": {
        "vm_uuid": {"type": "string", "format": "uuid"},
        "automatic": {"type": "boolean"},
        "phase": {"type": "string", "enum": PHASES},
        "state": {"type": "string", "enum": STATES},
        "created_timestamp": {"type": "string"},
        "duration_ms": {"type": "integer"},
        "error": {"type": "string"},
        "progress_history": {"type": "array", "items": {"type": "object"}}
    }})
}
fn migrations_schema() -> Value {
    json!({"type": "array", "items": migration_schema()})
}
fn watch_schema() -> Value {
    json!({"type": "string", "description": "application/x-json-stream: one JSON object per line, {type: progress, …} then {type: end, phase, state, message?}"})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, response| Doc { id, tag: "VMAPI", summary, query, body: BodyDoc::None, response };
    vec![
        Route::new(
            Method::GET,
            "/migrations",
            doc("ListMigrations", "Migrations, newest first.", LIST_PARAMS, RespDoc::Schema(200, migrations_schema)),
            list,
        ),
        Route::new(
            Method::GET,
            "/migrations/{uuid}",
            doc("GetMigration", "The VM's latest migration (the path names the VM).", GET_PARAMS, RespDoc::Schema(200, migration_schema)),
            get,
        ),
        Route::new(
            Method::DELETE,
            "/migrations/{uuid}",
            doc(
                "DeleteMigration",
                "Removes the VM's latest migration record (Triton's escape hatch): only one that holds nothing any more.",
                &[],
                RespDoc::Empty(204),
            ),
            delete,
        ),
        Route::new(
            Method::GET,
            "/migrations/{uuid}/watch",
            doc(
                "WatchMigration",
                "The VM's migration as it goes: NDJSON progress events, then an end event.",
                OWNER,
                RespDoc::Schema(200, watch_schema),
            ),
            watch_route,
        ),
    ]
}

/// The record as an operator reads it with `format=raw` (the secret left out).
pub fn raw(m: &Migration) -> Value {
    let mut v = crate::app::encode(m);
    if let Some(o) = v.as_object_mut() {
        o.remove("token");
    }
    v
}

/// A UUID parameter (checked by `parse_query` already).
fn quuid(q: &Query, k: &str) -> Option<Uuid> {
    q.str(k).and_then(|v| Uuid::parse_str(v).ok())
}

fn form(m: &Migration, raw_form: bool) -> Value {
    if raw_form { raw(m) } else { m.public(nereid_types::time::now_ms()) }
}

async fn list(State(s): State<AppState>, RawQuery(q): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, LIST_PARAMS, q.as_deref())?;
    let mq = MigrationQuery {
        owner: quuid(&q, "owner_uuid"),
        vm: quuid(&q, "vm_uuid"),
        state: q.str("state").map(str::to_string),
        server: quuid(&q, "server_uuid"),
    };
    let raw_form = q.str("format") == Some("raw");
    ok(&s.app.list_migrations(&mq).await?.iter().map(|m| form(m, raw_form)).collect::<Vec<_>>())
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(q): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, GET_PARAMS, q.as_deref())?;
    let vm = path_uuid(Api::Papi, "uuid", &uuid)?;
    let m = s.app.vm_migration(vm, quuid(&q, "owner_uuid")).await?;
    ok(&form(&m, q.str("format") == Some("raw")))
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let vm = path_uuid(Api::Papi, "uuid", &uuid)?;
    s.app.delete_migration_record(vm).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn watch_route(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(q): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, OWNER, q.as_deref())?;
    let vm = path_uuid(Api::Papi, "uuid", &uuid)?;
    stream(watch(s.app.clone(), vm, quuid(&q, "owner_uuid")).await?)
}

/// A 200 `application/x-json-stream` of the lines the receiver yields, as they come.
pub fn stream(rx: tokio::sync::mpsc::Receiver<String>) -> HttpResult {
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, std::io::Error>(line), rx))
    }));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/x-json-stream")], body).into_response())
}

/// `POST /vms/{uuid}?action=migrate`: the parameters from the query, then the body's
/// (Triton's client sends them as JSON).
pub async fn vm_migrate(s: &AppState, vm: Uuid, q: &Query, body: &Map<String, Value>) -> HttpResult {
    let body_str = |k: &str| match body.get(k) {
        Some(Value::String(v)) => Some(v.clone()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let get = |k: &str| q.str(k).map(str::to_string).or_else(|| body_str(k));
    let flag = |k: &str| get(k).is_some_and(|v| v == "true");
    let Some(action) = get("migration_action") else {
        return Err(ApiError::validation_409(vec![FieldError::missing("migration_action")]).into());
    };
    let uuid_param = |k: &str| -> Result<Option<Uuid>, ApiError> {
        get(k)
            .map(|v| Uuid::parse_str(&v).map_err(|_| ApiError::validation_409(vec![FieldError::invalid(k, format!("{v} is not a UUID"))])))
            .transpose()
    };
    let bandwidth = match get("migration_bandwidth_mbps") {
        Some(v) => Some(v.parse::<u64>().ok().filter(|b| *b > 0).ok_or_else(|| {
            ApiError::validation_409(vec![FieldError::invalid(
                "migration_bandwidth_mbps",
                "must be a positive whole number of megabits per second",
            )])
        })?),
        None => None,
    };
    let affinity = match body.get("affinity") {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(Value::String(v)) => vec![v.clone()],
        _ => Vec::new(),
    };
    let owner = uuid_param("owner_uuid")?;
    let req = MigrateRequest {
        action: action.clone(),
        automatic: flag("migration_automatic"),
        owner,
        affinity,
        target_server: uuid_param("override_server_uuid")?,
        offline: flag("migration_offline"),
        bandwidth_mbps: bandwidth,
        requested_by: if owner.is_some() { format!("owner {}", owner.unwrap_or_default()) } else { "operator".into() },
    };
    let a = s.app.migrate(vm, req).await?;
    match action.as_str() {
        "finalize" => ok(&json!({})),
        "estimate" => ok(&a.estimate.unwrap_or_default()),
        _ => Ok(json_resp(
            StatusCode::ACCEPTED,
            &json!({"job_uuid": a.job_uuid, "migration": a.migration.public(nereid_types::time::now_ms())}),
        )),
    }
}
