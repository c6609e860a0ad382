//! IMGAPI endpoints: `/images`, `/images/{uuid}`, `/images/{uuid}/file`.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nereid_types::image::{COMPRESSIONS, FIELDS};
use nereid_types::query::{Param, QKind, Query};
use nereid_types::spec::Usage;
use nereid_types::{ApiError, FieldError};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use uuid::Uuid;

use super::{Api, AppState, BodyDoc, Doc, HttpError, HttpResult, RespDoc, Route, json, ok, parse_query, path_uuid, read_object};
use crate::app::images::AddFile;

const ACCOUNT: Param = Param::new("account", QKind::Uuid, "Act on behalf of this account (only images it may see).");
const CHANNEL: Param = Param::new("channel", QKind::Str { max: 128 }, "Accepted for compatibility; Nereid has a single channel.");
const ADMIN_FIELDS: Param = Param::new("inclAdminFields", QKind::Bool, "Include operator-only fields (files[].stor).");

const LIST_PARAMS: &[Param] = &[
    ACCOUNT,
    CHANNEL,
    ADMIN_FIELDS,
    Param::new("owner", QKind::Uuid, "Images owned by this account."),
    Param::new("state", QKind::Enum(&["active", "disabled", "unactivated", "all"]), "active (default), disabled, unactivated or all."),
    Param::new("name", QKind::Str { max: 512 }, "Exact name, or ~substring."),
    Param::new("version", QKind::Str { max: 128 }, "Exact version, or ~substring."),
    Param::new("public", QKind::Bool, "Public images only (true) or private only (false)."),
    Param::new("os", QKind::Str { max: 32 }, "OS, e.g. linux."),
    Param::new("type", QKind::Str { max: 32 }, "Type, e.g. zvol; !type excludes it."),
    Param::new("billing_tag", QKind::Str { max: 128 }, "Images carrying this billing tag."),
    Param::prefix("tag.", "tag.<key>=<value>: images with this tag (AND)."),
    Param::new("limit", QKind::Int { min: 1, max: 1000 }, "Page size (1-1000, default 1000)."),
    Param::new("marker", QKind::Str { max: 64 }, "Start at this image UUID or date, inclusive."),
    Param::new(
        "sort",
        QKind::Enum(&["published_at", "published_at.asc", "published_at.desc"]),
        "Order by publication (default oldest first).",
    ),
];
const GET_PARAMS: &[Param] = &[ACCOUNT, CHANNEL, ADMIN_FIELDS];
const CREATE_PARAMS: &[Param] = &[ACCOUNT, CHANNEL, Param::new("action", QKind::Str { max: 64 }, "create-from-vm is not supported yet.")];
const ACTION_PARAMS: &[Param] = &[
    Param::new("action", QKind::Enum(&["activate", "update", "disable", "enable", "import", "import-remote"]), "What to do (required)."),
    ACCOUNT,
    CHANNEL,
    Param::new("skip_owner_check", QKind::Bool, "import: accepted; owners are not checked against accounts yet."),
    Param::new(
        "source",
        QKind::Str { max: 1024 },
        "import-remote: the IMGAPI to import from (optionally ?channel=NAME); default: the configured image sources.",
    ),
];
const DELETE_PARAMS: &[Param] = &[ACCOUNT, CHANNEL, Param::new("force_all_channels", QKind::Bool, "Accepted for compatibility.")];
const ADD_FILE_PARAMS: &[Param] = &[
    Param::new("compression", QKind::Enum(COMPRESSIONS), "gzip, bzip2, xz, zstd or none (required); checked against the bytes."),
    Param::new("sha1", QKind::Str { max: 40 }, "Expected SHA-1 of the bytes as sent; a mismatch fails the upload."),
    Param::new("dataset_guid", QKind::Str { max: 64 }, "ZFS snapshot guid, kept in files[0]."),
    Param::new("storage", QKind::Enum(&["local"]), "Where to store the file (local)."),
    ACCOUNT,
    CHANNEL,
    Param::new("source", QKind::Str { max: 1024 }, "Pull from another IMGAPI: not supported yet."),
];
const FILE_PARAMS: &[Param] = &[Param::new("index", QKind::Int { min: 0, max: 0 }, "File index (only 0)."), ACCOUNT, CHANNEL];

fn action_schema() -> Value {
    serde_json::json!({"type": "object", "description": "action=import: the full manifest incl. uuid; action=update: fields to change; others: empty."})
}

