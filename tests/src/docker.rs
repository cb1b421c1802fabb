//! Docker daemons for the Docker tests: [`FakeDocker`], a small server that speaks the Engine
//! API's JSON over a unix socket (the shapes of the Engine API documentation: `/version`,
//! `/info`, `/containers/json`, `/containers/{id}/json`, `/containers/{id}/stats`,
//! `/images/json`, `/events`), whose containers and events the test drives; and [`Podman`], a
//! real Docker-compatible daemon (`podman system service`) with its own storage in a temp dir
//! and one busybox container made from Debian's busybox-static (no registry needed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{DEADLINE, wait_for};

/// A container of the fake daemon.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    /// Name (without `/`).
    pub name: String,
    /// Full id (64 hex digits).
    pub id: String,
    /// Image as given.
    pub image: String,
    /// `running`, `exited`, `restarting`...
    pub state: String,
    /// Healthcheck status, when it has one.
    pub health: Option<String>,
    /// Exit code of its last run.
    pub exit_code: i64,
    /// Restarts by the daemon.
    pub restart_count: u64,
}

impl FakeContainer {
    /// A running container from `image`, no healthcheck.
    pub fn running(name: &str, image: &str) -> FakeContainer {
        let mut id = String::new();
        for b in name.bytes().cycle().take(32) {
            id.push_str(&format!("{b:02x}"));
        }
        FakeContainer {
            name: name.to_owned(),
            id,
            image: image.to_owned(),
            state: "running".into(),
            health: None,
            exit_code: 0,
            restart_count: 0,
        }
    }

    /// With a healthcheck in this state.
    pub fn health(mut self, h: &str) -> FakeContainer {
        self.health = Some(h.to_owned());
        self
    }

    /// Exited with this code.
    pub fn exited(mut self, code: i64) -> FakeContainer {
        self.state = "exited".into();
        self.exit_code = code;
        self
    }

    fn status(&self) -> String {
        match (self.state.as_str(), &self.health) {
            ("running", None) => "Up 2 hours".into(),
            ("running", Some(h)) if h == "starting" => "Up 2 seconds (health: starting)".into(),
            ("running", Some(h)) => format!("Up 2 hours ({h})"),
            ("exited", _) => format!("Exited ({}) 5 minutes ago", self.exit_code),
            (other, _) => other.to_owned(),
        }
    }

