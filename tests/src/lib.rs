//! Test harness for whole-agent tests: start real `opsbro` processes on free loopback ports in
//! temporary data dirs, run CLI commands against them, speak raw HTTP to their API, and wait on
//! conditions with deadlines (never fixed sleeps).
//!
//! The binary is the one cargo built for this workspace (`target/<profile>/opsbro`, next to the
//! test executable's `deps/` folder), or `$OPSBRO_BIN` when set.

#![forbid(unsafe_code)]

pub mod apps;
pub mod browser;
pub mod docker;
pub mod graphite;
pub mod netns;
pub mod services;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use opsbro_api::{RUNTIME_FILE_NAME, RuntimeFile};

/// How long harness waits allow by default; generous because CI machines are slow and shared.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Path of the `opsbro` binary under test.
pub fn opsbro_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("OPSBRO_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/opsbro
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = dir.join("opsbro");
    assert!(
        bin.exists(),
        "the opsbro binary is not at {}: run the tests with `cargo test --workspace` (which builds it) or set OPSBRO_BIN",
        bin.display()
    );
    bin
}

/// Path of a file in the repository (tests run with the `tests/` crate as working directory).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Poll `condition` every 50 ms until it returns `Some`, or fail after `deadline` with `what`.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = condition() {
            return Ok(v);
        }
        if Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `opsbro agent start` process, killed when dropped.
pub struct Agent {
    child: Option<Child>,
    /// The agent's data directory.
    pub data_dir: PathBuf,
    /// Where the agent's stdout+stderr go.
    pub log_path: PathBuf,
    /// Its local API address (from the runtime file).
    pub api: SocketAddr,
    /// Its gossip address (UDP and cluster TCP).
    pub gossip: SocketAddr,
    /// Its DNS server address (UDP and TCP), when it runs.
    pub dns: Option<SocketAddr>,
    /// statsd listener (UDP), when enabled.
    pub statsd: Option<SocketAddr>,
    /// graphite listener (TCP/UDP), when enabled.
    pub graphite: Option<SocketAddr>,
    /// websocket event stream, when enabled.
    pub websocket: Option<SocketAddr>,
    /// Its pid.
    pub pid: u32,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start an agent.
#[derive(Default, Clone)]
pub struct AgentOptions {
    /// Extra arguments after `agent start`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// YAML written to a config file passed with `--config` (empty file when None).
    pub config: Option<String>,
    /// Use this data dir instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Node name (default `node-<test pid>`).
    pub name: Option<String>,
    /// Gossip port (default 0: any free port).
    pub port: Option<u16>,
    /// Gossip bind address (default 127.0.0.1; another loopback address gives the node its own
    /// IP, e.g. in DNS answers).
    pub bind: Option<String>,
}

impl AgentOptions {
    /// Add arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Use a configuration file with this YAML.
    pub fn config(mut self, yaml: &str) -> Self {
        self.config = Some(yaml.to_owned());
        self
    }

    /// Set the gossip port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Bind gossip (and advertise) on this address.
    pub fn bind(mut self, ip: &str) -> Self {
        self.bind = Some(ip.to_owned());
        self
    }

    /// Set the node name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Reuse a data dir.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Add an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// The packs of applications the test machine has installed (for the application tests): off
/// for every other test agent (`OPSBRO_DISABLED_PACKS`), so that their checks and groups do
/// not depend on what is installed on the machine.
pub const APP_PACKS: &str =
    "redis,memcached,mysql,postgresql,mongodb,nginx,apache,haproxy,rabbitmq,docker-host";

/// A command for the binary with a clean environment: no `OPSBRO_*` or `RUST_LOG` leaking in
/// from the developer's shell.
pub fn opsbro_command() -> Command {
    let mut cmd = Command::new(opsbro_bin());
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && (k.starts_with("OPSBRO_") || k == "RUST_LOG")
        {
            cmd.env_remove(k);
        }
    }
    // Agents on the test machine never ask cloud metadata services: that traffic would leave
    // the machine (hosting drivers are tested in network namespaces with their own server).
    cmd.env("OPSBRO_HOSTING_DRIVER", "none");
    // Nor do they see the machine's own application servers (the test machine has redis,
    // mariadb, nginx... installed for the application tests, which turn these packs back on).
    cmd.env("OPSBRO_DISABLED_PACKS", APP_PACKS);
    cmd.stdin(Stdio::null());
    cmd
}

/// Spawn `opsbro agent start` with `options` without waiting for it (for tests of failures).
/// Returns the child and the temporary directory holding its config and (default) data dir.
pub fn spawn_agent(options: &AgentOptions) -> Result<(Child, tempfile::TempDir, PathBuf, PathBuf)> {
    let tmp = tempfile::tempdir()?;
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    let config_path = tmp.path().join("agent.yml");
    std::fs::write(&config_path, options.config.as_deref().unwrap_or(""))?;
    let log_path = tmp.path().join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = opsbro_command();
    cmd.arg("agent")
        .arg("start")
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--api-port")
        .arg("0")
        .arg("--port")
        .arg(options.port.unwrap_or(0).to_string())
        .arg("--dns-port")
        .arg("0")
        .arg("--bind")
        .arg(options.bind.as_deref().unwrap_or("127.0.0.1"))
        .arg("--node-name")
        .arg(
            options
                .name
                .clone()
                .unwrap_or_else(|| format!("node-{}", std::process::id())),
        )
        .args(&options.args)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = cmd.spawn().context("spawn opsbro agent start")?;
    Ok((child, tmp, data_dir, log_path))
}

impl Agent {
    /// Start an agent with default options and wait until its API answers.
    pub fn start() -> Result<Agent> {
        Agent::start_with(AgentOptions::default())
    }

