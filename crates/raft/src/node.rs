//! One member of the Raft group, IO-free: the driver feeds it time ([`Node::tick`]), messages
//! from peers ([`Node::step`]) and proposals ([`Node::propose`]), then takes what to do from
//! [`Node::poll`]: what to write to disk first, then the messages to send and the entries that
//! were applied to the lock table.

use std::collections::{BTreeMap, BTreeSet};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, Snapshot,
};
use raft::{RawNode, StateRole};

use crate::machine::{Command, Machine, Outcome};
use crate::storage::LogStore;

/// Index of the bootstrap snapshot: a new cluster starts from a snapshot that holds its first
/// configuration, and members added later catch up from a snapshot (the TiKV way).
pub const INIT_INDEX: u64 = 5;

/// Timing of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id in the group (non-zero).
    pub id: u64,
    /// Length of one Raft tick (ms).
    pub tick_ms: u64,
    /// Ticks without a leader before a follower stands (randomised up to twice this).
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Randomise election timeouts (real agents); off, timeouts vary only through the ticks'
    /// timing (deterministic simulations jitter the ticks themselves).
    pub randomized_election: bool,
    /// Take a snapshot (and drop the log before it) every this many applied entries.
    pub compact_every: u64,
}

impl NodeConfig {
    /// Defaults for id `id`: 50 ms ticks, elections after 0.5-1 s without a leader, heartbeats
    /// every 100 ms (etcd: 100 ms heartbeats, 1 s election timeout).
    pub fn new(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            randomized_election: true,
            compact_every: 1000,
        }
    }

    fn raft(&self, applied: u64) -> raft::Config {
        let mut c = raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            // A leader that lost touch with a majority steps down (no stale leader grants).
            check_quorum: true,
            // A partitioned node that comes back does not disrupt the group with a higher term.
            pre_vote: true,
            ..raft::Config::default()
        };
        if !self.randomized_election {
            c.min_election_tick = self.election_ticks;
            c.max_election_tick = self.election_ticks + 1;
        }
        c
    }
}

/// Why a node could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// raft-rs refused (no leader known, a configuration change in progress...).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A message or persisted record that does not decode.
    #[error("bad raft data: {0}")]
    Decode(String),
    /// Only the leader does this.
    #[error("not the leader")]
    NotLeader,
}

/// What to write to disk before sending the messages of the same [`Output`].
#[derive(Debug, Clone, PartialEq)]
pub enum Persist {
    /// The hard state (term, vote, commit), encoded.
    HardState(Vec<u8>),
    /// Log entries (index, encoded): drop every stored entry from the first index on, then
    /// write these.
    Entries(Vec<(u64, Vec<u8>)>),
    /// A snapshot (encoded): drop every stored entry up to its index.
    Snapshot {
        /// Its index.
        index: u64,
        /// Encoded.
        bytes: Vec<u8>,
    },
}

/// An entry applied to the lock table.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Its log index.
    pub index: u64,
    /// What it said.
    pub command: Command,
    /// What it did.
    pub outcome: Outcome,
}

/// What a node wants done after a tick, step or proposal.
#[derive(Debug, Default)]
pub struct Output {
    /// Write these, in order, before sending.
    pub persist: Vec<Persist>,
    /// (peer id, encoded message).
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Entries applied, in log order.
    pub applied: Vec<Applied>,
}

/// This node's view of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `leader`, `follower`, `candidate`, `pre-candidate`.
    pub role: &'static str,
    /// The leader's id (0: none known).
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Voters of the configuration.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Whether this node has a configuration (bootstrapped or joined).
    pub initialized: bool,
}

