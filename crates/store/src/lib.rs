//! Durable storage for the KV store, behind [`Store`] so the engine can be replaced: [`SledStore`]
//! (sled 0.34) for agents, [`MemStore`] for tests. [`GroupCommit`] makes writes durable in
//! batches: every writer waits for one flush that started after its write, and one flush serves
//! every writer that arrived while the previous one ran (so 1000 concurrent PUTs cost a handful
//! of fsyncs, not 1000).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// A storage failure (disk full, corruption, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Ordered byte storage with string keys. Writes are visible at once and durable after
/// [`Store::flush`].
pub trait Store: Send + Sync + 'static {
    /// The value of `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Set `key` (visible at once, durable after the next flush).
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Remove `key`.
    fn remove(&self, key: &str) -> Result<(), StoreError>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Every (key, value) with `start <= key < end`, in key order.
    fn scan_range(&self, start: &str, end: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// One page of a prefix scan: the keys starting with `prefix` that sort after `after`
    /// (`""`: from the first), in key order, until `max_bytes` of keys and values (at least
    /// one); true when more keys follow.
    fn scan_page(&self, prefix: &str, after: &str, max_bytes: usize) -> Result<Page, StoreError> {
        let all = self.scan_prefix(prefix)?;
        page(
            all.into_iter().map(Ok).filter(|kv| match kv {
                Ok((k, _)) => k.as_str() > after,
                Err(_) => true,
            }),
            max_bytes,
        )
    }
    /// Visit one page of a prefix scan without copying values: `visit(key, value)` for the keys
    /// starting with `prefix` that sort after `after` (`""`: from the first), in key order, at
    /// most `max_keys` of them (at least one); true when more keys follow. What a key-only scan
    /// is built on: the visitor decodes what it needs of each value (a header) in place.
    fn visit_page(
        &self,
        prefix: &str,
        after: &str,
        max_keys: usize,
        visit: &mut dyn FnMut(&str, &[u8]),
    ) -> Result<bool, StoreError> {
        let max_keys = max_keys.max(1);
        let mut seen = 0usize;
        for (k, v) in self.scan_prefix(prefix)? {
            if k.as_str() <= after {
                continue;
            }
            if seen == max_keys {
                return Ok(true);
            }
            seen += 1;
            visit(&k, &v);
        }
        Ok(false)
    }
    /// Make every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes used on disk (0 for memory).
    fn size_on_disk(&self) -> u64;
    /// Number of keys (walks the store: for status pages, not hot paths).
    fn len(&self) -> usize;
    /// Whether the store is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A page of a scan: (key, value) pairs in key order, and whether more follow.
pub type Page = (Vec<(String, Vec<u8>)>, bool);

/// Take (key, value) pairs until `max_bytes` (at least one); true when more follow.
fn page(
    items: impl Iterator<Item = Result<(String, Vec<u8>), StoreError>>,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for item in items {
        let (k, v) = item?;
        if !out.is_empty() && bytes + k.len() + v.len() > max_bytes {
            return Ok((out, true));
        }
        bytes += k.len() + v.len();
        out.push((k, v));
    }
    Ok((out, false))
}

/// A (key, value) pair of a tree as raw bytes ([`SledStore::raw_items`]).
pub type RawItem = (Vec<u8>, Vec<u8>);

/// sled, one tree.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
}

/// sled's page cache when none is configured: small, because sled's own default (1 GiB) is
/// what an idle agent with a large store grew its memory to (issue 31). The KV core keeps what
/// it needs on every round in memory (bucket hashes, expiry and tombstone indexes), so a small
/// cache costs reads only to clients.
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

impl SledStore {
    /// Open (or create) the store in `dir` with the default cache ([`DEFAULT_CACHE_BYTES`]).
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Open (or create) the store in `dir`, sled's page cache bounded to `cache_bytes` (shared
    /// by every tree of the database: KV, metrics, Raft).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Flushes are ours (group commit); no background flusher thread waking up.
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("kv")?;
        Ok(SledStore { db, tree })
    }

    /// Another tree of the same database (one sled instance, one flush for all): the time-series
    /// store lives beside the KV store this way.
    pub fn open_tree(&self, name: &str) -> Result<SledStore, StoreError> {
        Ok(SledStore {
            db: self.db.clone(),
            tree: self.db.open_tree(name)?,
        })
    }

    /// The names of every tree of the database (sled's own default tree included), sorted:
    /// what a snapshot of the whole database walks.
    pub fn tree_names(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<Vec<u8>> = self.db.tree_names().iter().map(|n| n.to_vec()).collect();
        names.sort();
        names
    }

    /// Every (key, value) of the tree `name` as raw bytes, in key order, read lazily. Each
    /// pair is whole, but the walk is not a point-in-time view: a write made during the walk
    /// may or may not be seen.
    pub fn raw_items(
        &self,
        name: &[u8],
    ) -> Result<impl Iterator<Item = Result<RawItem, StoreError>> + use<>, StoreError> {
        Ok(self.db.open_tree(name)?.iter().map(|kv| {
            kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        }))
    }

    /// Set `key` in the tree `name` (created when missing), as raw bytes: restoring a snapshot.
    pub fn raw_insert(&self, name: &[u8], key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree(name)?.insert(key, value)?;
        Ok(())
    }
}

