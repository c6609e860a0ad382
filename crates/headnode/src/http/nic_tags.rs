//! NAPI endpoints: `/nic_tags`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::nic_tag::FIELDS;
use nereid_types::query::{LIMIT, OFFSET, Param};
use nereid_types::spec::Usage;
use serde_json::Value;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json, ok, parse_query, read_object};
use crate::app::nic_tags::render;

const LIST_PARAMS: &[Param] = &[LIMIT, OFFSET];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "NAPI", summary, query, body, response };
    vec![
        Route::new(Method::GET, "/nic_tags", doc("ListNicTags", "List nic tags.", LIST_PARAMS, BodyDoc::None, RespDoc::List(FIELDS)), list),
        Route::new(
            Method::POST,
            "/nic_tags",
            doc("CreateNicTag", "Create a nic tag.", &[], BodyDoc::Fields(FIELDS, Usage::Create), RespDoc::Object(200, FIELDS)),
            create,
        ),
        Route::new(
            Method::GET,
            "/nic_tags/{name}",
            doc("GetNicTag", "Get a nic tag.", &[], BodyDoc::None, RespDoc::Object(200, FIELDS)),
            get,
        ),
        Route::new(
            Method::PUT,
            "/nic_tags/{name}",
            doc(
                "UpdateNicTag",
                "Rename a nic tag (only while unused) or change its MTU.",
                &[],
                BodyDoc::Fields(FIELDS, Usage::Update),
                RespDoc::Object(200, FIELDS),
            ),
            update,
        ),
        Route::new(
            Method::DELETE,
            "/nic_tags/{name}",
            doc("DeleteNicTag", "Delete a nic tag no network uses.", &[], BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
    ]
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Napi, LIST_PARAMS, raw.as_deref())?;
    let tags = s.app.list_nic_tags(q.limit(1000), q.offset()).await?;
    ok(&tags.iter().map(render).collect::<Vec<Value>>())
}

async fn create(State(s): State<AppState>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    ok(&render(&s.app.create_nic_tag(&input).await?))
}

async fn get(State(s): State<AppState>, Path(name): Path<String>) -> HttpResult {
    ok(&render(&s.app.get_nic_tag(&name).await?.0))
}

async fn update(State(s): State<AppState>, Path(name): Path<String>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    Ok(json(StatusCode::OK, &render(&s.app.update_nic_tag(&name, &input).await?)))
}

async fn delete(State(s): State<AppState>, Path(name): Path<String>) -> HttpResult {
    s.app.delete_nic_tag(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
