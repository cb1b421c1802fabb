//! The Raft log as raft-rs reads it: hard state, configuration, the latest snapshot (with the
//! lock table as its data) and the entries after it, in memory. The node hands every change to
//! its driver as [`crate::Persist`] operations to write to disk (the agent's sled database), and
//! a restarted node is rebuilt from what was written ([`LogStore::restore`]).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{Error, GetEntriesContext, RaftState, StorageError};

/// The in-memory log.
#[derive(Debug, Default, Clone)]
pub struct LogStore {
    pub(crate) hard: HardState,
    pub(crate) conf: ConfState,
    pub(crate) snapshot: Snapshot,
    /// Entries after the snapshot, consecutive.
    pub(crate) entries: Vec<Entry>,
}

impl LogStore {
    /// A log rebuilt from a persisted snapshot, entries and hard state.
    pub fn restore(snapshot: Snapshot, entries: Vec<Entry>, hard: HardState) -> LogStore {
        let index = snapshot.get_metadata().index;
        let conf = snapshot.get_metadata().get_conf_state().clone();
        let mut entries: Vec<Entry> = entries.into_iter().filter(|e| e.index > index).collect();
        entries.sort_by_key(|e| e.index);
        // Keep the consecutive run after the snapshot only.
        let mut expected = index + 1;
        entries.retain(|e| {
            let keep = e.index == expected;
            if keep {
                expected += 1;
            }
            keep
        });
        let mut store = LogStore {
            hard,
            conf,
            snapshot,
            entries,
        };
        // Configuration changes after the snapshot are re-applied by the node when it replays
        // the committed entries.
        if store.hard.commit < index {
            store.hard.commit = index;
        }
        store
    }

    fn snap_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub(crate) fn first(&self) -> u64 {
        self.snap_index() + 1
    }

    pub(crate) fn last(&self) -> u64 {
        self.entries.last().map_or(self.snap_index(), |e| e.index)
    }

    /// Append entries (replacing any from the first one's index on).
    pub(crate) fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else {
            return;
        };
        if first.index < self.first() {
            // Already covered by the snapshot.
            let skip = (self.first() - first.index) as usize;
            if skip >= ents.len() {
                return;
            }
            return self.append(&ents[skip..]);
        }
        let keep = (first.index - self.first()) as usize;
        self.entries.truncate(keep.min(self.entries.len()));
        self.entries.extend_from_slice(ents);
    }

    /// Take a snapshot received from the leader: the log restarts after it.
    pub(crate) fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata();
        self.hard.term = self.hard.term.max(meta.term);
        self.hard.commit = self.hard.commit.max(meta.index);
        self.conf = meta.get_conf_state().clone();
        self.entries.retain(|e| e.index > meta.index);
        self.snapshot = snap;
    }

    /// Replace the snapshot by one of our own at `index` (applied), dropping the entries it
    /// covers.
    pub(crate) fn compact(&mut self, index: u64, data: Vec<u8>) {
        if index <= self.snap_index() || index > self.last() {
            return;
        }
        let term = self
            .entries
            .iter()
            .find(|e| e.index == index)
            .map_or(0, |e| e.term);
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf.clone());
        self.entries.retain(|e| e.index > index);
        self.snapshot = snap;
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(Error::Store(StorageError::Unavailable));
        }
        let offset = self.first();
        let mut out: Vec<Entry> =
            self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        if let Some(max) = max_size.into() {
            let mut size = 0u64;
            let mut keep = 0;
            for e in &out {
                size += protobuf::Message::compute_size(e) as u64;
                if keep > 0 && size > max {
                    break;
                }
                keep += 1;
            }
            out.truncate(keep.max(1));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Ok(self.snapshot.clone())
    }
}
