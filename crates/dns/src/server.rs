//! The DNS server: a hickory-server 0.26 [`RequestHandler`] answering from the directory, and
//! forwarding names outside the domain to recursors when some are configured.
//!
//! TCP is a loop of our own (see [`serve_tcp`]): at most [`MAX_TCP_CONNECTIONS`] at once, a
//! connection closed after [`TCP_IDLE`] without a complete query, each query decoded and answered
//! by the same handler (hickory's `Server` has neither a connection cap nor a per-read deadline,
//! and thousands of idle connections took every file descriptor of the agent). UDP, where the
//! load is, goes through std threads (see
//! [`serve`]): batches of up to 32 queries per `recvmmsg`, each answered inline — by the
//! [`FastPath`] for a plain `A`/`AAAA`/`SRV` question, otherwise decoded by hickory
//! (`Request::from_bytes`), answered by the same handler and encoded by hickory's encoder within
//! the client's UDP size (512 bytes, or its EDNS0 buffer; an answer that does not fit first
//! loses its additional records, then hickory cuts answers and sets TC) — and the batch's
//! answers sent with one `sendmmsg`. hickory's own UDP server hands every
//! query to a new task and every answer to a channel: three task hops for a 10 µs answer.
//! Forwarded queries (which wait for a recursor) still get their own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::watch;

use crate::fast::FastPath;
use crate::{Answer, Node, Settings, answer};

/// How long a recursor may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Query counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Queries handled.
    pub queries: AtomicU64,
    /// Answered NOERROR.
    pub noerror: AtomicU64,
    /// Answered NXDOMAIN.
    pub nxdomain: AtomicU64,
    /// Answered REFUSED.
    pub refused: AtomicU64,
    /// Answered SERVFAIL (recursors did not answer, or an answer could not be sent).
    pub servfail: AtomicU64,
    /// Answered FORMERR / NOTIMP (not a standard query with one question).
    pub formerr: AtomicU64,
    /// Forwarded to a recursor.
    pub forwarded: AtomicU64,
    /// Datagrams that were not DNS queries (dropped without an answer).
    pub malformed: AtomicU64,
    /// TCP connections refused because [`MAX_TCP_CONNECTIONS`] were open.
    pub tcp_refused: AtomicU64,
}

