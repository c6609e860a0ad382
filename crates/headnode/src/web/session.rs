//! Signed-in sessions: a random token in an HttpOnly, SameSite=Strict cookie (`Secure`
//! and `__Host-` prefixed under TLS); the store keeps only the token's SHA-256, with the
//! account, the session's CSRF token and its times, so sessions outlive a headnode restart
//! and work on every headnode of a cluster. A session ends after
//! [`super::WebConfig::session_idle`] without use, after `session_max` at most, at sign-out,
//! or when its account is disabled.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Redirect, Response};
use nereid_store::{Cond, Op};
use nereid_types::ApiError;
use nereid_types::account::Account;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use uuid::Uuid;

use super::{Web, page};
use crate::app::{encode, store_error};
use crate::buckets::WEB_SESSIONS;

/// A signed-in account, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The account as the store has it now (re-read on every request).
    pub account: Account,
    /// What every form of this session carries (`csrf` field or `X-CSRF-Token` header).
    pub csrf: String,
}

/// What the store keeps for a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    pub account: Uuid,
    pub csrf: String,
    /// Unix seconds.
    pub created: i64,
    pub last_seen: i64,
}

/// The cookie's name: `__Host-` under TLS makes browsers refuse it unless Secure, for `/`,
/// from this very host.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure { "__Host-nereid_session" } else { "nereid_session" }
}

/// The `Set-Cookie` value that carries a new session's token.
pub fn set_cookie(secure: bool, token: &str, max_age: std::time::Duration) -> String {
    let secure_attr = if secure { "; Secure" } else { "" };
    format!("{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure_attr}", cookie_name(secure), max_age.as_secs())
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie(secure: bool) -> String {
    let secure_attr = if secure { "; Secure" } else { "" };
    format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure_attr}", cookie_name(secure))
}

/// The session token a request's cookies carry.
pub fn token_of(headers: &HeaderMap, secure: bool) -> Option<String> {
    let name = cookie_name(secure);
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

fn key_of(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Whether a stored session is still good at `now`.
pub fn live(s: &StoredSession, now: i64, idle: std::time::Duration, max: std::time::Duration) -> bool {
    now - s.last_seen <= idle.as_secs() as i64 && now - s.created <= max.as_secs() as i64 && now >= s.created - 60
}

/// Compares two secrets in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Web {
    /// Starts a session for an account; returns the cookie token.
    pub async fn start_session(&self, account: &Account) -> Result<String, ApiError> {
        let token = random_hex();
        let t = now();
        let stored = StoredSession { account: account.uuid, csrf: random_hex(), created: t, last_seen: t };
        self.app()
            .store
            .batch(vec![Op::put(WEB_SESSIONS.name, key_of(&token), encode(&stored), Cond::Absent)])
            .await
            .map_err(store_error)?;
        Ok(token)
    }

    /// Deletes every session that has expired (a sign-in runs this at most every ten
    /// minutes, so sessions nobody comes back to do not pile up). Returns how many went.
    pub async fn purge_sessions(&self) -> Result<usize, ApiError> {
        let t = now();
        let last = self.last_purge.load(std::sync::atomic::Ordering::Relaxed);
        if t - last < 600 {
            return Ok(0);
        }
        self.last_purge.store(t, std::sync::atomic::Ordering::Relaxed);
        let all = self.app().store.list(WEB_SESSIONS.name, &nereid_store::ListQuery::all()).await.map_err(store_error)?;
        let ops: Vec<Op> = all
            .into_iter()
            .filter(|o| {
                // A record that does not decode is of no use to anyone: it goes too.
                serde_json::from_value::<StoredSession>(o.value.clone())
                    .map(|s| !live(&s, t, self.cfg.session_idle, self.cfg.session_max))
                    .unwrap_or(true)
            })
            .map(|o| Op::delete(WEB_SESSIONS.name, o.key, Cond::Generation(o.generation)))
            .collect();
        let n = ops.len();
        for op in ops {
            // A session used meanwhile changed generation: its delete fails alone, harmlessly.
            let _ = self.app().store.batch(vec![op]).await;
        }
        if n > 0 {
            tracing::info!(sessions = n, "expired web console sessions deleted");
        }
        Ok(n)
    }

    /// Ends the session a token names (nothing if there is none).
    pub async fn end_session(&self, token: &str) -> Result<(), ApiError> {
        self.app().store.batch(vec![Op::delete(WEB_SESSIONS.name, key_of(token), Cond::Any)]).await.map_err(store_error)?;
        Ok(())
    }

    /// The session a token names, if it is live and its account exists and is enabled.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, ApiError> {
        let key = key_of(token);
        let Some((mut stored, _)) = self.app().read::<StoredSession>(WEB_SESSIONS.name, &key).await? else {
            return Ok(None);
        };
        let t = now();
        if !live(&stored, t, self.cfg.session_idle, self.cfg.session_max) {
            self.app().store.batch(vec![Op::delete(WEB_SESSIONS.name, key, Cond::Any)]).await.map_err(store_error)?;
            return Ok(None);
        }
        let account = match self.app().find_account(&stored.account.to_string()).await {
            Ok((a, _)) if !a.disabled => a,
            Ok(_) => return Ok(None),
            Err(e) if e.status == 404 => return Ok(None),
            Err(e) => return Err(e),
        };
        // The idle clock moves at most once a minute: not a store write per request.
        if t - stored.last_seen >= 60 {
            stored.last_seen = t;
            self.app().store.batch(vec![Op::put(WEB_SESSIONS.name, key.clone(), encode(&stored), Cond::Any)]).await.map_err(store_error)?;
        }
        Ok(Some(Session { account, csrf: stored.csrf }))
    }
}

