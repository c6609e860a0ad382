//! Where each server's agent is called, and with which key: remembered for a moment.
//!
//! An agent call needs the server's agent URL (its record) and the key its agent must
//! present (its trust record). A provision calls its server's agent half a dozen times
//! within a second (ensure, the waits, finish), and each call read both records: on
//! PostgreSQL, a fifth of the statements a provision sent. Now a server's target is
//! remembered for [`TTL`] after it was read:
//!
//! - this headnode's own writes of a server's record or trust (join, approve, renew,
//!   revoke, register, update, delete) forget it at once, and a read that raced with such
//!   a write is not remembered ([`Targets::epoch`]);
//! - a call that cannot reach the agent forgets it, so the next try reads the records
//!   again (an agent that restarted on another address, or renewed its key, is found);
//! - another headnode's write is seen within [`TTL`]: for that long a server revoked
//!   there may still be called here with the key it had (as a heartbeat verified with it
//!   is still taken for `liveness::TRUST_TTL`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long a server's target is taken without reading its records.
pub const TTL: Duration = Duration::from_secs(2);

/// Where a server's agent is called and the key it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub pin: String,
}

#[derive(Default)]
struct State {
    /// Bumped by every [`Targets::forget`]: a read that began before cannot be remembered.
    epoch: u64,
    known: HashMap<Uuid, (Target, Instant)>,
}

/// See [`Targets::epoch`].
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    n: u64,
    at: Instant,
}

/// The remembered targets.
#[derive(Default)]
pub struct Targets {
    state: Mutex<State>,
}

impl Targets {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server's target, when read less than [`TTL`] ago.
    pub fn get(&self, server: Uuid) -> Option<Target> {
        self.lock().known.get(&server).filter(|(_, at)| at.elapsed() < TTL).map(|(t, _)| t.clone())
    }

    /// What to hand back to [`Targets::remember`] with what is read next: the epoch, and
    /// when the read began (the age of what it reads is counted from then).
    pub fn epoch(&self) -> Epoch {
        Epoch { n: self.lock().epoch, at: Instant::now() }
    }

    /// Remembers a target read since `epoch`, unless something was forgotten meanwhile
    /// (the read may predate that write).
    pub fn remember(&self, server: Uuid, target: Target, epoch: Epoch) {
        let mut s = self.lock();
        if s.epoch != epoch.n {
            return;
        }
        if s.known.len() > 10_000 {
            s.known.retain(|_, (_, at)| at.elapsed() < TTL);
        }
        s.known.insert(server, (target, epoch.at));
    }

    /// Forgets the server's target: its records changed, or its agent could not be reached.
    pub fn forget(&self, server: Uuid) {
        let mut s = self.lock();
        s.epoch += 1;
        s.known.remove(&server);
    }

    /// Forgets the server's target when the guard drops: held by a function that writes
    /// the server's records, whichever way it returns.
    pub fn forget_after(&self, server: Uuid) -> ForgetAfter<'_> {
        ForgetAfter { targets: self, server }
    }
}

/// See [`Targets::forget_after`].
pub struct ForgetAfter<'a> {
    targets: &'a Targets,
    server: Uuid,
}

impl Drop for ForgetAfter<'_> {
    fn drop(&mut self) {
        self.targets.forget(self.server);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        Target { url: url.into(), pin: "p".into() }
    }

    #[test]
    fn a_target_is_remembered_until_forgotten() {
        let ts = Targets::default();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(ts.get(a), None);
        ts.remember(a, t("https://a"), ts.epoch());
        ts.remember(b, t("https://b"), ts.epoch());
        assert_eq!(ts.get(a), Some(t("https://a")));
        ts.forget(a);
        assert_eq!(ts.get(a), None);
        assert_eq!(ts.get(b), Some(t("https://b")), "only the server forgotten");
    }

    #[test]
    fn a_read_that_raced_with_a_write_is_not_remembered() {
        let ts = Targets::default();
        let a = Uuid::from_u128(1);
        let before = ts.epoch();
        // Read the records (old values) … meanwhile this headnode writes them and forgets.
        ts.forget(a);
        ts.remember(a, t("https://old"), before);
        assert_eq!(ts.get(a), None, "the old values would be taken for TTL");
        ts.remember(a, t("https://new"), ts.epoch());
        assert_eq!(ts.get(a), Some(t("https://new")));
        // A writer's guard forgets when it is done, however it ends.
        {
            let _writing = ts.forget_after(a);
            assert_eq!(ts.get(a), Some(t("https://new")));
        }
        assert_eq!(ts.get(a), None);
    }
}
