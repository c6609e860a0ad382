//! The agent's side of the protocol: join, sysinfo, heartbeats, state pushes.

use std::collections::HashMap;
use std::time::Duration;

use nereid_types::agent::{Heartbeat, Joined, Register, VmStatus};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Why a call to the headnode failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The headnode does not accept our secret (forgotten server, rotated secret).
    #[error("the headnode refused this server's credentials: {0}")]
    Unauthorized(String),
    #[error("the headnode answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach the headnode: {0}")]
    Network(String),
}

/// A client for the headnode's agent-facing endpoints.
#[derive(Clone)]
pub struct Headnode {
    base: String,
    http: reqwest::Client,
}

impl Headnode {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("nereid-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Headnode { base: base.trim_end_matches('/').to_string(), http }
    }

    async fn post<T: serde::Serialize>(&self, path: &str, bearer: &str, body: &T) -> Result<reqwest::Response, CallError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .map_err(|e| CallError::Network(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(CallError::Unauthorized(resp.text().await.unwrap_or_default()));
        }
        if status >= 400 {
            return Err(CallError::Status { status, body: resp.text().await.unwrap_or_default() });
        }
        Ok(resp)
    }

    /// Joins with the headnode's join token; returns the server's secret.
    pub async fn join(&self, token: &str, reg: &Register) -> Result<Joined, CallError> {
        let resp = self.post("/servers/join", token, reg).await?;
        resp.json().await.map_err(|e| CallError::Network(format!("the join answer does not parse: {e}")))
    }

    pub async fn register(&self, uuid: Uuid, secret: &str, reg: &Register) -> Result<(), CallError> {
        self.post(&format!("/servers/{uuid}/sysinfo"), secret, reg).await.map(|_| ())
    }

    pub async fn heartbeat(&self, uuid: Uuid, secret: &str, hb: &Heartbeat) -> Result<(), CallError> {
        self.post(&format!("/servers/{uuid}/events/heartbeat"), secret, hb).await.map(|_| ())
    }

    pub async fn push(&self, uuid: Uuid, secret: &str, st: &VmStatus) -> Result<(), CallError> {
        self.post(&format!("/servers/{uuid}/vms/{}/status", st.uuid), secret, st).await.map(|_| ())
    }
}

/// Pushes VM status changes to the headnode, newest per VM, retrying until acknowledged.
pub async fn pusher(hn: Headnode, server: Uuid, secret: impl Fn() -> String + Send + 'static, mut rx: mpsc::UnboundedReceiver<VmStatus>) {
    let mut pending: HashMap<Uuid, VmStatus> = HashMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(s) => {
                    pending.insert(s.uuid, s);
                }
                None => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            let keep = pending.get(&s.uuid).is_none_or(|p| p.generation <= s.generation);
            if keep {
                pending.insert(s.uuid, s);
            }
        }
        let mut order: Vec<VmStatus> = pending.values().cloned().collect();
        order.sort_by_key(|s| s.generation);
        let mut failed = false;
        for st in order {
            match hn.push(server, &secret(), &st).await {
                Ok(()) => {
                    if pending.get(&st.uuid).is_some_and(|p| p.generation == st.generation) {
                        pending.remove(&st.uuid);
                    }
                }
                Err(e) => {
                    tracing::debug!(vm = %st.uuid, error = %e, "state push not acknowledged; will retry");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => { pending.insert(s.uuid, s); }
                    None => return,
                },
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(200);
        }
    }
}