impl Counters {
    fn count(&self, code: ResponseCode) {
        let c = match code {
            ResponseCode::NoError => &self.noerror,
            ResponseCode::NXDomain => &self.nxdomain,
            ResponseCode::Refused => &self.refused,
            ResponseCode::FormErr | ResponseCode::NotImp => &self.formerr,
            _ => &self.servfail,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers queries from the live directory.
pub struct DnsHandler {
    settings: Settings,
    directory: watch::Receiver<Arc<Vec<Node>>>,
    recursors: Vec<SocketAddr>,
    counters: Arc<Counters>,
}

impl DnsHandler {
    /// A handler over `directory` (kept up to date by the caller).
    pub fn new(
        settings: Settings,
        directory: watch::Receiver<Arc<Vec<Node>>>,
        recursors: Vec<SocketAddr>,
        counters: Arc<Counters>,
    ) -> DnsHandler {
        DnsHandler {
            settings,
            directory,
            recursors,
            counters,
        }
    }

    /// Whether this query leaves the domain for a recursor (and so may wait).
    pub fn needs_forward(&self, request: &Request) -> bool {
        !self.recursors.is_empty()
            && request.queries.queries().first().is_some_and(|q| {
                !hickory_proto::rr::LowerName::from(&self.settings.domain).zone_of(q.name())
            })
    }

    /// Ask the recursors in turn; the first answer wins.
    async fn forward(&self, raw: &[u8], id: u16) -> Option<Message> {
        for r in &self.recursors {
            let bind: SocketAddr = if r.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.send_to(raw, r).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 65535];
            let got = tokio::time::timeout(FORWARD_TIMEOUT, async {
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await.ok()?;
                    if from != *r {
                        continue;
                    }
                    let m = Message::from_vec(&buf[..n]).ok()?;
                    if m.metadata.id == id {
                        return Some(m);
                    }
                }
            })
            .await;
            match got {
                Ok(Some(m)) => return Some(m),
                _ => tracing::debug!(recursor = %r, "recursor did not answer"),
            }
        }
        None
    }
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Whether the response encodes within the client's UDP size (512 bytes, or its EDNS0
/// buffer) without truncation: encoded once more, as hickory will, to know it exactly.
fn fits_udp(
    request: &Request,
    edns: Option<&Edns>,
    metadata: Metadata,
    records: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> bool {
    let max = edns.map_or(512, |e| e.max_payload().max(512));
    let mut bytes = Vec::with_capacity(usize::from(max));
    let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
    encoder.set_max_size(max);
    MessageResponseBuilder::new(&request.queries, edns)
        .build(
            metadata,
            records.iter(),
            authorities.iter(),
            std::iter::empty(),
            additionals.iter(),
        )
        .destructive_emit(&mut encoder)
        .is_ok_and(|info| !info.truncation)
}

/// Unix seconds as the SOA serial (changes as membership does, close enough for caches).
fn serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        // The answer's EDNS: the client's buffer size (at least 512), our own OPT record.
        let edns = request.edns.as_ref().map(|e| {
            let mut mine = Edns::new();
            mine.set_max_payload(e.max_payload().max(512));
            mine
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = !self.recursors.is_empty();

        let query = match request.request_info() {
            Ok(info)
                if request.metadata.op_code == OpCode::Query
                    && request.metadata.message_type == MessageType::Query =>
            {
                info.query
            }
            Ok(_) => {
                self.counters.count(ResponseCode::NotImp);
                let response = builder.error_msg(&request.metadata, ResponseCode::NotImp);
                return response_handle
                    .send_response(response)
                    .await
                    .unwrap_or_else(|_| failed(request, ResponseCode::NotImp));
            }
            Err(_) => {
                self.counters.count(ResponseCode::FormErr);
                let response = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return response_handle
                    .send_response(response)
                    .await
                    .unwrap_or_else(|_| failed(request, ResponseCode::FormErr));
            }
        };
        let nodes = self.directory.borrow().clone();
        let result = answer(
            &self.settings,
            &nodes,
            query.name(),
            query.query_type(),
            serial(),
            &mut rand::rng(),
        );
        let (records, authorities, mut additionals): (Vec<Record>, Vec<Record>, Vec<Record>) =
            match result {
                Answer::NotOurs if !self.recursors.is_empty() => {
                    self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                    match self.forward(request.as_slice(), request.metadata.id).await {
                        Some(m) => {
                            metadata.response_code = m.metadata.response_code;
                            metadata.authoritative = false;
                            (m.answers, m.authorities, m.additionals)
                        }
                        None => {
                            metadata.response_code = ResponseCode::ServFail;
                            (vec![], vec![], vec![])
                        }
                    }
                }
                other => {
                    metadata.response_code = other.code();
                    metadata.authoritative = !matches!(other, Answer::NotOurs);
                    match other {
                        Answer::Records {
                            records,
                            soa,
                            additionals,
                        } => (records, soa.into_iter().collect(), additionals),
                        Answer::NxDomain { soa } => (vec![], vec![soa], vec![]),
                        Answer::NotOurs => (vec![], vec![], vec![]),
                    }
                }
            };
        // The client's OPT is not ours to repeat.
        additionals.retain(|r| r.record_type() != hickory_proto::rr::RecordType::OPT);
        // Over UDP, an answer that does not fit loses its additional records (the addresses
        // of SRV targets, which the client can ask for) before hickory's encoder cuts answers
        // and sets TC (RFC 2181 §9: TC is for the answers a client needs).
        if !additionals.is_empty()
            && request.protocol() == hickory_server::net::xfer::Protocol::Udp
            && !fits_udp(
                request,
                edns.as_ref(),
                metadata,
                &records,
                &authorities,
                &additionals,
            )
        {
            additionals.clear();
        }
        let code = metadata.response_code;
        let response = builder.build(
            metadata,
            records.iter(),
            authorities.iter(),
            std::iter::empty(),
            additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => {
                self.counters.count(code);
                info
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS answer");
                self.counters.count(ResponseCode::ServFail);
                failed(request, ResponseCode::ServFail)
            }
        }
    }
}

/// A response handler that encodes into a buffer (the UDP and TCP loops send it); over TCP an
/// answer may take up to 65535 bytes.
#[derive(Clone, Default)]
struct Encoded(Arc<std::sync::Mutex<Option<Vec<u8>>>>, bool);

impl Encoded {
    fn take(&self) -> Option<Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Encoded {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        // RFC 1035: 512 bytes over UDP unless the client announced a larger EDNS0 buffer.
        let max = if self.1 {
            u16::MAX
        } else {
            response.edns().map_or(512, |e| e.max_payload().max(512))
        };
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| hickory_server::net::NetError::from(e.to_string()))?;
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bytes);
        Ok(info)
    }
}

/// Poll a future once; local answers never wait, so they are ready at the first poll.
fn ready_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Most DNS-over-TCP connections at once by default; more are closed at once and counted.
pub const MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP connection that sends no complete query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(5);

/// Serve DNS over TCP (RFC 1035 §4.2.2: two-byte length, then the message; several queries
/// per connection) until `shutdown`.
pub async fn serve_tcp(
    handler: Arc<DnsHandler>,
    listener: tokio::net::TcpListener,
    max_connections: usize,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    // Dropped with this future: every connection ends with the server.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors or the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            handler.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _slot = slot;
            tcp_connection(&handler, stream, peer).await;
        });
    }
}