/// The image, or for action=import-remote what was imported.
fn action_response_schema() -> Value {
    serde_json::json!({"anyOf": [
        nereid_types::spec::object_schema(FIELDS, Usage::Output),
        super::image_sources::import_outcome_schema(),
    ]})
}

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, body, response| Doc { id, tag: "IMGAPI", summary, query, body, response };
    vec![
        Route::new(
            Method::GET,
            "/images",
            doc(
                "ListImages",
                "List images (marker is inclusive; default state=active).",
                LIST_PARAMS,
                BodyDoc::None,
                RespDoc::List(FIELDS),
            ),
            list,
        ),
        Route::new(
            Method::POST,
            "/images",
            doc(
                "CreateImage",
                "Create an unactivated image from a manifest.",
                CREATE_PARAMS,
                BodyDoc::Fields(FIELDS, Usage::Create),
                RespDoc::Object(200, FIELDS),
            ),
            create,
        ),
        Route::new(
            Method::GET,
            "/images/{uuid}",
            doc("GetImage", "Get an image manifest.", GET_PARAMS, BodyDoc::None, RespDoc::Object(200, FIELDS)),
            get,
        ),
        Route::new(
            Method::POST,
            "/images/{uuid}",
            doc(
                "ImageAction",
                "ActivateImage, UpdateImage, DisableImage, EnableImage, AdminImportImage or AdminImportRemoteImage, by ?action=.",
                ACTION_PARAMS,
                BodyDoc::Schema(action_schema),
                RespDoc::Schema(200, action_response_schema),
            ),
            action,
        ),
        Route::new(
            Method::DELETE,
            "/images/{uuid}",
            doc("DeleteImage", "Delete an image (and its file once unreferenced).", DELETE_PARAMS, BodyDoc::None, RespDoc::Empty(204)),
            delete,
        ),
        Route::new(
            Method::PUT,
            "/images/{uuid}/file",
            doc(
                "AddImageFile",
                "Upload the image file (streamed; sha1, size and compression verified).",
                ADD_FILE_PARAMS,
                BodyDoc::Binary,
                RespDoc::Object(200, FIELDS),
            ),
            add_file,
        ),
        Route::new(
            Method::GET,
            "/images/{uuid}/file",
            doc("GetImageFile", "Download the image file (Etag = sha1, Content-MD5, ranges).", FILE_PARAMS, BodyDoc::None, RespDoc::Binary),
            get_file,
        ),
    ]
}

fn account(q: &Query) -> Option<Uuid> {
    q.str("account").and_then(|a| Uuid::parse_str(a).ok())
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Imgapi, LIST_PARAMS, raw.as_deref())?;
    let body = s.app.list_images_rendered(&q, q.flag("inclAdminFields")).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn get(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Imgapi, GET_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    let (img, _) = s.app.get_image(uuid, account(&q)).await?;
    ok(&img.render(q.flag("inclAdminFields")))
}

async fn create(State(s): State<AppState>, RawQuery(raw): RawQuery, body: Body) -> HttpResult {
    let q = parse_query(Api::Imgapi, CREATE_PARAMS, raw.as_deref())?;
    if let Some(a) = q.str("action") {
        return Err(ApiError::invalid_parameter(vec![FieldError::invalid(
            "action",
            format!("{a} is not supported by this IMGAPI (CreateImageFromVm comes with VM support)"),
        )])
        .into());
    }
    let input = read_object(body).await?;
    let img = s.app.create_image(&input, account(&q)).await?;
    ok(&img.render(false))
}

async fn action(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery, body: Body) -> HttpResult {
    let q = parse_query(Api::Imgapi, ACTION_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    let input = read_object(body).await?;
    let Some(action) = q.str("action") else {
        return Err(ApiError::invalid_parameter(vec![FieldError::missing("action")]).into());
    };
    let no_body = |input: &serde_json::Map<String, Value>| -> Result<(), HttpError> {
        if input.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_parameter(vec![FieldError::invalid("body", format!("action={action} takes no body"))]).into())
        }
    };
    let img = match action {
        "activate" => {
            no_body(&input)?;
            s.app.activate_image(uuid).await?
        }
        "disable" | "enable" => {
            no_body(&input)?;
            s.app.set_image_disabled(uuid, action == "disable").await?
        }
        "update" => s.app.update_image(uuid, &input).await?,
        "import-remote" => {
            no_body(&input)?;
            return super::image_sources::import_remote(&s, uuid, &q).await;
        }
        "import" => {
            if q.str("source").is_some() {
                return Err(ApiError::invalid_parameter(vec![FieldError::invalid(
                    "source",
                    "use action=import-remote to import from another IMGAPI, or `nereid image import -m MANIFEST -f FILE`",
                )])
                .into());
            }
            s.app.import_image(uuid, &input).await?
        }
        _ => unreachable!("the parameter table only admits known actions"),
    };
    ok(&img.render(false))
}

