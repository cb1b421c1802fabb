//! The opsbro DNS server: the cluster's membership as DNS names.
//!
//! * [`answer`] (pure): `<group>.group[.<zone>].<domain>` → the alive nodes of a group,
//!   `<node>.name[.<zone>].<domain>` (or `.node.`) → one node, A or AAAA by address family,
//!   shuffled; an unknown name in the domain is NXDOMAIN with the SOA (negative TTL); a name
//!   outside it is REFUSED (or forwarded when recursors are set, by the server).
//! * [`fast`]: plain `A`/`AAAA` questions answered from a cache of [`answer`]'s results, without
//!   a full decode (UDP).
//! * [`server`]: the hickory-server 0.26 request handler (TCP, and UDP queries the fast path
//!   declines: truncation and EDNS0 by hickory's encoder), the UDP threads, forwarding to
//!   recursors, counters.
//!
//! Everything the answer depends on is passed in: the directory of nodes, the settings and an
//! RNG, so the logic is unit-tested without sockets.

#![forbid(unsafe_code)]

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

pub mod fast;
pub mod server;

/// A node as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name (a DNS label).
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Address to answer with.
    pub addr: IpAddr,
    /// Groups.
    pub groups: Vec<String>,
    /// Alive (suspect counts as alive: it may well be).
    pub alive: bool,
    /// Has a check in CRITICAL.
    pub critical: bool,
}

/// Answer settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The domain (`opsbro.`).
    pub domain: Name,
    /// TTL of answers.
    pub ttl: u32,
    /// TTL of negative answers (SOA minimum).
    pub negative_ttl: u32,
    /// Hide nodes with a critical check.
    pub only_passing: bool,
}

impl Settings {
    /// Settings for `domain` (e.g. `opsbro`).
    pub fn new(
        domain: &str,
        ttl: u32,
        negative_ttl: u32,
        only_passing: bool,
    ) -> Result<Settings, String> {
        let mut name = Name::from_ascii(domain)
            .map_err(|e| format!("`{domain}` is not a domain name: {e}"))?;
        name.set_fqdn(true);
        Ok(Settings {
            domain: name,
            ttl,
            negative_ttl,
            only_passing,
        })
    }

    /// The SOA record of the domain.
    pub fn soa(&self, serial: u32) -> Record {
        let mname = Name::from_ascii("ns")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        Record::from_rdata(
            self.domain.clone(),
            self.negative_ttl,
            RData::SOA(SOA::new(
                mname,
                rname,
                serial,
                3600,
                600,
                86400,
                self.negative_ttl,
            )),
        )
    }
}

/// What to answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// NOERROR with these records (empty + SOA: the name exists, not with this type).
    Records {
        /// Answers.
        records: Vec<Record>,
        /// SOA for an empty answer.
        soa: Option<Record>,
    },
    /// The name does not exist in the domain.
    NxDomain {
        /// The SOA (negative caching).
        soa: Record,
    },
    /// Not our domain.
    NotOurs,
}

impl Answer {
    /// The response code.
    pub fn code(&self) -> ResponseCode {
        match self {
            Answer::Records { .. } => ResponseCode::NoError,
            Answer::NxDomain { .. } => ResponseCode::NXDomain,
            Answer::NotOurs => ResponseCode::Refused,
        }
    }
}

