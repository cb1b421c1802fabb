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
            // The application packs, off for other tests, are what these tests are about.
            .env("OPSBRO_DISABLED_PACKS", "")
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

/// Write `text` to `<dir>/<name>`; the path.
fn write_conf(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// A server whose processes (a master and its workers, a start script and its VM) run in a
/// process group of their own, all killed together: killing only the master of nginx or apache
/// leaves its workers holding the port.
pub struct ServerGroup {
    /// The server; its `child` leads the group.
    pub server: Server,
    group: u32,
}

impl ServerGroup {
    /// [`Server::spawn`] with `cmd` in a new process group; a server that does not come up in
    /// time is killed whole.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Result<ServerGroup> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        let group = child.id();
        let mut started = ServerGroup {
            server: Server {
                child: Some(child),
                name: name.to_owned(),
                port,
                dir,
            },
            group,
        };
        started.server.wait_listening()?;
        Ok(started)
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// Its files (config, logs, sockets).
    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// Kill the whole group (SIGKILL) and wait until its port is closed.
    pub fn stop(&mut self) -> Result<()> {
        self.kill_group();
        self.server.stop()
    }

    fn kill_group(&self) {
        // Never `kill -- -0`: that is the caller's own group.
        if self.group == 0 {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ServerGroup {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// nginx on a free port, its files in a temp dir: `stub_status` at `/nginx_status`, `hello` at
/// any other path.
pub fn nginx() -> Result<ServerGroup> {
    let port = crate::services::free_port()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let conf = write_conf(
        dir.path(),
        "nginx.conf",
        &format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    location = /nginx_status {{ stub_status; }}\n\
             \x20   location / {{ return 200 \"hello\\n\"; }}\n  }}\n}}\n"
        ),
    )?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .args(["-g", "daemon off;"]);
    ServerGroup::spawn("nginx", cmd, port, dir)
}

/// Debian's apache2 on a free port with a conf of its own (mpm_event, mod_status with
/// `ExtendedStatus On` at `/server-status`, 40 worker slots), its files in a temp dir.
pub fn apache() -> Result<ServerGroup> {
    let port = crate::services::free_port()?;
    let dir = tempfile::tempdir()?;
    // Its workers run as `nobody` when started by root: they must read the document root.
    std::fs::create_dir(dir.path().join("www"))?;
    std::fs::write(dir.path().join("www/index.html"), "hello\n")?;
    for p in [dir.path().to_path_buf(), dir.path().join("www")] {
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let d = dir.path().display();
    let modules = "/usr/lib/apache2/modules";
    let user = if nix_is_root() {
        "User nobody\nGroup nogroup\n"
    } else {
        ""
    };
    let conf = write_conf(
        dir.path(),
        "httpd.conf",
        &format!(
            "ServerRoot {d}\nServerName localhost\nListen 127.0.0.1:{port}\nPidFile {d}/httpd.pid\n\
             ErrorLog {d}/error.log\nDefaultRuntimeDir {d}\n{user}\
             LoadModule mpm_event_module {modules}/mod_mpm_event.so\n\
             LoadModule authz_core_module {modules}/mod_authz_core.so\n\
             LoadModule status_module {modules}/mod_status.so\n\
             ExtendedStatus On\nStartServers 1\nServerLimit 4\nThreadsPerChild 10\nMaxRequestWorkers 40\n\
             MinSpareThreads 5\nMaxSpareThreads 15\n\
             DocumentRoot {d}/www\n<Directory {d}/www>\n  Require all granted\n</Directory>\n\
             <Location /server-status>\n  SetHandler server-status\n  Require all granted\n</Location>\n"
        ),
    )?;
    let mut cmd = Command::new("apache2");
    cmd.arg("-f").arg(&conf).arg("-DFOREGROUND");
    ServerGroup::spawn("apache2", cmd, port, dir)
}

/// haproxy on a free port (`-db`: foreground), its stats socket at `<dir>/admin.sock` (level
/// admin) and its stats page at `/stats` of its one frontend `fe_main` (maxconn 10): `/dead...`
/// goes to backend `be_dead` (server `dead1` on `dead_port`), the rest to `be_app` (server
/// `live` on `live_port`, server `gone` on `dead_port`); checks every 300 ms.
pub fn haproxy(live_port: u16, dead_port: u16) -> Result<ServerGroup> {
    let port = crate::services::free_port()?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("admin.sock");
    let conf = write_conf(
        dir.path(),
        "haproxy.cfg",
        &format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 5s\n\
             frontend fe_main\n  bind 127.0.0.1:{port}\n  maxconn 10\n  stats enable\n  stats uri /stats\n\
             \x20 use_backend be_dead if {{ path_beg /dead }}\n  default_backend be_app\n\
             backend be_app\n  server live 127.0.0.1:{live_port} check inter 300ms\n\
             \x20 server gone 127.0.0.1:{dead_port} check inter 300ms fall 1 rise 1\n\
             backend be_dead\n  server dead1 127.0.0.1:{dead_port} check inter 300ms fall 1 rise 1\n",
            socket.display()
        ),
    )?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-f").arg(&conf).arg("-db");
    ServerGroup::spawn("haproxy", cmd, port, dir)
}

/// A rabbitmq node of Debian's rabbitmq-server with the management plugin, and the Erlang port
/// mapper it registers with (its own, on a free port: a shared epmd would outlive the test).
pub struct RabbitMq {
    /// The node (its start script, the Erlang VM and their helpers); its port is the
    /// management API's.
    pub node: ServerGroup,
    /// Its AMQP port.
    pub amqp_port: u16,
    /// Its Erlang node name (`opsbro<port>@localhost`).
    pub name: String,
    epmd: Server,
}

impl RabbitMq {
    /// Run `rabbitmqctl -n <node> ARGS` against it (same Erlang cookie and port mapper).
    pub fn ctl(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .env("HOME", self.node.dir())
            .env("ERL_EPMD_PORT", self.epmd.port.to_string())
            .current_dir(self.node.dir())
            .stdin(Stdio::null())
            .output()
            .context("run rabbitmqctl")
    }
}

/// rabbitmq-server (3.10 in Debian 12) on free ports, data, logs and config in a temp dir, the
/// management API at `http://127.0.0.1:<node.port()>` (guest/guest from loopback).
pub fn rabbitmq() -> Result<RabbitMq> {
    let free = crate::services::free_port;
    let (mgmt, amqp, dist, epmd_port) = (free()?, free()?, free()?, free()?);
    let epmd_dir = tempfile::tempdir()?;
    let mut epmd = Command::new("epmd");
    epmd.args(["-address", "127.0.0.1", "-port", &epmd_port.to_string()]);
    let epmd = Server::spawn("epmd", epmd, epmd_port, epmd_dir)?;
    let dir = tempfile::tempdir()?;
    let p = dir.path();
    let plugins = write_conf(p, "enabled_plugins", "[rabbitmq_management].\n")?;
    // Statistics every second (5 s by default), for the tests not to wait.
    let conf = write_conf(
        p,
        "rabbitmq.conf",
        &format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\nmanagement.tcp.ip = 127.0.0.1\n\
             management.tcp.port = {mgmt}\ncollect_statistics_interval = 1000\n"
        ),
    )?;
    // Not /etc/rabbitmq/rabbitmq-env.conf.
    let env_file = write_conf(p, "rabbitmq-env.conf", "")?;
    let name = format!("opsbro{mgmt}@localhost");
    // Not /usr/sbin/rabbitmq-server: as root it switches to the rabbitmq user and its files.
    let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    cmd.env("HOME", p)
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("RABBITMQ_CONF_ENV_FILE", &env_file)
        .env("RABBITMQ_CONFIG_FILE", &conf)
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
        .env("RABBITMQ_MNESIA_BASE", p.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", p.join("log"))
        .env("RABBITMQ_LOGS", "-")
        .env("RABBITMQ_PID_FILE", p.join("rabbitmq.pid"))
        .env("RABBITMQ_NODENAME", &name)
        .env("RABBITMQ_NODE_PORT", amqp.to_string())
        .env("RABBITMQ_DIST_PORT", dist.to_string())
        .current_dir(p);
    let node = ServerGroup::spawn("rabbitmq-server", cmd, mgmt, dir)?;
    Ok(RabbitMq {
        node,
        amqp_port: amqp,
        name,
        epmd,
    })
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
    // Each server gets its own tmpdir: with the shared /tmp, concurrent installs lose each
    // other's `#sql-temptable-*` files ("Could not remove temporary table", ERROR 1051).
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp)?;
    let root = nix_is_root();
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--tmpdir={}", tmp.display()));
    if root {
        install.arg("--user=root");
    }
    run_ok("mariadb-install-db", &mut install)?;
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
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
