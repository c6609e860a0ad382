//! The operator API's HTTP layer: the route table, authentication, errors, input parsing.
//!
//! Every endpoint is a [`Route`]: method, path, the handler, and a [`Doc`] that the
//! OpenAPI generator ([`crate::openapi`]) renders, so an endpoint cannot exist without
//! being documented. Handlers are thin: parse and validate input with the helpers
//! here, call `app`, render the result. Errors are [`HttpError`], rendered as Triton's
//! `{code, message, errors}` body in one place ([`IntoResponse for HttpError`]).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use nereid_types::query::{self, Param, Query};
use nereid_types::spec::{Field, Kind, Usage};
use nereid_types::{ApiError, FieldError};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::app::App;

pub mod accounts;
pub mod agent;
pub mod audit;
pub mod audit_layer;
pub mod consoles;
pub mod doctor;
pub mod fabrics;
pub mod fwrules;
pub mod image_catalog;
pub mod image_sources;
pub mod images;
pub mod ips;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod migrations;
pub mod netpolicy;
pub mod network_pools;
pub mod networks;
pub mod nic_tags;
pub mod nics;
pub mod oneachnode;
pub mod packages;
pub mod ping;
pub mod prom_sd;
pub mod servers;
pub mod vms;

/// Largest JSON body accepted (manifests with big tag sets stay well below it).
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub app: Arc<App>,
    /// Operators' bearer token.
    pub token: Arc<str>,
    /// What new compute nodes present to join.
    pub join_token: Arc<str>,
    /// What CloudAPI tells tenants about this cloud.
    pub cloud: Arc<crate::cloudapi::CloudInfo>,
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The operator token (admin.token).
    Admin,
    /// The agent listener: a client certificate with the approved key of the server named
    /// by `{uuid}` in the path.
    Server,
    /// The agent listener: the join token (join.token) as a bearer token.
    Join,
    /// CloudAPI: an HTTP Signature by an account's key.
    Signature,
    /// CloudAPI's `/--ping`, the agent listener's `/agent-ca`: no authentication.
    Public,
}

/// A handler error, rendered as Triton's error body.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json(status, &e.body());
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"nereid\""));
        }
        resp
    }
}

pub type HttpResult = Result<Response, HttpError>;

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "response did not serialize");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"code":"InternalError","message":"response did not serialize"}"#,
            )
                .into_response()
        }
    }
}

/// 200 with a JSON body.
pub fn ok<T: Serialize + ?Sized>(body: &T) -> HttpResult {
    Ok(json(StatusCode::OK, body))
}

/// Which Triton service an endpoint belongs to; decides how validation errors look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// 409 `ValidationFailed`.
    Papi,
    /// 422 `InvalidParameter`.
    Imgapi,
    /// 422 `InvalidParameters`.
    Napi,
}

impl Api {
    /// How a documented tag's service answers bad input (shared endpoints answer like IMGAPI).
    pub fn of(tag: &str) -> Api {
        match tag {
            "PAPI" | "VMAPI" | "UFDS" => Api::Papi,
            // CNAPI answers 500 for bad input in Triton; Nereid answers NAPI's 422.
            "NAPI" | "CNAPI" | "Agent" | "FWAPI" => Api::Napi,
            _ => Api::Imgapi,
        }
    }

    pub fn invalid(self, errors: Vec<FieldError>) -> ApiError {
        match self {
            Api::Papi => ApiError::validation_409(errors),
            Api::Imgapi => ApiError::invalid_parameter(errors),
            Api::Napi => ApiError::invalid_parameters(errors),
        }
    }
}

/// Reads a JSON object body (at most [`JSON_BODY_LIMIT`] bytes; empty means `{}`).
pub async fn read_object(body: Body) -> Result<Map<String, Value>, HttpError> {
    let bytes = axum::body::to_bytes(body, JSON_BODY_LIMIT).await.map_err(|e| {
        if error_chain(&e).contains("length limit exceeded") {
            HttpError(ApiError::too_large(JSON_BODY_LIMIT))
        } else {
            HttpError(ApiError::bad_request(format!("could not read the request body: {e}")))
        }
    })?;
    parse_object(&bytes)
}

