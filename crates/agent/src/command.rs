//! Running a command for the agent (compliance rules, signed remote execution): an argv, no
//! shell unless the argv asks for one, its output capped, in a process group of its own that is
//! killed, children included, at the timeout or when the caller gives up.

use std::time::Duration;

/// How much of each of a command's stdout and stderr is kept.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// How long the pipes are read once the command exited (see [`run`]).
pub const AFTER_EXIT_DRAIN: Duration = Duration::from_secs(2);

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ran {
    /// The exit code; None when a signal ended it (or it was killed at the timeout).
    pub code: Option<i32>,
    /// Its standard output (the first [`MAX_OUTPUT`] bytes, lossily decoded).
    pub stdout: String,
    /// Its standard error (the first [`MAX_OUTPUT`] bytes, lossily decoded).
    pub stderr: String,
    /// Killed at the timeout (the output is what it printed until then).
    pub timed_out: bool,
    /// It printed more than [`MAX_OUTPUT`] on stdout or stderr.
    pub truncated: bool,
}

/// Run `argv` (`argv[0]` looked up in PATH), `env` added to the agent's environment, stdin from
/// /dev/null, each of stdout and stderr capped at [`MAX_OUTPUT`], in a process group of its own
/// that is killed (children included) at the timeout or if this future is dropped. Once the
/// command exits its pipes are read for at most [`AFTER_EXIT_DRAIN`] more (a daemon it started
/// may hold them open for good). An error only when it could not start.
pub async fn run(argv: &[&str], env: &[(&str, &str)], timeout: Duration) -> Result<Ran, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("no command to run".to_owned());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    // Dropped with this future (agent shutdown) or killed at the timeout: the whole group goes.
    let mut guard = crate::host::ProcessGroupGuard::new(child.id());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!("no pipes to `{program}`"));
    };
    let (mut out, mut err) = (Capped::default(), Capped::default());
    let finished = tokio::time::timeout(timeout, async {
        let reading = async { tokio::join!(out.read_all(stdout), err.read_all(stderr)) };
        tokio::pin!(reading);
        tokio::select! {
            () = async { (&mut reading).await; } => child.wait().await,
            status = child.wait() => {
                // It exited, but something it started (a service a package's postinst ran) may
                // still hold the pipes: take what is there, without waiting for them to close.
                let _ = tokio::time::timeout(AFTER_EXIT_DRAIN, &mut reading).await;
                status
            }
        }
    })
    .await;
    let (code, timed_out) = match finished {
        Ok(status) => {
            // It ended by itself: what it left running on purpose (a daemon) is not ours to kill.
            guard.disarm();
            let status = status.map_err(|e| format!("cannot wait for `{program}`: {e}"))?;
            (status.code(), false)
        }
        Err(_) => {
            guard.kill();
            let _ = child.wait().await;
            (None, true)
        }
    };
    Ok(Ran {
        code,
        truncated: out.cut || err.cut,
        stdout: String::from_utf8_lossy(&out.kept).into_owned(),
        stderr: String::from_utf8_lossy(&err.kept).into_owned(),
        timed_out,
    })
}

/// The first [`MAX_OUTPUT`] bytes of a pipe, and whether more came.
#[derive(Default)]
struct Capped {
    kept: Vec<u8>,
    cut: bool,
}

impl Capped {
    /// Read `r` until it closes, keeping the first [`MAX_OUTPUT`] bytes and reading on past them
    /// so the writer never blocks on a full pipe. The bytes live in `self`, so they survive
    /// this future being abandoned (at the timeout).
    async fn read_all(&mut self, mut r: impl tokio::io::AsyncRead + Unpin) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                    self.cut |= n > room;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_killed_at_its_timeout_keeps_what_it_printed_and_takes_its_children() {
        let dir = tempfile::tempdir().expect("tmp");
        let pid_file = dir.path().join("child.pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; sleep 300",
            pid_file.display()
        );
        let ran = run(&["/bin/sh", "-c", &script], &[], Duration::from_secs(1))
            .await
            .expect("started");
        assert!(ran.timed_out);
        assert_eq!(ran.code, None);
        assert_eq!(ran.stdout, "started\n");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid")
            .trim()
            .parse()
            .expect("a pid");
        // The background child was in the group: gone, or a zombie about to be reaped by init
        // (the kernel delivers the SIGKILL asynchronously: wait for it, with a deadline).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !(s.contains(") Z ") || s.contains(") X ")))
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while alive() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(), "child {pid} survived the timeout");
    }

    #[tokio::test]
    async fn output_past_the_cap_is_cut_and_said_so() {
        let ran = run(
            &["head", "-c", "70000", "/dev/zero"],
            &[],
            Duration::from_secs(30),
        )
        .await
        .expect("ran");
        assert_eq!(ran.code, Some(0));
        assert!(ran.truncated);
        assert_eq!(ran.stdout.len(), MAX_OUTPUT);
        let small = run(&["echo", "hi"], &[], Duration::from_secs(30))
            .await
            .expect("ran");
        assert!(!small.truncated && !small.timed_out);
    }
}
