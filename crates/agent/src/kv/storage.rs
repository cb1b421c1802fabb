//! [`opsbro_kv::Storage`] over the agent's sled tree: entries are stored as
//! [`Entry::to_bytes`]; a value that does not decode (written by a future version, or damaged)
//! reads as absent and is skipped by scans, as before the core existed.

use std::sync::Arc;

use opsbro_kv::storage::{MetaPage, ScanPage};
use opsbro_kv::{Entry, Storage, StorageError};
use opsbro_store::{Store, StoreError};

/// The KV tree of the agent's sled database, as the core's storage.
pub struct SledStorage {
    store: Arc<dyn Store>,
}

impl SledStorage {
    /// Over `store`.
    pub fn new(store: Arc<dyn Store>) -> SledStorage {
        SledStorage { store }
    }

    /// The store (for flushes on the blocking pool).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

fn err(e: StoreError) -> StorageError {
    StorageError(e.to_string())
}

impl Storage for SledStorage {
    fn get(&self, key: &str) -> Result<Option<Entry>, StorageError> {
        Ok(self
            .store
            .get(key)
            .map_err(err)?
            .and_then(|b| Entry::from_bytes(&b).ok()))
    }

    fn put(&mut self, key: &str, entry: &Entry) -> Result<(), StorageError> {
        self.store.put(key, &entry.to_bytes()).map_err(err)
    }

    fn remove(&mut self, key: &str) -> Result<(), StorageError> {
        self.store.remove(key).map_err(err)
    }

    fn scan_page(
        &self,
        prefix: &str,
        after: &str,
        max_bytes: usize,
    ) -> Result<ScanPage, StorageError> {
        let (raw, more) = self
            .store
            .scan_page(prefix, after, max_bytes)
            .map_err(err)?;
        let entries = raw
            .into_iter()
            .filter_map(|(k, b)| Entry::from_bytes(&b).ok().map(|e| (k, e)))
            .collect();
        Ok((entries, more))
    }

    fn scan_meta(&self, after: &str, max_keys: usize) -> Result<MetaPage, StorageError> {
        let mut out = Vec::with_capacity(max_keys.min(4096));
        let mut after = after.to_owned();
        loop {
            // Only the entry's header is decoded; the value is never copied out of sled.
            let mut last = None;
            let more = self
                .store
                .visit_page("", &after, max_keys, &mut |k, b| {
                    if let Ok(meta) = Entry::meta_from_bytes(b) {
                        out.push((k.to_owned(), meta));
                    }
                    last = Some(k.to_owned());
                })
                .map_err(err)?;
            // A page of nothing but undecodable entries would give the caller no key to go on
            // from: read on.
            match last {
                Some(k) if more && out.is_empty() => after = k,
                _ => return Ok((out, more)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_undecodable_values_read_as_absent() {
        let store: Arc<dyn Store> = Arc::new(opsbro_store::MemStore::default());
        let mut s = SledStorage::new(store.clone());
        let e = Entry {
            value: b"v".to_vec(),
            index: 5 << 16,
            create_index: 5 << 16,
            ..Entry::default()
        };
        s.put("a/1", &e).expect("put");
        store.put("a/2", b"\xff not an entry").expect("raw put");
        assert_eq!(s.get("a/1").expect("get"), Some(e.clone()));
        assert_eq!(s.get("a/2").expect("get"), None);
        let (page, more) = s.scan_page("a/", "", 1 << 20).expect("scan");
        assert_eq!(page, vec![("a/1".to_owned(), e.clone())]);
        assert!(!more);
        let (metas, more) = s.scan_meta("", 10).expect("key-only scan");
        assert_eq!(metas, vec![("a/1".to_owned(), e.meta())]);
        assert!(!more);
        s.remove("a/1").expect("remove");
        assert_eq!(s.get("a/1").expect("get"), None);
    }
}
