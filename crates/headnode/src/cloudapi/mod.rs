//! CloudAPI: the tenants' API, what the unmodified `triton` CLI talks to.
//!
//! ```text
//!   request ──► headers layer   Server: cloudapi/9.20.0, Api-Version, Request-Id (every answer)
//!                  │
//!                  ▼
//!             auth::authenticate  HTTP Signature over the raw request line → Caller
//!                  │              (every route but /--ping; 401 leaks nothing)
//!                  ▼
//!             <resource>.rs     scope the :account (own login, `my`, or any for operators),
//!                  │            parse, call app (the same jobs VMAPI runs), render
//!                  ▼
//!             render.rs         pure translations: VM → machine, image, package, network
//! ```
//!
//! Wire rules the CLI depends on live in `../shared/compat/cloudapi.md`; the ones that
//! bite are commented where they are kept (x-resource-count, 410 for deleted machines,
//! actions in the body, flattened `metadata.*`/`tag.*`). Routes are [`crate::http::Route`]s
//! like the operator API's, so `openapi/cloudapi.json` is generated from this table.

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nereid_types::account::Account;
use nereid_types::{ApiError, FieldError};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::http::{AppState, Auth, Route};

pub mod account;
pub mod auth;
pub mod catalog;
pub mod fabrics;
pub mod fwrules;
pub mod image_create;
pub mod images;
pub mod machine_data;
pub mod machines;
pub mod migrations;
pub mod network_ips;
pub mod nics;
pub mod ratelimit;
pub mod render;
pub mod signature;
pub mod sshkey;
pub mod tenant_errors;
pub mod tls;

/// The CloudAPI version this server implements (clients read it from `Server`).
pub const VERSION: &str = "9.20.0";

/// What CloudAPI tells tenants about this cloud.
#[derive(Debug, Clone)]
pub struct CloudInfo {
    /// The datacenter name (`GET /:a/datacenters`, `Triton-Datacenter-Name`).
    pub datacenter: String,
    /// The URL tenants reach CloudAPI at.
    pub url: String,
}

impl Default for CloudInfo {
    fn default() -> Self {
        CloudInfo { datacenter: "nereid-1".into(), url: "https://127.0.0.1:8443".into() }
    }
}

/// A CloudAPI error: Triton's body with CloudAPI's codes (see [`cloud_error`]).
#[derive(Debug)]
pub struct CloudError(pub ApiError);

impl From<ApiError> for CloudError {
    fn from(e: ApiError) -> Self {
        CloudError(cloud_error(e))
    }
}

impl From<crate::http::HttpError> for CloudError {
    fn from(e: crate::http::HttpError) -> Self {
        CloudError(cloud_error(e.0))
    }
}

impl IntoResponse for CloudError {
    fn into_response(self) -> Response {
        // What tenants may see (no servers, no other accounts); operators keep the rest.
        let (e, redacted) = tenant_errors::for_tenant(self.0.clone());
        if redacted {
            tracing::info!(code = %self.0.code, message = %self.0.message, "a CloudAPI error was answered without its operator detail");
        }
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        crate::http::json(status, &e.body())
    }
}

pub type CloudResult = Result<Response, CloudError>;

