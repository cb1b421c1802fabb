//! The function library of the original opsbro evaluator (reference §4), each with a doc string
//! listed by `opsbro evaluator list`, plus the Python operators opsbro expressions use
//! (`'fmt %s' % value`, true division).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Position};

use crate::context::EvalContext;
use crate::convert::from_json;
use crate::signature::{FunctionDoc, Param};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Largest file the file functions read.
const MAX_FILE: u64 = 16 * 1024 * 1024;
/// Longest `check_tcp` timeout.
const MAX_TCP_TIMEOUT: f64 = 10.0;

fn fail<T>(message: impl Into<String>) -> Res<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    )))
}

/// `Some(default)` for a parameter that has one, `None` for a required one.
macro_rules! default_of {
    () => {
        None
    };
    ($d:literal) => {
        Some($d)
    };
}

/// A [`FunctionDoc`] whose prototype text is built from the parameter list, so that what
/// `opsbro evaluator list` shows and what keyword arguments accept cannot disagree:
/// `doc!("gossip", gossip_count_nodes(group = "''", state = "''"), "...")` shows
/// `gossip_count_nodes(group='', state='')`.
macro_rules! doc {
    // Overloaded builtins show a hand-written call shape.
    ($group:literal, $name:ident($($p:ident),*) shown $proto:literal, $doc:literal) => {
        FunctionDoc {
            name: stringify!($name),
            prototype: $proto,
            params: &[$(Param { name: stringify!($p), default: None }),*],
            doc: $doc,
            group: $group,
        }
    };
    ($group:literal, $name:ident(), $doc:literal) => {
        FunctionDoc {
            name: stringify!($name),
            prototype: concat!(stringify!($name), "()"),
            params: &[],
            doc: $doc,
            group: $group,
        }
    };
    ($group:literal, $name:ident($p0:ident $(= $d0:literal)? $(, $p:ident $(= $d:literal)?)*), $doc:literal) => {
        FunctionDoc {
            name: stringify!($name),
            prototype: concat!(
                stringify!($name), "(", stringify!($p0), $("=", $d0,)?
                $(", ", stringify!($p), $("=", $d,)?)* ")"
            ),
            params: &[
                Param { name: stringify!($p0), default: default_of!($($d0)?) },
                $(Param { name: stringify!($p), default: default_of!($($d)?) }),*
            ],
            doc: $doc,
            group: $group,
        }
    };
}

