//! The console's only way to read or change anything: requests to the operator API and to
//! CloudAPI, made in process through their own routers (their validation, scope rules,
//! jobs and error codes; nothing re-implemented here).
//!
//! - [`Web::admin`]: the operator API with the operator token (operator pages only: the
//!   [`super::session::require_operator`] guard stands in front of every caller, and the
//!   [`super::session::Operator`] extractor in front of the operator's console pages).
//! - [`Web::cloud`]: CloudAPI as the signed-in account
//!   ([`crate::cloudapi::auth::InProcessCaller`]), so a tenant page can never show more
//!   than CloudAPI would answer that account.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use nereid_types::account::Account;
use nereid_types::{ApiError, FieldError};
use serde_json::Value;
use tower::ServiceExt;

use super::Web;
use crate::cloudapi::Caller;
use crate::cloudapi::auth::InProcessCaller;

/// Answers are read whole up to this (lists of thousands of objects fit).
const ANSWER_LIMIT: usize = 64 << 20;

/// An API's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// A response header as text (`x-resource-count`, `location`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The API error an error answer carries.
pub fn error_of(status: StatusCode, body: &Value) -> ApiError {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let code = text("code").unwrap_or_else(|| crate::http::status_code_name(status));
    let message = text("message").unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let mut e = ApiError::new(status.as_u16(), code, message);
    if let Some(errs) = body.get("errors").and_then(Value::as_array) {
        e.errors = errs
            .iter()
            .filter_map(|f| {
                let field = f.get("field").and_then(Value::as_str)?;
                let code = f.get("code").and_then(Value::as_str).unwrap_or("Invalid");
                let message = f.get("message").and_then(Value::as_str).unwrap_or_default();
                let mut fe = FieldError::invalid(field, message);
                fe.code = code.to_string();
                Some(fe)
            })
            .collect();
    }
    e
}

async fn call(router: axum::Router, req: Request<Body>) -> Result<Reply, ApiError> {
    let resp = router.oneshot(req).await.map_err(|e| ApiError::internal(format!("in-process request: {e}")))?;
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, ANSWER_LIMIT).await.map_err(|e| ApiError::internal(format!("reading an answer: {e}")))?;
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    if parts.status.is_success() {
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    } else {
        Err(error_of(parts.status, &body))
    }
}

fn request(method: Method, path: &str, body: Option<&Value>) -> Result<axum::http::request::Builder, ApiError> {
    if !path.starts_with('/') {
        return Err(ApiError::internal(format!("not an API path: {path}")));
    }
    let b = Request::builder().method(method).uri(path).header(header::HOST, "nereid-web.internal");
    Ok(if body.is_some() { b.header(header::CONTENT_TYPE, "application/json") } else { b })
}

fn body_of(body: Option<&Value>) -> Body {
    match body {
        Some(v) => Body::from(serde_json::to_vec(v).unwrap_or_default()),
        None => Body::empty(),
    }
}

impl Web {
    /// An operator API request (`path` with its query), as an operator.
    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, ApiError> {
        let req = request(method, path, body)?
            .header(header::AUTHORIZATION, format!("Bearer {}", self.state.token))
            .body(body_of(body))
            .map_err(|e| ApiError::internal(format!("building a request: {e}")))?;
        call(self.admin.clone(), req).await
    }

    /// An operator API request with a streamed body (image file uploads).
    pub async fn admin_stream(&self, method: Method, path: &str, content_length: Option<u64>, body: Body) -> Result<Reply, ApiError> {
        let mut b = request(method, path, None)?
            .header(header::AUTHORIZATION, format!("Bearer {}", self.state.token))
            .header(header::CONTENT_TYPE, "application/octet-stream");
        if let Some(n) = content_length {
            b = b.header(header::CONTENT_LENGTH, n);
        }
        let req = b.body(body).map_err(|e| ApiError::internal(format!("building a request: {e}")))?;
        call(self.admin.clone(), req).await
    }

    /// `GET` on the operator API, the answer's body.
    pub async fn admin_get(&self, path: &str) -> Result<Value, ApiError> {
        Ok(self.admin(Method::GET, path, None).await?.body)
    }

    /// A CloudAPI request as `account` (`path` such as `/my/machines`).
    pub async fn cloud(&self, account: &Account, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, ApiError> {
        let mut req = request(method, path, body)?
            .header("accept-version", "~9")
            .body(body_of(body))
            .map_err(|e| ApiError::internal(format!("building a request: {e}")))?;
        req.extensions_mut().insert(InProcessCaller(Caller { account: account.clone(), key: "web-console".into() }));
        call(self.cloud.clone(), req).await
    }

    /// `GET` on CloudAPI as `account`, the answer's body.
    pub async fn cloud_get(&self, account: &Account, path: &str) -> Result<Value, ApiError> {
        Ok(self.cloud(account, Method::GET, path, None).await?.body)
    }
}

/// A path segment or query value, percent-encoded.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_become_api_errors_with_their_fields() {
        let body = serde_json::json!({"code": "ValidationFailed", "message": "bad", "errors": [{"field": "ram", "code": "Invalid", "message": "too small"}]});
        let e = error_of(StatusCode::CONFLICT, &body);
        assert_eq!((e.status, e.code.as_str(), e.message.as_str()), (409, "ValidationFailed", "bad"));
        assert_eq!((e.errors[0].field.as_str(), e.errors[0].message.as_str()), ("ram", "too small"));
        let e = error_of(StatusCode::NOT_FOUND, &Value::Null);
        assert_eq!(e.status, 404);
    }
}
