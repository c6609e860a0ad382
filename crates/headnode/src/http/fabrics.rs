//! NAPI endpoints: `/fabrics/{owner_uuid}/vlans[/{vlan_id}[/networks[/{uuid}]]]` (an
//! operator acts on any account's fabric), and Nereid's `/fabric_vlans` listing every
//! account's VLANs. Fabric networks also appear in `GET /networks` (`fabric=true`).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::fabric::{self, NETWORK_FIELDS, VLAN_FIELDS};
use nereid_types::query::{Param, QKind};
use nereid_types::spec::Usage;
use nereid_types::{ApiError, FieldError};
use serde_json::Value;
use uuid::Uuid;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json, ok, parse_query, path_uuid, read_object};

const ALL_PARAMS: &[Param] = &[Param::new("owner_uuid", QKind::Uuid, "Only this account's VLANs.")];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, body, response| Doc { id, tag: "NAPI", summary, query: &[], body, response };
    let net_out = nereid_types::network::FIELDS;
    vec![
        Route::new(
            Method::GET,
            "/fabric_vlans",
            Doc {
                id: "ListAllFabricVLANs",
                tag: "NAPI",
                summary: "Every account's fabric VLANs (Nereid), by owner and VLAN id.",
                query: ALL_PARAMS,
                body: BodyDoc::None,
                response: RespDoc::List(VLAN_FIELDS),
            },
            list_all_vlans,
        ),
        Route::new(
            Method::GET,
            "/fabrics/{owner_uuid}/vlans",
            doc("ListFabricVLANs", "An account's fabric VLANs.", BodyDoc::None, RespDoc::List(VLAN_FIELDS)),
            list_vlans,
        ),
        Route::new(
            Method::POST,
            "/fabrics/{owner_uuid}/vlans",
            doc(
                "CreateFabricVLAN",
                "Create a fabric VLAN; it gets a VXLAN segment (vnet_id) unique in the cloud.",
                BodyDoc::Fields(VLAN_FIELDS, Usage::Create),
                RespDoc::Object(200, VLAN_FIELDS),
            ),
            create_vlan,
        ),
        Route::new(
            Method::GET,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}",
            doc("GetFabricVLAN", "A fabric VLAN.", BodyDoc::None, RespDoc::Object(200, VLAN_FIELDS)),
            get_vlan,
        ),
        Route::new(
            Method::PUT,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}",
            doc(
                "UpdateFabricVLAN",
                "Rename or describe a fabric VLAN.",
                BodyDoc::Fields(VLAN_FIELDS, Usage::Update),
                RespDoc::Object(200, VLAN_FIELDS),
            ),
            update_vlan,
        ),
        Route::new(
            Method::DELETE,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}",
            doc("DeleteFabricVLAN", "Delete a fabric VLAN that has no networks.", BodyDoc::None, RespDoc::Empty(204)),
            delete_vlan,
        ),
        Route::new(
            Method::GET,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}/networks",
            doc("ListFabricNetworks", "The networks of a fabric VLAN.", BodyDoc::None, RespDoc::List(net_out)),
            list_networks,
        ),
        Route::new(
            Method::POST,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}/networks",
            doc(
                "CreateFabricNetwork",
                "Create a fabric network (RFC 1918 subnet, not overlapping the account's other fabric networks; MTU from the underlay nic tag).",
                BodyDoc::Fields(NETWORK_FIELDS, Usage::Create),
                RespDoc::Object(200, net_out),
            ),
            create_network,
        ),
        Route::new(
            Method::GET,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}/networks/{uuid}",
            doc("GetFabricNetwork", "A fabric network.", BodyDoc::None, RespDoc::Object(200, net_out)),
            get_network,
        ),
        Route::new(
            Method::PUT,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}/networks/{uuid}",
            doc(
                "UpdateFabricNetwork",
                "Update a fabric network (its subnet and gateway are fixed).",
                BodyDoc::Fields(NETWORK_FIELDS, Usage::Update),
                RespDoc::Object(200, net_out),
            ),
            update_network,
        ),
        Route::new(
            Method::DELETE,
            "/fabrics/{owner_uuid}/vlans/{vlan_id}/networks/{uuid}",
            doc("DeleteFabricNetwork", "Delete a fabric network no NIC uses.", BodyDoc::None, RespDoc::Empty(204)),
            delete_network,
        ),
    ]
}

