//! NAPI endpoints: `/networks`, and ProvisionNic (`POST /networks/{uuid}/nics`).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::network::FIELDS;
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::spec::Usage;

use super::nics::render_one;
use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json, ok, parse_query, path_uuid, read_object};

const LIST_PARAMS: &[Param] = &[
    Param::new("name", QKind::Str { max: 4096 }, "A name, or a JSON array of names."),
    Param::new("nic_tag", QKind::Str { max: 1024 }, "Nic tags (comma-separated)."),
    Param::new("vlan_id", QKind::Int { min: 0, max: 4094 }, "VLAN ID."),
    Param::new("fabric", QKind::Bool, "Fabric networks only (true) or none (false)."),
    Param::new("family", QKind::Enum(&["ipv4"]), "Address family."),
    Param::new("owner_uuid", QKind::Uuid, "Networks listing this owner."),
    Param::new("provisionable_by", QKind::Uuid, "Networks this account may use (its own and public ones)."),
    LIMIT,
    OFFSET,
];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "NAPI", summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/networks",
            doc("ListNetworks", "List networks.", LIST_PARAMS, BodyDoc::None, RespDoc::List(FIELDS)),
            list,
        ),
        Route::new(
            Method::POST,
            "/networks",
            doc(
                "CreateNetwork",
                "Create a network; its gateway is reserved.",
                &[],
                BodyDoc::Fields(FIELDS, Usage::Create),
                RespDoc::Object(200, FIELDS),
            ),
            create,
        ),
        Route::new(
            Method::GET,
            "/networks/{uuid}",
            doc("GetNetwork", "Get a network.", &[], BodyDoc::None, RespDoc::Object(200, FIELDS)),
            get,
        ),
        Route::new(
            Method::PUT,
            "/networks/{uuid}",
            doc(
                "UpdateNetwork",
                "Update a network (subnet, VLAN and nic tag are fixed).",
                &[],
                BodyDoc::Fields(FIELDS, Usage::Update),
                RespDoc::Object(200, FIELDS),
            ),
            update,
        ),
        Route::new(
            Method::DELETE,
            "/networks/{uuid}",
            doc("DeleteNetwork", "Delete a network no NIC or pool uses.", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
        Route::new(
            Method::POST,
            "/networks/{uuid}/nics",
            doc(
                "ProvisionNic",
                "Create a NIC with the next free address of a network or pool.",
                &[],
                BodyDoc::Fields(nereid_types::nic::FIELDS, Usage::Create),
                RespDoc::Object(200, nereid_types::nic::FIELDS),
            ),
            provision_nic,
        ),
    ]
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, LIST_PARAMS, raw.as_deref())?;
    let nets = s.app.list_networks(&q).await?;
    ok(&nets.iter().map(nereid_types::fabric::render_network).collect::<Vec<_>>())
}

async fn create(State(s): State<AppState>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    ok(&s.app.create_network(&input).await?)
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&nereid_types::fabric::render_network(&s.app.get_network(uuid).await?.0))
}

async fn update(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    Ok(json(StatusCode::OK, &nereid_types::fabric::render_network(&s.app.update_network(uuid, &input).await?)))
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    s.app.delete_network(uuid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn provision_nic(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let mut input = read_object(body).await?;
    if input.contains_key("network_uuid") {
        return Err(Api::Napi.invalid(vec![nereid_types::FieldError::invalid("network_uuid", "comes from the path here")]).into());
    }
    input.remove("network_uuid");
    let nic = s.app.provision_nic(uuid, &input).await?;
    render_one(&s, &nic).await
}
