//! NAPI networks: creation with the gateway reserved, updates, deletion guarded by use.

use std::net::Ipv4Addr;

use nereid_store::{Cond, Filter, ListQuery, Op, Path, StoreError};
use nereid_types::ipv4::Subnet;
use nereid_types::network::{self, Network, NetworkPool};
use nereid_types::nic::{IpRecord, Nic};
use nereid_types::query::Query;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::nic_tags::in_use;
use super::{App, RETRIES, encode, store_error};
use crate::buckets::{IPS, NETWORK_NAMES, NETWORK_POOLS, NETWORKS, NICS};

/// The store key of an IP record: numeric order within a network.
pub fn ip_key(network: Uuid, ip: Ipv4Addr) -> String {
    format!("{network}/{:010}", u32::from(ip))
}

/// The name claim networks and pools share: `{kind, uuid}` under the name.
pub fn name_claim(kind: &str, uuid: Uuid) -> Value {
    json!({"kind": kind, "uuid": uuid})
}

/// Ops moving a network's or pool's name claim from `old` to `new` (none when unchanged).
pub fn rename_ops(kind: &str, uuid: Uuid, old: &str, new: &str) -> Vec<Op> {
    if old == new {
        return Vec::new();
    }
    vec![Op::delete(NETWORK_NAMES.name, old, Cond::Any), Op::put(NETWORK_NAMES.name, new, name_claim(kind, uuid), Cond::Absent)]
}

/// The error for a name another network or pool already has.
pub fn name_taken(name: &str) -> ApiError {
    ApiError::invalid_parameters(vec![FieldError::duplicate("name", format!("a network or pool named {name} already exists"))])
}

/// The reserved record that keeps a gateway out of allocation.
pub(crate) fn gateway_record(net: &Network, gw: Ipv4Addr) -> IpRecord {
    IpRecord {
        ip: gw.to_string(),
        network_uuid: net.uuid,
        reserved: true,
        belongs_to_uuid: Some(net.uuid),
        belongs_to_type: Some("other".into()),
        owner_uuid: None,
        nic: None,
    }
}

/// Whether two subnets share any address.
fn overlaps(a: Subnet, b: Subnet) -> bool {
    let mask = a.mask() & b.mask();
    a.base & mask == b.base & mask
}

/// The filter for `GET /networks`.
pub fn list_filter(q: &Query) -> Result<Filter, Vec<FieldError>> {
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    if let Some(name) = q.str("name") {
        if name.starts_with('[') {
            match serde_json::from_str::<Vec<String>>(name) {
                Ok(names) => parts.push(Filter::any_of("name", names.into_iter().map(Value::String).collect())),
                Err(_) => errors.push(FieldError::invalid("name", "must be a name or a JSON array of names")),
            }
        } else {
            parts.push(Filter::eq("name", name));
        }
    }
    if let Some(t) = q.str("nic_tag") {
        parts.push(Filter::any_of("nic_tag", t.split(',').map(|s| json!(s)).collect()));
    }
    if let Some(v) = q.int("vlan_id") {
        parts.push(Filter::eq("vlan_id", v));
    }
    if let Some(f) = q.bool("fabric") {
        parts.push(Filter::eq("fabric", f));
    }
    if let Some(f) = q.str("family") {
        parts.push(Filter::eq("family", f));
    }
    if let Some(o) = q.str("owner_uuid") {
        parts.push(Filter::has("owner_uuids", o));
    }
    if let Some(o) = q.str("provisionable_by") {
        parts.push(Filter::Or(vec![Filter::has("owner_uuids", o), Filter::Absent(Path::field("owner_uuids"))]));
    }
    if errors.is_empty() { Ok(Filter::and(parts)) } else { Err(errors) }
}

impl App {
    pub async fn get_network(&self, uuid: Uuid) -> Result<(Network, i64), ApiError> {
        self.read(NETWORKS.name, &uuid.to_string()).await?.ok_or_else(|| ApiError::not_found(format!("network {uuid} does not exist")))
    }

    pub async fn list_networks(&self, q: &Query) -> Result<Vec<Network>, ApiError> {
        let filter = list_filter(q).map_err(ApiError::invalid_parameters)?;
        self.list(
            NETWORKS.name,
            &ListQuery::filter(filter).sort(Path::field("name"), nereid_store::Kind::Text, false).page(q.limit(1000), q.offset()),
        )
        .await
    }

