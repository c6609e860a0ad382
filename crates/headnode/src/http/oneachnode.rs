//! `POST /oneachnode`: a command, or a file put or got, on every running server or those
//! named (Triton's `sdc-oneachnode`), operator token only. The answer streams one JSON
//! object per line (NDJSON) per server as each finishes; the logic is
//! [`crate::app::oneachnode`]. Being a POST, the audit layer records each request.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

use nereid_types::ApiError;

use super::{AppState, BodyDoc, Doc, HttpError, HttpResult, RespDoc, Route, parse_object};
use crate::app::oneachnode;

pub fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::POST,
        "/oneachnode",
        Doc {
            id: "OnEachNode",
            tag: "Operations",
            summary: "Runs a command (`/bin/sh -c`, with SERVER_UUID and HOSTNAME set), or puts or gets a file, on every running \
                      server or those named, through each server's agent, at most 32 at once, each with its own timeout. The answer \
                      is NDJSON (one JSON object per line, sent as text/plain), one line per server as each finishes: server_uuid, \
                      hostname, exit_status, signal, stdout, stderr, timed_out, content_base64 (for a get) or error (the server \
                      gave no answer: unreachable, not running, refused by an agent started with --no-exec).",
            query: &[],
            body: BodyDoc::Schema(body_schema),
            response: RespDoc::Text(text_schema),
        },
        run,
    )]
}

fn body_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command, for /bin/sh -c. Exactly one of command, put and get."},
            "put": {"type": "object", "required": ["path", "content_base64"], "properties": {
                "path": {"type": "string", "description": "Absolute path of the file on each server (written atomically)."},
                "content_base64": {"type": "string", "description": format!("The file, base64; at most {} bytes once decoded.", oneachnode::FILE_CAP)},
                "mode": {"type": "integer", "minimum": 0, "maximum": 4095}
            }},
            "get": {"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}}},
            "servers": {"type": "array", "items": {"type": "string"}, "description": "Server UUIDs or hostnames; default: every running server."},
            "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "Per server (default 60): the command is killed then."},
            "connect_timeout_secs": {"type": "integer", "minimum": 1, "maximum": 3600, "description": "Added to the wait for each agent's answer (default 10)."}
        }
    })
}

fn text_schema() -> Value {
    json!({"type": "string", "description": "NDJSON: one object per server per line."})
}

async fn run(State(s): State<AppState>, body: Body) -> HttpResult {
    // A put carries a file of up to the shared cap (base64): more than other JSON bodies.
    let bytes = axum::body::to_bytes(body, oneachnode::REQUEST_CAP as usize).await.map_err(|e| {
        if super::error_chain(&e).contains("length limit exceeded") {
            HttpError(ApiError::too_large(oneachnode::REQUEST_CAP as usize))
        } else {
            HttpError(ApiError::bad_request(format!("could not read the request body: {e}")))
        }
    })?;
    let req = oneachnode::parse(&parse_object(&bytes)?)?;
    let results = s.app.oneachnode(req).await?;
    let lines = results.map(|r| {
        let mut line = serde_json::to_vec(&r).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    Ok(response(Body::from_stream(lines)))
}

fn response(body: Body) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}
