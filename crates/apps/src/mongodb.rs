//! MongoDB: `hello` (the member's role in its replica set) and `serverStatus` (connections,
//! opcounters with rates, memory, network, uptime, version; `repl` on a replica set member), and
//! on a secondary `replSetGetStatus` for the replication lag behind the primary.
//!
//! The wire protocol is written here: a command is one OP_MSG (opcode 2013: a 16-byte header,
//! flags, one body section holding a BSON document), and so is its reply. The official driver
//! crate brings server selection, pools, sessions, TLS and DNS resolvers — far more than three
//! commands on a local socket need; documents are encoded and decoded by the `bson` crate.
//! Authentication is not done (no SCRAM): the server must let this host run `serverStatus`
//! without logging in (the default of a server without `security.authorization`), and one that
//! requires it is reported with its own error message.
//!
//! Parameters (`packs/mongodb/parameters/parameters.yml`): `host`, `port`, `timeout`.

use std::collections::HashMap;
use std::time::Instant;

use bson::{Bson, Document, doc};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{AppCollector, CollectFuture, Params, Rates, param_port, param_str};

/// OP_MSG's opcode.
pub const OP_MSG: i32 = 2013;
/// The legacy reply opcode of servers older than 3.6 (which do not speak OP_MSG).
const OP_REPLY: i32 = 1;
/// The largest reply read (a serverStatus is ~50 KB; a server's messages are at most 48 MB).
pub const MAX_REPLY: usize = 8 << 20;
/// OP_MSG flag: a CRC-32C follows the sections.
const CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag: more messages follow without a request (exhaust cursors; never asked for here).
const MORE_TO_COME: u32 = 1 << 1;

/// Counters that get a `<name>/s` rate, per section of serverStatus.
const COUNTERS: &[(&str, &[&str])] = &[
    (
        "opcounters",
        &["insert", "query", "update", "delete", "getmore", "command"],
    ),
    (
        "opcountersRepl",
        &["insert", "query", "update", "delete", "getmore", "command"],
    ),
    ("network", &["bytesIn", "bytesOut", "numRequests"]),
    ("connections", &["totalCreated", "rejected"]),
    (
        "asserts",
        &["regular", "warning", "msg", "user", "rollovers"],
    ),
];

/// serverStatus sections kept whole (numbers and text of their first level; the rest of a
/// serverStatus — wiredTiger, metrics, ... — is hundreds of values).
const SECTIONS: &[&str] = &[
    "connections",
    "opcounters",
    "opcountersRepl",
    "mem",
    "network",
    "asserts",
    "extra_info",
];

/// The MongoDB collector.
#[derive(Debug, Default)]
pub struct Mongodb {
    rates: HashMap<&'static str, Rates>,
    next_request: i32,
}

impl AppCollector for Mongodb {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn collect<'a>(&'a mut self, params: &'a Params) -> CollectFuture<'a> {
        Box::pin(async move {
            let host = param_str(params, "host", "127.0.0.1");
            let port = param_port(params, "port", 27017)?;
            let timeout = crate::timeout_of(params);
            let first_id = self.next_request;
            let run = async {
                let mut stream = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| CommandError::Unreachable(e.to_string()))?;
                let mut conn = Connection {
                    stream: &mut stream,
                    next_request: first_id,
                };
                let hello = match conn.command(doc! {"hello": 1, "$db": "admin"}).await {
                    Ok(d) => d,
                    // Servers before 4.4.2 know it by its old name.
                    Err(CommandError::Refused(_)) => {
                        conn.command(doc! {"isMaster": 1, "$db": "admin"}).await?
                    }
                    Err(e) => return Err(e),
                };
                let status = conn
                    .command(doc! {"serverStatus": 1, "$db": "admin"})
                    .await?;
                let secondary = hello.get_bool("secondary").unwrap_or(false);
                let repl = if secondary {
                    conn.command(doc! {"replSetGetStatus": 1, "$db": "admin"})
                        .await
                        .ok()
                } else {
                    None
                };
                Ok::<_, CommandError>((hello, status, repl, conn.next_request))
            };
            let (hello, status, repl, next) = tokio::time::timeout(timeout, run)
                .await
                .map_err(|_| {
                    format!(
                        "mongodb at {host}:{port} did not answer within {} s",
                        timeout.as_secs_f64()
                    )
                })?
                .map_err(|e| match e {
                    CommandError::Unreachable(e) => {
                        format!("cannot reach mongodb at {host}:{port}: {e}")
                    }
                    other => format!("mongodb at {host}:{port}: {other}"),
                })?;
            self.next_request = next;
            let mut out = build(&hello, &status, repl.as_ref());
            let now = Instant::now();
            for (section, counters) in COUNTERS {
                if let Some(Value::Object(m)) = out.get_mut(*section) {
                    self.rates
                        .entry(section)
                        .or_default()
                        .apply(now, m, counters);
                }
            }
            Ok(Value::Object(out))
        })
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum CommandError {
    /// No connection to the server.
    Unreachable(String),
    /// The connection or the bytes on it (the text says what).
    Protocol(String),
    /// The server answered `ok: 0` (its `errmsg` and code).
    Refused(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Unreachable(e) | CommandError::Protocol(e) | CommandError::Refused(e) => {
                f.write_str(e)
            }
        }
    }
}

