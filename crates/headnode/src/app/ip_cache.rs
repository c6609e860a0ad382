//! Which addresses of each network have records, kept between allocations so that
//! claiming an address does not read every IP record of the network.
//!
//! ```text
//!   claim on network N (under N's lock, nics.rs):
//!     cache of N fresh (younger than FRESH_FOR)?  ── pick_ip on it ── Fresh(ip) ──► claim ip (create, Cond::Absent)
//!                    │ no, or the pick is a reuse / none                              │ ok: ip noted as used
//!                    ▼                                                                │ IpTaken: N forgotten, next attempt
//!                    ▼                                                                ▼
//!     read every record of N, pick_ip, remember what was read (exactly as without a cache)
//! ```
//!
//! The cache only ever proposes a *never-used* address, which is claimed by creating its
//! record conditionally on it being absent: if another headnode took it meanwhile the
//! claim fails (`IpTaken`), the network is forgotten and the next attempt reads its
//! records afresh (another writer may have claimed many addresses since the cache was
//! read; walking them one conflict at a time could exhaust the attempts). So a stale
//! cache costs a retry and a read, never a double allocation. Reusing a freed address, and
//! refusing because the network is full, are decided only from a fresh read. Writes of
//! this process that delete or rewrite IP records other than by a claim (a network's
//! gateway changed, an operator edited an address) [`IpCache::forget`] the network; other
//! headnodes' such writes are seen within [`FRESH_FOR`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nereid_types::nic::{Pick, Used, pick_ip};
use uuid::Uuid;

/// How long a network's records, as read, are trusted for picking never-used addresses.
pub const FRESH_FOR: Duration = Duration::from_secs(10);

struct Entry {
    read_at: Instant,
    used: BTreeMap<u32, Used>,
}

/// Per network: the addresses that have records, as last read plus this process's claims.
#[derive(Default)]
pub struct IpCache {
    nets: Mutex<HashMap<Uuid, Entry>>,
}

impl IpCache {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, Entry>) -> T) -> T {
        f(&mut self.nets.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A never-used address of `range` on `net` from a fresh-enough cache, passing over
    /// `skip`; `None` means: read the records (no cache, too old, or no never-used address).
    pub fn pick_fresh(&self, net: Uuid, range: (u32, u32), skip: &[u32]) -> Option<u32> {
        self.with(|nets| {
            let e = nets.get(&net).filter(|e| e.read_at.elapsed() < FRESH_FOR)?;
            match pick_ip(range, &e.used, skip)? {
                Pick::Fresh(n) => Some(n),
                Pick::Reuse(..) => None,
            }
        })
    }

    /// Remembers `net`'s records as just read.
    pub fn put(&self, net: Uuid, used: BTreeMap<u32, Used>) {
        self.with(|nets| nets.insert(net, Entry { read_at: Instant::now(), used }));
    }

    /// `addr` on `net` has a record now (claimed here, or found taken).
    pub fn note_used(&self, net: Uuid, addr: u32) {
        self.with(|nets| {
            if let Some(e) = nets.get_mut(&net) {
                e.used.insert(addr, Used { generation: 0, free: false, mtime: nereid_types::time::now_ms() });
            }
        })
    }

    /// `net`'s records changed in a way a claim does not describe: read them next time.
    pub fn forget(&self, net: Uuid) {
        self.with(|nets| nets.remove(&net));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(ips: &[u32]) -> BTreeMap<u32, Used> {
        ips.iter().map(|&ip| (ip, Used { generation: 1, free: false, mtime: 0 })).collect()
    }

    #[test]
    fn proposes_the_lowest_never_used_address_and_learns_claims() {
        let c = IpCache::default();
        let net = Uuid::from_u128(7);
        assert_eq!(c.pick_fresh(net, (10, 20), &[]), None, "nothing read yet");
        c.put(net, used(&[10, 11, 13]));
        assert_eq!(c.pick_fresh(net, (10, 20), &[]), Some(12));
        c.note_used(net, 12);
        assert_eq!(c.pick_fresh(net, (10, 20), &[]), Some(14));
        assert_eq!(c.pick_fresh(net, (10, 20), &[14]), Some(15), "skipped addresses are passed over");
        assert_eq!(c.pick_fresh(Uuid::from_u128(8), (10, 20), &[]), None, "other networks are not known");
        c.forget(net);
        assert_eq!(c.pick_fresh(net, (10, 20), &[]), None, "forgotten: read again");
    }

    #[test]
    fn never_proposes_a_reuse_or_decides_a_network_is_full() {
        let c = IpCache::default();
        let net = Uuid::from_u128(7);
        let mut u = used(&[10, 11, 12]);
        if let Some(x) = u.get_mut(&11) {
            x.free = true;
        }
        c.put(net, u);
        assert_eq!(c.pick_fresh(net, (10, 12), &[]), None, "only a freed address is left: decided from a fresh read");
        c.put(net, used(&[10, 11, 12]));
        assert_eq!(c.pick_fresh(net, (10, 12), &[]), None, "full: decided from a fresh read");
    }
}
