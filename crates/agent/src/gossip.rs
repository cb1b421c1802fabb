//! The gossip driver: owns the UDP socket, feeds the sans-IO core ([`opsbro_gossip::Gossip`])
//! with packets, push-pull frames, commands and ticks, and performs its effects. Every packet
//! goes through the keyring first; refusals are counted and never reach the core.
//!
//! One task owns the core. The API talks to it through [`GossipHandle`] (commands with a reply
//! channel); push-pull connections (handed over by the cluster listener, [`crate::cluster`])
//! and outgoing push-pulls run in their own tasks and hand their frames to the core task.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opsbro_api::gossip::{self as g, Counters, Event, HistoryItem, KeyringOp, Member};
use opsbro_config::Seed;
use opsbro_gossip::codec::{self, MAX_DATAGRAM};
use opsbro_gossip::{Effect, Gossip, GossipConfig, MemberState, NodeRecord, PushPull, UserEvent};
use opsbro_transport::{Key, Keyring, OpenError};
use opsbro_types::{NodeUuid, SubsystemState};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, open, read_frame, write_frame};
use crate::membership::Peer;
use crate::status::Status;

/// Kind byte of a cluster TCP frame carrying a push-pull.
const FRAME_PUSH_PULL: u8 = cluster::FrameKind::PushPull as u8;
/// Largest push-pull part: a state of any size crosses in frames of about this size (the
/// frame limit is 4 MiB; parts stay well under it).
const PUSH_PULL_PART: usize = 1024 * 1024;
/// Most parts in one push-pull (20,000 members take about 5).
const MAX_PUSH_PULL_PARTS: usize = 64;
/// Push-pull connections served at once; more are closed at once and counted.
const MAX_CLUSTER_CONNECTIONS: usize = 64;
/// Time allowed for a whole push-pull exchange.
const PUSH_PULL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sleep of the driver between two timer checks (it wakes earlier when the core's next
/// deadline is sooner, and on every input).
const TICK: Duration = Duration::from_secs(1);
/// Timer step while a leaving node spreads its departure.
const LEAVE_TICK: Duration = Duration::from_millis(50);
/// How long a leaving node keeps gossiping its departure.
const LEAVE_PROPAGATION: Duration = Duration::from_millis(1000);

/// Packet counters, shared with the API.
#[derive(Debug, Default)]
pub struct GossipCounters {
    udp_in: AtomicU64,
    udp_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    rejected_plaintext: AtomicU64,
    rejected_no_key: AtomicU64,
    rejected_unknown_key: AtomicU64,
    rejected_tampered: AtomicU64,
    malformed: AtomicU64,
    oversize: AtomicU64,
    push_pulls: AtomicU64,
    push_pull_errors: AtomicU64,
    overloaded: AtomicU64,
    connections_refused: AtomicU64,
    incarnations_refused: AtomicU64,
    members_refused: AtomicU64,
    replies_capped: AtomicU64,
    /// The keyring, for its replay counters.
    keyring: std::sync::OnceLock<Arc<RwLock<Keyring>>>,
    /// The cluster listener's refusals (first frames of TCP connections), shown with these.
    listener: std::sync::OnceLock<Arc<cluster::ListenerCounters>>,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl GossipCounters {
    fn rejected(&self, e: OpenError) {
        match e {
            OpenError::Plaintext => inc(&self.rejected_plaintext),
            OpenError::NoKey => inc(&self.rejected_no_key),
            OpenError::UnknownKey => inc(&self.rejected_unknown_key),
            OpenError::Tampered => inc(&self.rejected_tampered),
            // Counted by the keyring's replay guard (it sees the KV path too).
            OpenError::Replayed | OpenError::Stale => {}
        }
    }

    /// A snapshot for the API.
    pub fn snapshot(&self) -> Counters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (replayed, stale, _) = self
            .keyring
            .get()
            .map(|k| {
                k.read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .replay_stats()
            })
            .unwrap_or_default();
        let l = |f: fn(&cluster::ListenerCounters) -> &AtomicU64| {
            self.listener.get().map_or(0, |c| g(f(c)))
        };
        Counters {
            udp_in: g(&self.udp_in),
            udp_out: g(&self.udp_out),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            rejected_plaintext: g(&self.rejected_plaintext) + l(|c| &c.rejected_plaintext),
            rejected_no_key: g(&self.rejected_no_key) + l(|c| &c.rejected_no_key),
            rejected_unknown_key: g(&self.rejected_unknown_key) + l(|c| &c.rejected_unknown_key),
            rejected_tampered: g(&self.rejected_tampered) + l(|c| &c.rejected_tampered),
            malformed: g(&self.malformed) + l(|c| &c.malformed),
            oversize: g(&self.oversize),
            push_pulls: g(&self.push_pulls),
            push_pull_errors: g(&self.push_pull_errors) + l(|c| &c.failed),
            overloaded: g(&self.overloaded),
            connections_refused: g(&self.connections_refused) + l(|c| &c.connections_refused),
            rejected_replayed: replayed,
            rejected_stale: stale,
            incarnations_refused: g(&self.incarnations_refused),
            members_refused: g(&self.members_refused),
            replies_capped: g(&self.replies_capped),
        }
    }
}

/// What the API can ask the gossip task.
enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    History(oneshot::Sender<Vec<HistoryItem>>),
    Events(oneshot::Sender<Vec<Event>>),
    Join(SocketAddr, oneshot::Sender<Result<usize, String>>),
    ForceLeave(NodeUuid, oneshot::Sender<bool>),
    AddEvent(String, Vec<u8>, oneshot::Sender<Event>),
    Incarnation(oneshot::Sender<u64>),
    Keyring(
        Option<(KeyringOp, Key)>,
        oneshot::Sender<Result<g::Keyring, String>>,
    ),
    Ping(NodeUuid, oneshot::Sender<Option<u64>>),
    Detect(Duration, oneshot::Sender<Vec<NodeRecord>>),
    SetGroups(Vec<String>),
    SetZone(String),
    SetChecks(Vec<opsbro_gossip::CheckSummary>),
    SetServices(Vec<opsbro_gossip::ServiceRecord>, Option<String>),
}

