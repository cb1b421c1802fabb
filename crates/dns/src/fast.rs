//! The answer fast path: a plain `A`, `AAAA` or `SRV` question for a name in the domain,
//! answered from a cache of [`answer`]'s results without decoding the query into hickory's
//! types.
//!
//! Nearly every query a cluster asks is the same few names (`redis.group.opsbro`,
//! `web.service.opsbro`, `_web._tcp.service.opsbro`), so the answer for a name and type is
//! computed once by [`answer`] (the one place that decides what a name means) and kept, its
//! records already encoded, until the directory changes; a query then costs a header check, a
//! lower-casing copy of the name, one hash lookup, a shuffle and a few hundred bytes written.
//! Every answer record's owner is a pointer to the question's name (offset 12). An SRV record
//! carries its target in full (RFC 2782: no compression there), and each additional record
//! (the address of a target) names its owner by a pointer to that target, wherever the shuffle
//! put its SRV record. Anything else — another type or class, compressed or odd questions,
//! EDNS versions other than 0, NXDOMAIN and NODATA (which carry the SOA), answers that do not
//! fit the client's UDP size (512 bytes, or its EDNS0 buffer: truncation, and dropping
//! additional records first, stay the full path's job), names outside the domain — is
//! declined, and the caller takes hickory's full path. Tests check the two paths give the
//! same answers.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

use crate::{Answer, Node, Settings, answer};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SRV: u16 = 33;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// Names remembered per directory version (only names that have records are kept).
const MAX_ENTRIES: usize = 4096;
/// UDP answers without EDNS0 (RFC 1035).
const PLAIN_UDP: usize = 512;
/// Where an SRV record's target starts, from the record's first byte: the owner (a pointer),
/// type, class, TTL, data length, then priority, weight and port.
const SRV_TARGET_AT: usize = 2 + 10 + 6;
/// Compression pointers reach the first 16 KiB of a message: answers with additional records
/// (which point at their targets) longer than that are left to the full path.
const POINTER_REACH: usize = 0x3fff;

/// Answers from the cache; one per serving thread (no locks).
#[derive(Default)]
pub struct FastPath {
    /// The directory the cache was computed from.
    directory: Option<Arc<Vec<Node>>>,
    /// Lower-cased wire name + query type → the encoded records. Only names with records:
    /// others (NXDOMAIN, NODATA, outside the domain) are asked of [`answer`] again each time,
    /// so random names cannot push the popular ones out.
    cache: HashMap<Vec<u8>, Cached>,
    /// Scratch: the key being looked up.
    key: Vec<u8>,
    /// Scratch: the answer order.
    order: Vec<u16>,
    /// Scratch: where each answer record was written in the response.
    placed: Vec<usize>,
}