    fn listed(&self) -> Value {
        json!({
            "Id": self.id, "Names": [format!("/{}", self.name)], "Image": self.image,
            "ImageID": "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741",
            "Command": "/docker-entrypoint.sh", "Created": 1_700_000_000,
            "Ports": [{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp", "IP": "0.0.0.0"}],
            "Labels": {"com.example.vendor": "Acme"}, "State": self.state, "Status": self.status(),
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": {"Networks": {"bridge": {"NetworkID": "7ea29fc1412292a2d7bba362f9253545fecdfa8ce9a6e37dd10ba8bee7129812", "IPAddress": "172.17.0.2"}}},
            "Mounts": []
        })
    }

    fn inspected(&self) -> Value {
        let running = self.state == "running";
        let mut state = json!({
            "Status": self.state, "Running": running, "Paused": false,
            "Restarting": self.state == "restarting", "OOMKilled": false, "Dead": false,
            "Pid": if running { 4242 } else { 0 }, "ExitCode": self.exit_code, "Error": "",
            "StartedAt": "2023-11-14T22:13:20.123456789Z",
            "FinishedAt": if running { "0001-01-01T00:00:00Z" } else { "2023-11-15T08:00:00.5Z" }
        });
        if let Some(h) = &self.health {
            state["Health"] = json!({"Status": h, "FailingStreak": if h == "unhealthy" { 3 } else { 0 },
                "Log": [{"Start": "2023-11-15T08:00:00Z", "End": "2023-11-15T08:00:01Z", "ExitCode": i32::from(h == "unhealthy"), "Output": ""}]});
        }
        json!({
            "Id": self.id, "Created": "2023-11-14T22:13:20.000000000Z", "Path": "/docker-entrypoint.sh",
            "Args": [], "State": state,
            "Image": "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741",
            "Name": format!("/{}", self.name), "RestartCount": self.restart_count,
            "Driver": "overlay2", "Platform": "linux",
            "HostConfig": {"RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0}},
            "Config": {"Hostname": "4fa6e0f0c678", "Image": self.image, "Env": ["SECRET=hunter2"],
                       "Labels": {"com.example.vendor": "Acme"}}
        })
    }
}

struct FakeState {
    containers: Vec<FakeContainer>,
    /// Open `/events` streams.
    streams: Vec<mpsc::Sender<String>>,
    /// Stats reads so far (counters grow with them).
    stats_reads: u64,
    /// Request paths seen.
    requests: Vec<String>,
}

/// A fake Docker daemon on a unix socket in `dir`.
pub struct FakeDocker {
    /// Its socket.
    pub socket: PathBuf,
    state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeDocker {
    /// Listen on `socket` (removed first if left by a previous daemon) with these containers.
    pub fn start(socket: &Path, containers: Vec<FakeContainer>) -> Result<FakeDocker> {
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).with_context(|| format!("bind {}", socket.display()))?;
        let state = Arc::new(Mutex::new(FakeState {
            containers,
            streams: Vec::new(),
            stats_reads: 0,
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp) = (st.clone(), sp.clone());
                std::thread::spawn(move || serve(conn, &st, &sp));
            }
            // The listener is dropped here: the socket file stays, connecting is refused (a
            // crashed dockerd leaves its socket behind the same way).
        });
        Ok(FakeDocker {
            socket: socket.to_owned(),
            state,
            stop,
            accept: Some(accept),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Change one container.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut FakeContainer)) {
        self.with(|s| {
            if let Some(c) = s.containers.iter_mut().find(|c| c.name == name) {
                change(c);
            }
        });
    }

    /// Send an event line to every open `/events` stream; how many streams got it.
    pub fn emit(&self, event: &Value) -> usize {
        let line = format!("{event}\n");
        self.with(|s| {
            s.streams.retain(|tx| tx.send(line.clone()).is_ok());
            s.streams.len()
        })
    }

    /// Open `/events` streams now.
    pub fn streams(&self) -> usize {
        self.with(|s| s.streams.len())
    }

    /// The request paths seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    /// Crash: stop answering (connections refused, event streams cut); the socket file stays.
    pub fn crash(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.with(|s| s.streams.clear());
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A container event as the daemon streams it (Engine API `EventMessage`).
pub fn container_event(c: &FakeContainer, action: &str, extra: &[(&str, &str)]) -> Value {
    let mut attributes: BTreeMap<String, String> = [
        ("image".to_owned(), c.image.clone()),
        ("name".to_owned(), c.name.clone()),
        ("com.example.vendor".to_owned(), "Acme".to_owned()),
    ]
    .into();
    for (k, v) in extra {
        attributes.insert((*k).to_owned(), (*v).to_owned());
    }
    json!({
        "status": action, "id": c.id, "from": c.image, "Type": "container", "Action": action,
        "Actor": {"ID": c.id, "Attributes": attributes}, "scope": "local",
        "time": 1_700_000_100, "timeNano": 1_700_000_100_000_000_000u64
    })
}

fn serve(mut conn: UnixStream, state: &Mutex<FakeState>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(reader) = conn.try_clone() else { return };
    let mut reader = BufReader::new(reader);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Headers, up to the blank line (the client sends no body with a GET).
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    // `/v1.43/containers/json` is `/containers/json`.
    let unversioned = match target.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest
            .find('/')
            .map_or("/".to_owned(), |i| rest[i..].to_owned()),
        _ => target.clone(),
    };
    let (path, query) = unversioned
        .split_once('?')
        .map_or((unversioned.as_str(), ""), |(p, q)| (p, q));
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    s.requests.push(unversioned.clone());
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let find = |s: &FakeState, key: &str| {
        s.containers
            .iter()
            .find(|c| c.id == key || c.name == key || c.id.starts_with(key))
            .cloned()
    };
    let answer: (u16, Value) = match parts.as_slice() {
        ["_ping"] => (200, json!("OK")),
        ["version"] => (
            200,
            json!({
                "Platform": {"Name": "Docker Engine - Community"},
                "Components": [{"Name": "Engine", "Version": "24.0.7", "Details": {"ApiVersion": "1.43"}}],
                "Version": "24.0.7", "ApiVersion": "1.43", "MinAPIVersion": "1.12",
                "GitCommit": "311b9ff", "GoVersion": "go1.20.10", "Os": "linux", "Arch": "amd64",
                "KernelVersion": "6.1.0-13-amd64", "BuildTime": "2023-10-26T09:08:02.000000000+00:00"
            }),
        ),
        ["info"] => {
            let count = |st: &str| s.containers.iter().filter(|c| c.state == st).count();
            let running = count("running");
            let paused = count("paused");
            (
                200,
                json!({
                    "ID": "7TRN:IPZB:QYBB:VPBQ:UWS7:CIDE:BZC6:LZVA:GAOZ:5D5E:SGZO:RDJW",
                    "Containers": s.containers.len(), "ContainersRunning": running,
                    "ContainersPaused": paused,
                    "ContainersStopped": s.containers.len() - running - paused,
                    "Images": 2, "Driver": "overlay2",
                    "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
                    "MemoryLimit": true, "SwapLimit": true, "NFd": 24, "NGoroutines": 40,
                    "SystemTime": "2023-11-15T08:00:00.000000000Z", "LoggingDriver": "json-file",
                    "CgroupDriver": "systemd", "CgroupVersion": "2",
                    "KernelVersion": "6.1.0-13-amd64",
                    "OperatingSystem": "Debian GNU/Linux 12 (bookworm)", "OSVersion": "12",
                    "OSType": "linux", "Architecture": "x86_64", "NCPU": 2,
                    "MemTotal": 2_147_483_648u64, "DockerRootDir": "/var/lib/docker",
                    "Name": "fake-docker", "ServerVersion": "24.0.7"
                }),
            )
        }
        ["containers", "json"] => {
            let all = query.contains("all=1") || query.contains("all=true");
            (
                200,
                Value::Array(
                    s.containers
                        .iter()
                        .filter(|c| all || c.state == "running")
                        .map(FakeContainer::listed)
                        .collect(),
                ),
            )
        }
        ["containers", key, "json"] => match find(&s, key) {
            Some(c) => (200, c.inspected()),
            None => (404, json!({"message": format!("No such container: {key}")})),
        },
        ["containers", key, "stats"] => match find(&s, key) {
            Some(c) if c.state == "running" => {
                s.stats_reads += 1;
                (200, stats(&c, s.stats_reads))
            }
            Some(c) => (
                409,
                json!({"message": format!("container {} is not running", c.id)}),
            ),
            None => (404, json!({"message": format!("No such container: {key}")})),
        },
        ["images", "json"] => (
            200,
            json!([
                {"Id": "sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741",
                 "ParentId": "", "RepoTags": ["nginx:1.25"], "RepoDigests": [],
                 "Created": 1_699_000_000, "Size": 187_000_000, "SharedSize": -1,
                 "VirtualSize": 187_000_000, "Labels": {}, "Containers": 1},
                {"Id": "sha256:a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
                 "ParentId": "", "RepoTags": ["postgres:16"], "RepoDigests": [],
                 "Created": 1_698_000_000, "Size": 425_000_000, "SharedSize": -1,
                 "VirtualSize": 425_000_000, "Labels": {}, "Containers": -1}
            ]),
        ),
        ["events"] => {
            let (tx, rx) = mpsc::channel();
            s.streams.push(tx);
            drop(s);
            stream_events(conn, &rx, stop);
            return;
        }
        _ => (404, json!({"message": "page not found"})),
    };
    drop(s);
    let body = answer.1.to_string();
    let reason = match answer.0 {
        200 => "OK",
        404 => "Not Found",
        _ => "Conflict",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {} {reason}\r\nApi-Version: 1.43\r\nContent-Type: application/json\r\n\
         Server: Docker/24.0.7 (linux)\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        answer.0,
        body.len()
    );
}

/// A stats answer (Engine API `ContainerStatsResponse`, one-shot: no `precpu_stats`) whose
/// counters grow with `n`.
fn stats(c: &FakeContainer, n: u64) -> Value {
    json!({
        "name": format!("/{}", c.name), "id": c.id,
        "read": "2023-11-15T08:00:00.000000000Z", "preread": "0001-01-01T00:00:00Z",
        "pids_stats": {"current": 3, "limit": 4_915},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 8, "minor": 0, "op": "read", "value": 4_096 * n},
            {"major": 8, "minor": 0, "op": "write", "value": 8_192 * n}]},
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": {"cpu_usage": {"total_usage": 500_000_000 * n, "usage_in_kernelmode": 100_000_000 * n,
                                    "usage_in_usermode": 400_000_000 * n},
                      "system_cpu_usage": 2_000_000_000 * n + 10_000_000_000, "online_cpus": 2,
                      "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
        "precpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                         "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
        "memory_stats": {"usage": 73_400_320, "limit": 1_073_741_824,
                         "stats": {"active_anon": 31_457_280, "inactive_file": 10_485_760,
                                   "file": 20_971_520, "anon": 52_428_800}},
        "networks": {"eth0": {"rx_bytes": 10_000 * n, "rx_packets": 20 * n, "rx_errors": 0, "rx_dropped": 0,
                              "tx_bytes": 2_000 * n, "tx_packets": 10 * n, "tx_errors": 0, "tx_dropped": 0}}
    })
}

