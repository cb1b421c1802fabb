//! The DNS server: a hickory-server 0.26 [`RequestHandler`] answering from the directory, and
//! forwarding names outside the domain to recursors when some are configured.
//!
//! TCP goes through hickory's `Server`. UDP, where the load is, goes through `serve_udp`: a
//! loop per core that decodes with hickory (`Request::from_bytes`), answers inline with the same
//! handler, and encodes with hickory's encoder within the client's UDP size (512 bytes, or its
//! EDNS0 buffer), setting TC when the answer does not fit. hickory's own UDP server hands every
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
        let (records, authorities, additionals): (Vec<Record>, Vec<Record>, Vec<Record>) =
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
                        Answer::Records { records, soa } => {
                            (records, soa.into_iter().collect(), vec![])
                        }
                        Answer::NxDomain { soa } => (vec![], vec![soa], vec![]),
                        Answer::NotOurs => (vec![], vec![], vec![]),
                    }
                }
            };
        let code = metadata.response_code;
        let response = builder.build(
            metadata,
            records.iter(),
            authorities.iter(),
            std::iter::empty(),
            additionals
                .iter()
                // The client's OPT is not ours to repeat.
                .filter(|r| r.record_type() != hickory_proto::rr::RecordType::OPT),
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

/// Lets hickory's TCP server and our UDP loops share one handler.
struct Shared(Arc<DnsHandler>);

#[async_trait::async_trait]
impl RequestHandler for Shared {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// A response handler that encodes into a buffer (the UDP loop sends it).
#[derive(Clone, Default)]
struct Encoded(Arc<std::sync::Mutex<Option<Vec<u8>>>>);

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
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
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

/// Answer UDP queries on `socket` until `stop` (one per thread, on clones of one socket): a
/// blocking receive wakes exactly this thread, the answer is computed and sent inline. Queries
/// for a recursor are handed to the async runtime.
fn serve_udp(
    handler: Arc<DnsHandler>,
    socket: std::net::UdpSocket,
    runtime: tokio::runtime::Handle,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let request = match Request::from_bytes(buf[..n].to_vec(), src, Protocol::Udp) {
            // Never answer answers (no reflection loops) nor garbage.
            Ok(r) if r.metadata.message_type == MessageType::Query => r,
            _ => {
                handler.counters.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let out = Encoded::default();
        if handler.needs_forward(&request) {
            let (handler, socket) = (handler.clone(), socket.try_clone());
            runtime.spawn(async move {
                handler
                    .handle_request::<_, TokioTime>(&request, out.clone())
                    .await;
                if let (Some(bytes), Ok(socket)) = (out.take(), socket) {
                    let _ = socket.send_to(&bytes, src);
                }
            });
            continue;
        }
        let answered = ready_now(handler.handle_request::<_, TokioTime>(&request, out.clone()));
        match (answered, out.take()) {
            (Some(_), Some(bytes)) => {
                let _ = socket.send_to(&bytes, src);
            }
            _ => {
                handler.counters.servfail.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Serve on the bound sockets until `shutdown`: UDP on `threads` threads, TCP with hickory's
/// server (whole answers, 5 s idle timeout).
pub async fn serve(
    handler: DnsHandler,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    threads: usize,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let handler = Arc::new(handler);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut joins = Vec::new();
    // Blocking receives with no timeout: an idle server never wakes up. At shutdown each
    // thread is woken by an empty datagram.
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
            for i in 0..threads.max(1) {
                let Ok(socket) = socket.try_clone() else {
                    break;
                };
                let (handler, stop) = (handler.clone(), stop.clone());
                let runtime = tokio::runtime::Handle::current();
                let spawned = std::thread::Builder::new()
                    .name(format!("opsbro-dns-{i}"))
                    .spawn(move || serve_udp(handler, socket, runtime, stop));
                match spawned {
                    Ok(j) => joins.push(j),
                    Err(e) => tracing::error!(error = %e, "cannot start a DNS thread"),
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot use the DNS UDP socket"),
    }
    let mut server = hickory_server::Server::new(Shared(handler));
    server.register_listener(tcp, Duration::from_secs(5), 64);
    shutdown.cancelled().await;
    stop.store(true, Ordering::Relaxed);
    let _ = server.shutdown_gracefully().await;
    if let Some(addr) = wake_addr {
        let bind: SocketAddr = if addr.is_ipv4() {
            ([127, 0, 0, 1], 0).into()
        } else {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        };
        if let Ok(s) = std::net::UdpSocket::bind(bind) {
            for _ in 0..joins.len() {
                let _ = s.send_to(&[], addr);
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        for j in joins {
            let _ = j.join();
        }
    })
    .await;
}
