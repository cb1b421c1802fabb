//! What the KV [`Core`](crate::core::Core) needs from a store: read an entry, write one (visible
//! at once, durable after the next flush), remove one, scan a bounded page in key order, and
//! scan keys with their [`Meta`] only (no values: start-up, anti-entropy and index rebuilds
//! cost a pass over keys, not over the data).
//!
//! The core reads and writes through [`Storage`] synchronously, inside its input handlers; it
//! never flushes itself. Durability is an effect ([`Effect::Flush`](crate::core::Effect::Flush)):
//! the driver flushes (sled on the blocking pool, behind the agent's group commit) and reports
//! back, so one flush serves every write made before it.
//!
//! [`MemStorage`] keeps a durable layer and a layer of writes not yet flushed, so the simulator
//! can crash a node and keep only what a real disk would have kept.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::entry::{Entry, Meta};

/// A storage failure (disk full, corruption, ...), as text: the core only reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StorageError(pub String);

/// One page of a scan: entries in key order, and whether more keys follow.
pub type ScanPage = (Vec<(String, Entry)>, bool);

/// One page of a key-only scan: keys in key order with their [`Meta`], and whether more follow.
pub type MetaPage = (Vec<(String, Meta)>, bool);

/// Keys per page of a key-only scan.
pub const META_PAGE_KEYS: usize = 4096;

/// Ordered storage of entries by key.
///
/// Writes are visible to the next read at once and durable after the driver performs the next
/// [`Effect::Flush`](crate::core::Effect::Flush). An adapter over bytes (sled) decodes with
/// [`Entry::from_bytes`] and skips what does not decode, as the agent does today.
pub trait Storage {
    /// The entry of `key`.
    fn get(&self, key: &str) -> Result<Option<Entry>, StorageError>;
    /// Set `key` (visible at once, durable after the next flush).
    fn put(&mut self, key: &str, entry: &Entry) -> Result<(), StorageError>;
    /// Remove `key`.
    fn remove(&mut self, key: &str) -> Result<(), StorageError>;
    /// The keys starting with `prefix` that sort after `after` (`""`: from the first), in key
    /// order, until `max_bytes` of keys and values (at least one entry); true when more follow.
    fn scan_page(
        &self,
        prefix: &str,
        after: &str,
        max_bytes: usize,
    ) -> Result<ScanPage, StorageError>;
    /// Every key that sorts after `after` (`""`: from the first), in key order, with its
    /// [`Meta`] and without its value, until `max_keys` (at least one); true when more follow.
    /// An adapter over bytes decodes only the entry's header
    /// ([`Entry::meta_from_bytes`]) and skips what does not decode, as [`Storage::scan_page`]
    /// does.
    fn scan_meta(&self, after: &str, max_keys: usize) -> Result<MetaPage, StorageError>;
}

/// An in-memory [`Storage`] with a durable layer: writes go to a pending layer until
/// [`MemStorage::flush`]; [`MemStorage::crash`] forgets what was not flushed.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    durable: BTreeMap<String, Entry>,
    /// Writes since the last flush: `None` is a removal.
    pending: BTreeMap<String, Option<Entry>>,
    /// Every put, when recording (the simulator's log of versions).
    journal: Option<Vec<(String, Entry)>>,
    /// Values read so far ([`MemStorage::value_reads`]).
    value_reads: Cell<u64>,
    /// Keys read by key-only scans so far ([`MemStorage::meta_reads`]).
    meta_reads: Cell<u64>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// An empty store that records every put for [`MemStorage::take_journal`].
    pub fn recording() -> MemStorage {
        MemStorage {
            journal: Some(Vec::new()),
            ..MemStorage::default()
        }
    }

    /// The puts recorded since the last call (none unless [`MemStorage::recording`]).
    pub fn take_journal(&mut self) -> Vec<(String, Entry)> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Entries read with their value so far (`get` answers and `scan_page` entries): what tests
    /// count to show that a path reads no values.
    pub fn value_reads(&self) -> u64 {
        self.value_reads.get()
    }

    /// Keys read by key-only scans ([`Storage::scan_meta`]) so far.
    pub fn meta_reads(&self) -> u64 {
        self.meta_reads.get()
    }

    /// Make every write so far durable.
    pub fn flush(&mut self) {
        for (k, v) in std::mem::take(&mut self.pending) {
            match v {
                Some(e) => {
                    self.durable.insert(k, e);
                }
                None => {
                    self.durable.remove(&k);
                }
            }
        }
    }

    /// Lose every write that was not flushed (a power cut).
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    /// Number of keys visible.
    pub fn len(&self) -> usize {
        self.iter_from("", Bound::Unbounded).count()
    }

    /// Whether no key is visible.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every visible entry, in key order.
    pub fn entries(&self) -> Vec<(String, Entry)> {
        self.iter_from("", Bound::Unbounded)
            .map(|(k, e)| (k.to_owned(), e.clone()))
            .collect()
    }

    /// Visible entries with keys starting with `prefix`, from `start`, in key order: the
    /// pending layer over the durable one.
    fn iter_from<'a>(
        &'a self,
        prefix: &'a str,
        start: Bound<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let range = (start, Bound::Unbounded);
        let mut durable = self
            .durable
            .range::<str, _>(range)
            .map(|(k, e)| (k.as_str(), Some(e)))
            .peekable();
        let mut pending = self
            .pending
            .range::<str, _>(range)
            .map(|(k, e)| (k.as_str(), e.as_ref()))
            .peekable();
        std::iter::from_fn(move || {
            loop {
                let next = match (durable.peek(), pending.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => durable.next(),
                    (None, Some(_)) => pending.next(),
                    (Some((a, _)), Some((b, _))) => {
                        if a < b {
                            durable.next()
                        } else {
                            if a == b {
                                durable.next();
                            }
                            pending.next()
                        }
                    }
                };
                let (k, e) = next?;
                if !k.starts_with(prefix) {
                    return None;
                }
                if let Some(e) = e {
                    return Some((k, e));
                }
            }
        })
    }
}

