//! The SWIM + Lifeguard state machine. No IO, no clock, no global RNG: time arrives as `now`
//! (milliseconds), randomness from a seeded generator, bytes from the driver; everything the core
//! wants done comes out as [`Effect`]s.

use std::collections::VecDeque;

use crate::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use opsbro_types::NodeUuid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::broadcast::{BroadcastKey, BroadcastQueue};
use crate::codec::{self, DecodeError, Message, PushPull, UserEvent};
use crate::config::GossipConfig;
use crate::member::{CheckSummary, MAX_INCARNATION_STEP, MemberState, NodeRecord, ServiceRecord};
use crate::zones::Relation;

/// Time in milliseconds. The agent passes a monotonic clock anchored at the Unix epoch at start;
/// the simulator passes virtual time.
pub type Time = u64;

/// Minimum gap between an early gossip round and the previous round, in milliseconds.
const EAGER_GAP_MS: u64 = 10;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Something the driver must do or tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send this datagram.
    Send {
        /// Destination.
        to: SocketAddr,
        /// The destination's zone: the driver seals the datagram with this zone's key when it
        /// holds it, else with its own zone's key.
        zone: String,
        /// Encoded datagram (before encryption).
        bytes: Vec<u8>,
    },
    /// Open a TCP connection to `to`, send `payload`, and feed the answer to
    /// [`Gossip::handle_push_pull_reply`].
    PushPull {
        /// Destination.
        to: SocketAddr,
        /// The destination's zone (this node's own zone for a join to an address of unknown
        /// zone); sealing as for [`Effect::Send`].
        zone: String,
        /// Our state (what the destination may see of it).
        payload: PushPull,
    },
    /// A member changed state (or appeared: `old` is None).
    MemberChanged(MemberChange),
    /// A user event arrived for the first time.
    UserEvent(UserEvent),
    /// Our own incarnation changed: persist it so a restart continues above it.
    IncarnationChanged(u64),
    /// A node answered our LAN detect-ping `id` (see [`Gossip::detect_ping`]).
    Detected {
        /// The request id.
        id: u64,
        /// The node that answered.
        record: NodeRecord,
    },
    /// The member probed this round answered directly after `rtt_ms` (for RTT statistics).
    ProbeAcked {
        /// Round-trip time.
        rtt_ms: u64,
    },
    /// Answer to [`Gossip::ping`]: the node acked after `rtt_ms`, or did not (`None`) in time.
    PingResult {
        /// The sequence number [`Gossip::ping`] returned.
        seq: u32,
        /// Round-trip time, if it answered.
        rtt_ms: Option<u64>,
    },
}

/// A change of a member's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The member.
    pub uuid: NodeUuid,
    /// Its name.
    pub name: String,
    /// Previous state (None: newly known).
    pub old: Option<MemberState>,
    /// New state.
    pub new: MemberState,
    /// When.
    pub at: Time,
}

/// Counters the driver exposes in `agent info` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams decoded.
    pub datagrams_in: u64,
    /// Datagrams that failed to decode.
    pub malformed: u64,
    /// Probes that ended without an ack.
    pub probes_failed: u64,
    /// Suspicions raised by this node.
    pub suspicions: u64,
    /// Times this node refuted a suspicion about itself.
    pub refutations: u64,
    /// Push-pull exchanges started.
    pub push_pulls: u64,
    /// Messages refused because their incarnation was too far ahead of the known one.
    pub incarnations_refused: u64,
    /// New members refused: the member table was full, or their peer introduced too many.
    pub members_refused: u64,
    /// Answers not sent (or sent smaller) because they would have been larger than the
    /// unauthenticated datagram that asked for them.
    pub replies_capped: u64,
    /// News dropped because it was about a member of a zone this node may not see.
    pub zone_filtered: u64,
    /// Push-pulls refused and detect-pings left unanswered because of the asker's zone.
    pub zone_refused: u64,
}

/// Where the input being handled came from: new members are admitted per peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A command of this node, or timers.
    Local,
    /// A datagram or push-pull from this address.
    Peer(SocketAddr),
    /// The answer of the node we joined through (its whole state is welcome).
    JoinReply,
}

#[derive(Debug)]
struct Member {
    record: NodeRecord,
    since: Time,
    suspicion: Option<Suspicion>,
}

#[derive(Debug)]
struct Suspicion {
    started: Time,
    accuser: NodeUuid,
    confirmations: HashSet<NodeUuid>,
}

#[derive(Debug)]
struct Probe {
    target: NodeUuid,
    seq: u32,
    sent: Time,
    direct_deadline: Time,
    end: Time,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
}

#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    requester_seq: u32,
    deadline: Time,
    want_nack: bool,
    /// Asked by an unauthenticated datagram: answer with bare messages (no piggyback).
    capped: bool,
}

/// A set of members with O(1) insert, remove and random sampling (order: insertion, with
/// swap-remove).
#[derive(Debug, Default)]
struct LiveSet {
    list: Vec<NodeUuid>,
    pos: HashMap<NodeUuid, usize>,
}

impl LiveSet {
    fn insert(&mut self, uuid: NodeUuid) {
        if self.pos.contains_key(&uuid) {
            return;
        }
        self.pos.insert(uuid, self.list.len());
        self.list.push(uuid);
    }

    fn remove(&mut self, uuid: NodeUuid) {
        if let Some(pos) = self.pos.remove(&uuid) {
            self.list.swap_remove(pos);
            if let Some(moved) = self.list.get(pos) {
                self.pos.insert(*moved, pos);
            }
        }
    }

    fn contains(&self, uuid: &NodeUuid) -> bool {
        self.pos.contains_key(uuid)
    }

    fn set(&mut self, uuid: NodeUuid, member: bool) {
        if member {
            self.insert(uuid);
        } else {
            self.remove(uuid);
        }
    }
}

/// Where a member stands for this node's protocol duties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Same zone: probed and gossiped with.
    Own,
    /// A proxy of the upper or of a direct sub-zone while this node is a proxy: probed and
    /// gossiped with too.
    Cross,
    /// Kept (visible) but neither probed nor gossiped with: its zone decides about it.
    Seen,
}