impl From<CommandError> for String {
    fn from(e: CommandError) -> String {
        e.to_string()
    }
}

/// One connection to a server: commands one after the other.
pub struct Connection<'s, S> {
    /// The socket.
    pub stream: &'s mut S,
    /// The id of the next request.
    pub next_request: i32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    /// Send `body` (a command with its `$db`) and read its reply's body; `ok: 0` is
    /// [`CommandError::Refused`].
    pub async fn command(&mut self, body: Document) -> Result<Document, CommandError> {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        let name = body.keys().next().cloned().unwrap_or_default();
        let msg = encode_op_msg(id, &body).map_err(CommandError::Protocol)?;
        let io = |e: std::io::Error| CommandError::Protocol(format!("`{name}`: {e}"));
        self.stream.write_all(&msg).await.map_err(io)?;
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header).await.map_err(io)?;
        let length = le_i32(&header, 0).unwrap_or(0);
        let length = usize::try_from(length)
            .ok()
            .filter(|l| (16..=MAX_REPLY).contains(l))
            .ok_or_else(|| {
                CommandError::Protocol(format!(
                    "`{name}`: reply length {length} is out of bounds (16..={MAX_REPLY})"
                ))
            })?;
        let mut reply = header.to_vec();
        reply.resize(length, 0);
        self.stream.read_exact(&mut reply[16..]).await.map_err(io)?;
        let (response_to, doc) =
            decode_op_msg(&reply).map_err(|e| CommandError::Protocol(format!("`{name}`: {e}")))?;
        if response_to != id {
            return Err(CommandError::Protocol(format!(
                "`{name}`: the reply answers request {response_to}, not {id}"
            )));
        }
        let ok = match doc.get("ok") {
            Some(Bson::Double(v)) => *v == 1.0,
            Some(Bson::Int32(v)) => *v == 1,
            Some(Bson::Int64(v)) => *v == 1,
            Some(Bson::Boolean(v)) => *v,
            _ => false,
        };
        if !ok {
            let msg = doc.get_str("errmsg").unwrap_or("no errmsg");
            let code = match doc.get("code") {
                Some(Bson::Int32(c)) => i64::from(*c),
                Some(Bson::Int64(c)) => *c,
                _ => 0,
            };
            let hint = if code == 13 {
                " (this collector does not log in: let this host read serverStatus without \
                 authentication)"
            } else {
                ""
            };
            return Err(CommandError::Refused(format!(
                "`{name}` refused: {msg} (code {code}){hint}"
            )));
        }
        Ok(doc)
    }
}

fn le_i32(b: &[u8], at: usize) -> Option<i32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(i32::from_le_bytes(bytes))
}

