//! CloudAPI request rate limits: a token bucket per account (known once the HTTP
//! Signature checks out, see [`super::auth`]) and one per source address for requests
//! that are not authenticated. Over the limit a request gets restify's answer: `429
//! RequestThrottled` with a `Retry-After` header (whole seconds, rounded up).
//!
//! The defaults (50 requests a second, bursts of 200) are far above what the `triton`
//! CLI or a Terraform run sends; `nereid headnode --rate-limit/--rate-burst` change them.
//! `/--ping` is not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use nereid_types::ApiError;

use super::CloudError;

/// Default requests a second per account (and per address, unauthenticated).
pub const RATE: f64 = 50.0;
/// Default burst: requests an idle account may send at once.
pub const BURST: u32 = 200;
/// Buckets kept before full ones (idle long enough to have refilled) are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// How fast requests may come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests a second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { per_second: RATE, burst: BURST }
    }
}

/// One client's bucket.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(limit: &RateLimit, now: Instant) -> Self {
        Bucket { tokens: f64::from(limit.burst), at: now }
    }

    fn refill(&mut self, limit: &RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.per_second))
    }

    fn is_full(&self, limit: &RateLimit, now: Instant) -> bool {
        let mut b = *self;
        b.refill(limit, now);
        b.tokens >= f64::from(limit.burst)
    }
}

/// The limiter CloudAPI's router carries (as a request extension, see [`super::auth`]).
#[derive(Debug, Default)]
pub struct RateLimiter {
    limit: RateLimit,
    accounts: Mutex<HashMap<String, Bucket>>,
    addresses: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A request over its limit: the answer to send.
#[derive(Debug)]
pub struct Throttled {
    pub retry_after: Duration,
    pub message: String,
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let mut resp = CloudError(ApiError::new(429, "RequestThrottled", self.message)).into_response();
        let secs = retry_after_secs(self.retry_after);
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

fn take<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Bucket>>, key: K, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
    let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.len() > PRUNE_ABOVE {
        map.retain(|_, b| !b.is_full(limit, now));
    }
    map.entry(key).or_insert_with(|| Bucket::full(limit, now)).take(limit, now)
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter { limit, ..Default::default() }
    }

    /// A request signed by account `login`.
    pub fn account(&self, login: &str) -> Result<(), Throttled> {
        take(&self.accounts, login.to_string(), &self.limit, Instant::now()).map_err(|retry_after| self.throttled(login, retry_after))
    }

    /// A request that is not authenticated, from `addr`.
    pub fn address(&self, addr: IpAddr) -> Result<(), Throttled> {
        take(&self.addresses, addr, &self.limit, Instant::now()).map_err(|retry_after| self.throttled(&addr.to_string(), retry_after))
    }

    fn throttled(&self, who: &str, retry_after: Duration) -> Throttled {
        tracing::info!(who, "CloudAPI request throttled");
        Throttled {
            retry_after,
            message: format!(
                "{who} request rate exceeded: at most {} requests a second (bursts of {}); retry after {} s",
                self.limit.per_second,
                self.limit.burst,
                retry_after_secs(retry_after)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_the_sustained_rate() {
        let limit = RateLimit { per_second: 10.0, burst: 3 };
        let t0 = Instant::now();
        let mut b = Bucket::full(&limit, t0);
        for _ in 0..3 {
            b.take(&limit, t0).unwrap();
        }
        let wait = b.take(&limit, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.take(&limit, t0 + Duration::from_millis(50)).is_err());
        b.take(&limit, t0 + Duration::from_millis(100)).unwrap();
        // A long quiet spell refills to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            b.take(&limit, later).unwrap();
        }
        assert!(b.take(&limit, later).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn accounts_and_addresses_have_their_own_buckets() {
        let l = RateLimiter::new(RateLimit { per_second: 0.5, burst: 1 });
        l.account("alice").unwrap();
        let t = l.account("alice").unwrap_err();
        assert!(t.message.starts_with("alice request rate exceeded"), "{}", t.message);
        assert_eq!(retry_after_secs(t.retry_after), 2);
        l.account("bob").unwrap();
        l.address("127.0.0.1".parse().unwrap()).unwrap();
        assert!(l.address("127.0.0.1".parse().unwrap()).is_err());
        l.address("127.0.0.2".parse().unwrap()).unwrap();
        let resp = t.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
    }
}