/// Every library function with its parameters (names and defaults of the original) and its
/// documentation. The front reads the parameters to turn keyword arguments into positions.
pub const DOCS: &[FunctionDoc] = &[
    // basic
    doc!("basic", abs(x), "Absolute value of a number."),
    doc!("basic", len(x), "Length of a string, list or dict."),
    doc!("basic", min(list) shown "min(list) | min(a, b)", "Smallest value."),
    doc!("basic", max(list) shown "max(list) | max(a, b)", "Largest value."),
    doc!("basic", sum(list), "Sum of the numbers of a list."),
    doc!(
        "basic",
        sorted(list),
        "A sorted copy of a list (numbers or strings)."
    ),
    doc!(
        "basic",
        list(x),
        "A list from a list, a dict's values or a string's characters."
    ),
    doc!("basic", set(list), "The list without duplicates."),
    // filesystem
    doc!(
        "filesystem",
        file_exists(path),
        "True if the path exists (file, directory or other)."
    ),
    doc!(
        "filesystem",
        is_dir(path),
        "True if the path is a directory."
    ),
    doc!(
        "filesystem",
        is_link(path),
        "True if the path is a symbolic link."
    ),
    doc!(
        "filesystem",
        path_dirname(path),
        "The directory part of a path."
    ),
    doc!(
        "filesystem",
        grep_file(string, path, regexp = "False"),
        "True if a line of the file contains the string, ignoring case (with regexp=True: matches the regular expression, ignoring case). A missing file contains nothing."
    ),
    doc!(
        "filesystem",
        grep(string, path, regexp = "False"),
        "Same as grep_file: the form the opsbro README uses."
    ),
    // system
    doc!(
        "system",
        get_env(variable),
        "An environment variable of the agent, or '' when unset."
    ),
    doc!("system", system_get_os(), "The operating system: 'linux'."),
    doc!(
        "system",
        process_is_running(name),
        "True if a process of this name runs on the host (its command name, or the file name of its program: 'redis-server', 'mariadbd', 'nginx')."
    ),
    doc!(
        "system",
        system_is_python_2(),
        "False: kept for opsbro packs (the original answered for its Python interpreter; this agent behaves as the Python 3 one)."
    ),
    doc!(
        "system",
        system_is_python_3(),
        "True: kept for opsbro packs (the original answered for its Python interpreter; this agent behaves as the Python 3 one)."
    ),
    doc!(
        "system",
        system_user_exists(username_or_uid),
        "True if the user exists (name or uid, from /etc/passwd)."
    ),
    doc!(
        "system",
        system_userid_from_username(username),
        "The uid of the user (from /etc/passwd), or None when there is no such user."
    ),
    doc!(
        "system",
        system_username_from_userid(userid),
        "The name of the user with this uid (from /etc/passwd), or None when there is none."
    ),
    doc!(
        "system",
        system_group_exists(groupname_or_gid),
        "True if the group exists (name or gid, from /etc/group)."
    ),
    doc!(
        "system",
        system_groupid_from_groupname(groupname),
        "The gid of the group (from /etc/group), or None when there is no such group."
    ),
    doc!(
        "system",
        system_groupname_from_groupid(groupid),
        "The name of the group with this gid (from /etc/group), or None when there is none."
    ),
    doc!(
        "system",
        colorize(s, color),
        "The string in a 256-colour ANSI colour picked on the lolcat rainbow by color (an int, e.g. 55), reset at the end."
    ),
    doc!(
        "system",
        is_plain_file(path),
        "True if the path is a regular file."
    ),
    doc!(
        "system",
        parse_json_file(path),
        "The content of a JSON file."
    ),
    // gossip
    doc!(
        "gossip",
        is_in_group(group),
        "True if this node is in the group."
    ),
    doc!(
        "gossip",
        is_in_static_group(group),
        "Same as is_in_group (kept for opsbro packs)."
    ),
    doc!(
        "gossip",
        is_in_defined_group(group),
        "Same as is_in_group (kept for opsbro packs)."
    ),
    doc!(
        "gossip",
        gossip_get_zone(node_uuid = "''"),
        "The zone of the node with this uuid ('' when unknown); this node's zone when the uuid is empty."
    ),
    doc!(
        "gossip",
        gossip_count_nodes(group = "''", state = "''"),
        "Number of nodes in the group (any when empty) and state (alive, suspect, dead, left; any when empty)."
    ),
    doc!(
        "gossip",
        gossip_have_event_type(event_type),
        "True if a user event of that type was received in the last 5 minutes."
    ),
    doc!(
        "gossip",
        is_leader(election),
        "True if this node is the leader of the election (an `election:` object; Raft): detectors can add a `leader` group with it."
    ),
    doc!(
        "gossip",
        compliance_get_state_of_rule(rule_name),
        "The state of the compliance rule (COMPLIANT, FIXED, ERROR, ...); UNKNOWN for a rule that does not exist."
    ),
    // kv
    doc!(
        "kv",
        kv_get(key, default = "''"),
        "The value of the key in the replicated KV store, or the default when the key does not exist (or does not answer in time)."
    ),
    // network
    doc!(
        "network",
        check_tcp(host, port, timeout = "10"),
        "True if a TCP connection to host:port opens within the timeout (seconds, at most 10)."
    ),
    doc!(
        "network",
        port_is_listening(port),
        "True if a process of this host listens on this TCP port (any address, IPv4 or IPv6), from /proc/net/tcp and tcp6."
    ),
    doc!(
        "network",
        ip_is_in_range(ip, range),
        "True if the IP address is in the CIDR range (e.g. '10.0.0.0/8')."
    ),
    doc!(
        "network",
        ip_to_host(ip),
        "The host name of the IP address (from /etc/hosts, then a reverse DNS query to the resolv.conf name servers, 3 seconds at most), or '' when it has none."
    ),
    doc!(
        "network",
        host_to_ip(hname),
        "The first address the host name resolves to, or '' when it does not resolve."
    ),
    // package, hosting, time
    doc!(
        "package",
        has_package(package),
        "True if the package is installed (dpkg)."
    ),
    doc!(
        "hosting",
        hosting_driver_is_active(driver_name),
        "True if this hosting driver is the active one (alibaba, azure, digitalocean, docker-container, ec2, google-cloud, openstack, scaleway, synology, on-premise)."
    ),
    doc!(
        "time",
        now(),
        "Current time in seconds since the Unix epoch."
    ),
    // hash
    doc!(
        "hash",
        hash(string, algorithm),
        "Hex digest of the string; algorithm md5, sha1, sha224, sha256, sha384 or sha512."
    ),
    doc!(
        "hash",
        file_hash_match(path, algorithm, hash_match),
        "True if the hex digest of the file (md5, sha1, sha224, sha256, sha384 or sha512) is hash_match."
    ),
    // string
    doc!("string", string_upper(s), "The string in upper case."),
    doc!("string", string_lower(s), "The string in lower case."),
    doc!(
        "string",
        string_split(s, ch),
        "List of the parts of the string between the separators ch."
    ),
    doc!(
        "string",
        string_join(list, ch),
        "The list's items joined with the separator ch."
    ),
    // random
    doc!("random", random(), "A random float in [0, 1)."),
    doc!(
        "random",
        randomint_between(int_start, int_end),
        "A random integer in [int_start, int_end]."
    ),
    doc!(
        "random",
        shuffle(list),
        "A copy of the list in random order."
    ),
    // display
    doc!(
        "display",
        get_donut(value),
        "A 6-line text donut chart of a percentage (0-100) with ANSI colours, or None outside 0-100."
    ),
    doc!(
        "display",
        get_horizontal_bar(value, width = "80"),
        "A text bar of width characters filled to value (0-1, or a percentage above 1), with ANSI colours."
    ),
];

fn read_bounded(path: &str) -> Res<String> {
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"));
    let f = match f {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut text = String::new();
    if let Err(e) = f.take(MAX_FILE).read_to_string(&mut text) {
        return fail(format!("cannot read {path}: {e}"));
    }
    Ok(text)
}

fn grep_file(needle: &str, path: &str, regexp: bool) -> Res<bool> {
    let Ok(text) = read_bounded(path) else {
        // A missing file simply does not contain the string (detectors probe files freely).
        return Ok(false);
    };
    grep_text(needle, &text, regexp)
}

/// The original's matching: `re.search(string, line, re.IGNORECASE)` for a regular expression,
/// `string.lower() in line.lower()` otherwise, line by line.
fn grep_text(needle: &str, text: &str, regexp: bool) -> Res<bool> {
    if regexp {
        let re = regex_lite::RegexBuilder::new(needle)
            .case_insensitive(true)
            .build()
            .map_err(|e| format!("bad regular expression `{needle}`: {e}"))?;
        Ok(text.lines().any(|l| re.is_match(l)))
    } else {
        let needle = needle.to_lowercase();
        Ok(text.lines().any(|l| l.to_lowercase().contains(&needle)))
    }
}

/// `(name, id)` of each entry of an `/etc/passwd` or `/etc/group` style text (`name:x:id:...`).
fn id_entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?;
        (!name.is_empty() && !name.starts_with('#')).then_some((name, id.trim()))
    })
}

fn name_or_id_exists(file: &str, who: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    id_entries(&text).any(|(name, id)| name == who || id == who)
}

/// The numeric id of `name` in an `/etc/passwd` or `/etc/group` file, as a rhai int or `()`.
fn id_of_name(file: &str, name: &str) -> Dynamic {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Dynamic::UNIT;
    };
    id_entries(&text)
        .find(|(n, _)| *n == name)
        .and_then(|(_, id)| id.parse::<i64>().ok())
        .map_or(Dynamic::UNIT, Dynamic::from)
}

