//! Locks and leader elections on Raft: a replicated lock table ([`Machine`]) applied by every
//! member of a Raft group in log order, on tikv's IO-free `raft` crate ([`Node`]), with the log
//! kept in memory ([`storage::LogStore`]) and handed to the driver to write to disk.
//!
//! Promises (kept by construction and checked by the simulation tests over 1000 seeds with a
//! lossy, partitioning network):
//! - a lock is granted only by a committed entry (a majority of the voters wrote it): a minority
//!   side of a partition cannot grant;
//! - at any log index at most one holder per lock; each grant carries a fencing token (its log
//!   index) larger than every earlier grant of that lock;
//! - every node applies the same grants in the same order.

#![forbid(unsafe_code)]
// raft-rs messages are protobuf structs with private cached-size fields: built by assignment.
#![allow(clippy::field_reassign_with_default)]

pub mod machine;
pub mod node;
pub mod storage;

pub use machine::{Command, Holder, Lock, Machine, Outcome};
pub use node::{Applied, INIT_INDEX, Node, NodeConfig, NodeError, Output, Persist, Status};

/// Cluster frame kind of a Raft message (`[6][group id: u64 BE][protobuf message]`): the first frame of a peer
/// connection, and every frame after it.
pub const KIND_MESSAGE: u8 = 6;
/// Cluster frame kind of a request of a node that is not a voter (`[7][JSON command]`),
/// answered on the same connection with [`KIND_FORWARD_REPLY`].
pub const KIND_FORWARD: u8 = 7;
/// Cluster frame kind of the answer to a forwarded request (`[8][JSON result]`).
pub const KIND_FORWARD_REPLY: u8 = 8;

/// The Raft id of a node from its uuid: 64 bits of it, never 0 (raft's "none").
pub fn id_of(uuid: &str) -> u64 {
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    let id = u64::from_str_radix(&hex, 16).unwrap_or_else(|_| {
        // Not a uuid: FNV-1a of the text.
        uuid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    });
    id.max(1)
}