    async fn tag_mtu(&self, name: &str) -> Result<u32, ApiError> {
        match self.read::<nereid_types::nic_tag::NicTag>(crate::buckets::NIC_TAGS.name, name).await? {
            Some((t, _)) => Ok(t.mtu),
            None => Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                "nic_tag",
                format!("nic tag {name} does not exist; create it first"),
            )])),
        }
    }

    async fn check_overlap(&self, net: &Network) -> Result<(), ApiError> {
        let peers: Vec<Network> = self
            .list(
                NETWORKS.name,
                &ListQuery::filter(Filter::and(vec![
                    Filter::eq("nic_tag", net.nic_tag.as_str()),
                    Filter::eq("vlan_id", i64::from(net.vlan_id)),
                ])),
            )
            .await?;
        let clash: Vec<FieldError> = peers
            .iter()
            .filter(|p| p.uuid != net.uuid && overlaps(p.subnet(), net.subnet()))
            .map(|p| FieldError {
                field: "subnet".into(),
                code: "UsedBy".into(),
                message: format!("subnet overlaps with network {} ({}, {})", p.name, p.uuid, p.subnet),
            })
            .collect();
        if clash.is_empty() { Ok(()) } else { Err(ApiError::invalid_parameters(clash)) }
    }

    pub async fn create_network(&self, input: &Map<String, Value>) -> Result<Network, ApiError> {
        let tag = input.get("nic_tag").and_then(Value::as_str);
        if tag == Some(nereid_types::fabric::OVERLAY_TAG) {
            return Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                "nic_tag",
                "sdc_overlay networks are fabric networks: create them with POST /fabrics/<owner_uuid>/vlans/<vlan_id>/networks",
            )]));
        }
        let mtu = match tag {
            Some(t) => Some(self.tag_mtu(t).await?),
            None => None,
        };
        let net = network::check_create(input, mtu)?;
        self.check_overlap(&net).await?;
        let mut ops = vec![
            Op::put(NETWORK_NAMES.name, &net.name, name_claim("network", net.uuid), Cond::Absent),
            Op::put(NETWORKS.name, net.uuid.to_string(), encode(&net), Cond::Absent),
        ];
        if let Some(gw) = net.gateway.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok()) {
            ops.push(Op::put(IPS.name, ip_key(net.uuid, gw), encode(&gateway_record(&net, gw)), Cond::Any));
        }
        match self.store.batch(ops).await {
            Ok(_) => Ok(net),
            Err(StoreError::Conflict { op_index: 0, .. }) => Err(name_taken(&net.name)),
            Err(e) => Err(store_error(e)),
        }
    }

    pub async fn update_network(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<Network, ApiError> {
        // Fabric networks keep their own rules (per-account names, fixed subnet and gateway).
        if let (n, _) = self.get_network(uuid).await?
            && n.fabric
            && let Some(owner) = n.owner_uuids.as_ref().and_then(|o| o.first())
        {
            return self.update_fabric_network(*owner, n.vlan_id, &uuid.to_string(), input).await;
        }
        for _ in 0..RETRIES {
            let (cur, generation) = self.get_network(uuid).await?;
            let mtu = self.tag_mtu(&cur.nic_tag).await?;
            let next = network::check_update(&cur, input, Some(mtu))?;
            let mut ops = vec![Op::put(NETWORKS.name, uuid.to_string(), encode(&next), Cond::Generation(generation))];
            ops.extend(rename_ops("network", uuid, &cur.name, &next.name));
            if next.gateway != cur.gateway {
                if let Some(old) = cur.gateway.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok()) {
                    ops.push(Op::delete(IPS.name, ip_key(uuid, old), Cond::Any));
                }
                if let Some(gw) = next.gateway.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok()) {
                    if let Some((rec, _)) = self.read::<IpRecord>(IPS.name, &ip_key(uuid, gw)).await?
                        && let Some(mac) = &rec.nic
                    {
                        return Err(ApiError::invalid_parameters(vec![FieldError::invalid(
                            "gateway",
                            format!("{gw} is held by NIC {mac}"),
                        )]));
                    }
                    ops.push(Op::put(IPS.name, ip_key(uuid, gw), encode(&gateway_record(&next, gw)), Cond::Any));
                }
            }
            match self.store.batch(ops).await {
                Ok(_) => {
                    if next.gateway != cur.gateway {
                        self.ip_cache.forget(uuid);
                    }
                    return Ok(next);
                }
                Err(StoreError::Conflict { op_index: 0, .. }) => continue,
                Err(StoreError::Conflict { .. }) => return Err(name_taken(&next.name)),
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("network {uuid} kept changing; retry")))
    }

    /// Refused while NICs or pools use the network; removes its IP records with it.
    pub async fn delete_network(&self, uuid: Uuid) -> Result<(), ApiError> {
        let (net, generation) = self.get_network(uuid).await?;
        if net.fabric
            && let Some(owner) = net.owner_uuids.as_ref().and_then(|o| o.first())
        {
            return self.delete_fabric_network(*owner, net.vlan_id, &uuid.to_string()).await;
        }
        let nics: Vec<Nic> = self.list(NICS.name, &ListQuery::filter(Filter::eq("network_uuid", uuid.to_string())).page(20, 0)).await?;
        let pools: Vec<NetworkPool> = self.list(NETWORK_POOLS.name, &ListQuery::filter(Filter::has("networks", uuid.to_string()))).await?;
        if !nics.is_empty() || !pools.is_empty() {
            let users: Vec<(&str, String)> =
                nics.iter().map(|n| ("nic", n.mac.clone())).chain(pools.iter().map(|p| ("network_pool", p.uuid.to_string()))).collect();
            return Err(in_use(&format!("network {uuid}"), &users));
        }
        let ips = self.store.list(IPS.name, &ListQuery::filter(Filter::eq("network_uuid", uuid.to_string()))).await.map_err(store_error)?;
        let mut ops = vec![
            Op::delete(NETWORKS.name, uuid.to_string(), Cond::Generation(generation)),
            Op::delete(NETWORK_NAMES.name, &net.name, Cond::Any),
        ];
        ops.extend(ips.into_iter().map(|o| Op::delete(IPS.name, o.key, Cond::Generation(o.generation))));
        self.store.batch(ops).await.map_err(|e| {
            if e.is_conflict() {
                ApiError::conflict("ConcurrentModification", format!("network {uuid} changed while being deleted; retry"))
            } else {
                store_error(e)
            }
        })?;
        self.ip_cache.forget(uuid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_keys() {
        let a = Subnet::parse("10.0.0.0/24").unwrap();
        assert!(overlaps(a, Subnet::parse("10.0.0.0/16").unwrap()));
        assert!(!overlaps(a, Subnet::parse("10.0.1.0/24").unwrap()));
        let k1 = ip_key(Uuid::nil(), "10.0.0.9".parse().unwrap());
        let k2 = ip_key(Uuid::nil(), "10.0.0.10".parse().unwrap());
        assert!(k1 < k2);
    }
}
