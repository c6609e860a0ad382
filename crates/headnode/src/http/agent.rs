//! The endpoints compute nodes' agents call: join, sysinfo, heartbeats, VM state reports.
//! Authenticated by the join token (join) or the server's own secret (the rest).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::ApiError;
use nereid_types::agent::{Heartbeat, MetadataWrite, Register, VmStatus};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Api, AppState, Auth, BodyDoc, Doc, HttpError, HttpResult, RespDoc, Route, ok, path_uuid};

fn register_schema() -> Value {
    json!({"type": "object", "required": ["sysinfo", "agent_url"], "properties": {"sysinfo": {"type": "object"}, "agent_url": {"type": "string"}}})
}
fn joined_schema() -> Value {
    json!({"type": "object", "properties": {"server_uuid": {"type": "string", "format": "uuid"}, "secret": {"type": "string"}}})
}
fn heartbeat_schema() -> Value {
    json!({"type": "object", "properties": {"usage": {"type": "object"}, "vms": {"type": "array", "items": {"type": "object"}},
        "problems": {"type": "array", "items": {"type": "object"}}}})
}
fn heartbeat_reply_schema() -> Value {
    json!({"type": "object", "properties": {"nic_tag_mtus": {"type": "object", "additionalProperties": {"type": "integer"}}}})
}
fn status_schema() -> Value {
    json!({"type": "object", "required": ["uuid", "state", "generation"], "properties": {"uuid": {"type": "string"}, "state": {"type": "string"}, "generation": {"type": "integer"}}})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, body, response| Doc { id, tag: "Agent", summary, query: &[], body, response };
    vec![
        Route::new(
            Method::POST,
            "/servers/join",
            doc(
                "JoinServer",
                "A compute node joins with the join token; answers its secret.",
                BodyDoc::Schema(register_schema),
                RespDoc::Schema(200, joined_schema),
            ),
            join,
        )
        .auth(Auth::Join),
        Route::new(
            Method::POST,
            "/servers/{uuid}/sysinfo",
            doc("ServerSysinfo", "A compute node reports its sysinfo.", BodyDoc::Schema(register_schema), RespDoc::Empty(204)),
            sysinfo,
        )
        .auth(Auth::Server),
        Route::new(
            Method::POST,
            "/servers/{uuid}/events/heartbeat",
            doc(
                "ServerHeartbeat",
                "A compute node's heartbeat: usage, VM inventory and problems; answers the MTU each nic tag must carry.",
                BodyDoc::Schema(heartbeat_schema),
                RespDoc::Schema(200, heartbeat_reply_schema),
            ),
            heartbeat,
        )
        .auth(Auth::Server),
        Route::new(
            Method::POST,
            "/servers/{uuid}/vms/{vm}/status",
            doc(
                "VmStatus",
                "A compute node reports a VM's state (ignored when older than the last one).",
                BodyDoc::Schema(status_schema),
                RespDoc::Empty(204),
            ),
            status,
        )
        .auth(Auth::Server),
        Route::new(
            Method::POST,
            "/servers/{uuid}/vms/{vm}/metadata",
            doc(
                "VmGuestMetadata",
                "A guest wrote its metadata (mdata-put, mdata-delete): recorded on the VM as set_*/remove_* updates are.",
                BodyDoc::Schema(metadata_schema),
                RespDoc::Empty(204),
            ),
            metadata,
        )
        .auth(Auth::Server),
        Route::new(
            Method::GET,
            "/servers/{uuid}/images/{image}",
            doc(
                "ServerGetImage",
                "The manifest of an active image a compute node installs.",
                BodyDoc::None,
                RespDoc::Schema(200, manifest_schema),
            ),
            image,
        )
        .auth(Auth::Server),
        Route::new(
            Method::GET,
            "/servers/{uuid}/images/{image}/file",
            doc("ServerGetImageFile", "The file of an active image (as GetImageFile serves it).", BodyDoc::None, RespDoc::Binary),
            image_file,
        )
        .auth(Auth::Server),
    ]
}

fn metadata_schema() -> Value {
    let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let keys = json!({"type": "array", "items": {"type": "string"}});
    json!({"type": "object", "properties": {
        "set_customer_metadata": map, "remove_customer_metadata": keys,
        "set_internal_metadata": map, "remove_internal_metadata": keys}})
}
fn manifest_schema() -> Value {
    json!({"type": "object", "description": "An IMGAPI image manifest."})
}

async fn metadata(State(s): State<AppState>, Path((uuid, vm)): Path<(String, String)>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let vm = path_uuid(Api::Napi, "vm", &vm)?;
    let w: MetadataWrite = parse(body).await?;
    s.app.guest_metadata_write(uuid, vm, &w).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn image(State(s): State<AppState>, Path((_, image)): Path<(String, String)>) -> HttpResult {
    let image = path_uuid(Api::Napi, "image", &image)?;
    ok(&s.app.image_for_server(image).await?.render(false))
}

async fn image_file(State(s): State<AppState>, Path((_, image)): Path<(String, String)>, headers: HeaderMap) -> HttpResult {
    let image = path_uuid(Api::Napi, "image", &image)?;
    s.app.image_for_server(image).await?;
    super::images::serve_file(&s, image, None, &headers).await
}

async fn parse<T: DeserializeOwned>(body: Body) -> Result<T, HttpError> {
    let bytes =
        axum::body::to_bytes(body, 8 << 20).await.map_err(|e| HttpError(ApiError::bad_request(format!("could not read the body: {e}"))))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| HttpError(ApiError::invalid_parameters(vec![nereid_types::FieldError::invalid("body", e.to_string())])))
}

async fn join(State(s): State<AppState>, body: Body) -> HttpResult {
    let reg: Register = parse(body).await?;
    ok(&s.app.join_server(&reg).await?)
}

async fn sysinfo(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let reg: Register = parse(body).await?;
    s.app.register_server(uuid, &reg).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn heartbeat(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let hb: Heartbeat = parse(body).await?;
    ok(&s.app.heartbeat(uuid, &hb).await?)
}

async fn status(State(s): State<AppState>, Path((uuid, vm)): Path<(String, String)>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let vm = path_uuid(Api::Napi, "vm", &vm)?;
    let st: VmStatus = parse(body).await?;
    if st.uuid != vm {
        return Err(ApiError::invalid_parameters(vec![nereid_types::FieldError::invalid("uuid", "differs from the VM in the path")]).into());
    }
    s.app.apply_vm_status(uuid, &st).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
