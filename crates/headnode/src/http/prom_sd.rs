//! `GET /metrics/targets`: Prometheus HTTP service discovery (`http_sd_configs`) for the
//! whole cloud — every agent's `/metrics` (running or not: a down agent should show as a
//! failed scrape, not vanish) and this headnode's own.
//!
//! ```text
//!   [{"targets": ["10.0.0.5:9444"], "labels": {"__scheme__": "https", "__metrics_path__": "/metrics",
//!     "job": "nereid-agent", "server_uuid": "…", "hostname": "cn1", "status": "running"}},
//!    {"targets": ["headnode:8080"], "labels": {"__scheme__": "http", "job": "nereid-headnode", …}}]
//! ```
//! The groups and their labels are built in [`crate::app::prom_sd`]: one per agent
//! process, then the headnode's own at the address the request came to (`Host`), the
//! operator API's scheme.
//!
//! How Prometheus scrapes what it finds (nothing is weakened for it; both credentials are
//! full access today — see `docs/grafana/README.md` before handing them out):
//! - the endpoint itself and the headnode's `/metrics` need the operator token:
//!   `authorization: {credentials_file: admin.token}` (Bearer) in the scrape config;
//! - an agent's `/metrics` is on its API, which takes only CA-issued headnode client
//!   certificates (mutual TLS): `tls_config: {ca_file: <cluster CA>, cert_file, key_file:
//!   a headnode certificate and key}`; see `docs/grafana/README.md`.

use axum::extract::State;
use axum::http::{HeaderMap, Method, header};
use serde_json::{Value, json};

use super::{AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok};

fn sd_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "required": ["targets", "labels"], "properties": {
        "targets": {"type": "array", "items": {"type": "string", "description": "host:port"}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}})
}

pub fn routes() -> Vec<Route> {
    vec![Route::new(
        Method::GET,
        "/metrics/targets",
        Doc {
            id: "MetricsTargets",
            tag: "Common",
            summary: "Prometheus HTTP service discovery: every agent's /metrics (https, mutual TLS with a headnode client certificate) and this headnode's (http, operator token).",
            query: &[],
            body: BodyDoc::None,
            response: RespDoc::Schema(200, sd_schema),
        },
        targets_handler,
    )]
}

async fn targets_handler(State(s): State<AppState>, headers: HeaderMap) -> HttpResult {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    ok(&s.app.metrics_targets(host).await?)
}
