//! Locks and leader elections on Raft (`opsbro lock`, `opsbro raft state`, `election:` objects).
//!
//! The voters are the live members of group `raft` in this node's zone, or, when none is, the
//! first 3 (5 from five members on) live members of the zone by uuid: every node computes the
//! same list from gossip. The smallest of them starts the group alone once gossip has been
//! quiet for a moment; its leader then adds the others one at a time, and removes voters that
//! gossip declares dead or that are no longer wanted. Nodes that are not voters send their
//! requests to a voter (the leader when known).
//!
//! One task drives the IO-free [`opsbro_raft::Node`]: it ticks it, feeds it the messages of
//! its peers and the proposals of the API, writes what it must persist in the `raft` tree of
//! the agent's sled database (flushed before the messages leave), sends the messages over the
//! sealed cluster transport (one connection per peer, frames of kind [`KIND_MESSAGE`] carrying
//! the group's id: two groups started apart never mix their logs; when they meet, the nodes of
//! the one with the larger id forget it and join the other) and
//! answers the proposals once their entry is applied.
//!
//! A lock is held by a session: `opsbro lock NAME -- CMD` holds one while the command runs
//! ([`RaftHandle::hold`]): it renews it every third of its TTL, and gives up (the command is
//! stopped) when a renewal is refused or not confirmed in time, or when the leader released it
//! because gossip declared its node dead or gone.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use opsbro_api::raft::{Granted, HoldLine, LockInfo, RaftEvent, RaftState};
use opsbro_gossip::MemberState;
use opsbro_raft::{Command, Holder, Node, NodeConfig, Outcome, Persist};
use opsbro_store::Store;
use opsbro_types::NodeUuid;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, Accepted, SharedKeyring};
use crate::membership::{Membership, Peer};

pub use opsbro_raft::{KIND_FORWARD, KIND_FORWARD_REPLY, KIND_MESSAGE};

/// How often the driver ticks the node (its Raft tick is 50 ms: elections after 0.5-1 s).
const TICK: Duration = Duration::from_millis(50);
/// How often the leader compares the voters with the ones gossip wants.
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(500);
/// The smallest wanted voter starts the group once the wanted list has not changed, and no
/// Raft message arrived, for this long.
const BOOTSTRAP_QUIET: Duration = Duration::from_secs(3);
/// A voter gossip declares dead (or no longer wants) is removed once that has lasted this long.
const VOTER_GRACE: Duration = Duration::from_secs(10);
/// How long a request waits for its entry to be applied.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued for one peer (more are dropped: Raft sends again).
const PEER_QUEUE: usize = 512;
/// A holder stops believing it holds the lock this share of the TTL after the renewal it sent
/// last was confirmed (the leader expires it a full TTL after applying it).
const SAFETY_SHARE: f64 = 0.8;
/// Default TTL of a lock.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// The Raft id of a node.
pub fn raft_id(uuid: NodeUuid) -> u64 {
    opsbro_raft::id_of(&uuid.to_string())
}

/// The voters gossip wants in `zone`: live members of group `raft`, or the first 3 (5 from five
/// live members on) by uuid. Sorted by uuid.
pub fn wanted_voters(members: &[Peer], zone: &str) -> Vec<Peer> {
    let mut live: Vec<&Peer> = members
        .iter()
        .filter(|p| p.zone == zone && matches!(p.state, MemberState::Alive | MemberState::Suspect))
        .collect();
    live.sort_by_key(|p| p.uuid.to_string());
    let tagged: Vec<Peer> = live
        .iter()
        .filter(|p| p.groups.iter().any(|g| g == "raft"))
        .map(|p| (*p).clone())
        .collect();
    if !tagged.is_empty() {
        return tagged;
    }
    let n = if live.len() >= 5 { 5 } else { 3 };
    live.into_iter().take(n).cloned().collect()
}

/// Why a request was not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    /// No leader, or no majority to commit within the time.
    #[error(
        "no Raft majority answered within {0} s (a leader is elected by a majority of the voters: see `opsbro raft state`)"
    )]
    NoQuorum(u64),
    /// The request could not be sent to a voter.
    #[error("no voter could be reached: {0}")]
    Unreachable(String),
    /// The agent is stopping.
    #[error("the Raft driver is stopped")]
    Stopped,
}

enum Input {
    Submit {
        command: Command,
        reply: oneshot::Sender<Result<Outcome, SubmitError>>,
    },
    Message(Vec<u8>),
}

/// Counters of the driver.
#[derive(Debug, Default)]
struct Counters {
    failed_proposals: std::sync::atomic::AtomicU64,
    bad_messages: std::sync::atomic::AtomicU64,
}

