//! Signed remote execution, the part that decides whether a command may run: operator keys
//! (Ed25519, through `ring`), the request an operator signs, and the checks a target makes
//! before it runs anything — the key is one it authorizes, the signature covers every byte,
//! the request is neither expired nor from too far ahead, its lifetime is at most
//! [`MAX_LIFETIME_MS`], and its id was not seen before ([`Verifier`] remembers ids until they
//! expire, bounded).
//!
//! IO-free: time comes in as an argument (ms since the Unix epoch), keys as bytes; the agent
//! reads the key files and the clock, carries the bytes over the sealed cluster transport and
//! runs the command.
//!
//! Wire form of a signed request: `[VERSION][key id: 8][signature: 64][body]`, where the body
//! is the request's fields, length-prefixed, and the signature covers `[VERSION][key id][body]`.
//! Keys are never gossiped: targets list the public keys they accept in their configuration.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Version byte of the signed form.
pub const VERSION: u8 = 1;
/// Longest a request may be valid (issued → expires).
pub const MAX_LIFETIME_MS: u64 = 5 * 60 * 1000;
/// How far ahead of a target's clock a request may be issued (clocks of a cluster agree within
/// this, with NTP).
pub const MAX_SKEW_MS: u64 = 60 * 1000;
/// Longest command.
pub const MAX_COMMAND: usize = 16 * 1024;
/// Most request ids a target remembers (a replay of a forgotten id is already expired: ids are
/// kept until their request expires, and past this many the oldest go first — then a request
/// that expires no later than the last id forgotten early is refused as [`Refusal::Stale`]).
pub const MAX_REMEMBERED: usize = 65_536;
/// Length of a key id (the first bytes of the public key).
pub const KEY_ID_LEN: usize = 8;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Prefix of a private key file's line.
pub const PRIVATE_PREFIX: &str = "opsbro-executor-private-key";
/// Prefix of a public key line.
pub const PUBLIC_PREFIX: &str = "ed25519";
/// Kind byte of a cluster frame carrying a signed request (the first frame of a connection).
pub const KIND_REQUEST: u8 = 4;
/// Kind byte of a cluster frame carrying a target's reply (JSON, after the kind byte).
pub const KIND_REPLY: u8 = 5;
/// Longest request id.
pub const MAX_ID: usize = 64;
/// Longest command timeout a request may carry (one hour).
pub const MAX_TIMEOUT_SECS: u32 = 3600;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a key, a request or its bytes are refused. Each has its own counter in the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a signed request of this version (or cut short).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Signed by a key this node does not authorize.
    #[error("the key {0} is not in this node's executor.authorized_keys")]
    UnknownKey(String),
    /// The signature does not match the bytes.
    #[error("bad signature: the request was changed or not signed by key {0}")]
    BadSignature(String),
    /// Past its expiry.
    #[error("expired {0} ms ago")]
    Expired(u64),
    /// Issued further ahead of this node's clock than [`MAX_SKEW_MS`].
    #[error("issued {0} ms in the future (clocks differ by more than 60 s?)")]
    FromTheFuture(u64),
    /// Valid for longer than [`MAX_LIFETIME_MS`].
    #[error("valid for {0} ms, more than the 5 minutes allowed")]
    TooLong(u64),
    /// This id was already run here.
    #[error("replayed: request {0} was already received")]
    Replayed(String),
    /// This node forgot ids early (a flood of requests) and cannot tell whether this one, issued
    /// before them, is a replay.
    #[error("stale: issued before requests this node had to forget; send it again")]
    Stale,
    /// The executor is off on this node (no authorized key).
    #[error("the executor is disabled on this node (no executor.authorized_keys)")]
    Disabled,
    /// The request is not for this node (another group, another node).
    #[error("not a target: {0}")]
    NotATarget(String),
    /// The key sent more requests than this node runs per minute.
    #[error("rate limited: key {0} sent more than {1} requests a minute")]
    RateLimited(String, u32),
    /// Too many commands run here already.
    #[error("busy: {0} commands are running on this node already")]
    Busy(usize),
}