/// A VLAN id from the path (NAPI's message when it is not one).
pub fn path_vlan(s: &str) -> Result<u16, ApiError> {
    fabric::parse_vlan_id(&Value::String(s.to_string())).map_err(|m| ApiError::invalid_parameters(vec![FieldError::invalid("vlan_id", m)]))
}

fn owner_vlan(owner: &str, vlan: &str) -> Result<(Uuid, u16), super::HttpError> {
    Ok((path_uuid(Api::Napi, "owner_uuid", owner)?, path_vlan(vlan)?))
}

async fn list_all_vlans(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, ALL_PARAMS, raw.as_deref())?;
    let owner = q.str("owner_uuid").and_then(|o| Uuid::parse_str(o).ok());
    let vlans = s.app.list_fabric_vlans(owner).await?;
    ok(&vlans.iter().map(fabric::render_vlan).collect::<Vec<_>>())
}

async fn list_vlans(State(s): State<AppState>, Path(owner): Path<String>) -> HttpResult {
    let owner = path_uuid(Api::Napi, "owner_uuid", &owner)?;
    let vlans = s.app.list_fabric_vlans(Some(owner)).await?;
    ok(&vlans.iter().map(fabric::render_vlan).collect::<Vec<_>>())
}

async fn create_vlan(State(s): State<AppState>, Path(owner): Path<String>, body: Body) -> HttpResult {
    let owner = path_uuid(Api::Napi, "owner_uuid", &owner)?;
    let input = read_object(body).await?;
    ok(&fabric::render_vlan(&s.app.create_fabric_vlan(owner, &input).await?))
}

async fn get_vlan(State(s): State<AppState>, Path((owner, vlan)): Path<(String, String)>) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    ok(&fabric::render_vlan(&s.app.get_fabric_vlan(owner, vlan).await?.0))
}

async fn update_vlan(State(s): State<AppState>, Path((owner, vlan)): Path<(String, String)>, body: Body) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    let input = read_object(body).await?;
    ok(&fabric::render_vlan(&s.app.update_fabric_vlan(owner, vlan, &input).await?))
}

async fn delete_vlan(State(s): State<AppState>, Path((owner, vlan)): Path<(String, String)>) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    s.app.delete_fabric_vlan(owner, vlan).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_networks(State(s): State<AppState>, Path((owner, vlan)): Path<(String, String)>) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    s.app.get_fabric_vlan(owner, vlan).await?;
    let nets = s.app.list_fabric_networks(Some(owner), Some(vlan)).await?;
    ok(&nets.iter().map(fabric::render_network).collect::<Vec<_>>())
}

async fn create_network(State(s): State<AppState>, Path((owner, vlan)): Path<(String, String)>, body: Body) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    let input = read_object(body).await?;
    ok(&fabric::render_network(&s.app.create_fabric_network(owner, vlan, &input).await?))
}

async fn get_network(State(s): State<AppState>, Path((owner, vlan, id)): Path<(String, String, String)>) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    ok(&fabric::render_network(&s.app.get_fabric_network(owner, vlan, &id).await?.0))
}

async fn update_network(State(s): State<AppState>, Path((owner, vlan, id)): Path<(String, String, String)>, body: Body) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    let input = read_object(body).await?;
    Ok(json(StatusCode::OK, &fabric::render_network(&s.app.update_fabric_network(owner, vlan, &id, &input).await?)))
}

async fn delete_network(State(s): State<AppState>, Path((owner, vlan, id)): Path<(String, String, String)>) -> HttpResult {
    let (owner, vlan) = owner_vlan(&owner, &vlan)?;
    s.app.delete_fabric_network(owner, vlan, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
