//! The metrics subsystem: the time-series store (always on: collectors and check perfdata go
//! in), the statsd listener (UDP, one blocking thread aggregating in place, flushed every
//! `statsd.interval`), the graphite listeners (carbon plaintext over TCP and UDP) and the
//! forwarder to an external carbon. Parsing, aggregation and storage live in `opsbro_metrics`;
//! this module owns the sockets, threads and timers.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opsbro_api::metrics::{ForwardInfo, MetricsInfo};
use opsbro_config::{GraphiteSettings, StatsdSettings};
use opsbro_metrics::render::{FindNode, Range, RenderError, Series};
use opsbro_metrics::statsd::Aggregator;
use opsbro_metrics::tsdb::TsDb;
use opsbro_metrics::{Point, graphite};
use opsbro_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Series the store accepts before refusing new ones.
pub const MAX_SERIES: usize = 100_000;
/// How often buffered points are written to the store.
const STORE_FLUSH: Duration = Duration::from_secs(10);
/// How often records past their retention are removed.
const EXPIRY: Duration = Duration::from_secs(600);
/// Longest graphite line.
const MAX_LINE: usize = 4096;
/// Concurrent graphite TCP connections.
const MAX_CONNECTIONS: usize = 256;
/// A graphite connection that sends nothing for this long is closed (carbon clients send
/// every few seconds and reconnect when needed).
const GRAPHITE_IDLE: Duration = Duration::from_secs(60);
/// Receive buffer asked for the UDP listeners: bursts of datagrams wait here while a flush or a
/// store write holds the thread up.
const UDP_RECV_BUFFER: usize = 16 * 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_secs() -> u64 {
    crate::host::unix_ms() / 1000
}

/// Lines counted by the graphite listeners.
#[derive(Default)]
struct GraphiteCounters {
    lines: AtomicU64,
    bad_lines: AtomicU64,
    /// Connections closed to make room for a new one (all slots were taken).
    evicted: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl GraphiteCounters {
    fn bad(&self, line: &[u8], e: &graphite::LineError) {
        let n = self.bad_lines.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1024) {
            let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
            *lock(&self.last_error) = Some(format!("{e}: {shown}"));
        }
    }
}

/// Shared handle: ingest points, query, report counters.
#[derive(Clone)]
pub struct MetricsHandle(Arc<Inner>);

struct Inner {
    db: Mutex<TsDb>,
    /// Serialises store writes and expiry, which run without holding `db`.
    writer: Mutex<()>,
    statsd: Option<(SocketAddr, Arc<Mutex<Aggregator>>)>,
    graphite_addr: Mutex<Option<SocketAddr>>,
    graphite: GraphiteCounters,
    forward: Option<Arc<Forwarder>>,
}

impl MetricsHandle {
    /// Store the agent's own points (collectors, perfdata); refused points are counted. They
    /// are not forwarded: every agent names them alike, they would collide in a shared carbon.
    pub fn ingest(&self, points: &[Point]) {
        self.store(points);
    }

    /// Store points users sent (statsd aggregates, graphite lines) and queue them for the carbon
    /// forwarder.
    pub fn ingest_and_forward(&self, points: &[Point]) {
        self.store(points);
        if let Some(f) = &self.0.forward {
            f.push(points);
        }
    }

    fn store(&self, points: &[Point]) {
        if points.is_empty() {
            return;
        }
        let now = now_secs();
        {
            let mut db = lock(&self.0.db);
            for p in points {
                let _ = db.add(p, now);
            }
        }
    }

    /// `/render`.
    pub fn render(
        &self,
        targets: &[String],
        range: Range,
        x_files_factor: f64,
    ) -> Result<Vec<Series>, RenderError> {
        opsbro_metrics::render::render_with(&lock(&self.0.db), targets, range, x_files_factor)
    }

