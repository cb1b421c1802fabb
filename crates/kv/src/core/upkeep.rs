//! What a node does on its own, on timers: expiry (an expired entry becomes a tombstone with
//! the same version on every replica), tombstone collection, and anti-entropy rounds (also
//! the handoff after a ring change).
//!
//! A round first compares, with each co-owner, the bucket hashes of the keys both own
//! ([`crate::buckets`], kept in memory by `core/index.rs`): one message of 8 KiB each way
//! answered with the buckets that differ. Only when some differ does the node scan its keys
//! (keys and versions, no values) and send (key, version) digests of those buckets, answered
//! with what the co-owner misses (sent) and what it holds newer (taken). Keys this node holds
//! but no longer owns are offered the same way to their owners until each holds them. An idle
//! cluster in sync reads nothing from its stores.

use std::collections::{BTreeMap, BTreeSet};

use opsbro_types::NodeUuid;

use super::{BATCH, BATCH_BYTES, Core, DIGEST_ROUNDS, Failure, PeerSync, Purpose, SyncRound};
use crate::buckets::{self, BucketHashes, bucket_of, key_hash};
use crate::entry::{Entry, Hlc};
use crate::storage::{META_PAGE_KEYS, Storage, StorageError};
use crate::wire::{self, Request, Response};

impl<S: Storage> Core<S> {
    // ----- expiry and tombstones -----

    /// Replace expired entries by tombstones with the same version (every replica does the
    /// same, so they agree without talking).
    pub(super) fn expire(&mut self) {
        let now = self.now;
        let mut wrote = false;
        while let Some((expires, _)) = self.indexes.expiring.first() {
            if *expires > now {
                break;
            }
            let Some((expires, key)) = self.indexes.expiring.pop_first() else {
                break;
            };
            if let Ok(Some(e)) = self.local_get(&key)
                && !e.deleted
                && e.expires_ms == expires
            {
                let old = e.meta();
                let tomb = Entry {
                    value: Vec::new(),
                    deleted: true,
                    expires_ms: 0,
                    ..e
                };
                if self.store_put(&key, &tomb, Some(old)).is_ok() {
                    wrote = true;
                    self.wake_waiters(&key);
                }
            }
        }
        if wrote {
            self.request_flush(None);
        }
    }

    /// Forget tombstones older than `tombstone_ttl`, from the tombstone index (no scan). The
    /// age is measured from the last multiple of the collection interval, and collections run
    /// at those multiples: every replica forgets the same tombstones at the same moment.
    pub(super) fn collect_tombstones(&mut self) {
        let interval = self.cfg.tombstone_gc_interval_ms.max(1);
        let limit = (self.now / interval * interval).saturating_sub(self.cfg.tombstone_ttl_ms);
        let mut removed = false;
        while let Some((index, _)) = self.indexes.tombstones.first() {
            if Hlc::millis(*index) >= limit {
                break;
            }
            let Some((index, key)) = self.indexes.tombstones.pop_first() else {
                break;
            };
            // The index follows every write the core makes; a store changed behind its back
            // is checked here rather than trusted.
            let Ok(Some(e)) = self.local_get(&key) else {
                continue;
            };
            if e.deleted && e.index == index && self.store_remove(&key, Some(e.meta())).is_ok() {
                removed = true;
            }
        }
        if removed {
            self.request_flush(None);
        }
    }

    // ----- anti-entropy and handoff -----

