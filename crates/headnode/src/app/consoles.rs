//! VMs' consoles, reached through the agent of the server the VM is on.
//!
//! ```text
//!   operator ──WebSocket──► headnode ──WebSocket (server secret)──► agent ──► QEMU socket
//!            GET /vms/{uuid}/console        GET /servers/{s}/vms/{uuid}/console
//!            GET /vms/{uuid}/vnc            GET /servers/{s}/vms/{uuid}/vnc
//! ```
//! The headnode finds the VM's server, connects to its agent *before* answering the
//! operator's upgrade, so every refusal (unknown VM, a simulated server's VM without
//! consoles, a stopped VM's VNC, an unreachable server) is an ordinary JSON error; the
//! HTTP layer then pumps messages both ways until either side closes.

use std::time::Duration;

use bytes::Bytes;
use nereid_types::ApiError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self};
use uuid::Uuid;

use super::App;

/// Which console of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleKind {
    /// The serial console (com1).
    Serial,
    /// The graphical console (VNC, raw RFB).
    Vnc,
}

impl ConsoleKind {
    fn segment(self) -> &'static str {
        match self {
            ConsoleKind::Serial => "console",
            ConsoleKind::Vnc => "vnc",
        }
    }
}

/// A WebSocket open to a VM's console on its server's agent.
pub type AgentSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long the agent has to accept a console connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a VM's consoles are: its server's agent and the secret it takes.
#[derive(Clone)]
pub struct ConsoleTarget {
    pub vm: Uuid,
    pub server: Uuid,
    agent_url: String,
    secret: String,
}

impl std::fmt::Debug for ConsoleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleTarget").field("vm", &self.vm).field("server", &self.server).field("agent_url", &self.agent_url).finish()
    }
}

impl ConsoleTarget {
    fn path(&self, kind: ConsoleKind) -> String {
        format!("/servers/{}/vms/{}/{}", self.server, self.vm, kind.segment())
    }

    /// The agent's WebSocket URL for the console.
    fn ws_url(&self, kind: ConsoleKind) -> Result<String, ApiError> {
        let base = self.agent_url.trim_end_matches('/');
        let base = match base.strip_prefix("http://") {
            Some(rest) => format!("ws://{rest}"),
            None => {
                return Err(ApiError::unavailable(format!(
                    "server {} has its agent at {base}: consoles are proxied to http:// agents only",
                    self.server
                )));
            }
        };
        Ok(format!("{base}{}", self.path(kind)))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::unavailable(format!(
            "cannot reach the console of VM {}: server {} ({}) is unreachable: {e}",
            self.vm, self.server, self.agent_url
        ))
    }

    /// The agent's refusal, as the operator should see it.
    fn refusal(&self, status: u16, body: &[u8]) -> ApiError {
        let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(|m| m.as_str()).map(str::to_string);
        let message = field("message").unwrap_or_else(|| format!("HTTP {status}"));
        match status {
            404 => ApiError::not_found(format!(
                "{message} (the server does not have the VM; GET /vms/{}?sync=true updates its record)",
                self.vm
            )),
            409 | 422 => ApiError::new(status, field("code").unwrap_or_else(|| "Conflict".into()), message),
            401 => ApiError::unavailable(format!(
                "server {} refused the headnode's credentials for the console of VM {} ({message}); the agent rejoins on its next heartbeat",
                self.server, self.vm
            )),
            _ => ApiError::unavailable(format!("server {} answered {status} for the console of VM {}: {message}", self.server, self.vm)),
        }
    }
}

impl App {
    /// Finds the server a VM's consoles are on: 404 for an unknown or destroyed VM, 409
    /// for one that has no server.
    pub async fn console_target(&self, vm: Uuid) -> Result<ConsoleTarget, ApiError> {
        let (v, _) = self.get_vm(vm, None).await?;
        if v.state.as_deref() == Some("destroyed") {
            return Err(ApiError::not_found(format!("VM {vm} is destroyed: it has no console")));
        }
        let Some(server) = v.server_uuid else {
            return Err(ApiError::conflict("UnallocatedVM", format!("VM {vm} is on no server yet, so it has no console")));
        };
        let (s, _) = self.get_server_record(server).await?;
        let secret = self.server_secret(server).await?;
        Ok(ConsoleTarget { vm, server, agent_url: s.agent_url, secret })
    }

    /// The VM's whole serial console log (raw bytes, at most 1 MiB).
    pub async fn console_log(&self, t: &ConsoleTarget) -> Result<Bytes, ApiError> {
        let url = format!("{}{}?log=true", t.agent_url.trim_end_matches('/'), t.path(ConsoleKind::Serial));
        let resp = self.agents.http().get(&url).bearer_auth(&t.secret).send().await.map_err(|e| t.unreachable(e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| t.unreachable(e))?;
        if status >= 400 {
            return Err(t.refusal(status, &body));
        }
        Ok(body)
    }

    /// Opens a WebSocket to the VM's console on its agent.
    pub async fn console_connect(&self, t: &ConsoleTarget, kind: ConsoleKind) -> Result<AgentSocket, ApiError> {
        let url = t.ws_url(kind)?;
        let mut req = url.as_str().into_client_request().map_err(|e| t.unreachable(e))?;
        let auth = HeaderValue::from_str(&format!("Bearer {}", t.secret))
            .map_err(|_| ApiError::internal(format!("server {}'s secret is not a valid header value", t.server)))?;
        req.headers_mut().insert("authorization", auth);
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req)).await {
            Err(_) => Err(t.unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                Err(t.refusal(status, resp.body().as_deref().unwrap_or_default()))
            }
            Ok(Err(e)) => Err(t.unreachable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> ConsoleTarget {
        ConsoleTarget { vm: Uuid::nil(), server: Uuid::max(), agent_url: url.into(), secret: "s".into() }
    }

    #[test]
    fn agent_urls_become_websocket_urls() {
        let t = target("http://10.0.0.5:8081/");
        assert_eq!(t.ws_url(ConsoleKind::Vnc).unwrap(), format!("ws://10.0.0.5:8081/servers/{}/vms/{}/vnc", Uuid::max(), Uuid::nil()));
        let e = target("https://cn1:8081").ws_url(ConsoleKind::Serial).unwrap_err();
        assert_eq!(e.status, 503);
        assert!(e.message.contains("http:// agents only"), "{}", e.message);
        assert!(!format!("{t:?}").contains("secret: "), "the secret stays out of logs");
    }

    #[test]
    fn agent_refusals_keep_their_meaning() {
        let t = target("http://cn1:8081");
        let e = t.refusal(409, br#"{"code": "NoConsole", "message": "VM x has no console: server y is simulated"}"#);
        assert_eq!((e.status, e.code.as_str()), (409, "NoConsole"));
        assert!(e.message.contains("simulated"));
        let e = t.refusal(404, br#"{"code": "ResourceNotFound", "message": "VM x does not exist on server y"}"#);
        assert_eq!((e.status, e.code.as_str()), (404, "ResourceNotFound"));
        assert!(e.message.contains("sync=true"), "{}", e.message);
        let e = t.refusal(500, b"");
        assert_eq!(e.status, 503);
        assert!(e.message.contains("HTTP 500"), "{}", e.message);
        let e = t.refusal(401, b"{}");
        assert_eq!(e.status, 503);
    }
}
