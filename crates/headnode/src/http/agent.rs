//! The endpoints compute nodes' agents call: join, sysinfo, heartbeats, VM state reports,
//! images. Served only on the agent listener (mutual TLS, `--agent-listen`), never on the
//! operator API's. Authenticated by the join token (join, over TLS verified against the
//! CA the agent pinned) or the server's client certificate (the rest), whose key must be
//! the one approved for the server in the path.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::ApiError;
use nereid_types::agent::{Heartbeat, JoinRequest, MetadataWrite, Register, RenewRequest, VmStatus};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{Api, AppState, Auth, BodyDoc, Doc, HttpError, HttpResult, RespDoc, Route, ok, path_uuid};

fn register_schema() -> Value {
    json!({"type": "object", "required": ["sysinfo", "agent_url"], "properties": {"sysinfo": {"type": "object"}, "agent_url": {"type": "string"}}})
}
/// The tag of the agent listener's routes.
pub const TAG: &str = "Agent";

fn join_schema() -> Value {
    json!({"type": "object", "required": ["sysinfo", "agent_url", "public_key"], "properties": {"sysinfo": {"type": "object"},
        "agent_url": {"type": "string"}, "public_key": {"type": "string", "description": "ECDSA P-256 public key, DER SubjectPublicKeyInfo, base64"}}})
}
fn renew_schema() -> Value {
    json!({"type": "object", "required": ["public_key"], "properties": {"public_key": {"type": "string"}}})
}
fn joined_schema() -> Value {
    json!({"type": "object", "required": ["server_uuid", "certificate", "ca", "not_after"], "properties": {
        "server_uuid": {"type": "string", "format": "uuid"}, "certificate": {"type": "string"}, "ca": {"type": "string"},
        "not_after": {"type": "integer"}}})
}
fn ca_schema() -> Value {
    json!({"type": "object", "required": ["ca", "proofs"], "properties": {"ca": {"type": "string"},
        "proofs": {"type": "array", "items": {"type": "string"}}}})
}
fn heartbeat_schema() -> Value {
    json!({"type": "object", "properties": {"usage": {"type": "object"},
        "vms": {"type": "array", "description": "The full VM inventory (absent from a delta heartbeat).", "items": {"type": "object"}},
        "inventory_generation": {"type": "integer", "description": "The agent's number for the inventory this heartbeat describes."},
        "delta": {"type": "object", "description": "The inventory as a change to the acknowledged one (instead of vms).",
            "required": ["base_generation"], "properties": {"base_generation": {"type": "integer"},
                "changed": {"type": "array", "items": {"type": "object"}},
                "removed": {"type": "array", "items": {"type": "string", "format": "uuid"}}}},
        "problems": {"type": "array", "items": {"type": "object"}},
        "temperatures": {"type": "array", "description": "The host's hardware temperatures now; absent without sensors.", "items": {
            "type": "object", "required": ["sensor", "label", "celsius"], "properties": {
                "sensor": {"type": "string"}, "label": {"type": "string"}, "celsius": {"type": "number"}}}},
        "disks": {"type": "array", "description": "The host's disks' SMART / NVMe health as last read; absent when it reads none.",
            "items": nereid_types::server::disk_schema()}}})
}
fn heartbeat_reply_schema() -> Value {
    json!({"type": "object", "properties": {"nic_tag_mtus": {"type": "object", "additionalProperties": {"type": "integer"}},
        "inventory_ack": {"type": "integer", "description": "The inventory generation the headnode holds: the base of the next delta."},
        "send_full": {"type": "boolean", "description": "The delta was not on the held inventory: send the full one."}}})
}
fn status_schema() -> Value {
    json!({"type": "object", "required": ["uuid", "state", "generation"], "properties": {"uuid": {"type": "string"}, "state": {"type": "string"}, "generation": {"type": "integer"}}})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, body, response| Doc { id, tag: TAG, summary, query: &[], body, response };
    vec![
        Route::new(
            Method::GET,
            "/agent-ca",
            doc(
                "AgentCa",
                "The CA an agent pins at first contact, with an HMAC of it keyed by each join token's SHA-256 (for bare join tokens).",
                BodyDoc::None,
                RespDoc::Schema(200, ca_schema),
            ),
            ca,
        )
        .auth(Auth::Public),
        Route::new(
            Method::POST,
            "/servers/join",
            doc(
                "JoinServer",
                "A compute node joins with the join token and its public key; answers its certificate, or 403 ServerApprovalRequired for a server that exists with another key or is revoked.",
                BodyDoc::Schema(join_schema),
                RespDoc::Schema(200, joined_schema),
            ),
            join,
        )
        .auth(Auth::Join),
        Route::new(
            Method::POST,
            "/servers/{uuid}/certificate",
            doc(
                "RenewServerCertificate",
                "A server renews its certificate, for its key or a new one (which becomes the approved one).",
                BodyDoc::Schema(renew_schema),
                RespDoc::Schema(200, joined_schema),
            ),
            renew,
        )
        .auth(Auth::Server),
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
                "A compute node's heartbeat: usage, problems, and its VM inventory whole or as a delta against the acknowledged one; answers the MTU each nic tag must carry and the inventory generation held.",
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
    let req: JoinRequest = parse(body).await?;
    ok(&s.app.join_server(&req).await?)
}

async fn ca(State(s): State<AppState>) -> HttpResult {
    ok(&s.app.ca_info().await?)
}

async fn renew(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let req: RenewRequest = parse(body).await?;
    ok(&s.app.renew_certificate(uuid, &req).await?)
}

async fn sysinfo(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let reg: Register = parse(body).await?;
    s.app.register_server(uuid, &reg).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn heartbeat(
    State(s): State<AppState>,
    Path(uuid): Path<String>,
    trust: Option<axum::Extension<super::VerifiedTrust>>,
    body: Body,
) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let hb: Heartbeat = parse(body).await?;
    ok(&s.app.heartbeat(uuid, &hb, trust.as_ref().map(|t| (t.0.0.as_str(), t.0.1))).await?)
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
