//! KV messages between nodes over the cluster TCP port (sealed with the cluster key by the
//! agent). A frame's plaintext is `[kind][id: varint][message]`: kind [`KIND_REQUEST`] or
//! [`KIND_RESPONSE`]; the id matches a response to its request on a multiplexed connection.
//! Decoding is bounded and never panics.
//!
//! Messages are told apart by a type byte; a node that meets a type it does not know refuses
//! the frame (the agent counts it as rejected and closes the connection), so a message type is
//! never changed in place: a new shape gets a new type byte. `Buckets` (request 7, answer 8)
//! came with hash-range anti-entropy; a node asking an older one gets no answer and falls back
//! to full digests (type 5), which every version answers.

use opsbro_types::NodeUuid;

use crate::entry::{Entry, Meta};

/// Frame kind of a KV request (push-pull is 1).
pub const KIND_REQUEST: u8 = 2;
/// Frame kind of a KV response.
pub const KIND_RESPONSE: u8 = 3;
/// Most items in one message.
const MAX_ITEMS: u64 = 100_000;
/// Most bytes of entries in one `Entries` page or `Digest` answer: an answer always fits a
/// cluster frame, whatever is stored (a page holds at least one entry).
pub const PAGE_BYTES: usize = 1024 * 1024;
/// Most keys in one `Digest` request.
pub const DIGEST_ITEMS: usize = 4096;

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Ended too early.
    #[error("truncated KV message")]
    Truncated,
    /// Bad tag or value.
    #[error("invalid KV message: {0}")]
    Invalid(&'static str),
    /// Extra bytes.
    #[error("{0} trailing bytes after a KV message")]
    Trailing(usize),
}

/// A client write, as forwarded to the key's coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set the value.
    Put {
        /// The value.
        value: Vec<u8>,
        /// Only if the current `modify_index` is this (0: only if absent).
        cas: Option<u64>,
        /// Expire after this many ms (0: never).
        ttl_ms: u64,
    },
    /// Delete (leaves a tombstone).
    Delete {
        /// Only if the current `modify_index` is this.
        cas: Option<u64>,
    },
}

/// A request to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Coordinate a client write (you are the key's first live owner).
    Write {
        /// The node asked to coordinate: any other node refuses it (a sealed request captured
        /// on its way cannot be replayed to another node).
        to: NodeUuid,
        /// Key.
        key: String,
        /// What to do.
        op: WriteOp,
        /// Wall-clock ms after which the sender has given up (0: none): a coordinator that
        /// reads the request later (it was frozen, the socket held it) must not apply a write
        /// its client was told had failed.
        deadline_ms: u64,
    },
    /// Keep these versions (replication, handoff, repair) durably, then answer.
    Replicate {
        /// (key, entry) pairs.
        entries: Vec<(String, Entry)>,
    },
    /// Your copy of a key.
    Get {
        /// Key.
        key: String,
    },
    /// Your entries (tombstones included) under a prefix, in key order, one page at a time.
    List {
        /// Prefix.
        prefix: String,
        /// Start after this key (empty: from the first key).
        after: String,
    },
    /// Anti-entropy: the sender's versions of keys you own too.
    Digest {
        /// (key, version).
        items: Vec<(String, u64)>,
    },
    /// Anti-entropy: the sender's bucket hashes of the keys you both own
    /// ([`crate::buckets`]); answered with the buckets that differ.
    Buckets {
        /// The sender (the hashes are of the keys it shares with you).
        from: NodeUuid,
        /// The bucket scheme ([`crate::buckets::SCHEME`]).
        scheme: u64,
        /// One hash per bucket.
        hashes: Vec<u64>,
    },
    /// Answer when the key's version passes `index`, or at the timeout.
    Wait {
        /// Key.
        key: String,
        /// Version to pass.
        index: u64,
        /// Longest wait.
        timeout_ms: u64,
    },
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A write was acknowledged with this version.
    Written {
        /// Its version (`modify_index`).
        index: u64,
    },
    /// A write or read was refused (HTTP-like code: 400, 404, 409, 503) with a reason.
    Refused {
        /// Status.
        code: u16,
        /// Why.
        message: String,
    },
    /// Replicated entries are durable here.
    Stored,
    /// Replicated entries are durable here, except these keys, for which this node holds a
    /// newer version (its `modify_index` is returned, not the value: the answer stays small):
    /// the write did not take effect here.
    Superseded(Vec<(String, u64)>),
    /// A key's entry here.
    Entry(Option<Entry>),
    /// A page of entries (at most [`PAGE_BYTES`]); `more`: ask again after the last key.
    Entries {
        /// The entries, in key order.
        entries: Vec<(String, Entry)>,
        /// Whether more keys follow.
        more: bool,
    },
    /// Anti-entropy answer to `Buckets`: the buckets whose hashes differ here.
    Buckets {
        /// Bucket numbers, ascending.
        differ: Vec<u32>,
    },
    /// Anti-entropy answer: keys the receiver needs, and its newer entries.
    Digest {
        /// Keys to send.
        need: Vec<String>,
        /// Entries newer than the sender's.
        newer: Vec<(String, Entry)>,
    },
}

