//! Image sources and remote imports (operator API, IMGAPI tag).
//!
//! IMGAPI has no endpoints for the sources themselves (`imgadm sources` keeps them in a
//! local config file); Nereid keeps them in the store and serves them here, in IMGAPI's
//! style:
//!
//! | Method + path | What |
//! |---|---|
//! | `GET /image_sources` | ListImageSources: `[{url, type, created_at}]` |
//! | `POST /image_sources` `{url}` | AddImageSource (checks `GET /ping` says `imgapi: true`; adding one twice is a no-op) |
//! | `DELETE /image_sources?url=URL` | RemoveImageSource → 204 |
//! | `GET /image_sources/images[?source=URL]` | ListAvailableImages, as `imgadm avail -j`: `[{manifest, source}]` |
//! | `GET /image_imports/{uuid}` | GetImageImport: how an import is going (the CLI's progress bar) |
//!
//! AdminImportRemoteImage itself is IMGAPI's `POST /images/{uuid}?action=import-remote&source=URL`
//! (dispatched from [`super::images`] to [`import_remote`]).

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use nereid_types::query::{Param, QKind, Query};
use nereid_types::spec::{Field, Kind, Usage};
use nereid_types::{ApiError, FieldError};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query, path_uuid, read_object};

/// A source URL: `http(s)://host[:port][/path][?channel=NAME]`.
pub const SOURCE_FIELDS: &[Field] = &[
    Field::new("url", Kind::Str { max: 1024, check: None }, "IMGAPI base URL, optionally with ?channel=NAME (sent with every request).")
        .required(),
    Field::new("type", Kind::Enum(&["imgapi"]), "Source type (imgapi).").read_only(),
    Field::new("created_at", Kind::Str { max: 64, check: None }, "When the source was added.").read_only(),
];

const SOURCE_PARAM: Param =
    Param::new("source", QKind::Str { max: 1024 }, "An IMGAPI URL (optionally ?channel=NAME) instead of the configured sources.");
const AVAIL_PARAMS: &[Param] = &[SOURCE_PARAM];
const REMOVE_PARAMS: &[Param] = &[Param::new("url", QKind::Str { max: 1024 }, "The source to remove, as listed (required).")];

fn avail_schema() -> Value {
    json!({"type": "array", "items": {"type": "object", "required": ["manifest", "source"], "properties": {
        "manifest": {"type": "object", "description": "The image manifest as the source serves it."},
        "source": {"type": "string", "description": "The source offering it."}}}})
}

fn import_schema() -> Value {
    json!({"type": "object", "required": ["uuid", "source", "state", "images", "downloaded", "size"], "properties": {
        "uuid": {"type": "string", "format": "uuid"},
        "source": {"type": "string"},
        "state": {"type": "string", "enum": ["running", "succeeded", "failed"]},
        "images": {"type": "array", "items": {"type": "string", "format": "uuid"}, "description": "Images brought, oldest origin first."},
        "current": {"type": "string", "format": "uuid", "description": "The image whose file is downloading."},
        "downloaded": {"type": "integer", "description": "Bytes of the current file so far."},
        "size": {"type": "integer", "description": "Size of the current file."},
        "error": {"type": "object", "description": "Why it failed ({code, message}); importing again resumes."},
        "headnode": {"type": "string"},
        "started_at": {"type": "string"},
        "updated_at": {"type": "string"}}})
}

/// What AdminImportRemoteImage answers.
pub fn import_outcome_schema() -> Value {
    json!({"type": "object", "required": ["image_uuid", "source", "imported"], "properties": {
        "image_uuid": {"type": "string", "format": "uuid"},
        "source": {"type": "string"},
        "imported": {"type": "array", "items": {"type": "string", "format": "uuid"}, "description": "Images imported, oldest origin first."}}})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "IMGAPI", summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/image_sources",
            doc("ListImageSources", "The IMGAPIs images are imported from.", &[], BodyDoc::None, RespDoc::List(SOURCE_FIELDS)),
            list,
        ),
        Route::new(
            Method::POST,
            "/image_sources",
            doc(
                "AddImageSource",
                "Add an image source (it must answer GET /ping with imgapi: true); adding one twice changes nothing.",
                &[],
                BodyDoc::Fields(SOURCE_FIELDS, Usage::Create),
                RespDoc::Object(200, SOURCE_FIELDS),
            ),
            add,
        ),
        Route::new(
            Method::DELETE,
            "/image_sources",
            doc("RemoveImageSource", "Remove an image source (?url=, as listed).", REMOVE_PARAMS, BodyDoc::None, RespDoc::Empty(204)),
            remove,
        ),
        Route::new(
            Method::GET,
            "/image_sources/images",
            doc(
                "ListAvailableImages",
                "What the sources offer (imgadm avail): [{manifest, source}], each UUID once.",
                AVAIL_PARAMS,
                BodyDoc::None,
                RespDoc::Schema(200, avail_schema),
            ),
            avail,
        ),
        Route::new(
            Method::GET,
            "/image_imports/{uuid}",
            doc(
                "GetImageImport",
                "How the import of an image from a source is going (or went).",
                &[],
                BodyDoc::None,
                RespDoc::Schema(200, import_schema),
            ),
            get_import,
        ),
    ]
}

async fn list(State(s): State<AppState>) -> HttpResult {
    ok(&s.app.list_image_sources().await?)
}

async fn add(State(s): State<AppState>, body: axum::body::Body) -> HttpResult {
    let input = read_object(body).await?;
    let mut errors = nereid_types::spec::check(SOURCE_FIELDS, &input, nereid_types::spec::Mode::Create, &[]);
    errors.extend(input.keys().filter(|k| !SOURCE_FIELDS.iter().any(|f| f.name == k.as_str())).map(|k| FieldError::unknown(k.clone())));
    if !errors.is_empty() {
        return Err(ApiError::invalid_parameter(errors).into());
    }
    let url = input.get("url").and_then(Value::as_str).unwrap_or("");
    ok(&s.app.add_image_source(url).await?)
}

async fn remove(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Imgapi, REMOVE_PARAMS, raw.as_deref())?;
    let Some(url) = q.str("url") else {
        return Err(ApiError::invalid_parameter(vec![FieldError::missing("url")]).into());
    };
    s.app.remove_image_source(url).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn avail(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Imgapi, AVAIL_PARAMS, raw.as_deref())?;
    ok(&s.app.image_avail(q.str("source")).await?)
}

async fn get_import(State(s): State<AppState>, Path(uuid): Path<String>) -> HttpResult {
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    ok(&s.app.image_import(uuid).await?)
}

/// AdminImportRemoteImage (`POST /images/{uuid}?action=import-remote[&source=URL]`):
/// answers when the image and its origins are imported. Without `source`, the configured
/// sources are asked in order.
pub async fn import_remote(s: &AppState, uuid: Uuid, q: &Query) -> HttpResult {
    let outcome = s.app.import_remote_image(uuid, q.str("source").map(str::to_string)).await?;
    ok(&outcome)
}