/// An error and its sources, joined.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Parses a JSON object; names what is wrong when it is not one.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, HttpError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if has_nul(&v) => {
            Err(HttpError(ApiError::new(400, "InvalidContent", "strings in the request body may not contain NUL (\\u0000) characters")))
        }
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(HttpError(ApiError::new(
            400,
            "InvalidContent",
            format!("the request body must be a JSON object, not {}", nereid_types::spec::type_name(&other)),
        ))),
        Err(e) => Err(HttpError(ApiError::new(400, "InvalidContent", format!("the request body is not valid JSON: {e}")))),
    }
}

/// Whether any string (or key) in a JSON value holds a NUL character, which no store can keep.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Parses the query string against an endpoint's parameter table.
pub fn parse_query(api: Api, params: &[Param], raw: Option<&str>) -> Result<Query, HttpError> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    query::parse(params, &pairs).map_err(|errs| HttpError(api.invalid(errs)))
}

/// A UUID from the path.
pub fn path_uuid(api: Api, field: &str, s: &str) -> Result<Uuid, HttpError> {
    nereid_types::spec::check_uuid(s).map_err(|m| HttpError(api.invalid(vec![FieldError::invalid(field, m)])))?;
    Uuid::parse_str(s).map_err(|e| HttpError(ApiError::bad_request(e.to_string())))
}

/// What an endpoint takes as its body, for the API document.
#[derive(Clone, Copy)]
pub enum BodyDoc {
    None,
    Fields(&'static [Field], Usage),
    /// Raw bytes (image files).
    Binary,
    Schema(fn() -> Value),
}

/// What an endpoint answers, for the API document.
#[derive(Clone, Copy)]
pub enum RespDoc {
    Empty(u16),
    Object(u16, &'static [Field]),
    List(&'static [Field]),
    Binary,
    Schema(u16, fn() -> Value),
    /// 200 with a `text/plain` body (Prometheus metrics).
    Text(fn() -> Value),
}

/// An array of JSON objects, for output-only fields (a VM's `nics` and `disks`).
pub const ARRAY_OF_OBJECTS: Kind = Kind::Custom { check: is_array_of_objects, schema: array_of_objects_schema };

fn is_array_of_objects(v: &Value) -> Result<(), String> {
    match v {
        Value::Array(a) if a.iter().all(Value::is_object) => Ok(()),
        _ => Err("must be an array of objects".into()),
    }
}

fn array_of_objects_schema() -> Value {
    serde_json::json!({"type": "array", "items": {"type": "object"}})
}

/// An endpoint's documentation.
#[derive(Clone, Copy)]
pub struct Doc {
    /// Triton's operation name, e.g. `CreatePackage`.
    pub id: &'static str,
    /// Service: PAPI, IMGAPI, NAPI, …
    pub tag: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    pub body: BodyDoc,
    pub response: RespDoc,
}

/// One endpoint.
pub struct Route {
    pub method: Method,
    /// Path in axum/OpenAPI syntax: `/packages/{uuid}`.
    pub path: &'static str,
    pub doc: Doc,
    pub auth: Auth,
    pub handler: MethodRouter<AppState>,
}

impl Route {
    pub fn new<H, T>(method: Method, path: &'static str, doc: Doc, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = axum::routing::MethodFilter::try_from(method.clone()).unwrap_or(axum::routing::MethodFilter::GET);
        Route { method, path, doc, auth: Auth::Admin, handler: axum::routing::on(filter, handler) }
    }

    /// Changes who may call the endpoint.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
}

/// Every endpoint of the headnode's own APIs: the operator API's and, tagged `Agent`,
/// the agent listener's (see [`agent_router`]). One table documents both.
pub fn routes() -> Vec<Route> {
    let mut all = Vec::new();
    all.extend(ping::routes());
    all.extend(packages::routes());
    all.extend(images::routes());
    all.extend(image_sources::routes());
    all.extend(nic_tags::routes());
    all.extend(networks::routes());
    all.extend(network_pools::routes());
    all.extend(fabrics::routes());
    all.extend(nics::routes());
    all.extend(ips::routes());
    all.extend(servers::routes());
    all.extend(netpolicy::routes());
    all.extend(agent::routes());
    all.extend(vms::routes());
    all.extend(migrations::routes());
    all.extend(consoles::routes());
    all.extend(accounts::routes());
    all.extend(limits::routes());
    all.extend(jobs::routes());
    all.extend(doctor::routes());
    all.extend(fwrules::routes());
    all.extend(metrics::routes());
    all.extend(prom_sd::routes());
    all.extend(audit::routes());
    all.extend(oneachnode::routes());
    all
}

/// Whether a route is served on the agent listener rather than the operator's.
pub fn is_agent_route(r: &Route) -> bool {
    r.doc.tag == agent::TAG
}

/// The operator API router: routes, authentication, JSON 404/405, panic safety net.
pub fn router(state: AppState) -> Router {
    let routes = routes().into_iter().filter(|r| !is_agent_route(r)).collect();
    let audited = axum::middleware::from_fn_with_state(state.clone(), audit_layer::admin);
    build(state, routes).fallback(not_found).method_not_allowed_fallback(bad_method).pipe_layers().layer(audited)
}

/// The agent listener's router (mutual TLS, see [`crate::agent_listener`]): join, the CA,
/// and what servers report and fetch. Nothing of the operator API.
pub fn agent_router(state: AppState) -> Router {
    let routes = routes().into_iter().filter(is_agent_route).collect();
    build(state, routes).fallback(agent_not_found).method_not_allowed_fallback(agent_bad_method).pipe_layers()
}

/// A router's routes, each behind its query check and authentication, and the layers every
/// answer passes through.
struct Built(Router<AppState>, AppState);

fn build(state: AppState, routes: Vec<Route>) -> Built {
    let mut r: Router<AppState> = Router::new();
    for route in routes {
        // Every endpoint refuses query parameters its table does not list, whether or not
        // its handler reads any.
        let (params, api, auth) = (route.doc.query, Api::of(route.doc.tag), route.auth);
        let handler = route
            .handler
            .layer(axum::middleware::from_fn(move |req: Request, next: Next| check_query(params, api, req, next)))
            .layer(axum::middleware::from_fn_with_state(state.clone(), move |st: State<AppState>, req: Request, next: Next| {
                authenticate(auth, st, req, next)
            }));
        r = r.route(route.path, handler);
    }
    Built(r, state)
}

impl Built {
    fn fallback<H: Handler<T, AppState>, T: 'static>(self, h: H) -> Self {
        Built(self.0.fallback(h), self.1)
    }
    fn method_not_allowed_fallback<H: Handler<T, AppState>, T: 'static>(self, h: H) -> Self {
        Built(self.0.method_not_allowed_fallback(h), self.1)
    }
    fn pipe_layers(self) -> Router {
        let Built(r, state) = self;
        r.layer(axum::middleware::from_fn(json_errors))
            .layer(axum::middleware::from_fn_with_state(state.clone(), log_request))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state)
    }
}