/// How an entry is written, for the store and in messages (the wire owns byte layouts; the
/// entry is a plain value).
impl Entry {
    /// Encode for the store and the wire.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.index);
        put_varint(out, self.create_index);
        out.push(u8::from(self.deleted));
        put_varint(out, self.expires_ms);
        put_bytes(out, &self.value);
    }

    /// Encode to a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.value.len() + 24);
        self.encode(&mut out);
        out
    }

    /// Decode [`Entry::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Entry, WireError> {
        let mut r = Reader::new(bytes);
        let e = r.entry()?;
        r.finish()?;
        Ok(e)
    }

    /// Decode only the [`Meta`] of [`Entry::to_bytes`]: the header before the value (three
    /// varints and a flag). The value's length is checked against what is left, so exactly the
    /// bytes [`Entry::from_bytes`] accepts decode here, but the value is not copied.
    pub fn meta_from_bytes(bytes: &[u8]) -> Result<Meta, WireError> {
        let mut r = Reader::new(bytes);
        let index = r.varint()?;
        let _create_index = r.varint()?;
        let deleted = r.flag()?;
        let expires_ms = r.varint()?;
        let len = r.varint()?;
        let left = (bytes.len() - r.at) as u64;
        if len > left {
            return Err(WireError::Truncated);
        }
        if len < left {
            return Err(WireError::Trailing((left - len) as usize));
        }
        Ok(Meta {
            index,
            deleted,
            expires_ms,
        })
    }
}

/// Append a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Append length-prefixed bytes.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_entries(out: &mut Vec<u8>, entries: &[(String, Entry)]) {
    put_varint(out, entries.len() as u64);
    for (k, e) in entries {
        put_bytes(out, k.as_bytes());
        e.encode(out);
    }
}

fn put_opt(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            out.push(1);
            put_varint(out, v);
        }
        None => out.push(0),
    }
}

