//! The answer fast path: a plain `A`/`AAAA` question for a name in the domain, answered from a
//! cache of [`answer`]'s results without decoding the query into hickory's types.
//!
//! Nearly every query a cluster asks is the same few names (`redis.group.opsbro`), so the
//! answer for a name is computed once by [`answer`] (the one place that decides what a name
//! means) and kept until the directory changes; a query then costs a header check, a
//! lower-casing copy of the name, one hash lookup, a shuffle and a few hundred bytes written.
//! Anything else — another type or class, compressed or odd questions, EDNS versions other than
//! 0, NXDOMAIN and NODATA (which carry the SOA), answers that would need truncation, names
//! outside the domain — is declined, and the caller takes hickory's full path. Tests check the
//! two paths give the same answers.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name, RData, RecordType};
use rand::seq::SliceRandom;

use crate::{Answer, Node, Settings, answer};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// Names remembered per directory version (only names that have addresses are kept).
const MAX_ENTRIES: usize = 4096;
/// UDP answers without EDNS0 (RFC 1035).
const PLAIN_UDP: usize = 512;

/// Answers from the cache; one per serving thread (no locks).
#[derive(Default)]
pub struct FastPath {
    /// The directory the cache was computed from.
    directory: Option<Arc<Vec<Node>>>,
    /// Lower-cased wire name + query type → the addresses' bytes. Only names with addresses:
    /// others (NXDOMAIN, outside the domain) are asked of [`answer`] again each time, so random
    /// names cannot push the popular ones out.
    cache: HashMap<Vec<u8>, Cached>,
    /// Scratch: the key being looked up.
    key: Vec<u8>,
    /// Scratch: the answer order.
    order: Vec<u16>,
}

/// The records of one answer: `count` addresses of `len` bytes each.
struct Cached {
    rdata: Vec<u8>,
    len: usize,
}

/// A query the fast path can take.
struct Question {
    /// End of the question section (name, type, class) in the query.
    end: usize,
    qtype: u16,
    /// The client's EDNS0 UDP size when it sent an OPT record.
    edns: Option<u16>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// A standard query with one `IN` `A`/`AAAA` question, an uncompressed name and nothing but an
/// EDNS0 (version 0) OPT record after it; the name is written lower-cased into `key`.
fn parse(query: &[u8], key: &mut Vec<u8>) -> Option<Question> {
    let flags = be16(query, 2)?;
    // QR = 0 (a query), opcode 0 (QUERY), TC = 0.
    if flags & 0xfa00 != 0 || be16(query, 4)? != 1 || be16(query, 6)? != 0 || be16(query, 8)? != 0 {
        return None;
    }
    let additional = be16(query, 10)?;
    if additional > 1 {
        return None;
    }
    key.clear();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        // Compression pointers and extended label types are not for a question here.
        if len & 0xc0 != 0 {
            return None;
        }
        let label = query.get(at..at + 1 + len)?;
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
        if key.len() > 255 {
            return None;
        }
        if len == 0 {
            break;
        }
    }
    let qtype = be16(query, at)?;
    if !matches!(qtype, TYPE_A | TYPE_AAAA) || be16(query, at + 2)? != CLASS_IN {
        return None;
    }
    let end = at + 4;
    key.extend_from_slice(&qtype.to_be_bytes());
    let edns = if additional == 1 {
        // OPT: root name, type 41, class = UDP size, TTL = extended rcode, version, flags.
        let opt = query.get(end..end + 11)?;
        if opt[0] != 0 || be16(opt, 1)? != TYPE_OPT || opt[6] != 0 {
            return None;
        }
        let rdlen = usize::from(be16(opt, 9)?);
        if end + 11 + rdlen != query.len() {
            return None;
        }
        // Options (code, length, data) must fill the record exactly, as hickory requires.
        let mut at = end + 11;
        while at < query.len() {
            at += 4 + usize::from(be16(query, at + 2)?);
        }
        if at != query.len() {
            return None;
        }
        Some(be16(opt, 3)?)
    } else {
        if end != query.len() {
            return None;
        }
        None
    };
    Some(Question { end, qtype, edns })
}

