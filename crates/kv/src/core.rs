//! The KV protocol of one node as a state machine without IO: [`Core`].
//!
//! The core is what `crates/agent/src/kv.rs` does — coordinator, replication with
//! `write_acks`, `Superseded` answers, newest-of-owners reads with read repair, handoff and
//! anti-entropy with digests, paged listings judged complete with [`Ring::covered_by`], TTL
//! expiry, tombstones and their collection, CAS, hybrid-logical-clock stamps — with every
//! await turned into state kept between inputs:
//!
//! * **Inputs** ([`Core::handle_client`], [`Core::handle_request`], [`Core::handle_response`],
//!   [`Core::handle_unreachable`], [`Core::handle_members`], [`Core::handle_flushed`],
//!   [`Core::handle_tick`]) each take `now`: wall-clock milliseconds since the Unix epoch (the
//!   stamps, TTLs and forwarded deadlines are wall-clock values, as today). Randomness is the
//!   `seed` given to [`Core::new`].
//! * **Effects** ([`Effect`]) pile up until the driver takes them ([`Core::take_effects`]):
//!   send a [`Request`] to a node with a correlation id, answer a peer's request with a
//!   [`Response`], answer a client, flush the store, wake the core at a time, publish a change.
//!   Messages are the wire's own types, so the agent puts them on the existing TCP frames
//!   unchanged (`wire::encode_request(id, &request)`, `wire::encode_response(inbound.id, ..)`).
//! * **The store** is a [`Storage`] the core owns: reads and writes are synchronous and
//!   visible at once; durability is [`Effect::Flush`], answered by [`Core::handle_flushed`]. The
//!   core runs group commit itself: a copy counts as durable after a flush that started after
//!   the write, and every write waiting meanwhile shares the next flush.
//! * Every client request gets exactly one [`Effect::Answer`]: every request to a peer has a
//!   deadline ([`Config::peer_timeout_ms`], [`Config::forward_timeout_ms`]) kept by the core.
//!
//! # Where this differs from `kv.rs`, on purpose
//!
//! Each was found or confirmed with the simulator's checker ([`crate::sim`]), and each is
//! pinned by a test that fails when it is undone (named scenarios in `tests/sim.rs`, unit
//! tests in `core/tests.rs`; the report of the change lists which):
//!
//! 1. **Forwarding waits out the deadline before failing over.** `kv.rs` sends a forwarded
//!    write with `deadline = now + 6 s + 2 s` and tries the next owner after 6 s, so for 2 s
//!    (plus clock skew) two coordinators may both apply it: the late one re-applies a write
//!    already acknowledged through the other, over writes acknowledged since. Here the
//!    deadline is `now + forward_timeout` and the next owner is tried only after
//!    `forward_timeout + clock_slack`, when the first one refuses it for sure.
//! 2. **No stamp after the deadline.** A coordinator stamps a write (first stamp, or the one
//!    retry above a replica's newer version) only before the forwarded deadline (or, for a
//!    write from its own client, `forward_timeout` after it arrived); later it answers
//!    [`KvError::TooLate`]. `kv.rs` checks the deadline once, on arrival: a coordinator frozen
//!    in the middle of a write (during a CAS's read, or before its one stamp again above a
//!    replica's newer version) stamped it when it thawed, above everything written while it
//!    was away.
//! 3. **CAS is atomic on its coordinator and never retried.** `kv.rs` compares with the newest
//!    copy read from the owners, awaits, then stamps: two CAS on the same index through one
//!    node both succeeded. Here the comparison is made again against the local copy in the
//!    same step as the stamp (every write this node coordinates is in its local copy). A CAS
//!    write that meets a newer version at a replica fails ([`KvError::Overtaken`]) instead of
//!    being stamped again above a version it never compared with. A CAS read must hear from
//!    `owners - write_acks + 1` owners (read and write quorums intersect), not just one, and a
//!    CAS is coordinated only by the key's first owner (no failover to the next owner: two
//!    coordinators could each accept a CAS on the same index) — still its first owner when it
//!    stamps. After a ring change, a node coordinates no CAS on a key whose first owner under
//!    the previous ring was another node, for [`Config::cas_pause_ms`] (every CAS begun there
//!    has ended by then): it answers [`KvError::CasPaused`] with the time left, and the
//!    agent's client waits that long and tries again. For [`Config::joint_read_ms`] a CAS read
//!    needs a quorum of the owners under each recent ring (it sees what the previous owners
//!    acknowledged before handoff moved it). A node that saw only itself (its first ring, or
//!    alone while gossip finds the others) takes the new ring without itself as the previous
//!    one. This holds while nodes' ring views agree within the pause (gossip converges in
//!    about a second on a LAN); views split by a partition give each side its own
//!    coordinator, and CAS is then not exclusive. The cost: a CAS waits up to `cas_pause_ms`
//!    (11 s) when its key's coordinator just changed (a node joined or left), and with
//!    `write_acks: one` (whose read quorum is every owner) fails until `joint_read_ms` while
//!    an owner under the previous ring is down.
//! 4. **A write is not routed forever.** A route starts no attempt later than every owner
//!    tried in turn would have (`(owners - 1) × (forward_timeout + clock_slack) + clock_slack`
//!    after it began); an entry node stalled past that (frozen) answers
//!    [`KvError::Unavailable`] instead of sending the write on. In `kv.rs` the HTTP handler's
//!    future was dropped with its client; a core has no futures to drop, so the bound is
//!    explicit, and with (2) it bounds when any write can take effect.
//! 5. **A definite refusal after an uncertain attempt is not definite** (defensive). When a
//!    forwarded write timed out (the coordinator may have applied it) and the next coordinator
//!    refuses it, the client gets [`KvError::Unavailable`] ("may have been applied"), not the
//!    refusal: `kv.rs` answered "CAS failed" for a CAS the first coordinator had applied. With
//!    CAS confined to its first owner (3), no definite refusal follows a timeout today.
//! 6. **A replica never answers `Stored` for an entry it dropped.** `kv.rs` skips entries
//!    with a bad key or a stamp too far ahead and still answers `Stored`, so the coordinator
//!    counted a durable copy that did not exist. Here the answer is `Refused` (400) when any
//!    entry of the batch was dropped (the others are kept, and reported as failed copies).
//! 7. **A newer version at a replica counts as a copy only if this node stamped it.** `kv.rs`
//!    counts a replica's `Superseded(held)` as a durable copy whenever the coordinator holds
//!    `held` too, meaning "a later write through this node overwrote ours". But the
//!    coordinator may hold `held` because hand-off brought it: an older write stamped by a
//!    node whose clock runs ahead. The write was then acknowledged below a version that
//!    stands, and lost. Here the coordinator remembers the stamps it made per key (a minute,
//!    32 per key) and counts `held` only if it is one of them; otherwise it stamps again above.
//! 8. Smaller ones: answers to `Get` with an implausible entry (far-future stamp) count as no
//!    answer instead of reaching the client; entries of listing pages with bad keys or
//!    implausible versions are dropped; anti-entropy rounds ask every peer at once (one digest
//!    chunk in flight per peer) rather than one peer after the other, and start with a random
//!    jitter of up to 10% of the interval; they compare bucket hashes of the keys two nodes
//!    both own first ([`crate::buckets`], kept in memory write by write, `core/index.rs`) and
//!    digest only the keys of differing buckets, found with a key-only scan (no values), so
//!    an idle cluster in sync reads nothing; tombstones are collected from an index at
//!    wall-clock multiples of the collection interval (the same moment on every replica);
//!    expiry runs at each entry's exact expiry time rather than once a second; a client
//!    listing (`List`) is gathered round by round (one page per node per round, merged up to
//!    the smallest last key, as export pages are) instead of every page of one node at once;
//!    replication to a peer keeps at most [`Config::replication_in_flight`] batches in flight
//!    and batches the rest, instead of one task per batch.
//!
//! # What a driver does
//!
//! One task owns the core and selects over: client requests (an mpsc of (request, oneshot));
//! decoded KV request frames from incoming connections (each connection numbered, so
//! [`Inbound`] `{ conn, id }` finds its writer again); response frames of outgoing connections
//! (`handle_response(from, id, ..)`, or `handle_unreachable(id)` when a connection could not
//! be made); membership changes (the eligible uuids); flush completions; and one sleep until
//! the last [`Effect::Wake`]. After each input it performs the effects in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use opsbro_types::NodeUuid;

