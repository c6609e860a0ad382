//! CNAPI endpoints: `/servers`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::server::{FIELDS, UPDATE_FIELDS};
use nereid_types::spec::Usage;
use serde_json::{Value, json};

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query, path_uuid, read_object};

const LIST_PARAMS: &[Param] = &[
    Param::new("uuids", QKind::Str { max: 40_000 }, "Comma-separated server UUIDs."),
    Param::new("setup", QKind::Bool, "Set-up servers only (or not)."),
    Param::new("headnode", QKind::Bool, "Headnodes only (or not)."),
    Param::new("reserved", QKind::Bool, "Reserved servers only (or not)."),
    Param::new("reservoir", QKind::Bool, "Reservoir servers only (or not)."),
    Param::new("hostname", QKind::Str { max: 256 }, "Servers with this host name."),
    Param::new("extras", QKind::Str { max: 256 }, "Comma-separated: vms, sysinfo, all."),
    LIMIT,
    OFFSET,
];
const UPDATE_PARAMS: &[Param] = &[Param::new(
    "action",
    QKind::Enum(&["evacuate"]),
    "evacuate: reserve the server and migrate every VM off it, a few at a time (body {concurrency?, offline?}); 202 with the evacuation, then GET /servers/{uuid}/evacuation.",
)];
const GET_PARAMS: &[Param] =
    &[Param::new("extras", QKind::Str { max: 256 }, "Comma-separated: vms, sysinfo, all (sysinfo is included by default).")];

fn vm_schema() -> Value {
    json!({"type": "object", "description": "VM status as the server reports it"})
}

fn vms_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "description": "VM status as the server reports it"}})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "CNAPI", summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/servers",
            doc(
                "ListServers",
                "List compute nodes with their status (running while heartbeats arrive, else unknown).",
                LIST_PARAMS,
                BodyDoc::None,
                RespDoc::List(FIELDS),
            ),
            list,
        ),
        Route::new(
            Method::GET,
            "/servers/{uuid}",
            doc(
                "GetServer",
                "Get a compute node, with its sysinfo and the migrations from or to it that hold something (`migrations`).",
                GET_PARAMS,
                BodyDoc::None,
                RespDoc::Object(200, FIELDS),
            ),
            get,
        ),
        Route::new(
            Method::GET,
            "/servers/{uuid}/evacuation",
            doc(
                "GetServerEvacuation",
                "The server's latest evacuation: each VM's state (pending, migrating, migrated, failed, unplaceable), why, and counts.",
                &[],
                BodyDoc::None,
                RespDoc::Schema(200, evacuation_schema),
            ),
            evacuation,
        ),
        Route::new(
            Method::POST,
            "/servers/{uuid}",
            doc(
                "ServerUpdate",
                "Change reserved, reservoir, traits, overprovision ratios (persisted), reservation ratio, notes; or, with action=evacuate, empty the server.",
                UPDATE_PARAMS,
                BodyDoc::Fields(UPDATE_FIELDS, Usage::Update),
                RespDoc::Empty(204),
            ),
            update,
        ),
        Route::new(
            Method::DELETE,
            "/servers/{uuid}",
            doc("DeleteServer", "Forget a compute node (refused while VMs are counted on it).", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
        Route::new(
            Method::GET,
            "/servers/{uuid}/vms",
            doc(
                "ListServerVms",
                "The VMs the server reports running (its last heartbeat).",
                &[],
                BodyDoc::None,
                RespDoc::Schema(200, vms_schema),
            ),
            vms,
        ),
        Route::new(
            Method::GET,
            "/servers/{uuid}/vms/{vm}",
            doc("VmLoad", "One VM as the server sees it now (asks the server).", &[], BodyDoc::None, RespDoc::Schema(200, vm_schema)),
            vm_load,
        ),
        Route::new(
            Method::GET,
            "/servers/{uuid}/trust",
            doc(
                "GetServerTrust",
                "The server's agent trust: active, revoked or unapproved; its key's SHA-256; a join waiting for approval.",
                &[],
                BodyDoc::None,
                RespDoc::Schema(200, trust_schema),
            ),
            trust,
        ),
        Route::new(
            Method::POST,
            "/servers/{uuid}/approve",
            doc(
                "ApproveServer",
                "Accept the join waiting for the server (another key for its UUID, or a revoked server): its agent gets a certificate on its next try.",
                &[],
                BodyDoc::None,
                RespDoc::Schema(200, trust_schema),
            ),
            approve,
        ),
        Route::new(
            Method::POST,
            "/servers/{uuid}/revoke",
            doc(
                "RevokeServer",
                "Revoke the server's certificate at once: the headnode refuses its agent and stops calling it; a join for it waits for approval.",
                &[],
                BodyDoc::None,
                RespDoc::Schema(200, trust_schema),
            ),
            revoke,
        ),
    ]
}

