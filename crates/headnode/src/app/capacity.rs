//! The capacity view: placement's picture of every server, kept between decisions.
//!
//! Building the view from the store costs a read of every server, heartbeat, VM record
//! and reservation, so it is not rebuilt per request. It is changed server by server:
//! a server is *touched* when something that counts on it changes (a heartbeat whose
//! inventory changed, a claim of this process, a job that ended), and touched servers
//! are read again before the next decision. The whole view is rebuilt now and then (it
//! also hears other headnodes' writes that way) and before any refusal, so a refusal is
//! always explained from fresh data.
//!
//! The view may be stale; a claim may not: the chosen server is read fresh from the
//! store after its claim generation, checked, and claimed conditionally on that
//! generation (see `allocation`).

use std::collections::HashSet;
use std::sync::Mutex;

use uuid::Uuid;

use super::App;

/// The view and what must be read again before it is used.
#[derive(Default)]
pub struct Capacity {
    touched: Mutex<HashSet<Uuid>>,
}

impl Capacity {
    /// Servers touched since the last time this was asked (and forgets them).
    pub fn take_touched(&self) -> HashSet<Uuid> {
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl App {
    /// Something counted on `server` changed: placement reads it again before its next
    /// decision. Cheap; call it wherever such a change is written.
    pub fn capacity_touch(&self, server: Uuid) {
        self.capacity.touched.lock().unwrap_or_else(|e| e.into_inner()).insert(server);
    }
}