/// Inputs from the connection tasks.
enum Internal {
    Datagram(SocketAddr, Vec<u8>),
    PushPullRequest(SocketAddr, PushPull, oneshot::Sender<PushPull>),
    /// A part of a push-pull request or answer that is not the last one: merged at once.
    PushPullPart(SocketAddr, PushPull, bool),
    PushPullReply(
        SocketAddr,
        PushPull,
        Option<oneshot::Sender<Result<usize, String>>>,
    ),
    PushPullFailed(
        SocketAddr,
        String,
        Option<oneshot::Sender<Result<usize, String>>>,
    ),
}

/// Why the API's request to the gossip task failed.
#[derive(Debug, thiserror::Error)]
#[error("the gossip subsystem is not running")]
pub struct GossipStopped;

/// Cheap handle for the API.
#[derive(Clone)]
pub struct GossipHandle {
    tx: mpsc::Sender<Command>,
    /// Packet counters.
    pub counters: Arc<GossipCounters>,
    /// Whether traffic is encrypted.
    pub encrypted: bool,
    /// The cluster keyring (the KV store seals its frames with it).
    pub keyring: cluster::SharedKeyring,
}

impl GossipHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, GossipStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| GossipStopped)?;
        rx.await.map_err(|_| GossipStopped)
    }

    /// Every known member, sorted by name.
    pub async fn members(&self) -> Result<Vec<Member>, GossipStopped> {
        self.ask(Command::Members).await
    }

    /// Membership history.
    pub async fn history(&self) -> Result<Vec<HistoryItem>, GossipStopped> {
        self.ask(Command::History).await
    }

    /// Recent user events.
    pub async fn events(&self) -> Result<Vec<Event>, GossipStopped> {
        self.ask(Command::Events).await
    }

    /// Join through `addr`; answers the number of members known afterwards.
    pub async fn join(&self, addr: SocketAddr) -> Result<Result<usize, String>, GossipStopped> {
        self.ask(|tx| Command::Join(addr, tx)).await
    }

    /// Mark another node as left.
    pub async fn force_leave(&self, uuid: NodeUuid) -> Result<bool, GossipStopped> {
        self.ask(|tx| Command::ForceLeave(uuid, tx)).await
    }

    /// Send a user event.
    pub async fn add_event(&self, kind: String, payload: Vec<u8>) -> Result<Event, GossipStopped> {
        self.ask(|tx| Command::AddEvent(kind, payload, tx)).await
    }

    /// Replace this node's groups (static ∪ detected); gossiped when they change.
    pub async fn set_groups(&self, groups: Vec<String>) -> Result<(), GossipStopped> {
        self.tx
            .send(Command::SetGroups(groups))
            .await
            .map_err(|_| GossipStopped)
    }

    /// Move this node to another zone (the caller checked it is in the tree and saved it).
    pub async fn set_zone(&self, zone: String) -> Result<(), GossipStopped> {
        self.tx
            .send(Command::SetZone(zone))
            .await
            .map_err(|_| GossipStopped)
    }

    /// Replace this node's check summary; gossiped when it changes.
    pub async fn set_checks(
        &self,
        checks: Vec<opsbro_gossip::CheckSummary>,
    ) -> Result<(), GossipStopped> {
        self.tx
            .send(Command::SetChecks(checks))
            .await
            .map_err(|_| GossipStopped)
    }

    /// Replace this node's services and its maintenance reason (`None`: not in
    /// maintenance); gossiped when they change.
    pub async fn set_services(
        &self,
        services: Vec<opsbro_gossip::ServiceRecord>,
        maintenance: Option<String>,
    ) -> Result<(), GossipStopped> {
        self.tx
            .send(Command::SetServices(services, maintenance))
            .await
            .map_err(|_| GossipStopped)
    }

    /// Broadcast a detect-ping and collect the nodes that answer within `timeout`.
    pub async fn detect(&self, timeout: Duration) -> Result<Vec<NodeRecord>, GossipStopped> {
        self.ask(|tx| Command::Detect(timeout, tx)).await
    }

    /// Probe a node now; the round-trip time in ms, or None without an answer in time.
    pub async fn ping(&self, uuid: NodeUuid) -> Result<Option<u64>, GossipStopped> {
        self.ask(|tx| Command::Ping(uuid, tx)).await
    }

    /// Our incarnation.
    pub async fn incarnation(&self) -> Result<u64, GossipStopped> {
        self.ask(Command::Incarnation).await
    }

    /// The keyring, after applying `change` here and spreading it to every node.
    pub async fn keyring(
        &self,
        change: Option<(KeyringOp, Key)>,
    ) -> Result<Result<g::Keyring, String>, GossipStopped> {
        self.ask(|tx| Command::Keyring(change, tx)).await
    }
}