/// Maps the operator APIs' errors to the codes the `triton` CLI knows: `ResourceNotFound`
/// (its exit status 3), `InvalidArgument`/`MissingParameter` (409), `InvalidState`,
/// `InsufficientCapacity` (without the per-server detail operators get), `InvalidCredentials`.
pub fn cloud_error(mut e: ApiError) -> ApiError {
    let field_text = |errs: &[FieldError]| errs.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; ");
    match (e.status, e.code.as_str()) {
        (_, "CannotDestroyMachineError" | "InvalidCredentials" | "NotAuthorized" | "InvalidHeader") => e,
        (404, _) => ApiError::new(404, "ResourceNotFound", e.message),
        (401, _) => ApiError::new(401, "InvalidCredentials", e.message),
        (409, "NoAllocatableServersError") => ApiError::new(409, "InsufficientCapacity", e.message),
        (409 | 422, "ValidationFailed" | "InvalidParameter" | "InvalidParameters") => {
            let code = if !e.errors.is_empty() && e.errors.iter().all(|f| f.code == "MissingParameter") {
                "MissingParameter"
            } else {
                "InvalidArgument"
            };
            let message = if e.errors.is_empty() { e.message.clone() } else { field_text(&e.errors) };
            let mut out = ApiError::new(409, code, message);
            out.errors = std::mem::take(&mut e.errors);
            out
        }
        (409, "VmNotRunning" | "VmNotStopped" | "UnallocatedVM" | "VmFailed" | "VmDestroyed" | "SnapshotBusy") => {
            ApiError::new(409, "InvalidState", e.message)
        }
        (409, "SnapshotExists" | "TooManySnapshots") => ApiError::new(409, "InvalidArgument", e.message),
        (400, "InvalidContent") => ApiError::new(400, "InvalidArgument", e.message),
        (413, _) => ApiError::new(413, "RequestTooLarge", e.message),
        (500, _) => ApiError::new(500, "InternalError", e.message),
        (503, _) => ApiError::new(503, "ServiceUnavailable", e.message),
        _ => e,
    }
}

/// 200 with a JSON body (see [`reply`]).
pub fn ok<T: Serialize + ?Sized>(body: &T) -> CloudResult {
    Ok(reply(StatusCode::OK, body))
}

/// A CloudAPI object as JSON: members without a value are left out rather than sent as
/// `null` (sdc-cloudapi builds its objects from the fields that are set, and the CLI
/// prints a `null` member as `field: null`).
pub fn reply<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_value(body) {
        Ok(v) => crate::http::json(status, &render::omit_nulls(v)),
        Err(_) => crate::http::json(status, body),
    }
}

/// An `InvalidArgument` naming the field.
pub fn invalid(field: &str, message: impl Into<String>) -> CloudError {
    let message = message.into();
    let mut e = ApiError::new(409, "InvalidArgument", format!("{field}: {message}"));
    e.errors = vec![FieldError::invalid(field, message)];
    CloudError(e)
}

/// A `MissingParameter` naming the field.
pub fn missing(field: &str) -> CloudError {
    let mut e = ApiError::new(409, "MissingParameter", format!("{field} is required"));
    e.errors = vec![FieldError::missing(field)];
    CloudError(e)
}

/// Who signed the request (set by [`auth::authenticate`]).
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: Account,
    /// The key's MD5 fingerprint.
    pub key: String,
}

/// The account a request acts on: the caller's own (its login or `my`), or for an
/// operator any account by login. Others get the same 403 whether or not the account
/// exists, so logins cannot be probed.
pub async fn scope(s: &AppState, caller: &Caller, path_account: &str) -> Result<Account, CloudError> {
    if path_account == "my" || path_account == caller.account.login {
        return Ok(caller.account.clone());
    }
    let denied = || {
        CloudError(ApiError::new(403, "NotAuthorized", format!("{} is not allowed to act on account {path_account}", caller.account.login)))
    };
    if !caller.account.operator {
        return Err(denied());
    }
    match s.app.find_account(path_account).await {
        Ok((a, _)) if nereid_types::account::check_login(path_account).is_ok() => Ok(a),
        Ok(_) => Err(denied()),
        Err(e) if e.status == 404 => {
            Err(CloudError(ApiError::new(404, "ResourceNotFound", format!("account {path_account} does not exist"))))
        }
        Err(e) => Err(e.into()),
    }
}

/// The account a request acts on (its `{account}` path segment), already checked
/// against the caller by [`scope`]: the extractor every signed handler starts with.
pub struct Scoped(pub Account);