use crate::entry::{Entry, Hlc};
use crate::error::KvError;
use crate::key::validate_key;
use crate::ring::Ring;
use crate::rng::SeededRng;
use crate::storage::{Storage, StorageError};
use crate::wire::{self, Request, Response, WriteOp};
use crate::{MAX_TTL_MS, WriteAcks};

/// Milliseconds since the Unix epoch, as the node's clock reads them.
pub type Time = u64;

/// Entries per replication or handoff message.
pub const BATCH: usize = 1000;
/// Bytes of values per replication or handoff message.
pub const BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Digest exchanges per chunk while the peer keeps sending newer entries.
const DIGEST_ROUNDS: u32 = 64;
/// Entries waiting for replication to one peer before new ones fail at once.
const MAX_QUEUED: usize = 100_000;
/// How long this node remembers the stamps it made for a key (for `Superseded` answers).
const OWN_STAMPS_MS: u64 = 60_000;
/// Stamps remembered per key.
const OWN_STAMPS_PER_KEY: usize = 32;

/// Settings of a node's KV protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Copies of each key.
    pub replication_factor: usize,
    /// Durable copies before a write is acknowledged.
    pub write_acks: WriteAcks,
    /// How long tombstones are kept (ms).
    pub tombstone_ttl_ms: u64,
    /// Time between the end of an anti-entropy round and the next one (ms).
    pub anti_entropy_interval_ms: u64,
    /// First anti-entropy round after start (ms).
    pub first_sync_delay_ms: u64,
    /// Anti-entropy (handoff) after a ring change, once changes stop for this long (ms).
    pub handoff_delay_ms: u64,
    /// Time between tombstone collections (ms).
    pub tombstone_gc_interval_ms: u64,
    /// How long a node waits for another's answer (ms; digests and imports wait twice this).
    pub peer_timeout_ms: u64,
    /// How long a forwarded write may take; the next owner is tried after this plus
    /// [`Config::clock_slack_ms`] (ms).
    pub forward_timeout_ms: u64,
    /// Clock difference tolerated between nodes (ms).
    pub clock_slack_ms: u64,
    /// Longest blocking read (ms).
    pub max_wait_ms: u64,
    /// Most bytes a client listing gathers.
    pub max_list_bytes: usize,
    /// Replication batches in flight to one peer.
    pub replication_in_flight: usize,
    /// A flush that directly follows another waits this long (ms), so that the writes on
    /// their way join it (PostgreSQL's `commit_delay`); a flush after a quiet moment starts
    /// at once. 0: never wait.
    pub commit_delay_ms: u64,
}

impl Config {
    /// After a ring change, how long a node refuses to coordinate CAS: long enough for every
    /// CAS begun under the previous ring to be stamped (before its forwarding deadline, plus
    /// clock slack) and copied (a peer timeout), so two coordinators never overlap.
    pub fn cas_pause_ms(&self) -> u64 {
        self.forward_timeout_ms
            .saturating_add(self.clock_slack_ms)
            .saturating_add(self.peer_timeout_ms)
    }

