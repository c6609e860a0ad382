//! The authoritative DNS server: UDP and TCP listeners answering from the current
//! [`ZoneSet`], plus the NOTIFY sender.
//!
//! The zones come through a `tokio::sync::watch` channel holding an `Arc<ZoneSet>`: every
//! request takes the current `Arc` (no lock is held while answering or while a transfer is
//! written), and [`publish`] swaps in a new set. Each UDP packet and each TCP message is
//! decoded on its own ([`crate::answer::respond`]), so a bad packet costs one FORMERR. TCP
//! connections are served in their own tasks, several messages each (2-octet length
//! prefix), closed after [`TCP_IDLE`] without a message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::answer::{Transport, respond};
use crate::model::{Config, Zones};
use crate::notify;
use crate::zone::ZoneSet;

/// A TCP connection without a request for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(30);

/// A channel to publish zone sets on, starting empty.
pub fn channel() -> (watch::Sender<Arc<ZoneSet>>, watch::Receiver<Arc<ZoneSet>>) {
    watch::channel(Arc::new(ZoneSet::default()))
}

/// Publishes freshly built zones (serials per [`ZoneSet::update`], at the current time);
/// returns the zones whose serial changed. Nothing is sent when nothing changed.
pub fn publish(tx: &watch::Sender<Arc<ZoneSet>>, zones: Zones) -> Vec<String> {
    let mut changed = Vec::new();
    tx.send_if_modified(|current| {
        let mut next = ZoneSet::clone(current);
        changed = next.update_now(zones);
        if changed.is_empty() {
            return false;
        }
        *current = Arc::new(next);
        true
    });
    changed
}

/// Serves DNS on `udp` and `tcp` from the zone sets `zones` receives, and sends NOTIFYs to
/// `cfg.notify_peers`. Runs until the task is dropped; socket errors are logged, not fatal.
pub async fn serve(cfg: Arc<Config>, udp: UdpSocket, tcp: TcpListener, zones: watch::Receiver<Arc<ZoneSet>>) {
    let notifier = tokio::spawn(notify::run(cfg.clone(), zones.clone()));
    tokio::join!(serve_udp(&cfg, &udp, &zones), serve_tcp(&cfg, &tcp, &zones));
    notifier.abort();
}

async fn serve_udp(cfg: &Config, sock: &UdpSocket, zones: &watch::Receiver<Arc<ZoneSet>>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cns: UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let current = zones.borrow().clone();
        for reply in respond(cfg, &current, &buf[..n], Transport::Udp, peer.ip()) {
            if let Err(e) = sock.send_to(&reply, peer).await {
                tracing::debug!(%peer, error = %e, "cns: UDP send failed");
            }
        }
    }
}

async fn serve_tcp(cfg: &Arc<Config>, listener: &TcpListener, zones: &watch::Receiver<Arc<ZoneSet>>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (cfg, zones) = (cfg.clone(), zones.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(&cfg, stream, peer, &zones).await {
                        tracing::debug!(%peer, error = %e, "cns: TCP connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cns: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(
    cfg: &Config,
    mut stream: TcpStream,
    peer: SocketAddr,
    zones: &watch::Receiver<Arc<ZoneSet>>,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let mut packet = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let current = zones.borrow().clone();
        for reply in respond(cfg, &current, &packet, Transport::Tcp, peer.ip()) {
            // Replies are at most 65535 octets (answer::encode).
            let len = u16::try_from(reply.len()).unwrap_or(u16::MAX);
            stream.write_u16(len).await?;
            stream.write_all(&reply).await?;
        }
        stream.flush().await?;
    }
}
