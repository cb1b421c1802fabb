//! Real application servers from Debian packages for the application collector tests (redis,
//! memcached, mariadb, postgresql, nginx, apache2, haproxy, ...): each started by the test on a
//! free loopback port with its files in a temp dir, as its own process (killed when dropped),
//! and the agent pointed at it through its pack's parameters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::{Agent, AgentOptions, http, wait_for};

/// How long a server may take to start (mariadb and postgresql initialise a data dir first).
pub const SERVER_START: Duration = Duration::from_secs(60);

/// A server process started by a test, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// What it is (for messages).
    pub name: String,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its files (data, config, logs).
    pub dir: tempfile::TempDir,
}

impl Server {
    /// Spawn `cmd` (its output goes to `<dir>/server.log`) and wait until 127.0.0.1:`port`
    /// accepts connections.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Result<Server> {
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        let mut server = Server {
            child: Some(child),
            name: name.to_owned(),
            port,
            dir,
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let (port, log) = (self.port, self.dir.path().join("server.log"));
        let child = self.child.as_mut().ok_or_else(|| anyhow!("stopped"))?;
        wait_for(
            &format!("{} on port {port}", self.name),
            SERVER_START,
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(Err(anyhow!(
                        "exited with {status}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )));
                }
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()
                    .then_some(Ok(()))
            },
        )?
    }

    /// Stop it (SIGKILL) and wait until it is gone and its port closed.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait()?;
        }
        let port = self.port;
        wait_for(
            &format!("{} to close port {port}", self.name),
            crate::DEADLINE,
            || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_err()
                    .then_some(())
            },
        )
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// redis-server on a free port, no persistence.
pub fn redis() -> Result<Server> {
    let port = crate::services::free_port()?;
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args([
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--maxclients",
        "200",
    ])
    .arg("--dir")
    .arg(dir.path());
    Server::spawn("redis-server", cmd, port, dir)
}

/// memcached on a free port.
pub fn memcached() -> Result<Server> {
    let port = crate::services::free_port()?;
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-c",
        "100",
    ]);
    if nix_is_root() {
        cmd.args(["-u", "root"]);
    }
    Server::spawn("memcached", cmd, port, dir)
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Write a pack `pack` with these parameters (YAML) under `<root>/packs/`, to give the agent as
/// `packs_dirs`: it merges into the shipped pack of that name, key by key. Returns `<root>/packs`.
pub fn pack_parameters(root: &Path, pack: &str, parameters: &str) -> Result<PathBuf> {
    let dir = root.join("packs").join(pack).join("parameters");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("parameters.yml"), parameters)?;
    Ok(root.join("packs"))
}

/// An agent whose packs_dirs hold `packs` (from [`pack_parameters`]).
pub fn agent_with_packs(packs: &Path, name: &str) -> Result<Agent> {
    Agent::start_with(
        AgentOptions::default()
            .name(name)
            .config(&format!("packs_dirs: [\"{}\"]\n", packs.display())),
    )
}

/// The collector's latest result: (state, data, message).
pub fn collector(agent: &Agent, name: &str) -> Option<(String, serde_json::Value, String)> {
    let answer = http(agent.api, "GET", &format!("/collectors/{name}"), &[], b"").ok()?;
    let v: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
    Some((
        v["state"].as_str()?.to_owned(),
        v["data"].clone(),
        v["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Wait until collector `name` is `ok` and `test` accepts its data; the data.
pub fn wait_collector(
    agent: &Agent,
    name: &str,
    what: &str,
    test: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let mut last = None;
    wait_for(&format!("collector.{name}: {what}"), SERVER_START, || {
        let (state, data, message) = collector(agent, name)?;
        let ok = state == "ok" && test(&data);
        last = Some((state, message));
        ok.then_some(data)
    })
    .with_context(|| format!("last: {last:?}"))
}

/// A check's (state, output) on this agent.
pub fn check(agent: &Agent, name: &str) -> Option<(String, String)> {
    let answer = http(agent.api, "GET", "/monitoring/state", &[], b"").ok()?;
    let v: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
    let checks = &v["checks"];
    let list: Vec<&serde_json::Value> = match checks {
        serde_json::Value::Array(a) => a.iter().collect(),
        serde_json::Value::Object(m) => m.values().collect(),
        _ => Vec::new(),
    };
    let c = list.into_iter().find(|c| c["name"] == name)?;
    Some((
        c["state"].as_str()?.to_owned(),
        c["output"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Wait until check `name` is in `state`; its output.
pub fn wait_check(agent: &Agent, name: &str, state: &str) -> Result<String> {
    let mut last = None;
    wait_for(&format!("check {name} {state}"), SERVER_START, || {
        let (s, output) = check(agent, name)?;
        let done = s == state;
        last = Some((s, output.clone()));
        done.then_some(output)
    })
    .with_context(|| format!("last: {last:?}"))
}
