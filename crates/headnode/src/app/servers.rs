//! CNAPI: compute nodes joining, reporting, and being looked at and changed by operators.
//!
//! A heartbeat writes the server's small liveness record (`heartbeats`) every time and its
//! VM inventory (`inventories`, see [`inventories`]) only when that changed, in one batch
//! that also checks the server exists; the inventory it applies a delta to is the one this
//! headnode last read or wrote ([`HeldInventories`]), checked by generation in that batch,
//! so an idle server's heartbeat reads nothing. Readers get both joined
//! ([`App::heartbeats`], [`App::heartbeat_of`]) or liveness alone ([`App::heartbeat_times`]).

use std::collections::HashMap;

use nereid_store::{Cond, ListQuery, Op, StoreError};
use nereid_types::agent::{
    CaInfo, DiskHealth, Heartbeat, HeartbeatReply, JoinRequest, Joined, Problem, Register, RenewRequest, Temperature, VmStatus,
};
use nereid_types::query::Query;
use nereid_types::server::{self, Server};
use nereid_types::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{App, RETRIES, encode, store_error};
use crate::buckets::{HEARTBEATS, INVENTORIES, JOIN_TOKENS, SERVER_SECRETS, SERVERS};

#[path = "inventories.rs"]
pub mod inventories;
use inventories::Inventory;

/// The last heartbeat of a server. Stored without `vms` (bucket `heartbeats`): those are
/// the server's inventory (bucket `inventories`), filled in when read. A record written
/// before inventories were kept apart has them inside, and they are read from there until
/// the server's next heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    pub at_ms: i64,
    pub usage: nereid_types::agent::Usage,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<VmStatus>,
    /// What the server last said is wrong with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// Its hardware temperatures then (read at `at_ms`); none without sensors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temperatures: Vec<Temperature>,
    /// Its disks' SMART / NVMe health as the agent last read it; none from a server that
    /// reads none (or an older agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskHealth>,
    /// Its IPv4 address on each nic tag's link (the underlay's carries fabrics).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub nic_tag_addresses: std::collections::BTreeMap<String, String>,
    /// The digest of the network policy it applied last (see `netpolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netpolicy_digest: Option<String>,
}

/// The inventories this headnode last read or wrote, with their store generations: an idle
/// server's heartbeat (an empty delta on the held inventory) reads nothing, and the write
/// that records it checks the generation (another headnode's write since is a conflict,
/// after which the inventory is read again).
#[derive(Default)]
pub struct HeldInventories(std::sync::Mutex<HashMap<Uuid, (Inventory, i64)>>);

impl HeldInventories {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, (Inventory, i64)>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn get(&self, server: Uuid) -> Option<(Inventory, i64)> {
        self.lock().get(&server).cloned()
    }
    fn put(&self, server: Uuid, inv: Inventory, generation: i64) {
        self.lock().insert(server, (inv, generation));
    }
    fn forget(&self, server: Uuid) {
        self.lock().remove(&server);
    }
}

/// Why an agent's client certificate is refused for a server.
pub const SERVER_KEY_REFUSED: &str = "this client certificate does not speak for that server (another key, or the server is revoked)";

fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A server's trust record (bucket `server_secrets`): the public key its agent's
/// certificates must carry, whether it is revoked, and a join waiting for the operator.
/// Only public keys' hashes are kept: nothing here is a secret.
///
/// ```text
///   join, new uuid ───────────────────────► active (pin = the key)
///   join, same key, active ───────────────► a new certificate, nothing else changes
///   join, other key / revoked / no pin ───► pending ── approve ──► active (pin = its key)
///   revoke ───────────────────────────────► revoked: no call either way, joins wait
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trust {
    /// SHA-256 (hex) of the approved public key. A record from before certificates (a
    /// bearer secret) has none: its server must be approved again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingJoin>,
}

/// A join the operator has to approve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingJoin {
    /// Base64 DER SubjectPublicKeyInfo.
    pub public_key: String,
    pub pin: String,
    pub agent_url: String,
    pub sysinfo: Map<String, Value>,
    pub at: String,
}

/// What a join does (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinDecision {
    /// A new server: record it with this key.
    Create,
    /// The approved key of an active server: a new certificate, nothing else.
    Reissue,
    /// Anything else waits for `nereid admin server approve`.
    Pending,
}

/// How a join for a server is handled, given whether the server exists and its trust record.
pub fn decide_join(server_exists: bool, trust: Option<&Trust>, pin: &str) -> JoinDecision {
    match (server_exists, trust) {
        (false, _) => JoinDecision::Create,
        (true, Some(t)) if !t.revoked && t.pin.as_deref() == Some(pin) => JoinDecision::Reissue,
        (true, _) => JoinDecision::Pending,
    }
}

