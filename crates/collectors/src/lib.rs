//! Linux collectors: what the host is and how it is doing, read from /proc (procfs), /sys and a
//! few files, as nested JSON values addressed by expressions as `collector.<name>.<path>`
//! (`{{collector.cpustats.cpu_all.%idle}}`, `{collector.memory.phys_used}`).
//!
//! [`Collectors`] keeps the previous counters so that rates (cpu %, bytes/s, ops/s) come from
//! the deltas between two runs; a collector that cannot run here is `not-eligible`, one that
//! fails is `error` with the reason. The agent calls [`Collectors::collect`] on its interval
//! (from a blocking thread: this reads files).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Instant;

use procfs::{Current, CurrentSI};
use serde_json::{Map, Value, json};

/// Names of the collectors, in run order.
pub const NAMES: &[&str] = &[
    "system",
    "cpustats",
    "memory",
    "loadaverage",
    "diskusage",
    "networktraffic",
    "iostats",
    "kernelstats",
    "timezone",
    "interfaces",
];

/// Outcome of one collector run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Data collected.
    Ok(Value),
    /// This collector does not apply on this host (the reason).
    NotEligible(String),
    /// It failed (the reason).
    Error(String),
    /// An application's server could not be reached or refused (the reason): the collector is
    /// in error and its data says `{available: false, error: <reason>}` for checks to read.
    Unavailable(String),
}

/// recv bytes, sent bytes, recv packets, sent packets.
type NetCounters = (u64, u64, u64, u64);

