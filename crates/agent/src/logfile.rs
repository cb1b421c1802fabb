//! The agent's log file (`log_file`): the log lines also go to a file, rotated daily, the newest
//! `log_keep_days` rotated files kept.
//!
//! The live file is always the configured path (`/var/log/opsbro/agent.log`, so `tail -F` and
//! logrotate-style tools find it); at the first line of a new day (UTC) it is renamed
//! `<file>.YYYY-MM-DD`, the day it holds, and a new one is started; rotated files beyond the
//! newest `log_keep_days` are deleted. A file left by an earlier run is rotated the same way when
//! its last write was on an earlier day. `FORCE_LOG_ROTATION_PERIOD=<seconds>` (the original
//! opsbro's variable, for tests) rotates every so many seconds instead, the files being named
//! `<file>.YYYY-MM-DD_HH-MM-SS` (the start of the period they hold).
//!
//! Why not `tracing-appender`'s rolling appender: its shortest period is a minute (a test of the
//! retention would take minutes), and its live file carries the date in its name.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

/// One day.
const DAY_SECS: u64 = 86_400;

/// The log file with its rotation; a [`MakeWriter`] for the fmt layer (one write per event).
#[derive(Debug)]
pub struct RotatingFile {
    state: Mutex<State>,
    /// A write failed and it was said on stderr (said once: the log must not spam).
    failed: AtomicBool,
}

#[derive(Debug)]
struct State {
    path: PathBuf,
    /// Rotated files are named `<name>.<stamp>` in `dir`.
    dir: PathBuf,
    name: String,
    period_secs: u64,
    keep: usize,
    file: Option<File>,
    /// The period (Unix seconds / `period_secs`) the live file holds.
    period: u64,
}

impl RotatingFile {
    /// Open (create, append) the file at `path`, creating its directory; `keep` rotated files are
    /// kept; `period` replaces the daily rotation (tests).
    pub fn open(path: &Path, keep: u32, period: Option<Duration>) -> io::Result<RotatingFile> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("the log file path must end with a file name"))?
            .to_owned();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        std::fs::create_dir_all(&dir)?;
        let period_secs = period.map_or(DAY_SECS, |p| p.as_secs().max(1));
        let file = open_append(path)?;
        // A file from an earlier run holds the period of its last write.
        let written = file
            .metadata()
            .ok()
            .filter(|m| m.len() > 0)
            .and_then(|m| m.modified().ok())
            .unwrap_or_else(SystemTime::now);
        let state = State {
            path: path.to_owned(),
            dir,
            name,
            period_secs,
            keep: usize::try_from(keep).unwrap_or(usize::MAX),
            file: Some(file),
            period: unix_secs(written) / period_secs,
        };
        state.prune();
        Ok(RotatingFile {
            state: Mutex::new(state),
            failed: AtomicBool::new(false),
        })
    }

    /// Write one formatted event, rotating first when its period is over.
    fn write_event(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_at(unix_secs(SystemTime::now()), bytes)
    }

    /// [`RotatingFile::write_event`] at `now` (Unix seconds).
    fn write_at(&self, now: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let period = now / state.period_secs;
        if period != state.period || state.file.is_none() {
            state.rotate(period)?;
        }
        match state.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Err(io::Error::other("the log file is not open")),
        }
    }

    fn report(&self, e: &io::Error) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            let path = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .path
                .display()
                .to_string();
            eprintln!("warning: cannot write the log file {path}: {e} (logging to stderr only)");
        }
    }
}

impl State {
    /// Close the live file, rename it after the period it holds, start a new one, prune.
    fn rotate(&mut self, period: u64) -> io::Result<()> {
        // An empty file holds nothing worth a name of its own: it becomes the new period's.
        let empty = self
            .file
            .take()
            .is_none_or(|f| f.metadata().is_ok_and(|m| m.len() == 0));
        if !empty && self.period != period {
            let stamp = stamp(self.period * self.period_secs, self.period_secs);
            let target = free_name(&self.dir.join(format!("{}.{stamp}", self.name)));
            match std::fs::rename(&self.path, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Keep appending to the live file rather than lose lines.
                    self.file = open_append(&self.path).ok();
                    return Err(e);
                }
            }
        }
        self.period = period;
        self.file = Some(open_append(&self.path)?);
        self.prune();
        Ok(())
    }

    /// Delete the rotated files beyond the newest `keep` (stamps sort by time).
    fn prune(&self) {
        let prefix = format!("{}.", self.name);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut rotated: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        rotated.sort_unstable_by(|a, b| b.cmp(a));
        for old in rotated.iter().skip(self.keep) {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD` for a daily period, `YYYY-MM-DD_HH-MM-SS` for another (UTC).
fn stamp(start_secs: u64, period_secs: u64) -> String {
    let text = opsbro_checks::notify::format_time(start_secs);
    if period_secs == DAY_SECS {
        text.chars().take(10).collect()
    } else {
        text.replace(' ', "_").replace(':', "-")
    }
}

/// `path`, or `path.1`, `path.2`... when taken (a clock set back).
fn free_name(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_owned();
    }
    (1..1000)
        .map(|i| PathBuf::from(format!("{}.{i}", path.display())))
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.to_owned())
}

/// Writes one event to the [`RotatingFile`].
#[derive(Debug)]
pub struct EventWriter<'a>(&'a RotatingFile);

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A failure is said once on stderr; tracing would print a warning for every line.
        if let Err(e) = self.0.write_event(buf) {
            self.0.report(&e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn stamps_name_the_period_a_file_holds() {
        assert_eq!(stamp(0, DAY_SECS), "1970-01-01");
        assert_eq!(stamp(DAY_SECS * 365 + 3661, 1), "1971-01-01_01-01-01");
    }

    #[test]
    fn rotation_renames_the_live_file_and_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("logs/agent.log");
        let log = RotatingFile::open(&path, 2, None).expect("open");
        // Days 1 to 5 of 1970: each new day rotates the file of the day before.
        for day in 1..=5u64 {
            log.write_at(day * DAY_SECS + 10, format!("day {day}\n").as_bytes())
                .expect("write");
        }
        let dir = path.parent().expect("dir");
        // Days 1 to 4 rotated, the newest two kept; the live file holds day 5.
        assert_eq!(
            names(dir),
            ["agent.log", "agent.log.1970-01-04", "agent.log.1970-01-05"]
        );
        let live = std::fs::read_to_string(&path).expect("live");
        assert!(live.ends_with("day 5\n"), "{live}");
        // Other files of the directory are never touched.
        std::fs::write(dir.join("agent.log.keep-me"), "x").expect("write");
        std::fs::write(dir.join("other.log.1970-01-01"), "x").expect("write");
        RotatingFile::open(&path, 0, None).expect("reopen");
        assert_eq!(
            names(dir),
            ["agent.log", "agent.log.keep-me", "other.log.1970-01-01"]
        );
    }
}