/// Where to send a request that needs a session it does not have.
fn sign_in_first(parts: &Parts) -> Response {
    if parts.method == Method::GET || parts.method == Method::HEAD {
        let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let q = url::form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
        Redirect::to(&format!("/login?{q}")).into_response()
    } else {
        page::message(
            axum::http::StatusCode::UNAUTHORIZED,
            None,
            "Signed out",
            "Your session has ended: sign in again, then repeat what you did.",
        )
    }
}

async fn lookup(parts: &Parts, web: &Web) -> Result<Option<Session>, Response> {
    let Some(token) = token_of(&parts.headers, web.secure) else { return Ok(None) };
    web.session(&token).await.map_err(|e| page::api_error(None, "Error", &e))
}

impl FromRequestParts<Web> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Response> {
        if let Some(s) = parts.extensions.get::<Session>() {
            return Ok(s.clone());
        }
        match lookup(parts, web).await? {
            Some(s) => {
                parts.extensions.insert(s.clone());
                Ok(s)
            }
            None => Err(sign_in_first(parts)),
        }
    }
}

impl OptionalFromRequestParts<Web> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Option<Self>, Response> {
        if let Some(s) = parts.extensions.get::<Session>() {
            return Ok(Some(s.clone()));
        }
        let s = lookup(parts, web).await?;
        if let Some(s) = &s {
            parts.extensions.insert(s.clone());
        }
        Ok(s)
    }
}

/// A signed-in operator. Anyone else gets 403 with only the refusal in the body, as
/// CloudAPI answers a tenant who names another account.
#[derive(Debug, Clone)]
pub struct Operator(pub Session);

impl FromRequestParts<Web> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Response> {
        let s = <Session as FromRequestParts<Web>>::from_request_parts(parts, web).await?;
        if s.account.operator { Ok(Operator(s)) } else { Err(page::forbidden(&s)) }
    }
}

/// The guard in front of every operator route (GET, POST, upload, WebSocket alike): a
/// request without a session goes to sign in, a tenant's gets 403 with nothing but the
/// refusal — whatever the handler behind it extracts, so no operator page can forget.
pub async fn require_operator(
    axum::extract::State(web): axum::extract::State<Web>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    match <Operator as FromRequestParts<Web>>::from_request_parts(&mut parts, &web).await {
        Ok(_) => next.run(axum::extract::Request::from_parts(parts, body)).await,
        Err(refusal) => refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sessions_expire_when_idle_or_old() {
        let s = StoredSession { account: Uuid::nil(), csrf: String::new(), created: 1000, last_seen: 1000 };
        let (idle, max) = (Duration::from_secs(600), Duration::from_secs(3600));
        assert!(live(&s, 1000, idle, max));
        assert!(live(&s, 1600, idle, max));
        assert!(!live(&s, 1601, idle, max), "idle too long");
        let busy = StoredSession { last_seen: 4500, ..s.clone() };
        assert!(live(&busy, 4600, idle, max));
        assert!(!live(&busy, 4601, idle, max), "older than the maximum");
    }

    #[test]
    fn cookies_carry_the_token_and_the_right_attributes() {
        let c = set_cookie(true, "abc", Duration::from_secs(60));
        assert_eq!(c, "__Host-nereid_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure");
        assert!(!set_cookie(false, "abc", Duration::from_secs(60)).contains("Secure"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; nereid_session=tok; b=2".parse().unwrap());
        assert_eq!(token_of(&h, false).as_deref(), Some("tok"));
        assert_eq!(token_of(&h, true), None, "a TLS console reads only its __Host- cookie");
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