    /// After a ring change, how long CAS reads also need a quorum of the owners under the
    /// previous ring (until handoff has brought its writes to the new owners).
    pub fn joint_read_ms(&self) -> u64 {
        self.cas_pause_ms()
            .saturating_add(self.anti_entropy_interval_ms.saturating_mul(2))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            replication_factor: 3,
            write_acks: WriteAcks::Quorum,
            tombstone_ttl_ms: 24 * 3600 * 1000,
            anti_entropy_interval_ms: 30_000,
            first_sync_delay_ms: 2_000,
            handoff_delay_ms: 500,
            tombstone_gc_interval_ms: 600_000,
            peer_timeout_ms: 3_000,
            forward_timeout_ms: 6_000,
            clock_slack_ms: 2_000,
            max_wait_ms: 600_000,
            max_list_bytes: 64 * 1024 * 1024,
            replication_in_flight: 8,
            commit_delay_ms: 1,
        }
    }
}

/// A client request's id, chosen by the driver; its [`Effect::Answer`] carries it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// Where a peer's request came from: the driver's number for the connection, and the request
/// id of the frame. [`Effect::Reply`] carries it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Inbound {
    /// The connection (numbered by the driver).
    pub conn: u64,
    /// The frame's request id.
    pub id: u64,
}

/// What a client (the HTTP API, expressions, the CLI) asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// The live value of a key (newest copy among its owners).
    Get {
        /// Key.
        key: String,
    },
    /// Put or delete, through the key's coordinator.
    Write {
        /// Key.
        key: String,
        /// What to do.
        op: WriteOp,
    },
    /// Wait until the key's version passes `index` (or the timeout).
    Wait {
        /// Key.
        key: String,
        /// Version to pass.
        index: u64,
        /// Longest wait (capped at [`Config::max_wait_ms`]).
        timeout_ms: u64,
    },
    /// Every live entry under a prefix, from every node.
    List {
        /// Prefix.
        prefix: String,
    },
    /// One page of the cluster's entries (tombstones and expired entries included: an export
    /// page), after `after`, about `max_bytes` at most (at least one entry).
    ListPage {
        /// Prefix.
        prefix: String,
        /// Start after this key (`""`: from the first).
        after: String,
        /// Most bytes of keys and values.
        max_bytes: usize,
    },
    /// Store exported entries on their owners, newest version wins (an import).
    Import {
        /// Entries (checked by the caller: key rules, plausible versions).
        entries: Vec<(String, Entry)>,
    },
}

/// What a client gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAnswer {
    /// `Get`, `Wait`: the live entry, if any.
    Entry(Option<Entry>),
    /// `Write`: acknowledged with this version (`modify_index`).
    Written {
        /// The version.
        index: u64,
    },
    /// `List`: live entries in key order.
    List(Vec<(String, Entry)>),
    /// `ListPage`: entries in key order, and the key to continue after (none: the last page).
    Page {
        /// Entries.
        entries: Vec<(String, Entry)>,
        /// Where the next page starts.
        next: Option<String>,
    },
    /// `Import`: one outcome per entry, in order.
    Imported(Vec<Imported>),
}

/// What became of one imported entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// Enough owners hold it (written now, or already there at that version).
    Stored,
    /// An owner holds a newer version of the key: left alone.
    Older,
    /// Not enough owners could store it.
    Failed(String),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send `request` to node `to` with correlation id `id`; feed its answer to
    /// [`Core::handle_response`] (or report [`Core::handle_unreachable`]). Timeouts are the
    /// core's: no answer is needed after it gave up.
    Send {
        /// The node.
        to: NodeUuid,
        /// Correlation id (unique on this node; the frame's request id).
        id: u64,
        /// The message.
        request: Request,
    },
    /// Answer a peer's request on the connection it came from.
    Reply {
        /// The request.
        to: Inbound,
        /// The answer.
        response: Response,
    },
    /// Answer a client.
    Answer {
        /// The request.
        id: ClientId,
        /// The answer.
        result: Result<ClientAnswer, KvError>,
    },
    /// Make every store write so far durable, then call [`Core::handle_flushed`] with `token`.
    /// At most one flush is asked for at a time.
    Flush {
        /// Echo this.
        token: u64,
    },
    /// Call [`Core::handle_tick`] at `at` (this replaces any earlier wake-up).
    Wake {
        /// When.
        at: Time,
    },
    /// A key took a new version here (the agent publishes a `kv` event).
    Changed {
        /// Key.
        key: String,
        /// Its version.
        index: u64,
        /// A delete.
        deleted: bool,
    },
}

/// Operation counters (`agent info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Reads answered.
    pub reads: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// Writes refused or failed.
    pub write_errors: u64,
    /// Entries taken from other nodes (replication, handoff, repair) because they were newer.
    pub received: u64,
    /// Entries refused (bad key, a version far ahead of our clock) and frames the driver
    /// reported with [`Core::record_rejected_frame`].
    pub rejected: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Key-only scans that built the shared-key index (start-up, ring changes).
    pub index_builds: u64,
    /// Anti-entropy comparisons with a co-owner that found every bucket equal.
    pub buckets_in_sync: u64,
    /// Buckets found differing by anti-entropy comparisons (their keys were then digested).
    pub buckets_differing: u64,
    /// Entries in the local store, tombstones included (a gauge kept write by write).
    pub local_entries: u64,
}

type OpId = u64;

/// The coordination (operation, attempt) waiting for one copy's outcome, if any.
type CopyWaiter = Option<(OpId, u32)>;

/// A merged listing page: entries, and the key the next page starts after.
type Page = (Vec<(String, Entry)>, Option<String>);

/// Who gets the outcome of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Client(ClientId),
    Peer(Inbound),
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

/// Why a request to a peer has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// It did not answer in time (it may have acted).
    Timeout,
    /// It could not be reached (the request was not delivered).
    Unreachable,
}