/// An OP_MSG with `body` as its one section (kind 0), no flags.
pub fn encode_op_msg(request_id: i32, body: &Document) -> Result<Vec<u8>, String> {
    let doc = body
        .to_vec()
        .map_err(|e| format!("cannot encode the command: {e}"))?;
    let length = i32::try_from(16 + 4 + 1 + doc.len()).map_err(|_| "command too big")?;
    let mut msg = Vec::with_capacity(21 + doc.len());
    for v in [length, request_id, 0, OP_MSG] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.push(0);
    msg.extend_from_slice(&doc);
    Ok(msg)
}

/// A whole OP_MSG (header included) → (the request it answers, its body document).
pub fn decode_op_msg(msg: &[u8]) -> Result<(i32, Document), String> {
    let length = le_i32(msg, 0).ok_or("message shorter than its header")?;
    if usize::try_from(length).ok() != Some(msg.len()) {
        return Err(format!(
            "message length {length} does not match the {} bytes read",
            msg.len()
        ));
    }
    let response_to = le_i32(msg, 8).ok_or("message shorter than its header")?;
    match le_i32(msg, 12) {
        Some(OP_MSG) => {}
        Some(OP_REPLY) => {
            return Err("the server answered with OP_REPLY: MongoDB 3.6 or later is needed".into());
        }
        other => return Err(format!("unexpected opcode {other:?}")),
    }
    let flags = le_i32(msg, 16).ok_or("message without flags")? as u32;
    // Bits 0-15 are required to be understood: only these two are defined.
    if flags & 0xffff & !(CHECKSUM_PRESENT | MORE_TO_COME) != 0 {
        return Err(format!("unknown required flags {flags:#x}"));
    }
    if flags & MORE_TO_COME != 0 {
        return Err("the server streams replies (moreToCome) that were not asked for".into());
    }
    let end = if flags & CHECKSUM_PRESENT != 0 {
        msg.len().checked_sub(4).ok_or("message too short")?
    } else {
        msg.len()
    };
    let mut at = 20;
    let mut body = None;
    while at < end {
        let kind = msg[at];
        at += 1;
        let size = le_i32(msg, at).ok_or("truncated section")?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s >= 5 && at + s <= end)
            .ok_or_else(|| format!("section size {size} out of bounds"))?;
        match kind {
            0 => {
                if body.is_some() {
                    return Err("two body sections".into());
                }
                let doc = Document::from_reader(&msg[at..at + size])
                    .map_err(|e| format!("bad BSON body: {e}"))?;
                body = Some(doc);
            }
            // A document sequence (size, identifier, documents): not used in replies we ask for.
            1 => {}
            k => return Err(format!("unknown section kind {k}")),
        }
        at += size;
    }
    Ok((response_to, body.ok_or("no body section")?))
}

/// A BSON value as JSON: numbers stay numbers (non-finite doubles become null), dates are Unix
/// milliseconds, timestamps their seconds, object ids their hex, the rest their text.
pub fn to_json(v: &Bson) -> Value {
    match v {
        Bson::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => Value::from(s.as_str()),
        Bson::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Bson::Document(d) => Value::Object(doc_to_json(d)),
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Timestamp(t) => Value::from(t.time),
        Bson::DateTime(d) => Value::from(d.timestamp_millis()),
        Bson::ObjectId(o) => Value::from(o.to_hex()),
        Bson::Decimal128(d) => Value::from(d.to_string()),
        Bson::Binary(b) => Value::from(format!("<{} bytes>", b.bytes.len())),
        other => Value::from(other.to_string()),
    }
}

fn doc_to_json(d: &Document) -> Map<String, Value> {
    d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()
}

/// The first level of a section: its numbers, booleans and text (nested objects left out).
fn flat_section(d: &Document) -> Map<String, Value> {
    d.iter()
        .filter(|(_, v)| !matches!(v, Bson::Document(_) | Bson::Array(_)))
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect()
}

fn number(v: Option<&Bson>) -> Option<f64> {
    match v? {
        Bson::Double(f) => Some(*f),
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        _ => None,
    }
}