/// One member.
pub struct Node {
    raw: RawNode<LogStore>,
    cfg: NodeConfig,
    machine: Machine,
    now_ms: u64,
    last_tick_ms: u64,
    /// Leader only: when each held lock was last granted or renewed (leader's clock).
    renewed: BTreeMap<String, u64>,
    /// Leader only: expiries proposed and not applied yet (lock, renewal index they void).
    expiring: BTreeSet<(String, u64)>,
    was_leader: bool,
    out: Output,
    /// Peers a snapshot was sent to in the current ready.
    snapshots_sent: Vec<u64>,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl Node {
    /// Start a new group whose first configuration has these voters (all nodes that bootstrap
    /// one group must be given the same list; usually one node bootstraps alone and adds the
    /// others).
    pub fn bootstrap(cfg: NodeConfig, voters: &[u64], now_ms: u64) -> Result<Node, NodeError> {
        let mut snap = Snapshot::default();
        snap.set_data(Machine::default().to_bytes().into());
        let meta = snap.mut_metadata();
        meta.index = INIT_INDEX;
        meta.term = INIT_INDEX;
        let mut cs = ConfState::default();
        cs.voters = voters.to_vec();
        meta.set_conf_state(cs);
        let mut hard = HardState::default();
        hard.term = INIT_INDEX;
        hard.commit = INIT_INDEX;
        let store = LogStore::restore(snap.clone(), Vec::new(), hard.clone());
        let mut node = Node::with_store(cfg, store, Machine::default(), now_ms)?;
        node.out.persist.push(Persist::Snapshot {
            index: INIT_INDEX,
            bytes: snap.write_to_bytes().unwrap_or_default(),
        });
        node.out.persist.push(Persist::HardState(
            hard.write_to_bytes().unwrap_or_default(),
        ));
        Ok(node)
    }

    /// A node without a configuration: it waits for a leader to add it (and send a snapshot).
    pub fn join(cfg: NodeConfig, now_ms: u64) -> Result<Node, NodeError> {
        Node::with_store(cfg, LogStore::default(), Machine::default(), now_ms)
    }

    /// A node rebuilt from what it persisted: its snapshot, the entries after it and its hard
    /// state (all encoded as [`Persist`] gave them). Committed entries after the snapshot are
    /// applied again to rebuild the lock table.
    pub fn restore(
        cfg: NodeConfig,
        snapshot: Option<&[u8]>,
        entries: &[Vec<u8>],
        hard_state: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<Node, NodeError> {
        let decode =
            |what: &str, e: protobuf::ProtobufError| NodeError::Decode(format!("{what}: {e}"));
        let snap = match snapshot {
            Some(b) => Snapshot::parse_from_bytes(b).map_err(|e| decode("snapshot", e))?,
            None => Snapshot::default(),
        };
        let entries = entries
            .iter()
            .map(|b| Entry::parse_from_bytes(b).map_err(|e| decode("entry", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let hard = match hard_state {
            Some(b) => HardState::parse_from_bytes(b).map_err(|e| decode("hard state", e))?,
            None => HardState::default(),
        };
        let machine =
            Machine::from_bytes(snap.get_data()).map_err(|e| NodeError::Decode(e.to_string()))?;
        let mut store = LogStore::restore(snap, entries, hard);
        // Configuration changes of committed entries after the snapshot.
        let commit = store.hard.commit.min(store.last());
        for e in store.entries.clone() {
            if e.index > commit {
                break;
            }
            if e.get_entry_type() == EntryType::EntryConfChange {
                let cc = ConfChange::parse_from_bytes(e.get_data())
                    .map_err(|e| decode("conf change", e))?;
                apply_conf(&mut store.conf, &cc);
            }
        }
        Node::with_store(cfg, store, machine, now_ms)
    }

    fn with_store(
        cfg: NodeConfig,
        store: LogStore,
        machine: Machine,
        now_ms: u64,
    ) -> Result<Node, NodeError> {
        let applied = machine.applied().max(store.snapshot.get_metadata().index);
        let raw = RawNode::new(&cfg.raft(applied), store, &logger())?;
        Ok(Node {
            raw,
            cfg,
            machine,
            now_ms,
            last_tick_ms: now_ms,
            renewed: BTreeMap::new(),
            expiring: BTreeSet::new(),
            was_leader: false,
            out: Output::default(),
            snapshots_sent: Vec::new(),
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// Advance the clock to `now_ms`: Raft ticks for the time passed, and the leader expires
    /// locks whose holder stopped renewing.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        while self.now_ms >= self.last_tick_ms + self.cfg.tick_ms {
            self.last_tick_ms += self.cfg.tick_ms;
            self.raw.tick();
        }
        self.leader_duties();
        self.drain();
    }

    /// A message from a peer (encoded).
    pub fn step(&mut self, bytes: &[u8]) -> Result<(), NodeError> {
        let msg = Message::parse_from_bytes(bytes).map_err(|e| NodeError::Decode(e.to_string()))?;
        if msg.to != self.cfg.id {
            return Err(NodeError::Decode(format!(
                "message for {} reached {}",
                msg.to, self.cfg.id
            )));
        }
        let result = self.raw.step(msg);
        self.drain();
        match result {
            // A message of a peer this configuration does not know, or a forwarded proposal
            // that cannot be taken now (no leader): ignored, the proposer asks again.
            Err(raft::Error::StepPeerNotFound | raft::Error::ProposalDropped) => Ok(()),
            other => other.map_err(NodeError::from),
        }
    }

    /// Propose a command (a follower forwards it to the leader). Its outcome comes back in
    /// [`Output::applied`] of the node that applies it, here included, once committed.
    pub fn propose(&mut self, command: &Command) -> Result<(), NodeError> {
        let data = serde_json::to_vec(command).map_err(|e| NodeError::Decode(e.to_string()))?;
        let result = self.raw.propose(Vec::new(), data);
        self.drain();
        result.map_err(NodeError::from)
    }

    /// Leader: release every lock of `node` (gossip declared it dead or gone).
    pub fn node_gone(&mut self, node: &str) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader);
        }
        if !self.machine.locks().values().any(|l| l.holder.node == node) {
            return Ok(());
        }
        self.propose(&Command::NodeGone {
            node: node.to_owned(),
        })
    }

    /// Leader: add `id` as a voter (one change at a time).
    pub fn add_voter(&mut self, id: u64) -> Result<(), NodeError> {
        self.change(id, ConfChangeType::AddNode)
    }

    /// Leader: remove voter `id`.
    pub fn remove_voter(&mut self, id: u64) -> Result<(), NodeError> {
        self.change(id, ConfChangeType::RemoveNode)
    }

    fn change(&mut self, id: u64, kind: ConfChangeType) -> Result<(), NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader);
        }
        let mut cc = ConfChange::default();
        cc.node_id = id;
        cc.set_change_type(kind);
        let result = self.raw.propose_conf_change(Vec::new(), cc);
        self.drain();
        result.map_err(NodeError::from)
    }

