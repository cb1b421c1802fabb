//! The cluster transport, shared by gossip and the KV store: the TCP listener of the cluster
//! port, the kinds of frame it carries ([`FrameKind`]), the keyring that seals them, and the
//! framing itself. A frame is `[u32 length][sealed payload]`, the payload sealed with the
//! cluster keyring (AES-256-GCM when a key is set) and starting with its kind byte.
//!
//! The listener ([`serve`]) reads and opens each connection's first frame, counts what it
//! refuses, and hands the connection to the subsystem its kind belongs to ([`Routes`]):
//! gossip takes push-pull exchanges, the KV store takes request connections, the executor
//! takes signed commands. None enters through another. UDP gossip packets do not come here: the gossip driver reads its socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use opsbro_transport::{Keyring, OpenError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The cluster keyring, shared (rotations apply to every user at once).
pub type SharedKeyring = Arc<RwLock<Keyring>>;

/// Largest frame read: a full push-pull state, or a KV message with a 512 KiB value and room
/// for batches.
pub const MAX_FRAME: usize = opsbro_gossip::codec::MAX_PUSH_PULL + 64;

/// Connections still sending their first frame, at once (more are refused and counted).
const MAX_HANDSHAKES: usize = 64;
/// How long a new connection has to send its first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// What a frame carries: the first byte of its plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A part of a gossip push-pull exchange (`[1][more][state]`).
    PushPull = 1,
    /// A KV request (`opsbro_kv::wire`).
    KvRequest = opsbro_kv::wire::KIND_REQUEST,
    /// A KV answer (`opsbro_kv::wire`).
    KvResponse = opsbro_kv::wire::KIND_RESPONSE,
    /// A signed command (`opsbro_exec`): the first frame of an exec connection.
    ExecRequest = opsbro_exec::KIND_REQUEST,
    /// A target's answer to a signed command.
    ExecReply = opsbro_exec::KIND_REPLY,
    /// A Raft message (the first frame of a peer's message stream).
    RaftMessage = opsbro_raft::KIND_MESSAGE,
    /// A request forwarded to a Raft voter.
    RaftForward = opsbro_raft::KIND_FORWARD,
    /// A voter's answer to a forwarded request.
    RaftForwardReply = opsbro_raft::KIND_FORWARD_REPLY,
}

impl FrameKind {
    /// The kind of an opened frame.
    pub fn of(plain: &[u8]) -> Option<FrameKind> {
        match plain.first()? {
            1 => Some(FrameKind::PushPull),
            k if *k == opsbro_kv::wire::KIND_REQUEST => Some(FrameKind::KvRequest),
            k if *k == opsbro_kv::wire::KIND_RESPONSE => Some(FrameKind::KvResponse),
            k if *k == opsbro_exec::KIND_REQUEST => Some(FrameKind::ExecRequest),
            k if *k == opsbro_exec::KIND_REPLY => Some(FrameKind::ExecReply),
            k if *k == opsbro_raft::KIND_MESSAGE => Some(FrameKind::RaftMessage),
            k if *k == opsbro_raft::KIND_FORWARD => Some(FrameKind::RaftForward),
            k if *k == opsbro_raft::KIND_FORWARD_REPLY => Some(FrameKind::RaftForwardReply),
            _ => None,
        }
    }
}

/// A connection the listener accepted, with its first frame (opened).
pub struct Accepted {
    /// The connection.
    pub stream: TcpStream,
    /// Who.
    pub peer: SocketAddr,
    /// The first frame's plaintext (its kind byte first).
    pub first: Vec<u8>,
}

/// Where accepted connections go, by the kind of their first frame.
pub struct Routes {
    /// Push-pull exchanges (gossip).
    pub push_pull: mpsc::Sender<Accepted>,
    /// KV request connections.
    pub kv: mpsc::Sender<Accepted>,
    /// Signed command connections (the executor).
    pub exec: mpsc::Sender<Accepted>,
    /// Raft peer streams and forwarded requests.
    pub raft: mpsc::Sender<Accepted>,
}

/// What the listener refused (shown with gossip's counters in `agent info` and `/metrics`).
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections refused: too many at once.
    pub connections_refused: AtomicU64,
    /// First frames without encryption while a key is set.
    pub rejected_plaintext: AtomicU64,
    /// Encrypted first frames while no key is set.
    pub rejected_no_key: AtomicU64,
    /// First frames sealed with a key this node does not have.
    pub rejected_unknown_key: AtomicU64,
    /// First frames that failed authentication.
    pub rejected_tampered: AtomicU64,
    /// First frames of no known kind (or a KV answer, which never opens a connection).
    pub malformed: AtomicU64,
    /// Connections closed before reaching a subsystem, whatever the reason (no frame in time,
    /// a frame over the limit, refused by the keyring, of no known kind): counted with
    /// gossip's push-pull errors, as they were when gossip owned the listener.
    pub failed: AtomicU64,
}