/// `hello`, `serverStatus` and (on a secondary) `replSetGetStatus` as one object:
/// `available`, `version`, `host`, `process`, `uptime`, `storage_engine`, the sections of
/// [`SECTIONS`], `connections_used_pct`, `queued_operations`, `role` (`standalone`, `primary`,
/// `secondary`, `arbiter`, `other`), and on a replica set member `replica_set`, `primary`,
/// `hosts`, and on a secondary `replication_lag_seconds`.
pub fn build(hello: &Document, status: &Document, repl: Option<&Document>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("available".into(), Value::Bool(true));
    for (key, from) in [
        ("version", "version"),
        ("host", "host"),
        ("process", "process"),
        ("uptime", "uptime"),
        ("pid", "pid"),
    ] {
        if let Some(v) = status.get(from) {
            out.insert(key.into(), to_json(v));
        }
    }
    if let Ok(engine) = status.get_document("storageEngine")
        && let Ok(name) = engine.get_str("name")
    {
        out.insert("storage_engine".into(), Value::from(name));
    }
    for section in SECTIONS {
        if let Ok(d) = status.get_document(section) {
            out.insert((*section).to_owned(), Value::Object(flat_section(d)));
        }
    }
    if let Ok(conns) = status.get_document("connections")
        && let (Some(current), Some(available)) =
            (number(conns.get("current")), number(conns.get("available")))
        && current + available > 0.0
    {
        out.insert(
            "connections_used_pct".into(),
            Value::from((current * 10000.0 / (current + available)).round() / 100.0),
        );
    }
    if let Ok(lock) = status.get_document("globalLock")
        && let Ok(queue) = lock.get_document("currentQueue")
    {
        out.insert(
            "queued_operations".into(),
            Value::Object(flat_section(queue)),
        );
    }
    let set = hello.get_str("setName").ok();
    let flag = |k: &str| hello.get_bool(k).unwrap_or(false);
    let role = match set {
        None => "standalone",
        Some(_) if flag("isWritablePrimary") || flag("ismaster") => "primary",
        Some(_) if flag("secondary") => "secondary",
        Some(_) if flag("arbiterOnly") => "arbiter",
        Some(_) => "other",
    };
    out.insert("role".into(), Value::from(role));
    if let Some(set) = set {
        out.insert("replica_set".into(), Value::from(set));
        for key in ["primary", "me", "hosts", "setVersion"] {
            if let Some(v) = hello.get(key) {
                out.insert(key.to_ascii_lowercase(), to_json(v));
            }
        }
    }
    if role == "secondary"
        && let Some(lag) = repl.and_then(replication_lag)
    {
        out.insert("replication_lag_seconds".into(), Value::from(lag));
    }
    out
}

