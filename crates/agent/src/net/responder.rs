//! The DHCP responder of one NIC: a task on its tap that answers its guest from the NIC's
//! [`Lease`](super::dhcp::Lease) (see `dhcp` for what it answers, `packet` for the socket).
//! It ends when its tap goes away or it is aborted; the lease can change under it.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder, Encodable};
use tokio::sync::watch;

use super::dhcp::{Lease, answer, reply_destination};
use super::packet::{PacketSocket, frame, interface_mac, parse};

/// Counters every responder of an agent adds to (`/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub replies: AtomicU64,
}

/// A running responder; dropping it stops the task.
pub struct Responder {
    pub iface: String,
    lease: watch::Sender<Lease>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    /// Starts answering on `iface` (which must exist).
    pub fn start(iface: &str, lease: Lease, counters: Arc<Counters>) -> std::io::Result<Responder> {
        let sock = PacketSocket::open(iface)?;
        let our_mac = interface_mac(iface).unwrap_or([0x02, 0, 0, 0, 0, 0x43]);
        let (tx, rx) = watch::channel(lease);
        let name = iface.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = serve(sock, our_mac, rx, &counters).await {
                tracing::debug!(iface = %name, error = %e, "DHCP responder ended");
            }
        });
        Ok(Responder { iface: iface.to_string(), lease: tx, task })
    }

    /// Answers with `lease` from now on.
    pub fn set_lease(&self, lease: Lease) {
        self.lease.send_if_modified(|l| {
            let changed = *l != lease;
            *l = lease;
            changed
        });
    }

    pub fn lease(&self) -> Lease {
        self.lease.borrow().clone()
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The reply frame to one received frame, if it deserves one.
pub fn reply_to(lease: &Lease, our_mac: [u8; 6], frame_in: &[u8]) -> Option<Vec<u8>> {
    let req = parse(frame_in)?;
    if req.src_mac != lease.mac {
        return None;
    }
    let msg = Message::decode(&mut Decoder::new(req.payload)).ok()?;
    let reply = answer(lease, &msg)?;
    let bytes = reply.to_vec().ok()?;
    let src_ip: Ipv4Addr = lease.server_id;
    Some(frame(our_mac, src_ip, lease.mac, reply_destination(&msg, &reply), &bytes))
}

async fn serve(sock: PacketSocket, our_mac: [u8; 6], lease: watch::Receiver<Lease>, counters: &Counters) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = sock.recv(&mut buf).await?;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let out = reply_to(&lease.borrow(), our_mac, &buf[..n]);
        tracing::debug!(bytes = n, answered = out.is_some(), "DHCP request");
        if let Some(out) = out {
            sock.send(&out).await?;
            counters.replies.fetch_add(1, Ordering::Relaxed);
        }
    }
}