/// The name from its lower-cased wire form (without the type bytes).
fn name_of(wire: &[u8]) -> Option<LowerName> {
    let mut labels = Vec::new();
    let mut at = 0;
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        labels.push(wire.get(at + 1..at + 1 + usize::from(len))?);
        at += 1 + usize::from(len);
    }
    let mut name = Name::from_labels(labels).ok()?;
    name.set_fqdn(true);
    Some(LowerName::from(name))
}

/// What [`answer`] says of the name, when it is a plain list of addresses.
fn compute(
    settings: &Settings,
    nodes: &[Node],
    key: &[u8],
    qtype: u16,
    rng: &mut impl rand::Rng,
) -> Option<Cached> {
    let name = name_of(&key[..key.len() - 2])?;
    let Answer::Records { records, soa: None } =
        answer(settings, nodes, &name, RecordType::from(qtype), 0, rng)
    else {
        return None;
    };
    if records.is_empty() {
        return None;
    }
    let mut cached = Cached {
        rdata: Vec::new(),
        len: if qtype == TYPE_A { 4 } else { 16 },
    };
    for r in &records {
        match (&r.data, qtype) {
            (RData::A(a), TYPE_A) => cached.rdata.extend_from_slice(&a.0.octets()),
            (RData::AAAA(a), TYPE_AAAA) => cached.rdata.extend_from_slice(&a.0.octets()),
            _ => return None,
        }
    }
    Some(cached)
}

