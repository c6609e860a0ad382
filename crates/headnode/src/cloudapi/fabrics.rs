//! CloudAPI fabrics: `/:login/fabrics/default/vlans[/:vlan_id[/networks[/:id]]]`, always
//! the scoped account's own fabric (another account's VLAN ids are simply not found).
//!
//! Input is checked as sdc-cloudapi's schema does (`vlan_id` 2-4095 there, then NAPI's
//! 0-4094-not-1), and NAPI's errors are translated as sdc-cloudapi's `translateErr`
//! does: a 404 stays `ResourceNotFound` (the CLI's exit status 3), anything else becomes
//! `InvalidArgument` whose message lists each field error as `property "<field>":
//! <message>` (or the bare message of an in-use entry), joined with ", ".

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::ApiError;
use nereid_types::fabric::{self, FabricVlan};
use nereid_types::network::Network;
use nereid_types::spec::{Field, Kind};
use serde_json::{Map, Value, json};

use super::{BodyParams, CloudError, CloudResult, Scoped, render, reply};
use crate::http::{AppState, Auth, BodyDoc, Doc, RespDoc, Route};

const VLAN: &[Field] = &[
    Field::new("vlan_id", Kind::Int { min: 2, max: 4095, multiple_of: None, unit: None }, "VLAN ID (2-4094)."),
    Field::new("name", Kind::Str { max: 64, check: None }, "Name."),
    Field::new("description", Kind::Str { max: 1024, check: None }, "Description."),
];

fn doc(id: &'static str, summary: &'static str, body: BodyDoc, response: RespDoc) -> Doc {
    Doc { id, tag: "CloudAPI", summary, query: &[], body, response }
}

fn network_out() -> Value {
    json!({"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}, "public": {"type": "boolean"},
        "fabric": {"type": "boolean"}, "description": {"type": "string"}, "subnet": {"type": "string"},
        "provision_start_ip": {"type": "string"}, "provision_end_ip": {"type": "string"}, "gateway": {"type": "string"},
        "resolvers": {"type": "array", "items": {"type": "string"}}, "routes": {"type": "object"},
        "internet_nat": {"type": "boolean"}, "vlan_id": {"type": "integer"}}})
}

/// The create body: NAPI's fields, plus the `vlan_id` the CLI repeats from the path.
fn network_create_schema() -> Value {
    let mut s = nereid_types::spec::object_schema(fabric::NETWORK_FIELDS, nereid_types::spec::Usage::Create);
    s["properties"]["vlan_id"] = json!({"type": "integer", "description": "The path's VLAN id again (the CLI sends it; ignored)."});
    s
}

fn network_list() -> Value {
    json!({"type": "array", "items": network_out()})
}