async fn agent_not_found(req: Request) -> HttpError {
    HttpError(ApiError::not_found(format!("{} {} is not an endpoint of the agent API", req.method(), req.uri().path())))
}

async fn agent_bad_method(req: Request) -> HttpError {
    HttpError(ApiError::bad_method(format!("{} is not allowed on {}", req.method(), req.uri().path())))
}

/// The Triton-style code for an HTTP status, for errors that did not come with one.
pub fn status_code_name(status: StatusCode) -> String {
    match status.as_u16() {
        400 => "BadRequest".into(),
        404 => "ResourceNotFound".into(),
        405 => "MethodNotAllowed".into(),
        413 => "RequestEntityTooLarge".into(),
        414 => "RequestUriTooLarge".into(),
        500 => "InternalError".into(),
        _ => status.canonical_reason().unwrap_or("Error").chars().filter(char::is_ascii_alphanumeric).collect(),
    }
}

/// Makes every error answer Triton's `{code, message}` JSON: the few that are not already
/// (an extractor's `text/plain` rejection such as "Invalid URL: Invalid UTF-8 in `uuid`",
/// an empty 405 or 413) get the status's code and their text as the message. The
/// outermost layer of both routers; errors hyper writes itself are handled in
/// [`crate::server`].
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    let e = ApiError::new(status.as_u16(), status_code_name(status), message);
    let body = serde_json::to_vec(&e.body()).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}

async fn check_query(params: &'static [Param], api: Api, req: Request, next: Next) -> Response {
    match parse_query(api, params, req.uri().query()) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
}

async fn not_found(State(s): State<AppState>, req: Request) -> HttpError {
    if !bearer(&req).is_some_and(|t| constant_time_eq(t.as_bytes(), s.token.as_bytes())) {
        return HttpError(ApiError::unauthorized(
            "this API needs an Authorization: Bearer <token> header; the token is in admin.token in the headnode's data directory",
        ));
    }
    HttpError(ApiError::not_found(format!("{} {} is not an endpoint of this API", req.method(), req.uri().path())))
}

