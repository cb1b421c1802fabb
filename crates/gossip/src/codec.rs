//! The gossip wire format: one module, one version byte, bounded decoding that never panics.
//!
//! A UDP datagram is `[VERSION][count: varint][message]*`; a TCP push-pull frame payload is
//! `[VERSION][PushPull]`. Integers are LEB128 varints, strings and byte strings are
//! length-prefixed and capped (names 253 B, groups 63 B, event payloads 512 B, ...), lists are
//! capped too, so a hostile packet can neither allocate without bound nor crash a decoder.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use opsbro_types::NodeUuid;

use opsbro_types::names;

use crate::member::{CheckSummary, MAX_INCARNATION, MemberState, NodeRecord, ServiceRecord};

/// Version of the wire format; bumped on any incompatible change (5: the detect-ping carries
/// the asker's zone).
pub const VERSION: u8 = 5;
/// Largest datagram we send (and the most we read): fits a 1500-byte MTU with IP/UDP headers and
/// the encryption overhead.
pub const MAX_DATAGRAM: usize = 1400;
/// Largest push-pull payload accepted (a full state of ~4000 nodes fits).
pub const MAX_PUSH_PULL: usize = 4 * 1024 * 1024;
/// Most messages in one datagram.
const MAX_MESSAGES: u64 = 256;
/// Most members in one push-pull.
const MAX_MEMBERS: u64 = 100_000;
/// Most groups per node.
pub const MAX_GROUPS: usize = 128;
/// Most checks in a node record.
pub const MAX_CHECKS: usize = 256;
/// Most services in a node record.
pub const MAX_SERVICES: usize = 64;
/// Most tags of a service.
pub const MAX_TAGS: usize = 32;
/// Most meta entries of a service.
pub const MAX_META: usize = 32;
/// Longest check name.
pub const MAX_CHECK_NAME: usize = names::MAX_CHECK_NAME;
/// Most bytes in a user event payload.
pub const MAX_EVENT_PAYLOAD: usize = names::MAX_EVENT_PAYLOAD;
/// Size of a detect-ping datagram (padded): answers up to this size can be sent even by agents
/// that never answer with more than they received.
pub const DETECT_PING_SIZE: usize = 1200;
/// Most user events in one push-pull.
const MAX_EVENTS: u64 = 4096;

/// Why bytes could not be decoded. Counted by the driver, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("truncated message")]
    Truncated,
    /// Another wire version.
    #[error("unsupported wire version {0} (this agent speaks {VERSION})")]
    Version(u8),
    /// Unknown message tag.
    #[error("unknown message type {0}")]
    UnknownTag(u8),
    /// A length or count over its cap.
    #[error("{what} too long ({len} > {max})")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its announced length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A field with an impossible value.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes after the end of the message.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// A user event, delivered once to every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// Random id, for deduplication.
    pub id: u64,
    /// Node that created it.
    pub origin: NodeUuid,
    /// Event type (e.g. `deploy-done`).
    pub kind: String,
    /// Opaque payload (≤ 512 bytes).
    pub payload: Vec<u8>,
    /// Creation time at the origin, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Direct probe of `target`.
    Ping {
        /// Sequence number echoed by the ack.
        seq: u32,
        /// The node the sender believes it is probing.
        target: NodeUuid,
        /// The sender.
        from: NodeUuid,
    },
    /// Answer to a ping (or forwarded answer to an indirect ping).
    Ack {
        /// The ping's sequence number.
        seq: u32,
        /// The node that answers.
        from: NodeUuid,
    },
    /// "I asked the target for you and got no answer" (Lifeguard).
    Nack {
        /// The indirect ping's sequence number.
        seq: u32,
    },
    /// Ask the receiver to probe `target` on our behalf.
    IndirectPing {
        /// Sequence number for the answer.
        seq: u32,
        /// The node to probe.
        target: NodeUuid,
        /// Its address.
        target_addr: SocketAddr,
        /// Whether the requester wants a nack on failure.
        want_nack: bool,
    },
    /// A node is alive (full record).
    Alive(NodeRecord),
    /// `from` suspects `node` at `incarnation`.
    Suspect {
        /// Suspected node.
        node: NodeUuid,
        /// Its incarnation as seen by the accuser.
        incarnation: u64,
        /// The accuser (confirmations are counted per accuser).
        from: NodeUuid,
    },
    /// `node` is declared dead.
    Dead {
        /// The dead node.
        node: NodeUuid,
        /// Its incarnation.
        incarnation: u64,
        /// Who declared it.
        from: NodeUuid,
    },
    /// `node` left the cluster on purpose.
    Leave {
        /// The leaving node.
        node: NodeUuid,
        /// Its (bumped) incarnation.
        incarnation: u64,
    },
    /// A user event.
    Event(UserEvent),
    /// LAN detection: "who is there?", broadcast on the gossip port.
    DetectPing {
        /// Matches the answers to this request.
        id: u64,
        /// The asking node (it does not answer itself).
        from: NodeUuid,
        /// The asking node's zone (who answers depends on it).
        zone: String,
        /// Zero bytes of padding: an agent that must not answer with more than it received
        /// (no key) can then still answer (see [`DETECT_PING_SIZE`]).
        padding: usize,
    },
    /// Answer to a detect-ping: the answering node's record.
    DetectPong {
        /// The request's id.
        id: u64,
        /// The answering node.
        record: NodeRecord,
    },
}