pub fn routes() -> Vec<Route> {
    let vlans = "/{account}/fabrics/default/vlans";
    let vlan = "/{account}/fabrics/default/vlans/{vlan_id}";
    let nets = "/{account}/fabrics/default/vlans/{vlan_id}/networks";
    let net = "/{account}/fabrics/default/vlans/{vlan_id}/networks/{id}";
    let update_body = BodyDoc::Fields(&VLAN[1..], nereid_types::spec::Usage::Update);
    let net_fields = BodyDoc::Schema(network_create_schema);
    let net_update = BodyDoc::Fields(fabric::NETWORK_FIELDS, nereid_types::spec::Usage::Update);
    vec![
        Route::new(
            Method::GET,
            vlans,
            doc("ListFabricVLANs", "The account's fabric VLANs.", BodyDoc::None, RespDoc::List(VLAN)),
            list_vlans,
        ),
        Route::new(
            Method::POST,
            vlans,
            doc(
                "CreateFabricVLAN",
                "Create a fabric VLAN.",
                BodyDoc::Fields(VLAN, nereid_types::spec::Usage::Create),
                RespDoc::Object(201, VLAN),
            ),
            create_vlan,
        ),
        Route::new(Method::GET, vlan, doc("GetFabricVLAN", "A fabric VLAN.", BodyDoc::None, RespDoc::Object(200, VLAN)), get_vlan),
        Route::new(
            Method::PUT,
            vlan,
            doc("UpdateFabricVLAN", "Rename or describe a fabric VLAN.", update_body, RespDoc::Object(202, VLAN)),
            update_vlan,
        ),
        Route::new(
            Method::POST,
            vlan,
            doc(
                "UpdateFabricVLANByPost",
                "The same as PUT (the triton CLI's `vlan update` posts).",
                update_body,
                RespDoc::Object(202, VLAN),
            ),
            update_vlan,
        ),
        Route::new(
            Method::DELETE,
            vlan,
            doc("DeleteFabricVLAN", "Delete a fabric VLAN that has no networks.", BodyDoc::None, RespDoc::Empty(204)),
            delete_vlan,
        ),
        Route::new(
            Method::GET,
            nets,
            doc("ListFabricNetworks", "The networks of a fabric VLAN.", BodyDoc::None, RespDoc::Schema(200, network_list)),
            list_networks,
        ),
        Route::new(
            Method::POST,
            nets,
            doc("CreateFabricNetwork", "Create a fabric network.", net_fields, RespDoc::Schema(201, network_out)),
            create_network,
        ),
        Route::new(
            Method::GET,
            net,
            doc("GetFabricNetwork", "A fabric network.", BodyDoc::None, RespDoc::Schema(200, network_out)),
            get_network,
        ),
        Route::new(
            Method::PUT,
            net,
            doc(
                "UpdateFabricNetwork",
                "Update a fabric network (subnet and gateway are fixed).",
                net_update,
                RespDoc::Schema(200, network_out),
            ),
            update_network,
        ),
        Route::new(
            Method::DELETE,
            net,
            doc("DeleteFabricNetwork", "Delete a fabric network no instance uses.", BodyDoc::None, RespDoc::Empty(204)),
            delete_network,
        ),
    ]
    .into_iter()
    .map(|r| r.auth(Auth::Signature))
    .collect()
}

/// sdc-cloudapi's `translateErr` for NAPI's answers.
pub fn translate(e: ApiError) -> CloudError {
    if e.status == 404 {
        return CloudError(ApiError::new(404, "ResourceNotFound", e.message));
    }
    if e.status >= 500 || e.status == 401 || e.status == 403 {
        return CloudError::from(e);
    }
    let message = if e.errors.is_empty() {
        e.message.clone()
    } else {
        e.errors
            .iter()
            .map(|f| if f.field.is_empty() { f.message.clone() } else { format!("property \"{}\": {}", f.field, f.message) })
            .collect::<Vec<_>>()
            .join(", ")
    };
    CloudError(ApiError::new(409, "InvalidArgument", message))
}

fn invalid(message: String) -> CloudError {
    CloudError(ApiError::new(409, "InvalidArgument", message))
}

/// sdc-cloudapi's schema check of a VLAN id (an integer, 2-4095), then NAPI's (0-4094, not 1).
pub fn cloud_vlan_id(v: &Value) -> Result<u16, CloudError> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        None => Err(invalid("property \"vlan_id\": must be an integer".into())),
        Some(n) if n < 2 => Err(invalid("property \"vlan_id\": must have a minimum value of 2".into())),
        Some(n) if n > 4095 => Err(invalid("property \"vlan_id\": must have a maximum value of 4095".into())),
        Some(n) => fabric::parse_vlan_id(&json!(n)).map_err(|m| invalid(format!("property \"vlan_id\": {m}"))),
    }
}

/// A VLAN as CloudAPI shows it (no VNI, no owner).
pub fn render_vlan(v: &FabricVlan) -> Value {
    let mut out = json!({"name": v.name, "vlan_id": v.vlan_id});
    if let Some(d) = &v.description {
        out["description"] = json!(d);
    }
    out
}

fn render_network(n: &Network) -> Value {
    render::network(n)
}

async fn list_vlans(State(s): State<AppState>, Scoped(acct): Scoped) -> CloudResult {
    let vlans = s.app.list_fabric_vlans(Some(acct.uuid)).await.map_err(translate)?;
    Ok(reply(StatusCode::OK, &vlans.iter().map(render_vlan).collect::<Vec<_>>()))
}

