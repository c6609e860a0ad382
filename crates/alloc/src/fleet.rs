//! A fleet of servers kept between decisions, for placement that does not start from
//! scratch every time.
//!
//! The headnode keeps one [`Fleet`] (its capacity view) and changes it server by server
//! as records, reservations and heartbeats change ([`Fleet::upsert`],
//! [`Fleet::set_status`], [`Fleet::remove`]). [`Fleet::allocate`] decides as
//! [`crate::allocate`] does over the same servers; [`Fleet::check`] runs the hard filters
//! on one server (typically freshly read from the store, just before its claim).
//!
//! The decision may come from a stale fleet; the caller claims capacity conditionally
//! and checks the chosen server against fresh data, so staleness never over-commits.
//!
//! # What is kept
//!
//! Per server, computed once per [`Fleet::upsert`]: its [`Summary`] (unreserved RAM, disk
//! and CPU, VM count, capness) and its warnings (damaged, incomplete or suspect
//! records). An index orders the *placeable* servers (set up, running, not reserved) by
//! (unreserved RAM, UUID); upsert, remove and set_status keep it current in O(log n).
//!
//! # The common case: a walk up the index
//!
//! A request that is not pinned, has no `near`/`far` hints, and whose spread is `None` or
//! `MinRam` (with a positive RAM weight, i.e. packing) is decided without looking at every
//! server:
//!
//! 1. The walk starts at the tightest placeable server whose unreserved RAM fits the
//!    request (every server below fails the RAM filter anyway) and goes up.
//! 2. Each server walked ("examined") goes through every hard filter, as in
//!    [`crate::allocate`].
//! 3. The soft filters are applied in their spirit, as a class per passing server:
//!    reservoir servers are preferred least; then the emptiest 15 % of the placeable
//!    fleet (by the index: the `n·15/100` servers at its top, when the fleet has at least 7)
//!    is set aside; then, unless locality is strict, servers that host none of this owner's
//!    VMs are preferred. Applied one after another, keeping a step only when it leaves
//!    someone, they select the candidates of the best class.
//! 4. The walk stops once [`BOUND`] candidates of the best class a later server could
//!    possibly have are found, or once no later server can be in a better or equal class
//!    (above the 15 % line every server is "large"). So a non-reservoir server is chosen
//!    whenever one passes the hard filters anywhere in the fleet.
//! 5. The (at most [`BOUND`]) tightest candidates of the best class are scored by the
//!    same scorer as [`crate::allocate`] (rank-based, packing plus randomness) and the best
//!    wins.
//!
//! The result is a [`Placement`] whose `steps` are: `received` (the fleet's size),
//! `examined` (servers walked), then each hard filter with how many *examined* servers
//! are left after it, each soft filter with how many candidates are left, `scored` (how
//! many were scored) and `pick`. `rejected` lists the examined servers a hard filter
//! dropped (servers below the request's RAM are not examined), and every unplaceable one
//! with why (they are few, and an operator who reserved a server expects it named);
//! `warnings` are those of the examined servers (the chosen one among them;
//! [`Fleet::warnings`] has every server's).
//!
//! Why [`BOUND`] = 64: scores are ranks, and the RAM rank weighs twice the disk rank
//! (four times with `MinRam`) and four times the random term, so the winner among all
//! passing servers is almost always among the tightest few; the walk visits them first.
//! 64 is more than DAPI's random chunks of 50, keeps enough ties for the random term to
//! spread VMs over equal servers, and keeps a decision's cost independent of the fleet's
//! size (sorting 64 candidates takes microseconds).
//!
//! # Everything else: the exact pipeline
//!
//! Pinned requests, locality hints, `Random`/`MinOwner` spread, a non-positive RAM weight,
//! and a request that no examined server passes run [`crate::allocate`]'s exact pipeline
//! over every server (in UUID order) with the kept summaries ([`Fleet::allocate_exact`]):
//! the same result as [`crate::allocate`] with the same random numbers, and, when nothing
//! fits, the same [`NoFit`] with every server's rejection and every warning.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use uuid::Uuid;

use crate::{
    Config, NoFit, Placement, Rejection, Request, Seen, Server, Spread, Status, Step, Summary, Warning, allocate_seen, filters,
    hosts_owner, score, server_warnings,
};

/// How many candidates of the best class the walk gathers before it stops (see the
/// module doc for why 64).
pub const BOUND: usize = 64;

/// Unreserved RAM as an index key, totally ordered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreeRam(f64);

