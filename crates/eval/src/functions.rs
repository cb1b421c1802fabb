//! The function library of the original opsbro evaluator (reference §4), each with a doc string
//! listed by `opsbro evaluator list`, plus the Python operators opsbro expressions use
//! (`'fmt %s' % value`, true division).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Position};

use crate::engine::{EvalContext, FunctionDoc, from_json};

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

macro_rules! doc {
    ($group:literal, $name:literal, $proto:literal, $doc:literal) => {
        FunctionDoc {
            name: $name,
            prototype: $proto,
            doc: $doc,
            group: $group,
        }
    };
}

/// Every library function with its documentation.
pub const DOCS: &[FunctionDoc] = &[
    doc!("basic", "abs", "abs(x)", "Absolute value of a number."),
    doc!(
        "basic",
        "len",
        "len(x)",
        "Length of a string, list or dict."
    ),
    doc!("basic", "min", "min(list) | min(a, b)", "Smallest value."),
    doc!("basic", "max", "max(list) | max(a, b)", "Largest value."),
    doc!("basic", "sum", "sum(list)", "Sum of the numbers of a list."),
    doc!(
        "basic",
        "sorted",
        "sorted(list)",
        "A sorted copy of a list (numbers or strings)."
    ),
    doc!(
        "basic",
        "list",
        "list(x)",
        "A list from a list, a dict's values or a string's characters."
    ),
    doc!("basic", "set", "set(list)", "The list without duplicates."),
    doc!(
        "filesystem",
        "file_exists",
        "file_exists(path)",
        "True if the path exists (file, directory or other)."
    ),
    doc!(
        "filesystem",
        "is_dir",
        "is_dir(path)",
        "True if the path is a directory."
    ),
    doc!(
        "filesystem",
        "is_link",
        "is_link(path)",
        "True if the path is a symbolic link."
    ),
    doc!(
        "filesystem",
        "is_plain_file",
        "is_plain_file(path)",
        "True if the path is a regular file."
    ),
    doc!(
        "filesystem",
        "path_dirname",
        "path_dirname(path)",
        "The directory part of a path."
    ),
    doc!(
        "filesystem",
        "grep_file",
        "grep_file(string, path, regexp=False)",
        "True if a line of the file contains the string (or matches the regular expression)."
    ),
    doc!(
        "filesystem",
        "grep",
        "grep(string, path)",
        "Same as grep_file(string, path): the form the opsbro README uses."
    ),
    doc!(
        "filesystem",
        "parse_json_file",
        "parse_json_file(path)",
        "The content of a JSON file."
    ),
    doc!(
        "system",
        "get_env",
        "get_env(variable)",
        "An environment variable of the agent, or '' when unset."
    ),
    doc!(
        "system",
        "system_get_os",
        "system_get_os()",
        "The operating system: 'linux'."
    ),
    doc!(
        "system",
        "system_user_exists",
        "system_user_exists(username_or_uid)",
        "True if the user exists (from /etc/passwd)."
    ),
    doc!(
        "system",
        "system_group_exists",
        "system_group_exists(groupname_or_gid)",
        "True if the group exists (from /etc/group)."
    ),
    doc!(
        "gossip",
        "is_in_group",
        "is_in_group(group)",
        "True if this node is in the group."
    ),
    doc!(
        "gossip",
        "is_in_static_group",
        "is_in_static_group(group)",
        "Same as is_in_group (kept for opsbro packs)."
    ),
    doc!(
        "gossip",
        "gossip_count_nodes",
        "gossip_count_nodes(group='', state='')",
        "Number of nodes in the group (any when empty) and state (alive, suspect, dead, left; any when empty)."
    ),
    doc!(
        "gossip",
        "gossip_have_event_type",
        "gossip_have_event_type(event_type)",
        "True if a user event of that type was received in the last 5 minutes."
    ),
    doc!(
        "network",
        "check_tcp",
        "check_tcp(host, port, timeout=10)",
        "True if a TCP connection to host:port opens within the timeout (seconds, at most 10)."
    ),
    doc!(
        "network",
        "ip_is_in_range",
        "ip_is_in_range(ip, range)",
        "True if the IP address is in the CIDR range (e.g. '10.0.0.0/8')."
    ),
    doc!(
        "network",
        "host_to_ip",
        "host_to_ip(hostname)",
        "The first address the host name resolves to, or '' when it does not resolve."
    ),
    doc!(
        "package",
        "has_package",
        "has_package(name)",
        "True if the package is installed (dpkg)."
    ),
    doc!(
        "time",
        "now",
        "now()",
        "Current time in seconds since the Unix epoch."
    ),
    doc!(
        "hash",
        "hash",
        "hash(string, algorithm)",
        "Hex digest of the string; algorithm 'sha1'."
    ),
    doc!(
        "string",
        "string_upper",
        "string_upper(s)",
        "The string in upper case."
    ),
    doc!(
        "string",
        "string_lower",
        "string_lower(s)",
        "The string in lower case."
    ),
    doc!(
        "string",
        "string_split",
        "string_split(s, separator)",
        "List of the parts of the string."
    ),
    doc!(
        "string",
        "string_join",
        "string_join(list, separator)",
        "The list's items joined with the separator."
    ),
    doc!("random", "random", "random()", "A random float in [0, 1)."),
    doc!(
        "random",
        "randomint_between",
        "randomint_between(a, b)",
        "A random integer in [a, b]."
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
    if regexp {
        let re = regex_lite::Regex::new(needle)
            .map_err(|e| format!("bad regular expression `{needle}`: {e}"))?;
        Ok(text.lines().any(|l| re.is_match(l)))
    } else {
        Ok(text.lines().any(|l| l.contains(needle)))
    }
}

fn name_or_id_exists(file: &str, who: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    text.lines().any(|l| {
        let mut f = l.split(':');
        let name = f.next().unwrap_or("");
        let id = f.nth(1).unwrap_or("");
        !name.is_empty() && (name == who || id == who)
    })
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
                    _ => crate::engine::to_json(&v).to_string(),
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
    engine.register_fn(
        "ip_is_in_range",
        |ip: ImmutableString, r: ImmutableString| ip_in_range(&ip, &r),
    );
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
    engine.register_fn(
        "hash",
        |s: ImmutableString, algo: ImmutableString| -> Res<String> {
            use sha1::Digest;
            match algo.as_str() {
                "sha1" => Ok(sha1::Sha1::digest(s.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()),
                other => fail(format!("unsupported hash algorithm `{other}` (use sha1)")),
            }
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
}
