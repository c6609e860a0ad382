//! NAPI endpoints: `/network_pools`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::network::POOL_FIELDS;
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::spec::Usage;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query, path_uuid, read_object};

const LIST_PARAMS: &[Param] = &[
    Param::new("name", QKind::Str { max: 64 }, "Pool name."),
    Param::new("networks", QKind::Uuid, "Pools containing this network."),
    Param::new("family", QKind::Enum(&["ipv4"]), "Address family."),
    Param::new("provisionable_by", QKind::Uuid, "Pools this account may use."),
    LIMIT,
    OFFSET,
];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "NAPI", summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/network_pools",
            doc("ListNetworkPools", "List network pools.", LIST_PARAMS, BodyDoc::None, RespDoc::List(POOL_FIELDS)),
            list,
        ),
        Route::new(
            Method::POST,
            "/network_pools",
            doc(
                "CreateNetworkPool",
                "Create a pool of networks, tried in order.",
                &[],
                BodyDoc::Fields(POOL_FIELDS, Usage::Create),
                RespDoc::Object(200, POOL_FIELDS),
            ),
            create,
        ),
        Route::new(
            Method::GET,
            "/network_pools/{uuid}",
            doc("GetNetworkPool", "Get a network pool.", &[], BodyDoc::None, RespDoc::Object(200, POOL_FIELDS)),
            get,
        ),
        Route::new(
            Method::PUT,
            "/network_pools/{uuid}",
            doc(
                "UpdateNetworkPool",
                "Update a network pool.",
                &[],
                BodyDoc::Fields(POOL_FIELDS, Usage::Update),
                RespDoc::Object(200, POOL_FIELDS),
            ),
            update,
        ),
        Route::new(
            Method::DELETE,
            "/network_pools/{uuid}",
            doc("DeleteNetworkPool", "Delete a network pool.", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
    ]
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, LIST_PARAMS, raw.as_deref())?;
    ok(&s.app.list_pools(&q).await?)
}

async fn create(State(s): State<AppState>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    ok(&s.app.create_pool(&input).await?)
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    ok(&s.app.get_pool(uuid).await?.0)
}

async fn update(State(s): State<AppState>, Path(uuid): Path<String>, body: Body) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    ok(&s.app.update_pool(uuid, &input).await?)
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Napi, "uuid", &uuid)?;
    s.app.delete_pool(uuid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