impl FromRequestParts<AppState> for Scoped {
    type Rejection = CloudError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, CloudError> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| CloudError(ApiError::new(401, "InvalidCredentials", "the request was not authenticated")))?;
        let params = axum::extract::Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| CloudError(ApiError::bad_request(format!("bad path: {e}"))))?;
        let account = params.get("account").cloned().unwrap_or_default();
        Ok(Scoped(scope(state, &caller, &account).await?))
    }
}

/// Query parameters and body merged, as CloudAPI reads them (see [`read_params`]).
pub struct Params(pub Map<String, Value>);

impl FromRequest<AppState> for Params {
    type Rejection = CloudError;

    async fn from_request(req: Request, _: &AppState) -> Result<Self, CloudError> {
        let (parts, body) = req.into_parts();
        Ok(Params(read_params(parts.uri.query(), &parts.headers, body).await?))
    }
}

/// The body alone (JSON or form), for endpoints whose query holds only the CLI's stray
/// parameters (tags, metadata, snapshots).
pub struct BodyParams(pub Map<String, Value>);

impl FromRequest<AppState> for BodyParams {
    type Rejection = CloudError;

    async fn from_request(req: Request, _: &AppState) -> Result<Self, CloudError> {
        let (parts, body) = req.into_parts();
        Ok(BodyParams(read_params(None, &parts.headers, body).await?))
    }
}

/// A query string as a map of strings (unknown parameters are kept: handlers ignore
/// them, as CloudAPI does).
pub fn query_map(raw: Option<&str>) -> Map<String, Value> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect()
}

/// Whether a boolean query parameter is set (`true` or `1`).
pub fn flag(q: &Map<String, Value>, k: &str) -> bool {
    matches!(q.get(k), Some(Value::String(s)) if s == "true" || s == "1") || q.get(k) == Some(&Value::Bool(true))
}

/// Reads a request body as CloudAPI takes it: JSON, or form-encoded (the docs allow it),
/// merged over the query parameters (restify's `mapParams`: the body wins).
pub async fn read_params(
    req_query: Option<&str>,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Map<String, Value>, CloudError> {
    // A declared length over the limit was refused before authentication
    // ([`refuse_oversize`]); a chunked body is refused once it passes the limit.
    let limit = crate::http::JSON_BODY_LIMIT;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::http::error_chain(&e).contains("length limit exceeded") {
            CloudError(ApiError::too_large(limit))
        } else {
            CloudError(ApiError::bad_request(format!("could not read the request body: {e}")))
        }
    })?;
    let form =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let mut out = query_map(req_query);
    let body = if form {
        url::form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect()
    } else {
        crate::http::parse_object(&bytes)?
    };
    out.extend(body);
    Ok(out)
}

/// Every CloudAPI endpoint.
pub fn routes() -> Vec<Route> {
    let mut all = Vec::new();
    all.extend(account::routes());
    all.extend(catalog::routes());
    all.extend(images::routes());
    all.extend(image_create::routes());
    all.extend(machines::routes());
    all.extend(machine_data::routes());
    all.extend(migrations::routes());
    all.extend(fwrules::routes());
    all.extend(nics::routes());
    all.extend(network_ips::routes());
    all.extend(fabrics::routes());
    all
}

