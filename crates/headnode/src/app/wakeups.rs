//! Wake-ups by UUID: whoever waits for something to change here (a `/jobs/:uuid/wait`
//! request for its job, a job step for its VM's state on the server) watches its UUID;
//! what changes it on this headnode wakes the watchers at once, instead of leaving them to
//! their next poll. Polling stays the fallback for what another headnode changes.
//!
//! A wake-up may carry what changed (a VM's report, as this headnode applied it), so the
//! waiter need not go and look: the last value waits in the watch until a waiter takes it.
//!
//! A waiter enables its `notified()` future before it looks (see
//! [`tokio::sync::Notify::notified`]), so a change between its look and its wait still
//! wakes it. Entries hold the waiters' watch weakly: when the last waiter goes, the
//! entry is dead, and dead entries are swept as the map grows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use uuid::Uuid;

/// See the module doc. `T` is what a wake-up carries (nothing, by default).
pub struct Wakeups<T = ()> {
    map: Mutex<Map<T>>,
}

impl<T> Default for Wakeups<T> {
    fn default() -> Self {
        Wakeups { map: Mutex::new(Map { watched: HashMap::new(), sweep_at: 0 }) }
    }
}

struct Map<T> {
    watched: HashMap<Uuid, Weak<Watch<T>>>,
    /// The size past which dead entries are swept next.
    sweep_at: usize,
}

/// One key's watch: woken on each change, holding the last value a wake-up brought.
pub struct Watch<T> {
    notify: Notify,
    last: Mutex<Option<T>>,
}

impl<T> Watch<T> {
    /// The value the last wake-up brought, if no waiter took it yet.
    pub fn take(&self) -> Option<T> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl<T> Wakeups<T> {
    /// The watch woken when `key` changes; keep it for as long as you wait.
    pub fn watch(&self, key: Uuid) -> Arc<Watch<T>> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.watched.get(&key).and_then(Weak::upgrade) {
            return n;
        }
        if m.watched.len() >= m.sweep_at {
            m.watched.retain(|_, w| w.strong_count() > 0);
            m.sweep_at = (m.watched.len() * 2).max(64);
        }
        let n = Arc::new(Watch { notify: Notify::new(), last: Mutex::new(None) });
        m.watched.insert(key, Arc::downgrade(&n));
        n
    }

    /// `key` changed: wakes everyone watching it now, leaving them what `value` makes
    /// (made only when someone watches; `None`: go and look, and it also clears a value
    /// an earlier wake-up left).
    pub fn wake(&self, key: Uuid, value: impl FnOnce() -> Option<T>) {
        let n = self.map.lock().unwrap_or_else(|p| p.into_inner()).watched.get(&key).and_then(Weak::upgrade);
        if let Some(n) = n {
            *n.last.lock().unwrap_or_else(|p| p.into_inner()) = value();
            n.notify.notify_waiters();
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
/// a wake-up of `wake` cuts a pause short, and `look` gets the value it brought (taken:
/// the next look gets `None` unless another wake-up came). The wake-up is enabled before
/// each look, so one that lands while `look` runs is not lost.
pub async fn poll<T, W, F, Fut>(wake: &Watch<W>, mut pace: impl FnMut() -> Duration, mut look: F) -> T
where
    F: FnMut(Option<W>) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        let woken = wake.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(v) = look(wake.take()).await {
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
        let w = Wakeups::<()>::default();
        let key = Uuid::new_v4();
        let n = w.watch(key);
        let notified = n.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // The change lands after the waiter looked, before it waits.
        w.wake(key, || None);
        tokio::time::timeout(Duration::from_secs(5), notified).await.expect("woken");
        // Another key's change wakes nobody here.
        let again = n.notify.notified();
        tokio::pin!(again);
        again.as_mut().enable();
        w.wake(Uuid::new_v4(), || None);
        assert!(tokio::time::timeout(Duration::from_millis(50), again).await.is_err());
    }

    #[test]
    fn watchers_share_one_entry_and_dead_entries_are_swept() {
        let w = Wakeups::<()>::default();
        let key = Uuid::new_v4();
        let (a, b) = (w.watch(key), w.watch(key));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        for _ in 0..200 {
            drop(w.watch(Uuid::new_v4()));
        }
        assert!(w.len() <= 128, "dead entries kept: {}", w.len());
    }

    #[tokio::test]
    async fn a_value_a_wake_up_brings_reaches_the_next_look_once() {
        let w = Arc::new(Wakeups::<u32>::default());
        let key = Uuid::new_v4();
        let watch = w.watch(key);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (w2, seen2) = (w.clone(), seen.clone());
        // Looks until it is given 7; pauses are long, so only wake-ups end them.
        let waiter = tokio::spawn(async move {
            poll(
                &watch,
                || Duration::from_secs(30),
                |v| {
                    seen2.lock().unwrap().push(v);
                    async move { (v == Some(7)).then_some(()) }
                },
            )
            .await
        });
        while seen.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        w2.wake(key, || Some(3));
        while seen.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        w2.wake(key, || Some(7));
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![None, Some(3), Some(7)], "each value once, in order; the first look finds none");
        // A value nobody watches for is dropped with no watch.
        w.wake(Uuid::new_v4(), || Some(1));
        assert!(w.watch(Uuid::new_v4()).take().is_none());
    }
}