/// `/events`: chunked, one JSON line per chunk as the test emits them, until the daemon stops
/// or the client goes away.
fn stream_events(mut conn: UnixStream, rx: &mpsc::Receiver<String>, stop: &AtomicBool) {
    if conn
        .write_all(
            b"HTTP/1.1 200 OK\r\nApi-Version: 1.43\r\nContent-Type: application/json\r\n\
              Server: Docker/24.0.7 (linux)\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .is_err()
    {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if write!(conn, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
    // A crash: the connection is cut, no last chunk.
}

/// GET `path` on a unix socket (HTTP/1.0, the answer read to its end): (status, body).
pub fn get_unix(socket: &Path, path: &str) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not HTTP: {text}"))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((status, body.to_owned()))
}

/// A podman of its own: storage, run state, temp files and events under `dir`, the Docker API
/// served on `<dir>/podman.sock`. Everything it runs is removed when it is dropped.
///
/// Two settings of this machine are worked around, for every podman command: crun refuses
/// cgroups in "hybrid" mode (cgroup v1 plus a cgroup2 hierarchy at /sys/fs/cgroup/unified that
/// has controllers), so podman runs in a private mount namespace (`unshare -m`) where
/// /sys/fs/cgroup/unified is unmounted — nothing outside it changes; and the container's
/// rlimits are set below the current ones (raising them needs CAP_SYS_RESOURCE, which this
/// sandbox lacks).
pub struct Podman {
    /// Its files.
    pub dir: tempfile::TempDir,
    /// The Docker-compatible API socket.
    pub socket: PathBuf,
    service: Option<Child>,
}

/// The image the tests run (made from busybox-static).
pub const PODMAN_IMAGE: &str = "localhost/opsbro-busybox:latest";

impl Podman {
    /// `podman ARGS` with this podman's storage, in its mount namespace.
    pub fn command(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"")
            .args(["sh", "podman"])
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Run `podman ARGS`; its output, an error with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let out = self
            .command()
            .args(args)
            .output()
            .context("run podman (apt-get install podman)")?;
        if !out.status.success() {
            bail!(
                "podman {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out)
    }

    /// Make the image, start container `name` (`sleep 600`), serve the API.
    pub fn start_with_container(name: &str) -> Result<Podman> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("podman.sock");
        let mut podman = Podman {
            dir,
            socket,
            service: None,
        };
        podman.make_image()?;
        podman.run(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            PODMAN_IMAGE,
            "/bin/sleep",
            "600",
        ])?;
        let log = std::fs::File::create(podman.dir.path().join("service.log"))?;
        let child = podman
            .command()
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", podman.socket.display()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start podman system service")?;
        podman.service = Some(child);
        let socket = podman.socket.clone();
        let answered = wait_for("podman's API socket", DEADLINE, || {
            get_unix(&socket, "/_ping")
                .ok()
                .filter(|(status, _)| *status == 200)
        });
        if let Err(e) = answered {
            bail!(
                "{e}; podman service log:\n{}",
                std::fs::read_to_string(podman.dir.path().join("service.log")).unwrap_or_default()
            );
        }
        Ok(podman)
    }

    /// An image holding Debian's static busybox as /bin/busybox, /bin/sh and /bin/sleep.
    fn make_image(&self) -> Result<()> {
        let busybox = Path::new("/bin/busybox");
        let bytes =
            std::fs::read(busybox).context("read /bin/busybox (apt-get install busybox-static)")?;
        if has_interpreter(&bytes) {
            bail!(
                "/bin/busybox is dynamically linked: the container image needs Debian's \
                 busybox-static (apt-get install busybox-static)"
            );
        }
        let rootfs = self.dir.path().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::write(bin.join("busybox"), &bytes)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))?;
        }
        for link in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", bin.join(link))?;
        }
        let tar = self.dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .context("run tar")?;
        if !status.success() {
            bail!("tar of the rootfs failed: {status}");
        }
        let tar = tar.display().to_string();
        self.run(&["import", &tar, PODMAN_IMAGE])?;
        Ok(())
    }
}

/// Whether an ELF executable asks for a dynamic loader (a `PT_INTERP` program header).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) {
        // Not a 64-bit ELF: treat as unusable.
        return true;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..usize::from(count)).any(|i| {
        let at = phoff as usize + i * usize::from(size);
        elf.get(at..at + 4) == Some(3u32.to_le_bytes().as_slice())
    })
}

impl Drop for Podman {
    fn drop(&mut self) {
        // The containers (and their conmon) first, then the API service.
        let _ = self
            .command()
            .args(["rm", "--force", "--all", "--time", "0"])
            .output();
        if let Some(mut child) = self.service.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
