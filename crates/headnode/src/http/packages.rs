//! PAPI endpoints: `/packages`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::package::FIELDS;
use nereid_types::query::{LIMIT, OFFSET, Param, QKind};
use nereid_types::spec::Usage;
use serde_json::Value;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, json, ok, parse_query, path_uuid, read_object};
use crate::app::packages::{FILTERABLE, count_header, render};

const fn filter_param(name: &'static str) -> Param {
    Param::new(name, QKind::Str { max: 4096 }, "Equality filter; a JSON array means any of; `*` is a wildcard in text.")
}

const LIST_PARAMS: &[Param] = &{
    const N: usize = 19;
    let mut out = [filter_param(""); N + 5];
    let mut i = 0;
    while i < N {
        out[i] = filter_param(FILTERABLE[i].0);
        i += 1;
    }
    out[N] = Param::new("owner_uuids", QKind::Uuid, "Packages this account may use (its own and public ones).");
    out[N + 1] = Param::new("sort", QKind::Str { max: 64 }, "Field to sort by (default created_at).");
    out[N + 2] = Param::new("order", QKind::Enum(&["ASC", "DESC", "asc", "desc"]), "Sort order.");
    out[N + 3] = LIMIT;
    out[N + 4] = OFFSET;
    out
};
const GET_PARAMS: &[Param] = &[Param::new("owner_uuids", QKind::Uuid, "Answer 404 unless this account may use the package.")];
const FORCE: &[Param] = &[Param::new("force", QKind::Bool, "Allow changing immutable fields / deleting.")];

pub fn routes() -> Vec<Route> {
    vec![
        Route::new(
            Method::GET,
            "/packages",
            Doc {
                id: "ListPackages",
                tag: "PAPI",
                summary: "List packages; x-resource-count carries the total.",
                query: LIST_PARAMS,
                body: BodyDoc::None,
                response: RespDoc::List(FIELDS),
            },
            list,
        ),
        Route::new(
            Method::POST,
            "/packages",
            Doc {
                id: "CreatePackage",
                tag: "PAPI",
                summary: "Create a package.",
                query: &[],
                body: BodyDoc::Fields(FIELDS, Usage::Create),
                response: RespDoc::Object(201, FIELDS),
            },
            create,
        ),
        Route::new(
            Method::GET,
            "/packages/{uuid}",
            Doc {
                id: "GetPackage",
                tag: "PAPI",
                summary: "Get a package.",
                query: GET_PARAMS,
                body: BodyDoc::None,
                response: RespDoc::Object(200, FIELDS),
            },
            get,
        ),
        Route::new(
            Method::PUT,
            "/packages/{uuid}",
            Doc {
                id: "UpdatePackage",
                tag: "PAPI",
                summary: "Update a package; immutable fields answer 409 unless force=true; null removes a field.",
                query: FORCE,
                body: BodyDoc::Fields(FIELDS, Usage::Update),
                response: RespDoc::Object(200, FIELDS),
            },
            update,
        ),
        Route::new(
            Method::DELETE,
            "/packages/{uuid}",
            Doc {
                id: "DeletePackage",
                tag: "PAPI",
                summary: "Packages cannot be deleted (405) unless force=true.",
                query: FORCE,
                body: BodyDoc::None,
                response: RespDoc::Empty(204),
            },
            delete,
        ),
    ]
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, LIST_PARAMS, raw.as_deref())?;
    let (items, total) = s.app.list_packages(&q).await?;
    let body: Vec<Value> = items.iter().map(render).collect();
    let mut resp = json(StatusCode::OK, &body);
    if let Ok(v) = count_header(total).parse() {
        resp.headers_mut().insert("x-resource-count", v);
    }
    Ok(resp)
}

async fn create(State(s): State<AppState>, body: Body) -> HttpResult {
    let input = read_object(body).await?;
    let pkg = s.app.create_package(&input).await?;
    Ok(json(StatusCode::CREATED, &render(&pkg)))
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, GET_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let owner = q.str("owner_uuids").and_then(|o| uuid::Uuid::parse_str(o).ok());
    ok(&render(&s.app.get_package(uuid, owner).await?))
}

async fn update(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery, body: Body) -> HttpResult {
    let q = parse_query(Api::Papi, FORCE, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    let mut input = read_object(body).await?;
    // restify merges query and body parameters: `force` may come either way.
    let body_force = match input.remove("force") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(Api::Papi.invalid(vec![nereid_types::FieldError::invalid("force", "must be a boolean")]).into()),
    };
    ok(&render(&s.app.update_package(uuid, &input, q.flag("force") || body_force).await?))
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Papi, FORCE, raw.as_deref())?;
    let uuid = path_uuid(Api::Papi, "uuid", &uuid)?;
    s.app.delete_package(uuid, q.flag("force")).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