fn approval_required(uuid: Uuid, revoked: bool) -> ApiError {
    let why = if revoked { "is revoked" } else { "already exists with another key" };
    ApiError::new(
        403,
        nereid_types::agent::APPROVAL_REQUIRED,
        format!("server {uuid} {why}: this join waits for the operator (nereid admin server approve {uuid}); the agent keeps asking"),
    )
}

fn decode_key(b64: &str) -> Result<(Vec<u8>, String), ApiError> {
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ApiError::invalid_parameters(vec![FieldError::invalid("public_key", "must be base64")]))?;
    nereid_trust::ca::check_p256_spki(&der)
        .map_err(|e| ApiError::invalid_parameters(vec![FieldError::invalid("public_key", e.to_string())]))?;
    let pin = nereid_trust::sha256_hex(&der);
    Ok((der, pin))
}

/// The MTU each nic tag must carry: the largest of its networks' (pure).
pub fn nic_tag_mtus(nets: &[nereid_types::network::Network]) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    for n in nets {
        let m = out.entry(n.nic_tag.clone()).or_insert(n.mtu);
        *m = (*m).max(n.mtu);
    }
    out
}

/// A server record from a sysinfo, keeping what operators set on an existing one.
pub fn from_sysinfo(existing: Option<Server>, reg: &Register, now: &str) -> Result<Server, ApiError> {
    let s = &reg.sysinfo;
    nereid_types::sysinfo::check(s).map_err(|m| ApiError::invalid_parameters(vec![FieldError::invalid("sysinfo", m)]))?;
    if !(reg.agent_url.starts_with("http://") || reg.agent_url.starts_with("https://")) {
        return Err(ApiError::invalid_parameters(vec![FieldError::invalid("agent_url", "must be an http(s) URL")]));
    }
    let uuid = s.get("UUID").and_then(Value::as_str).and_then(|u| Uuid::parse_str(u).ok()).unwrap_or_default();
    let text = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
    let last_boot = s
        .get("Boot Time")
        .and_then(|v| v.as_str().and_then(|t| t.parse::<i64>().ok()).or(v.as_i64()))
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .map(nereid_types::time::iso);
    let base = existing.unwrap_or_else(|| Server::new(uuid, now));
    Ok(Server {
        hostname: text("Hostname").unwrap_or_default(),
        sysinfo: s.clone(),
        setup: true,
        agent_url: reg.agent_url.clone(),
        last_boot,
        current_platform: text("Live Image").unwrap_or_default(),
        system_type: text("System Type").unwrap_or_else(|| "Linux".into()),
        ram: nereid_types::sysinfo::ram_mib(s).unwrap_or(0),
        ..base
    })
}

/// The filter of `GET /servers`.
pub fn matches(s: &Server, q: &Query) -> bool {
    if let Some(u) = q.str("uuids")
        && !u.split(',').any(|x| x.trim().eq_ignore_ascii_case(&s.uuid.to_string()))
    {
        return false;
    }
    for (k, v) in [("setup", s.setup), ("headnode", s.headnode), ("reserved", s.reserved), ("reservoir", s.reservoir)] {
        if q.bool(k).is_some_and(|want| want != v) {
            return false;
        }
    }
    q.str("hostname").is_none_or(|h| h == s.hostname)
}

impl App {
    /// A compute node joins with a public key: a new server is recorded and certified; the
    /// approved key of an existing server gets a new certificate; anything else (another
    /// key for an existing UUID, a revoked server) is recorded as pending and refused with
    /// `ServerApprovalRequired` until the operator approves it. The existing server and its
    /// agent keep working meanwhile.
    pub async fn join_server(&self, req: &JoinRequest) -> Result<Joined, ApiError> {
        let (spki, pin) = decode_key(&req.public_key)?;
        let reg = Register { sysinfo: req.sysinfo.clone(), agent_url: req.agent_url.clone() };
        let now = nereid_types::time::now_iso();
        // Checks the sysinfo and URL before anything is written.
        let probe = from_sysinfo(None, &reg, &now)?;
        let uuid = probe.uuid;
        let _forget = self.agents.targets.forget_after(uuid);
        for _ in 0..RETRIES {
            let current = self.read::<Server>(SERVERS.name, &uuid.to_string()).await?;
            let trust = self.read_trust(uuid).await?;
            let decision = decide_join(current.is_some(), trust.as_ref().map(|(t, _)| t), &pin);
            let trust_cond = trust.as_ref().map(|(_, g)| Cond::Generation(*g)).unwrap_or(Cond::Absent);
            match decision {
                JoinDecision::Create => {
                    let t = Trust { pin: Some(pin.clone()), revoked: false, pending: None };
                    let ops = vec![
                        Op::put(SERVERS.name, uuid.to_string(), encode(&probe), Cond::Absent),
                        Op::put(SERVER_SECRETS.name, uuid.to_string(), encode(&t), trust_cond),
                    ];
                    match self.store.batch(ops).await {
                        Ok(_) => tracing::info!(server = %uuid, hostname = %probe.hostname, agent = %req.agent_url, "server joined"),
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(store_error(e)),
                    }
                }
                JoinDecision::Reissue => {}
                JoinDecision::Pending => {
                    let mut t = trust.as_ref().map(|(t, _)| t.clone()).unwrap_or_default();
                    let revoked = t.revoked;
                    t.pending = Some(PendingJoin {
                        public_key: req.public_key.trim().to_string(),
                        pin: pin.clone(),
                        agent_url: req.agent_url.clone(),
                        sysinfo: req.sysinfo.clone(),
                        at: now.clone(),
                    });
                    match self.store.put(SERVER_SECRETS.name, &uuid.to_string(), encode(&t), trust_cond).await {
                        Ok(_) => {
                            tracing::warn!(server = %uuid, agent = %req.agent_url, key = %pin, "a join waits for the operator's approval");
                            return Err(approval_required(uuid, revoked));
                        }
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(store_error(e)),
                    }
                }
            }
            return self.certify(uuid, &spki);
        }
        Err(ApiError::conflict("ConcurrentModification", "the server record kept changing; retry"))
    }