/// Full-state exchange over TCP (join and anti-entropy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPull {
    /// True when the sender is joining (the receiver answers even to strangers).
    pub join: bool,
    /// The sender's view, itself included.
    pub members: Vec<NodeRecord>,
    /// Recent user events (so a node joining late still gets them).
    pub events: Vec<UserEvent>,
}

impl PushPull {
    /// Split into parts whose encodings stay under `max_bytes` each (one member at least per
    /// part), so a state of any size crosses the cluster port in bounded frames. Every part
    /// starts with the sender's own record (the first member, by convention), so each one
    /// names its sender; the events go with the first part.
    pub fn split(self, max_bytes: usize) -> Vec<PushPull> {
        let PushPull {
            join,
            mut members,
            events,
        } = self;
        if members.is_empty() {
            return vec![PushPull {
                join,
                members,
                events,
            }];
        }
        let me = members.remove(0);
        let me_len = record_len(&me);
        let mut parts = Vec::new();
        let mut current = PushPull {
            join,
            members: vec![me.clone()],
            events,
        };
        let mut size = 16 + me_len + current.events.iter().map(event_len).sum::<usize>();
        for m in members {
            let len = record_len(&m);
            if current.members.len() > 1 && size + len > max_bytes {
                parts.push(std::mem::replace(
                    &mut current,
                    PushPull {
                        join,
                        members: vec![me.clone()],
                        events: Vec::new(),
                    },
                ));
                size = 16 + me_len;
            }
            size += len;
            current.members.push(m);
        }
        parts.push(current);
        parts
    }
}

fn record_len(r: &NodeRecord) -> usize {
    let mut w = Writer::new();
    w.record(r);
    w.len()
}

