//! VMs' consoles over the agent API, for the headnode's console proxy.
//!
//! ```text
//!   GET …/vms/{vm}/console?log=true   the whole ring log, raw bytes (application/octet-stream)
//!   GET …/vms/{vm}/console  (WebSocket) backlog, then live output, as binary messages;
//!                                       binary or text messages in = keystrokes to the guest;
//!                                       any number of clients at once (console.rs fans out)
//!   GET …/vms/{vm}/vnc      (WebSocket) bytes both ways to QEMU's VNC socket (raw RFB),
//!                                       one UNIX connection per WebSocket, while the VM runs
//! ```
//! Refusals come before the upgrade, as JSON errors: 404 for an unknown server or VM, 409
//! `NoConsole` for a VM whose backend has no consoles (the simulated one), 409
//! `VmNotRunning` for the VNC console of a VM that does not run, 400 `BadRequest` for a
//! plain request that is neither a WebSocket upgrade nor `?log=true`. After the upgrade,
//! the end of a session is a close frame whose reason says why.

use std::sync::{Arc, Weak};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{ApiState, error, vm_uuid};
use crate::NodeRuntime;
use crate::console::Console;

/// WebSocket close codes (RFC 6455 §7.4.1).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const UNSUPPORTED_DATA: u16 = 1003;

/// The server and VM a console request names, or the error that answers it.
fn lookup(s: &ApiState, server: &str, vm: &str) -> Result<(Arc<NodeRuntime>, Uuid), Box<Response>> {
    let Some(n) = s.node(server) else {
        return Err(Box::new(error(StatusCode::NOT_FOUND, "ResourceNotFound", format!("this agent does not run server {server}"))));
    };
    let vm = vm_uuid(vm)?;
    if n.node.get(vm).is_none() {
        return Err(Box::new(error(StatusCode::NOT_FOUND, "ResourceNotFound", format!("VM {vm} does not exist on server {}", n.uuid))));
    }
    Ok((n, vm))
}

/// 409 for a VM whose backend gives it no consoles.
fn no_console(n: &NodeRuntime, vm: Uuid) -> Response {
    let backend = n.sysinfo.get("Nereid Backend").and_then(|v| v.as_str()).unwrap_or("unknown");
    let message = if backend == "sim" {
        format!("VM {vm} has no console: server {} is simulated (backend sim), and simulated VMs have no serial or VNC console", n.uuid)
    } else {
        format!("VM {vm} has no console: server {} runs the {backend} backend, which gives VMs none", n.uuid)
    };
    error(StatusCode::CONFLICT, "NoConsole", message)
}

fn needs_upgrade(what: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "BadRequest", format!("this endpoint needs a WebSocket upgrade{what}"))
}

/// `log=true|false` and nothing else (`allow_log`), or no parameters at all.
fn parse_query(raw: Option<&str>, allow_log: bool) -> Result<bool, Box<Response>> {
    let mut log = false;
    for (k, v) in url_pairs(raw.unwrap_or("")) {
        match (k.as_str(), v.as_str()) {
            ("log", "true") if allow_log => log = true,
            ("log", "false") if allow_log => log = false,
            ("log", other) if allow_log => {
                let m = format!("log must be true or false, not {other:?}");
                return Err(Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", m)));
            }
            (other, _) => {
                let m = format!("{other:?} is not a parameter of this endpoint");
                return Err(Box::new(error(StatusCode::UNPROCESSABLE_ENTITY, "InvalidParameters", m)));
            }
        }
    }
    Ok(log)
}

/// `a=b&c=d` split into pairs (the values used here need no percent-decoding).
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// `GET /servers/{server}/vms/{vm}/console`: the serial console (WebSocket) or its log.
pub(super) async fn console(
    State(s): State<ApiState>,
    Path((server, vm)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (n, vm) = match lookup(&s, &server, &vm) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let log = match parse_query(raw.as_deref(), true) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let Some(console) = n.node.console(vm) else { return no_console(&n, vm) };
    if log {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], console.log()).into_response();
    }
    let Ok(ws) = ws else { return needs_upgrade(" (or ?log=true for the console log)") };
    // The session holds the console weakly: when the VM goes, so does its console, and
    // the session ends.
    let console = Arc::downgrade(&console);
    ws.on_upgrade(move |socket| serial_session(socket, console))
}

/// Sends a close frame (the reason is cut to the 123 bytes a close frame holds).
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason[..end].into() }))).await;
}

async fn serial_session(mut socket: WebSocket, console: Weak<Console>) {
    const GONE: &str = "the VM's console is gone (the VM was deleted, or its agent stopped)";
    let Some(c) = console.upgrade() else { return close(&mut socket, GOING_AWAY, GONE).await };
    let (backlog, mut live) = c.attach();
    drop(c);
    if !backlog.is_empty() && socket.send(Message::Binary(backlog.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            out = live.recv() => match out {
                Ok(bytes) => if socket.send(Message::Binary(bytes)).await.is_err() { return },
                Err(RecvError::Lagged(n)) => tracing::debug!(missed = n, "a console client fell behind; it missed some output"),
                Err(RecvError::Closed) => return close(&mut socket, GOING_AWAY, GONE).await,
            },
            msg = socket.recv() => {
                let keys = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                match console.upgrade() {
                    Some(c) => c.send(keys).await,
                    None => return close(&mut socket, GOING_AWAY, GONE).await,
                }
            }
        }
    }
}

/// `GET /servers/{server}/vms/{vm}/vnc`: the graphical console (WebSocket ↔ QEMU's VNC socket).
pub(super) async fn vnc(
    State(s): State<ApiState>,
    Path((server, vm)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (n, vm) = match lookup(&s, &server, &vm) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Err(r) = parse_query(raw.as_deref(), false) {
        return *r;
    }
    let Some(path) = n.node.vnc_socket(vm) else { return no_console(&n, vm) };
    let state = n.node.get(vm).map(|st| st.state).unwrap_or_default();
    if state != "running" {
        return error(
            StatusCode::CONFLICT,
            "VmNotRunning",
            format!("VM {vm} is {state}: its VNC console exists only while it runs (start it first)"),
        );
    }
    let Ok(ws) = ws else { return needs_upgrade("") };
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::CONFLICT,
                "VmNotRunning",
                format!("VM {vm}'s VNC console cannot be reached ({}: {e}); is it still booting or stopping?", path.display()),
            );
        }
    };
    // noVNC and websockify clients may ask for the "binary" subprotocol.
    ws.protocols(["binary"]).on_upgrade(move |socket| vnc_session(socket, stream))
}

async fn vnc_session(mut socket: WebSocket, stream: UnixStream) {
    let (mut r, mut w) = stream.into_split();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => return close(&mut socket, NORMAL, "the VM's VNC server closed the connection (did the VM stop?)").await,
                Ok(n) => if socket.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() { return },
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => if w.write_all(&b).await.is_err() {
                    return close(&mut socket, NORMAL, "the VM's VNC server closed the connection (did the VM stop?)").await;
                },
                Some(Ok(Message::Text(_))) => return close(&mut socket, UNSUPPORTED_DATA, "VNC (RFB) travels in binary messages").await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests;
