//! The KV store's core, free of IO: what a key may be ([`key`]), what is stored for it
//! ([`entry::Entry`], versioned by a hybrid logical clock so that the newest write wins
//! everywhere), where it lives ([`ring::Ring`]: SHA1 positions with virtual nodes, the first
//! owner coordinates, the next ones hold replicas), how many copies acknowledge a write
//! ([`WriteAcks`]), how nodes talk about it ([`wire`]) and how two replicas find out cheaply
//! that they hold the same keys ([`buckets`]).
//!
//! The protocol itself — coordination, replication, reads with repair, handoff and
//! anti-entropy, listings, expiry, tombstones, CAS — is [`core::Core`], a state machine fed
//! with time, messages and client requests that returns effects; [`sim`] runs many of them on
//! virtual time over a lossy, partitionable network and checks the history of client
//! operations ([`sim::check`]).
//!
//! The agent owns the sockets, the store (sled) and the tasks; everything here is a value, a
//! pure function or a state machine without IO, so the rules are property-tested and
//! simulated. Nothing here reads a clock, opens a socket or spawns a task.

#![forbid(unsafe_code)]

pub mod buckets;
pub mod core;
pub mod entry;
pub mod error;
pub mod key;
pub mod ring;
pub mod rng;
pub mod sim;
pub mod storage;
pub mod wire;

pub use entry::{Entry, Hlc, MAX_CLOCK_AHEAD_MS, MAX_TTL_MS, Meta};
pub use key::{KeyError, MAX_KEY_BYTES, MAX_VALUE_BYTES, validate_key};
pub use ring::Ring;

pub use crate::core::{
    ClientAnswer, ClientId, ClientRequest, Config, Core, Effect, Imported, Inbound,
};
pub use error::{KvError, WriteEffect};
pub use storage::{MemStorage, Storage, StorageError};

/// How many copies must be durable before a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteAcks {
    /// The coordinator alone.
    One,
    /// A majority of the owners (2 of 3): the coordinator and one replica.
    #[default]
    Quorum,
    /// Every owner.
    All,
}

impl WriteAcks {
    /// Parse `one`, `quorum` or `all`.
    pub fn parse(text: &str) -> Option<WriteAcks> {
        match text.trim().to_ascii_lowercase().as_str() {
            "one" => Some(WriteAcks::One),
            "quorum" => Some(WriteAcks::Quorum),
            "all" => Some(WriteAcks::All),
            _ => None,
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteAcks::One => "one",
            WriteAcks::Quorum => "quorum",
            WriteAcks::All => "all",
        }
    }

    /// Copies needed when a key has `owners` owners.
    pub fn needed(self, owners: usize) -> usize {
        match self {
            WriteAcks::One => 1,
            WriteAcks::Quorum => owners / 2 + 1,
            WriteAcks::All => owners,
        }
        .clamp(1, owners.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_needed() {
        assert_eq!(WriteAcks::Quorum.needed(3), 2);
        assert_eq!(WriteAcks::Quorum.needed(1), 1);
        assert_eq!(WriteAcks::Quorum.needed(2), 2);
        assert_eq!(WriteAcks::One.needed(3), 1);
        assert_eq!(WriteAcks::All.needed(3), 3);
        assert_eq!(WriteAcks::parse("QUORUM"), Some(WriteAcks::Quorum));
    }
}