    /// Run `f` over every series name (the store is locked meanwhile: keep `f` short).
    pub fn with_names<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &str>) -> R) -> R {
        let db = lock(&self.0.db);
        f(&mut db.names())
    }

    /// `/metrics/find`.
    pub fn find(&self, query: &str) -> Result<Vec<FindNode>, RenderError> {
        opsbro_metrics::render::find(lock(&self.0.db).names(), query)
    }

    /// Every series name.
    pub fn names(&self) -> Vec<String> {
        lock(&self.0.db).names().map(str::to_owned).collect()
    }

    /// Counters for `agent info`.
    pub fn info(&self) -> MetricsInfo {
        let (series, ts) = {
            let db = lock(&self.0.db);
            (db.series(), db.stats())
        };
        let (statsd_addr, stats, last) = match &self.0.statsd {
            Some((addr, agg)) => {
                let agg = lock(agg);
                (
                    Some(*addr),
                    agg.stats(),
                    agg.last_error
                        .as_ref()
                        .map(|(line, e)| format!("{e}: {line}")),
                )
            }
            None => (None, Default::default(), None),
        };
        let g = &self.0.graphite;
        MetricsInfo {
            statsd_addr,
            statsd_packets: stats.packets,
            statsd_lines: stats.lines,
            statsd_bad_lines: stats.bad_lines,
            statsd_last_error: last,
            graphite_addr: *lock(&self.0.graphite_addr),
            graphite_lines: g.lines.load(Ordering::Relaxed),
            graphite_bad_lines: g.bad_lines.load(Ordering::Relaxed),
            graphite_evicted: g.evicted.load(Ordering::Relaxed),
            graphite_last_error: lock(&g.last_error).clone(),
            series,
            points: ts.points,
            points_rejected: ts.rejected,
            forward: self.0.forward.as_ref().map(|f| f.info()),
        }
    }

    /// The statsd listener's address, when it runs.
    pub fn statsd_addr(&self) -> Option<SocketAddr> {
        self.0.statsd.as_ref().map(|(a, _)| *a)
    }

    /// The graphite listener's address, when it runs.
    pub fn graphite_addr(&self) -> Option<SocketAddr> {
        *lock(&self.0.graphite_addr)
    }

    /// Write buffered points to the store (blocking: sled IO, done without holding the lock
    /// that adds and queries take).
    fn flush_store(&self) {
        let _writing = lock(&self.0.writer);
        let (pending, store) = {
            let mut db = lock(&self.0.db);
            (db.take_pending(), db.store())
        };
        if pending.is_empty() {
            return;
        }
        match TsDb::write(&*store, pending) {
            Ok(n) => lock(&self.0.db).note_written(n),
            Err(e) => {
                lock(&self.0.db).note_write_failed();
                tracing::warn!(error = %e, "cannot write metrics to the store");
            }
        }
    }

    /// Remove records past their retention (blocking, without holding the lock).
    fn expire(&self) {
        let _writing = lock(&self.0.writer);
        let (names, store) = {
            let db = lock(&self.0.db);
            (
                db.names().map(str::to_owned).collect::<Vec<_>>(),
                db.store(),
            )
        };
        let result = TsDb::expire_series(&*store, &names, now_secs())
            .and_then(|(removed, empty)| lock(&self.0.db).forget(&empty, removed));
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot expire old metrics");
        }
    }
}

/// Everything the metrics subsystem needs to start.
pub struct MetricsSetup {
    /// Where the series live (a tree of the agent's sled database).
    pub store: Arc<dyn Store>,
    /// `statsd:`.
    pub statsd: StatsdSettings,
    /// `graphite:`.
    pub graphite: GraphiteSettings,
}

/// Ask for a large receive buffer (forced past `rmem_max` when allowed).
fn set_big_receive_buffer(socket: &impl std::os::fd::AsFd) {
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, UDP_RECV_BUFFER).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(socket, UDP_RECV_BUFFER);
    }
}

/// Bind an UDP socket with a large receive buffer.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    set_big_receive_buffer(&socket);
    Ok(socket)
}

