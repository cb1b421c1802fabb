//! The replicated KV store: any node takes reads and writes; each key lives on its first
//! `replication_factor` live owners on the SHA1 ring (`opsbro_kv::Ring`) built from the gossip
//! membership (nodes in group `kv`, or every live node when none is).
//!
//! * **Writes** go to the key's coordinator (its first owner that answers), which stamps them
//!   with its hybrid logical clock, stores them durably (group commit), sends them to the other
//!   owners and answers once `write_acks` copies are durable.
//! * **Reads** ask every owner and return the newest copy (so a write acknowledged by any two
//!   owners is seen even when one of them is gone), repairing stale owners on the way.
//! * **Handoff and anti-entropy**: when the ring changes (and every `anti_entropy_interval`),
//!   each node offers the versions it holds to the other owners of those keys, which ask for
//!   what they miss.
//! * Deletes are tombstones, garbage-collected after `tombstone_ttl`; TTL keys expire in place.
//!
//! Nodes talk over the cluster TCP port with frames sealed by the cluster keyring, on
//! long-lived multiplexed connections (`Peers`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use opsbro_kv::wire::{self, Frame, Request, Response, WriteOp};
use opsbro_kv::{Entry, Hlc, Ring, WriteAcks};
use opsbro_store::GroupCommit;
use opsbro_types::NodeUuid;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, SharedKeyring};
use crate::gossip::KvConnection;
use crate::membership::Peer;

mod backup;
pub use backup::Imported;

/// How long a node waits for another's answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// Why a node's list did not come back.
enum ListError {
    /// The node did not answer in full (another copy may cover it).
    Failed(String),
    /// The prefix holds more than [`MAX_LIST_BYTES`].
    TooBig(String),
}

/// The most a list gathers from one node (keys and values): a bigger prefix is refused with
/// 413, so that one request cannot make the agent hold the whole store several times over.
const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;
/// How long a node waits for the coordinator it forwarded a write to.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(6);
/// Clock difference tolerated between nodes for forwarded-write deadlines.
const CLOCK_SLACK: Duration = Duration::from_secs(2);
/// Connecting to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Incoming KV connections served at once.
const MAX_CONNECTIONS: usize = 256;
/// Requests served at once on one connection.
const MAX_IN_FLIGHT: usize = 512;
/// Blocking reads parked at once on one connection.
const MAX_WAITING: usize = 8192;
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(300);
/// Entries per anti-entropy message.
const BATCH: usize = 1000;
/// Bytes of values per replication message.
const BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Settings.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// Copies of each key.
    pub replication_factor: usize,
    /// Durable copies before a write is acknowledged.
    pub write_acks: WriteAcks,
    /// How long tombstones are kept.
    pub tombstone_ttl: Duration,
    /// Time between anti-entropy rounds.
    pub anti_entropy_interval: Duration,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            replication_factor: 3,
            write_acks: WriteAcks::Quorum,
            tombstone_ttl: Duration::from_secs(24 * 3600),
            anti_entropy_interval: Duration::from_secs(30),
        }
    }
}

/// Why an operation failed, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KvError {
    /// 400, 404, 409, 413, 500 or 503.
    pub status: u16,
    /// What happened.
    pub message: String,
}

impl KvError {
    fn new(status: u16, message: impl Into<String>) -> KvError {
        KvError {
            status,
            message: message.into(),
        }
    }
}

impl From<opsbro_store::StoreError> for KvError {
    fn from(e: opsbro_store::StoreError) -> Self {
        KvError::new(500, e.to_string())
    }
}

/// Operation counters.
#[derive(Debug, Default)]
pub struct KvCounters {
    /// Reads answered.
    pub reads: AtomicU64,
    /// Writes acknowledged.
    pub writes: AtomicU64,
    /// Writes refused (CAS, not enough replicas).
    pub write_errors: AtomicU64,
    /// Entries taken from other nodes (replication, handoff, repair) because they were newer.
    pub received: AtomicU64,
    /// KV frames and entries refused (bad key, malformed, a version far ahead of our clock).
    pub rejected_frames: AtomicU64,
}

/// What became of one copy of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// Durable on that owner.
    Durable,
    /// That owner holds a newer version (this one): the write did not take effect there.
    Superseded(u64),
    /// No answer, or an error.
    Failed,
}

/// What [`Kv::merge_local`] did with a batch of entries.
#[derive(Debug, Default)]
struct Merged {
    /// Entries taken (they were newer than ours).
    taken: usize,
    /// Keys for which we hold a strictly newer version than the one offered (with ours).
    superseded: Vec<(String, Entry)>,
}

struct RingView {
    ring: Ring,
    peers: HashMap<NodeUuid, Peer>,
}

/// The KV store of this node; cheap to clone.
#[derive(Clone)]
pub struct KvHandle(Arc<Kv>);

struct Kv {
    me: NodeUuid,
    bus: crate::events::EventBus,
    commits: Arc<GroupCommit>,
    hlc: Mutex<Hlc>,
    /// Serialises read-merge-write of local entries.
    merge: Mutex<()>,
    view: RwLock<RingView>,
    peers: Peers,
    /// Bumped after every local change (blocking reads watch it).
    changes: watch::Sender<u64>,
    /// (expiry ms, key) of entries with a TTL.
    expiring: Mutex<BTreeSet<(u64, String)>>,
    /// Replication queue per peer (see `replicate`).
    batchers: Mutex<HashMap<SocketAddr, ReplicationQueue>>,
    config: KvConfig,
    counters: KvCounters,
}

/// Entries waiting to be replicated to one peer, each with where to report the outcome.
type ReplicationQueue = mpsc::Sender<((String, Entry), mpsc::Sender<Copy>)>;