impl Store for SledStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(key.as_bytes(), value)?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.tree.remove(key.as_bytes())?;
        Ok(())
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.tree
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn scan_range(&self, start: &str, end: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.tree
            .range(start.as_bytes()..end.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn scan_page(&self, prefix: &str, after: &str, max_bytes: usize) -> Result<Page, StoreError> {
        use std::ops::Bound;
        let start = if after.is_empty() || after < prefix {
            Bound::Included(prefix.as_bytes().to_vec())
        } else {
            Bound::Excluded(after.as_bytes().to_vec())
        };
        let items = self
            .tree
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take_while(|kv| {
                kv.as_ref()
                    .map_or(true, |(k, _)| k.starts_with(prefix.as_bytes()))
            })
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            });
        page(items, max_bytes)
    }

    fn visit_page(
        &self,
        prefix: &str,
        after: &str,
        max_keys: usize,
        visit: &mut dyn FnMut(&str, &[u8]),
    ) -> Result<bool, StoreError> {
        use std::ops::Bound;
        let start = if after.is_empty() || after < prefix {
            Bound::Included(prefix.as_bytes().to_vec())
        } else {
            Bound::Excluded(after.as_bytes().to_vec())
        };
        let max_keys = max_keys.max(1);
        let range = self.tree.range::<Vec<u8>, _>((start, Bound::Unbounded));
        for (seen, kv) in range.enumerate() {
            // sled hands out the stored bytes (an `IVec`) without copying them: only the key
            // is turned into a string here.
            let (k, v) = kv?;
            if !k.starts_with(prefix.as_bytes()) {
                return Ok(false);
            }
            if seen == max_keys {
                return Ok(true);
            }
            visit(&String::from_utf8_lossy(&k), &v);
        }
        Ok(false)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn len(&self) -> usize {
        self.tree.len()
    }
}

/// In memory (tests, benchmarks of everything but the disk).
#[derive(Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        Ok(())
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_range(&self, start: &str, end: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .range(start.to_owned()..end.to_owned())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }

    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// How long a flush that follows another waits for more writers (PostgreSQL's `commit_delay`):
/// a little latency under load for much larger batches (fewer, cheaper flushes). A flush after
/// a quiet period starts at once.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

#[derive(Default)]
struct Tickets {
    /// Tickets handed out (writes waiting to be durable).
    issued: u64,
    /// Highest ticket made durable.
    durable: u64,
    /// A flush is running.
    flushing: bool,
}

/// Batches flushes: see the crate docs.
pub struct GroupCommit {
    store: Arc<dyn Store>,
    tickets: Mutex<Tickets>,
    /// (highest durable ticket, error of the last flush).
    done: tokio::sync::watch::Sender<(u64, Option<StoreError>)>,
    /// Flushes so far.
    flushes: std::sync::atomic::AtomicU64,
}