    /// A certificate for the server's key.
    fn certify(&self, uuid: Uuid, spki: &[u8]) -> Result<Joined, ApiError> {
        let id = self.agents.identity().ok_or_else(|| ApiError::unavailable("this headnode has no agent CA yet"))?;
        let validity = crate::pki::SERVER_CERT_VALIDITY;
        let certificate = id
            .ca
            .issue(spki, &nereid_trust::Role::Server(uuid), validity)
            .map_err(|e| ApiError::internal(format!("issuing the certificate: {e:#}")))?;
        let not_after = time::OffsetDateTime::now_utc().unix_timestamp() + validity.as_secs() as i64;
        Ok(Joined { server_uuid: uuid, certificate, ca: id.ca.cert_pem().to_string(), not_after })
    }

    /// `POST /servers/{uuid}/certificate`: an active server renews its certificate over its
    /// authenticated channel, for the same key or a new one (which becomes the pinned one).
    pub async fn renew_certificate(&self, uuid: Uuid, req: &RenewRequest) -> Result<Joined, ApiError> {
        let _forget = self.agents.targets.forget_after(uuid);
        let (spki, pin) = decode_key(&req.public_key)?;
        for _ in 0..RETRIES {
            let (mut t, g) = self.read_trust(uuid).await?.ok_or_else(|| ApiError::not_found(format!("server {uuid} has no key")))?;
            if t.revoked {
                return Err(ApiError::new(403, "NotAuthorized", format!("server {uuid} is revoked")));
            }
            if t.pin.as_deref() == Some(pin.as_str()) {
                return self.certify(uuid, &spki);
            }
            t.pin = Some(pin.clone());
            match self.store.put(SERVER_SECRETS.name, &uuid.to_string(), encode(&t), Cond::Generation(g)).await {
                Ok(_) => {
                    tracing::info!(server = %uuid, key = %pin, "server moved to a new key");
                    return self.certify(uuid, &spki);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", "the server's key kept changing; retry"))
    }

    /// Drops the bearer secrets older versions kept in servers' trust records: nothing
    /// accepts them any more, and none stays readable in the store. (Those servers' agents
    /// join with a key, which waits for `approve`.) Returns how many were dropped.
    pub async fn scrub_legacy_secrets(&self) -> Result<usize, ApiError> {
        let objs = self.store.list(SERVER_SECRETS.name, &ListQuery::all()).await.map_err(store_error)?;
        let mut n = 0;
        for o in objs {
            let Some(mut m) = o.value.as_object().filter(|m| m.contains_key("secret")).cloned() else { continue };
            m.remove("secret");
            let _forget = Uuid::parse_str(&o.key).ok().map(|u| self.agents.targets.forget_after(u));
            match self.store.put(SERVER_SECRETS.name, &o.key, Value::Object(m), Cond::Generation(o.generation)).await {
                Ok(_) => n += 1,
                // Rewritten meanwhile, by a join or another headnode's scrub.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        if n > 0 {
            tracing::warn!(
                servers = n,
                "dropped the bearer secrets of an older version from the store; those servers' agents join again with a key, which waits for nereid admin server approve"
            );
        }
        Ok(n)
    }

    /// The server's trust record and its generation.
    pub async fn read_trust(&self, uuid: Uuid) -> Result<Option<(Trust, i64)>, ApiError> {
        self.read::<Trust>(SERVER_SECRETS.name, &uuid.to_string()).await
    }

    /// Whether a client certificate with key `pin` speaks for the server: its approved key,
    /// not revoked.
    pub async fn server_pin_matches(&self, uuid: Uuid, pin: &str) -> bool {
        self.server_pin_generation(uuid, pin).await.is_some()
    }

    /// The generation of the server's trust record when key `pin` speaks for it.
    pub async fn server_pin_generation(&self, uuid: Uuid, pin: &str) -> Option<i64> {
        match self.read_trust(uuid).await {
            Ok(Some((t, g))) if !t.revoked && t.pin.as_deref() == Some(pin) => Some(g),
            _ => None,
        }
    }

    /// The key the server's agent must present, for calls to it; an error when the server
    /// is revoked or has none approved.
    pub(crate) async fn server_pin(&self, uuid: Uuid) -> Result<String, ApiError> {
        match self.read_trust(uuid).await? {
            Some((t, _)) if t.revoked => {
                Err(ApiError::conflict("ServerRevoked", format!("server {uuid} is revoked: its agent is not called")))
            }
            Some((Trust { pin: Some(p), .. }, _)) => Ok(p),
            _ => Err(ApiError::not_found(format!("server {uuid} has no approved agent key (nereid admin server approve {uuid})"))),
        }
    }

    /// `nereid admin server approve`: the join waiting for the server is accepted (its key
    /// becomes the pinned one, its agent URL and sysinfo are taken); the agent, asking
    /// again, gets its certificate.
    pub async fn approve_server(&self, uuid: Uuid) -> Result<Value, ApiError> {
        let _forget = self.agents.targets.forget_after(uuid);
        let now = nereid_types::time::now_iso();
        for _ in 0..RETRIES {
            let (t, tcond) = match self.read_trust(uuid).await? {
                Some((t, g)) => (t, Cond::Generation(g)),
                None => (Trust::default(), Cond::Absent),
            };
            let Some(p) = t.pending.clone() else {
                return Err(ApiError::conflict(
                    "NoPendingJoin",
                    format!("no join of server {uuid} waits for approval (its agent must ask first: start it with the join token)"),
                ));
            };
            let current = self.read::<Server>(SERVERS.name, &uuid.to_string()).await?;
            let reg = Register { sysinfo: p.sysinfo.clone(), agent_url: p.agent_url.clone() };
            let (existing, scond) = match current {
                Some((s, g)) => (Some(s), Cond::Generation(g)),
                None => (None, Cond::Absent),
            };
            let server = from_sysinfo(existing, &reg, &now)?;
            let next = Trust { pin: Some(p.pin.clone()), revoked: false, pending: None };
            // The liveness record goes, as at a revocation: another key may have spoken
            // for the server until now (see [`super::liveness`]).
            let ops = vec![
                Op::put(SERVERS.name, uuid.to_string(), encode(&server), scond),
                Op::put(SERVER_SECRETS.name, uuid.to_string(), encode(&next), tcond),
                Op::delete(HEARTBEATS.name, uuid.to_string(), Cond::Any),
            ];
            match self.store.batch(ops).await {
                Ok(_) => {
                    self.liveness.forget(uuid);
                    tracing::info!(server = %uuid, key = %p.pin, agent = %p.agent_url, "operator approved a join");
                    return Ok(json!({"uuid": uuid, "state": "active", "key_sha256": p.pin, "agent_url": p.agent_url}));
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", "the server record kept changing; retry"))
    }

    /// `nereid admin server revoke`: the server's certificate stops working at once, both
    /// ways; a join for it (any key) waits for approval.
    pub async fn revoke_server(&self, uuid: Uuid) -> Result<Value, ApiError> {
        let _forget = self.agents.targets.forget_after(uuid);
        self.get_server_record(uuid).await?;
        for _ in 0..RETRIES {
            let (t, cond) = match self.read_trust(uuid).await? {
                Some((t, g)) => (t, Cond::Generation(g)),
                None => (Trust::default(), Cond::Absent),
            };
            let next = Trust { revoked: true, pending: None, ..t };
            // Its liveness record goes with its trust: a heartbeat another headnode still
            // lets in from its cache of verified keys finds nothing to refresh (see
            // [`super::liveness`]), and the server reads as down at once.
            let ops = vec![
                Op::put(SERVER_SECRETS.name, uuid.to_string(), encode(&next), cond),
                Op::delete(HEARTBEATS.name, uuid.to_string(), Cond::Any),
            ];
            let _exclusive = self.liveness.writes.write().await;
            match self.store.batch(ops).await {
                Ok(_) => {
                    self.liveness.forget(uuid);
                    tracing::warn!(server = %uuid, "operator revoked the server");
                    return Ok(json!({"uuid": uuid, "state": "revoked", "key_sha256": next.pin}));
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", "the server record kept changing; retry"))
    }

    /// A server's trust as operators see it: `active`, `revoked` or `unapproved`, its
    /// key, and a join waiting for approval.
    pub async fn trust_summary(&self, uuid: Uuid) -> Result<Value, ApiError> {
        let t = self.read_trust(uuid).await?.map(|(t, _)| t).unwrap_or_default();
        let state = if t.revoked {
            "revoked"
        } else if t.pin.is_some() {
            "active"
        } else {
            "unapproved"
        };
        let mut v = json!({"state": state, "key_sha256": t.pin});
        if let Some(p) = &t.pending {
            v["pending_join"] = json!({"key_sha256": p.pin, "agent_url": p.agent_url, "at": p.at});
        }
        Ok(v)
    }

    /// `GET /agent-ca`: the CA, with a proof for each join token of the cluster.
    pub async fn ca_info(&self) -> Result<CaInfo, ApiError> {
        let id = self.agents.identity().ok_or_else(|| ApiError::unavailable("this headnode has no agent CA yet"))?;
        let objs = self.store.list(JOIN_TOKENS.name, &ListQuery::all()).await.map_err(store_error)?;
        let der = id.ca.cert_der();
        let proofs = objs
            .iter()
            .filter_map(|o| o.value.get("sha256").and_then(Value::as_str).map(|h| nereid_trust::token::proof(h, &der)))
            .collect();
        Ok(CaInfo { ca: id.ca.cert_pem().to_string(), proofs })
    }

    /// `POST /servers/{uuid}/sysinfo`: refreshes the record.
    pub async fn register_server(&self, uuid: Uuid, reg: &Register) -> Result<(), ApiError> {
        let _forget = self.agents.targets.forget_after(uuid);
        let now = nereid_types::time::now_iso();
        for _ in 0..RETRIES {
            let (cur, g) = self.get_server_record(uuid).await?;
            let next = from_sysinfo(Some(cur), reg, &now)?;
            if next.uuid != uuid {
                return Err(ApiError::invalid_parameters(vec![FieldError::invalid("sysinfo", "UUID differs from the server in the path")]));
            }
            match self.store.put(SERVERS.name, &uuid.to_string(), encode(&next), Cond::Generation(g)).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", "the server record kept changing; retry"))
    }

    /// Records a heartbeat: its liveness record every time, its inventory (whole or a
    /// delta, see [`inventories::take`]) only when it changed, conditionally on the held
    /// one (two headnodes cannot lose an update); takes the reports of the VMs that changed
    /// (every one of a full inventory) where newer than the records. Answers what the
    /// server's networking must carry, the inventory generation now held, and whether the
    /// agent must send its full inventory.
    ///
    /// A heartbeat that changes only the time and telemetry of a server whose records this
    /// headnode holds is written later with others (see [`super::liveness`]). `trust` is
    /// the key the agent came with and the generation of the server's trust record it was
    /// verified at: a heartbeat written now checks that generation in its write. When the
    /// record changed since, the key is checked again: still the server's (the record
    /// changed otherwise, say a join with another key waits for approval), the write is
    /// tried again; revoked or re-keyed, the heartbeat is refused and nothing is written.
    pub async fn heartbeat(&self, uuid: Uuid, hb: &Heartbeat, trust: Option<(&str, i64)>) -> Result<HeartbeatReply, ApiError> {
        let mut trust = trust;
        let key = uuid.to_string();
        let rec = HeartbeatRecord {
            at_ms: nereid_types::time::now_ms(),
            usage: hb.usage.clone(),
            vms: Vec::new(),
            problems: hb.problems.clone(),
            temperatures: hb.temperatures.clone(),
            disks: hb.disks.clone(),
            nic_tag_addresses: hb.nic_tag_addresses.clone(),
            netpolicy_digest: hb.netpolicy_digest.clone(),
        };
        let mut taken = None;
        // The inventory this headnode last read or wrote: checked in the write below (a
        // stale one, another headnode's write since, costs a conflict and a read).
        let mut cached = self.held_inventories.get(uuid);
        // Nothing but time and telemetry changed: written later, with other servers'.
        if let Some((inv, _)) = &cached {
            let t = inventories::take(Some(inv), hb);
            if t.write.is_none() && !t.send_full && self.liveness.defer(uuid, &rec, self.cfg.liveness_recheck) {
                taken = Some(t);
            }
        }
        let shared = if taken.is_none() { Some(self.liveness.writes.read().await) } else { None };
        // A deferred heartbeat writes nothing now.
        let attempts = if taken.is_none() { RETRIES } else { 0 };
        for _ in 0..attempts {
            let (held, cond) = match cached.take() {
                Some((inv, g)) => (Some(inv), Cond::Generation(g)),
                None => match self.store.get(INVENTORIES.name, &key).await.map_err(store_error)? {
                    // One that does not decode is replaced by the next full inventory.
                    Some(o) => (serde_json::from_value::<Inventory>(o.value).ok(), Cond::Generation(o.generation)),
                    None => (None, Cond::Absent),
                },
            };
            let t = inventories::take(held.as_ref(), hb);
            // The server must exist: checked in the write (its record, a sysinfo, is not
            // read per heartbeat). The inventory is written when it changed, else checked.
            let mut ops = vec![
                Op::check(SERVERS.name, key.clone(), Cond::Exists),
                Op::put(HEARTBEATS.name, key.clone(), encode(&rec), Cond::Any),
                match &t.write {
                    Some(w) => Op::put(INVENTORIES.name, key.clone(), encode(w), cond),
                    None => Op::check(INVENTORIES.name, key.clone(), cond),
                },
            ];
            if let Some((_, g)) = trust {
                ops.push(Op::check(SERVER_SECRETS.name, key.clone(), Cond::Generation(g)));
            }
            match self.store.batch(ops).await {
                Ok(gens) => {
                    self.liveness.written(uuid, &rec);
                    match (&t.write, held, cond) {
                        (Some(w), ..) => self.held_inventories.put(uuid, w.clone(), gens.get(2).copied().unwrap_or(0)),
                        (None, Some(h), Cond::Generation(g)) => self.held_inventories.put(uuid, h, g),
                        _ => self.held_inventories.forget(uuid),
                    }
                    taken = Some(t);
                    break;
                }
                Err(StoreError::Conflict { op_index: 0, .. }) => {
                    self.held_inventories.forget(uuid);
                    self.liveness.forget(uuid);
                    return Err(ApiError::not_found(format!("server {uuid} does not exist")));
                }
                // The trust record changed since the key was verified.
                Err(StoreError::Conflict { op_index: 3, .. }) => {
                    let pin = trust.map(|(p, _)| p).unwrap_or_default();
                    match self.server_pin_generation(uuid, pin).await {
                        Some(g) => {
                            self.liveness.trust(uuid, pin, g);
                            trust = Some((pin, g));
                            continue;
                        }
                        None => {
                            self.liveness.forget(uuid);
                            return Err(ApiError::new(403, "NotAuthorized", SERVER_KEY_REFUSED));
                        }
                    }
                }
                // Another headnode took a heartbeat of this server meanwhile: decide again.
                Err(e) if e.is_conflict() => {
                    self.held_inventories.forget(uuid);
                    continue;
                }
                Err(e) => {
                    self.held_inventories.forget(uuid);
                    self.liveness.forget(uuid);
                    return Err(store_error(e));
                }
            }
        }
        drop(shared);
        let t =
            taken.ok_or_else(|| ApiError::conflict("ConcurrentModification", format!("server {uuid}'s inventory kept changing; retry")))?;
        if t.write.is_some() {
            self.capacity_touch(uuid);
        }
        // One VM's report failing (a damaged record, a race) never fails the server's heartbeat.
        for st in &t.apply {
            if let Err(e) = self.apply_vm_status(uuid, st).await {
                tracing::warn!(server = %uuid, vm = %st.uuid, error = %e.message, "could not apply a VM's report");
            }
        }
        if t.send_full {
            tracing::debug!(server = %uuid, "a heartbeat's inventory delta is not on the held one; asking for the full inventory");
        }
        Ok(HeartbeatReply { nic_tag_mtus: self.heartbeat_mtus().await?, inventory_ack: t.ack, send_full: t.send_full })
    }

    /// The nic tags' MTUs answered to heartbeats (cached for [`inventories::MTU_TTL`]).
    async fn heartbeat_mtus(&self) -> Result<std::collections::BTreeMap<String, u32>, ApiError> {
        if let Some(m) = self.mtus.get() {
            return Ok(m);
        }
        let nets = self.list_networks(&Query::default()).await?;
        let m = nic_tag_mtus(&nets);
        self.mtus.put(&m);
        Ok(m)
    }

    /// Publishes this headnode's join token (as a SHA-256) so any headnode of the cluster
    /// accepts it.
    pub async fn publish_join_token(&self, token: &str) -> Result<(), ApiError> {
        let value = json!({"sha256": token_hash(token)});
        self.store.put(JOIN_TOKENS.name, &self.cfg.headnode_id, value, Cond::Any).await.map_err(store_error)?;
        Ok(())
    }

    /// Whether `given` is the join token of some headnode of the cluster.
    pub async fn is_cluster_join_token(&self, given: &str) -> bool {
        let want = token_hash(given);
        match self.store.list(JOIN_TOKENS.name, &ListQuery::all()).await {
            Ok(objs) => objs.iter().any(|o| o.value.get("sha256").and_then(Value::as_str) == Some(want.as_str())),
            Err(_) => false,
        }
    }

    pub async fn get_server_record(&self, uuid: Uuid) -> Result<(Server, i64), ApiError> {
        self.read(SERVERS.name, &uuid.to_string()).await?.ok_or_else(|| ApiError::not_found(format!("server {uuid} does not exist")))
    }

    /// Every server's last heartbeat, its inventory included.
    pub async fn heartbeats(&self) -> Result<HashMap<Uuid, HeartbeatRecord>, ApiError> {
        let mut out = self.heartbeats_liveness().await?;
        let rows = self.store.list_raw(INVENTORIES.name, &ListQuery::all()).await.map_err(store_error)?;
        for o in rows {
            let Ok(u) = Uuid::parse_str(&o.key) else { continue };
            if let (Some(h), Ok(inv)) = (out.get_mut(&u), serde_json::from_str::<Inventory>(&o.json)) {
                h.vms = inv.vms;
            }
        }
        Ok(out)
    }

    /// Every server's last heartbeat without its inventory (`vms` empty, unless written
    /// before inventories were kept apart): for readers that need liveness, usage,
    /// problems, addresses or policy digests, not VMs.
    pub async fn heartbeats_liveness(&self) -> Result<HashMap<Uuid, HeartbeatRecord>, ApiError> {
        let mut out = self.list_keyed(HEARTBEATS.name, &ListQuery::all()).await?;
        self.liveness.overlay(&mut out);
        Ok(out)
    }

    /// When each server last sent a heartbeat (ms since the epoch): what liveness needs,
    /// without the inventories.
    pub async fn heartbeat_times(&self) -> Result<HashMap<Uuid, i64>, ApiError> {
        #[derive(Deserialize)]
        struct At {
            at_ms: i64,
        }
        let at: HashMap<Uuid, At> = self.list_keyed(HEARTBEATS.name, &ListQuery::all()).await?;
        Ok(at.into_iter().map(|(u, a)| (u, self.liveness.newest_ms(u, a.at_ms))).collect())
    }

    /// One server's last heartbeat, inventory included.
    pub async fn heartbeat_of(&self, server: Uuid) -> Result<Option<HeartbeatRecord>, ApiError> {
        let Some(o) = self.store.get(HEARTBEATS.name, &server.to_string()).await.map_err(store_error)? else { return Ok(None) };
        let Ok(h) = serde_json::from_value::<HeartbeatRecord>(o.value) else { return Ok(None) };
        let h = self.liveness.newest(server, h);
        Ok(Some(self.with_inventory(server, h).await?))
    }

    /// A liveness record with the server's inventory in it (when one is held).
    async fn with_inventory(&self, server: Uuid, mut h: HeartbeatRecord) -> Result<HeartbeatRecord, ApiError> {
        if let Some(inv) = self.store.get(INVENTORIES.name, &server.to_string()).await.map_err(store_error)?
            && let Ok(inv) = serde_json::from_value::<Inventory>(inv.value)
        {
            h.vms = inv.vms;
        }
        Ok(h)
    }

    /// `running` or `unknown`, and seconds since the last heartbeat.
    pub fn server_status(&self, hb: Option<&HeartbeatRecord>) -> (&'static str, u64) {
        server::status(hb.map(|h| h.at_ms), nereid_types::time::now_ms(), self.cfg.server_timeout.as_millis() as i64)
    }

    /// The server as CNAPI renders it; `extras` adds `vms`, `sysinfo`, `capacity`.
    pub fn render_server(&self, s: &Server, hb: Option<&HeartbeatRecord>, extras: &[&str]) -> Value {
        let mut v = encode(s);
        let (status, silent) = self.server_status(hb);
        v["status"] = json!(status);
        let at = hb
            .and_then(|h| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(h.at_ms) * 1_000_000).ok())
            .map(nereid_types::time::iso);
        v["last_heartbeat"] = json!(at);
        if status == "unknown" && hb.is_some() {
            v["status_reason"] = json!(format!("no heartbeat for {silent} s"));
        }
        let all = extras.contains(&"all");
        if !(all || extras.contains(&"sysinfo"))
            && let Some(o) = v.as_object_mut()
        {
            o.remove("sysinfo");
        }
        if all || extras.contains(&"vms") {
            let vms: Map<String, Value> =
                hb.map(|h| h.vms.iter().map(|st| (st.uuid.to_string(), encode(st))).collect()).unwrap_or_default();
            v["vms"] = Value::Object(vms);
        }
        v["problems"] = json!(hb.map(|h| h.problems.clone()).unwrap_or_default());
        // Read when the last heartbeat was sent: `at` says how old they are.
        let temps: Vec<Value> = hb
            .map(|h| h.temperatures.iter().map(|t| json!({"sensor": t.sensor, "label": t.label, "celsius": t.celsius, "at": at})).collect())
            .unwrap_or_default();
        v["temperatures"] = Value::Array(temps);
        // As the heartbeat that carried them had them (the agent reads them every few minutes).
        v["disks"] = json!(hb.map(|h| h.disks.clone()).unwrap_or_default());
        v["nic_tag_addresses"] = json!(hb.map(|h| h.nic_tag_addresses.clone()).unwrap_or_default());
        if let Some(d) = hb.and_then(|h| h.netpolicy_digest.as_deref()) {
            v["netpolicy_digest"] = json!(d);
        }
        if let Some(h) = hb {
            v["memory_total_bytes"] = json!(h.usage.ram_total_mib * 1024 * 1024);
            v["disk_pool_size_bytes"] = json!(h.usage.disk_total_mib * 1024 * 1024);
        }
        v
    }

    pub async fn list_servers(&self, q: &Query) -> Result<Vec<(Server, Option<HeartbeatRecord>)>, ApiError> {
        let servers: Vec<Server> = self.list(SERVERS.name, &ListQuery::all()).await?;
        // The inventories only when the listing shows them.
        let extras = q.str("extras").unwrap_or_default();
        let mut hbs = if extras.split(',').any(|e| matches!(e.trim(), "vms" | "all")) {
            self.heartbeats().await?
        } else {
            self.heartbeats_liveness().await?
        };
        let mut out: Vec<(Server, Option<HeartbeatRecord>)> = servers
            .into_iter()
            .filter(|s| matches(s, q))
            .map(|s| {
                let hb = hbs.remove(&s.uuid);
                (s, hb)
            })
            .collect();
        out.sort_by(|a, b| a.0.hostname.cmp(&b.0.hostname).then(a.0.uuid.cmp(&b.0.uuid)));
        let off = q.offset().max(0) as usize;
        Ok(out.into_iter().skip(off).take(q.limit(1000) as usize).collect())
    }

    pub async fn get_server(&self, uuid: Uuid) -> Result<(Server, Option<HeartbeatRecord>), ApiError> {
        let (s, _) = self.get_server_record(uuid).await?;
        let hb = match self.read::<HeartbeatRecord>(HEARTBEATS.name, &uuid.to_string()).await? {
            Some((h, _)) => Some(self.with_inventory(uuid, self.liveness.newest(uuid, h)).await?),
            None => None,
        };
        Ok((s, hb))
    }

    /// ServerUpdate.
    pub async fn update_server(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Server, ApiError> {
        let _forget = self.agents.targets.forget_after(uuid);
        for _ in 0..RETRIES {
            let (cur, g) = self.get_server_record(uuid).await?;
            let next = server::check_update(&cur, input)?;
            match self.store.put(SERVERS.name, &uuid.to_string(), encode(&next), Cond::Generation(g)).await {
                Ok(_) => {
                    // Reserved, traits, ratios: placement reads the server again.
                    self.capacity_touch(uuid);
                    return Ok(next);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("server {uuid} kept changing; retry")))
    }

    /// Drops a server record; refused while VMs are counted on it.
    pub async fn delete_server(&self, uuid: Uuid) -> Result<(), ApiError> {
        let _forget = self.agents.targets.forget_after(uuid);
        self.get_server_record(uuid).await?;
        let vms = self.vms_on(uuid).await?;
        if !vms.is_empty() {
            let ids: Vec<String> = vms
                .iter()
                .take(5)
                .map(|v| match v {
                    nereid_types::damaged::Stored::Ok(v) => v.uuid.to_string(),
                    nereid_types::damaged::Stored::Damaged(d) => format!("{} (damaged)", d.key),
                })
                .collect();
            return Err(ApiError::conflict(
                "ServerInUse",
                format!("server {uuid} still has {} VM record(s) ({}); destroy or repair them first", vms.len(), ids.join(", ")),
            ));
        }
        let key = uuid.to_string();
        self.store
            .batch(vec![
                Op::delete(SERVERS.name, &key, Cond::Any),
                Op::delete(SERVER_SECRETS.name, &key, Cond::Any),
                Op::delete(HEARTBEATS.name, &key, Cond::Any),
                Op::delete(INVENTORIES.name, &key, Cond::Any),
            ])
            .await
            .map_err(store_error)?;
        self.held_inventories.forget(uuid);
        self.liveness.forget(uuid);
        self.capacity_touch(uuid);
        Ok(())
    }
}

#[cfg(test)]
mod trust_tests {
    use super::*;

    #[test]
    fn only_the_approved_key_of_an_active_server_rejoins_by_itself() {
        let active = Trust { pin: Some("k".into()), revoked: false, pending: None };
        assert_eq!(decide_join(false, None, "k"), JoinDecision::Create);
        assert_eq!(decide_join(false, Some(&active), "other"), JoinDecision::Create, "a forgotten server is new again");
        assert_eq!(decide_join(true, Some(&active), "k"), JoinDecision::Reissue);
        assert_eq!(decide_join(true, Some(&active), "other"), JoinDecision::Pending, "another key for an existing UUID");
        let revoked = Trust { revoked: true, ..active.clone() };
        assert_eq!(decide_join(true, Some(&revoked), "k"), JoinDecision::Pending, "a revoked server stays revoked");
        assert_eq!(decide_join(true, None, "k"), JoinDecision::Pending, "no record: approve first");
        let legacy: Trust = serde_json::from_value(json!({"secret": "abc"})).unwrap();
        assert_eq!(legacy, Trust::default(), "a bearer-secret record pins no key");
        assert_eq!(decide_join(true, Some(&legacy), "k"), JoinDecision::Pending);
    }
}
