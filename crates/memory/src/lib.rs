//! Keeps the agent's resident memory close to what it really uses.
//!
//! An idle agent touches a few hundred KiB of code per minute (timers, collectors, gossip
//! probes), but start-up, configuration loading, pack parsing and the first detection run
//! fault in most of the executable's `.text`, and the kernel's fault-around maps 64 KiB around
//! every page touched. Those pages stay mapped — counted in RSS — for the life of the process.
//! [`release`] unmaps the executable's clean, read-only pages from this process: they stay in
//! the page cache, shared with any other `opsbro` process, and the ones still used come back on
//! their next use (a minor fault, no disk read while the file is cached). It also hands the
//! heap's free pages back to the system (`malloc_trim`).
//!
//! [`limit_malloc_arenas`] caps glibc's per-thread malloc arenas: with a pool of worker and
//! blocking threads, each thread that allocates gets an arena of its own, and each arena keeps
//! freed memory for itself.
//!
//! This is the only crate of the workspace with `unsafe` code: the system calls it makes have no
//! safe wrapper. Each block says why it is sound.

use std::io;

/// Whether the agent keeps its memory lean: yes, unless `OPSBRO_RELEASE_MEMORY=0` (kept for
/// measuring what it is worth, and as a way out should it ever get in the way).
pub fn enabled() -> bool {
    std::env::var("OPSBRO_RELEASE_MEMORY").map_or(true, |v| v != "0")
}

/// What one [`release`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Bytes of the executable's mappings advised away (their size, not what was resident).
    pub code_bytes: u64,
    /// Whether `malloc_trim` returned memory to the system.
    pub heap_trimmed: bool,
}

/// One mapping of `/proc/self/smaps` with what [`release`] needs to decide about it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    /// The mapped file, as the kernel names it (`/proc/self/exe` reads the same).
    path: String,
    /// `Anonymous`, in kB: pages of the mapping that exist only in this process (copies made
    /// on write, relocated data). `Private_Dirty` would not do: a file written lately (a fresh
    /// build) has dirty page-cache pages that are still the file's content.
    anon_kb: u64,
}

/// Parses `/proc/<pid>/smaps` text into its mappings.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            // "start-end perms offset dev inode [path]": the path is the rest of the line.
            let perms = fields.next().unwrap_or("");
            let mut rest = line;
            for _ in 0..5 {
                rest = rest.trim_start();
                rest = rest.find(' ').map_or("", |i| &rest[i..]);
            }
            out.push(Mapping {
                start,
                end,
                writable: perms.contains('w'),
                path: rest.trim().to_string(),
                anon_kb: 0,
            });
        } else if first == "Anonymous:"
            && let Some(m) = out.last_mut()
        {
            m.anon_kb += fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    out
}

/// The executable's mappings whose pages can be dropped and read again from the file: not
/// writable and with no anonymous page in it (no copy-on-write copy, no relocated
/// data). Dropping anything else would lose what the process wrote.
fn droppable<'a>(maps: &'a [Mapping], exe: &'a str) -> impl Iterator<Item = &'a Mapping> {
    maps.iter()
        .filter(move |m| m.path == exe && !exe.is_empty())
        .filter(|m| !m.writable && m.anon_kb == 0 && m.end > m.start)
}

/// Unmaps the executable's clean read-only pages from this process and returns free heap
/// pages to the system. Cheap (a read of `/proc/self/smaps` and a few system calls): run it
/// after start-up and now and then, e.g. every few minutes.
pub fn release() -> io::Result<Released> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let maps = parse_smaps(&std::fs::read_to_string("/proc/self/smaps")?);
    let mut released = Released::default();
    for m in droppable(&maps, &exe) {
        let len = m.end - m.start;
        #[allow(unsafe_code)]
        // SAFETY: the range is a whole mapping of the executable's file that the kernel lists
        // as not writable and holding no anonymous page (no private copy): every page of it is
        // the file's content. MADV_DONTNEED on a private file mapping only drops this
        // process's page-table entries; the next access faults the same bytes in again from
        // the page cache (or the file). Nothing is written there, nothing can observe the
        // difference but timing (a static read from it reads the same bytes after the
        // re-fault). The executable cannot change under us: the kernel refuses
        // writes to a running binary (ETXTBSY), and a package upgrade replaces the file with a
        // new inode, leaving this mapping on the old one.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released.code_bytes += len as u64;
        }
    }
    released.heap_trimmed = trim_heap();
    Ok(released)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> bool {
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointer and is thread-safe (it locks each arena in turn).
    let rc = unsafe { libc::malloc_trim(0) };
    rc == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

/// Caps glibc's malloc arenas at `n` (0 keeps glibc's default of 8 per core). Call it first
/// thing in `main`, before any thread starts. No effect with another C library.
pub fn limit_malloc_arenas(n: u16) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if n > 0 {
        #[allow(unsafe_code)]
        // SAFETY: mallopt takes no pointer; M_ARENA_MAX only bounds the arenas created from
        // now on, and no thread has allocated yet when it is called as documented.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, i32::from(n));
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Resident memory of this process from `/proc/self/status`: (total RSS, file-backed part),
/// in bytes.
pub fn resident() -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_ascii_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((kb("VmRSS:"), kb("RssFile:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:01 4242    /usr/bin/opsbro
Size:               1024 kB
Rss:                 300 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c0100000-55d0c0f00000 r-xp 00100000 fd:01 4242    /usr/bin/opsbro
Size:              14336 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c0f00000-55d0c1000000 r--p 00f00000 fd:01 4242    /usr/bin/opsbro
Private_Dirty:        64 kB
Anonymous:            64 kB
55d0c1000000-55d0c1010000 rw-p 01000000 fd:01 4242    /usr/bin/opsbro
Private_Dirty:        12 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 77      /usr/lib/x86_64-linux-gnu/libc.so.6
Private_Dirty:         0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:           512 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_dropped() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 6);
        let picked: Vec<(usize, usize)> = droppable(&maps, "/usr/bin/opsbro")
            .map(|m| (m.start, m.end))
            .collect();
        // The header/rodata and the code; not the relocated read-only data (private pages),
        // not the writable data, not libc, not the heap.
        assert_eq!(
            picked,
            vec![
                (0x55d0c0000000, 0x55d0c0100000),
                (0x55d0c0100000, 0x55d0c0f00000)
            ]
        );
        assert_eq!(
            droppable(&maps, "").count(),
            0,
            "unknown executable: nothing"
        );
        assert_eq!(maps[4].path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(maps[5].path, "");
    }

    #[test]
    fn releasing_keeps_the_process_working_and_lowers_file_backed_rss() {
        // Touch code (this test binary's own), release, and run code again.
        let (_, file_before) = resident().expect("status");
        let released = release().expect("release");
        assert!(released.code_bytes > 0, "the test binary's code is mapped");
        let (_, file_after) = resident().expect("status");
        assert!(
            file_after < file_before,
            "file-backed RSS {file_before} -> {file_after}"
        );
        // The code dropped is faulted back in on use.
        let v: Vec<u64> = (0..1000u64).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
        assert!(release().is_ok());
    }

    #[test]
    fn limiting_arenas_is_harmless() {
        limit_malloc_arenas(2);
        let v = vec![1u8; 1 << 20];
        assert_eq!(v.len(), 1 << 20);
    }
}
