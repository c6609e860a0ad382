//! The agent's side of the protocol: join, sysinfo, heartbeats, state pushes, images —
//! all over TLS to the headnode's agent listener, verified against the pinned CA, with
//! this agent's certificate as the client certificate (see [`crate::tls`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use nereid_types::agent::{CaInfo, Heartbeat, HeartbeatReply, JoinRequest, Joined, Register, RenewRequest, VmStatus};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Why a call to the headnode failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The headnode does not accept this server's certificate (revoked, another key
    /// approved, a forgotten server) or the join token.
    #[error("the headnode refused this server's credentials: {0}")]
    Unauthorized(String),
    /// The join waits for the operator (`nereid admin server approve`).
    #[error("{0}")]
    ApprovalRequired(String),
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
    creds: Arc<crate::tls::Credentials>,
    clients: Arc<RwLock<Option<Clients>>>,
}

/// HTTP clients for the current credentials.
#[derive(Clone)]
struct Clients {
    version: u64,
    /// With the client certificate.
    http: reqwest::Client,
    /// For image files: no overall deadline, only for connecting and between reads.
    download: reqwest::Client,
    /// Without a client certificate (joining).
    bare: reqwest::Client,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().user_agent(concat!("nereid-agent/", env!("CARGO_PKG_VERSION"))).https_only(true)
}

/// The message of a Triton error body, or the body.
fn message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// Whether a failed call should be tried on another headnode.
fn fail_over(r: &Result<reqwest::Response, reqwest::Error>) -> bool {
    match r {
        Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        Ok(resp) => matches!(resp.status().as_u16(), 502..=504),
    }
}

impl Headnode {
    /// The headnode's agent listener (or the comma-separated agent listeners of one
    /// cluster's headnodes) at `base`: `https://` URLs only.
    pub fn new(base: &str, creds: Arc<crate::tls::Credentials>) -> Result<Self, String> {
        let bases: Vec<String> = base.split(',').map(|b| b.trim().trim_end_matches('/').to_string()).filter(|b| !b.is_empty()).collect();
        if bases.is_empty() {
            return Err("no headnode URL given".into());
        }
        if let Some(b) = bases.iter().find(|b| !b.starts_with("https://")) {
            return Err(format!(
                "the headnode URL {b} is not https://: give the headnode's agent listener (https://HOST:8081, its --agent-listen), not the operator API"
            ));
        }
        Ok(Headnode { bases: Arc::new(bases), current: Arc::default(), creds, clients: Arc::default() })
    }

