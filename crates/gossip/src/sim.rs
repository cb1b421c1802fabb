//! A deterministic network simulator for the gossip core: many [`Gossip`] nodes in one process,
//! virtual time, a seeded RNG, and a network with configurable loss, delay and partitions.
//! Scenarios are plain data and calls ([`Sim::join`], [`Sim::crash`], [`Sim::partition`], ...);
//! the same seed always gives the same run.
//!
//! Used by the test suite (convergence, failure detection, false deaths under loss, partition
//! healing, mass join) and by the membership benchmarks.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use opsbro_types::NodeUuid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::GossipConfig;
use crate::codec::PushPull;
use crate::core::{Effect, Gossip, Time};
use crate::member::{MemberState, NodeRecord};

/// Network behaviour.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// One-way delay range in milliseconds (uniform).
    pub delay_ms: (u64, u64),
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            delay_ms: (1, 5),
        }
    }
}

#[derive(Debug)]
enum Ev {
    Wake(usize),
    Datagram {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    PushPull {
        to: usize,
        from: usize,
        payload: PushPull,
    },
    PushPullReply {
        to: usize,
        from: usize,
        payload: PushPull,
    },
}

struct Node {
    gossip: Gossip,
    up: bool,
    wake_at: Option<Time>,
}

/// Counters of one simulation.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Datagram bytes sent.
    pub bytes: u64,
    /// Datagrams dropped by loss or partitions.
    pub dropped: u64,
    /// Push-pull exchanges completed.
    pub push_pulls: u64,
    /// Times a node declared dead a node that was up (and not partitioned away from it).
    pub false_deaths: u64,
    /// The first false deaths: (time, viewer, target, incarnation in the view, target's own
    /// incarnation), to explain a failure.
    pub false_death_log: Vec<(Time, usize, usize, u64, u64)>,
}

/// The simulator.
pub struct Sim {
    now: Time,
    counter: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: HashMap<u64, Ev>,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    by_uuid: HashMap<NodeUuid, usize>,
    rng: StdRng,
    net: NetConfig,
    /// Partition group of each node (all 0 = no partition).
    group: Vec<u32>,
    cfg: GossipConfig,
    /// Counters.
    pub stats: SimStats,
}

/// Virtual time starts here (any value works; a Unix-epoch-like one keeps event ages sensible).
pub const START: Time = 1_700_000_000_000;

impl Sim {
    /// An empty simulation.
    pub fn new(seed: u64, net: NetConfig, cfg: GossipConfig) -> Self {
        Self {
            now: START,
            counter: 0,
            queue: BinaryHeap::new(),
            events: HashMap::default(),
            nodes: Vec::new(),
            by_addr: HashMap::default(),
            by_uuid: HashMap::default(),
            rng: StdRng::seed_from_u64(seed),
            net,
            group: Vec::new(),
            cfg,
            stats: SimStats::default(),
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Milliseconds since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.now - START)
    }

    /// Number of nodes ever added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Change the loss rate.
    pub fn set_loss(&mut self, loss: f64) {
        self.net.loss = loss;
    }