/// Collector state between runs (previous counters for rates).
#[derive(Default)]
pub struct Collectors {
    prev_cpu: Option<([u64; 8], Vec<[u64; 8]>)>,
    prev_net: Option<(Instant, HashMap<String, NetCounters>)>,
    prev_disk: Option<(Instant, HashMap<String, procfs::DiskStat>)>,
    prev_kernel: Option<(Instant, u64, u64)>,
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Collectors {
    /// A fresh set (the first run of rate collectors reports averages since boot or zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// Run the collector `name`.
    pub fn collect(&mut self, name: &str) -> Outcome {
        let now = Instant::now();
        let result = match name {
            "system" => system(),
            "cpustats" => self.cpustats(),
            "memory" => memory(),
            "loadaverage" => loadaverage(),
            "diskusage" => diskusage(),
            "networktraffic" => self.networktraffic(now),
            "iostats" => self.iostats(now),
            "kernelstats" => self.kernelstats(now),
            "timezone" => timezone(),
            "interfaces" => interfaces(),
            other => return Outcome::Error(format!("unknown collector `{other}`")),
        };
        match result {
            Ok(Value::Object(m)) if m.is_empty() => {
                Outcome::NotEligible("nothing to report on this host".into())
            }
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Error(e),
        }
    }

    fn cpustats(&mut self) -> Result<Value, String> {
        let ks = procfs::KernelStats::current().map_err(|e| e.to_string())?;
        // The first run has no previous reading: percentages since boot.
        let (prev_total, prev_cpus) = self.prev_cpu.take().unwrap_or_default();
        let total = cpu_array(&ks.total);
        let cpus: Vec<[u64; 8]> = ks.cpu_time.iter().map(cpu_array).collect();
        let mut out = Map::new();
        let all = cpu_percent(&total, &prev_total);
        out.insert("cpu_all".into(), all.clone());
        out.insert("cpuall".into(), all);
        for (i, c) in cpus.iter().enumerate() {
            let prev = prev_cpus.get(i).copied().unwrap_or_default();
            out.insert(format!("cpu{i}"), cpu_percent(c, &prev));
        }
        self.prev_cpu = Some((total, cpus));
        Ok(Value::Object(out))
    }

    fn networktraffic(&mut self, now: Instant) -> Result<Value, String> {
        let devs = procfs::net::dev_status().map_err(|e| e.to_string())?;
        let prev = self.prev_net.take();
        let mut out = Map::new();
        let mut counters = HashMap::new();
        for (name, d) in devs {
            if name == "lo" {
                continue;
            }
            let c = (d.recv_bytes, d.sent_bytes, d.recv_packets, d.sent_packets);
            let rates = prev.as_ref().and_then(|(t, m)| {
                let secs = now.duration_since(*t).as_secs_f64();
                m.get(&name).filter(|_| secs > 0.0).map(|p| {
                    let r = |a: u64, b: u64| r2(a.saturating_sub(b) as f64 / secs);
                    (r(c.0, p.0), r(c.1, p.1), r(c.2, p.2), r(c.3, p.3))
                })
            });
            let (rb, tb, rp, tp) = rates.unwrap_or((0.0, 0.0, 0.0, 0.0));
            out.insert(
                name.clone(),
                json!({
                    "recv_bytes": c.0, "trans_bytes": c.1, "recv_packets": c.2, "trans_packets": c.3,
                    "recv_errs": d.recv_errs, "recv_drop": d.recv_drop,
                    "recv_bytes/s": rb, "trans_bytes/s": tb, "recv_packets/s": rp, "trans_packets/s": tp,
                }),
            );
            counters.insert(name, c);
        }
        self.prev_net = Some((now, counters));
        Ok(Value::Object(out))
    }

    fn iostats(&mut self, now: Instant) -> Result<Value, String> {
        let disks = procfs::diskstats().map_err(|e| e.to_string())?;
        let prev = self.prev_disk.take();
        let mut out = Map::new();
        let mut keep = HashMap::new();
        for d in disks {
            // Whole disks and their partitions; skip loop and ram devices.
            if d.name.starts_with("loop") || d.name.starts_with("ram") {
                continue;
            }
            let p = prev.as_ref().and_then(|(t, m)| {
                m.get(&d.name)
                    .map(|p| (now.duration_since(*t).as_secs_f64(), p))
            });
            let v = match p {
                Some((secs, p)) if secs > 0.0 => {
                    let r = |a: u64, b: u64| r2(a.saturating_sub(b) as f64 / secs);
                    json!({
                        "reads/s": r(d.reads, p.reads),
                        "reads_merged/s": r(d.merged, p.merged),
                        "writes/s": r(d.writes, p.writes),
                        "writes_merged/s": r(d.writes_merged, p.writes_merged),
                        "read_bytes/s": r(d.sectors_read * 512, p.sectors_read * 512),
                        "write_bytes/s": r(d.sectors_written * 512, p.sectors_written * 512),
                        "util%": r2((d.time_in_progress.saturating_sub(p.time_in_progress) as f64 / (secs * 1000.0) * 100.0).min(100.0)),
                    })
                }
                _ => json!({
                    "reads/s": 0.0, "reads_merged/s": 0.0, "writes/s": 0.0, "writes_merged/s": 0.0,
                    "read_bytes/s": 0.0, "write_bytes/s": 0.0, "util%": 0.0,
                }),
            };
            let mut v = v;
            if let Some(m) = v.as_object_mut() {
                m.insert("read_bytes".into(), json!(d.sectors_read * 512));
                m.insert("write_bytes".into(), json!(d.sectors_written * 512));
            }
            out.insert(d.name.clone(), v);
            keep.insert(d.name.clone(), d);
        }
        self.prev_disk = Some((now, keep));
        Ok(Value::Object(out))
    }

    fn kernelstats(&mut self, now: Instant) -> Result<Value, String> {
        let ks = procfs::KernelStats::current().map_err(|e| e.to_string())?;
        let rates = self.prev_kernel.map(|(t, ctxt, procs)| {
            let secs = now.duration_since(t).as_secs_f64().max(1e-9);
            (
                r2(ks.ctxt.saturating_sub(ctxt) as f64 / secs),
                r2(ks.processes.saturating_sub(procs) as f64 / secs),
            )
        });
        self.prev_kernel = Some((now, ks.ctxt, ks.processes));
        let (ctxt_rate, procs_rate) = rates.unwrap_or((0.0, 0.0));
        Ok(json!({
            "ctxt": ks.ctxt, "processes": ks.processes, "btime": ks.btime,
            "procs_running": ks.procs_running, "procs_blocked": ks.procs_blocked,
            "ctxt/s": ctxt_rate, "processes/s": procs_rate,
        }))
    }
}

/// user, nice, system, idle, iowait, irq, softirq, steal (jiffies).
fn cpu_array(c: &procfs::CpuTime) -> [u64; 8] {
    [
        c.user,
        c.nice,
        c.system,
        c.idle,
        c.iowait.unwrap_or(0),
        c.irq.unwrap_or(0),
        c.softirq.unwrap_or(0),
        c.steal.unwrap_or(0),
    ]
}

/// Percent of each state between two readings (all states sum to about 100).
fn cpu_percent(a: &[u64; 8], b: &[u64; 8]) -> Value {
    let d: Vec<f64> = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| x.saturating_sub(*y) as f64)
        .collect();
    let total: f64 = d.iter().sum();
    let pct = |i: usize| {
        if total > 0.0 {
            r2(d[i] / total * 100.0)
        } else {
            0.0
        }
    };
    json!({
        "%user": pct(0), "%nice": pct(1), "%system": pct(2), "%idle": pct(3),
        "%iowait": pct(4), "%irq": pct(5), "%softirq": pct(6), "%steal": pct(7),
    })
}

