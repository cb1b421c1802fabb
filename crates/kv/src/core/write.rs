//! The write path: routing a client's write to the key's coordinator (failing over to the
//! next owner only once the first can no longer apply it), coordinating it (CAS, stamp,
//! local merge, copies counted as they become durable, one stamp again above a newer
//! version), and the per-peer replication queues that batch copies.

use std::collections::BTreeMap;

use opsbro_types::NodeUuid;

use super::{
    BATCH, BATCH_BYTES, ClientId, CoordOp, Copy, CopyWaiter, Core, Failure, FlushWaiter,
    MAX_QUEUED, OWN_STAMPS_MS, OWN_STAMPS_PER_KEY, Op, OpId, Purpose, ReadFor, Reply, RouteOp,
    Time, cas_of, failure_text, ttl_of, uncertain_if,
};
use crate::entry::Entry;
use crate::error::KvError;
use crate::storage::Storage;
use crate::wire::{Request, Response, WriteOp};
use crate::{MAX_TTL_MS, validate_key};

impl<S: Storage> Core<S> {
    // ----- writes: routing -----

    pub(super) fn start_write(&mut self, client: ClientId, key: String, op: WriteOp) {
        if let Err(e) = validate_key(&key) {
            return self.answer_write(client, Err(e.into()));
        }
        if ttl_of(&op) > MAX_TTL_MS {
            return self.answer_write(client, Err(KvError::TtlTooLong));
        }
        let mut owners = self.owners(&key);
        if owners.is_empty() {
            return self.answer_write(client, Err(KvError::NoOwner));
        }
        if cas_of(&op).is_some() {
            // A CAS has one coordinator: the first owner (see the module docs, 3).
            owners.truncate(1);
        }
        let attempt = self
            .cfg
            .forward_timeout_ms
            .saturating_add(self.cfg.clock_slack_ms);
        let last_start = self
            .now
            .saturating_add(attempt.saturating_mul(owners.len().saturating_sub(1) as u64))
            .saturating_add(self.cfg.clock_slack_ms);
        let id = self.new_op(Op::Route(RouteOp {
            client,
            key,
            op,
            owners,
            next: 0,
            last: String::new(),
            uncertain: false,
            last_start,
        }));
        self.route_next(id);
    }

    /// Send the write to the next owner (or coordinate it here when that is us).
    pub(super) fn route_next(&mut self, id: OpId) {
        let Some(Op::Route(route)) = self.ops.get_mut(&id) else {
            return;
        };
        if self.now > route.last_start {
            route.last = format!(
                "the write waited here past its last chance to start ({}); it was not sent again",
                route.last
            );
            route.next = route.owners.len();
        }
        let Some(owner) = route.owners.get(route.next).copied() else {
            let (client, last, uncertain) = (route.client, route.last.clone(), route.uncertain);
            self.ops.remove(&id);
            let why = if uncertain {
                format!(
                    "no owner of the key could take the write ({last}); it may have been applied"
                )
            } else {
                format!("no owner of the key could take the write ({last})")
            };
            return self.answer_write(client, Err(KvError::Unavailable(why)));
        };
        route.next += 1;
        if owner == self.me {
            let Some(Op::Route(route)) = self.ops.remove(&id) else {
                return;
            };
            let deadline = self.now.saturating_add(self.cfg.forward_timeout_ms);
            return self.start_coordinate(
                Reply::Client(route.client),
                route.key,
                route.op,
                deadline,
                route.uncertain,
            );
        }
        let request = Request::Write {
            to: owner,
            key: route.key.clone(),
            op: route.op.clone(),
            deadline_ms: self.now.saturating_add(self.cfg.forward_timeout_ms),
        };
        // Wait past the deadline by the clock slack before moving on: by then the coordinator
        // refuses the write for sure, so two coordinators never both apply it.
        let wait = self
            .cfg
            .forward_timeout_ms
            .saturating_add(self.cfg.clock_slack_ms);
        self.send(owner, request, wait, Purpose::Forward(id));
    }

