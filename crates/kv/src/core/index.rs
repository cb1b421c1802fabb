//! What the core keeps in memory about its store so that nothing on a timer scans it: the
//! expiry index, the tombstone index (ordered by stamp, for collection) and the shared-key
//! index ([`SharedIndex`]: bucket hashes per co-owner, and the keys to hand off). Every write
//! the core makes goes through [`Core::store_put`] / [`Core::store_remove`], which keep them up
//! to date; a key-only scan ([`Storage::scan_meta`]) builds them from scratch at start-up and,
//! for the shared-key index (which depends on the ring), after a ring change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use opsbro_types::NodeUuid;

use super::Core;
use crate::buckets::{BucketHashes, key_hash};
use crate::entry::{Entry, Meta};
use crate::ring::Ring;
use crate::storage::{META_PAGE_KEYS, Storage, StorageError};

/// The keys this node shares with other nodes under one ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedIndex {
    /// Per co-owner: bucket hashes of the keys held here that both this node and it own.
    pub buckets: BTreeMap<NodeUuid, BucketHashes>,
    /// Keys held here that this node does not own (the ring moved them; a copy from a node
    /// with another view of the ring), with their version: offered to their owners until each
    /// holds that version or a newer one.
    pub handoff: BTreeMap<String, u64>,
}

impl SharedIndex {
    /// Account for `key` going from `old` to `new` under `ring` (`me` being this node).
    fn apply(
        &mut self,
        ring: &Ring,
        replication_factor: usize,
        me: NodeUuid,
        key: &str,
        old: Option<Meta>,
        new: Option<Meta>,
    ) {
        let owners = ring.owners(key, replication_factor);
        if owners.is_empty() {
            return;
        }
        if owners.contains(&me) {
            let h = key_hash(key);
            for o in owners.into_iter().filter(|o| *o != me) {
                self.buckets.entry(o).or_default().replace(h, old, new);
            }
        } else {
            match new {
                Some(m) => {
                    self.handoff.insert(key.to_owned(), m.index);
                }
                None => {
                    self.handoff.remove(key);
                }
            }
        }
    }

    /// The same index without co-owners whose hashes sum nothing (left behind when every
    /// shared key went away): what a rebuild would give.
    pub fn normalized(&self) -> SharedIndex {
        SharedIndex {
            buckets: self
                .buckets
                .iter()
                .filter(|(_, b)| !b.is_empty())
                .map(|(n, b)| (*n, b.clone()))
                .collect(),
            handoff: self.handoff.clone(),
        }
    }
}

/// Indexes built by one key-only scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexes {
    /// (expiry, key) of live entries with a TTL.
    pub expiring: BTreeSet<(u64, String)>,
    /// (stamp, key) of tombstones.
    pub tombstones: BTreeSet<(u64, String)>,
    /// The shared-key index under the ring given (none for an empty ring).
    pub shared: Option<SharedIndex>,
    /// Entries in the store, tombstones included (what `agent info` shows without a scan).
    pub entries: usize,
}

impl Indexes {
    /// Account for `key` going from `old` to `new` in the expiry and tombstone indexes.
    fn apply_local(&mut self, key: &str, old: Option<Meta>, new: Option<Meta>) {
        match (old.is_some(), new.is_some()) {
            (false, true) => self.entries += 1,
            (true, false) => self.entries = self.entries.saturating_sub(1),
            _ => {}
        }
        if let Some(o) = old {
            if o.deleted {
                self.tombstones.remove(&(o.index, key.to_owned()));
            } else if o.expires_ms > 0 {
                self.expiring.remove(&(o.expires_ms, key.to_owned()));
            }
        }
        if let Some(n) = new {
            if n.deleted {
                self.tombstones.insert((n.index, key.to_owned()));
            } else if n.expires_ms > 0 {
                self.expiring.insert((n.expires_ms, key.to_owned()));
            }
        }
    }
}