/// What the gossip subsystem needs to start.
pub struct GossipSetup {
    /// This node (incarnation already continued from the data dir).
    pub me: NodeRecord,
    /// Protocol settings.
    pub config: GossipConfig,
    /// The cluster keyring (empty: plaintext), shared with the cluster listener and the KV
    /// store.
    pub keyring: cluster::SharedKeyring,
    /// Seeds to join at start.
    pub seeds: Vec<Seed>,
    /// File where the incarnation is persisted.
    pub incarnation_file: PathBuf,
    /// File where keyring changes are persisted.
    pub keyring_file: PathBuf,
    /// Find a cluster on the LAN at start (`--auto-detect`).
    pub auto_detect: bool,
    /// Cluster snapshot to keep up to date for the evaluator.
    pub view: crate::eval::SharedView,
    /// Where member changes are published.
    pub bus: crate::events::EventBus,
    /// Push-pull connections from the cluster listener (first frame opened).
    pub push_pulls: mpsc::Receiver<cluster::Accepted>,
    /// The cluster listener's counters (shown with gossip's).
    pub listener: Arc<cluster::ListenerCounters>,
    /// The live membership, for the KV ring.
    pub membership: tokio::sync::watch::Sender<Arc<Vec<Peer>>>,
    /// Probe round-trip times and suspicions for `/metrics`.
    pub telemetry: crate::telemetry::SharedTelemetry,
}

/// The bound gossip socket (UDP; the cluster listener has TCP on the same port).
pub struct GossipSockets {
    udp: UdpSocket,
    /// The bound address.
    pub local: SocketAddr,
}

/// Bind UDP (gossip) and TCP (the cluster listener) on `bind:port`; with port 0, find a port
/// free for both.
pub async fn bind(bind: IpAddr, port: u16) -> std::io::Result<(GossipSockets, TcpListener)> {
    let mut last_err = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(SocketAddr::new(bind, port)).await?;
        // LAN detection broadcasts detect-pings from this socket.
        udp.set_broadcast(true)?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((GossipSockets { udp, local }, tcp)),
            Err(e) if port == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

/// A monotonic clock that reads like Unix milliseconds (so event ages and history times are
/// meaningful) but never jumps with the wall clock.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    start_unix_ms: u64,
}

impl Clock {
    fn new() -> Self {
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
            .unwrap_or(0);
        Self {
            start: Instant::now(),
            start_unix_ms,
        }
    }

    fn now(&self) -> u64 {
        self.start_unix_ms + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(0)
    }
}

