//! Why a KV operation failed ([`KvError`]), and how a failure travels between nodes: the wire's
//! `Refused { code, message }` answer ([`KvError::refusal`], [`KvError::from_refusal`]).

use crate::key::KeyError;
use crate::storage::StorageError;

/// Why a KV operation failed.
///
/// The variants are domain failures; the numbers of the wire's `Refused` answer (which reuse
/// HTTP's: 400, 409, 421, 413, 500, 503) appear only in [`KvError::refusal`], for the cluster
/// protocol as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The key breaks the key rules.
    #[error("{0}")]
    InvalidKey(#[from] KeyError),
    /// The time to live is longer than [`MAX_TTL_MS`](crate::MAX_TTL_MS).
    #[error("ttl is over a year")]
    TtlTooLong,
    /// A compare-and-set saw another version.
    #[error("CAS failed: modify_index is {current}, not {expected}")]
    CasFailed {
        /// The newest live version found (0: absent).
        current: u64,
        /// The version the write asked for.
        expected: u64,
    },
    /// The coordinator holds a version newer than the stamp it just made: nothing was written.
    #[error(
        "the write was not applied: this node holds a newer version of the key (modify_index {held})"
    )]
    NotApplied {
        /// The version held.
        held: u64,
    },
    /// Another owner holds a newer version stamped ahead of the coordinator's clock, even after
    /// one more stamp above it. The write may be visible for a while; it does not stand.
    #[error(
        "the write was overtaken: another owner holds a newer version of the key, stamped ahead of this node's clock, and that version stands (read the key to see it)"
    )]
    Overtaken,
    /// Fewer durable copies than `write_acks` asks for answered. The write may still be
    /// visible (and spread by anti-entropy).
    #[error(
        "not enough replicas: {durable} of {needed} copies are durable (the write may still be visible)"
    )]
    NotEnoughReplicas {
        /// Copies known durable.
        durable: usize,
        /// Copies needed.
        needed: usize,
    },
    /// The ring is empty: no node stores keys yet.
    #[error("no node can store keys yet")]
    NoOwner,
    /// No owner answered (reads), or none could take the write.
    #[error("{0}")]
    Unavailable(String),
    /// The key's coordinator changed lately: CAS on it waits until every CAS coordinated
    /// under the previous ring has ended (nothing was written; the client retries then).
    #[error(
        "the key's coordinator changed lately: CAS on it resumes in {retry_in_ms} ms (once every CAS begun under the previous ring has ended)"
    )]
    CasPaused {
        /// How long until CAS on the key resumes.
        retry_in_ms: u64,
    },
    /// A forwarded write reached its coordinator after its sender's deadline (a frozen node, or
    /// clocks too far apart): it was not applied.
    #[error(
        "the forwarded write arrived after its sender gave up (frozen node, or clocks more than 2 s apart)"
    )]
    LateWrite,
    /// A write's coordination ran past its deadline before a version could be stamped: it was
    /// not applied (its sender has moved on).
    #[error("the write ran out of time before it could be stamped")]
    TooLate,
    /// A forwarded write was addressed to another node (a replayed frame?).
    #[error("this write was addressed to another node (a replay?)")]
    Misaddressed,
    /// A listing could not hear from enough nodes to be complete.
    #[error(
        "incomplete list: {silent} of {nodes} nodes did not answer and some keys have no other copy ({reasons}); try again"
    )]
    IncompleteList {
        /// Nodes that did not answer.
        silent: usize,
        /// Nodes asked.
        nodes: usize,
        /// What went wrong with them.
        reasons: String,
    },
    /// A listing holds more than the configured maximum.
    #[error("more than {max_mib} MiB under this prefix: narrow the prefix")]
    ListTooBig {
        /// The limit, in MiB.
        max_mib: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Another node refused with a code and reason this node does not map to a variant.
    #[error("{message}")]
    Refused {
        /// The wire code.
        code: u16,
        /// The reason.
        message: String,
    },
}

/// What a failed write may have left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEffect {
    /// Nothing: the write was refused before any copy took it.
    None,
    /// Unknown: some copy may hold it (and anti-entropy may spread it).
    Unknown,
}