fn event_len(e: &UserEvent) -> usize {
    let mut w = Writer::new();
    w.event(e);
    w.len()
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Appends wire values to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn uuid(&mut self, id: &NodeUuid) {
        self.buf.extend_from_slice(id.as_bytes());
    }

    fn addr(&mut self, a: &SocketAddr) {
        match a.ip() {
            IpAddr::V4(v4) => {
                self.u8(4);
                self.buf.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(6);
                self.buf.extend_from_slice(&v6.octets());
            }
        }
        self.buf.extend_from_slice(&a.port().to_be_bytes());
    }

    fn record(&mut self, r: &NodeRecord) {
        self.uuid(&r.uuid);
        self.varint(r.incarnation);
        self.u8(r.state as u8);
        self.addr(&r.addr);
        self.str(&r.name);
        self.str(&r.display_name);
        self.str(&r.zone);
        self.varint(r.groups.len() as u64);
        for g in &r.groups {
            self.str(g);
        }
        self.u8(u8::from(r.is_proxy));
        self.str(&r.version);
        self.varint(r.checks.len() as u64);
        for c in &r.checks {
            self.str(&c.name);
            self.u8(c.state);
        }
        self.varint(r.services.len() as u64);
        for s in &r.services {
            self.service(s);
        }
        self.reason(r.maintenance.as_deref());
    }

    fn reason(&mut self, reason: Option<&str>) {
        match reason {
            None => self.u8(0),
            Some(text) => {
                self.u8(1);
                self.str(text);
            }
        }
    }

    fn service(&mut self, s: &ServiceRecord) {
        self.str(&s.name);
        self.buf.extend_from_slice(&s.port.to_be_bytes());
        match s.address {
            None => self.u8(0),
            Some(IpAddr::V4(v4)) => {
                self.u8(4);
                self.buf.extend_from_slice(&v4.octets());
            }
            Some(IpAddr::V6(v6)) => {
                self.u8(6);
                self.buf.extend_from_slice(&v6.octets());
            }
        }
        self.varint(s.tags.len() as u64);
        for t in &s.tags {
            self.str(t);
        }
        self.varint(s.meta.len() as u64);
        for (k, v) in &s.meta {
            self.str(k);
            self.str(v);
        }
        self.u8(s.state);
        self.reason(s.maintenance.as_deref());
    }

    fn event(&mut self, e: &UserEvent) {
        self.varint(e.id);
        self.uuid(&e.origin);
        self.str(&e.kind);
        self.bytes(&e.payload);
        self.varint(e.created_ms);
    }

    /// Append one message (without datagram header).
    pub fn message(&mut self, m: &Message) {
        match m {
            Message::Ping { seq, target, from } => {
                self.u8(1);
                self.varint(u64::from(*seq));
                self.uuid(target);
                self.uuid(from);
            }
            Message::Ack { seq, from } => {
                self.u8(2);
                self.varint(u64::from(*seq));
                self.uuid(from);
            }
            Message::Nack { seq } => {
                self.u8(3);
                self.varint(u64::from(*seq));
            }
            Message::IndirectPing {
                seq,
                target,
                target_addr,
                want_nack,
            } => {
                self.u8(4);
                self.varint(u64::from(*seq));
                self.uuid(target);
                self.addr(target_addr);
                self.u8(u8::from(*want_nack));
            }
            Message::Alive(r) => {
                self.u8(5);
                self.record(r);
            }
            Message::Suspect {
                node,
                incarnation,
                from,
            } => {
                self.u8(6);
                self.uuid(node);
                self.varint(*incarnation);
                self.uuid(from);
            }
            Message::Dead {
                node,
                incarnation,
                from,
            } => {
                self.u8(7);
                self.uuid(node);
                self.varint(*incarnation);
                self.uuid(from);
            }
            Message::Leave { node, incarnation } => {
                self.u8(8);
                self.uuid(node);
                self.varint(*incarnation);
            }
            Message::Event(e) => {
                self.u8(9);
                self.event(e);
            }
            Message::DetectPing {
                id,
                from,
                zone,
                padding,
            } => {
                self.u8(10);
                self.varint(*id);
                self.uuid(from);
                self.str(zone);
                self.varint(*padding as u64);
                self.buf.resize(self.buf.len() + padding, 0);
            }
            Message::DetectPong { id, record } => {
                self.u8(11);
                self.varint(*id);
                self.record(record);
            }
        }
    }
}

/// Encode one message alone (to measure it or queue it for piggybacking).
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut w = Writer::new();
    w.message(m);
    w.into_bytes()
}

/// Build a datagram from already-encoded messages.
pub fn datagram<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let parts: Vec<&[u8]> = messages.into_iter().collect();
    let mut w = Writer::new();
    w.u8(VERSION);
    w.varint(parts.len() as u64);
    for p in parts {
        w.buf.extend_from_slice(p);
    }
    w.into_bytes()
}

