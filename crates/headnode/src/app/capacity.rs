//! The capacity view: placement's picture of every server, kept between decisions.
//!
//! Building the view from the store costs a read of every server, heartbeat, VM record
//! and reservation, so it is not rebuilt per request. It is kept as a
//! [`nereid_alloc::Fleet`] and changed server by server:
//! - a claim of this process puts the claimed server back as it was read just before,
//!   plus the new reservation;
//! - a server is *touched* ([`App::capacity_touch`]) when something counted on it changes
//!   (a job on it ended, its inventory or its record changed); touched servers are read
//!   again before the next decision (a few per decision, so a burst never stalls one);
//! - liveness (each server's last heartbeat) is refreshed at most every
//!   [`STATUS_EVERY`];
//! - the whole view is rebuilt every [`REBUILD_EVERY`] in the background by [`run`]
//!   while placement uses it (that is how other headnodes' writes reach it): decisions
//!   go on from the old view meanwhile, and servers this process claims during a rebuild
//!   are read again after it. An idle headnode does not rebuild; a decision after a long
//!   idle time (the view older than [`STALE_AFTER`]) rebuilds first. A refusal rebuilds
//!   first unless the view is moments old, so a refusal is explained from fresh data.
//!
//! The view may be stale; a claim may not. [`App::place`] decides from the view, then
//! reads the chosen server fresh from the store — its claim generation *first*, then its
//! record, heartbeat, VM records and reservations — and runs the hard filters on that.
//! The caller claims conditionally on that generation: a placement committed anywhere
//! after the read bumps it and fails the claim, and the loser decides again. So the
//! view being stale costs at most a retry; it never over-commits.
//!
//! Nothing here serialises provisions: several are decided, checked and claimed at once,
//! and only two claims on the same server can conflict.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nereid_alloc::{Fleet, Placement, Request, Server as AServer, Status};
use nereid_types::ApiError;
use nereid_types::server::Server;
use rand::Rng;
use uuid::Uuid;

use super::allocation::{Reservation, no_fit_error, server_view};
use super::{App, store_error};
use crate::buckets::{RESERVATIONS, SERVER_CLAIMS, SERVERS};
use nereid_store::{Filter, ListQuery};

/// How often the whole view is rebuilt from the store while it is in use.
pub const REBUILD_EVERY: Duration = Duration::from_secs(30);
/// A view this old (nobody placed for a while) is rebuilt before a decision.
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// How often servers' liveness is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// A refusal rebuilds the view first unless it is younger than this.
const FRESH_ENOUGH_TO_REFUSE: Duration = Duration::from_secs(1);
/// Touched servers read again per decision, at most.
const TOUCHED_PER_DECISION: usize = 16;
/// Decisions per placement before giving up (each after a fresh check failed).
const ATTEMPTS: usize = 32;

#[derive(Default)]
struct State {
    fleet: Option<Fleet>,
    built_at: Option<Instant>,
    statuses_at: Option<Instant>,
    /// When placement last used the view (the background rebuild runs only while in use).
    used_at: Option<Instant>,
    /// A full rebuild is reading the store: claims meanwhile are read again after it.
    rebuild_running: bool,
    touched: HashSet<Uuid>,
}

/// The view and what must be read again before it is used.
#[derive(Default)]
pub struct Capacity {
    state: Mutex<State>,
    /// Coalesces full rebuilds: whoever waits for one in progress uses it.
    rebuilding: tokio::sync::Mutex<()>,
}

impl Capacity {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A server as placement reads it fresh, with the claim generation read before it.
pub struct Fresh {
    pub server: AServer,
    /// The server's claim object's generation (`None`: never claimed).
    pub claim: Option<i64>,
}

/// A decision checked against fresh data, ready to be claimed.
pub struct Decided {
    pub placement: Placement,
    pub fresh: Fresh,
    /// This process's claims of the server wait for each other while this is held (drop it
    /// once the claim is written or refused): a claim read under it is not refused for
    /// a concurrent claim of this headnode.
    pub claiming: tokio::sync::OwnedMutexGuard<()>,
}

/// `server` with a reservation added (what a claim of this process makes of it).
pub fn with_reservation(mut server: AServer, r: &Reservation) -> AServer {
    server.vms.push(super::allocation::reservation_usage(r, false));
    server
}

impl App {
    /// Something counted on `server` changed: placement reads it again before its next
    /// decision. Cheap; call it wherever such a change is written.
    pub fn capacity_touch(&self, server: Uuid) {
        self.capacity.with(|s| s.touched.insert(server));
    }

    /// Reads one server as placement sees it, fresh from the store (`None`: no such
    /// server). The claim generation is read first: anything claimed after it fails a
    /// claim conditional on it.
    pub async fn fresh_server(&self, server: Uuid) -> Result<Option<Fresh>, ApiError> {
        let mut read = self.fresh_servers(&[server]).await?;
        read.pop().map(|(_, f)| f).unwrap_or(Ok(None))
    }

