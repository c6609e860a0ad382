//! `PUT/GET/DELETE /servers/{server}/vms/{vm}/migration`: the headnode's orders for a VM's
//! migration (see [`crate::migration`]); `DELETE` aborts it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use nereid_types::migration::{AgentProgress, Order};

use super::{ApiState, error, ok, vm_uuid};
use crate::migration::OrderError;

pub async fn put(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>, body: Bytes) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let vm = match vm_uuid(&vm) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let o: Order = match serde_json::from_slice(&body) {
        Ok(o) => o,
        Err(err) => return error(StatusCode::BAD_REQUEST, "InvalidArgument", format!("the migration order does not parse: {err}")),
    };
    answer(n.migrations.order(vm, o))
}

fn answer(r: Result<AgentProgress, OrderError>) -> Response {
    match r {
        Ok(p) => ok(&p),
        Err(OrderError::Conflict(m)) => error(StatusCode::CONFLICT, "Conflict", m),
        Err(OrderError::Invalid(m)) => error(StatusCode::BAD_REQUEST, "InvalidArgument", m),
    }
}

pub async fn get(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let vm = match vm_uuid(&vm) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match n.migrations.get(vm) {
        Some(p) => ok(&p),
        None => error(StatusCode::NOT_FOUND, "ResourceNotFound", format!("no migration of VM {vm} is known on server {server}")),
    }
}

pub async fn delete(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let vm = match vm_uuid(&vm) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    match n.migrations.abort(vm) {
        Some(r) => answer(r),
        None => error(StatusCode::NOT_FOUND, "ResourceNotFound", format!("no migration of VM {vm} is known on server {server}")),
    }
}
