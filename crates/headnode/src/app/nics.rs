//! NAPI NICs and IPs, and IP allocation.
//!
//! Allocation (theory of operation):
//!
//! ```text
//!   lock the network (in this process)
//!   loop:
//!     read the network's IP records
//!     pick: lowest never-used address in the provision range, else the least
//!           recently used free one (nereid_types::nic::pick_ip)
//!     batch: [claim the IP record (create if absent / update at its generation),
//!             write the NIC, clear `primary` on sibling NICs, release an old IP]
//!     conflict on the IP  → another headnode took it: skip it, pick again
//!     conflict on the MAC → a generated MAC collided: draw another
//!   no address left → 507 SubnetFull
//! ```
//!
//! The IP record's key is unique in the store, so two NICs can never hold one address,
//! whatever the number of headnodes; the in-process lock only stops one headnode's
//! concurrent requests from all chasing the same lowest address.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use nereid_store::{Cond, Filter, ListQuery, Op, Path, StoreError};
use nereid_types::mac::Mac;
use nereid_types::network::{Network, NetworkPool, parse_ip_in};
use nereid_types::nic::{self, IpRecord, Nic, Pick, Used};
use nereid_types::query::Query;
use nereid_types::spec::{self, Mode};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::networks::ip_key;
use super::{App, encode, store_error};
use crate::buckets::{IPS, NETWORK_POOLS, NETWORKS, NICS};

/// Attempts before allocation gives up on a busy network.
const CLAIM_ATTEMPTS: usize = 200;

/// Where a NIC's address comes from.
enum Target {
    Network(Network),
    Pool(NetworkPool),
}

/// Everything needed to write a NIC.
struct Plan {
    nic: Nic,
    nic_cond: Cond,
    mac_generated: bool,
    target: Option<Target>,
    want_ip: Option<Ipv4Addr>,
    reserved: Option<bool>,
    check_owner: bool,
    /// The NIC's current IP record, to release (moving) or rewrite (same address).
    current_ip: Option<(String, i64, IpRecord)>,
}

fn str_field<'a>(input: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    input.get(k).and_then(Value::as_str)
}

fn uuid_field(input: &Map<String, Value>, k: &str) -> Option<Uuid> {
    str_field(input, k).and_then(|s| Uuid::parse_str(s).ok())
}

/// NAPI's SubnetFull: 507, naming the network.
fn subnet_full(net: &Network) -> ApiError {
    ApiError::new(
        507,
        "SubnetFull",
        format!(
            "No more free IPs available: network {} ({}) has every address of {}-{} in use or reserved",
            net.name, net.uuid, net.provision_start_ip, net.provision_end_ip
        ),
    )
    .with_extra("network_uuid", json!(net.uuid))
}

/// The IP record a NIC holds.
fn held_record(ip: Ipv4Addr, net: &Network, nic: &Nic, reserved: bool) -> IpRecord {
    IpRecord {
        ip: ip.to_string(),
        network_uuid: net.uuid,
        reserved,
        belongs_to_uuid: Some(nic.belongs_to_uuid),
        belongs_to_type: Some(nic.belongs_to_type.clone()),
        owner_uuid: Some(nic.owner_uuid),
        nic: Some(Mac::parse(&nic.mac).map(|m| m.key()).unwrap_or_default()),
    }
}

fn mac_key(s: &str) -> Result<String, ApiError> {
    Mac::parse(s).map(|m| m.key()).map_err(|e| ApiError::invalid_parameters(vec![FieldError::invalid("mac", e)]))
}

/// The filter for `GET /nics`: each parameter a comma-separated list of alternatives.
pub fn list_filter(q: &Query) -> Filter {
    let mut parts = Vec::new();
    for field in ["owner_uuid", "belongs_to_uuid", "belongs_to_type", "cn_uuid", "network_uuid", "nic_tag", "state"] {
        if let Some(v) = q.str(field) {
            parts.push(Filter::any_of(field, v.split(',').map(|s| json!(s.trim())).collect()));
        }
    }
    for flag in nic::FLAGS {
        match q.bool(flag) {
            Some(true) => parts.push(Filter::eq(flag, true)),
            Some(false) => parts.push(Filter::Absent(Path::field(flag))),
            None => {}
        }
    }
    if let Some(v) = q.str("nic_tags_provided") {
        parts.push(Filter::Or(v.split(',').map(|t| Filter::has("nic_tags_provided", t.trim())).collect()));
    }
    Filter::and(parts)
}

