//! Calling compute nodes' agents: idempotent "ensure" requests, deletes, lookups.

use std::time::Duration;

use nereid_types::agent::{Ensure, VmStatus};
use uuid::Uuid;

use super::App;

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

/// The HTTP client for agents.
pub struct Agents {
    http: reqwest::Client,
}

impl Default for Agents {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("nereid-headnode/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Agents { http }
    }
}

impl Agents {
    /// The client itself, for calls that are not JSON (console logs).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl App {
    async fn agent_request(
        &self,
        server: Uuid,
        method: reqwest::Method,
        path: &str,
        body: Option<&Ensure>,
    ) -> Result<Option<VmStatus>, AgentError> {
        let (s, _) = self.get_server_record(server).await.map_err(|e| AgentError::Other(e.message))?;
        let secret = self.server_secret(server).await.map_err(|e| AgentError::Other(e.message))?;
        let url = format!("{}/servers/{server}{path}", s.agent_url.trim_end_matches('/'));
        let mut req = self.agents.http.request(method, &url).bearer_auth(secret);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| AgentError::Unreachable { server, url: s.agent_url.clone(), message: e.to_string() })?;
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

    /// The server's view of a VM; `None` when it does not have it.
    pub async fn agent_get(&self, server: Uuid, vm: Uuid) -> Result<Option<VmStatus>, AgentError> {
        self.agent_request(server, reqwest::Method::GET, &format!("/vms/{vm}"), None).await
    }
}