impl Refusal {
    /// A short name for counters and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownKey(_) => "unknown_key",
            Refusal::BadSignature(_) => "bad_signature",
            Refusal::Expired(_) => "expired",
            Refusal::FromTheFuture(_) => "from_the_future",
            Refusal::TooLong(_) => "too_long",
            Refusal::Replayed(_) => "replayed",
            Refusal::Stale => "stale",
            Refusal::Disabled => "disabled",
            Refusal::NotATarget(_) => "not_a_target",
            Refusal::RateLimited(..) => "rate_limited",
            Refusal::Busy(_) => "busy",
        }
    }

    /// Every [`Refusal::reason`], for counters that show zeros too.
    pub const REASONS: [&'static str; 12] = [
        "malformed",
        "unknown_key",
        "bad_signature",
        "expired",
        "from_the_future",
        "too_long",
        "replayed",
        "stale",
        "disabled",
        "not_a_target",
        "rate_limited",
        "busy",
    ];
}

/// A key pair of an operator.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public().to_line(""))
            .finish_non_exhaustive()
    }
}

/// A public key a target authorizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Its id: the hex of its first [`KEY_ID_LEN`] bytes.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&self.0[..KEY_ID_LEN]);
        id
    }

    /// The id as text (in messages).
    pub fn id_hex(&self) -> String {
        hex(&self.id())
    }

    /// `ed25519 <base64> <comment>`: a line of `executor.authorized_keys`.
    pub fn to_line(&self, comment: &str) -> String {
        let line = format!("{PUBLIC_PREFIX} {}", B64.encode(self.0));
        if comment.is_empty() {
            line
        } else {
            format!("{line} {comment}")
        }
    }

    /// Parse `ed25519 <base64> [comment]` (or the bare base64).
    pub fn parse(line: &str) -> Result<PublicKey, String> {
        let mut words = line.split_whitespace();
        let first = words.next().ok_or("an empty key")?;
        let b64 = if first == PUBLIC_PREFIX {
            words.next().ok_or("`ed25519` without the key after it")?
        } else {
            first
        };
        let bytes = B64
            .decode(b64)
            .map_err(|e| format!("not base64: {e} (expected `ed25519 <base64>`)"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "an Ed25519 public key is 32 bytes, this one {} (expected `ed25519 <base64>` from `opsbro executors keygen`)",
                b.len()
            )
        })?;
        Ok(PublicKey(key))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SigningKey {
    /// A new random key pair.
    pub fn generate() -> Result<SigningKey, String> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "the system's random source failed".to_owned())?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, String> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| format!("not an Ed25519 private key: {e}"))?;
        Ok(SigningKey {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(k)
    }

    /// The private key file's content: `opsbro-executor-private-key <base64 PKCS#8>`.
    pub fn to_file(&self) -> String {
        format!("{PRIVATE_PREFIX} {}\n", B64.encode(&self.pkcs8))
    }

    /// Read a private key file's content (comments and blank lines allowed).
    pub fn from_file(text: &str) -> Result<SigningKey, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or("the key file is empty")?;
        let b64 = line
            .strip_prefix(PRIVATE_PREFIX)
            .map(str::trim)
            .ok_or_else(|| {
                format!("not an opsbro executor private key (a line `{PRIVATE_PREFIX} <base64>` from `opsbro executors keygen`)")
            })?;
        let der = B64.decode(b64).map_err(|e| format!("not base64: {e}"))?;
        SigningKey::from_pkcs8(&der)
    }

    /// Sign `request` into its wire form.
    pub fn sign(&self, request: &Request) -> Vec<u8> {
        let id = self.public().id();
        let body = request.encode();
        let mut signed = Vec::with_capacity(1 + KEY_ID_LEN + body.len());
        signed.push(VERSION);
        signed.extend_from_slice(&id);
        signed.extend_from_slice(&body);
        let signature = self.pair.sign(&signed);
        let mut out = Vec::with_capacity(signed.len() + SIGNATURE_LEN);
        out.push(VERSION);
        out.extend_from_slice(&id);
        out.extend_from_slice(signature.as_ref());
        out.extend_from_slice(&body);
        out
    }
}

