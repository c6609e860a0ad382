//! NAPI nic tags.

use nereid_store::{Cond, Filter, ListQuery, Op};
use nereid_types::network::Network;
use nereid_types::nic_tag::{self, NicTag};
use nereid_types::{ApiError, FieldError};
use serde_json::{Map, Value, json};

use super::{App, encode, store_error};
use crate::buckets::{NETWORKS, NIC_TAGS};

/// NAPI's "in use" error: 422 `InUse`, listing what uses the resource.
pub fn in_use(what: &str, users: &[(&str, String)]) -> ApiError {
    let errors = users
        .iter()
        .map(|(ty, id)| FieldError { field: (*ty).to_string(), code: "UsedBy".into(), message: format!("in use by {ty} {id}") })
        .collect();
    ApiError::new(
        422,
        "InUse",
        format!("{what} is in use by {}", users.iter().map(|(t, i)| format!("{t} {i}")).collect::<Vec<_>>().join(", ")),
    )
    .with_errors(errors)
}

impl App {
    pub async fn create_nic_tag(&self, input: &Map<String, Value>) -> Result<NicTag, ApiError> {
        let tag = nic_tag::check_create(input)?;
        match self.write(NIC_TAGS.name, &tag.name, &tag, Cond::Absent).await {
            Ok(_) => Ok(tag),
            Err(e) if e.is_conflict() => {
                Err(ApiError::invalid_parameters(vec![FieldError::duplicate("name", format!("nic tag {} already exists", tag.name))]))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    pub async fn get_nic_tag(&self, name: &str) -> Result<(NicTag, i64), ApiError> {
        self.read(NIC_TAGS.name, name).await?.ok_or_else(|| ApiError::not_found(format!("nic tag {name} does not exist")))
    }

    pub async fn list_nic_tags(&self, limit: i64, offset: i64) -> Result<Vec<NicTag>, ApiError> {
        self.list(NIC_TAGS.name, &ListQuery::all().page(limit, offset)).await
    }

    async fn networks_on_tag(&self, name: &str) -> Result<Vec<Network>, ApiError> {
        self.list(NETWORKS.name, &ListQuery::filter(Filter::eq("nic_tag", name))).await
    }

    /// Renames or changes the MTU; refused while networks would be left behind.
    pub async fn update_nic_tag(&self, name: &str, input: &Map<String, Value>) -> Result<NicTag, ApiError> {
        let (cur, generation) = self.get_nic_tag(name).await?;
        let next = nic_tag::check_update(&cur, input)?;
        let nets = self.networks_on_tag(name).await?;
        if next.name != cur.name && !nets.is_empty() {
            return Err(in_use(&format!("nic tag {name}"), &nets.iter().map(|n| ("network", n.uuid.to_string())).collect::<Vec<_>>()));
        }
        let too_big: Vec<FieldError> = nets
            .iter()
            .filter(|n| n.mtu > next.mtu)
            .map(|n| FieldError::invalid("mtu", format!("network {} ({}) has MTU {}, above {}", n.name, n.uuid, n.mtu, next.mtu)))
            .collect();
        if !too_big.is_empty() {
            return Err(ApiError::invalid_parameters(too_big));
        }
        let ops = if next.name == cur.name {
            vec![Op::put(NIC_TAGS.name, &cur.name, encode(&next), Cond::Generation(generation))]
        } else {
            vec![
                Op::delete(NIC_TAGS.name, &cur.name, Cond::Generation(generation)),
                Op::put(NIC_TAGS.name, &next.name, encode(&next), Cond::Absent),
            ]
        };
        match self.store.batch(ops).await {
            Ok(_) => Ok(next),
            Err(nereid_store::StoreError::Conflict { op_index: 1, .. }) => {
                Err(ApiError::invalid_parameters(vec![FieldError::duplicate("name", format!("nic tag {} already exists", next.name))]))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    pub async fn delete_nic_tag(&self, name: &str) -> Result<(), ApiError> {
        let (_, generation) = self.get_nic_tag(name).await?;
        let nets = self.networks_on_tag(name).await?;
        if !nets.is_empty() {
            return Err(in_use(&format!("nic tag {name}"), &nets.iter().map(|n| ("network", n.uuid.to_string())).collect::<Vec<_>>()));
        }
        self.store.delete(NIC_TAGS.name, name, Cond::Generation(generation)).await.map_err(store_error)
    }
}

/// The rendered tag.
pub fn render(t: &NicTag) -> Value {
    json!(nic_tag::render(t))
}
