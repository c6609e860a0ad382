//! The OpenAPI documents agree with the server: both are valid OpenAPI 3.0 (checked
//! against the OpenAPI Initiative's 3.0 schema, `tests/data/openapi-3.0-schema.json`,
//! Apache-2.0), and a real answer of every documented operation of both — operator API
//! and CloudAPI — has the documented status, content type and body schema. A compute
//! node's own calls (join, sysinfo, heartbeats, VM status) go through a checking proxy
//! (TLS on both sides, on the agent listener), so they are the agent's real requests. An operation nobody reached fails the test, so
//! a new endpoint cannot go unchecked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/openapi.rs"]
mod openapi;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::*;
use nereid_testkit::Options;
use nereid_testkit::cloudapi::{Client as CloudClient, Key, Signing};
use openapi::{Op, validate};
use serde_json::{Value, json};

/// The documents' operations, the answers seen, and what was wrong with them.
struct Checker {
    ops: Vec<Op>,
    error_schema: Value,
    covered: Mutex<BTreeMap<String, usize>>,
    problems: Mutex<Vec<String>>,
}

impl Checker {
    fn new() -> Checker {
        let (ops, error_schema) = openapi::operations();
        Checker { ops, error_schema, covered: Mutex::new(BTreeMap::new()), problems: Mutex::new(Vec::new()) }
    }

    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }

    /// The documented operation a request is.
    fn op(&self, api: &str, method: &str, path: &str) -> Option<&Op> {
        openapi::find(&self.ops, api, method, path)
    }

    /// Checks a JSON request body the server took (answered with the documented status)
    /// against the documented request schema: what the server accepts is documented.
    fn check_request(&self, api: &str, method: &str, path_and_query: &str, status: u16, body: &Value) {
        let path = path_and_query.split('?').next().unwrap_or_default();
        let Some(op) = self.op(api, method, path) else { return };
        if status != op.status {
            return;
        }
        match &op.request {
            Some(schema) => {
                if let Err(e) = validate(schema, body) {
                    self.problem(format!("{api} {method} {path_and_query} ({}): the server took a body the document refuses: {e}", op.id));
                }
            }
            None if body.as_object().is_some_and(|o| !o.is_empty()) => {
                self.problem(format!("{api} {method} {path_and_query} ({}): the server took a body the document does not describe", op.id))
            }
            None => {}
        }
    }

    /// Checks one answer against the operation it belongs to.
    fn check(&self, api: &str, method: &str, path_and_query: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
        let path = path_and_query.split('?').next().unwrap_or_default();
        let what = format!("{api} {method} {path_and_query} → {status}");
        let Some(op) = self.op(api, method, path) else {
            if status < 400 {
                self.problem(format!("{what}: answered, but no documented operation is {method} {path}"));
            }
            return;
        };
        let ct = content_type.unwrap_or_default();
        if status == op.status {
            match &op.content {
                None if !body.is_empty() && status != 101 => {
                    self.problem(format!("{what} ({}): documented without a body, answered {} bytes", op.id, body.len()))
                }
                None => {}
                Some((media, schema)) => {
                    if !ct.starts_with(media.as_str()) {
                        self.problem(format!("{what} ({}): documented as {media}, answered content-type {ct:?}", op.id));
                    }
                    if let Some(schema) = schema {
                        match serde_json::from_slice::<Value>(body) {
                            Ok(v) => {
                                if let Err(e) = validate(schema, &v) {
                                    self.problem(format!("{what} ({}): the body does not match the document: {e}", op.id));
                                }
                            }
                            Err(e) => self.problem(format!("{what} ({}): the body is not JSON: {e}", op.id)),
                        }
                    } else if media.starts_with("text/") && std::str::from_utf8(body).is_err() {
                        self.problem(format!("{what} ({}): text that is not UTF-8", op.id));
                    }
                }
            }
            *self.covered.lock().unwrap().entry(format!("{api} {}", op.id)).or_default() += 1;
        } else if let Some(schema) = op.others.get(&status) {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => {
                    if let Err(e) = validate(schema, &v) {
                        self.problem(format!("{what} ({}): the body does not match the documented {status}: {e}", op.id));
                    }
                }
                Err(e) => self.problem(format!("{what} ({}): the body is not JSON: {e}", op.id)),
            }
        } else if status >= 400 {
            // The documented `default`: Triton's error body.
            if !ct.starts_with("application/json") {
                self.problem(format!("{what} ({}): an error with content-type {ct:?}", op.id));
            }
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => {
                    if let Err(e) = validate(&self.error_schema, &v) {
                        self.problem(format!("{what} ({}): the error body does not match Error: {e}", op.id));
                    }
                }
                Err(e) => self.problem(format!("{what} ({}): the error body is not JSON: {e}", op.id)),
            }
        } else {
            self.problem(format!("{what} ({}): documented status {}, answered {status}", op.id, op.status));
        }
    }

    /// Operations no answer with their documented status reached.
    fn uncovered(&self) -> Vec<String> {
        let covered = self.covered.lock().unwrap();
        self.ops.iter().map(|o| format!("{} {}", o.api, o.id)).filter(|k| !covered.contains_key(k)).collect()
    }
}

/// The operator API, answers checked.
struct Admin {
    http: reqwest::Client,
    url: String,
    token: String,
    checker: Arc<Checker>,
}

impl Admin {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, reqwest::header::HeaderMap, Value) {
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = &body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let h = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        self.checker.check("admin", method, path, status, h.get("content-type").and_then(|v| v.to_str().ok()), &bytes);
        if let Some(b) = &body {
            self.checker.check_request("admin", method, path, status, b);
        }
        (status, h, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// A call that must answer `want`.
    async fn ok(&self, want: u16, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, _, v) = self.call(method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        v
    }

    async fn bytes(&self, path: &str) -> Vec<u8> {
        let resp = self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token).send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = resp.bytes().await.unwrap().to_vec();
        self.checker.check("admin", "GET", path, status, ct.as_deref(), &bytes);
        assert_eq!(status, 200, "{path}");
        bytes
    }

    /// Waits until none of the VM's jobs is queued or running.
    async fn wait_vm_jobs(&self, vm: &str) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let jobs = self.ok(200, "GET", &format!("/vms/{vm}/jobs"), None).await;
            let live = jobs.as_array().unwrap().iter().any(|j| matches!(j["execution"].as_str(), Some("queued" | "running")));
            if !live {
                return;
            }
            assert!(std::time::Instant::now() < end, "VM {vm}'s jobs never finished: {jobs}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn wait_job(&self, job: &Value) -> Value {
        let j = self.ok(200, "GET", &format!("/jobs/{}/wait?timeout=60", job.as_str().unwrap()), None).await;
        assert_eq!(j["execution"], "succeeded", "{j}");
        j
    }
}

