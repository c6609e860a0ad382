//! A mutual-TLS listener for axum: each connection comes with the key pin of the client
//! certificate it presented (if any), for handlers to authorise with.
//!
//! ```text
//!   TcpListener ─► accept loop ─► one task per handshake (10 s) ─► channel ─► axum::serve
//! ```
//! A slow or silent client cannot hold up others: at most [`MAX_HANDSHAKES`] run at once
//! and a newcomer beyond that aborts the oldest; accept errors (out of file descriptors)
//! back off ([`nereid_serve::AcceptErrors`]). Failed handshakes (no or a wrong
//! certificate where one is required) are logged at debug level and dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in flight at most (each holds a file descriptor).
pub const MAX_HANDSHAKES: usize = 1024;

/// Who is at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// SHA-256 (hex) of the verified client certificate's public key; `None` without one.
    pub pin: Option<String>,
}

// Handlers read the [`Peer`] with `axum::extract::ConnectInfo<Peer>`: serve the router with
// `into_make_service_with_connect_info::<Peer>()` on `listener.tap_io(|_| ())` (axum's
// `TapIo` makes any listener's address its connect info).

/// Accepts TLS connections (see the module doc).
pub struct MtlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    task: JoinHandle<()>,
}

impl Drop for MtlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MtlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::with_handshake_timeout(tcp, config, HANDSHAKE_TIMEOUT)
    }

    /// As [`MtlsListener::new`], with another handshake timeout.
    pub fn with_handshake_timeout(tcp: TcpListener, config: Arc<rustls::ServerConfig>, timeout: Duration) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            let mut errors = nereid_serve::AcceptErrors::new("agent TLS");
            // Oldest first; finished ones are skipped when making room.
            let mut started = std::collections::VecDeque::<tokio::task::AbortHandle>::new();
            loop {
                let (sock, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        errors.failed(e).await;
                        continue;
                    }
                };
                errors.ok();
                started.retain(|h| !h.is_finished());
                if started.len() >= MAX_HANDSHAKES
                    && let Some(oldest) = started.pop_front()
                {
                    oldest.abort();
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                started.push_back(
                    tokio::spawn(async move {
                        match tokio::time::timeout(timeout, acceptor.accept(sock)).await {
                            Ok(Ok(tls)) => {
                                let pin =
                                    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| crate::ca::key_pin(c).ok());
                                let _ = tx.send((tls, Peer { addr, pin })).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake refused"),
                            Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                        }
                    })
                    .abort_handle(),
                );
            }
        });
        Ok(MtlsListener { local, rx, task })
    }
}

impl Listener for MtlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.local, pin: None })
    }
}
