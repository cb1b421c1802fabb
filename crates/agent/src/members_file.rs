//! `<data_dir>/members.json`: the members this node has seen alive, remembered across restarts.
//!
//! A node started without `seeds` uses the remembered addresses as its seeds, so a cluster whose
//! nodes all restart (a power cut, a fleet-wide upgrade) re-forms by itself: each node tries the
//! others until one answers, exactly as configured seeds are tried (`gossip::join_seeds`).
//!
//! What is kept: every member other than this node seen alive or suspect, with the time it was
//! last seen so, the most recent [`MAX_REMEMBERED`] of them. A member that has since died or left
//! stays remembered until newer ones push it out: when a whole cluster stops, each node sees the
//! others leave before it stops itself, and those are exactly the nodes it must find again.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opsbro_config::Seed;
use opsbro_gossip::MemberState;
use opsbro_types::NodeUuid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::membership::Peer;

/// The file's name in the data dir.
pub const FILE_NAME: &str = "members.json";
/// Most members remembered (the most recently seen win).
pub const MAX_REMEMBERED: usize = 512;
/// Shortest time between two writes of the file.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// A file larger than this is not ours (512 members take about 70 KiB).
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Version of the file's shape.
const VERSION: u32 = 1;

/// A member as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Identity.
    pub uuid: NodeUuid,
    /// Node name (for the log and the reader).
    pub name: String,
    /// Gossip address (UDP and cluster TCP).
    pub addr: SocketAddr,
    /// When it was last seen alive or suspect (Unix milliseconds).
    pub last_seen_ms: u64,
}

/// The file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct MembersFile {
    version: u32,
    members: Vec<Remembered>,
}

/// What the file at `path` remembers: nothing when there is no file; an error saying what is
/// wrong with a damaged one (the caller ignores it with a warning).
pub fn load(path: &Path) -> Result<Vec<Remembered>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err(format!("not a members file (over {MAX_FILE_BYTES} bytes?)"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let file: MembersFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!("unknown version {}", file.version));
    }
    let mut members = file.members;
    members.sort_by_key(|m| std::cmp::Reverse(m.last_seen_ms));
    members.truncate(MAX_REMEMBERED);
    Ok(members)
}

/// [`load`], a damaged file being logged and ignored.
pub fn load_or_warn(path: &Path) -> Vec<Remembered> {
    load(path).unwrap_or_else(|e| {
        tracing::warn!(file = %path.display(), error = %e, "ignoring the remembered members");
        Vec::new()
    })
}

/// The seeds to join at start: the configured ones when there are any, else the remembered
/// members (most recently seen first; never this node itself).
pub fn seeds_at_start(
    configured: &[Seed],
    remembered: &[Remembered],
    me: NodeUuid,
    my_addr: SocketAddr,
) -> Vec<Seed> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    let seeds: Vec<Seed> = remembered
        .iter()
        .filter(|m| m.uuid != me && m.addr != my_addr)
        .map(|m| Seed {
            host: m.addr.ip().to_string(),
            port: m.addr.port(),
        })
        .collect();
    if !seeds.is_empty() {
        tracing::info!(
            first = %seeds[0],
            "no seeds configured: rejoining {} remembered members",
            seeds.len()
        );
    }
    seeds
}

/// Note every member of `peers` seen alive or suspect (other than `me`) as seen at `now_ms`;
/// keep the [`MAX_REMEMBERED`] most recent, one per uuid and per address.
fn remember(list: &mut Vec<Remembered>, peers: &[Peer], me: NodeUuid, now_ms: u64) {
    for p in peers {
        if p.uuid == me || !matches!(p.state, MemberState::Alive | MemberState::Suspect) {
            continue;
        }
        // A node reinstalled on the same address (new uuid) replaces its old self.
        list.retain(|m| m.uuid != p.uuid && m.addr != p.addr);
        list.push(Remembered {
            uuid: p.uuid,
            name: p.name.clone(),
            addr: p.addr,
            last_seen_ms: now_ms,
        });
    }
    list.sort_by(|a, b| {
        b.last_seen_ms
            .cmp(&a.last_seen_ms)
            .then_with(|| a.uuid.cmp(&b.uuid))
    });
    list.truncate(MAX_REMEMBERED);
}

/// Who is remembered, regardless of when they were seen: the file is rewritten only when this
/// changes (not for every group or check change of a member).
fn identities(list: &[Remembered]) -> BTreeSet<(NodeUuid, String, SocketAddr)> {
    list.iter()
        .map(|m| (m.uuid, m.name.clone(), m.addr))
        .collect()
}