async fn tcp_connection(handler: &DnsHandler, mut stream: tokio::net::TcpStream, peer: SocketAddr) {
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.set_nodelay(true);
    loop {
        let query = tokio::time::timeout(TCP_IDLE, async {
            let len = stream.read_u16().await? as usize;
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        })
        .await;
        let Ok(Ok(query)) = query else { return };
        let request = match Request::from_bytes(query, peer, Protocol::Tcp) {
            Ok(r) if r.metadata.message_type == MessageType::Query => r,
            _ => {
                handler.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let encoded = Encoded(Arc::default(), true);
        handler
            .handle_request::<_, TokioTime>(&request, encoded.clone())
            .await;
        let Some(answer) = encoded.take() else {
            handler.counters.servfail.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        let sent = tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

/// Datagrams taken (and answers sent) per system call.
const BATCH: usize = 32;
/// Largest query taken over UDP (a longer one arrives cut and is dropped as malformed).
const MAX_QUERY: usize = 4096;
/// The window over which the UDP thread measures its query rate.
const RATE_WINDOW: Duration = Duration::from_millis(10);
/// Queries per [`RATE_WINDOW`] above which receives are coalesced (10,000 queries/s).
const COALESCE_ABOVE: usize = 100;

/// How queries are taken (UDP threads, and the TCP connection cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpOptions {
    /// Most TCP connections at once ([`MAX_TCP_CONNECTIONS`] unless the descriptor limit is
    /// low).
    pub max_tcp_connections: usize,
    /// Threads that join the receiving thread while a backlog lasts (parked otherwise).
    pub helpers: usize,
    /// Under load (over 10,000 queries/s), wait after each batch of answers so the next
    /// receive takes several queries at once: fewer wake-ups per query, at the price of
    /// latency. The wait is as long as 8 queries take to arrive, at most this long (plus
    /// the kernel's timer slack, 50 µs by default; see [`Coalescer`]). Zero: never.
    pub coalesce: Duration,
}

fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// One UDP thread's state: buffers for a batch of queries and their answers, and its own
/// [`FastPath`] cache.
struct UdpWorker {
    handler: Arc<DnsHandler>,
    socket: std::net::UdpSocket,
    runtime: tokio::runtime::Handle,
    directory: watch::Receiver<Arc<Vec<Node>>>,
    fast: FastPath,
    bufs: Vec<u8>,
    received: Vec<(usize, Option<nix::sys::socket::SockaddrStorage>)>,
    recv_headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    send_headers: nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>,
    answers: Vec<Vec<u8>>,
    to: Vec<Option<nix::sys::socket::SockaddrStorage>>,
}

impl UdpWorker {
    fn new(
        handler: Arc<DnsHandler>,
        socket: std::net::UdpSocket,
        runtime: tokio::runtime::Handle,
    ) -> UdpWorker {
        use nix::sys::socket::MultiHeaders;
        UdpWorker {
            directory: handler.directory.clone(),
            handler,
            socket,
            runtime,
            fast: FastPath::default(),
            bufs: vec![0u8; BATCH * MAX_QUERY],
            received: Vec::with_capacity(BATCH),
            recv_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
            answers: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            to: Vec::with_capacity(BATCH),
        }
    }

    /// Take up to [`BATCH`] queries (`wait`: block for the first one); how many arrived.
    fn receive(&mut self, wait: bool) -> nix::Result<usize> {
        use nix::sys::socket::{MsgFlags, recvmmsg};
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;
        self.received.clear();
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .chunks_mut(MAX_QUERY)
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        let flags = if wait {
            MsgFlags::MSG_WAITFORONE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let msgs = recvmmsg(
            self.socket.as_raw_fd(),
            &mut self.recv_headers,
            iovs.iter_mut(),
            flags,
            None,
        )?;
        self.received.extend(msgs.map(|m| {
            // A query longer than the buffer arrives cut: dropped as malformed.
            let cut = m.flags.contains(MsgFlags::MSG_TRUNC);
            (if cut { 0 } else { m.bytes }, m.address)
        }));
        Ok(self.received.len())
    }

    /// Answer the queries taken by [`UdpWorker::receive`], and send the answers.
    fn answer(&mut self) {
        use hickory_server::net::runtime::TokioTime;
        use hickory_server::net::xfer::Protocol;
        let handler = &self.handler;
        let nodes = self.directory.borrow_and_update().clone();
        let recursion = !handler.recursors.is_empty();
        let mut rng = rand::rng();
        self.to.clear();
        for (i, (len, from)) in self.received.iter().enumerate() {
            let (query, Some(from)) = (&self.bufs[i * MAX_QUERY..i * MAX_QUERY + len], from) else {
                continue;
            };
            let out = &mut self.answers[self.to.len()];
            if self
                .fast
                .answer(&handler.settings, &nodes, recursion, query, &mut rng, out)
            {
                handler.counters.queries.fetch_add(1, Ordering::Relaxed);
                handler.counters.noerror.fetch_add(1, Ordering::Relaxed);
                self.to.push(Some(*from));
                continue;
            }
            let Some(src) = socket_addr(from) else {
                continue;
            };
            let request = match Request::from_bytes(query.to_vec(), src, Protocol::Udp) {
                // Never answer answers (no reflection loops) nor garbage.
                Ok(r) if r.metadata.message_type == MessageType::Query => r,
                _ => {
                    handler.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let encoded = Encoded::default();
            if handler.needs_forward(&request) {
                let (handler, socket) = (handler.clone(), self.socket.try_clone());
                self.runtime.spawn(async move {
                    handler
                        .handle_request::<_, TokioTime>(&request, encoded.clone())
                        .await;
                    if let (Some(bytes), Ok(socket)) = (encoded.take(), socket) {
                        let _ = socket.send_to(&bytes, src);
                    }
                });
                continue;
            }
            let answered =
                ready_now(handler.handle_request::<_, TokioTime>(&request, encoded.clone()));
            match (answered, encoded.take()) {
                (Some(_), Some(bytes)) => {
                    *out = bytes;
                    self.to.push(Some(*from));
                }
                _ => {
                    handler.counters.servfail.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.send();
    }

    /// Send the answers; one that cannot be sent (its client is gone) is skipped, the others
    /// still go.
    fn send(&mut self) {
        use nix::sys::socket::{MsgFlags, sendmmsg};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let mut sent = 0;
        while sent < self.to.len() {
            let iovs: Vec<[IoSlice<'_>; 1]> = self.answers[sent..self.to.len()]
                .iter()
                .map(|a| [IoSlice::new(a)])
                .collect();
            match sendmmsg(
                self.socket.as_raw_fd(),
                &mut self.send_headers,
                &iovs,
                &self.to[sent..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(done) => sent += done.count().max(1),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    // Already counted under its answer's code; the client will retry.
                    tracing::debug!(error = %e, "cannot send a DNS answer");
                    sent += 1;
                }
            }
        }
    }
}

/// Threads that help the receiving thread through a backlog.
struct Helpers {
    threads: Vec<std::thread::Thread>,
    /// Whether they are working (so the receiving thread does not wake them again).
    busy: Arc<std::sync::atomic::AtomicBool>,
}

/// The receiving thread: blocks for queries (an idle server never wakes up), answers them in
/// batches, wakes the helpers when a batch comes back full (a backlog), and under load without
/// a backlog coalesces receives (see [`Coalescer`]). Returns at `stop` (woken by a datagram).
fn receive_udp(
    mut worker: UdpWorker,
    coalesce: Duration,
    helpers: Arc<Helpers>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut pace = Coalescer::new(std::time::Instant::now(), coalesce);
    loop {
        if let Some(wait) = pace.wait() {
            std::thread::sleep(wait);
        }
        let taken = match worker.receive(true) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "DNS receive failed");
                std::thread::sleep(Duration::from_millis(100));
                0
            }
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if taken == BATCH
            && !helpers.threads.is_empty()
            && !helpers.busy.swap(true, Ordering::AcqRel)
        {
            helpers.threads.iter().for_each(std::thread::Thread::unpark);
        }
        worker.answer();
        // (A failed or interrupted receive is no batch.)
        if !coalesce.is_zero() && taken > 0 {
            pace.batch(taken, std::time::Instant::now());
        }
    }
}

/// Whether, and how long, the receiving thread waits before its next receive (see
/// [`UdpOptions::coalesce`]): when the last [`RATE_WINDOW`] saw over 10,000 queries/s, the last
/// batch was less than half full and no batch came back full in this window or the last, it
/// waits as long as a quarter batch (8 queries) takes to arrive at that rate, at most
/// `coalesce`. Below that rate a wait would only add latency. Full batches mean a backlog:
/// queries already arrive faster than they are answered, and a wait would only hold back
/// clients that wait for their answers before they ask again. The faster queries come, the
/// shorter the wait that gathers a batch; a quarter batch, so that the batch after a wait
/// stays under half full and the waits go on (sized to half a batch, every other wait would
/// be skipped).
#[derive(Debug)]
struct Coalescer {
    longest: Duration,
    window: std::time::Instant,
    in_window: usize,
    /// Queries in the last whole window (scaled to one [`RATE_WINDOW`]).
    per_window: u128,
    last: usize,
    /// A full batch in this window, in the last one.
    full: (bool, bool),
}

impl Coalescer {
    fn new(now: std::time::Instant, longest: Duration) -> Coalescer {
        Coalescer {
            longest,
            window: now,
            in_window: 0,
            per_window: 0,
            last: 0,
            full: (false, false),
        }
    }

    /// A batch of `taken` queries was answered at `now`.
    fn batch(&mut self, taken: usize, now: std::time::Instant) {
        self.last = taken;
        self.in_window += taken;
        self.full.0 |= taken == BATCH;
        let elapsed = now.saturating_duration_since(self.window);
        if elapsed >= RATE_WINDOW {
            // The rate over the window, scaled to one RATE_WINDOW: after an idle gap the
            // window is long and the rate low.
            self.per_window =
                self.in_window as u128 * RATE_WINDOW.as_nanos() / elapsed.as_nanos().max(1);
            self.window = now;
            self.in_window = 0;
            self.full = (false, self.full.0);
        }
    }

    fn wait(&self) -> Option<Duration> {
        if self.longest.is_zero()
            || self.per_window <= COALESCE_ABOVE as u128
            || self.last >= BATCH / 2
            || self.full.0
            || self.full.1
        {
            return None;
        }
        // per_window > 100: under 1 ms.
        let quarter = RATE_WINDOW.as_nanos() * (BATCH / 4) as u128 / self.per_window;
        Some(self.longest.min(Duration::from_nanos(quarter as u64)))
    }
}

/// A helper thread: parked until the receiving thread sees a backlog, then answers until the
/// socket is empty.
fn help_udp(
    mut worker: UdpWorker,
    busy: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    loop {
        std::thread::park();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        while let Ok(n) = worker.receive(false) {
            if n == 0 || stop.load(Ordering::Relaxed) {
                break;
            }
            worker.answer();
        }
        busy.store(false, Ordering::Release);
    }
}

/// Serve on the bound sockets until `shutdown`: UDP on a receiving thread (and helpers, see
/// [`UdpOptions`]), TCP with [`serve_tcp`] (a connection cap, 5 s idle timeout).
pub async fn serve(
    handler: DnsHandler,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    options: UdpOptions,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let handler = Arc::new(handler);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut joins = Vec::new();
    let mut helper_threads = Vec::new();
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut receiver = None;
    // Blocking receives with no timeout: an idle server never wakes up. At shutdown the
    // receiving thread is woken by an empty datagram, the helpers by an unpark.
    let mut wake_addr = None;
    match udp.into_std().and_then(|s| {
        s.set_nonblocking(false)?;
        Ok(s)
    }) {
        Ok(socket) => {
            wake_addr = socket.local_addr().ok().map(|mut a| {
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                a
            });
            let runtime = tokio::runtime::Handle::current();
            for i in 0..options.helpers {
                let Ok(socket) = socket.try_clone() else {
                    break;
                };
                let (handler, runtime) = (handler.clone(), runtime.clone());
                let (busy, stop) = (busy.clone(), stop.clone());
                // The buffers are made on the thread that uses them (they hold raw pointers).
                let spawned = std::thread::Builder::new()
                    .name(format!("opsbro-dns-help-{i}"))
                    .spawn(move || {
                        help_udp(UdpWorker::new(handler, socket, runtime), &busy, &stop);
                    });
                match spawned {
                    Ok(j) => {
                        helper_threads.push(j.thread().clone());
                        joins.push(j);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start a DNS thread"),
                }
            }
            let helpers = Arc::new(Helpers {
                threads: helper_threads.clone(),
                busy: busy.clone(),
            });
            let (handler, coalesce, stop) = (handler.clone(), options.coalesce, stop.clone());
            let spawned = std::thread::Builder::new()
                .name("opsbro-dns".into())
                .spawn(move || {
                    let worker = UdpWorker::new(handler, socket, runtime);
                    receive_udp(worker, coalesce, helpers, stop);
                });
            match spawned {
                Ok(j) => receiver = Some(j),
                Err(e) => tracing::error!(error = %e, "cannot start the DNS thread"),
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot use the DNS UDP socket"),
    }
    serve_tcp(handler, tcp, options.max_tcp_connections, shutdown).await;
    stop.store(true, Ordering::Relaxed);
    helper_threads.iter().for_each(std::thread::Thread::unpark);
    let _ = tokio::task::spawn_blocking(move || {
        // Wake the receiving thread with empty datagrams until it has seen `stop` (a helper
        // still draining may take one); a bounded wait, so shutdown never hangs here.
        if let (Some(addr), Some(receiver)) = (wake_addr, receiver) {
            let bind: SocketAddr = if addr.is_ipv4() {
                ([127, 0, 0, 1], 0).into()
            } else {
                (std::net::Ipv6Addr::LOCALHOST, 0).into()
            };
            if let Ok(s) = std::net::UdpSocket::bind(bind) {
                for _ in 0..200 {
                    if receiver.is_finished() {
                        break;
                    }
                    let _ = s.send_to(&[], addr);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if receiver.is_finished() {
                let _ = receiver.join();
            }
        }
        for j in joins {
            let _ = j.join();
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RecordType;
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;

    use crate::test_node as node;

    const LONGEST: Duration = Duration::from_micros(200);

    /// Feed `batches` of `size` queries `every` apart; how long the thread would wait then.
    fn pace(size: usize, every: Duration, batches: u32) -> Option<Duration> {
        let start = std::time::Instant::now();
        let mut c = Coalescer::new(start, LONGEST);
        for i in 1..=batches {
            c.batch(size, start + every * i);
        }
        c.wait()
    }

    #[test]
    fn receives_are_coalesced_only_under_load_and_not_when_batches_fill() {
        let us = Duration::from_micros;
        // 5,000 queries/s: answered as they come.
        assert_eq!(pace(1, us(200), 200), None);
        // 20,000 queries/s in small batches: a quarter batch takes 400 us to arrive; wait the
        // longest allowed.
        assert_eq!(pace(2, us(100), 400), Some(LONGEST));
        // 160,000 queries/s in small batches: a quarter batch arrives in 50 us.
        assert_eq!(pace(4, us(25), 1600), Some(us(50)));
        // Batches half full or more: they fill by themselves.
        assert_eq!(pace(BATCH / 2, us(100), 400), None);
        // A full batch (a backlog, as when clients wait for their answers before they ask
        // again) stops the waits for the rest of that window and the next one.
        let start = std::time::Instant::now();
        let mut c = Coalescer::new(start, LONGEST);
        let mut at = start;
        let mut feed = |c: &mut Coalescer, size: usize, batches: u32| {
            for _ in 0..batches {
                at += us(100);
                c.batch(size, at);
            }
        };
        feed(&mut c, 2, 400);
        assert_eq!(c.wait(), Some(LONGEST));
        feed(&mut c, BATCH, 1);
        feed(&mut c, 2, 1);
        assert_eq!(c.wait(), None);
        feed(&mut c, 2, 150);
        assert_eq!(
            c.wait(),
            None,
            "the next window still remembers the backlog"
        );
        feed(&mut c, 2, 100);
        assert_eq!(c.wait(), Some(LONGEST), "two windows later it waits again");
        // Never, when coalescing is off.
        let start = std::time::Instant::now();
        let mut off = Coalescer::new(start, Duration::ZERO);
        (1..=400).for_each(|i| off.batch(2, start + us(100) * i));
        assert_eq!(off.wait(), None);
        // Load, then a second of silence, then one query: answered at once again.
        let mut c = Coalescer::new(start, LONGEST);
        for i in 1..=400 {
            c.batch(2, start + us(100) * i);
        }
        assert!(c.wait().is_some());
        c.batch(1, start + Duration::from_secs(2));
        assert_eq!(c.wait(), None);
    }

    /// The directory of the comparison tests: n1-n12 (10.0.0.x, groups redis and web) and
    /// v6 (fd00::1, redis), with services: `web` on n1 (80, tag primary) and n3 (8080,
    /// primary) on their own addresses, on n2 and n5 behind 10.0.1.2 (80), on v6 (443,
    /// primary); `metrics` without a port on n4; `big` on every n (9000, on 10.0.2.x).
    fn service_nodes() -> Arc<Vec<Node>> {
        use crate::test_service as svc;
        let mut nodes: Vec<Node> = (1..=12)
            .map(|i| {
                let mut n = node(&format!("n{i}"), &format!("10.0.0.{i}"), &["redis", "web"]);
                n.services = vec![svc("big", 9000, &[], &format!("10.0.2.{i}"))];
                n
            })
            .collect();
        nodes[0]
            .services
            .push(svc("web", 80, &["primary"], "10.0.0.1"));
        nodes[1].services.push(svc("web", 80, &[], "10.0.1.2"));
        nodes[2]
            .services
            .push(svc("web", 8080, &["primary"], "10.0.0.3"));
        nodes[3].services.push(svc("metrics", 0, &[], "10.0.0.4"));
        nodes[4].services.push(svc("web", 80, &[], "10.0.1.2"));
        let mut v6 = node("v6", "fd00::1", &["redis"]);
        v6.services = vec![svc("web", 443, &["primary"], "fd00::1")];
        nodes.push(v6);
        Arc::new(nodes)
    }

    /// hickory's full path: the handler's answer to `bytes` over `protocol`, decoded.
    fn full_path(handler: &DnsHandler, bytes: Vec<u8>, protocol: Protocol) -> Message {
        let request = Request::from_bytes(bytes, SocketAddr::from(([127, 0, 0, 1], 9)), protocol)
            .expect("request");
        let encoded = Encoded(Arc::default(), protocol == Protocol::Tcp);
        ready_now(handler.handle_request::<_, TokioTime>(&request, encoded.clone()))
            .expect("answered at once");
        Message::from_vec(&encoded.take().expect("bytes")).expect("decode")
    }

    /// Sorted `owner ttl data` lines.
    fn set(records: &[Record]) -> Vec<String> {
        let mut v: Vec<String> = records
            .iter()
            .map(|r| format!("{} {} {}", r.name.to_lowercase(), r.ttl, r.data))
            .collect();
        v.sort();
        v
    }

    /// The fast path and hickory's full path give the same answer to every query the fast
    /// path takes: header, question, answer and additional records (as sets: both shuffle),
    /// EDNS; and the fast path declines what it should.
    #[test]
    fn the_fast_path_answers_like_the_full_path() {
        let directory = service_nodes();
        let (_keep, rx) = watch::channel(directory.clone());
        for recursors in [vec![], vec![SocketAddr::from(([127, 0, 0, 1], 53))]] {
            let settings = Settings::new("opsbro", 45, 60, false).expect("settings");
            let handler = DnsHandler::new(
                settings.clone(),
                rx.clone(),
                recursors.clone(),
                Arc::default(),
            );
            let mut fast = FastPath::default();
            let mut taken = 0;
            let mut with_additionals = 0;
            // Name, type, EDNS size, RD, CD, whether the fast path takes it.
            for (name, qtype, edns, rd, cd, takes) in [
                ("redis.group.opsbro", RecordType::A, None, true, false, true),
                (
                    "Redis.Group.OPSBRO",
                    RecordType::A,
                    Some(1232),
                    false,
                    true,
                    true,
                ),
                (
                    "redis.group.dc1.opsbro",
                    RecordType::AAAA,
                    Some(256),
                    true,
                    true,
                    true,
                ),
                ("n7.name.opsbro", RecordType::A, None, false, false, true),
                (
                    "web.group.opsbro",
                    RecordType::A,
                    Some(4096),
                    true,
                    false,
                    true,
                ),
                ("nope.group.opsbro", RecordType::A, None, true, false, false),
                // Services: SRV with additionals, either name form, with and without EDNS.
                (
                    "_web._tcp.service.opsbro",
                    RecordType::SRV,
                    None,
                    true,
                    false,
                    true,
                ),
                (
                    "_web._tcp.service.opsbro",
                    RecordType::SRV,
                    Some(1232),
                    true,
                    false,
                    true,
                ),
                (
                    "_Web._Udp.Service.DC1.opsbro",
                    RecordType::SRV,
                    None,
                    false,
                    true,
                    true,
                ),
                (
                    "web.service.opsbro",
                    RecordType::SRV,
                    Some(512),
                    true,
                    false,
                    true,
                ),
                (
                    "_web._primary.service.opsbro",
                    RecordType::SRV,
                    None,
                    true,
                    false,
                    true,
                ),
                (
                    "primary.web.service.dc1.opsbro",
                    RecordType::SRV,
                    Some(1232),
                    true,
                    false,
                    true,
                ),
                // Addresses of service names, tag names, addr names.
                ("web.service.opsbro", RecordType::A, None, true, false, true),
                (
                    "web.service.opsbro",
                    RecordType::AAAA,
                    Some(1232),
                    true,
                    false,
                    true,
                ),
                (
                    "primary.web.service.opsbro",
                    RecordType::A,
                    None,
                    true,
                    false,
                    true,
                ),
                (
                    "_web._tcp.service.opsbro",
                    RecordType::A,
                    Some(1232),
                    true,
                    false,
                    true,
                ),
                (
                    "0a000102.addr.opsbro",
                    RecordType::A,
                    None,
                    true,
                    false,
                    true,
                ),
                (
                    "0A000001.addr.opsbro",
                    RecordType::A,
                    Some(1232),
                    true,
                    false,
                    true,
                ),
                (
                    "fd000000000000000000000000000001.addr.opsbro",
                    RecordType::AAAA,
                    None,
                    true,
                    false,
                    true,
                ),
                // 12 SRV records: only with EDNS.
                (
                    "_big._tcp.service.opsbro",
                    RecordType::SRV,
                    Some(4096),
                    true,
                    false,
                    true,
                ),
                (
                    "_big._tcp.service.opsbro",
                    RecordType::SRV,
                    None,
                    true,
                    false,
                    false,
                ),
                // NODATA (no port), NXDOMAIN (unknown address, tag): the full path's.
                (
                    "metrics.service.opsbro",
                    RecordType::SRV,
                    None,
                    true,
                    false,
                    false,
                ),
                (
                    "0a0a0a0a.addr.opsbro",
                    RecordType::A,
                    None,
                    true,
                    false,
                    false,
                ),
                (
                    "nope.web.service.opsbro",
                    RecordType::SRV,
                    Some(1232),
                    true,
                    false,
                    false,
                ),
            ] {
                let mut m = crate::test_query(name, qtype, edns);
                m.metadata.id = 4242;
                m.metadata.recursion_desired = rd;
                m.metadata.checking_disabled = cd;
                let bytes = m.to_vec().expect("encode");
                let mut out = Vec::new();
                let took = fast.answer(
                    &settings,
                    &directory,
                    !recursors.is_empty(),
                    &bytes,
                    &mut rand::rng(),
                    &mut out,
                );
                let full = full_path(&handler, bytes, Protocol::Udp);
                assert_eq!(took, takes, "{name} {qtype} {edns:?}");
                if !took {
                    continue;
                }
                taken += 1;
                let quick = Message::from_vec(&out).expect("decode");
                assert_eq!(quick.metadata, full.metadata, "{name}");
                assert!(!quick.metadata.truncation, "{name}");
                assert_eq!(quick.queries, full.queries, "{name}");
                assert!(!quick.answers.is_empty());
                assert_eq!(set(&quick.answers), set(&full.answers), "{name}");
                assert_eq!(set(&quick.additionals), set(&full.additionals), "{name}");
                if qtype == RecordType::SRV {
                    // Every target's address, and only those.
                    let mut targets: Vec<String> = quick
                        .answers
                        .iter()
                        .filter_map(|r| match &r.data {
                            hickory_proto::rr::RData::SRV(srv) => Some(srv.target.to_string()),
                            _ => None,
                        })
                        .collect();
                    targets.sort();
                    targets.dedup();
                    let mut owners: Vec<String> = quick
                        .additionals
                        .iter()
                        .map(|r| r.name.to_string())
                        .collect();
                    owners.sort();
                    assert_eq!(owners, targets, "{name}");
                    with_additionals += 1;
                } else {
                    assert!(quick.additionals.is_empty(), "{name}");
                }
                assert_eq!(quick.authorities, full.authorities, "{name}");
                assert_eq!(
                    quick.edns.as_ref().map(|e| e.max_payload()),
                    full.edns.as_ref().map(|e| e.max_payload()),
                    "{name}"
                );
            }
            assert_eq!((taken, with_additionals), (19, 7));
        }
    }

    /// Over UDP, an SRV answer too long for the client's buffer loses its additional records
    /// first (no TC: the answers are whole); only answers that do not fit by themselves are
    /// cut (TC). Over TCP, everything goes.
    #[test]
    fn additionals_are_dropped_before_answers_are_cut() {
        use crate::test_service as svc;
        // `mid`: 10 records of 40 bytes fit 512 bytes, not with their 10 additionals.
        // `big`: 20 records do not fit at all.
        let nodes: Vec<Node> = (1..=20)
            .map(|i| {
                let mut n = node(&format!("n{i}"), &format!("10.0.0.{i}"), &[]);
                n.services = vec![svc("big", 9000, &[], &format!("10.0.2.{i}"))];
                if i <= 10 {
                    n.services.push(svc("mid", 80, &[], &format!("10.0.1.{i}")));
                }
                n
            })
            .collect();
        let (_keep, rx) = watch::channel(Arc::new(nodes));
        let settings = Settings::new("opsbro", 45, 60, false).expect("settings");
        let handler = DnsHandler::new(settings, rx, vec![], Arc::default());
        let ask = |name: &str, edns: Option<u16>, protocol: Protocol| {
            let q = crate::test_query(name, RecordType::SRV, edns);
            let m = full_path(&handler, q.to_vec().expect("encode"), protocol);
            (m.answers.len(), m.additionals.len(), m.metadata.truncation)
        };
        assert_eq!(
            ask("_mid._tcp.service.opsbro", None, Protocol::Udp),
            (10, 0, false)
        );
        assert_eq!(
            ask("_mid._tcp.service.opsbro", Some(1232), Protocol::Udp),
            (10, 10, false)
        );
        let (answers, additionals, tc) = ask("_big._tcp.service.opsbro", None, Protocol::Udp);
        assert!(
            answers < 20 && additionals == 0 && tc,
            "{answers} {additionals} {tc}"
        );
        assert_eq!(
            ask("_big._tcp.service.opsbro", Some(4096), Protocol::Udp),
            (20, 20, false)
        );
        assert_eq!(
            ask("_big._tcp.service.opsbro", None, Protocol::Tcp),
            (20, 20, false)
        );
        // EDNS survives the drop: the OPT record is still there.
        let q = crate::test_query("_mid._tcp.service.opsbro", RecordType::SRV, Some(600));
        let m = full_path(&handler, q.to_vec().expect("encode"), Protocol::Udp);
        assert_eq!((m.answers.len(), m.additionals.len()), (10, 0));
        assert_eq!(m.edns.map(|e| e.max_payload()), Some(600));
    }
}