#[derive(Debug)]
enum ReadFor {
    Client(ClientId),
    Cas(OpId),
}

#[derive(Debug)]
struct ReadOp {
    key: String,
    target: ReadFor,
    answers: Vec<(NodeUuid, Option<Entry>)>,
    waiting: usize,
}

#[derive(Debug)]
struct RouteOp {
    client: ClientId,
    key: String,
    op: WriteOp,
    owners: Vec<NodeUuid>,
    next: usize,
    last: String,
    /// A coordinator tried earlier may have applied the write.
    uncertain: bool,
    /// No attempt starts after this (this node's clock): every owner tried in turn, each for
    /// the forwarding timeout and the slack, fits before it. A node stalled longer (frozen)
    /// gives up instead of applying a write its client has stopped waiting for.
    last_start: Time,
}

#[derive(Debug)]
struct CoordOp {
    reply: Reply,
    key: String,
    op: WriteOp,
    owners: Vec<NodeUuid>,
    /// No stamp after this (this node's clock).
    deadline: Time,
    uncertain: bool,
    create_index: Option<u64>,
    attempt: u32,
    index: u64,
    needed: usize,
    expected: usize,
    acks: usize,
    answers: usize,
    newer: u64,
    retried: bool,
}

#[derive(Debug)]
struct NodePage {
    entries: Vec<(String, Entry)>,
    last_if_more: Option<String>,
}

#[derive(Debug)]
struct ListOp {
    client: ClientId,
    prefix: String,
    after: String,
    max_bytes: usize,
    /// A whole listing (round after round), not one page.
    full: bool,
    ring: Arc<Ring>,
    pages: Vec<NodePage>,
    answered: Vec<NodeUuid>,
    failures: Vec<String>,
    waiting: usize,
    gathered: Vec<(String, Entry)>,
    bytes: usize,
}

#[derive(Debug)]
struct WaitRouteOp {
    client: ClientId,
    key: String,
    index: u64,
    timeout_ms: u64,
    owners: Vec<NodeUuid>,
    next: usize,
}

#[derive(Debug)]
struct ImportOp {
    client: ClientId,
    entries: Vec<(String, Entry)>,
    owners: Vec<usize>,
    durable: Vec<usize>,
    newer: Vec<u64>,
    problems: Vec<String>,
    waiting: usize,
}

#[derive(Debug)]
enum Op {
    Read(ReadOp),
    Route(RouteOp),
    Coordinate(CoordOp),
    List(ListOp),
    WaitRoute(WaitRouteOp),
    Import(ImportOp),
}

/// Why a request to a peer was sent.
#[derive(Debug)]
enum Purpose {
    Read(OpId),
    Forward(OpId),
    Replicate(Vec<(String, u64, CopyWaiter)>),
    Repair,
    List(OpId),
    Wait(OpId),
    Import(OpId, Vec<usize>),
    Buckets { round: u64 },
    Digest { round: u64 },
    Handoff,
}

#[derive(Debug)]
struct Pending {
    to: NodeUuid,
    deadline: Time,
    purpose: Purpose,
}

#[derive(Debug)]
enum FlushWaiter {
    Copy(OpId, u32),
    Replicate(Inbound, Vec<(String, u64)>),
    Import(OpId, Vec<usize>, BTreeMap<String, u64>),
}

#[derive(Debug, Default)]
struct PeerQueue {
    items: VecDeque<(String, Entry, CopyWaiter)>,
    in_flight: usize,
}

#[derive(Debug)]
struct Waiter {
    key: String,
    index: u64,
    deadline: Time,
    reply: Reply,
}

#[derive(Debug)]
struct PeerSync {
    chunks: Vec<Vec<(String, u64)>>,
    chunk: usize,
    rounds: u32,
}

#[derive(Debug)]
struct SyncRound {
    round: u64,
    /// Co-owners asked to compare bucket hashes that have not answered yet.
    comparing: BTreeSet<NodeUuid>,
    /// Co-owners whose buckets differ: those buckets (None: every bucket, the co-owner could
    /// not compare).
    differing: BTreeMap<NodeUuid, Option<BTreeSet<u32>>>,
    /// Digest exchanges in progress, once every comparison is in.
    peers: BTreeMap<NodeUuid, PeerSync>,
    /// Keys to hand off offered in this round: their version, and how many owners have yet to
    /// say they hold it (then the key is no longer offered).
    offered: BTreeMap<String, (u64, usize)>,
}

/// A ring this node used until `at`.
#[derive(Debug)]
struct RingChange {
    at: Time,
    previous: Arc<Ring>,
}

/// What a merge of entries did.
#[derive(Debug, Default)]
struct Merged {
    /// Entries taken (they were newer than ours).
    taken: usize,
    /// Entries refused (bad key, or a version too far ahead of our clock).
    refused: usize,
    /// Keys for which we hold a strictly newer version than the one offered (with ours).
    superseded: Vec<(String, Entry)>,
}