struct Inner {
    tx: mpsc::Sender<Input>,
    view: RwLock<RaftState>,
    /// Locks released (lock, token), for the holders that wait on them.
    released: broadcast::Sender<(String, u64)>,
    /// Bumped at each change of the view.
    changed: watch::Sender<u64>,
    me: NodeUuid,
    counters: Counters,
    tracker: TaskTracker,
}

/// The Raft group, for the API, the CLI's locks and the elections.
#[derive(Clone)]
pub struct RaftHandle(Arc<Inner>);

/// What the driver needs.
pub struct RaftSetup {
    /// This node.
    pub me: NodeUuid,
    /// The `raft` tree of the agent's sled database.
    pub store: opsbro_store::SledStore,
    /// Seals frames.
    pub keyring: SharedKeyring,
    /// The members (voters, their addresses, who died).
    pub membership: Membership,
    /// Connections the cluster listener routes here (first frame [`KIND_MESSAGE`] or
    /// [`KIND_FORWARD`]).
    pub connections: mpsc::Receiver<Accepted>,
    /// Events (`raft` channel).
    pub bus: crate::events::EventBus,
    /// This node's zone.
    pub zone: watch::Receiver<String>,
}

impl RaftHandle {
    /// Start the driver and the connection handlers.
    pub fn start(
        setup: RaftSetup,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> RaftHandle {
        let (tx, rx) = mpsc::channel(1024);
        let handle = RaftHandle(Arc::new(Inner {
            tx,
            view: RwLock::new(RaftState {
                id: raft_id(setup.me),
                role: "observer".into(),
                ..RaftState::default()
            }),
            released: broadcast::channel(256).0,
            changed: watch::channel(0).0,
            me: setup.me,
            counters: Counters::default(),
            tracker: tracker.clone(),
        }));
        let RaftSetup {
            me,
            store,
            keyring,
            membership,
            connections,
            bus,
            zone,
        } = setup;
        tracker.spawn(accept(
            connections,
            handle.clone(),
            keyring.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
        let driver = Driver {
            me,
            id: raft_id(me),
            store,
            keyring,
            membership,
            bus,
            zone,
            handle: handle.clone(),
            peers: HashMap::new(),
            waiting: HashMap::new(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            started: Instant::now(),
            heard: false,
            wanted_since: (Vec::new(), Instant::now()),
            last_leader: 0,
            unwanted_since: HashMap::new(),
            group: None,
        };
        tracker.spawn(driver.run(rx));
        handle
    }

    /// This node's view.
    pub fn state(&self) -> RaftState {
        self.0
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes of the view (a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }

    /// The lock `name` as applied here.
    pub fn lock(&self, name: &str) -> Option<LockInfo> {
        self.state().locks.into_iter().find(|l| l.name == name)
    }

    /// This node's uuid.
    pub fn me(&self) -> NodeUuid {
        self.0.me
    }

    /// Propose `command` (through a voter when this node is not one) and wait for its outcome.
    pub async fn submit(&self, command: Command) -> Result<Outcome, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.0
            .tx
            .send(Input::Submit { command, reply })
            .await
            .map_err(|_| SubmitError::Stopped)?;
        let result = match tokio::time::timeout(SUBMIT_TIMEOUT + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SubmitError::Stopped),
            Err(_) => Err(SubmitError::NoQuorum(SUBMIT_TIMEOUT.as_secs())),
        };
        if result.is_err() {
            self.0
                .counters
                .failed_proposals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Take (or renew, for the same session) lock `name` once.
    pub async fn acquire(
        &self,
        name: &str,
        session: &str,
        ttl: Duration,
    ) -> Result<Outcome, SubmitError> {
        self.submit(Command::Acquire {
            lock: name.to_owned(),
            holder: Holder {
                node: self.0.me.to_string(),
                session: session.to_owned(),
            },
            ttl_ms: ttl.as_millis() as u64,
            request: request_id(),
        })
        .await
    }

    /// Release lock `name` if `token` holds it.
    pub async fn release(&self, name: &str, token: u64) -> Result<Outcome, SubmitError> {
        self.submit(Command::Release {
            lock: name.to_owned(),
            token,
            request: request_id(),
        })
        .await
    }

    /// Hold lock `name` for a new session: wait up to `wait` for it, then keep it (renewing)
    /// until the receiver of the returned lines is dropped (then release it) or it is lost.
    pub fn hold(&self, name: String, ttl: Duration, wait: Duration) -> mpsc::Receiver<HoldLine> {
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        self.0
            .tracker
            .spawn(async move { me.hold_task(name, ttl, wait, tx).await });
        rx
    }

    async fn hold_task(
        &self,
        name: String,
        ttl: Duration,
        wait: Duration,
        tx: mpsc::Sender<HoldLine>,
    ) {
        let session = format!("{:016x}", request_id());
        let mut released = self.0.released.subscribe();
        let give_up = Instant::now() + wait;
        let mut last_holder: Option<(String, u64)> = None;
        // Take it.
        let token = loop {
            let sent = Instant::now();
            let outcome = self.acquire(&name, &session, ttl).await;
            match outcome {
                Ok(Outcome::Granted { token }) if sent.elapsed() < ttl.mul_f64(SAFETY_SHARE) => {
                    break token;
                }
                Ok(Outcome::Granted { token }) => {
                    // Learned too late to be sure no one else holds it by now: let it go.
                    let _ = self.release(&name, token).await;
                }
                Ok(Outcome::Held { holder, token }) => {
                    let key = (holder.session.clone(), token);
                    if last_holder.as_ref() != Some(&key) {
                        last_holder = Some(key);
                        let info = self.lock_info(&name, &holder, token, 0);
                        if tx.send(HoldLine::Waiting { holder: info }).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if Instant::now() >= give_up {
                        let _ = tx
                            .send(HoldLine::Failed {
                                reason: e.to_string(),
                            })
                            .await;
                        return;
                    }
                }
            }
            if Instant::now() >= give_up {
                let reason = match &last_holder {
                    Some(_) => format!(
                        "`{name}` is held by another session (waited {} s)",
                        wait.as_secs()
                    ),
                    None => format!("`{name}` could not be taken within {} s", wait.as_secs()),
                };
                let _ = tx.send(HoldLine::Failed { reason }).await;
                return;
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        };
        let granted = Granted {
            name: name.clone(),
            token,
            session: session.clone(),
            ttl_ms: ttl.as_millis() as u64,
        };
        // The grant was confirmed within the safety share of the TTL from its request.
        let mut deadline = Instant::now() + ttl.mul_f64(SAFETY_SHARE) - Duration::from_millis(0);
        if tx.send(HoldLine::Acquired(granted)).await.is_err() {
            let _ = self.release(&name, token).await;
            return;
        }
        let every = ttl / 3;
        let lost = |reason: String| HoldLine::Lost { reason };
        loop {
            tokio::select! {
                () = tx.closed() => {
                    // The client is done (or gone): release.
                    let _ = self.release(&name, token).await;
                    return;
                }
                r = released.recv() => {
                    if let Ok((lock, t)) = r && lock == name && t == token {
                        let _ = tx.send(lost(format!(
                            "`{name}` was released by the leader (expired, or gossip declared this node dead or gone)"
                        ))).await;
                        return;
                    }
                    continue;
                }
                () = tokio::time::sleep(every) => {}
            }
            let sent = Instant::now();
            let renew = tokio::time::timeout(
                deadline.saturating_duration_since(sent),
                self.submit(Command::Renew {
                    lock: name.clone(),
                    token,
                    request: request_id(),
                }),
            )
            .await;
            match renew {
                Ok(Ok(Outcome::Renewed)) => deadline = sent + ttl.mul_f64(SAFETY_SHARE),
                Ok(Ok(_)) => {
                    let _ = tx
                        .send(lost(format!(
                            "`{name}` is no longer held by this session (expired)"
                        )))
                        .await;
                    return;
                }
                Ok(Err(e)) if Instant::now() >= deadline => {
                    let _ = tx
                        .send(lost(format!("`{name}` could not be renewed in time: {e}")))
                        .await;
                    return;
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    let _ = tx
                        .send(lost(format!(
                            "`{name}` could not be renewed within its TTL: no Raft majority answered"
                        )))
                        .await;
                    return;
                }
            }
            if Instant::now() >= deadline {
                let _ = tx
                    .send(lost(format!(
                        "`{name}` could not be renewed within its TTL"
                    )))
                    .await;
                return;
            }
        }
    }

    fn lock_info(&self, name: &str, holder: &Holder, token: u64, ttl_ms: u64) -> LockInfo {
        let node = self
            .state()
            .locks
            .iter()
            .find(|l| l.node_uuid == holder.node)
            .map_or_else(|| holder.node.clone(), |l| l.node.clone());
        LockInfo {
            name: name.to_owned(),
            node,
            node_uuid: holder.node.clone(),
            session: holder.session.clone(),
            token,
            ttl_ms,
        }
    }
}

/// A message frame's body: `[group id: u64 BE][protobuf message]`.
fn split_group(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (id, msg) = bytes.split_at_checked(8)?;
    Some((u64::from_be_bytes(id.try_into().ok()?), msg))
}

/// A random request id.
pub fn request_id() -> u64 {
    rand::random::<u64>() | 1
}

/// Connections routed to Raft: peer message streams, and forwarded requests.
async fn accept(
    mut connections: mpsc::Receiver<Accepted>,
    handle: RaftHandle,
    keyring: SharedKeyring,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            c = connections.recv() => match c { Some(c) => c, None => return },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (handle, keyring, shutdown) = (handle.clone(), keyring.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = serve_connection(conn, handle, keyring) => {}
            }
        });
    }
}

async fn serve_connection(conn: Accepted, handle: RaftHandle, keyring: SharedKeyring) {
    let Accepted {
        mut stream, first, ..
    } = conn;
    match first.split_first() {
        Some((&KIND_MESSAGE, msg)) => {
            if handle
                .0
                .tx
                .send(Input::Message(msg.to_vec()))
                .await
                .is_err()
            {
                return;
            }
            // Every later frame is a message too.
            loop {
                let Ok(frame) = cluster::read_frame(&mut stream).await else {
                    return;
                };
                match cluster::open(&keyring, &frame) {
                    Ok(plain) if plain.first() == Some(&KIND_MESSAGE) => {
                        // Full queue: dropped, Raft sends again.
                        let _ = handle.0.tx.try_send(Input::Message(plain[1..].to_vec()));
                    }
                    _ => {
                        handle
                            .0
                            .counters
                            .bad_messages
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        Some((&KIND_FORWARD, json)) => {
            let result: Result<Outcome, String> = match serde_json::from_slice::<Command>(json) {
                Ok(command) => handle.submit(command).await.map_err(|e| e.to_string()),
                Err(e) => Err(format!("bad request: {e}")),
            };
            let mut plain = vec![KIND_FORWARD_REPLY];
            plain.extend(serde_json::to_vec(&result).unwrap_or_default());
            let sealed = cluster::seal(&keyring, &plain);
            let _ = cluster::write_frame(&mut stream, &sealed).await;
        }
        _ => {
            handle
                .0
                .counters
                .bad_messages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Send a request to a voter and wait for its answer.
async fn forward(
    keyring: SharedKeyring,
    targets: Vec<(std::net::SocketAddr, String)>,
    command: Command,
) -> Result<Outcome, SubmitError> {
    let mut why = String::from("no voter known yet");
    let json = serde_json::to_vec(&command).unwrap_or_default();
    for (addr, zone) in targets {
        let attempt = async {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut plain = vec![KIND_FORWARD];
            plain.extend_from_slice(&json);
            let sealed = cluster::seal_for(&keyring, &zone, &plain);
            cluster::write_frame(&mut stream, &sealed)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let frame = cluster::read_frame(&mut stream)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let plain = cluster::open(&keyring, &frame).map_err(|e| format!("{addr}: {e}"))?;
            match plain.split_first() {
                Some((&KIND_FORWARD_REPLY, body)) => {
                    serde_json::from_slice::<Result<Outcome, String>>(body)
                        .map_err(|e| format!("{addr}: bad answer: {e}"))
                }
                _ => Err(format!("{addr}: not a Raft answer")),
            }
        };
        match tokio::time::timeout(SUBMIT_TIMEOUT, attempt).await {
            Ok(Ok(Ok(outcome))) => return Ok(outcome),
            Ok(Ok(Err(e))) => return Err(SubmitError::Unreachable(e)),
            Ok(Err(e)) => why = e,
            Err(_) => why = format!("{addr}: no answer within {} s", SUBMIT_TIMEOUT.as_secs()),
        }
    }
    Err(SubmitError::Unreachable(why))
}

struct Driver {
    me: NodeUuid,
    id: u64,
    store: opsbro_store::SledStore,
    keyring: SharedKeyring,
    membership: Membership,
    bus: crate::events::EventBus,
    zone: watch::Receiver<String>,
    handle: RaftHandle,
    /// Senders to peers (by Raft id): their queue, and the address it connects to.
    peers: HashMap<u64, (mpsc::Sender<Vec<u8>>, std::net::SocketAddr)>,
    /// Requests waiting for their entry: id → (reply, deadline).
    waiting: HashMap<u64, (oneshot::Sender<Result<Outcome, SubmitError>>, Instant)>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    started: Instant,
    /// A Raft message arrived once (a group exists: never bootstrap another).
    heard: bool,
    wanted_since: (Vec<u64>, Instant),
    last_leader: u64,
    /// Voters gossip no longer wants (or declares dead), since when.
    unwanted_since: HashMap<u64, Instant>,
    /// The id of the group this node belongs to (chosen by the node that started it); messages
    /// of another group are dropped, or make this node join it when its id is smaller.
    group: Option<u64>,
}

fn now_ms() -> u64 {
    crate::host::unix_ms()
}

impl Driver {
    fn config(&self) -> NodeConfig {
        NodeConfig::new(self.id)
    }

    /// The node from what the `raft` tree holds, or one waiting to be added.
    fn load(&self) -> Result<Node, opsbro_raft::NodeError> {
        let get = |k: &str| self.store.get(k).ok().flatten();
        let (snap, hard) = (get("snap"), get("hs"));
        let entries: Vec<Vec<u8>> = self
            .store
            .scan_prefix("log/")
            .unwrap_or_default()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        if snap.is_some() || hard.is_some() {
            match Node::restore(
                self.config(),
                snap.as_deref(),
                &entries,
                hard.as_deref(),
                now_ms(),
            ) {
                Ok(node) => return Ok(node),
                Err(e) => {
                    tracing::error!(error = %e, "the Raft state on disk does not load: starting as a new member")
                }
            }
        }
        Node::join(self.config(), now_ms())
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        self.group = self
            .store
            .get("group")
            .ok()
            .flatten()
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes);
        let mut node = match self.load() {
            Ok(node) => node,
            Err(e) => {
                tracing::error!(error = %e, "raft: cannot start; locks and elections are off");
                return;
            }
        };
        let mut next_tick = tokio::time::Instant::now();
        let mut next_duties = Instant::now();
        loop {
            // A member of the group ticks every 50 ms; a node outside it (not a voter yet, or
            // never) only needs its duties, every 500 ms: an idle agent stays idle. So does the
            // leader of a group of one (a lone agent): it has nobody to send heartbeats to and
            // no election to time out; inputs (proposals, messages) still wake it at once.
            let status = node.status();
            let in_group = status.initialized
                && !(status.role == "leader"
                    && status.voters.len() == 1
                    && status.learners.is_empty());
            let mut duties_ran = false;
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next_tick) => {
                    next_tick = tokio::time::Instant::now() + if in_group { TICK } else { MEMBERSHIP_EVERY };
                    node.tick(now_ms());
                    if Instant::now() >= next_duties {
                        next_duties = Instant::now() + MEMBERSHIP_EVERY;
                        self.duties(&mut node);
                        duties_ran = true;
                    }
                }
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    self.input(&mut node, input);
                    // Take whatever else is queued before writing and sending once.
                    while let Ok(more) = rx.try_recv() {
                        self.input(&mut node, more);
                    }
                }
            }
            self.output(&mut node, duties_ran).await;
            self.expire_waiting();
        }
    }

    fn input(&mut self, node: &mut Node, input: Input) {
        match input {
            Input::Message(bytes) => {
                self.heard = true;
                let Some((group, msg)) = split_group(&bytes) else {
                    self.handle
                        .0
                        .counters
                        .bad_messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                };
                match self.group {
                    Some(mine) if mine == group => {}
                    Some(mine) if group > mine => return,
                    Some(mine) => {
                        // Two groups started apart (two clusters that merged): the one with the
                        // smaller id wins; this node forgets its own and joins that one.
                        tracing::warn!(
                            mine = format!("{mine:016x}"),
                            theirs = format!("{group:016x}"),
                            "another Raft group of this zone met: joining it (the locks of this node's group are lost)"
                        );
                        self.wipe();
                        match Node::join(self.config(), now_ms()) {
                            Ok(n) => *node = n,
                            Err(e) => {
                                tracing::error!(error = %e, "raft: cannot rejoin");
                                return;
                            }
                        }
                        self.adopt(group);
                    }
                    None => self.adopt(group),
                }
                if node.step(msg).is_err() {
                    self.handle
                        .0
                        .counters
                        .bad_messages
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Input::Submit { command, reply } => {
                let status = node.status();
                if status.initialized && status.voters.contains(&self.id) {
                    let Some(request) = command.request() else {
                        let _ = reply.send(Err(SubmitError::Unreachable("not a request".into())));
                        return;
                    };
                    match node.propose(&command) {
                        Ok(()) => {
                            self.waiting
                                .insert(request, (reply, Instant::now() + SUBMIT_TIMEOUT));
                        }
                        Err(_) => {
                            let _ =
                                reply.send(Err(SubmitError::NoQuorum(SUBMIT_TIMEOUT.as_secs())));
                        }
                    }
                } else {
                    // Not a voter: ask one (the leader first).
                    let targets = self.targets(&status);
                    let keyring = self.keyring.clone();
                    self.tracker.spawn(async move {
                        let _ = reply.send(forward(keyring, targets, command).await);
                    });
                }
            }
        }
    }

    /// Voters to ask, the leader first.
    fn targets(&self, status: &opsbro_raft::Status) -> Vec<(std::net::SocketAddr, String)> {
        let members = self.membership.borrow().clone();
        let zone = self.zone.borrow().clone();
        let mut ids: Vec<u64> = Vec::new();
        if status.leader != 0 {
            ids.push(status.leader);
        }
        ids.extend(status.voters.iter().copied());
        ids.extend(
            wanted_voters(&members, &zone)
                .iter()
                .map(|p| raft_id(p.uuid)),
        );
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for id in ids {
            if id == self.id || seen.contains(&id) {
                continue;
            }
            seen.push(id);
            if let Some(p) = members.iter().find(|p| {
                raft_id(p.uuid) == id && !matches!(p.state, MemberState::Dead | MemberState::Left)
            }) {
                out.push((p.addr, p.zone.clone()));
            }
        }
        out
    }

    fn expire_waiting(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in late {
            if let Some((reply, _)) = self.waiting.remove(&k) {
                let _ = reply.send(Err(SubmitError::NoQuorum(SUBMIT_TIMEOUT.as_secs())));
            }
        }
    }

    /// Bootstrap, voter changes and releases of gone nodes' locks.
    fn duties(&mut self, node: &mut Node) {
        let members = self.membership.borrow().clone();
        let zone = self.zone.borrow().clone();
        let wanted = wanted_voters(&members, &zone);
        let wanted_ids: Vec<u64> = wanted.iter().map(|p| raft_id(p.uuid)).collect();
        if wanted_ids != self.wanted_since.0 {
            self.wanted_since = (wanted_ids.clone(), Instant::now());
        }
        let status = node.status();
        // Voters that are unwanted or not live, since when: one is removed only once that has
        // lasted VOTER_GRACE (a flapping member does not shrink the group).
        {
            let live = |id: u64| {
                members
                    .iter()
                    .find(|p| raft_id(p.uuid) == id)
                    .is_some_and(|p| matches!(p.state, MemberState::Alive | MemberState::Suspect))
            };
            let now = Instant::now();
            let bad: Vec<u64> = status
                .voters
                .iter()
                .copied()
                .filter(|id| !wanted_ids.contains(id) || !live(*id))
                .collect();
            self.unwanted_since.retain(|id, _| bad.contains(id));
            for id in bad {
                self.unwanted_since.entry(id).or_insert(now);
            }
        }
        if !status.initialized {
            let quiet = self.wanted_since.1.elapsed() >= BOOTSTRAP_QUIET
                && self.started.elapsed() >= BOOTSTRAP_QUIET;
            if !self.heard && quiet && wanted.first().is_some_and(|p| p.uuid == self.me) {
                match Node::bootstrap(self.config(), &[self.id], now_ms()) {
                    Ok(n) => {
                        tracing::info!("started the Raft group (first of the wanted voters)");
                        *node = n;
                        self.adopt(request_id());
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start the Raft group"),
                }
            }
        } else if node.is_leader() && !node.has_pending_conf() {
            if let Some(add) = wanted_ids.iter().find(|id| !status.voters.contains(id)) {
                if let Err(e) = node.add_voter(*add) {
                    tracing::debug!(error = %e, "add voter");
                }
            } else if let Some(remove) = status.voters.iter().find(|id| {
                **id != self.id
                    && self
                        .unwanted_since
                        .get(*id)
                        .is_some_and(|t| t.elapsed() >= VOTER_GRACE)
            }) && status.voters.len() > 1
                && let Err(e) = node.remove_voter(*remove)
            {
                tracing::debug!(error = %e, "remove voter");
            }
        }
        if node.is_leader() {
            // Locks of nodes gossip declared dead or gone (or forgot) are released.
            let holders: Vec<String> = node
                .machine()
                .locks()
                .values()
                .map(|l| l.holder.node.clone())
                .collect();
            for h in holders {
                let gone = members
                    .iter()
                    .find(|p| p.uuid.to_string() == h)
                    .is_none_or(|p| matches!(p.state, MemberState::Dead | MemberState::Left));
                if gone && let Err(e) = node.node_gone(&h) {
                    tracing::debug!(error = %e, "node gone");
                }
            }
        }
    }

    /// Persist, send, answer, publish; refresh the view when anything happened.
    async fn output(&mut self, node: &mut Node, refresh: bool) {
        let out = node.poll();
        let changed = refresh || !out.persist.is_empty() || !out.applied.is_empty();
        if !out.persist.is_empty() {
            let store = self.store.clone();
            let ops = out.persist;
            let written = tokio::task::spawn_blocking(move || persist(&store, ops)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // Without the write, sending could break Raft's promises: stay silent.
                    tracing::error!(error = %e, "cannot write the Raft log; messages held back");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "raft persistence task failed");
                    return;
                }
            }
        }
        self.send(out.messages);
        for a in out.applied {
            if let Some(request) = a.command.request()
                && let Some((reply, _)) = self.waiting.remove(&request)
            {
                let _ = reply.send(Ok(a.outcome.clone()));
            }
            self.publish(node, &a.command, &a.outcome);
        }
        if changed || node.status().leader != self.last_leader {
            self.update_view(node);
        }
    }

    fn publish(&self, node: &Node, command: &Command, outcome: &Outcome) {
        let members = self.membership.borrow().clone();
        let name_of = |uuid: &str| {
            members
                .iter()
                .find(|p| p.uuid.to_string() == uuid)
                .map_or_else(|| uuid.to_owned(), |p| p.name.clone())
        };
        let _ = node;
        match (command, outcome) {
            (Command::Acquire { lock, holder, .. }, Outcome::Granted { token }) => {
                self.bus.publish(
                    opsbro_api::events::Payload::Raft(RaftEvent {
                        kind: "acquired".into(),
                        name: lock.clone(),
                        node: name_of(&holder.node),
                        token: *token,
                    }),
                    None,
                );
            }
            (_, Outcome::Released(gone)) => {
                for (lock, token, holder) in gone {
                    let _ = self.handle.0.released.send((lock.clone(), *token));
                    self.bus.publish(
                        opsbro_api::events::Payload::Raft(RaftEvent {
                            kind: "released".into(),
                            name: lock.clone(),
                            node: name_of(&holder.node),
                            token: *token,
                        }),
                        None,
                    );
                }
            }
            _ => {}
        }
    }

    fn update_view(&mut self, node: &Node) {
        let status = node.status();
        let members = self.membership.borrow().clone();
        let zone = self.zone.borrow().clone();
        let name_of_id = |id: u64| {
            members
                .iter()
                .find(|p| raft_id(p.uuid) == id)
                .map_or_else(|| format!("{id:016x}"), |p| p.name.clone())
        };
        let name_of_uuid = |uuid: &str| {
            members
                .iter()
                .find(|p| p.uuid.to_string() == uuid)
                .map_or_else(|| uuid.to_owned(), |p| p.name.clone())
        };
        if status.leader != self.last_leader {
            self.last_leader = status.leader;
            if status.leader != 0 {
                self.bus.publish(
                    opsbro_api::events::Payload::Raft(RaftEvent {
                        kind: "leader".into(),
                        name: "raft".into(),
                        node: name_of_id(status.leader),
                        token: status.term,
                    }),
                    None,
                );
            }
        }
        let voter = status.initialized && status.voters.contains(&self.id);
        let view = RaftState {
            id: self.id,
            role: if voter {
                status.role.to_owned()
            } else {
                "observer".to_owned()
            },
            leader: (status.leader != 0).then(|| name_of_id(status.leader)),
            term: status.term,
            voters: status.voters.iter().map(|id| name_of_id(*id)).collect(),
            wanted_voters: wanted_voters(&members, &zone)
                .into_iter()
                .map(|p| p.name)
                .collect(),
            commit: status.commit,
            applied: status.applied,
            initialized: status.initialized,
            locks: node
                .machine()
                .locks()
                .iter()
                .map(|(name, l)| LockInfo {
                    name: name.clone(),
                    node: name_of_uuid(&l.holder.node),
                    node_uuid: l.holder.node.clone(),
                    session: l.holder.session.clone(),
                    token: l.token,
                    ttl_ms: l.ttl_ms,
                })
                .collect(),
            failed_proposals: self
                .handle
                .0
                .counters
                .failed_proposals
                .load(std::sync::atomic::Ordering::Relaxed),
            bad_messages: self
                .handle
                .0
                .counters
                .bad_messages
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        let mut guard = self
            .handle
            .0
            .view
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *guard != view {
            *guard = view;
            drop(guard);
            self.handle.0.changed.send_modify(|n| *n += 1);
        }
    }

    /// This node belongs to group `group` from now on (kept in the `raft` tree).
    fn adopt(&mut self, group: u64) {
        self.group = Some(group);
        if let Err(e) = self
            .store
            .put("group", &group.to_be_bytes())
            .and_then(|()| self.store.flush())
        {
            tracing::error!(error = %e, "cannot write the Raft group id");
        }
    }

    /// Forget every Raft record of this node.
    fn wipe(&mut self) {
        for (k, _) in self.store.scan_prefix("").unwrap_or_default() {
            let _ = self.store.remove(&k);
        }
        let _ = self.store.flush();
        self.group = None;
    }

    /// Queue each message for its peer (a sender task per peer keeps a connection), behind
    /// this node's group id (a node without a group sends nothing).
    fn send(&mut self, messages: Vec<(u64, Vec<u8>)>) {
        let Some(group) = self.group else {
            return;
        };
        if messages.is_empty() {
            return;
        }
        let members = self.membership.borrow().clone();
        for (to, bytes) in messages {
            let Some(peer) = members.iter().find(|p| raft_id(p.uuid) == to) else {
                continue;
            };
            let entry = self.peers.get(&to);
            let usable = entry.is_some_and(|(tx, addr)| !tx.is_closed() && *addr == peer.addr);
            if !usable {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                self.tracker.spawn(peer_sender(
                    peer.addr,
                    peer.zone.clone(),
                    self.keyring.clone(),
                    rx,
                    self.shutdown.clone(),
                ));
                self.peers.insert(to, (tx, peer.addr));
            }
            if let Some((tx, _)) = self.peers.get(&to) {
                let mut framed = Vec::with_capacity(8 + bytes.len());
                framed.extend_from_slice(&group.to_be_bytes());
                framed.extend_from_slice(&bytes);
                let _ = tx.try_send(framed);
            }
        }
    }
}

/// Write the node's persistence operations to the `raft` tree and flush.
fn persist(
    store: &opsbro_store::SledStore,
    ops: Vec<Persist>,
) -> Result<(), opsbro_store::StoreError> {
    let log_key = |i: u64| format!("log/{i:020}");
    for op in ops {
        match op {
            Persist::HardState(b) => store.put("hs", &b)?,
            Persist::Entries(entries) => {
                if let Some((first, _)) = entries.first() {
                    for (k, _) in store.scan_range(&log_key(*first), "log/~")? {
                        store.remove(&k)?;
                    }
                }
                for (i, b) in entries {
                    store.put(&log_key(i), &b)?;
                }
            }
            Persist::Snapshot { index, bytes } => {
                store.put("snap", &bytes)?;
                for (k, _) in store.scan_range("log/", &log_key(index + 1))? {
                    store.remove(&k)?;
                }
            }
        }
    }
    store.flush()
}

/// Keep a connection to one peer and send it the queued messages (reconnecting after a
/// failure; what is queued meanwhile waits, what overflows is dropped).
async fn peer_sender(
    addr: std::net::SocketAddr,
    zone: String,
    keyring: SharedKeyring,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut stream: Option<TcpStream> = None;
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        if stream.is_none() {
            match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                    backoff = Duration::from_millis(100);
                }
                _ => {
                    // Drop this message; wait before trying again (Raft resends).
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    while rx.try_recv().is_ok() {}
                    continue;
                }
            }
        }
        let mut plain = Vec::with_capacity(1 + msg.len());
        plain.push(KIND_MESSAGE);
        plain.extend_from_slice(&msg);
        let sealed = cluster::seal_for(&keyring, &zone, &plain);
        if let Some(s) = stream.as_mut() {
            let write =
                tokio::time::timeout(Duration::from_secs(2), cluster::write_frame(s, &sealed))
                    .await;
            if !matches!(write, Ok(Ok(()))) {
                stream = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uuid: &str, groups: &[&str], state: MemberState, zone: &str) -> Peer {
        Peer {
            uuid: uuid.parse().expect("uuid"),
            name: uuid[..4].to_owned(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            state,
            zone: zone.to_owned(),
            critical: false,
            maintenance: None,
            services: Vec::new(),
        }
    }

    #[test]
    fn voters_are_the_raft_group_or_the_first_by_uuid_of_the_zone() {
        let u = |c: char| format!("{c}{c}{c}{c}0000-0000-4000-8000-000000000000");
        let members = vec![
            peer(&u('5'), &[], MemberState::Alive, "lan"),
            peer(&u('1'), &[], MemberState::Dead, "lan"),
            peer(&u('2'), &[], MemberState::Alive, "lan"),
            peer(&u('3'), &[], MemberState::Suspect, "lan"),
            peer(&u('4'), &[], MemberState::Alive, "lan"),
            peer(&u('0'), &[], MemberState::Alive, "dmz"),
        ];
        let names: Vec<String> = wanted_voters(&members, "lan")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["2222", "3333", "4444"]);
        let mut more = members.clone();
        more.push(peer(&u('6'), &[], MemberState::Alive, "lan"));
        more.push(peer(&u('7'), &[], MemberState::Alive, "lan"));
        assert_eq!(wanted_voters(&more, "lan").len(), 5);
        let mut tagged = members;
        tagged[0].groups.push("raft".into());
        let names: Vec<String> = wanted_voters(&tagged, "lan")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["5555"]);
    }
}
