//! Prometheus service discovery's targets (`GET /metrics/targets`, the handler in
//! [`crate::http::prom_sd`]): which agents are scraped, with which labels and status.
//! Pure but for [`App::metrics_targets`], which reads the servers and their heartbeats.
//!
//! One group per agent process (an agent that runs several servers is scraped once; its
//! series carry a `server` label each, and the group's `server_uuid` and `hostname` list
//! them comma-separated); an agent is `running` when any of its servers is, else
//! `unknown` (a down agent shows as a failed scrape, it does not vanish). Agents not on
//! https are left out (they are only ever reached over TLS). The headnode's own target is
//! the address the request came to.

use std::collections::{BTreeMap, HashMap};

use nereid_store::ListQuery;
use nereid_types::ApiError;
use nereid_types::server::Server;
use serde_json::{Value, json};
use uuid::Uuid;

use super::App;

impl App {
    /// The service-discovery answer for a request that came to `host`.
    pub async fn metrics_targets(&self, host: Option<&str>) -> Result<Value, ApiError> {
        let servers: HashMap<Uuid, Server> = self.list_keyed(crate::buckets::SERVERS.name, &ListQuery::all()).await?;
        let times = self.heartbeat_times().await?;
        let listed = with_status(servers.into_values(), &times, nereid_types::time::now_ms(), self.cfg.server_timeout.as_millis() as i64);
        Ok(targets(&listed, host))
    }
}

/// Each server with its status (`running`, `unknown`) by its last heartbeat (unix ms) at
/// `now_ms`, given the heartbeat timeout.
pub fn with_status(
    servers: impl IntoIterator<Item = Server>,
    heartbeats: &HashMap<Uuid, i64>,
    now_ms: i64,
    timeout_ms: i64,
) -> Vec<(Server, String)> {
    servers
        .into_iter()
        .map(|srv| {
            let st = nereid_types::server::status(heartbeats.get(&srv.uuid).copied(), now_ms, timeout_ms).0.to_string();
            (srv, st)
        })
        .collect()
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

    #[test]
    fn a_server_is_running_while_its_heartbeats_are_recent() {
        let beats = HashMap::from([(Uuid::from_u128(1), 10_000), (Uuid::from_u128(2), 1_000)]);
        let servers = [server(1, "cn1", "https://a:1"), server(2, "cn2", "https://b:1"), server(3, "cn3", "https://c:1")];
        let st: Vec<(u128, String)> =
            with_status(servers, &beats, 12_000, 5_000).into_iter().map(|(s, st)| (s.uuid.as_u128(), st)).collect();
        assert_eq!(st, vec![(1, "running".to_string()), (2, "unknown".into()), (3, "unknown".into())], "recent, stale, never");
        let v = targets(&with_status([server(2, "cn2", "https://b:1")], &beats, 12_000, 5_000), None);
        assert_eq!(v[0]["labels"]["status"], "unknown");
    }
}
