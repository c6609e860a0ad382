//! NOTIFY (RFC 1996): tells the configured secondaries that a zone's serial changed.
//!
//! The notifier watches the published [`ZoneSet`]; every zone whose serial differs from the
//! one last notified (including at start) gets a NOTIFY per peer, each in its own task:
//! sent from an ephemeral UDP socket, retried with a doubling timeout (1 s, 2 s, … 5 tries)
//! until the peer answers with the same id. A peer that never answers is logged; nothing
//! waits for it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::model::Config;
use crate::wire;
use crate::zone::ZoneSet;

const TRIES: u32 = 5;
const FIRST_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs until the zone set's sender is dropped.
pub async fn run(cfg: Arc<Config>, mut zones: watch::Receiver<Arc<ZoneSet>>) {
    let mut notified: BTreeMap<String, u32> = BTreeMap::new();
    loop {
        let serials = zones.borrow_and_update().serials();
        for (zone, serial) in serials {
            if notified.insert(zone.clone(), serial) == Some(serial) {
                continue;
            }
            for &peer in &cfg.notify_peers {
                let (cfg, zone) = (cfg.clone(), zone.clone());
                tokio::spawn(async move { notify(&cfg, &zone, serial, peer).await });
            }
        }
        if zones.changed().await.is_err() {
            return;
        }
    }
}

/// The NOTIFY message for `zone` at `serial`.
pub fn message(cfg: &Config, zone: &str, serial: u32) -> Option<Message> {
    let mut m = Message::query();
    m.metadata.op_code = OpCode::Notify;
    m.metadata.authoritative = true;
    m.add_query(Query::query(wire::name(zone)?, RecordType::SOA));
    m.add_answer(wire::soa(cfg, zone, serial)?);
    Some(m)
}

/// Sends one NOTIFY until acknowledged or out of tries; logs the outcome.
async fn notify(cfg: &Config, zone: &str, serial: u32, peer: SocketAddr) {
    let Some(msg) = message(cfg, zone, serial) else {
        return;
    };
    let result = async {
        let bytes = msg.to_vec().map_err(std::io::Error::other)?;
        let local: SocketAddr = if peer.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let sock = UdpSocket::bind(local).await?;
        let mut timeout = FIRST_TIMEOUT;
        for _ in 0..TRIES {
            sock.send_to(&bytes, peer).await?;
            if tokio::time::timeout(timeout, acked(&sock, peer, msg.metadata.id)).await.is_ok() {
                return Ok(true);
            }
            timeout *= 2;
        }
        Ok::<_, std::io::Error>(false)
    }
    .await;
    match result {
        Ok(true) => tracing::debug!(zone, serial, %peer, "cns: NOTIFY acknowledged"),
        Ok(false) => tracing::warn!(zone, serial, %peer, "cns: NOTIFY never acknowledged"),
        Err(e) => tracing::warn!(zone, serial, %peer, error = %e, "cns: NOTIFY failed"),
    }
}

/// Waits for the peer's response with our id (other packets are ignored).
async fn acked(sock: &UdpSocket, peer: SocketAddr, id: u16) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            // E.g. an ICMP error surfaced; do not spin on it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if from == peer && m.metadata.id == id && m.metadata.message_type == MessageType::Response {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;
    use uuid::Uuid;

    #[test]
    fn notify_message_names_the_zone_and_carries_the_serial() {
        let cfg = Config::new("dc1", "example.com", Uuid::nil());
        let m = message(&cfg, "dc1.example.com", 42).unwrap();
        let m = Message::from_vec(&m.to_vec().unwrap()).unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Notify);
        assert!(m.metadata.authoritative);
        assert_eq!(m.queries[0].name.to_ascii(), "dc1.example.com.");
        assert_eq!(m.queries[0].query_type, RecordType::SOA);
        assert!(matches!(&m.answers[0].data, RData::SOA(soa) if soa.serial == 42));
    }
}