fn evacuation_schema() -> Value {
    json!({"type": "object", "properties": {
        "server_uuid": {"type": "string", "format": "uuid"},
        "state": {"type": "string", "enum": ["running", "done"]},
        "started": {"type": "string"},
        "finished": {"type": "string"},
        "concurrency": {"type": "integer"},
        "offline": {"type": "boolean"},
        "counts": {"type": "object"},
        "vms": {"type": "array", "items": {"type": "object", "properties": {
            "vm_uuid": {"type": "string", "format": "uuid"},
            "alias": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "migrating", "migrated", "failed", "unplaceable"]},
            "error": {"type": "string"},
            "explanation": {"type": "array", "items": {"type": "object"}},
            "target_server_uuid": {"type": "string", "format": "uuid"}}}}}})
}

async fn evacuation(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&crate::app::evacuate::render(&s.app.evacuation(uuid).await?))
}

fn trust_schema() -> Value {
    json!({"type": "object", "required": ["state"], "properties": {
        "uuid": {"type": "string", "format": "uuid"},
        "state": {"type": "string", "enum": ["active", "revoked", "unapproved"]},
        "key_sha256": {"type": "string", "nullable": true},
        "agent_url": {"type": "string"},
        "pending_join": {"type": "object", "properties": {"key_sha256": {"type": "string"}, "agent_url": {"type": "string"}, "at": {"type": "string"}}}}})
}

async fn trust(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    s.app.get_server_record(uuid).await?;
    ok(&s.app.trust_summary(uuid).await?)
}

async fn approve(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&s.app.approve_server(uuid).await?)
}

async fn revoke(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&s.app.revoke_server(uuid).await?)
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, LIST_PARAMS, raw.as_deref())?;
    let extras: Vec<&str> = q.str("extras").map(|e| e.split(',').collect()).unwrap_or_default();
    let servers = s.app.list_servers(&q).await?;
    ok(&servers.iter().map(|(srv, hb)| s.app.render_server(srv, hb.as_ref(), &extras)).collect::<Vec<_>>())
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, GET_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let mut extras: Vec<&str> = q.str("extras").map(|e| e.split(',').collect()).unwrap_or_default();
    extras.push("sysinfo");
    let (srv, hb) = s.app.get_server(uuid).await?;
    let mut v = s.app.render_server(&srv, hb.as_ref(), &extras);
    let migrations = s.app.open_migrations_on(uuid).await?;
    v["migrations"] = Value::Array(migrations.iter().map(super::migrations::raw).collect());
    ok(&v)
}

async fn update(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery, body: Body) -> HttpResult {
    let q = parse_query(Api::Napi, UPDATE_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    if q.str("action") == Some("evacuate") {
        let concurrency = match input.get("concurrency") {
            None => s.app.cfg.migration.evacuate_concurrency,
            Some(c) => c.as_u64().filter(|c| (1..=64).contains(c)).map(|c| c as usize).ok_or_else(|| {
                Api::Napi.invalid(vec![nereid_types::FieldError::invalid("concurrency", "must be a whole number from 1 to 64")])
            })?,
        };
        let offline = match input.get("offline") {
            None => false,
            Some(o) => {
                o.as_bool().ok_or_else(|| Api::Napi.invalid(vec![nereid_types::FieldError::invalid("offline", "must be true or false")]))?
            }
        };
        if let Some(k) = input.keys().find(|k| !matches!(k.as_str(), "concurrency" | "offline")) {
            return Err(Api::Napi.invalid(vec![nereid_types::FieldError::unknown(k.clone())]).into());
        }
        let ev = s.app.start_evacuation(uuid, concurrency, offline).await?;
        return Ok(super::json(StatusCode::ACCEPTED, &crate::app::evacuate::render(&ev)));
    }
    s.app.update_server(uuid, &input).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    s.app.delete_server(uuid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn vms(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let (_, hb) = s.app.get_server(uuid).await?;
    ok(&hb.map(|h| h.vms).unwrap_or_default())
}

async fn vm_load(State(s): State<AppState>, Path((uuid, vm)): Path<(String, String)>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let vm = path_uuid(Api::Napi, "vm", &vm)?;
    s.app.get_server_record(uuid).await?;
    match s.app.agent_get(uuid, vm).await {
        Ok(Some(st)) => ok(&st),
        Ok(None) => Err(nereid_types::ApiError::not_found(format!("server {uuid} does not have VM {vm}")).into()),
        Err(e) => Err(nereid_types::ApiError::unavailable(e.to_string()).into()),
    }
}
