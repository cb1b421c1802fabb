//! Snapshots of one node's data (`opsbro agent snapshot save|restore`): every tree of the sled
//! store (the KV entries of this node, the metrics time series `ts`, anything added later) and
//! the small data-dir files worth keeping ([`FILES`]), in one file.
//!
//! **Save** runs while the agent runs: `GET /agent/snapshot` (token required) flushes the
//! store, then streams it tree by tree from a blocking thread; the CLI writes the stream to a
//! temporary file, checks it whole ([`verify`]) and renames it into place, so FILE is either a
//! complete snapshot or not there. Each record is a whole value as it was at one instant, but
//! the walk is not a point-in-time view of the whole store: a write made while the snapshot is
//! taken may or may not be in it. For the KV store that is harmless (every entry carries its
//! version and replicas repair each other), for the time series it is a minute more or less.
//! Metrics still in the time-series buffer (the last interval) are not in it.
//!
//! **Restore** is offline: the agent must be stopped, and [`restore`] writes into its data dir
//! while holding the same OS lock an agent holds (`datadir::lock`), so no agent can start on
//! a half-restored dir and a running one is refused. We chose this over a restore through the
//! API because sled cannot swap its files under an open database and the running subsystems
//! keep state derived from the store (the KV clock and TTL index, check states, the
//! time-series buffer): a live restore would need a restart anyway, with a window where the
//! agent serves a mixture. The store is rebuilt in `kv.restoring/` and swapped in only once the
//! whole file checked out (SHA-256 over the stream); a broken snapshot changes nothing.
//!
//! **Identity.** The snapshot carries the node uuid, and restore keeps it (the same node
//! coming back after a disk loss): its replicas then hand it the writes it missed, and its old
//! entries never override newer ones (the newest version wins). Two running nodes with one uuid
//! in one cluster would be taken for one member (each refuting the other's news, the KV ring
//! counting them once), so restore refuses to give a data dir that already belongs to another
//! node the snapshot's uuid unless `force`, and `new_uuid` gives the restored data a new
//! identity instead (a clone on another host: its KV entries are handed off to their owners).
//! Secrets are not in snapshots: the API token is made again at start, and the cluster keyring
//! (`keyring.json`) comes from `agent.yml` or the other nodes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use opsbro_store::{SledStore, Store as _};
use opsbro_types::NodeUuid;
use serde::{Deserialize, Serialize};

use crate::datadir;

/// First bytes of a snapshot file.
pub const MAGIC: &[u8; 16] = b"OPSBRO-SNAPSHOT\n";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Data-dir files a snapshot carries besides the store (when they exist). Not the lock, the
/// runtime file, the API token or the keyring.
pub const FILES: &[&str] = &[
    "static-groups.json",
    "check-states.json",
    "incarnation",
    // Members seen alive, to find the cluster again after a restore.
    "members.json",
];
/// The store's directory inside the data dir.
pub const STORE_DIR: &str = "kv";
/// Largest record (a store value, a file): values are at most 512 KiB, files far smaller.
const MAX_RECORD: u32 = 64 * 1024 * 1024;
/// How old a snapshot may be before restoring it risks bringing deleted keys back (the default
/// `kv.tombstone_ttl`: tombstones older than that are forgotten cluster-wide).
const TOMBSTONE_TTL_MS: u64 = 24 * 3600 * 1000;

const TAG_META: u8 = b'M';
const TAG_FILE: u8 = b'F';
const TAG_TREE: u8 = b'T';
const TAG_ITEM: u8 = b'I';
const TAG_END: u8 = b'E';

