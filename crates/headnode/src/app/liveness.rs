//! Servers' liveness written in bulk: a heartbeat that changes nothing but the time and
//! the telemetry costs no store write of its own.
//!
//! Every server sends a heartbeat every few seconds; at a thousand servers that is
//! hundreds a second, almost all of them saying "still here, nothing changed". Each used
//! to be a store transaction of its own. Now:
//!
//! ```text
//!   heartbeat ── inventory unchanged, and the record differs from the last one taken
//!   │            only in at_ms, load and temperatures, its record is in the store, and
//!   │            it was written whole less than RECHECK_EVERY ago?
//!   │ yes                                           │ no
//!   ▼                                               ▼
//!   pending[server] = record (memory)               written at once, as before
//!   │                                               (inventory, problems, addresses…)
//!   ▼ every FLUSH_EVERY, one batch of Op::refresh for all pending (one statement per
//!     256 servers): a record no longer in the store (server deleted or revoked meanwhile)
//!     is not written back; that server's next heartbeat is checked and written in full
//! ```
//!
//! Readers on this headnode see the pending records (they are laid over the store's);
//! other headnodes see a server's liveness at most [`FLUSH_EVERY`] later, well inside the
//! server timeout. A crash loses at most that much liveness, which the next heartbeat
//! brings back. What placement, policies and DNS depend on (inventories, problems, nic
//! tag addresses, policy digests, disks, memory and disk use) is never deferred.
//!
//! The same bookkeeping caches which key each server's heartbeats were verified with, at
//! which generation of its trust record ([`Liveness::trusted`]), for [`TRUST_TTL`]: a
//! deferred heartbeat then reads nothing at all. A heartbeat written at once checks that
//! generation in its own write, so it never lands after the server was revoked or given
//! another key. Revoking, approving another key or deleting a server also deletes its
//! liveness record (and drops its entry here), so a deferred heartbeat another headnode
//! still trusts from its cache writes nothing (the refresh finds no record), and that
//! headnode drops its entry at its next flush and checks the key again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nereid_store::Op;
use uuid::Uuid;

use super::App;
use super::servers::HeartbeatRecord;
use crate::buckets::HEARTBEATS;

/// How often pending liveness is written (`AppConfig::liveness_flush`).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often a server's heartbeat is written whole at least (`AppConfig::liveness_recheck`):
/// its inventory is checked against the store then (a deferred heartbeat trusts the one
/// held here), so an inventory lost from the store is asked for again within this time.
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// How long a server's verified key is taken for its heartbeats without a read.
pub const TRUST_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    /// Records taken since the last flush (the newest per server).
    pending: HashMap<Uuid, HeartbeatRecord>,
    /// The record last taken or written per server whose record is in the store, and
    /// when a heartbeat of it was last written whole.
    known: HashMap<Uuid, (HeartbeatRecord, Instant)>,
    /// The key each server's heartbeats were verified with, the trust record's generation
    /// then, and when.
    trusted: HashMap<Uuid, (String, i64, Instant)>,
}

/// See the module doc.
#[derive(Default)]
pub struct Liveness {
    state: Mutex<State>,
    /// Held (shared) by immediate heartbeat writes, exclusively by a flush: a flush never
    /// writes an older record over one written meanwhile.
    pub(crate) writes: tokio::sync::RwLock<()>,
}