impl App {
    pub async fn get_nic(&self, mac: &str) -> Result<(Nic, i64), ApiError> {
        let key = mac_key(mac)?;
        self.read(NICS.name, &key).await?.ok_or_else(|| ApiError::not_found(format!("NIC {mac} does not exist")))
    }

    pub async fn list_nics(&self, q: &Query) -> Result<Vec<Nic>, ApiError> {
        self.list(NICS.name, &ListQuery::filter(list_filter(q)).page(q.limit(1000), q.offset())).await
    }

    /// The networks of these NICs, for rendering.
    pub async fn networks_of(&self, nics: &[&Nic]) -> Result<HashMap<Uuid, Network>, ApiError> {
        let mut out = HashMap::new();
        for id in nics.iter().filter_map(|n| n.network_uuid) {
            if let std::collections::hash_map::Entry::Vacant(e) = out.entry(id)
                && let Some((net, _)) = self.read::<Network>(NETWORKS.name, &id.to_string()).await?
            {
                e.insert(net);
            }
        }
        Ok(out)
    }

    async fn target(&self, id: Uuid, field: &str) -> Result<Target, ApiError> {
        if let Some((n, _)) = self.read::<Network>(NETWORKS.name, &id.to_string()).await? {
            return Ok(Target::Network(n));
        }
        if let Some((p, _)) = self.read::<NetworkPool>(NETWORK_POOLS.name, &id.to_string()).await? {
            return Ok(Target::Pool(p));
        }
        Err(ApiError::invalid_parameters(vec![FieldError::invalid(field, format!("no network or network pool {id}"))]))
    }

    /// The network an address given without a network belongs to (by nic tag and VLAN).
    async fn network_for_ip(&self, ip: Ipv4Addr, tag: Option<&str>, vlan: Option<i64>) -> Result<Network, ApiError> {
        let (Some(tag), Some(vlan)) = (tag, vlan) else {
            return Err(ApiError::invalid_parameters(vec![FieldError::missing("network_uuid")]).with_errors(vec![FieldError::invalid(
                "network_uuid",
                "an ip needs network_uuid, or nic_tag and vlan_id to find its network",
            )]));
        };
        let nets: Vec<Network> = self
            .list(NETWORKS.name, &ListQuery::filter(Filter::and(vec![Filter::eq("nic_tag", tag), Filter::eq("vlan_id", vlan)])))
            .await?;
        nets.into_iter().find(|n| n.subnet().contains(ip)).ok_or_else(|| {
            ApiError::invalid_parameters(vec![FieldError::invalid("ip", format!("no network on nic tag {tag} VLAN {vlan} contains {ip}"))])
        })
    }

    /// `POST /networks/{uuid}/nics` (ProvisionNic): a NIC with an address from a network or pool.
    pub async fn provision_nic(&self, target: Uuid, input: &Map<String, Value>) -> Result<Nic, ApiError> {
        let mut input = input.clone();
        input.insert("network_uuid".into(), json!(target));
        self.create_nic(&input).await
    }

