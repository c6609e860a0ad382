//! `GET /ping`: one answer that satisfies IMGAPI's, PAPI's and NAPI's ping clients.

use axum::extract::State;
use axum::http::Method;
use serde_json::json;

use super::{AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok};

fn ping_schema() -> serde_json::Value {
    json!({"type": "object", "properties": {
        "ping": {"type": "string", "enum": ["pong"]}, "imgapi": {"type": "boolean"}, "version": {"type": "string"},
        "pid": {"type": "integer"}, "backend": {"type": "string"}, "status": {"type": "string"}}})
}

pub fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/ping",
        Doc {
            id: "Ping",
            tag: "Common",
            summary: "Liveness: pong, the store backend, imgapi: true (imgadm needs it).",
            query: &[],
            body: BodyDoc::None,
            response: RespDoc::Schema(200, ping_schema),
        },
        ping,
    )]
}

async fn ping(State(s): State<AppState>) -> HttpResult {
    ok(&json!({
        "ping": "pong",
        "status": "OK",
        "imgapi": true,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "backend": s.app.store.backend(),
    }))
}
