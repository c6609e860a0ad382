//! The agent's side of the protocol: join, sysinfo, heartbeats, state pushes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use nereid_types::agent::{Heartbeat, HeartbeatReply, Joined, Register, VmStatus};
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

/// A client for the headnode's agent-facing endpoints. Several headnodes of one cluster
/// may be named (`URL1,URL2`): calls go to the one that answered last, and move on to the
/// next when it cannot be reached or answers that it is unavailable (502/503/504).
#[derive(Clone)]
pub struct Headnode {
    bases: Arc<Vec<String>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    http: reqwest::Client,
    /// For image files: no overall deadline, only for connecting and between reads.
    download: reqwest::Client,
}

/// Whether a failed call should be tried on another headnode.
fn fail_over(r: &Result<reqwest::Response, reqwest::Error>) -> bool {
    match r {
        Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        Ok(resp) => matches!(resp.status().as_u16(), 502..=504),
    }
}

impl Headnode {
    /// The headnode (or the comma-separated headnodes of one cluster) at `base`.
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("nereid-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let download = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("nereid-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let bases: Vec<String> = base.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        Headnode { bases: Arc::new(bases), current: Arc::default(), http, download }
    }

    /// The headnode calls go to now.
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.bases.get(i % self.bases.len().max(1)).map(String::as_str).unwrap_or_default()
    }

    /// Sends a request to the current headnode, moving on to the next while one cannot be
    /// reached or is unavailable; the last answer (or error) comes back.
    async fn send(
        &self,
        client: &reqwest::Client,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let n = self.bases.len().max(1);
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut k = 0;
        loop {
            let i = (start + k) % n;
            let r = build(client, self.bases.get(i).map(String::as_str).unwrap_or_default()).send().await;
            if fail_over(&r) && k + 1 < n {
                k += 1;
                continue;
            }
            if i != start && !fail_over(&r) {
                tracing::warn!(headnode = %self.bases.get(i).map(String::as_str).unwrap_or_default(), "moved to another headnode");
                self.current.store(i, std::sync::atomic::Ordering::Relaxed);
            }
            return r;
        }
    }

    async fn post<T: serde::Serialize>(&self, path: &str, bearer: &str, body: &T) -> Result<reqwest::Response, CallError> {
        let resp = self
            .send(&self.http, |c, base| c.post(format!("{base}{path}")).bearer_auth(bearer).json(body))
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

    /// Sends a heartbeat; the answer says what the networking must carry (an older
    /// headnode's empty answer wants nothing).
    pub async fn heartbeat(&self, uuid: Uuid, secret: &str, hb: &Heartbeat) -> Result<HeartbeatReply, CallError> {
        let resp = self.post(&format!("/servers/{uuid}/events/heartbeat"), secret, hb).await?;
        let bytes = resp.bytes().await.map_err(|e| CallError::Network(e.to_string()))?;
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
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

/// One server's credentials at the headnode, for the calls its VMs cause: guests'
/// metadata writes and image downloads.
pub struct Upstream {
    pub hn: Headnode,
    pub server: Uuid,
    pub secret: Arc<RwLock<String>>,
}

impl Upstream {
    fn secret(&self) -> String {
        self.secret.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, String> {
        let secret = self.secret();
        let resp = self
            .hn
            .send(&self.hn.download, |c, base| c.get(format!("{base}{path}")).bearer_auth(&secret))
            .await
            .map_err(|e| format!("cannot reach the headnode: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or(body);
            return Err(format!("the headnode answered {}: {msg}", status.as_u16()));
        }
        Ok(resp)
    }
}

#[async_trait::async_trait]
impl crate::supervisor::Upstream for Upstream {
    async fn metadata_write(&self, vm: Uuid, w: &nereid_types::agent::MetadataWrite) -> Result<(), String> {
        let path = format!("/servers/{}/vms/{vm}/metadata", self.server);
        self.hn.post(&path, &self.secret(), w).await.map(drop).map_err(|e| match e {
            CallError::Status { body, .. } => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
                .unwrap_or(body),
            other => other.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl crate::images::Fetch for Upstream {
    async fn manifest(&self, image: Uuid) -> Result<serde_json::Value, String> {
        let resp = self.get(&format!("/servers/{}/images/{image}", self.server)).await?;
        resp.json().await.map_err(|e| format!("image {image}: the manifest does not parse: {e}"))
    }

    async fn file(&self, image: Uuid) -> Result<BoxStream<'static, Result<Bytes, String>>, String> {
        let resp = self.get(&format!("/servers/{}/images/{image}/file", self.server)).await?;
        Ok(resp.bytes_stream().map(|c| c.map_err(|e| e.to_string())).boxed())
    }
}