/// The CloudAPI router: `/--ping` unsigned, everything else behind HTTP Signatures.
///
/// A request no route takes is answered by [`unknown_route`] (signed like any other): a
/// Triton operation this cloud does not implement yet is a 501 `NotImplemented` naming
/// it, a known path with another method a 405, anything else restify's 404.
pub fn router(state: AppState) -> Router {
    let audited = axum::middleware::from_fn_with_state(state.clone(), crate::http::audit_layer::cloudapi);
    let auth = || axum::middleware::from_fn_with_state(state.clone(), auth::authenticate);
    // One method router per path, so a path's unknown methods reach the same fallback.
    let mut by_path: Vec<(&'static str, axum::routing::MethodRouter<AppState>)> = Vec::new();
    for route in routes() {
        let handler = if route.auth == Auth::Public { route.handler } else { route.handler.layer(auth()) };
        match by_path.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, mr)) => *mr = std::mem::take(mr).merge(handler),
            None => by_path.push((route.path, handler)),
        }
    }
    let mut r: Router<AppState> = Router::new();
    for (path, mr) in by_path {
        r = r.route(path, mr.fallback(axum::handler::Handler::layer(unknown_route, auth())));
    }
    let fallback = axum::routing::any(unknown_route).layer(auth());
    r.fallback_service(fallback.with_state(state.clone()))
        .layer(axum::middleware::from_fn(headers))
        .layer(axum::middleware::from_fn(refuse_oversize))
        .layer(axum::middleware::from_fn(crate::http::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send + 'static>| {
            tracing::error!("a CloudAPI handler panicked");
            CloudError(ApiError::internal("internal error (logged on the headnode)")).into_response()
        }))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
        .layer(audited)
}

/// No CloudAPI request body may exceed [`crate::http::JSON_BODY_LIMIT`]: one that says
/// it does is answered 413 before authentication and before a byte of it is read (a
/// client waiting on `Expect: 100-continue` gets the answer instead of a broken pipe);
/// the serving layer adds `Connection: close` and closes cleanly after the answer.
async fn refuse_oversize(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let limit = crate::http::JSON_BODY_LIMIT;
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return CloudError(ApiError::too_large(limit)).into_response();
    }
    next.run(req).await
}

/// Triton CloudAPI operations Nereid does not implement yet, as (methods, path pattern,
/// operation); `*` is one path segment. Answered 501 `NotImplemented` rather than a 404
/// the CLI would turn into "<the instance/network> was not found".
const NOT_IMPLEMENTED: &[(&[&str], &str, &str)] = &[
    (&["GET"], "/*/changefeed", "Changefeed"),
    (&["GET"], "/*/datacenters/*", "GetDatacenter"),
    (&["GET"], "/*/machines/*/vnc", "GetMachineVnc"),
    (&["GET", "POST"], "/*/machines/*/disks", "Machine disks"),
    (&["GET", "POST", "DELETE"], "/*/machines/*/disks/*", "Machine disks"),
    (&["GET", "POST"], "/*/volumes", "Volumes"),
    (&["GET", "POST", "DELETE"], "/*/volumes/*", "Volumes"),
    (&["GET"], "/*/volumesizes", "ListVolumeSizes"),
    (&["GET", "POST"], "/*/users", "RBAC users"),
    (&["GET", "POST", "DELETE"], "/*/users/*", "RBAC users"),
    (&["POST"], "/*/users/*/change_password", "ChangeUserPassword"),
    (&["GET", "POST"], "/*/users/*/keys", "RBAC user keys"),
    (&["GET", "DELETE"], "/*/users/*/keys/*", "RBAC user keys"),
    (&["GET", "POST"], "/*/users/*/accesskeys", "Access keys"),
    (&["GET", "POST", "DELETE"], "/*/users/*/accesskeys/*", "Access keys"),
    (&["GET", "POST"], "/*/roles", "RBAC roles"),
    (&["GET", "POST", "DELETE"], "/*/roles/*", "RBAC roles"),
    (&["GET", "POST"], "/*/policies", "RBAC policies"),
    (&["GET", "POST", "DELETE"], "/*/policies/*", "RBAC policies"),
    (&["GET", "POST"], "/*/accesskeys", "Access keys"),
    (&["GET", "POST", "DELETE"], "/*/accesskeys/*", "Access keys"),
    // Role tags: one generic PUT on any resource path.
    (&["PUT"], "/*", "SetRoleTags"),
    (&["PUT"], "/*/*", "SetRoleTags"),
    (&["PUT"], "/*/*/*", "SetRoleTags"),
];

