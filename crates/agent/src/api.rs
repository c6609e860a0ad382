//! The agent's HTTP API, called by the headnode, over mutual TLS: the handshake admits only
//! headnodes' client certificates from the pinned CA (see [`crate::tls`]), so every request
//! that reaches a handler comes from a headnode.
//!
//! VMs' consoles (serial and VNC, as WebSockets) are in [`consoles`].

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nereid_types::agent::Ensure;
use serde_json::json;
use uuid::Uuid;

use crate::NodeRuntime;

mod consoles;

#[derive(Clone)]
pub struct ApiState {
    pub nodes: Arc<Vec<Arc<NodeRuntime>>>,
    pub hwmon: std::path::PathBuf,
}

impl ApiState {
    fn node(&self, id: &str) -> Option<Arc<NodeRuntime>> {
        let id = Uuid::parse_str(id).ok()?;
        self.nodes.iter().find(|n| n.uuid == id).cloned()
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], json!({"code": code, "message": message.into()}).to_string()).into_response()
}

fn ok<T: serde::Serialize>(v: &T) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(v).unwrap_or_default()).into_response()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/servers/{server}/vms", get(list))
        .route("/servers/{server}/vms/{vm}", get(get_vm).put(ensure).delete(delete))
        .route("/servers/{server}/vms/{vm}/console", get(consoles::console))
        .route("/servers/{server}/vms/{vm}/vnc", get(consoles::vnc))
        .route("/servers/{server}/sysinfo", get(sysinfo))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such agent endpoint") })
        .with_state(state)
}

async fn list(State(s): State<ApiState>, Path(server): Path<String>) -> Response {
    match s.node(&server) {
        Some(n) => ok(&n.node.list()),
        None => error(StatusCode::NOT_FOUND, "ResourceNotFound", format!("this agent does not run server {server}")),
    }
}

fn vm_uuid(s: &str) -> Result<Uuid, Box<Response>> {
    Uuid::parse_str(s)
        .map_err(|_| Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", format!("{s:?} is not a VM UUID"))))
}

async fn get_vm(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let vm = match vm_uuid(&vm) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match n.node.get(vm) {
        Some(st) => ok(&st),
        // The one 404 that means "not here" (the headnode frees a VM only on this code;
        // any other 404 — an unknown route, another server — is an error to it).
        None => error(StatusCode::NOT_FOUND, nereid_types::agent::VM_NOT_FOUND, format!("VM {vm} does not exist on server {server}")),
    }
}

async fn ensure(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>, body: Bytes) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let vm = match vm_uuid(&vm) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let e: Ensure = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(err) => return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", format!("the ensure body does not parse: {err}")),
    };
    if e.definition.uuid != vm {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", "definition.uuid differs from the path");
    }
    ok(&n.node.ensure(e))
}

async fn delete(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    match vm_uuid(&vm) {
        Ok(v) => ok(&n.node.delete(v)),
        Err(r) => *r,
    }
}

async fn sysinfo(State(s): State<ApiState>, Path(server): Path<String>) -> Response {
    match s.node(&server) {
        Some(n) => ok(&n.sysinfo),
        None => error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server"),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let nodes: Vec<(Uuid, Vec<nereid_types::agent::VmStatus>)> = s.nodes.iter().map(|n| (n.uuid, n.node.list())).collect();
    let text = crate::metrics::render(&nodes, &s.hwmon);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
