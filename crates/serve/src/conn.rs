//! The accept loop and one task per connection: hyper's HTTP/1 connection with upgrades,
//! watched for the idle and header timeouts, registered in the listener's table so a
//! full listener can close its longest-idle connection for a newcomer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use crate::Limits;
use crate::body::{BodyState, Guarded, TimeoutBody};
use crate::io::TrackedIo;

/// Milliseconds since the first use of this module (0 is never a timestamp).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

/// What the serving layer knows about one connection.
#[derive(Debug)]
pub struct ConnState {
    /// Requests being answered (0 or 1 on HTTP/1).
    in_flight: AtomicU32,
    /// When the last request ended (or the connection was accepted).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived; 0: none yet.
    head_started: AtomicU64,
    /// Close with a linger: an answer went out before its request body was read.
    pub(crate) linger: AtomicBool,
    /// Chosen to make room; the connection's task drops it.
    evicting: AtomicBool,
    evict: Notify,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_started: AtomicU64::new(0),
            linger: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    pub(crate) fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Idle since (ms), if no request is in flight.
    fn idle(&self) -> Option<u64> {
        (self.in_flight.load(Ordering::Relaxed) == 0).then(|| self.idle_since.load(Ordering::Relaxed))
    }
}

/// A request in flight; dropped when its answer is sent (or abandoned).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a connection's watcher decides at a deadline.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving; look again at this time (ms).
    WakeAt(u64),
    /// No request for the idle timeout.
    Idle,
    /// A request head took longer than the header read timeout.
    SlowHead,
}

/// The pure part of the watcher: given the connection's times (ms), what is due.
pub fn verdict(now: u64, in_flight: bool, idle_since: u64, head_started: u64, limits: &Limits) -> Verdict {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (idle, header) = (ms(limits.idle_timeout), ms(limits.header_read_timeout));
    if in_flight {
        // Bodies time out on their own; look again later.
        return Verdict::WakeAt(now.saturating_add(idle.min(header)));
    }
    if head_started != 0 {
        let due = head_started.saturating_add(header);
        return if now >= due { Verdict::SlowHead } else { Verdict::WakeAt(due) };
    }
    let due = idle_since.saturating_add(idle);
    if now >= due {
        return Verdict::Idle;
    }
    // A head may start any moment: look again within a header timeout.
    Verdict::WakeAt(due.min(now.saturating_add(header)))
}

/// Connections closed at once when a full listener makes room: one scan of the table
/// pays for this many newcomers (64 at the default limit; 1 below 128 connections).
fn evict_batch(max: usize) -> usize {
    (max / 64).clamp(1, 64)
}

/// The `n` longest-idle connections that are not already being closed, among `conns`
/// (key, idle since if idle, being closed).
pub fn longest_idle<K: Copy>(conns: impl Iterator<Item = (K, Option<u64>, bool)>, n: usize) -> Vec<K> {
    let mut idle: Vec<(u64, K)> = conns.filter(|(_, _, evicting)| !evicting).filter_map(|(k, idle, _)| Some((idle?, k))).collect();
    if n == 0 || idle.is_empty() {
        return Vec::new();
    }
    let n = n.min(idle.len());
    if n < idle.len() {
        idle.select_nth_unstable_by_key(n - 1, |(since, _)| *since);
        idle.truncate(n);
    }
    idle.into_iter().map(|(_, k)| k).collect()
}

/// One listener's table of connections.
struct Table {
    inner: Mutex<TableInner>,
    next_id: AtomicU64,
    emptied: Notify,
    /// Connections refused because even eviction could not make room.
    refused: AtomicU64,
}