/// Seconds between the primary's last operation and this member's (`replSetGetStatus`).
fn replication_lag(status: &Document) -> Option<f64> {
    let members = status.get_array("members").ok()?;
    let optime = |want: &dyn Fn(&Document) -> bool| {
        members.iter().find_map(|m| match m {
            Bson::Document(d) if want(d) => match d.get("optimeDate") {
                Some(Bson::DateTime(t)) => Some(t.timestamp_millis()),
                _ => None,
            },
            _ => None,
        })
    };
    let primary = optime(&|d| number(d.get("state")) == Some(1.0))?;
    let me = optime(&|d| d.get_bool("self").unwrap_or(false))?;
    Some((primary.saturating_sub(me).max(0) as f64) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::DateTime;
    use serde_json::json;
    use tokio::net::TcpListener;

    /// A serverStatus as a MongoDB 7.0 replica set primary answers it (most sections cut short,
    /// the types as the server sends them).
    fn server_status(queries: i64) -> Document {
        doc! {
            "host": "db1:27017",
            "version": "7.0.12",
            "process": "mongod",
            "pid": 4242_i64,
            "uptime": 86400.0,
            "uptimeMillis": 86_400_123_i64,
            "uptimeEstimate": 86400_i64,
            "localTime": DateTime::from_millis(1_700_000_000_000),
            "asserts": {"regular": 0, "warning": 0, "msg": 0, "user": 12, "tripwire": 0, "rollovers": 0},
            "connections": {
                "current": 8, "available": 51192, "totalCreated": 120, "rejected": 0,
                "active": 3, "threaded": 8, "exhaustIsMaster": 0_i64, "exhaustHello": 1_i64,
                "awaitingTopologyChanges": 1_i64, "loadBalanced": 0_i64
            },
            "extra_info": {"note": "fields vary by platform", "user_time_us": 912_345_i64,
                "system_time_us": 345_678_i64, "maximum_resident_set_kb": 180_224_i64,
                "page_faults": 17_i64},
            "globalLock": {
                "totalTime": 86_400_000_000_i64,
                "currentQueue": {"total": 0, "readers": 0, "writers": 0},
                "activeClients": {"total": 0, "readers": 0, "writers": 0}
            },
            "mem": {"bits": 64, "resident": 170, "virtual": 2710, "supported": true},
            "network": {
                "bytesIn": 1_234_567_i64, "bytesOut": 7_654_321_i64,
                "physicalBytesIn": 1_234_567_i64, "physicalBytesOut": 7_654_321_i64,
                "numSlowDNSOperations": 0_i64, "numSlowSSLOperations": 0_i64,
                "numRequests": 5_432_i64,
                "tcpFastOpen": {"kernelSetting": 1_i64, "serverSupported": true},
                "compression": {"snappy": {"compressor": {"bytesIn": 0_i64, "bytesOut": 0_i64}}}
            },
            "opcounters": {"insert": 10_i64, "query": queries, "update": 5_i64,
                "delete": 1_i64, "getmore": 40_i64, "command": 900_i64},
            "opcountersRepl": {"insert": 0_i64, "query": 0_i64, "update": 0_i64,
                "delete": 0_i64, "getmore": 0_i64, "command": 0_i64},
            "repl": {
                "topologyVersion": {"processId": bson::oid::ObjectId::new(), "counter": 6_i64},
                "hosts": ["db1:27017", "db2:27017"],
                "setName": "rs0", "setVersion": 2, "isWritablePrimary": true,
                "secondary": false, "primary": "db1:27017", "me": "db1:27017",
                "lastWrite": {"opTime": {"ts": bson::Timestamp {time: 1_700_000_000, increment: 1}, "t": 3_i64},
                    "lastWriteDate": DateTime::from_millis(1_700_000_000_000)},
                "rbid": 1
            },
            "storageEngine": {"name": "wiredTiger", "supportsCommittedReads": true,
                "persistent": true},
            "wiredTiger": {"cache": {"bytes currently in the cache": 1_048_576_i64,
                "maximum bytes configured": 268_435_456_i64}},
            "ok": 1.0,
        }
    }

    fn hello_primary() -> Document {
        doc! {
            "topologyVersion": {"processId": bson::oid::ObjectId::new(), "counter": 6_i64},
            "hosts": ["db1:27017", "db2:27017"], "setName": "rs0", "setVersion": 2,
            "isWritablePrimary": true, "secondary": false, "primary": "db1:27017",
            "me": "db1:27017", "maxBsonObjectSize": 16_777_216, "maxWireVersion": 21,
            "ok": 1.0,
        }
    }

    #[test]
    fn a_realistic_server_status_is_read() {
        let out = build(&hello_primary(), &server_status(250), None);
        assert_eq!(out["available"], json!(true));
        assert_eq!(out["version"], json!("7.0.12"));
        assert_eq!(out["uptime"], json!(86400.0));
        assert_eq!(out["pid"], json!(4242));
        assert_eq!(out["connections"]["current"], json!(8));
        assert_eq!(out["connections"]["available"], json!(51192));
        assert_eq!(out["connections_used_pct"], json!(0.02));
        assert_eq!(out["opcounters"]["query"], json!(250));
        assert_eq!(out["mem"]["resident"], json!(170));
        assert_eq!(out["network"]["bytesIn"], json!(1_234_567));
        // Nested sections of a section are left out.
        assert!(out["network"].get("compression").is_none());
        assert_eq!(out["extra_info"]["page_faults"], json!(17));
        assert_eq!(out["queued_operations"]["total"], json!(0));
        assert_eq!(out["storage_engine"], json!("wiredTiger"));
        assert_eq!(out["role"], json!("primary"));
        assert_eq!(out["replica_set"], json!("rs0"));
        assert_eq!(out["hosts"], json!(["db1:27017", "db2:27017"]));
        assert!(out.get("wiredTiger").is_none());
    }

    #[test]
    fn a_secondary_reports_its_lag_and_a_standalone_its_role() {
        let hello = doc! {"setName": "rs0", "isWritablePrimary": false, "secondary": true,
        "primary": "db1:27017", "ok": 1.0};
        let repl = doc! {"set": "rs0", "myState": 2, "members": [
            {"_id": 0, "name": "db1:27017", "state": 1, "stateStr": "PRIMARY",
             "optimeDate": DateTime::from_millis(1_700_000_010_500)},
            {"_id": 1, "name": "db2:27017", "state": 2, "stateStr": "SECONDARY", "self": true,
             "optimeDate": DateTime::from_millis(1_700_000_000_000)},
        ], "ok": 1.0};
        let out = build(&hello, &server_status(250), Some(&repl));
        assert_eq!(out["role"], json!("secondary"));
        assert_eq!(out["replication_lag_seconds"], json!(10.5));
        let standalone = doc! {"isWritablePrimary": true, "ok": 1.0};
        let out = build(&standalone, &doc! {"ok": 1.0}, None);
        assert_eq!(out["role"], json!("standalone"));
        assert!(out.get("replica_set").is_none());
        assert!(out.get("connections_used_pct").is_none());
    }

    #[test]
    fn op_msg_round_trips_and_bad_messages_are_refused() {
        let body = doc! {"serverStatus": 1, "$db": "admin"};
        let msg = encode_op_msg(7, &body).expect("encode");
        assert_eq!(le_i32(&msg, 12), Some(OP_MSG));
        // A request decodes like a reply (responseTo 0 here).
        let (to, doc) = decode_op_msg(&msg).expect("decode");
        assert_eq!((to, doc), (0, body.clone()));
        // Length that lies.
        let mut bad = msg.clone();
        bad[0] = bad[0].wrapping_add(1);
        assert!(decode_op_msg(&bad).is_err());
        // Truncated body.
        let cut = &msg[..msg.len() - 3];
        let mut cut = cut.to_vec();
        let len = i32::try_from(cut.len()).expect("len").to_le_bytes();
        cut[..4].copy_from_slice(&len);
        assert!(decode_op_msg(&cut).is_err());
        // With a checksum (not verified: the bytes came over loopback) the body still reads.
        let mut summed = msg.clone();
        summed[16] = 1;
        summed.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let len = i32::try_from(summed.len()).expect("len").to_le_bytes();
        summed[..4].copy_from_slice(&len);
        assert_eq!(decode_op_msg(&summed).expect("checksum").1, body);
        // An old server's OP_REPLY.
        let mut old = msg.clone();
        old[12..16].copy_from_slice(&1i32.to_le_bytes());
        let err = decode_op_msg(&old).expect_err("op_reply");
        assert!(err.contains("3.6"), "{err}");
        // Unknown required flag.
        let mut flagged = msg;
        flagged[16] = 4;
        assert!(decode_op_msg(&flagged).is_err());
        assert!(decode_op_msg(&[1, 2, 3]).is_err());
    }

    proptest::proptest! {
        /// Whatever a server sends, decoding gives a document or a reason, never a panic.
        #[test]
        fn arbitrary_replies_never_panic(
            mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            fix_length in proptest::bool::ANY,
            op_msg in proptest::bool::ANY,
        ) {
            if bytes.len() >= 16 {
                if fix_length {
                    let len = i32::try_from(bytes.len()).unwrap_or(0).to_le_bytes();
                    bytes[..4].copy_from_slice(&len);
                }
                if op_msg {
                    bytes[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
                }
            }
            let _ = decode_op_msg(&bytes);
        }

        /// A body that is cut or altered anywhere is refused or read, never a panic.
        #[test]
        fn altered_messages_never_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut msg = encode_op_msg(1, &server_status(7)).unwrap_or_default();
            let at = at % msg.len().max(1);
            if let Some(b) = msg.get_mut(at) {
                *b = byte;
            }
            let _ = decode_op_msg(&msg);
        }
    }

    /// How the fake server answers.
    #[derive(Clone, Copy)]
    enum Fake {
        /// hello and serverStatus as a primary does.
        Primary,
        /// serverStatus refused as by a server with authorization on.
        NeedsAuth,
        /// A reply header announcing 1 GB.
        Huge,
        /// `hello` unknown (a 4.2 server), `isMaster` known.
        Old,
    }

    /// An in-process server speaking OP_MSG on a loopback port; serves one connection, and
    /// counts `queries` queries in its serverStatus.
    async fn fake_server(mode: Fake, queries: i64) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            loop {
                let mut header = [0u8; 16];
                if s.read_exact(&mut header).await.is_err() {
                    return;
                }
                let len = usize::try_from(le_i32(&header, 0).unwrap_or(0)).unwrap_or(0);
                let mut msg = header.to_vec();
                msg.resize(len.max(16), 0);
                if s.read_exact(&mut msg[16..]).await.is_err() {
                    return;
                }
                let id = le_i32(&header, 4).unwrap_or(0);
                let Ok((_, body)) = decode_op_msg(&msg) else {
                    return;
                };
                assert_eq!(body.get_str("$db").ok(), Some("admin"));
                let command = body.keys().next().cloned().unwrap_or_default();
                let reply = match (mode, command.as_str()) {
                    (Fake::Huge, _) => {
                        let mut h = Vec::new();
                        for v in [1 << 30, 1, id, OP_MSG] {
                            h.extend_from_slice(&v.to_le_bytes());
                        }
                        let _ = s.write_all(&h).await;
                        return;
                    }
                    (Fake::Old, "hello") => doc! {"ok": 0.0, "errmsg": "no such command: 'hello'",
                    "code": 59, "codeName": "CommandNotFound"},
                    (_, "hello" | "isMaster") => hello_primary(),
                    (Fake::NeedsAuth, "serverStatus") => doc! {"ok": 0.0,
                    "errmsg": "command serverStatus requires authentication",
                    "code": 13, "codeName": "Unauthorized"},
                    (_, "serverStatus") => server_status(queries),
                    _ => doc! {"ok": 0.0, "errmsg": "unexpected", "code": 59},
                };
                let mut out = encode_op_msg(id + 1000, &reply).expect("encode");
                out[8..12].copy_from_slice(&id.to_le_bytes());
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        port
    }

    fn params(port: u16) -> Params {
        json!({"port": port, "timeout": 2})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn collects_from_a_server_speaking_op_msg() {
        let mut c = Mongodb::default();
        let port = fake_server(Fake::Primary, 250).await;
        let out = c.collect(&params(port)).await.expect("collected");
        assert_eq!(out["version"], json!("7.0.12"));
        assert_eq!(out["connections"]["current"], json!(8));
        assert_eq!(out["opcounters"]["query"], json!(250));
        assert_eq!(out["opcounters"]["query/s"], json!(0.0));
        assert_eq!(out["role"], json!("primary"));
        // The next run (a new connection) has rates: 100 more queries, the same bytes.
        let port = fake_server(Fake::Primary, 350).await;
        let out = c.collect(&params(port)).await.expect("again");
        assert!(out["opcounters"]["query/s"].as_f64() > Some(0.0), "{out}");
        assert_eq!(out["network"]["bytesIn/s"], json!(0.0));
        // A server before 4.4.2 answers isMaster.
        let port = fake_server(Fake::Old, 350).await;
        let out = c.collect(&params(port)).await.expect("old server");
        assert_eq!(out["replica_set"], json!("rs0"));
    }

    #[tokio::test]
    async fn refusals_oversized_replies_and_absence_are_reasons() {
        let mut c = Mongodb::default();
        let port = fake_server(Fake::NeedsAuth, 0).await;
        let err = c.collect(&params(port)).await.expect_err("auth");
        assert!(err.contains("requires authentication (code 13)"), "{err}");
        assert!(err.contains("does not log in"), "{err}");
        let port = fake_server(Fake::Huge, 0).await;
        let err = c.collect(&params(port)).await.expect_err("huge");
        assert!(err.contains("out of bounds"), "{err}");
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let err = c.collect(&params(free)).await.expect_err("absent");
        assert!(err.contains("cannot reach mongodb"), "{err}");
    }
}
