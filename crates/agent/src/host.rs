//! Facts read from the host: interface addresses, the host name, and this process's resource use.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use opsbro_api::ProcessStats;

/// Non-loopback addresses of the host's up interfaces, IPv4 first.
pub fn interface_addrs() -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .filter(|i| !i.is_loopback())
                .map(|i| i.ip())
                .filter(|ip| match ip {
                    IpAddr::V4(_) => true,
                    // Link-local v6 addresses need a scope id to be reachable: not advertisable.
                    IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                })
                .collect()
        })
        .unwrap_or_default();
    addrs.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    addrs.dedup();
    addrs
}

/// `sh -c SCRIPT opsbro ARGS...` with piped output, in a process group of its own (so that a
/// timeout can kill its children too, see [`ProcessGroupGuard`]), killed if dropped. Values
/// reach the script only as its positional arguments (see [`opsbro_checks::shell`]).
pub fn shell(command: &opsbro_checks::ShellCommand) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.args(command.argv())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    c
}

/// Descriptors kept for the agent itself (its stores, outgoing connections, plugins) beyond
/// what all its listeners may hold at once.
pub const FD_RESERVE: u64 = 256;
/// What the listeners may hold at once when nothing is scaled down: API 512, websocket 272,
/// cluster 64 + KV 256, DNS over TCP 128, graphite 256.
pub const LISTENER_FDS: u64 = 512 + 272 + 64 + 256 + 128 + 256;

/// The share of each listener's connection cap that fits the descriptor limit (1.0 when the
/// limit leaves `FD_RESERVE` free with every listener full).
static CAP_SCALE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Raise the soft limit of open files to the hard limit (the default soft limit, 1024, is below
/// what the listeners may hold), and scale the listeners' connection caps down if even the hard
/// limit cannot hold them all and still leave [`FD_RESERVE`] descriptors to the agent.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise the open-files limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let scale = if soft >= LISTENER_FDS + FD_RESERVE {
        1.0
    } else {
        let scale = soft.saturating_sub(FD_RESERVE) as f64 / LISTENER_FDS as f64;
        tracing::warn!(
            limit = soft,
            "the open-files limit is low: listener connection caps scaled to {:.0}%",
            scale * 100.0
        );
        scale
    };
    let _ = CAP_SCALE.set(scale);
}

/// A listener's connection cap once scaled to the descriptor limit (at least 8).
pub fn connection_cap(wanted: usize) -> usize {
    let scale = CAP_SCALE.get().copied().unwrap_or(1.0);
    ((wanted as f64 * scale) as usize).max(8)
}

/// Bind UDP and TCP on the same port (port 0: a free port for both), for listeners that
/// speak both (DNS, graphite).
pub async fn bind_udp_tcp(
    addr: std::net::SocketAddr,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..10 {
        let udp = tokio::net::UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match tokio::net::TcpListener::bind(std::net::SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // A free UDP port whose TCP twin is taken: try another (only with port 0).
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// Wall-clock time in milliseconds since the Unix epoch (for timestamps shown to people).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}

/// Broadcast addresses of the host's non-loopback IPv4 interfaces (for LAN detection).
pub fn broadcast_addrs() -> Vec<std::net::Ipv4Addr> {
    let mut out: Vec<std::net::Ipv4Addr> = if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .filter(|i| !i.is_loopback())
                .filter_map(|i| match i.addr {
                    if_addrs::IfAddr::V4(v4) => v4.broadcast,
                    if_addrs::IfAddr::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// The address announced to peers: the configured one, else the bind address when it is
/// specific, else the first interface address, else loopback (a single-host cluster still works).
pub fn choose_advertise(configured: Option<IpAddr>, bind: IpAddr, interfaces: &[IpAddr]) -> IpAddr {
    if let Some(ip) = configured {
        return ip;
    }
    if !bind.is_unspecified() {
        return bind;
    }
    interfaces
        .iter()
        .find(|ip| ip.is_ipv4() == bind.is_ipv4())
        .copied()
        .unwrap_or(match bind {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        })
}

/// Resident memory, CPU (average since `uptime` ago) and threads of this process. Zeroes when
/// /proc cannot be read (the info answer must not fail because of it).
pub fn process_stats(uptime: Duration) -> ProcessStats {
    let read = || -> procfs::ProcResult<ProcessStats> {
        let stat = procfs::process::Process::myself()?.stat()?;
        let ticks = procfs::ticks_per_second() as f64;
        let cpu_secs = (stat.utime + stat.stime) as f64 / ticks;
        let cpu_percent = if uptime.as_secs_f64() > 0.0 {
            cpu_secs / uptime.as_secs_f64() * 100.0
        } else {
            0.0
        };
        Ok(ProcessStats {
            rss_bytes: stat.rss * procfs::page_size(),
            cpu_percent: (cpu_percent * 100.0).round() / 100.0,
            cpu_seconds: cpu_secs,
            threads: u64::try_from(stat.num_threads).unwrap_or(0),
        })
    };
    read().unwrap_or(ProcessStats {
        rss_bytes: 0,
        cpu_percent: 0.0,
        cpu_seconds: 0.0,
        threads: 0,
    })
}

/// An error with its causes (reqwest's own message is often just "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Kills a process group (SIGKILL) when dropped, unless disarmed: a plugin or command whose
/// future is cancelled (timeout, agent shutdown) must not leave its children behind.
pub struct ProcessGroupGuard(Option<u32>);

impl ProcessGroupGuard {
    /// Guard the group led by `pid` (a child spawned with `process_group(0)`).
    pub fn new(pid: Option<u32>) -> Self {
        ProcessGroupGuard(pid)
    }

    /// Kill the group now.
    pub fn kill(&mut self) {
        if let Some(pgid) = self
            .0
            .take()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    /// The group ended normally: do nothing on drop.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_prefers_config_then_bind_then_interfaces() {
        let lan: IpAddr = "192.0.2.7".parse().expect("ip");
        let conf: IpAddr = "198.51.100.1".parse().expect("ip");
        let any: IpAddr = "0.0.0.0".parse().expect("ip");
        assert_eq!(choose_advertise(Some(conf), any, &[lan]), conf);
        assert_eq!(choose_advertise(None, lan, &[]), lan);
        assert_eq!(choose_advertise(None, any, &[lan]), lan);
        assert_eq!(
            choose_advertise(None, any, &[]),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn process_stats_are_read_from_proc() {
        let stats = process_stats(Duration::from_secs(1));
        assert!(stats.rss_bytes > 0);
        assert!(stats.threads >= 1);
    }
}