impl GroupCommit {
    /// Group commits for `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<GroupCommit> {
        Arc::new(GroupCommit {
            store,
            tickets: Mutex::new(Tickets::default()),
            done: tokio::sync::watch::channel((0, None)).0,
            flushes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Flushes done so far (each made many writes durable).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Wait until every write made before this call is durable.
    pub async fn durable(self: &Arc<Self>) -> Result<(), StoreError> {
        let (ticket, lead) = {
            let mut t = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
            t.issued += 1;
            let lead = !t.flushing;
            t.flushing = true;
            (t.issued, lead)
        };
        if lead {
            // This caller runs flushes until no ticket is left waiting.
            let me = self.clone();
            tokio::spawn(async move { me.flush_loop().await });
        }
        let mut rx = self.done.subscribe();
        loop {
            {
                let (durable, error) = &*rx.borrow_and_update();
                if *durable >= ticket {
                    return match error {
                        Some(e) => Err(e.clone()),
                        None => Ok(()),
                    };
                }
            }
            if rx.changed().await.is_err() {
                return Err(StoreError("the store was closed".into()));
            }
        }
    }

    async fn flush_loop(self: Arc<Self>) {
        let mut first = true;
        loop {
            if !first {
                // Writers arrived while the last flush ran: there are more on their way (the
                // tasks that are ready to run). Let them join this flush instead of the next.
                tokio::time::sleep(COMMIT_DELAY).await;
            }
            first = false;
            let target = {
                let mut t = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
                if t.durable >= t.issued {
                    t.flushing = false;
                    return;
                }
                t.issued
            };
            let store = self.store.clone();
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = tokio::task::spawn_blocking(move || store.flush())
                .await
                .unwrap_or_else(|e| Err(StoreError(format!("flush task failed: {e}"))));
            self.tickets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .durable = target;
            self.done.send_replace((target, result.err()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn Store) {
        store.put("a/1", b"x").expect("put");
        store.put("a/2", b"y").expect("put");
        store.put("b/1", b"z").expect("put");
        assert_eq!(store.get("a/1").expect("get"), Some(b"x".to_vec()));
        let a: Vec<String> = store
            .scan_prefix("a/")
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(a, ["a/1", "a/2"]);
        store.remove("a/1").expect("remove");
        assert_eq!(store.get("a/1").expect("get"), None);
        // Pages: bounded by bytes, at least one entry, resumed after the last key.
        for i in 0..10 {
            store.put(&format!("p/{i}"), &[b'v'; 10]).expect("put");
        }
        store.put("q/0", b"other prefix").expect("put");
        let mut after = String::new();
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (items, more) = store.scan_page("p/", &after, 40).expect("page");
            assert!(!items.is_empty() && items.len() <= 3, "{items:?}");
            after = items.last().map(|(k, _)| k.clone()).unwrap_or_default();
            seen.extend(items.into_iter().map(|(k, _)| k));
            pages += 1;
            if !more {
                break;
            }
        }
        assert_eq!(seen, (0..10).map(|i| format!("p/{i}")).collect::<Vec<_>>());
        assert_eq!(pages, 4);
        let (one, more) = store.scan_page("p/", "", 1).expect("page");
        assert_eq!(
            (one.len(), more),
            (1, true),
            "one entry even over the budget"
        );
        let (none, more) = store.scan_page("p/", "p/9", 100).expect("page");
        assert!(none.is_empty() && !more);
        // Visited pages: bounded by keys, values seen in place, resumed after the last key.
        let mut visited = Vec::new();
        let more = store
            .visit_page("p/", "p/2", 4, &mut |k, v| {
                visited.push((k.to_owned(), v.len()))
            })
            .expect("visit");
        assert!(more);
        assert_eq!(
            visited,
            (3..7).map(|i| (format!("p/{i}"), 10)).collect::<Vec<_>>()
        );
        let mut rest = Vec::new();
        let more = store
            .visit_page("p/", "p/6", 100, &mut |k, _| rest.push(k.to_owned()))
            .expect("visit");
        assert!(!more);
        assert_eq!(rest, ["p/7", "p/8", "p/9"]);
        store.flush().expect("flush");
    }

    #[test]
    fn sled_and_memory_behave_the_same() {
        exercise(&MemStore::default());
        let dir = tempfile::tempdir().expect("tmp");
        exercise(&SledStore::open_with_cache(dir.path(), 1 << 20).expect("open"));
    }

    #[test]
    fn flushed_writes_survive_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let s = SledStore::open(dir.path()).expect("open");
            s.put("k", b"v").expect("put");
            s.flush().expect("flush");
        }
        // sled lets go of its file lock when its last handle (some held by its own threads)
        // is dropped: wait for that rather than racing it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let s = loop {
            match SledStore::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline && e.0.contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e:?}"),
            }
        };
        assert_eq!(s.get("k").expect("get"), Some(b"v".to_vec()));
    }

    #[test]
    fn scan_range_is_half_open_in_both_stores_and_trees_are_separate() {
        let dir = tempfile::tempdir().expect("tmp");
        let sled = SledStore::open(dir.path()).expect("open");
        let other = sled.open_tree("ts").expect("tree");
        let mem = MemStore::default();
        for s in [&sled as &dyn Store, &mem as &dyn Store] {
            for k in ["a", "b1", "b2", "b3", "c"] {
                s.put(k, k.as_bytes()).expect("put");
            }
            let keys: Vec<String> = s
                .scan_range("b1", "b3")
                .expect("range")
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys, ["b1", "b2"]);
            assert!(s.scan_range("c", "a").expect("empty").is_empty());
        }
        assert!(other.is_empty(), "a new tree does not see the kv tree");
        other.put("x", b"1").expect("put");
        assert_eq!(sled.get("x").expect("get"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_serves_many_writers_with_few_flushes() {
        struct Counting(MemStore, std::sync::atomic::AtomicU64);
        impl Store for Counting {
            fn get(&self, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
                self.0.get(k)
            }
            fn put(&self, k: &str, v: &[u8]) -> Result<(), StoreError> {
                self.0.put(k, v)
            }
            fn remove(&self, k: &str) -> Result<(), StoreError> {
                self.0.remove(k)
            }
            fn scan_prefix(&self, p: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
                self.0.scan_prefix(p)
            }
            fn scan_range(&self, a: &str, b: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
                self.0.scan_range(a, b)
            }
            fn flush(&self) -> Result<(), StoreError> {
                std::thread::sleep(std::time::Duration::from_millis(5));
                self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
            fn size_on_disk(&self) -> u64 {
                0
            }
            fn len(&self) -> usize {
                self.0.len()
            }
        }
        let store = Arc::new(Counting(MemStore::default(), Default::default()));
        let gc = GroupCommit::new(store.clone());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                gc.store().put(&format!("k{i}"), b"v").expect("put");
                gc.durable().await.expect("durable");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let flushes = store.1.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..50).contains(&flushes),
            "{flushes} flushes for 200 writers"
        );
    }
}