    /// The clients for the current credentials (rebuilt when they change).
    fn clients(&self) -> Result<Clients, CallError> {
        let v = self.creds.version();
        if let Some(c) = self.clients.read().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|c| c.version == v) {
            return Ok(c.clone());
        }
        let tls = |with_cert| match self.creds.headnode_tls(with_cert) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(CallError::Network("no headnode CA pinned yet".into())),
            Err(e) => Err(CallError::Network(format!("{e:#}"))),
        };
        let build = |b: reqwest::ClientBuilder| b.build().map_err(|e| CallError::Network(e.to_string()));
        let c = Clients {
            version: v,
            http: build(builder().timeout(Duration::from_secs(15)).use_preconfigured_tls(tls(true)?))?,
            download: build(
                builder().connect_timeout(Duration::from_secs(15)).read_timeout(Duration::from_secs(60)).use_preconfigured_tls(tls(true)?),
            )?,
            bare: build(builder().timeout(Duration::from_secs(15)).use_preconfigured_tls(tls(false)?))?,
        };
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Pins the headnode CA at first contact: fetched over TLS that is not yet verified,
    /// accepted only if the join token vouches for it (its hash, or a proof only a
    /// headnode knowing the token can make).
    pub async fn discover_ca(&self, token: &nereid_trust::token::JoinToken) -> Result<(), CallError> {
        let config = nereid_trust::configs::client(Arc::new(nereid_trust::verify::Unverified), None)
            .map_err(|e| CallError::Network(format!("{e:#}")))?;
        let client = builder()
            .timeout(Duration::from_secs(15))
            .use_preconfigured_tls(config)
            .build()
            .map_err(|e| CallError::Network(e.to_string()))?;
        let resp = self.send(&client, |c, base| c.get(format!("{base}/agent-ca"))).await.map_err(|e| CallError::Network(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| CallError::Network(e.to_string()))?;
        if status >= 400 {
            return Err(CallError::Status { status, body });
        }
        let info: CaInfo = serde_json::from_str(&body).map_err(|e| CallError::Network(format!("the CA answer does not parse: {e}")))?;
        let der = nereid_trust::ca::cert_der_from_pem(&info.ca).map_err(|e| CallError::Network(format!("{e:#}")))?;
        if !token.accepts(&der, &info.proofs) {
            return Err(CallError::Unauthorized(format!(
                "the headnode at {} presented a CA (SHA-256 {}) that the join token does not vouch for: not the headnode that made the token, or someone in between",
                self.base(),
                nereid_trust::sha256_hex(&der)
            )));
        }
        self.creds.pin_ca(&info.ca).map_err(|e| CallError::Network(format!("{e:#}")))?;
        tracing::info!(ca = %nereid_trust::sha256_hex(&der), "pinned the headnode CA");
        Ok(())
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

    /// POSTs with the client certificate, or without one but with the join token.
    async fn post<T: serde::Serialize>(&self, path: &str, join_token: Option<&str>, body: &T) -> Result<reqwest::Response, CallError> {
        let clients = self.clients()?;
        let resp = match join_token {
            Some(t) => self.send(&clients.bare, |c, base| c.post(format!("{base}{path}")).bearer_auth(t).json(body)).await,
            None => self.send(&clients.http, |c, base| c.post(format!("{base}{path}")).json(body)).await,
        }
        .map_err(|e| CallError::Network(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            let body = resp.text().await.unwrap_or_default();
            let code = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v.get("code")?.as_str().map(str::to_string));
            if code.as_deref() == Some(nereid_types::agent::APPROVAL_REQUIRED) {
                return Err(CallError::ApprovalRequired(message(&body)));
            }
            return Err(CallError::Unauthorized(message(&body)));
        }
        if status >= 400 {
            return Err(CallError::Status { status, body: resp.text().await.unwrap_or_default() });
        }
        Ok(resp)
    }

    /// Joins with the headnode's join token and this agent's public key; returns the
    /// server's certificate.
    pub async fn join(&self, token: &str, req: &JoinRequest) -> Result<Joined, CallError> {
        let resp = self.post("/servers/join", Some(token), req).await?;
        resp.json().await.map_err(|e| CallError::Network(format!("the join answer does not parse: {e}")))
    }

    /// A new certificate for the server, over its authenticated channel.
    pub async fn renew(&self, uuid: Uuid, req: &RenewRequest) -> Result<Joined, CallError> {
        let resp = self.post(&format!("/servers/{uuid}/certificate"), None, req).await?;
        resp.json().await.map_err(|e| CallError::Network(format!("the renewal answer does not parse: {e}")))
    }

    pub async fn register(&self, uuid: Uuid, reg: &Register) -> Result<(), CallError> {
        self.post(&format!("/servers/{uuid}/sysinfo"), None, reg).await.map(|_| ())
    }

    /// Sends a heartbeat; the answer says what the networking must carry (an older
    /// headnode's empty answer wants nothing).
    pub async fn heartbeat(&self, uuid: Uuid, hb: &Heartbeat) -> Result<HeartbeatReply, CallError> {
        let resp = self.post(&format!("/servers/{uuid}/events/heartbeat"), None, hb).await?;
        let bytes = resp.bytes().await.map_err(|e| CallError::Network(e.to_string()))?;
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
    }

    pub async fn push(&self, uuid: Uuid, st: &VmStatus) -> Result<(), CallError> {
        self.post(&format!("/servers/{uuid}/vms/{}/status", st.uuid), None, st).await.map(|_| ())
    }
}

/// Pushes VM status changes to the headnode, newest per VM, retrying until acknowledged.
pub async fn pusher(hn: Headnode, server: Uuid, mut rx: mpsc::UnboundedReceiver<VmStatus>) {
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
            match hn.push(server, &st).await {
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

/// One server at the headnode, for the calls its VMs cause: guests' metadata writes and
/// image downloads (with the agent's certificate, as every call).
pub struct Upstream {
    pub hn: Headnode,
    pub server: Uuid,
}

impl Upstream {
    async fn get(&self, path: &str) -> Result<reqwest::Response, String> {
        let clients = self.hn.clients().map_err(|e| e.to_string())?;
        let resp = self
            .hn
            .send(&clients.download, |c, base| c.get(format!("{base}{path}")))
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
        self.hn.post(&path, None, w).await.map(drop).map_err(|e| match e {
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