    pub(super) fn forward_answer(
        &mut self,
        id: OpId,
        from: NodeUuid,
        outcome: Result<Response, Failure>,
    ) {
        let Some(Op::Route(route)) = self.ops.get_mut(&id) else {
            return;
        };
        match outcome {
            Ok(Response::Written { index }) => {
                let client = route.client;
                self.ops.remove(&id);
                self.answer_write(client, Ok(index));
            }
            Ok(Response::Refused { code, message }) => {
                let e = KvError::from_refusal(code, message);
                if matches!(
                    e,
                    KvError::LateWrite | KvError::TooLate | KvError::Misaddressed
                ) {
                    // It did not stamp the write and never will: the next owner may.
                    route.last = format!("{from}: {e}");
                    return self.route_next(id);
                }
                let (client, uncertain) = (route.client, route.uncertain);
                self.ops.remove(&id);
                self.answer_write(client, Err(uncertain_if(uncertain, e)));
            }
            Ok(other) => {
                route.last = format!("unexpected answer from {from}: {other:?}");
                route.uncertain = true;
                self.route_next(id);
            }
            Err(f) => {
                route.last = format!("{from}: {}", failure_text(f));
                if f == Failure::Timeout {
                    route.uncertain = true;
                }
                self.route_next(id);
            }
        }
    }

    // ----- writes: coordination -----

    pub(super) fn start_coordinate(
        &mut self,
        reply: Reply,
        key: String,
        op: WriteOp,
        deadline: Time,
        uncertain: bool,
    ) {
        let owners = self.owners(&key);
        let cas = cas_of(&op).is_some();
        let id = self.new_op(Op::Coordinate(CoordOp {
            reply,
            key: key.clone(),
            op,
            owners,
            deadline,
            uncertain,
            create_index: None,
            attempt: 0,
            index: 0,
            needed: 1,
            expected: 1,
            acks: 0,
            answers: 0,
            newer: 0,
            retried: false,
        }));
        if cas {
            if let Some(retry_in_ms) = self.cas_pause_left(&key, self.now) {
                return self.finish_coordinate(id, Err(KvError::CasPaused { retry_in_ms }));
            }
            // CAS compares with the newest copy anywhere, not just ours: a quorum of the
            // owners under this ring and under any ring used lately.
            let mut asked: Vec<NodeUuid> = Vec::new();
            for set in self.cas_owner_sets(&key) {
                for n in set {
                    if !asked.contains(&n) {
                        asked.push(n);
                    }
                }
            }
            self.start_read_from(key, asked, ReadFor::Cas(id));
        } else {
            self.coordinate_checked(id, None);
        }
    }

    pub(super) fn cas_read_done(
        &mut self,
        id: OpId,
        result: Result<Option<Entry>, KvError>,
        answered: &[NodeUuid],
    ) {
        let Some(Op::Coordinate(c)) = self.ops.get(&id) else {
            return;
        };
        let newest = match result {
            Ok(e) => e,
            Err(e) => return self.finish_coordinate(id, Err(e)),
        };
        // Read and write quorums must intersect, or a CAS could miss an acknowledged one:
        // under each ring a write may have been acknowledged with lately.
        for set in self.cas_owner_sets(&c.key) {
            let needed = self.cfg.write_acks.needed(set.len().max(1));
            let quorum = set.len().saturating_sub(needed) + 1;
            let heard = set.iter().filter(|n| answered.contains(n)).count();
            if heard < quorum {
                let e = KvError::Unavailable(format!(
                    "a CAS needs {quorum} owners of the key to answer; {heard} did"
                ));
                return self.finish_coordinate(id, Err(e));
            }
        }
        self.coordinate_checked(id, newest);
    }

    /// Compare (CAS), check, stamp: in one step with the local copy, so two writes through
    /// this node are compared and merged in the order of their stamps.
    pub(super) fn coordinate_checked(&mut self, id: OpId, read: Option<Entry>) {
        let Some(Op::Coordinate(c)) = self.ops.get(&id) else {
            return;
        };
        let local = match self.local_get(&c.key) {
            Ok(e) => e,
            Err(e) => return self.finish_coordinate(id, Err(e.into())),
        };
        let newest = match (read, local) {
            (Some(r), Some(l)) => Some(if r.is_newer_than(&l) { r } else { l }),
            (r, l) => r.or(l),
        };
        let now = self.now;
        let current = newest.filter(|e| e.is_live(now));
        if let Some(want) = cas_of(&c.op) {
            let have = current.as_ref().map_or(0, |e| e.index);
            if have != want {
                return self.finish_coordinate(
                    id,
                    Err(KvError::CasFailed {
                        current: have,
                        expected: want,
                    }),
                );
            }
        }
        if ttl_of(&c.op) > MAX_TTL_MS {
            return self.finish_coordinate(id, Err(KvError::TtlTooLong));
        }
        if let Some(Op::Coordinate(c)) = self.ops.get_mut(&id) {
            c.create_index = current.as_ref().map(|e| e.create_index);
        }
        self.stamp_and_replicate(id);
    }