/// Start the gossip task; returns the handle for the API.
pub fn start(
    setup: GossipSetup,
    sockets: GossipSockets,
    status: Status,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> GossipHandle {
    let (tx, rx) = mpsc::channel(256);
    let (itx, irx) = mpsc::channel(1024);
    let counters = Arc::new(GossipCounters::default());
    let keyring = setup.keyring;
    let _ = counters.keyring.set(keyring.clone());
    let _ = counters.listener.set(setup.listener);
    let encrypted = keyring.read().map(|k| k.is_enabled()).unwrap_or(true);
    let handle = GossipHandle {
        tx,
        counters: counters.clone(),
        encrypted,
        keyring: keyring.clone(),
    };
    let clock = Clock::new();
    let seed = u64::from_le_bytes(setup.me.uuid.as_bytes()[..8].try_into().unwrap_or([0; 8]))
        ^ clock.now();
    let core = Gossip::new(setup.config, setup.me, seed, clock.now());
    let udp = Arc::new(sockets.udp);

    tracker.spawn(udp_reader(
        udp.clone(),
        keyring.clone(),
        counters.clone(),
        itx.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(push_pull_server(
        setup.push_pulls,
        keyring.clone(),
        counters.clone(),
        itx.clone(),
        tracker.clone(),
        shutdown.clone(),
    ));
    if !setup.seeds.is_empty() {
        tracker.spawn(join_seeds(setup.seeds, handle.clone(), shutdown.clone()));
    }
    if setup.auto_detect {
        tracker.spawn(auto_detect(handle.clone(), shutdown.clone()));
    }
    let driver = Driver {
        core,
        clock,
        udp,
        keyring,
        counters,
        itx,
        tracker: tracker.clone(),
        incarnation_file: setup.incarnation_file,
        keyring_file: setup.keyring_file,
        rng: opsbro_transport::system_random(),
        pending: Vec::new(),
        pings: std::collections::HashMap::new(),
        detects: std::collections::HashMap::new(),
        port: sockets.local.port(),
        view: setup.view,
        bus: setup.bus,
        telemetry: setup.telemetry,
        membership: setup.membership,
        fingerprint: 0,
    };
    status.set(
        "gossip",
        SubsystemState::Ok,
        Some(format!("udp+tcp {}", sockets.local)),
    );
    tracker.spawn(driver.run(rx, irx, shutdown, status));
    handle
}

struct Driver {
    telemetry: crate::telemetry::SharedTelemetry,
    core: Gossip,
    clock: Clock,
    udp: Arc<UdpSocket>,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    itx: mpsc::Sender<Internal>,
    tracker: TaskTracker,
    incarnation_file: PathBuf,
    keyring_file: PathBuf,
    rng: ring::rand::SystemRandom,
    /// Effects taken out of the core early (while routing a join waiter), performed next.
    pending: Vec<Effect>,
    /// API callers waiting for a ping answer, by sequence number.
    pings: std::collections::HashMap<u32, oneshot::Sender<Option<u64>>>,
    /// Detect requests collecting answers: id → (deadline, answers, caller).
    detects: std::collections::HashMap<u64, Detecting>,
    /// Our gossip port: detect-pings go to this port on every broadcast address.
    port: u16,
    /// Snapshot for the evaluator's gossip functions.
    view: crate::eval::SharedView,
    /// Member changes go out here.
    bus: crate::events::EventBus,
    /// The live membership for the KV store.
    membership: tokio::sync::watch::Sender<Arc<Vec<Peer>>>,
    /// Digest of (uuid, incarnation, state) of every member when views were last published.
    fingerprint: u64,
}

struct Detecting {
    deadline: Instant,
    found: Vec<NodeRecord>,
    reply: oneshot::Sender<Vec<NodeRecord>>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
        shutdown: CancellationToken,
        status: Status,
    ) {
        let mut tick = tokio::time::interval(LEAVE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.refresh_view();
        loop {
            // Wake exactly when the core's next timer is due (at most TICK later), or when a
            // detect request is over.
            let due = self.core.next_deadline().saturating_sub(self.clock.now());
            let mut wake = tokio::time::Instant::now() + Duration::from_millis(due).min(TICK);
            if let Some(d) = self.detects.values().map(|d| d.deadline).min() {
                wake = wake.min(tokio::time::Instant::from_std(d));
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {
                    let now = self.clock.now();
                    self.core.handle_tick(now);
                }
                Some(cmd) = commands.recv() => self.handle_command(cmd),
                Some(input) = internal.recv() => self.handle_internal(input),
            }
            self.finish_detects();
            // An input may have made a timer due now (e.g. news to gossip at once).
            let now = self.clock.now();
            if self.core.next_deadline() <= now {
                self.core.handle_tick(now);
            }
            self.perform().await;
        }
        // Graceful leave: announce it and keep gossiping for a moment so it spreads.
        tracing::info!("leaving the cluster");
        self.core.leave(self.clock.now());
        self.perform().await;
        let end = Instant::now() + LEAVE_PROPAGATION;
        while Instant::now() < end {
            tokio::select! {
                _ = tick.tick() => self.core.handle_tick(self.clock.now()),
                Some(input) = internal.recv() => self.handle_internal(input),
            }
            self.perform().await;
            if self.core.queued_broadcasts() == 0 {
                break;
            }
        }
        status.set("gossip", SubsystemState::Stopped, None);
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = self.clock.now();
        match cmd {
            Command::Members(tx) => {
                let me = self.core.me().uuid;
                let mut list: Vec<Member> =
                    self.core.members().map(|r| member_view(r, me)).collect();
                list.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
                let _ = tx.send(list);
            }
            Command::History(tx) => {
                let list = self
                    .core
                    .history()
                    .map(|h| HistoryItem {
                        time_ms: h.at,
                        uuid: h.uuid,
                        name: h.name.clone(),
                        old: h.old.map(|s| s.as_str().to_owned()),
                        new: h.new.as_str().to_owned(),
                    })
                    .collect();
                let _ = tx.send(list);
            }
            Command::Events(tx) => {
                let _ = tx.send(self.core.recent_events().map(event_view).collect());
            }
            Command::Join(addr, tx) => {
                self.core.join(addr);
                // The join's push-pull carries the waiter so the API learns the outcome.
                let mut waiter = Some(tx);
                let effects = self.core.take_effects();
                for e in effects {
                    match e {
                        Effect::PushPull { to, payload, zone }
                            if to == addr && waiter.is_some() =>
                        {
                            self.spawn_push_pull(to, payload, zone, waiter.take());
                        }
                        other => self.core_effect_later(other),
                    }
                }
            }
            Command::ForceLeave(uuid, tx) => {
                let _ = tx.send(self.core.force_leave(now, uuid));
            }
            Command::AddEvent(kind, payload, tx) => {
                // The core reports its own new event as `Effect::UserEvent` too, which `perform`
                // publishes: publishing here as well showed every event twice on this node.
                let event = self.core.add_event(now, kind, payload, now);
                let _ = tx.send(event_view(&event));
            }
            Command::Incarnation(tx) => {
                let _ = tx.send(self.core.me().incarnation);
            }
            Command::SetGroups(groups) => {
                self.core.set_groups(groups);
                self.refresh_view();
            }
            Command::SetZone(zone) => {
                if let Ok(mut k) = self.keyring.write() {
                    k.set_own_zone(&zone);
                }
                self.core.set_zone(now, zone);
                self.refresh_view();
            }
            Command::SetChecks(checks) => self.core.set_checks(checks),
            Command::SetServices(services, maintenance) => {
                self.core.set_services(services);
                self.core.set_maintenance(maintenance);
                self.refresh_view();
            }
            Command::Detect(timeout, tx) => {
                let (id, bytes) = self.core.detect_ping();
                let sealed = self.seal(&bytes);
                let targets = crate::host::broadcast_addrs();
                if targets.is_empty() {
                    tracing::warn!(
                        "no IPv4 interface with a broadcast address: nothing to detect on"
                    );
                }
                for b in targets {
                    let to = SocketAddr::from((b, self.port));
                    if let Err(e) = self.udp.try_send_to(&sealed, to) {
                        tracing::warn!(%to, error = %e, "cannot send the detect broadcast");
                    } else {
                        inc(&self.counters.udp_out);
                    }
                }
                self.detects.insert(
                    id,
                    Detecting {
                        deadline: Instant::now() + timeout,
                        found: Vec::new(),
                        reply: tx,
                    },
                );
            }
            Command::Ping(uuid, tx) => match self.core.ping(now, uuid) {
                Some(seq) => {
                    self.pings.insert(seq, tx);
                }
                None => {
                    let _ = tx.send(None);
                }
            },
            Command::Keyring(change, tx) => {
                let result = match change {
                    None => Ok(()),
                    Some((op, key)) => self.change_keyring(op, &key).map(|()| {
                        // Spread it: the event is sealed like all gossip, so the key only
                        // travels encrypted, to nodes that already hold a cluster key.
                        let payload = format!("{} {}", op_word(op), key.to_base64()).into_bytes();
                        self.core
                            .add_event(now, KEYRING_EVENT.to_owned(), payload, now);
                    }),
                };
                let _ = tx.send(result.map(|()| self.keyring_view()));
            }
        }
    }

    fn finish_detects(&mut self) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .detects
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(d) = self.detects.remove(&id) {
                let _ = d.reply.send(d.found);
            }
        }
    }

    fn keyring_view(&self) -> g::Keyring {
        let ring = self
            .keyring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let primary = ring.primary().map(Key::id_hex);
        g::Keyring {
            encrypted: ring.is_enabled(),
            keys: ring
                .keys()
                .iter()
                .map(|k| g::KeyInfo {
                    id: k.id_hex(),
                    primary: Some(k.id_hex()) == primary,
                })
                .collect(),
        }
    }

    /// Apply a keyring change here and persist it.
    fn change_keyring(&self, op: KeyringOp, key: &Key) -> Result<(), String> {
        let mut ring = self
            .keyring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !ring.is_enabled() {
            return Err("this cluster is not encrypted: give every agent an `encryption_key` first (keys are never sent in plaintext)".into());
        }
        match op {
            KeyringOp::Install => ring.install(key.clone()),
            KeyringOp::Use => ring
                .use_key(key)
                .map_err(|e| format!("{e}: install it on every node first"))?,
            KeyringOp::Remove => ring.remove(key).map_err(|e| e.to_string())?,
        }
        ring.save(&self.keyring_file).map_err(|e| e.to_string())
    }

    fn core_effect_later(&mut self, e: Effect) {
        self.pending.push(e);
    }

    fn handle_internal(&mut self, input: Internal) {
        let now = self.clock.now();
        match input {
            Internal::Datagram(from, bytes) => {
                if self.core.handle_datagram(now, from, &bytes).is_err() {
                    inc(&self.counters.malformed);
                }
            }
            Internal::PushPullRequest(from, request, reply) => {
                inc(&self.counters.push_pulls);
                let _ = reply.send(self.core.handle_push_pull(now, from, request));
            }
            Internal::PushPullPart(from, part, is_reply) => {
                if is_reply {
                    self.core.handle_push_pull_reply(now, from, part, false);
                } else {
                    self.core.handle_push_pull_part(now, from, part);
                }
            }
            Internal::PushPullReply(from, reply, waiter) => {
                inc(&self.counters.push_pulls);
                self.core.handle_push_pull_reply(now, from, reply, true);
                if let Some(w) = waiter {
                    let _ = w.send(Ok(self
                        .core
                        .members()
                        .filter(|m| m.state.is_live())
                        .count()));
                }
            }
            Internal::PushPullFailed(to, error, waiter) => {
                inc(&self.counters.push_pull_errors);
                tracing::debug!(peer = %to, %error, "push-pull failed");
                if let Some(w) = waiter {
                    let _ = w.send(Err(error));
                }
            }
        }
    }

    fn refresh_view(&self) {
        let peers: Vec<Peer> = self
            .core
            .members()
            .map(|r| Peer {
                uuid: r.uuid,
                name: r.name.clone(),
                addr: r.addr,
                groups: r.groups.clone(),
                state: r.state,
                zone: r.zone.clone(),
                critical: r
                    .checks
                    .iter()
                    .any(|c| c.state == opsbro_checks::CheckState::Critical.to_wire()),
                maintenance: r.maintenance.clone(),
                services: r.services.clone(),
            })
            .collect();
        self.membership.send_if_modified(|old| {
            if **old == peers {
                false
            } else {
                *old = Arc::new(peers);
                true
            }
        });
        let me = self.core.me();
        self.view.set(crate::eval::ClusterView {
            groups: me.groups.clone(),
            members: self
                .core
                .members()
                .map(|r| (r.groups.clone(), r.state.as_str().to_owned()))
                .collect(),
            event_types: self.core.recent_events().map(|e| e.kind.clone()).collect(),
            zone: me.zone.clone(),
            zones: self
                .core
                .members()
                .map(|r| (r.uuid.to_string(), r.zone.clone()))
                .collect(),
        });
    }

    async fn perform(&mut self) {
        let mut effects = std::mem::take(&mut self.pending);
        self.core.drain_effects_into(&mut effects);
        let stats = self.core.stats();
        let c = &self.counters;
        c.incarnations_refused
            .store(stats.incarnations_refused, Ordering::Relaxed);
        c.members_refused
            .store(stats.members_refused, Ordering::Relaxed);
        c.replies_capped
            .store(stats.replies_capped, Ordering::Relaxed);
        // Any record change (a member's groups, through its incarnation) or event refreshes the
        // snapshots; the fingerprint is cheap, the snapshots are not.
        let fingerprint = self.core.members().fold(0u64, |acc, r| {
            let mut h = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&(r.uuid, r.incarnation, r.state as u8), &mut h);
            acc ^ std::hash::Hasher::finish(&h)
        });
        if fingerprint != self.fingerprint
            || effects
                .iter()
                .any(|e| matches!(e, Effect::UserEvent(_) | Effect::IncarnationChanged(_)))
        {
            self.fingerprint = fingerprint;
            self.refresh_view();
        }
        for e in effects {
            match e {
                Effect::Send { to, bytes, zone } => {
                    tracing::trace!(peer = %to, len = bytes.len(), "gossip send");
                    let sealed = self.seal_for(&zone, &bytes);
                    match self.udp.send_to(&sealed, to).await {
                        Ok(n) => {
                            inc(&self.counters.udp_out);
                            self.counters
                                .bytes_out
                                .fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => tracing::debug!(peer = %to, error = %e, "gossip send failed"),
                    }
                }
                Effect::PushPull { to, payload, zone } => {
                    self.spawn_push_pull(to, payload, zone, None);
                }
                Effect::MemberChanged(c) => {
                    match c.old {
                        None => {
                            tracing::info!(node = %c.name, uuid = %c.uuid, state = %c.new, "member discovered")
                        }
                        Some(old) => {
                            tracing::info!(node = %c.name, uuid = %c.uuid, %old, new = %c.new, "member state changed")
                        }
                    }
                    if c.new == MemberState::Suspect {
                        self.telemetry
                            .suspicions
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.publish_member_change(&c);
                }
                Effect::UserEvent(e) if e.kind == KEYRING_EVENT => {
                    if e.origin != self.core.me().uuid {
                        self.apply_remote_keyring(&e.payload);
                    }
                }
                Effect::UserEvent(e) => {
                    if e.origin == self.core.me().uuid {
                        tracing::info!(event = %e.kind, "user event sent");
                    } else {
                        tracing::info!(event = %e.kind, origin = %e.origin, "user event received");
                    }
                    self.publish_user_event(&event_view(&e));
                }
                Effect::ProbeAcked { rtt_ms } => {
                    #[allow(clippy::cast_precision_loss)]
                    self.telemetry.probe_rtt.observe(rtt_ms as f64 / 1000.0);
                }
                Effect::Detected { id, record } => {
                    if let Some(d) = self.detects.get_mut(&id)
                        && !d.found.iter().any(|r| r.uuid == record.uuid)
                    {
                        d.found.push(record);
                    }
                }
                Effect::PingResult { seq, rtt_ms } => {
                    if let Some(tx) = self.pings.remove(&seq) {
                        let _ = tx.send(rtt_ms);
                    }
                }
                Effect::IncarnationChanged(n) => {
                    if let Err(e) = crate::datadir::write_atomic(
                        &self.incarnation_file,
                        format!("{n}\n").as_bytes(),
                    ) {
                        tracing::warn!(error = %e, "cannot persist the incarnation");
                    }
                }
            }
        }
    }

    /// Tell the event bus about every member change; handlers hear about joins, deaths,
    /// departures and returns (a suspicion, or a refuted one, is not news for them).
    fn publish_member_change(&self, c: &opsbro_gossip::MemberChange) {
        use opsbro_gossip::MemberState as S;
        if c.uuid == self.core.me().uuid {
            return;
        }
        let news = !(c.new == S::Suspect || (c.old == Some(S::Suspect) && c.new == S::Alive));
        let addr = self
            .core
            .members()
            .find(|r| r.uuid == c.uuid)
            .map(|r| r.addr.to_string())
            .unwrap_or_default();
        self.bus.notify(
            opsbro_checks::notify::Notification::Node {
                name: c.name.clone(),
                uuid: c.uuid.to_string(),
                addr,
                state: c.new.as_str().to_owned(),
                old_state: c.old.map_or("new", |o| o.as_str()).to_owned(),
            },
            news,
        );
    }

    fn publish_user_event(&self, e: &Event) {
        self.bus
            .publish(opsbro_api::events::Payload::Event(e.clone()), None);
    }

    fn seal(&self, bytes: &[u8]) -> Vec<u8> {
        match self.keyring.read() {
            Ok(k) => k.seal(&self.rng, bytes, crate::host::unix_ms()),
            Err(p) => p
                .into_inner()
                .seal(&self.rng, bytes, crate::host::unix_ms()),
        }
    }

    /// Seal a datagram for a node of `zone` (that zone's key when held, see [`Keyring`]).
    fn seal_for(&self, zone: &str, bytes: &[u8]) -> Vec<u8> {
        let now = crate::host::unix_ms();
        match self.keyring.read() {
            Ok(k) => k.seal_for(zone, &self.rng, bytes, now),
            Err(p) => p.into_inner().seal_for(zone, &self.rng, bytes, now),
        }
    }

    fn spawn_push_pull(
        &self,
        to: SocketAddr,
        payload: PushPull,
        zone: String,
        waiter: Option<oneshot::Sender<Result<usize, String>>>,
    ) {
        let keyring = self.keyring.clone();
        let itx = self.itx.clone();
        self.tracker.spawn(async move {
            let result = tokio::time::timeout(
                PUSH_PULL_TIMEOUT,
                push_pull(to, payload, &zone, &keyring, &itx),
            )
            .await;
            let msg = match result {
                Ok(Ok(reply)) => Internal::PushPullReply(to, reply, waiter),
                Ok(Err(e)) => Internal::PushPullFailed(to, e, waiter),
                Err(_) => Internal::PushPullFailed(
                    to,
                    format!("no answer from {to} within {PUSH_PULL_TIMEOUT:?}"),
                    waiter,
                ),
            };
            let _ = itx.send(msg).await;
        });
    }
}

/// Internal event carrying a keyring change (`install|use|remove <base64 key>`); never listed
/// by the API.
pub const KEYRING_EVENT: &str = "_keyring";

fn op_word(op: KeyringOp) -> &'static str {
    match op {
        KeyringOp::Install => "install",
        KeyringOp::Use => "use",
        KeyringOp::Remove => "remove",
    }
}

impl Driver {
    fn apply_remote_keyring(&self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let (op, key) = match text.split_once(' ') {
            Some(("install", k)) => (KeyringOp::Install, k),
            Some(("use", k)) => (KeyringOp::Use, k),
            Some(("remove", k)) => (KeyringOp::Remove, k),
            _ => {
                tracing::warn!("ignoring a malformed keyring change");
                return;
            }
        };
        let Ok(key) = Key::from_base64(key) else {
            tracing::warn!("ignoring a keyring change with a bad key");
            return;
        };
        match self.change_keyring(op, &key) {
            Ok(()) => tracing::info!(?op, key = %key.id_hex(), "keyring changed by the cluster"),
            Err(e) => {
                tracing::warn!(?op, key = %key.id_hex(), error = %e, "cluster keyring change not applied")
            }
        }
    }
}

/// The API shape of a member.
pub fn member_view(r: &NodeRecord, me: NodeUuid) -> Member {
    Member {
        uuid: r.uuid,
        name: r.name.clone(),
        display_name: r.display_name.clone(),
        addr: r.addr,
        zone: r.zone.clone(),
        groups: r.groups.clone(),
        is_proxy: r.is_proxy,
        incarnation: r.incarnation,
        state: r.state.as_str().to_owned(),
        version: r.version.clone(),
        is_self: r.uuid == me,
        checks: r
            .checks
            .iter()
            .map(|c| opsbro_api::gossip::MemberCheck {
                name: c.name.clone(),
                state: opsbro_checks::CheckState::from_wire(c.state)
                    .as_str()
                    .to_owned(),
            })
            .collect(),
        maintenance: r.maintenance.clone(),
        services: r
            .services
            .iter()
            .map(|s| opsbro_api::gossip::MemberService {
                name: s.name.clone(),
                port: s.port,
                state: crate::membership::health_word(opsbro_checks::CheckState::from_wire(
                    s.state,
                ))
                .to_owned(),
                maintenance: s.maintenance.clone(),
            })
            .collect(),
    }
}

fn event_view(e: &UserEvent) -> Event {
    Event {
        id: format!("{:016x}", e.id),
        kind: e.kind.clone(),
        payload: String::from_utf8_lossy(&e.payload).into_owned(),
        origin: e.origin,
        created_ms: e.created_ms,
    }
}

async fn udp_reader(
    udp: Arc<UdpSocket>,
    keyring: Arc<RwLock<Keyring>>,
    counters: Arc<GossipCounters>,
    itx: mpsc::Sender<Internal>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = udp.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip receive failed");
                    continue;
                }
            },
        };
        inc(&counters.udp_in);
        counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if n > MAX_DATAGRAM + opsbro_transport::OVERHEAD {
            inc(&counters.oversize);
            continue;
        }
        let opened = match keyring.read() {
            Ok(k) => k.open(&buf[..n], crate::host::unix_ms()),
            Err(p) => p.into_inner().open(&buf[..n], crate::host::unix_ms()),
        };
        match opened {
            Ok(plain) => {
                // A full queue means the core is overloaded: dropping is what UDP would do.
                if itx.try_send(Internal::Datagram(from, plain)).is_err() {
                    inc(&counters.overloaded);
                }
            }
            Err(e) => {
                counters.rejected(e);
                tracing::debug!(peer = %from, error = %e, "gossip packet refused");
            }
        }
    }
}

