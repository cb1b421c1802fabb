//! The replicated lock table: the state machine every member of the Raft group applies, entry by
//! entry, in log order. It is deterministic (no clock, no randomness): time enters only through
//! commands the leader proposes (`Expire` when a holder stopped renewing, `NodeGone` when gossip
//! declared a holder's node dead or gone).
//!
//! A lock granted at log index `i` carries the fencing token `i`: tokens of one lock only grow,
//! so a resource that remembers the largest token it saw refuses an older holder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who holds (or asks for) a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's node (its uuid): gossip declaring it dead or gone releases its locks.
    pub node: String,
    /// The holder's session on that node (one `opsbro lock` run, one election member).
    pub session: String,
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// Who holds it.
    pub holder: Holder,
    /// Fencing token: the log index of the grant.
    pub token: u64,
    /// Without a renewal for this long (leader's clock), the leader expires it.
    pub ttl_ms: u64,
    /// Log index of the grant or of the latest renewal.
    #[serde(default)]
    pub renewed_at: u64,
}

/// A change to the lock table, as written in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Take `lock` for `holder` if it is free (or already theirs: the same token again).
    Acquire {
        /// Lock name.
        lock: String,
        /// Who asks.
        holder: Holder,
        /// Expiry without renewal.
        ttl_ms: u64,
        /// The asker's request id (to find its answer among the applied entries).
        request: u64,
    },
    /// The holder is still there (the leader restarts its TTL).
    Renew {
        /// Lock name.
        lock: String,
        /// The holder's token.
        token: u64,
        /// The asker's request id.
        request: u64,
    },
    /// The holder lets go.
    Release {
        /// Lock name.
        lock: String,
        /// The holder's token.
        token: u64,
        /// The asker's request id.
        request: u64,
    },
    /// The leader saw no renewal for the TTL.
    Expire {
        /// Lock name.
        lock: String,
        /// The token that expired (a later holder is not touched).
        token: u64,
        /// The leader's last known renewal (log index): a renewal applied after it, while
        /// this expiry was on its way, cancels it.
        renewed_at: u64,
    },
    /// Gossip declared this node dead or gone: its locks are released.
    NodeGone {
        /// The node's uuid.
        node: String,
    },
}

impl Command {
    /// The asker's request id, for commands that answer one.
    pub fn request(&self) -> Option<u64> {
        match self {
            Command::Acquire { request, .. }
            | Command::Renew { request, .. }
            | Command::Release { request, .. } => Some(*request),
            Command::Expire { .. } | Command::NodeGone { .. } => None,
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The lock is the asker's, with this token.
    Granted {
        /// Fencing token.
        token: u64,
    },
    /// Someone else holds it.
    Held {
        /// The holder.
        holder: Holder,
        /// Their token.
        token: u64,
    },
    /// The renewal was recorded.
    Renewed,
    /// The lock was released (by its holder, by expiry or because its node is gone): these
    /// (lock, token, holder) pairs.
    Released(Vec<(String, u64, Holder)>),
    /// The token does not hold the lock (any more).
    NotHolder,
}

/// The lock table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    locks: BTreeMap<String, Lock>,
    /// Index of the last entry applied.
    applied: u64,
}

impl Machine {
    /// Apply the command of log entry `index` (entries come in log order, each once).
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        self.applied = self.applied.max(index);
        match command {
            Command::Acquire {
                lock,
                holder,
                ttl_ms,
                ..
            } => match self.locks.get_mut(lock) {
                // Asking again is a renewal.
                Some(l) if l.holder == *holder => {
                    l.renewed_at = index;
                    Outcome::Granted { token: l.token }
                }
                Some(l) => Outcome::Held {
                    holder: l.holder.clone(),
                    token: l.token,
                },
                None => {
                    self.locks.insert(
                        lock.clone(),
                        Lock {
                            holder: holder.clone(),
                            token: index,
                            ttl_ms: *ttl_ms,
                            renewed_at: index,
                        },
                    );
                    Outcome::Granted { token: index }
                }
            },
            Command::Renew { lock, token, .. } => match self.locks.get_mut(lock) {
                Some(l) if l.token == *token => {
                    l.renewed_at = index;
                    Outcome::Renewed
                }
                _ => Outcome::NotHolder,
            },
            Command::Expire {
                lock,
                token,
                renewed_at,
            } => match self.locks.get(lock) {
                Some(l) if l.token == *token && l.renewed_at == *renewed_at => {
                    let l = self.locks.remove(lock).map(|l| l.holder);
                    Outcome::Released(l.map(|h| (lock.clone(), *token, h)).into_iter().collect())
                }
                _ => Outcome::NotHolder,
            },
            Command::Release { lock, token, .. } => match self.locks.get(lock) {
                Some(l) if l.token == *token => {
                    let l = self.locks.remove(lock).map(|l| l.holder);
                    Outcome::Released(l.map(|h| (lock.clone(), *token, h)).into_iter().collect())
                }
                _ => Outcome::NotHolder,
            },
            Command::NodeGone { node } => {
                let gone: Vec<(String, u64, Holder)> = self
                    .locks
                    .iter()
                    .filter(|(_, l)| l.holder.node == *node)
                    .map(|(name, l)| (name.clone(), l.token, l.holder.clone()))
                    .collect();
                for (name, _, _) in &gone {
                    self.locks.remove(name);
                }
                Outcome::Released(gone)
            }
        }
    }

