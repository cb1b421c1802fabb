//! A deterministic simulator for the KV [`Core`]: many nodes in one process, virtual time, one
//! seeded generator, a network with delay, loss and partitions, nodes that crash (keeping
//! only what their store flushed) and restart, nodes that freeze (their inbox fills, their
//! timers go stale) and thaw, clocks skewed per node, and the ring changed at will.
//!
//! Scenarios are data ([`Scenario`]: timed [`Action`]s); running one records every client
//! operation (invoked, completed, answer) and, at each [`Action::Check`] (and at the end),
//! heals everything, lets the cluster settle, reads every key through every node and runs the
//! [`check`]er over the history. The same seed always gives the same run.

pub mod check;
pub mod workload;

use std::collections::{BTreeMap, VecDeque};

use opsbro_types::NodeUuid;

use crate::core::{ClientAnswer, ClientId, ClientRequest, Config, Core, Effect, Inbound, Time};
use crate::error::KvError;
use crate::rng::SeededRng;
use crate::storage::MemStorage;
use crate::wire::{Request, Response, WriteOp};

pub use check::{CheckOptions, Rule, Violation};

/// Virtual time starts here (wall-clock-like, so stamps and expiry times look real).
pub const START: Time = 1_700_000_000_000;

/// A simulated cluster's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes (all on the ring at the start).
    pub nodes: usize,
    /// Every node's KV settings.
    pub core: Config,
    /// One-way message delay range (ms, uniform).
    pub delay_ms: (u64, u64),
    /// Flush duration range (ms, uniform).
    pub disk_ms: (u64, u64),
    /// Probability that a message is lost (a broken connection).
    pub loss: f64,
    /// Each node's clock is off by up to this much, either way (ms).
    pub max_skew_ms: u64,
    /// A client gives up on an answer after this long (ms): the operation's outcome is then
    /// unknown.
    pub client_timeout_ms: u64,
    /// How long a check lets the healed cluster converge before reading (ms); None: long
    /// enough for every write in flight to end and two anti-entropy rounds to run.
    pub settle_ms: Option<u64>,
    /// Node uuids are derived from this and the node's index (so a scenario knows which node
    /// coordinates which key: [`SimConfig::owners`]).
    pub uuid_salt: u64,
    /// Clocks set off on purpose: (node, offset in ms), beyond `max_skew_ms` (which the
    /// checker assumes as the bound).
    pub clock_offsets_ms: Vec<(usize, i64)>,
    /// Chance that a message to a crashed node is refused at once (its host is up, the agent
    /// is not); otherwise it goes unanswered (the host is gone).
    pub down_refuses: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            core: Config {
                anti_entropy_interval_ms: 5_000,
                first_sync_delay_ms: 1_000,
                tombstone_ttl_ms: 120_000,
                tombstone_gc_interval_ms: 15_000,
                ..Config::default()
            },
            delay_ms: (1, 10),
            disk_ms: (1, 5),
            loss: 0.0,
            max_skew_ms: 200,
            client_timeout_ms: 30_000,
            settle_ms: None,
            uuid_salt: 0,
            clock_offsets_ms: Vec::new(),
            down_refuses: 0.5,
        }
    }
}

impl SimConfig {
    /// Latest time after its invocation a write can be stamped: every owner tried in turn,
    /// each with the forwarding deadline, plus clock skew both ways.
    pub fn write_horizon_ms(&self) -> u64 {
        let c = &self.core;
        let attempt = c.forward_timeout_ms + c.clock_slack_ms;
        (c.replication_factor.max(1) as u64) * attempt
            + c.forward_timeout_ms
            + 2 * self.max_skew_ms
            + 1_000
    }

