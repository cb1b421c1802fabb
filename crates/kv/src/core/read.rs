//! Reads: the newest copy among a key's owners, with read repair of the owners that answered
//! an older one; and blocking reads (`Wait`), answered when the key's version passes an index
//! or at the timeout.

use opsbro_types::NodeUuid;

use super::{
    ClientAnswer, ClientId, Core, Failure, Op, OpId, Purpose, ReadFor, ReadOp, Reply, WaitRouteOp,
    Waiter,
};
use crate::entry::Entry;
use crate::error::KvError;
use crate::storage::Storage;
use crate::wire::{Request, Response};

impl<S: Storage> Core<S> {
    // ----- reads -----

    /// Ask every owner; the newest copy wins and stale owners are repaired.
    pub(super) fn start_read(&mut self, key: String, target: ReadFor) {
        let owners = self.owners(&key);
        self.start_read_from(key, owners, target);
    }

    /// Ask `owners` for their copies of `key`.
    pub(super) fn start_read_from(&mut self, key: String, owners: Vec<NodeUuid>, target: ReadFor) {
        let mut op = ReadOp {
            key,
            target,
            answers: Vec::new(),
            waiting: 0,
        };
        if owners.is_empty() {
            // No ring yet: this node's copy is all there is.
            if let Ok(e) = self.local_get(&op.key) {
                op.answers.push((self.me, e));
            }
        }
        let id = self.new_op(Op::Read(op));
        for o in owners {
            if o == self.me {
                let local = self.local_get(&self.read_key(id));
                if let (Ok(e), Some(Op::Read(op))) = (local, self.ops.get_mut(&id)) {
                    op.answers.push((o, e));
                }
            } else {
                let key = self.read_key(id);
                if let Some(Op::Read(op)) = self.ops.get_mut(&id) {
                    op.waiting += 1;
                }
                self.send(
                    o,
                    Request::Get { key },
                    self.cfg.peer_timeout_ms,
                    Purpose::Read(id),
                );
            }
        }
        if matches!(self.ops.get(&id), Some(Op::Read(op)) if op.waiting == 0) {
            self.finish_read(id);
        }
    }

    pub(super) fn read_key(&self, id: OpId) -> String {
        match self.ops.get(&id) {
            Some(Op::Read(op)) => op.key.clone(),
            _ => String::new(),
        }
    }

    pub(super) fn read_answer(
        &mut self,
        id: OpId,
        from: NodeUuid,
        outcome: Result<Response, Failure>,
    ) {
        let now = self.now;
        let answer = match outcome {
            Ok(Response::Entry(e)) => match e {
                Some(e) if !e.is_plausible(now) => {
                    self.stats.rejected += 1;
                    None
                }
                e => Some(e),
            },
            _ => None,
        };
        let Some(Op::Read(op)) = self.ops.get_mut(&id) else {
            return;
        };
        if let Some(e) = answer {
            op.answers.push((from, e));
        }
        op.waiting = op.waiting.saturating_sub(1);
        if op.waiting == 0 {
            self.finish_read(id);
        }
    }

    pub(super) fn finish_read(&mut self, id: OpId) {
        let Some(Op::Read(op)) = self.ops.remove(&id) else {
            return;
        };
        let mut newest: Option<Entry> = None;
        for (_, e) in &op.answers {
            if let Some(e) = e
                && newest.as_ref().is_none_or(|n| e.is_newer_than(n))
            {
                newest = Some(e.clone());
            }
        }
        let result = if op.answers.is_empty() {
            Err(KvError::Unavailable("no owner of the key answered".into()))
        } else {
            Ok(newest.clone())
        };
        if let Some(n) = &newest {
            let stale: Vec<NodeUuid> = op
                .answers
                .iter()
                .filter(|(_, e)| e.as_ref() != Some(n))
                .map(|(o, _)| *o)
                .collect();
            self.push_to(&stale, vec![(op.key.clone(), n.clone())]);
        }
        match op.target {
            ReadFor::Client(client) => {
                self.stats.reads += 1;
                let now = self.now;
                self.answer(
                    client,
                    result.map(|e| ClientAnswer::Entry(e.filter(|e| e.is_live(now)))),
                );
            }
            ReadFor::Cas(coord) => {
                let answered: Vec<NodeUuid> = op.answers.iter().map(|(n, _)| *n).collect();
                self.cas_read_done(coord, result, &answered);
            }
        }
    }