/// Serve the push-pull connections the cluster listener hands over, at most
/// [`MAX_CLUSTER_CONNECTIONS`] at once, each within [`PUSH_PULL_TIMEOUT`].
async fn push_pull_server(
    mut connections: mpsc::Receiver<cluster::Accepted>,
    keyring: cluster::SharedKeyring,
    counters: Arc<GossipCounters>,
    itx: mpsc::Sender<Internal>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    // Bounded: a peer that opens connections and never finishes cannot exhaust the agent.
    let slots = Arc::new(tokio::sync::Semaphore::new(crate::host::connection_cap(
        MAX_CLUSTER_CONNECTIONS,
    )));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            c = connections.recv() => match c { Some(c) => c, None => return },
        };
        let peer = accepted.peer;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            inc(&counters.connections_refused);
            tracing::debug!(%peer, "too many push-pull connections; refused");
            continue;
        };
        let keyring = keyring.clone();
        let counters = counters.clone();
        let itx = itx.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let served = tokio::time::timeout(
                PUSH_PULL_TIMEOUT,
                serve_push_pull(accepted, &keyring, &counters, &itx),
            )
            .await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    inc(&counters.push_pull_errors);
                    tracing::debug!(%peer, error = %e, "push-pull refused");
                }
                Err(_) => inc(&counters.push_pull_errors),
            }
        });
    }
}

