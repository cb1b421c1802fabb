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
        let mut conn = builder
            .serve_connection(TokioIo::new(stream), service)
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