/// Up to `k` distinct random members of `list`, excluding `except`.
fn sample(
    list: &[NodeUuid],
    rng: &mut StdRng,
    k: usize,
    except: Option<NodeUuid>,
) -> Vec<NodeUuid> {
    let n = list.len();
    let want = k.min(n);
    let mut out = Vec::with_capacity(want);
    if want == 0 {
        return out;
    }
    if n <= k * 3 {
        let mut all: Vec<NodeUuid> = list
            .iter()
            .copied()
            .filter(|u| Some(*u) != except)
            .collect();
        all.shuffle(rng);
        all.truncate(k);
        return all;
    }
    let mut tries = 0;
    while out.len() < want && tries < k * 10 {
        tries += 1;
        let id = list[rng.random_range(0..n)];
        if Some(id) != except && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// How a push-pull from a node of another zone is answered (the original's rule).
enum Answer {
    /// Everything this node may show the asker (same zone, or the asker's zone is above).
    All,
    /// This node is a proxy and the asker's zone a direct sub-zone: this zone's proxies and
    /// the members of the asker's zone.
    ProxyView,
    /// Nothing.
    Refuse,
}

/// One entry of the membership history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When.
    pub at: Time,
    /// Which node.
    pub uuid: NodeUuid,
    /// Its name.
    pub name: String,
    /// Previous state (None: newly known).
    pub old: Option<MemberState>,
    /// New state.
    pub new: MemberState,
}

/// The gossip state machine of one node.
pub struct Gossip {
    cfg: GossipConfig,
    me: NodeRecord,
    members: HashMap<NodeUuid, Member>,
    /// Alive/suspect members, for O(1) random sampling.
    live: LiveSet,
    /// Live members of this node's zone (probed, gossiped with).
    own: LiveSet,
    /// Live proxies of the upper and direct sub-zones, while this node is a proxy (probed,
    /// gossiped with).
    cross: LiveSet,
    /// Member by address, for the zone of a reply's destination.
    by_addr: HashMap<SocketAddr, NodeUuid>,
    probe_order: Vec<NodeUuid>,
    probe_index: usize,
    rng: StdRng,
    seq: u32,
    probe: Option<Probe>,
    relays: HashMap<u32, Relay>,
    next_probe: Time,
    next_gossip: Time,
    next_push_pull: Time,
    next_reap: Time,
    queue: BroadcastQueue,
    /// The same news for the proxies of other zones (a proxy's relay), with its own transmit
    /// counts: news reaches the other zones however small this zone is. Empty on a node
    /// without cross-zone peers.
    relay: BroadcastQueue,
    /// Deadlines of the current suspicions (few), so timers never scan the whole member table.
    suspect_deadlines: HashMap<NodeUuid, Time>,
    /// After a join, push-pull again at 2 s, 4 s, 8 s, ... (0: normal schedule) so a node that
    /// joined early in a mass join catches up with the nodes that joined after it.
    fast_sync_ms: u64,
    joining: bool,
    /// The latest time an input carried (broadcasts schedule early rounds relative to it).
    now: Time,
    /// When the last gossip round ran.
    last_gossip: Time,
    /// When we last answered a detect-ping from each address (rate limit).
    detect_replies: HashMap<SocketAddr, Time>,
    /// Pings asked for by the user (`gossip ping`): sequence → time sent.
    user_pings: HashMap<u32, Time>,
    /// News too big for a datagram waits for a push-pull round with a few peers.
    push_pull_soon: bool,
    next_push_pull_soon: Time,
    /// Last time we corrected a sender's stale news about a node (rate limit).
    corrections: HashMap<(SocketAddr, NodeUuid), Time>,
    local_health: u32,
    events_seen: HashMap<u64, Time>,
    events: VecDeque<(Time, UserEvent)>,
    history: VecDeque<HistoryEntry>,
    leaving: bool,
    effects: Vec<Effect>,
    stats: Stats,
    /// Where the input being handled came from.
    source: Source,
    /// Size of the datagram being handled when answers to it must not be larger
    /// ([`GossipConfig::cap_replies`]).
    reply_cap: Option<usize>,
    /// New members introduced per peer IP in the current window: (window start, count).
    introduced: HashMap<IpAddr, (Time, usize)>,
    /// How far others moved our own incarnation in the current hour: (hour start, total).
    self_jumps: (Time, u64),
}

impl Gossip {
    /// A node with identity `me` (state alive; `me.incarnation` should continue above the
    /// incarnation persisted by a previous run), starting at `now`.
    pub fn new(cfg: GossipConfig, mut me: NodeRecord, seed: u64, now: Time) -> Self {
        me.state = MemberState::Alive;
        let mut rng = StdRng::seed_from_u64(seed);
        // Spread the timers of nodes started together.
        let jitter = |rng: &mut StdRng, d: Duration| rng.random_range(0..ms(d).max(1));
        let next_probe = now + jitter(&mut rng, cfg.probe_interval);
        let next_gossip = now + jitter(&mut rng, cfg.gossip_interval);
        let next_push_pull =
            now + ms(cfg.push_pull_interval) / 2 + jitter(&mut rng, cfg.push_pull_interval);
        Self {
            me,
            members: HashMap::default(),
            live: LiveSet::default(),
            own: LiveSet::default(),
            cross: LiveSet::default(),
            by_addr: HashMap::default(),
            probe_order: Vec::new(),
            probe_index: 0,
            rng,
            seq: 0,
            probe: None,
            relays: HashMap::default(),
            next_probe,
            next_gossip,
            next_push_pull,
            next_reap: now + 1000,
            queue: BroadcastQueue::default(),
            relay: BroadcastQueue::default(),
            suspect_deadlines: HashMap::default(),
            fast_sync_ms: 0,
            joining: false,
            now,
            last_gossip: now,
            user_pings: HashMap::default(),
            detect_replies: HashMap::default(),
            push_pull_soon: false,
            next_push_pull_soon: Time::MAX,
            corrections: HashMap::default(),
            local_health: 0,
            events_seen: HashMap::default(),
            events: VecDeque::new(),
            history: VecDeque::new(),
            leaving: false,
            effects: Vec::new(),
            stats: Stats::default(),
            source: Source::Local,
            reply_cap: None,
            introduced: HashMap::default(),
            self_jumps: (now, 0),
            cfg,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Accessors

    /// This node's record.
    pub fn me(&self) -> &NodeRecord {
        &self.me
    }

    /// Every known member, this node first, tombstones included.
    pub fn members(&self) -> impl Iterator<Item = &NodeRecord> {
        std::iter::once(&self.me).chain(self.members.values().map(|m| &m.record))
    }

    /// A member by uuid (this node included).
    pub fn member(&self, uuid: &NodeUuid) -> Option<&NodeRecord> {
        if *uuid == self.me.uuid {
            return Some(&self.me);
        }
        self.members.get(uuid).map(|m| &m.record)
    }

    /// Number of alive or suspect members, this node included.
    pub fn live_count(&self) -> usize {
        self.live.list.len() + 1
    }

    /// Alive or suspect members (not this node), in no particular order.
    pub fn live_members(&self) -> &[NodeUuid] {
        &self.live.list
    }

    /// The zone tree this node applies.
    pub fn zones(&self) -> &crate::ZoneTree {
        &self.cfg.zones
    }

    /// Membership history, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.history.iter()
    }

    /// User events seen in the last `event_ttl`, oldest first.
    pub fn recent_events(&self) -> impl Iterator<Item = &UserEvent> {
        self.events.iter().map(|(_, e)| e)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Local health multiplier (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// Queued broadcasts (for tests and metrics).
    pub fn queued_broadcasts(&self) -> usize {
        self.queue.len() + self.relay.len()
    }

    /// Take the effects produced so far.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Move the produced effects into `out` (keeps allocations in hot loops).
    pub fn drain_effects_into(&mut self, out: &mut Vec<Effect>) {
        out.append(&mut self.effects);
    }

    // -----------------------------------------------------------------------------------------
    // Commands

    /// Start joining through `addr` (a seed or `gossip join` target).
    pub fn join(&mut self, addr: SocketAddr) {
        // The seed's zone is unknown (unless it is a member already): seal for our own zone.
        let zone = self.zone_of_addr(addr);
        let payload = self.local_state_for(&zone, true);
        self.stats.push_pulls += 1;
        self.joining = true;
        self.effects.push(Effect::PushPull {
            to: addr,
            zone,
            payload,
        });
    }

    /// Move this node to `zone` (a live `zone change`): the new record is announced with a
    /// new incarnation (and sent to the old zone's members, which then forget this node),
    /// members the new zone may not see are forgotten (no member change is reported for
    /// them: they did not change, this node stopped seeing them), and a push-pull with a
    /// member of the new zone (else a proxy of an upper zone) fetches the new zone's view.
    pub fn set_zone(&mut self, now: Time, zone: String) {
        self.now = self.now.max(now);
        if zone == self.me.zone {
            return;
        }
        let old_peers: Vec<(NodeUuid, SocketAddr)> = self
            .own
            .list
            .iter()
            .filter_map(|u| self.addr_of(u).map(|a| (*u, a)))
            .collect();
        let old_zone = std::mem::replace(&mut self.me.zone, zone);
        let gone: Vec<NodeUuid> = self
            .members
            .values()
            .filter(|m| !self.visible(&m.record))
            .map(|m| m.record.uuid)
            .collect();
        for uuid in gone {
            self.forget(uuid);
        }
        let n = self.peer_count();
        let all: Vec<NodeUuid> = self.members.keys().copied().collect();
        for uuid in all {
            self.place(uuid);
            // Suspicions are timed by the zone that decides about the member.
            let decides = self.decides(&uuid);
            let suspect = self
                .members
                .get(&uuid)
                .is_some_and(|m| m.record.state == MemberState::Suspect);
            if !decides {
                self.suspect_deadlines.remove(&uuid);
            } else if suspect && !self.suspect_deadlines.contains_key(&uuid) {
                let timeout = ms(self.cfg.suspicion_timeout(n, 0));
                self.suspect_deadlines.insert(uuid, now + timeout);
            }
        }
        self.probe_order.clear();
        self.probe_index = 0;
        self.bump_and_announce();
        // The old zone's members no longer hear from us: tell them where we went (each one
        // that may not see us any more forgets us on receipt).
        let alive = codec::encode_message(&Message::Alive(self.me.clone()));
        if alive.len() + codec::datagram_overhead(1) <= self.cfg.max_datagram {
            for (uuid, addr) in old_peers {
                if !self.own.contains(&uuid) {
                    self.effects.push(Effect::Send {
                        to: addr,
                        zone: old_zone.clone(),
                        bytes: codec::datagram([alive.as_slice()]),
                    });
                }
            }
        }
        let mut target = sample(&self.own.list, &mut self.rng, 1, None);
        if target.is_empty() {
            let upper: Vec<NodeUuid> = self
                .live
                .list
                .iter()
                .copied()
                .filter(|u| {
                    self.members.get(u).is_some_and(|m| {
                        m.record.is_proxy && self.cfg.zones.is_above(&m.record.zone, &self.me.zone)
                    })
                })
                .collect();
            target = sample(&upper, &mut self.rng, 1, None);
        }
        if let Some(peer) = target.first()
            && let Some(m) = self.members.get(peer)
        {
            let (addr, zone) = (m.record.addr, m.record.zone.clone());
            let payload = self.local_state_for(&zone, false);
            self.stats.push_pulls += 1;
            self.effects.push(Effect::PushPull {
                to: addr,
                zone,
                payload,
            });
        }
    }

    /// Change this node's groups (static or detected); gossiped with a new incarnation.
    pub fn set_groups(&mut self, mut groups: Vec<String>) {
        groups.sort();
        groups.dedup();
        if groups != self.me.groups {
            self.me.groups = groups;
            self.bump_and_announce();
        }
    }

    /// Replace this node's check summary (sorted by name); gossiped when it changes.
    pub fn set_checks(&mut self, mut checks: Vec<CheckSummary>) {
        checks.sort();
        checks.dedup_by(|a, b| a.name == b.name);
        if checks != self.me.checks {
            self.me.checks = checks;
            self.bump_and_announce();
        }
    }

    /// Replace this node's services (sorted by name); gossiped when they change.
    pub fn set_services(&mut self, mut services: Vec<ServiceRecord>) {
        services.sort();
        services.dedup_by(|a, b| a.name == b.name);
        if services != self.me.services {
            self.me.services = services;
            self.bump_and_announce();
        }
    }

    /// Put the whole node in maintenance (`Some(reason)`) or take it out (`None`); gossiped
    /// when it changes.
    pub fn set_maintenance(&mut self, reason: Option<String>) {
        if reason != self.me.maintenance {
            self.me.maintenance = reason;
            self.bump_and_announce();
        }
    }

    /// Leave the cluster: announce it (queued and sent at once to a few members). The driver
    /// keeps ticking for a short while so the news spreads, then stops.
    pub fn leave(&mut self, now: Time) {
        self.now = self.now.max(now);
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.me.incarnation = self.me.incarnation.saturating_add(1);
        self.me.state = MemberState::Left;
        self.effects
            .push(Effect::IncarnationChanged(self.me.incarnation));
        let msg = Message::Leave {
            node: self.me.uuid,
            incarnation: self.me.incarnation,
        };
        let bytes = codec::encode_message(&msg);
        if !self.cross.list.is_empty() {
            self.relay
                .push(BroadcastKey::Node(self.me.uuid), bytes.clone());
        }
        self.queue
            .push(BroadcastKey::Node(self.me.uuid), bytes.clone());
        let targets = self.gossip_targets(self.cfg.gossip_nodes * 2);
        for t in targets {
            if let Some(addr) = self.addr_of(&t) {
                self.push_send(addr, codec::datagram([bytes.as_slice()]));
            }
        }
        self.push_history(
            now,
            self.me.uuid,
            self.me.name.clone(),
            Some(MemberState::Alive),
            MemberState::Left,
        );
    }

    /// Probe `uuid` now (for `gossip ping`): returns the sequence number of the
    /// [`Effect::PingResult`] that follows within twice the probe timeout, or None for an
    /// unknown node.
    pub fn ping(&mut self, now: Time, uuid: NodeUuid) -> Option<u32> {
        self.now = self.now.max(now);
        let addr = self.addr_of(&uuid)?;
        let seq = self.next_seq();
        self.user_pings.insert(seq, now);
        let ping = Message::Ping {
            seq,
            target: uuid,
            from: self.me.uuid,
        };
        self.send_ping(addr, &ping, uuid);
        Some(seq)
    }

    /// A LAN detect-ping to broadcast (the driver sends it to the broadcast address of every
    /// interface on the gossip port). Answers come back as [`Effect::Detected`] with this id.
    pub fn detect_ping(&mut self) -> (u64, Vec<u8>) {
        let id: u64 = self.rng.random();
        let mut msg = Message::DetectPing {
            id,
            from: self.me.uuid,
            zone: self.me.zone.clone(),
            padding: 0,
        };
        let bare = codec::datagram([codec::encode_message(&msg).as_slice()]).len();
        // Padded so that agents that answer no more than they receive can answer; the varint
        // of the padding length takes two bytes.
        if let Message::DetectPing { padding, .. } = &mut msg {
            *padding = codec::DETECT_PING_SIZE.saturating_sub(bare + 1);
        }
        (
            id,
            codec::datagram([codec::encode_message(&msg).as_slice()]),
        )
    }

    /// Whether [`Gossip::leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Force `uuid` (another node) into the left state, as `gossip leave NODE` does for a node that
    /// is gone for good. Returns false for an unknown node.
    pub fn force_leave(&mut self, now: Time, uuid: NodeUuid) -> bool {
        self.now = self.now.max(now);
        let Some(m) = self.members.get(&uuid) else {
            return false;
        };
        let incarnation = m.record.incarnation;
        self.handle_leave(now, uuid, incarnation);
        true
    }

    /// Create a user event, deliver it locally and spread it.
    pub fn add_event(
        &mut self,
        now: Time,
        kind: String,
        payload: Vec<u8>,
        created_ms: u64,
    ) -> UserEvent {
        self.now = self.now.max(now);
        let event = UserEvent {
            id: self.rng.random(),
            origin: self.me.uuid,
            kind,
            payload,
            created_ms,
        };
        self.handle_event(now, event.clone());
        event
    }

    // -----------------------------------------------------------------------------------------
    // Inputs

    /// A datagram arrived from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Time,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), DecodeError> {
        self.now = self.now.max(now);
        let messages = match codec::decode_datagram(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        self.stats.datagrams_in += 1;
        self.source = Source::Peer(from);
        self.reply_cap = self.cfg.cap_replies.then_some(bytes.len());
        for m in messages {
            self.handle_message(now, from, m);
        }
        self.source = Source::Local;
        self.reply_cap = None;
        Ok(())
    }

    fn handle_message(&mut self, now: Time, from: SocketAddr, m: Message) {
        let sender = from;
        match m {
            Message::Ping { seq, target, .. } => {
                if target == self.me.uuid && !self.leaving {
                    let ack = Message::Ack {
                        seq,
                        from: self.me.uuid,
                    };
                    self.send_with_piggyback(from, &ack);
                    // A member of a zone that may not see us probes us: it missed our move to
                    // another zone. Our record makes it forget us.
                    if let Some(z) = self.known_zone_of_addr(from)
                        && !self.cfg.zones.may_see(&z, &self.me.zone, self.me.is_proxy)
                    {
                        self.correct(now, Some(from), self.me.uuid);
                    }
                }
            }
            Message::Ack { seq, .. } => {
                if let Some(sent) = self.user_pings.remove(&seq) {
                    self.effects.push(Effect::PingResult {
                        seq,
                        rtt_ms: Some(now.saturating_sub(sent)),
                    });
                }
                if let Some(p) = &self.probe
                    && p.seq == seq
                {
                    // Acks relayed through other nodes arrive with the same seq: only a direct
                    // answer before the direct deadline is a round-trip time.
                    if now <= p.direct_deadline {
                        self.effects.push(Effect::ProbeAcked {
                            rtt_ms: now.saturating_sub(p.sent),
                        });
                    }
                    self.probe = None;
                    self.local_health = self.local_health.saturating_sub(1);
                }
                if let Some(r) = self.relays.remove(&seq) {
                    let ack = Message::Ack {
                        seq: r.requester_seq,
                        from: self.me.uuid,
                    };
                    if r.capped {
                        self.send_bare(r.requester, &ack);
                    } else {
                        self.send_with_piggyback(r.requester, &ack);
                    }
                }
            }
            Message::Nack { seq } => {
                if let Some(p) = &mut self.probe
                    && p.seq == seq
                {
                    p.nacks += 1;
                }
            }
            Message::IndirectPing {
                seq,
                target,
                target_addr,
                want_nack,
            } => {
                let capped = self.reply_cap.is_some();
                if capped
                    && self
                        .members
                        .get(&target)
                        .is_none_or(|m| m.record.addr != target_addr)
                {
                    // Unauthenticated: ping only a member we know, at its own address (a forged
                    // request must not aim our traffic at an address of its choosing).
                    self.stats.replies_capped += 1;
                    return;
                }
                let my_seq = self.next_seq();
                let ping = Message::Ping {
                    seq: my_seq,
                    target,
                    from: self.me.uuid,
                };
                if capped {
                    self.send_bare(target_addr, &ping);
                } else {
                    self.send_ping(target_addr, &ping, target);
                }
                self.relays.insert(
                    my_seq,
                    Relay {
                        requester: from,
                        requester_seq: seq,
                        deadline: now + ms(self.cfg.probe_timeout),
                        want_nack,
                        capped,
                    },
                );
            }
            Message::Alive(record) => self.handle_alive(now, record),
            Message::Suspect {
                node,
                incarnation,
                from,
            } => self.handle_suspect(now, node, incarnation, from, Some(sender)),
            Message::Dead {
                node,
                incarnation,
                from,
            } => self.handle_dead(now, node, incarnation, from, Some(sender)),
            Message::Leave { node, incarnation } => self.handle_leave(now, node, incarnation),
            Message::Event(e) => self.handle_event(now, e),
            Message::DetectPing { id, from, zone, .. } => {
                // Never answer ourselves; answer each asker at most once a second (a broadcast
                // storm must not turn into a reply storm).
                let limited = self
                    .detect_replies
                    .get(&sender)
                    .is_some_and(|t| now.saturating_sub(*t) < 1000);
                // The original's rule: same zone, an asker from an upper zone, or we are a
                // proxy and the asker's zone is a direct sub-zone of ours.
                let zone_ok = match self.cfg.zones.relation(&self.me.zone, &zone) {
                    Relation::Same | Relation::Upper => true,
                    Relation::Lower => {
                        self.me.is_proxy && self.cfg.zones.is_direct_sub_zone(&zone, &self.me.zone)
                    }
                    Relation::Other => false,
                };
                if from != self.me.uuid && !self.leaving && !limited && !zone_ok {
                    self.stats.zone_refused += 1;
                } else if from != self.me.uuid && !self.leaving && !limited {
                    self.detect_replies.insert(sender, now);
                    // Who we are, not how we are: check states and services stay out of the
                    // answer (it must fit one datagram; a joiner learns the rest by push-pull).
                    let mut record = self.me.clone();
                    record.checks.clear();
                    record.services.clear();
                    let pong = Message::DetectPong { id, record };
                    let bytes = codec::datagram([codec::encode_message(&pong).as_slice()]);
                    if self.reply_cap.is_some_and(|cap| bytes.len() > cap) {
                        self.stats.replies_capped += 1;
                    } else {
                        // Sealed for the asker's zone (the driver falls back to our own key
                        // when it does not hold that one, as for an asker from above).
                        self.effects.push(Effect::Send {
                            to: sender,
                            zone,
                            bytes,
                        });
                    }
                }
            }
            Message::DetectPong { id, record } => {
                if record.uuid != self.me.uuid {
                    self.effects.push(Effect::Detected { id, record });
                }
            }
        }
    }

    /// A push-pull request arrived over TCP: merge it, then answer with our state (merging first
    /// means a refutation of our own death is already in the answer).
    ///
    /// Zones (the original's rule): an asker of this zone or of an upper zone gets everything
    /// it may see of our view; an asker of a direct sub-zone asking a proxy gets this zone's
    /// proxies and the members of its own zone; anyone else gets an empty answer (and its
    /// request is not merged). The asker's zone is its own record, the first of the request.
    pub fn handle_push_pull(&mut self, now: Time, from: SocketAddr, request: PushPull) -> PushPull {
        self.now = self.now.max(now);
        let asker = request.members.first().map(|r| r.zone.clone());
        let rule = asker
            .as_deref()
            .map_or(Answer::Refuse, |z| self.answer_rule(z));
        let Some(asker_zone) = asker.filter(|_| !matches!(rule, Answer::Refuse)) else {
            self.stats.zone_refused += 1;
            return PushPull {
                join: false,
                members: Vec::new(),
                events: Vec::new(),
            };
        };
        self.source = Source::Peer(from);
        self.merge(now, request);
        self.source = Source::Local;
        match rule {
            Answer::ProxyView => self.proxy_view_for(&asker_zone),
            _ => self.local_state_for(&asker_zone, false),
        }
    }

    /// How a push-pull from a node of `asker_zone` is answered.
    fn answer_rule(&self, asker_zone: &str) -> Answer {
        match self.cfg.zones.relation(&self.me.zone, asker_zone) {
            Relation::Same | Relation::Upper => Answer::All,
            Relation::Lower
                if self.me.is_proxy
                    && self.cfg.zones.is_direct_sub_zone(asker_zone, &self.me.zone) =>
            {
                Answer::ProxyView
            }
            _ => Answer::Refuse,
        }
    }

    /// A proxy's answer to a node of a direct sub-zone: ourselves, this zone's proxies and the
    /// members of the asker's zone.
    fn proxy_view_for(&self, asker_zone: &str) -> PushPull {
        PushPull {
            join: false,
            members: self
                .members()
                .filter(|r| {
                    r.uuid == self.me.uuid
                        || (r.zone == self.me.zone && r.is_proxy)
                        || r.zone == asker_zone
                })
                .cloned()
                .collect(),
            events: self.events.iter().map(|(_, e)| e.clone()).collect(),
        }
    }

    /// A part of a push-pull request that comes in several parts (a big state travels in
    /// parts of bounded size, see [`PushPull::split`]); the last part goes to
    /// [`Gossip::handle_push_pull`].
    pub fn handle_push_pull_part(&mut self, now: Time, from: SocketAddr, part: PushPull) {
        self.now = self.now.max(now);
        let allowed = part
            .members
            .first()
            .is_some_and(|r| !matches!(self.answer_rule(&r.zone), Answer::Refuse));
        if !allowed {
            self.stats.zone_refused += 1;
            return;
        }
        self.source = Source::Peer(from);
        self.merge(now, part);
        self.source = Source::Local;
    }

    /// The answer from `from` to a push-pull we started (or one part of it: `last` is false
    /// for every part but the last).
    pub fn handle_push_pull_reply(
        &mut self,
        now: Time,
        from: SocketAddr,
        reply: PushPull,
        last: bool,
    ) {
        self.now = self.now.max(now);
        self.source = if self.joining {
            Source::JoinReply
        } else {
            Source::Peer(from)
        };
        self.merge(now, reply);
        self.source = Source::Local;
        if last && std::mem::take(&mut self.joining) {
            self.fast_sync_ms = 2000;
            self.next_push_pull = now + self.fast_sync_ms + self.rng.random_range(0..500);
        }
    }

    fn merge(&mut self, now: Time, state: PushPull) {
        // By convention the sender puts its own record first; it accuses on its own behalf.
        let sender = state
            .members
            .first()
            .map(|r| r.uuid)
            .unwrap_or(self.me.uuid);
        for record in state.members {
            if record.state != MemberState::Alive
                && record.uuid != self.me.uuid
                && !self.visible(&record)
            {
                self.stats.zone_filtered += 1;
                continue;
            }
            match record.state {
                MemberState::Alive => self.handle_alive(now, record),
                // The zone that decides about a member we do not probe said it is dead:
                // believe it (we cannot check it ourselves).
                MemberState::Dead
                    if record.uuid != self.me.uuid && self.decided_elsewhere(&record.uuid) =>
                {
                    self.handle_dead(now, record.uuid, record.incarnation, sender, None);
                }
                // A remote "dead" is only a suspicion here: if the node is in fact alive it gets
                // the chance to refute (this is what heals partitions).
                MemberState::Suspect | MemberState::Dead => {
                    if record.uuid != self.me.uuid && !self.members.contains_key(&record.uuid) {
                        // Unknown and not alive: keep it as a tombstone-to-be so views converge.
                        let mut r = record;
                        r.state = MemberState::Dead;
                        if self.admit(now) {
                            self.add_member(now, r);
                        }
                    } else {
                        self.handle_suspect(now, record.uuid, record.incarnation, sender, None);
                    }
                }
                MemberState::Left => self.handle_leave(now, record.uuid, record.incarnation),
            }
        }
        for e in state.events {
            self.handle_event(now, e);
        }
    }

    /// Advance timers to `now`. Call it at least every few tens of milliseconds, or at
    /// [`Gossip::next_deadline`].
    pub fn handle_tick(&mut self, now: Time) {
        self.now = self.now.max(now);
        self.tick_probe(now);
        self.tick_relays(now);
        self.tick_user_pings(now);
        self.tick_suspicions(now);
        if now >= self.next_gossip {
            self.last_gossip = now;
            self.gossip_round();
            // While there is news left to spread, run rounds 4× as often: every item is still
            // sent exactly its retransmit limit times, only sooner.
            let interval = ms(self.cfg.gossip_interval);
            self.next_gossip = now
                + if self.queue.is_empty() && self.relay.is_empty() {
                    interval
                } else {
                    (interval / 4).max(EAGER_GAP_MS)
                };
        }
        if now >= self.next_push_pull {
            let n = self.peer_count();
            let normal = ms(self.cfg.push_pull_interval_for(n));
            self.next_push_pull = if self.fast_sync_ms > 0 && self.fast_sync_ms * 2 < normal {
                self.fast_sync_ms *= 2;
                now + self.fast_sync_ms
            } else {
                self.fast_sync_ms = 0;
                now + normal
            };
            if !self.leaving {
                self.push_pull_round();
            }
        }
        if self.push_pull_soon && now >= self.next_push_pull_soon && !self.leaving {
            self.push_pull_soon = false;
            self.next_push_pull_soon = Time::MAX;
            for peer in self.gossip_targets(self.cfg.gossip_nodes) {
                self.push_pull_with(&peer);
            }
        }
        if now >= self.next_reap {
            self.next_reap = now + 1000;
            self.reap(now);
        }
    }

    /// The earliest time at which [`Gossip::handle_tick`] has something to do.
    pub fn next_deadline(&self) -> Time {
        // An empty queue needs no gossip round: do not wake for it (news moves the round up).
        let gossip_due = if self.queue.is_empty() && self.relay.is_empty() {
            Time::MAX
        } else {
            self.next_gossip
        };
        let mut t = gossip_due.min(self.next_push_pull).min(self.next_reap);
        t = t.min(match &self.probe {
            Some(p) if !p.indirect_sent => p.direct_deadline,
            Some(p) => p.end,
            None => self.next_probe,
        });
        for r in self.relays.values() {
            t = t.min(r.deadline);
        }
        for sent in self.user_pings.values() {
            t = t.min(sent + 2 * ms(self.cfg.probe_timeout));
        }
        for d in self.suspect_deadlines.values() {
            t = t.min(*d);
        }
        t
    }

    // -----------------------------------------------------------------------------------------
    // Probing

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn scaled(&self, d: Duration) -> u64 {
        ms(d) * u64::from(self.local_health + 1)
    }

    fn tick_probe(&mut self, now: Time) {
        if let Some(p) = &self.probe
            && !p.indirect_sent
            && now >= p.direct_deadline
        {
            let (target, seq) = (p.target, p.seq);
            let addr = self.addr_of(&target);
            let helpers = self.helpers(self.cfg.indirect_checks, target);
            let mut sent = 0;
            if let Some(target_addr) = addr {
                for h in helpers {
                    if let Some(h_addr) = self.addr_of(&h) {
                        let msg = Message::IndirectPing {
                            seq,
                            target,
                            target_addr,
                            want_nack: true,
                        };
                        self.send_with_piggyback(h_addr, &msg);
                        sent += 1;
                    }
                }
            }
            if let Some(p) = &mut self.probe {
                p.indirect_sent = true;
                p.expected_nacks = sent;
            }
        }
        if let Some(p) = &self.probe
            && now >= p.end
        {
            let (target, expected, nacks) = (p.target, p.expected_nacks, p.nacks);
            self.probe = None;
            self.stats.probes_failed += 1;
            // Lifeguard: a failed probe, and every nack we did not get, hint that *we* are slow.
            let missed = expected.saturating_sub(nacks);
            self.local_health =
                (self.local_health + 1 + missed.min(1)).min(self.cfg.max_local_health);
            // A failed probe of a member we already suspect is an independent confirmation
            // (Lifeguard): it shortens the suspicion timeout everywhere.
            if let Some(m) = self.members.get(&target)
                && m.record.state.is_live()
            {
                let incarnation = m.record.incarnation;
                self.stats.suspicions += 1;
                self.handle_suspect(now, target, incarnation, self.me.uuid, None);
            }
        }
        if self.probe.is_none() && now >= self.next_probe {
            self.next_probe = now + self.scaled(self.cfg.probe_interval);
            if self.leaving {
                return;
            }
            if let Some(target) = self.next_probe_target() {
                let seq = self.next_seq();
                if let Some(addr) = self.addr_of(&target) {
                    let timeout = self.scaled(self.cfg.probe_timeout);
                    let interval = self.scaled(self.cfg.probe_interval);
                    self.probe = Some(Probe {
                        target,
                        seq,
                        sent: now,
                        direct_deadline: now + timeout,
                        // Leave room for the indirect round inside the probe interval.
                        end: now + interval.max(timeout * 2),
                        indirect_sent: false,
                        expected_nacks: 0,
                        nacks: 0,
                    });
                    let ping = Message::Ping {
                        seq,
                        target,
                        from: self.me.uuid,
                    };
                    self.send_ping(addr, &ping, target);
                }
            }
        }
    }

    fn next_probe_target(&mut self) -> Option<NodeUuid> {
        for _ in 0..2 {
            while self.probe_index < self.probe_order.len() {
                let id = self.probe_order[self.probe_index];
                self.probe_index += 1;
                if self.decides(&id) {
                    return Some(id);
                }
            }
            // End of a round: new random order of the members we probe.
            self.probe_order = self.own.list.clone();
            self.probe_order.extend_from_slice(&self.cross.list);
            self.probe_order.shuffle(&mut self.rng);
            self.probe_index = 0;
        }
        None
    }

    fn tick_user_pings(&mut self, now: Time) {
        let timeout = 2 * ms(self.cfg.probe_timeout);
        let expired: Vec<u32> = self
            .user_pings
            .iter()
            .filter(|(_, sent)| now.saturating_sub(**sent) >= timeout)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            self.user_pings.remove(&seq);
            self.effects.push(Effect::PingResult { seq, rtt_ms: None });
        }
    }

    fn tick_relays(&mut self, now: Time) {
        if self.relays.values().all(|r| r.deadline > now) {
            return;
        }
        let expired: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            if let Some(r) = self.relays.remove(&seq)
                && r.want_nack
            {
                let nack = Message::Nack {
                    seq: r.requester_seq,
                };
                if r.capped {
                    self.send_bare(r.requester, &nack);
                } else {
                    self.send_with_piggyback(r.requester, &nack);
                }
            }
        }
    }

    fn tick_suspicions(&mut self, now: Time) {
        if self.suspect_deadlines.values().all(|d| *d > now) {
            return;
        }
        let expired: Vec<(NodeUuid, u64)> = self
            .suspect_deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .filter_map(|(u, _)| self.members.get(u).map(|m| (*u, m.record.incarnation)))
            .collect();
        for (uuid, incarnation) in expired {
            self.suspect_deadlines.remove(&uuid);
            self.handle_dead(now, uuid, incarnation, self.me.uuid, None);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Dissemination

    fn gossip_round(&mut self) {
        if self.own.list.is_empty() && self.cross.list.is_empty() {
            // Nobody to tell: news would wait forever (and keep the busy cadence). A node that
            // joins later gets our state by push-pull.
            self.queue = BroadcastQueue::default();
            self.relay = BroadcastQueue::default();
        }
        if self.queue.is_empty() && self.relay.is_empty() {
            return;
        }
        let targets = self.gossip_targets(self.cfg.gossip_nodes);
        let limit = self.cfg.retransmit_limit(self.peer_count());
        // Once nothing is left for our own zone, nothing is left for its other members; the
        // proxies of other zones may still have news due (filtered for them).
        let mut own_done = false;
        for t in targets {
            let Some(m) = self.members.get(&t) else {
                continue;
            };
            let (addr, zone) = (m.record.addr, m.record.zone.clone());
            let same = zone == self.me.zone;
            if same && own_done {
                continue;
            }
            let budget = self.cfg.max_datagram - codec::datagram_overhead(255);
            let parts = self.select_for_zone(&zone, budget, limit);
            if parts.is_empty() {
                own_done |= same;
                continue;
            }
            let bytes = codec::datagram(parts.iter().map(Vec::as_slice));
            self.effects.push(Effect::Send {
                to: addr,
                zone,
                bytes,
            });
        }
    }

    /// Queued news a node of `zone` may receive, within `budget` bytes.
    fn select_for_zone(&mut self, zone: &str, budget: usize, limit: u32) -> Vec<Vec<u8>> {
        if zone == self.me.zone {
            // Same zone, same visibility: everything we hold may go.
            return self.queue.select(budget, limit);
        }
        let (members, zones, me) = (&self.members, &self.cfg.zones, &self.me);
        self.relay.select_for(budget, limit, |key| {
            let about = match key {
                BroadcastKey::Node(u) | BroadcastKey::Confirm(u, _) => u,
                BroadcastKey::Event(_) => return true,
            };
            let (z, proxy) = if about == me.uuid {
                (me.zone.as_str(), me.is_proxy)
            } else {
                match members.get(&about) {
                    Some(m) => (m.record.zone.as_str(), m.record.is_proxy),
                    None => return false,
                }
            };
            zones.may_see(zone, z, proxy)
        })
    }

    fn push_pull_round(&mut self) {
        // A member of our zone; a proxy may also pick a proxy of the upper or a direct
        // sub-zone.
        let peer = if self.cross.list.is_empty() {
            sample(&self.own.list, &mut self.rng, 1, None)
        } else {
            let mut all = self.own.list.clone();
            all.extend_from_slice(&self.cross.list);
            sample(&all, &mut self.rng, 1, None)
        };
        if let Some(peer) = peer.first() {
            self.push_pull_with(peer);
        }
        // Partition healing: also try one dead (not left) member; if it is in fact alive on the
        // other side of a healed partition, the exchange makes both sides refute and reconverge.
        // Only members we probe: the others' zones decide about them.
        let dead: Vec<NodeUuid> = self
            .members
            .values()
            .filter(|m| {
                m.record.state == MemberState::Dead && self.class_of(&m.record) != Class::Seen
            })
            .map(|m| m.record.uuid)
            .collect();
        if !dead.is_empty() {
            let uuid = dead[self.rng.random_range(0..dead.len())];
            self.push_pull_with(&uuid);
        }
    }

    /// Start a push-pull with member `uuid`.
    fn push_pull_with(&mut self, uuid: &NodeUuid) {
        let Some(m) = self.members.get(uuid) else {
            return;
        };
        let (to, zone) = (m.record.addr, m.record.zone.clone());
        let payload = self.local_state_for(&zone, false);
        self.stats.push_pulls += 1;
        self.effects.push(Effect::PushPull { to, zone, payload });
    }

    /// Our state for a push-pull with a node of `zone`: ourselves first, then every member
    /// that zone may see (a node is never sent more than its visibility rule allows).
    fn local_state_for(&self, zone: &str, join: bool) -> PushPull {
        let members = if zone == self.me.zone {
            self.members().cloned().collect()
        } else {
            self.members()
                .filter(|r| {
                    r.uuid == self.me.uuid || self.cfg.zones.may_see(zone, &r.zone, r.is_proxy)
                })
                .cloned()
                .collect()
        };
        PushPull {
            join,
            members,
            events: self.events.iter().map(|(_, e)| e.clone()).collect(),
        }
    }

    /// Lifeguard's buddy system: a ping to a member we suspect carries the suspicion, so a
    /// suspect learns it (and refutes) whenever anyone probes it, not only if the gossip burst
    /// that spread the suspicion happened to reach it.
    fn send_ping(&mut self, to: SocketAddr, ping: &Message, target: NodeUuid) {
        let suspicion = self.members.get(&target).and_then(|m| {
            (m.record.state == MemberState::Suspect).then_some(Message::Suspect {
                node: target,
                incarnation: m.record.incarnation,
                from: self.me.uuid,
            })
        });
        match suspicion {
            None => self.send_with_piggyback(to, ping),
            Some(suspect) => {
                let parts = [codec::encode_message(ping), codec::encode_message(&suspect)];
                self.push_send(to, codec::datagram(parts.iter().map(Vec::as_slice)));
            }
        }
    }

    /// One message alone in a datagram.
    fn send_bare(&mut self, to: SocketAddr, msg: &Message) {
        self.push_send(to, codec::datagram([codec::encode_message(msg).as_slice()]));
    }

    /// Send a datagram to `to`, sealed for its zone.
    fn push_send(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        let zone = self.zone_of_addr(to);
        self.effects.push(Effect::Send { to, zone, bytes });
    }

    /// The zone of the member at `addr`, if we know one there.
    fn known_zone_of_addr(&self, addr: SocketAddr) -> Option<String> {
        let uuid = self.by_addr.get(&addr)?;
        self.members.get(uuid).map(|m| m.record.zone.clone())
    }

    /// The zone to seal for when sending to `addr`: its member's, else our own.
    fn zone_of_addr(&self, addr: SocketAddr) -> String {
        self.known_zone_of_addr(addr)
            .unwrap_or_else(|| self.me.zone.clone())
    }

    fn send_with_piggyback(&mut self, to: SocketAddr, msg: &Message) {
        let main = codec::encode_message(msg);
        let mut room = self.cfg.max_datagram;
        if let (Some(cap), Source::Peer(asker)) = (self.reply_cap, self.source)
            && asker == to
        {
            // An answer to an unauthenticated datagram is never larger than it.
            if main.len() + codec::datagram_overhead(1) > cap {
                self.stats.replies_capped += 1;
                return;
            }
            room = room.min(cap);
        }
        let budget = room.saturating_sub(main.len() + codec::datagram_overhead(255));
        let limit = self.cfg.retransmit_limit(self.peer_count());
        let zone = self.zone_of_addr(to);
        let extra = self.select_for_zone(&zone, budget, limit);
        let bytes = codec::datagram(
            std::iter::once(main.as_slice()).chain(extra.iter().map(Vec::as_slice)),
        );
        self.effects.push(Effect::Send { to, zone, bytes });
    }

    fn broadcast(&mut self, key: BroadcastKey, msg: &Message) {
        let bytes = codec::encode_message(msg);
        if bytes.len() + codec::datagram_overhead(1) > self.cfg.max_datagram {
            // Too big for a datagram (a node with many groups): spread it over TCP instead, by
            // push-pull with a few peers, who do the same when it is news to them.
            self.queue.remove(key);
            self.relay.remove(key);
            self.push_pull_soon = true;
            self.next_push_pull_soon = self.next_push_pull_soon.min(self.now);
            return;
        }
        if !self.cross.list.is_empty() {
            self.relay.push(key, bytes.clone());
        }
        self.queue.push(key, bytes);
        // News travels at once instead of waiting for the next round (at most one early round
        // per EAGER_GAP_MS): each hop then costs a network delay, not half a gossip interval.
        let earliest = self.now.max(self.last_gossip + EAGER_GAP_MS);
        self.next_gossip = self.next_gossip.min(earliest);
    }

    fn bump_and_announce(&mut self) {
        self.me.incarnation = self.me.incarnation.saturating_add(1);
        self.effects
            .push(Effect::IncarnationChanged(self.me.incarnation));
        let msg = Message::Alive(self.me.clone());
        self.broadcast(BroadcastKey::Node(self.me.uuid), &msg);
    }

    // -----------------------------------------------------------------------------------------
    // Membership rules

    fn handle_alive(&mut self, now: Time, mut record: NodeRecord) {
        record.state = MemberState::Alive;
        if record.uuid == self.me.uuid {
            // Someone spreads news of us newer than what we know (e.g. from before a restart
            // that lost our incarnation): move above it.
            if record.incarnation > self.me.incarnation && !self.leaving {
                if !self.plausible(self.me.incarnation, record.incarnation)
                    || !self.self_jump_allowed(now, record.incarnation)
                {
                    return;
                }
                self.me.incarnation = record.incarnation;
                self.stats.refutations += 1;
                self.bump_and_announce();
            }
            return;
        }
        if !self.visible(&record) {
            self.stats.zone_filtered += 1;
            // A member that moved to a zone we may not see (or stopped being a proxy of an
            // upper zone): forget it.
            if let Some(m) = self.members.get(&record.uuid)
                && record.incarnation > m.record.incarnation
                && Self::is_plausible(m.record.incarnation, record.incarnation)
            {
                self.forget(record.uuid);
            }
            return;
        }
        match self.members.get(&record.uuid) {
            None => {
                if !self.admit(now) {
                    return;
                }
                let msg = Message::Alive(record.clone());
                self.add_member(now, record.clone());
                self.broadcast(BroadcastKey::Node(record.uuid), &msg);
            }
            Some(m) if !Self::is_plausible(m.record.incarnation, record.incarnation) => {
                self.stats.incarnations_refused += 1;
            }
            Some(m) if record.incarnation > m.record.incarnation => {
                let uuid = record.uuid;
                let msg = Message::Alive(record.clone());
                self.update_member(now, record);
                self.broadcast(BroadcastKey::Node(uuid), &msg);
            }
            Some(_) => {}
        }
    }

    fn handle_suspect(
        &mut self,
        now: Time,
        node: NodeUuid,
        incarnation: u64,
        from: NodeUuid,
        reply_to: Option<SocketAddr>,
    ) {
        if node == self.me.uuid {
            self.accused(now, incarnation, reply_to);
            return;
        }
        let n = self.peer_count();
        // Only the members we probe get a suspicion timer here; the others' zones decide and
        // their verdict reaches us as a death (or a refutation).
        let timed = self.decides(&node);
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        if incarnation < m.record.incarnation {
            self.correct(now, reply_to, node);
            return;
        }
        if !Self::is_plausible(m.record.incarnation, incarnation) {
            self.stats.incarnations_refused += 1;
            return;
        }
        match m.record.state {
            MemberState::Alive => {
                let mut record = m.record.clone();
                record.state = MemberState::Suspect;
                record.incarnation = incarnation;
                self.update_member(now, record);
                let timeout = ms(self.cfg.suspicion_timeout(n, 0));
                if let Some(m) = self.members.get_mut(&node) {
                    m.suspicion = Some(Suspicion {
                        started: now,
                        accuser: from,
                        confirmations: HashSet::default(),
                    });
                }
                if timed {
                    self.suspect_deadlines.insert(node, now + timeout);
                }
                let msg = Message::Suspect {
                    node,
                    incarnation,
                    from,
                };
                self.broadcast(BroadcastKey::Node(node), &msg);
            }
            MemberState::Suspect => {
                m.record.incarnation = incarnation;
                let Some(s) = &mut m.suspicion else { return };
                if from == s.accuser || !s.confirmations.insert(from) {
                    return;
                }
                let c = s.confirmations.len();
                let deadline = s.started + ms(self.cfg.suspicion_timeout(n, c));
                if timed {
                    self.suspect_deadlines.insert(node, deadline);
                }
                // Pass the confirmation on so other nodes shorten their timers too.
                let msg = Message::Suspect {
                    node,
                    incarnation,
                    from,
                };
                self.broadcast(BroadcastKey::Confirm(node, from), &msg);
            }
            MemberState::Dead | MemberState::Left => {}
        }
    }

    fn handle_dead(
        &mut self,
        now: Time,
        node: NodeUuid,
        incarnation: u64,
        from: NodeUuid,
        reply_to: Option<SocketAddr>,
    ) {
        if node == self.me.uuid {
            self.accused(now, incarnation, reply_to);
            return;
        }
        let Some(m) = self.members.get(&node) else {
            return;
        };
        if incarnation < m.record.incarnation {
            self.correct(now, reply_to, node);
            return;
        }
        if !Self::is_plausible(m.record.incarnation, incarnation) {
            self.stats.incarnations_refused += 1;
            return;
        }
        if !m.record.state.is_live() {
            return;
        }
        let mut record = m.record.clone();
        record.state = MemberState::Dead;
        record.incarnation = incarnation;
        self.update_member(now, record);
        let msg = Message::Dead {
            node,
            incarnation,
            from,
        };
        self.broadcast(BroadcastKey::Node(node), &msg);
    }

    fn handle_leave(&mut self, now: Time, node: NodeUuid, incarnation: u64) {
        if node == self.me.uuid {
            return;
        }
        let Some(m) = self.members.get(&node) else {
            return;
        };
        if incarnation < m.record.incarnation || m.record.state == MemberState::Left {
            return;
        }
        if !Self::is_plausible(m.record.incarnation, incarnation) {
            self.stats.incarnations_refused += 1;
            return;
        }
        let mut record = m.record.clone();
        record.state = MemberState::Left;
        record.incarnation = incarnation;
        self.update_member(now, record);
        let msg = Message::Leave { node, incarnation };
        self.broadcast(BroadcastKey::Node(node), &msg);
    }

    /// `reply_to` spread stale news (a suspicion or death at an incarnation older than the one we
    /// know): send it the newer alive record directly, at most once a second per sender and node.
    /// Without this a node that missed a refutation can only learn it from the next push-pull,
    /// and may declare a healthy node dead first.
    fn correct(&mut self, now: Time, reply_to: Option<SocketAddr>, node: NodeUuid) {
        let Some(to) = reply_to else { return };
        let record = if node == self.me.uuid {
            self.me.clone()
        } else {
            match self.members.get(&node) {
                Some(m) if m.record.state == MemberState::Alive => m.record.clone(),
                _ => return,
            }
        };
        if self
            .corrections
            .get(&(to, node))
            .is_some_and(|t| now.saturating_sub(*t) < 1000)
        {
            return;
        }
        if let Some(z) = self.known_zone_of_addr(to)
            && node != self.me.uuid
            && !self.cfg.zones.may_see(&z, &record.zone, record.is_proxy)
        {
            return;
        }
        self.corrections.insert((to, node), now);
        let bytes = codec::encode_message(&Message::Alive(record));
        if bytes.len() + codec::datagram_overhead(1) > self.cfg.max_datagram {
            return; // too big for a datagram: push-pull will carry it
        }
        if self
            .reply_cap
            .is_some_and(|cap| bytes.len() + codec::datagram_overhead(1) > cap)
        {
            self.stats.replies_capped += 1;
            return;
        }
        self.push_send(to, codec::datagram([bytes.as_slice()]));
    }

    /// Someone says we are suspect or dead: refute a current accusation, correct a stale one.
    fn accused(&mut self, now: Time, incarnation: u64, reply_to: Option<SocketAddr>) {
        if self.leaving {
            return;
        }
        if incarnation >= self.me.incarnation {
            if self.plausible(self.me.incarnation, incarnation)
                && self.self_jump_allowed(now, incarnation)
            {
                self.refute(incarnation);
            }
        } else {
            self.correct(now, reply_to, self.me.uuid);
        }
    }

    /// Whether news at incarnation `new` about a member known at `known` can be believed: no
    /// honest node is ever more than [`MAX_INCARNATION_STEP`] ahead of what its peers know.
    /// Refusing bigger jumps means no packet can push a counter to its limit.
    fn is_plausible(known: u64, new: u64) -> bool {
        new <= known.saturating_add(MAX_INCARNATION_STEP)
    }

    /// [`Gossip::is_plausible`], counting a refusal.
    fn plausible(&mut self, known: u64, new: u64) -> bool {
        let ok = Self::is_plausible(known, new);
        if !ok {
            self.stats.incarnations_refused += 1;
        }
        ok
    }

    /// Whether others may move our own incarnation up to `to` now: honest news is at most a few
    /// steps ahead of us (after a restart that lost the incarnation file), so the total of such
    /// moves in an hour is capped at [`MAX_INCARNATION_STEP`] — a member repeating far-ahead
    /// accusations cannot walk our incarnation to its limit.
    fn self_jump_allowed(&mut self, now: Time, to: u64) -> bool {
        const HOUR: Time = 3_600_000;
        if now.saturating_sub(self.self_jumps.0) >= HOUR {
            self.self_jumps = (now, 0);
        }
        let step = to.saturating_sub(self.me.incarnation);
        if self.self_jumps.1.saturating_add(step) > MAX_INCARNATION_STEP {
            self.stats.incarnations_refused += 1;
            return false;
        }
        self.self_jumps.1 += step;
        true
    }

    /// Whether a new member may enter the table now: the peer it came from still has room in
    /// its budget, and the table has room (the oldest tombstone makes way if needed).
    fn admit(&mut self, now: Time) -> bool {
        if let Source::Peer(from) = self.source {
            let window = ms(self.cfg.new_members_window);
            let entry = self.introduced.entry(from.ip()).or_insert((now, 0));
            if now.saturating_sub(entry.0) >= window {
                *entry = (now, 0);
            }
            if entry.1 >= self.cfg.max_new_members_per_peer {
                self.stats.members_refused += 1;
                return false;
            }
            entry.1 += 1;
        }
        if self.members.len() < self.cfg.max_members {
            return true;
        }
        let oldest = self
            .members
            .values()
            .filter(|m| !m.record.state.is_live())
            .min_by_key(|m| (m.since, m.record.uuid))
            .map(|m| m.record.uuid);
        match oldest {
            Some(uuid) => {
                self.forget(uuid);
                true
            }
            None => {
                self.stats.members_refused += 1;
                false
            }
        }
    }

    fn refute(&mut self, accused_incarnation: u64) {
        self.me.incarnation = self.me.incarnation.max(accused_incarnation);
        self.stats.refutations += 1;
        // Being suspected is a hint that we are the slow one (Lifeguard).
        self.local_health = (self.local_health + 1).min(self.cfg.max_local_health);
        self.bump_and_announce();
    }

    fn handle_event(&mut self, now: Time, event: UserEvent) {
        if self.events_seen.contains_key(&event.id) {
            return;
        }
        // Events older than the ttl (by their creation time) are history, not news.
        if now.saturating_sub(event.created_ms) > ms(self.cfg.event_ttl) && event.created_ms <= now
        {
            return;
        }
        self.events_seen.insert(event.id, now);
        self.events.push_back((now, event.clone()));
        self.broadcast(
            BroadcastKey::Event(event.id),
            &Message::Event(event.clone()),
        );
        self.effects.push(Effect::UserEvent(event));
    }

    fn reap(&mut self, now: Time) {
        let ttl = ms(self.cfg.tombstone_ttl);
        let gone: Vec<NodeUuid> = self
            .members
            .values()
            .filter(|m| !m.record.state.is_live() && now.saturating_sub(m.since) >= ttl)
            .map(|m| m.record.uuid)
            .collect();
        for id in gone {
            self.forget(id);
        }
        let event_ttl = ms(self.cfg.event_ttl);
        while let Some((t, _)) = self.events.front() {
            if now.saturating_sub(*t) < event_ttl {
                break;
            }
            self.events.pop_front();
        }
        self.events_seen
            .retain(|_, t| now.saturating_sub(*t) < event_ttl);
        let window = ms(self.cfg.new_members_window);
        self.introduced
            .retain(|_, (start, _)| now.saturating_sub(*start) < window);
    }

    // -----------------------------------------------------------------------------------------
    // Member table

    fn add_member(&mut self, now: Time, record: NodeRecord) {
        let uuid = record.uuid;
        let state = record.state;
        let name = record.name.clone();
        self.by_addr.insert(record.addr, uuid);
        self.members.insert(
            uuid,
            Member {
                record,
                since: now,
                suspicion: None,
            },
        );
        self.place(uuid);
        if self.decides(&uuid) {
            // Probe newcomers soon: insert at a random position of the current round.
            let pos = self
                .rng
                .random_range(self.probe_index..=self.probe_order.len());
            self.probe_order.insert(pos, uuid);
        }
        self.notify(now, uuid, name, None, state);
    }

    fn update_member(&mut self, now: Time, record: NodeRecord) {
        let uuid = record.uuid;
        let Some(m) = self.members.get_mut(&uuid) else {
            return;
        };
        let old = m.record.state;
        let new = record.state;
        let old_addr = m.record.addr;
        let moved = m.record.zone != record.zone || m.record.is_proxy != record.is_proxy;
        m.record = record;
        if new != MemberState::Suspect {
            m.suspicion = None;
            self.suspect_deadlines.remove(&uuid);
        }
        let new_addr = m.record.addr;
        if old_addr != new_addr {
            if self.by_addr.get(&old_addr) == Some(&uuid) {
                self.by_addr.remove(&old_addr);
            }
            self.by_addr.insert(new_addr, uuid);
        }
        if old != new {
            m.since = now;
            let name = m.record.name.clone();
            self.place(uuid);
            self.notify(now, uuid, name, Some(old), new);
        } else if moved {
            self.place(uuid);
        }
    }

    /// Drop a member from every table, silently (a reaped tombstone, a member of a zone we
    /// may no longer see).
    fn forget(&mut self, uuid: NodeUuid) {
        let Some(m) = self.members.remove(&uuid) else {
            return;
        };
        if self.by_addr.get(&m.record.addr) == Some(&uuid) {
            self.by_addr.remove(&m.record.addr);
        }
        self.live.remove(uuid);
        self.own.remove(uuid);
        self.cross.remove(uuid);
        self.suspect_deadlines.remove(&uuid);
        self.queue.remove(BroadcastKey::Node(uuid));
        self.relay.remove(BroadcastKey::Node(uuid));
    }

    /// Whether this node may keep `record` (the zone visibility rule).
    fn visible(&self, record: &NodeRecord) -> bool {
        record.zone == self.me.zone
            || self
                .cfg
                .zones
                .may_see(&self.me.zone, &record.zone, record.is_proxy)
    }

    /// What this node does with a member of `record`'s zone.
    fn class_of(&self, record: &NodeRecord) -> Class {
        if record.zone == self.me.zone {
            Class::Own
        } else if self.cfg.zones.are_peers(
            &self.me.zone,
            self.me.is_proxy,
            &record.zone,
            record.is_proxy,
        ) {
            Class::Cross
        } else {
            Class::Seen
        }
    }

    /// Whether this node probes member `uuid` (and so times suspicions about it).
    fn decides(&self, uuid: &NodeUuid) -> bool {
        self.own.contains(uuid) || self.cross.contains(uuid)
    }

    /// Whether member `uuid` is known and its zone, not this node, decides about it.
    fn decided_elsewhere(&self, uuid: &NodeUuid) -> bool {
        self.members
            .get(uuid)
            .is_some_and(|m| self.class_of(&m.record) == Class::Seen)
    }

    /// Members probed and gossiped with, this node included (the `N` of the timers).
    fn peer_count(&self) -> usize {
        self.own.list.len() + self.cross.list.len() + 1
    }

    /// Put member `uuid` in the sets its state and zone call for.
    fn place(&mut self, uuid: NodeUuid) {
        let (live, class) = match self.members.get(&uuid) {
            Some(m) => (m.record.state.is_live(), self.class_of(&m.record)),
            None => (false, Class::Seen),
        };
        self.live.set(uuid, live);
        self.own.set(uuid, live && class == Class::Own);
        self.cross.set(uuid, live && class == Class::Cross);
    }

    /// Up to `k` members to gossip with: of our zone, plus (for a proxy) up to `k` proxies of
    /// the upper and direct sub-zones.
    fn gossip_targets(&mut self, k: usize) -> Vec<NodeUuid> {
        let mut out = sample(&self.own.list, &mut self.rng, k, None);
        if !self.cross.list.is_empty() {
            out.extend(sample(&self.cross.list, &mut self.rng, k, None));
        }
        out
    }

    /// Up to `k` members to ask for an indirect probe of `target`: live members of its zone.
    fn helpers(&mut self, k: usize, target: NodeUuid) -> Vec<NodeUuid> {
        let Some(zone) = self.members.get(&target).map(|m| m.record.zone.clone()) else {
            return Vec::new();
        };
        if zone == self.me.zone {
            return sample(&self.own.list, &mut self.rng, k, Some(target));
        }
        let candidates: Vec<NodeUuid> = self
            .live
            .list
            .iter()
            .copied()
            .filter(|u| *u != target && self.members.get(u).is_some_and(|m| m.record.zone == zone))
            .collect();
        sample(&candidates, &mut self.rng, k, None)
    }

    fn notify(
        &mut self,
        now: Time,
        uuid: NodeUuid,
        name: String,
        old: Option<MemberState>,
        new: MemberState,
    ) {
        self.push_history(now, uuid, name.clone(), old, new);
        self.effects.push(Effect::MemberChanged(MemberChange {
            uuid,
            name,
            old,
            new,
            at: now,
        }));
    }

    fn push_history(
        &mut self,
        now: Time,
        uuid: NodeUuid,
        name: String,
        old: Option<MemberState>,
        new: MemberState,
    ) {
        if self.history.len() >= self.cfg.history_len {
            self.history.pop_front();
        }
        self.history.push_back(HistoryEntry {
            at: now,
            uuid,
            name,
            old,
            new,
        });
    }

    fn addr_of(&self, uuid: &NodeUuid) -> Option<SocketAddr> {
        self.members.get(uuid).map(|m| m.record.addr)
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use std::net::Ipv4Addr;

    pub(super) fn record(n: u8) -> NodeRecord {
        NodeRecord {
            uuid: NodeUuid::from_bytes([n; 16]),
            name: format!("n{n}"),
            display_name: format!("n{n}"),
            addr: SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), 6768)),
            zone: "z".into(),
            groups: vec![],
            is_proxy: false,
            incarnation: 1,
            state: MemberState::Alive,
            version: "t".into(),
            checks: vec![],
            services: vec![],
            maintenance: None,
        }
    }

    pub(super) fn addr(n: u8) -> SocketAddr {
        record(n).addr
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    fn sends_alive_of(effects: &[Effect], about: NodeUuid) -> Vec<SocketAddr> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, bytes, .. } => codec::decode_datagram(bytes)
                    .ok()?
                    .iter()
                    .any(|m| matches!(m, Message::Alive(r) if r.uuid == about))
                    .then_some(*to),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lone_node_with_news_does_not_keep_waking_up() {
        // Regression: news queued with nobody to tell kept a 50 ms gossip cadence forever
        // (an idle single agent used 0.3% of a core instead of 0.04%).
        let mut a = Gossip::new(GossipConfig::default(), record(1), 3, 0);
        a.set_groups(vec!["web".into()]);
        a.handle_tick(5_000);
        assert_eq!(a.queued_broadcasts(), 0);
        assert!(
            a.next_deadline() >= 5_500,
            "next wake at {}",
            a.next_deadline()
        );
    }

    #[test]
    fn news_from_a_join_is_gossiped_at_once_not_at_the_next_round() {
        let mut a = Gossip::new(GossipConfig::default(), record(1), 7, 1_000_000);
        let now = 1_000_000 + 5_000;
        a.handle_tick(now);
        a.handle_push_pull(
            now,
            addr(2),
            PushPull {
                join: true,
                members: vec![record(2)],
                events: vec![],
            },
        );
        a.handle_tick(now + 1_000);
        a.take_effects();
        // C joins through A: A must tell B within the eager gap, not a whole interval later.
        let t = now + 1_100;
        a.handle_push_pull(
            t,
            addr(3),
            PushPull {
                join: true,
                members: vec![record(3)],
                events: vec![],
            },
        );
        assert!(
            a.next_deadline() <= t + EAGER_GAP_MS,
            "deadline {} vs {t}",
            a.next_deadline()
        );
        a.handle_tick(a.next_deadline().max(t));
        let to = sends_alive_of(&a.take_effects(), record(3).uuid);
        assert!(to.contains(&record(2).addr), "{to:?}");
    }
}

#[cfg(test)]
mod detect_tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn detect_pings_are_answered_by_others_once_a_second_and_never_by_the_asker() {
        let mut a = Gossip::new(GossipConfig::default(), record(1), 1, 0);
        let mut b = Gossip::new(GossipConfig::default(), record(2), 2, 0);
        let (id, ping) = a.detect_ping();
        // The asker hears its own broadcast: no answer.
        a.handle_datagram(10, record(1).addr, &ping)
            .expect("decode");
        assert!(a.take_effects().is_empty());
        b.handle_datagram(10, record(1).addr, &ping)
            .expect("decode");
        let effects = b.take_effects();
        let Some(Effect::Send { to, bytes, .. }) = effects.first() else {
            panic!("{effects:?}")
        };
        assert_eq!(*to, record(1).addr);
        b.handle_datagram(20, record(1).addr, &ping)
            .expect("decode");
        assert!(b.take_effects().is_empty(), "rate limited");
        a.handle_datagram(30, record(2).addr, bytes)
            .expect("decode");
        let detected = a.take_effects();
        assert!(
            matches!(&detected[..], [Effect::Detected { id: got, record: r }] if *got == id && r.uuid == record(2).uuid),
            "{detected:?}"
        );
        b.handle_datagram(1500, record(1).addr, &ping)
            .expect("decode");
        assert_eq!(b.take_effects().len(), 1, "answers again after a second");
    }
}

#[cfg(test)]
mod security_tests {
    use super::tests_support::*;
    use super::*;

    fn datagram(m: &Message) -> Vec<u8> {
        codec::datagram([codec::encode_message(m).as_slice()])
    }

    fn known(a: &Gossip, n: u8) -> Option<&NodeRecord> {
        a.member(&record(n).uuid)
    }

    #[test]
    fn a_suspicion_far_ahead_cannot_push_our_incarnation_to_its_limit() {
        // Regression: `Suspect{me, 2^64-1}` made the refutation wrap our incarnation to 0.
        let mut a = Gossip::new(GossipConfig::default(), record(1), 1, 0);
        let start = a.me().incarnation;
        let attack = Message::Suspect {
            node: record(1).uuid,
            incarnation: crate::member::MAX_INCARNATION,
            from: record(9).uuid,
        };
        a.handle_datagram(10, addr(9), &datagram(&attack))
            .expect("decode");
        assert_eq!(a.me().incarnation, start, "refused, not refuted");
        assert_eq!(a.stats().incarnations_refused, 1);
        // An honest accusation at our incarnation is still refuted above it.
        let honest = Message::Suspect {
            node: record(1).uuid,
            incarnation: start,
            from: record(9).uuid,
        };
        a.handle_datagram(20, addr(9), &datagram(&honest))
            .expect("decode");
        assert_eq!(a.me().incarnation, start + 1);
    }

    #[test]
    fn repeated_accusations_cannot_walk_our_incarnation_to_its_limit() {
        // Regression (review): each accusation one step ahead was refuted above it, so enough
        // of them walked the incarnation to 2^48 and cut the node off for good.
        let mut a = Gossip::new(GossipConfig::default(), record(1), 1, 0);
        let start = a.me().incarnation;
        for i in 0..100u64 {
            let accusation = Message::Suspect {
                node: record(1).uuid,
                incarnation: a.me().incarnation + MAX_INCARNATION_STEP / 4,
                from: record(9).uuid,
            };
            a.handle_datagram(10 + i, addr(9), &datagram(&accusation))
                .expect("decode");
        }
        assert!(
            a.me().incarnation <= start + MAX_INCARNATION_STEP + 100,
            "walked to {}",
            a.me().incarnation
        );
        assert!(a.stats().incarnations_refused >= 90);
    }

    #[test]
    fn a_far_ahead_alive_cannot_hijack_a_known_member() {
        let mut a = Gossip::new(GossipConfig::default(), record(1), 1, 0);
        a.handle_datagram(10, addr(2), &datagram(&Message::Alive(record(2))))
            .expect("decode");
        let hijack = NodeRecord {
            incarnation: record(2).incarnation + MAX_INCARNATION_STEP + 1,
            addr: addr(66),
            ..record(2)
        };
        a.handle_datagram(20, addr(66), &datagram(&Message::Alive(hijack)))
            .expect("decode");
        assert_eq!(known(&a, 2).map(|r| r.addr), Some(addr(2)));
        assert_eq!(a.stats().incarnations_refused, 1);
        // Deaths and leaves far ahead are refused the same way.
        for m in [
            Message::Dead {
                node: record(2).uuid,
                incarnation: crate::member::MAX_INCARNATION,
                from: record(66).uuid,
            },
            Message::Leave {
                node: record(2).uuid,
                incarnation: crate::member::MAX_INCARNATION,
            },
        ] {
            a.handle_datagram(30, addr(66), &datagram(&m))
                .expect("decode");
        }
        assert_eq!(known(&a, 2).map(|r| r.state), Some(MemberState::Alive));
        assert_eq!(a.stats().incarnations_refused, 3);
    }

    fn fake(i: u32) -> NodeRecord {
        let mut uuid = [0xAB; 16];
        uuid[..4].copy_from_slice(&i.to_be_bytes());
        NodeRecord {
            uuid: NodeUuid::from_bytes(uuid),
            name: format!("fake-{i}"),
            ..record(200)
        }
    }

    fn flood(n: u32) -> PushPull {
        PushPull {
            join: false,
            members: (0..n).map(fake).collect(),
            events: vec![],
        }
    }

    #[test]
    fn one_peer_cannot_flood_the_member_table() {
        let cfg = GossipConfig {
            max_new_members_per_peer: 100,
            max_members: 250,
            ..GossipConfig::default()
        };
        let mut a = Gossip::new(cfg, record(1), 1, 0);
        a.handle_push_pull(10, addr(66), flood(20_000));
        assert_eq!(a.members().count(), 1 + 100, "one window's budget");
        assert_eq!(a.stats().members_refused, 19_900);
        // Another window, another peer: the table stops at its cap.
        a.handle_push_pull(20_000, addr(66), flood(20_000));
        a.handle_push_pull(20_001, addr(67), flood(20_000));
        assert_eq!(a.members().count(), 1 + 250);
        // The state of the seed we join through is welcome whole (still within the cap).
        let mut b = Gossip::new(
            GossipConfig {
                max_new_members_per_peer: 100,
                ..GossipConfig::default()
            },
            record(2),
            2,
            0,
        );
        b.join(addr(1));
        b.handle_push_pull_reply(10, addr(1), flood(5_000), true);
        assert_eq!(b.members().count(), 1 + 5_000);
    }

    #[test]
    fn a_full_table_makes_room_by_dropping_the_oldest_tombstone() {
        let cfg = GossipConfig {
            max_members: 3,
            ..GossipConfig::default()
        };
        let mut a = Gossip::new(cfg, record(1), 1, 0);
        for n in 2..=4 {
            a.handle_datagram(10, addr(n), &datagram(&Message::Alive(record(n))))
                .expect("decode");
        }
        a.handle_datagram(
            20,
            addr(2),
            &datagram(&Message::Leave {
                node: record(2).uuid,
                incarnation: 2,
            }),
        )
        .expect("decode");
        a.handle_datagram(30, addr(5), &datagram(&Message::Alive(record(5))))
            .expect("decode");
        assert!(known(&a, 5).is_some(), "took the tombstone's place");
        assert!(known(&a, 2).is_none());
        // Full of live members: refused and counted.
        a.handle_datagram(40, addr(6), &datagram(&Message::Alive(record(6))))
            .expect("decode");
        assert!(known(&a, 6).is_none());
        assert_eq!(a.stats().members_refused, 1);
    }

    #[test]
    fn without_a_key_no_answer_is_larger_than_its_question() {
        let cfg = GossipConfig {
            cap_replies: true,
            ..GossipConfig::default()
        };
        let mut b = Gossip::new(cfg.clone(), record(2), 2, 0);
        // A bare 20-byte detect-ping from outside gets nothing back.
        let bare = datagram(&Message::DetectPing {
            id: 1,
            from: record(9).uuid,
            zone: "z".into(),
            padding: 0,
        });
        assert!(bare.len() < 40);
        b.handle_datagram(10, addr(9), &bare).expect("decode");
        assert!(b.take_effects().is_empty());
        assert_eq!(b.stats().replies_capped, 1);
        // A padded one (as `gossip detect` sends) gets the answer, no check states in it.
        b.set_checks(vec![CheckSummary {
            name: "linux/cpu".into(),
            state: 2,
        }]);
        b.set_services(vec![ServiceRecord {
            name: "web".into(),
            port: 80,
            address: None,
            tags: vec!["x".repeat(60); 20],
            meta: vec![],
            state: 0,
            maintenance: None,
        }]);
        b.take_effects();
        let mut a = Gossip::new(cfg, record(1), 1, 0);
        let (_, ping) = a.detect_ping();
        assert_eq!(ping.len(), codec::DETECT_PING_SIZE);
        b.handle_datagram(2000, addr(1), &ping).expect("decode");
        let effects = b.take_effects();
        let sent: Vec<&Vec<u8>> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].len() <= ping.len());
        let decoded = codec::decode_datagram(sent[0]).expect("decode");
        assert!(
            matches!(&decoded[..], [Message::DetectPong { record, .. }] if record.checks.is_empty() && record.services.is_empty())
        );
        // Acks to a small ping carry no more than the ping, whatever news is queued.
        b.handle_datagram(3000, addr(3), &datagram(&Message::Alive(record(3))))
            .expect("decode");
        b.take_effects();
        let ping = datagram(&Message::Ping {
            seq: 1,
            target: record(2).uuid,
            from: record(9).uuid,
        });
        b.handle_datagram(3001, addr(9), &ping).expect("decode");
        for e in b.take_effects() {
            if let Effect::Send { to, bytes, .. } = e
                && to == addr(9)
            {
                assert!(
                    bytes.len() <= ping.len(),
                    "{} > {}",
                    bytes.len(),
                    ping.len()
                );
            }
        }
        // Regression (review): an indirect ping aimed our traffic, news piggybacked, at any
        // address. Unauthenticated, only known members at their own address are pinged, bare.
        let aim = |target: NodeUuid, at: SocketAddr| {
            datagram(&Message::IndirectPing {
                seq: 4,
                target,
                target_addr: at,
                want_nack: true,
            })
        };
        let victim = SocketAddr::from(([192, 0, 2, 1], 53));
        let request = aim(record(3).uuid, victim);
        b.handle_datagram(4000, addr(9), &request).expect("decode");
        assert!(b.take_effects().is_empty(), "nothing sent to the victim");
        let request = aim(record(3).uuid, addr(3));
        b.handle_datagram(4001, addr(9), &request).expect("decode");
        let sent: Vec<(SocketAddr, usize)> = b
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Send { to, bytes, .. } => Some((to, bytes.len())),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, addr(3));
        // A bare ping to the member itself: nothing piggybacked.
        let bare_ping = datagram(&Message::Ping {
            seq: 1,
            target: record(3).uuid,
            from: record(2).uuid,
        });
        assert!(sent[0].1 <= bare_ping.len(), "{sent:?}");
        // The nack at the deadline goes back bare too.
        b.handle_tick(4001 + 1000);
        for e in b.take_effects() {
            if let Effect::Send { to, bytes, .. } = e
                && to == addr(9)
            {
                assert!(
                    bytes.len() <= request.len(),
                    "{} > {}",
                    bytes.len(),
                    request.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod zone_tests {
    use super::tests_support::*;
    use super::*;
    use crate::ZoneTree;

    fn tree() -> ZoneTree {
        ZoneTree::new(&[(
            "internet".to_owned(),
            vec!["dc1".to_owned(), "dc2".to_owned()],
        )])
        .expect("tree")
    }

    fn node(n: u8, zone: &str, is_proxy: bool) -> NodeRecord {
        NodeRecord {
            zone: zone.into(),
            is_proxy,
            ..record(n)
        }
    }

    fn gossip(me: NodeRecord) -> Gossip {
        let cfg = GossipConfig {
            zones: tree(),
            ..GossipConfig::default()
        };
        Gossip::new(cfg, me, 1, 0)
    }

    /// Every node of the test cluster: internet (1 proxy, 2 other), dc1 (3 proxy, 4 other),
    /// dc2 (5 proxy, 6 other).
    fn everyone() -> Vec<NodeRecord> {
        vec![
            node(1, "internet", true),
            node(2, "internet", false),
            node(3, "dc1", true),
            node(4, "dc1", false),
            node(5, "dc2", true),
            node(6, "dc2", false),
        ]
    }

    fn names(p: &PushPull) -> Vec<String> {
        let mut v: Vec<String> = p.members.iter().map(|r| r.name.clone()).collect();
        v.sort();
        v
    }

    fn ask(from: NodeRecord) -> PushPull {
        PushPull {
            join: true,
            members: vec![from],
            events: vec![],
        }
    }

    #[test]
    fn a_node_stores_only_what_its_zone_may_see_and_counts_the_rest() {
        let mut a = gossip(node(4, "dc1", false));
        let all = PushPull {
            join: false,
            members: everyone(),
            events: vec![],
        };
        a.handle_push_pull_reply(10, addr(1), all, true);
        let mut seen: Vec<String> = a.members().map(|r| r.name.clone()).collect();
        seen.sort();
        assert_eq!(seen, ["n1", "n3", "n4"], "internet proxy, dc1; no dc2");
        assert_eq!(a.stats().zone_filtered, 3);
    }

    #[test]
    fn push_pull_answers_follow_the_asker_zone() {
        // The internet proxy knows everyone.
        let mut p = gossip(node(1, "internet", true));
        p.handle_push_pull_reply(
            10,
            addr(2),
            PushPull {
                join: false,
                members: everyone(),
                events: vec![],
            },
            true,
        );
        assert_eq!(p.members().count(), 6);
        // Same zone: everything.
        let answer = p.handle_push_pull(20, addr(2), ask(node(2, "internet", false)));
        assert_eq!(answer.members.len(), 6);
        // A direct sub-zone asking a proxy: the proxies of internet and the asker's zone.
        let answer = p.handle_push_pull(30, addr(4), ask(node(4, "dc1", false)));
        assert_eq!(names(&answer), ["n1", "n3", "n4"]);
        assert_eq!(answer.members[0].uuid, record(1).uuid, "the answerer first");
        // Not a proxy: refused, and the request is not merged.
        let mut q = gossip(node(2, "internet", false));
        let answer = q.handle_push_pull(40, addr(7), ask(node(7, "dc1", false)));
        assert!(answer.members.is_empty());
        assert_eq!(q.stats().zone_refused, 1);
        assert!(q.member(&record(7).uuid).is_none());
        // A sibling zone: refused.
        let mut d = gossip(node(4, "dc1", false));
        let answer = d.handle_push_pull(50, addr(6), ask(node(6, "dc2", false)));
        assert!(answer.members.is_empty());
        assert_eq!(d.stats().zone_refused, 1);
        // An upper zone asking: everything the asker may see (here: all dc1 knows).
        d.handle_push_pull_reply(
            60,
            addr(3),
            PushPull {
                join: false,
                members: everyone(),
                events: vec![],
            },
            true,
        );
        let answer = d.handle_push_pull(70, addr(2), ask(node(2, "internet", false)));
        assert_eq!(names(&answer), ["n1", "n3", "n4"], "all dc1 may keep");
        // An empty request names no zone: refused.
        let answer = d.handle_push_pull(
            80,
            addr(9),
            PushPull {
                join: false,
                members: vec![],
                events: vec![],
            },
        );
        assert!(answer.members.is_empty());
    }

    #[test]
    fn detect_pings_are_answered_by_the_original_rule() {
        let answers = |me: NodeRecord, asker: &str| {
            let mut b = gossip(me);
            let mut a = gossip(node(9, asker, false));
            let (_, ping) = a.detect_ping();
            b.handle_datagram(10, addr(9), &ping).expect("decode");
            let sent: Vec<String> = b
                .take_effects()
                .into_iter()
                .filter_map(|e| match e {
                    Effect::Send { zone, .. } => Some(zone),
                    _ => None,
                })
                .collect();
            assert!(sent.len() <= 1);
            if sent.is_empty() {
                assert_eq!(b.stats().zone_refused, 1);
            }
            sent.first().cloned()
        };
        assert_eq!(
            answers(node(4, "dc1", false), "dc1").as_deref(),
            Some("dc1")
        );
        // From an upper zone: sealed for the asker's zone.
        assert_eq!(
            answers(node(4, "dc1", false), "internet").as_deref(),
            Some("internet")
        );
        assert_eq!(
            answers(node(1, "internet", true), "dc1").as_deref(),
            Some("dc1")
        );
        assert_eq!(answers(node(2, "internet", false), "dc1"), None);
        assert_eq!(answers(node(4, "dc1", false), "dc2"), None);
        assert_eq!(answers(node(3, "dc1", true), "dc2"), None);
    }

    #[test]
    fn sends_name_the_destination_zone_and_a_join_uses_our_own() {
        let mut p = gossip(node(3, "dc1", true));
        p.join(addr(1));
        let effects = p.take_effects();
        assert!(
            matches!(&effects[..], [Effect::PushPull { zone, .. }] if zone == "dc1"),
            "{effects:?}"
        );
        p.handle_push_pull_reply(
            10,
            addr(1),
            PushPull {
                join: false,
                members: everyone(),
                events: vec![],
            },
            true,
        );
        // A user ping to the internet proxy is sealed for internet.
        p.take_effects();
        p.ping(20, record(1).uuid).expect("known");
        let effects = p.take_effects();
        assert!(
            matches!(&effects[..], [Effect::Send { to, zone, .. }] if *to == addr(1) && zone == "internet"),
            "{effects:?}"
        );
    }

    #[test]
    fn a_zone_change_forgets_what_the_new_zone_may_not_see_without_reporting_deaths() {
        let mut a = gossip(node(4, "dc1", false));
        a.handle_push_pull_reply(
            10,
            addr(3),
            PushPull {
                join: false,
                members: everyone(),
                events: vec![],
            },
            true,
        );
        a.take_effects();
        let before = a.me().incarnation;
        a.set_zone(100, "dc2".into());
        assert_eq!(a.me().zone, "dc2");
        assert_eq!(a.me().incarnation, before + 1);
        let mut seen: Vec<String> = a.members().map(|r| r.name.clone()).collect();
        seen.sort();
        // Only the internet proxy is still visible (dc1 is a sibling now).
        assert_eq!(seen, ["n1", "n4"]);
        let effects = a.take_effects();
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, Effect::MemberChanged(_))),
            "{effects:?}"
        );
        // The old zone's member is told; a push-pull goes to the internet proxy (no dc2
        // member known yet).
        assert!(effects.iter().any(
            |e| matches!(e, Effect::Send { to, zone, .. } if *to == addr(3) && zone == "dc1")
        ));
        assert!(effects.iter().any(
            |e| matches!(e, Effect::PushPull { to, zone, .. } if *to == addr(1) && zone == "internet")
        ));
    }
}
