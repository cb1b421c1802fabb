//! The replicated KV store of this node: the thin driver of [`opsbro_kv::Core`].
//!
//! The protocol — coordinators, replication, read repair, hand-off, anti-entropy, TTL expiry,
//! tombstone collection, blocking reads, listings, backups — is the IO-free core in
//! `crates/kv` (simulated there over many seeds). This module only performs its effects:
//!
//! * **one task** ([`driver`]) owns the core and feeds it every input: client requests from
//!   [`KvHandle`], KV frames from other nodes, answers to its own requests, membership
//!   changes (the eligibility rule: live members in group `kv`, or every live member when none
//!   is), flush completions and its one wake-up;
//! * **the store** is sled behind [`SledStorage`]; writes go in at once, durability is a
//!   `Flush` effect run on the blocking pool (one flush serves every write before it);
//! * **the network** ([`links`]) is one long-lived multiplexed connection per peer over the
//!   cluster TCP port, frames sealed with the cluster keyring; incoming KV connections arrive
//!   from the cluster listener.
//!
//! Every task is spawned on the agent's tracker and stops with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use opsbro_kv::wire::WriteOp;
use opsbro_kv::{ClientAnswer, ClientRequest, Config, Core, Entry, Ring, StorageError, WriteAcks};
use opsbro_types::NodeUuid;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Accepted;
use crate::cluster::SharedKeyring;
use crate::membership::{Membership, Peer};

mod driver;
mod links;
mod storage;

pub use opsbro_kv::{Imported, KvError};
pub use storage::SledStorage;

/// Longest a CAS waits for its key's new coordinator to resume CAS (the core's pause is
/// 11 s; a ring that keeps changing makes it fail with 503 after this).
const MAX_CAS_WAIT: Duration = Duration::from_secs(15);
/// Client requests waiting for the driver at once (then callers wait their turn).
const CLIENT_QUEUE: usize = 4096;

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
    /// Bytes of sled's page cache (`kv.cache_size`; the database is opened with it before the
    /// KV task starts, see `start::open_stores`).
    pub cache_size: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        let core = Config::default();
        KvConfig {
            replication_factor: core.replication_factor,
            write_acks: core.write_acks,
            tombstone_ttl: Duration::from_millis(core.tombstone_ttl_ms),
            anti_entropy_interval: Duration::from_millis(core.anti_entropy_interval_ms),
            cache_size: opsbro_store::DEFAULT_CACHE_BYTES,
        }
    }
}

impl KvConfig {
    /// The core's settings: four of these from `agent.yml`, the protocol's timings as the core
    /// defines them.
    fn core(&self) -> Config {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Config {
            replication_factor: self.replication_factor,
            write_acks: self.write_acks,
            tombstone_ttl_ms: ms(self.tombstone_ttl),
            anti_entropy_interval_ms: ms(self.anti_entropy_interval),
            ..Config::default()
        }
    }
}

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

/// A client request with where its answer goes.
type Ask = (
    ClientRequest,
    oneshot::Sender<Result<ClientAnswer, KvError>>,
);

/// What the driver publishes for readers that must not wait for it (`agent info`,
/// `/metrics`, `kv locate`).
#[derive(Default)]
struct Published {
    ring: Arc<Ring>,
    peers: Arc<HashMap<NodeUuid, Peer>>,
    stats: opsbro_kv::core::Stats,
}

struct Shared {
    me: NodeUuid,
    /// Reads served from this node's store without the driver (see [`KvHandle::get`]).
    local_reads: AtomicU64,
    asks: mpsc::Sender<Ask>,
    published: RwLock<Published>,
    /// The same store the core writes (for reads this node alone answers, and figures).
    storage: SledStorage,
    replication_factor: usize,
}