/// The records of one answer, encoded once.
#[derive(Default)]
struct Cached {
    /// The answer records one after the other, each without its owner (a pointer to the
    /// question, written per query): type, class, TTL, data length, data.
    answers: Vec<u8>,
    /// Where each answer record ends in `answers`.
    ends: Vec<usize>,
    /// The additional records: the answer record whose SRV target is the owner, and the
    /// record without its owner (type to data).
    additionals: Vec<(usize, Vec<u8>)>,
    /// Bytes all the records take in a response, owner pointers included.
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

/// A standard query with one `IN` `A`/`AAAA`/`SRV` question, an uncompressed name and nothing
/// but an EDNS0 (version 0) OPT record after it; the name and type are written (the name
/// lower-cased) into `key`.
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
    if !matches!(qtype, TYPE_A | TYPE_AAAA | TYPE_SRV) || be16(query, at + 2)? != CLASS_IN {
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

/// `name` in wire form, lower-cased and uncompressed.
fn write_name(name: &Name, out: &mut Vec<u8>) {
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
}

/// `record` without its owner: type, class, TTL, data length, data (A, AAAA or SRV only).
fn write_record(record: &Record, out: &mut Vec<u8>) -> Option<()> {
    if record.dns_class != DNSClass::IN {
        return None;
    }
    out.extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&record.ttl.to_be_bytes());
    let length_at = out.len();
    out.extend_from_slice(&[0, 0]);
    match &record.data {
        RData::A(a) => out.extend_from_slice(&a.0.octets()),
        RData::AAAA(a) => out.extend_from_slice(&a.0.octets()),
        RData::SRV(srv) => {
            out.extend_from_slice(&srv.priority.to_be_bytes());
            out.extend_from_slice(&srv.weight.to_be_bytes());
            out.extend_from_slice(&srv.port.to_be_bytes());
            write_name(&srv.target, out);
        }
        _ => return None,
    }
    let length = u16::try_from(out.len() - length_at - 2).ok()?;
    out[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
    Some(())
}

/// What [`answer`] says of the name, when it has records of the asked type (and, for SRV, the
/// addresses of their targets).
fn compute(
    settings: &Settings,
    nodes: &[Node],
    key: &[u8],
    qtype: u16,
    rng: &mut impl rand::Rng,
) -> Option<Cached> {
    let name = name_of(&key[..key.len() - 2])?;
    let qtype = RecordType::from(qtype);
    let Answer::Records {
        records,
        soa: None,
        additionals,
    } = answer(settings, nodes, &name, qtype, 0, rng)
    else {
        return None;
    };
    if records.is_empty() {
        return None;
    }
    let mut cached = Cached::default();
    for r in &records {
        if r.record_type() != qtype {
            return None;
        }
        write_record(r, &mut cached.answers)?;
        cached.ends.push(cached.answers.len());
    }
    for extra in &additionals {
        // Its owner is the target of an SRV answer: a pointer to it there.
        let target_of = records
            .iter()
            .position(|r| matches!(&r.data, RData::SRV(srv) if srv.target == extra.name))?;
        let mut bytes = Vec::new();
        write_record(extra, &mut bytes)?;
        cached.additionals.push((target_of, bytes));
    }
    cached.len = cached.answers.len()
        + 2 * cached.ends.len()
        + cached
            .additionals
            .iter()
            .map(|(_, bytes)| 2 + bytes.len())
            .sum::<usize>();
    Some(cached)
}

impl FastPath {
    /// Answer `query` into `out` when it is a plain question whose answer is a list of
    /// records (and their additional records) that fits the client's UDP size; `false`
    /// leaves it to the full path. The answer is authoritative, its answer records shuffled,
    /// and it repeats the question as the client wrote it.
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
        let count = cached.ends.len();
        let limit = q
            .edns
            .map_or(PLAIN_UDP, |size| usize::from(size).max(PLAIN_UDP));
        let size = q.end + cached.len + if q.edns.is_some() { 11 } else { 0 };
        if size > limit
            || count > usize::from(u16::MAX)
            || (!cached.additionals.is_empty() && size > POINTER_REACH)
        {
            return false;
        }
        self.order.clear();
        self.order.extend(0..count as u16);
        self.order.shuffle(rng);
        self.placed.clear();
        self.placed.resize(count, 0);
        let additionals = cached.additionals.len() + usize::from(q.edns.is_some());

        out.clear();
        out.extend_from_slice(&query[..2]);
        // QR, AA, RD as asked; RA when recursors are set; CD as asked; NOERROR.
        out.push(0x84 | (query[2] & 0x01));
        out.push(if recursion_available { 0x80 } else { 0 } | (query[3] & 0x10));
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(count as u16).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&(additionals as u16).to_be_bytes());
        out.extend_from_slice(&query[12..q.end]);
        for &i in &self.order {
            let i = usize::from(i);
            let start = if i == 0 { 0 } else { cached.ends[i - 1] };
            self.placed[i] = out.len();
            // The owner name points at the question's (offset 12).
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&cached.answers[start..cached.ends[i]]);
        }
        for (target_of, record) in &cached.additionals {
            // Within POINTER_REACH (checked above).
            let pointer = 0xc000 | (self.placed[*target_of] + SRV_TARGET_AT) as u16;
            out.extend_from_slice(&pointer.to_be_bytes());
            out.extend_from_slice(record);
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
    use hickory_proto::rr::Record;
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

    /// `web` on 6 nodes: n1-n3 on their own address (port 8001-8003), n4-n6 on 10.1.0.x
    /// (8004-8006), and on an IPv6 node (443).
    fn service_directory() -> Arc<Vec<Node>> {
        let mut v: Vec<Node> = (1..=6)
            .map(|i| {
                let mut n = node(&format!("n{i}"), &format!("10.0.0.{i}"), &[]);
                let addr = if i <= 3 {
                    format!("10.0.0.{i}")
                } else {
                    format!("10.1.0.{i}")
                };
                n.services = vec![crate::test_service("web", 8000 + i, &["t"], &addr)];
                n
            })
            .collect();
        let mut six = node("six", "fd00::6", &[]);
        six.services = vec![crate::test_service("web", 443, &[], "fd00::6")];
        v.push(six);
        Arc::new(v)
    }

    /// Sorted `owner ttl type data` lines.
    fn text(records: &[Record]) -> Vec<String> {
        let mut v: Vec<String> = records
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {}",
                    r.name.to_lowercase(),
                    r.ttl,
                    r.record_type(),
                    r.data
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn srv_questions_are_answered_with_their_targets_addresses() {
        let dir = service_directory();
        let settings = Settings::new("opsbro", 30, 60, false).expect("settings");
        let mut path = FastPath::default();
        for (name, edns) in [
            ("_web._tcp.service.opsbro", None),
            ("_Web._TCP.Service.opsbro.", Some(1232)),
            ("web.service.opsbro", Some(512)),
            ("t.web.service.dc1.opsbro", None),
        ] {
            let mut lname = Name::from_ascii(name).expect("name");
            lname.set_fqdn(true);
            let lname = LowerName::from(lname);
            let Answer::Records {
                records,
                additionals,
                ..
            } = answer(
                &settings,
                &dir,
                &lname,
                RecordType::SRV,
                0,
                &mut rand::rngs::StdRng::seed_from_u64(1),
            )
            else {
                panic!("{name}: no records")
            };
            let mut orders = std::collections::HashSet::new();
            for seed in 0..20 {
                let m = fast(&mut path, &dir, &query(name, RecordType::SRV, edns), seed)
                    .unwrap_or_else(|| panic!("{name} declined"));
                assert_eq!(text(&m.answers), text(&records), "{name}");
                // Each additional record's owner (a pointer to its target, wherever the
                // shuffle put it) decodes to the target's name.
                assert_eq!(text(&m.additionals), text(&additionals), "{name}");
                assert_eq!(
                    m.edns.as_ref().map(|e| e.max_payload()),
                    edns.map(|e| e.max(512))
                );
                orders.insert(
                    m.answers
                        .iter()
                        .map(|r| r.data.to_string())
                        .collect::<Vec<_>>(),
                );
            }
            assert!(orders.len() > 3, "{name}: {orders:?}");
            // In the cache: one entry per name and type (names differ only by case here).
            assert!(path.cache.len() <= 3);
        }
        // The wire form: answer owners point at the question; targets in full, lower-cased.
        let q = query("_WEB._tcp.service.opsbro", RecordType::SRV, None);
        let mut out = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(path.answer(&settings, &dir, false, &q, &mut rng, &mut out));
        let first = q.len();
        assert_eq!(out[first..first + 4], [0xc0, 0x0c, 0, 33]);
        assert_eq!(&out[..2], &q[..2]);
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 7, "answers");
        assert_eq!(u16::from_be_bytes([out[10], out[11]]), 7, "additionals");
        assert!(
            out.windows(b"\x04node\x06opsbro\x00".len())
                .any(|w| w == b"\x04node\x06opsbro\x00")
        );
    }

    #[test]
    fn service_addr_and_tag_names_are_answered_from_the_cache() {
        let dir = service_directory();
        let mut path = FastPath::default();
        for (name, qtype, want) in [
            (
                "web.service.opsbro",
                RecordType::A,
                vec![
                    "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6",
                ],
            ),
            ("web.service.opsbro", RecordType::AAAA, vec!["fd00::6"]),
            ("t.web.service.opsbro", RecordType::AAAA, vec![]),
            (
                "_web._t.service.dc1.opsbro",
                RecordType::A,
                vec![
                    "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6",
                ],
            ),
            ("0a010005.addr.opsbro", RecordType::A, vec!["10.1.0.5"]),
            (
                "fd000000000000000000000000000006.addr.opsbro",
                RecordType::AAAA,
                vec!["fd00::6"],
            ),
            ("0a0a0a0a.addr.opsbro", RecordType::A, vec![]),
        ] {
            let got = fast(&mut path, &dir, &query(name, qtype, None), 1);
            match got {
                Some(m) => {
                    assert_eq!(addrs(&m), want, "{name}");
                    assert!(m.additionals.is_empty());
                }
                // NODATA and NXDOMAIN are the full path's.
                None => assert!(want.is_empty(), "{name} declined"),
            }
        }
    }

    #[test]
    fn an_srv_answer_that_does_not_fit_is_left_to_the_full_path() {
        // 20 SRV records of 40 bytes do not fit 512 bytes (the full path then drops the
        // additional records and cuts answers); they fit, with their additionals, in 1232.
        let many: Arc<Vec<Node>> = Arc::new(
            (1..=20)
                .map(|i| {
                    let mut n = node(&format!("n{i}"), &format!("10.0.1.{i}"), &[]);
                    n.services = vec![crate::test_service("big", 80, &[], &format!("10.0.2.{i}"))];
                    n
                })
                .collect(),
        );
        let mut path = FastPath::default();
        let q = |edns| query("_big._tcp.service.opsbro", RecordType::SRV, edns);
        assert!(fast(&mut path, &many, &q(None), 1).is_none());
        assert!(fast(&mut path, &many, &q(Some(700)), 1).is_none());
        let m = fast(&mut path, &many, &q(Some(1232)), 1).expect("fits with EDNS0");
        assert_eq!((m.answers.len(), m.additionals.len()), (20, 20));
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