/// The name of the entry with numeric id `id` (an int or a numeric string), as a rhai string
/// or `()`.
fn name_of_id(file: &str, id: &Dynamic) -> Res<Dynamic> {
    let id = match (id.as_int(), id.clone().into_immutable_string()) {
        (Ok(i), _) => i.to_string(),
        (_, Ok(s)) => s.trim().to_owned(),
        _ => return fail(format!("an id must be an integer, not {}", id.type_name())),
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(Dynamic::UNIT);
    };
    Ok(id_entries(&text)
        .find(|(_, i)| *i == id)
        .map_or(Dynamic::UNIT, |(n, _)| Dynamic::from(n.to_owned())))
}

/// Hex digest of `data` with one of the original's algorithms.
fn hex_digest(algorithm: &str, data: &[u8]) -> Res<String> {
    use sha2::Digest;
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    Ok(match algorithm {
        "md5" => hex(&md5::Md5::digest(data)),
        "sha1" => hex(&sha1::Sha1::digest(data)),
        "sha224" => hex(&sha2::Sha224::digest(data)),
        "sha256" => hex(&sha2::Sha256::digest(data)),
        "sha384" => hex(&sha2::Sha384::digest(data)),
        "sha512" => hex(&sha2::Sha512::digest(data)),
        other => {
            return fail(format!(
                "hash algorithm `{other}` is unknown (use md5, sha1, sha224, sha256, sha384 or sha512)"
            ));
        }
    })
}

fn file_hash_match(path: &str, algorithm: &str, expected: &str) -> Res<bool> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut data = Vec::new();
    file.take(MAX_FILE)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(hex_digest(algorithm, &data)?.eq_ignore_ascii_case(expected.trim()))
}

/// Widest `get_horizontal_bar`.
const MAX_BAR_WIDTH: i64 = 1000;

/// The 256-colour code the original's lolcat gives to position `offset` of its rainbow
/// (`LolCat.rainbow(0.1, offset)` then `LolCat.ansi`, 256-colour mode).
fn lolcat_code(offset: f64) -> u32 {
    use std::f64::consts::PI;
    let offset = if offset.is_finite() { offset } else { 0.0 };
    let rgb = [
        (0.1 * offset).sin() * 127.0 + 128.0,
        (0.1 * offset + 2.0 * PI / 3.0).sin() * 127.0 + 128.0,
        (0.1 * offset + 4.0 * PI / 3.0).sin() * 127.0 + 128.0,
    ];
    // Grey when the three components fall under the same step of 42.5 first.
    let mut gray = false;
    let mut sep = 2.5;
    while sep < 300.0 {
        if rgb.iter().any(|c| *c < sep) {
            gray = rgb.iter().all(|c| *c < sep);
            break;
        }
        sep += 42.5;
    }
    if gray {
        232 + (rgb.iter().sum::<f64>() / 33.0) as u32
    } else {
        16 + rgb
            .iter()
            .zip([36u32, 6, 1])
            .map(|(c, m)| (6.0 * c / 256.0) as u32 * m)
            .sum::<u32>()
    }
}

/// Remove the ANSI colour sequences the original's lolcat strips (`ESC [ n (;n){0,2} m|K`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let b = after.as_bytes();
        let mut k = 0;
        let mut groups = 0;
        let mut ok = false;
        while groups < 3 {
            let digits = b[k..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                break;
            }
            k += digits;
            groups += 1;
            match b.get(k) {
                Some(b';') if groups < 3 => k += 1,
                Some(b'm' | b'|' | b'K') => {
                    ok = true;
                    k += 1;
                    break;
                }
                _ => break,
            }
        }
        if ok {
            rest = &after[k..];
        } else {
            out.push_str("\x1b[");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The original's `lolcat.get_line(s, color, spread=None)`: every character in the colour of
/// `color` on the rainbow, then a reset.
fn lolcat_line(s: &str, color: f64) -> String {
    let s = strip_ansi(s);
    let mut out = String::with_capacity(s.len() * 12 + 4);
    for (i, c) in s.chars().enumerate() {
        let code = lolcat_code(color + i as f64 / 99999.0);
        out.push_str(&format!("\x1b[38;5;{code}m{c}"));
    }
    out.push_str("\x1b[0m");
    out
}

/// The original's donut (`cli_display._donut_100`): the value goes where `{}` is.
const DONUT: [&str; 6] = [
    " ⢀⣤⣶⣿⣿⣿⣷⣦⣄",
    "⢰⣿⣿⣿⠿⠛⠻⢿⣿⣿⣷",
    "⣿⣿⣿⠃ {}⢻⣿⣿⡇",
    "⢿⣿⣿⣆ % ⢀⣾⣿⣿⠇",
    "⠘⢿⣿⣿⣿⣶⣾⣿⣿⣿⠟",
    "  ⠙⠿⣿⣿⣿⡿⠟⠁",
];
/// Rainbow colour of each character of the donut (0: none).
const DONUT_COLORS: [&[u8]; 6] = [
    &[0, 85, 86, 87, 89, 39, 41, 43, 45, 45, 0],
    &[81, 82, 83, 84, 88, 40, 42, 44, 46, 47, 47],
    &[80, 79, 78, 77, 0, 0, 0, 0, 100, 48, 49, 50, 51, 51],
    &[76, 75, 73, 69, 0, 0, 0, 52, 53, 54, 55, 55],
    &[74, 72, 70, 67, 65, 63, 61, 58, 57, 56, 56],
    &[0, 0, 71, 68, 66, 64, 62, 60, 59, 59, 0, 0],
];
/// The percentage from which each character of the donut is coloured.
const DONUT_THRESHOLDS: [&[u8]; 6] = [
    &[0, 86, 92, 96, 100, 1, 5, 9, 13, 17, 0],
    &[80, 82, 88, 94, 97, 3, 7, 11, 15, 18, 19],
    &[76, 78, 84, 90, 0, 0, 0, 0, 20, 20, 21, 22, 23, 25],
    &[75, 74, 72, 70, 0, 0, 0, 35, 33, 31, 29, 27],
    &[68, 66, 64, 56, 52, 49, 47, 45, 41, 39, 37],
    &[0, 0, 60, 58, 54, 50, 48, 46, 44, 43, 0, 0],
];

/// The original's `get_donut(value)`: None outside 0..=100. Characters above the value stay
/// uncoloured (the original greys them only on a terminal; the agent has none).
fn donut(value: f64) -> Option<String> {
    let value = if value > 0.0 && value < 1.0 {
        0
    } else if (100.0..101.0).contains(&value) {
        100
    } else if value.is_finite() {
        value.trunc().clamp(-1.0, 101.0) as i64
    } else {
        return None;
    };
    if !(0..=100).contains(&value) {
        return None;
    }
    let lines: Vec<String> = DONUT
        .iter()
        .zip(DONUT_COLORS.iter().zip(DONUT_THRESHOLDS))
        .map(|(tpl, (colors, thresholds))| {
            let line = tpl.replace("{}", &format!("{value:<3}"));
            let mut out = String::new();
            for (idx, c) in line.chars().enumerate() {
                let color = colors.get(idx).copied().unwrap_or(0);
                let from = thresholds.get(idx).copied().unwrap_or(0);
                if color == 0 || i64::from(from) > value {
                    out.push(c);
                } else {
                    out.push_str(&lolcat_line(&c.to_string(), f64::from(color)));
                }
            }
            out
        })
        .collect();
    Some(lines.join("\n"))
}

/// The original's `get_horizontal_bar(value, width)`: `█` filled to `value` (0-1, or a
/// percentage when above 1), coloured from citron to violet, then `▒` up to `width`.
fn horizontal_bar(value: f64, width: i64) -> String {
    let value = if value > 1.0 && value <= 100.0 {
        value / 100.0
    } else {
        value
    };
    let width = width.clamp(0, MAX_BAR_WIDTH);
    // `as` saturates and maps NaN to 0; a bar never overflows its width.
    let fill = ((width as f64 * value) as i64).clamp(0, width);
    let mut bar = String::new();
    for i in 0..fill {
        let pct = 1.0 - i as f64 / width as f64;
        // colorpalette COLOR_PACK_CITRON_TO_VIOLET: 0 (citron) .. 28 (violet).
        let color = (pct * 28.0).trunc();
        bar.push_str(&lolcat_line("█", color));
    }
    bar.push_str(&"▒".repeat((width - fill) as usize));
    bar
}

/// Most name servers `ip_to_host` asks.
const MAX_NAME_SERVERS: usize = 3;
/// How long `ip_to_host` waits for each name server.
const REVERSE_DNS_TIMEOUT: Duration = Duration::from_secs(1);

/// The original's `ip_to_host(ip)`: /etc/hosts, then a PTR query to the resolv.conf servers;
/// `''` when the address has no name (or is not an address).
fn ip_to_host(ip: &str) -> String {
    let Ok(addr) = ip.trim().parse::<IpAddr>() else {
        return String::new();
    };
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if let Some(name) = name_in_hosts(&hosts, addr) {
        return name;
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    reverse_dns(addr, &name_servers(&resolv), REVERSE_DNS_TIMEOUT).unwrap_or_default()
}

/// The first name of `ip` in an /etc/hosts text.
fn name_in_hosts(text: &str, ip: IpAddr) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let addr: IpAddr = fields.next()?.parse().ok()?;
        (addr == ip).then(|| fields.next().map(str::to_owned))?
    })
}

