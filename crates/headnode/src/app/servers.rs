//! CNAPI: compute nodes joining, reporting, and being looked at and changed by operators.

use std::collections::HashMap;

use nereid_store::{Cond, ListQuery, Op};
use nereid_types::agent::{Heartbeat, HeartbeatReply, Joined, Problem, Register, VmStatus};
use nereid_types::query::Query;
use nereid_types::server::{self, Server};
use nereid_types::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{App, RETRIES, encode, store_error};
use crate::buckets::{HEARTBEATS, JOIN_TOKENS, SERVER_SECRETS, SERVERS};

/// The last heartbeat of a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    pub at_ms: i64,
    pub usage: nereid_types::agent::Usage,
    pub vms: Vec<VmStatus>,
    /// What the server last said is wrong with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Secret {
    secret: String,
}

fn new_secret() -> String {
    let b: [u8; 32] = rand::random();
    hex::encode(b)
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
    /// A new (or re-installed) compute node joins: its record is made or refreshed and a
    /// new secret issued (the old one stops working).
    pub async fn join_server(&self, reg: &Register) -> Result<Joined, ApiError> {
        let now = nereid_types::time::now_iso();
        for _ in 0..RETRIES {
            let uuid = reg.sysinfo.get("UUID").and_then(Value::as_str).and_then(|u| Uuid::parse_str(u).ok());
            let current = match uuid {
                Some(u) => self.read::<Server>(SERVERS.name, &u.to_string()).await?,
                None => None,
            };
            let (existing, cond) = match current {
                Some((s, g)) => (Some(s), Cond::Generation(g)),
                None => (None, Cond::Absent),
            };
            let server = from_sysinfo(existing, reg, &now)?;
            let secret = new_secret();
            let ops = vec![
                Op::put(SERVERS.name, server.uuid.to_string(), encode(&server), cond),
                Op::put(SERVER_SECRETS.name, server.uuid.to_string(), encode(&Secret { secret: secret.clone() }), Cond::Any),
            ];
            match self.store.batch(ops).await {
                Ok(_) => {
                    tracing::info!(server = %server.uuid, hostname = %server.hostname, agent = %server.agent_url, "server joined");
                    return Ok(Joined { server_uuid: server.uuid, secret });
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", "the server record kept changing; retry"))
    }

    /// Whether `token` is the server's secret.
    pub async fn server_secret_matches(&self, uuid: Uuid, token: &str) -> bool {
        match self.read::<Secret>(SERVER_SECRETS.name, &uuid.to_string()).await {
            Ok(Some((s, _))) => {
                s.secret.len() == token.len() && s.secret.bytes().zip(token.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
            }
            _ => false,
        }
    }

    pub(crate) async fn server_secret(&self, uuid: Uuid) -> Result<String, ApiError> {
        self.read::<Secret>(SERVER_SECRETS.name, &uuid.to_string())
            .await?
            .map(|(s, _)| s.secret)
            .ok_or_else(|| ApiError::not_found(format!("server {uuid} has no agent credentials")))
    }

    /// `POST /servers/{uuid}/sysinfo`: refreshes the record.
    pub async fn register_server(&self, uuid: Uuid, reg: &Register) -> Result<(), ApiError> {
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

    /// Records a heartbeat and takes any VM state newer than what the records have;
    /// answers what the server's networking must carry.
    pub async fn heartbeat(&self, uuid: Uuid, hb: &Heartbeat) -> Result<HeartbeatReply, ApiError> {
        self.get_server_record(uuid).await?;
        let rec = HeartbeatRecord {
            at_ms: nereid_types::time::now_ms(),
            usage: hb.usage.clone(),
            vms: hb.vms.clone(),
            problems: hb.problems.clone(),
        };
        self.store.put(HEARTBEATS.name, &uuid.to_string(), encode(&rec), Cond::Any).await.map_err(store_error)?;
        // One VM's report failing (a damaged record, a race) never fails the server's heartbeat.
        for st in &hb.vms {
            if let Err(e) = self.apply_vm_status(uuid, st).await {
                tracing::warn!(server = %uuid, vm = %st.uuid, error = %e.message, "could not apply a VM's report");
            }
        }
        let nets = self.list_networks(&Query::default()).await?;
        Ok(HeartbeatReply { nic_tag_mtus: nic_tag_mtus(&nets) })
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

    /// Every server's last heartbeat.
    pub async fn heartbeats(&self) -> Result<HashMap<Uuid, HeartbeatRecord>, ApiError> {
        let objs = self.store.list(HEARTBEATS.name, &ListQuery::all()).await.map_err(store_error)?;
        Ok(objs.into_iter().filter_map(|o| Some((Uuid::parse_str(&o.key).ok()?, serde_json::from_value(o.value).ok()?))).collect())
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
        v["last_heartbeat"] = json!(
            hb.and_then(|h| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(h.at_ms) * 1_000_000).ok())
                .map(nereid_types::time::iso)
        );
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
        if let Some(h) = hb {
            v["memory_total_bytes"] = json!(h.usage.ram_total_mib * 1024 * 1024);
            v["disk_pool_size_bytes"] = json!(h.usage.disk_total_mib * 1024 * 1024);
        }
        v
    }

    pub async fn list_servers(&self, q: &Query) -> Result<Vec<(Server, Option<HeartbeatRecord>)>, ApiError> {
        let servers: Vec<Server> = self.list(SERVERS.name, &ListQuery::all()).await?;
        let mut hbs = self.heartbeats().await?;
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
        let hb = self.read::<HeartbeatRecord>(HEARTBEATS.name, &uuid.to_string()).await?.map(|(h, _)| h);
        Ok((s, hb))
    }

    /// ServerUpdate.
    pub async fn update_server(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Server, ApiError> {
        for _ in 0..RETRIES {
            let (cur, g) = self.get_server_record(uuid).await?;
            let next = server::check_update(&cur, input)?;
            match self.store.put(SERVERS.name, &uuid.to_string(), encode(&next), Cond::Generation(g)).await {
                Ok(_) => return Ok(next),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("server {uuid} kept changing; retry")))
    }

    /// Drops a server record; refused while VMs are counted on it.
    pub async fn delete_server(&self, uuid: Uuid) -> Result<(), ApiError> {
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
            ])
            .await
            .map(|_| ())
            .map_err(store_error)
    }
}