    /// Start a round: ask every co-owner to compare bucket hashes; the rest follows their
    /// answers ([`Core::buckets_answer`]).
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
        let me = self.me;
        let ring = self.ring.clone();
        let asks: Vec<(NodeUuid, Vec<u64>)> = match self.shared_index() {
            Ok(Some(shared)) => shared
                .buckets
                .iter()
                .filter(|(n, b)| **n != me && !b.is_empty() && ring.nodes().contains(n))
                .map(|(n, b)| (*n, b.as_slice().to_vec()))
                .collect(),
            // No ring, or the store cannot be read: nothing to compare this round.
            Ok(None) | Err(_) => Vec::new(),
        };
        self.sync = Some(SyncRound {
            round,
            comparing: asks.iter().map(|(n, _)| *n).collect(),
            differing: BTreeMap::new(),
            peers: BTreeMap::new(),
            offered: BTreeMap::new(),
        });
        for (node, hashes) in asks {
            self.send(
                node,
                Request::Buckets {
                    from: me,
                    scheme: buckets::SCHEME,
                    hashes,
                },
                self.cfg.peer_timeout_ms.saturating_mul(2),
                Purpose::Buckets { round },
            );
        }
        self.after_comparisons();
    }

    /// Answer a co-owner's bucket hashes with the buckets that differ here.
    pub(super) fn compare_buckets(
        &mut self,
        asker: NodeUuid,
        scheme: u64,
        hashes: &[u64],
    ) -> Result<Vec<u32>, StorageError> {
        if scheme != buckets::SCHEME {
            return Ok((0..hashes.len()).map(|b| b as u32).collect());
        }
        let none = BucketHashes::default();
        Ok(match self.shared_index()? {
            Some(shared) => shared
                .buckets
                .get(&asker)
                .unwrap_or(&none)
                .differing(hashes),
            None => none.differing(hashes),
        })
    }

    /// A co-owner's comparison came back.
    pub(super) fn buckets_answer(
        &mut self,
        round: u64,
        from: NodeUuid,
        outcome: Result<Response, Failure>,
    ) {
        let Some(s) = self.sync.as_mut().filter(|s| s.round == round) else {
            return;
        };
        s.comparing.remove(&from);
        match outcome {
            Ok(Response::Buckets { differ }) if differ.is_empty() => {
                self.stats.buckets_in_sync += 1;
            }
            Ok(Response::Buckets { differ }) => {
                self.stats.buckets_differing += differ.len() as u64;
                let set = differ
                    .into_iter()
                    .filter(|b| (*b as usize) < buckets::BUCKETS)
                    .collect();
                s.differing.insert(from, Some(set));
            }
            // Silent (a node that predates bucket comparison refuses the message and closes
            // the connection) or refusing: compare everything shared with it, key by key.
            Ok(_) | Err(Failure::Timeout) => {
                s.differing.insert(from, None);
            }
            Err(Failure::Unreachable) => {}
        }
        self.after_comparisons();
    }

    /// Once every comparison is in: digest the keys of the differing buckets (one key-only
    /// scan for every co-owner together) and the keys to hand off, and start the exchanges.
    fn after_comparisons(&mut self) {
        let Some(s) = self.sync.as_ref() else {
            return;
        };
        if !s.comparing.is_empty() {
            return;
        }
        let round = s.round;
        let differing = s.differing.clone();
        let rf = self.cfg.replication_factor;
        let me = self.me;
        let ring = self.ring.clone();
        let handoff: BTreeMap<String, u64> = self
            .indexes
            .shared
            .as_ref()
            .map(|sh| sh.handoff.clone())
            .unwrap_or_default();
        let mut per_node: BTreeMap<NodeUuid, Vec<(String, u64)>> = BTreeMap::new();
        let mut offered = BTreeMap::new();
        for (k, index) in &handoff {
            let owners: Vec<NodeUuid> = ring
                .owners(k, rf)
                .into_iter()
                .filter(|o| *o != me)
                .collect();
            if owners.is_empty() {
                continue;
            }
            offered.insert(k.clone(), (*index, owners.len()));
            for o in owners {
                per_node.entry(o).or_default().push((k.clone(), *index));
            }
        }
        if !differing.is_empty() {
            let wanted = |node: &NodeUuid, bucket: u32| {
                differing
                    .get(node)
                    .is_some_and(|d| d.as_ref().is_none_or(|set| set.contains(&bucket)))
            };
            let any: Option<BTreeSet<u32>> = if differing.values().any(Option::is_none) {
                None
            } else {
                Some(differing.values().flatten().flatten().copied().collect())
            };
            let mut after = String::new();
            while let Ok((page, more)) = self.store.scan_meta(&after, META_PAGE_KEYS) {
                for (k, m) in page {
                    let bucket = bucket_of(key_hash(&k)) as u32;
                    if any.as_ref().is_none_or(|a| a.contains(&bucket)) && !handoff.contains_key(&k)
                    {
                        let owners = ring.owners(&k, rf);
                        if owners.contains(&me) {
                            for o in owners {
                                if o != me && wanted(&o, bucket) {
                                    per_node.entry(o).or_default().push((k.clone(), m.index));
                                }
                            }
                        }
                    }
                    after = k;
                }
                if !more {
                    break;
                }
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
        if let Some(s) = self.sync.as_mut() {
            s.peers = peers;
            s.offered = offered;
        }
        for n in nodes {
            self.send_digest(round, n);
        }
        self.sync_progress();
    }

    /// An owner holds a key offered for handoff (at that version or a newer one): once every
    /// owner does, the key is no longer offered.
    fn handoff_confirmed(&mut self, key: &str) {
        let Some(s) = self.sync.as_mut() else {
            return;
        };
        let Some((index, left)) = s.offered.get_mut(key) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return;
        }
        let index = *index;
        s.offered.remove(key);
        if let Some(sh) = self.indexes.shared.as_mut()
            && sh.handoff.get(key) == Some(&index)
        {
            sh.handoff.remove(key);
        }
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
            let needed: BTreeSet<&str> = need.iter().map(String::as_str).collect();
            let held: Vec<String> = chunk
                .keys()
                .filter(|k| !needed.contains(k.as_str()))
                .cloned()
                .collect();
            for k in held {
                self.handoff_confirmed(&k);
            }
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
        if self
            .sync
            .as_ref()
            .is_some_and(|s| s.comparing.is_empty() && s.peers.is_empty())
        {
            self.sync = None;
            let jitter = self.rng.between(0, self.cfg.anti_entropy_interval_ms / 10);
            self.next_sync = self
                .now
                .saturating_add(self.cfg.anti_entropy_interval_ms)
                .saturating_add(jitter);
        }
    }
}