/// Whether a path matches a pattern of literal segments and `*`s (or, with `braces`,
/// `{name}`s).
fn path_matches(pattern: &str, path: &str, braces: bool) -> bool {
    let (p, s): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == s.len()
        && p.iter().zip(&s).all(|(p, s)| *p == *s || (!s.is_empty() && (*p == "*" || (braces && p.starts_with('{') && p.ends_with('}')))))
}

/// What CloudAPI answers for a request no route takes (see [`router`]).
pub fn unmatched(method: &Method, path: &str) -> ApiError {
    let path = path.trim_end_matches('/');
    let method_name = if method == Method::HEAD { "GET" } else { method.as_str() };
    if let Some((_, _, op)) = NOT_IMPLEMENTED.iter().find(|(ms, p, _)| ms.contains(&method_name) && path_matches(p, path, false)) {
        return ApiError::new(501, "NotImplemented", format!("{op} ({method} {path}) is not implemented by this cloud yet"));
    }
    if routes().iter().any(|r| path_matches(r.path, path, true)) {
        return ApiError::new(405, "MethodNotAllowed", format!("{method} is not allowed on {path}"));
    }
    ApiError::new(404, "ResourceNotFound", format!("{path} does not exist"))
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> CloudError {
    CloudError(unmatched(&method, uri.path()))
}

/// The headers every CloudAPI answer carries.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("cloudapi/{VERSION}")) {
        h.insert(header::SERVER, v);
    }
    h.insert("api-version", HeaderValue::from_static("9.0.0"));
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_get_cloudapi_codes() {
        let e = cloud_error(ApiError::not_found("VM x does not exist"));
        assert_eq!((e.status, e.code.as_str()), (404, "ResourceNotFound"));
        let e = cloud_error(ApiError::validation_409(vec![FieldError::missing("image")]));
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (409, "MissingParameter", "image: is required"));
        let e = cloud_error(ApiError::invalid_parameter(vec![FieldError::invalid("name", "bad")]));
        assert_eq!((e.status, e.code.as_str()), (409, "InvalidArgument"));
        let e = cloud_error(
            ApiError::conflict("NoAllocatableServersError", "no server has 64 GiB free")
                .with_errors(vec![FieldError::invalid("server-1", "secret hostname")]),
        );
        assert_eq!((e.code.as_str(), e.errors.len()), ("InsufficientCapacity", 0), "operators' per-server detail stays private");
        let e = cloud_error(ApiError::conflict("CannotDestroyMachineError", crate::app::vms::DELETION_PROTECTED));
        assert_eq!(e.message, "Instance has \"deletion_protection\" enabled, preventing deletion");
        assert_eq!(cloud_error(ApiError::conflict("VmNotRunning", "x")).code, "InvalidState");
    }

    #[test]
    fn unmatched_requests() {
        let e = unmatched(&Method::GET, "/alice/machines/3c9c1b5f-8e37-4c2d-9a6f-1b2c3d4e5f60/disks");
        assert_eq!((e.status, e.code.as_str()), (501, "NotImplemented"), "{e:?}");
        assert!(e.message.contains("Machine disks"), "{}", e.message);
        assert_eq!(unmatched(&Method::GET, "/alice/volumes").status, 501);
        assert_eq!(unmatched(&Method::DELETE, "/alice/fwrules").status, 405, "firewall rules are implemented");
        assert_eq!(unmatched(&Method::PUT, "/alice/machines/x").code, "NotImplemented");
        let e = unmatched(&Method::DELETE, "/alice/packages/x");
        assert_eq!((e.status, e.code.as_str()), (405, "MethodNotAllowed"), "{e:?}");
        let e = unmatched(&Method::GET, "/alice/nonsense/x/y/z");
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (404, "ResourceNotFound", "/alice/nonsense/x/y/z does not exist"));
    }
}