/// Open the store, bind the enabled listeners and start their tasks. Listener failures are
/// returned as messages (the agent runs on without them); a store failure is fatal.
pub async fn start(
    setup: MetricsSetup,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(MetricsHandle, Vec<String>), String> {
    let db = TsDb::open(setup.store, MAX_SERIES).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let statsd = if setup.statsd.enabled {
        let addr = SocketAddr::new(setup.statsd.bind, setup.statsd.port);
        match bind_udp(addr).and_then(|s| Ok((s.local_addr()?, s))) {
            Ok((bound, socket)) => {
                let agg = Arc::new(Mutex::new(Aggregator::new(
                    opsbro_metrics::statsd::Limits::default(),
                    rand::random(),
                )));
                Some((bound, socket, agg))
            }
            Err(e) => {
                problems.push(format!("statsd: cannot listen on udp {addr}: {e}"));
                None
            }
        }
    } else {
        None
    };
    let graphite = if setup.graphite.enabled {
        let addr = SocketAddr::new(setup.graphite.bind, setup.graphite.port);
        match bind_graphite(addr, setup.graphite.tcp, setup.graphite.udp).await {
            Ok(b) => Some(b),
            Err(e) => {
                problems.push(format!("graphite: cannot listen on {addr}: {e}"));
                None
            }
        }
    } else {
        None
    };
    let forward = setup
        .graphite
        .forward
        .clone()
        .map(|address| Arc::new(Forwarder::new(address, setup.graphite.forward_buffer)));
    let handle = MetricsHandle(Arc::new(Inner {
        db: Mutex::new(db),
        writer: Mutex::new(()),
        statsd: statsd.as_ref().map(|(a, _, agg)| (*a, agg.clone())),
        graphite_addr: Mutex::new(graphite.as_ref().map(|g| g.addr)),
        graphite: GraphiteCounters::default(),
        forward: forward.clone(),
    }));

    if let Some((addr, socket, agg)) = statsd {
        start_statsd(
            &handle,
            addr,
            socket,
            agg,
            setup.statsd.interval,
            tracker,
            shutdown.clone(),
        );
    }
    if let Some(g) = graphite {
        if let Some(tcp) = g.tcp {
            tracker.spawn(graphite_tcp(handle.clone(), tcp, shutdown.clone()));
        }
        if let Some(udp) = g.udp {
            tracker.spawn(graphite_udp(handle.clone(), udp, shutdown.clone()));
        }
    }
    if let Some(f) = forward {
        tracker.spawn(f.run(shutdown.clone()));
    }

    // Buffered points go to the store every STORE_FLUSH and at shutdown; expired records are
    // removed every EXPIRY.
    let h = handle.clone();
    tracker.spawn(async move {
        let mut flush = tokio::time::interval(STORE_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval(EXPIRY);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = flush.tick() => {
                    let h = h.clone();
                    let _ = tokio::task::spawn_blocking(move || h.flush_store()).await;
                }
                _ = expiry.tick() => {
                    let h = h.clone();
                    let _ = tokio::task::spawn_blocking(move || h.expire()).await;
                }
            }
        }
        let _ = tokio::task::spawn_blocking(move || h.flush_store()).await;
    });
    Ok((handle, problems))
}

/// statsd: one thread receives and aggregates in place (a known name costs a hash lookup); a
/// task takes the interval out every `interval` and stores the aggregates.
fn start_statsd(
    handle: &MetricsHandle,
    addr: SocketAddr,
    socket: UdpSocket,
    agg: Arc<Mutex<Aggregator>>,
    interval: Duration,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread_agg = agg.clone();
    let spawned = std::thread::Builder::new()
        .name("statsd".into())
        .spawn(move || receive_statsd(&socket, &thread_agg, &thread_stop));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the statsd thread");
        return;
    }
    let h = handle.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            let taken = lock(&agg).take_interval();
            // Percentiles sort every timer's samples: not on the runtime's threads.
            let secs = interval.as_secs_f64();
            let points = tokio::task::spawn_blocking(move || taken.points(now_secs(), secs))
                .await
                .unwrap_or_default();
            h.ingest_and_forward(&points);
            if stopping {
                // The last interval must reach the disk even if the store task flushed first.
                let h = h.clone();
                let _ = tokio::task::spawn_blocking(move || h.flush_store()).await;
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        // Wake the blocking receive so the thread sees the flag.
        let wake = match addr {
            SocketAddr::V4(_) => UdpSocket::bind("127.0.0.1:0"),
            SocketAddr::V6(_) => UdpSocket::bind("[::1]:0"),
        };
        let target = if addr.ip().is_unspecified() {
            SocketAddr::new(
                match addr {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                },
                addr.port(),
            )
        } else {
            addr
        };
        if let Ok(s) = wake {
            let _ = s.send_to(&[], target);
        }
    });
}