impl ListenerCounters {
    /// Count a frame the keyring refused (replays and stale frames are counted by the
    /// keyring's own guard).
    pub fn rejected(&self, e: OpenError) {
        let c = match e {
            OpenError::Plaintext => &self.rejected_plaintext,
            OpenError::NoKey => &self.rejected_no_key,
            OpenError::UnknownKey => &self.rejected_unknown_key,
            OpenError::Tampered => &self.rejected_tampered,
            OpenError::Replayed | OpenError::Stale => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Accept cluster connections until `shutdown`, and hand each to its subsystem by the kind
/// of its first frame. At most [`MAX_HANDSHAKES`] connections wait for their first frame at
/// once, each for at most [`FIRST_FRAME_TIMEOUT`]; each subsystem bounds the connections it
/// serves.
pub async fn serve(
    listener: TcpListener,
    keyring: SharedKeyring,
    routes: Routes,
    counters: Arc<ListenerCounters>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(crate::host::connection_cap(
        MAX_HANDSHAKES,
    )));
    let routes = Arc::new(routes);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "too many cluster connections; refused");
            continue;
        };
        let (keyring, counters, routes) = (keyring.clone(), counters.clone(), routes.clone());
        tracker.spawn(async move {
            let mut stream = stream;
            let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut stream)).await;
            drop(slot);
            let fail = || counters.failed.fetch_add(1, Ordering::Relaxed);
            let frame = match first {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => {
                    fail();
                    tracing::debug!(%peer, error = %e, "cluster connection refused");
                    return;
                }
                Err(_) => {
                    fail();
                    tracing::debug!(%peer, "cluster connection sent no frame in time");
                    return;
                }
            };
            let plain = match open(&keyring, &frame) {
                Ok(p) => p,
                Err(e) => {
                    fail();
                    counters.rejected(e);
                    tracing::debug!(%peer, error = %e, "cluster connection refused");
                    return;
                }
            };
            let route = match FrameKind::of(&plain) {
                Some(FrameKind::PushPull) => &routes.push_pull,
                Some(FrameKind::KvRequest) => &routes.kv,
                Some(FrameKind::ExecRequest) => &routes.exec,
                Some(FrameKind::RaftMessage | FrameKind::RaftForward) => &routes.raft,
                Some(
                    FrameKind::KvResponse | FrameKind::ExecReply | FrameKind::RaftForwardReply,
                )
                | None => {
                    fail();
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "cluster connection of no known kind refused");
                    return;
                }
            };
            let accepted = Accepted {
                stream,
                peer,
                first: plain,
            };
            if route.send(accepted).await.is_err() {
                tracing::debug!(%peer, "the subsystem for this connection is not running");
            }
        });
    }
}

/// Open (authenticate and decrypt) a frame with the keyring.
pub fn open(keyring: &RwLock<Keyring>, frame: &[u8]) -> Result<Vec<u8>, OpenError> {
    match keyring.read() {
        Ok(k) => k.open(frame, crate::host::unix_ms()),
        Err(p) => p.into_inner().open(frame, crate::host::unix_ms()),
    }
}

/// Seal a plaintext (kind byte first) with the keyring's primary key.
pub fn seal(keyring: &RwLock<Keyring>, plain: &[u8]) -> Vec<u8> {
    let rng = opsbro_transport::system_random();
    match keyring.read() {
        Ok(k) => k.seal(&rng, plain, crate::host::unix_ms()),
        Err(p) => p.into_inner().seal(&rng, plain, crate::host::unix_ms()),
    }
}

/// Seal a plaintext for a node of `zone` (that zone's key when this node holds it).
pub fn seal_for(keyring: &RwLock<Keyring>, zone: &str, plain: &[u8]) -> Vec<u8> {
    let rng = opsbro_transport::system_random();
    match keyring.read() {
        Ok(k) => k.seal_for(zone, &rng, plain, crate::host::unix_ms()),
        Err(p) => p
            .into_inner()
            .seal_for(zone, &rng, plain, crate::host::unix_ms()),
    }
}

/// Read one frame (bounded by [`MAX_FRAME`]).
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, String> {
    let len = stream
        .read_u32()
        .await
        .map_err(|e| format!("reading frame length: {e}"))? as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        ));
    }
    // Grow with what actually arrives: an announced length costs nothing until its bytes come
    // (a peer cannot make us allocate megabytes per connection with four bytes).
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    let mut limited = stream.take(len as u64);
    limited
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("reading frame: {e}"))?;
    if buf.len() < len {
        return Err(format!(
            "connection closed after {} of {len} frame bytes",
            buf.len()
        ));
    }
    Ok(buf)
}

/// Write the frames (plaintexts, sealed here) that arrive on `rx` until it closes or the stream
/// fails. Frames queued together leave in one write: under load, one syscall carries many
/// requests or answers.
pub async fn frame_writer(
    mut stream: impl AsyncWrite + Unpin,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    keyring: SharedKeyring,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        // Let the tasks that are ready run first: under load they queue more frames, and on
        // loopback every send costs the receiver's work too.
        tokio::task::yield_now().await;
        buf.clear();
        let mut next = Some(first);
        while let Some(plain) = next.take() {
            let sealed = seal(&keyring, &plain);
            let Ok(len) = u32::try_from(sealed.len()) else {
                return;
            };
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&sealed);
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if stream.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// Write one frame.
pub async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> Result<(), String> {
    let len = u32::try_from(bytes.len()).map_err(|_| "frame too large")?;
    stream.write_u32(len).await.map_err(|e| e.to_string())?;
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}