/// CloudAPI, signed, answers checked.
struct Cloudapi {
    client: CloudClient,
    checker: Arc<Checker>,
}

impl Cloudapi {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let a = self.client.send(method, path, body.as_ref(), Signing::Good).await.unwrap();
        let ct = a.headers.get("content-type").and_then(|v| v.to_str().ok());
        self.checker.check("cloudapi", method, path, a.status, ct, a.text.as_bytes());
        if let Some(b) = &body {
            self.checker.check_request("cloudapi", method, path, a.status, b);
        }
        (a.status, a.body)
    }

    async fn ok(&self, want: u16, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        v
    }

    /// Polls GET `path` until `done` holds for its answer (metadata and tag changes are jobs).
    async fn until(&self, path: &str, done: impl Fn(&Value) -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !done(&self.ok(200, "GET", path, None).await) {
            assert!(std::time::Instant::now() < end, "{path} never changed");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Polls a machine until `state`.
    async fn wait_state(&self, id: &str, state: &str) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.ok(200, "GET", &format!("/alice/machines/{id}"), None).await["state"] != state {
            assert!(std::time::Instant::now() < end, "machine {id} never became {state}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// A reverse proxy in front of the operator API that checks every answer: what a compute
/// node really sends and gets.
/// The agent listener's side of a checking proxy: it serves TLS with a certificate from
/// the cluster CA and forwards with the agent's own certificate (read from its data
/// directory) when the agent presented one, without one (joining) otherwise.
#[derive(Clone)]
struct AgentTls {
    config: Arc<rustls::ServerConfig>,
    ca: rustls::pki_types::CertificateDer<'static>,
    agent_dir: std::path::PathBuf,
}

impl AgentTls {
    fn new(cloud: &nereid_testkit::Cloud, agent_dir: &std::path::Path) -> Self {
        let id = cloud.headnode.app.agents.identity().unwrap();
        let key = nereid_trust::NodeKey::generate().unwrap();
        let cert = id.ca.issue(&key.spki_der(), &nereid_trust::Role::Headnode, std::time::Duration::from_secs(3600)).unwrap();
        let slot = nereid_trust::configs::CertSlot::new(nereid_trust::configs::certified(&cert, key.private_der()).unwrap());
        let clients = nereid_trust::verify::RoleClient::new(&id.ca.cert_der(), false, None).unwrap();
        AgentTls { config: nereid_trust::configs::server(slot, clients).unwrap(), ca: id.ca.cert_der(), agent_dir: agent_dir.to_path_buf() }
    }

    /// A client to the headnode's agent listener, as the agent (`with_cert`) or joining.
    fn client(&self, with_cert: bool) -> reqwest::Client {
        let tls = self.agent_dir.join("tls");
        let key = nereid_trust::NodeKey::from_pem(&std::fs::read_to_string(tls.join("agent-key.pem")).unwrap()).unwrap();
        let cert = with_cert.then(|| {
            let f = std::fs::read_dir(&tls).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("server-")).unwrap();
            let v: Value = serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap();
            v["certificate"].as_str().unwrap().to_string()
        });
        let verifier = nereid_trust::verify::RoleServer::new(&self.ca, nereid_trust::HEADNODE_NAME, None).unwrap();
        let config = nereid_trust::configs::client(verifier, cert.as_deref().map(|c| (c, key.private_der()))).unwrap();
        reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap()
    }
}

async fn checking_proxy(api: &'static str, upstream: String, checker: Arc<Checker>) -> String {
    checking_proxy_tls(api, upstream, checker, None).await
}

async fn checking_proxy_tls(api: &'static str, upstream: String, checker: Arc<Checker>, agent: Option<AgentTls>) -> String {
    use axum::body::Body;
    use axum::extract::Request;
    let plain = reqwest::Client::new();
    let tls = agent.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let with_cert = req.extensions().get::<axum::extract::ConnectInfo<nereid_trust::Peer>>().is_some_and(|c| c.0.pin.is_some());
        let http = match &tls {
            Some(t) => t.client(with_cert),
            None => plain.clone(),
        };
        let (upstream, checker) = (upstream.clone(), checker.clone());
        async move {
            let (parts, body) = req.into_parts();
            let target = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            let bytes = axum::body::to_bytes(body, 1 << 30).await.unwrap();
            let request_json: Option<Value> = serde_json::from_slice(&bytes).ok();
            let mut out = http.request(parts.method.clone(), format!("{upstream}{target}")).body(bytes);
            for (k, v) in &parts.headers {
                if k != "host" && k != "content-length" {
                    out = out.header(k, v);
                }
            }
            let Ok(resp) = out.send().await else {
                let mut r = axum::response::Response::new(Body::from("the headnode is gone"));
                *r.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
                return r;
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap();
            checker.check(
                api,
                parts.method.as_str(),
                &target,
                status.as_u16(),
                headers.get("content-type").and_then(|v| v.to_str().ok()),
                &body,
            );
            if let Some(j) = &request_json {
                checker.check_request(api, parts.method.as_str(), &target, status.as_u16(), j);
            }
            let mut r = axum::response::Response::new(Body::from(body));
            *r.status_mut() = status;
            for (k, v) in &headers {
                if k != "content-length" && k != "transfer-encoding" {
                    r.headers_mut().insert(k, v.clone());
                }
            }
            r
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match agent {
        None => {
            tokio::spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        }
        Some(t) => {
            use axum::serve::ListenerExt;
            let l = nereid_trust::MtlsListener::new(listener, t.config).unwrap().tap_io(|_| ());
            tokio::spawn(async move { axum::serve(l, app.into_make_service_with_connect_info::<nereid_trust::Peer>()).await });
            format!("https://{addr}")
        }
    }
}

#[test]
fn documents_are_valid_openapi_3_0() {
    let meta: Value = serde_json::from_str(include_str!("data/openapi-3.0-schema.json")).unwrap();
    let validator = jsonschema::options().with_draft(jsonschema::Draft::Draft4).build(&meta).unwrap();
    for (name, doc) in [("admin", nereid_headnode::openapi::admin_document()), ("cloudapi", nereid_headnode::openapi::cloudapi_document())]
    {
        assert_eq!(doc["openapi"], "3.0.3");
        let errs: Vec<String> = validator.iter_errors(&doc).map(|e| format!("{e} at {}", e.instance_path())).take(10).collect();
        assert!(errs.is_empty(), "openapi/{name}.json is not valid OpenAPI 3.0: {errs:#?}");
        // Every schema in it compiles as the JSON Schema it stands for.
        let mut schemas = Vec::new();
        fn collect(v: &Value, out: &mut Vec<Value>) {
            match v {
                Value::Object(m) => {
                    if let Some(s) = m.get("schema") {
                        out.push(s.clone());
                    }
                    m.values().for_each(|x| collect(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
                _ => {}
            }
        }
        collect(&doc["paths"], &mut schemas);
        assert!(schemas.len() > 50, "{name}: {}", schemas.len());
        for s in schemas {
            if s.get("$ref").is_none() {
                validate(&s, &Value::Null).map(|_| ()).or_else(|e| if e.starts_with("the schema") { Err(e) } else { Ok(()) }).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() {
    let checker = Arc::new(Checker::new());
    let opts = Options::new(Backend::Sqlite).cloudapi_http();
    let cloud = Cloud::start_with(opts.clone()).await.unwrap();
    let admin = Admin {
        http: reqwest::Client::new(),
        url: cloud.headnode.admin_url.clone(),
        token: cloud.headnode.token.clone(),
        checker: checker.clone(),
    };

    // A compute node (two simulated servers) that talks through the checking proxy (TLS
    // both sides, the agent's certificate forwarded as its own). With the bare join token,
    // the CA comes from `/agent-ca` and its proof.
    let agent_dir = tempfile::tempdir().unwrap();
    let agent_tls = AgentTls::new(&cloud, &agent_dir.path().join("agent"));
    let proxy = checking_proxy_tls("admin", cloud.headnode.agent_url.clone(), checker.clone(), Some(agent_tls.clone())).await;
    let agent = nereid_agent::start(nereid_agent::Config {
        headnode_url: proxy,
        join_token: cloud.headnode.join_token.clone(),
        data_dir: agent_dir.path().join("agent"),
        backend: nereid_agent::BackendKind::Sim { servers: 2, cpus: 8, ram_mib: 16384, disk_gib: 200, delays: opts.sim_delays },
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        heartbeat: std::time::Duration::from_millis(300),
        nic_tags: Vec::new(),
        migration_listen: None,
        no_exec: false,
    })
    .await
    .unwrap();
    let servers = cloud.wait_servers(2).await.unwrap();
    let (server, spare) = (servers[0]["uuid"].as_str().unwrap().to_string(), servers[1]["uuid"].as_str().unwrap().to_string());

    // Operator API: every resource, made, read, changed, removed.
    admin.ok(200, "GET", "/ping", None).await;
    admin.ok(200, "POST", "/nic_tags", Some(json!({"name": "external"}))).await;
    admin.ok(200, "POST", "/nic_tags", Some(json!({"name": "spare"}))).await;
    admin.ok(200, "GET", "/nic_tags", None).await;
    admin.ok(200, "GET", "/nic_tags/external", None).await;
    admin.ok(200, "PUT", "/nic_tags/spare", Some(json!({"mtu": 9000}))).await;
    admin.ok(204, "DELETE", "/nic_tags/spare", None).await;
    let net = admin
        .ok(
            200,
            "POST",
            "/networks",
            Some(json!({"name": "external", "nic_tag": "external", "vlan_id": 0, "subnet": "10.77.0.0/24",
            "provision_start_ip": "10.77.0.10", "provision_end_ip": "10.77.0.200", "gateway": "10.77.0.1", "resolvers": ["10.77.0.1"]})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let spare_net = admin
        .ok(
            200,
            "POST",
            "/networks",
            Some(json!({"name": "spare", "nic_tag": "external", "vlan_id": 5, "subnet": "10.78.0.0/24",
            "provision_start_ip": "10.78.0.10", "provision_end_ip": "10.78.0.20"})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    admin.ok(200, "GET", "/networks", None).await;
    admin.ok(200, "GET", &format!("/networks/{net}"), None).await;
    admin.ok(200, "PUT", &format!("/networks/{spare_net}"), Some(json!({"description": "spare"}))).await;
    let pool = admin.ok(200, "POST", "/network_pools", Some(json!({"name": "pool", "networks": [net]}))).await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    admin.ok(200, "GET", "/network_pools", None).await;
    admin.ok(200, "GET", &format!("/network_pools/{pool}"), None).await;
    admin.ok(200, "PUT", &format!("/network_pools/{pool}"), Some(json!({"description": "all of them"}))).await;
    admin.ok(204, "DELETE", &format!("/network_pools/{pool}"), None).await;
    let pkg = admin
        .ok(
            201,
            "POST",
            "/packages",
            Some(json!({"name": "sample", "version": "1.0.0", "max_physical_memory": 1024, "quota": 10240, "vcpus": 1, "brand": "bhyve"})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let spare_pkg = admin
        .ok(201, "POST", "/packages", Some(json!({"name": "spare", "version": "1.0.0", "max_physical_memory": 512, "quota": 10240})))
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    admin.ok(200, "GET", "/packages", None).await;
    admin.ok(200, "GET", &format!("/packages/{pkg}"), None).await;
    admin.ok(200, "PUT", &format!("/packages/{spare_pkg}"), Some(json!({"description": "spare"}))).await;
    admin.ok(204, "DELETE", &format!("/packages/{spare_pkg}?force=true"), None).await;
    let manifest = json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "tiny", "version": "1", "type": "zvol", "os": "linux",
                          "public": true, "image_size": 1024, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host"});
    let img = admin.ok(200, "POST", "/images", Some(manifest.clone())).await["uuid"].as_str().unwrap().to_string();
    let file = vec![7u8; 4096];
    let resp = admin
        .http
        .put(format!("{}/images/{img}/file?compression=none", admin.url))
        .bearer_auth(&admin.token)
        .body(file.clone())
        .send()
        .await
        .unwrap();
    let (status, ct) = (resp.status().as_u16(), resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string));
    checker.check("admin", "PUT", &format!("/images/{img}/file"), status, ct.as_deref(), &resp.bytes().await.unwrap());
    admin.ok(200, "POST", &format!("/images/{img}?action=activate"), Some(json!({}))).await;
    admin.ok(200, "GET", "/images", None).await;
    admin.ok(200, "GET", &format!("/images/{img}"), None).await;
    assert_eq!(admin.bytes(&format!("/images/{img}/file")).await, file);
    let mut other = manifest.clone();
    other["name"] = json!("other");
    let other = admin.ok(200, "POST", "/images", Some(other)).await["uuid"].as_str().unwrap().to_string();
    admin.ok(204, "DELETE", &format!("/images/{other}"), None).await;
    // Image sources: another cloud's public catalogue, what it offers, one image imported.
    let publisher = Cloud::start_with(Options::new(Backend::Sqlite).image_catalog()).await.unwrap();
    let remote = publisher.client.post("/images", &json!({"owner": "00000000-0000-0000-0000-000000000000", "name": "remote", "version": "1",
        "type": "zvol", "os": "linux", "public": true, "image_size": 1024, "nic_driver": "virtio", "disk_driver": "virtio", "cpu_type": "host"}))
        .await.unwrap()["uuid"].as_str().unwrap().to_string();
    let c = &publisher.client;
    c.send(c.request(reqwest::Method::PUT, &format!("/images/{remote}/file?compression=none")).body(vec![9u8; 4096])).await.unwrap();
    c.post(&format!("/images/{remote}?action=activate"), &json!({})).await.unwrap();
    let catalog = publisher.image_catalog_url().unwrap();
    admin.ok(200, "POST", "/image_sources", Some(json!({"url": catalog}))).await;
    admin.ok(200, "GET", "/image_sources", None).await;
    admin.ok(200, "GET", "/image_sources/images", None).await;
    admin.ok(200, "POST", &format!("/images/{remote}?action=import-remote"), Some(json!({}))).await;
    admin.ok(200, "GET", &format!("/image_imports/{remote}"), None).await;
    admin.ok(204, "DELETE", &format!("/image_sources?url={}", nereid_client::enc(&catalog)), None).await;
    let alice = admin
        .ok(
            201,
            "POST",
            "/accounts",
            Some(json!({"login": "alice", "email": "alice@example.com", "keys": [{"key": Key::from_seed(3).openssh(), "name": "main"}]})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    admin.ok(200, "GET", "/accounts", None).await;
    admin.ok(200, "GET", "/accounts/alice", None).await;
    admin.ok(200, "PUT", "/accounts/alice", Some(json!({"first_name": "Alice"}))).await;
    admin.ok(204, "PUT", "/accounts/alice/password", Some(json!({"password": "a long passphrase"}))).await;
    admin.ok(201, "POST", "/accounts/alice/keys", Some(json!({"key": Key::from_seed(4).openssh(), "name": "second"}))).await;
    admin.ok(200, "GET", "/accounts/alice/keys", None).await;
    admin.ok(200, "GET", "/accounts/alice/keys/second", None).await;
    admin.ok(204, "DELETE", "/accounts/alice/keys/second", None).await;
    // Provisioning limits: one stays (far above what this test provisions), so CloudAPI's ListLimits lists it.
    let limit = admin.ok(201, "POST", "/accounts/alice/limits", Some(json!({"value": 1000, "os": "linux"}))).await;
    admin.ok(200, "PUT", &format!("/accounts/alice/limits/{}", limit["id"].as_str().unwrap()), Some(json!({"value": 500}))).await;
    let gone = admin.ok(201, "POST", "/accounts/alice/limits", Some(json!({"by": "ram", "value": 1048576}))).await;
    admin.ok(204, "DELETE", &format!("/accounts/alice/limits/{}", gone["id"].as_str().unwrap()), None).await;
    admin.ok(200, "GET", "/accounts/alice/limits", None).await;
    admin.ok(200, "GET", "/servers", None).await;
    admin.ok(200, "GET", &format!("/servers/{server}"), None).await;
    admin.ok(204, "POST", &format!("/servers/{server}"), Some(json!({"reservation_ratio": 0.1}))).await;

    // NAPI NICs and addresses.
    let owner = alice.clone();
    let nic = admin
        .ok(
            200,
            "POST",
            "/nics",
            Some(json!({"network_uuid": spare_net, "owner_uuid": owner, "belongs_to_uuid": owner, "belongs_to_type": "other"})),
        )
        .await["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let nic2 = admin
        .ok(
            200,
            "POST",
            &format!("/networks/{spare_net}/nics"),
            Some(json!({"owner_uuid": owner, "belongs_to_uuid": owner, "belongs_to_type": "other"})),
        )
        .await["mac"]
        .as_str()
        .unwrap()
        .to_string();
    admin.ok(200, "GET", "/nics", None).await;
    let mac = nic.replace(':', "");
    admin.ok(200, "GET", &format!("/nics/{mac}"), None).await;
    admin.ok(200, "PUT", &format!("/nics/{mac}"), Some(json!({"allow_ip_spoofing": true}))).await;
    admin.ok(204, "DELETE", &format!("/nics/{mac}"), None).await;
    admin.ok(204, "DELETE", &format!("/nics/{}", nic2.replace(':', "")), None).await;
    admin.ok(200, "GET", &format!("/networks/{spare_net}/ips"), None).await;
    admin.ok(200, "GET", &format!("/networks/{spare_net}/ips/10.78.0.15"), None).await;
    admin.ok(200, "PUT", &format!("/networks/{spare_net}/ips/10.78.0.15"), Some(json!({"reserved": true}))).await;
    admin.ok(204, "DELETE", &format!("/networks/{spare_net}"), None).await;

    // A VM's life in VMAPI.
    let created = admin
        .ok(
            202,
            "POST",
            "/vms",
            Some(json!({"owner_uuid": alice, "brand": "bhyve", "billing_id": pkg, "image_uuid": img, "networks": [net], "alias": "vm-1"})),
        )
        .await;
    let vm = created["vm_uuid"].as_str().unwrap().to_string();
    let job = admin.wait_job(&created["job_uuid"]).await;
    admin.ok(200, "GET", &format!("/jobs/{}", job["uuid"].as_str().unwrap()), None).await;
    admin.ok(200, "GET", "/jobs", None).await;
    admin.ok(200, "GET", "/doctor", None).await;
    admin.ok(200, "POST", "/doctor?action=repair", Some(json!({}))).await;
    admin.ok(200, "GET", "/vms", None).await;
    admin.ok(200, "GET", &format!("/vms/{vm}/jobs"), None).await;
    let (_, headers, _) = admin.call("GET", &format!("/vms/{vm}"), None).await;
    let etag = headers.get("etag").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (status, _, v) = admin.call_with("PUT", &format!("/vms/{vm}"), Some(json!({"alias": "vm-one"})), &[("if-match", etag)]).await;
    assert_eq!(status, 200, "{v}");
    let j = admin.ok(202, "POST", &format!("/vms/{vm}?action=stop"), Some(json!({}))).await;
    admin.wait_job(&j["job_uuid"]).await;
    // Simulated servers have no consoles: their documented answer is the error body.
    admin.call("GET", &format!("/vms/{vm}/console?log=true"), None).await;
    admin.call("GET", &format!("/vms/{vm}/vnc"), None).await;
    // What a compute node asks for that the simulated one does not.
    admin.ok(200, "GET", &format!("/servers/{server}/vms"), None).await;
    let on = admin.ok(200, "GET", "/vms", None).await.as_array().unwrap().iter().find(|v| v["uuid"] == json!(vm)).unwrap()["server_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    admin.ok(200, "GET", &format!("/servers/{on}/vms/{vm}"), None).await;
    // ...on the agent listener, with the server's certificate.
    let as_agent =
        Admin { http: agent_tls.client(true), url: cloud.headnode.agent_url.clone(), token: String::new(), checker: checker.clone() };
    as_agent
        .ok(204, "POST", &format!("/servers/{on}/vms/{vm}/metadata"), Some(json!({"set_customer_metadata": {"from-guest": "yes"}})))
        .await;
    as_agent.ok(200, "GET", &format!("/servers/{server}/images/{img}"), None).await;
    as_agent.bytes(&format!("/servers/{server}/images/{img}/file")).await;
    as_agent
        .ok(200, "POST", &format!("/servers/{server}/certificate"), Some(json!({"public_key": agent.credentials.public_key_b64()})))
        .await;
    // The operator's view of a server's trust, and the two verbs (their refusals when
    // nothing waits are Triton errors too).
    admin.ok(200, "GET", &format!("/servers/{server}/trust"), None).await;
    let (status, _, e) = admin.call("POST", &format!("/servers/{server}/approve"), Some(json!({}))).await;
    assert_eq!((status, e["code"].as_str()), (409, Some("NoPendingJoin")), "{e}");
    let j = admin.ok(202, "POST", &format!("/vms/{vm}?action=start"), Some(json!({}))).await;
    admin.wait_job(&j["job_uuid"]).await;

    // CloudAPI, as alice.
    let url = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let capi = Cloudapi { client: CloudClient::new(&url, "alice", Key::from_seed(3)), checker: checker.clone() };
    let own = admin
        .ok(
            200,
            "POST",
            "/networks",
            Some(json!({"name": "alice-net", "nic_tag": "external", "vlan_id": 7, "subnet": "10.79.0.0/24",
            "provision_start_ip": "10.79.0.10", "provision_end_ip": "10.79.0.20", "owner_uuids": [alice]})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    capi.ok(200, "GET", "/--ping", None).await;
    capi.ok(200, "GET", "/alice", None).await;
    capi.ok(200, "POST", "/alice", Some(json!({"companyName": "ACME", "phone": ""}))).await;
    capi.ok(201, "POST", "/alice/keys", Some(json!({"key": Key::from_seed(5).openssh(), "name": "k5"}))).await;
    capi.ok(200, "GET", "/alice/keys", None).await;
    capi.ok(200, "GET", "/alice/keys/k5", None).await;
    capi.ok(204, "DELETE", "/alice/keys/k5", None).await;
    capi.ok(200, "GET", "/alice/datacenters", None).await;
    capi.ok(200, "GET", "/alice/services", None).await;
    capi.ok(200, "PUT", "/alice/config", Some(json!({"default_network": net}))).await;
    capi.ok(200, "GET", "/alice/config", None).await;
    capi.ok(200, "GET", "/alice/limits", None).await;
    capi.ok(200, "GET", "/alice/images", None).await;
    capi.ok(200, "GET", &format!("/alice/images/{img}"), None).await;
    capi.ok(200, "GET", "/alice/packages", None).await;
    capi.ok(200, "GET", &format!("/alice/packages/{pkg}"), None).await;
    capi.ok(200, "GET", "/alice/networks", None).await;
    capi.ok(200, "GET", &format!("/alice/networks/{net}"), None).await;
    capi.ok(200, "GET", &format!("/alice/networks/{own}/ips"), None).await;
    capi.ok(200, "PUT", &format!("/alice/networks/{own}/ips/10.79.0.12"), Some(json!({"reserved": true}))).await;
    capi.ok(200, "GET", &format!("/alice/networks/{own}/ips/10.79.0.12"), None).await;
    // Fabrics, both APIs (their networks ride on the default underlay nic tag).
    admin.ok(200, "POST", "/nic_tags", Some(json!({"name": "sdc_underlay", "mtu": 9000}))).await;
    capi.ok(201, "POST", "/alice/fabrics/default/vlans", Some(json!({"vlan_id": 20, "name": "twenty"}))).await;
    capi.ok(200, "GET", "/alice/fabrics/default/vlans", None).await;
    capi.ok(200, "GET", "/alice/fabrics/default/vlans/20", None).await;
    capi.ok(202, "PUT", "/alice/fabrics/default/vlans/20", Some(json!({"description": "twentieth"}))).await;
    capi.ok(202, "POST", "/alice/fabrics/default/vlans/20", Some(json!({"name": "twenty"}))).await;
    let fnet = capi
        .ok(
            201,
            "POST",
            "/alice/fabrics/default/vlans/20/networks",
            Some(json!({"vlan_id": 20, "name": "fab", "subnet": "192.168.20.0/24", "provision_start_ip": "192.168.20.5",
            "provision_end_ip": "192.168.20.9", "gateway": "192.168.20.1", "resolvers": [], "routes": {}})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    capi.ok(200, "GET", "/alice/fabrics/default/vlans/20/networks", None).await;
    capi.ok(200, "GET", &format!("/alice/fabrics/default/vlans/20/networks/{fnet}"), None).await;
    capi.ok(200, "PUT", &format!("/alice/fabrics/default/vlans/20/networks/{fnet}"), Some(json!({"description": "f"}))).await;
    capi.ok(204, "DELETE", &format!("/alice/fabrics/default/vlans/20/networks/{fnet}"), None).await;
    capi.ok(204, "DELETE", "/alice/fabrics/default/vlans/20", None).await;
    let fab = format!("/fabrics/{alice}/vlans");
    admin.ok(200, "POST", &fab, Some(json!({"vlan_id": 21, "name": "twenty-one"}))).await;
    admin.ok(200, "GET", "/fabric_vlans", None).await;
    admin.ok(200, "GET", &fab, None).await;
    admin.ok(200, "GET", &format!("{fab}/21"), None).await;
    admin.ok(200, "PUT", &format!("{fab}/21"), Some(json!({"description": "d"}))).await;
    let fnet = admin
        .ok(
            200,
            "POST",
            &format!("{fab}/21/networks"),
            Some(json!({"name": "fab21", "subnet": "192.168.21.0/24", "provision_start_ip": "192.168.21.5",
            "provision_end_ip": "192.168.21.9", "internet_nat": false})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    admin.ok(200, "GET", &format!("{fab}/21/networks"), None).await;
    admin.ok(200, "GET", &format!("{fab}/21/networks/{fnet}"), None).await;
    admin.ok(200, "PUT", &format!("{fab}/21/networks/{fnet}"), Some(json!({"description": "d"}))).await;
    admin.ok(204, "DELETE", &format!("{fab}/21/networks/{fnet}"), None).await;
    admin.ok(204, "DELETE", &format!("{fab}/21"), None).await;
    let m = capi
        .ok(
            201,
            "POST",
            "/alice/machines",
            Some(json!({"name": "web-1", "image": img, "package": pkg, "metadata.foo": "bar", "tag.role": "web"})),
        )
        .await;
    let id = m["id"].as_str().unwrap().to_string();
    capi.wait_state(&id, "running").await;
    capi.ok(200, "GET", "/alice/machines", None).await;
    let base = format!("/alice/machines/{id}");
    capi.ok(200, "GET", &format!("{base}/audit"), None).await;
    // Firewall rules, both APIs.
    let rule = capi
        .ok(201, "POST", "/alice/fwrules", Some(json!({"rule": "FROM any TO tag \"role\" = \"web\" ALLOW tcp PORT 80", "enabled": true})))
        .await;
    let rid = rule["id"].as_str().unwrap().to_string();
    capi.ok(200, "GET", "/alice/fwrules", None).await;
    capi.ok(200, "GET", &format!("/alice/fwrules/{rid}"), None).await;
    capi.ok(200, "POST", &format!("/alice/fwrules/{rid}"), Some(json!({"description": "web"}))).await;
    capi.ok(200, "POST", &format!("/alice/fwrules/{rid}/disable"), Some(json!({}))).await;
    capi.ok(200, "POST", &format!("/alice/fwrules/{rid}/enable"), Some(json!({}))).await;
    capi.ok(200, "GET", &format!("/alice/fwrules/{rid}/machines"), None).await;
    capi.ok(200, "GET", &format!("{base}/fwrules"), None).await;
    let grule = admin.ok(202, "POST", "/fwrules", Some(json!({"global": true, "rule": "FROM any TO all vms ALLOW tcp PORT 22"}))).await;
    let gid = grule["uuid"].as_str().unwrap().to_string();
    admin.ok(200, "GET", "/fwrules", None).await;
    admin.ok(200, "GET", &format!("/fwrules/{gid}"), None).await;
    admin.ok(202, "PUT", &format!("/fwrules/{gid}"), Some(json!({"enabled": true}))).await;
    admin.ok(200, "GET", &format!("/fwrules/{rid}/vms"), None).await;
    admin.ok(200, "GET", &format!("/firewalls/vms/{id}"), None).await;
    admin.ok(200, "GET", &format!("/servers/{server}/netpolicy"), None).await;
    admin.ok(204, "DELETE", &format!("/fwrules/{gid}"), None).await;
    capi.ok(204, "DELETE", &format!("/alice/fwrules/{rid}"), None).await;
    capi.ok(200, "POST", &format!("{base}/metadata"), Some(json!({"color": "blue"}))).await;
    capi.until(&format!("{base}/metadata"), |m| m["color"] == "blue").await;
    capi.ok(200, "GET", &format!("{base}/metadata/color"), None).await;
    capi.ok(204, "DELETE", &format!("{base}/metadata/color"), None).await;
    capi.until(&format!("{base}/metadata"), |m| m.get("color").is_none()).await;
    capi.ok(204, "DELETE", &format!("{base}/metadata"), None).await;
    capi.ok(200, "POST", &format!("{base}/tags"), Some(json!({"env": "prod"}))).await;
    capi.ok(200, "PUT", &format!("{base}/tags"), Some(json!({"env": "prod", "n": 1}))).await;
    capi.until(&format!("{base}/tags"), |t| t["n"] == 1 && t["env"] == "prod").await;
    capi.ok(200, "GET", &format!("{base}/tags/env"), None).await;
    capi.ok(204, "DELETE", &format!("{base}/tags/env"), None).await;
    capi.until(&format!("{base}/tags"), |t| t.get("env").is_none()).await;
    capi.ok(204, "DELETE", &format!("{base}/tags"), None).await;
    let added = capi.ok(201, "POST", &format!("{base}/nics"), Some(json!({"network": own}))).await;
    let mac = added["mac"].as_str().unwrap().replace(':', "");
    capi.ok(200, "GET", &format!("{base}/nics"), None).await;
    capi.until(&format!("{base}/nics/{mac}"), |n| n["state"] == "running").await;
    capi.ok(204, "DELETE", &format!("{base}/nics/{mac}"), None).await;
    capi.ok(201, "POST", &format!("{base}/snapshots"), Some(json!({"name": "s1"}))).await;
    capi.ok(200, "GET", &format!("{base}/snapshots"), None).await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while capi.ok(200, "GET", &format!("{base}/snapshots/s1"), None).await["state"] != "created" {
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    capi.ok(202, "POST", &format!("{base}/snapshots/s1"), None).await;
    // The rollback is a job that stops, rolls back and starts the machine: the machine is
    // "running" before it begins too, so wait for the job, not for the state.
    admin.wait_vm_jobs(&id).await;
    capi.wait_state(&id, "running").await;
    capi.ok(204, "DELETE", &format!("{base}/snapshots/s1"), None).await;
    // An image from the machine (stopped, imaged, started again), changed, deleted.
    let made = capi.ok(201, "POST", "/alice/images", Some(json!({"machine": id, "name": "from-web-1", "version": "1.0"}))).await;
    let made = made["id"].as_str().unwrap().to_string();
    capi.until(&format!("/alice/images/{made}"), |i| i["state"] == "active").await;
    capi.ok(200, "POST", &format!("/alice/images/{made}?action=update"), Some(json!({"description": "web-1 as it was"}))).await;
    capi.ok(204, "DELETE", &format!("/alice/images/{made}"), None).await;
    admin.wait_vm_jobs(&id).await;
    capi.wait_state(&id, "running").await;
    // Migrations, as alice (user migration is off in this cloud; the VM's internal_metadata
    // allows it): the estimate, automatic, the watch stream to its end, list, get, finalize.
    let j = admin
        .ok(202, "POST", &format!("/vms/{id}?action=update"), Some(json!({"set_internal_metadata": {"user_migration_allowed": true}})))
        .await;
    admin.wait_job(&j["job_uuid"]).await;
    capi.ok(200, "GET", &format!("{base}/migrate"), None).await;
    capi.ok(201, "POST", &format!("{base}/migrate"), Some(json!({"action": "automatic"}))).await;
    // The stream is NDJSON (not one JSON body) and finalize's 200 has no body: both are
    // looked at here rather than by the checker.
    let w = capi.client.send("POST", &format!("{base}/migrate?action=watch"), None, Signing::Good).await.unwrap();
    let ct = w.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!((w.status, ct.as_str()), (200, "application/x-json-stream"), "{}", w.text);
    let last: Value = serde_json::from_str(w.text.lines().last().unwrap_or_default()).unwrap();
    assert_eq!((last["type"].as_str(), last["state"].as_str()), (Some("end"), Some("successful")), "{}", w.text);
    capi.ok(200, "GET", "/alice/migrations", None).await;
    capi.ok(200, "GET", &format!("/alice/migrations/{id}"), None).await;
    let f = capi.client.send("POST", &format!("{base}/migrate"), Some(&json!({"action": "finalize"})), Signing::Good).await.unwrap();
    assert_eq!(f.status, 200, "{}", f.text);
    capi.wait_state(&id, "running").await;
    // VMAPI's side of the same migration; the finalized record holds nothing and may go.
    admin.ok(200, "GET", &format!("/migrations?owner_uuid={alice}"), None).await;
    admin.ok(200, "GET", &format!("/migrations/{id}?format=raw"), None).await;
    admin.ok(200, "GET", &format!("/migrations/{id}/watch"), None).await;
    admin.ok(204, "DELETE", &format!("/migrations/{id}"), None).await;
    capi.ok(202, "POST", &base, Some(json!({"action": "stop"}))).await;
    capi.wait_state(&id, "stopped").await;
    capi.ok(204, "DELETE", &base, None).await;
    // A machine that could not be placed: its records (no server, no NIC) render as
    // documented too, in both APIs.
    let big = admin
        .ok(
            201,
            "POST",
            "/packages",
            Some(json!({"name": "huge", "version": "1.0.0", "max_physical_memory": 1_048_576, "quota": 10240, "brand": "bhyve"})),
        )
        .await["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, failed) = capi.call("POST", "/alice/machines", Some(json!({"name": "too-big", "image": img, "package": big}))).await;
    if status == 201 {
        let fid = failed["id"].as_str().unwrap().to_string();
        capi.wait_state(&fid, "failed").await;
        admin.ok(200, "GET", &format!("/vms/{fid}"), None).await;
        admin.ok(200, "GET", &format!("/vms/{fid}/jobs"), None).await;
    }
    capi.ok(200, "GET", "/alice/machines", None).await;
    admin.ok(200, "GET", "/vms", None).await;
    admin.ok(200, "GET", "/jobs", None).await;

    // The operator's last steps: Prometheus text, a VM and a server removed.
    let resp = admin.http.get(format!("{}/metrics", admin.url)).bearer_auth(&admin.token).send().await.unwrap();
    let (status, ct) = (resp.status().as_u16(), resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string));
    checker.check("admin", "GET", "/metrics", status, ct.as_deref(), &resp.bytes().await.unwrap());
    admin.ok(200, "GET", "/metrics/targets", None).await;
    let j = admin.ok(202, "DELETE", &format!("/vms/{vm}"), None).await;
    admin.wait_job(&j["job_uuid"]).await;
    // An evacuation of the (empty) spare server, then its report; it is put back in service.
    admin.ok(202, "POST", &format!("/servers/{spare}?action=evacuate"), Some(json!({"concurrency": 2}))).await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while admin.ok(200, "GET", &format!("/servers/{spare}/evacuation"), None).await["state"] != "done" {
        assert!(std::time::Instant::now() < end, "the evacuation of an empty server never finished");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    admin.ok(204, "POST", &format!("/servers/{spare}"), Some(json!({"reserved": false}))).await;
    // Revoked, the spare server's agent asks to join again; the operator approves it.
    admin.ok(200, "POST", &format!("/servers/{spare}/revoke"), Some(json!({}))).await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while admin.ok(200, "GET", &format!("/servers/{spare}/trust"), None).await["pending_join"].is_null() {
        assert!(std::time::Instant::now() < end, "the revoked server's agent never asked to join again");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    admin.ok(200, "POST", &format!("/servers/{spare}/approve"), Some(json!({}))).await;
    agent.shutdown().await;
    admin.ok(204, "DELETE", &format!("/servers/{spare}"), None).await;
    // A command on every running server: one NDJSON line per server (sdc-oneachnode).
    admin.ok(200, "POST", "/oneachnode", Some(json!({"command": "true", "timeout_secs": 5}))).await;
    // The audit log holds every change above.
    let audit = admin.ok(200, "GET", "/audit?limit=5", None).await;
    admin.ok(200, "GET", &format!("/audit/{}", audit[0]["id"].as_str().unwrap()), None).await;

    let problems = checker.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{} answers disagree with the documents:\n{}", problems.len(), problems.join("\n"));
    // Simulated servers have no consoles: checked above as errors here, the two console
    // operations answer as documented in `consoles_answer_as_documented`.
    let uncovered: Vec<String> = checker.uncovered().into_iter().filter(|k| k != "admin GetVmConsole" && k != "admin GetVmVnc").collect();
    assert!(uncovered.is_empty(), "documented operations no answer reached: {uncovered:?}");
    let n = checker.covered.lock().unwrap().len();
    assert!(n >= checker.ops.len() - 2, "{n} of {} operations checked", checker.ops.len());
}

/// The real `triton` CLI through a checking proxy in front of CloudAPI: every answer the
/// CLI gets in a tenant's whole day, and every body it sends, matches the CloudAPI document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_triton_clis_traffic_matches_the_cloudapi_document() {
    use nereid_testkit::triton::{KeyType, Tenant};
    let checker = Arc::new(Checker::new());
    let cloud = Cloud::start_with(Options { sim_servers: 1, ..Options::new(Backend::Sqlite) }.cloudapi_http()).await.unwrap();
    cloud.seed().await.unwrap();
    let tenant = Tenant::new(KeyType::Ed25519).unwrap();
    cloud
        .client
        .post("/accounts", &json!({"login": "alice", "email": "alice@example.com", "keys": [{"key": tenant.public_key}]}))
        .await
        .unwrap();
    let upstream = cloud.headnode.cloudapi.as_ref().unwrap().url.clone();
    let proxy = checking_proxy("cloudapi", upstream, checker.clone()).await;
    let t = tenant.triton(&proxy, "alice", false).unwrap();
    let run = |args: &'static [&'static str]| {
        let t = t.clone();
        async move { tokio::task::spawn_blocking(move || t.ok(args).unwrap_or_else(|e| panic!("{e:#}"))).await.unwrap() }
    };
    for args in [
        &["info"][..],
        &["account", "get"],
        &["account", "update", "companyName=ACME", "phone="],
        &["key", "list"],
        &["datacenters"],
        &["services"],
        &["account", "limits"],
        &["package", "list"],
        &["package", "get", "sample"],
        &["image", "list"],
        &["image", "get", "tiny"],
        &["network", "list"],
        &["network", "get", "external"],
        &["network", "ip", "list", "external"],
        &["instance", "create", "-w", "tiny", "sample", "--name", "web-1", "-m", "foo=bar", "-t", "role=web"],
        &["instance", "list"],
        &["instance", "get", "web-1"],
        &["instance", "ip", "web-1"],
        &["instance", "tag", "set", "-w", "web-1", "env=prod"],
        &["instance", "tag", "list", "web-1"],
        &["instance", "tag", "get", "web-1", "env"],
        &["instance", "metadata", "set", "-w", "web-1", "color=blue"],
        &["instance", "metadata", "list", "web-1"],
        &["instance", "nic", "list", "web-1"],
        &["instance", "snapshot", "create", "-w", "--name", "s1", "web-1"],
        &["instance", "snapshot", "list", "web-1"],
        &["instance", "start", "-w", "--snapshot", "s1", "web-1"],
        &["instance", "audit", "web-1"],
        &["instance", "stop", "-w", "web-1"],
        &["instance", "start", "-w", "web-1"],
        &["instance", "delete", "-w", "-f", "web-1"],
    ] {
        run(args).await;
    }
    let problems = checker.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{} answers disagree with the CloudAPI document:\n{}", problems.len(), problems.join("\n"));
    let seen = checker.covered.lock().unwrap().len();
    assert!(seen >= 20, "only {seen} operations seen: {:?}", checker.covered.lock().unwrap());
}

/// The two console operations, which simulated servers refuse (409 `NoConsole`), answer as
/// documented on a qemu-backend server: `GetVmConsole?log=true` is the log as bytes and
/// `GetVmVnc` a WebSocket (101). QEMU is a stand-in (as in tests/console.rs): a script that
/// becomes a process with `-uuid U` in its command line; the test binds the VM's
/// `console.sock` and `vnc.sock` as QEMU would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consoles_answer_as_documented() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const FAKE_QEMU: &str = r#"#!/bin/sh
uuid=; prev=
for a in "$@"; do
    [ "$prev" = -uuid ] && uuid=$a
    prev=$a
done
[ -n "$uuid" ] || exit 1
exec sh -c 'i=0; while [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done' fake-qemu -uuid "$uuid" </dev/null >/dev/null 2>&1
"#;
    let checker = Arc::new(Checker::new());
    let cloud = Cloud::start(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The stand-in QEMU runs as the VM's own unprivileged user: it must reach its script.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let (qemu, qemu_img) = (write("fake-qemu", FAKE_QEMU), write("fake-qemu-img", "#!/bin/sh\nexit 0\n"));
    let agent_dir = dir.path().join("cn");
    // Declared before the agent, so it is dropped after it: the stand-in's cgroups go.
    let _cgroups = nereid_testkit::qemu::VmCgroups(agent_dir.join("qemu"));
    let agent = nereid_agent::start(nereid_agent::Config {
        headnode_url: cloud.headnode.agent_url.clone(),
        join_token: cloud.headnode.join_token_full.clone(),
        data_dir: agent_dir.clone(),
        backend: nereid_agent::BackendKind::Qemu(nereid_agent::QemuOptions {
            accel: nereid_agent::backend::qemu::accel::Choice::Tcg,
            qemu,
            qemu_img,
            ovmf_code: None,
            ovmf_vars: None,
            stop_timeout: std::time::Duration::from_secs(1),
            ..nereid_agent::QemuOptions::default()
        }),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise_url: None,
        heartbeat: std::time::Duration::from_millis(500),
        nic_tags: vec![("external".into(), nereid_agent::net::Uplink::Bridge("lo".into()))],
        migration_listen: None,
        no_exec: false,
    })
    .await
    .unwrap();
    cloud.wait_servers(1).await.unwrap();
    let seed = cloud.seed_sized(256, 2048).await.unwrap();
    let (vm, job) = cloud.create_vm(&seed.vm_body("console-vm")).await.unwrap();
    assert_eq!(cloud.wait_job(&job).await.unwrap()["execution"], "succeeded");
    let vm_dir = agent_dir.join("qemu").join(&vm);
    let admin = Admin {
        http: reqwest::Client::new(),
        url: cloud.headnode.admin_url.clone(),
        token: cloud.headnode.token.clone(),
        checker: checker.clone(),
    };

    // The console: the agent's keeper connects to the chardev; what the guest prints is the log.
    let console = tokio::net::UnixListener::bind(vm_dir.join("console.sock")).unwrap();
    let (mut guest, _) = tokio::time::timeout(std::time::Duration::from_secs(10), console.accept()).await.unwrap().unwrap();
    guest.write_all(b"login: ").await.unwrap();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin.bytes(&format!("/vms/{vm}/console?log=true")).await != b"login: " {
        assert!(std::time::Instant::now() < end, "the console log never showed the guest's output");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // VNC: a WebSocket upgrade.
    let _vnc = tokio::net::UnixListener::bind(vm_dir.join("vnc.sock")).unwrap();
    let path = format!("/vms/{vm}/vnc");
    let mut req = format!("{}{path}", admin.url.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", admin.token).parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    checker.check("admin", "GET", &path, resp.status().as_u16(), None, b"");
    drop(ws);

    let pid = std::fs::read_to_string(vm_dir.join("qemu.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok());
    agent.shutdown().await;
    if let Some(p) = pid.and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    let problems = checker.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let covered = checker.covered.lock().unwrap().clone();
    assert!(covered.contains_key("admin GetVmConsole") && covered.contains_key("admin GetVmVnc"), "{covered:?}");
}