#[derive(Default)]
struct TableInner {
    conns: HashMap<u64, Arc<ConnState>>,
    /// How many of `conns` are being closed to make room.
    evicting: usize,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new connection, closing the longest-idle ones if the listener is full;
    /// `None` when every connection is busy and the hard cap (limit + 25 %) is reached.
    fn admit(&self, max: usize) -> Option<(u64, Arc<ConnState>)> {
        let mut t = self.lock();
        if t.conns.len() - t.evicting >= max {
            let victims = longest_idle(t.conns.iter().map(|(k, c)| (*k, c.idle(), c.evicting.load(Ordering::Relaxed))), evict_batch(max));
            if victims.is_empty() && t.conns.len() >= max + max / 4 {
                return None;
            }
            for k in victims {
                if let Some(c) = t.conns.get(&k) {
                    c.evicting.store(true, Ordering::Relaxed);
                    c.evict.notify_one();
                    t.evicting += 1;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new());
        t.conns.insert(id, state.clone());
        Some((id, state))
    }

    fn remove(&self, id: u64) {
        let mut t = self.lock();
        if let Some(c) = t.conns.remove(&id)
            && c.evicting.load(Ordering::Relaxed)
        {
            t.evicting = t.evicting.saturating_sub(1);
        }
        if t.conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    fn len(&self) -> usize {
        self.lock().conns.len()
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets in-flight requests finish (closing idle connections at once) for up
/// to [`Limits::shutdown_grace`], and returns.
pub async fn serve<L>(
    mut listener: L,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Clone + Send + Sync + std::fmt::Debug + 'static,
{
    let table = Arc::new(Table {
        inner: Mutex::new(TableInner::default()),
        next_id: AtomicU64::new(0),
        emptied: Notify::new(),
        refused: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let Some((id, state)) = table.admit(limits.max_connections) else {
            if table.refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                tracing::warn!(
                    ?addr,
                    max = limits.max_connections,
                    "every connection is busy: refusing new ones (logged once per thousand)"
                );
            }
            drop(io);
            continue;
        };
        let (router, table, stop) = (router.clone(), table.clone(), stop_rx.clone());
        tokio::spawn(async move {
            connection(io, addr, state, router, limits, stop).await;
            table.remove(id);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let emptied = table.emptied.notified();
    tokio::pin!(emptied);
    emptied.as_mut().enable();
    if table.len() > 0 && tokio::time::timeout(limits.shutdown_grace, emptied).await.is_err() {
        tracing::warn!(left = table.len(), grace = ?limits.shutdown_grace, "connections still busy at shutdown were dropped");
    }
    Ok(())
}

/// The `408 RequestTimeout` answer for a stalled request body.
fn request_timeout(limits: &Limits) -> Response<axum::body::Body> {
    let body = format!(
        "{{\"code\":\"RequestTimeout\",\"message\":\"the request body stalled: nothing arrived for {} s\"}}",
        limits.body_read_timeout.as_secs_f64()
    );
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Serves one connection until it ends, times out, is evicted, or the listener stops.
async fn connection<I, A>(io: I, addr: A, state: Arc<ConnState>, router: axum::Router, limits: Limits, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: Clone + Send + Sync + std::fmt::Debug + 'static,
{
    let conn_state = state.clone();
    let peer = addr.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (router, state, addr) = (router.clone(), conn_state.clone(), addr.clone());
        async move {
            let guard = state.begin();
            let body = Arc::new(BodyState::default());
            let had_body = !hyper::body::Body::is_end_stream(req.body());
            let mut req = req.map(|b| axum::body::Body::new(TimeoutBody::new(b, limits.body_read_timeout, body.clone())));
            req.extensions_mut().insert(ConnectInfo(addr));
            let resp = match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            let mut resp = if body.timed_out.load(Ordering::Relaxed) { request_timeout(&limits) } else { resp };
            if had_body && !body.done.load(Ordering::Relaxed) {
                // The rest of the body is not wanted: say so, and close cleanly.
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                state.linger.store(true, Ordering::Relaxed);
            }
            Ok::<_, Infallible>(resp.map(|b| Guarded { inner: b, _guard: guard }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's own timer runs from when the connection waits for a head, idle time
    // included: a backstop behind the watcher below.
    builder.timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout + limits.header_read_timeout).keep_alive(true);
    let io = TrackedIo::new(io, state.clone(), limits.linger);
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let now = now_ms();
        let wake = match verdict(
            now,
            state.in_flight.load(Ordering::Relaxed) > 0,
            state.idle_since.load(Ordering::Relaxed),
            state.head_started.load(Ordering::Relaxed),
            &limits,
        ) {
            Verdict::WakeAt(t) => t,
            Verdict::Idle => {
                tracing::trace!(?peer, "closing an idle connection");
                return;
            }
            Verdict::SlowHead => {
                tracing::debug!(?peer, timeout = ?limits.header_read_timeout, "closing a connection whose request head is too slow");
                return;
            }
        };
        let sleep = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now)));
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(?peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = state.evict.notified() => {
                tracing::trace!(?peer, "closing the longest-idle connection to make room");
                return;
            }
            changed = stop.changed(), if !closing => {
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { header_read_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60), ..Limits::default() }
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout() {
        let l = limits();
        assert_eq!(verdict(1_000, false, 1_000, 0, &l), Verdict::WakeAt(11_000));
        assert_eq!(verdict(55_000, false, 1_000, 0, &l), Verdict::WakeAt(61_000));
        assert_eq!(verdict(61_000, false, 1_000, 0, &l), Verdict::Idle);
    }

    #[test]
    fn slow_heads_close_after_the_header_timeout_from_their_first_byte() {
        let l = limits();
        assert_eq!(verdict(5_000, false, 1_000, 4_000, &l), Verdict::WakeAt(14_000));
        assert_eq!(verdict(14_000, false, 1_000, 4_000, &l), Verdict::SlowHead);
        // A head in progress is judged by the header timeout, not the idle one.
        assert_eq!(verdict(62_000, false, 1_000, 55_000, &l), Verdict::WakeAt(65_000));
    }

    #[test]
    fn requests_in_flight_are_left_alone() {
        let l = limits();
        assert_eq!(verdict(100_000, true, 1_000, 0, &l), Verdict::WakeAt(110_000));
    }

    #[test]
    fn the_longest_idle_connections_make_room() {
        let conns = [(1, Some(500), false), (2, None, false), (3, Some(100), true), (4, Some(200), false), (5, Some(300), false)];
        assert_eq!(longest_idle(conns.iter().copied(), 1), [4]);
        let mut two = longest_idle(conns.iter().copied(), 2);
        two.sort_unstable();
        assert_eq!(two, [4, 5]);
        assert_eq!(longest_idle(conns.iter().copied(), 10).len(), 3, "busy and already-closing ones are spared");
        assert!(longest_idle([(1, None, false), (2, Some(1), true)].iter().copied(), 5).is_empty());
    }
}
