//! The audit log on the operator API: `GET /audit` (newest first) and `GET /audit/{id}`.
//! Read-only by construction: no route of any API writes, changes or deletes a record
//! (other methods on these paths are answered 405), and CloudAPI and the web console have
//! no route to it.

use axum::extract::{Path, RawQuery, State};
use axum::http::Method;
use nereid_types::FieldError;
use nereid_types::query::{Param, QKind};
use serde_json::{Value, json};

use super::{Api, AppState, BodyDoc, Doc, HttpResult, RespDoc, Route, ok, parse_query};
use crate::app::audit::AuditQuery;

const API: Api = Api::Imgapi;
/// Default page size.
pub const DEFAULT_LIMIT: i64 = 100;

const LIST_PARAMS: &[Param] = &[
    Param::new(
        "since",
        QKind::Str { max: 64 },
        "Records made at or after this: an RFC 3339 time (2026-12-06T12:00:00Z) or an age (90s, 30m, 2h, 7d).",
    ),
    Param::new("account", QKind::Str { max: 256 }, "Records of this account login (a CloudAPI signer, a web console session or sign-in)."),
    Param::new("limit", QKind::Int { min: 1, max: 1000 }, "Page size (1-1000, default 100)."),
    Param::new("marker", QKind::Str { max: 64 }, "The id of the last record of the previous page: the page goes on with older ones."),
];

pub fn routes() -> Vec<Route> {
    let doc = |id, summary, query, response| Doc { id, tag: "Operations", summary, query, body: BodyDoc::None, response };
    vec![
        Route::new(
            Method::GET,
            "/audit",
            doc(
                "ListAudit",
                "The audit log, newest first: every mutating request on the operator API, CloudAPI and the web console, and every \
                 failed authentication — who, what, from where, when, the result and the job it started. Append-only: no API \
                 changes or deletes a record (the retention pruner removes those older than --audit-retention-days).",
                LIST_PARAMS,
                RespDoc::Schema(200, list_schema),
            ),
            list,
        ),
        Route::new(Method::GET, "/audit/{id}", doc("GetAudit", "One audit record.", &[], RespDoc::Schema(200, record_schema)), get),
    ]
}

fn record_schema() -> Value {
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "required": ["id", "time", "api", "actor", "method", "path", "status", "result", "auth_failed", "duration_ms"],
        "properties": {
            "id": s("Time-ordered record id (13-digit unix milliseconds, '-', 8 hex digits)."),
            "time": {"type": "string", "format": "date-time"},
            "api": {"type": "string", "enum": ["admin", "cloudapi", "web"]},
            "actor": {
                "type": "object",
                "required": ["kind"],
                "properties": {
                    "kind": {"type": "string", "enum": ["operator", "account", "web_session", "anonymous"]},
                    "name": s("The operator token's fingerprint, or the account login."),
                    "key": s("The CloudAPI key id."),
                },
            },
            "account": s("The actor's account login."),
            "method": s("HTTP method."),
            "path": s("Request path, without its query string."),
            "remote": s("Client address."),
            "status": {"type": "integer"},
            "result": s("ok, or the error code answered."),
            "auth_failed": {"type": "boolean"},
            "job_uuid": {"type": "string", "format": "uuid"},
            "duration_ms": {"type": "integer"},
            "detail": {"type": "object", "description": "What the request did where its path does not say it (oneachnode: the command's SHA-256, the file, the servers)."},
            "suppressed": {"type": "integer", "description": "A flood summary: how many failed authentications from this address in the minute went unrecorded (this record is the last of them)."},
        },
    })
}

fn list_schema() -> Value {
    json!({"type": "array", "items": record_schema()})
}

async fn list(State(s): State<AppState>, RawQuery(raw): RawQuery) -> HttpResult {
    let q = parse_query(API, LIST_PARAMS, raw.as_deref())?;
    let since_ms = match q.str("since") {
        None => None,
        Some(t) => Some(
            crate::app::audit::parse_since(t, nereid_types::time::now_ms())
                .map_err(|e| API.invalid(vec![FieldError::invalid("since", e)]))?,
        ),
    };
    let query = AuditQuery {
        since_ms,
        account: q.str("account").map(str::to_string),
        marker: q.str("marker").map(str::to_string),
        limit: q.int("limit").unwrap_or(DEFAULT_LIMIT),
    };
    // What this headnode queued is written first: a reader sees the changes made here.
    s.app.audit_flush().await;
    ok(&s.app.list_audit(&query).await?)
}

async fn get(State(s): State<AppState>, Path(id): Path<String>) -> HttpResult {
    s.app.audit_flush().await;
    ok(&s.app.get_audit(&id).await?)
}
