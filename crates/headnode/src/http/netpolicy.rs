//! CNAPI extension: `GET /servers/{uuid}/netpolicy`, the network policy the headnode
//! computes for a server now (what it pushes when the server's heartbeat reports another
//! digest; compare with the server's `netpolicy_digest`).

use axum::extract::{Path, State};
use axum::http::Method;
use serde_json::{Value, json};

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, path_uuid};

fn policy_schema() -> Value {
    json!({"type": "object", "required": ["digest", "overlays", "firewalls"], "properties": {
        "digest": {"type": "string", "description": "Hex SHA-256 of the overlays and firewalls; the agent echoes it in heartbeats."},
        "overlays": {"type": "object", "description": "vni → the underlay IPv4 addresses of the other servers with NICs on it.",
                     "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "firewalls": {"type": "object", "description": "VM UUID → its compiled firewall entries, in the order they apply.",
                      "additionalProperties": {"type": "array", "items": {"type": "object"}}}}})
}

pub fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/servers/{uuid}/netpolicy",
        Doc {
            id: "GetServerNetPolicy",
            tag: "CNAPI",
            summary: "The network policy (fabric overlay peers, VM firewalls) computed for the server now.",
            query: &[],
            body: BodyDoc::None,
            response: RespDoc::Schema(200, policy_schema),
        },
        get,
    )]
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&s.app.server_netpolicy(uuid).await?)
}