    /// Add a node (not joined to anyone yet); returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = Self::addr(i);
        let mut uuid_bytes = [0u8; 16];
        self.rng.fill(&mut uuid_bytes);
        let record = NodeRecord {
            uuid: NodeUuid::from_bytes(uuid_bytes),
            name: format!("node-{i}"),
            display_name: format!("node-{i}"),
            addr,
            zone: "internet".into(),
            groups: vec![],
            is_proxy: false,
            incarnation: 1,
            state: MemberState::Alive,
            version: "sim".into(),
            checks: vec![],
            services: vec![],
            maintenance: None,
        };
        let seed = self.rng.random();
        let gossip = Gossip::new(self.cfg.clone(), record.clone(), seed, self.now);
        self.by_addr.insert(addr, i);
        self.by_uuid.insert(record.uuid, i);
        self.nodes.push(Node {
            gossip,
            up: true,
            wake_at: None,
        });
        self.group.push(0);
        self.reschedule(i);
        i
    }

    /// The simulated address of node `i` (never used on a real network).
    pub fn addr(i: usize) -> SocketAddr {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        SocketAddr::from((Ipv4Addr::from(0x7f00_0000 | (i + 1)), 6768))
    }

    /// Node `i` joins through node `seed`.
    pub fn join(&mut self, i: usize, seed: usize) {
        self.nodes[i].gossip.join(Self::addr(seed));
        self.flush(i);
    }

    /// Node `i` crashes (stops without a word).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// Node `i` leaves gracefully.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].gossip.leave(now);
        self.flush(i);
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    /// Split the nodes into groups that cannot talk to each other; nodes not listed stay in
    /// group 0.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        self.group.iter_mut().for_each(|g| *g = 0);
        for (gi, members) in groups.iter().enumerate() {
            for &m in members {
                self.group[m] = u32::try_from(gi + 1).unwrap_or(u32::MAX);
            }
        }
    }

    /// Remove every partition.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    fn can_talk(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    /// The gossip core of node `i` (to read its view).
    pub fn node(&self, i: usize) -> &Gossip {
        &self.nodes[i].gossip
    }

    /// The gossip core of node `i`, to call its commands (events, groups) in a scenario. Call
    /// [`Sim::run_for`] afterwards: effects are collected at the node's next step.
    pub fn node_mut(&mut self, i: usize) -> &mut Gossip {
        &mut self.nodes[i].gossip
    }

    /// Index of the node with `uuid`.
    pub fn index_of(&self, uuid: &NodeUuid) -> Option<usize> {
        self.by_uuid.get(uuid).copied()
    }

    /// State of `target` in the view of `viewer`.
    pub fn state_in_view(&self, viewer: usize, target: usize) -> Option<MemberState> {
        let uuid = self.nodes[target].gossip.me().uuid;
        self.nodes[viewer].gossip.member(&uuid).map(|r| r.state)
    }

    /// Run until virtual time `t`.
    pub fn run_until(&mut self, t: Time) {
        while let Some(Reverse((at, id, _))) = self.queue.peek().copied() {
            if at > t {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            if let Some(ev) = self.events.remove(&id) {
                self.dispatch(ev);
            }
        }
        self.now = self.now.max(t);
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + ms(d);
        self.run_until(t);
    }

    /// Run until `cond` holds (checked every `step`), for at most `max`. Returns the virtual time
    /// it took, or None if `max` passed first.
    pub fn run_until_cond(
        &mut self,
        max: Duration,
        step: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let end = self.now + ms(max);
        loop {
            if cond(self) {
                return Some(Duration::from_millis(self.now - start));
            }
            if self.now >= end {
                return None;
            }
            let next = (self.now + ms(step)).min(end);
            self.run_until(next);
        }
    }

    fn push(&mut self, at: Time, target: usize, ev: Ev) {
        self.counter += 1;
        self.events.insert(self.counter, ev);
        self.queue.push(Reverse((at, self.counter, target)));
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = self.net.delay_ms;
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..=hi)
        }
    }

    fn reschedule(&mut self, i: usize) {
        let at = self.nodes[i].gossip.next_deadline().max(self.now);
        if self.nodes[i]
            .wake_at
            .is_some_and(|w| w <= at && w >= self.now)
        {
            return;
        }
        self.nodes[i].wake_at = Some(at);
        self.push(at, i, Ev::Wake(i));
    }

    fn dispatch(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Wake(i) => {
                if self.nodes[i].wake_at.is_some_and(|w| w <= now) {
                    self.nodes[i].wake_at = None;
                }
                if self.nodes[i].up {
                    self.nodes[i].gossip.handle_tick(now);
                    self.flush(i);
                } else {
                    self.nodes[i].wake_at = None;
                }
            }
            Ev::Datagram { to, from, bytes } => {
                if self.nodes[to].up {
                    // The simulator only ever delivers what a core encoded.
                    let _ = self.nodes[to].gossip.handle_datagram(now, from, &bytes);
                    self.flush(to);
                }
            }
            Ev::PushPull { to, from, payload } => {
                if self.nodes[to].up && self.can_talk(to, from) {
                    let reply =
                        self.nodes[to]
                            .gossip
                            .handle_push_pull(now, Self::addr(from), payload);
                    self.flush(to);
                    let d = self.delay() * 2;
                    self.push(
                        now + d,
                        from,
                        Ev::PushPullReply {
                            to: from,
                            from: to,
                            payload: reply,
                        },
                    );
                }
            }
            Ev::PushPullReply { to, from, payload } => {
                if self.nodes[to].up {
                    self.stats.push_pulls += 1;
                    self.nodes[to].gossip.handle_push_pull_reply(
                        now,
                        Self::addr(from),
                        payload,
                        true,
                    );
                    self.flush(to);
                }
            }
        }
    }

    /// Perform the effects node `i` produced.
    fn flush(&mut self, i: usize) {
        let effects = self.nodes[i].gossip.take_effects();
        let from = Self::addr(i);
        for e in effects {
            match e {
                Effect::Send { to, bytes } => {
                    self.stats.datagrams += 1;
                    self.stats.bytes += bytes.len() as u64;
                    let Some(&j) = self.by_addr.get(&to) else {
                        continue;
                    };
                    let lost =
                        self.net.loss > 0.0 && self.rng.random_bool(self.net.loss.clamp(0.0, 1.0));
                    if lost || !self.can_talk(i, j) {
                        self.stats.dropped += 1;
                        continue;
                    }
                    let d = self.delay();
                    self.push(self.now + d, j, Ev::Datagram { to: j, from, bytes });
                }
                Effect::PushPull { to, payload } => {
                    let Some(&j) = self.by_addr.get(&to) else {
                        continue;
                    };
                    if !self.can_talk(i, j) {
                        continue;
                    }
                    let d = self.delay() * 2;
                    self.push(
                        self.now + d,
                        j,
                        Ev::PushPull {
                            to: j,
                            from: i,
                            payload,
                        },
                    );
                }
                Effect::MemberChanged(change) => {
                    if change.new == MemberState::Dead
                        && let Some(&j) = self.by_uuid.get(&change.uuid)
                        && self.nodes[j].up
                        && self.can_talk(i, j)
                    {
                        self.stats.false_deaths += 1;
                        if self.stats.false_death_log.len() < 20 {
                            let seen = self.nodes[i]
                                .gossip
                                .member(&change.uuid)
                                .map_or(0, |r| r.incarnation);
                            let own = self.nodes[j].gossip.me().incarnation;
                            self.stats
                                .false_death_log
                                .push((self.now - START, i, j, seen, own));
                        }
                    }
                }
                Effect::UserEvent(_)
                | Effect::IncarnationChanged(_)
                | Effect::PingResult { .. }
                | Effect::ProbeAcked { .. }
                | Effect::Detected { .. } => {}
            }
        }
        self.reschedule(i);
    }

    /// Whether every running node sees node `target` in `state`.
    pub fn all_see(&self, target: usize, state: MemberState) -> bool {
        (0..self.nodes.len())
            .filter(|&v| v != target && self.nodes[v].up)
            .all(|v| self.state_in_view(v, target) == Some(state))
    }

    /// Whether every running node knows every running node as alive or suspect (complete views).
    pub fn views_complete(&self) -> bool {
        let up = self.nodes.iter().filter(|n| n.up).count();
        self.nodes
            .iter()
            .filter(|n| n.up)
            .all(|n| n.gossip.live_count() == up)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