/// A key's owners for the API (`kv locate`).
#[derive(Debug, Clone)]
pub struct Owner {
    /// Uuid.
    pub uuid: NodeUuid,
    /// Name.
    pub name: String,
    /// Cluster address.
    pub addr: SocketAddr,
}

fn now_ms() -> u64 {
    crate::host::unix_ms()
}

impl KvHandle {
    /// Open the store and start the KV tasks: incoming connections, ring updates with handoff,
    /// anti-entropy, TTL expiry and tombstone collection.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        me: NodeUuid,
        store: Arc<dyn opsbro_store::Store>,
        config: KvConfig,
        keyring: SharedKeyring,
        mut membership: watch::Receiver<Arc<Vec<Peer>>>,
        mut connections: mpsc::Receiver<KvConnection>,
        bus: crate::events::EventBus,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<KvHandle, KvError> {
        let kv = Arc::new(Kv {
            me,
            bus,
            commits: GroupCommit::new(store),
            hlc: Mutex::new(Hlc::default()),
            merge: Mutex::new(()),
            view: RwLock::new(RingView {
                ring: Ring::default(),
                peers: HashMap::new(),
            }),
            peers: Peers::new(keyring.clone()),
            changes: watch::channel(0).0,
            expiring: Mutex::new(BTreeSet::new()),
            batchers: Mutex::new(HashMap::new()),
            config,
            counters: KvCounters::default(),
        });
        // Continue the clock above every stamp we hold, and index TTL keys.
        {
            let mut hlc = kv.hlc.lock().unwrap_or_else(PoisonError::into_inner);
            let mut expiring = kv.expiring.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, bytes) in kv.commits.store().scan_prefix("")? {
                if let Ok(e) = Entry::from_bytes(&bytes) {
                    hlc.observe(e.index, now_ms());
                    if e.expires_ms > 0 && !e.deleted {
                        expiring.insert((e.expires_ms, key));
                    }
                }
            }
        }
        kv.update_ring(&membership.borrow_and_update());
        let handle = KvHandle(kv.clone());

        // Incoming connections.
        let slots = Arc::new(tokio::sync::Semaphore::new(crate::host::connection_cap(
            MAX_CONNECTIONS,
        )));
        let (k, stop, t) = (kv.clone(), shutdown.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = stop.cancelled() => return,
                    c = connections.recv() => match c { Some(c) => c, None => return },
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(peer = %conn.peer, "too many KV connections; refused");
                    continue;
                };
                let (k, stop) = (k.clone(), stop.clone());
                t.spawn(async move {
                    let _slot = slot;
                    k.serve(conn, stop).await;
                });
            }
        });

        // Ring changes → handoff (debounced); periodic anti-entropy.
        let (k, stop) = (kv.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut next_sync = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = membership.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let members = membership.borrow_and_update().clone();
                        if k.update_ring(&members) {
                            // Let a burst of changes settle, then hand data off.
                            next_sync = tokio::time::Instant::now() + Duration::from_millis(500);
                        }
                    }
                    () = tokio::time::sleep_until(next_sync) => {
                        if let Err(e) = k.anti_entropy().await {
                            tracing::debug!(error = %e, "anti-entropy round incomplete");
                        }
                        next_sync = tokio::time::Instant::now() + k.config.anti_entropy_interval;
                    }
                }
            }
        });

        // TTL expiry every second, tombstone collection every 10 minutes.
        let (k, stop) = (kv.clone(), shutdown);
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                n += 1;
                let collect = n.is_multiple_of(600);
                let due = k
                    .expiring
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .first()
                    .is_some_and(|(t, _)| *t <= now_ms());
                // Nothing to do most seconds: no blocking-pool hand-off then.
                if !due && !collect {
                    continue;
                }
                let k2 = k.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    k2.expire();
                    if collect {
                        k2.collect_tombstones();
                    }
                })
                .await;
            }
        });
        Ok(handle)
    }

    /// The store's figures for `agent info`.
    pub fn info(&self) -> opsbro_api::KvInfo {
        let c = &self.0.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        opsbro_api::KvInfo {
            ring_nodes: self.ring_size(),
            local_entries: self.0.commits.store().len(),
            size_on_disk: self.0.commits.store().size_on_disk(),
            reads: g(&c.reads),
            writes: g(&c.writes),
            write_errors: g(&c.write_errors),
            received: g(&c.received),
            rejected: g(&c.rejected_frames),
            flushes: self.0.commits.flushes(),
        }
    }

    /// Nodes on the ring.
    pub fn ring_size(&self) -> usize {
        self.0
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ring
            .nodes()
            .len()
    }

    /// The owners of `key`, coordinator first.
    pub fn locate(&self, key: &str) -> Vec<Owner> {
        let view = self.0.view.read().unwrap_or_else(PoisonError::into_inner);
        view.ring
            .owners(key, self.0.config.replication_factor)
            .into_iter()
            .filter_map(|u| {
                view.peers.get(&u).map(|p| Owner {
                    uuid: u,
                    name: p.name.clone(),
                    addr: p.addr,
                })
            })
            .collect()
    }

    /// For code on a blocking thread (expressions, templates): the live value of `key` as text
    /// (lossy UTF-8), read on `runtime` and waited for at most `timeout`. None: absent, deleted,
    /// or no answer in time. It never blocks a runtime worker's async context: the read runs as
    /// a task and this thread waits on a channel.
    pub fn get_text_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        key: &str,
        timeout: Duration,
    ) -> Option<String> {
        let (kv, key) = (self.clone(), key.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let got = tokio::time::timeout(timeout, kv.get(&key)).await;
            let _ = tx.send(got);
        });
        match rx.recv_timeout(timeout + Duration::from_millis(200)) {
            Ok(Ok(Ok(Some(entry)))) => Some(String::from_utf8_lossy(&entry.value).into_owned()),
            _ => None,
        }
    }

    /// The live value of `key` (newest copy among its owners).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        let e = self.0.read_newest(key).await?;
        self.0.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(e.filter(|e| e.is_live(now_ms())))
    }

    /// Write through the key's coordinator; answers the new `modify_index`.
    pub async fn write(&self, key: &str, op: WriteOp) -> Result<u64, KvError> {
        let result = self.0.route_write(key, op).await;
        let c = if result.is_ok() {
            &self.0.counters.writes
        } else {
            &self.0.counters.write_errors
        };
        c.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Live keys under `prefix`, from every node.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvError> {
        self.0.list(prefix).await
    }

    /// Wait until `key`'s `modify_index` passes `index` (or `timeout`); answers the entry then.
    pub async fn wait(
        &self,
        key: &str,
        index: u64,
        timeout: Duration,
    ) -> Result<Option<Entry>, KvError> {
        let owners = self.0.owners(key);
        for owner in owners {
            if owner == self.0.me {
                return Ok(self.0.wait_local(key, index, timeout).await);
            }
            let Some(addr) = self.0.addr_of(&owner) else {
                continue;
            };
            let req = Request::Wait {
                key: key.to_owned(),
                index,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            };
            match self
                .0
                .peers
                .request(addr, &req, timeout + PEER_TIMEOUT)
                .await
            {
                Ok(Response::Entry(e)) => return Ok(e.filter(|e| e.is_live(now_ms()))),
                Ok(other) => tracing::debug!(?other, "unexpected answer to wait"),
                Err(e) => tracing::debug!(%addr, error = %e, "wait: owner unreachable"),
            }
        }
        Err(KvError::new(503, "no owner of the key answered"))
    }
}