    /// Whether a configuration change is proposed and not applied yet.
    pub fn has_pending_conf(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Tell raft a peer could not be reached (it slows down sending to it).
    pub fn unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// Take what to do now.
    pub fn poll(&mut self) -> Output {
        self.drain();
        std::mem::take(&mut self.out)
    }

    /// Whether this node holds log entry `index` with this command (in its log), or a snapshot
    /// that covers it (snapshots hold committed entries only).
    pub fn holds(&self, index: u64, command: &Command) -> bool {
        let store = self.raw.store();
        index <= store.snapshot.get_metadata().index
            || store.entries.iter().any(|e| {
                e.index == index
                    && serde_json::from_slice::<Command>(e.get_data()).is_ok_and(|c| c == *command)
            })
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The lock table as applied here.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// This node's view.
    pub fn status(&self) -> Status {
        let r = &self.raw.raft;
        let conf = self.raw.store().conf.clone();
        Status {
            role: match r.state {
                StateRole::Leader => "leader",
                StateRole::Follower => "follower",
                StateRole::Candidate => "candidate",
                StateRole::PreCandidate => "pre-candidate",
            },
            leader: r.leader_id,
            term: r.term,
            voters: conf.voters.clone(),
            learners: conf.learners.clone(),
            commit: r.raft_log.committed,
            applied: self.machine.applied(),
            initialized: conf != ConfState::default(),
        }
    }

    fn leader_duties(&mut self) {
        let leader = self.is_leader();
        if leader && !self.was_leader {
            // A new leader gives every holder a full TTL from now: it does not know when they
            // last renewed with the old leader.
            self.renewed = self
                .machine
                .locks()
                .keys()
                .map(|k| (k.clone(), self.now_ms))
                .collect();
            self.expiring.clear();
        }
        self.was_leader = leader;
        if !leader {
            return;
        }
        let due: Vec<(String, u64, u64)> = self
            .machine
            .locks()
            .iter()
            .filter(|(name, l)| {
                let since = self.renewed.get(*name).copied().unwrap_or(self.now_ms);
                self.now_ms >= since + l.ttl_ms
                    && !self.expiring.contains(&((*name).clone(), l.renewed_at))
            })
            .map(|(name, l)| (name.clone(), l.token, l.renewed_at))
            .collect();
        for (lock, token, renewed_at) in due {
            let cmd = Command::Expire {
                lock: lock.clone(),
                token,
                renewed_at,
            };
            if let Ok(data) = serde_json::to_vec(&cmd)
                && self.raw.propose(Vec::new(), data).is_ok()
            {
                self.expiring.insert((lock, renewed_at));
            }
        }
    }

    /// Process every ready state raft has.
    fn drain(&mut self) {
        // Bounded: each round makes progress; a handful is plenty.
        for _ in 0..16 {
            if !self.raw.has_ready() {
                return;
            }
            self.ready_once();
        }
    }

    fn ready_once(&mut self) {
        let mut ready = self.raw.ready();
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            if let Ok(m) = Machine::from_bytes(snap.get_data()) {
                self.machine = m;
            }
            self.out.persist.push(Persist::Snapshot {
                index: snap.get_metadata().index,
                bytes: snap.write_to_bytes().unwrap_or_default(),
            });
            self.raw.mut_store().apply_snapshot(snap);
            self.renewed.clear();
        }
        let committed = ready.take_committed_entries();
        self.apply(committed);
        if !ready.entries().is_empty() {
            let ents: Vec<(u64, Vec<u8>)> = ready
                .entries()
                .iter()
                .map(|e| (e.index, e.write_to_bytes().unwrap_or_default()))
                .collect();
            self.raw.mut_store().append(ready.entries());
            self.out.persist.push(Persist::Entries(ents));
        }
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().hard = hs.clone();
            self.out
                .persist
                .push(Persist::HardState(hs.write_to_bytes().unwrap_or_default()));
        }
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            let store = self.raw.mut_store();
            store.hard.commit = commit;
            let hs = store.hard.clone();
            self.out
                .persist
                .push(Persist::HardState(hs.write_to_bytes().unwrap_or_default()));
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.advance_apply();
        self.maybe_compact();
        // A snapshot handed to the network counts as sent: the leader then probes the follower
        // again, and sends another if this one was lost (raft-rs would wait forever otherwise).
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                self.snapshots_sent.push(m.to);
            }
            if let Ok(bytes) = m.write_to_bytes() {
                self.out.messages.push((m.to, bytes));
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.index <= self.machine.applied() {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryConfChange => {
                    if let Ok(cc) = ConfChange::parse_from_bytes(e.get_data())
                        && let Ok(cs) = self.raw.apply_conf_change(&cc)
                    {
                        self.raw.mut_store().conf = cs;
                    }
                    self.machine.apply_noop(e.index);
                    // A member added catches up from a snapshot, which raft-rs only takes
                    // when its configuration names that member: snapshot right here.
                    self.snapshot_now(e.index);
                }
                EntryType::EntryConfChangeV2 => self.machine.apply_noop(e.index),
                EntryType::EntryNormal => {
                    if e.get_data().is_empty() {
                        // A new leader's empty entry.
                        self.machine.apply_noop(e.index);
                        continue;
                    }
                    let Ok(command) = serde_json::from_slice::<Command>(e.get_data()) else {
                        self.machine.apply_noop(e.index);
                        continue;
                    };
                    let outcome = self.machine.apply(e.index, &command);
                    self.leader_bookkeeping(&command, &outcome);
                    self.out.applied.push(Applied {
                        index: e.index,
                        command,
                        outcome,
                    });
                }
            }
        }
    }

    fn leader_bookkeeping(&mut self, command: &Command, outcome: &Outcome) {
        match (command, outcome) {
            (Command::Acquire { lock, .. }, Outcome::Granted { .. })
            | (Command::Renew { lock, .. }, Outcome::Renewed) => {
                self.renewed.insert(lock.clone(), self.now_ms);
            }
            (
                Command::Expire {
                    lock, renewed_at, ..
                },
                outcome,
            ) => {
                self.expiring.remove(&(lock.clone(), *renewed_at));
                if matches!(outcome, Outcome::Released(_)) {
                    self.renewed.remove(lock);
                }
            }
            (_, Outcome::Released(gone)) => {
                for (lock, _, _) in gone {
                    self.renewed.remove(lock);
                }
            }
            _ => {}
        }
    }

    fn maybe_compact(&mut self) {
        let applied = self.machine.applied();
        let snap_index = self.raw.store().snapshot.get_metadata().index;
        if applied >= snap_index + self.cfg.compact_every {
            self.snapshot_now(applied);
        }
    }

    /// Snapshot the lock table (applied up to `index`) and drop the log before it.
    fn snapshot_now(&mut self, index: u64) {
        let store = self.raw.store();
        if index <= store.snapshot.get_metadata().index || index > store.last() {
            return;
        }
        let data = self.machine.to_bytes();
        let store = self.raw.mut_store();
        store.compact(index, data);
        let snap = store.snapshot.clone();
        self.out.persist.push(Persist::Snapshot {
            index,
            bytes: snap.write_to_bytes().unwrap_or_default(),
        });
    }
}

fn apply_conf(conf: &mut ConfState, cc: &ConfChange) {
    let id = cc.node_id;
    match cc.get_change_type() {
        ConfChangeType::AddNode => {
            conf.learners.retain(|x| *x != id);
            if !conf.voters.contains(&id) {
                conf.voters.push(id);
            }
        }
        ConfChangeType::AddLearnerNode => {
            conf.voters.retain(|x| *x != id);
            if !conf.learners.contains(&id) {
                conf.learners.push(id);
            }
        }
        ConfChangeType::RemoveNode => {
            conf.voters.retain(|x| *x != id);
            conf.learners.retain(|x| *x != id);
        }
    }
}