/// Bytes of datagram header for `n` messages.
pub fn datagram_overhead(n: usize) -> usize {
    1 + varint_len(n as u64)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Encode a push-pull payload.
pub fn encode_push_pull(p: &PushPull) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(VERSION);
    w.u8(u8::from(p.join));
    w.varint(p.members.len() as u64);
    for m in &p.members {
        w.record(m);
    }
    w.varint(p.events.len() as u64);
    for e in &p.events {
        w.event(e);
    }
    w.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads wire values from a byte slice; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Invalid("varint"));
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Invalid("varint"))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::Invalid("sequence number"))
    }

    fn len(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(DecodeError::TooLong {
                what,
                len,
                max: max as u64,
            });
        }
        // A length can never exceed what is left: refuse before allocating.
        if len as usize > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(len as usize)
    }

    fn count(&mut self, what: &'static str, max: u64) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > max {
            return Err(DecodeError::TooLong { what, len: n, max });
        }
        // Every element takes at least one byte.
        if n as usize > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(n as usize)
    }

    fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, DecodeError> {
        let n = self.len(what, max)?;
        Ok(self.take(n)?.to_vec())
    }

    fn str(&mut self, what: &'static str, max: usize) -> Result<String, DecodeError> {
        let n = self.len(what, max)?;
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::Invalid(what))?;
        if s.chars().any(char::is_control) {
            return Err(DecodeError::Invalid(what));
        }
        Ok(s.to_owned())
    }

    /// A name that must follow one of the [`names`] rules (a datagram carrying a node named
    /// `$(id)` is refused whole, before anything in it is believed).
    fn name(
        &mut self,
        what: &'static str,
        max: usize,
        rule: fn(&str) -> Result<(), names::NameError>,
    ) -> Result<String, DecodeError> {
        let s = self.str(what, max)?;
        rule(&s).map_err(|_| DecodeError::Invalid(what))?;
        Ok(s)
    }

    /// An incarnation, at most [`MAX_INCARNATION`].
    fn incarnation(&mut self) -> Result<u64, DecodeError> {
        let v = self.varint()?;
        if v > MAX_INCARNATION {
            return Err(DecodeError::Invalid("incarnation"));
        }
        Ok(v)
    }

    fn uuid(&mut self) -> Result<NodeUuid, DecodeError> {
        let raw = self.take(16)?;
        let mut b = [0u8; 16];
        b.copy_from_slice(raw);
        Ok(NodeUuid::from_bytes(b))
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => {
                let o = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
            }
            6 => {
                let o = self.take(16)?;
                let mut b = [0u8; 16];
                b.copy_from_slice(o);
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(DecodeError::Invalid("address family")),
        };
        let p = self.take(2)?;
        Ok(SocketAddr::new(ip, u16::from_be_bytes([p[0], p[1]])))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag")),
        }
    }

    fn record(&mut self) -> Result<NodeRecord, DecodeError> {
        let uuid = self.uuid()?;
        let incarnation = self.incarnation()?;
        let state = MemberState::from_u8(self.u8()?).ok_or(DecodeError::Invalid("member state"))?;
        let addr = self.addr()?;
        let name = self.name("node name", names::MAX_NODE_NAME, names::node_name)?;
        let display_name =
            self.name("display name", names::MAX_DISPLAY_NAME, names::display_name)?;
        let zone = self.name("zone", names::MAX_GROUP, names::zone)?;
        let n = self.count("groups", MAX_GROUPS as u64)?;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            groups.push(self.name("group", names::MAX_GROUP, names::group)?);
        }
        let is_proxy = self.bool()?;
        let version = self.name("version", 32, names::version)?;
        let n = self.count("checks", MAX_CHECKS as u64)?;
        let mut checks = Vec::with_capacity(n);
        for _ in 0..n {
            checks.push(CheckSummary {
                name: self.name("check name", MAX_CHECK_NAME, names::check_name)?,
                state: self.u8()?,
            });
        }
        let n = self.count("services", MAX_SERVICES as u64)?;
        let mut services = Vec::with_capacity(n);
        for _ in 0..n {
            services.push(self.service()?);
        }
        let maintenance = self.reason()?;
        Ok(NodeRecord {
            checks,
            services,
            maintenance,
            uuid,
            name,
            display_name,
            addr,
            zone,
            groups,
            is_proxy,
            incarnation,
            state,
            version,
        })
    }

    fn reason(&mut self) -> Result<Option<String>, DecodeError> {
        if !self.bool()? {
            return Ok(None);
        }
        let text = self.str("maintenance reason", names::MAX_REASON)?;
        Ok(Some(text))
    }

    fn service(&mut self) -> Result<ServiceRecord, DecodeError> {
        let name = self.name("service name", names::MAX_SERVICE_NAME, names::service_name)?;
        let p = self.take(2)?;
        let port = u16::from_be_bytes([p[0], p[1]]);
        let address = match self.u8()? {
            0 => None,
            4 => {
                let o = self.take(4)?;
                Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3])))
            }
            6 => {
                let o = self.take(16)?;
                let mut b = [0u8; 16];
                b.copy_from_slice(o);
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => return Err(DecodeError::Invalid("service address family")),
        };
        let n = self.count("service tags", MAX_TAGS as u64)?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(self.name("service tag", names::MAX_SERVICE_NAME, names::service_tag)?);
        }
        let n = self.count("service meta", MAX_META as u64)?;
        let mut meta = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.name("meta key", names::MAX_META_KEY, names::meta_key)?;
            let v = self.str("meta value", names::MAX_META_VALUE)?;
            meta.push((k, v));
        }
        let state = self.u8()?;
        let maintenance = self.reason()?;
        Ok(ServiceRecord {
            name,
            port,
            address,
            tags,
            meta,
            state,
            maintenance,
        })
    }

    fn event(&mut self) -> Result<UserEvent, DecodeError> {
        let id = self.varint()?;
        let origin = self.uuid()?;
        let kind = self.name("event type", names::MAX_EVENT_TYPE, names::event_type)?;
        let payload = self.bytes("event payload", MAX_EVENT_PAYLOAD)?;
        names::event_payload(&payload).map_err(|_| DecodeError::Invalid("event payload"))?;
        Ok(UserEvent {
            id,
            origin,
            kind,
            payload,
            created_ms: self.varint()?,
        })
    }

    fn message(&mut self) -> Result<Message, DecodeError> {
        Ok(match self.u8()? {
            1 => Message::Ping {
                seq: self.u32()?,
                target: self.uuid()?,
                from: self.uuid()?,
            },
            2 => Message::Ack {
                seq: self.u32()?,
                from: self.uuid()?,
            },
            3 => Message::Nack { seq: self.u32()? },
            4 => Message::IndirectPing {
                seq: self.u32()?,
                target: self.uuid()?,
                target_addr: self.addr()?,
                want_nack: self.bool()?,
            },
            5 => Message::Alive(self.record()?),
            6 => Message::Suspect {
                node: self.uuid()?,
                incarnation: self.incarnation()?,
                from: self.uuid()?,
            },
            7 => Message::Dead {
                node: self.uuid()?,
                incarnation: self.incarnation()?,
                from: self.uuid()?,
            },
            8 => Message::Leave {
                node: self.uuid()?,
                incarnation: self.incarnation()?,
            },
            9 => Message::Event(self.event()?),
            10 => {
                let id = self.varint()?;
                let from = self.uuid()?;
                let zone = self.name("zone", names::MAX_GROUP, names::zone)?;
                let padding = self.len("padding", MAX_DATAGRAM)?;
                self.take(padding)?;
                Message::DetectPing {
                    id,
                    from,
                    zone,
                    padding,
                }
            }
            11 => Message::DetectPong {
                id: self.varint()?,
                record: self.record()?,
            },
            tag => return Err(DecodeError::UnknownTag(tag)),
        })
    }

    fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(DecodeError::Version(v)),
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Decode a datagram into its messages.
pub fn decode_datagram(bytes: &[u8]) -> Result<Vec<Message>, DecodeError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLong {
            what: "datagram",
            len: bytes.len() as u64,
            max: MAX_DATAGRAM as u64,
        });
    }
    let mut r = Reader::new(bytes);
    r.version()?;
    let n = r.count("messages", MAX_MESSAGES)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.message()?);
    }
    r.finish()?;
    Ok(out)
}

