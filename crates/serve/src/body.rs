//! Request and response bodies as the serving layer sees them: a request body that
//! stalls times out (and says so to the connection), and a response body tells the
//! connection when its request is over.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// What became of one request's body.
#[derive(Debug, Default)]
pub(crate) struct BodyState {
    /// The body stalled longer than the body read timeout.
    pub timed_out: AtomicBool,
    /// The body was read to its end.
    pub done: AtomicBool,
}

/// The timeout's error, as the handler reading the body sees it.
#[derive(Debug)]
pub(crate) struct BodyTimedOut(pub Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body stalled: nothing arrived for {:?}", self.0)
    }
}

impl std::error::Error for BodyTimedOut {}

/// A request body that fails when no frame arrives for `timeout`.
pub(crate) struct TimeoutBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<BodyState>,
}

impl<B: Body> TimeoutBody<B> {
    pub fn new(inner: B, timeout: Duration, state: Arc<BodyState>) -> Self {
        if inner.is_end_stream() {
            state.done.store(true, Ordering::Relaxed);
        }
        TimeoutBody { inner, timeout, sleep: None, state }
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.state.done.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                this.state.timed_out.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(BodyTimedOut(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body carrying a guard, dropped when the body is sent (or abandoned).
pub(crate) struct Guarded<G> {
    pub inner: axum::body::Body,
    pub _guard: G,
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
