//! A connection's byte stream as the serving layer watches it: it notes when the first
//! byte of a request head arrives (for the header read timeout), and when the
//! connection closes with request bytes unread it lingers — write side shut, the rest
//! of the request read and discarded for a moment — so the client reads the answer
//! rather than a reset.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::conn::ConnState;

/// Bytes read and discarded while lingering, at most.
const LINGER_MAX_BYTES: usize = 8 << 20;

pub(crate) struct TrackedIo<I> {
    inner: I,
    state: Arc<ConnState>,
    linger: Duration,
    shut: bool,
    lingering: Option<(Pin<Box<Sleep>>, usize)>,
}

impl<I> TrackedIo<I> {
    pub fn new(inner: I, state: Arc<ConnState>, linger: Duration) -> Self {
        TrackedIo { inner, state, linger, shut: false, lingering: None }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_arrived();
        }
        r
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.shut {
            match Pin::new(&mut this.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => this.shut = true,
                other => return other,
            }
        }
        if !this.state.linger.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        let linger = this.linger;
        let (sleep, drained) = this.lingering.get_or_insert_with(|| (Box::pin(tokio::time::sleep(linger)), 0));
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    *drained += buf.filled().len();
                    if *drained > LINGER_MAX_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