/// One push-pull exchange: the request comes in parts (the first already read by the
/// listener); every part but the last is merged as it arrives; the answer goes back in parts.
async fn serve_push_pull(
    accepted: cluster::Accepted,
    keyring: &RwLock<Keyring>,
    counters: &GossipCounters,
    itx: &mpsc::Sender<Internal>,
) -> Result<(), String> {
    let cluster::Accepted {
        mut stream,
        peer,
        first,
    } = accepted;
    let mut plain = first;
    let mut parts = 0;
    let request = loop {
        parts += 1;
        let (part, more) = decode_part(&plain).inspect_err(|_| inc(&counters.malformed))?;
        if !more {
            break part;
        }
        if parts >= MAX_PUSH_PULL_PARTS {
            inc(&counters.malformed);
            return Err(format!(
                "a push-pull of more than {MAX_PUSH_PULL_PARTS} parts"
            ));
        }
        itx.send(Internal::PushPullPart(peer, part, false))
            .await
            .map_err(|_| "gossip stopped")?;
        let frame = read_frame(&mut stream).await?;
        plain = open(keyring, &frame).map_err(|e| {
            counters.rejected(e);
            e.to_string()
        })?;
    };
    let asker_zone = request
        .members
        .first()
        .map(|m| m.zone.clone())
        .unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    itx.send(Internal::PushPullRequest(peer, request, tx))
        .await
        .map_err(|_| "gossip stopped")?;
    let reply = rx.await.map_err(|_| "gossip stopped")?;
    // Sealed for the asker's zone (its own record comes first): a node of a sub-zone does not
    // hold the keys of the zones above it.
    write_parts(&mut stream, keyring, reply, &asker_zone).await
}