    /// The uuid of node `i`.
    pub fn uuid(&self, i: usize) -> NodeUuid {
        let mut rng =
            SeededRng::new(self.uuid_salt ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
        b[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
        NodeUuid::from_bytes(b)
    }

    /// The owners of `key` (node indexes, coordinator first) when every node is on the ring.
    pub fn owners(&self, key: &str) -> Vec<usize> {
        let uuids: Vec<NodeUuid> = (0..self.nodes).map(|i| self.uuid(i)).collect();
        crate::ring::Ring::new(&uuids)
            .owners(key, self.core.replication_factor)
            .iter()
            .filter_map(|u| uuids.iter().position(|x| x == u))
            .collect()
    }

    /// The first key `prefix0`, `prefix1`, ... that node `node` coordinates.
    pub fn key_coordinated_by(&self, node: usize, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| self.owners(k).first() == Some(&node))
            .unwrap_or_default()
    }

    /// Settling time of a check.
    pub fn settle(&self) -> u64 {
        self.settle_ms.unwrap_or_else(|| {
            self.write_horizon_ms()
                .max(self.client_timeout_ms)
                .saturating_add(3 * self.core.anti_entropy_interval_ms)
                .saturating_add(self.core.first_sync_delay_ms)
        })
    }
}

/// What a client's CAS expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The key is absent (`cas = 0`).
    Absent,
    /// The version this client saw last for the key (a read's or a write's answer); absent
    /// when it saw none.
    LastSeen,
    /// This version.
    Index(u64),
}

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A client puts a fresh value (unique in the run) through `node`.
    Put {
        /// Entry node.
        node: usize,
        /// Key.
        key: String,
        /// Time to live (0: none).
        ttl_ms: u64,
    },
    /// A client deletes through `node`.
    Delete {
        /// Entry node.
        node: usize,
        /// Key.
        key: String,
    },
    /// A client puts a fresh value if the key is at the expected version.
    Cas {
        /// Entry node.
        node: usize,
        /// Key.
        key: String,
        /// Expected version.
        expect: Expect,
    },
    /// A client reads through `node`.
    Get {
        /// Entry node.
        node: usize,
        /// Key.
        key: String,
    },
    /// A client lists a prefix through `node`.
    List {
        /// Entry node.
        node: usize,
        /// Prefix.
        prefix: String,
    },
    /// Split the nodes into groups that cannot talk to each other (others stay in group 0).
    Partition(Vec<Vec<usize>>),
    /// Cut the link between two nodes (both ways; each still talks to the others).
    Cut(usize, usize),
    /// Remove every partition and mend every cut link.
    Heal,
    /// The node stops at once; its store keeps what was flushed.
    Crash(usize),
    /// A crashed node starts again from its store.
    Restart(usize),
    /// The node stops running: messages wait in its inbox, timers go stale.
    Freeze(usize),
    /// A frozen node runs again and reads its inbox.
    Thaw(usize),
    /// Change the loss rate.
    Loss(f64),
    /// The ring every node uses from now on (as gossip would converge to).
    Ring(Vec<usize>),
    /// The ring one node uses (membership views that differ, as in a partition gossip has
    /// noticed).
    RingOf {
        /// The node.
        node: usize,
        /// Its ring.
        nodes: Vec<usize>,
    },
    /// Heal everything, settle, read every key through every node, check the history.
    Check,
}

/// A scenario: settings, and actions at times (ms from the start).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name (for reports).
    pub name: String,
    /// The cluster.
    pub config: SimConfig,
    /// Timed actions (sorted by time when run; equal times keep their order).
    pub actions: Vec<(u64, Action)>,
    /// What the checker asserts.
    pub check: CheckOptions,
}

impl Scenario {
    /// An empty scenario.
    pub fn new(name: &str, config: SimConfig) -> Scenario {
        Scenario {
            name: name.to_owned(),
            config,
            actions: Vec::new(),
            check: CheckOptions::default(),
        }
    }

    /// Add an action at `at_ms`.
    pub fn at(mut self, at_ms: u64, action: Action) -> Scenario {
        self.actions.push((at_ms, action));
        self
    }

    /// Run with `seed` (actions in time order, then a final check).
    pub fn run(&self, seed: u64) -> Report {
        let mut sim = Sim::new(seed, self.config.clone(), self.check.clone());
        let mut actions = self.actions.clone();
        actions.sort_by_key(|(at, _)| *at);
        let mut checked_last = false;
        for (at, action) in actions {
            sim.run_until(START + at);
            checked_last = matches!(action, Action::Check);
            sim.apply(action);
        }
        if !checked_last {
            sim.apply(Action::Check);
        }
        sim.report(&self.name)
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Seed.
    pub seed: u64,
    /// What the checker found (empty: the run passed).
    pub violations: Vec<Violation>,
    /// Every client operation.
    pub history: Vec<OpRecord>,
    /// Counters.
    pub stats: SimStats,
    /// Checks run.
    pub checks: usize,
    /// Virtual time at the end (ms from the start).
    pub elapsed_ms: u64,
}

impl Report {
    /// Whether the checker found nothing.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Operations that were acknowledged writes.
    pub fn acked_writes(&self) -> usize {
        self.history
            .iter()
            .filter(|o| {
                matches!(o.request, ClientRequest::Write { .. })
                    && matches!(o.outcome, Outcome::Done(Ok(_)))
            })
            .count()
    }