/// Answer a query from the directory.
pub fn answer(
    settings: &Settings,
    nodes: &[Node],
    qname: &LowerName,
    qtype: RecordType,
    serial: u32,
    rng: &mut impl rand::Rng,
) -> Answer {
    let domain = LowerName::from(&settings.domain);
    if !domain.zone_of(qname) {
        return Answer::NotOurs;
    }
    let nx = || Answer::NxDomain {
        soa: settings.soa(serial),
    };
    // Labels before the domain, as bytes (no allocation: this runs for every query).
    let extra = (qname.num_labels() - domain.num_labels()) as usize;
    let mut labels = [&[][..]; 3];
    if extra > labels.len() {
        return nx();
    }
    for (slot, label) in labels.iter_mut().zip(qname.iter()) {
        *slot = label;
    }
    let labels = &labels[..extra];
    // The domain itself: SOA, or an empty answer.
    if labels.is_empty() {
        return match qtype {
            RecordType::SOA => Answer::Records {
                records: vec![settings.soa(serial)],
                soa: None,
            },
            _ => Answer::Records {
                records: vec![],
                soa: Some(settings.soa(serial)),
            },
        };
    }
    // <what>.<kind>[.<zone>]
    let (what, kind, zone) = match labels {
        [what, kind] => (*what, *kind, None),
        [what, kind, zone] => (*what, *kind, Some(*zone)),
        _ => return nx(),
    };
    let text_eq = |a: &str, b: &[u8]| a.as_bytes().eq_ignore_ascii_case(b);
    let usable = |n: &&Node| {
        n.alive
            && !(settings.only_passing && n.critical)
            && zone.is_none_or(|z| text_eq(&n.zone, z))
    };
    let mut matched: Vec<&Node> = if kind.eq_ignore_ascii_case(b"group") {
        nodes
            .iter()
            .filter(usable)
            .filter(|n| n.groups.iter().any(|g| text_eq(g, what)))
            .collect()
    } else if kind.eq_ignore_ascii_case(b"name") || kind.eq_ignore_ascii_case(b"node") {
        nodes
            .iter()
            .filter(usable)
            .filter(|n| text_eq(&n.name, what))
            .collect()
    } else {
        return nx();
    };
    let name = Name::from(qname.clone());
    if matched.is_empty() {
        return nx();
    }
    matched.shuffle(rng);
    let records: Vec<Record> = matched
        .iter()
        .filter_map(|n| match (qtype, n.addr) {
            (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
            (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(name.clone(), settings.ttl, rdata))
        .collect();
    if records.is_empty() {
        // The name exists, not with this type (NODATA).
        return Answer::Records {
            records,
            soa: Some(settings.soa(serial)),
        };
    }
    Answer::Records { records, soa: None }
}

/// An alive node of zone `dc1` (tests).
#[cfg(test)]
pub(crate) fn test_node(name: &str, addr: &str, groups: &[&str]) -> Node {
    Node {
        name: name.into(),
        zone: "dc1".into(),
        addr: addr.parse().expect("ip"),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        alive: true,
        critical: false,
    }
}

/// A query for `name` with RD set and id 0x1234, with an EDNS0 OPT announcing `edns` bytes
/// if given (tests).
#[cfg(test)]
pub(crate) fn test_query(
    name: &str,
    qtype: RecordType,
    edns: Option<u16>,
) -> hickory_proto::op::Message {
    use hickory_proto::op::{Edns, Message, Query};
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    use crate::test_node as node;

    fn ask(settings: &Settings, nodes: &[Node], q: &str, t: RecordType) -> Answer {
        let name = LowerName::from(Name::from_ascii(q).expect("name"));
        answer(
            settings,
            nodes,
            &name,
            t,
            1,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        )
    }

    fn ips(a: &Answer) -> Vec<String> {
        let Answer::Records { records, .. } = a else {
            return vec![];
        };
        let mut v: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn groups_names_zones_and_types() {
        let s = Settings::new("opsbro", 30, 60, false).expect("settings");
        let mut dead = node("c", "10.0.0.3", &["redis"]);
        dead.alive = false;
        let nodes = vec![
            node("a", "10.0.0.1", &["redis", "linux"]),
            node("b", "10.0.0.2", &["redis"]),
            dead,
            node("v6", "fd00::1", &["redis"]),
        ];
        let a = ask(&s, &nodes, "redis.group.dc1.opsbro.", RecordType::A);
        assert_eq!(ips(&a), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            ips(&ask(&s, &nodes, "REDIS.group.opsbro", RecordType::A)),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "redis.group.opsbro", RecordType::AAAA)),
            ["fd00::1"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "a.name.opsbro", RecordType::A)),
            ["10.0.0.1"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "a.node.dc1.opsbro", RecordType::A)),
            ["10.0.0.1"]
        );
        // Exists, but not as AAAA: NODATA with the SOA.
        let nodata = ask(&s, &nodes, "a.name.opsbro", RecordType::AAAA);
        assert!(
            matches!(nodata, Answer::Records { ref records, soa: Some(_) } if records.is_empty())
        );
        for missing in [
            "nope.group.opsbro",
            "c.name.opsbro",
            "redis.group.dc2.opsbro",
            "x.y.z.w.opsbro",
            "redis.color.opsbro",
        ] {
            let a = ask(&s, &nodes, missing, RecordType::A);
            assert_eq!(a.code(), ResponseCode::NXDomain, "{missing}");
        }
        assert_eq!(
            ask(&s, &nodes, "example.com", RecordType::A).code(),
            ResponseCode::Refused
        );
        let Answer::Records { records, .. } = ask(&s, &nodes, "opsbro", RecordType::SOA) else {
            panic!("soa")
        };
        assert_eq!(records[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn only_passing_hides_critical_nodes() {
        let mut sick = node("b", "10.0.0.2", &["web"]);
        sick.critical = true;
        let nodes = vec![node("a", "10.0.0.1", &["web"]), sick];
        let all = Settings::new("opsbro", 30, 60, false).expect("s");
        let passing = Settings::new("opsbro", 30, 60, true).expect("s");
        assert_eq!(
            ips(&ask(&all, &nodes, "web.group.opsbro", RecordType::A)).len(),
            2
        );
        assert_eq!(
            ips(&ask(&passing, &nodes, "web.group.opsbro", RecordType::A)),
            ["10.0.0.1"]
        );
    }

    #[test]
    fn answers_are_shuffled() {
        let s = Settings::new("opsbro", 30, 60, false).expect("s");
        let nodes: Vec<Node> = (1..=8)
            .map(|i| node(&format!("n{i}"), &format!("10.0.0.{i}"), &["g"]))
            .collect();
        let name = LowerName::from(Name::from_ascii("g.group.opsbro").expect("n"));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let orders: std::collections::HashSet<String> = (0..20)
            .map(
                |_| match answer(&s, &nodes, &name, RecordType::A, 1, &mut rng) {
                    Answer::Records { records, .. } => records
                        .iter()
                        .map(|r| r.data.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => String::new(),
                },
            )
            .collect();
        assert!(orders.len() > 5, "{orders:?}");
    }

    proptest::proptest! {
        #[test]
        fn any_name_and_type_gets_an_answer_without_panicking(
            labels in proptest::collection::vec("[a-zA-Z0-9-]{1,20}", 0..6),
            in_domain in proptest::bool::ANY,
            qtype in proptest::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::ANY, RecordType::MX, RecordType::SOA, RecordType::TXT]),
        ) {
            let s = Settings::new("opsbro", 30, 60, false).expect("s");
            let nodes = vec![node("a", "10.0.0.1", &["g"]), node("b", "fd00::2", &["g"])];
            let mut text = labels.join(".");
            if in_domain {
                text = if text.is_empty() { "opsbro".into() } else { format!("{text}.opsbro") };
            }
            if let Ok(name) = Name::from_ascii(&text) {
                let name = LowerName::from(name);
                let a = answer(&s, &nodes, &name, qtype, 1, &mut rand::rngs::StdRng::seed_from_u64(3));
                if !in_domain && !text.ends_with("opsbro") {
                    proptest::prop_assert_eq!(a.code(), ResponseCode::Refused);
                }
            }
        }
    }
}
