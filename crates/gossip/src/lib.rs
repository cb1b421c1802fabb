//! Gossip membership for opsbro: SWIM with memberlist's and Lifeguard's refinements, as a sans-IO
//! state machine ([`Gossip`]), its wire codec ([`codec`]) and a deterministic in-process
//! simulator ([`sim`]) that runs thousands of nodes with loss, delay and partitions.
//!
//! The core never touches sockets, clocks or global randomness: the agent's driver feeds it
//! datagrams, push-pull frames and ticks with the current time, and performs the [`Effect`]s it
//! returns (send a datagram, open a push-pull connection, report a member change). Encryption
//! happens in the driver, around the bytes the codec produces.

#![forbid(unsafe_code)]

mod broadcast;
pub mod codec;
pub mod config;
mod core;
pub mod member;
pub mod sim;
pub mod zones;

pub use crate::core::{Effect, Gossip, HistoryEntry, MemberChange, Stats, Time};
pub use codec::{PushPull, UserEvent};
pub use config::GossipConfig;
pub use member::{CheckSummary, MemberState, NodeRecord, ServiceRecord, choose_join_target};
pub use zones::{Relation, ZoneTree};

/// Hash maps with a fixed hasher: iteration order must not depend on a per-process random seed,
/// or the same simulation seed would not replay the same run.
pub(crate) type HashMap<K, V> = std::collections::HashMap<
    K,
    V,
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
>;
/// See [`HashMap`].
pub(crate) type HashSet<K> = std::collections::HashSet<
    K,
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
>;

/// Bytes kept free in every datagram for the encryption envelope (header, nonce, tag).
pub const OVERHEAD_RESERVE: usize = 64;