/// Datagrams taken per `recvmmsg` call.
const RECV_BATCH: usize = 32;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;

/// The statsd receive loop: up to [`RECV_BATCH`] datagrams per system call (`recvmmsg`, waiting
/// for the first one only), aggregated under one lock. Returns when `stop` is set and the socket
/// is woken.
fn receive_statsd(socket: &UdpSocket, agg: &Mutex<Aggregator>, stop: &AtomicBool) {
    use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    // Zeroed pages cost no memory until a datagram that big arrives.
    let mut bufs = vec![0u8; RECV_BATCH * MAX_DATAGRAM];
    let mut headers = MultiHeaders::<()>::preallocate(RECV_BATCH, None);
    loop {
        let received: nix::Result<Vec<usize>> = {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .chunks_mut(MAX_DATAGRAM)
                .map(|b| [IoSliceMut::new(b)])
                .collect();
            recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            )
            .map(|r| r.map(|m| m.bytes).collect())
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match received {
            Ok(lens) => {
                let mut agg = lock(agg);
                for (i, n) in lens.into_iter().enumerate() {
                    if n > 0 {
                        agg.handle_packet(&bufs[i * MAX_DATAGRAM..i * MAX_DATAGRAM + n]);
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "statsd receive failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

struct GraphiteSockets {
    addr: SocketAddr,
    tcp: Option<tokio::net::TcpListener>,
    udp: Option<tokio::net::UdpSocket>,
}

/// Bind TCP and/or UDP on one port (port 0: a free port for both).
async fn bind_graphite(addr: SocketAddr, tcp: bool, udp: bool) -> std::io::Result<GraphiteSockets> {
    let (tcp, udp) = match (tcp, udp) {
        (true, true) => {
            let (u, t) = crate::host::bind_udp_tcp(addr).await?;
            (Some(t), Some(u))
        }
        (true, false) => (Some(tokio::net::TcpListener::bind(addr).await?), None),
        (false, true) => (None, Some(tokio::net::UdpSocket::bind(addr).await?)),
        (false, false) => (None, None),
    };
    if let Some(u) = &udp {
        set_big_receive_buffer(u);
    }
    let addr = match (&tcp, &udp) {
        (Some(t), _) => t.local_addr()?,
        (None, Some(u)) => u.local_addr()?,
        (None, None) => addr,
    };
    Ok(GraphiteSockets { addr, tcp, udp })
}

/// Parse the complete lines of `data` into points; bad lines are counted.
fn graphite_lines(handle: &MetricsHandle, data: &[u8], out: &mut Vec<Point>) {
    let now = now_secs();
    let counters = &handle.0.graphite;
    for line in data.split(|&b| b == b'\n') {
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match graphite::parse_line(trimmed, now) {
            Ok(p) => out.push(p),
            Err(e) => counters.bad(trimmed, &e),
        }
    }
}

fn ingest_graphite(handle: &MetricsHandle, points: &mut Vec<Point>) {
    handle
        .0
        .graphite
        .lines
        .fetch_add(points.len() as u64, Ordering::Relaxed);
    handle.ingest_and_forward(points);
    points.clear();
}

async fn graphite_udp(
    handle: MetricsHandle,
    socket: tokio::net::UdpSocket,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; 65_536];
    let mut points = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, _)) => {
                    graphite_lines(&handle, &buf[..n], &mut points);
                    ingest_graphite(&handle, &mut points);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "graphite udp receive failed");
                }
            }
        }
    }
}

/// The open graphite connections: when all slots are taken, the one quiet for the longest
/// makes way for the newcomer (idle connections can never lock clients out).
#[derive(Default)]
struct Open {
    next: u64,
    /// id → (last activity, its stop token).
    conns: HashMap<u64, (Arc<AtomicU64>, CancellationToken)>,
}

