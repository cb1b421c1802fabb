//! What a node does on its own, on timers: expiry (an expired entry becomes a tombstone with
//! the same version on every replica), tombstone collection, and anti-entropy rounds (also
//! the handoff after a ring change): digests of (key, version) to the other owners of each
//! key, answered with what they miss and what they hold newer.

use std::collections::BTreeMap;

use opsbro_types::NodeUuid;

use super::{BATCH, BATCH_BYTES, Core, DIGEST_ROUNDS, Failure, PeerSync, Purpose, SyncRound};
use crate::entry::{Entry, Hlc};
use crate::storage::Storage;
use crate::wire::{self, Request, Response};

impl<S: Storage> Core<S> {
    // ----- expiry and tombstones -----

    /// Replace expired entries by tombstones with the same version (every replica does the
    /// same, so they agree without talking).
    pub(super) fn expire(&mut self) {
        let now = self.now;
        let mut wrote = false;
        while let Some((expires, _)) = self.expiring.first() {
            if *expires > now {
                break;
            }
            let Some((expires, key)) = self.expiring.pop_first() else {
                break;
            };
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
                if self.store.put(&key, &tomb).is_ok() {
                    wrote = true;
                    self.wake_waiters(&key);
                }
            }
        }
        if wrote {
            self.request_flush(None);
        }
    }

    /// Forget tombstones older than `tombstone_ttl`.
    pub(super) fn collect_tombstones(&mut self) {
        let limit = self.now.saturating_sub(self.cfg.tombstone_ttl_ms);
        let mut after = String::new();
        let mut removed = false;
        while let Ok((page, more)) = self.store.scan_page("", &after, wire::PAGE_BYTES) {
            for (k, e) in page {
                if e.deleted && Hlc::millis(e.index) < limit && self.store.remove(&k).is_ok() {
                    removed = true;
                }
                after = k;
            }
            if !more {
                break;
            }
        }
        if removed {
            self.request_flush(None);
        }
    }

    // ----- anti-entropy and handoff -----

    /// Offer every local version to the other owners of its key: they answer with what they
    /// miss (sent at once) and what they have newer (taken).
    pub(super) fn start_sync(&mut self) {
        self.sync_rounds += 1;
        let round = self.sync_rounds;
        // The next round is due an interval after this one ends; until then, if this one
        // takes longer than an interval, it is abandoned for a fresh one.
        let jitter = self.rng.between(0, self.cfg.anti_entropy_interval_ms / 10);
        self.next_sync = self
            .now
            .saturating_add(self.cfg.anti_entropy_interval_ms)
            .saturating_add(jitter);
        let mut per_node: BTreeMap<NodeUuid, Vec<(String, u64)>> = BTreeMap::new();
        let mut after = String::new();
        while let Ok((page, more)) = self.store.scan_page("", &after, wire::PAGE_BYTES) {
            for (k, e) in page {
                for o in self.ring.owners(&k, self.cfg.replication_factor) {
                    if o != self.me {
                        per_node.entry(o).or_default().push((k.clone(), e.index));
                    }
                }
                after = k;
            }
            if !more {
                break;
            }
        }
        let mut peers = BTreeMap::new();
        for (node, items) in per_node {
            let chunks: Vec<Vec<(String, u64)>> = items
                .chunks(wire::DIGEST_ITEMS)
                .map(<[(String, u64)]>::to_vec)
                .collect();
            peers.insert(
                node,
                PeerSync {
                    chunks,
                    chunk: 0,
                    rounds: 0,
                },
            );
        }
        let nodes: Vec<NodeUuid> = peers.keys().copied().collect();
        self.sync = Some(SyncRound { round, peers });
        for n in nodes {
            self.send_digest(round, n);
        }
        self.sync_progress();
    }

    pub(super) fn send_digest(&mut self, round: u64, node: NodeUuid) {
        let Some(items) = self
            .sync
            .as_ref()
            .and_then(|s| s.peers.get(&node))
            .and_then(|p| p.chunks.get(p.chunk))
            .cloned()
        else {
            if let Some(s) = self.sync.as_mut() {
                s.peers.remove(&node);
            }
            return;
        };
        self.send(
            node,
            Request::Digest { items },
            self.cfg.peer_timeout_ms.saturating_mul(2),
            Purpose::Digest { round },
        );
    }

    pub(super) fn digest_answer(
        &mut self,
        round: u64,
        from: NodeUuid,
        outcome: Result<Response, Failure>,
    ) {
        if self.sync.as_ref().is_none_or(|s| s.round != round) {
            return;
        }
        let (need, newer) = match outcome {
            Ok(Response::Digest { need, newer }) => (need, newer),
            _ => {
                // This peer is done for this round; the next round tries again.
                if let Some(s) = self.sync.as_mut() {
                    s.peers.remove(&from);
                }
                return self.sync_progress();
            }
        };
        let Some(peer) = self.sync.as_ref().and_then(|s| s.peers.get(&from)) else {
            return;
        };
        let chunk: BTreeMap<String, u64> = peer
            .chunks
            .get(peer.chunk)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default();
        if peer.rounds == 0 {
            // Send what it misses (only keys we offered), in bounded batches.
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            for k in need {
                if !chunk.contains_key(&k) {
                    continue;
                }
                if let Ok(Some(e)) = self.local_get(&k) {
                    bytes += e.value.len() + k.len() + 32;
                    batch.push((k, e));
                }
                if batch.len() >= BATCH || bytes >= BATCH_BYTES {
                    self.send_handoff(from, std::mem::take(&mut batch));
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                self.send_handoff(from, batch);
            }
        }
        let mut more = false;
        if !newer.is_empty() {
            if let Ok(m) = self.merge_local(&newer) {
                self.stats.received += m.taken as u64;
                self.request_flush(None);
            }
            // Ask again while the peer sends newer entries (its answer is paged by size).
            if let Some(p) = self.sync.as_mut().and_then(|s| s.peers.get_mut(&from)) {
                if let Some(c) = p.chunks.get_mut(p.chunk) {
                    let got: BTreeMap<&str, u64> =
                        newer.iter().map(|(k, e)| (k.as_str(), e.index)).collect();
                    for (k, index) in c.iter_mut() {
                        if let Some(i) = got.get(k.as_str()) {
                            *index = (*index).max(*i);
                        }
                    }
                }
                p.rounds += 1;
                more = p.rounds < DIGEST_ROUNDS;
            }
        }
        if !more && let Some(p) = self.sync.as_mut().and_then(|s| s.peers.get_mut(&from)) {
            p.chunk += 1;
            p.rounds = 0;
        }
        self.send_digest(round, from);
        self.sync_progress();
    }

    pub(super) fn send_handoff(&mut self, to: NodeUuid, entries: Vec<(String, Entry)>) {
        self.send(
            to,
            Request::Replicate { entries },
            self.cfg.peer_timeout_ms.saturating_mul(2),
            Purpose::Handoff,
        );
    }

    pub(super) fn sync_progress(&mut self) {
        if self.sync.as_ref().is_some_and(|s| s.peers.is_empty()) {
            self.sync = None;
            let jitter = self.rng.between(0, self.cfg.anti_entropy_interval_ms / 10);
            self.next_sync = self
                .now
                .saturating_add(self.cfg.anti_entropy_interval_ms)
                .saturating_add(jitter);
        }
    }
}
