//! Which addresses of each network have records, kept between allocations so that
//! claiming an address does not read every IP record of the network.
//!
//! ```text
//!   claim on network N (choosing under N's lock, nics.rs):
//!     cache of N fresh (younger than FRESH_FOR)?  ── pick_ip on it ── Fresh(ip) ──► claim ip (create, Cond::Absent)
//!                    │ no, or the pick is a reuse / none      ip pending: the lock    │ ok: ip noted as used
//!                    ▼                                        is let go for the write │ IpTaken: N forgotten, next attempt
//!                    ▼                                                                ▼
//!     read every record of N, pick_ip, remember what was read (exactly as without a cache)
//! ```
//!
//! A never-used address handed to a claim is *pending* until the claim settles: no other
//! claim of this process is offered it, even after a re-read that does not show its
//! record yet, so claims on one network write concurrently without colliding here.
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
    /// Every address from the range's start below this has a record: a never-used
    /// address is looked for from here on, not by walking every record of a full
    /// network's start (a big network's claims would otherwise cost O(records) each).
    floor: u32,
    /// The range start the floor was raised from.
    start: u32,
}

impl Entry {
    fn new(used: BTreeMap<u32, Used>, start: u32) -> Entry {
        let mut e = Entry { read_at: Instant::now(), used, floor: start, start };
        e.raise_floor();
        e
    }

    fn raise_floor(&mut self) {
        while self.floor < u32::MAX && self.used.contains_key(&self.floor) {
            self.floor += 1;
        }
    }

    /// [`pick_ip`] on these records from the floor up; the whole range when nothing
    /// never-used is found there (only then can a reuse, or "full", be the answer).
    fn pick(&self, range: (u32, u32), skip: &[u32]) -> Option<Pick> {
        // (A range that now starts lower than it did has unknown ground below the floor.)
        let from = if range.0 >= self.start { self.floor.max(range.0) } else { range.0 };
        if from > range.0
            && from <= range.1
            && let Some(p @ Pick::Fresh(_)) = pick_ip((from, range.1), &self.used, skip)
        {
            return Some(p);
        }
        pick_ip(range, &self.used, skip)
    }
}

#[derive(Default)]
struct Nets {
    read: HashMap<Uuid, Entry>,
    /// Addresses proposed to claims of this process that have not finished: never
    /// proposed twice, and kept across a re-read (their records may not exist yet).
    pending: HashMap<Uuid, Vec<u32>>,
}

impl Nets {
    /// Picks from `net`'s remembered records, passing over `skip` and the addresses other
    /// claims are writing; a never-used pick becomes pending for this claim.
    fn pick_pending(&mut self, net: Uuid, range: (u32, u32), skip: &[u32]) -> Option<Pick> {
        let e = self.read.get(&net)?;
        let passed: Vec<u32> = skip.iter().chain(self.pending.get(&net).into_iter().flatten()).copied().collect();
        let pick = e.pick(range, &passed);
        if let Some(Pick::Fresh(n)) = pick {
            // Only a claim's own list: `settle` removes the lists it empties.
            self.pending.entry(net).or_default().push(n);
        }
        pick
    }
}

/// Per network: the addresses that have records, as last read plus this process's claims.
#[derive(Default)]
pub struct IpCache {
    nets: Mutex<Nets>,
}