    /// Send entries to nodes (read repair); answers are not awaited.
    pub(super) fn push_to(&mut self, nodes: &[NodeUuid], entries: Vec<(String, Entry)>) {
        for n in nodes {
            if *n == self.me {
                if let Ok(m) = self.merge_local(&entries) {
                    self.stats.received += m.taken as u64;
                    self.request_flush(None);
                }
            } else {
                self.send(
                    *n,
                    Request::Replicate {
                        entries: entries.clone(),
                    },
                    self.cfg.peer_timeout_ms,
                    Purpose::Repair,
                );
            }
        }
    }

    // ----- blocking reads -----

    pub(super) fn start_wait(
        &mut self,
        client: ClientId,
        key: String,
        index: u64,
        timeout_ms: u64,
    ) {
        let owners = self.owners(&key);
        let id = self.new_op(Op::WaitRoute(WaitRouteOp {
            client,
            key,
            index,
            timeout_ms: timeout_ms.min(self.cfg.max_wait_ms),
            owners,
            next: 0,
        }));
        self.wait_next(id);
    }

    pub(super) fn wait_next(&mut self, id: OpId) {
        let Some(Op::WaitRoute(w)) = self.ops.get_mut(&id) else {
            return;
        };
        let Some(owner) = w.owners.get(w.next).copied() else {
            let client = w.client;
            self.ops.remove(&id);
            let e = KvError::Unavailable("no owner of the key answered".into());
            return self.answer(client, Err(e));
        };
        w.next += 1;
        if owner == self.me {
            let Some(Op::WaitRoute(w)) = self.ops.remove(&id) else {
                return;
            };
            return self.local_wait(Reply::Client(w.client), w.key, w.index, w.timeout_ms);
        }
        let request = Request::Wait {
            key: w.key.clone(),
            index: w.index,
            timeout_ms: w.timeout_ms,
        };
        let wait = w.timeout_ms.saturating_add(self.cfg.peer_timeout_ms);
        self.send(owner, request, wait, Purpose::Wait(id));
    }

    pub(super) fn wait_answer(&mut self, id: OpId, outcome: Result<Response, Failure>) {
        let now = self.now;
        match outcome {
            Ok(Response::Entry(e)) if e.as_ref().is_none_or(|e| e.is_plausible(now)) => {
                let Some(Op::WaitRoute(w)) = self.ops.remove(&id) else {
                    return;
                };
                self.answer(
                    w.client,
                    Ok(ClientAnswer::Entry(e.filter(|e| e.is_live(now)))),
                );
            }
            _ => self.wait_next(id),
        }
    }

    /// Answer when this node's copy of `key` passes `index`, or at the timeout.
    pub(super) fn local_wait(&mut self, reply: Reply, key: String, index: u64, timeout_ms: u64) {
        let current = self.local_get(&key).ok().flatten();
        if current.as_ref().is_some_and(|e| e.index > index) {
            return self.answer_waiter(reply, current);
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        let deadline = self
            .now
            .saturating_add(timeout_ms.min(self.cfg.max_wait_ms));
        self.wait_deadlines.insert((deadline, id));
        self.waiters_by_key
            .entry(key.clone())
            .or_default()
            .insert(id);
        self.waiters.insert(
            id,
            Waiter {
                key,
                index,
                deadline,
                reply,
            },
        );
    }

    pub(super) fn answer_waiter(&mut self, reply: Reply, entry: Option<Entry>) {
        let now = self.now;
        let entry = entry.filter(|e| e.is_live(now));
        match reply {
            Reply::Client(id) => self.answer(id, Ok(ClientAnswer::Entry(entry))),
            Reply::Peer(to) => self.reply(to, Response::Entry(entry)),
        }
    }

    pub(super) fn remove_waiter(&mut self, id: u64) -> Option<Waiter> {
        let w = self.waiters.remove(&id)?;
        self.wait_deadlines.remove(&(w.deadline, id));
        if let Some(set) = self.waiters_by_key.get_mut(&w.key) {
            set.remove(&id);
            if set.is_empty() {
                self.waiters_by_key.remove(&w.key);
            }
        }
        Some(w)
    }

    /// A key changed here: answer the blocking reads it satisfies.
    pub(super) fn wake_waiters(&mut self, key: &str) {
        let Some(ids) = self.waiters_by_key.get(key) else {
            return;
        };
        let ids: Vec<u64> = ids.iter().copied().collect();
        let current = self.local_get(key).ok().flatten();
        let index = current.as_ref().map_or(0, |e| e.index);
        for id in ids {
            if self.waiters.get(&id).is_some_and(|w| index > w.index)
                && let Some(w) = self.remove_waiter(id)
            {
                self.answer_waiter(w.reply, current.clone());
            }
        }
    }
}