fn os_release() -> HashMap<String, String> {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim_matches('"').to_owned()))
        .collect()
}

fn system() -> Result<Value, String> {
    let os = os_release();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpuinfo = procfs::CpuInfo::current().map_err(|e| e.to_string())?;
    let model = cpuinfo.model_name(0).unwrap_or_default().to_owned();
    let uptime = procfs::Uptime::current().map(|u| u.uptime).unwrap_or(0.0);
    let version = os.get("version_id").cloned().unwrap_or_default();
    let mut parts = version.split('.');
    Ok(json!({
        "hostname": hostname,
        "os": {
            "name": "linux",
            "platform": "linux",
            "linux": {
                "distribution": os.get("id").cloned().unwrap_or_default(),
                "version": version,
                "id": os.get("version_codename").cloned().unwrap_or_default(),
                "major_version": parts.next().unwrap_or(""),
                "minor_version": parts.next().unwrap_or(""),
                "pretty_name": os.get("pretty_name").cloned().unwrap_or_default(),
            }
        },
        "kernel": kernel,
        "architecture": std::env::consts::ARCH,
        "cpu_count": cpuinfo.num_cores(),
        "cpu_model_name": model,
        "uptime": r2(uptime),
    }))
}

fn memory() -> Result<Value, String> {
    let m = procfs::Meminfo::current().map_err(|e| e.to_string())?;
    let kb = |b: u64| b / 1024;
    let sreclaimable = m.s_reclaimable.unwrap_or(0);
    let phys_free = m.mem_free + m.buffers + m.cached + sreclaimable;
    let phys_used = if m.mem_total > 0 {
        r2(100.0 - phys_free as f64 / m.mem_total as f64 * 100.0)
    } else {
        0.0
    };
    let swap_used = if m.swap_total > 0 {
        r2(100.0 - m.swap_free as f64 / m.swap_total as f64 * 100.0)
    } else {
        0.0
    };
    Ok(json!({
        "memtotal": kb(m.mem_total),
        "memfree": kb(m.mem_free),
        "memavailable": m.mem_available.map(kb),
        "buffers": kb(m.buffers),
        "cached": kb(m.cached),
        "sreclaimable": kb(sreclaimable),
        "swaptotal": kb(m.swap_total),
        "swapfree": kb(m.swap_free),
        "shmem": m.shmem.map(kb),
        "phys_total": kb(m.mem_total),
        "phys_free": kb(phys_free),
        "phys_used": phys_used,
        "swap_free": kb(m.swap_free),
        "swap_used": swap_used,
    }))
}

fn loadaverage() -> Result<Value, String> {
    let l = procfs::LoadAverage::current().map_err(|e| e.to_string())?;
    Ok(json!({
        "load1": r2(f64::from(l.one)),
        "load5": r2(f64::from(l.five)),
        "load15": r2(f64::from(l.fifteen)),
    }))
}

/// Pseudo and memory file systems are not disks.
const SKIP_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "mqueue",
    "hugetlbfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "ramfs",
    "rpc_pipefs",
    "squashfs",
    "efivarfs",
    "selinuxfs",
];

fn diskusage() -> Result<Value, String> {
    let mounts = procfs::mounts().map_err(|e| e.to_string())?;
    let mut out = Map::new();
    for m in mounts {
        if SKIP_FS.contains(&m.fs_vfstype.as_str()) || out.contains_key(&m.fs_file) {
            continue;
        }
        let Ok(st) = rustix::fs::statvfs(m.fs_file.as_str()) else {
            continue;
        };
        let frsize = st.f_frsize.max(1);
        let total = st.f_blocks * frsize;
        if total == 0 {
            continue;
        }
        let free = st.f_bavail * frsize;
        let used = total.saturating_sub(st.f_bfree * frsize);
        let pct_used = r2(used as f64 / (used + free).max(1) as f64 * 100.0);
        out.insert(
            m.fs_file.clone(),
            json!({
                "total": total / (1024 * 1024),
                "used": used / (1024 * 1024),
                "free": free / (1024 * 1024),
                "pct_used": pct_used,
                "fstype": m.fs_vfstype,
            }),
        );
    }
    Ok(Value::Object(out))
}

