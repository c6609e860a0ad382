//! NAPI endpoints: `/nics`, `/nics/{mac}` (MAC with or without colons).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::nic::{self, FIELDS, Nic, UPDATE_FIELDS};
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::spec::Usage;
use serde_json::Value;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query, read_object};

const fn list_param(name: &'static str) -> Param {
    Param::new(name, QKind::Str { max: 4096 }, "Comma-separated alternatives.")
}
const fn flag_param(name: &'static str) -> Param {
    Param::new(name, QKind::Bool, "NICs with (true) or without (false) this flag.")
}

const LIST_PARAMS: &[Param] = &[
    list_param("owner_uuid"),
    list_param("belongs_to_uuid"),
    list_param("belongs_to_type"),
    list_param("cn_uuid"),
    list_param("network_uuid"),
    list_param("nic_tag"),
    list_param("nic_tags_provided"),
    list_param("state"),
    flag_param("allow_dhcp_spoofing"),
    flag_param("allow_ip_spoofing"),
    flag_param("allow_mac_spoofing"),
    flag_param("allow_restricted_traffic"),
    flag_param("allow_unfiltered_promisc"),
    flag_param("underlay"),
    LIMIT,
    OFFSET,
];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "NAPI", summary, query, body, response };
    vec![
        Route::new(Method::GET, "/nics", doc("ListNics", "List NICs.", LIST_PARAMS, BodyDoc::None, RespDoc::List(FIELDS)), list),
        Route::new(
            Method::POST,
            "/nics",
            doc(
                "CreateNic",
                "Create a NIC; with network_uuid (or ip) it gets an address.",
                &[],
                BodyDoc::Fields(FIELDS, Usage::Create),
                RespDoc::Object(200, FIELDS),
            ),
            create,
        ),
        Route::new(
            Method::GET,
            "/nics/{mac}",
            doc("GetNic", "Get a NIC by MAC (colons optional).", &[], BodyDoc::None, RespDoc::Object(200, FIELDS)),
            get,
        ),
        Route::new(
            Method::PUT,
            "/nics/{mac}",
            doc(
                "UpdateNic",
                "Update a NIC, e.g. fix belongs_to_uuid of an orphan, or move it to another address.",
                &[],
                BodyDoc::Fields(UPDATE_FIELDS, Usage::Update),
                RespDoc::Object(200, FIELDS),
            ),
            update,
        ),
        Route::new(
            Method::DELETE,
            "/nics/{mac}",
            doc("DeleteNic", "Delete a NIC and free its address.", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
    ]
}

/// One NIC rendered with its network's fields.
pub async fn render_one(s: &AppState, nic: &Nic) -> HttpResult {
    let nets = s.app.networks_of(&[nic]).await?;
    ok(&nic::render(nic, nic.network_uuid.and_then(|n| nets.get(&n))))
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, LIST_PARAMS, raw.as_deref())?;
    let nics = s.app.list_nics(&q).await?;
    let nets = s.app.networks_of(&nics.iter().collect::<Vec<_>>()).await?;
    ok(&nics.iter().map(|n| nic::render(n, n.network_uuid.and_then(|id| nets.get(&id)))).collect::<Vec<Value>>())
}

async fn create(State(s): State<AppState>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    let nic = s.app.create_nic(&input).await?;
    render_one(&s, &nic).await
}

async fn get(State(s): State<AppState>, Path(mac): Path<String>) -> HttpResult {
    let (nic, _) = s.app.get_nic(&mac).await?;
    render_one(&s, &nic).await
}

async fn update(State(s): State<AppState>, Path(mac): Path<String>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    let nic = s.app.update_nic(&mac, &input).await?;
    render_one(&s, &nic).await
}

async fn delete(State(s): State<AppState>, Path(mac): Path<String>) -> HttpResult {
    s.app.delete_nic(&mac).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