async fn create_vlan(State(s): State<AppState>, Scoped(acct): Scoped, BodyParams(mut body): BodyParams) -> CloudResult {
    let Some(raw) = body.get("vlan_id").cloned() else {
        return Err(super::missing("vlan_id"));
    };
    let id = cloud_vlan_id(&raw)?;
    body.insert("vlan_id".into(), json!(id));
    let vlan = s.app.create_fabric_vlan(acct.uuid, &body).await.map_err(translate)?;
    Ok(reply(StatusCode::CREATED, &render_vlan(&vlan)))
}

async fn get_vlan(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, vlan)): Path<(String, String)>) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    let (v, _) = s.app.get_fabric_vlan(acct.uuid, id).await.map_err(translate)?;
    Ok(reply(StatusCode::OK, &render_vlan(&v)))
}

async fn update_vlan(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, vlan)): Path<(String, String)>,
    BodyParams(body): BodyParams,
) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    let input: Map<String, Value> = body.into_iter().filter(|(k, _)| k != "vlan_id").collect();
    let v = s.app.update_fabric_vlan(acct.uuid, id, &input).await.map_err(translate)?;
    Ok(reply(StatusCode::ACCEPTED, &render_vlan(&v)))
}

async fn delete_vlan(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, vlan)): Path<(String, String)>) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    s.app.delete_fabric_vlan(acct.uuid, id).await.map_err(translate)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_networks(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, vlan)): Path<(String, String)>) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    s.app.get_fabric_vlan(acct.uuid, id).await.map_err(translate)?;
    let nets = s.app.list_fabric_networks(Some(acct.uuid), Some(id)).await.map_err(translate)?;
    Ok(reply(StatusCode::OK, &nets.iter().map(render_network).collect::<Vec<_>>()))
}

async fn create_network(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, vlan)): Path<(String, String)>,
    BodyParams(body): BodyParams,
) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    if let Some(r) = body.get("resolvers").and_then(Value::as_array)
        && r.len() > 4
    {
        return Err(invalid("property \"resolvers\": maximum of 4 resolvers".into()));
    }
    let net = s.app.create_fabric_network(acct.uuid, id, &body).await.map_err(translate)?;
    Ok(reply(StatusCode::CREATED, &render_network(&net)))
}

async fn get_network(State(s): State<AppState>, Scoped(acct): Scoped, Path((_, vlan, net)): Path<(String, String, String)>) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    let (n, _) = s.app.get_fabric_network(acct.uuid, id, &net).await.map_err(translate)?;
    Ok(reply(StatusCode::OK, &render_network(&n)))
}

async fn update_network(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, vlan, net)): Path<(String, String, String)>,
    BodyParams(body): BodyParams,
) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    if body.contains_key("id") {
        return Err(invalid("property \"id\": cannot be set".into()));
    }
    let n = s.app.update_fabric_network(acct.uuid, id, &net, &body).await.map_err(translate)?;
    Ok(reply(StatusCode::OK, &render_network(&n)))
}

async fn delete_network(
    State(s): State<AppState>,
    Scoped(acct): Scoped,
    Path((_, vlan, net)): Path<(String, String, String)>,
) -> CloudResult {
    let id = cloud_vlan_id(&json!(vlan))?;
    if acct.default_network.is_some_and(|d| d.to_string() == net) {
        return Err(invalid("cannot delete default network".into()));
    }
    s.app.delete_fabric_network(acct.uuid, id, &net).await.map_err(translate)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_types::FieldError;

    #[test]
    fn errors_read_as_sdc_cloudapi_translates_them() {
        let e = translate(ApiError::invalid_parameters(vec![FieldError::invalid("subnet", fabric::OVERLAP_MSG)])).0;
        assert_eq!(
            (e.status, e.code.as_str(), e.message.as_str()),
            (409, "InvalidArgument", "property \"subnet\": subnet overlaps with another network")
        );
        let e = translate(ApiError::not_found("vlan not found")).0;
        assert_eq!((e.status, e.code.as_str()), (404, "ResourceNotFound"));
        let e = cloud_vlan_id(&json!(4096)).unwrap_err().0;
        assert_eq!(e.message, "property \"vlan_id\": must have a maximum value of 4095");
        assert_eq!(cloud_vlan_id(&json!(4095)).unwrap_err().0.message, format!("property \"vlan_id\": {}", fabric::VLAN_MSG));
        assert_eq!(cloud_vlan_id(&json!("7")).ok(), Some(7));
    }
}