    /// [`Self::fresh_server`] for several servers in one read per bucket (claims first),
    /// not six per server: what re-reading the touched servers before a decision costs.
    /// A server whose record does not decode gets its error; the others are read.
    pub async fn fresh_servers(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Result<Option<Fresh>, ApiError>)>, ApiError> {
        use super::servers::HeartbeatRecord;
        use super::servers::inventories::Inventory;
        use crate::buckets::{HEARTBEATS, INVENTORIES};
        use std::collections::HashMap;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = |bucket: &'static str| {
            let keys = &keys;
            async move {
                let rows = self.store.get_raw_many(bucket, keys).await.map_err(store_error)?;
                Ok::<HashMap<String, nereid_store::RawObject>, ApiError>(rows.into_iter().map(|r| (r.key.clone(), r)).collect())
            }
        };
        let claims = rows(SERVER_CLAIMS.name).await?;
        let records = rows(SERVERS.name).await?;
        let beats = rows(HEARTBEATS.name).await?;
        let inventories = rows(INVENTORIES.name).await?;
        let on = match keys.as_slice() {
            [one] => Filter::eq("server_uuid", one.clone()),
            many => Filter::any_of("server_uuid", many.iter().map(|k| serde_json::json!(k)).collect()),
        };
        let vms = self.vm_entries_cached(&ListQuery::filter(Filter::and(vec![super::allocation::active_filter(), on.clone()]))).await?;
        let reservations: Vec<Reservation> = self.list(RESERVATIONS.name, &ListQuery::filter(on)).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, key) in ids.iter().zip(&keys) {
            let claim = claims.get(key).map(|o| o.generation);
            let Some(row) = records.get(key) else {
                out.push((*id, Ok(None)));
                continue;
            };
            let record: Server = match super::decode_str(SERVERS.name, key, &row.json) {
                Ok(r) => r,
                Err(e) => {
                    out.push((*id, Err(e)));
                    continue;
                }
            };
            // As `heartbeat_of`: one that does not decode counts as none.
            let hb = beats.get(key).and_then(|o| serde_json::from_str::<HeartbeatRecord>(&o.json).ok()).map(|h| {
                let mut h = self.liveness.newest(*id, h);
                if let Some(inv) = inventories.get(key).and_then(|o| serde_json::from_str::<Inventory>(&o.json).ok()) {
                    h.vms = inv.vms;
                }
                h
            });
            let recs: Vec<_> = vms.iter().filter(|e| super::allocation::record_server(e) == Some(*id)).map(|e| &**e).collect();
            let res: Vec<_> = reservations.iter().filter(|r| r.server_uuid == *id).collect();
            let (st, silent) = self.server_status(hb.as_ref());
            let status = if st == "running" { Status::Running } else { Status::Unknown { silent_secs: silent } };
            out.push((*id, Ok(Some(Fresh { server: server_view(&record, hb.as_ref(), status, &recs, &res), claim }))));
        }
        Ok(out)
    }

    /// Rebuilds the whole view unless another caller did so within `fresh_enough`.
    async fn capacity_rebuild(&self, fresh_enough: Duration) -> Result<(), ApiError> {
        let asked = Instant::now();
        let _one = self.capacity.rebuilding.lock().await;
        if self.capacity.with(|s| s.built_at.is_some_and(|t| t + fresh_enough > asked)) {
            return Ok(());
        }
        let started = Instant::now();
        // Touches from here on are of changes the rebuild may not see: keep them.
        self.capacity.with(|s| {
            s.touched.clear();
            s.rebuild_running = true;
        });
        let view = self.placement_view().await;
        self.capacity.with(|s| s.rebuild_running = false);
        let fleet = Fleet::from_servers(view?.servers);
        self.capacity.with(|s| {
            s.fleet = Some(fleet);
            s.built_at = Some(started);
            s.statuses_at = Some(started);
        });
        Ok(())
    }

    /// Brings the view up to date enough for a decision: built, not too old, liveness
    /// refreshed, a few touched servers read again.
    async fn capacity_refresh(&self) -> Result<(), ApiError> {
        let now = Instant::now();
        let (missing, stale_status) = self.capacity.with(|s| {
            s.used_at = Some(now);
            (
                s.fleet.is_none() || s.built_at.is_none_or(|t| now.duration_since(t) >= STALE_AFTER),
                s.statuses_at.is_none_or(|t| now.duration_since(t) >= STATUS_EVERY),
            )
        });
        if missing {
            return self.capacity_rebuild(STALE_AFTER).await;
        }
        if stale_status {
            self.capacity.with(|s| s.statuses_at = Some(now));
            let times = self.heartbeat_times().await?;
            let now_ms = nereid_types::time::now_ms();
            let timeout = self.cfg.server_timeout.as_millis() as i64;
            let unknown: Vec<Uuid> = self.capacity.with(|s| {
                let Some(fleet) = s.fleet.as_mut() else { return Vec::new() };
                let ids: Vec<Uuid> = fleet.servers().map(|x| x.uuid).collect();
                for id in ids {
                    let (st, silent) = nereid_types::server::status(times.get(&id).copied(), now_ms, timeout);
                    fleet.set_status(&id, if st == "running" { Status::Running } else { Status::Unknown { silent_secs: silent } });
                }
                times.keys().filter(|id| fleet.get(id).is_none()).copied().collect()
            });
            // Servers that joined since the view was built.
            for id in unknown {
                self.capacity_touch(id);
            }
        }
        let touched: Vec<Uuid> = self.capacity.with(|s| {
            let some: Vec<Uuid> = s.touched.iter().take(TOUCHED_PER_DECISION).copied().collect();
            for id in &some {
                s.touched.remove(id);
            }
            some
        });
        for (id, fresh) in self.fresh_servers(&touched).await? {
            // One damaged record (logged as it was read) never stops placement: the
            // server stays as the view had it.
            if let Ok(f) = fresh {
                self.capacity_put(id, f);
            }
        }
        Ok(())
    }

    /// Puts a freshly read server into the view (or takes a vanished one out).
    fn capacity_put(&self, id: Uuid, fresh: Option<Fresh>) {
        self.capacity.with(|s| {
            if let Some(fleet) = s.fleet.as_mut() {
                match fresh {
                    Some(f) => fleet.upsert(f.server),
                    None => {
                        fleet.remove(&id);
                    }
                }
            }
        });
    }

    /// Chooses a server for `req` and checks it against fresh data; the caller claims it
    /// conditionally on `fresh.claim` and, on success, calls [`App::capacity_claimed`]
    /// (while it holds [`Decided::claiming`]).
    /// A refusal is Triton's `NoAllocatableServersError` with every server's reason,
    /// decided from a view at most a second old.
    pub async fn place(&self, req: &Request, cfg: &nereid_alloc::Config, rng: &mut impl Rng) -> Result<Decided, ApiError> {
        let mut rebuilt_for_refusal = false;
        for _ in 0..ATTEMPTS {
            self.capacity_refresh().await?;
            let started = Instant::now();
            let decided = self.capacity.with(|s| s.fleet.as_ref().map(|f| f.allocate(req, cfg, rng)));
            self.metrics.observe_allocation(started.elapsed().as_secs_f64());
            let placement = match decided {
                None => {
                    self.capacity_rebuild(Duration::ZERO).await?;
                    continue;
                }
                Some(Ok(p)) => p,
                Some(Err(nf)) => {
                    if !rebuilt_for_refusal {
                        rebuilt_for_refusal = true;
                        self.capacity_rebuild(FRESH_ENOUGH_TO_REFUSE).await?;
                        continue;
                    }
                    for w in &nf.warnings {
                        tracing::warn!("{}", w.message);
                    }
                    return Err(no_fit_error(&nf));
                }
            };
            let chosen = placement.server;
            // Concurrent decisions from one view choose the same server: the second waits
            // for the first's claim and reads the server after it, instead of claiming
            // against the same generation, being refused and deciding all over again.
            let claiming = self.vm_locks.lock(&format!("claim:{chosen}")).await;
            let Some(fresh) = self.fresh_server(chosen).await? else {
                self.capacity_put(chosen, None);
                continue;
            };
            let checked = self.capacity.with(|s| s.fleet.as_ref().map(|f| f.check(&fresh.server, req, cfg)));
            match checked {
                Some(Ok(())) => {
                    for w in &placement.warnings {
                        tracing::warn!("{}", w.message);
                    }
                    return Ok(Decided { placement, fresh, claiming });
                }
                _ => {
                    // The view was wrong about it: correct it and decide again.
                    self.capacity_put(chosen, Some(fresh));
                }
            }
        }
        Err(ApiError::unavailable("placement kept finding its view of the servers out of date; retry"))
    }

    /// A claim of this process landed: the view takes the server as read plus `r`.
    pub fn capacity_claimed(&self, fresh: Fresh, r: &Reservation) {
        let id = fresh.server.uuid;
        self.capacity_put(id, Some(Fresh { server: with_reservation(fresh.server, r), claim: fresh.claim.map(|g| g + 1).or(Some(1)) }));
        // A rebuild in progress may have read the server before this claim.
        self.capacity.with(|s| {
            if s.rebuild_running {
                s.touched.insert(id);
            }
        });
    }

    /// Whether the background rebuild is due: the view exists, placement used it since it
    /// was built, and it is [`REBUILD_EVERY`] old.
    fn capacity_rebuild_due(&self, now: Instant) -> bool {
        self.capacity.with(|s| match (s.built_at, s.used_at) {
            (Some(built), Some(used)) => s.fleet.is_some() && used > built && now.duration_since(built) >= REBUILD_EVERY,
            _ => false,
        })
    }
}

/// The background rebuild: while placement uses the view, rebuilds it every
/// [`REBUILD_EVERY`] off the request path.
pub async fn run(app: std::sync::Arc<App>) {
    loop {
        tokio::time::sleep(STATUS_EVERY).await;
        if app.capacity_rebuild_due(Instant::now())
            && let Err(e) = app.capacity_rebuild(REBUILD_EVERY).await
        {
            tracing::warn!(error = %e.message, "could not rebuild the capacity view; placement goes on with the old one");
        }
    }
}
