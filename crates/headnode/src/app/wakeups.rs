//! Wake-ups by UUID: whoever waits for something to change here (a `/jobs/:uuid/wait`
//! request for its job, a job step for its VM's state on the server) watches its UUID;
//! what changes it on this headnode wakes the watchers at once, instead of leaving them to
//! their next poll. Polling stays the fallback for what another headnode changes.
//!
//! A waiter enables its `notified()` future before it looks (see
//! [`tokio::sync::Notify::notified`]), so a change between its look and its wait still
//! wakes it. Entries hold the waiters' `Notify` weakly: when the last waiter goes, the
//! entry is dead, and dead entries are swept as the map grows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

/// See the module doc.
#[derive(Default)]
pub struct Wakeups {
    map: Mutex<Map>,
}

#[derive(Default)]
struct Map {
    watched: HashMap<Uuid, Weak<Notify>>,
    /// The size past which dead entries are swept next.
    sweep_at: usize,
}

impl Wakeups {
    /// The `Notify` woken when `key` changes; keep it for as long as you wait.
    pub fn watch(&self, key: Uuid) -> Arc<Notify> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.watched.get(&key).and_then(Weak::upgrade) {
            return n;
        }
        if m.watched.len() >= m.sweep_at {
            m.watched.retain(|_, w| w.strong_count() > 0);
            m.sweep_at = (m.watched.len() * 2).max(64);
        }
        let n = Arc::new(Notify::new());
        m.watched.insert(key, Arc::downgrade(&n));
        n
    }

    /// `key` changed: wakes everyone watching it now.
    pub fn wake(&self, key: Uuid) {
        let n = self.map.lock().unwrap_or_else(|p| p.into_inner()).watched.get(&key).and_then(Weak::upgrade);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    /// Entries held (live or not yet swept), for tests.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).watched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Asks `look` at once and again after each pause `pace` gives, until it answers `Some`;
/// a wake-up of `wake` cuts a pause short. The wake-up is enabled before each look, so one
/// that lands while `look` runs is not lost.
pub async fn poll<T, F, Fut>(wake: &Notify, mut pace: impl FnMut() -> Duration, mut look: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(v) = look().await {
            return v;
        }
        let _ = tokio::time::timeout(pace(), woken).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_between_the_look_and_the_wait_still_wakes_the_waiter() {
        let w = Wakeups::default();
        let key = Uuid::new_v4();
        let n = w.watch(key);
        let notified = n.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // The change lands after the waiter looked, before it waits.
        w.wake(key);
        tokio::time::timeout(Duration::from_secs(5), notified).await.expect("woken");
        // Another key's change wakes nobody here.
        let again = n.notified();
        tokio::pin!(again);
        again.as_mut().enable();
        w.wake(Uuid::new_v4());
        assert!(tokio::time::timeout(Duration::from_millis(50), again).await.is_err());
    }

    #[test]
    fn watchers_share_one_entry_and_dead_entries_are_swept() {
        let w = Wakeups::default();
        let key = Uuid::new_v4();
        let (a, b) = (w.watch(key), w.watch(key));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        for _ in 0..200 {
            drop(w.watch(Uuid::new_v4()));
        }
        assert!(w.len() <= 128, "dead entries kept: {}", w.len());
    }
}
