//! The public image catalogue (`--image-catalog-listen ADDR`): this cloud's public, active
//! images, read-only and without authentication, on IMGAPI's public endpoints — what
//! images.smartos.org and updates.tritondatacenter.com serve, so `imgadm`, `sdc-imgadm`
//! and other Nereid headnodes (`nereid admin image sources add`) can import from it.
//!
//! | Method + path | What |
//! |---|---|
//! | `GET /ping` | `{ping: "pong", imgapi: true, version}` (imgadm needs `imgapi: true`) |
//! | `GET /images` | ListImages: public + active only; IMGAPI's filters, `limit` ≤ 1000, inclusive `marker` |
//! | `GET /images/{uuid}` | GetImage (404 unless public and active) |
//! | `GET /images/{uuid}/file` | GetImageFile: `Etag` = sha1, `Content-MD5`, `Range` (resumable downloads) |
//! | `GET /channels` | ListChannels: the channels of the published images |
//!
//! `?channel=NAME` on any of them keeps to images whose `channels` name it (`*`: all; no
//! channel: all, as a server without a default channel); a channel no published image is
//! in is IMGAPI's 422 `ValidationFailed` "unknown channel". Any other method is restify's
//! 405 `BadMethod`; nothing here writes. It is a listener of its own, so the operator API
//! need not be exposed to publish images.

use axum::Router;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::routing::get;
use nereid_types::ApiError;
use nereid_types::query::{Param, QKind, Query};
use serde_json::json;

use super::{Api, AppState, HttpError, HttpResult, ok, parse_query, path_uuid};

const CHANNEL: Param = Param::new("channel", QKind::Str { max: 128 }, "Only images in this channel (* = all).");

const LIST_PARAMS: &[Param] = &[
    CHANNEL,
    Param::new("inclAdminFields", QKind::Bool, "Accepted; the catalogue never shows operator fields."),
    Param::new("owner", QKind::Uuid, "Images owned by this account."),
    Param::new("state", QKind::Enum(&["active", "disabled", "unactivated", "all"]), "Accepted; only active images are published."),
    Param::new("name", QKind::Str { max: 512 }, "Exact name, or ~substring."),
    Param::new("version", QKind::Str { max: 128 }, "Exact version, or ~substring."),
    Param::new("public", QKind::Bool, "Accepted; only public images are published."),
    Param::new("os", QKind::Str { max: 32 }, "OS, e.g. linux."),
    Param::new("type", QKind::Str { max: 32 }, "Type, e.g. zvol; !type excludes it."),
    Param::new("billing_tag", QKind::Str { max: 128 }, "Images carrying this billing tag."),
    Param::prefix("tag.", "tag.<key>=<value>: images with this tag (AND)."),
    Param::new("limit", QKind::Int { min: 1, max: 1000 }, "Page size (1-1000, default 1000)."),
    Param::new("marker", QKind::Str { max: 64 }, "Start at this image UUID or date, inclusive."),
    Param::new("sort", QKind::Enum(&["published_at", "published_at.asc", "published_at.desc"]), "Order by publication."),
];
const GET_PARAMS: &[Param] = &[CHANNEL, Param::new("inclAdminFields", QKind::Bool, "Accepted; never shown here.")];
const FILE_PARAMS: &[Param] = &[CHANNEL, Param::new("index", QKind::Int { min: 0, max: 0 }, "File index (only 0).")];
const CHANNEL_PARAMS: &[Param] = &[];

/// The catalogue's router: read-only, no authentication, Triton's JSON errors.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/images", get(list))
        .route("/images/{uuid}", get(get_image))
        .route("/images/{uuid}/file", get(file))
        .route("/channels", get(channels))
        .fallback(not_found)
        .method_not_allowed_fallback(bad_method)
        .layer(axum::middleware::from_fn(super::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            tracing::error!("an image catalogue handler panicked");
            axum::response::IntoResponse::into_response(HttpError(ApiError::internal("internal error (logged on the headnode)")))
        }))
        .with_state(state)
}

async fn ping() -> HttpResult {
    ok(&json!({"ping": "pong", "imgapi": true, "version": env!("CARGO_PKG_VERSION")}))
}

fn channel(q: &Query) -> Option<&str> {
    q.str("channel")
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Imgapi, LIST_PARAMS, raw.as_deref())?;
    let imgs = s.app.catalog_images(&q, channel(&q)).await?;
    ok(&imgs.iter().map(|i| i.render(false)).collect::<Vec<_>>())
}

async fn get_image(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Imgapi, GET_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    ok(&s.app.catalog_image(uuid, channel(&q)).await?.render(false))
}

async fn file(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery, headers: HeaderMap) -> HttpResult {
    let q = parse_query(Api::Imgapi, FILE_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    s.app.catalog_image(uuid, channel(&q)).await?;
    super::images::serve_file(&s, uuid, None, &headers).await
}

async fn channels(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    parse_query(Api::Imgapi, CHANNEL_PARAMS, raw.as_deref())?;
    let names = s.app.catalog_channels().await?;
    ok(&names.iter().map(|n| json!({"name": n, "description": format!("published images in channel {n}")})).collect::<Vec<_>>())
}

async fn not_found(req: Request) -> HttpError {
    HttpError(ApiError::not_found(format!("{} does not exist", req.uri().path())))
}

/// Restify's answer to a method a route does not have: 405 `BadMethod` with `Allow`.
async fn bad_method(req: Request) -> axum::response::Response {
    let mut resp = axum::response::IntoResponse::into_response(HttpError(ApiError::bad_method(format!("{} is not allowed", req.method()))));
    resp.headers_mut().insert(axum::http::header::ALLOW, axum::http::HeaderValue::from_static("GET, HEAD"));
    resp
}