/// Decode a push-pull payload.
pub fn decode_push_pull(bytes: &[u8]) -> Result<PushPull, DecodeError> {
    if bytes.len() > MAX_PUSH_PULL {
        return Err(DecodeError::TooLong {
            what: "push-pull",
            len: bytes.len() as u64,
            max: MAX_PUSH_PULL as u64,
        });
    }
    let mut r = Reader::new(bytes);
    r.version()?;
    let join = r.bool()?;
    let n = r.count("members", MAX_MEMBERS)?;
    let mut members = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        members.push(r.record()?);
    }
    let n = r.count("events", MAX_EVENTS)?;
    let mut events = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        events.push(r.event()?);
    }
    r.finish()?;
    Ok(PushPull {
        join,
        members,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn record(n: u8) -> NodeRecord {
        NodeRecord {
            uuid: NodeUuid::from_bytes([n; 16]),
            name: format!("node-{n}"),
            display_name: format!("Node {n}"),
            addr: SocketAddr::from(([127, 0, 0, n], 6768)),
            zone: "internet".into(),
            groups: vec!["linux".into(), "web".into()],
            is_proxy: n.is_multiple_of(2),
            incarnation: u64::from(n) * 1000,
            state: MemberState::Alive,
            version: "0.1.0".into(),
            checks: (0..n % 3)
                .map(|i| CheckSummary {
                    name: format!("linux/check-{i}"),
                    state: i,
                })
                .collect(),
            services: (0..n % 3)
                .map(|i| ServiceRecord {
                    name: format!("svc-{i}"),
                    port: 8000 + u16::from(i),
                    address: (i == 1).then(|| IpAddr::from([10, 0, 0, n])),
                    tags: vec!["primary".into(), format!("t{i}")],
                    meta: vec![("version".into(), format!("1.{i} \u{e9}"))],
                    state: i,
                    maintenance: (i == 1).then(|| "upgrade".to_owned()),
                })
                .collect(),
            maintenance: n.is_multiple_of(5).then(|| format!("reboot {n}")),
        }
    }

    fn all_messages() -> Vec<Message> {
        let a = NodeUuid::from_bytes([1; 16]);
        let b = NodeUuid::from_bytes([2; 16]);
        vec![
            Message::Ping {
                seq: 7,
                target: a,
                from: b,
            },
            Message::Ack {
                seq: u32::MAX,
                from: a,
            },
            Message::Nack { seq: 0 },
            Message::IndirectPing {
                seq: 9,
                target: b,
                target_addr: "[::1]:6768".parse().expect("addr"),
                want_nack: true,
            },
            Message::Alive(record(3)),
            Message::Suspect {
                node: a,
                incarnation: MAX_INCARNATION,
                from: b,
            },
            Message::Dead {
                node: b,
                incarnation: 1,
                from: a,
            },
            Message::Leave {
                node: a,
                incarnation: 2,
            },
            Message::Event(UserEvent {
                id: 42,
                origin: a,
                kind: "deploy".into(),
                payload: b"{\"sha\": \"abc\"}\n".to_vec(),
                created_ms: 1_700_000_000_000,
            }),
            Message::DetectPing {
                id: 77,
                from: b,
                zone: "dc1".into(),
                padding: 3,
            },
            Message::DetectPong {
                id: 77,
                record: record(4),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = all_messages();
        let encoded: Vec<Vec<u8>> = msgs.iter().map(encode_message).collect();
        let dgram = datagram(encoded.iter().map(Vec::as_slice));
        assert_eq!(
            dgram.len(),
            datagram_overhead(msgs.len()) + encoded.iter().map(Vec::len).sum::<usize>()
        );
        assert_eq!(decode_datagram(&dgram).expect("decode"), msgs);
    }

    #[test]
    fn push_pull_round_trips() {
        let p = PushPull {
            join: true,
            members: (1..=5).map(record).collect(),
            events: vec![],
        };
        assert_eq!(decode_push_pull(&encode_push_pull(&p)).expect("decode"), p);
    }

    #[test]
    fn a_big_state_splits_into_bounded_parts_that_each_name_their_sender() {
        let mut members: Vec<NodeRecord> = (1..=200).map(|n| record((n % 250) as u8)).collect();
        for (i, m) in members.iter_mut().enumerate() {
            m.name = format!("node-{i}");
        }
        let whole = PushPull {
            join: false,
            members: members.clone(),
            events: vec![UserEvent {
                id: 1,
                origin: members[0].uuid,
                kind: "deploy".into(),
                payload: b"x".to_vec(),
                created_ms: 5,
            }],
        };
        let parts = whole.clone().split(4096);
        assert!(parts.len() > 3, "{} parts", parts.len());
        for (i, p) in parts.iter().enumerate() {
            assert!(encode_push_pull(p).len() <= 4096 + 300, "part {i}");
            assert_eq!(p.members[0], members[0], "part {i} names its sender");
            assert_eq!(p.events.len(), usize::from(i == 0));
        }
        let rejoined: Vec<NodeRecord> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.members.iter().skip(usize::from(i > 0)).cloned())
            .collect();
        assert_eq!(rejoined, members);
        assert_eq!(whole.clone().split(usize::MAX), vec![whole]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(decode_datagram(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode_datagram(&[9, 0]), Err(DecodeError::Version(9)));
        assert_eq!(
            decode_datagram(&[VERSION, 1, 200]),
            Err(DecodeError::UnknownTag(200))
        );
        assert_eq!(
            decode_datagram(&[VERSION, 0, 0]),
            Err(DecodeError::Trailing(1))
        );
        // A count bigger than the bytes that follow is refused before allocating.
        assert_eq!(
            decode_datagram(&[VERSION, 100, 3, 0]),
            Err(DecodeError::Truncated)
        );
        assert!(matches!(
            decode_datagram(&vec![0u8; MAX_DATAGRAM + 1]),
            Err(DecodeError::TooLong { .. })
        ));
        // A 10-byte varint overflowing u64.
        let mut over = vec![VERSION, 1, 3];
        over.extend_from_slice(&[0xff; 9]);
        over.push(0x7f);
        assert_eq!(decode_datagram(&over), Err(DecodeError::Invalid("varint")));
    }

    #[test]
    fn names_that_could_reach_a_shell_are_refused_on_entry() {
        let bad_records = [
            NodeRecord {
                name: "$(id>PWNED)".into(),
                ..record(1)
            },
            NodeRecord {
                groups: vec!["web`id`".into()],
                ..record(1)
            },
            NodeRecord {
                zone: "a b".into(),
                ..record(1)
            },
            NodeRecord {
                checks: vec![CheckSummary {
                    name: "x;reboot".into(),
                    state: 0,
                }],
                ..record(1)
            },
            NodeRecord {
                display_name: "web\u{1b}[2J".into(),
                ..record(1)
            },
        ];
        for r in bad_records {
            let d = datagram([encode_message(&Message::Alive(r.clone())).as_slice()]);
            assert!(
                matches!(decode_datagram(&d), Err(DecodeError::Invalid(_))),
                "{r:?} must be refused"
            );
        }
        let event = Message::Event(UserEvent {
            id: 1,
            origin: NodeUuid::from_bytes([1; 16]),
            kind: "deploy $(id)".into(),
            payload: vec![],
            created_ms: 0,
        });
        let d = datagram([encode_message(&event).as_slice()]);
        assert_eq!(decode_datagram(&d), Err(DecodeError::Invalid("event type")));
        let binary = Message::Event(UserEvent {
            id: 1,
            origin: NodeUuid::from_bytes([1; 16]),
            kind: "deploy".into(),
            payload: vec![0x1b, 0xff],
            created_ms: 0,
        });
        let d = datagram([encode_message(&binary).as_slice()]);
        assert_eq!(
            decode_datagram(&d),
            Err(DecodeError::Invalid("event payload"))
        );
    }

    #[test]
    fn incarnations_near_the_limit_are_refused_on_entry() {
        for (incarnation, ok) in [
            (MAX_INCARNATION, true),
            (MAX_INCARNATION + 1, false),
            (u64::MAX, false),
        ] {
            let m = Message::Suspect {
                node: NodeUuid::from_bytes([0; 16]),
                incarnation,
                from: NodeUuid::from_bytes([1; 16]),
            };
            let d = datagram([encode_message(&m).as_slice()]);
            assert_eq!(decode_datagram(&d).is_ok(), ok, "{incarnation}");
            let alive = Message::Alive(NodeRecord {
                incarnation,
                ..record(2)
            });
            let d = datagram([encode_message(&alive).as_slice()]);
            assert_eq!(decode_datagram(&d).is_ok(), ok, "{incarnation}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_datagram(&bytes);
            let _ = decode_push_pull(&bytes);
        }

        #[test]
        fn mutated_valid_datagrams_never_panic(idx in 0usize..1000, byte in any::<u8>()) {
            let msgs = all_messages();
            let encoded: Vec<Vec<u8>> = msgs.iter().map(encode_message).collect();
            let mut dgram = datagram(encoded.iter().map(Vec::as_slice));
            let i = idx % dgram.len();
            dgram[i] = byte;
            let _ = decode_datagram(&dgram);
            dgram.truncate(i);
            let _ = decode_datagram(&dgram);
        }

        #[test]
        fn varints_round_trip(v in 0..=MAX_INCARNATION, seq in any::<u32>()) {
            let m = Message::Suspect { node: NodeUuid::from_bytes([0; 16]), incarnation: v, from: NodeUuid::from_bytes([1; 16]) };
            let a = Message::Ack { seq, from: NodeUuid::from_bytes([3; 16]) };
            let e = [encode_message(&m), encode_message(&a)];
            let d = datagram(e.iter().map(Vec::as_slice));
            prop_assert_eq!(decode_datagram(&d).expect("decode"), vec![m, a]);
        }
    }
}