impl KvError {
    /// The `Refused { code, message }` answer carrying this failure to another node.
    pub fn refusal(&self) -> (u16, String) {
        let code = match self {
            KvError::InvalidKey(_) | KvError::TtlTooLong => 400,
            KvError::CasFailed { .. } | KvError::NotApplied { .. } | KvError::Overtaken => 409,
            KvError::Misaddressed => 421,
            KvError::ListTooBig { .. } => 413,
            KvError::Storage(_) => 500,
            KvError::NotEnoughReplicas { .. }
            | KvError::NoOwner
            | KvError::Unavailable(_)
            | KvError::CasPaused { .. }
            | KvError::LateWrite
            | KvError::TooLate
            | KvError::IncompleteList { .. } => 503,
            KvError::Refused { code, .. } => *code,
        };
        (code, self.to_string())
    }

    /// The failure a `Refused { code, message }` answer carries: the variant whose message it
    /// is when this node recognises it, else [`KvError::Refused`].
    pub fn from_refusal(code: u16, message: String) -> KvError {
        let known = [
            KvError::TtlTooLong,
            KvError::Overtaken,
            KvError::NoOwner,
            KvError::LateWrite,
            KvError::TooLate,
            KvError::Misaddressed,
        ];
        if let Some(k) = known
            .into_iter()
            .find(|k| k.refusal() == (code, message.clone()))
        {
            return k;
        }
        let numbers = |text: &str| -> Vec<u64> {
            text.split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect()
        };
        let n = numbers(&message);
        let candidate = match (code, n.as_slice()) {
            (409, [current, expected]) if message.starts_with("CAS failed") => {
                Some(KvError::CasFailed {
                    current: *current,
                    expected: *expected,
                })
            }
            (409, [held]) if message.starts_with("the write was not applied") => {
                Some(KvError::NotApplied { held: *held })
            }
            (503, [ms]) if message.starts_with("the key's coordinator changed lately") => {
                Some(KvError::CasPaused { retry_in_ms: *ms })
            }
            (503, [durable, needed]) if message.starts_with("not enough replicas") => {
                match (usize::try_from(*durable), usize::try_from(*needed)) {
                    (Ok(durable), Ok(needed)) => {
                        Some(KvError::NotEnoughReplicas { durable, needed })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        // Only a message that prints back identically is that variant.
        match candidate {
            Some(k) if k.refusal() == (code, message.clone()) => k,
            _ => KvError::Refused { code, message },
        }
    }

    /// For a failed write: whether it may have left a copy behind.
    pub fn write_effect(&self) -> WriteEffect {
        match self {
            KvError::InvalidKey(_)
            | KvError::TtlTooLong
            | KvError::CasFailed { .. }
            | KvError::NotApplied { .. }
            | KvError::NoOwner
            | KvError::CasPaused { .. }
            | KvError::LateWrite
            | KvError::TooLate
            | KvError::Misaddressed => WriteEffect::None,
            KvError::Refused {
                code: 400 | 413 | 421,
                ..
            } => WriteEffect::None,
            _ => WriteEffect::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_to_the_same_variant() {
        let all = [
            KvError::TtlTooLong,
            KvError::CasFailed {
                current: 7 << 16,
                expected: 0,
            },
            KvError::NotApplied { held: 99 },
            KvError::Overtaken,
            KvError::NotEnoughReplicas {
                durable: 1,
                needed: 2,
            },
            KvError::NoOwner,
            KvError::CasPaused {
                retry_in_ms: 10_517,
            },
            KvError::LateWrite,
            KvError::TooLate,
            KvError::Misaddressed,
        ];
        for e in all {
            let (code, message) = e.refusal();
            assert_eq!(KvError::from_refusal(code, message), e);
        }
        // Text this node does not know stays as it came.
        let odd = KvError::from_refusal(409, "CAS failed: something else 1 2 3".into());
        assert!(matches!(odd, KvError::Refused { code: 409, .. }));
        assert_eq!(odd.write_effect(), WriteEffect::Unknown);
        let bad_key = KvError::from(KeyError::Empty);
        let (code, message) = bad_key.refusal();
        assert_eq!(code, 400);
        assert_eq!(
            KvError::from_refusal(code, message).write_effect(),
            WriteEffect::None
        );
    }
}