/// Whether two records differ only in what a deferred write may carry: the time, the
/// load average and the temperatures.
pub fn only_telemetry_differs(a: &HeartbeatRecord, b: &HeartbeatRecord) -> bool {
    let usage = |r: &HeartbeatRecord| {
        let mut u = r.usage.clone();
        u.load1 = 0.0;
        u
    };
    usage(a) == usage(b)
        && a.vms == b.vms
        && a.problems == b.problems
        && a.disks == b.disks
        && a.nic_tag_addresses == b.nic_tag_addresses
        && a.netpolicy_digest == b.netpolicy_digest
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `rec` for a later flush when only telemetry changed since the record known to
    /// be in the store, written whole less than `recheck` ago; `false`: write it now.
    pub fn defer(&self, server: Uuid, rec: &HeartbeatRecord, recheck: Duration) -> bool {
        let mut s = self.lock();
        match s.known.get_mut(&server) {
            Some((k, at)) if at.elapsed() < recheck && only_telemetry_differs(k, rec) => {
                *k = rec.clone();
                s.pending.insert(server, rec.clone());
                true
            }
            _ => false,
        }
    }

    /// `rec` was written (it is in the store; a pending record not newer is dropped).
    pub fn written(&self, server: Uuid, rec: &HeartbeatRecord) {
        let mut s = self.lock();
        if s.pending.get(&server).is_some_and(|p| p.at_ms <= rec.at_ms) {
            s.pending.remove(&server);
        }
        s.known.insert(server, (rec.clone(), Instant::now()));
    }

    /// Forgets everything about the server (deleted, revoked, its write failed).
    pub fn forget(&self, server: Uuid) {
        let mut s = self.lock();
        s.pending.remove(&server);
        s.known.remove(&server);
        s.trusted.remove(&server);
    }

    /// The trust record's generation the server's heartbeats were verified at with key
    /// `pin` lately, if they were.
    pub fn trusted(&self, server: Uuid, pin: &str) -> Option<i64> {
        self.lock().trusted.get(&server).filter(|(p, _, at)| p == pin && at.elapsed() < TRUST_TTL).map(|(_, g, _)| *g)
    }

    /// The server's heartbeats were just verified with key `pin`, its trust record at
    /// `generation`.
    pub fn trust(&self, server: Uuid, pin: &str, generation: i64) {
        let mut s = self.lock();
        if s.trusted.len() > 100_000 {
            s.trusted.retain(|_, (_, _, at)| at.elapsed() < TRUST_TTL);
        }
        s.trusted.insert(server, (pin.to_string(), generation, Instant::now()));
    }

    /// The server's pending record when newer than `stored` (what a reader read), else
    /// `stored`.
    pub fn newest(&self, server: Uuid, stored: HeartbeatRecord) -> HeartbeatRecord {
        match self.lock().pending.get(&server) {
            Some(p) if p.at_ms > stored.at_ms => HeartbeatRecord { vms: stored.vms, ..p.clone() },
            _ => stored,
        }
    }

    /// The server's pending record's time when newer than `stored_ms`, else `stored_ms`.
    pub fn newest_ms(&self, server: Uuid, stored_ms: i64) -> i64 {
        self.lock().pending.get(&server).map_or(stored_ms, |p| p.at_ms.max(stored_ms))
    }

    /// Lays the pending records over `records` read from the store where newer (another
    /// headnode may have written a newer one meanwhile); their `vms`, when a reader filled
    /// them in, are kept.
    pub fn overlay(&self, records: &mut HashMap<Uuid, HeartbeatRecord>) {
        let s = self.lock();
        for (u, p) in &s.pending {
            if let Some(r) = records.get_mut(u).filter(|r| p.at_ms > r.at_ms) {
                let vms = std::mem::take(&mut r.vms);
                *r = HeartbeatRecord { vms, ..p.clone() };
            }
        }
    }

    /// Puts back records a failed flush took, unless newer ones came meanwhile.
    fn restore(&self, taken: Vec<(Uuid, HeartbeatRecord)>) {
        let mut s = self.lock();
        for (u, r) in taken {
            s.pending.entry(u).or_insert(r);
        }
    }

    fn take_pending(&self) -> Vec<(Uuid, HeartbeatRecord)> {
        let mut v: Vec<_> = std::mem::take(&mut self.lock().pending).into_iter().collect();
        v.sort_by_key(|(u, _)| *u);
        v
    }
}