/// What an operator asks: run `command` on the alive members of `group` (`*`: all), or only on
/// `node`, between `issued_at_ms` and `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Unique id (random, hex).
    pub id: String,
    /// Target group (`*`: every node).
    pub group: String,
    /// Only this node, when set.
    pub node: Option<String>,
    /// The shell command line.
    pub command: String,
    /// Seconds the target lets it run.
    pub timeout_secs: u32,
    /// ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Who asks (a free label: node name, user).
    pub requester: String,
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        if self.0.len() < n {
            return Err(Refusal::Malformed("cut short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn field(&mut self, max: usize) -> Result<&'a [u8], Refusal> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > max {
            return Err(Refusal::Malformed("a field is too long"));
        }
        self.take(len)
    }

    fn text(&mut self, max: usize) -> Result<String, Refusal> {
        let raw = self.field(max)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| Refusal::Malformed("a field is not UTF-8"))
    }

    fn u64(&mut self) -> Result<u64, Refusal> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

impl Request {
    /// The signed body: every field, length-prefixed, in order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, self.id.as_bytes());
        put(&mut out, self.group.as_bytes());
        put(&mut out, self.node.as_deref().unwrap_or("").as_bytes());
        put(&mut out, self.command.as_bytes());
        out.extend_from_slice(&u64::from(self.timeout_secs).to_be_bytes());
        out.extend_from_slice(&self.issued_at_ms.to_be_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        put(&mut out, self.requester.as_bytes());
        out
    }

    fn decode(body: &[u8]) -> Result<Request, Refusal> {
        let mut r = Reader(body);
        let id = r.text(MAX_ID)?;
        let group = r.text(64)?;
        let node = r.text(253)?;
        let command = r.text(MAX_COMMAND)?;
        let timeout_secs = u32::try_from(r.u64()?).map_err(|_| Refusal::Malformed("timeout"))?;
        let issued_at_ms = r.u64()?;
        let expires_at_ms = r.u64()?;
        let requester = r.text(255)?;
        if !r.0.is_empty() {
            return Err(Refusal::Malformed("bytes after the request"));
        }
        if id.is_empty() || group.is_empty() || command.trim().is_empty() {
            return Err(Refusal::Malformed("an empty id, group or command"));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
            return Err(Refusal::Malformed("a timeout outside 1 s..1 h"));
        }
        Ok(Request {
            id,
            group,
            node: (!node.is_empty()).then_some(node),
            command,
            timeout_secs,
            issued_at_ms,
            expires_at_ms,
            requester,
        })
    }
}

/// A new request id: 16 random bytes in hex.
pub fn new_id() -> Result<String, String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_owned())?;
    Ok(hex(&bytes))
}

/// Read a signed request's fields WITHOUT checking its signature: what the requester's own
/// agent needs to choose the targets (each target verifies for itself).
pub fn peek(signed: &[u8]) -> Result<Request, Refusal> {
    let header = 1 + KEY_ID_LEN + SIGNATURE_LEN;
    if signed.len() < header || signed[0] != VERSION {
        return Err(Refusal::Malformed("not a signed request of version 1"));
    }
    Request::decode(&signed[header..])
}

impl Request {
    /// Whether a node named `node` with `groups` is a target of this request.
    pub fn is_for(&self, node: &str, groups: &[String]) -> Result<(), Refusal> {
        if let Some(wanted) = &self.node
            && wanted != node
        {
            return Err(Refusal::NotATarget(format!(
                "the request is for node `{wanted}`, this is `{node}`"
            )));
        }
        if self.group != "*" && !groups.contains(&self.group) {
            return Err(Refusal::NotATarget(format!(
                "`{node}` is not in group `{}`",
                self.group
            )));
        }
        Ok(())
    }
}

/// Requests per key, as a token bucket: `per_minute` requests a minute, up to `per_minute` at
/// once after a quiet minute. Bounded: past [`MAX_REMEMBERED_KEYS`] keys every bucket is
/// forgotten (only authorized keys are counted, so that takes that many operator keys).
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    /// key id → (tokens, last refill ms).
    buckets: HashMap<String, (f64, u64)>,
}