impl PartialEq for FreeRam {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FreeRam {}

impl PartialOrd for FreeRam {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FreeRam {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

pub(crate) type Key = (FreeRam, Uuid);

/// One server as the fleet keeps it.
#[derive(Debug, Clone)]
struct Entry {
    server: Server,
    summary: Summary,
    warnings: Vec<Warning>,
}

impl Entry {
    fn key(&self) -> Key {
        (FreeRam(self.summary.free.ram_mib), self.server.uuid)
    }
}

/// Whether a server can take VMs at all, whatever the request (what the index holds).
fn placeable(s: &Server) -> bool {
    s.setup && s.status == Status::Running && !s.reserved
}

/// Servers by UUID, maintained incrementally, with an index by unreserved RAM.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    servers: BTreeMap<Uuid, Entry>,
    /// The placeable servers by (unreserved RAM, UUID).
    pub(crate) placeable: BTreeSet<Key>,
    /// The others (not set up, not running, reserved): few, and always named in an
    /// explanation, as the operator who reserved one expects to see.
    unplaceable: BTreeSet<Uuid>,
}

/// Soft-filter class bits: a lower class is preferred (see the module doc).
const RESERVOIR: u8 = 0b100;
const LARGE: u8 = 0b010;
const OWNER: u8 = 0b001;

impl Fleet {
    /// An empty fleet.
    pub fn new() -> Self {
        Fleet::default()
    }

    /// A fleet of these servers.
    pub fn from_servers(servers: Vec<Server>) -> Self {
        let mut f = Fleet::new();
        for s in servers {
            f.upsert(s);
        }
        f
    }

    /// Adds a server, or replaces it with this view of it.
    pub fn upsert(&mut self, s: Server) {
        self.unindex(&s.uuid);
        let entry = Entry { summary: Summary::of(&s), warnings: server_warnings(&s), server: s };
        if placeable(&entry.server) {
            self.placeable.insert(entry.key());
        } else {
            self.unplaceable.insert(entry.server.uuid);
        }
        self.servers.insert(entry.server.uuid, entry);
    }

    /// Removes a server; what it was.
    pub fn remove(&mut self, uuid: &Uuid) -> Option<Server> {
        self.unindex(uuid);
        self.servers.remove(uuid).map(|e| e.server)
    }

    fn unindex(&mut self, uuid: &Uuid) {
        if let Some(e) = self.servers.get(uuid) {
            self.placeable.remove(&e.key());
        }
        self.unplaceable.remove(uuid);
    }

    /// One server.
    pub fn get(&self, uuid: &Uuid) -> Option<&Server> {
        self.servers.get(uuid).map(|e| &e.server)
    }

    /// Changes only a server's liveness (heartbeats come far more often than changes).
    pub fn set_status(&mut self, uuid: &Uuid, status: Status) {
        if let Some(e) = self.servers.get_mut(uuid) {
            e.server.status = status;
            let key = e.key();
            if placeable(&e.server) {
                self.placeable.insert(key);
                self.unplaceable.remove(uuid);
            } else {
                self.placeable.remove(&key);
                self.unplaceable.insert(*uuid);
            }
        }
    }

    /// How many servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Every server, by UUID.
    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.values().map(|e| &e.server)
    }

    /// Every server's warnings (damaged, incomplete or suspect records), by server UUID:
    /// what [`crate::allocate`] reports over these servers.
    pub fn warnings(&self) -> impl Iterator<Item = &Warning> {
        self.servers.values().flat_map(|e| e.warnings.iter())
    }

    /// Chooses a server for `req` as [`crate::allocate`] would among these servers, or
    /// explains (for every server) why none fits. The common case walks the index (see the
    /// module doc); everything else, and every NoFit, is [`Fleet::allocate_exact`].
    pub fn allocate(&self, req: &Request, cfg: &Config, rng: &mut impl Rng) -> Result<Placement, NoFit> {
        if let Some(p) = self.allocate_indexed(req, cfg, rng) {
            return Ok(p);
        }
        self.allocate_exact(req, cfg, rng)
    }

    /// [`crate::allocate`]'s exact pipeline over every server, in UUID order: the same
    /// result as `allocate(&servers, …)` with the same random numbers.
    pub fn allocate_exact(&self, req: &Request, cfg: &Config, rng: &mut impl Rng) -> Result<Placement, NoFit> {
        let all: Vec<Seen<'_>> = self.servers.values().map(|e| (&e.server, &e.summary)).collect();
        allocate_seen(&all, self.warnings().cloned().collect(), req, cfg, rng)
    }

    /// Whether the index walk applies to `req` (see the module doc).
    fn common_case(req: &Request, cfg: &Config) -> bool {
        let w_ram = cfg.weight_ram + if req.spread == Some(Spread::MinRam) { 2.0 } else { 0.0 };
        req.server.is_none()
            && req.locality.near.is_empty()
            && req.locality.far.is_empty()
            && matches!(req.spread, None | Some(Spread::MinRam))
            && w_ram > 0.0
    }