impl Storage for MemStorage {
    fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        let found = match self.pending.get(key) {
            Some(v) => v.clone(),
            None => self.durable.get(key).cloned(),
        };
        if found.is_some() {
            self.value_reads.set(self.value_reads.get() + 1);
        }
        Ok(found)
    }

    fn put(&mut self, key: &str, entry: &Entry) -> Result<(), StorageError> {
        if let Some(j) = self.journal.as_mut() {
            j.push((key.to_owned(), entry.clone()));
        }
        self.pending.insert(key.to_owned(), Some(entry.clone()));
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<(), StorageError> {
        self.pending.insert(key.to_owned(), None);
        Ok(())
    }

    fn scan_page(
        &self,
        prefix: &str,
        after: &str,
        max_bytes: usize,
    ) -> Result<ScanPage, StorageError> {
        let start = if after.is_empty() || after < prefix {
            Bound::Included(prefix)
        } else {
            Bound::Excluded(after)
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (k, e) in self.iter_from(prefix, start) {
            let size = k.len() + e.value.len() + 32;
            if !out.is_empty() && bytes + size > max_bytes {
                self.value_reads
                    .set(self.value_reads.get() + out.len() as u64);
                return Ok((out, true));
            }
            bytes += size;
            out.push((k.to_owned(), e.clone()));
        }
        self.value_reads
            .set(self.value_reads.get() + out.len() as u64);
        Ok((out, false))
    }

    fn scan_meta(&self, after: &str, max_keys: usize) -> Result<MetaPage, StorageError> {
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let max_keys = max_keys.max(1);
        let mut out = Vec::new();
        let mut more = false;
        for (k, e) in self.iter_from("", start) {
            if out.len() == max_keys {
                more = true;
                break;
            }
            out.push((k.to_owned(), e.meta()));
        }
        self.meta_reads
            .set(self.meta_reads.get() + out.len() as u64);
        Ok((out, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            value: vec![b'v'; 10],
            index,
            create_index: index,
            deleted: false,
            expires_ms: 0,
        }
    }

    #[test]
    fn a_crash_keeps_only_what_was_flushed() {
        let mut s = MemStorage::new();
        s.put("a", &entry(1)).expect("put");
        s.put("b", &entry(2)).expect("put");
        s.flush();
        s.put("a", &entry(3)).expect("put");
        s.remove("b").expect("remove");
        s.put("c", &entry(4)).expect("put");
        assert_eq!(s.get("a").expect("get"), Some(entry(3)));
        assert_eq!(s.get("b").expect("get"), None);
        assert_eq!(s.len(), 2);
        s.crash();
        assert_eq!(s.get("a").expect("get"), Some(entry(1)));
        assert_eq!(s.get("b").expect("get"), Some(entry(2)));
        assert_eq!(s.get("c").expect("get"), None);
    }

    #[test]
    fn pages_merge_both_layers_in_key_order() {
        let mut s = MemStorage::new();
        for (i, k) in ["p/a", "p/c", "p/e", "q/x"].iter().enumerate() {
            s.put(k, &entry(i as u64)).expect("put");
        }
        s.flush();
        s.put("p/b", &entry(9)).expect("put");
        s.remove("p/c").expect("remove");
        s.put("p/e", &entry(10)).expect("put");
        let (page, more) = s.scan_page("p/", "", 1 << 20).expect("scan");
        let keys: Vec<&str> = page.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p/a", "p/b", "p/e"]);
        assert!(!more);
        assert_eq!(page[2].1.index, 10);
        // One entry is 3 + 10 + 32 bytes: a page of 50 bytes holds one.
        let (page, more) = s.scan_page("p/", "p/a", 50).expect("scan");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, "p/b");
        assert!(more);
        let (page, more) = s.scan_page("", "p/e", 1 << 20).expect("scan");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, "q/x");
        assert!(!more);
    }

    #[test]
    fn a_key_only_scan_pages_both_layers_and_reads_no_value() {
        let mut s = MemStorage::new();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            s.put(k, &entry(i as u64)).expect("put");
        }
        s.flush();
        s.remove("b").expect("remove");
        s.put(
            "d",
            &Entry {
                deleted: true,
                ..entry(7)
            },
        )
        .expect("put");
        let reads = s.value_reads();
        let (page, more) = s.scan_meta("", 2).expect("scan");
        let keys: Vec<&str> = page.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "c"]);
        assert!(more);
        let (page, more) = s.scan_meta("c", 2).expect("scan");
        let tomb = Meta {
            index: 7,
            deleted: true,
            expires_ms: 0,
        };
        assert_eq!(page, vec![("d".to_owned(), tomb)]);
        assert!(!more);
        assert_eq!(s.value_reads(), reads);
        assert_eq!(s.meta_reads(), 3);
        s.get("a").expect("get");
        assert_eq!(s.value_reads(), reads + 1);
    }
}
