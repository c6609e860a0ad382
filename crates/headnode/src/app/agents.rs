//! Calling compute nodes' agents: idempotent "ensure" requests, deletes, lookups — over
//! mutual TLS, to the key pinned for each server (see [`crate::pki`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nereid_types::agent::{Ensure, VmStatus};
use uuid::Uuid;

use super::App;
use super::agent_targets::Target;

/// How long a job step keeps asking a server it cannot reach before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Why an agent call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error("server {server} ({url}) is unreachable: {message}")]
    Unreachable { server: Uuid, url: String, message: String },
    #[error("server {server} answered {status}: {message}")]
    Status { server: Uuid, status: u16, message: String },
    #[error("{0}")]
    Other(String),
}

/// The HTTP clients for agents: mutual TLS, this headnode's certificate as the client's,
/// and each server's agent accepted only with the key pinned for that server (one client
/// per server and key, made on first use).
#[derive(Default)]
pub struct Agents {
    identity: RwLock<Option<Arc<crate::pki::Identity>>>,
    clients: Mutex<HashMap<(Uuid, String), reqwest::Client>>,
    /// Each server's agent URL and key, remembered for a moment.
    pub targets: super::agent_targets::Targets,
}

impl Agents {
    /// Sets this headnode's identity (at start, before anything calls an agent).
    pub fn set_identity(&self, id: Arc<crate::pki::Identity>) {
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Some(id);
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn identity(&self) -> Option<Arc<crate::pki::Identity>> {
        self.identity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A TLS config for talking to the agent holding key `pin` (for WebSockets too).
    pub fn tls_config(&self, pin: &str) -> Result<rustls::ClientConfig, String> {
        let id = self.identity().ok_or("this headnode has no agent CA yet")?;
        let verifier = nereid_trust::verify::RoleServer::new(&id.ca.cert_der(), nereid_trust::AGENT_NAME, Some(pin.to_string()))
            .map_err(|e| e.to_string())?;
        nereid_trust::configs::client(verifier, Some((&id.cert_pem, id.key_der()))).map_err(|e| format!("{e:#}"))
    }

    /// The client for server `server`'s agent with key `pin`.
    pub fn client(&self, server: Uuid, pin: &str) -> Result<reqwest::Client, String> {
        let key = (server, pin.to_string());
        if let Some(c) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("nereid-headnode/", env!("CARGO_PKG_VERSION")))
            .use_preconfigured_tls(self.tls_config(pin)?)
            .https_only(true)
            .build()
            .map_err(|e| e.to_string())?;
        let mut all = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        // Keys change rarely (approve, renew with a new key): forget old ones now and then.
        if all.len() > 10_000 {
            all.clear();
        }
        all.insert(key, c.clone());
        Ok(c)
    }
}

impl App {
    /// Where the server's agent is called and its key: remembered (see
    /// [`super::agent_targets`]) or read from its records.
    async fn agent_target(&self, server: Uuid) -> Result<Target, AgentError> {
        if let Some(t) = self.agents.targets.get(server) {
            return Ok(t);
        }
        let epoch = self.agents.targets.epoch();
        let (record, pin) = tokio::join!(self.get_server_record(server), self.server_pin(server));
        let (s, _) = record.map_err(|e| AgentError::Other(e.message))?;
        let pin = pin.map_err(|e| AgentError::Other(e.message))?;
        let t = Target { url: s.agent_url, pin };
        self.agents.targets.remember(server, t.clone(), epoch);
        Ok(t)
    }

    /// The server's target and the HTTP client pinned to its key. Agents are called over
    /// TLS only: an agent restarted with TLS re-registers its https:// URL, so a plain one
    /// is "unreachable" (and patient callers ask again).
    async fn agent_http(&self, server: Uuid) -> Result<(Target, reqwest::Client), AgentError> {
        let t = self.agent_target(server).await?;
        if !t.url.starts_with("https://") {
            return Err(self.unreachable(server, &t, "agents are called over TLS only (an https:// agent URL)".into()));
        }
        let http = self.agents.client(server, &t.pin).map_err(AgentError::Other)?;
        Ok((t, http))
    }

    /// An agent that could not be reached: its records are read again next time (it may
    /// have moved, or changed its key).
    fn unreachable(&self, server: Uuid, t: &Target, message: String) -> AgentError {
        self.agents.targets.forget(server);
        AgentError::Unreachable { server, url: t.url.clone(), message }
    }

