//! The audit log's middleware, one per router (see [`crate::app::audit`]): the operator
//! API's, CloudAPI's and the web console's outermost layer. Each names the caller from
//! what the request carries (the bearer token, the signature's keyId, the session cookie or
//! the sign-in form's login), runs the request with a slot for the jobs it queues (and a
//! detail it notes), and queues a record when the request changed something or failed authentication.
//!
//! The web console's pages call the operator API and CloudAPI in process; those calls run
//! inside the page's record (its jobs become the page's) and are not recorded twice.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

use super::AppState;
use crate::app::App;
use crate::app::audit::{self, Actor, ActorKind, Api, Record};
use crate::web::Web;

/// Answers read for their error code or job (JSON only, and only this small).
const PEEK_LIMIT: u64 = 64 * 1024;

/// What is known of a request before it is answered.
struct Seen {
    api: Api,
    actor: Actor,
    method: String,
    path: String,
    remote: Option<String>,
    at_ms: i64,
    started: Instant,
}

impl Seen {
    fn of(api: Api, actor: Actor, req: &Request) -> Self {
        let remote = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .or_else(|| req.extensions().get::<ConnectInfo<nereid_trust::Peer>>().map(|c| c.0.addr.ip().to_string()));
        Seen {
            api,
            actor,
            method: req.method().as_str().to_string(),
            path: req.uri().path().chars().take(2048).collect(),
            remote,
            at_ms: nereid_types::time::now_ms(),
            started: Instant::now(),
        }
    }
}

fn authorization(req: &Request) -> Option<&str> {
    req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// The operator API's layer.
pub async fn admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if audit::in_scope() {
        return next.run(req).await;
    }
    let seen = Seen::of(Api::Admin, audit::admin_actor(authorization(&req)), &req);
    let (resp, noted) = audit::scope(next.run(req)).await;
    finish(&s.app, seen, resp, noted).await
}

/// CloudAPI's layer.
pub async fn cloudapi(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if audit::in_scope() {
        return next.run(req).await;
    }
    let seen = Seen::of(Api::Cloudapi, audit::cloud_actor(authorization(&req)), &req);
    let (resp, noted) = audit::scope(next.run(req)).await;
    finish(&s.app, seen, resp, noted).await
}

/// The web console's layer: its mutating requests (every form), with the session's
/// account, or for a sign-in the login it tried.
pub async fn web(State(web): State<Web>, req: Request, next: Next) -> Response {
    if audit::in_scope() || !audit::is_mutating(req.method().as_str()) {
        // A page view changes nothing and cannot fail authentication (it is sent to sign in).
        return next.run(req).await;
    }
    let (req, actor) = if req.uri().path() == "/login" {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, crate::web::form::FORM_LIMIT).await else {
            return crate::web::page::message(axum::http::StatusCode::PAYLOAD_TOO_LARGE, None, "Sign in", "This form is too large.");
        };
        // Only the login is read; the password never leaves the form.
        let login = crate::web::form::Fields::parse(&bytes).get("login").map(|l| l.chars().take(200).collect::<String>());
        let actor = Actor { kind: if login.is_some() { ActorKind::WebSession } else { ActorKind::Anonymous }, name: login, key: None };
        (Request::from_parts(parts, Body::from(bytes)), actor)
    } else {
        let (mut parts, body) = req.into_parts();
        let session = match crate::web::session::token_of(&parts.headers, web.secure) {
            Some(t) => web.session(&t).await.ok().flatten(),
            None => None,
        };
        let actor = match session {
            Some(s) => {
                let a = Actor { kind: ActorKind::WebSession, name: Some(s.account.login.clone()), key: None };
                // The handler's Session extractor takes it from here (no second read).
                parts.extensions.insert(s);
                a
            }
            None => Actor::anonymous(),
        };
        (Request::from_parts(parts, body), actor)
    };
    let seen = Seen::of(Api::Web, actor, &req);
    let (resp, noted) = audit::scope(next.run(req)).await;
    finish(web.app(), seen, resp, noted).await
}

/// Records the request if it is to be recorded (queued: the answer does not wait for the
/// store); the answer goes on unchanged.
async fn finish(app: &App, seen: Seen, resp: Response, noted: audit::Noted) -> Response {
    let status = resp.status().as_u16();
    if !audit::should_record(&seen.method, status) {
        return resp;
    }
    let (resp, code, body_job) = peek(resp).await;
    let rec = Record {
        id: audit::new_id(seen.at_ms),
        time: nereid_types::time::iso(
            time::OffsetDateTime::from_unix_timestamp_nanos(seen.at_ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        ),
        api: seen.api,
        account: seen.actor.account(),
        actor: seen.actor,
        method: seen.method,
        path: seen.path,
        remote: seen.remote,
        status,
        result: audit::result_of(status, code.as_deref()),
        auth_failed: status == 401,
        job_uuid: if status < 400 { noted.jobs.first().copied().or(body_job) } else { None },
        duration_ms: seen.started.elapsed().as_millis() as u64,
        detail: noted.detail,
        suppressed: None,
    };
    app.record_audit(rec);
    resp
}

/// Reads a small JSON answer's error code and job, giving the answer back whole.
async fn peek(resp: Response) -> (Response, Option<String>, Option<Uuid>) {
    let is_json = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    let small = resp.body().size_hint().upper().is_some_and(|n| n <= PEEK_LIMIT);
    if !is_json || !small {
        return (resp, None, None);
    }
    let (parts, body) = resp.into_parts();
    match axum::body::to_bytes(body, PEEK_LIMIT as usize).await {
        Ok(bytes) => {
            let (code, job) = audit::answer_fields(&bytes);
            (Response::from_parts(parts, Body::from(bytes)), code, job)
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading an answer for the audit log");
            (Response::from_parts(parts, Body::empty()), None, None)
        }
    }
}
