//! Nereid's HTTP serving layer: every listener of the headnode (operator API, CloudAPI)
//! and of the agent serves its router through [`serve`], which bounds what one client
//! can hold:
//!
//! - **header read timeout** ([`Limits::header_read_timeout`], 10 s): a request head
//!   must be complete this long after its first byte, or the connection is closed;
//! - **body read timeout** ([`Limits::body_read_timeout`], 30 s): a request body that
//!   makes no progress for this long ends the request with `408 RequestTimeout` and
//!   `Connection: close`;
//! - **idle timeout** ([`Limits::idle_timeout`], 60 s): a keep-alive connection with no
//!   request for this long is closed;
//! - **connection limit** ([`Limits::max_connections`], 4096 per listener): when full, the
//!   longest-idle connection (no request in flight) is closed to make room, so a fresh
//!   client is never locked out by idle or slow ones;
//! - **clean closes**: when an answer goes out before its request body was read (413,
//!   408), the connection says `Connection: close`, shuts its write side and reads what
//!   the client still sends for a moment ([`Limits::linger`]) before closing, so the
//!   client reads the answer instead of a reset;
//! - **accept errors** (`EMFILE` …) back off up to a second and are logged at most once a
//!   minute ([`accept`]); [`raise_fd_limit`] lifts the soft `RLIMIT_NOFILE` to the hard one.
//!
//! Theory of operation, per connection (one task each, see [`conn`]):
//!
//! ```text
//!   accept ─► idle ──first byte──► reading head ──head parsed──► in flight ──answer sent──► idle
//!              │ idle_timeout          │ header_read_timeout        │ body stalls: 408, close
//!              ▼                       ▼                            ▼
//!            closed                  closed                       closed (after linger)
//! ```
//!
//! WebSocket upgrades go through (`with_upgrades`); an upgraded connection leaves the
//! accounting once hyper hands it to its handler.

pub mod accept;
mod body;
pub mod conn;
mod io;
pub mod rlimit;

use std::time::Duration;

pub use accept::{AcceptErrors, Tcp, bind};
pub use conn::serve;
pub use rlimit::raise_fd_limit;

/// Default [`Limits::header_read_timeout`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::body_read_timeout`].
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`Limits::idle_timeout`].
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`Limits::max_connections`] (lowered to a quarter of the fd limit if that is less).
pub const MAX_CONNECTIONS: usize = 4096;
/// Default [`Limits::linger`].
pub const LINGER: Duration = Duration::from_secs(2);
/// Default [`Limits::shutdown_grace`].
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The environment variables that override the defaults (seconds, or a count), read by
/// [`Limits::from_env`]: for operators who need other bounds, and for tests.
pub const ENV_HEADER_READ_TIMEOUT: &str = "NEREID_HEADER_READ_TIMEOUT";
pub const ENV_BODY_READ_TIMEOUT: &str = "NEREID_BODY_READ_TIMEOUT";
pub const ENV_IDLE_TIMEOUT: &str = "NEREID_IDLE_TIMEOUT";
pub const ENV_MAX_CONNECTIONS: &str = "NEREID_MAX_CONNECTIONS";

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a request's first byte to its complete head.
    pub header_read_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// Longest wait for the next request on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Connections served at once; beyond it the longest-idle one is closed.
    pub max_connections: usize,
    /// How long a connection closing with an unread request body keeps reading (and
    /// discarding) before it closes, so the client sees the answer, not a reset.
    pub linger: Duration,
    /// On shutdown, how long in-flight requests get before their connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: default_max_connections(rlimit::fd_limit()),
            linger: LINGER,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// [`MAX_CONNECTIONS`], or a quarter of the process's fd limit if that is less: three
/// listeners at their limit, plus TLS handshakes, still leave room for the store,
/// images and QEMU's sockets.
pub fn default_max_connections(fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(n) => MAX_CONNECTIONS.min(usize::try_from(n / 4).unwrap_or(MAX_CONNECTIONS)).max(16),
        None => MAX_CONNECTIONS,
    }
}

/// An error in one of the `NEREID_*` knobs.
#[derive(Debug, PartialEq, Eq)]
pub struct BadKnob {
    pub var: &'static str,
    pub value: String,
}

impl std::fmt::Display for BadKnob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={:?} is not valid: expected a positive number (seconds for timeouts, a count for connections)", self.var, self.value)
    }
}

impl std::error::Error for BadKnob {}

impl Limits {
    /// The defaults, with the `NEREID_*` environment variables applied (see
    /// [`Limits::with_vars`]).
    pub fn from_env() -> Result<Self, BadKnob> {
        Self::default().with_vars(|k| std::env::var(k).ok())
    }

    /// Applies `ENV_*` knobs looked up through `get`: timeouts in seconds (fractions
    /// allowed), the connection limit as a count; zero or garbage is an error naming it.
    pub fn with_vars(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Self, BadKnob> {
        let secs = |var: &'static str, into: &mut Duration| -> Result<(), BadKnob> {
            if let Some(v) = get(var) {
                let bad = || BadKnob { var, value: v.clone() };
                let n: f64 = v.trim().parse().map_err(|_| bad())?;
                if !(n.is_finite() && n > 0.0 && n < 1e9) {
                    return Err(bad());
                }
                *into = Duration::from_secs_f64(n);
            }
            Ok(())
        };
        secs(ENV_HEADER_READ_TIMEOUT, &mut self.header_read_timeout)?;
        secs(ENV_BODY_READ_TIMEOUT, &mut self.body_read_timeout)?;
        secs(ENV_IDLE_TIMEOUT, &mut self.idle_timeout)?;
        if let Some(v) = get(ENV_MAX_CONNECTIONS) {
            let n: usize = v.trim().parse().map_err(|_| BadKnob { var: ENV_MAX_CONNECTIONS, value: v.clone() })?;
            if n == 0 {
                return Err(BadKnob { var: ENV_MAX_CONNECTIONS, value: v });
            }
            self.max_connections = n;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_from_vars() {
        let vars =
            |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let base = Limits { max_connections: 4096, ..Limits::default() };
        assert_eq!(base.with_vars(vars(&[])).unwrap(), base);
        let l = base.with_vars(vars(&[(ENV_HEADER_READ_TIMEOUT, "1.5"), (ENV_IDLE_TIMEOUT, "3"), (ENV_MAX_CONNECTIONS, "100")])).unwrap();
        assert_eq!(l.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(l.idle_timeout, Duration::from_secs(3));
        assert_eq!(l.body_read_timeout, BODY_READ_TIMEOUT);
        assert_eq!(l.max_connections, 100);
        for bad in [(ENV_BODY_READ_TIMEOUT, "0"), (ENV_BODY_READ_TIMEOUT, "soon"), (ENV_MAX_CONNECTIONS, "0"), (ENV_IDLE_TIMEOUT, "-1")] {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([bad]));
            let err = base.with_vars(vars(pairs)).unwrap_err();
            assert_eq!(err.var, bad.0);
            assert!(err.to_string().contains(bad.0), "{err}");
        }
    }

    #[test]
    fn connection_limit_stays_below_the_fd_limit() {
        assert_eq!(default_max_connections(None), MAX_CONNECTIONS);
        assert_eq!(default_max_connections(Some(20_000)), 4096);
        assert_eq!(default_max_connections(Some(1024)), 256);
        assert_eq!(default_max_connections(Some(8)), 16);
    }
}