/// Why a snapshot could not be taken, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a (whole) snapshot.
    #[error("{path} is not a usable snapshot: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The store failed.
    #[error("{0}")]
    Store(#[from] opsbro_store::StoreError),
    /// The data dir is in use or cannot be locked.
    #[error("{0}")]
    DataDir(#[from] datadir::DataDirError),
    /// Restoring would destroy or duplicate something without being told to.
    #[error("{0}")]
    Refused(String),
}

/// What a snapshot says about itself (its first record, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The node it was taken on.
    pub uuid: NodeUuid,
    /// That node's name.
    pub node: String,
    /// When it was taken (ms since the Unix epoch).
    pub created_ms: u64,
    /// The opsbro version that took it.
    pub opsbro_version: String,
}

/// What a whole snapshot holds ([`verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Its metadata.
    pub meta: Meta,
    /// Trees and their entry counts, in order.
    pub trees: Vec<(String, u64)>,
    /// Data-dir files carried.
    pub files: Vec<String>,
    /// Size in bytes.
    pub bytes: u64,
}

/// How to restore.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Give the restored data a new random uuid instead of the snapshot's.
    pub new_uuid: bool,
    /// Replace a store that is already there, and take the snapshot's uuid even when the data
    /// dir belongs to another node.
    pub force: bool,
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The snapshot.
    pub summary: Summary,
    /// The uuid the data dir now has.
    pub uuid: NodeUuid,
    /// Things the operator should know (an old snapshot, files skipped).
    pub warnings: Vec<String>,
}

/// What the API needs to take a snapshot: the store and where the files are.
#[derive(Clone)]
pub struct SnapshotSource {
    /// The sled database (every tree).
    pub store: SledStore,
    /// The data dir.
    pub data_dir: PathBuf,
    /// This node.
    pub uuid: NodeUuid,
    /// Its name.
    pub node: String,
}

/// Writes the format: records `[tag][len: u32 BE][payload]` after the magic and version, and an
/// end record with the counts and the SHA-256 of every byte before it.
struct Writer<W: Write> {
    out: W,
    digest: ring::digest::Context,
    records: u64,
    items: u64,
}

impl<W: Write> Writer<W> {
    fn new(mut out: W) -> io::Result<Writer<W>> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&VERSION.to_be_bytes());
        out.write_all(&head)?;
        digest.update(&head);
        Ok(Writer {
            out,
            digest,
            records: 0,
            items: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.digest.update(bytes);
        self.out.write_all(bytes)
    }

    fn record(&mut self, tag: u8, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| io::Error::other(format!("a record of {len} bytes is too big")))?;
        self.put(&[tag])?;
        self.put(&len.to_be_bytes())?;
        for p in parts {
            self.put(p)?;
        }
        self.records += 1;
        Ok(())
    }

    fn meta(&mut self, meta: &Meta) -> io::Result<()> {
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        self.record(TAG_META, &[&json])
    }

    fn file(&mut self, name: &str, contents: &[u8]) -> io::Result<()> {
        let n = u16::try_from(name.len()).map_err(io::Error::other)?;
        self.record(TAG_FILE, &[&n.to_be_bytes(), name.as_bytes(), contents])
    }

    fn tree(&mut self, name: &[u8]) -> io::Result<()> {
        self.record(TAG_TREE, &[name])
    }

    fn item(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let n = u32::try_from(key.len()).map_err(io::Error::other)?;
        self.items += 1;
        self.record(TAG_ITEM, &[&n.to_be_bytes(), key, value])
    }

    fn finish(mut self) -> io::Result<W> {
        let hash = self.digest.clone().finish();
        let mut payload = Vec::with_capacity(48);
        payload.extend_from_slice(&self.records.to_be_bytes());
        payload.extend_from_slice(&self.items.to_be_bytes());
        payload.extend_from_slice(hash.as_ref());
        self.out.write_all(&[TAG_END])?;
        self.out
            .write_all(&u32::try_from(payload.len()).unwrap_or(48).to_be_bytes())?;
        self.out.write_all(&payload)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Write a whole snapshot of `source` to `out`: flush, metadata, files, then every tree.
pub fn write_snapshot<W: Write>(source: &SnapshotSource, out: W) -> Result<W, SnapshotError> {
    let io_err = |source| SnapshotError::Io {
        path: PathBuf::from("(snapshot stream)"),
        source,
    };
    source.store.flush()?;
    let mut w = Writer::new(out).map_err(io_err)?;
    w.meta(&Meta {
        uuid: source.uuid,
        node: source.node.clone(),
        created_ms: crate::host::unix_ms(),
        opsbro_version: opsbro_types::VERSION.to_owned(),
    })
    .map_err(io_err)?;
    for name in FILES {
        let path = source.data_dir.join(name);
        match fs::read(&path) {
            Ok(contents) => w.file(name, &contents).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SnapshotError::Io { path, source }),
        }
    }
    for name in source.store.tree_names() {
        // The Raft log is not data to bring back: a restored log would forget the votes this
        // node gave since, and break the group's promises. A restored node rejoins as new.
        if name == b"raft" {
            continue;
        }
        w.tree(&name).map_err(io_err)?;
        for item in source.store.raw_items(&name)? {
            let (k, v) = item?;
            w.item(&k, &v).map_err(io_err)?;
        }
    }
    w.finish().map_err(io_err)
}