async fn graphite_tcp(
    handle: MetricsHandle,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let cap = crate::host::connection_cap(MAX_CONNECTIONS);
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let open: Arc<Mutex<Open>> = Arc::default();
    let started = std::time::Instant::now();
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "graphite accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: stop the connection quiet for the longest and take its slot.
                // Out of the map at once, so that the next newcomer picks another one.
                let quietest = {
                    let mut o = lock(&open);
                    let id = o
                        .conns
                        .iter()
                        .min_by_key(|(_, (last, _))| last.load(Ordering::Relaxed))
                        .map(|(id, _)| *id);
                    id.and_then(|id| o.conns.remove(&id)).map(|(_, stop)| stop)
                };
                if let Some(stop) = quietest {
                    stop.cancel();
                }
                handle.0.graphite.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "graphite: all connections busy; the quietest one was closed");
                match tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => continue,
                }
            }
        };
        let handle = handle.clone();
        let stop = shutdown.child_token();
        let last = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
        let id = {
            let mut o = lock(&open);
            o.next += 1;
            let id = o.next;
            o.conns.insert(id, (last.clone(), stop.clone()));
            id
        };
        let open = open.clone();
        connections.spawn(async move {
            graphite_connection(handle, stream, stop, last, started).await;
            lock(&open).conns.remove(&id);
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// One carbon connection: lines until EOF; a line longer than [`MAX_LINE`] is counted and
/// skipped up to its newline.
async fn graphite_connection(
    handle: MetricsHandle,
    mut stream: tokio::net::TcpStream,
    shutdown: CancellationToken,
    last: Arc<AtomicU64>,
    started: std::time::Instant,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut skipping = false;
    let mut points = Vec::new();
    loop {
        let n = tokio::select! {
            () = shutdown.cancelled() => 0,
            r = tokio::time::timeout(GRAPHITE_IDLE, stream.read(&mut chunk)) => match r {
                Ok(r) => r.unwrap_or(0),
                Err(_) => 0,
            },
        };
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == 0 {
            // A last line without its newline still counts.
            if !skipping && !buf.is_empty() {
                graphite_lines(&handle, &buf, &mut points);
                ingest_graphite(&handle, &mut points);
            }
            return;
        }
        let mut data = &chunk[..n];
        if skipping {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    skipping = false;
                    data = &data[i + 1..];
                }
                None => continue,
            }
        }
        buf.extend_from_slice(data);
        if let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') {
            graphite_lines(&handle, &buf[..last_nl], &mut points);
            ingest_graphite(&handle, &mut points);
            buf.drain(..=last_nl);
        }
        if buf.len() > MAX_LINE {
            handle.0.graphite.bad(&buf, &graphite::LineError::Fields(0));
            buf.clear();
            skipping = true;
        }
    }
}