    /// A summary for a failure message: the violations and the operations they name.
    pub fn explain(&self) -> String {
        let mut out = format!(
            "scenario {:?}, seed {}: {} violation(s) after {} ms, {} operations\n",
            self.name,
            self.seed,
            self.violations.len(),
            self.elapsed_ms,
            self.history.len()
        );
        for v in self.violations.iter().take(10) {
            out.push_str(&format!("  {v}\n"));
        }
        out
    }
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    /// Its id (index in the history).
    pub id: usize,
    /// Entry node.
    pub node: usize,
    /// What was asked.
    pub request: ClientRequest,
    /// When (virtual ms, true time).
    pub invoked: Time,
    /// When the entry node took it (None: never). Later than `invoked` when the node was
    /// frozen: the request waited, as in a socket buffer.
    pub received: Option<Time>,
    /// When it was answered (None: never, or after the client gave up).
    pub completed: Option<Time>,
    /// The outcome.
    pub outcome: Outcome,
    /// Part of a check's final reads.
    pub final_read: bool,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No answer yet.
    Pending,
    /// Answered.
    Done(Result<ClientAnswer, KvError>),
    /// The client gave up: the outcome is unknown.
    TimedOut,
    /// The entry node was down: nothing was sent.
    NotSent,
}

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages sent.
    pub messages: u64,
    /// Messages lost or cut by a partition.
    pub dropped: u64,
    /// Flushes performed.
    pub flushes: u64,
    /// Events processed.
    pub events: u64,
    /// Crashes.
    pub crashes: u64,
    /// Freezes.
    pub freezes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Down,
    Frozen,
}

#[derive(Debug)]
enum Ev {
    Client {
        op: usize,
    },
    Request {
        from: Inbound,
        request: Request,
    },
    Response {
        from: usize,
        id: u64,
        response: Response,
    },
    Unreachable {
        id: u64,
    },
    Flushed {
        token: u64,
    },
    Wake,
    Members {
        ring: Vec<usize>,
    },
    ClientTimeout {
        op: usize,
    },
}

struct Node {
    uuid: NodeUuid,
    core: Option<Core<MemStorage>>,
    /// The disk while the node is down.
    disk: Option<MemStorage>,
    state: State,
    generation: u64,
    skew: i64,
    inbox: VecDeque<Ev>,
    /// The ring this node was told about.
    ring: Vec<usize>,
}

/// The simulator. Most callers run a [`Scenario`]; tests can drive it step by step.
pub struct Sim {
    cfg: SimConfig,
    options: CheckOptions,
    seed: u64,
    now: Time,
    seq: u64,
    /// (time, sequence) → (node, generation, event); node usize::MAX: a client timeout.
    queue: BTreeMap<(Time, u64), (usize, u64, Ev)>,
    nodes: Vec<Node>,
    rng: SeededRng,
    group: Vec<u32>,
    /// Cut links (smaller index first).
    cut: std::collections::BTreeSet<(usize, usize)>,
    ring: Vec<usize>,
    loss: f64,
    history: Vec<OpRecord>,
    last_seen: BTreeMap<String, u64>,
    violations: Vec<Violation>,
    checks: usize,
    previous_finals: Option<check::Finals>,
    /// Every live version any node ever stored: (key, index) → value.
    versions: BTreeMap<(String, u64), Vec<u8>>,
    /// Counters.
    pub stats: SimStats,
}