    /// Stamp a new version, merge it here, and send it to the other owners.
    pub(super) fn stamp_and_replicate(&mut self, id: OpId) {
        let now = self.now;
        let Some(Op::Coordinate(c)) = self.ops.get(&id) else {
            return;
        };
        // After a first attempt, a copy of the write exists: a failure is not definite.
        let first = c.attempt == 0;
        let failed = move |definite: KvError| {
            if first { definite } else { KvError::Overtaken }
        };
        if now > c.deadline {
            return self.finish_coordinate(id, Err(failed(KvError::TooLate)));
        }
        // A CAS has one coordinator: the first owner, under a ring that has not just changed.
        if cas_of(&c.op).is_some()
            && (self.owners(&c.key).first() != Some(&self.me)
                || self.cas_pause_left(&c.key, now).is_some())
        {
            let e = KvError::Unavailable(
                "the ring changed while this CAS was under way; try again".into(),
            );
            return self.finish_coordinate(id, Err(failed(e)));
        }
        let index = self.hlc.stamp(now);
        let entry = match &c.op {
            WriteOp::Put { value, ttl_ms, .. } => Entry {
                value: value.clone(),
                index,
                create_index: c.create_index.unwrap_or(index),
                deleted: false,
                expires_ms: if *ttl_ms == 0 {
                    0
                } else {
                    now.saturating_add(*ttl_ms)
                },
            },
            WriteOp::Delete { .. } => Entry {
                value: Vec::new(),
                index,
                create_index: c.create_index.unwrap_or(index),
                deleted: true,
                expires_ms: 0,
            },
        };
        let key = c.key.clone();
        let not_applied = |held| failed(KvError::NotApplied { held });
        let merged = match self.merge_local(&[(key.clone(), entry.clone())]) {
            Ok(m) => m,
            Err(e) => return self.finish_coordinate(id, Err(e.into())),
        };
        if merged.taken == 0 {
            // Our own copy is newer than a stamp we just made: never acknowledge a write that
            // did nothing.
            let held = merged.superseded.first().map_or(0, |(_, e)| e.index);
            return self.finish_coordinate(id, Err(not_applied(held)));
        }
        let stamps = self.own_stamps.entry(key.clone()).or_default();
        if stamps.len() >= OWN_STAMPS_PER_KEY {
            stamps.pop_front();
        }
        stamps.push_back((index, now));
        if self.next_prune == Time::MAX {
            self.next_prune = now.saturating_add(OWN_STAMPS_MS / 4);
        }
        let Some(Op::Coordinate(c)) = self.ops.get_mut(&id) else {
            return;
        };
        c.attempt += 1;
        c.index = index;
        c.needed = self.cfg.write_acks.needed(c.owners.len().max(1));
        let others: Vec<NodeUuid> = c.owners.iter().copied().filter(|o| *o != self.me).collect();
        c.expected = 1 + others.len();
        c.acks = 0;
        c.answers = 0;
        c.newer = 0;
        let attempt = c.attempt;
        // Local durability and the replicas in parallel; answer at `needed` copies.
        self.request_flush(Some(FlushWaiter::Copy(id, attempt)));
        for o in others {
            self.enqueue(o, key.clone(), entry.clone(), Some((id, attempt)));
        }
    }

