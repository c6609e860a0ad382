//! CloudAPI authentication: the HTTP Signature check in front of every route but
//! `/--ping`, as sdc-cloudapi does it for the `triton` CLI.
//!
//! Order (compat/cloudapi.md §1.5): header present (401) and parseable (400
//! `InvalidHeader`) → `date` signed and within ±300 s → keyId `/login/keys/ID` (or the
//! sub-user form) → account and key exist and the account is enabled → algorithm fits
//! the key → signature over the *raw* request line. Every failure after parsing answers
//! the same 401 "Invalid authorization credentials supplied" (the log says which step
//! failed), so nobody learns which logins or keys exist.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nereid_types::ApiError;

use super::signature::{self, KeyId};
use super::{Caller, CloudError};
use crate::http::AppState;

/// Clock skew a signed `Date` may have (http-signature's default, which sdc-cloudapi uses).
pub const MAX_SKEW_SECS: i64 = 300;

const NO_AUTH: &str = "You must make authenticated requests to use CloudAPI";
const BAD_CREDENTIALS: &str = "Invalid authorization credentials supplied";

fn credentials() -> CloudError {
    CloudError(ApiError::new(401, "InvalidCredentials", BAD_CREDENTIALS))
}

/// A signed-in web console account's request to CloudAPI, made in process by
/// [`crate::web::api`]: the console's tenant views go through CloudAPI's own handlers, so
/// tenants see exactly what CloudAPI's scope rules let them see. Only code can put this in
/// a request's extensions; nothing from the wire can.
#[derive(Debug, Clone)]
pub struct InProcessCaller(pub Caller);

/// The middleware: verifies the signature and puts the [`Caller`] in the request.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(InProcessCaller(caller)) = req.extensions_mut().remove::<InProcessCaller>() {
        if caller.account.disabled {
            return credentials().into_response();
        }
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let method = req.method().as_str().to_string();
    let target = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let headers = req.headers().clone();
    // Rate limits (when the router carries a limiter): per account once the signature
    // checks out, per source address otherwise.
    let limiter = req.extensions().get::<std::sync::Arc<super::ratelimit::RateLimiter>>().cloned();
    match check(&s, &method, &target, &headers).await {
        Ok(caller) => {
            if let Some(Err(throttled)) = limiter.as_ref().map(|l| l.account(&caller.account.login)) {
                return throttled.into_response();
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
            if let (Some(l), Some(ip)) = (&limiter, peer)
                && let Err(throttled) = l.address(ip)
            {
                return throttled.into_response();
            }
            e.into_response()
        }
    }
}

async fn check(s: &AppState, method: &str, target: &str, headers: &axum::http::HeaderMap) -> Result<Caller, CloudError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(CloudError(ApiError::new(401, "InvalidCredentials", NO_AUTH)));
    };
    let value = value.to_str().map_err(|_| CloudError(ApiError::new(400, "InvalidHeader", "the Authorization header is not ASCII")))?;
    if !value.trim_start().starts_with("Signature ") {
        return Err(CloudError(ApiError::new(401, "InvalidCredentials", NO_AUTH)));
    }
    let auth = signature::parse_authorization(value)
        .map_err(|e| CloudError(ApiError::new(400, "InvalidHeader", format!("invalid Authorization header: {e}"))))?;
    let fail = |step: &str, detail: String| {
        tracing::info!(step, detail, key_id = %auth.key_id, "CloudAPI signature refused");
        credentials()
    };
    let date = headers.get("date").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !auth.headers.iter().any(|h| h == "date") {
        return Err(fail("headers", "the Date header is not signed".into()));
    }
    signature::check_date(date, time::OffsetDateTime::now_utc(), MAX_SKEW_SECS).map_err(|e| fail("date", e.to_string()))?;
    let (login, key_name) = match signature::parse_key_id(&auth.key_id) {
        Ok(KeyId::Account { login, key }) => (login, key),
        // Sub-users (RBAC) are not implemented: their keys cannot exist yet.
        Ok(KeyId::User { .. }) => return Err(fail("keyId", "sub-user keys are not supported".into())),
        Err(e) => {
            return Err(CloudError(ApiError::new(
                401,
                "InvalidCredentials",
                format!("Invalid KeyId {} in authorization header: {e}", auth.key_id),
            )));
        }
    };
    let Some((account, key)) = s.app.signing_key(&login, &key_name).await? else {
        return Err(fail("key", format!("no enabled account {login} with key {key_name}")));
    };
    let stored = super::sshkey::parse_public_key(&key.key).map_err(|e| fail("stored key", e.to_string()))?;
    let data = signature::signing_string(&auth, method, target, |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string))
        .map_err(|e| fail("signing string", e.to_string()))?;
    signature::verify(&stored, &auth.algorithm, data.as_bytes(), &auth.signature).map_err(|e| fail("verify", e.to_string()))?;
    Ok(Caller { account, key: key.fingerprint })
}
