//! NAPI network pools: ordered lists of networks tried in turn.

use nereid_store::{Cond, Filter, ListQuery, Op, Path, StoreError};
use nereid_types::network::{self, Network, NetworkPool};
use nereid_types::query::Query;
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::networks::{name_claim, name_taken, rename_ops};
use super::{App, RETRIES, encode, store_error};
use crate::buckets::{NETWORK_NAMES, NETWORK_POOLS, NETWORKS};

impl App {
    pub async fn get_pool(&self, uuid: Uuid) -> Result<(NetworkPool, i64), ApiError> {
        self.read(NETWORK_POOLS.name, &uuid.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("network pool {uuid} does not exist")))
    }

    pub async fn list_pools(&self, q: &Query) -> Result<Vec<NetworkPool>, ApiError> {
        let mut parts = Vec::new();
        if let Some(n) = q.str("name") {
            parts.push(Filter::eq("name", n));
        }
        if let Some(n) = q.str("networks") {
            parts.push(Filter::has("networks", n));
        }
        if let Some(f) = q.str("family") {
            parts.push(Filter::eq("family", f));
        }
        if let Some(o) = q.str("provisionable_by") {
            parts.push(Filter::Or(vec![Filter::has("owner_uuids", o), Filter::Absent(Path::field("owner_uuids"))]));
        }
        self.list(
            NETWORK_POOLS.name,
            &ListQuery::filter(Filter::and(parts))
                .sort(Path::field("name"), nereid_store::Kind::Text, false)
                .page(q.limit(1000), q.offset()),
        )
        .await
    }

    async fn pool_members(
        &self,
        input: &Map<String, Value>,
        current: Option<&NetworkPool>,
    ) -> Result<Vec<(Uuid, Option<Network>)>, ApiError> {
        let ids: Vec<Uuid> = match input.get("networks") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).filter_map(|s| Uuid::parse_str(s).ok()).collect(),
            Some(_) => {
                return Err(ApiError::invalid_parameters(vec![FieldError::invalid("networks", "must be an array of network UUIDs")]));
            }
            None => current.map(|c| c.networks.clone()).unwrap_or_default(),
        };
        let mut out = Vec::new();
        for id in ids {
            out.push((id, self.read::<Network>(NETWORKS.name, &id.to_string()).await?.map(|(n, _)| n)));
        }
        Ok(out)
    }

    pub async fn create_pool(&self, input: &Map<String, Value>) -> Result<NetworkPool, ApiError> {
        let members = self.pool_members(input, None).await?;
        let pool = network::check_pool(None, input, &members)?;
        let ops = vec![
            Op::put(NETWORK_NAMES.name, &pool.name, name_claim("network_pool", pool.uuid), Cond::Absent),
            Op::put(NETWORK_POOLS.name, pool.uuid.to_string(), encode(&pool), Cond::Absent),
        ];
        match self.store.batch(ops).await {
            Ok(_) => Ok(pool),
            Err(StoreError::Conflict { op_index: 0, .. }) => Err(name_taken(&pool.name)),
            Err(e) => Err(store_error(e)),
        }
    }

    pub async fn update_pool(&self, uuid: Uuid, input: &Map<String, Value>) -> Result<NetworkPool, ApiError> {
        for _ in 0..RETRIES {
            let (cur, generation) = self.get_pool(uuid).await?;
            let members = self.pool_members(input, Some(&cur)).await?;
            let next = network::check_pool(Some(&cur), input, &members)?;
            let mut ops = vec![Op::put(NETWORK_POOLS.name, uuid.to_string(), encode(&next), Cond::Generation(generation))];
            ops.extend(rename_ops("network_pool", uuid, &cur.name, &next.name));
            match self.store.batch(ops).await {
                Ok(_) => return Ok(next),
                Err(StoreError::Conflict { op_index: 0, .. }) => continue,
                Err(StoreError::Conflict { .. }) => return Err(name_taken(&next.name)),
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict("ConcurrentModification", format!("network pool {uuid} kept changing; retry")))
    }

    pub async fn delete_pool(&self, uuid: Uuid) -> Result<(), ApiError> {
        let (pool, generation) = self.get_pool(uuid).await?;
        let ops = vec![
            Op::delete(NETWORK_POOLS.name, uuid.to_string(), Cond::Generation(generation)),
            Op::delete(NETWORK_NAMES.name, &pool.name, Cond::Any),
        ];
        self.store.batch(ops).await.map(|_| ()).map_err(store_error)
    }
}