async fn bad_method(State(s): State<AppState>, req: Request) -> HttpError {
    if !bearer(&req).is_some_and(|t| constant_time_eq(t.as_bytes(), s.token.as_bytes())) {
        return HttpError(ApiError::unauthorized(
            "this API needs an Authorization: Bearer <token> header; the token is in admin.token in the headnode's data directory",
        ));
    }
    HttpError(ApiError::bad_method(format!("{} is not allowed on {}", req.method(), req.uri().path())))
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    HttpError(ApiError::internal("internal error (logged on the headnode)")).into_response()
}

/// On a heartbeat: the key it came with and the generation of its server's trust record
/// that key was verified at (read now, or lately: see `app::liveness`).
#[derive(Debug, Clone)]
pub struct VerifiedTrust(pub String, pub i64);

/// Checks the credentials an endpoint needs: the operator's bearer token, the join token,
/// or (agent listener) the client certificate of the server in the path.
async fn authenticate(auth: Auth, State(state): State<AppState>, req: Request, next: Next) -> Response {
    match auth {
        Auth::Public => return next.run(req).await,
        // CloudAPI routes are never mounted here.
        Auth::Signature => return HttpError(ApiError::unauthorized("not an endpoint of this API")).into_response(),
        Auth::Server => {
            let server = req.uri().path().strip_prefix("/servers/").and_then(|r| r.split('/').next()).and_then(|u| Uuid::parse_str(u).ok());
            let pin = req.extensions().get::<axum::extract::ConnectInfo<nereid_trust::Peer>>().and_then(|c| c.0.pin.clone());
            let Some(pin) = pin else {
                return HttpError(ApiError::unauthorized(
                    "the agent API needs the server's client certificate (issued by the headnode CA at join)",
                ))
                .into_response();
            };
            // A heartbeat may be let in by the key verified for its server lately: what it
            // writes at once checks that the trust record is unchanged (see `app::liveness`).
            let heartbeat = req.uri().path().ends_with("/events/heartbeat");
            let mut req = req;
            let ok = match server {
                Some(u) if heartbeat => {
                    let g = match state.app.liveness.trusted(u, &pin) {
                        Some(g) => Some(g),
                        None => state.app.server_pin_generation(u, &pin).await.inspect(|g| state.app.liveness.trust(u, &pin, *g)),
                    };
                    g.map(|g| req.extensions_mut().insert(VerifiedTrust(pin, g))).is_some()
                }
                Some(u) => state.app.server_pin_matches(u, &pin).await,
                None => false,
            };
            return if ok {
                next.run(req).await
            } else {
                HttpError(ApiError::new(403, "NotAuthorized", crate::app::servers::SERVER_KEY_REFUSED)).into_response()
            };
        }
        Auth::Admin | Auth::Join => {}
    }
    let Some(given) = bearer(&req).map(str::to_string) else {
        let hint = match auth {
            Auth::Join => "a compute node joins with Authorization: Bearer <join token> (join.token in the headnode's data directory)",
            _ => "this API needs an Authorization: Bearer <token> header; the token is in admin.token in the headnode's data directory",
        };
        return HttpError(ApiError::unauthorized(hint)).into_response();
    };
    let ok = match auth {
        Auth::Join => constant_time_eq(given.as_bytes(), state.join_token.as_bytes()) || state.app.is_cluster_join_token(&given).await,
        _ => constant_time_eq(given.as_bytes(), state.token.as_bytes()),
    };
    if ok {
        next.run(req).await
    } else {
        HttpError(ApiError::unauthorized("the bearer token is not valid for this endpoint")).into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn log_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let route =
        req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "(unmatched)".into());
    let has_body = req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let start = Instant::now();
    let mut resp = next.run(req).await;
    let status = resp.status().as_u16();
    // A refused request's body may be left unread (a 20 GiB upload is not drained to say
    // no); closing the connection keeps a client from reusing it mid-body.
    if status >= 400 && has_body {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    state.app.metrics.observe_request(method.as_str(), &route, status, start.elapsed().as_secs_f64());
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(%method, %path, status, ms, "request");
    } else {
        tracing::debug!(%method, %path, status, ms, "request");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(parse_object(b"  ").unwrap().is_empty());
        let e = parse_object(b"[1]").unwrap_err().0;
        assert_eq!((e.status, e.message.as_str()), (400, "the request body must be a JSON object, not an array"));
        let e = parse_object(b"{\"a\":").unwrap_err().0;
        assert!(e.message.starts_with("the request body is not valid JSON: EOF"), "{}", e.message);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