fn save(path: &Path, list: &[Remembered]) -> std::io::Result<()> {
    let file = MembersFile {
        version: VERSION,
        members: list.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    crate::datadir::write_atomic(path, &bytes)
}

/// Keep `path` up to date from the membership watch channel until `shutdown`: at most one write
/// every [`SAVE_EVERY`], and only when who is remembered changes. `known` is what the file held
/// at start.
pub async fn keep(
    path: PathBuf,
    me: NodeUuid,
    mut membership: watch::Receiver<Arc<Vec<Peer>>>,
    known: Vec<Remembered>,
    shutdown: CancellationToken,
) {
    let mut list = known;
    let mut saved = identities(&list);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = membership.changed() => if changed.is_err() { return },
        }
        let peers = membership.borrow_and_update().clone();
        remember(&mut list, &peers, me, crate::host::unix_ms());
        let now = identities(&list);
        if now == saved {
            continue;
        }
        let (p, l) = (path.clone(), list.clone());
        match tokio::task::spawn_blocking(move || save(&p, &l)).await {
            Ok(Ok(())) => saved = now,
            Ok(Err(e)) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remember the members");
            }
            Err(e) => tracing::warn!(error = %e, "cannot remember the members"),
        }
        // Debounce: changes made meanwhile are seen by the next `changed()`.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SAVE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, state: MemberState) -> Peer {
        Peer {
            uuid: NodeUuid::from_bytes([n; 16]),
            name: format!("n{n}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(n))),
            groups: Vec::new(),
            state,
            zone: "default".into(),
            critical: false,
            maintenance: None,
            services: Vec::new(),
        }
    }

    #[test]
    fn only_other_live_members_are_remembered_and_gone_ones_stay() {
        let me = NodeUuid::from_bytes([1; 16]);
        let mut list = Vec::new();
        let peers = [
            peer(1, MemberState::Alive),
            peer(2, MemberState::Alive),
            peer(3, MemberState::Suspect),
            peer(4, MemberState::Dead),
        ];
        remember(&mut list, &peers, me, 10);
        let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n2", "n3"]);
        // n2 leaves: still remembered (a whole cluster stopping looks like this).
        remember(&mut list, &[peer(2, MemberState::Left)], me, 20);
        assert_eq!(list.len(), 2);
        // n9 takes n3's address with a new identity: it replaces it.
        let mut newcomer = peer(9, MemberState::Alive);
        newcomer.addr = peer(3, MemberState::Alive).addr;
        remember(&mut list, &[newcomer], me, 30);
        let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n9", "n2"]);
    }

    #[test]
    fn the_most_recently_seen_are_kept() {
        let me = NodeUuid::from_bytes([0; 16]);
        let mut list = Vec::new();
        for i in 0..(MAX_REMEMBERED + 10) {
            let mut p = peer(1, MemberState::Alive);
            p.uuid = NodeUuid::from_bytes([
                (i % 256) as u8,
                (i / 256) as u8 + 1,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]);
            p.addr.set_port(10_000 + i as u16);
            remember(&mut list, &[p], me, i as u64);
        }
        assert_eq!(list.len(), MAX_REMEMBERED);
        assert_eq!(list[0].last_seen_ms, (MAX_REMEMBERED + 9) as u64);
        assert!(list.iter().all(|m| m.last_seen_ms >= 10));
    }

    #[test]
    fn a_damaged_file_is_an_error_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(FILE_NAME);
        assert_eq!(load(&path), Ok(Vec::new()));
        std::fs::write(&path, "{ not json").expect("write");
        assert!(load(&path).is_err());
        let me = NodeUuid::from_bytes([1; 16]);
        let mut list = Vec::new();
        remember(&mut list, &[peer(2, MemberState::Alive)], me, 5);
        save(&path, &list).expect("save");
        assert_eq!(load(&path), Ok(list.clone()));
        let my_addr = peer(1, MemberState::Alive).addr;
        let seeds = seeds_at_start(&[], &list, me, my_addr);
        assert_eq!(seeds.len(), 1);
        assert_eq!(seeds[0].to_string(), "127.0.0.1:7002");
        // Configured seeds win; remembered ones are not added to them.
        let configured = [Seed::parse("10.0.0.1:6768").expect("seed")];
        assert_eq!(seeds_at_start(&configured, &list, me, my_addr), configured);
    }
}