    /// An entry that changes no lock (a leader's empty entry, a configuration change).
    pub fn apply_noop(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// The lock `name`, when held.
    pub fn lock(&self, name: &str) -> Option<&Lock> {
        self.locks.get(name)
    }

    /// Every held lock.
    pub fn locks(&self) -> &BTreeMap<String, Lock> {
        &self.locks
    }

    /// Index of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The table as bytes (a Raft snapshot's data).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A table from a snapshot's data.
    pub fn from_bytes(bytes: &[u8]) -> Result<Machine, serde_json::Error> {
        if bytes.is_empty() {
            return Ok(Machine::default());
        }
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str) -> Holder {
        Holder {
            node: node.into(),
            session: format!("{node}-s"),
        }
    }

    fn acquire(lock: &str, node: &str) -> Command {
        Command::Acquire {
            lock: lock.into(),
            holder: holder(node),
            ttl_ms: 1000,
            request: 1,
        }
    }

    #[test]
    fn one_holder_tokens_grow_and_only_the_token_releases() {
        let mut m = Machine::default();
        assert_eq!(
            m.apply(3, &acquire("db", "a")),
            Outcome::Granted { token: 3 }
        );
        // Asking again: the same grant.
        assert_eq!(
            m.apply(4, &acquire("db", "a")),
            Outcome::Granted { token: 3 }
        );
        assert_eq!(
            m.apply(5, &acquire("db", "b")),
            Outcome::Held {
                holder: holder("a"),
                token: 3
            }
        );
        let stale = Command::Release {
            lock: "db".into(),
            token: 2,
            request: 2,
        };
        assert_eq!(m.apply(6, &stale), Outcome::NotHolder);
        // An expiry decided before the renewal at 4 is void.
        let stale_expire = Command::Expire {
            lock: "db".into(),
            token: 3,
            renewed_at: 3,
        };
        let renew = Command::Renew {
            lock: "db".into(),
            token: 3,
            request: 4,
        };
        assert_eq!(m.apply(7, &renew), Outcome::Renewed);
        assert_eq!(m.apply(8, &stale_expire), Outcome::NotHolder);
        let expire = Command::Expire {
            lock: "db".into(),
            token: 3,
            renewed_at: 7,
        };
        assert!(matches!(m.apply(9, &expire), Outcome::Released(r) if r.len() == 1));
        assert_eq!(
            m.apply(10, &acquire("db", "b")),
            Outcome::Granted { token: 10 }
        );
        // The old holder's renewal is refused.
        assert_eq!(m.apply(11, &renew), Outcome::NotHolder);
    }

    #[test]
    fn a_gone_node_loses_all_its_locks_and_snapshots_round_trip() {
        let mut m = Machine::default();
        m.apply(1, &acquire("x", "a"));
        m.apply(2, &acquire("y", "a"));
        m.apply(3, &acquire("z", "b"));
        let back = Machine::from_bytes(&m.to_bytes()).expect("decode");
        assert_eq!(back, m);
        match m.apply(4, &Command::NodeGone { node: "a".into() }) {
            Outcome::Released(r) => assert_eq!(r.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(m.locks().len(), 1);
        assert!(Machine::from_bytes(b"not json").is_err());
    }
}