    /// Start an agent and wait until its runtime file names its API address.
    pub fn start_with(options: AgentOptions) -> Result<Agent> {
        let (mut child, tmp, data_dir, log_path) = spawn_agent(&options)?;
        let runtime_path = data_dir.join(RUNTIME_FILE_NAME);
        let pid = child.id();
        let runtime = wait_for("the agent's runtime file", DEADLINE, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(anyhow!(
                    "agent exited early with {status}; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            let text = std::fs::read_to_string(&runtime_path).ok()?;
            let runtime: RuntimeFile = serde_json::from_str(&text).ok()?;
            (runtime.pid == pid).then_some(Ok(runtime))
        })??;
        Ok(Agent {
            child: Some(child),
            data_dir,
            log_path,
            api: runtime.api_addr,
            gossip: runtime
                .gossip_addr
                .ok_or_else(|| anyhow!("runtime file without gossip address"))?,
            dns: runtime.dns_addr,
            statsd: runtime.statsd_addr,
            graphite: runtime.graphite_addr,
            websocket: runtime.websocket_addr,
            pid,
            _tmp: Some(tmp),
        })
    }

    /// Run `opsbro --api <this agent> ARGS...` and return its output.
    pub fn cli<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(&self, args: I) -> Output {
        opsbro_command()
            .arg("--api")
            .arg(self.api.to_string())
            .args(args)
            .output()
            .expect("run opsbro CLI")
    }

    /// The agent's API token (from `<data_dir>/api.token`).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api.token"))
            .expect("the agent's api.token")
            .trim()
            .to_owned()
    }

    /// The header line that carries the agent's API token (for [`http`]).
    pub fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token())
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait for the process to exit (within `deadline`) and return its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("already reaped"))?;
        let status = wait_for("the agent to exit", deadline, || {
            child.try_wait().ok().flatten()
        })?;
        self.child = None;
        Ok(status)
    }

    /// Send a signal to the agent (`kill -s SIG pid`, the shell builtin: no procps needed).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -s {signal} {}", self.pid))
            .status()?;
        if !status.success() {
            bail!("kill -s {signal} {} failed", self.pid);
        }
        Ok(())
    }

    /// Take the temporary directory so it outlives this agent (to restart on the same data dir).
    pub fn keep_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw HTTP/1.1 answer.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Header lines, lowercased names.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

impl HttpAnswer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.body))
    }

    /// A header value by (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Send one HTTP request (`Connection: close`) and read the whole answer. `extra_headers` are
/// full header lines such as `Authorization: Bearer x`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[&str],
    body: &[u8],
) -> Result<HttpAnswer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in extra_headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    // Chunk sizes count bytes: split and de-chunk the bytes, decode (lossily) at the end.
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body = &raw[end + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A new cluster key from `opsbro agent keygen`.
pub fn keygen() -> String {
    let out = opsbro_command()
        .args(["agent", "keygen"])
        .output()
        .expect("run opsbro agent keygen");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// stdout of a command as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// stderr of a command as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A cluster frame: `[u32 length][bytes]` (the bytes sealed or not, as the caller chose).
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Read one cluster frame; None when the connection closed (or timed out) first.
pub fn read_frame(s: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// `objects_dirs: [...]` naming the test zone tree (`internet` ⊃ {dc1, dc2, first, second}):
/// for a configuration whose `zone` is one of them (an unknown zone stops the agent at start).
pub fn zones_config() -> String {
    format!(
        "objects_dirs: [{}]\n",
        repo_path("tests/fixtures/zones").display()
    )
}
