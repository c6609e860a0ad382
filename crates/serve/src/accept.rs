//! Accepting connections without spinning: an accept error that is not the peer's
//! (out of file descriptors, out of memory) backs off, 5 ms doubling up to a second, and
//! is logged at most once a minute with the number of errors since.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The backoff and log state of one accept loop.
#[derive(Debug)]
pub struct AcceptErrors {
    /// Names the listener in the log.
    what: &'static str,
    backoff: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    pub fn new(what: &'static str) -> Self {
        AcceptErrors { what, backoff: Duration::ZERO, last_log: None, unlogged: 0 }
    }

    /// After a successful accept: the next error starts the backoff afresh.
    pub fn ok(&mut self) {
        self.backoff = Duration::ZERO;
    }

    /// Handles an accept error: a peer's (reset, aborted) is ignored; anything else is
    /// counted, logged if a minute has passed since the last log, and waited out.
    pub async fn failed(&mut self, e: io::Error) {
        if is_peer_error(&e) {
            return;
        }
        self.backoff = next_backoff(self.backoff);
        self.unlogged += 1;
        let now = Instant::now();
        if self.last_log.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::error!(listener = self.what, error = %e, errors = self.unlogged, backoff = ?self.backoff,
                "accept error (logged at most once a minute; errors counts those since the last log)");
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        tokio::time::sleep(self.backoff).await;
    }
}

/// Errors that concern one connection only.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// 0 → 5 ms → 10 ms → … → 1 s.
pub fn next_backoff(cur: Duration) -> Duration {
    if cur.is_zero() { FIRST_BACKOFF } else { (cur * 2).min(MAX_BACKOFF) }
}

/// The listen backlog: the kernel caps it at `net.core.somaxconn` (4096 on current
/// kernels). std's and tokio's `bind` ask for 128, which a burst of clients overflows:
/// their SYNs are dropped and retried a second or more later.
pub const BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, as std does).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// A TCP listener whose accept errors back off (see [`AcceptErrors`]); accepted streams
/// have `TCP_NODELAY`.
#[derive(Debug)]
pub struct Tcp {
    listener: TcpListener,
    errors: AcceptErrors,
}

impl Tcp {
    pub fn new(listener: TcpListener, what: &'static str) -> Self {
        Tcp { listener, errors: AcceptErrors::new(what) }
    }
}

impl axum::serve::Listener for Tcp {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    self.errors.ok();
                    let _ = stream.set_nodelay(true);
                    return (stream, addr);
                }
                Err(e) => self.errors.failed(e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_a_deep_backlog() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        // More clients than std's 128 complete their handshakes before any accept.
        let mut clients = Vec::new();
        for _ in 0..300 {
            clients.push(tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await.unwrap().unwrap());
        }
        assert!(bind(addr).is_err(), "the address is taken");
    }

    #[test]
    fn backoff_doubles_up_to_a_second() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..12 {
            d = next_backoff(d);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_and_peer_errors_do_not() {
        let mut errs = AcceptErrors::new("test");
        let t = tokio::time::Instant::now();
        errs.failed(io::Error::from(io::ErrorKind::ConnectionReset)).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        for _ in 0..3 {
            errs.failed(io::Error::other("Too many open files")).await;
        }
        assert_eq!(t.elapsed(), Duration::from_millis(5 + 10 + 20));
        errs.ok();
        errs.failed(io::Error::other("Too many open files")).await;
        assert_eq!(t.elapsed(), Duration::from_millis(35 + 5));
    }
}