/// One record read back.
enum Record {
    Meta(Meta),
    File(String, Vec<u8>),
    Tree(Vec<u8>),
    Item(Vec<u8>, Vec<u8>),
}

/// Reads the format back, checking the end record.
struct Reader<R: Read> {
    input: R,
    path: PathBuf,
    digest: ring::digest::Context,
    records: u64,
    items: u64,
    bytes: u64,
}

impl<R: Read> Reader<R> {
    fn open(mut input: R, path: &Path) -> Result<Reader<R>, SnapshotError> {
        let mut head = [0u8; 20];
        let bad = |why: &str| SnapshotError::Format {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        input
            .read_exact(&mut head)
            .map_err(|_| bad("too short to be a snapshot"))?;
        if &head[..16] != MAGIC {
            return Err(bad("not an opsbro snapshot (no OPSBRO-SNAPSHOT header)"));
        }
        let version = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
        if version != VERSION {
            return Err(bad(&format!(
                "snapshot format version {version} is not supported by this opsbro (it reads version {VERSION})"
            )));
        }
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(&head);
        Ok(Reader {
            input,
            path: path.to_owned(),
            digest,
            records: 0,
            items: 0,
            bytes: 20,
        })
    }

    fn bad(&self, why: impl Into<String>) -> SnapshotError {
        SnapshotError::Format {
            path: self.path.clone(),
            why: why.into(),
        }
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = vec![0u8; n];
        self.input.read_exact(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.bad("it ends too early (a snapshot that was cut short)")
            } else {
                SnapshotError::Io {
                    path: self.path.clone(),
                    source: e,
                }
            }
        })?;
        self.bytes += n as u64;
        Ok(buf)
    }

    /// The next record; None after a valid end record.
    fn next(&mut self) -> Result<Option<Record>, SnapshotError> {
        let head = self.exact(5)?;
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_RECORD {
            return Err(self.bad(format!("a record of {len} bytes (corrupt)")));
        }
        let payload = self.exact(len as usize)?;
        if tag == TAG_END {
            let expected = self.digest.clone().finish();
            if payload.len() != 48 {
                return Err(self.bad("a malformed end record"));
            }
            let records = u64::from_be_bytes(payload[0..8].try_into().unwrap_or_default());
            let items = u64::from_be_bytes(payload[8..16].try_into().unwrap_or_default());
            if records != self.records || items != self.items {
                return Err(self.bad("the record counts do not match (corrupt)"));
            }
            if &payload[16..] != expected.as_ref() {
                return Err(self.bad("the SHA-256 checksum does not match (corrupt)"));
            }
            let mut rest = [0u8; 1];
            if !matches!(self.input.read(&mut rest), Ok(0)) {
                return Err(self.bad("bytes after the end record"));
            }
            return Ok(None);
        }
        self.digest.update(&head);
        self.digest.update(&payload);
        self.records += 1;
        let record = match tag {
            TAG_META => Record::Meta(
                serde_json::from_slice(&payload)
                    .map_err(|e| self.bad(format!("bad metadata: {e}")))?,
            ),
            TAG_FILE => {
                let n = payload
                    .get(..2)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                    .ok_or_else(|| self.bad("a malformed file record"))?;
                let name = payload
                    .get(2..2 + n)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .ok_or_else(|| self.bad("a malformed file record"))?
                    .to_owned();
                Record::File(name, payload[2 + n..].to_vec())
            }
            TAG_TREE => Record::Tree(payload),
            TAG_ITEM => {
                let n = payload
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or_else(|| self.bad("a malformed entry record"))?;
                let key = payload
                    .get(4..4 + n)
                    .ok_or_else(|| self.bad("a malformed entry record"))?
                    .to_vec();
                self.items += 1;
                Record::Item(key, payload[4 + n..].to_vec())
            }
            other => return Err(self.bad(format!("unknown record type {other}"))),
        };
        Ok(Some(record))
    }
}

