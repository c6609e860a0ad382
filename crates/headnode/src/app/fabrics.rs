//! Fabric VLANs and fabric networks (NAPI's `/fabrics/:owner/vlans[/:vlan_id/networks]`),
//! shared by the operator API and CloudAPI.
//!
//! ```text
//!   fabric_vlans/<owner>/<vlan_id>   FabricVlan {vlan_id, name, description, vni}
//!   fabric_vnis/<vni>                the claim that keeps a VNI unique in the cloud
//!                                    (conditional create; another VNI is drawn when taken)
//!   networks/<uuid>                  Network {fabric: true, nic_tag: sdc_overlay, vlan_id,
//!                                    vni, owner_uuids: [owner], internet_nat, mtu}
//!   fabric_network_names/<owner>/<name>  unique names per account (not the cloud-wide
//!                                    network_names: every account may have a "My-Fabric-Network")
//!   fabric_network_names/<owner>/    the account's fabric stamp: rewritten (conditionally)
//!                                    with every network create/delete, so the overlap
//!                                    check of two headnodes cannot both pass
//! ```
//!
//! Every network write also rewrites its VLAN at the generation read, so a VLAN cannot
//! be deleted under a network being created on it. The MTU of fabric networks is the
//! underlay nic tag's (`--fabric-underlay-tag`) minus the VXLAN overhead; when that nic
//! tag does not exist, fabric networks cannot be created and the error says how to fix
//! it (the headnode does not invent an underlay MTU). The validation itself is pure, in
//! `nereid_types::fabric`.

use std::net::Ipv4Addr;

use nereid_store::{Cond, Filter, ListQuery, Op, Path, StoreError};
use nereid_types::ApiError;
use nereid_types::FieldError;
use nereid_types::fabric::{self, FabricVlan};
use nereid_types::network::Network;
use nereid_types::nic::Nic;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::networks::ip_key;
use super::{App, RETRIES, encode, store_error};
use crate::buckets::{FABRIC_NETWORK_NAMES, FABRIC_VLANS, FABRIC_VNIS, IPS, NETWORKS, NIC_TAGS, NICS};

/// The store key of a VLAN.
pub fn vlan_key(owner: Uuid, vlan_id: u16) -> String {
    format!("{owner}/{vlan_id:04}")
}

fn vni_key(vni: u32) -> String {
    format!("{vni:08}")
}

fn name_key(owner: Uuid, name: &str) -> String {
    format!("{owner}/{name}")
}

fn stamp_key(owner: Uuid) -> String {
    format!("{owner}/")
}

/// Triton's 404 for a VLAN the account does not have.
pub fn vlan_not_found(vlan_id: u16) -> ApiError {
    ApiError::not_found(format!("vlan not found: the account has no fabric VLAN {vlan_id}"))
}

fn network_not_found(uuid: &str) -> ApiError {
    ApiError::not_found(format!("network not found: {uuid} is not a network of this fabric VLAN"))
}

/// NAPI's `InUse` (422) with one `UsedBy` entry per user.
fn in_use(message: &str, users: &[(&str, String)]) -> ApiError {
    let errors = users
        .iter()
        .map(|(ty, id)| FieldError { field: String::new(), code: "UsedBy".into(), message: format!("In use by {ty} \"{id}\"") })
        .collect();
    ApiError::new(422, "InUse", message).with_errors(errors)
}

/// The ops that create a fabric network (its name claim first, so a conflict on op 0 is
/// a taken name).
fn network_create_ops(owner: Uuid, net: &Network) -> Vec<Op> {
    let mut ops = vec![
        Op::put(FABRIC_NETWORK_NAMES.name, name_key(owner, &net.name), json!({"uuid": net.uuid}), Cond::Absent),
        Op::put(NETWORKS.name, net.uuid.to_string(), encode(net), Cond::Absent),
    ];
    if let Some(gw) = net.gateway.as_deref().and_then(|g| g.parse::<Ipv4Addr>().ok()) {
        ops.push(Op::put(IPS.name, ip_key(net.uuid, gw), encode(&super::networks::gateway_record(net, gw)), Cond::Any));
    }
    ops
}