    /// `POST /nics`: a NIC, with an address when `network_uuid` (or `ip`) says where from.
    pub async fn create_nic(&self, input: &Map<String, Value>) -> Result<Nic, ApiError> {
        let errors = spec::check(nic::FIELDS, input, Mode::Create, &[]);
        if !errors.is_empty() {
            return Err(ApiError::invalid_parameters(errors));
        }
        let now = nereid_types::time::now_iso();
        let (mac, generated) = match str_field(input, "mac") {
            Some(m) => (Mac::parse(m).map_err(|e| ApiError::invalid_parameters(vec![FieldError::invalid("mac", e)]))?, false),
            None => (Mac::random(), true),
        };
        let mut nic = Nic {
            mac: mac.to_string(),
            primary: input.get("primary").and_then(Value::as_bool).unwrap_or(false),
            owner_uuid: uuid_field(input, "owner_uuid").unwrap_or_default(),
            belongs_to_uuid: uuid_field(input, "belongs_to_uuid").unwrap_or_default(),
            belongs_to_type: str_field(input, "belongs_to_type").unwrap_or("other").to_string(),
            state: str_field(input, "state").unwrap_or("running").to_string(),
            created_timestamp: now.clone(),
            modified_timestamp: now,
            ip: None,
            network_uuid: None,
            nic_tag: str_field(input, "nic_tag").map(str::to_string),
            vlan_id: input.get("vlan_id").and_then(Value::as_u64).map(|v| v as u16),
            cn_uuid: uuid_field(input, "cn_uuid"),
            model: str_field(input, "model").map(str::to_string),
            nic_tags_provided: input.get("nic_tags_provided").and_then(|v| serde_json::from_value(v.clone()).ok()),
            flags: Default::default(),
        };
        nic.apply_flags(input);
        let want_ip = match str_field(input, "ip") {
            Some(s) => {
                Some(nereid_types::ipv4::parse_addr(s).map_err(|e| ApiError::invalid_parameters(vec![FieldError::invalid("ip", e)]))?)
            }
            None => None,
        };
        let target = match (uuid_field(input, "network_uuid"), want_ip) {
            (Some(id), _) => Some(self.target(id, "network_uuid").await?),
            (None, Some(ip)) => {
                Some(Target::Network(self.network_for_ip(ip, nic.nic_tag.as_deref(), input.get("vlan_id").and_then(Value::as_i64)).await?))
            }
            (None, None) => None,
        };
        if let (Some(Target::Pool(_)), Some(_)) = (&target, want_ip) {
            return Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                "ip",
                "cannot be combined with a network pool; name one of its networks",
            )]));
        }
        let plan = Plan {
            nic,
            nic_cond: Cond::Absent,
            mac_generated: generated,
            target,
            want_ip,
            reserved: input.get("reserved").and_then(Value::as_bool),
            check_owner: input.get("check_owner").and_then(Value::as_bool).unwrap_or(true),
            current_ip: None,
        };
        self.save_nic(plan).await
    }

    /// `PUT /nics/{mac}`: changes a NIC; moving it to another address or network
    /// allocates the new address and frees the old one in the same transaction.
    pub async fn update_nic(&self, mac: &str, input: &Map<String, Value>) -> Result<Nic, ApiError> {
        let errors = spec::check(nic::UPDATE_FIELDS, input, Mode::Update, &[]);
        if !errors.is_empty() {
            return Err(ApiError::invalid_parameters(errors));
        }
        let mut last = None;
        for _ in 0..super::RETRIES {
            let (cur, generation) = self.get_nic(mac).await?;
            let mut next = cur.clone();
            if let Some(o) = uuid_field(input, "owner_uuid") {
                next.owner_uuid = o;
            }
            if let Some(b) = uuid_field(input, "belongs_to_uuid") {
                next.belongs_to_uuid = b;
            }
            for (k, slot) in [("belongs_to_type", &mut next.belongs_to_type), ("state", &mut next.state)] {
                if let Some(v) = str_field(input, k) {
                    *slot = v.to_string();
                }
            }
            if let Some(p) = input.get("primary").and_then(Value::as_bool) {
                next.primary = p;
            }
            if input.contains_key("cn_uuid") {
                next.cn_uuid = uuid_field(input, "cn_uuid");
            }
            if input.contains_key("model") {
                next.model = str_field(input, "model").map(str::to_string);
            }
            if input.contains_key("nic_tags_provided") {
                next.nic_tags_provided = input.get("nic_tags_provided").and_then(|v| serde_json::from_value(v.clone()).ok());
            }
            next.apply_flags(input);
            next.modified_timestamp = nereid_types::time::now_iso();

            let current_ip = match (cur.network_uuid, cur.ip.as_deref().and_then(|i| i.parse::<Ipv4Addr>().ok())) {
                (Some(n), Some(ip)) => {
                    let key = ip_key(n, ip);
                    self.store
                        .get(IPS.name, &key)
                        .await
                        .map_err(store_error)?
                        .and_then(|o| serde_json::from_value::<IpRecord>(o.value).ok().map(|r| (key, o.generation, r)))
                }
                _ => None,
            };
            let new_net = uuid_field(input, "network_uuid");
            let new_ip = match str_field(input, "ip") {
                Some(s) => {
                    Some(nereid_types::ipv4::parse_addr(s).map_err(|e| ApiError::invalid_parameters(vec![FieldError::invalid("ip", e)]))?)
                }
                None => None,
            };
            let moving =
                (new_net.is_some() && new_net != cur.network_uuid) || (new_ip.is_some() && new_ip.map(|i| i.to_string()) != cur.ip);
            let target = if moving {
                let id = new_net.or(cur.network_uuid);
                match (id, new_ip) {
                    (Some(id), _) => Some(self.target(id, "network_uuid").await?),
                    (None, Some(ip)) => {
                        Some(Target::Network(self.network_for_ip(ip, cur.nic_tag.as_deref(), cur.vlan_id.map(i64::from)).await?))
                    }
                    (None, None) => None,
                }
            } else {
                None
            };
            let plan = Plan {
                nic: next,
                nic_cond: Cond::Generation(generation),
                mac_generated: false,
                target,
                want_ip: if moving { new_ip } else { None },
                reserved: None,
                check_owner: input.get("check_owner").and_then(Value::as_bool).unwrap_or(true),
                current_ip,
            };
            match self.save_nic(plan).await {
                Err(e) if e.code == "ConcurrentModification" => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ApiError::conflict("ConcurrentModification", format!("NIC {mac} kept changing; retry"))))
    }

    /// Writes a NIC per the plan, claiming an address when it has a target.
    async fn save_nic(&self, mut plan: Plan) -> Result<Nic, ApiError> {
        let Some(target) = plan.target.take() else {
            // Same address (or none): rewrite the IP record so it names the NIC's owner.
            let mut ops = Vec::new();
            if let (Some((key, generation, rec)), Some(net)) = (&plan.current_ip, plan.nic.network_uuid) {
                let reserved = plan.reserved.unwrap_or(rec.reserved);
                let ip: Ipv4Addr = rec.ip.parse().map_err(|_| ApiError::internal("stored IP does not parse"))?;
                let (netobj, _) = self.get_network(net).await?;
                ops.push(Op::put(
                    IPS.name,
                    key.clone(),
                    encode(&held_record(ip, &netobj, &plan.nic, reserved)),
                    Cond::Generation(*generation),
                ));
            }
            return self.write_nic(&mut plan, ops).await.map_err(|e| {
                if e.code == "IpTaken" {
                    ApiError::conflict("ConcurrentModification", "the NIC's address record changed concurrently")
                } else {
                    e
                }
            });
        };
        let networks: Vec<Network> = match target {
            Target::Network(n) => vec![n],
            Target::Pool(p) => {
                let mut nets = Vec::new();
                for id in &p.networks {
                    if let Some((n, _)) = self.read::<Network>(NETWORKS.name, &id.to_string()).await? {
                        nets.push(n);
                    }
                }
                let usable: Vec<Network> =
                    nets.into_iter().filter(|n| !plan.check_owner || n.provisionable_by(&plan.nic.owner_uuid)).collect();
                if usable.is_empty() {
                    return Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                        "network_uuid",
                        format!("owner {} may not provision on any network of pool {} ({})", plan.nic.owner_uuid, p.name, p.uuid),
                    )]));
                }
                for n in usable {
                    match self.claim_on(&mut plan, &n).await {
                        Err(e) if e.code == "SubnetFull" => continue,
                        other => return other,
                    }
                }
                return Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                    "network_uuid",
                    format!("all networks in pool {} ({}) are full", p.name, p.uuid),
                )]));
            }
        };
        let net = &networks[0];
        if plan.check_owner && !net.provisionable_by(&plan.nic.owner_uuid) {
            return Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                "owner_uuid",
                format!("owner {} may not provision on network {} ({})", plan.nic.owner_uuid, net.name, net.uuid),
            )]));
        }
        self.claim_on(&mut plan, net).await
    }

    /// The allocation loop on one network (see the module docs).
    async fn claim_on(&self, plan: &mut Plan, net: &Network) -> Result<Nic, ApiError> {
        let explicit = match plan.want_ip {
            Some(ip) => Some(parse_ip_in(net, "ip", &ip.to_string()).map_err(|e| ApiError::invalid_parameters(vec![e]))?),
            None => None,
        };
        let mut skip: Vec<u32> = Vec::new();
        let my_key = Mac::parse(&plan.nic.mac).map(|m| m.key()).unwrap_or_default();
        for _ in 0..CLAIM_ATTEMPTS {
            // Held while the address is chosen. A never-used address the cache hands out
            // is this claim's alone until settled, so its write goes on without the lock
            // (claims on one network overlap instead of queueing behind each other's
            // commits); an explicit address or a reuse is written under it.
            let mut lock = Some(self.network_locks.lock(&net.uuid.to_string()).await);
            let (ip, cond, existing) = match explicit {
                Some(ip) => {
                    let key = ip_key(net.uuid, ip);
                    match self.store.get(IPS.name, &key).await.map_err(store_error)? {
                        None => (ip, Cond::Absent, None),
                        Some(o) => {
                            let rec: IpRecord = serde_json::from_value(o.value).map_err(|_| ApiError::internal("damaged IP record"))?;
                            let mine = rec.nic.as_deref() == Some(my_key.as_str());
                            if !mine && (rec.nic.is_some() || rec.belongs_to_uuid.is_some()) {
                                let who = rec
                                    .belongs_to_uuid
                                    .map(|b| format!("{} {b}", rec.belongs_to_type.as_deref().unwrap_or("other")))
                                    .unwrap_or_else(|| format!("NIC {}", rec.nic.unwrap_or_default()));
                                return Err(ApiError::invalid_parameters(vec![FieldError {
                                    field: "ip".into(),
                                    code: "UsedBy".into(),
                                    message: format!("{ip} is in use by {who}"),
                                }]));
                            }
                            (ip, Cond::Generation(o.generation), Some(rec))
                        }
                    }
                }
                None => match self.ip_cache.take_fresh(net.uuid, net.range(), &skip) {
                    Some(n) => {
                        lock = None;
                        (Ipv4Addr::from(n), Cond::Absent, None)
                    }
                    None => {
                        let records = self
                            .store
                            .list(IPS.name, &ListQuery::filter(Filter::eq("network_uuid", net.uuid.to_string())))
                            .await
                            .map_err(store_error)?;
                        let mut used = BTreeMap::new();
                        let mut recs = HashMap::new();
                        for o in records {
                            let Ok(rec) = serde_json::from_value::<IpRecord>(o.value) else { continue };
                            let Ok(addr) = rec.ip.parse::<Ipv4Addr>() else { continue };
                            used.insert(u32::from(addr), Used { generation: o.generation, free: rec.is_free(), mtime: o.mtime });
                            recs.insert(u32::from(addr), rec);
                        }
                        match self.ip_cache.put_and_pick(net.uuid, net.range(), used, &skip) {
                            None => return Err(subnet_full(net)),
                            Some(Pick::Fresh(n)) => {
                                lock = None;
                                (Ipv4Addr::from(n), Cond::Absent, None)
                            }
                            Some(Pick::Reuse(n, g)) => (Ipv4Addr::from(n), Cond::Generation(g), recs.remove(&n)),
                        }
                    }
                },
            };
            let reserved = plan.reserved.or(existing.as_ref().map(|r| r.reserved)).unwrap_or(false);
            let mut nic = plan.nic.clone();
            nic.ip = Some(ip.to_string());
            nic.network_uuid = Some(net.uuid);
            nic.nic_tag = Some(net.nic_tag.clone());
            nic.vlan_id = Some(net.vlan_id);
            let mut ops = vec![Op::put(IPS.name, ip_key(net.uuid, ip), encode(&held_record(ip, net, &nic, reserved)), cond)];
            if let Some((key, generation, rec)) = &plan.current_ip
                && *key != ip_key(net.uuid, ip)
            {
                ops.push(Op::put(IPS.name, key.clone(), encode(&rec.released()), Cond::Generation(*generation)));
            }
            let saved = plan.nic.clone();
            plan.nic = nic;
            // Settled however the write ends, also if this future is dropped mid-write (a
            // step past its deadline): a pending address never stays pending.
            let mut settle = Settle { cache: &self.ip_cache, net: net.uuid, addr: u32::from(ip), claimed: false };
            let written = self.write_nic(plan, ops).await;
            // (An old address released here keeps its record: nothing to forget.)
            settle.claimed = written.is_ok();
            drop(settle);
            drop(lock);
            match written {
                Ok(n) => return Ok(n),
                Err(e) if e.code == "IpTaken" => {
                    plan.nic = saved;
                    // Another writer (another headnode) claimed it: the cache is behind by
                    // as many claims as that writer made since it was read, so read again
                    // rather than bump into them one by one.
                    self.ip_cache.forget(net.uuid);
                    if explicit.is_some() {
                        continue;
                    }
                    skip.push(u32::from(ip));
                }
                Err(e) => {
                    plan.nic = saved;
                    return Err(e);
                }
            }
        }
        Err(ApiError::unavailable(format!(
            "network {} is too busy: could not claim an address after {CLAIM_ATTEMPTS} attempts; retry",
            net.uuid
        )))
    }

    /// Writes the NIC after `pre` ops (index 0 is the IP claim, if any), clearing `primary`
    /// on sibling NICs; retries fresh MACs for generated ones.
    async fn write_nic(&self, plan: &mut Plan, pre: Vec<Op>) -> Result<Nic, ApiError> {
        for _ in 0..16 {
            let key = mac_key(&plan.nic.mac)?;
            let mut ops = pre.clone();
            // The IP record names the NIC by MAC key; keep it in step with a redrawn MAC.
            if let Some(Op::Put { bucket, value, .. }) = ops.first_mut()
                && bucket == IPS.name
                && value.get("nic").is_some()
            {
                value["nic"] = json!(key);
            }
            let nic_index = ops.len();
            ops.push(Op::put(NICS.name, &key, encode(&plan.nic), plan.nic_cond));
            if plan.nic.primary {
                let siblings: Vec<nereid_store::Object> = self
                    .store
                    .list(
                        NICS.name,
                        &ListQuery::filter(Filter::and(vec![
                            Filter::eq("belongs_to_uuid", plan.nic.belongs_to_uuid.to_string()),
                            Filter::eq("primary", true),
                        ])),
                    )
                    .await
                    .map_err(store_error)?;
                for o in siblings.into_iter().filter(|o| o.key != key) {
                    let mut v = o.value;
                    v["primary"] = json!(false);
                    ops.push(Op::put(NICS.name, o.key, v, Cond::Generation(o.generation)));
                }
            }
            match self.store.batch(ops).await {
                Ok(_) => return Ok(plan.nic.clone()),
                Err(StoreError::Conflict { op_index, bucket, .. }) if op_index < nic_index && bucket == IPS.name => {
                    return Err(ApiError::conflict("IpTaken", "the address was taken concurrently"));
                }
                Err(StoreError::Conflict { op_index, .. }) if op_index == nic_index => {
                    if plan.mac_generated {
                        plan.nic.mac = Mac::random().to_string();
                        continue;
                    }
                    if plan.nic_cond == Cond::Absent {
                        return Err(ApiError::invalid_parameters(vec![FieldError::duplicate(
                            "mac",
                            format!("a NIC with MAC {} already exists", plan.nic.mac),
                        )]));
                    }
                    return Err(ApiError::conflict("ConcurrentModification", format!("NIC {} changed concurrently", plan.nic.mac)));
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("NIC {} kept changing; retry", plan.nic.mac)))
    }

    /// `DELETE /nics/{mac}`: removes the NIC and frees its address (a reserved address stays reserved).
    pub async fn delete_nic(&self, mac: &str) -> Result<(), ApiError> {
        for _ in 0..super::RETRIES {
            let (nic, generation) = self.get_nic(mac).await?;
            let key = mac_key(mac)?;
            let mut ops = vec![Op::delete(NICS.name, &key, Cond::Generation(generation))];
            if let (Some(n), Some(ip)) = (nic.network_uuid, nic.ip.as_deref().and_then(|i| i.parse::<Ipv4Addr>().ok())) {
                let ikey = ip_key(n, ip);
                if let Some(o) = self.store.get(IPS.name, &ikey).await.map_err(store_error)?
                    && let Ok(rec) = serde_json::from_value::<IpRecord>(o.value)
                    && rec.nic.as_deref() == Some(key.as_str())
                {
                    ops.push(Op::put(IPS.name, ikey, encode(&rec.released()), Cond::Generation(o.generation)));
                }
            }
            match self.store.batch(ops).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("NIC {mac} kept changing; retry")))
    }

    /// `GET /networks/{uuid}/ips`: the network's IP records.
    pub async fn list_ips(&self, network: Uuid, q: &Query) -> Result<Vec<IpRecord>, ApiError> {
        self.get_network(network).await?;
        let mut parts = vec![Filter::eq("network_uuid", network.to_string())];
        for field in ["belongs_to_type", "belongs_to_uuid", "owner_uuid"] {
            if let Some(v) = q.str(field) {
                parts.push(Filter::eq(field, v));
            }
        }
        self.list(IPS.name, &ListQuery::filter(Filter::and(parts)).page(q.limit(1000), q.offset())).await
    }

    /// `GET /networks/{uuid}/ips/{ip}`: the record, or a free one for an address never used.
    pub async fn get_ip(&self, network: Uuid, ip: &str) -> Result<(IpRecord, i64), ApiError> {
        let (net, _) = self.get_network(network).await?;
        let addr = parse_ip_in(&net, "ip", ip).map_err(|e| ApiError::invalid_parameters(vec![e]))?;
        match self.read::<IpRecord>(IPS.name, &ip_key(network, addr)).await? {
            Some(r) => Ok(r),
            None => Ok((
                IpRecord {
                    ip: addr.to_string(),
                    network_uuid: network,
                    reserved: false,
                    belongs_to_uuid: None,
                    belongs_to_type: None,
                    owner_uuid: None,
                    nic: None,
                },
                0,
            )),
        }
    }

    /// `PUT /networks/{uuid}/ips/{ip}`: reserve, assign, unassign or free an address.
    pub async fn update_ip(&self, network: Uuid, ip: &str, input: &Map<String, Value>) -> Result<IpRecord, ApiError> {
        let errors = spec::check(nic::IP_UPDATE_FIELDS, input, Mode::Update, &[]);
        if !errors.is_empty() {
            return Err(ApiError::invalid_parameters(errors));
        }
        let _lock = self.network_locks.lock(&network.to_string()).await;
        for _ in 0..super::RETRIES {
            let (mut rec, generation) = self.get_ip(network, ip).await?;
            if let Some(mac) = &rec.nic {
                let changes_holder =
                    ["belongs_to_uuid", "belongs_to_type", "owner_uuid", "free", "unassign"].iter().any(|k| input.contains_key(*k));
                if changes_holder {
                    return Err(ApiError::new(422, "InUse", format!("{} is held by NIC {mac}: update or delete the NIC instead", rec.ip))
                        .with_errors(vec![FieldError {
                            field: "ip".into(),
                            code: "UsedBy".into(),
                            message: format!("in use by nic {mac}"),
                        }]));
                }
            }
            if input.get("free").and_then(Value::as_bool) == Some(true) {
                rec = IpRecord {
                    ip: rec.ip,
                    network_uuid: network,
                    reserved: false,
                    belongs_to_uuid: None,
                    belongs_to_type: None,
                    owner_uuid: None,
                    nic: rec.nic,
                };
            } else {
                if input.get("unassign").and_then(Value::as_bool) == Some(true) {
                    rec.belongs_to_uuid = None;
                    rec.belongs_to_type = None;
                }
                if let Some(r) = input.get("reserved").and_then(Value::as_bool) {
                    rec.reserved = r;
                }
                if input.contains_key("owner_uuid") {
                    rec.owner_uuid = uuid_field(input, "owner_uuid");
                }
                if input.contains_key("belongs_to_uuid") {
                    rec.belongs_to_uuid = uuid_field(input, "belongs_to_uuid");
                }
                if input.contains_key("belongs_to_type") {
                    rec.belongs_to_type = str_field(input, "belongs_to_type").map(str::to_string);
                }
                if rec.belongs_to_uuid.is_some() != rec.belongs_to_type.is_some() {
                    return Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                        "belongs_to_type",
                        "belongs_to_uuid and belongs_to_type go together",
                    )]));
                }
            }
            let addr: Ipv4Addr = rec.ip.parse().map_err(|_| ApiError::internal("stored IP does not parse"))?;
            let cond = if generation == 0 { Cond::Absent } else { Cond::Generation(generation) };
            match self.store.put(IPS.name, &ip_key(network, addr), encode(&rec), cond).await {
                Ok(_) => {
                    self.ip_cache.forget(network);
                    return Ok(rec);
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("IP {ip} kept changing; retry")))
    }
}

/// Settles a claim's address in the cache when dropped (see [`IpCache::settle`]).
struct Settle<'a> {
    cache: &'a super::ip_cache::IpCache,
    net: Uuid,
    addr: u32,
    claimed: bool,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.cache.settle(self.net, self.addr, self.claimed);
    }
}