/// Data-dir files of a snapshot: (name, contents).
type Files = Vec<(String, Vec<u8>)>;

/// Read a whole snapshot, handing trees and entries to `on_item` (tree name, key, value);
/// answers its summary and files, or why it is not a whole, intact snapshot.
fn read_snapshot(
    input: impl Read,
    path: &Path,
    mut on_item: impl FnMut(&[u8], &[u8], &[u8]) -> Result<(), SnapshotError>,
) -> Result<(Summary, Files), SnapshotError> {
    let mut r = Reader::open(input, path)?;
    let meta = match r.next()? {
        Some(Record::Meta(m)) => m,
        _ => return Err(r.bad("no metadata record first")),
    };
    let mut trees: Vec<(String, u64)> = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut files = Vec::new();
    while let Some(record) = r.next()? {
        match record {
            Record::Meta(_) => return Err(r.bad("a second metadata record")),
            Record::File(name, contents) => files.push((name, contents)),
            Record::Tree(name) => {
                trees.push((String::from_utf8_lossy(&name).into_owned(), 0));
                current = Some(name);
            }
            Record::Item(k, v) => {
                let (Some(tree), Some(count)) = (&current, trees.last_mut()) else {
                    return Err(r.bad("an entry before any tree"));
                };
                count.1 += 1;
                on_item(tree, &k, &v)?;
            }
        }
    }
    let summary = Summary {
        meta,
        trees,
        files: files.iter().map(|(n, _)| n.clone()).collect(),
        bytes: r.bytes,
    };
    Ok((summary, files))
}

