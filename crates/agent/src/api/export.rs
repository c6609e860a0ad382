//! `GET /servers/{server}/vms/{vm}/boot-disk`: the VM's boot disk flattened into one
//! standalone disk (its image base and everything the guest wrote), streamed to the
//! headnode that makes an image of it (`triton image create`).
//!
//! ```text
//!   VM stopped (and asked to stay so)? ─no─► 409 VmNotStopped
//!        │ yes
//!   backend flattens disk0 into a new file ─fails─► 500 naming why (no file left)
//!        │
//!   open it, unlink it, stream the open file (its bytes go when the stream ends,
//!   however it ends: a dropped connection leaves nothing on the server)
//! ```
//! The qemu backend answers a compressed qcow2, the sim backend a small raw disk; the
//! headnode inspects what it receives rather than trusting a header.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::io::AsyncReadExt;

use super::{ApiState, error, vm_uuid};

/// Bytes read from the file per chunk sent.
const CHUNK: usize = 1 << 20;

pub async fn boot_disk(State(s): State<ApiState>, Path((server, vm)): Path<(String, String)>) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let vm = match vm_uuid(&vm) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let path = match n.node.export_boot_disk(vm).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return error(StatusCode::NOT_FOUND, nereid_types::agent::VM_NOT_FOUND, format!("VM {vm} does not exist on server {server}"));
        }
        Err(e) if e.contains("exported only while it is stopped") => return error(StatusCode::CONFLICT, "VmNotStopped", e),
        Err(e) => {
            tracing::warn!(vm = %vm, error = %e, "exporting a boot disk failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e);
        }
    };
    let opened = tokio::fs::File::open(&path).await;
    // Unlinked at once: the open file keeps its bytes until the stream is dropped.
    let _ = tokio::fs::remove_file(&path).await;
    let file = match opened {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("opening the exported disk: {e}")),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("reading the exported disk: {e}")),
    };
    tracing::info!(vm = %vm, bytes = len, "streaming the VM's flattened boot disk");
    // A read error ends the stream (after it is sent), so the headnode sees a broken body.
    let body = stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(k) => {
                buf.truncate(k);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_LENGTH, len.to_string())],
        Body::from_stream(body),
    )
        .into_response()
}
