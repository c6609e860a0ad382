//! VMs' consoles, reached through the agent of the server the VM is on.
//!
//! ```text
//!   operator ──WebSocket──► headnode ──WebSocket over mutual TLS──► agent ──► QEMU socket
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
pub type AgentSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// How long the agent has to accept a console connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a VM's consoles are: its server's agent and the key it must present.
#[derive(Debug, Clone)]
pub struct ConsoleTarget {
    pub vm: Uuid,
    pub server: Uuid,
    agent_url: String,
    pin: String,
}

impl ConsoleTarget {
    fn path(&self, kind: ConsoleKind) -> String {
        format!("/servers/{}/vms/{}/{}", self.server, self.vm, kind.segment())
    }

    /// The agent's WebSocket URL for the console.
    fn ws_url(&self, kind: ConsoleKind) -> Result<String, ApiError> {
        let base = self.agent_url.trim_end_matches('/');
        let base = match base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => {
                return Err(ApiError::unavailable(format!(
                    "server {} has its agent at {base}: agents are reached over TLS only (https://)",
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
            401 | 403 => ApiError::unavailable(format!(
                "server {} refused the headnode's certificate for the console of VM {} ({message})",
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
        let pin = self.server_pin(server).await?;
        Ok(ConsoleTarget { vm, server, agent_url: s.agent_url, pin })
    }

    /// The VM's whole serial console log (raw bytes, at most 1 MiB).
    pub async fn console_log(&self, t: &ConsoleTarget) -> Result<Bytes, ApiError> {
        let url = format!("{}{}?log=true", t.agent_url.trim_end_matches('/'), t.path(ConsoleKind::Serial));
        let http = self.agents.client(t.server, &t.pin).map_err(ApiError::internal)?;
        let resp = http.get(&url).send().await.map_err(|e| t.unreachable(e))?;
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
        let req = url.as_str().into_client_request().map_err(|e| t.unreachable(e))?;
        let config = self.agents.tls_config(&t.pin).map_err(ApiError::internal)?;
        let connect = async {
            let uri = req.uri();
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(tungstenite::Error::Io)?;
            let _ = tcp.set_nodelay(true);
            // The name is the role; the verifier checks the CA and the pinned key.
            let name = rustls::pki_types::ServerName::try_from(nereid_trust::AGENT_NAME)
                .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e.to_string())))?;
            let tls =
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.map_err(tungstenite::Error::Io)?;
            tokio_tungstenite::client_async(req, tls).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
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
        ConsoleTarget { vm: Uuid::nil(), server: Uuid::max(), agent_url: url.into(), pin: "p".into() }
    }

    #[test]
    fn agent_urls_become_websocket_urls() {
        let t = target("https://10.0.0.5:8081/");
        assert_eq!(t.ws_url(ConsoleKind::Vnc).unwrap(), format!("wss://10.0.0.5:8081/servers/{}/vms/{}/vnc", Uuid::max(), Uuid::nil()));
        let e = target("http://cn1:8081").ws_url(ConsoleKind::Serial).unwrap_err();
        assert_eq!(e.status, 503);
        assert!(e.message.contains("over TLS only"), "{}", e.message);
    }

    #[test]
    fn agent_refusals_keep_their_meaning() {
        let t = target("https://cn1:8081");
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