fn open_file(path: &Path) -> Result<BufReader<File>, SnapshotError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(256 * 1024, f))
        .map_err(|source| SnapshotError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Read the snapshot at `path` through to its end record: its summary, or why it is not a
/// whole, intact snapshot.
pub fn verify(path: &Path) -> Result<Summary, SnapshotError> {
    read_snapshot(open_file(path)?, path, |_, _, _| Ok(())).map(|(s, _)| s)
}

/// Restore the snapshot at `file` into the data dir `data_dir` of a stopped agent (see the
/// module docs for the rules). Nothing in the data dir changes unless the whole snapshot
/// checked out.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    options: RestoreOptions,
) -> Result<Restored, SnapshotError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    // Whose snapshot is it (the first record), before touching anything.
    let meta = {
        let mut r = Reader::open(open_file(file)?, file)?;
        match r.next()? {
            Some(Record::Meta(m)) => m,
            _ => return Err(r.bad("no metadata record first")),
        }
    };
    let _lock = datadir::lock(data_dir).map_err(|e| match e {
        datadir::DataDirError::Locked { path, pid } => SnapshotError::Refused(format!(
            "an opsbro agent{} is running with data dir {}: a snapshot is restored with the agent stopped; stop it (`opsbro agent stop`), restore, then start it again",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            path.display()
        )),
        other => SnapshotError::DataDir(other),
    })?;
    let uuid_file = data_dir.join(datadir::UUID_FILE);
    let current = match fs::read_to_string(&uuid_file) {
        Ok(text) => Some(
            text.trim()
                .parse::<NodeUuid>()
                .map_err(|e| format!("{} does not hold a node uuid ({e})", uuid_file.display())),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(SnapshotError::Io {
                path: uuid_file,
                source,
            });
        }
    };
    let uuid = if options.new_uuid {
        NodeUuid::new_random()
    } else {
        match &current {
            Some(Ok(u)) if *u == meta.uuid => meta.uuid,
            None => meta.uuid,
            _ if options.force => meta.uuid,
            Some(Ok(u)) => {
                return Err(SnapshotError::Refused(format!(
                    "the data dir {} belongs to node {u}, the snapshot is of node {} ({}): restoring would make this host that node, and two running nodes with one uuid confuse the cluster: pass --new-uuid to restore the data under a new identity, or --force if node {} is gone for good",
                    data_dir.display(),
                    meta.uuid,
                    meta.node,
                    meta.uuid
                )));
            }
            Some(Err(why)) => {
                return Err(SnapshotError::Refused(format!(
                    "{why}: pass --force to restore the snapshot's uuid over it, or --new-uuid"
                )));
            }
        }
    };
    let store_dir = data_dir.join(STORE_DIR);
    let has_store = fs::read_dir(&store_dir).is_ok_and(|mut d| d.next().is_some());
    if has_store && !options.force {
        return Err(SnapshotError::Refused(format!(
            "{} already holds a store: restoring replaces it with the snapshot's; pass --force to do so",
            store_dir.display()
        )));
    }

    // Rebuild the store beside the old one; swap only once the whole file checked out.
    let staging = data_dir.join(format!("{STORE_DIR}.restoring"));
    remove_dir_if_any(&staging)?;
    let built = (|| {
        let store = SledStore::open(&staging)?;
        let (summary, files) = read_snapshot(open_file(file)?, file, |tree, k, v| {
            store.raw_insert(tree, k, v).map_err(SnapshotError::from)
        })?;
        store.flush()?;
        Ok::<_, SnapshotError>((summary, files))
    })();
    let (summary, files) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let replaced = data_dir.join(format!("{STORE_DIR}.replaced"));
    remove_dir_if_any(&replaced)?;
    if store_dir.exists() {
        fs::rename(&store_dir, &replaced).map_err(io_err(&store_dir))?;
    }
    fs::rename(&staging, &store_dir).map_err(io_err(&store_dir))?;
    remove_dir_if_any(&replaced)?;

    let mut warnings = Vec::new();
    for (name, contents) in &files {
        if !FILES.contains(&name.as_str()) {
            warnings.push(format!(
                "skipped the unknown file `{}`",
                name.escape_debug()
            ));
            continue;
        }
        let path = data_dir.join(name);
        let contents = if name == "incarnation" {
            // Never go back: peers refuse news of a node at an incarnation below what they saw.
            let number = |b: &[u8]| {
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let now = fs::read(&path).map(|b| number(&b)).unwrap_or(0);
            format!("{}\n", number(contents).max(now)).into_bytes()
        } else {
            contents.clone()
        };
        datadir::write_atomic(&path, &contents).map_err(io_err(&path))?;
    }
    datadir::write_atomic(&uuid_file, format!("{uuid}\n").as_bytes())
        .map_err(io_err(&uuid_file))?;
    let age = crate::host::unix_ms().saturating_sub(summary.meta.created_ms);
    if age > TOMBSTONE_TTL_MS {
        warnings.push(format!(
            "the snapshot is {} h old, older than the default kv.tombstone_ttl (24h): keys deleted since then may come back from this node's copy",
            age / 3_600_000
        ));
    }
    Ok(Restored {
        summary,
        uuid,
        warnings,
    })
}