impl Sim {
    /// A cluster of `cfg.nodes` nodes, all up and on the ring.
    pub fn new(seed: u64, cfg: SimConfig, options: CheckOptions) -> Sim {
        let mut rng = SeededRng::new(seed);
        let mut nodes = Vec::with_capacity(cfg.nodes);
        let ring: Vec<usize> = (0..cfg.nodes).collect();
        for i in 0..cfg.nodes {
            let mut skew = rng.between(0, 2 * cfg.max_skew_ms) as i64 - cfg.max_skew_ms as i64;
            if let Some((_, o)) = cfg.clock_offsets_ms.iter().find(|(n, _)| *n == i) {
                skew = *o;
            }
            nodes.push(Node {
                uuid: cfg.uuid(i),
                core: None,
                disk: Some(MemStorage::recording()),
                state: State::Down,
                generation: 0,
                skew,
                inbox: VecDeque::new(),
                ring: ring.clone(),
            });
        }
        let mut sim = Sim {
            loss: cfg.loss,
            group: vec![0; cfg.nodes],
            cut: std::collections::BTreeSet::new(),
            cfg,
            options,
            seed,
            now: START,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            rng,
            ring,
            history: Vec::new(),
            last_seen: BTreeMap::new(),
            violations: Vec::new(),
            checks: 0,
            previous_finals: None,
            versions: BTreeMap::new(),
            stats: SimStats::default(),
        };
        // The cluster has been running for a while when a scenario starts: boot it a minute
        // early (past the CAS pause of a first ring).
        sim.now = START - 60_000;
        for i in 0..sim.nodes.len() {
            sim.restart(i);
        }
        sim.now = START;
        sim
    }

    /// Virtual (true) time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The uuid of node `i`.
    pub fn uuid(&self, i: usize) -> NodeUuid {
        self.nodes[i].uuid
    }

    /// Index of the node with `uuid`.
    pub fn index_of(&self, uuid: &NodeUuid) -> Option<usize> {
        self.nodes.iter().position(|n| n.uuid == *uuid)
    }

    /// The core of node `i` (None while it is down).
    pub fn core(&self, i: usize) -> Option<&Core<MemStorage>> {
        self.nodes[i].core.as_ref()
    }

    /// The owners of `key` on the full ring, as node indexes, coordinator first.
    pub fn owners(&self, key: &str) -> Vec<usize> {
        let uuids: Vec<NodeUuid> = self.ring.iter().map(|i| self.nodes[*i].uuid).collect();
        crate::ring::Ring::new(&uuids)
            .owners(key, self.cfg.core.replication_factor)
            .iter()
            .filter_map(|u| self.index_of(u))
            .collect()
    }

    /// Node `i`'s clock.
    pub fn node_now(&self, i: usize) -> Time {
        u64::try_from(i64::try_from(self.now).unwrap_or(i64::MAX) + self.nodes[i].skew).unwrap_or(0)
    }

    /// The history so far.
    pub fn history(&self) -> &[OpRecord] {
        &self.history
    }