/// Encode a frame's plaintext: `[kind][id][message]`.
pub fn encode_request(id: u64, r: &Request) -> Vec<u8> {
    let mut out = vec![KIND_REQUEST];
    put_varint(&mut out, id);
    match r {
        Request::Write {
            to,
            key,
            op,
            deadline_ms,
        } => {
            out.push(1);
            out.extend_from_slice(to.as_bytes());
            put_bytes(&mut out, key.as_bytes());
            match op {
                WriteOp::Put { value, cas, ttl_ms } => {
                    out.push(1);
                    put_bytes(&mut out, value);
                    put_opt(&mut out, *cas);
                    put_varint(&mut out, *ttl_ms);
                }
                WriteOp::Delete { cas } => {
                    out.push(2);
                    put_opt(&mut out, *cas);
                }
            }
            put_varint(&mut out, *deadline_ms);
        }
        Request::Replicate { entries } => {
            out.push(2);
            put_entries(&mut out, entries);
        }
        Request::Get { key } => {
            out.push(3);
            put_bytes(&mut out, key.as_bytes());
        }
        Request::List { prefix, after } => {
            out.push(4);
            put_bytes(&mut out, prefix.as_bytes());
            put_bytes(&mut out, after.as_bytes());
        }
        Request::Digest { items } => {
            out.push(5);
            put_varint(&mut out, items.len() as u64);
            for (k, v) in items {
                put_bytes(&mut out, k.as_bytes());
                put_varint(&mut out, *v);
            }
        }
        Request::Wait {
            key,
            index,
            timeout_ms,
        } => {
            out.push(6);
            put_bytes(&mut out, key.as_bytes());
            put_varint(&mut out, *index);
            put_varint(&mut out, *timeout_ms);
        }
        Request::Buckets {
            from,
            scheme,
            hashes,
        } => {
            out.push(7);
            out.extend_from_slice(from.as_bytes());
            put_varint(&mut out, *scheme);
            put_varint(&mut out, hashes.len() as u64);
            // Hashes look random: fixed 8 bytes each is smaller than varints.
            for h in hashes {
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    out
}

/// Encode a response frame's plaintext.
pub fn encode_response(id: u64, r: &Response) -> Vec<u8> {
    let mut out = vec![KIND_RESPONSE];
    put_varint(&mut out, id);
    match r {
        Response::Written { index } => {
            out.push(1);
            put_varint(&mut out, *index);
        }
        Response::Refused { code, message } => {
            out.push(2);
            put_varint(&mut out, u64::from(*code));
            put_bytes(&mut out, message.as_bytes());
        }
        Response::Stored => out.push(3),
        Response::Entry(e) => {
            out.push(4);
            match e {
                Some(e) => {
                    out.push(1);
                    e.encode(&mut out);
                }
                None => out.push(0),
            }
        }
        Response::Entries { entries, more } => {
            out.push(5);
            put_entries(&mut out, entries);
            out.push(u8::from(*more));
        }
        Response::Superseded(versions) => {
            out.push(7);
            put_varint(&mut out, versions.len() as u64);
            for (k, v) in versions {
                put_bytes(&mut out, k.as_bytes());
                put_varint(&mut out, *v);
            }
        }
        Response::Digest { need, newer } => {
            out.push(6);
            put_varint(&mut out, need.len() as u64);
            for k in need {
                put_bytes(&mut out, k.as_bytes());
            }
            put_entries(&mut out, newer);
        }
        Response::Buckets { differ } => {
            out.push(8);
            put_varint(&mut out, differ.len() as u64);
            for b in differ {
                put_varint(&mut out, u64::from(*b));
            }
        }
    }
    out
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request with its id.
    Request(u64, Request),
    /// A response with its id.
    Response(u64, Response),
}

/// Decode a frame's plaintext.
pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
    let mut r = Reader::new(bytes);
    let kind = r.u8()?;
    let id = r.varint()?;
    let frame = match kind {
        KIND_REQUEST => Frame::Request(id, r.request()?),
        KIND_RESPONSE => Frame::Response(id, r.response()?),
        _ => return Err(WireError::Invalid("frame kind")),
    };
    r.finish()?;
    Ok(frame)
}

/// Bounded reader.
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Read `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.at..end).ok_or(WireError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Invalid("varint"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| WireError::Invalid("utf-8"))
    }

    fn count(&mut self) -> Result<usize, WireError> {
        let n = self.varint()?;
        if n > MAX_ITEMS {
            return Err(WireError::Invalid("too many items"));
        }
        Ok(n as usize)
    }

    fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("flag")),
        }
    }

    fn uuid(&mut self) -> Result<NodeUuid, WireError> {
        let raw = self.take(16)?;
        let mut b = [0u8; 16];
        b.copy_from_slice(raw);
        Ok(NodeUuid::from_bytes(b))
    }

    fn opt(&mut self) -> Result<Option<u64>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.varint()?)),
            _ => Err(WireError::Invalid("option")),
        }
    }

    /// One entry.
    pub fn entry(&mut self) -> Result<Entry, WireError> {
        let index = self.varint()?;
        let create_index = self.varint()?;
        let deleted = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Invalid("flag")),
        };
        let expires_ms = self.varint()?;
        let value = self.bytes()?.to_vec();
        Ok(Entry {
            value,
            index,
            create_index,
            deleted,
            expires_ms,
        })
    }

    fn entries(&mut self) -> Result<Vec<(String, Entry)>, WireError> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push((self.string()?, self.entry()?));
        }
        Ok(out)
    }

    fn request(&mut self) -> Result<Request, WireError> {
        Ok(match self.u8()? {
            1 => {
                let to = self.uuid()?;
                let key = self.string()?;
                let op = match self.u8()? {
                    1 => WriteOp::Put {
                        value: self.bytes()?.to_vec(),
                        cas: self.opt()?,
                        ttl_ms: self.varint()?,
                    },
                    2 => WriteOp::Delete { cas: self.opt()? },
                    _ => return Err(WireError::Invalid("write op")),
                };
                Request::Write {
                    to,
                    key,
                    op,
                    deadline_ms: self.varint()?,
                }
            }
            2 => Request::Replicate {
                entries: self.entries()?,
            },
            3 => Request::Get {
                key: self.string()?,
            },
            4 => Request::List {
                prefix: self.string()?,
                after: self.string()?,
            },
            5 => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push((self.string()?, self.varint()?));
                }
                Request::Digest { items }
            }
            6 => Request::Wait {
                key: self.string()?,
                index: self.varint()?,
                timeout_ms: self.varint()?,
            },
            7 => {
                let from = self.uuid()?;
                let scheme = self.varint()?;
                let n = self.count()?;
                let mut hashes = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let raw = self.take(8)?;
                    let mut h = [0u8; 8];
                    h.copy_from_slice(raw);
                    hashes.push(u64::from_le_bytes(h));
                }
                Request::Buckets {
                    from,
                    scheme,
                    hashes,
                }
            }
            _ => return Err(WireError::Invalid("request type")),
        })
    }

    fn response(&mut self) -> Result<Response, WireError> {
        Ok(match self.u8()? {
            1 => Response::Written {
                index: self.varint()?,
            },
            2 => Response::Refused {
                code: u16::try_from(self.varint()?).map_err(|_| WireError::Invalid("code"))?,
                message: self.string()?,
            },
            3 => Response::Stored,
            4 => Response::Entry(match self.u8()? {
                0 => None,
                1 => Some(self.entry()?),
                _ => return Err(WireError::Invalid("option")),
            }),
            5 => Response::Entries {
                entries: self.entries()?,
                more: match self.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("flag")),
                },
            },
            7 => {
                let n = self.count()?;
                let mut versions = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    versions.push((self.string()?, self.varint()?));
                }
                Response::Superseded(versions)
            }
            6 => {
                let n = self.count()?;
                let mut need = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    need.push(self.string()?);
                }
                Response::Digest {
                    need,
                    newer: self.entries()?,
                }
            }
            8 => {
                let n = self.count()?;
                let mut differ = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    differ.push(
                        u32::try_from(self.varint()?).map_err(|_| WireError::Invalid("bucket"))?,
                    );
                }
                Response::Buckets { differ }
            }
            _ => return Err(WireError::Invalid("response type")),
        })
    }

    /// Fail on trailing bytes.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(i: u64) -> Entry {
        Entry {
            value: vec![i as u8; (i % 5) as usize],
            index: i << 16,
            create_index: i,
            deleted: i.is_multiple_of(2),
            expires_ms: i * 3,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let requests = vec![
            Request::Write {
                to: NodeUuid::from_bytes([7; 16]),
                key: "a/b".into(),
                op: WriteOp::Put {
                    value: b"v".to_vec(),
                    cas: Some(0),
                    ttl_ms: 5000,
                },
                deadline_ms: 0,
            },
            Request::Write {
                to: NodeUuid::from_bytes([8; 16]),
                key: "k".into(),
                op: WriteOp::Delete { cas: None },
                deadline_ms: 1_700_000_000_000,
            },
            Request::Replicate {
                entries: vec![("x".into(), entry(3)), ("y".into(), entry(4))],
            },
            Request::Get { key: "k".into() },
            Request::List {
                prefix: "".into(),
                after: "a/b".into(),
            },
            Request::Digest {
                items: vec![("a".into(), 1), ("b".into(), u64::MAX)],
            },
            Request::Wait {
                key: "k".into(),
                index: 9,
                timeout_ms: 30_000,
            },
            Request::Buckets {
                from: NodeUuid::from_bytes([9; 16]),
                scheme: 1,
                hashes: vec![0, u64::MAX, 0x0123_4567_89ab_cdef],
            },
        ];
        for (i, r) in requests.into_iter().enumerate() {
            let bytes = encode_request(i as u64 * 1000, &r);
            assert_eq!(decode(&bytes), Ok(Frame::Request(i as u64 * 1000, r)));
        }
        let responses = vec![
            Response::Written { index: 77 },
            Response::Refused {
                code: 409,
                message: "cas".into(),
            },
            Response::Stored,
            Response::Entry(None),
            Response::Entry(Some(entry(7))),
            Response::Entries {
                entries: vec![("k".into(), entry(1))],
                more: true,
            },
            Response::Superseded(vec![("k".into(), 9 << 16)]),
            Response::Digest {
                need: vec!["a".into()],
                newer: vec![("b".into(), entry(2))],
            },
            Response::Buckets {
                differ: vec![0, 7, 1023],
            },
        ];
        for r in responses {
            let bytes = encode_response(u64::MAX, &r);
            assert_eq!(decode(&bytes), Ok(Frame::Response(u64::MAX, r)));
        }
    }

    #[test]
    fn an_unknown_message_type_is_refused_and_a_comparison_stays_small() {
        // What a node does with a type it does not know (as an older node does with
        // `Buckets`): an error (the agent counts it and closes the connection), never a
        // misreading.
        let request = encode_request(
            1,
            &Request::Buckets {
                from: NodeUuid::from_bytes([1; 16]),
                scheme: 1,
                hashes: vec![0; 1024],
            },
        );
        let mut old = request.clone();
        old[2] = 99;
        assert_eq!(decode(&old), Err(WireError::Invalid("request type")));
        // An 8 KiB comparison: 1024 hashes of 8 bytes, and a few bytes of header.
        assert!(request.len() < 1024 * 8 + 32, "{}", request.len());
        let truncated = &request[..request.len() - 3];
        assert_eq!(decode(truncated), Err(WireError::Truncated));
    }

    proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let _ = Entry::from_bytes(&bytes);
            // The header alone decodes exactly when the whole entry does.
            prop_assert_eq!(
                Entry::meta_from_bytes(&bytes).ok(),
                Entry::from_bytes(&bytes).ok().map(|e| e.meta())
            );
        }

        #[test]
        fn an_entry_header_decodes_to_its_meta(
            index in any::<u64>(),
            deleted in any::<bool>(),
            expires_ms in any::<u64>(),
            value in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let e = Entry { value, index, create_index: index / 2, deleted, expires_ms };
            prop_assert_eq!(Entry::meta_from_bytes(&e.to_bytes()), Ok(e.meta()));
        }
    }
}
