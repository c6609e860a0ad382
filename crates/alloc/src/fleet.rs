//! A fleet of servers kept between decisions, for placement that does not start from
//! scratch every time.
//!
//! The headnode keeps one [`Fleet`] (its capacity view) and changes it server by server
//! as records, reservations and heartbeats change ([`Fleet::upsert`],
//! [`Fleet::set_status`], [`Fleet::remove`]). [`Fleet::allocate`] decides as
//! [`crate::allocate`] does over the same servers; [`Fleet::check`] runs the hard filters
//! on one server (typically freshly read from the store, just before its claim), with
//! the fleet as the context filters that look at other servers need.
//!
//! The decision may come from a stale fleet; the caller claims capacity conditionally
//! and checks the chosen server against fresh data, so staleness never over-commits.

use std::collections::BTreeMap;

use rand::Rng;
use uuid::Uuid;

use crate::{Config, NoFit, Placement, Rejection, Request, Server, Status, allocate, filters};

/// Servers by UUID, maintained incrementally.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    servers: BTreeMap<Uuid, Server>,
}

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
        self.servers.insert(s.uuid, s);
    }

    /// Removes a server; what it was.
    pub fn remove(&mut self, uuid: &Uuid) -> Option<Server> {
        self.servers.remove(uuid)
    }

    /// One server.
    pub fn get(&self, uuid: &Uuid) -> Option<&Server> {
        self.servers.get(uuid)
    }

    /// Changes only a server's liveness (heartbeats come far more often than changes).
    pub fn set_status(&mut self, uuid: &Uuid, status: Status) {
        if let Some(s) = self.servers.get_mut(uuid) {
            s.status = status;
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
        self.servers.values()
    }

    /// Chooses a server for `req` as [`crate::allocate`] would among these servers, or
    /// explains (for every server) why none fits.
    pub fn allocate(&self, req: &Request, cfg: &Config, rng: &mut impl Rng) -> Result<Placement, NoFit> {
        let all: Vec<Server> = self.servers.values().cloned().collect();
        allocate(&all, req, cfg, rng)
    }

    /// The hard filters on `server` (which need not be the fleet's copy of it), with the
    /// fleet as the other servers: the first one that rejects it.
    pub fn check(&self, server: &Server, req: &Request, cfg: &Config) -> Result<(), Rejection> {
        let all: Vec<Server> = self.servers.values().cloned().collect();
        for (name, filter) in filters::HARD {
            filter(server, req, cfg, &all).map_err(|reason| Rejection {
                server: server.uuid,
                hostname: server.hostname.clone(),
                step: name,
                reason,
            })?;
        }
        Ok(())
    }
}
