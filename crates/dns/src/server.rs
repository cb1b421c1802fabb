//! The DNS server: a hickory-server 0.26 [`RequestHandler`] answering from the directory, and
//! forwarding names outside the domain to recursors when some are configured.
//!
//! hickory's `Server` owns the sockets (UDP and TCP), decodes requests (garbage never reaches
//! the handler) and encodes answers within the client's UDP size (512 bytes, or its EDNS0
//! buffer), setting TC when they do not fit; TCP answers are whole.

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

/// Serve on the bound sockets until `shutdown`.
pub async fn serve(
    handler: DnsHandler,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    shutdown.cancelled().await;
    let _ = server.shutdown_gracefully().await;
}
