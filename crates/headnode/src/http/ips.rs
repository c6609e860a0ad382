//! NAPI endpoints: `/networks/{uuid}/ips`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::Method;
use nereid_types::nic::{IP_UPDATE_FIELDS, render_ip};
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::spec::Usage;
use serde_json::{Value, json};

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query, path_uuid, read_object};

const LIST_PARAMS: &[Param] = &[
    Param::new("belongs_to_type", QKind::Enum(nereid_types::nic::BELONGS_TO_TYPES), "zone, server or other."),
    Param::new("belongs_to_uuid", QKind::Uuid, "Addresses assigned to this."),
    Param::new("owner_uuid", QKind::Uuid, "Addresses held for this account."),
    LIMIT,
    OFFSET,
];

fn ip_schema() -> Value {
    json!({"type": "object", "properties": {
        "ip": {"type": "string", "format": "ipv4"}, "network_uuid": {"type": "string", "format": "uuid"},
        "reserved": {"type": "boolean"}, "free": {"type": "boolean"},
        "belongs_to_uuid": {"type": "string", "format": "uuid"}, "belongs_to_type": {"type": "string"}, "owner_uuid": {"type": "string", "format": "uuid"}}})
}

fn ip_list_schema() -> Value {
    json!({"type": "array", "items": ip_schema()})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "NAPI", summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/networks/{uuid}/ips",
            doc(
                "ListIPs",
                "List the network's IP records (addresses ever used or reserved).",
                LIST_PARAMS,
                BodyDoc::None,
                RespDoc::Schema(200, ip_list_schema),
            ),
            list,
        ),
        Route::new(
            Method::GET,
            "/networks/{uuid}/ips/{ip}",
            doc("GetIP", "Get one address (a never-used one shows as free).", &[], BodyDoc::None, RespDoc::Schema(200, ip_schema)),
            get,
        ),
        Route::new(
            Method::PUT,
            "/networks/{uuid}/ips/{ip}",
            doc(
                "UpdateIP",
                "Reserve, assign, unassign or free an address.",
                &[],
                BodyDoc::Fields(IP_UPDATE_FIELDS, Usage::Update),
                RespDoc::Schema(200, ip_schema),
            ),
            update,
        ),
    ]
}

async fn list(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, LIST_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&s.app.list_ips(uuid, &q).await?.iter().map(render_ip).collect::<Vec<_>>())
}

async fn get(State(s): State<AppState>, Path((uuid, ip)): Path<(String, String)>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&render_ip(&s.app.get_ip(uuid, &ip).await?.0))
}

async fn update(State(s): State<AppState>, Path((uuid, ip)): Path<(String, String)>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    ok(&render_ip(&s.app.update_ip(uuid, &ip, &input).await?))
}