fn remove_dir_if_any(path: &Path) -> Result<(), SnapshotError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SnapshotError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Write `bytes` (a stream of chunks) to `path` atomically: a temporary file (mode 0600)
/// beside it, synced, checked whole with [`verify`], then renamed. Used by the CLI for
/// `agent snapshot save`; on any error the temporary file is removed and `path` untouched.
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Start writing `path`.
    pub fn create(path: &Path) -> Result<AtomicFile, SnapshotError> {
        let name = path.file_name().ok_or_else(|| SnapshotError::Io {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| SnapshotError::Io {
                path: tmp.clone(),
                source,
            })?;
        Ok(AtomicFile {
            tmp,
            path: path.to_owned(),
            out: Some(BufWriter::with_capacity(256 * 1024, file)),
        })
    }

    /// Append bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let tmp = self.tmp.clone();
        match self.out.as_mut() {
            Some(out) => out
                .write_all(bytes)
                .map_err(|source| SnapshotError::Io { path: tmp, source }),
            None => Ok(()),
        }
    }

    /// Sync, check the whole snapshot, rename it into place.
    pub fn commit(mut self) -> Result<Summary, SnapshotError> {
        let tmp = self.tmp.clone();
        let io_err = |source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        };
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
            file.sync_all().map_err(io_err)?;
        }
        let summary = verify(&self.tmp)?;
        fs::rename(&self.tmp, &self.path).map_err(|source| SnapshotError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(summary)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Not committed (or the commit failed): leave no partial file behind.
        drop(self.out.take());
        let _ = fs::remove_file(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path) -> SnapshotSource {
        let store = SledStore::open(&dir.join(STORE_DIR)).expect("store");
        store.put("app/key", b"value").expect("put");
        let ts = store.open_tree("ts").expect("ts");
        ts.put("cpu.user:m:1", &[1, 2, 3, 0, 255]).expect("put");
        fs::write(dir.join("static-groups.json"), "[\"web\"]").expect("file");
        fs::write(dir.join("incarnation"), "7\n").expect("file");
        SnapshotSource {
            store,
            data_dir: dir.to_owned(),
            uuid: NodeUuid::new_random(),
            node: "alpha".into(),
        }
    }

    fn snapshot_bytes(src: &SnapshotSource) -> Vec<u8> {
        write_snapshot(src, Vec::new()).expect("snapshot")
    }

    #[test]
    fn a_snapshot_round_trips_and_restores_every_tree_and_file() {
        let from = tempfile::tempdir().expect("tmp");
        let src = source(from.path());
        let bytes = snapshot_bytes(&src);
        let file = from.path().join("snap");
        fs::write(&file, &bytes).expect("write");
        let summary = verify(&file).expect("verify");
        assert_eq!(summary.meta.uuid, src.uuid);
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert!(summary.trees.contains(&("kv".into(), 1)), "{summary:?}");
        assert!(summary.trees.contains(&("ts".into(), 1)), "{summary:?}");
        assert_eq!(summary.files, ["static-groups.json", "incarnation"]);
        drop(src);

        let to = tempfile::tempdir().expect("tmp");
        fs::write(to.path().join("incarnation"), "9\n").expect("file");
        let restored = restore(&file, to.path(), RestoreOptions::default()).expect("restore");
        assert_eq!(restored.uuid, summary.meta.uuid, "the uuid is kept");
        assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
        let uuid = fs::read_to_string(to.path().join(datadir::UUID_FILE)).expect("uuid");
        assert_eq!(uuid.trim(), summary.meta.uuid.to_string());
        assert_eq!(
            fs::read_to_string(to.path().join("incarnation")).expect("inc"),
            "9\n",
            "the incarnation never goes back"
        );
        assert_eq!(
            fs::read_to_string(to.path().join("static-groups.json")).expect("groups"),
            "[\"web\"]"
        );
        let store = SledStore::open(&to.path().join(STORE_DIR)).expect("store");
        assert_eq!(store.get("app/key").expect("get"), Some(b"value".to_vec()));
        let ts = store.open_tree("ts").expect("ts");
        assert_eq!(
            ts.get("cpu.user:m:1").expect("get"),
            Some(vec![1, 2, 3, 0, 255])
        );
        assert!(!to.path().join("kv.restoring").exists());
    }

    #[test]
    fn a_cut_or_corrupt_snapshot_is_refused_and_changes_nothing() {
        let from = tempfile::tempdir().expect("tmp");
        let src = source(from.path());
        let bytes = snapshot_bytes(&src);
        drop(src);
        let file = from.path().join("snap");
        for (what, broken) in [
            ("cut", bytes[..bytes.len() - 10].to_vec()),
            ("no end", bytes[..bytes.len() - 53].to_vec()),
            ("flipped", {
                let mut b = bytes.clone();
                let at = b.len() / 2;
                b[at] ^= 0x40;
                b
            }),
            ("trailing", {
                let mut b = bytes.clone();
                b.push(0);
                b
            }),
            ("not a snapshot", b"hello world, this is not it".to_vec()),
        ] {
            fs::write(&file, &broken).expect("write");
            let err = verify(&file).expect_err(what).to_string();
            assert!(err.contains("not a usable snapshot"), "{what}: {err}");
            let to = tempfile::tempdir().expect("tmp");
            assert!(restore(&file, to.path(), RestoreOptions::default()).is_err());
            assert!(!to.path().join(STORE_DIR).exists(), "{what}");
            assert!(!to.path().join("kv.restoring").exists(), "{what}");
        }
    }

    #[test]
    fn restore_refuses_a_locked_dir_another_nodes_dir_and_an_existing_store() {
        let from = tempfile::tempdir().expect("tmp");
        let src = source(from.path());
        let file = from.path().join("snap");
        fs::write(&file, snapshot_bytes(&src)).expect("write");
        drop(src);

        let to = tempfile::tempdir().expect("tmp");
        let held = datadir::DataDir::open(to.path()).expect("open");
        let err = restore(&file, to.path(), RestoreOptions::default()).expect_err("locked");
        assert!(
            err.to_string().contains("is running with data dir"),
            "{err}"
        );
        let other = held.uuid();
        drop(held);

        let err = restore(&file, to.path(), RestoreOptions::default()).expect_err("other node");
        assert!(err.to_string().contains("--new-uuid"), "{err}");
        let restored = restore(
            &file,
            to.path(),
            RestoreOptions {
                new_uuid: true,
                force: false,
            },
        )
        .expect("new uuid");
        assert_ne!(restored.uuid, other);
        assert_ne!(restored.uuid, restored.summary.meta.uuid);

        let again = RestoreOptions {
            new_uuid: true,
            force: false,
        };
        let err = restore(&file, to.path(), again).expect_err("store");
        assert!(err.to_string().contains("already holds a store"), "{err}");
        let restored = restore(
            &file,
            to.path(),
            RestoreOptions {
                new_uuid: false,
                force: true,
            },
        )
        .expect("forced");
        assert_eq!(restored.uuid, restored.summary.meta.uuid);
        assert!(!to.path().join("kv.replaced").exists());
    }

    #[test]
    fn an_atomic_file_is_there_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = source(dir.path());
        let bytes = snapshot_bytes(&src);
        drop(src);
        let path = dir.path().join("out.snapshot");
        let mut f = AtomicFile::create(&path).expect("create");
        f.write(&bytes[..100]).expect("write");
        assert!(f.commit().is_err(), "half a snapshot is refused");
        assert!(!path.exists());
        assert_eq!(
            fs::read_dir(dir.path()).expect("ls").count(),
            3,
            "no temp file left beside kv/ and the two files"
        );
        let mut f = AtomicFile::create(&path).expect("create");
        f.write(&bytes).expect("write");
        f.commit().expect("commit");
        assert_eq!(fs::read(&path).expect("read"), bytes);
    }
}
