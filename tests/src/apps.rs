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

/// Run `cmd` to its end; its stdout, or an error with its output.
fn run_ok(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// MariaDB (`mariadbd`) on a free port with a fresh data dir (`mariadb-install-db`, root with no
/// password over the socket `<dir>/mysqld.sock`), `--max-connections=max_connections`, and
/// `extra` server options (`--log-bin`, `--server-id=2`, ...).
pub fn mariadb(max_connections: u32, extra: &[&str]) -> Result<Server> {
    let port = crate::services::free_port()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let root = nix_is_root();
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
    if root {
        install.arg("--user=root");
    }
    run_ok("mariadb-install-db", &mut install)?;
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!(
            "--socket={}",
            dir.path().join("mysqld.sock").display()
        ))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("mysqld.pid").display()
        ))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--max-connections={max_connections}"))
        .args(["--innodb-buffer-pool-size=16M", "--skip-name-resolve"])
        .args(extra);
    if root {
        cmd.arg("--user=root");
    }
    Server::spawn("mariadbd", cmd, port, dir)
}

/// Run SQL on a [`mariadb`] server as root over its socket (the `mariadb` client); the rows,
/// tab-separated, without the column names.
pub fn mariadb_sql(server: &Server, sql: &str) -> Result<String> {
    run_ok(
        "mariadb",
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                server.dir.path().join("mysqld.sock").display()
            ))
            .args(["-uroot", "-N", "-B", "-e", sql]),
    )
}

/// The newest PostgreSQL's programs (`/usr/lib/postgresql/<version>/bin`; Debian 12: 15).
pub fn postgresql_bin() -> Result<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install the postgresql package")?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no /usr/lib/postgresql/*/bin/postgres: install postgresql"))
}

/// A PostgreSQL program run as the `postgres` system user when the tests run as root (initdb and
/// postgres refuse root), as the current user otherwise.
fn postgres_command(program: &Path) -> Command {
    if nix_is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Give `path` to the `postgres` system user when the tests run as root.
fn chown_to_postgres(path: &Path) -> Result<()> {
    if !nix_is_root() {
        return Ok(());
    }
    let id = |flag: &str| -> Result<u32> {
        let text = run_ok("id", Command::new("id").args([flag, "postgres"]))
            .context("no `postgres` system user: install the postgresql package")?;
        Ok(text.trim().parse()?)
    };
    std::os::unix::fs::chown(path, Some(id("-u")?), Some(id("-g")?))?;
    Ok(())
}

/// A fresh PostgreSQL data dir in `<dir>/data` (`initdb`, superuser `postgres`, trust over the
/// unix socket, SCRAM passwords over TCP).
fn postgresql_initdb(dir: &Path) -> Result<PathBuf> {
    chown_to_postgres(dir)?;
    let data = dir.join("data");
    run_ok(
        "initdb",
        postgres_command(&postgresql_bin()?.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]),
    )?;
    Ok(data)
}

/// `postgres` on a free port serving `<dir>/data`, its socket in `<dir>`.
fn postgresql_serve(dir: tempfile::TempDir, max_connections: u32) -> Result<Server> {
    let port = crate::services::free_port()?;
    let mut cmd = postgres_command(&postgresql_bin()?.join("postgres"));
    cmd.arg("-D")
        .arg(dir.path().join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir.path())
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(["-c", &format!("max_connections={max_connections}")]);
    Server::spawn("postgres", cmd, port, dir)
}

/// PostgreSQL on a free port with a fresh data dir and `max_connections`; superuser `postgres`
/// (no password over the socket in its dir, see [`psql`]).
pub fn postgresql(max_connections: u32) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    postgresql_initdb(dir.path())?;
    postgresql_serve(dir, max_connections)
}

/// A hot standby of `primary` (`pg_basebackup -R` over its socket), streaming from it.
pub fn postgresql_standby(primary: &Server, max_connections: u32) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    chown_to_postgres(dir.path())?;
    run_ok(
        "pg_basebackup",
        postgres_command(&postgresql_bin()?.join("pg_basebackup"))
            .arg("-h")
            .arg(primary.dir.path())
            .args(["-p", &primary.port.to_string(), "-U", "postgres", "-D"])
            .arg(dir.path().join("data"))
            .args(["-R", "-X", "stream", "--no-sync"]),
    )?;
    postgresql_serve(dir, max_connections)
}

/// `psql` as `postgres` over the server's socket on `database`: the rows (unaligned, no header).
pub fn psql(server: &Server, database: &str, sql: &str) -> Result<String> {
    run_ok(
        "psql",
        Command::new("psql")
            .arg("-h")
            .arg(server.dir.path())
            .args([
                "-p",
                &server.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]),
    )
}