/// The KV protocol of one node. See the [module docs](self).
#[derive(Debug)]
pub struct Core<S> {
    me: NodeUuid,
    cfg: Config,
    store: S,
    ring: Arc<Ring>,
    hlc: Hlc,
    rng: SeededRng,
    now: Time,
    /// Expiry, tombstone and shared-key indexes (`core/index.rs`).
    indexes: index::Indexes,
    ops: BTreeMap<OpId, Op>,
    next_op: OpId,
    pending: BTreeMap<u64, Pending>,
    next_id: u64,
    timeouts: BTreeSet<(Time, u64)>,
    queues: BTreeMap<NodeUuid, PeerQueue>,
    /// Copy outcomes known at once (a full queue), handled after the current step.
    deferred: VecDeque<(OpId, u32, Copy)>,
    waiters: BTreeMap<u64, Waiter>,
    waiters_by_key: BTreeMap<String, BTreeSet<u64>>,
    wait_deadlines: BTreeSet<(Time, u64)>,
    next_waiter: u64,
    flushing: Option<(u64, Vec<FlushWaiter>)>,
    /// Waiters of the next flush (Some: a flush is wanted).
    flush_next: Option<Vec<FlushWaiter>>,
    /// When the next flush starts, while it waits out [`Config::commit_delay_ms`].
    flush_at: Option<Time>,
    next_token: u64,
    sync: Option<SyncRound>,
    sync_rounds: u64,
    next_sync: Time,
    next_gc: Time,
    /// Stamps this node made recently, per key, with when: a replica's newer version counts
    /// as a copy of a write only when it is one of these (see `copy_answer`).
    own_stamps: BTreeMap<String, VecDeque<(u64, Time)>>,
    next_prune: Time,
    /// Recent ring changes (within [`Config::joint_read_ms`]): CAS pauses after one and reads
    /// a quorum under each previous ring too.
    ring_changes: Vec<RingChange>,
    announced: Option<Time>,
    effects: Vec<Effect>,
    stats: Stats,
}

impl<S: Storage> Core<S> {
    /// The node `me` over `store` at `now`. Scans the store once: the clock continues above
    /// every stamp it holds, and entries with a TTL are indexed for expiry. The ring is empty
    /// until [`Core::handle_members`].
    pub fn new(
        me: NodeUuid,
        cfg: Config,
        store: S,
        now: Time,
        seed: u64,
    ) -> Result<Core<S>, StorageError> {
        let mut rng = SeededRng::new(seed);
        let mut hlc = Hlc::default();
        // One key-only scan: the clock, the expiry and tombstone indexes. The shared-key index
        // needs a ring; it is built when the first one comes.
        let indexes = index::build_indexes(
            &store,
            &Ring::default(),
            cfg.replication_factor,
            me,
            |_, m| {
                hlc.observe(m.index, now);
            },
        )?;
        // Correlation ids start at a random point: a late answer meant for a previous run of
        // this node cannot be taken for an answer to this one.
        let next_id = (rng.next_u64() >> 16) | 1;
        let mut core = Core {
            me,
            store,
            ring: Arc::new(Ring::default()),
            hlc,
            now,
            indexes,
            ops: BTreeMap::new(),
            next_op: 1,
            pending: BTreeMap::new(),
            next_id,
            timeouts: BTreeSet::new(),
            queues: BTreeMap::new(),
            deferred: VecDeque::new(),
            waiters: BTreeMap::new(),
            waiters_by_key: BTreeMap::new(),
            wait_deadlines: BTreeSet::new(),
            next_waiter: 1,
            flushing: None,
            flush_next: None,
            flush_at: None,
            next_token: 1,
            sync: None,
            sync_rounds: 0,
            next_sync: now.saturating_add(cfg.first_sync_delay_ms),
            next_gc: next_boundary(now, cfg.tombstone_gc_interval_ms),
            own_stamps: BTreeMap::new(),
            next_prune: Time::MAX,
            ring_changes: Vec::new(),
            announced: None,
            effects: Vec::new(),
            stats: Stats::default(),
            rng,
            cfg,
        };
        core.stats.local_entries = core.indexes.entries as u64;
        core.announce();
        Ok(core)
    }

    // ----- accessors -----

