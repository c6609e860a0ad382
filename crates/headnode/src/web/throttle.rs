//! Slowing down repeated failed sign-ins. Failures are counted per login from one address,
//! per address, and per login from anywhere; once a count reaches its threshold, sign-ins
//! under that key are refused (429, with `Retry-After`) for a while that doubles with each
//! further failure, up to [`MAX_BLOCK`]. Refused attempts do not check the password, so
//! guessing gets no answers; a success clears its login-and-address count. Counts are kept
//! in memory per headnode and forgotten after [`FORGET`] without failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures of one login from one address before sign-ins slow down.
pub const PER_LOGIN_AND_ADDRESS: u32 = 5;
/// Failures from one address (any logins).
pub const PER_ADDRESS: u32 = 20;
/// Failures for one login (any addresses).
pub const PER_LOGIN: u32 = 100;
/// The first wait once a threshold is reached; each further failure doubles it.
pub const FIRST_BLOCK: Duration = Duration::from_secs(30);
pub const MAX_BLOCK: Duration = Duration::from_secs(15 * 60);
/// A key with no failure for this long starts again from zero.
pub const FORGET: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    until: Option<Instant>,
}

/// The failure counts.
#[derive(Debug, Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Entry>>,
}

/// How long to wait after `failures` failures under a key with this threshold.
pub fn block_for(failures: u32, threshold: u32) -> Option<Duration> {
    if failures < threshold {
        return None;
    }
    let doublings = (failures - threshold).min(16);
    Some(FIRST_BLOCK.saturating_mul(1 << doublings).min(MAX_BLOCK))
}

fn keys(login: &str, addr: Option<IpAddr>) -> Vec<(String, u32)> {
    let login = login.to_ascii_lowercase();
    let mut k = vec![(format!("login:{login}"), PER_LOGIN)];
    if let Some(a) = addr {
        k.push((format!("pair:{login}@{a}"), PER_LOGIN_AND_ADDRESS));
        k.push((format!("addr:{a}"), PER_ADDRESS));
    }
    k
}

impl Throttle {
    /// How long a sign-in for `login` from `addr` must wait, if it must.
    pub fn wait(&self, login: &str, addr: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        keys(login, addr)
            .iter()
            .filter_map(|(k, _)| map.get(k).and_then(|e| e.until).and_then(|u| u.checked_duration_since(now)))
            .filter(|d| !d.is_zero())
            .max()
    }

    /// Counts a failed sign-in.
    pub fn failed(&self, login: &str, addr: Option<IpAddr>, now: Instant) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| now.saturating_duration_since(e.last) < FORGET);
        for (k, threshold) in keys(login, addr) {
            let e = map.entry(k).or_insert(Entry { failures: 0, last: now, until: None });
            e.failures = e.failures.saturating_add(1);
            e.last = now;
            e.until = block_for(e.failures, threshold).map(|d| now + d);
        }
    }

    /// Clears the login-and-address count after a successful sign-in.
    pub fn succeeded(&self, login: &str, addr: Option<IpAddr>) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = addr {
            map.remove(&format!("pair:{}@{a}", login.to_ascii_lowercase()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_slow_a_login_down_and_the_wait_doubles() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..4 {
            t.failed("alice", Some(ip), now);
        }
        assert_eq!(t.wait("alice", Some(ip), now), None);
        t.failed("alice", Some(ip), now);
        assert_eq!(t.wait("Alice", Some(ip), now), Some(FIRST_BLOCK));
        t.failed("alice", Some(ip), now);
        assert_eq!(t.wait("alice", Some(ip), now), Some(FIRST_BLOCK * 2));
        assert_eq!(t.wait("alice", Some("192.0.2.2".parse().unwrap()), now), None, "another address is not slowed by these");
        assert_eq!(t.wait("alice", Some(ip), now + FIRST_BLOCK * 2), None, "the wait ends");
        assert_eq!(block_for(1000, 5), Some(MAX_BLOCK));
    }

    #[test]
    fn an_address_guessing_many_logins_is_slowed_too() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let now = Instant::now();
        for i in 0..PER_ADDRESS {
            t.failed(&format!("user{i}"), Some(ip), now);
        }
        assert!(t.wait("someone-else", Some(ip), now).is_some());
    }
}