impl Kv {
    /// The ring as it is now (a copy: it can change while a request waits).
    fn ring_now(&self) -> Ring {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ring
            .clone()
    }

    /// Rebuild the ring from the membership; true when the set of nodes changed.
    fn update_ring(&self, members: &[Peer]) -> bool {
        use opsbro_gossip::MemberState;
        let live: Vec<&Peer> = members
            .iter()
            .filter(|p| matches!(p.state, MemberState::Alive | MemberState::Suspect))
            .collect();
        let tagged: Vec<&Peer> = live
            .iter()
            .copied()
            .filter(|p| p.groups.iter().any(|g| g == "kv"))
            .collect();
        let eligible = if tagged.is_empty() { live } else { tagged };
        let uuids: Vec<NodeUuid> = eligible.iter().map(|p| p.uuid).collect();
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        view.peers = members.iter().map(|p| (p.uuid, p.clone())).collect();
        let mut sorted = uuids.clone();
        sorted.sort();
        if view.ring.nodes() == sorted.as_slice() {
            return false;
        }
        tracing::info!(nodes = sorted.len(), "KV ring changed");
        view.ring = Ring::new(&uuids);
        true
    }

    fn owners(&self, key: &str) -> Vec<NodeUuid> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ring
            .owners(key, self.config.replication_factor)
    }

    fn addr_of(&self, node: &NodeUuid) -> Option<SocketAddr> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .peers
            .get(node)
            .map(|p| p.addr)
    }

    fn local_get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(self
            .commits
            .store()
            .get(key)?
            .and_then(|b| Entry::from_bytes(&b).ok()))
    }

    /// Keep the entries that are newer than ours (not yet durable: see `durable`). Entries
    /// with a bad key or a version far ahead of our clock are refused and counted; keys for
    /// which we hold a newer version are reported in `superseded`.
    fn merge_local(&self, entries: &[(String, Entry)]) -> Result<Merged, KvError> {
        let _guard = self.merge.lock().unwrap_or_else(PoisonError::into_inner);
        self.merge_locked(entries)
    }

    /// [`Kv::merge_local`] with the merge lock already held.
    fn merge_locked(&self, entries: &[(String, Entry)]) -> Result<Merged, KvError> {
        let mut merged = Merged::default();
        let now = now_ms();
        for (key, e) in entries {
            if opsbro_kv::validate_key(key).is_err() || !e.is_plausible(now) {
                self.counters
                    .rejected_frames
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let newer = match self.local_get(key)? {
                Some(old) if old.is_newer_than(e) => {
                    merged.superseded.push((key.clone(), old));
                    false
                }
                Some(old) => e.is_newer_than(&old),
                None => true,
            };
            if newer {
                self.commits.store().put(key, &e.to_bytes())?;
                merged.taken += 1;
                self.bus.publish(
                    opsbro_api::events::Payload::Kv(opsbro_api::events::KeyChanged {
                        key: key.clone(),
                        action: if e.deleted {
                            opsbro_api::events::KeyAction::Delete
                        } else {
                            opsbro_api::events::KeyAction::Put
                        },
                        modify_index: e.index,
                    }),
                    None,
                );
                if e.expires_ms > 0 && !e.deleted {
                    self.expiring
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert((e.expires_ms, key.clone()));
                }
            }
            self.hlc
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(e.index, now);
        }
        if merged.taken > 0 {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(merged)
    }

    async fn durable(&self) -> Result<(), KvError> {
        Ok(self.commits.durable().await?)
    }

    /// Every owner's copy; the newest wins and stale owners are received in the background.
    async fn read_newest(self: &Arc<Self>, key: &str) -> Result<Option<Entry>, KvError> {
        let owners = self.owners(key);
        if owners.is_empty() {
            return self.local_get(key);
        }
        let asks = owners.iter().map(|o| {
            let me = self.clone();
            let (o, key) = (*o, key.to_owned());
            async move {
                if o == me.me {
                    return (o, me.local_get(&key).map_err(|e| e.message));
                }
                let Some(addr) = me.addr_of(&o) else {
                    return (o, Err("no address".to_owned()));
                };
                match me
                    .peers
                    .request(addr, &Request::Get { key }, PEER_TIMEOUT)
                    .await
                {
                    Ok(Response::Entry(e)) => (o, Ok(e)),
                    Ok(other) => (o, Err(format!("unexpected answer {other:?}"))),
                    Err(e) => (o, Err(e)),
                }
            }
        });
        let answers = futures_join_all(asks).await;
        let mut newest: Option<Entry> = None;
        let mut answered = 0;
        for (_, a) in &answers {
            if let Ok(e) = a {
                answered += 1;
                if let Some(e) = e
                    && newest.as_ref().is_none_or(|n| e.is_newer_than(n))
                {
                    newest = Some(e.clone());
                }
            }
        }
        if answered == 0 {
            return Err(KvError::new(503, "no owner of the key answered"));
        }
        if let Some(n) = &newest {
            let stale: Vec<NodeUuid> = answers
                .iter()
                .filter(|(_, a)| matches!(a, Ok(e) if e.as_ref() != Some(n)))
                .map(|(o, _)| *o)
                .collect();
            if !stale.is_empty() {
                let (me, key, n) = (self.clone(), key.to_owned(), n.clone());
                tokio::spawn(async move {
                    me.push_to(&stale, vec![(key, n)]).await;
                });
            }
        }
        Ok(newest)
    }

    /// Send entries to nodes (repair, handoff); answers how many nodes stored them.
    async fn push_to(self: &Arc<Self>, nodes: &[NodeUuid], entries: Vec<(String, Entry)>) -> usize {
        let mut stored = 0;
        for n in nodes {
            if *n == self.me {
                if self.merge_local(&entries).is_ok() && self.durable().await.is_ok() {
                    stored += 1;
                }
                continue;
            }
            let Some(addr) = self.addr_of(n) else {
                continue;
            };
            let req = Request::Replicate {
                entries: entries.clone(),
            };
            if let Ok(Response::Stored | Response::Superseded(_)) =
                self.peers.request(addr, &req, PEER_TIMEOUT).await
            {
                stored += 1;
            }
        }
        stored
    }

    /// Send the write to the first owner that answers.
    async fn route_write(self: &Arc<Self>, key: &str, op: WriteOp) -> Result<u64, KvError> {
        let owners = self.owners(key);
        if owners.is_empty() {
            return Err(KvError::new(503, "no node can store keys yet"));
        }
        let mut last = String::new();
        for owner in &owners {
            if *owner == self.me {
                return self.coordinate(key, op).await;
            }
            let Some(addr) = self.addr_of(owner) else {
                continue;
            };
            let req = Request::Write {
                to: *owner,
                key: key.to_owned(),
                op: op.clone(),
                // Our wait, plus room for clocks a little apart.
                deadline_ms: crate::host::unix_ms()
                    + (FORWARD_TIMEOUT + CLOCK_SLACK).as_millis() as u64,
            };
            match self.peers.request(addr, &req, FORWARD_TIMEOUT).await {
                Ok(Response::Written { index }) => return Ok(index),
                Ok(Response::Refused { code, message }) => return Err(KvError::new(code, message)),
                Ok(other) => last = format!("unexpected answer {other:?}"),
                // Unreachable (dead but not yet noticed): the next owner coordinates.
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "coordinator unreachable; trying the next owner");
                    last = e;
                }
            }
        }
        Err(KvError::new(
            503,
            format!("no owner of the key could take the write ({last})"),
        ))
    }

    /// Coordinate a write: stamp, store durably, replicate, answer after enough copies.
    async fn coordinate(self: &Arc<Self>, key: &str, op: WriteOp) -> Result<u64, KvError> {
        let owners = self.owners(key);
        let cas = match &op {
            WriteOp::Put { cas, .. } | WriteOp::Delete { cas } => *cas,
        };
        // CAS compares with the newest copy anywhere, not just ours.
        let current = if cas.is_some() {
            self.read_newest(key).await?
        } else {
            self.local_get(key)?
        }
        .filter(|e| e.is_live(now_ms()));
        if let Some(want) = cas {
            let have = current.as_ref().map_or(0, |e| e.index);
            if have != want {
                return Err(KvError::new(
                    409,
                    format!("CAS failed: modify_index is {have}, not {want}"),
                ));
            }
        }
        if let WriteOp::Put { ttl_ms, .. } = &op
            && *ttl_ms > opsbro_kv::MAX_TTL_MS
        {
            return Err(KvError::new(400, "ttl is over a year"));
        }
        let create_index = current.as_ref().map(|e| e.create_index);
        // Once: a replica that holds a version newer than anything this node has seen (e.g.
        // stamped by a node whose clock runs ahead) makes us stamp again above it.
        let mut retried = false;
        loop {
            let (entry, merged) = self.stamp_and_merge(key, |index| match &op {
                WriteOp::Put { value, ttl_ms, .. } => Entry {
                    value: value.clone(),
                    index,
                    create_index: create_index.unwrap_or(index),
                    deleted: false,
                    expires_ms: if *ttl_ms == 0 {
                        0
                    } else {
                        now_ms().saturating_add(*ttl_ms)
                    },
                },
                WriteOp::Delete { .. } => Entry {
                    value: Vec::new(),
                    index,
                    create_index: create_index.unwrap_or(index),
                    deleted: true,
                    expires_ms: 0,
                },
            })?;
            if merged.taken == 0 {
                // Our own copy is newer than a stamp we just made: never acknowledge a write
                // that did nothing.
                let have = merged.superseded.first().map_or(0, |(_, e)| e.index);
                return Err(KvError::new(
                    409,
                    format!(
                        "the write was not applied: this node holds a newer version of the key (modify_index {have})"
                    ),
                ));
            }
            let index = entry.index;
            match self.replicate_write(key, entry, &owners).await? {
                Ok(()) => return Ok(index),
                Err(newer) if !retried => {
                    retried = true;
                    let accepted = self
                        .hlc
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .observe(newer, now_ms());
                    if !accepted {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Err(KvError::new(
            409,
            "the write was overtaken: another owner holds a newer version of the key, stamped ahead of this node's clock, and that version stands (read the key to see it)",
        ))
    }

    /// Stamp a new version (with `make`) and merge it locally in one step: two writes of a key
    /// through this node are merged in the order of their stamps, so the later one always wins
    /// here and the earlier one was simply overwritten. Returns the entry and the merge.
    fn stamp_and_merge(
        &self,
        key: &str,
        make: impl FnOnce(u64) -> Entry,
    ) -> Result<(Entry, Merged), KvError> {
        let _guard = self.merge.lock().unwrap_or_else(PoisonError::into_inner);
        let index = self
            .hlc
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stamp(now_ms());
        let mut batch = [(key.to_owned(), make(index))];
        let merged = self.merge_locked(&batch)?;
        Ok((std::mem::take(&mut batch[0].1), merged))
    }

    /// Make this node's copy durable and send it to the other owners; `Ok(Ok)` once enough
    /// copies are durable. An owner that holds a newer version counts when this node has that
    /// version too (two writes through this node arrived there in the other order: ours was
    /// overwritten, as last-writer-wins says); otherwise `Ok(Err(version))`: stamp above it.
    async fn replicate_write(
        self: &Arc<Self>,
        key: &str,
        entry: Entry,
        owners: &[NodeUuid],
    ) -> Result<Result<(), u64>, KvError> {
        let needed = self.config.write_acks.needed(owners.len().max(1));
        // Local durability and the replicas in parallel; answer at `needed` copies.
        let (tx, mut rx) = mpsc::channel::<Copy>(owners.len().max(1));
        {
            let me = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let copy = if me.durable().await.is_ok() {
                    Copy::Durable
                } else {
                    Copy::Failed
                };
                let _ = tx.send(copy).await;
            });
        }
        for o in owners.iter().filter(|o| **o != self.me) {
            match self.addr_of(o) {
                Some(addr) => {
                    self.replicate(addr, (key.to_owned(), entry.clone()), tx.clone())
                        .await;
                }
                None => {
                    let _ = tx.send(Copy::Failed).await;
                }
            }
        }
        drop(tx);
        let (mut acks, mut answers, mut newer) = (0, 0, 0u64);
        while let Some(copy) = rx.recv().await {
            answers += 1;
            match copy {
                Copy::Durable => acks += 1,
                Copy::Superseded(held) => {
                    let here = self.local_get(key)?.map_or(0, |e| e.index);
                    if held <= here {
                        acks += 1;
                    } else {
                        newer = newer.max(held);
                    }
                }
                Copy::Failed => {}
            }
            if acks >= needed {
                return Ok(Ok(()));
            }
            if answers == owners.len().max(1) {
                break;
            }
        }
        if newer > 0 {
            return Ok(Err(newer));
        }
        Err(KvError::new(
            503,
            format!(
                "not enough replicas: {acks} of {needed} copies are durable (the write may still be visible)"
            ),
        ))
    }

    /// Queue one entry for `addr`'s replication batch; the result (stored durably there or
    /// not) arrives on `done`. Writes that are waiting together travel in one message, and the
    /// replica makes them durable with one flush.
    async fn replicate(
        self: &Arc<Self>,
        addr: SocketAddr,
        entry: (String, Entry),
        done: mpsc::Sender<Copy>,
    ) {
        let queue = {
            let mut batchers = self.batchers.lock().unwrap_or_else(PoisonError::into_inner);
            match batchers.get(&addr).filter(|q| !q.is_closed()) {
                Some(q) => q.clone(),
                None => {
                    let (tx, rx) = mpsc::channel(4096);
                    tokio::spawn(self.clone().run_batcher(addr, rx));
                    batchers.insert(addr, tx.clone());
                    tx
                }
            }
        };
        if let Err(mpsc::error::SendError((_, done))) = queue.send((entry, done)).await {
            let _ = done.send(Copy::Failed).await;
        }
    }

    /// One per peer: drains the queue into `Replicate` messages (up to [`BATCH`] entries or
    /// [`BATCH_BYTES`]), several in flight at once.
    async fn run_batcher(
        self: Arc<Self>,
        addr: SocketAddr,
        mut rx: mpsc::Receiver<((String, Entry), mpsc::Sender<Copy>)>,
    ) {
        while let Some(first) = rx.recv().await {
            let mut bytes = first.0.1.value.len();
            let mut batch = vec![first];
            while batch.len() < BATCH && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(next) => {
                        bytes += next.0.1.value.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let me = self.clone();
            tokio::spawn(async move {
                let (entries, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let versions: Vec<(String, u64)> =
                    entries.iter().map(|(k, e)| (k.clone(), e.index)).collect();
                let answer = me
                    .peers
                    .request(addr, &Request::Replicate { entries }, PEER_TIMEOUT)
                    .await;
                // The replica's version of each key it did not take (it holds a newer one).
                let held: HashMap<String, u64> = match &answer {
                    Ok(Response::Superseded(newer)) => newer.iter().cloned().collect(),
                    _ => HashMap::new(),
                };
                for ((key, index), w) in versions.into_iter().zip(waiters) {
                    let copy = match &answer {
                        Ok(Response::Stored) => Copy::Durable,
                        Ok(Response::Superseded(_)) => match held.get(&key) {
                            Some(h) if *h > index => Copy::Superseded(*h),
                            _ => Copy::Durable,
                        },
                        _ => Copy::Failed,
                    };
                    let _ = w.send(copy).await;
                }
            });
        }
    }

    async fn list(self: &Arc<Self>, prefix: &str) -> Result<Vec<(String, Entry)>, KvError> {
        // The ring as it is now: completeness is judged against the nodes we asked, even if a
        // silent one leaves the ring while we wait for it.
        let ring = self.ring_now();
        let nodes: Vec<NodeUuid> = ring.nodes().to_vec();
        let mut merged: BTreeMap<String, Entry> = BTreeMap::new();
        let mut take = |entries: Vec<(String, Entry)>| {
            for (k, e) in entries {
                match merged.get(&k) {
                    Some(old) if !e.is_newer_than(old) => {}
                    _ => {
                        merged.insert(k, e);
                    }
                }
            }
        };
        take(self.local_list(prefix)?);
        let mut answered = vec![self.me];
        let asks = nodes.iter().filter(|n| **n != self.me).map(|n| {
            let (me, prefix, n) = (self.clone(), prefix.to_owned(), *n);
            async move { (n, me.list_from(n, prefix).await) }
        });
        let mut failures = Vec::new();
        for (node, result) in futures_join_all(asks).await {
            match result {
                Ok(entries) => {
                    answered.push(node);
                    take(entries);
                }
                Err(ListError::TooBig(e)) => return Err(KvError::new(413, e)),
                Err(ListError::Failed(e)) => failures.push(e),
            }
        }
        // A silent node is fine as long as every key has another owner that answered; an
        // incomplete list is an error, never a short answer.
        let complete = ring.covered_by(&answered, self.config.replication_factor);
        if !complete {
            return Err(KvError::new(
                503,
                format!(
                    "incomplete list: {} of {} nodes did not answer and some keys have no other copy ({}); try again",
                    failures.len(),
                    nodes.len(),
                    failures.join("; ")
                ),
            ));
        }
        let now = now_ms();
        Ok(merged.into_iter().filter(|(_, e)| e.is_live(now)).collect())
    }

    /// Every entry a node holds under `prefix`, page by page.
    async fn list_from(
        self: &Arc<Self>,
        node: NodeUuid,
        prefix: String,
    ) -> Result<Vec<(String, Entry)>, ListError> {
        let addr = self
            .addr_of(&node)
            .ok_or_else(|| ListError::Failed(format!("{node}: no address")))?;
        let mut all = Vec::new();
        let mut after = String::new();
        let mut bytes = 0usize;
        loop {
            if bytes > MAX_LIST_BYTES {
                return Err(ListError::TooBig(format!(
                    "more than {} MiB under this prefix on {addr}: narrow the prefix",
                    MAX_LIST_BYTES >> 20
                )));
            }
            let req = Request::List {
                prefix: prefix.clone(),
                after: after.clone(),
            };
            match self.peers.request(addr, &req, PEER_TIMEOUT).await {
                Ok(Response::Entries { entries, more }) => {
                    let last = entries.last().map(|(k, _)| k.clone());
                    bytes += entries
                        .iter()
                        .map(|(k, e)| k.len() + e.value.len() + 32)
                        .sum::<usize>();
                    all.extend(entries);
                    match (more, last) {
                        (true, Some(last)) if last > after => after = last,
                        (true, _) => {
                            return Err(ListError::Failed(format!(
                                "{addr}: a page that does not advance"
                            )));
                        }
                        (false, _) => return Ok(all),
                    }
                }
                Ok(Response::Refused { message, .. }) => {
                    return Err(ListError::Failed(format!("{addr}: {message}")));
                }
                Ok(other) => {
                    return Err(ListError::Failed(format!("{addr}: unexpected {other:?}")));
                }
                Err(e) => return Err(ListError::Failed(format!("{addr}: {e}"))),
            }
        }
    }

    /// One page of this node's entries under `prefix` after `after`.
    fn local_page(&self, prefix: &str, after: &str) -> Result<Response, KvError> {
        let (items, more) = self
            .commits
            .store()
            .scan_page(prefix, after, wire::PAGE_BYTES)?;
        let entries = items
            .into_iter()
            .filter_map(|(k, b)| Entry::from_bytes(&b).ok().map(|e| (k, e)))
            .collect();
        Ok(Response::Entries { entries, more })
    }

    fn local_list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvError> {
        Ok(self
            .commits
            .store()
            .scan_prefix(prefix)?
            .into_iter()
            .filter_map(|(k, b)| Entry::from_bytes(&b).ok().map(|e| (k, e)))
            .collect())
    }

    async fn wait_local(&self, key: &str, index: u64, timeout: Duration) -> Option<Entry> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changes.subscribe();
        loop {
            let current = self.local_get(key).ok().flatten();
            if current.as_ref().is_some_and(|e| e.index > index) {
                return current.filter(|e| e.is_live(now_ms()));
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return current.filter(|e| e.is_live(now_ms()));
                }
                r = changes.changed() => if r.is_err() {
                    return current;
                }
            }
        }
    }

    /// Replace expired entries by tombstones (every replica does the same, with the same
    /// version, so they agree without talking).
    fn expire(&self) {
        let now = now_ms();
        let due: Vec<(u64, String)> = {
            let mut set = self.expiring.lock().unwrap_or_else(PoisonError::into_inner);
            let mut due = Vec::new();
            while let Some(first) = set.first().cloned() {
                if first.0 > now {
                    break;
                }
                set.pop_first();
                due.push(first);
            }
            due
        };
        for (expires, key) in due {
            let _guard = self.merge.lock().unwrap_or_else(PoisonError::into_inner);
            if let Ok(Some(e)) = self.local_get(&key)
                && !e.deleted
                && e.expires_ms == expires
            {
                let tomb = Entry {
                    value: Vec::new(),
                    deleted: true,
                    expires_ms: 0,
                    ..e
                };
                let _ = self.commits.store().put(&key, &tomb.to_bytes());
                self.changes.send_modify(|n| *n += 1);
            }
        }
    }

    /// Forget tombstones older than `tombstone_ttl`.
    fn collect_tombstones(&self) {
        let limit = now_ms().saturating_sub(
            u64::try_from(self.config.tombstone_ttl.as_millis()).unwrap_or(u64::MAX),
        );
        let Ok(all) = self.local_list("") else { return };
        let _guard = self.merge.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, e) in all {
            if e.deleted && Hlc::millis(e.index) < limit {
                let _ = self.commits.store().remove(&k);
            }
        }
        let _ = self.commits.store().flush();
    }

    /// Offer every local version to the other owners of its key; send what they miss and take
    /// what they have newer.
    async fn anti_entropy(self: &Arc<Self>) -> Result<(), String> {
        let all = self.local_list("").map_err(|e| e.message)?;
        let (ring, peers) = {
            let v = self.view.read().unwrap_or_else(PoisonError::into_inner);
            (v.ring.clone(), v.peers.clone())
        };
        let mut per_node: HashMap<NodeUuid, Vec<(String, u64)>> = HashMap::new();
        for (k, e) in &all {
            for o in ring.owners(k, self.config.replication_factor) {
                if o != self.me {
                    per_node.entry(o).or_default().push((k.clone(), e.index));
                }
            }
        }
        let by_key: HashMap<&str, &Entry> = all.iter().map(|(k, e)| (k.as_str(), e)).collect();
        let mut problems = Vec::new();
        for (node, items) in per_node {
            let Some(addr) = peers.get(&node).map(|p| p.addr) else {
                continue;
            };
            'node: for chunk in items.chunks(wire::DIGEST_ITEMS) {
                let mut chunk = chunk.to_vec();
                // Ask again while the peer sends newer entries (its answer is paged by size).
                for round in 0..64 {
                    let req = Request::Digest {
                        items: chunk.clone(),
                    };
                    let (need, newer) = match self.peers.request(addr, &req, PEER_TIMEOUT * 2).await
                    {
                        Ok(Response::Digest { need, newer }) => (need, newer),
                        Ok(other) => {
                            problems.push(format!("{addr}: unexpected {other:?}"));
                            break 'node;
                        }
                        Err(e) => {
                            problems.push(format!("{addr}: {e}"));
                            break 'node;
                        }
                    };
                    if round == 0 {
                        self.send_needed(addr, need, &by_key).await?;
                    }
                    if newer.is_empty() {
                        break;
                    }
                    let m = self.merge_local(&newer).map_err(|e| e.message)?;
                    self.durable().await.map_err(|e| e.message)?;
                    self.counters
                        .received
                        .fetch_add(m.taken as u64, Ordering::Relaxed);
                    let got: HashMap<&str, u64> =
                        newer.iter().map(|(k, e)| (k.as_str(), e.index)).collect();
                    for (k, index) in &mut chunk {
                        if let Some(i) = got.get(k.as_str()) {
                            *index = (*index).max(*i);
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Send a peer the entries it asked for in a digest answer, in bounded batches.
    async fn send_needed(
        &self,
        addr: SocketAddr,
        need: Vec<String>,
        by_key: &HashMap<&str, &Entry>,
    ) -> Result<(), String> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for k in need {
            if let Some(e) = by_key.get(k.as_str()) {
                bytes += e.value.len() + k.len() + 32;
                batch.push((k, (*e).clone()));
            }
            if batch.len() >= BATCH || bytes >= BATCH_BYTES {
                self.send_batch(addr, std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.send_batch(addr, batch).await?;
        }
        Ok(())
    }

    async fn send_batch(
        &self,
        addr: SocketAddr,
        entries: Vec<(String, Entry)>,
    ) -> Result<(), String> {
        match self
            .peers
            .request(addr, &Request::Replicate { entries }, PEER_TIMEOUT * 2)
            .await
        {
            // Newer versions there are fine for a handoff: the newest wins everywhere.
            Ok(Response::Stored | Response::Superseded(_)) => Ok(()),
            Ok(other) => Err(format!("{addr}: unexpected {other:?}")),
            Err(e) => Err(format!("{addr}: {e}")),
        }
    }

    /// Answer a request from another node.
    async fn handle(self: &Arc<Self>, req: Request) -> Response {
        let refused = |e: KvError| Response::Refused {
            code: e.status,
            message: e.message,
        };
        match req {
            Request::Write {
                to,
                key,
                op,
                deadline_ms,
            } => {
                if to != self.me {
                    return refused(KvError::new(
                        421,
                        "this write was addressed to another node (a replay?)",
                    ));
                }
                if let Err(e) = opsbro_kv::validate_key(&key) {
                    return refused(KvError::new(400, e.to_string()));
                }
                if deadline_ms != 0 && crate::host::unix_ms() > deadline_ms {
                    // The sender gave up (and told its client so) long ago: applying it now could
                    // override writes acknowledged since.
                    return refused(KvError::new(
                        503,
                        "the forwarded write arrived after its sender gave up (frozen node, or clocks more than 2 s apart)",
                    ));
                }
                match self.coordinate(&key, op).await {
                    Ok(index) => Response::Written { index },
                    Err(e) => refused(e),
                }
            }
            Request::Replicate { entries } => {
                let merged = match self.merge_local(&entries) {
                    Ok(m) => {
                        self.counters
                            .received
                            .fetch_add(m.taken as u64, Ordering::Relaxed);
                        m
                    }
                    Err(e) => return refused(e),
                };
                match self.durable().await {
                    Ok(()) if merged.superseded.is_empty() => Response::Stored,
                    Ok(()) => Response::Superseded(
                        merged
                            .superseded
                            .into_iter()
                            .map(|(k, e)| (k, e.index))
                            .collect(),
                    ),
                    Err(e) => refused(e),
                }
            }
            Request::Get { key } => match self.local_get(&key) {
                Ok(e) => Response::Entry(e),
                Err(e) => refused(e),
            },
            Request::List { prefix, after } => match self.local_page(&prefix, &after) {
                Ok(page) => page,
                Err(e) => refused(e),
            },
            Request::Digest { items } => {
                let mut need = Vec::new();
                let mut newer = Vec::new();
                // The answer stays under a frame: newer entries past PAGE_BYTES wait for the
                // asker's next digest (it asks again while it gets some).
                let mut bytes = 0;
                for (k, index) in items {
                    match self.local_get(&k) {
                        Ok(Some(mine)) if mine.index > index => {
                            if bytes + mine.value.len() + k.len() <= wire::PAGE_BYTES
                                || newer.is_empty()
                            {
                                bytes += mine.value.len() + k.len();
                                newer.push((k, mine));
                            }
                        }
                        Ok(Some(mine)) if mine.index == index => {}
                        Ok(_) => need.push(k),
                        Err(e) => return refused(e),
                    }
                }
                Response::Digest { need, newer }
            }
            Request::Wait {
                key,
                index,
                timeout_ms,
            } => {
                let timeout = Duration::from_millis(timeout_ms.min(10 * 60 * 1000));
                Response::Entry(self.wait_local(&key, index, timeout).await)
            }
        }
    }

    /// Serve one incoming multiplexed connection until it closes, idles out or the agent stops.
    async fn serve(self: Arc<Self>, conn: KvConnection, stop: CancellationToken) {
        let KvConnection {
            stream,
            peer,
            first,
        } = conn;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT);
        let writer_task = tokio::spawn(cluster::frame_writer(
            writer,
            rx,
            self.peers.keyring.clone(),
        ));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        // Blocking reads park for minutes: they get their own budget, so that many of them
        // never hold up the writes and reads sharing the connection.
        let waiting = Arc::new(tokio::sync::Semaphore::new(MAX_WAITING));
        let mut next = Some(first);
        loop {
            let plain = match next.take() {
                Some(p) => p,
                None => {
                    let frame = tokio::select! {
                        () = stop.cancelled() => break,
                        f = tokio::time::timeout(IDLE, cluster::read_frame(&mut reader)) => f,
                    };
                    let Ok(Ok(frame)) = frame else { break };
                    match cluster::open(&self.peers.keyring, &frame) {
                        Ok(p) => p,
                        Err(e) => {
                            self.counters
                                .rejected_frames
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "KV frame refused");
                            break;
                        }
                    }
                }
            };
            let (id, req) = match wire::decode(&plain) {
                Ok(Frame::Request(id, req)) => (id, req),
                Ok(Frame::Response(..)) | Err(_) => {
                    self.counters
                        .rejected_frames
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "malformed KV frame; closing");
                    break;
                }
            };
            let budget = if matches!(req, Request::Wait { .. }) {
                &waiting
            } else {
                &in_flight
            };
            let Ok(permit) = budget.clone().acquire_owned().await else {
                break;
            };
            let (me, tx) = (self.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let resp = me.handle(req).await;
                let _ = tx.send(wire::encode_response(id, &resp)).await;
            });
        }
        drop(tx);
        let _ = writer_task.await;
    }
}

/// Run futures concurrently and collect their outputs in order.
async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// Outgoing connections to other nodes: one long-lived multiplexed connection per peer.
struct Peers {
    keyring: SharedKeyring,
    conns: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    next_id: AtomicU64,
}

struct Conn {
    frames: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    closed: AtomicBool,
}

impl Peers {
    fn new(keyring: SharedKeyring) -> Peers {
        Peers {
            keyring,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    async fn conn(&self, addr: SocketAddr) -> Result<Arc<Conn>, String> {
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .filter(|c| !c.closed.load(Ordering::Acquire))
        {
            return Ok(c.clone());
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
        let conn = Arc::new(Conn {
            frames: tx,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let (keyring, w) = (self.keyring.clone(), conn.clone());
        tokio::spawn(async move {
            cluster::frame_writer(writer, rx, keyring).await;
            w.close();
        });
        let keyring = self.keyring.clone();
        let r = conn.clone();
        tokio::spawn(async move {
            loop {
                let Ok(frame) = cluster::read_frame(&mut reader).await else {
                    break;
                };
                let Ok(plain) = cluster::open(&keyring, &frame) else {
                    break;
                };
                match wire::decode(&plain) {
                    Ok(Frame::Response(id, resp)) => {
                        let waiter = r
                            .pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&id);
                        if let Some(w) = waiter {
                            let _ = w.send(resp);
                        }
                    }
                    _ => break,
                }
            }
            r.close();
        });
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr, conn.clone());
        Ok(conn)
    }

    /// One request, answered within `timeout`.
    async fn request(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, String> {
        let conn = self.conn(addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        if conn
            .frames
            .send(wire::encode_request(id, req))
            .await
            .is_err()
        {
            conn.close();
            return Err(format!("connection to {addr} closed"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(format!("connection to {addr} closed")),
            Err(_) => {
                conn.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                Err(format!("no answer from {addr} within {timeout:?}"))
            }
        }
    }
}

impl Conn {
    /// Mark closed and fail every waiter (their senders are dropped).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