    pub(super) fn copy_answer(&mut self, id: OpId, attempt: u32, copy: Copy) {
        let overwritten_here = match (self.ops.get(&id), copy) {
            (Some(Op::Coordinate(c)), Copy::Superseded(held)) if c.attempt == attempt => {
                let here = self.local_get(&c.key).ok().flatten().map_or(0, |e| e.index);
                held <= here
                    && self
                        .own_stamps
                        .get(&c.key)
                        .is_some_and(|s| s.iter().any(|(stamp, _)| *stamp == held))
            }
            (Some(Op::Coordinate(c)), _) if c.attempt == attempt => false,
            _ => return,
        };
        let Some(Op::Coordinate(c)) = self.ops.get_mut(&id) else {
            return;
        };
        c.answers += 1;
        match copy {
            Copy::Durable => c.acks += 1,
            // That owner holds a newer version. It counts when that version is a later write
            // coordinated here, which this node holds too (two writes through this node
            // arrived there in the other order: ours was overwritten, as last-writer-wins
            // says). Any other newer version — one stamped by a node whose clock runs ahead,
            // even if it reached this node too — means stamping again above it.
            Copy::Superseded(_) if overwritten_here => c.acks += 1,
            Copy::Superseded(held) => c.newer = c.newer.max(held),
            Copy::Failed => {}
        }
        if c.acks >= c.needed {
            let index = c.index;
            return self.finish_coordinate(id, Ok(index));
        }
        if c.answers < c.expected {
            return;
        }
        let (acks, needed, newer) = (c.acks, c.needed, c.newer);
        if newer == 0 {
            return self.finish_coordinate(
                id,
                Err(KvError::NotEnoughReplicas {
                    durable: acks,
                    needed,
                }),
            );
        }
        // A CAS never stamps again above a version it did not compare with.
        if c.retried || cas_of(&c.op).is_some() {
            return self.finish_coordinate(id, Err(KvError::Overtaken));
        }
        c.retried = true;
        if !self.hlc.observe(newer, self.now) {
            return self.finish_coordinate(id, Err(KvError::Overtaken));
        }
        self.stamp_and_replicate(id);
    }

    pub(super) fn finish_coordinate(&mut self, id: OpId, result: Result<u64, KvError>) {
        let Some(Op::Coordinate(c)) = self.ops.remove(&id) else {
            return;
        };
        match c.reply {
            Reply::Client(client) => {
                let result = result.map_err(|e| uncertain_if(c.uncertain, e));
                self.answer_write(client, result);
            }
            Reply::Peer(to) => match result {
                Ok(index) => self.reply(to, Response::Written { index }),
                Err(e) => self.refuse(to, &e),
            },
        }
    }

    // ----- replication queues -----

    pub(super) fn enqueue(
        &mut self,
        peer: NodeUuid,
        key: String,
        entry: Entry,
        waiter: CopyWaiter,
    ) {
        let queue = self.queues.entry(peer).or_default();
        if queue.items.len() >= MAX_QUEUED {
            if let Some((op, attempt)) = waiter {
                self.deferred.push_back((op, attempt, Copy::Failed));
            }
            return;
        }
        queue.items.push_back((key, entry, waiter));
        self.pump(peer);
    }

    /// Send queued entries to `peer` while fewer than the limit of batches are in flight:
    /// entries that wait together travel in one message (the replica flushes them once).
    pub(super) fn pump(&mut self, peer: NodeUuid) {
        loop {
            let Some(queue) = self.queues.get_mut(&peer) else {
                return;
            };
            if queue.in_flight >= self.cfg.replication_in_flight.max(1) || queue.items.is_empty() {
                if queue.in_flight == 0 && queue.items.is_empty() {
                    self.queues.remove(&peer);
                }
                return;
            }
            let mut entries = Vec::new();
            let mut items = Vec::new();
            let mut bytes = 0usize;
            while let Some((key, entry, _)) = queue.items.front() {
                let size = key.len() + entry.value.len() + 32;
                if !entries.is_empty() && (entries.len() >= BATCH || bytes + size > BATCH_BYTES) {
                    break;
                }
                bytes += size;
                let Some((key, entry, waiter)) = queue.items.pop_front() else {
                    break;
                };
                items.push((key.clone(), entry.index, waiter));
                entries.push((key, entry));
            }
            queue.in_flight += 1;
            self.send(
                peer,
                Request::Replicate { entries },
                self.cfg.peer_timeout_ms,
                Purpose::Replicate(items),
            );
        }
    }

    pub(super) fn replicate_answer(
        &mut self,
        peer: NodeUuid,
        items: Vec<(String, u64, CopyWaiter)>,
        outcome: Result<Response, Failure>,
    ) {
        // The replica's version of each key it did not take (it holds a newer one).
        let held: BTreeMap<String, u64> = match &outcome {
            Ok(Response::Superseded(newer)) => newer.iter().cloned().collect(),
            _ => BTreeMap::new(),
        };
        for (key, index, waiter) in items {
            let copy = match &outcome {
                Ok(Response::Stored) => Copy::Durable,
                Ok(Response::Superseded(_)) => match held.get(&key) {
                    Some(h) if *h > index => Copy::Superseded(*h),
                    _ => Copy::Durable,
                },
                _ => Copy::Failed,
            };
            if let Some((op, attempt)) = waiter {
                self.copy_answer(op, attempt, copy);
            }
        }
        if let Some(q) = self.queues.get_mut(&peer) {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
        self.pump(peer);
    }
}