fn name_taken(name: &str) -> ApiError {
    let mut e = ApiError::invalid_parameters(vec![FieldError::duplicate(
        "name",
        format!("Already exists: the account has a network named {name}"),
    )]);
    e.message = fabric::NET_NAME_IN_USE.into();
    e
}

fn vlan_used() -> ApiError {
    ApiError::new(422, "InUse", fabric::VLAN_USED).with_errors(vec![FieldError::duplicate("vlan_id", fabric::VLAN_USED)])
}

impl App {
    /// The MTU of fabric networks: the underlay nic tag's minus the VXLAN overhead.
    pub async fn fabric_mtu(&self) -> Result<u32, ApiError> {
        let tag = &self.cfg.fabric.underlay_tag;
        match self.read::<nereid_types::nic_tag::NicTag>(NIC_TAGS.name, tag).await? {
            Some((t, _)) => Ok(fabric::overlay_mtu(t.mtu)),
            None => Err(ApiError::new(
                501,
                "NotImplemented",
                format!(
                    "fabric networks are not set up in this datacenter: their underlay nic tag {tag} does not exist \
                     (an operator creates it with `nereid admin nic-tag create name={tag} mtu=9000`, or starts the \
                     headnode with --fabric-underlay-tag naming an existing nic tag)"
                ),
            )),
        }
    }

    /// The VLANs of `owner`, or of every account (by owner, then id).
    pub async fn list_fabric_vlans(&self, owner: Option<Uuid>) -> Result<Vec<FabricVlan>, ApiError> {
        let q = match owner {
            Some(o) => ListQuery::filter(Filter::eq("owner_uuid", o.to_string())),
            None => ListQuery::all(),
        };
        let mut out: Vec<FabricVlan> = self.list(FABRIC_VLANS.name, &q).await?;
        out.sort_by_key(|v| (v.owner_uuid, v.vlan_id));
        Ok(out)
    }

    pub async fn get_fabric_vlan(&self, owner: Uuid, vlan_id: u16) -> Result<(FabricVlan, i64), ApiError> {
        self.read(FABRIC_VLANS.name, &vlan_key(owner, vlan_id)).await?.ok_or_else(|| vlan_not_found(vlan_id))
    }