    /// The index walk; `None` (having drawn no random number) when it does not apply or
    /// no examined server passes the hard filters.
    fn allocate_indexed(&self, req: &Request, cfg: &Config, rng: &mut impl Rng) -> Option<Placement> {
        if !Self::common_case(req, cfg) {
            return None;
        }
        let n = self.placeable.len();
        let drop = n * 15 / 100;
        // The last server kept by "large servers": every one above it is set aside.
        let line = if cfg.filter_large_servers && n >= 7 && drop > 0 { self.placeable.iter().nth_back(drop).copied() } else { None };
        let spread_owner = !req.locality.strict;

        let mut examined = 0;
        let mut passed = [0usize; filters::HARD.len()];
        let mut rejected = Vec::new();
        let mut warnings = Vec::new();
        let mut candidates: Vec<(Seen<'_>, u8)> = Vec::new();
        let (mut best, mut best_count) = (u8::MAX, 0usize);
        for key in self.placeable.range((FreeRam(req.ram_mib as f64), Uuid::nil())..) {
            let large = line.is_some_and(|l| *key > l);
            // The best class any server from here on can have.
            let floor = if large { LARGE } else { 0 };
            if best < floor || (best == floor && best_count >= BOUND) {
                break;
            }
            let Some(e) = self.servers.get(&key.1) else { continue };
            examined += 1;
            warnings.extend(e.warnings.iter().cloned());
            let failed = filters::HARD
                .iter()
                .enumerate()
                .find_map(|(i, (name, filter))| filter(&e.server, &e.summary, req, cfg).err().map(|reason| (i, *name, reason)));
            let upto = failed.as_ref().map_or(passed.len(), |(i, _, _)| *i);
            for p in &mut passed[..upto] {
                *p += 1;
            }
            if let Some((_, step, reason)) = failed {
                rejected.push(Rejection { server: e.server.uuid, hostname: e.server.hostname.clone(), step, reason });
                continue;
            }
            let class = if e.server.reservoir { RESERVOIR } else { 0 }
                | if large { LARGE } else { 0 }
                | if spread_owner && hosts_owner(&e.server, &req.owner) { OWNER } else { 0 };
            match class.cmp(&best) {
                Ordering::Less => (best, best_count) = (class, 1),
                Ordering::Equal => best_count += 1,
                Ordering::Greater => {}
            }
            candidates.push(((&e.server, &e.summary), class));
        }
        if candidates.is_empty() {
            return None;
        }
        // Servers that cannot take VMs now are named with why (not set up, silent,
        // reserved), as the full pipeline names them.
        for e in self.unplaceable.iter().filter_map(|u| self.servers.get(u)) {
            if let Some((step, reason)) =
                filters::HARD.iter().find_map(|(name, filter)| filter(&e.server, &e.summary, req, cfg).err().map(|r| (*name, r)))
            {
                rejected.push(Rejection { server: e.server.uuid, hostname: e.server.hostname.clone(), step, reason });
            }
        }

        let mut steps = vec![Step { step: "received", remaining: self.len() }, Step { step: "examined", remaining: examined }];
        steps.extend(filters::HARD.iter().zip(passed).map(|((name, _), remaining)| Step { step: name, remaining }));
        for (step, bit) in [("reservoir", RESERVOIR), ("large servers", LARGE), ("spread", OWNER)] {
            if candidates.iter().any(|(_, c)| c & bit == 0) {
                candidates.retain(|(_, c)| c & bit == 0);
            }
            steps.push(Step { step, remaining: candidates.len() });
        }
        // Walk order: the tightest first.
        let set: Vec<Seen<'_>> = candidates.into_iter().take(BOUND).map(|(s, _)| s).collect();
        steps.push(Step { step: "scored", remaining: set.len() });
        let server = if set.len() == 1 { set[0].0.uuid } else { score::pick(&set, req, cfg, rng) };
        steps.push(Step { step: "pick", remaining: 1 });
        Some(Placement { server, steps, rejected, warnings })
    }

    /// The hard filters on `server` (which need not be the fleet's copy of it): the first
    /// one that rejects it. Costs one server's summary, whatever the fleet's size.
    pub fn check(&self, server: &Server, req: &Request, cfg: &Config) -> Result<(), Rejection> {
        let summary = Summary::of(server);
        for (name, filter) in filters::HARD {
            filter(server, &summary, req, cfg).map_err(|reason| Rejection {
                server: server.uuid,
                hostname: server.hostname.clone(),
                step: name,
                reason,
            })?;
        }
        Ok(())
    }
}
