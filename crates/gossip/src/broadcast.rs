//! The transmit-limited broadcast queue: messages waiting to be piggybacked or gossiped, least
//! transmitted first, each dropped after its retransmit limit. A newer message about the same node
//! replaces the older one (only the latest state is worth spreading).

use std::collections::BTreeSet;

use crate::HashMap;

use opsbro_types::NodeUuid;

/// What a queued message is about; one message per key is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BroadcastKey {
    /// Membership news about a node.
    Node(NodeUuid),
    /// A user event (by id).
    Event(u64),
    /// A suspicion confirmation by `from` about `node` (kept apart from the node's own news so
    /// that confirmations from several accusers all spread).
    Confirm(NodeUuid, NodeUuid),
}

#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    transmits: u32,
    order: u64,
}

/// Most messages a filtered selection passes over before it stops looking.
pub const MAX_SKIPPED: usize = 1024;

/// Queue ordered by (transmits, newest first).
#[derive(Debug, Default)]
pub struct BroadcastQueue {
    entries: HashMap<BroadcastKey, Entry>,
    ordered: BTreeSet<(u32, std::cmp::Reverse<u64>, KeyOrd)>,
    counter: u64,
}

/// A total order over keys so they can live in the BTreeSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct KeyOrd(u8, [u8; 16], [u8; 16], u64);

impl From<BroadcastKey> for KeyOrd {
    fn from(k: BroadcastKey) -> Self {
        match k {
            BroadcastKey::Node(u) => KeyOrd(0, *u.as_bytes(), [0; 16], 0),
            BroadcastKey::Event(id) => KeyOrd(1, [0; 16], [0; 16], id),
            BroadcastKey::Confirm(n, f) => KeyOrd(2, *n.as_bytes(), *f.as_bytes(), 0),
        }
    }
}

impl KeyOrd {
    fn key(self) -> BroadcastKey {
        match self.0 {
            0 => BroadcastKey::Node(NodeUuid::from_bytes(self.1)),
            1 => BroadcastKey::Event(self.3),
            _ => BroadcastKey::Confirm(NodeUuid::from_bytes(self.1), NodeUuid::from_bytes(self.2)),
        }
    }
}

impl BroadcastQueue {
    /// Queue `bytes` (an encoded message) under `key`, replacing an older message with that key.
    pub fn push(&mut self, key: BroadcastKey, bytes: Vec<u8>) {
        self.remove(key);
        self.counter += 1;
        let order = self.counter;
        self.ordered
            .insert((0, std::cmp::Reverse(order), KeyOrd::from(key)));
        self.entries.insert(
            key,
            Entry {
                bytes,
                transmits: 0,
                order,
            },
        );
    }

    /// Forget the message queued under `key`.
    pub fn remove(&mut self, key: BroadcastKey) {
        if let Some(e) = self.entries.remove(&key) {
            self.ordered
                .remove(&(e.transmits, std::cmp::Reverse(e.order), KeyOrd::from(key)));
        }
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Take messages fitting in `budget` bytes (each costs its length), least transmitted first;
    /// count one transmit for each and drop those that reach `limit`.
    pub fn select(&mut self, budget: usize, limit: u32) -> Vec<Vec<u8>> {
        self.select_for(budget, limit, |_| true)
    }

    /// [`BroadcastQueue::select`] among the messages `keep` accepts (the news a destination
    /// may receive: a node never gets news about members of zones it may not see). At most
    /// [`MAX_SKIPPED`] refused messages are looked at per call.
    pub fn select_for(
        &mut self,
        mut budget: usize,
        limit: u32,
        mut keep: impl FnMut(BroadcastKey) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut chosen = Vec::new();
        let mut taken = Vec::new();
        // Looking for a smaller message that still fits is worth a few tries, not a scan of a
        // queue that can hold thousands of entries during a mass join.
        let mut misses = 0;
        let mut skipped = 0;
        for &(transmits, order, key) in &self.ordered {
            if budget < 8 || misses >= 16 || skipped >= MAX_SKIPPED {
                break;
            }
            if !keep(key.key()) {
                skipped += 1;
                continue;
            }
            let Some(e) = self.entries.get(&key.key()) else {
                continue;
            };
            if e.bytes.len() > budget {
                misses += 1;
                continue;
            }
            budget -= e.bytes.len();
            chosen.push(e.bytes.clone());
            taken.push((transmits, order, key));
            if chosen.len() >= 200 {
                break;
            }
        }
        for (transmits, order, key) in taken {
            self.ordered.remove(&(transmits, order, key));
            let k = key.key();
            let done = match self.entries.get_mut(&k) {
                Some(e) => {
                    e.transmits += 1;
                    if e.transmits >= limit {
                        true
                    } else {
                        self.ordered.insert((e.transmits, order, key));
                        false
                    }
                }
                None => false,
            };
            if done {
                self.entries.remove(&k);
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> BroadcastKey {
        BroadcastKey::Node(NodeUuid::from_bytes([n; 16]))
    }

    #[test]
    fn least_transmitted_first_and_dropped_at_limit() {
        let mut q = BroadcastQueue::default();
        q.push(node(1), vec![1; 10]);
        q.push(node(2), vec![2; 10]);
        // Budget for one: the newest goes first.
        assert_eq!(q.select(15, 2), vec![vec![2; 10]]);
        // Now 1 has fewer transmits.
        assert_eq!(q.select(15, 2), vec![vec![1; 10]]);
        // Both at 1 transmit; both fit; both reach the limit and go.
        assert_eq!(q.select(100, 2).len(), 2);
        assert!(q.is_empty());
    }

    #[test]
    fn a_filtered_selection_leaves_the_refused_messages_untouched() {
        let mut q = BroadcastQueue::default();
        q.push(node(1), vec![1; 10]);
        q.push(node(2), vec![2; 10]);
        let only_1 = |k: BroadcastKey| k == node(1);
        assert_eq!(q.select_for(100, 1, only_1), vec![vec![1; 10]]);
        assert_eq!(q.len(), 1, "1 reached its limit, 2 was not sent");
        assert_eq!(q.select(100, 1), vec![vec![2; 10]]);
    }

    #[test]
    fn newer_news_replaces_older() {
        let mut q = BroadcastQueue::default();
        q.push(node(1), vec![1; 10]);
        q.select(100, 10);
        q.push(node(1), vec![9; 10]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.select(100, 10), vec![vec![9; 10]]);
    }

    #[test]
    fn messages_that_do_not_fit_are_skipped_not_lost() {
        let mut q = BroadcastQueue::default();
        q.push(node(1), vec![1; 100]);
        q.push(node(2), vec![2; 10]);
        assert_eq!(q.select(50, 5), vec![vec![2; 10]]);
        assert_eq!(q.len(), 2);
    }
}