/// Most keys a [`RateLimiter`] tracks (only authorized keys reach it: a handful).
pub const MAX_REMEMBERED_KEYS: usize = 1024;

impl RateLimiter {
    /// A limiter of `per_minute` requests a minute per key (at least 1).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Take one request of `key` at `now_ms`.
    pub fn take(&mut self, key: &str, now_ms: u64) -> Result<(), Refusal> {
        let capacity = f64::from(self.per_minute);
        if self.buckets.len() >= MAX_REMEMBERED_KEYS && !self.buckets.contains_key(key) {
            self.buckets.clear();
        }
        let (tokens, last) = self
            .buckets
            .entry(key.to_owned())
            .or_insert((capacity, now_ms));
        let elapsed = now_ms.saturating_sub(*last) as f64;
        *tokens = (*tokens + elapsed * capacity / 60_000.0).min(capacity);
        *last = now_ms.max(*last);
        if *tokens < 1.0 {
            return Err(Refusal::RateLimited(key.to_owned(), self.per_minute));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

/// The key id a signed request names, to say which key was refused (before verifying).
pub fn key_id(signed: &[u8]) -> Option<String> {
    (signed.len() > KEY_ID_LEN && signed[0] == VERSION).then(|| hex(&signed[1..1 + KEY_ID_LEN]))
}

/// A target's checks: authorized keys and the ids already run.
#[derive(Debug, Default)]
pub struct Verifier {
    keys: HashMap<[u8; KEY_ID_LEN], PublicKey>,
    /// id → expiry, in arrival order.
    seen: HashMap<String, u64>,
    order: VecDeque<(String, u64)>,
    /// The latest expiry of an id forgotten before it expired: requests expiring no later are
    /// refused as [`Refusal::Stale`].
    floor_ms: u64,
    /// Most ids remembered ([`MAX_REMEMBERED`]).
    capacity: usize,
}

impl Verifier {
    /// A verifier accepting `keys` (none: every request refused as [`Refusal::Disabled`]).
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Verifier {
        Verifier::with_capacity(keys, MAX_REMEMBERED)
    }

    /// A verifier remembering at most `capacity` ids.
    pub fn with_capacity(keys: impl IntoIterator<Item = PublicKey>, capacity: usize) -> Verifier {
        Verifier {
            keys: keys.into_iter().map(|k| (k.id(), k)).collect(),
            capacity: capacity.max(1),
            ..Verifier::default()
        }
    }

    /// Whether any key is authorized.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Authorize these keys from now on (a reload); the ids already seen stay remembered.
    pub fn set_keys(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        self.keys = keys.into_iter().map(|k| (k.id(), k)).collect();
    }

    /// Check `signed` at `now_ms`; the request when it may run (its id is then remembered).
    pub fn verify(&mut self, signed: &[u8], now_ms: u64) -> Result<Request, Refusal> {
        if self.keys.is_empty() {
            return Err(Refusal::Disabled);
        }
        let header = 1 + KEY_ID_LEN + SIGNATURE_LEN;
        if signed.len() < header || signed[0] != VERSION {
            return Err(Refusal::Malformed("not a signed request of version 1"));
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&signed[1..1 + KEY_ID_LEN]);
        let key = self
            .keys
            .get(&id)
            .ok_or_else(|| Refusal::UnknownKey(hex(&id)))?;
        let signature = &signed[1 + KEY_ID_LEN..header];
        let body = &signed[header..];
        let mut message = Vec::with_capacity(1 + KEY_ID_LEN + body.len());
        message.push(VERSION);
        message.extend_from_slice(&id);
        message.extend_from_slice(body);
        UnparsedPublicKey::new(&ED25519, &key.0)
            .verify(&message, signature)
            .map_err(|_| Refusal::BadSignature(hex(&id)))?;
        let request = Request::decode(body)?;
        if request.issued_at_ms > now_ms.saturating_add(MAX_SKEW_MS) {
            return Err(Refusal::FromTheFuture(request.issued_at_ms - now_ms));
        }
        let lifetime = request.expires_at_ms.saturating_sub(request.issued_at_ms);
        if lifetime > MAX_LIFETIME_MS {
            return Err(Refusal::TooLong(lifetime));
        }
        if request.expires_at_ms <= now_ms {
            return Err(Refusal::Expired(now_ms - request.expires_at_ms));
        }
        self.forget_expired(now_ms);
        if self.seen.contains_key(&request.id) {
            return Err(Refusal::Replayed(request.id));
        }
        if request.expires_at_ms <= self.floor_ms {
            return Err(Refusal::Stale);
        }
        // A full memory forgets the oldest id before it expired: from now on, refuse what
        // expires no later than it (it might be a replay of a forgotten one).
        if self.order.len() >= self.capacity
            && let Some((old, expires)) = self.order.pop_front()
        {
            self.seen.remove(&old);
            self.floor_ms = self.floor_ms.max(expires);
        }
        self.seen.insert(request.id.clone(), request.expires_at_ms);
        self.order
            .push_back((request.id.clone(), request.expires_at_ms));
        Ok(request)
    }

    fn forget_expired(&mut self, now_ms: u64) {
        while let Some((id, expires)) = self.order.front() {
            // Keep ids until their request expires (with the skew margin).
            if expires.saturating_add(MAX_SKEW_MS) > now_ms {
                break;
            }
            self.seen.remove(id);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn request(id: &str) -> Request {
        Request {
            id: id.into(),
            group: "web".into(),
            node: None,
            command: "systemctl restart nginx".into(),
            timeout_secs: 60,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 60_000,
            requester: "ops@laptop".into(),
        }
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let key = SigningKey::generate().expect("key");
        let again = SigningKey::from_file(&format!("# mine\n{}", key.to_file())).expect("file");
        assert_eq!(again.public(), key.public());
        let line = key.public().to_line("ops");
        assert!(line.starts_with("ed25519 "), "{line}");
        assert_eq!(PublicKey::parse(&line).expect("line"), key.public());
        assert!(PublicKey::parse("ed25519 AAAA").is_err());
        assert!(SigningKey::from_file("ed25519 AAAA").is_err());
        assert!(
            format!("{key:?}").contains("ed25519"),
            "debug shows no secret"
        );
        let secret = key.to_file();
        let secret = secret[PRIVATE_PREFIX.len()..].trim();
        assert!(!format!("{key:?}").contains(secret));
    }

    #[test]
    fn a_signed_request_runs_once_and_only_with_an_authorized_key() {
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("other");
        let mut v = Verifier::new([key.public()]);
        let signed = key.sign(&request("a1"));
        assert_eq!(v.verify(&signed, NOW + 1).expect("valid"), request("a1"));
        // The same bytes again: replayed.
        assert_eq!(
            v.verify(&signed, NOW + 2),
            Err(Refusal::Replayed("a1".into()))
        );
        // Another key: unknown.
        assert!(matches!(
            v.verify(&other.sign(&request("a2")), NOW),
            Err(Refusal::UnknownKey(_))
        ));
        // No key at all: disabled.
        assert_eq!(
            Verifier::new([]).verify(&signed, NOW),
            Err(Refusal::Disabled)
        );
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let key = SigningKey::generate().expect("key");
        let signed = key.sign(&request("b1"));
        for i in 0..signed.len() {
            let mut tampered = signed.clone();
            tampered[i] ^= 0x01;
            let mut v = Verifier::new([key.public()]);
            assert!(v.verify(&tampered, NOW).is_err(), "byte {i} changed");
        }
        let mut v = Verifier::new([key.public()]);
        assert!(v.verify(&signed[..signed.len() - 1], NOW).is_err());
        let mut longer = signed.clone();
        longer.push(0);
        assert!(v.verify(&longer, NOW).is_err());
    }

    #[test]
    fn time_limits() {
        let key = SigningKey::generate().expect("key");
        let mut v = Verifier::new([key.public()]);
        assert!(matches!(
            v.verify(&key.sign(&request("c1")), NOW + 60_001),
            Err(Refusal::Expired(1))
        ));
        let mut ahead = request("c2");
        ahead.issued_at_ms = NOW + MAX_SKEW_MS + 10;
        ahead.expires_at_ms = ahead.issued_at_ms + 1000;
        assert!(matches!(
            v.verify(&key.sign(&ahead), NOW),
            Err(Refusal::FromTheFuture(_))
        ));
        // Within the skew: accepted.
        let mut near = request("c3");
        near.issued_at_ms = NOW + 30_000;
        near.expires_at_ms = NOW + 90_000;
        assert!(v.verify(&key.sign(&near), NOW).is_ok());
        let mut long = request("c4");
        long.expires_at_ms = NOW + MAX_LIFETIME_MS + 1;
        assert!(matches!(
            v.verify(&key.sign(&long), NOW),
            Err(Refusal::TooLong(_))
        ));
        // An id is forgotten only after its request expired: a replay then is expired anyway.
        let signed = key.sign(&request("c5"));
        assert!(v.verify(&signed, NOW).is_ok());
        assert!(matches!(
            v.verify(&signed, NOW + 60_000 + MAX_SKEW_MS + 1),
            Err(Refusal::Expired(_))
        ));
    }

    #[test]
    fn a_flood_that_forgets_ids_early_refuses_what_it_can_no_longer_tell() {
        let key = SigningKey::generate().expect("key");
        let mut v = Verifier::with_capacity([key.public()], 100);
        let first = key.sign(&request("first"));
        assert!(v.verify(&first, NOW).is_ok());
        for i in 0..100 {
            let mut r = request(&format!("f{i}"));
            r.expires_at_ms = NOW + 60_000 + i as u64;
            v.verify(&key.sign(&r), NOW).expect("fresh");
        }
        // `first` was forgotten before it expired: its replay is refused all the same.
        assert_eq!(v.verify(&first, NOW + 1), Err(Refusal::Stale));
        // A new request, expiring later than anything forgotten, runs.
        let mut later = request("later");
        later.expires_at_ms = NOW + 120_000;
        assert!(v.verify(&key.sign(&later), NOW + 1).is_ok());
    }

    #[test]
    fn targets_and_rates() {
        let mut r = request("t1");
        let web = vec!["web".to_owned(), "linux".to_owned()];
        assert!(r.is_for("n1", &web).is_ok());
        assert!(matches!(
            r.is_for("n1", &["db".to_owned()]),
            Err(Refusal::NotATarget(_))
        ));
        r.group = "*".into();
        assert!(r.is_for("n1", &[]).is_ok());
        r.node = Some("n2".into());
        assert!(matches!(r.is_for("n1", &web), Err(Refusal::NotATarget(_))));
        assert!(r.is_for("n2", &[]).is_ok());

        let mut limiter = RateLimiter::new(6);
        for _ in 0..6 {
            limiter.take("k", NOW).expect("within the burst");
        }
        assert_eq!(
            limiter.take("k", NOW),
            Err(Refusal::RateLimited("k".into(), 6))
        );
        // Another key has its own bucket; ten seconds give one more request back.
        assert!(limiter.take("other", NOW).is_ok());
        assert!(limiter.take("k", NOW + 10_000).is_ok());
        assert!(limiter.take("k", NOW + 10_000).is_err());
    }

    #[test]
    fn a_request_is_read_before_it_is_verified_and_its_limits_hold() {
        let key = SigningKey::generate().expect("key");
        let signed = key.sign(&request("p1"));
        assert_eq!(peek(&signed).expect("peek"), request("p1"));
        assert!(peek(&signed[..10]).is_err());
        let mut v = Verifier::new([key.public()]);
        for bad in [
            Request {
                timeout_secs: 0,
                ..request("p2")
            },
            Request {
                timeout_secs: MAX_TIMEOUT_SECS + 1,
                ..request("p3")
            },
            Request {
                command: " ".into(),
                ..request("p4")
            },
            Request {
                id: String::new(),
                ..request("p5")
            },
        ] {
            assert!(
                matches!(v.verify(&key.sign(&bad), NOW), Err(Refusal::Malformed(_))),
                "{bad:?}"
            );
        }
        let id = new_id().expect("id");
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_id().expect("id"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_are_refused_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let key = SigningKey::generate().expect("key");
            let mut v = Verifier::new([key.public()]);
            proptest::prop_assert!(v.verify(&bytes, NOW).is_err());
        }
    }
}