impl FastPath {
    /// Answer `query` into `out` when it is a plain question whose answer is a list of
    /// addresses that fits the client's UDP size; `false` leaves it to the full path.
    /// The answer is authoritative, shuffled, and repeats the question as the client wrote it.
    pub fn answer(
        &mut self,
        settings: &Settings,
        directory: &Arc<Vec<Node>>,
        recursion_available: bool,
        query: &[u8],
        rng: &mut impl rand::Rng,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(q) = parse(query, &mut self.key) else {
            return false;
        };
        if !self
            .directory
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, directory))
        {
            self.cache.clear();
            self.directory = Some(directory.clone());
        }
        if !self.cache.contains_key(self.key.as_slice()) {
            let Some(computed) = compute(settings, directory, &self.key, q.qtype, rng) else {
                return false;
            };
            if self.cache.len() >= MAX_ENTRIES {
                self.cache.clear();
            }
            self.cache.insert(self.key.clone(), computed);
        }
        let Some(cached) = self.cache.get(self.key.as_slice()) else {
            return false;
        };
        let count = cached.rdata.len() / cached.len;
        let limit = q
            .edns
            .map_or(PLAIN_UDP, |size| usize::from(size).max(PLAIN_UDP));
        let size = q.end + count * (12 + cached.len) + if q.edns.is_some() { 11 } else { 0 };
        if size > limit || count > usize::from(u16::MAX) {
            return false;
        }
        self.order.clear();
        self.order.extend(0..count as u16);
        self.order.shuffle(rng);

        out.clear();
        out.extend_from_slice(&query[..2]);
        // QR, AA, RD as asked; RA when recursors are set; CD as asked; NOERROR.
        out.push(0x84 | (query[2] & 0x01));
        out.push(if recursion_available { 0x80 } else { 0 } | (query[3] & 0x10));
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(count as u16).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&u16::from(q.edns.is_some()).to_be_bytes());
        out.extend_from_slice(&query[12..q.end]);
        for &i in &self.order {
            // The owner name points at the question's (offset 12).
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&q.qtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&settings.ttl.to_be_bytes());
            out.extend_from_slice(&(cached.len as u16).to_be_bytes());
            let at = usize::from(i) * cached.len;
            out.extend_from_slice(&cached.rdata[at..at + cached.len]);
        }
        if let Some(size) = q.edns {
            // Our OPT: the client's size (at least 512), version 0, no flags, no options.
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&size.max(PLAIN_UDP as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode};
    use rand::SeedableRng;

    use crate::test_node as node;

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        crate::test_query(name, qtype, edns)
            .to_vec()
            .expect("encode")
    }

    fn directory() -> Arc<Vec<Node>> {
        let mut v: Vec<Node> = (1..=5)
            .map(|i| node(&format!("n{i}"), &format!("10.0.0.{i}"), &["redis"]))
            .collect();
        v.push(node("six", "fd00::6", &["redis"]));
        Arc::new(v)
    }

    fn fast(path: &mut FastPath, dir: &Arc<Vec<Node>>, q: &[u8], seed: u64) -> Option<Message> {
        let settings = Settings::new("opsbro", 30, 60, false).expect("settings");
        let mut out = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        path.answer(&settings, dir, false, q, &mut rng, &mut out)
            .then(|| Message::from_vec(&out).expect("the fast answer decodes"))
    }

    fn addrs(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn plain_questions_are_answered_like_the_full_path() {
        let dir = directory();
        let mut path = FastPath::default();
        let settings = Settings::new("opsbro", 30, 60, false).expect("settings");
        for (name, qtype, edns) in [
            ("redis.group.opsbro", RecordType::A, None),
            ("ReDiS.GROUP.opsbro.", RecordType::A, Some(1232)),
            ("redis.group.dc1.opsbro", RecordType::AAAA, Some(100)),
            ("n3.name.opsbro", RecordType::A, None),
            ("n3.node.dc1.opsbro", RecordType::A, Some(4096)),
        ] {
            let q = query(name, qtype, edns);
            let m = fast(&mut path, &dir, &q, 1).unwrap_or_else(|| panic!("{name} declined"));
            let lname = LowerName::from(Name::from_ascii(name).expect("name"));
            let Answer::Records { records, .. } = answer(
                &settings,
                &dir,
                &lname,
                qtype,
                0,
                &mut rand::rngs::StdRng::seed_from_u64(1),
            ) else {
                panic!("{name}: the full path has no records")
            };
            let mut want: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
            want.sort();
            assert_eq!(addrs(&m), want, "{name}");
            assert_eq!(m.metadata.id, 0x1234);
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(m.metadata.op_code, OpCode::Query);
            assert!(m.metadata.authoritative && m.metadata.recursion_desired);
            assert!(!m.metadata.recursion_available && !m.metadata.truncation);
            assert_eq!(m.queries.len(), 1);
            // The question as the client wrote it; the answers under that name.
            let mut asked = Name::from_ascii(name).expect("name");
            asked.set_fqdn(true);
            assert!(m.queries[0].name().eq_case(&asked), "{name}");
            for r in &m.answers {
                assert_eq!(r.ttl, 30);
                assert!(r.name.eq_case(&asked));
                assert_eq!(r.record_type(), qtype);
            }
            match edns {
                Some(size) => assert_eq!(
                    m.edns.as_ref().map(|e| e.max_payload()),
                    Some(size.max(512)),
                    "{name}"
                ),
                None => assert!(m.edns.is_none()),
            }
        }
    }

    #[test]
    fn answers_are_shuffled_per_query() {
        let dir = directory();
        let mut path = FastPath::default();
        let q = query("redis.group.opsbro", RecordType::A, None);
        let orders: std::collections::HashSet<Vec<String>> = (0..30)
            .map(|seed| {
                let m = fast(&mut path, &dir, &q, seed).expect("answered");
                m.answers.iter().map(|r| r.data.to_string()).collect()
            })
            .collect();
        assert!(orders.len() > 5, "{orders:?}");
    }

    #[test]
    fn everything_else_is_declined() {
        let dir = directory();
        let mut path = FastPath::default();
        for (name, qtype) in [
            ("nope.group.opsbro", RecordType::A),    // NXDOMAIN: SOA
            ("n1.name.opsbro", RecordType::AAAA),    // NODATA: SOA
            ("redis.group.opsbro", RecordType::MX),  // another type
            ("redis.group.opsbro", RecordType::ANY), // mixed types
            ("opsbro", RecordType::A),               // the domain itself
            ("example.com", RecordType::A),          // not ours
        ] {
            assert!(
                fast(&mut path, &dir, &query(name, qtype, None), 1).is_none(),
                "{name} {qtype}"
            );
        }
        let good = query("redis.group.opsbro", RecordType::A, None);
        // A response, another opcode, truncated, two questions, trailing bytes, cut short.
        let mut response = good.clone();
        response[2] |= 0x80;
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        let mut tc = good.clone();
        tc[2] |= 0x02;
        let mut two = good.clone();
        two[5] = 2;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut edns1 = query("redis.group.opsbro", RecordType::A, Some(1232));
        let version = edns1.len() - 11 + 6;
        edns1[version] = 1;
        for bad in [
            response,
            notify,
            tc,
            two,
            trailing,
            edns1,
            good[..good.len() - 1].to_vec(),
        ] {
            assert!(fast(&mut path, &dir, &bad, 1).is_none());
        }
        assert!(fast(&mut path, &dir, &good, 1).is_some());
        // EDNS options: a well-formed one (a cookie) is fine, one whose length overruns the
        // record is refused like hickory refuses it.
        let with_option = |code_len: [u8; 4], data: &[u8]| {
            let mut q = query("redis.group.opsbro", RecordType::A, Some(1232));
            let rdlen_at = q.len() - 2;
            let rdlen = (4 + data.len()) as u16;
            q[rdlen_at..].copy_from_slice(&rdlen.to_be_bytes());
            q.extend_from_slice(&code_len);
            q.extend_from_slice(data);
            q
        };
        let cookie = with_option([0, 10, 0, 8], &[7; 8]);
        assert!(fast(&mut path, &dir, &cookie, 1).is_some());
        let overrun = with_option([0, 10, 0, 12], &[7; 8]);
        assert!(fast(&mut path, &dir, &overrun, 1).is_none());
        // Names without addresses are not remembered: random names cannot fill the cache.
        for i in 0..100 {
            let q = query(&format!("x{i}.group.opsbro"), RecordType::A, None);
            assert!(fast(&mut path, &dir, &q, 1).is_none());
        }
        assert_eq!(path.cache.len(), 1);
    }

    #[test]
    fn an_answer_that_does_not_fit_is_left_to_the_full_path() {
        let many: Arc<Vec<Node>> = Arc::new(
            (1..=40)
                .map(|i| node(&format!("n{i}"), &format!("10.0.1.{i}"), &["big"]))
                .collect(),
        );
        let mut path = FastPath::default();
        // 40 × 16 bytes of records do not fit 512 bytes; they fit a 1232-byte EDNS buffer.
        assert!(
            fast(
                &mut path,
                &many,
                &query("big.group.opsbro", RecordType::A, None),
                1
            )
            .is_none()
        );
        let m = fast(
            &mut path,
            &many,
            &query("big.group.opsbro", RecordType::A, Some(1232)),
            1,
        )
        .expect("fits with EDNS0");
        assert_eq!(m.answers.len(), 40);
    }

    #[test]
    fn a_new_directory_replaces_the_cache() {
        let mut path = FastPath::default();
        let q = query("redis.group.opsbro", RecordType::A, None);
        let first = directory();
        assert_eq!(addrs(&fast(&mut path, &first, &q, 1).expect("a")).len(), 5);
        let mut v = (*first).clone();
        v[0].alive = false;
        let second = Arc::new(v);
        assert_eq!(addrs(&fast(&mut path, &second, &q, 1).expect("a")).len(), 4);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let dir = directory();
            let mut path = FastPath::default();
            let _ = fast(&mut path, &dir, &bytes, 1);
            // The same bytes behind a valid header and question prefix.
            let mut q = query("redis.group.opsbro", RecordType::A, None);
            q.truncate(12);
            q.extend_from_slice(&bytes);
            q[5] = 1;
            if let Some(m) = fast(&mut path, &dir, &q, 1) {
                proptest::prop_assert!(!m.answers.is_empty());
            }
        }
    }
}