/// The `nameserver` addresses of a resolv.conf text (port 53), at most [`MAX_NAME_SERVERS`].
fn name_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = f.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .take(MAX_NAME_SERVERS)
        .collect()
}

/// Ask `servers` in turn for the PTR name of `ip`, `timeout` each; the first answer wins (a
/// server that says the name does not exist ends the search).
fn reverse_dns(ip: IpAddr, servers: &[SocketAddr], timeout: Duration) -> Option<String> {
    use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    for server in servers {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from(ip), RecordType::PTR));
        let Ok(packet) = query.to_vec() else {
            return None;
        };
        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(socket) = std::net::UdpSocket::bind(local) else {
            continue;
        };
        if socket.send_to(&packet, server).is_err() {
            continue;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                break;
            };
            let Ok(answer) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if from != *server
                || answer.metadata.id != query.metadata.id
                || answer.metadata.message_type != MessageType::Response
            {
                continue;
            }
            if answer.metadata.response_code == ResponseCode::NXDomain {
                return None;
            }
            let name = answer.answers.iter().find_map(|r| match &r.data {
                RData::PTR(ptr) => Some(ptr.0.to_utf8()),
                _ => None,
            });
            if let Some(name) = name {
                return Some(name.trim_end_matches('.').to_owned());
            }
            break;
        }
    }
    None
}

fn has_package(name: &str) -> bool {
    let Ok(text) = std::fs::read_to_string("/var/lib/dpkg/status") else {
        return false;
    };
    text.split("\n\n").any(|stanza| {
        let mut pkg = false;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(p) = line.strip_prefix("Package: ") {
                pkg = p.trim() == name;
            }
            if let Some(s) = line.strip_prefix("Status: ") {
                installed = s.trim().ends_with(" installed") && s.starts_with("install");
            }
        }
        pkg && installed
    })
}

fn ip_in_range(ip: &str, range: &str) -> Res<bool> {
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("`{ip}` is not an IP address"))?;
    let (net, bits) = range
        .split_once('/')
        .unwrap_or((range, if range.contains(':') { "128" } else { "32" }));
    let net: IpAddr = net
        .trim()
        .parse()
        .map_err(|_| format!("`{range}` is not a CIDR range"))?;
    let bits: u32 = bits
        .trim()
        .parse()
        .map_err(|_| format!("`{range}` is not a CIDR range"))?;
    Ok(match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => false,
        _ => return fail(format!("`{range}`: prefix length too long")),
    })
}

/// Whether `/proc/net/tcp`-formatted `table` has a socket in LISTEN state on `port`.
fn listens_on(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or_default();
        let state = fields.nth(1).unwrap_or_default();
        state == "0A"
            && local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

fn port_is_listening(port: i64) -> Res<bool> {
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    Ok(["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|t| listens_on(&t, port))))
}

/// Whether a process of `/proc`-like `root` is `name`: its `comm`, or the file name of the first
/// word of its command line (servers that rewrite their title: `nginx: master process`).
fn process_is_running(root: &std::path::Path, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let Ok(dir) = std::fs::read_dir(root) else {
        return false;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == name {
                return true;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let first = String::from_utf8_lossy(first);
            let word = first.split_whitespace().next().unwrap_or_default();
            let base = word.rsplit('/').next().unwrap_or_default();
            base.trim_end_matches(':') == name
        })
}

fn check_tcp(host: &str, port: i64, timeout: f64) -> Res<bool> {
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    let timeout = Duration::from_secs_f64(timeout.clamp(0.01, MAX_TCP_TIMEOUT));
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(_) => return Ok(false),
    };
    Ok(addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, timeout).is_ok()))
}