    /// What the checks found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Whether node `i` is running (not down, not frozen).
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].state == State::Up
    }

    /// The report of the run so far.
    pub fn report(&self, name: &str) -> Report {
        Report {
            name: name.to_owned(),
            seed: self.seed,
            violations: self.violations.clone(),
            history: self.history.clone(),
            stats: self.stats.clone(),
            checks: self.checks,
            elapsed_ms: self.now - START,
        }
    }

    /// Run until true time `t`.
    pub fn run_until(&mut self, t: Time) {
        while let Some(entry) = self.queue.first_entry() {
            let (at, _) = *entry.key();
            if at > t {
                break;
            }
            let (node, generation, ev) = entry.remove();
            self.now = self.now.max(at);
            self.stats.events += 1;
            self.deliver(node, generation, ev);
        }
        self.now = self.now.max(t);
    }

    /// Run for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now + ms);
    }

    /// Run until operation `op` has an outcome or `max_ms` passed; true when it has one.
    pub fn run_until_done(&mut self, op: usize, max_ms: u64) -> bool {
        let end = self.now + max_ms;
        while self.history[op].outcome == Outcome::Pending && self.now < end {
            let next = self.queue.keys().next().map_or(end, |(t, _)| *t).min(end);
            self.run_until(next);
        }
        self.history[op].outcome != Outcome::Pending
    }

    /// Apply one action now.
    pub fn apply(&mut self, action: Action) {
        match action {
            Action::Put { node, key, ttl_ms } => {
                let value = self.fresh_value(&key);
                self.client(
                    node,
                    ClientRequest::Write {
                        key,
                        op: WriteOp::Put {
                            value,
                            cas: None,
                            ttl_ms,
                        },
                    },
                );
            }
            Action::Delete { node, key } => {
                self.client(
                    node,
                    ClientRequest::Write {
                        key,
                        op: WriteOp::Delete { cas: None },
                    },
                );
            }
            Action::Cas { node, key, expect } => {
                let cas = match expect {
                    Expect::Absent => 0,
                    Expect::LastSeen => self.last_seen.get(&key).copied().unwrap_or(0),
                    Expect::Index(i) => i,
                };
                let value = self.fresh_value(&key);
                self.client(
                    node,
                    ClientRequest::Write {
                        key,
                        op: WriteOp::Put {
                            value,
                            cas: Some(cas),
                            ttl_ms: 0,
                        },
                    },
                );
            }
            Action::Get { node, key } => {
                self.client(node, ClientRequest::Get { key });
            }
            Action::List { node, prefix } => {
                self.client(node, ClientRequest::List { prefix });
            }
            Action::Partition(groups) => {
                self.group.iter_mut().for_each(|g| *g = 0);
                for (gi, members) in groups.iter().enumerate() {
                    for &m in members {
                        if let Some(g) = self.group.get_mut(m) {
                            *g = u32::try_from(gi + 1).unwrap_or(u32::MAX);
                        }
                    }
                }
            }
            Action::Cut(a, b) => {
                self.cut.insert((a.min(b), a.max(b)));
            }
            Action::Heal => {
                self.group.iter_mut().for_each(|g| *g = 0);
                self.cut.clear();
            }
            Action::Crash(i) => self.crash(i),
            Action::Restart(i) => self.restart(i),
            Action::Freeze(i) => {
                if self.nodes[i].state == State::Up {
                    self.nodes[i].state = State::Frozen;
                    self.stats.freezes += 1;
                }
            }
            Action::Thaw(i) => self.thaw(i),
            Action::Loss(p) => self.loss = p,
            Action::Ring(nodes) => {
                self.ring = nodes.clone();
                for i in 0..self.nodes.len() {
                    self.set_ring_of(i, nodes.clone());
                }
            }
            Action::RingOf { node, nodes } => self.set_ring_of(node, nodes),
            Action::Check => self.checkpoint(),
        }
    }

    /// A client request through `node`; returns the operation's id.
    pub fn client(&mut self, node: usize, request: ClientRequest) -> usize {
        let op = self.history.len();
        self.history.push(OpRecord {
            id: op,
            node,
            request,
            invoked: self.now,
            received: None,
            completed: None,
            outcome: Outcome::Pending,
            final_read: false,
        });
        if self.nodes[node].state == State::Down {
            self.history[op].outcome = Outcome::NotSent;
            self.history[op].completed = Some(self.now);
            return op;
        }
        let generation = self.nodes[node].generation;
        self.push(self.now, node, generation, Ev::Client { op });
        let timeout = self.now + self.cfg.client_timeout_ms;
        self.push(timeout, usize::MAX, 0, Ev::ClientTimeout { op });
        op
    }

    fn fresh_value(&mut self, key: &str) -> Vec<u8> {
        format!("{key}#{}", self.history.len()).into_bytes()
    }

    fn push(&mut self, at: Time, node: usize, generation: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (node, generation, ev));
    }

    fn can_talk(&self, a: usize, b: usize) -> bool {
        self.group.get(a) == self.group.get(b) && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = self.cfg.delay_ms;
        self.rng.between(lo, hi)
    }

    fn set_ring_of(&mut self, i: usize, nodes: Vec<usize>) {
        self.nodes[i].ring = nodes.clone();
        match self.nodes[i].state {
            State::Up => self.process(i, Ev::Members { ring: nodes }),
            State::Frozen => self.nodes[i].inbox.push_back(Ev::Members { ring: nodes }),
            State::Down => {}
        }
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.state == State::Down {
            return;
        }
        if let Some(core) = node.core.take() {
            let mut disk = core.into_store();
            disk.crash();
            node.disk = Some(disk);
        }
        node.state = State::Down;
        node.generation += 1;
        node.inbox.clear();
        self.stats.crashes += 1;
    }

    fn restart(&mut self, i: usize) {
        if self.nodes[i].state != State::Down {
            return;
        }
        let disk = self.nodes[i].disk.take().unwrap_or_default();
        let seed = self.rng.next_u64();
        let now = self.node_now(i);
        let core = Core::new(self.nodes[i].uuid, self.cfg.core.clone(), disk, now, seed)
            .expect("the in-memory store never fails");
        let node = &mut self.nodes[i];
        node.core = Some(core);
        node.state = State::Up;
        node.generation += 1;
        let ring = node.ring.clone();
        self.effects(i);
        self.process(i, Ev::Members { ring });
    }

    fn thaw(&mut self, i: usize) {
        if self.nodes[i].state != State::Frozen {
            return;
        }
        self.nodes[i].state = State::Up;
        // A process that resumes finds both its sockets and its expired timers ready: either
        // may be handled first.
        let tick_first = self.rng.chance(0.5);
        if tick_first {
            self.process(i, Ev::Wake);
        }
        while let Some(ev) = self.nodes[i].inbox.pop_front() {
            if self.nodes[i].state != State::Up {
                break;
            }
            self.process(i, ev);
        }
        self.process(i, Ev::Wake);
    }

    fn deliver(&mut self, node: usize, generation: u64, ev: Ev) {
        if let Ev::ClientTimeout { op } = ev {
            if self.history[op].outcome == Outcome::Pending {
                self.history[op].outcome = Outcome::TimedOut;
            }
            return;
        }
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.generation != generation {
            return;
        }
        match n.state {
            State::Down => {}
            State::Frozen => n.inbox.push_back(ev),
            State::Up => self.process(node, ev),
        }
    }

    fn process(&mut self, i: usize, ev: Ev) {
        // A partition cut while a message travelled drops it (the connection broke).
        let cut = match &ev {
            Ev::Request { from, .. } => !self.can_talk((from.conn >> 32) as usize, i),
            Ev::Response { from, .. } => !self.can_talk(*from, i),
            _ => false,
        };
        if cut {
            self.stats.dropped += 1;
            return;
        }
        let now = self.node_now(i);
        let request = match &ev {
            Ev::Client { op } => {
                self.history[*op].received = Some(self.now);
                Some(self.history[*op].request.clone())
            }
            _ => None,
        };
        let from_uuid = match &ev {
            Ev::Response { from, .. } => Some(self.nodes[*from].uuid),
            _ => None,
        };
        let ring_uuids = match &ev {
            Ev::Members { ring } => ring.iter().map(|j| self.nodes[*j].uuid).collect(),
            _ => Vec::new(),
        };
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        match ev {
            Ev::Client { op } => {
                if let Some(r) = request {
                    core.handle_client(now, ClientId(op as u64), r);
                }
            }
            Ev::Request { from, request } => core.handle_request(now, from, request),
            Ev::Response { id, response, .. } => {
                if let Some(from) = from_uuid {
                    core.handle_response(now, from, id, response);
                }
            }
            Ev::Unreachable { id } => core.handle_unreachable(now, id),
            Ev::Flushed { token } => {
                core.store_mut().flush();
                self.stats.flushes += 1;
                core.handle_flushed(now, token, Ok(()));
            }
            Ev::Wake => {
                if core.next_deadline().is_some_and(|d| d <= now) {
                    core.handle_tick(now);
                }
            }
            Ev::Members { .. } => {
                core.handle_members(now, &ring_uuids);
            }
            Ev::ClientTimeout { .. } => {}
        }
        self.effects(i);
    }

    /// Perform node `i`'s effects.
    fn effects(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let effects = core.take_effects();
        for (key, e) in core.store_mut().take_journal() {
            if !e.deleted {
                self.versions.insert((key, e.index), e.value);
            }
        }
        let generation = self.nodes[i].generation;
        for e in effects {
            match e {
                Effect::Send { to, id, request } => {
                    self.stats.messages += 1;
                    let Some(j) = self.index_of(&to) else {
                        continue;
                    };
                    if self.nodes[j].state == State::Down {
                        // A host whose agent is not running refuses the connection, sometimes;
                        // a host that is gone just does not answer.
                        if self.rng.chance(self.cfg.down_refuses) {
                            let at = self.now + self.delay() * 2;
                            self.push(at, i, generation, Ev::Unreachable { id });
                        }
                        continue;
                    }
                    if !self.can_talk(i, j) || self.rng.chance(self.loss) {
                        self.stats.dropped += 1;
                        continue;
                    }
                    let at = self.now + self.delay();
                    let from = Inbound {
                        conn: ((i as u64) << 32) | (generation & 0xffff_ffff),
                        id,
                    };
                    let target_generation = self.nodes[j].generation;
                    self.push(at, j, target_generation, Ev::Request { from, request });
                }
                Effect::Reply { to, response } => {
                    self.stats.messages += 1;
                    let j = (to.conn >> 32) as usize;
                    let target_generation = to.conn & 0xffff_ffff;
                    if j >= self.nodes.len() || !self.can_talk(i, j) || self.rng.chance(self.loss) {
                        self.stats.dropped += 1;
                        continue;
                    }
                    let at = self.now + self.delay();
                    self.push(
                        at,
                        j,
                        target_generation,
                        Ev::Response {
                            from: i,
                            id: to.id,
                            response,
                        },
                    );
                }
                Effect::Answer { id, result } => {
                    let op = id.0 as usize;
                    if let Some(rec) = self.history.get_mut(op)
                        && rec.outcome == Outcome::Pending
                    {
                        rec.completed = Some(self.now);
                        let key = match &rec.request {
                            ClientRequest::Get { key } | ClientRequest::Write { key, .. } => {
                                Some(key.clone())
                            }
                            _ => None,
                        };
                        let seen = match &result {
                            Ok(ClientAnswer::Written { index }) => Some(*index),
                            Ok(ClientAnswer::Entry(e)) => Some(e.as_ref().map_or(0, |e| e.index)),
                            _ => None,
                        };
                        if let (Some(k), Some(s)) = (key, seen) {
                            self.last_seen.insert(k, s);
                        }
                        rec.outcome = Outcome::Done(result);
                    }
                }
                Effect::Flush { token } => {
                    let (lo, hi) = self.cfg.disk_ms;
                    let at = self.now + self.rng.between(lo, hi);
                    self.push(at, i, generation, Ev::Flushed { token });
                }
                Effect::Wake { at } => {
                    let skew = self.nodes[i].skew;
                    let true_at = u64::try_from(i64::try_from(at).unwrap_or(i64::MAX) - skew)
                        .unwrap_or(0)
                        .max(self.now);
                    self.push(true_at, i, generation, Ev::Wake);
                }
                Effect::Changed { .. } => {}
            }
        }
    }

    /// Heal everything, settle, read every key through every node, and check.
    fn checkpoint(&mut self) {
        self.checks += 1;
        self.apply(Action::Heal);
        self.loss = 0.0;
        for i in 0..self.nodes.len() {
            self.thaw(i);
            self.restart(i);
        }
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.apply(Action::Ring(all));
        let settle = self.cfg.settle();
        self.run_for(settle);
        // Every client operation has an outcome by now (the client timeout is shorter).
        let mut keys: Vec<String> = self
            .history
            .iter()
            .filter_map(|o| match &o.request {
                ClientRequest::Write { key, .. } | ClientRequest::Get { key } => Some(key.clone()),
                _ => None,
            })
            .collect();
        keys.sort();
        keys.dedup();
        let first = self.history.len();
        for key in &keys {
            for n in 0..self.nodes.len() {
                self.client(n, ClientRequest::Get { key: key.clone() });
            }
        }
        for n in 0..self.nodes.len() {
            self.client(n, ClientRequest::List { prefix: "".into() });
        }
        for rec in &mut self.history[first..] {
            rec.final_read = true;
        }
        let limit = self.cfg.client_timeout_ms + 1;
        for op in first..self.history.len() {
            self.run_until_done(op, limit);
        }
        let stores: Vec<Vec<(String, crate::entry::Entry)>> = self
            .nodes
            .iter()
            .map(|n| {
                n.core
                    .as_ref()
                    .map(|c| c.store().entries())
                    .unwrap_or_default()
            })
            .collect();
        let owners: BTreeMap<String, Vec<usize>> =
            keys.iter().map(|k| (k.clone(), self.owners(k))).collect();
        let ctx = check::Context {
            history: &self.history,
            finals_from: first,
            stores: &stores,
            owners: &owners,
            skew_margin_ms: 2 * self.cfg.max_skew_ms + 1,
            horizon_ms: self.cfg.write_horizon_ms(),
            options: &self.options,
            previous: self.previous_finals.as_ref(),
            versions: &self.versions,
        };
        let (found, finals) = check::check(&ctx);
        self.previous_finals = Some(finals);
        for v in found {
            if !self.violations.contains(&v) {
                self.violations.push(v);
            }
        }
    }
}