/// `[FRAME_PUSH_PULL][more][push-pull]` → the part, and whether more parts follow.
fn decode_part(plain: &[u8]) -> Result<(PushPull, bool), String> {
    match plain {
        [FRAME_PUSH_PULL, more @ (0 | 1), body @ ..] => codec::decode_push_pull(body)
            .map(|p| (p, *more == 1))
            .map_err(|e| e.to_string()),
        [kind, ..] => Err(format!("unexpected frame kind {kind}")),
        [] => Err("empty frame".into()),
    }
}

/// Send a push-pull state in parts of bounded size.
async fn write_parts(
    stream: &mut TcpStream,
    keyring: &RwLock<Keyring>,
    state: PushPull,
    zone: &str,
) -> Result<(), String> {
    let parts = state.split(PUSH_PULL_PART);
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let mut plain = vec![FRAME_PUSH_PULL, u8::from(i + 1 < n)];
        plain.extend_from_slice(&codec::encode_push_pull(&part));
        write_frame(stream, &cluster::seal_for(keyring, zone, &plain)).await?;
    }
    Ok(())
}

/// Exchange states with `to`; every part of the answer but the last goes to the gossip task
/// as it arrives, the last is returned.
async fn push_pull(
    to: SocketAddr,
    payload: PushPull,
    zone: &str,
    keyring: &RwLock<Keyring>,
    itx: &mpsc::Sender<Internal>,
) -> Result<PushPull, String> {
    let mut stream = TcpStream::connect(to)
        .await
        .map_err(|e| format!("cannot connect to {to}: {e}"))?;
    write_parts(&mut stream, keyring, payload, zone).await?;
    for _ in 0..MAX_PUSH_PULL_PARTS {
        let frame = read_frame(&mut stream).await?;
        let plain = open(keyring, &frame).map_err(|e| format!("answer from {to} refused: {e}"))?;
        let (part, more) = decode_part(&plain).map_err(|e| format!("bad answer from {to}: {e}"))?;
        if !more {
            return Ok(part);
        }
        itx.send(Internal::PushPullPart(to, part, true))
            .await
            .map_err(|_| "gossip stopped")?;
    }
    Err(format!(
        "{to} answered in more than {MAX_PUSH_PULL_PARTS} parts"
    ))
}

