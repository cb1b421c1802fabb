//! The KV store's connections: one long-lived multiplexed connection to each peer it sends
//! requests to, and the connections other nodes open to it (handed over by the cluster
//! listener). Reader and writer tasks only move frames: what arrives is decoded and passed to
//! the driver as a [`NetEvent`]; what the driver sends is queued on the connection's writer.

use std::net::SocketAddr;
use std::time::Duration;

use opsbro_kv::wire::{self, Frame, Request, Response};
use opsbro_types::NodeUuid;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Accepted;
use crate::cluster::{self, SharedKeyring};

/// Connecting to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// An incoming connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// What the connections tell the driver.
pub enum NetEvent {
    /// A request from another node on incoming connection `conn`.
    Request {
        /// The connection.
        conn: u64,
        /// The frame's request id.
        id: u64,
        /// The request.
        request: Request,
    },
    /// Incoming connection `conn` closed (answers to it are dropped).
    InboundClosed(u64),
    /// An answer from `from` on outgoing link `link`.
    Response {
        /// The link.
        link: u64,
        /// The node the link goes to.
        from: NodeUuid,
        /// The request id.
        id: u64,
        /// The answer.
        response: Response,
    },
    /// Outgoing link `link` is connected: requests queued on it were written.
    Connected(u64),
    /// Outgoing link `link` could not connect (`connected: false`: nothing was delivered) or
    /// broke (`true`: the peer may have acted on what it got).
    LinkDown {
        /// The link.
        link: u64,
        /// Whether it had connected.
        connected: bool,
    },
    /// A frame was refused (unauthenticated, undecodable, of the wrong kind).
    Rejected,
}

/// Open an outgoing link to `addr`: frames sent on the returned queue are written once it is
/// connected; answers and its fate come back as [`NetEvent`]s.
pub fn open_link(
    link: u64,
    to: NodeUuid,
    addr: SocketAddr,
    keyring: SharedKeyring,
    events: mpsc::Sender<NetEvent>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let t = tracker.clone();
    tracker.spawn(async move {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => c,
        };
        let stream = match connected {
            Ok(Ok(s)) => s,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(%addr, error = %why, "KV peer unreachable");
                let _ = events
                    .send(NetEvent::LinkDown {
                        link,
                        connected: false,
                    })
                    .await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        if events.send(NetEvent::Connected(link)).await.is_err() {
            return;
        }
        let (reader, writer) = stream.into_split();
        t.spawn(cluster::frame_writer(writer, rx, keyring.clone()));
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
        loop {
            let frame = tokio::select! {
                () = stop.cancelled() => return,
                f = cluster::read_frame(&mut reader) => f,
            };
            let Ok(frame) = frame else { break };
            let decoded = cluster::open(&keyring, &frame)
                .map_err(|e| e.to_string())
                .and_then(|plain| wire::decode(&plain).map_err(|e| e.to_string()));
            match decoded {
                Ok(Frame::Response(id, response)) => {
                    let event = NetEvent::Response {
                        link,
                        from: to,
                        id,
                        response,
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
                Ok(Frame::Request(..)) | Err(_) => {
                    tracing::debug!(%addr, "KV answer refused; closing the link");
                    let _ = events.send(NetEvent::Rejected).await;
                    break;
                }
            }
        }
        let _ = events
            .send(NetEvent::LinkDown {
                link,
                connected: true,
            })
            .await;
    });
    tx
}

/// Serve incoming connection `conn`: its requests go to the driver, the answers the driver
/// queues on the returned sender are written back. Reading waits while the driver is busy
/// (the events queue is bounded), which slows the peer down through TCP.
pub fn serve_inbound(
    conn: u64,
    incoming: Accepted,
    keyring: SharedKeyring,
    events: mpsc::Sender<NetEvent>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let Accepted {
        stream,
        peer,
        first,
    } = incoming;
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tracker.spawn(cluster::frame_writer(writer, rx, keyring.clone()));
    tracker.spawn(async move {
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
        let mut next = Some(Ok(first));
        loop {
            let plain = match next.take() {
                Some(p) => p,
                None => {
                    let frame = tokio::select! {
                        () = stop.cancelled() => break,
                        f = tokio::time::timeout(IDLE, cluster::read_frame(&mut reader)) => f,
                    };
                    let Ok(Ok(frame)) = frame else { break };
                    cluster::open(&keyring, &frame).map_err(|e| e.to_string())
                }
            };
            let decoded = plain.and_then(|p| wire::decode(&p).map_err(|e| e.to_string()));
            match decoded {
                Ok(Frame::Request(id, request)) => {
                    let event = NetEvent::Request { conn, id, request };
                    if events.send(event).await.is_err() {
                        break;
                    }
                }
                Ok(Frame::Response(..)) => {
                    tracing::debug!(%peer, "KV answer on a request connection; closing");
                    let _ = events.send(NetEvent::Rejected).await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "KV frame refused; closing");
                    let _ = events.send(NetEvent::Rejected).await;
                    break;
                }
            }
        }
        let _ = events.send(NetEvent::InboundClosed(conn)).await;
    });
    tx
}

/// A request as a frame (plaintext, sealed by the writer).
pub fn request_frame(id: u64, request: &Request) -> Vec<u8> {
    wire::encode_request(id, request)
}

/// An answer as a frame (plaintext, sealed by the writer).
pub fn response_frame(id: u64, response: &Response) -> Vec<u8> {
    wire::encode_response(id, response)
}