fn as_f64(v: &Dynamic) -> Option<f64> {
    v.clone()
        .try_cast::<i64>()
        .map(|i| i as f64)
        .or_else(|| v.clone().try_cast::<f64>())
}

fn extreme(list: Array, want_max: bool) -> Res<Dynamic> {
    let mut best: Option<(f64, Dynamic)> = None;
    for v in list {
        let Some(n) = as_f64(&v) else {
            return fail("min/max need a list of numbers");
        };
        let better = match &best {
            None => true,
            Some((b, _)) => (want_max && n > *b) || (!want_max && n < *b),
        };
        if better {
            best = Some((n, v));
        }
    }
    best.map(|(_, v)| v)
        .map_or_else(|| fail("min/max of an empty list"), Ok)
}

/// Python's `%` string formatting: `%s %d %i %f %.2f %x %r %%`, one value or a list of values.
pub fn py_format(fmt: &str, args: &Dynamic) -> Res<String> {
    let values: Vec<Dynamic> = match args.clone().try_cast::<Array>() {
        Some(a) => a,
        None => vec![args.clone()],
    };
    let mut values = values.into_iter();
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() || matches!(n, '.' | '-' | '+' | ' ' | '0') {
                spec.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let Some(kind) = chars.next() else {
            return fail("incomplete format: `%` at the end");
        };
        if kind == '%' {
            out.push('%');
            continue;
        }
        let Some(v) = values.next() else {
            return fail("not enough arguments for format string");
        };
        let precision = spec
            .split_once('.')
            .and_then(|(_, p)| p.parse::<usize>().ok());
        let width = spec.split('.').next().and_then(|w| {
            w.trim_start_matches(['-', '+', ' ', '0'])
                .parse::<usize>()
                .ok()
        });
        let text = match kind {
            's' | 'r' => match v.clone().into_immutable_string() {
                Ok(s) if kind == 's' => s.to_string(),
                Ok(s) => format!("'{s}'"),
                Err(_) => match as_f64(&v) {
                    Some(f) if v.is_float() => format_float_repr(f),
                    _ => crate::convert::to_json(&v).to_string(),
                },
            },
            'd' | 'i' => match as_f64(&v) {
                Some(f) => format!("{}", f.trunc() as i64),
                None => return fail(format!("%{kind} needs a number, got {}", v.type_name())),
            },
            'f' | 'F' => match as_f64(&v) {
                Some(f) => format!("{:.*}", precision.unwrap_or(6), f),
                None => return fail(format!("%f needs a number, got {}", v.type_name())),
            },
            'x' => match v.clone().try_cast::<i64>() {
                Some(i) => format!("{i:x}"),
                None => return fail("%x needs an integer"),
            },
            other => return fail(format!("unsupported format character `{other}`")),
        };
        match width {
            Some(w) if spec.starts_with('-') => out.push_str(&format!("{text:<w$}")),
            Some(w) if spec.starts_with('0') && kind != 's' => {
                out.push_str(&format!("{text:0>w$}"))
            }
            Some(w) => out.push_str(&format!("{text:>w$}")),
            None => out.push_str(&text),
        }
    }
    if values.next().is_some() {
        return fail("not all arguments converted during string formatting");
    }
    Ok(out)
}