/// Join the seeds at start, retrying with backoff (1 s doubling to 30 s) until one answers; then
/// keep watching: whenever this node finds itself alone (every other member dead or gone, e.g.
/// after a long partition or a restart of the whole cluster), try the seeds again.
async fn join_seeds(seeds: Vec<Seed>, handle: GossipHandle, shutdown: CancellationToken) {
    const WATCH: Duration = Duration::from_secs(30);
    let mut backoff = Duration::from_secs(1);
    loop {
        let joined = try_seeds(&seeds, &handle).await;
        let wait = if joined {
            backoff = Duration::from_secs(1);
            WATCH
        } else {
            tracing::info!(retry_in = ?backoff, "no seed answered; retrying");
            let b = backoff;
            backoff = (backoff * 2).min(WATCH);
            b
        };
        // Sleep, then sleep on while we are not alone.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let Ok(members) = handle.members().await else {
                return;
            };
            let alone = !members.iter().any(|m| !m.is_self && m.state == "alive");
            if alone || !joined {
                break;
            }
        }
    }
}

/// `--auto-detect`: broadcast detect-pings until a node answers, then join it (a proxy node if
/// one answered, else the first other node). Stops once this node has company, whether found
/// here, through a seed, or because another node joined it.
async fn auto_detect(handle: GossipHandle, shutdown: CancellationToken) {
    const LISTEN: Duration = Duration::from_secs(3);
    const PAUSE: Duration = Duration::from_secs(2);
    loop {
        let Ok(members) = handle.members().await else {
            return;
        };
        if members.iter().any(|m| !m.is_self && m.state == "alive") {
            tracing::info!("auto-detect: part of a cluster");
            return;
        }
        let found = tokio::select! {
            () = shutdown.cancelled() => return,
            r = handle.detect(LISTEN) => match r {
                Ok(found) => found,
                Err(_) => return,
            },
        };
        if let Some(target) = opsbro_gossip::choose_join_target(&found) {
            match handle.join(target.addr).await {
                Ok(Ok(n)) => {
                    tracing::info!(node = %target.name, members = n, "auto-detect: joined");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %target.name, error = %e, "auto-detect: join failed")
                }
                Err(_) => return,
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PAUSE) => {}
        }
    }
}

/// Try each seed once; true as soon as one join succeeds.
async fn try_seeds(seeds: &[Seed], handle: &GossipHandle) -> bool {
    for seed in seeds {
        let addrs = match tokio::net::lookup_host((seed.host.as_str(), seed.port)).await {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(%seed, error = %e, "cannot resolve seed");
                continue;
            }
        };
        let Some(addr) = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
        else {
            continue;
        };
        match handle.join(addr).await {
            Ok(Ok(n)) => {
                tracing::info!(%seed, members = n, "joined the cluster");
                return true;
            }
            Ok(Err(e)) => tracing::warn!(%seed, error = %e, "seed did not answer"),
            Err(_) => return false,
        }
    }
    false
}

/// The state a node name or uuid designates, for `ping` and `leave NODE`.
pub fn find_member<'a>(members: &'a [Member], node: &str) -> Option<&'a Member> {
    members
        .iter()
        .find(|m| m.uuid.to_string() == node || m.name == node)
        .or_else(|| members.iter().find(|m| m.display_name == node))
}

/// Counts by state for `agent info`.
pub fn count_by_state(members: &[Member]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for s in [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
    ] {
        out.insert(s.as_str().to_owned(), 0);
    }
    for m in members {
        *out.entry(m.state.clone()).or_insert(0) += 1;
    }
    out
}