fn timezone() -> Result<Value, String> {
    let tz = std::fs::read_to_string("/etc/timezone")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_link("/etc/localtime").ok().and_then(|p| {
                let s = p.to_string_lossy().into_owned();
                s.split_once("zoneinfo/").map(|(_, z)| z.to_owned())
            })
        })
        .unwrap_or_else(|| "UTC".to_owned());
    Ok(json!({ "timezone": tz }))
}

fn interfaces() -> Result<Value, String> {
    let ifs = if_addrs::get_if_addrs().map_err(|e| e.to_string())?;
    let mut out = Map::new();
    for i in ifs {
        let entry = out
            .entry(i.name.clone())
            .or_insert_with(|| json!({ "addresses": [], "loopback": i.is_loopback() }));
        if let Some(list) = entry.get_mut("addresses").and_then(Value::as_array_mut) {
            list.push(json!(i.ip().to_string()));
        }
    }
    Ok(Value::Object(out))
}

/// Look `path` (`cpustats.cpu_all.%idle`) up in collected data by collector name.
pub fn lookup<'a>(data: &'a HashMap<String, Value>, path: &str) -> Option<&'a Value> {
    let (name, rest) = path.split_once('.').unwrap_or((path, ""));
    lookup_in(data.get(name)?, rest)
}

/// Look a dotted `path` up inside `value` (empty path: the value itself). Keys may contain dots
/// (`/var/lib`): the longest key that exists wins at each level.
pub fn lookup_in<'a>(value: &'a Value, rest: &str) -> Option<&'a Value> {
    let mut v = value;
    if rest.is_empty() {
        return Some(v);
    }
    // Keys may contain dots (mount points, `recv_bytes/s` do not, but `/var/lib` does not
    // either); try the longest key first at each level.
    let parts: Vec<&str> = rest.split('.').collect();
    let mut i = 0;
    while i < parts.len() {
        let mut found = None;
        for j in (i + 1..=parts.len()).rev() {
            let key = parts[i..j].join(".");
            if let Some(next) = v.get(&key) {
                found = Some((next, j));
                break;
            }
        }
        let (next, j) = found?;
        v = next;
        i = j;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_collector_runs_here() {
        let mut c = Collectors::new();
        for name in NAMES {
            match c.collect(name) {
                Outcome::Ok(v) => assert!(v.is_object(), "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn memory_total_is_memtotal() {
        let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
        let kb: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("MemTotal");
        let Outcome::Ok(v) = Collectors::new().collect("memory") else {
            panic!("memory")
        };
        assert_eq!(v["memtotal"], json!(kb));
        assert_eq!(v["phys_total"], json!(kb));
    }

    #[test]
    fn cpu_percentages_sum_to_about_100() {
        let mut c = Collectors::new();
        c.collect("cpustats");
        // Burn a little CPU so the second reading has a delta.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 300 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let Outcome::Ok(v) = c.collect("cpustats") else {
            panic!("cpu")
        };
        let all = &v["cpu_all"];
        let sum: f64 = [
            "%user", "%nice", "%system", "%idle", "%iowait", "%irq", "%softirq", "%steal",
        ]
        .iter()
        .map(|k| all[*k].as_f64().expect("number"))
        .sum();
        assert!((sum - 100.0).abs() < 1.0, "sum {sum}: {all}");
        assert_eq!(v["cpuall"], v["cpu_all"], "cpuall is an alias");
        assert!(v.get("cpu0").is_some());
    }

    #[test]
    fn load1_matches_proc_loadavg() {
        let Outcome::Ok(v) = Collectors::new().collect("loadaverage") else {
            panic!("load")
        };
        let text = std::fs::read_to_string("/proc/loadavg").expect("loadavg");
        let first: f64 = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("load1");
        let got = v["load1"].as_f64().expect("number");
        assert!((got - first).abs() < 0.5, "{got} vs {first}");
    }

    #[test]
    fn lookup_walks_nested_keys() {
        let mut data = HashMap::new();
        data.insert("cpustats".to_owned(), json!({"cpu_all": {"%idle": 97.5}}));
        data.insert("diskusage".to_owned(), json!({"/": {"pct_used": 12.0}}));
        assert_eq!(lookup(&data, "cpustats.cpu_all.%idle"), Some(&json!(97.5)));
        assert_eq!(lookup(&data, "diskusage./.pct_used"), Some(&json!(12.0)));
        assert_eq!(lookup(&data, "cpustats.nope"), None);
        assert_eq!(lookup(&data, "nothing.x"), None);
    }
}