/// The KV store of this node; cheap to clone.
#[derive(Clone)]
pub struct KvHandle(Arc<Shared>);

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
#[error("opening the KV store: {0}")]
pub struct StartError(#[from] StorageError);

/// What [`KvHandle::start`] needs from the rest of the agent.
pub struct KvSetup {
    /// This node.
    pub me: NodeUuid,
    /// The store (the `kv` tree of the agent's sled database).
    pub store: Arc<dyn opsbro_store::Store>,
    /// Settings.
    pub config: KvConfig,
    /// The cluster keyring (frames are sealed with it).
    pub keyring: SharedKeyring,
    /// The live membership.
    pub membership: Membership,
    /// Incoming KV connections, handed over by the cluster listener.
    pub connections: mpsc::Receiver<Accepted>,
    /// Where key changes are published.
    pub bus: crate::events::EventBus,
}

impl KvHandle {
    /// Open the store (the core scans it once: clock, TTL index) and start the driver.
    pub fn start(
        setup: KvSetup,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<KvHandle, StartError> {
        let now = crate::host::unix_ms();
        let storage = SledStorage::new(setup.store.clone());
        let seed = u64::from_le_bytes(setup.me.as_bytes()[..8].try_into().unwrap_or([0; 8])) ^ now;
        let core = Core::new(setup.me, setup.config.core(), storage, now, seed)?;
        let (asks, asks_rx) = mpsc::channel(CLIENT_QUEUE);
        let shared = Arc::new(Shared {
            me: setup.me,
            local_reads: AtomicU64::new(0),
            asks,
            published: RwLock::new(Published::default()),
            storage: SledStorage::new(setup.store),
            replication_factor: setup.config.replication_factor,
        });
        driver::spawn(
            driver::Driver::new(
                core,
                shared.clone(),
                setup.keyring,
                setup.bus,
                tracker,
                shutdown,
            ),
            driver::Inputs {
                asks: asks_rx,
                membership: setup.membership,
                connections: setup.connections,
            },
        );
        Ok(KvHandle(shared))
    }

    fn published<T>(&self, f: impl FnOnce(&Published) -> T) -> T {
        f(&self
            .0
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// The store's figures for `agent info` and `/metrics`.
    pub fn info(&self) -> opsbro_api::KvInfo {
        let (ring_nodes, s) = self.published(|p| (p.ring.nodes().len(), p.stats.clone()));
        opsbro_api::KvInfo {
            ring_nodes,
            // Kept write by write by the core: a count of the store would read all of it.
            local_entries: usize::try_from(s.local_entries).unwrap_or(usize::MAX),
            size_on_disk: self.0.storage.store().size_on_disk(),
            reads: s.reads + self.0.local_reads.load(Ordering::Relaxed),
            writes: s.writes,
            write_errors: s.write_errors,
            received: s.received,
            rejected: s.rejected,
            flushes: s.flushes,
        }
    }

    /// Nodes on the ring.
    pub fn ring_size(&self) -> usize {
        self.published(|p| p.ring.nodes().len())
    }

    /// The owners of `key`, coordinator first.
    pub fn locate(&self, key: &str) -> Vec<Owner> {
        self.published(|p| {
            p.ring
                .owners(key, self.0.replication_factor)
                .into_iter()
                .filter_map(|u| {
                    p.peers.get(&u).map(|peer| Owner {
                        uuid: u,
                        name: peer.name.clone(),
                        addr: peer.addr,
                    })
                })
                .collect()
        })
    }

    async fn ask(&self, request: ClientRequest) -> Result<ClientAnswer, KvError> {
        let stopped = || KvError::Unavailable("the KV store is stopping".into());
        let (tx, rx) = oneshot::channel();
        self.0
            .asks
            .send((request, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
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

    /// The live value of `key` (newest copy among its owners). When this node is the key's
    /// only owner (a one-node cluster, or `replication_factor: 1`), its copy is the newest:
    /// it is read from the store here, without a round trip through the driver task (what the
    /// core would do, minus the hop).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        if opsbro_kv::validate_key(key).is_ok()
            && self.published(|p| p.ring.owners(key, self.0.replication_factor) == [self.0.me])
        {
            let entry = opsbro_kv::Storage::get(&self.0.storage, key)?;
            self.0.local_reads.fetch_add(1, Ordering::Relaxed);
            let now = crate::host::unix_ms();
            return Ok(entry.filter(|e| e.is_live(now)));
        }
        match self
            .ask(ClientRequest::Get {
                key: key.to_owned(),
            })
            .await?
        {
            ClientAnswer::Entry(e) => Ok(e),
            other => Err(unexpected(&other)),
        }
    }

    /// Write through the key's coordinator; answers the new `modify_index`. A CAS whose key's
    /// coordinator just changed waits until CAS resumes on it (at most [`MAX_CAS_WAIT`]).
    pub async fn write(&self, key: &str, op: WriteOp) -> Result<u64, KvError> {
        let request = ClientRequest::Write {
            key: key.to_owned(),
            op,
        };
        let mut waited = Duration::ZERO;
        loop {
            match self.ask(request.clone()).await {
                Ok(ClientAnswer::Written { index }) => return Ok(index),
                Ok(other) => return Err(unexpected(&other)),
                Err(KvError::CasPaused { retry_in_ms }) if waited < MAX_CAS_WAIT => {
                    let pause = Duration::from_millis(retry_in_ms.clamp(10, 15_000) + 10);
                    tokio::time::sleep(pause).await;
                    waited += pause;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Live keys under `prefix`, from every node.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Entry)>, KvError> {
        let request = ClientRequest::List {
            prefix: prefix.to_owned(),
        };
        match self.ask(request).await? {
            ClientAnswer::List(entries) => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Wait until `key`'s `modify_index` passes `index` (or `timeout`); answers the entry then.
    pub async fn wait(
        &self,
        key: &str,
        index: u64,
        timeout: Duration,
    ) -> Result<Option<Entry>, KvError> {
        let request = ClientRequest::Wait {
            key: key.to_owned(),
            index,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.ask(request).await? {
            ClientAnswer::Entry(e) => Ok(e),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of the cluster's entries under `prefix` after the key `after` (tombstones and
    /// expired entries included: they are versions too), the newest copy of each key, in key
    /// order; at most about `max_bytes` of keys and values (at least one entry). Answers the
    /// entries and the key to continue after, none on the last page. A page is never answered
    /// short: when a silent node holds keys no other node answered for, it is an error.
    pub async fn export_page(
        &self,
        prefix: &str,
        after: &str,
        max_bytes: usize,
    ) -> Result<(Vec<(String, Entry)>, Option<String>), KvError> {
        let request = ClientRequest::ListPage {
            prefix: prefix.to_owned(),
            after: after.to_owned(),
            max_bytes,
        };
        match self.ask(request).await? {
            ClientAnswer::Page { entries, next } => Ok((entries, next)),
            other => Err(unexpected(&other)),
        }
    }

    /// Store exported entries on their owners, as hand-off does: each owner keeps an entry
    /// only if it is newer than its copy. One outcome per entry, in order. Entries must be
    /// checked first (key rules, plausible versions).
    pub async fn import(&self, entries: Vec<(String, Entry)>) -> Vec<Imported> {
        let n = entries.len();
        match self.ask(ClientRequest::Import { entries }).await {
            Ok(ClientAnswer::Imported(outcomes)) if outcomes.len() == n => outcomes,
            Ok(other) => vec![Imported::Failed(unexpected(&other).to_string()); n],
            Err(e) => vec![Imported::Failed(e.to_string()); n],
        }
    }
}

fn unexpected(answer: &ClientAnswer) -> KvError {
    KvError::Unavailable(format!("unexpected answer from the KV core: {answer:?}"))
}

/// Whether the eligibility rule puts `peer` on the ring: alive (or suspect).
fn is_live(peer: &Peer) -> bool {
    matches!(
        peer.state,
        opsbro_gossip::MemberState::Alive | opsbro_gossip::MemberState::Suspect
    )
}

/// The nodes that store keys: the live members of this node's zone (`me`'s) in group `kv`, or
/// every live member of the zone when none is. Each zone has its own store: a node sees the
/// members of the zones below it and the proxies above, and rings built from those views would
/// differ from one zone to the next.
pub fn eligible(me: NodeUuid, members: &[Peer]) -> Vec<NodeUuid> {
    let zone = members
        .iter()
        .find(|p| p.uuid == me)
        .map(|p| p.zone.as_str());
    let live: Vec<&Peer> = members
        .iter()
        .filter(|p| is_live(p))
        .filter(|p| zone.is_none_or(|z| p.zone == z))
        .collect();
    let tagged: Vec<NodeUuid> = live
        .iter()
        .filter(|p| p.groups.iter().any(|g| g == "kv"))
        .map(|p| p.uuid)
        .collect();
    if tagged.is_empty() {
        live.iter().map(|p| p.uuid).collect()
    } else {
        tagged
    }
}
