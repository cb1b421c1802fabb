//! The data directory: created on first start, locked while an agent runs, home of the node uuid.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use opsbro_types::NodeUuid;

/// File holding the node uuid (one line of text).
pub const UUID_FILE: &str = "node.uuid";
/// File locked for as long as an agent uses the directory; holds the agent's pid.
pub const LOCK_FILE: &str = "agent.lock";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created or opened.
    #[error("cannot use data dir {path}: {source} (choose another with --data-dir)")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another agent holds the lock.
    #[error(
        "another opsbro agent{} is already running with data dir {path}: stop it with `opsbro agent stop`, or give this one its own --data-dir",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The pid written by the running agent, when readable.
        pid: Option<u32>,
    },
    /// The uuid file exists but does not hold a uuid.
    #[error(
        "{path} does not hold a node uuid ({reason}); restore it, or delete it to give this node a new identity"
    )]
    BadUuid {
        /// The uuid file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// An opened, locked data directory. The lock is released when this is dropped (or the process
/// dies: it is an OS file lock, so a `kill -9` never leaves a stale lock behind).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    uuid: NodeUuid,
    _lock: File,
}

impl DataDir {
    /// Create (mode 0700) and lock `path`, then read or create the node uuid.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let lock = lock(path)?;
        let uuid = load_or_create_uuid(&path.join(UUID_FILE))?;
        Ok(DataDir {
            path: path.to_owned(),
            uuid,
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This node's identity.
    pub fn uuid(&self) -> NodeUuid {
        self.uuid
    }

    /// Write `contents` to `name` inside the directory atomically (temp file + rename), so readers
    /// never see half a file.
    pub fn write_atomic(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        write_atomic(&self.path.join(name), contents)
    }
}

/// Create (mode 0700) and lock `path` with the OS lock an agent holds while it runs, without
/// reading or creating the uuid (restoring a snapshot takes it so no agent starts meanwhile);
/// held until the returned file is dropped.
pub fn lock(path: &Path) -> Result<File, DataDirError> {
    let io_err = |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_err)?;
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path.join(LOCK_FILE))
        .map_err(io_err)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = lock
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(DataDirError::Locked {
                path: path.to_owned(),
                pid,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    lock.set_len(0).map_err(io_err)?;
    lock.rewind().map_err(io_err)?;
    writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
    Ok(lock)
}

/// Write `contents` to `path` atomically (temp file + rename), mode 0600.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

fn load_or_create_uuid(path: &Path) -> Result<NodeUuid, DataDirError> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|e| DataDirError::BadUuid {
            path: path.to_owned(),
            reason: format!("{e}"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let uuid = NodeUuid::new_random();
            write_atomic(path, format!("{uuid}\n").as_bytes()).map_err(|source| {
                DataDirError::Io {
                    path: path.to_owned(),
                    source,
                }
            })?;
            Ok(uuid)
        }
        Err(source) => Err(DataDirError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDir::open(dir.path()).expect("open").uuid();
        let second = DataDir::open(dir.path()).expect("reopen").uuid();
        assert_eq!(first, second);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = DataDir::open(dir.path()).expect("open");
        let err = DataDir::open(dir.path()).expect_err("locked");
        let text = err.to_string();
        assert!(text.contains("already running"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn a_corrupt_uuid_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(UUID_FILE), "garbage\n").expect("write");
        let err = DataDir::open(dir.path()).expect_err("bad uuid");
        assert!(
            err.to_string().contains("does not hold a node uuid"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join(UUID_FILE)).expect("read"),
            "garbage\n"
        );
    }

    #[test]
    fn data_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/data");
        DataDir::open(&path).expect("open");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