    /// Creates a VLAN with a fresh VNI (drawn again while another VLAN holds it).
    pub async fn create_fabric_vlan(&self, owner: Uuid, input: &Map<String, Value>) -> Result<FabricVlan, ApiError> {
        for _ in 0..RETRIES {
            let vlan = fabric::check_vlan_create(owner, input, fabric::random_vni())?;
            match self.store.batch(vlan_create_ops(&vlan)).await {
                Ok(_) => return Ok(vlan),
                Err(StoreError::Conflict { op_index: 0, .. }) => return Err(vlan_used()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", "could not find a free VXLAN segment id; retry"))
    }

    pub async fn update_fabric_vlan(&self, owner: Uuid, vlan_id: u16, input: &Map<String, Value>) -> Result<FabricVlan, ApiError> {
        for _ in 0..RETRIES {
            let (cur, generation) = self.get_fabric_vlan(owner, vlan_id).await?;
            let next = fabric::check_vlan_update(&cur, input)?;
            match self.write(FABRIC_VLANS.name, &vlan_key(owner, vlan_id), &next, Cond::Generation(generation)).await {
                Ok(_) => return Ok(next),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("VLAN {vlan_id} kept changing; retry")))
    }

    /// Refused while networks are on the VLAN; frees its VNI.
    pub async fn delete_fabric_vlan(&self, owner: Uuid, vlan_id: u16) -> Result<(), ApiError> {
        let (vlan, generation) = self.get_fabric_vlan(owner, vlan_id).await?;
        let nets = self.list_fabric_networks(Some(owner), Some(vlan_id)).await?;
        if !nets.is_empty() {
            let users: Vec<(&str, String)> = nets.iter().map(|n| ("network", n.uuid.to_string())).collect();
            return Err(in_use(fabric::NET_ON_VLAN, &users));
        }
        let ops = vec![
            Op::delete(FABRIC_VLANS.name, vlan_key(owner, vlan_id), Cond::Generation(generation)),
            Op::delete(FABRIC_VNIS.name, vni_key(vlan.vni), Cond::Any),
        ];
        self.store.batch(ops).await.map_err(|e| {
            if e.is_conflict() {
                ApiError::conflict("ConcurrentModification", format!("VLAN {vlan_id} changed while being deleted; retry"))
            } else {
                store_error(e)
            }
        })?;
        Ok(())
    }

    /// Fabric networks of `owner` (or every account's), on `vlan_id` if given, by name.
    pub async fn list_fabric_networks(&self, owner: Option<Uuid>, vlan_id: Option<u16>) -> Result<Vec<Network>, ApiError> {
        let mut parts = vec![Filter::eq("fabric", true)];
        if let Some(o) = owner {
            parts.push(Filter::has("owner_uuids", o.to_string()));
        }
        if let Some(v) = vlan_id {
            parts.push(Filter::eq("vlan_id", i64::from(v)));
        }
        self.list(NETWORKS.name, &ListQuery::filter(Filter::and(parts)).sort(Path::field("name"), nereid_store::Kind::Text, false)).await
    }

    /// A fabric network of `owner` on `vlan_id` (404 for any other network).
    pub async fn get_fabric_network(&self, owner: Uuid, vlan_id: u16, id: &str) -> Result<(Network, i64), ApiError> {
        let uuid = Uuid::parse_str(id).map_err(|_| network_not_found(id))?;
        match self.read::<Network>(NETWORKS.name, &uuid.to_string()).await? {
            Some((n, g)) if n.fabric && n.vlan_id == vlan_id && n.provisionable_by(&owner) && n.owner_uuids.is_some() => Ok((n, g)),
            _ => Err(network_not_found(id)),
        }
    }

    /// Creates a fabric network on an existing VLAN of `owner`.
    pub async fn create_fabric_network(&self, owner: Uuid, vlan_id: u16, input: &Map<String, Value>) -> Result<Network, ApiError> {
        for _ in 0..RETRIES {
            let (vlan, vlan_gen) = self.get_fabric_vlan(owner, vlan_id).await?;
            let mtu = self.fabric_mtu().await?;
            let net = fabric::check_network_create(&vlan, input, mtu)?;
            let stamp = self.store.get(FABRIC_NETWORK_NAMES.name, &stamp_key(owner)).await.map_err(store_error)?;
            let others = self.list_fabric_networks(Some(owner), None).await?;
            let clash = fabric::overlap_errors(&net, &others);
            if !clash.is_empty() {
                return Err(ApiError::invalid_parameters(clash));
            }
            let mut ops = network_create_ops(owner, &net);
            ops.push(Op::put(FABRIC_VLANS.name, vlan_key(owner, vlan_id), encode(&vlan), Cond::Generation(vlan_gen)));
            ops.push(stamp_op(owner, stamp.map(|o| o.generation)));
            match self.store.batch(ops).await {
                Ok(_) => return Ok(net),
                Err(StoreError::Conflict { op_index: 0, .. }) => return Err(name_taken(&net.name)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("the fabric of {owner} kept changing; retry")))
    }

    pub async fn update_fabric_network(
        &self,
        owner: Uuid,
        vlan_id: u16,
        id: &str,
        input: &Map<String, Value>,
    ) -> Result<Network, ApiError> {
        for _ in 0..RETRIES {
            let (cur, generation) = self.get_fabric_network(owner, vlan_id, id).await?;
            let next = fabric::check_network_update(&cur, input)?;
            let mut ops = vec![Op::put(NETWORKS.name, cur.uuid.to_string(), encode(&next), Cond::Generation(generation))];
            if next.name != cur.name {
                ops.push(Op::delete(FABRIC_NETWORK_NAMES.name, name_key(owner, &cur.name), Cond::Any));
                ops.push(Op::put(FABRIC_NETWORK_NAMES.name, name_key(owner, &next.name), json!({"uuid": cur.uuid}), Cond::Absent));
            }
            match self.store.batch(ops).await {
                Ok(_) => return Ok(next),
                Err(StoreError::Conflict { op_index: 0, .. }) => continue,
                Err(StoreError::Conflict { .. }) => return Err(name_taken(&next.name)),
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("network {id} kept changing; retry")))
    }

    /// Refused while NICs are on the network (NAPI's `InUse` naming them).
    pub async fn delete_fabric_network(&self, owner: Uuid, vlan_id: u16, id: &str) -> Result<(), ApiError> {
        let (net, generation) = self.get_fabric_network(owner, vlan_id, id).await?;
        let nics: Vec<Nic> = self.list(NICS.name, &ListQuery::filter(Filter::eq("network_uuid", net.uuid.to_string())).page(20, 0)).await?;
        if !nics.is_empty() {
            let users: Vec<(&str, String)> = nics.iter().map(|n| ("nic", n.mac.clone())).collect();
            return Err(in_use(fabric::NIC_ON_NET, &users));
        }
        let stamp = self.store.get(FABRIC_NETWORK_NAMES.name, &stamp_key(owner)).await.map_err(store_error)?;
        let ips =
            self.store.list(IPS.name, &ListQuery::filter(Filter::eq("network_uuid", net.uuid.to_string()))).await.map_err(store_error)?;
        let mut ops = vec![
            Op::delete(NETWORKS.name, net.uuid.to_string(), Cond::Generation(generation)),
            Op::delete(FABRIC_NETWORK_NAMES.name, name_key(owner, &net.name), Cond::Any),
            stamp_op(owner, stamp.map(|o| o.generation)),
        ];
        ops.extend(ips.into_iter().map(|o| Op::delete(IPS.name, o.key, Cond::Generation(o.generation))));
        self.store.batch(ops).await.map_err(|e| {
            if e.is_conflict() {
                ApiError::conflict("ConcurrentModification", format!("network {id} changed while being deleted; retry"))
            } else {
                store_error(e)
            }
        })?;
        Ok(())
    }

    /// The ops that give a new account Triton's default fabric (VLAN 2 "default" and
    /// "My-Fabric-Network" 192.168.128.0/22 with NAT), for the account's own batch. A
    /// conflict on them means the drawn VNI was taken: the caller draws again.
    /// Returns the ops and the network (the account's default network, as in Triton).
    pub async fn default_fabric_ops(&self, owner: Uuid) -> Result<(Vec<Op>, Uuid), ApiError> {
        let mtu = self.fabric_mtu().await?;
        let vlan = FabricVlan {
            owner_uuid: owner,
            vlan_id: fabric::DEFAULT_VLAN_ID,
            name: fabric::DEFAULT_VLAN_NAME.into(),
            description: None,
            vni: fabric::random_vni(),
        };
        let net = fabric::check_network_create(&vlan, &fabric::default_network_body(), mtu)?;
        let mut ops = vlan_create_ops(&vlan);
        ops.extend(network_create_ops(owner, &net));
        ops.push(stamp_op(owner, None));
        Ok((ops, net.uuid))
    }
}

fn vlan_create_ops(vlan: &FabricVlan) -> Vec<Op> {
    vec![
        Op::put(FABRIC_VLANS.name, vlan_key(vlan.owner_uuid, vlan.vlan_id), encode(vlan), Cond::Absent),
        Op::put(FABRIC_VNIS.name, vni_key(vlan.vni), json!({"owner_uuid": vlan.owner_uuid, "vlan_id": vlan.vlan_id}), Cond::Absent),
    ]
}

fn stamp_op(owner: Uuid, generation: Option<i64>) -> Op {
    let cond = match generation {
        Some(g) => Cond::Generation(g),
        None => Cond::Absent,
    };
    Op::put(FABRIC_NETWORK_NAMES.name, stamp_key(owner), json!({"changed": nereid_types::time::now_iso()}), cond)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_and_never_collide() {
        let o = Uuid::nil();
        assert!(vlan_key(o, 2) < vlan_key(o, 10));
        assert_ne!(stamp_key(o), name_key(o, "x"));
        assert_eq!(vni_key(42), "00000042");
        let e = in_use(fabric::NIC_ON_NET, &[("nic", "90:b8:d0:00:00:01".into())]);
        assert_eq!((e.status, e.code.as_str(), e.errors[0].message.as_str()), (422, "InUse", "In use by nic \"90:b8:d0:00:00:01\""));
    }
}
