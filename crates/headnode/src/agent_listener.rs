//! The agent listener: the agent-facing routes on their own address, TLS only.
//!
//! ```text
//!   --agent-listen ADDR (default 127.0.0.1:8081) ─► MtlsListener
//!       server certificate: this headnode's, "headnode.nereid", from the cluster CA
//!       client certificates: optional at the handshake (a joining agent has none yet),
//!                            CA-issued when given; routes check the key (http::Auth::Server)
//! ```
//! The operator listener serves none of these routes, so on a multi-node cloud only this
//! one needs to be reachable from compute nodes.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::app::App;
use crate::pki::{self, Identity};

/// A bound agent listener, not yet serving.
pub struct Bound {
    pub listener: nereid_trust::MtlsListener,
    pub addr: SocketAddr,
    /// `https://<addr>` (what agents are given as `--headnode`).
    pub url: String,
    /// The join token with the CA's hash (`SECRET:sha256:HEX`).
    pub join_token_full: String,
}

/// Loads (or makes) the cluster CA, gives this headnode its certificate and binds `listen`.
pub async fn bind(app: &Arc<App>, listen: SocketAddr, join_token: &str) -> Result<Bound> {
    app.scrub_legacy_secrets().await.map_err(|e| anyhow::anyhow!("dropping old server secrets: {}", e.message))?;
    let ca = pki::cluster_ca(&app.store).await?;
    let fingerprint = ca.fingerprint();
    let id = Arc::new(Identity::new(ca)?);
    app.agents.set_identity(id.clone());
    let tcp = nereid_serve::bind(listen).with_context(|| format!("agent listener: listening on {listen}"))?;
    let addr = tcp.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::info!(%addr, "the agent listener listens beyond loopback (mutual TLS; joins need the join token)");
    }
    let slot = nereid_trust::configs::CertSlot::new(nereid_trust::configs::certified(&id.cert_pem, id.key_der())?);
    let clients = nereid_trust::verify::RoleClient::new(&id.ca.cert_der(), false, None)?;
    let config = nereid_trust::configs::server(slot, clients)?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let host = if addr.is_ipv6() { format!("[{host}]") } else { host };
    Ok(Bound {
        // The handshake is the first part of reading a request: it gets the header timeout.
        listener: nereid_trust::MtlsListener::with_handshake_timeout(tcp, config, handshake_timeout())?,
        addr,
        url: format!("https://{host}:{}", addr.port()),
        join_token_full: nereid_trust::token::JoinToken::full(join_token, &fingerprint),
    })
}

/// Where the agent listener goes by default: loopback, port 8081,
/// or a free port when the operator API takes one (port 0).
pub fn default_listen(admin_listen: SocketAddr) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), if admin_listen.port() == 0 { 0 } else { 8081 })
}

/// The listeners' header read timeout (`NEREID_HEADER_READ_TIMEOUT`; the headnode checked
/// the variable at start).
fn handshake_timeout() -> std::time::Duration {
    nereid_serve::Limits::from_env().map(|l| l.header_read_timeout).unwrap_or(nereid_serve::HEADER_READ_TIMEOUT)
}
