//! `GET /metrics/targets`: Prometheus HTTP service discovery (`http_sd_configs`) for the
//! whole cloud — every agent's `/metrics` (running or not: a down agent should show as a
//! failed scrape, not vanish) and this headnode's own.
//!
//! ```text
//!   [{"targets": ["10.0.0.5:9444"], "labels": {"__scheme__": "https", "__metrics_path__": "/metrics",
//!     "job": "nereid-agent", "server_uuid": "…", "hostname": "cn1", "status": "running"}},
//!    {"targets": ["headnode:8080"], "labels": {"__scheme__": "http", "job": "nereid-headnode", …}}]
//! ```
//! One group per agent process (an agent that runs several servers is scraped once; its
//! series carry a `server` label each, and the group's `server_uuid` and `hostname` list
//! them comma-separated). The headnode's target is the address the request came to
//! (`Host`), the operator API's scheme.
//!
//! How Prometheus scrapes what it finds (nothing is weakened for it; both credentials are
//! full access today — see `docs/grafana/README.md` before handing them out):
//! - the endpoint itself and the headnode's `/metrics` need the operator token:
//!   `authorization: {credentials_file: admin.token}` (Bearer) in the scrape config;
//! - an agent's `/metrics` is on its API, which takes only CA-issued headnode client
//!   certificates (mutual TLS): `tls_config: {ca_file: <cluster CA>, cert_file, key_file:
//!   a headnode certificate and key}`; see `docs/grafana/README.md`.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::{HeaderMap, Method, header};
use nereid_store::ListQuery;
use nereid_types::server::Server;
use serde_json::{Value, json};
use uuid::Uuid;

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
    let app = &s.app;
    let servers: HashMap<Uuid, Server> = app.list_keyed(crate::buckets::SERVERS.name, &ListQuery::all()).await?;
    let times = app.heartbeat_times().await?;
    let (now, timeout) = (nereid_types::time::now_ms(), app.cfg.server_timeout.as_millis() as i64);
    let status = |u: &Uuid| nereid_types::server::status(times.get(u).copied(), now, timeout).0.to_string();
    let listed: Vec<(Server, String)> = servers.into_values().map(|srv| (status(&srv.uuid), srv)).map(|(st, srv)| (srv, st)).collect();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    ok(&targets(&listed, host))
}

/// `host:port` of an agent URL (`https://10.0.0.5:9444/` → `10.0.0.5:9444`); `None` for
/// one that is not https (agents are only ever reached over TLS).
pub fn agent_target(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    (!authority.is_empty()).then(|| authority.to_string())
}

/// The service-discovery answer: one group per agent address (servers sorted by UUID
/// within it, groups by address), then the headnode's own (`host`, when known).
pub fn targets(servers: &[(Server, String)], host: Option<&str>) -> Value {
    let mut by_agent: BTreeMap<String, Vec<&(Server, String)>> = BTreeMap::new();
    for s in servers {
        if let Some(t) = agent_target(&s.0.agent_url) {
            by_agent.entry(t).or_default().push(s);
        }
    }
    let mut out: Vec<Value> = by_agent
        .into_iter()
        .map(|(target, mut group)| {
            group.sort_by_key(|(s, _)| s.uuid);
            let join = |f: &dyn Fn(&(Server, String)) -> String| group.iter().map(|s| f(s)).collect::<Vec<_>>().join(",");
            // The agent is up when any of its servers is.
            let up = group.iter().any(|(_, st)| st == "running");
            json!({"targets": [target], "labels": {
                "__scheme__": "https",
                "__metrics_path__": "/metrics",
                "job": "nereid-agent",
                "server_uuid": join(&|(s, _)| s.uuid.to_string()),
                "hostname": join(&|(s, _)| s.hostname.clone()),
                "status": if up { "running" } else { "unknown" },
            }})
        })
        .collect();
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        out.push(json!({"targets": [h], "labels": {"__scheme__": "http", "__metrics_path__": "/metrics", "job": "nereid-headnode"}}));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(n: u128, hostname: &str, url: &str) -> Server {
        let mut s = Server::new(Uuid::from_u128(n), "2026-01-01T00:00:00Z");
        s.hostname = hostname.into();
        s.agent_url = url.into();
        s
    }

    #[test]
    fn one_group_per_agent_and_the_headnode() {
        let servers = vec![
            (server(2, "cn2", "https://10.0.0.5:9444/"), "unknown".to_string()),
            (server(1, "cn1", "https://10.0.0.5:9444"), "running".to_string()),
            (server(3, "cn3", "https://10.0.0.6:9444"), "unknown".to_string()),
            (server(4, "old", "http://10.0.0.7:9444"), "running".to_string()),
        ];
        let v = targets(&servers, Some("hn:8080"));
        let (u1, u2, u3) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        assert_eq!(
            v,
            json!([
                {"targets": ["10.0.0.5:9444"], "labels": {"__scheme__": "https", "__metrics_path__": "/metrics", "job": "nereid-agent",
                    "server_uuid": format!("{u1},{u2}"), "hostname": "cn1,cn2", "status": "running"}},
                {"targets": ["10.0.0.6:9444"], "labels": {"__scheme__": "https", "__metrics_path__": "/metrics", "job": "nereid-agent",
                    "server_uuid": u3.to_string(), "hostname": "cn3", "status": "unknown"}},
                {"targets": ["hn:8080"], "labels": {"__scheme__": "http", "__metrics_path__": "/metrics", "job": "nereid-headnode"}}
            ])
        );
        assert_eq!(targets(&[], None), json!([]));
    }
}
