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
use axum::routing::{get, put};
use nereid_types::agent::Ensure;
use serde_json::json;
use uuid::Uuid;

use crate::NodeRuntime;

mod consoles;
pub mod exec;
mod export;
mod migration;

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
        .route("/servers/{server}/vms/{vm}/boot-disk", get(export::boot_disk))
        .route("/servers/{server}/vms/{vm}/migration", get(migration::get).put(migration::put).delete(migration::delete))
        .route("/servers/{server}/sysinfo", get(sysinfo))
        .route("/servers/{server}/netpolicy", put(put_netpolicy))
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

/// `PUT /servers/{server}/netpolicy`: the node's whole network policy, saved and applied;
/// answers the digest applied (an apply that fails answers 500 and leaves the digest the
/// heartbeat reports at the previous one, so the headnode pushes again).
async fn put_netpolicy(State(s): State<ApiState>, Path(server): Path<String>, body: Bytes) -> Response {
    let Some(n) = s.node(&server) else { return error(StatusCode::NOT_FOUND, "ResourceNotFound", "no such server") };
    let p: nereid_types::netpolicy::NetPolicy = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(err) => return error(StatusCode::BAD_REQUEST, "InvalidArgument", format!("the network policy does not parse: {err}")),
    };
    match n.node.put_netpolicy(&p).await {
        Ok(()) => {
            tracing::info!(server = %n.uuid, digest = %p.digest, "network policy applied");
            ok(&json!({"digest": p.digest}))
        }
        Err(e) => {
            tracing::warn!(server = %n.uuid, digest = %p.digest, error = %e, "applying the network policy failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("applying network policy {}: {e}", p.digest))
        }
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let nodes: Vec<(Uuid, Vec<nereid_types::agent::VmStatus>)> = s.nodes.iter().map(|n| (n.uuid, n.node.list())).collect();
    let mut text = crate::metrics::render(&nodes, &s.hwmon);
    text.push_str(&crate::metrics::render_disks(&s.nodes.iter().map(|n| n.disk_metrics()).collect::<Vec<_>>()));
    text.push_str(&crate::vm_stats::exposition(&s.nodes).await);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sim::{Delays, Sim};
    use crate::supervisor::{Node, Upstream};

    struct NoUpstream;

    #[async_trait::async_trait]
    impl Upstream for NoUpstream {
        async fn metadata_write(&self, _: Uuid, _: &crate::metadata::MetadataWrite) -> Result<(), String> {
            Err("no headnode in this test".into())
        }
    }

    async fn sim_node(dir: &std::path::Path, uuid: Uuid) -> Arc<Node> {
        let sim = Sim::open(dir.join("sim.json"), Delays::default());
        sim.set_nic_tag_addresses([("sdc_underlay".to_string(), "192.0.2.5".to_string())].into());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::mem::forget(rx);
        Node::open(uuid, Arc::new(sim), Arc::new(NoUpstream), dir.join("node"), tx).await.unwrap_or_else(|e| panic!("{e}"))
    }

    fn runtime(node: Arc<Node>) -> Arc<NodeRuntime> {
        Arc::new(NodeRuntime {
            uuid: node.uuid,
            migrations: crate::migration::Migrations::open(node.clone()).unwrap_or_else(|e| panic!("{e}")),
            identity: "test".into(),
            node,
            sysinfo: Default::default(),
            paused: Default::default(),
            ram_mib: 1024,
            disk_mib: 1024,
            hwmon: Default::default(),
            smart: Default::default(),
        })
    }

    #[tokio::test]
    async fn migration_orders_answer_progress_refuse_bad_bodies_and_404_when_unknown() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let server = Uuid::new_v4();
        let rt = runtime(sim_node(dir.path(), server).await);
        let router = router(ApiState { nodes: Arc::new(vec![rt.clone()]), hwmon: dir.path().join("no-hwmon") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let c = reqwest::Client::new();
        let vm = Uuid::new_v4();
        let path = format!("{url}/servers/{server}/vms/{vm}/migration");

        let r = c.get(&path).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 404);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap_or_default()["code"], "ResourceNotFound");
        let r = c.put(&path).body("{\"step\": \"sync\"}").send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert!(body["message"].as_str().unwrap_or("").contains("migration order does not parse"), "{body}");

        // A source's prepare only remembers the peer: done at once, and GET says so.
        let migration = Uuid::new_v4();
        let order = json!({"migration": migration, "role": "source", "step": "prepare", "token": "t", "live": true,
            "peer": "127.0.0.1:9", "peer_server": Uuid::new_v4()});
        let r = c.put(&path).json(&order).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 200);
        let mut state = String::new();
        for _ in 0..100 {
            let p: serde_json::Value = c.get(&path).send().await.unwrap_or_else(|e| panic!("{e}")).json().await.unwrap_or_default();
            state = p["state"].as_str().unwrap_or("").to_string();
            if state != "running" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(state, "done");
        // Another migration of the same VM meanwhile: 409, naming the open one.
        let other = json!({"migration": Uuid::new_v4(), "role": "source", "step": "prepare", "token": "t", "live": true});
        let r = c.put(&path).json(&other).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 409);
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert!(body["message"].as_str().unwrap_or("").contains(&migration.to_string()), "{body}");
        // DELETE aborts it.
        let r = c.delete(&path).send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap_or_default()["step"], "abort");
    }

    #[tokio::test]
    async fn a_pushed_netpolicy_is_saved_applied_and_reported_and_bad_bodies_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let server = Uuid::new_v4();
        let rt = runtime(sim_node(dir.path(), server).await);
        let router = router(ApiState { nodes: Arc::new(vec![rt.clone()]), hwmon: dir.path().join("no-hwmon") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let c = reqwest::Client::new();
        let put = |path: String, body: &'static str| c.put(format!("{url}{path}")).body(body).send();

        assert_eq!(rt.heartbeat(&[]).netpolicy_digest, None);
        assert_eq!(rt.heartbeat(&[]).nic_tag_addresses.get("sdc_underlay").map(String::as_str), Some("192.0.2.5"));

        let r = put(format!("/servers/{server}/netpolicy"), "{\"overlays\": []}").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(body["code"], "InvalidArgument");
        assert!(body["message"].as_str().unwrap_or("").contains("network policy does not parse"), "{body}");
        let r = put(format!("/servers/{}/netpolicy", Uuid::new_v4()), "{}").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 404);
        assert_eq!(rt.heartbeat(&[]).netpolicy_digest, None);

        let body = r#"{"digest": "abc", "overlays": {"4660": ["192.0.2.6"]},
            "firewalls": {"6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a10": [{"rule": "6f3d3f1c-8a51-4e43-9b8c-2f0f5d7c9a11",
              "direction": "in", "action": "allow", "protocol": "tcp", "ports": [{"start": 80, "end": 80}], "priority": 0}]}}"#;
        let r = put(format!("/servers/{server}/netpolicy"), body).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<serde_json::Value>().await.unwrap_or_default(), json!({"digest": "abc"}));
        let hb = serde_json::to_value(rt.heartbeat(&[])).unwrap_or_default();
        assert_eq!(hb["netpolicy_digest"], "abc");
        assert_eq!(hb["nic_tag_addresses"], json!({"sdc_underlay": "192.0.2.5"}));

        // A restarted agent reports it again at once (re-applied from the node's directory).
        drop(rt);
        let again = sim_node(dir.path(), server).await;
        assert_eq!(again.netpolicy_digest().as_deref(), Some("abc"));
    }
}
