//! The HTTP listeners (local API, websocket stream) with limits that hold before anyone is
//! authenticated: at most so many connections at once (more are closed at once and counted),
//! request headers that must arrive within a deadline (no slowloris), keep-alive connections
//! closed when idle for that long, and a graceful end (requests in flight finish, bounded).
//!
//! `axum::serve` has none of these: 21,000 idle connections once took every file descriptor of
//! the agent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How a listener limits its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this; an idle keep-alive connection is closed
    /// after it too.
    pub header_timeout: Duration,
    /// Longest wait for requests in flight at shutdown.
    pub grace: Duration,
    /// A response write that cannot progress for this long (the client does not read) ends
    /// the connection.
    pub write_timeout: Duration,
}

/// What a listener refused.
#[derive(Debug, Default)]
pub struct ServeCounters {
    /// Connections closed at once because the listener was full.
    pub refused: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

/// Serve `app` on `listener` until `shutdown`, within `limits`; `tune` runs on every accepted
/// socket (buffer sizes, no-delay).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    counters: Arc<ServeCounters>,
    tune: fn(&TcpStream),
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let connections = tokio_util::task::TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or the like: do not spin.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tune(&stream);
        let service = TowerToHyperService::new(app.clone());
        let io = WriteDeadline::new(stream, limits.write_timeout);
        let mut conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let (counters, stop) = (counters.clone(), shutdown.clone());
        counters.open.fetch_add(1, Ordering::Relaxed);
        connections.spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = &mut conn => {}
                () = stop.cancelled() => {
                    // Finish the request in flight, take no new one.
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    let _ = conn.await;
                }
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(limits.grace, connections.wait()).await;
}

/// A stream whose writes fail once they have been blocked for `limit` (a peer that stops
/// reading). Reads are not limited: a request may legitimately wait (KV blocking reads), and
/// headers and bodies have their own deadlines.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    blocked: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            blocked: None,
        }
    }

    /// After a write returned Pending: fail once it has been so for `limit`.
    fn check(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Error> {
        use std::future::Future as _;
        let limit = self.limit;
        let sleep = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read the answer",
            )),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Pending => self.check(cx).map(Err),
            done => {
                self.blocked = None;
                done
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            std::task::Poll::Pending => self.check(cx).map(Err),
            done => {
                self.blocked = None;
                done
            }
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            std::task::Poll::Pending => self.check(cx).map(Err),
            done => {
                self.blocked = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