impl IpCache {
    fn with<T>(&self, f: impl FnOnce(&mut Nets) -> T) -> T {
        f(&mut self.nets.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A never-used address of `range` on `net` from a fresh-enough cache, passing over
    /// `skip` and the addresses other claims are writing; it is theirs until [`Self::settle`]d.
    /// `None` means: read the records (no cache, too old, or no never-used address).
    pub fn take_fresh(&self, net: Uuid, range: (u32, u32), skip: &[u32]) -> Option<u32> {
        self.with(|nets| {
            nets.read.get(&net).filter(|e| e.read_at.elapsed() < FRESH_FOR)?;
            match nets.pick_pending(net, range, skip)? {
                Pick::Fresh(n) => Some(n),
                Pick::Reuse(..) => None,
            }
        })
    }

    /// Remembers `net`'s records as just read and picks from them (as [`pick_ip`], passing
    /// over the addresses other claims are writing). A never-used pick is the caller's
    /// until settled, as with [`Self::take_fresh`].
    pub fn put_and_pick(&self, net: Uuid, range: (u32, u32), used: BTreeMap<u32, Used>, skip: &[u32]) -> Option<Pick> {
        self.with(|nets| {
            nets.read.insert(net, Entry::new(used, range.0));
            nets.pick_pending(net, range, skip)
        })
    }

    /// A claim of `addr` on `net` ended: with its record written (`claimed`), or not.
    pub fn settle(&self, net: Uuid, addr: u32, claimed: bool) {
        self.with(|nets| {
            if let Some(p) = nets.pending.get_mut(&net) {
                p.retain(|a| *a != addr);
                if p.is_empty() {
                    nets.pending.remove(&net);
                }
            }
            if claimed && let Some(e) = nets.read.get_mut(&net) {
                e.used.insert(addr, Used { generation: 0, free: false, mtime: nereid_types::time::now_ms() });
                e.raise_floor();
            }
        })
    }

    /// `net`'s records changed in a way a claim does not describe: read them next time.
    pub fn forget(&self, net: Uuid) {
        self.with(|nets| nets.read.remove(&net));
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
        assert_eq!(c.take_fresh(net, (10, 20), &[]), None, "nothing read yet");
        assert_eq!(c.put_and_pick(net, (10, 20), used(&[10, 11, 13]), &[]), Some(Pick::Fresh(12)));
        c.settle(net, 12, true);
        assert_eq!(c.take_fresh(net, (10, 20), &[]), Some(14));
        c.settle(net, 14, true);
        assert_eq!(c.take_fresh(net, (10, 20), &[15]), Some(16), "skipped addresses are passed over");
        c.settle(net, 16, true);
        assert_eq!(c.take_fresh(Uuid::from_u128(8), (10, 20), &[]), None, "other networks are not known");
        c.forget(net);
        assert_eq!(c.take_fresh(net, (10, 20), &[]), None, "forgotten: read again");
    }

    #[test]
    fn an_address_being_claimed_is_proposed_once_even_across_a_re_read() {
        let c = IpCache::default();
        let net = Uuid::from_u128(7);
        assert_eq!(c.put_and_pick(net, (10, 20), used(&[10]), &[]), Some(Pick::Fresh(11)));
        // Claims under way: each gets its own address.
        assert_eq!(c.take_fresh(net, (10, 20), &[]), Some(12));
        assert_eq!(c.take_fresh(net, (10, 20), &[]), Some(13));
        // The network is read again before those records exist: they are still taken.
        assert_eq!(c.put_and_pick(net, (10, 20), used(&[10]), &[]), Some(Pick::Fresh(14)));
        // A claim that failed gives its address back; one that landed keeps it.
        c.settle(net, 12, false);
        c.settle(net, 13, true);
        assert_eq!(c.take_fresh(net, (10, 20), &[]), Some(12));
    }

    #[test]
    fn never_proposes_a_reuse_or_decides_a_network_is_full() {
        let c = IpCache::default();
        let net = Uuid::from_u128(7);
        let mut u = used(&[10, 11, 12]);
        if let Some(x) = u.get_mut(&11) {
            x.free = true;
        }
        assert_eq!(c.put_and_pick(net, (10, 12), u, &[]), Some(Pick::Reuse(11, 1)));
        assert_eq!(c.take_fresh(net, (10, 12), &[]), None, "only a freed address is left: decided from a fresh read");
        assert_eq!(c.put_and_pick(net, (10, 12), used(&[10, 11, 12]), &[]), None);
        assert_eq!(c.take_fresh(net, (10, 12), &[]), None, "full: decided from a fresh read");
    }

    #[test]
    fn a_full_start_of_the_range_is_passed_over_and_still_reused_once_the_rest_is_taken() {
        let c = IpCache::default();
        let net = Uuid::from_u128(7);
        let mut u = used(&(10..=15).collect::<Vec<_>>());
        if let Some(x) = u.get_mut(&11) {
            x.free = true;
        }
        assert_eq!(c.put_and_pick(net, (10, 17), u.clone(), &[]), Some(Pick::Fresh(16)));
        assert_eq!(c.take_fresh(net, (10, 17), &[]), Some(17));
        assert_eq!(c.take_fresh(net, (10, 17), &[]), None, "nothing never-used is left");
        c.settle(net, 16, true);
        c.settle(net, 17, true);
        u.extend(used(&[16, 17]));
        assert_eq!(c.put_and_pick(net, (10, 17), u, &[]), Some(Pick::Reuse(11, 1)), "the freed address below the floor");
        // A range starting above the floor is unaffected by it.
        assert_eq!(c.put_and_pick(net, (20, 30), used(&[20]), &[]), Some(Pick::Fresh(21)));
    }
}