fn format_float_repr(f: f64) -> String {
    let s = format!("{f}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// Register the operators and the library on `engine`.
pub fn register(engine: &mut Engine, ctx: Arc<dyn EvalContext>) {
    // Python operators.
    engine.register_fn("%", |fmt: ImmutableString, args: Dynamic| {
        py_format(&fmt, &args)
    });
    engine.register_fn("/", |a: i64, b: i64| -> Res<Dynamic> {
        if b == 0 {
            return fail("division by zero");
        }
        // True division, but an exact quotient stays an integer (100/10 is 10, 7/2 is 3.5).
        Ok(if a % b == 0 {
            Dynamic::from(a / b)
        } else {
            Dynamic::from(a as f64 / b as f64)
        })
    });

    // basic
    engine.register_fn("len", |s: ImmutableString| s.chars().count() as i64);
    engine.register_fn("len", |a: Array| a.len() as i64);
    engine.register_fn("len", |m: Map| m.len() as i64);
    engine.register_fn("min", |a: Array| extreme(a, false));
    engine.register_fn("max", |a: Array| extreme(a, true));
    engine.register_fn("sum", |a: Array| -> Res<Dynamic> {
        let mut int: i64 = 0;
        let mut float: Option<f64> = None;
        for v in a {
            if let Some(i) = v.clone().try_cast::<i64>() {
                int = int.saturating_add(i);
            } else if let Some(f) = v.clone().try_cast::<f64>() {
                float = Some(float.unwrap_or(0.0) + f);
            } else {
                return fail("sum needs a list of numbers");
            }
        }
        Ok(match float {
            Some(f) => Dynamic::from(f + int as f64),
            None => Dynamic::from(int),
        })
    });
    engine.register_fn("sorted", |mut a: Array| -> Res<Array> {
        let all_numbers = a.iter().all(|v| as_f64(v).is_some());
        if all_numbers {
            a.sort_by(|x, y| {
                as_f64(x)
                    .unwrap_or(0.0)
                    .total_cmp(&as_f64(y).unwrap_or(0.0))
            });
        } else if a.iter().all(|v| v.is_string()) {
            a.sort_by_key(|v| v.to_string());
        } else {
            return fail("sorted needs a list of numbers or of strings");
        }
        Ok(a)
    });
    engine.register_fn("list", |a: Array| a);
    engine.register_fn("list", |m: Map| m.into_values().collect::<Array>());
    engine.register_fn("list", |s: ImmutableString| {
        s.chars()
            .map(|c| Dynamic::from(c.to_string()))
            .collect::<Array>()
    });
    engine.register_fn("set", |a: Array| {
        let mut out: Array = Vec::new();
        for v in a {
            if !out
                .iter()
                .any(|o| o.to_string() == v.to_string() && o.type_name() == v.type_name())
            {
                out.push(v);
            }
        }
        out
    });

    // filesystem
    engine.register_fn("file_exists", |p: ImmutableString| {
        Path::new(p.as_str()).exists()
    });
    engine.register_fn("is_dir", |p: ImmutableString| {
        Path::new(p.as_str()).is_dir()
    });
    engine.register_fn("is_link", |p: ImmutableString| {
        Path::new(p.as_str()).is_symlink()
    });
    engine.register_fn("is_plain_file", |p: ImmutableString| {
        Path::new(p.as_str()).is_file()
    });
    engine.register_fn("path_dirname", |p: ImmutableString| {
        Path::new(p.as_str())
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    });
    engine.register_fn("grep_file", |s: ImmutableString, p: ImmutableString| {
        grep_file(&s, &p, false)
    });
    engine.register_fn(
        "grep_file",
        |s: ImmutableString, p: ImmutableString, re: bool| grep_file(&s, &p, re),
    );
    engine.register_fn("grep", |s: ImmutableString, p: ImmutableString| {
        grep_file(&s, &p, false)
    });
    engine.register_fn(
        "grep",
        |s: ImmutableString, p: ImmutableString, re: bool| grep_file(&s, &p, re),
    );
    engine.register_fn("parse_json_file", |p: ImmutableString| -> Res<Dynamic> {
        let text = read_bounded(&p)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{p} is not JSON: {e}"))?;
        Ok(from_json(&v))
    });

    // system
    engine.register_fn("get_env", |n: ImmutableString| {
        std::env::var(n.as_str()).unwrap_or_default()
    });
    engine.register_fn("system_get_os", || "linux".to_owned());
    engine.register_fn("system_user_exists", |u: ImmutableString| {
        name_or_id_exists("/etc/passwd", &u)
    });
    engine.register_fn("system_user_exists", |u: i64| {
        name_or_id_exists("/etc/passwd", &u.to_string())
    });
    engine.register_fn("system_group_exists", |g: ImmutableString| {
        name_or_id_exists("/etc/group", &g)
    });
    engine.register_fn("system_group_exists", |g: i64| {
        name_or_id_exists("/etc/group", &g.to_string())
    });
    engine.register_fn("system_userid_from_username", |u: ImmutableString| {
        id_of_name("/etc/passwd", &u)
    });
    engine.register_fn("system_username_from_userid", |id: Dynamic| {
        name_of_id("/etc/passwd", &id)
    });
    engine.register_fn("system_groupid_from_groupname", |g: ImmutableString| {
        id_of_name("/etc/group", &g)
    });
    engine.register_fn("system_groupname_from_groupid", |id: Dynamic| {
        name_of_id("/etc/group", &id)
    });
    engine.register_fn("system_is_python_2", || false);
    engine.register_fn("system_is_python_3", || true);
    engine.register_fn("colorize", |s: Dynamic, color: Dynamic| -> Res<String> {
        let Some(color) = as_f64(&color) else {
            return fail(format!(
                "colorize needs a number as color, not {}",
                color.type_name()
            ));
        };
        // The original colours `str(s)`.
        let text = match s.clone().into_immutable_string() {
            Ok(s) => s.to_string(),
            Err(_) => crate::convert::to_json(&s).to_string(),
        };
        Ok(lolcat_line(&text, color))
    });

    // gossip
    let c = ctx.clone();
    engine.register_fn("is_in_group", move |g: ImmutableString| {
        c.groups().iter().any(|x| x == g.as_str())
    });
    let c = ctx.clone();
    engine.register_fn("is_in_static_group", move |g: ImmutableString| {
        c.groups().iter().any(|x| x == g.as_str())
    });
    let c = ctx.clone();
    engine.register_fn("is_in_defined_group", move |g: ImmutableString| {
        c.groups().iter().any(|x| x == g.as_str())
    });
    let c = ctx.clone();
    engine.register_fn("gossip_get_zone", move || c.zone(""));
    let c = ctx.clone();
    engine.register_fn("gossip_get_zone", move |u: ImmutableString| c.zone(&u));
    let c = ctx.clone();
    engine.register_fn("is_leader", move |e: ImmutableString| c.is_leader(&e));
    let c = ctx.clone();
    engine.register_fn("compliance_get_state_of_rule", move |r: ImmutableString| {
        c.compliance_rule_state(&r)
    });
    let c = ctx.clone();
    engine.register_fn("hosting_driver_is_active", move |d: ImmutableString| {
        c.hosting_driver_active(&d)
    });
    let c = ctx.clone();
    engine.register_fn("kv_get", move |k: ImmutableString| {
        c.kv_get(&k).unwrap_or_default()
    });
    let c = ctx.clone();
    engine.register_fn("kv_get", move |k: ImmutableString, default: Dynamic| {
        c.kv_get(&k).map_or(default, Dynamic::from)
    });
    let c = ctx.clone();
    engine.register_fn("gossip_count_nodes", move || c.count_nodes("", ""));
    let c = ctx.clone();
    engine.register_fn("gossip_count_nodes", move |g: ImmutableString| {
        c.count_nodes(&g, "")
    });
    let c = ctx.clone();
    engine.register_fn(
        "gossip_count_nodes",
        move |g: ImmutableString, s: ImmutableString| c.count_nodes(&g, &s),
    );
    let c = ctx;
    engine.register_fn("gossip_have_event_type", move |t: ImmutableString| {
        c.has_event_type(&t)
    });

    // network
    engine.register_fn("check_tcp", |h: ImmutableString, p: i64| {
        check_tcp(&h, p, MAX_TCP_TIMEOUT)
    });
    engine.register_fn("check_tcp", |h: ImmutableString, p: i64, t: i64| {
        check_tcp(&h, p, t as f64)
    });
    engine.register_fn("check_tcp", |h: ImmutableString, p: i64, t: f64| {
        check_tcp(&h, p, t)
    });
    engine.register_fn("port_is_listening", port_is_listening);
    engine.register_fn("process_is_running", |n: ImmutableString| {
        process_is_running(std::path::Path::new("/proc"), &n)
    });
    engine.register_fn(
        "ip_is_in_range",
        |ip: ImmutableString, r: ImmutableString| ip_in_range(&ip, &r),
    );
    engine.register_fn("ip_to_host", |ip: ImmutableString| ip_to_host(&ip));
    engine.register_fn("host_to_ip", |h: ImmutableString| {
        (h.as_str(), 0)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    });

    // package, time, hash, string, random
    engine.register_fn("has_package", |p: ImmutableString| has_package(&p));
    engine.register_fn("now", || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    });
    engine.register_fn("hash", |s: ImmutableString, algo: ImmutableString| {
        hex_digest(&algo, s.as_bytes())
    });
    engine.register_fn(
        "file_hash_match",
        |p: ImmutableString, algo: ImmutableString, expected: ImmutableString| {
            file_hash_match(&p, &algo, &expected)
        },
    );
    engine.register_fn("string_upper", |s: ImmutableString| s.to_uppercase());
    engine.register_fn("string_lower", |s: ImmutableString| s.to_lowercase());
    engine.register_fn(
        "string_split",
        |s: ImmutableString, sep: ImmutableString| -> Res<Array> {
            if sep.is_empty() {
                return fail("string_split needs a non-empty separator");
            }
            Ok(s.split(sep.as_str())
                .map(|p| Dynamic::from(p.to_owned()))
                .collect())
        },
    );
    engine.register_fn("string_join", |a: Array, sep: ImmutableString| {
        a.iter()
            .map(|v| {
                v.clone()
                    .into_immutable_string()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(sep.as_str())
    });
    engine.register_fn("random", rand::random::<f64>);
    engine.register_fn("randomint_between", |a: i64, b: i64| -> Res<i64> {
        if a > b {
            return fail("randomint_between needs a <= b");
        }
        Ok(rand::random_range(a..=b))
    });
    engine.register_fn("shuffle", |mut a: Array| {
        use rand::seq::SliceRandom;
        a.shuffle(&mut rand::rng());
        a
    });

    // display
    engine.register_fn("get_donut", |v: Dynamic| -> Res<Dynamic> {
        let Some(v) = as_f64(&v) else {
            return fail(format!("get_donut needs a number, not {}", v.type_name()));
        };
        Ok(donut(v).map_or(Dynamic::UNIT, Dynamic::from))
    });
    engine.register_fn("get_horizontal_bar", |v: Dynamic| -> Res<String> {
        bar_of(&v, 80)
    });
    engine.register_fn(
        "get_horizontal_bar",
        |v: Dynamic, width: Dynamic| -> Res<String> {
            let Some(width) = as_f64(&width) else {
                return fail(format!("width must be a number, not {}", width.type_name()));
            };
            bar_of(&v, width as i64)
        },
    );
}

fn bar_of(value: &Dynamic, width: i64) -> Res<String> {
    let Some(v) = as_f64(value) else {
        return fail(format!(
            "get_horizontal_bar needs a number, not {}",
            value.type_name()
        ));
    };
    Ok(horizontal_bar(v, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(s: &str) -> String {
        hex_digest("sha256", s.as_bytes()).expect("sha256")
    }

    #[test]
    fn prototypes_are_built_from_the_parameters() {
        let find = |n: &str| DOCS.iter().find(|d| d.name == n).expect(n);
        assert_eq!(
            find("gossip_count_nodes").prototype,
            "gossip_count_nodes(group='', state='')"
        );
        assert_eq!(
            find("grep_file").prototype,
            "grep_file(string, path, regexp=False)"
        );
        assert_eq!(find("now").prototype, "now()");
        assert_eq!(find("min").prototype, "min(list) | min(a, b)");
        let p = find("check_tcp").params;
        assert_eq!(p.len(), 3);
        assert_eq!((p[2].name, p[2].default), ("timeout", Some("10")));
        assert_eq!(p[0].default, None);
        // One entry per name.
        for d in DOCS {
            assert_eq!(
                DOCS.iter().filter(|o| o.name == d.name).count(),
                1,
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn grep_text_ignores_case_in_both_modes() {
        let text = "CentOS Linux release 7.9.2009 (Core)\n";
        assert!(grep_text("centos", text, false).expect("plain"));
        assert!(grep_text("LINUX RELEASE", text, false).expect("plain"));
        assert!(grep_text(r"^centos.*7\.9", text, true).expect("regexp"));
        assert!(!grep_text("debian", text, false).expect("plain"));
        assert!(!grep_text("^linux", text, true).expect("regexp"));
        assert!(
            grep_text("(", text, true).is_err(),
            "a bad regexp is an error"
        );
    }

    #[test]
    fn passwd_and_group_entries() {
        let text = "root:x:0:0:root:/root:/bin/bash\n# comment\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nbroken\n";
        let e: Vec<_> = id_entries(text).collect();
        assert_eq!(e, vec![("root", "0"), ("www-data", "33")]);
    }

    #[test]
    fn hash_algorithms_of_the_original() {
        let abc = |a: &str| hex_digest(a, b"abc").expect(a);
        assert_eq!(abc("md5"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(abc("sha1"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            abc("sha224"),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        assert_eq!(
            abc("sha256"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            abc("sha384"),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            abc("sha512"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        assert!(hex_digest("crc32", b"abc").is_err());
    }

    #[test]
    fn lolcat_colours_match_the_original() {
        // Values computed with the original's LolCat.rainbow(0.1, x) + ansi() in 256 colours.
        for (offset, code) in [
            (0.0, 154),
            (14.0, 203),
            (28.0, 128),
            (55.0, 48),
            (100.0, 63),
            (-3.0, 118),
            (7.5, 214),
        ] {
            assert_eq!(lolcat_code(offset), code, "offset {offset}");
        }
        assert_eq!(
            lolcat_code(f64::NAN),
            lolcat_code(0.0),
            "no endless loop on NaN"
        );
        assert_eq!(
            lolcat_line("ab", 55.0),
            "\x1b[38;5;48ma\x1b[38;5;48mb\x1b[0m"
        );
        assert_eq!(
            lolcat_line("\x1b[31ma\x1b[0m", 55.0),
            "\x1b[38;5;48ma\x1b[0m"
        );
        assert_eq!(strip_ansi("x\x1b[1;2;3my\x1b[zz"), "xy\x1b[zz");
    }

    #[test]
    fn donut_and_bar_match_the_original_byte_for_byte() {
        // Digests of the original's DonutPrinter/HBarPrinter output (agent mode: no terminal,
        // so `sprintf` colours nothing), computed with a port of cli_display.py.
        let d14 = donut(14.0).expect("in range");
        assert_eq!(d14.lines().count(), 6);
        assert_eq!(d14.matches("\x1b[38;5;").count(), 7);
        assert_eq!(
            sha256(&d14),
            "49062bb1a0ee1822da7d3e4648b268085f99cda15e7cdda344a46f9b06b89555"
        );
        assert_eq!(
            sha256(&donut(100.0).expect("in range")),
            "869f24e7442e9ac4aa1dbc640d8a5b09f24884a608f5bcd8af3bc86e452dd672"
        );
        assert_eq!(donut(0.5), donut(0.0));
        assert_eq!(donut(100.7), donut(100.0));
        assert_eq!(donut(101.0), None);
        assert_eq!(donut(-1.0), None);
        assert_eq!(donut(f64::NAN), None);

        assert_eq!(
            sha256(&horizontal_bar(53.0, 80)),
            "ee77bc207c749a0e9665cdec2050f075e12821679f42e82e2e67ddf288f42a34"
        );
        assert_eq!(
            horizontal_bar(0.5, 4),
            "\x1b[38;5;128m█\x1b[0m\x1b[38;5;199m█\x1b[0m▒▒"
        );
        assert_eq!(horizontal_bar(-2.0, 3), "▒▒▒");
        assert_eq!(strip_ansi(&horizontal_bar(500.0, 3)), "███");
        assert_eq!(horizontal_bar(0.5, -4), "");
        assert_eq!(
            strip_ansi(&horizontal_bar(1.0, i64::MAX)).chars().count(),
            MAX_BAR_WIDTH as usize
        );
    }

    #[test]
    fn listening_ports_and_running_processes_are_read_from_proc() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000\n   1: 0100007F:0050 0100007F:9C40 01 00000000:00000000\n";
        assert!(listens_on(table, 6379));
        // Port 80 is an established connection, not a listener.
        assert!(!listens_on(table, 80));
        assert!(port_is_listening(70_000).is_err());

        let proc = tempfile::tempdir().expect("tempdir");
        for (pid, comm, cmdline) in [
            ("12", "redis-server\n", "redis-server 127.0.0.1:6379\0"),
            ("13", "nginx\n", "nginx: master process /usr/sbin/nginx\0"),
            (
                "14",
                "rabbitmq-server\n",
                "/usr/lib/rabbitmq/bin/rabbitmq-server-long\0",
            ),
            ("self", "x\n", "sshd\0"),
        ] {
            let d = proc.path().join(pid);
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::write(d.join("comm"), comm).expect("comm");
            std::fs::write(d.join("cmdline"), cmdline).expect("cmdline");
        }
        for name in [
            "redis-server",
            "nginx",
            "rabbitmq-server",
            "rabbitmq-server-long",
        ] {
            assert!(process_is_running(proc.path(), name), "{name}");
        }
        for name in ["redis", "sshd", ""] {
            assert!(!process_is_running(proc.path(), name), "{name}");
        }
    }

    #[test]
    fn hosts_and_resolv_conf_parsing() {
        let hosts = "# hosts\n127.0.0.1 localhost loopback\n10.0.0.5\tdb1.example db1 # db\n::1 ip6-localhost\n";
        let v4 = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            name_in_hosts(hosts, v4("10.0.0.5")).as_deref(),
            Some("db1.example")
        );
        assert_eq!(
            name_in_hosts(hosts, v4("::1")).as_deref(),
            Some("ip6-localhost")
        );
        assert_eq!(name_in_hosts(hosts, v4("10.0.0.6")), None);
        let resolv = "search example\nnameserver 10.0.0.53\nnameserver ::1\nnameserver bogus\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n";
        assert_eq!(
            name_servers(resolv),
            vec![
                "10.0.0.53:53".parse::<SocketAddr>().expect("addr"),
                "[::1]:53".parse().expect("addr"),
                "1.1.1.1:53".parse().expect("addr"),
            ]
        );
    }

    /// A one-shot DNS server on loopback answering a PTR query with `answer` (None: NXDOMAIN).
    fn fake_dns(answer: Option<&'static str>) -> (SocketAddr, std::thread::JoinHandle<()>) {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::rdata::PTR;
        use hickory_proto::rr::{Name, RData, Record};
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let (n, from) = socket.recv_from(&mut buf).expect("query");
            let query = Message::from_vec(&buf[..n]).expect("a DNS query");
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.queries = query.queries.clone();
            match answer {
                Some(name) => {
                    let q = query.queries.first().expect("one question");
                    let target = Name::from_ascii(name).expect("name");
                    reply.answers.push(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::PTR(PTR(target)),
                    ));
                }
                None => reply.metadata.response_code = ResponseCode::NXDomain,
            }
            let bytes = reply.to_vec().expect("encode");
            socket.send_to(&bytes, from).expect("reply");
        });
        (addr, handle)
    }

    #[test]
    fn reverse_dns_asks_the_name_server_for_the_ptr_record() {
        let (server, h) = fake_dns(Some("host-7.example.org."));
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(
            reverse_dns(ip, &[server], Duration::from_secs(5)).as_deref(),
            Some("host-7.example.org")
        );
        h.join().expect("server");
        let (server, h) = fake_dns(None);
        assert_eq!(reverse_dns(ip, &[server], Duration::from_secs(5)), None);
        h.join().expect("server");
        // Nobody answers: None within the timeout.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let started = std::time::Instant::now();
        assert_eq!(
            reverse_dns(
                ip,
                &[silent.local_addr().expect("addr")],
                Duration::from_millis(200)
            ),
            None
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
