//! The websocket event stream (`websocket:` section, 127.0.0.1:6769): every event of the bus as
//! one text frame `{"channel": "...", "time_ms": N, "payload": {...}}`, optionally filtered with
//! `?channels=node,check`. Read-only: frames from clients other than pongs are ignored.
//!
//! A client never slows the agent: publishing does not wait for anyone, each client has its own
//! task, and a client that does not keep up — its socket stays full for [`SEND_TIMEOUT`], or it
//! falls more than the bus capacity behind — is disconnected and counted. Pings every
//! [`PING_INTERVAL`] find dead peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use opsbro_config::WebsocketSettings;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::{CHANNELS, Event, EventBus};

/// Channels only clients with the token get: key names and commands (with their arguments) may
/// say too much.
pub(crate) const PRIVATE: [&str; 2] = ["kv", "exec"];

/// Longest a frame may wait for a client's socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Time between pings.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// A client silent (no pong, no frame) for this long is gone.
const PONG_TIMEOUT: Duration = Duration::from_secs(45);
/// Kernel send buffer per client: a client that stops reading is noticed after this much, not
/// after megabytes of automatic buffer growth.
const CLIENT_SEND_BUFFER: usize = 64 * 1024;
/// Most clients at once.
const MAX_CLIENTS: usize = 256;

/// Websocket counters.
#[derive(Debug, Default)]
pub struct WsCounters {
    clients: AtomicUsize,
    /// Clients accepted since start.
    pub accepted: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Clients disconnected because they did not keep up.
    pub slow_dropped: AtomicU64,
    /// The listener's connections (before the upgrade).
    pub connections: Arc<crate::serve::ServeCounters>,
}

impl WsCounters {
    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct WsState {
    bus: EventBus,
    access: crate::access::Access,
    /// Whether the stream listens on loopback only.
    loopback: bool,
    counters: Arc<WsCounters>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

#[derive(serde::Deserialize)]
struct WsQuery {
    channels: Option<String>,
    token: Option<String>,
}

/// Bind and serve; answers the bound address.
pub async fn start(
    settings: &WebsocketSettings,
    access: crate::access::Access,
    bus: EventBus,
    counters: Arc<WsCounters>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<SocketAddr, String> {
    let addr = SocketAddr::new(settings.bind, settings.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for websocket clients on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let connections = counters.connections.clone();
    let state = WsState {
        bus,
        access,
        loopback: settings.bind.is_loopback(),
        counters,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    };
    let app = Router::new()
        .route("/", get(upgrade))
        .route("/ws", get(upgrade))
        .with_state(state);
    let limits = crate::serve::Limits {
        max_connections: crate::host::connection_cap(MAX_CLIENTS + 16),
        header_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(1),
        // The stream has its own send timeout for slow clients (5 s).
        write_timeout: Duration::from_secs(30),
    };
    tracker.spawn(crate::serve::serve_http(
        listener,
        app,
        limits,
        connections,
        |tcp| {
            let _ = rustix::net::sockopt::set_socket_send_buffer_size(tcp, CLIENT_SEND_BUFFER);
            let _ = tcp.set_nodelay(true);
        },
        shutdown,
    ));
    Ok(bound)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(opsbro_api::ErrorBody {
            error: message.to_owned(),
            status: status.as_u16(),
        }),
    )
        .into_response()
}

async fn upgrade(
    State(state): State<WsState>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // The stream is read-only: open to local callers like the API's read routes (without the
    // `kv` channel: key names may say too much), when both the API and the stream are on
    // loopback. Browsers let any web page open a websocket to 127.0.0.1 (no same-origin rule),
    // so a request from a page (it carries Origin) needs the token.
    let bearer = headers
        .get(opsbro_api::AUTH_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or(query.token.as_deref());
    let from_page = headers.contains_key(axum::http::header::ORIGIN);
    let anonymous = match given {
        Some(g) if state.access.token_matches(g) => false,
        Some(_) => {
            return refuse(StatusCode::UNAUTHORIZED, "wrong token");
        }
        None if from_page => {
            return refuse(
                StatusCode::FORBIDDEN,
                "requests from web pages (with an Origin header) need the API token: pass ?token=",
            );
        }
        None if !(state.access.anonymous_reads && state.loopback) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "this stream needs the API token: send Authorization: Bearer <token>",
            );
        }
        None => true,
    };
    let filter: Option<Vec<&'static str>> = match &query.channels {
        None => None,
        Some(list) => {
            let mut wanted = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match CHANNELS.iter().find(|c| **c == name) {
                    Some(c) => wanted.push(*c),
                    None => {
                        return refuse(
                            StatusCode::BAD_REQUEST,
                            &format!(
                                "unknown channel `{name}` (channels: {})",
                                CHANNELS.join(", ")
                            ),
                        );
                    }
                }
            }
            Some(wanted)
        }
    };
    let filter = if anonymous {
        let all: Vec<&'static str> = filter.unwrap_or_else(|| CHANNELS.to_vec());
        Some(all.into_iter().filter(|c| !PRIVATE.contains(c)).collect())
    } else {
        filter
    };
    if state.counters.clients() >= MAX_CLIENTS {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many websocket clients",
        );
    }
    // Subscribe before the handshake completes: nothing published after the 101 is missed.
    let events = state.bus.subscribe();
    let tracker = state.tracker.clone();
    // Clients only send control frames (pings, close): a read-only stream takes no big input.
    ws.max_message_size(MAX_INCOMING)
        .max_frame_size(MAX_INCOMING)
        .on_upgrade(move |socket| async move {
            tracker.spawn(client(socket, events, filter, state));
        })
}

/// Largest message (and frame) a client may send.
const MAX_INCOMING: usize = 4096;

fn frame(event: &Event) -> String {
    serde_json::to_string(&event.frame()).unwrap_or_default()
}

/// Why a client's stream ended.
enum End {
    Gone,
    Slow,
    Shutdown,
}

async fn client(
    socket: WebSocket,
    mut events: broadcast::Receiver<Arc<Event>>,
    filter: Option<Vec<&'static str>>,
    state: WsState,
) {
    let counters = &state.counters;
    counters.clients.fetch_add(1, Ordering::Relaxed);
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let end = loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break End::Shutdown,
            e = events.recv() => match e {
                Ok(event) => {
                    if filter.as_ref().is_some_and(|f| !f.contains(&event.channel())) {
                        continue;
                    }
                    let send = sink.send(Message::Text(frame(&event).into()));
                    match tokio::time::timeout(SEND_TIMEOUT, send).await {
                        Ok(Ok(())) => {
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => break End::Gone,
                        Err(_) => break End::Slow,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    state.bus.record_dropped(n);
                    break End::Slow;
                }
                Err(broadcast::error::RecvError::Closed) => break End::Shutdown,
            },
            m = stream.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::Gone,
                // Pongs, and anything else a client sends, only show it is alive.
                Some(Ok(_)) => last_heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > PONG_TIMEOUT {
                    break End::Gone;
                }
                let send = sink.send(Message::Ping(Vec::new().into()));
                if !matches!(tokio::time::timeout(SEND_TIMEOUT, send).await, Ok(Ok(()))) {
                    break End::Slow;
                }
            }
        }
    };
    match end {
        End::Slow => {
            counters.slow_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::info!("websocket client too slow: disconnected");
        }
        End::Shutdown => {
            let close = sink.send(Message::Close(None));
            let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
        }
        End::Gone => {}
    }
    counters.clients.fetch_sub(1, Ordering::Relaxed);
}