    /// This node.
    pub fn me(&self) -> NodeUuid {
        self.me
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The ring as this node sees it.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The owners of `key`, coordinator first (`kv locate`).
    pub fn owners(&self, key: &str) -> Vec<NodeUuid> {
        self.ring.owners(key, self.cfg.replication_factor)
    }

    /// How long CAS on `key` stays paused after a recent ring change (see
    /// [`Config::cas_pause_ms`]), if it is: a change under whose previous ring another node was
    /// the key's first owner (and so may still be coordinating a CAS on it). A change that left
    /// this node first owner of the key does not pause it: its own CAS are serialised here.
    pub fn cas_pause_left(&self, key: &str, now: Time) -> Option<u64> {
        let pause = self.cfg.cas_pause_ms();
        self.ring_changes
            .iter()
            .filter(|c| now < c.at.saturating_add(pause))
            .filter(|c| {
                c.previous
                    .owners(key, 1)
                    .first()
                    .is_some_and(|first| *first != self.me)
            })
            .map(|c| c.at.saturating_add(pause) - now)
            .max()
    }

    /// The owner sets a CAS read must each hear a quorum of: the key's owners now, and under
    /// every ring used within [`Config::joint_read_ms`].
    fn cas_owner_sets(&self, key: &str) -> Vec<Vec<NodeUuid>> {
        let window = self.cfg.joint_read_ms();
        let mut sets = vec![self.owners(key)];
        for c in &self.ring_changes {
            if self.now < c.at.saturating_add(window) {
                let set = c.previous.owners(key, self.cfg.replication_factor);
                if !set.is_empty() && !sets.contains(&set) {
                    sets.push(set);
                }
            }
        }
        sets
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to change it outside the protocol (tests, a restore). A change of entries
    /// made this way bypasses the core's indexes: call [`Core::rebuild_indexes`] after it.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Give the store back (the node stops).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Operations in progress (client requests, coordinations), for status pages and tests.
    pub fn ops_in_progress(&self) -> usize {
        self.ops.len() + self.waiters.len()
    }

    /// Requests to peers waiting for an answer.
    pub fn requests_in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The earliest time [`Core::handle_tick`] has work (the last [`Effect::Wake`]).
    pub fn next_deadline(&self) -> Option<Time> {
        [
            self.timeouts.first().map(|(t, _)| *t),
            self.wait_deadlines.first().map(|(t, _)| *t),
            self.flush_at,
            self.indexes.expiring.first().map(|(t, _)| *t),
            Some(self.next_sync),
            Some(self.next_gc),
            Some(self.next_prune),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Take the effects produced so far, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Move the effects produced so far to `out`.
    pub fn drain_effects_into(&mut self, out: &mut Vec<Effect>) {
        out.append(&mut self.effects);
    }

    /// Count a frame the driver refused (undecodable, wrong kind).
    pub fn record_rejected_frame(&mut self) {
        self.stats.rejected += 1;
    }

    // ----- inputs -----

    /// A client's request; its answer comes as [`Effect::Answer`] with `id`.
    pub fn handle_client(&mut self, now: Time, id: ClientId, request: ClientRequest) {
        self.now = now;
        match request {
            ClientRequest::Get { key } => match validate_key(&key) {
                Ok(()) => self.start_read(key, ReadFor::Client(id)),
                Err(e) => self.answer(id, Err(e.into())),
            },
            ClientRequest::Write { key, op } => self.start_write(id, key, op),
            ClientRequest::Wait {
                key,
                index,
                timeout_ms,
            } => match validate_key(&key) {
                Ok(()) => self.start_wait(id, key, index, timeout_ms),
                Err(e) => self.answer(id, Err(e.into())),
            },
            ClientRequest::List { prefix } => {
                self.start_list(id, prefix, String::new(), wire::PAGE_BYTES, true);
            }
            ClientRequest::ListPage {
                prefix,
                after,
                max_bytes,
            } => self.start_list(id, prefix, after, max_bytes.max(1), false),
            ClientRequest::Import { entries } => self.start_import(id, entries),
        }
        self.finish_step();
    }

    /// A request from another node; its answer comes as [`Effect::Reply`] to `from`.
    pub fn handle_request(&mut self, now: Time, from: Inbound, request: Request) {
        self.now = now;
        self.serve(from, request);
        self.finish_step();
    }

    /// The answer of node `from` to our request `id`. Answers to requests the core no longer
    /// waits for (timed out) are ignored, as are answers from another node than the one asked.
    pub fn handle_response(&mut self, now: Time, from: NodeUuid, id: u64, response: Response) {
        self.now = now;
        if self.pending.get(&id).is_some_and(|p| p.to == from)
            && let Some(p) = self.pending.remove(&id)
        {
            self.timeouts.remove(&(p.deadline, id));
            self.dispatch(p.to, p.purpose, Ok(response));
        }
        self.finish_step();
    }

    /// Our request `id` could not be delivered (no connection could be made): the core stops
    /// waiting for it at once. (A connection that broke after the request was written is not
    /// this: the peer may have acted on it; let the core's timeout run.)
    pub fn handle_unreachable(&mut self, now: Time, id: u64) {
        self.now = now;
        if let Some(p) = self.pending.remove(&id) {
            self.timeouts.remove(&(p.deadline, id));
            self.dispatch(p.to, p.purpose, Err(Failure::Unreachable));
        }
        self.finish_step();
    }

    /// The nodes eligible to store keys (the driver applies the rule: live members in group
    /// `kv`, or every live member when none is). Rebuilds the ring when the set changed and
    /// schedules a handoff round; true when it changed.
    pub fn handle_members(&mut self, now: Time, nodes: &[NodeUuid]) -> bool {
        self.now = now;
        let mut sorted = nodes.to_vec();
        sorted.sort();
        sorted.dedup();
        let changed = self.ring.nodes() != sorted.as_slice();
        if changed {
            // A node that saw only itself (its first ring, or alone while gossip finds the
            // others) shared no ring with anyone: what the others used is the new ring without
            // it (it was down, or new). No one else: nothing to wait for.
            let alone = self.ring.nodes().iter().all(|n| *n == self.me);
            let previous = if alone {
                let others: Vec<NodeUuid> =
                    sorted.iter().copied().filter(|n| *n != self.me).collect();
                Arc::new(Ring::new(&others))
            } else {
                self.ring.clone()
            };
            let window = self.cfg.joint_read_ms();
            self.ring_changes
                .retain(|c| c.at.saturating_add(window) > now);
            self.ring_changes.push(RingChange { at: now, previous });
            self.ring = Arc::new(Ring::new(&sorted));
            self.ring_changed_for_indexes();
            // Let a burst of changes settle, then hand data off.
            self.next_sync = now.saturating_add(self.cfg.handoff_delay_ms);
        }
        self.finish_step();
        changed
    }

    /// The flush `token` finished.
    pub fn handle_flushed(&mut self, now: Time, token: u64, result: Result<(), StorageError>) {
        self.now = now;
        if self.flushing.as_ref().is_some_and(|(t, _)| *t == token)
            && let Some((_, waiters)) = self.flushing.take()
        {
            self.stats.flushes += 1;
            for w in waiters {
                self.flushed(w, result.clone());
            }
            // Writes arrived while it ran: more are on their way; let them join the next.
            if self.flush_next.is_some() && self.cfg.commit_delay_ms > 0 {
                self.flush_at = Some(now.saturating_add(self.cfg.commit_delay_ms));
            } else {
                self.start_flush();
            }
        }
        self.finish_step();
    }

    /// Time passed: timeouts, blocking reads, expiry, anti-entropy, tombstone collection.
    pub fn handle_tick(&mut self, now: Time) {
        self.now = now;
        while let Some(&(at, id)) = self.timeouts.first() {
            if at > now {
                break;
            }
            self.timeouts.pop_first();
            if let Some(p) = self.pending.remove(&id) {
                self.dispatch(p.to, p.purpose, Err(Failure::Timeout));
            }
            self.run_deferred();
        }
        while let Some(&(at, w)) = self.wait_deadlines.first() {
            if at > now {
                break;
            }
            self.wait_deadlines.pop_first();
            if let Some(waiter) = self.remove_waiter(w) {
                let current = self.local_get(&waiter.key).ok().flatten();
                self.answer_waiter(waiter.reply, current);
            }
        }
        if self.flush_at.is_some_and(|at| at <= now) {
            self.start_flush();
        }
        self.expire();
        if now >= self.next_sync {
            self.start_sync();
        }
        if now >= self.next_gc {
            self.collect_tombstones();
            self.next_gc = next_boundary(now, self.cfg.tombstone_gc_interval_ms);
        }
        if now >= self.next_prune {
            let limit = now.saturating_sub(OWN_STAMPS_MS);
            self.own_stamps.retain(|_, stamps| {
                while stamps.front().is_some_and(|(_, at)| *at < limit) {
                    stamps.pop_front();
                }
                !stamps.is_empty()
            });
            self.next_prune = if self.own_stamps.is_empty() {
                Time::MAX
            } else {
                now.saturating_add(OWN_STAMPS_MS / 4)
            };
        }
        self.finish_step();
    }

    // ----- plumbing -----

    fn finish_step(&mut self) {
        self.run_deferred();
        self.announce();
    }

    fn run_deferred(&mut self) {
        while let Some((op, attempt, copy)) = self.deferred.pop_front() {
            self.copy_answer(op, attempt, copy);
        }
    }

    fn announce(&mut self) {
        let next = self.next_deadline();
        if next != self.announced {
            self.announced = next;
            if let Some(at) = next {
                self.effects.push(Effect::Wake { at });
            }
        }
    }

    fn new_op(&mut self, op: Op) -> OpId {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(id, op);
        id
    }

    fn send(&mut self, to: NodeUuid, request: Request, timeout_ms: u64, purpose: Purpose) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let deadline = self.now.saturating_add(timeout_ms);
        self.pending.insert(
            id,
            Pending {
                to,
                deadline,
                purpose,
            },
        );
        self.timeouts.insert((deadline, id));
        self.effects.push(Effect::Send { to, id, request });
    }

    fn reply(&mut self, to: Inbound, response: Response) {
        self.effects.push(Effect::Reply { to, response });
    }

    fn refuse(&mut self, to: Inbound, e: &KvError) {
        let (code, message) = e.refusal();
        self.reply(to, Response::Refused { code, message });
    }

    fn answer(&mut self, id: ClientId, result: Result<ClientAnswer, KvError>) {
        self.effects.push(Effect::Answer { id, result });
    }

    fn answer_write(&mut self, id: ClientId, result: Result<u64, KvError>) {
        match &result {
            Ok(_) => self.stats.writes += 1,
            Err(_) => self.stats.write_errors += 1,
        }
        self.answer(id, result.map(|index| ClientAnswer::Written { index }));
    }

    fn local_get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        self.store.get(key)
    }

    /// Keep the entries that are newer than ours (not yet durable: ask for a flush). Entries
    /// with a bad key or a version far ahead of our clock are refused and counted; keys for
    /// which we hold a newer version are reported in `superseded`.
    fn merge_local(&mut self, entries: &[(String, Entry)]) -> Result<Merged, StorageError> {
        let mut merged = Merged::default();
        let now = self.now;
        for (key, e) in entries {
            if validate_key(key).is_err() || !e.is_plausible(now) {
                self.stats.rejected += 1;
                merged.refused += 1;
                continue;
            }
            let current = self.local_get(key)?;
            let old = current.as_ref().map(Entry::meta);
            let newer = match current {
                Some(old) if old.is_newer_than(e) => {
                    merged.superseded.push((key.clone(), old));
                    false
                }
                Some(old) => e.is_newer_than(&old),
                None => true,
            };
            if newer {
                self.store_put(key, e, old)?;
                merged.taken += 1;
                self.effects.push(Effect::Changed {
                    key: key.clone(),
                    index: e.index,
                    deleted: e.deleted,
                });
                self.wake_waiters(key);
            }
            self.hlc.observe(e.index, now);
        }
        Ok(merged)
    }

    // ----- group commit -----

    fn request_flush(&mut self, waiter: Option<FlushWaiter>) {
        self.flush_next.get_or_insert_with(Vec::new).extend(waiter);
        if self.flushing.is_none() && self.flush_at.is_none() {
            self.start_flush();
        }
    }

    fn start_flush(&mut self) {
        self.flush_at = None;
        if let Some(waiters) = self.flush_next.take() {
            let token = self.next_token;
            self.next_token += 1;
            self.flushing = Some((token, waiters));
            self.effects.push(Effect::Flush { token });
        }
    }

    fn flushed(&mut self, w: FlushWaiter, result: Result<(), StorageError>) {
        match w {
            FlushWaiter::Copy(op, attempt) => {
                let copy = if result.is_ok() {
                    Copy::Durable
                } else {
                    Copy::Failed
                };
                self.copy_answer(op, attempt, copy);
            }
            FlushWaiter::Replicate(to, superseded) => match result {
                Ok(()) if superseded.is_empty() => self.reply(to, Response::Stored),
                Ok(()) => self.reply(to, Response::Superseded(superseded)),
                Err(e) => self.refuse(to, &KvError::Storage(e)),
            },
            FlushWaiter::Import(op, indexes, held) => {
                let answer = result.map(|()| held).map_err(|e| e.to_string());
                self.import_answer(op, &indexes, answer);
            }
        }
    }

    // ----- serving peers -----

    fn serve(&mut self, from: Inbound, request: Request) {
        match request {
            Request::Write {
                to,
                key,
                op,
                deadline_ms,
            } => {
                if to != self.me {
                    return self.refuse(from, &KvError::Misaddressed);
                }
                if let Err(e) = validate_key(&key) {
                    return self.refuse(from, &e.into());
                }
                if deadline_ms != 0 && self.now > deadline_ms {
                    // The sender gave up (and moved on to the next owner): applying it now
                    // could override writes acknowledged since.
                    return self.refuse(from, &KvError::LateWrite);
                }
                if ttl_of(&op) > MAX_TTL_MS {
                    return self.refuse(from, &KvError::TtlTooLong);
                }
                let deadline = if deadline_ms == 0 {
                    self.now.saturating_add(self.cfg.forward_timeout_ms)
                } else {
                    deadline_ms
                };
                self.start_coordinate(Reply::Peer(from), key, op, deadline, false);
            }
            Request::Replicate { entries } => match self.merge_local(&entries) {
                Ok(m) if m.refused > 0 => {
                    // Never answer `Stored` for an entry that was not kept: the sender would
                    // count a copy that does not exist.
                    self.stats.received += m.taken as u64;
                    self.request_flush(None);
                    let e = KvError::Refused {
                        code: 400,
                        message: format!(
                            "{} of {} entries refused: a bad key, or a version too far ahead of this node's clock",
                            m.refused,
                            entries.len()
                        ),
                    };
                    self.refuse(from, &e);
                }
                Ok(m) => {
                    self.stats.received += m.taken as u64;
                    let superseded = m
                        .superseded
                        .into_iter()
                        .map(|(k, e)| (k, e.index))
                        .collect();
                    self.request_flush(Some(FlushWaiter::Replicate(from, superseded)));
                }
                Err(e) => self.refuse(from, &KvError::Storage(e)),
            },
            Request::Get { key } => match self.local_get(&key) {
                Ok(e) => self.reply(from, Response::Entry(e)),
                Err(e) => self.refuse(from, &KvError::Storage(e)),
            },
            Request::List { prefix, after } => {
                match self.store.scan_page(&prefix, &after, wire::PAGE_BYTES) {
                    Ok((entries, more)) => self.reply(from, Response::Entries { entries, more }),
                    Err(e) => self.refuse(from, &KvError::Storage(e)),
                }
            }
            Request::Digest { items } => {
                let mut need = Vec::new();
                let mut newer = Vec::new();
                // The answer stays under a frame: newer entries past PAGE_BYTES wait for the
                // asker's next digest (it asks again while it gets some).
                let mut bytes = 0usize;
                for (k, index) in items {
                    match self.local_get(&k) {
                        Ok(Some(mine)) if mine.index > index => {
                            let size = mine.value.len() + k.len();
                            if bytes + size <= wire::PAGE_BYTES || newer.is_empty() {
                                bytes += size;
                                newer.push((k, mine));
                            }
                        }
                        Ok(Some(mine)) if mine.index == index => {}
                        Ok(_) => need.push(k),
                        Err(e) => return self.refuse(from, &KvError::Storage(e)),
                    }
                }
                self.reply(from, Response::Digest { need, newer });
            }
            Request::Wait {
                key,
                index,
                timeout_ms,
            } => self.local_wait(Reply::Peer(from), key, index, timeout_ms),
            Request::Buckets {
                from: asker,
                scheme,
                hashes,
            } => match self.compare_buckets(asker, scheme, &hashes) {
                Ok(differ) => self.reply(from, Response::Buckets { differ }),
                Err(e) => self.refuse(from, &KvError::Storage(e)),
            },
        }
    }

    // ----- answers from peers -----

    fn dispatch(&mut self, from: NodeUuid, purpose: Purpose, outcome: Result<Response, Failure>) {
        match purpose {
            Purpose::Read(op) => self.read_answer(op, from, outcome),
            Purpose::Forward(op) => self.forward_answer(op, from, outcome),
            Purpose::Replicate(items) => self.replicate_answer(from, items, outcome),
            Purpose::Repair | Purpose::Handoff => {}
            Purpose::List(op) => self.list_answer(op, from, outcome),
            Purpose::Wait(op) => self.wait_answer(op, outcome),
            Purpose::Import(op, indexes) => {
                let answer = match outcome {
                    Ok(Response::Stored) => Ok(BTreeMap::new()),
                    Ok(Response::Superseded(held)) => Ok(held.into_iter().collect()),
                    Ok(Response::Refused { message, .. }) => Err(format!("{from}: {message}")),
                    Ok(other) => Err(format!("{from}: unexpected {other:?}")),
                    Err(f) => Err(format!("{from}: {}", failure_text(f))),
                };
                self.import_answer(op, &indexes, answer);
            }
            Purpose::Buckets { round } => self.buckets_answer(round, from, outcome),
            Purpose::Digest { round } => self.digest_answer(round, from, outcome),
        }
    }
}

/// The first multiple of `interval` after `now`: tombstones are collected at the same wall-clock
/// moments on every node, so replicas drop the same ones together and their bucket hashes stay
/// equal.
fn next_boundary(now: Time, interval: u64) -> Time {
    let interval = interval.max(1);
    (now / interval).saturating_add(1).saturating_mul(interval)
}

fn cas_of(op: &WriteOp) -> Option<u64> {
    match op {
        WriteOp::Put { cas, .. } | WriteOp::Delete { cas } => *cas,
    }
}

fn ttl_of(op: &WriteOp) -> u64 {
    match op {
        WriteOp::Put { ttl_ms, .. } => *ttl_ms,
        WriteOp::Delete { .. } => 0,
    }
}

fn failure_text(f: Failure) -> &'static str {
    match f {
        Failure::Timeout => "no answer in time",
        Failure::Unreachable => "unreachable",
    }
}

/// After an attempt that may have applied the write, a definite refusal is not definite.
fn uncertain_if(uncertain: bool, e: KvError) -> KvError {
    if uncertain && e.write_effect() == crate::error::WriteEffect::None {
        KvError::Unavailable(format!(
            "a coordinator did not answer in time, and the next one refused the write ({e}): it may have been applied"
        ))
    } else {
        e
    }
}

pub mod index;
mod list;
mod read;
mod upkeep;
mod write;

#[cfg(test)]
mod tests;