async fn delete(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(Api::Imgapi, DELETE_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    if let Some(a) = account(&q) {
        s.app.get_image(uuid, Some(a)).await?;
    }
    s.app.delete_image(uuid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn add_file(
    State(s): State<AppState>,
    Path(uuid): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> HttpResult {
    let q = parse_query(Api::Imgapi, ADD_FILE_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    if q.str("source").is_some() {
        return Err(ApiError::invalid_parameter(vec![FieldError::invalid(
            "source",
            "pulling files from another IMGAPI is not supported yet",
        )])
        .into());
    }
    let Some(compression) = q.str("compression") else {
        return Err(ApiError::invalid_parameter(vec![FieldError::missing("compression")]).into());
    };
    if let Some(sha1) = q.str("sha1")
        && (sha1.len() != 40 || !sha1.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(ApiError::invalid_parameter(vec![FieldError::invalid("sha1", "must be 40 hex digits")]).into());
    }
    if let Some(a) = account(&q) {
        s.app.get_image(uuid, Some(a)).await?;
    }
    let content_length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let add = AddFile {
        compression: compression.into(),
        sha1: q.str("sha1").map(str::to_lowercase),
        dataset_guid: q.str("dataset_guid").map(Into::into),
        content_length,
    };
    let img = s.app.add_image_file(uuid, add, body.into_data_stream()).await?;
    ok(&img.render(false))
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    /// No (usable) range: the whole file.
    All,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// Outside the file: 416.
    Unsatisfiable,
}

/// Resolves a single-range `Range` header against `size`; several ranges serve the whole file.
pub fn parse_range(header: Option<&str>, size: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Range::All };
    if spec.contains(',') {
        return Range::All;
    }
    let Some((a, b)) = spec.split_once('-') else { return Range::Unsatisfiable };
    let last = size.saturating_sub(1);
    let bounds = match (a.trim(), b.trim()) {
        ("", n) => n.parse::<u64>().ok().filter(|n| *n > 0).map(|n| (size.saturating_sub(n), last)),
        (s, "") => s.parse().ok().map(|s| (s, last)),
        (s, e) => s.parse().ok().zip(e.parse::<u64>().ok()).map(|(s, e)| (s, e.min(last))),
    };
    match bounds {
        Some((start, end)) if size > 0 && start < size && start <= end => Range::Part(start, end),
        _ => Range::Unsatisfiable,
    }
}

async fn get_file(State(s): State<AppState>, Path(uuid): Path<String>, RawQuery(raw): RawQuery, headers: HeaderMap) -> HttpResult {
    let q = parse_query(Api::Imgapi, FILE_PARAMS, raw.as_deref())?;
    let uuid = path_uuid(Api::Imgapi, "uuid", &uuid)?;
    serve_file(&s, uuid, account(&q), &headers).await
}

/// An image's file as GetImageFile serves it (also to compute nodes).
pub(super) async fn serve_file(s: &AppState, uuid: Uuid, account: Option<Uuid>, headers: &HeaderMap) -> HttpResult {
    let (_, file, path) = s.app.image_file(uuid, account).await?;
    let mut f = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "image file missing on disk");
        ApiError::new(503, "StorageIsDown", format!("the file of image {uuid} is missing from storage"))
    })?;
    let meta = f.metadata().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let size = meta.len();
    let mut h = HeaderMap::new();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ETAG, hv(&file.sha1));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(md5) = &file.content_md5 {
        h.insert("content-md5", hv(md5));
    }
    if let Ok(m) = meta.modified() {
        h.insert(header::LAST_MODIFIED, hv(&nereid_types::time::http_date(time::OffsetDateTime::from(m))));
    }
    let inm = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).unwrap_or("");
    if inm.split(',').any(|t| t.trim().trim_start_matches("W/").trim_matches('"') == file.sha1) {
        return Ok((StatusCode::NOT_MODIFIED, h).into_response());
    }
    let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let (status, start, len) = match range {
        Range::Unsatisfiable => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
            let mut resp = json(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &ApiError::new(416, "RequestedRangeNotSatisfiable", format!("the requested range is outside the file's {size} bytes"))
                    .body(),
            );
            resp.headers_mut().extend(h);
            return Ok(resp);
        }
        Range::All => (StatusCode::OK, 0, size),
        Range::Part(a, b) => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes {a}-{b}/{size}")));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
    };
    if start > 0 {
        f.seek(SeekFrom::Start(start)).await.map_err(|e| ApiError::internal(e.to_string()))?;
    }
    h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 * 1024);
    let mut resp: Response = (status, Body::from_stream(stream)).into_response();
    resp.headers_mut().extend(h);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::{Range, parse_range};

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Range::All);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Range::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Range::Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Range::Part(90, 99));
        assert_eq!(parse_range(Some("bytes=95-200"), 100), Range::Part(95, 99));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-1"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=a-b"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Range::All);
    }
}