impl App {
    /// Writes the pending liveness records (see the module doc).
    pub async fn flush_liveness(&self) {
        let _exclusive = self.liveness.writes.write().await;
        let pending = self.liveness.take_pending();
        if pending.is_empty() {
            return;
        }
        let ops = pending.iter().map(|(u, r)| Op::refresh(HEARTBEATS.name, u.to_string(), super::encode(r))).collect();
        match self.store.batch(ops).await {
            Ok(gens) => {
                for ((u, _), g) in pending.iter().zip(gens) {
                    if g == 0 {
                        // Deleted or revoked meanwhile: the next heartbeat is checked whole.
                        self.liveness.forget(*u);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, servers = pending.len(), "could not write servers' liveness; retrying with the next flush");
                self.liveness.restore(pending);
            }
        }
    }
}

/// Flushes pending liveness every `AppConfig::liveness_flush` until dropped.
pub async fn run(app: std::sync::Arc<App>) {
    loop {
        tokio::time::sleep(app.cfg.liveness_flush).await;
        app.flush_liveness().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: i64, load1: f64) -> HeartbeatRecord {
        serde_json::from_value(serde_json::json!({
            "at_ms": at_ms,
            "usage": {"ram_total_mib": 1024, "ram_used_mib": 0, "disk_total_mib": 10, "disk_used_mib": 0, "load1": load1},
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_time_load_and_temperatures_are_deferred() {
        let a = rec(1, 0.5);
        assert!(only_telemetry_differs(&a, &rec(2, 3.0)));
        let mut b = rec(2, 0.5);
        b.usage.ram_used_mib = 512;
        assert!(!only_telemetry_differs(&a, &b), "memory use counts in placement");
        let mut b = rec(2, 0.5);
        b.nic_tag_addresses.insert("admin".into(), "10.0.0.2".into());
        assert!(!only_telemetry_differs(&a, &b));
        let mut b = rec(2, 0.5);
        b.netpolicy_digest = Some("x".into());
        assert!(!only_telemetry_differs(&a, &b));
    }

    #[test]
    fn a_server_is_deferred_only_once_its_record_is_known_and_until_forgotten() {
        let l = Liveness::default();
        let u = Uuid::new_v4();
        let recheck = Duration::from_secs(60);
        assert!(!l.defer(u, &rec(1, 0.0), recheck), "nothing known: written at once");
        l.written(u, &rec(1, 0.0));
        assert!(l.defer(u, &rec(2, 1.0), recheck));
        assert!(!l.defer(u, &rec(2, 1.0), Duration::ZERO), "written whole again once the recheck is due");
        assert_eq!(l.newest(u, rec(1, 0.0)).at_ms, 2);
        let mut read = HashMap::from([(u, rec(1, 0.0))]);
        l.overlay(&mut read);
        assert_eq!(read[&u].at_ms, 2, "readers here see the pending record");
        let mut newer = HashMap::from([(u, rec(5, 0.0))]);
        l.overlay(&mut newer);
        assert_eq!(newer[&u].at_ms, 5, "not over a newer one another headnode wrote");
        assert_eq!(l.newest_ms(u, 1), 2);
        l.written(u, &rec(1, 1.0));
        assert_eq!(l.newest(u, rec(0, 0.0)).at_ms, 2, "an older write leaves a newer pending record");
        l.written(u, &rec(3, 1.0));
        assert_eq!(l.newest(u, rec(0, 0.0)).at_ms, 0, "a newer write supersedes what was pending");
        l.forget(u);
        assert!(!l.defer(u, &rec(4, 1.0), recheck));
    }

    #[test]
    fn trust_is_per_key_and_dropped_with_the_server() {
        let l = Liveness::default();
        let u = Uuid::new_v4();
        assert_eq!(l.trusted(u, "k"), None);
        l.trust(u, "k", 4);
        assert_eq!(l.trusted(u, "k"), Some(4));
        assert_eq!(l.trusted(u, "other"), None);
        l.forget(u);
        assert_eq!(l.trusted(u, "k"), None);
    }
}