/// Sends every stored point to an external carbon (plaintext TCP), reconnecting with backoff.
/// Lines wait in a bounded queue; when it is full the oldest are dropped and counted.
struct Forwarder {
    address: String,
    capacity: usize,
    queue: Mutex<VecDeque<String>>,
    ready: Notify,
    sent: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Forwarder {
    fn new(address: String, capacity: usize) -> Forwarder {
        Forwarder {
            address,
            capacity,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    fn push(&self, points: &[Point]) {
        let mut q = lock(&self.queue);
        for p in points {
            if q.len() >= self.capacity {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(graphite::format_line(p));
        }
        drop(q);
        self.ready.notify_one();
    }

    fn info(&self) -> ForwardInfo {
        ForwardInfo {
            address: self.address.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued: lock(&self.queue).len(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let connect = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(self.address.as_str()),
            );
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                c = connect => c,
            };
            match stream {
                Ok(Ok(mut stream)) => {
                    tracing::info!(carbon = %self.address, "forwarding metrics to carbon");
                    self.connected.store(true, Ordering::Relaxed);
                    backoff = Duration::from_secs(1);
                    let outcome = self.pump(&mut stream, &shutdown).await;
                    self.connected.store(false, Ordering::Relaxed);
                    match outcome {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(carbon = %self.address, error = %e, "carbon connection lost");
                            *lock(&self.last_error) = Some(e.to_string());
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(carbon = %self.address, error = %e, "cannot reach carbon");
                    *lock(&self.last_error) = Some(e.to_string());
                }
                Err(_) => *lock(&self.last_error) = Some("connection timed out".into()),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Write queued lines until shutdown (`Ok`) or a write fails (`Err`; the batch goes back).
    async fn pump(
        &self,
        stream: &mut tokio::net::TcpStream,
        shutdown: &CancellationToken,
    ) -> std::io::Result<()> {
        loop {
            let batch: Vec<String> = {
                let mut q = lock(&self.queue);
                let n = q.len().min(1000);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        let _ = stream.shutdown().await;
                        return Ok(());
                    }
                    () = self.ready.notified() => continue,
                }
            }
            let bytes = batch.concat();
            // A carbon that stops reading must neither block shutdown nor hold lines forever.
            let written = tokio::select! {
                () = shutdown.cancelled() => Err(std::io::Error::other("stopping")),
                r = tokio::time::timeout(Duration::from_secs(10), stream.write_all(bytes.as_bytes())) => {
                    r.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "carbon stopped reading for 10 s")))
                }
            };
            if let Err(e) = written {
                let mut q = lock(&self.queue);
                for line in batch.into_iter().rev() {
                    if q.len() < self.capacity {
                        q.push_front(line);
                    } else {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return Err(e);
            }
            self.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }
}

/// Numeric leaves of a collector's data as points `collector.<name>.<path>`.
pub fn collector_points(name: &str, data: &serde_json::Value, ts: u64) -> Vec<Point> {
    fn walk(prefix: &str, v: &serde_json::Value, ts: u64, out: &mut Vec<Point>, depth: usize) {
        if depth > 8 || out.len() > 10_000 {
            return;
        }
        match v {
            serde_json::Value::Number(n) => {
                if let Some(value) = n.as_f64().filter(|v| v.is_finite()) {
                    out.push(Point {
                        name: prefix.to_owned(),
                        value,
                        ts,
                    });
                }
            }
            serde_json::Value::Bool(b) => out.push(Point {
                name: prefix.to_owned(),
                value: f64::from(u8::from(*b)),
                ts,
            }),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let child = format!("{prefix}.{}", opsbro_metrics::name::component(k));
                    walk(&child, v, ts, out, depth + 1);
                }
            }
            // Lists (process tables, mounts) have no stable identity per position.
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        &format!("collector.{}", opsbro_metrics::name::component(name)),
        data,
        ts,
        &mut out,
        0,
    );
    out.retain(|p| opsbro_metrics::name::is_valid(&p.name));
    out
}

/// Perfdata `(label, value)` items of a check result as points `check.<pack>.<check>.<label>`.
pub fn perfdata_points<'a>(
    check: &str,
    perfdata: impl IntoIterator<Item = (&'a str, f64)>,
    ts: u64,
) -> Vec<Point> {
    let path: Vec<String> = check
        .split('/')
        .map(opsbro_metrics::name::component)
        .collect();
    let base = format!("check.{}", path.join("."));
    perfdata
        .into_iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(label, value)| Point {
            name: format!("{base}.{}", opsbro_metrics::name::component(label)),
            value,
            ts,
        })
        .filter(|p| opsbro_metrics::name::is_valid(&p.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_and_perfdata_names() {
        let data = serde_json::json!({"cpuall": {"%idle": 97.5, "user": 1}, "ok": true, "mounts": [1, 2], "name": "x"});
        let mut names: Vec<(String, f64)> = collector_points("cpustats", &data, 5)
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            names,
            [
                ("collector.cpustats.cpuall.%idle".to_owned(), 97.5),
                ("collector.cpustats.cpuall.user".to_owned(), 1.0),
                ("collector.cpustats.ok".to_owned(), 1.0),
            ]
        );
        let perf = opsbro_checks::nagios::parse_perfdata("'used space'=5GB;8;9 time=0.2s").0;
        let points = perfdata_points(
            "linux/disk space",
            perf.iter().map(|p| (p.label.as_str(), p.value)),
            7,
        );
        assert_eq!(
            points.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            [
                "check.linux.disk_space.used_space",
                "check.linux.disk_space.time"
            ]
        );
    }
}
