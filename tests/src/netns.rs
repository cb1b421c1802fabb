//! Multi-host test harness: N hosts as network namespaces on one bridge, each running the real
//! `opsbro` binary, with helpers to run CLI commands on a host and to cut links or partition the
//! LAN (blackhole routes, no netfilter needed). Everything is removed when the [`Lan`] is dropped,
//! also when a test fails or panics; namespaces left by a killed test run are swept at the next
//! start.
//!
//! Needs root and `ip` (iproute2). Without them a test fails saying what is missing; it never
//! silently passes. The hosts' addresses (10.231.x.y) exist only inside these namespaces: no
//! packet leaves them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use opsbro_api::{RUNTIME_FILE_NAME, RuntimeFile};

use crate::{DEADLINE, opsbro_bin, wait_for};

static COUNTER: AtomicUsize = AtomicUsize::new(0);
const PREFIX: &str = "obt-";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Fail with a clear message when this machine cannot run namespace tests.
pub fn require_netns() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1);
    assert_eq!(
        uid, 0,
        "network-namespace tests need root (run the suite as root, as CI does)"
    );
    let ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "network-namespace tests need `ip`: apt-get install iproute2"
    );
}

/// Delete namespaces of earlier runs whose test process is gone.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// One host of the LAN.
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Address on the LAN.
    pub ip: Ipv4Addr,
    agent: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
}

/// A LAN of hosts in network namespaces.
pub struct Lan {
    bridge_ns: String,
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// The cluster key agents get when their configuration names none (an agent without a key
    /// listens on loopback only).
    pub key: String,
    tmp: tempfile::TempDir,
}

impl Lan {
    /// Create `n` hosts on one bridge, addresses 10.231.k.1..n.
    pub fn new(n: usize) -> Result<Lan> {
        require_netns();
        sweep_stale();
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{PREFIX}{}-{k}", std::process::id());
        let bridge_ns = format!("{tag}-br");
        let tmp = tempfile::tempdir()?;
        let mut lan = Lan {
            bridge_ns: bridge_ns.clone(),
            hosts: Vec::new(),
            key: crate::keygen(),
            tmp,
        };
        ip(&["netns", "add", &bridge_ns])?;
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
        let subnet = u8::try_from(k % 250).unwrap_or(0);
        for i in 0..n {
            let ns = format!("{tag}-h{i}");
            let addr = Ipv4Addr::new(10, 231, subnet, u8::try_from(i + 1).unwrap_or(250));
            ip(&["netns", "add", &ns])?;
            let peer = format!("p{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
                &bridge_ns,
            ])?;
            ip(&["-n", &bridge_ns, "link", "set", &peer, "master", "br0"])?;
            ip(&["-n", &bridge_ns, "link", "set", &peer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "brd",
                "+",
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let dir = lan.tmp.path().join(format!("h{i}"));
            std::fs::create_dir_all(&dir)?;
            lan.hosts.push(Host {
                ns,
                ip: addr,
                agent: None,
                data_dir: dir.join("data"),
                log: dir.join("agent.log"),
            });
        }
        Ok(lan)
    }

    /// Start an agent on host `i` (node name `host<i>`, default ports, `config` as agent.yml,
    /// extra `args`), and wait until its API is up. A configuration that sets no
    /// `encryption_key` (and does not ask for `insecure_plaintext_gossip`) gets the LAN's key.
    pub fn start_agent(&mut self, i: usize, config: &str, args: &[&str]) -> Result<()> {
        let config = if config.contains("encryption_key")
            || config.contains("insecure_plaintext_gossip")
            || args.contains(&"--insecure-plaintext-gossip")
        {
            config.to_owned()
        } else {
            format!("encryption_key: \"{}\"\n{config}", self.key)
        };
        let host = &mut self.hosts[i];
        let config_path = host.data_dir.with_file_name("agent.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&host.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns])
            .arg(opsbro_bin())
            .args(["agent", "start", "--config"])
            .arg(&config_path)
            .arg("--data-dir")
            .arg(&host.data_dir)
            .args(["--node-name", &format!("host{i}"), "--log-level", "debug"])
            .args(args)
            .env("OPSBRO_DISABLED_PACKS", crate::APP_PACKS)
            .env_remove("OPSBRO_API")
            .env_remove("OPSBRO_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn agent in namespace")?;
        let pid = child.id();
        host.agent = Some(child);
        let runtime = host.data_dir.join(RUNTIME_FILE_NAME);
        let log_path = host.log.clone();
        let agent = host.agent.as_mut().expect("just set");
        wait_for(&format!("the agent on host{i}"), DEADLINE, || {
            if let Ok(Some(status)) = agent.try_wait() {
                panic!(
                    "agent on host{i} exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(&runtime).ok()?;
            let rt: RuntimeFile = serde_json::from_str(&text).ok()?;
            (rt.pid == pid).then_some(())
        })
    }

    /// Kill the agent on host `i` (its data dir stays, for a restart).
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut child) = self.hosts[i].agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Run `opsbro ARGS` on host `i` (against its own agent).
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns])
            .arg(opsbro_bin())
            .args(args)
            .env_remove("OPSBRO_API")
            .env_remove("OPSBRO_API_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run opsbro in namespace")
    }

    /// Members seen by host `i`: (name, state).
    pub fn members(&self, i: usize) -> Vec<(String, String)> {
        let out = self.cli(i, &["gossip", "members", "--json"]);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_owned(),
                    m["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Whether host `viewer` sees `host<target>` in `state`.
    pub fn sees(&self, viewer: usize, target: usize, state: &str) -> bool {
        let name = format!("host{target}");
        self.members(viewer)
            .iter()
            .any(|(n, s)| *n == name && s == state)
    }

    /// Wait until every listed viewer sees every listed target in `state`.
    pub fn wait_all_see(
        &self,
        viewers: &[usize],
        targets: &[usize],
        state: &str,
        deadline: Duration,
    ) -> Result<()> {
        wait_for(
            &format!("{viewers:?} to see {targets:?} {state}"),
            deadline,
            || {
                viewers
                    .iter()
                    .all(|&v| targets.iter().all(|&t| t == v || self.sees(v, t, state)))
                    .then_some(())
            },
        )
    }

    /// Add (`"add"`) or delete (`"del"`) the blackhole routes between `a` and `b`, both ways.
    fn blackhole(&self, op: &str, a: usize, b: usize) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let dest = format!("{}/32", self.hosts[to].ip);
            ip(&["-n", &self.hosts[from].ns, "route", op, "blackhole", &dest])?;
        }
        Ok(())
    }

    /// Drop all traffic between hosts `a` and `b` (both directions).
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        self.blackhole("add", a, b)
    }

    /// Restore traffic between `a` and `b`.
    pub fn restore(&self, a: usize, b: usize) -> Result<()> {
        self.blackhole("del", a, b)
    }

    /// Cut every link between the two sides.
    pub fn partition(&self, left: &[usize], right: &[usize]) -> Result<()> {
        for &a in left {
            for &b in right {
                self.cut(a, b)?;
            }
        }
        Ok(())
    }

    /// Restore every link between the two sides.
    pub fn heal(&self, left: &[usize], right: &[usize]) -> Result<()> {
        for &a in left {
            for &b in right {
                self.restore(a, b)?;
            }
        }
        Ok(())
    }

    /// The log of the agent on host `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.hosts[i].log).unwrap_or_default()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut child) = h.agent.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = ip(&["netns", "del", &h.ns]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns]);
    }
}