    async fn agent_request(
        &self,
        server: Uuid,
        method: reqwest::Method,
        path: &str,
        body: Option<&Ensure>,
    ) -> Result<Option<VmStatus>, AgentError> {
        let (t, http) = self.agent_http(server).await?;
        let url = format!("{}/servers/{server}{path}", t.url.trim_end_matches('/'));
        let mut req = http.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(server, &t, e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status >= 400 {
            let body = serde_json::from_str::<serde_json::Value>(&text).ok();
            let field = |k: &str| body.as_ref().and_then(|v| v.get(k)).and_then(|m| m.as_str()).map(str::to_string);
            // Only the agent's own "no such VM here" means gone; a 404 for anything else
            // (an unknown route after version skew, a server this agent does not run) is
            // an error, never a reason to free a VM.
            if status == 404 && field("code").as_deref() == Some(nereid_types::agent::VM_NOT_FOUND) {
                return Ok(None);
            }
            let message = field("message").unwrap_or(text);
            return Err(AgentError::Status { server, status, message });
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| AgentError::Other(format!("server {server} answered something that is not a VM status: {e}")))
    }

    /// [`agent_request`](Self::agent_request), patiently: a server that cannot be reached
    /// is asked again for up to [`PATIENCE`], its record re-read each time — an agent
    /// that restarted on a new address re-joins within seconds, and a job step must learn
    /// the address rather than fail (and unwind a VM that is fine).
    async fn agent_request_patient(
        &self,
        server: Uuid,
        method: reqwest::Method,
        path: &str,
        body: Option<&Ensure>,
    ) -> Result<Option<VmStatus>, AgentError> {
        let end = std::time::Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.agent_request(server, method.clone(), path, body).await {
                Err(AgentError::Unreachable { .. }) if std::time::Instant::now() + pause < end => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Asks the server to make the VM match `e`; returns the VM's status now. Patient
    /// with an unreachable server (jobs call it).
    pub async fn agent_ensure(&self, server: Uuid, e: &Ensure) -> Result<VmStatus, AgentError> {
        self.agent_request_patient(server, reqwest::Method::PUT, &format!("/vms/{}", e.definition.uuid), Some(e))
            .await?
            .ok_or_else(|| AgentError::Other(format!("server {server} does not run this agent API")))
    }

    /// Asks the server to remove the VM; returns its status now (`destroyed` once gone).
    /// Patient with an unreachable server (jobs call it).
    pub async fn agent_delete(&self, server: Uuid, vm: Uuid) -> Result<Option<VmStatus>, AgentError> {
        self.agent_request_patient(server, reqwest::Method::DELETE, &format!("/vms/{vm}"), None).await
    }

    /// [`agent_get`](Self::agent_get), patient with an unreachable server (for job steps).
    pub async fn agent_get_patient(&self, server: Uuid, vm: Uuid) -> Result<Option<VmStatus>, AgentError> {
        self.agent_request_patient(server, reqwest::Method::GET, &format!("/vms/{vm}"), None).await
    }

    /// Sends the server its whole network policy (`PUT /servers/{server}/netpolicy`):
    /// overlay peers and firewalls, applied whole by the agent, which then reports its
    /// digest in heartbeats. Not patient: the policy push asks again next round. An
    /// agent without the endpoint answers a [`AgentError::Status`] 404.
    pub async fn agent_netpolicy(&self, server: Uuid, policy: &nereid_types::netpolicy::NetPolicy) -> Result<(), AgentError> {
        self.agent_send(server, "netpolicy", |http, url| http.put(url).json(policy)).await.map(drop)
    }

    /// One request to the server's agent at `/servers/{server}/{path}` (over TLS, pinned
    /// to the server's certificate), built by `build`; an answer of 400 or more is an
    /// [`AgentError::Status`] carrying the agent's own message.
    async fn agent_send(
        &self,
        server: Uuid,
        path: &str,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AgentError> {
        let (t, http) = self.agent_http(server).await?;
        let url = format!("{}/servers/{server}/{path}", t.url.trim_end_matches('/'));
        let resp = build(&http, &url).send().await.map_err(|e| self.unreachable(server, &t, e.to_string()))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or(text);
            return Err(AgentError::Status { server, status, message });
        }
        Ok(resp)
    }

    /// The server's view of a VM; `None` when it does not have it.
    pub async fn agent_get(&self, server: Uuid, vm: Uuid) -> Result<Option<VmStatus>, AgentError> {
        self.agent_request(server, reqwest::Method::GET, &format!("/vms/{vm}"), None).await
    }

    /// The VM's boot disk flattened into one standalone disk, as the server streams it
    /// (`GET /servers/{server}/vms/{vm}/boot-disk`; the VM must be stopped). `within`
    /// bounds the whole transfer (the clients' usual 20 s would cut a disk short).
    pub async fn agent_boot_disk(
        &self,
        server: Uuid,
        vm: Uuid,
        within: Duration,
    ) -> Result<impl futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + use<>, AgentError> {
        let resp = self.agent_send(server, &format!("vms/{vm}/boot-disk"), |http, url| http.get(url).timeout(within)).await?;
        Ok(resp.bytes_stream())
    }

    /// Gives the server's agent a migration order (`PUT /servers/{server}/vms/{vm}/migration`);
    /// its answer says how that side of the migration goes. Patient with an unreachable
    /// server, as job steps need.
    pub async fn agent_migration(
        &self,
        server: Uuid,
        vm: Uuid,
        order: &nereid_types::migration::Order,
    ) -> Result<nereid_types::migration::AgentProgress, AgentError> {
        let end = std::time::Instant::now() + PATIENCE;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.agent_send(server, &format!("vms/{vm}/migration"), |http, url| http.put(url).json(order)).await {
                Ok(resp) => {
                    return resp
                        .json()
                        .await
                        .map_err(|e| AgentError::Other(format!("server {server} answered a migration order with something else: {e}")));
                }
                Err(AgentError::Unreachable { .. }) if std::time::Instant::now() + pause < end => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How the server's side of the VM's migration goes; `None` when it knows of none.
    pub async fn agent_migration_progress(
        &self,
        server: Uuid,
        vm: Uuid,
    ) -> Result<Option<nereid_types::migration::AgentProgress>, AgentError> {
        match self.agent_send(server, &format!("vms/{vm}/migration"), |http, url| http.get(url)).await {
            Ok(resp) => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| AgentError::Other(format!("server {server} answered a migration query with something else: {e}"))),
            Err(AgentError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