/// Build every index with one key-only scan of `store`; `each` sees every key (the clock
/// observes the stamps at start-up). The shared-key index is built when `ring` has nodes.
pub fn build_indexes<S: Storage>(
    store: &S,
    ring: &Ring,
    replication_factor: usize,
    me: NodeUuid,
    mut each: impl FnMut(&str, Meta),
) -> Result<Indexes, StorageError> {
    let mut out = Indexes {
        shared: (!ring.is_empty()).then(SharedIndex::default),
        ..Indexes::default()
    };
    let mut after = String::new();
    loop {
        let (page, more) = store.scan_meta(&after, META_PAGE_KEYS)?;
        for (key, m) in page {
            each(&key, m);
            out.apply_local(&key, None, Some(m));
            if let Some(s) = out.shared.as_mut() {
                s.apply(ring, replication_factor, me, &key, None, Some(m));
            }
            after = key;
        }
        if !more {
            return Ok(out);
        }
    }
}

impl<S: Storage> Core<S> {
    /// Write `entry` for `key`, whose current version is `old`, keeping the indexes.
    pub(super) fn store_put(
        &mut self,
        key: &str,
        entry: &Entry,
        old: Option<Meta>,
    ) -> Result<(), StorageError> {
        self.store.put(key, entry)?;
        self.note_change(key, old, Some(entry.meta()));
        Ok(())
    }

    /// Remove `key`, whose current version is `old`, keeping the indexes.
    pub(super) fn store_remove(
        &mut self,
        key: &str,
        old: Option<Meta>,
    ) -> Result<(), StorageError> {
        self.store.remove(key)?;
        self.note_change(key, old, None);
        Ok(())
    }

    fn note_change(&mut self, key: &str, old: Option<Meta>, new: Option<Meta>) {
        self.indexes.apply_local(key, old, new);
        self.stats.local_entries = self.indexes.entries as u64;
        if let Some(s) = self.indexes.shared.as_mut() {
            s.apply(
                &self.ring,
                self.cfg.replication_factor,
                self.me,
                key,
                old,
                new,
            );
        }
    }

    /// The shared-key index under the current ring, built with a key-only scan when the ring
    /// changed since it was (none while the ring is empty).
    pub(super) fn shared_index(&mut self) -> Result<Option<&SharedIndex>, StorageError> {
        if self.ring.is_empty() {
            return Ok(None);
        }
        if self.indexes.shared.is_none() {
            let built = build_indexes(
                &self.store,
                &self.ring,
                self.cfg.replication_factor,
                self.me,
                |_, _| {},
            )?;
            self.stats.index_builds += 1;
            self.indexes.shared = built.shared;
        }
        Ok(self.indexes.shared.as_ref())
    }

    /// The ring changed: the shared-key index is rebuilt when next needed.
    pub(super) fn ring_changed_for_indexes(&mut self) {
        self.indexes.shared = None;
    }

    /// Build every index again from the store (after changing the store behind the core's
    /// back through [`Core::store_mut`]).
    pub fn rebuild_indexes(&mut self) -> Result<(), StorageError> {
        let ring: Arc<Ring> = self.ring.clone();
        self.indexes = build_indexes(
            &self.store,
            &ring,
            self.cfg.replication_factor,
            self.me,
            |_, _| {},
        )?;
        self.stats.index_builds += 1;
        self.stats.local_entries = self.indexes.entries as u64;
        Ok(())
    }

    /// The indexes as kept incrementally (co-owners whose hashes sum nothing left out), and as
    /// a key-only scan builds them now: equal unless a write bypassed the core. The keys to
    /// hand off may be fewer than built (those confirmed at their owners are dropped).
    pub fn indexes_against_rebuild(&self) -> Result<(Indexes, Indexes), StorageError> {
        let mut kept = self.indexes.clone();
        kept.shared = kept.shared.as_ref().map(SharedIndex::normalized);
        let built = build_indexes(
            &self.store,
            &self.ring,
            self.cfg.replication_factor,
            self.me,
            |_, _| {},
        )?;
        Ok((kept, built))
    }
}
