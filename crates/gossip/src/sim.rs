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
    /// Zone keys this node holds (`None`: keys are not modelled, every packet opens).
    keys: Option<Vec<String>>,
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
    /// Datagrams and push-pulls dropped because the receiver lacks the key they were sealed
    /// with (see [`Sim::use_zone_keys`]).
    pub undecryptable: u64,
    /// Push-pull exchanges completed.
    pub push_pulls: u64,
    /// Bytes of the push-pull requests and answers sent, as the codec encodes them (counted
    /// only while [`Sim::count_push_pull_bytes`] is on: encoding every state costs time).
    pub push_pull_bytes: u64,
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
    /// Whether nodes added from now on hold their zone keys (see [`Sim::use_zone_keys`]).
    zone_keys: bool,
    /// Whether push-pull payloads are encoded to count their bytes.
    count_push_pull_bytes: bool,
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
            zone_keys: false,
            count_push_pull_bytes: false,
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

    /// Count the encoded size of every push-pull request and answer from now on (in
    /// [`SimStats::push_pull_bytes`]), or stop counting.
    pub fn count_push_pull_bytes(&mut self, on: bool) {
        self.count_push_pull_bytes = on;
    }

    fn count_push_pull(&mut self, payload: &PushPull) {
        if self.count_push_pull_bytes {
            self.stats.push_pull_bytes += crate::codec::encode_push_pull(payload).len() as u64;
        }
    }

    /// Change the loss rate.
    pub fn set_loss(&mut self, loss: f64) {
        self.net.loss = loss;
    }

    /// Add a node of zone `internet` (not joined to anyone yet); returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_in(crate::zones::DEFAULT_ZONE, false)
    }

    /// Add a node of `zone` (a proxy node if `is_proxy`), not joined to anyone yet; returns
    /// its index. The zone tree is the one of the simulation's [`GossipConfig`].
    pub fn add_node_in(&mut self, zone: &str, is_proxy: bool) -> usize {
        let i = self.nodes.len();
        let addr = Self::addr(i);
        let mut uuid_bytes = [0u8; 16];
        self.rng.fill(&mut uuid_bytes);
        let record = NodeRecord {
            uuid: NodeUuid::from_bytes(uuid_bytes),
            name: format!("node-{i}"),
            display_name: format!("node-{i}"),
            addr,
            zone: zone.into(),
            groups: vec![],
            is_proxy,
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
        let keys = self.zone_keys.then(|| self.default_keys(zone));
        self.nodes.push(Node {
            gossip,
            up: true,
            wake_at: None,
            keys,
        });
        self.group.push(0);
        self.reschedule(i);
        i
    }

    /// Model per-zone keys from now on, as the agent's driver uses them: every node holds the
    /// keys of its zone and of every zone below it; a packet is sealed with the destination
    /// zone's key when the sender holds it, else with the sender's own zone's key, else sent
    /// in plaintext; a receiver that does not hold the key drops it (counted in
    /// [`SimStats::undecryptable`]; plaintext is always dropped).
    pub fn use_zone_keys(&mut self) {
        self.zone_keys = true;
        for i in 0..self.nodes.len() {
            let zone = self.nodes[i].gossip.me().zone.clone();
            self.nodes[i].keys = Some(self.default_keys(&zone));
        }
    }

    /// Give node `i` exactly these zone keys (turns the key model on for it).
    pub fn set_node_keys(&mut self, i: usize, keys: Vec<String>) {
        self.nodes[i].keys = Some(keys);
    }

    fn default_keys(&self, zone: &str) -> Vec<String> {
        let tree = &self.cfg.zones;
        let mut keys: Vec<String> = tree
            .names()
            .into_iter()
            .filter(|z| tree.is_below(z, zone))
            .collect();
        keys.push(zone.to_owned());
        keys
    }

    /// Whether a packet from `from` sealed for `zone` opens at `to`.
    fn opens(&self, from: usize, to: usize, zone: &str) -> bool {
        let Some(theirs) = &self.nodes[to].keys else {
            return true;
        };
        let sealed_with = match &self.nodes[from].keys {
            // The sender does not model keys: its packets open wherever the zone key is held.
            None => Some(zone),
            Some(mine) if mine.iter().any(|k| k == zone) => Some(zone),
            Some(mine) => {
                let own = self.nodes[from].gossip.me().zone.as_str();
                mine.iter().any(|k| k == own).then_some(own)
            }
        };
        sealed_with.is_some_and(|k| theirs.iter().any(|t| t == k))
    }

    /// Move node `i` to another zone (the live `zone change`).
    pub fn set_zone(&mut self, i: usize, zone: &str) {
        let now = self.now;
        self.nodes[i].gossip.set_zone(now, zone.to_owned());
        if self.nodes[i].keys.is_some() {
            self.nodes[i].keys = Some(self.default_keys(zone));
        }
        self.flush(i);
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
                    self.count_push_pull(&reply);
                    // The answer is sealed like any packet to the asker.
                    let asker_zone = self.nodes[from].gossip.me().zone.clone();
                    if !self.opens(to, from, &asker_zone) {
                        self.stats.undecryptable += 1;
                        return;
                    }
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
                Effect::Send { to, zone, bytes } => {
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
                    if !self.opens(i, j, &zone) {
                        self.stats.undecryptable += 1;
                        continue;
                    }
                    let d = self.delay();
                    self.push(self.now + d, j, Ev::Datagram { to: j, from, bytes });
                }
                Effect::PushPull { to, zone, payload } => {
                    self.count_push_pull(&payload);
                    let Some(&j) = self.by_addr.get(&to) else {
                        continue;
                    };
                    if !self.can_talk(i, j) {
                        continue;
                    }
                    if !self.opens(i, j, &zone) {
                        self.stats.undecryptable += 1;
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

    /// Whether node `viewer` may see node `target` (the zone visibility rule, from their
    /// current records).
    pub fn may_see(&self, viewer: usize, target: usize) -> bool {
        let (v, t) = (
            self.nodes[viewer].gossip.me(),
            self.nodes[target].gossip.me(),
        );
        self.cfg.zones.may_see(&v.zone, &t.zone, t.is_proxy)
    }

    /// Whether every running node allowed to see node `target` sees it in `state` (every
    /// running node, without zones).
    pub fn all_allowed_see(&self, target: usize, state: MemberState) -> bool {
        (0..self.nodes.len())
            .filter(|&v| v != target && self.nodes[v].up && self.may_see(v, target))
            .all(|v| self.state_in_view(v, target) == Some(state))
    }

    /// Whether every running node knows, as alive or suspect, exactly as many members as there
    /// are running nodes it may see (complete views; without zones: every running node).
    pub fn views_complete(&self) -> bool {
        // Count the running nodes per (zone, proxy) once: the rule depends on nothing else.
        let mut groups: std::collections::BTreeMap<(&str, bool), usize> =
            std::collections::BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.up) {
            let me = n.gossip.me();
            *groups.entry((me.zone.as_str(), me.is_proxy)).or_default() += 1;
        }
        self.nodes.iter().filter(|n| n.up).all(|n| {
            let zone = n.gossip.me().zone.as_str();
            let visible: usize = groups
                .iter()
                .filter(|((z, proxy), _)| self.cfg.zones.may_see(zone, z, *proxy))
                .map(|(_, count)| *count)
                .sum();
            n.gossip.live_count() == visible
        })
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
