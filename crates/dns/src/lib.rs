//! The opsbro DNS server: the cluster's membership and services as DNS names.
//!
//! * [`answer`] (pure) answers these names (`[.<zone>]` filters by the node's zone; names are
//!   case-insensitive):
//!   - `<group>.group[.<zone>].<domain>` → the alive nodes of a group not in maintenance;
//!   - `<node>.name[.<zone>].<domain>` (or `.node.`) → one node (an address book: maintenance
//!     does not hide it);
//!   - `<svc>.service[.<zone>].<domain>` and `<tag>.<svc>.service[.<zone>].<domain>` → the
//!     usable instances of a service (with that tag): node alive and not in maintenance,
//!     service not in maintenance, health passing (or warning, with
//!     [`Settings::warning_passes`]); A/AAAA of their addresses, and SRV (priority 1,
//!     weight 1, the instance's port; instances without a port get none) with the targets'
//!     addresses in the additional section;
//!   - `_<svc>._tcp|_udp.service[.<zone>].<domain>` (RFC 2782) and
//!     `_<svc>._<tag>.service[.<zone>].<domain>` (Consul's tag form): the same, by the same
//!     rules;
//!   - `<hex>.addr.<domain>` → the address written in hex (8 digits: IPv4, 32: IPv6), only
//!     when a node or a usable service instance has it: the target of an SRV record whose
//!     address is not its node's (a node's own is `<node>.node.<domain>`).
//!
//!   A/AAAA go by address family, shuffled. A name with nothing usable behind it right now
//!   (or no meaning) is NXDOMAIN with the SOA (negative TTL); a name that exists but has no
//!   record of the asked type is NODATA (empty, with the SOA); a name outside the domain is
//!   REFUSED (or forwarded when recursors are set, by the server).
//! * [`fast`]: plain `A`/`AAAA`/`SRV` questions answered from a cache of [`answer`]'s results,
//!   without a full decode (UDP).
//! * [`server`]: the hickory-server 0.26 request handler (TCP, and UDP queries the fast path
//!   declines: truncation and EDNS0 by hickory's encoder, additional records dropped before
//!   answers are cut), the UDP threads, forwarding to recursors, counters.
//!
//! Everything the answer depends on is passed in: the directory of nodes and their services,
//! the settings and an RNG, so the logic is unit-tested without sockets.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
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
    /// The whole node is in maintenance: out of group and service answers (its own name still
    /// answers).
    pub maintenance: bool,
    /// The service instances it runs.
    pub services: Vec<Service>,
}

/// Health of a service instance as its node gossips it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Every check of the service passes.
    Passing,
    /// A check warns (usable only with [`Settings::warning_passes`]).
    Warning,
    /// A check is critical: never answered.
    Critical,
}

/// A service instance of a node as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name, e.g. `web` (a DNS label).
    pub name: String,
    /// Port; 0 = no port declared (A/AAAA answers only, no SRV record).
    pub port: u16,
    /// Tags (`<tag>.<svc>.service.<domain>`).
    pub tags: Vec<String>,
    /// The service's address (the node's when the service sets none).
    pub addr: IpAddr,
    /// Health.
    pub health: Health,
    /// This service is in maintenance.
    pub maintenance: bool,
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
    /// Hide nodes with a critical check (group and node names; service names go by the
    /// service's own health).
    pub only_passing: bool,
    /// A service instance in [`Health::Warning`] counts as passing.
    pub warning_passes: bool,
}

impl Settings {
    /// Settings for `domain` (e.g. `opsbro`); [`Settings::warning_passes`] is off.
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
            warning_passes: false,
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

    /// Whether `<node>.name|node.<domain>` answers this node (alive, and passing when asked).
    fn answers_node(&self, node: &Node) -> bool {
        node.alive && !(self.only_passing && node.critical)
    }

    /// Whether service names answer this instance.
    fn usable(&self, node: &Node, service: &Service) -> bool {
        node.alive
            && !node.maintenance
            && !service.maintenance
            && match service.health {
                Health::Passing => true,
                Health::Warning => self.warning_passes,
                Health::Critical => false,
            }
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
        /// The additional section: the addresses of SRV targets (empty otherwise).
        additionals: Vec<Record>,
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

/// What the labels before the domain (and before the zone, if any) ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup<'a> {
    /// `<group>.group`
    Group(&'a [u8]),
    /// `<node>.name` or `<node>.node`
    Node(&'a [u8]),
    /// `<svc>.service`, `<tag>.<svc>.service`, `_<svc>._tcp|_udp.service`,
    /// `_<svc>._<tag>.service`
    Service {
        name: &'a [u8],
        tag: Option<&'a [u8]>,
    },
    /// `<hex>.addr` (never with a zone)
    Addr(&'a [u8]),
}

/// `labels` read with `kind` as the kind label (`group`, `service`, ...) after them.
fn read_kind<'a>(labels: &[&'a [u8]], kind: &[u8]) -> Option<Lookup<'a>> {
    let is = |word: &str| kind.eq_ignore_ascii_case(word.as_bytes());
    match *labels {
        [what] if is("group") => Some(Lookup::Group(what)),
        [what] if is("name") || is("node") => Some(Lookup::Node(what)),
        [what] if is("addr") => Some(Lookup::Addr(what)),
        [name] if is("service") => Some(Lookup::Service { name, tag: None }),
        [first, second] if is("service") => {
            Some(
                match (first.strip_prefix(b"_"), second.strip_prefix(b"_")) {
                    // RFC 2782: `_web._tcp`; any other second label is Consul's tag form.
                    (Some(name), Some(proto))
                        if proto.eq_ignore_ascii_case(b"tcp")
                            || proto.eq_ignore_ascii_case(b"udp") =>
                    {
                        Lookup::Service { name, tag: None }
                    }
                    (Some(name), Some(tag)) => Lookup::Service {
                        name,
                        tag: Some(tag),
                    },
                    _ => Lookup::Service {
                        name: second,
                        tag: Some(first),
                    },
                },
            )
        }
        _ => None,
    }
}

/// The labels before the domain read as a lookup and its zone: first with the last label as
/// the kind (no zone), else with the one before it as the kind and the last as the zone. So
/// `x.group.group` is still the group `x` of zone `group`, and `a.b.service` is the tag `a` of
/// the service `b`.
fn read_labels<'a>(labels: &[&'a [u8]]) -> Option<(Lookup<'a>, Option<&'a [u8]>)> {
    let (&last, before) = labels.split_last()?;
    if let Some(lookup) = read_kind(before, last) {
        return Some((lookup, None));
    }
    let (&kind, before) = before.split_last()?;
    match read_kind(before, kind)? {
        Lookup::Addr(_) => None,
        lookup => Some((lookup, Some(last))),
    }
}

fn text_eq(a: &str, b: &[u8]) -> bool {
    a.as_bytes().eq_ignore_ascii_case(b)
}

/// The address record of `addr` for `qtype` (ANY: either family), if it has that family.
fn address(qtype: RecordType, addr: IpAddr) -> Option<RData> {
    match (qtype, addr) {
        (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
        (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
        _ => None,
    }
}

/// The address of a `<hex>.addr` label: 8 hex digits (IPv4) or 32 (IPv6).
fn parse_hex_addr(label: &[u8]) -> Option<IpAddr> {
    fn octets<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let digit = |c: u8| char::from(c).to_digit(16);
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(out)
    }
    match label.len() {
        8 => octets::<4>(label).map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        32 => octets::<16>(label).map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        _ => None,
    }
}

/// `<hex of the address>.addr.<domain>` (lower-case hex, 8 or 32 digits).
fn addr_name(domain: &Name, addr: IpAddr) -> Option<Name> {
    let hex: String = match addr {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    };
    Name::from_labels([hex.as_bytes(), b"addr"])
        .and_then(|n| n.append_domain(domain))
        .ok()
}

/// A node name that is one plain DNS label (letters, digits, `-`, `_`), so
/// `<node>.node.<domain>` names it.
fn is_plain_label(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The SRV target of an instance: `<node>.node.<domain>` when the service listens on its
/// node's address and that name answers it, else `<hex>.addr.<domain>`.
fn target(settings: &Settings, node: &Node, service: &Service) -> Option<Name> {
    if service.addr == node.addr && settings.answers_node(node) && is_plain_label(&node.name) {
        let name = Name::from_labels([node.name.as_bytes(), b"node"])
            .and_then(|n| n.append_domain(&settings.domain));
        if let Ok(name) = name {
            return Some(name);
        }
    }
    addr_name(&settings.domain, service.addr)
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
    // Labels before the domain, as bytes (no allocation: this runs for every query). The
    // longest names: `<tag>.<svc>.service.<zone>`, `_<svc>._tcp.service.<zone>`.
    let extra = (qname.num_labels() - domain.num_labels()) as usize;
    let mut labels = [&[][..]; 5];
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
                additionals: vec![],
            },
            _ => Answer::Records {
                records: vec![],
                soa: Some(settings.soa(serial)),
                additionals: vec![],
            },
        };
    }
    let Some((lookup, zone)) = read_labels(labels) else {
        return nx();
    };
    let in_zone = |n: &Node| zone.is_none_or(|z| text_eq(&n.zone, z));
    let name = Name::from(qname.clone());
    let (records, additionals) = match lookup {
        Lookup::Group(_) | Lookup::Node(_) => {
            // Groups leave out nodes in maintenance; a node's own name is an address book.
            let mut matched: Vec<&Node> = nodes
                .iter()
                .filter(|n| settings.answers_node(n) && in_zone(n))
                .filter(|n| match lookup {
                    Lookup::Group(group) => {
                        !n.maintenance && n.groups.iter().any(|g| text_eq(g, group))
                    }
                    _ => matches!(lookup, Lookup::Node(wanted) if text_eq(&n.name, wanted)),
                })
                .collect();
            if matched.is_empty() {
                return nx();
            }
            matched.shuffle(rng);
            (
                addresses(settings, &name, qtype, matched.iter().map(|n| n.addr)),
                vec![],
            )
        }
        Lookup::Addr(hex) => {
            let Some(addr) = parse_hex_addr(hex) else {
                return nx();
            };
            // Only addresses some other name answers: not an echo of any address asked.
            let known = nodes.iter().any(|n| {
                (n.addr == addr && settings.answers_node(n))
                    || n.services
                        .iter()
                        .any(|s| s.addr == addr && settings.usable(n, s))
            });
            if !known {
                return nx();
            }
            (
                addresses(settings, &name, qtype, [addr].into_iter()),
                vec![],
            )
        }
        Lookup::Service { name: wanted, tag } => {
            let mut matched: Vec<(&Node, &Service)> = nodes
                .iter()
                .filter(|n| in_zone(n))
                .flat_map(|n| n.services.iter().map(move |s| (n, s)))
                .filter(|(n, s)| settings.usable(n, s) && text_eq(&s.name, wanted))
                .filter(|(_, s)| tag.is_none_or(|t| s.tags.iter().any(|x| text_eq(x, t))))
                .collect();
            if matched.is_empty() {
                return nx();
            }
            matched.shuffle(rng);
            if qtype == RecordType::SRV {
                srv_records(settings, &name, &matched)
            } else {
                // An address shared by several instances (a virtual IP) is one record.
                let mut seen = HashSet::new();
                let unique = matched
                    .iter()
                    .map(|(_, s)| s.addr)
                    .filter(|a| seen.insert(*a));
                (addresses(settings, &name, qtype, unique), vec![])
            }
        }
    };
    if records.is_empty() {
        // The name exists, not with this type (NODATA).
        return Answer::Records {
            records,
            soa: Some(settings.soa(serial)),
            additionals: vec![],
        };
    }
    Answer::Records {
        records,
        soa: None,
        additionals,
    }
}

/// A/AAAA records of `addrs` under `name`, those of `qtype`'s family (ANY: both).
fn addresses(
    settings: &Settings,
    name: &Name,
    qtype: RecordType,
    addrs: impl Iterator<Item = IpAddr>,
) -> Vec<Record> {
    addrs
        .filter_map(|addr| address(qtype, addr))
        .map(|rdata| Record::from_rdata(name.clone(), settings.ttl, rdata))
        .collect()
}

/// SRV records of the instances that declare a port (in their order), and the address of
/// each distinct target for the additional section.
fn srv_records(
    settings: &Settings,
    name: &Name,
    instances: &[(&Node, &Service)],
) -> (Vec<Record>, Vec<Record>) {
    let mut records = Vec::new();
    let mut additionals = Vec::new();
    let mut seen = HashSet::new();
    let mut targets = HashSet::new();
    for (node, service) in instances {
        if service.port == 0 {
            continue;
        }
        let Some(target) = target(settings, node, service) else {
            continue;
        };
        if !seen.insert((target.clone(), service.port)) {
            continue;
        }
        records.push(Record::from_rdata(
            name.clone(),
            settings.ttl,
            RData::SRV(SRV::new(1, 1, service.port, target.clone())),
        ));
        if targets.insert(target.clone())
            && let Some(rdata) = address(RecordType::ANY, service.addr)
        {
            additionals.push(Record::from_rdata(target, settings.ttl, rdata));
        }
    }
    (records, additionals)
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
        maintenance: false,
        services: vec![],
    }
}

/// A passing service instance (tests).
#[cfg(test)]
pub(crate) fn test_service(name: &str, port: u16, tags: &[&str], addr: &str) -> Service {
    Service {
        name: name.into(),
        port,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        addr: addr.parse().expect("ip"),
        health: Health::Passing,
        maintenance: false,
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
        let mut name = Name::from_ascii(q).expect("name");
        name.set_fqdn(true);
        let name = LowerName::from(name);
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
            matches!(nodata, Answer::Records { ref records, soa: Some(_), .. } if records.is_empty())
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

    use crate::test_service as svc;

    /// Nodes of zone dc1 unless said, each with a `web` instance (port 8080 on the node's
    /// address unless said):
    /// a: tag primary; b: on 10.9.9.9, tag secondary; c: dc2, port 8081, tag PRIMARY;
    /// d: IPv6, port 9090; e: no port (and `metrics`, no port either); f: warning;
    /// g: critical (and `cache`, critical, on 10.7.7.7); h: dead; i: node in maintenance;
    /// j: service in maintenance.
    fn services() -> Vec<Node> {
        let with = |name: &str, addr: &str, services: Vec<Service>| {
            let mut n = node(name, addr, &["g"]);
            n.services = services;
            n
        };
        let web = |port: u16, tags: &[&str], addr: &str| svc("web", port, tags, addr);
        let mut c = with("c", "10.0.0.3", vec![web(8081, &["PRIMARY"], "10.0.0.3")]);
        c.zone = "dc2".into();
        let mut f = with("f", "10.0.0.6", vec![web(8080, &[], "10.0.0.6")]);
        f.services[0].health = Health::Warning;
        let mut g = with(
            "g",
            "10.0.0.7",
            vec![
                web(8080, &[], "10.0.0.7"),
                svc("cache", 6379, &[], "10.7.7.7"),
            ],
        );
        g.services
            .iter_mut()
            .for_each(|s| s.health = Health::Critical);
        let mut h = with("h", "10.0.0.8", vec![web(8080, &[], "10.0.0.8")]);
        h.alive = false;
        let mut i = with("i", "10.0.0.9", vec![web(8080, &[], "10.0.0.9")]);
        i.maintenance = true;
        let mut j = with("j", "10.0.0.10", vec![web(8080, &[], "10.0.0.10")]);
        j.services[0].maintenance = true;
        vec![
            with("a", "10.0.0.1", vec![web(8080, &["primary"], "10.0.0.1")]),
            with("b", "10.0.0.2", vec![web(8080, &["secondary"], "10.9.9.9")]),
            c,
            with("d", "fd00::4", vec![web(9090, &[], "fd00::4")]),
            with(
                "e",
                "10.0.0.5",
                vec![web(0, &[], "10.0.0.5"), svc("metrics", 0, &[], "10.0.0.5")],
            ),
            f,
            g,
            h,
            i,
            j,
        ]
    }

    fn settings() -> Settings {
        Settings::new("opsbro", 30, 60, false).expect("settings")
    }

    /// The answer and additional records as sorted `owner ttl data` lines.
    fn lines(a: &Answer) -> (Vec<String>, Vec<String>) {
        let Answer::Records {
            records,
            additionals,
            ..
        } = a
        else {
            return (vec![], vec![]);
        };
        let text = |rs: &[Record]| {
            let mut v: Vec<String> = rs
                .iter()
                .map(|r| format!("{} {} {}", r.name, r.ttl, r.data))
                .collect();
            v.sort();
            v
        };
        (text(records), text(additionals))
    }

    fn is_nodata(a: &Answer) -> bool {
        matches!(a, Answer::Records { records, soa: Some(_), additionals } if records.is_empty() && additionals.is_empty())
    }

    #[test]
    fn service_names_answer_addresses_by_family_zone_and_tag() {
        let (s, nodes) = (settings(), services());
        let all_v4 = ["10.0.0.1", "10.0.0.3", "10.0.0.5", "10.9.9.9"];
        for name in [
            "web.service.opsbro",
            "WEB.Service.OPSBRO.",
            "_web._tcp.service.opsbro",
            "_web._udp.service.opsbro",
        ] {
            assert_eq!(ips(&ask(&s, &nodes, name, RecordType::A)), all_v4, "{name}");
        }
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.opsbro", RecordType::AAAA)),
            ["fd00::4"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.dc1.opsbro", RecordType::A)),
            ["10.0.0.1", "10.0.0.5", "10.9.9.9"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.DC2.opsbro", RecordType::A)),
            ["10.0.0.3"]
        );
        // Tags, either form, case-insensitive (c's tag is `PRIMARY`).
        for name in [
            "primary.web.service.opsbro",
            "Primary.web.service.opsbro",
            "_web._primary.service.opsbro",
        ] {
            assert_eq!(
                ips(&ask(&s, &nodes, name, RecordType::A)),
                ["10.0.0.1", "10.0.0.3"],
                "{name}"
            );
        }
        assert_eq!(
            ips(&ask(
                &s,
                &nodes,
                "primary.web.service.dc2.opsbro",
                RecordType::A
            )),
            ["10.0.0.3"]
        );
        assert_eq!(
            ips(&ask(
                &s,
                &nodes,
                "_web._secondary.service.dc1.opsbro",
                RecordType::A
            )),
            ["10.9.9.9"]
        );
        // Records are under the name asked, with the TTL.
        let (records, additionals) = lines(&ask(
            &s,
            &nodes,
            "primary.web.service.dc2.opsbro",
            RecordType::A,
        ));
        assert_eq!(records, ["primary.web.service.dc2.opsbro. 30 10.0.0.3"]);
        assert!(additionals.is_empty());
        // ANY: the addresses of both families; other types: NODATA.
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.opsbro", RecordType::ANY)),
            ["10.0.0.1", "10.0.0.3", "10.0.0.5", "10.9.9.9", "fd00::4"]
        );
        assert!(is_nodata(&ask(
            &s,
            &nodes,
            "web.service.opsbro",
            RecordType::MX
        )));
        assert!(is_nodata(&ask(
            &s,
            &nodes,
            "primary.web.service.dc2.opsbro",
            RecordType::AAAA
        )));
    }

    #[test]
    fn srv_records_carry_ports_targets_and_their_addresses() {
        let (s, nodes) = (settings(), services());
        let every = (
            vec![
                "1 1 8080 0a090909.addr.opsbro.",
                "1 1 8080 a.node.opsbro.",
                "1 1 8081 c.node.opsbro.",
                "1 1 9090 d.node.opsbro.",
            ],
            vec![
                "0a090909.addr.opsbro. 30 10.9.9.9",
                "a.node.opsbro. 30 10.0.0.1",
                "c.node.opsbro. 30 10.0.0.3",
                "d.node.opsbro. 30 fd00::4",
            ],
        );
        // e has no port: no SRV record (nor additional), though it answers A.
        for name in [
            "_web._tcp.service.opsbro",
            "_WEB._TCP.service.opsbro",
            "_web._udp.service.opsbro",
            "web.service.opsbro",
        ] {
            let a = ask(&s, &nodes, name, RecordType::SRV);
            let (records, additionals) = lines(&a);
            let owner = Name::from_ascii(name).expect("name").to_lowercase();
            let want: Vec<String> = every.0.iter().map(|d| format!("{owner}. 30 {d}")).collect();
            assert_eq!(records, want, "{name}");
            assert_eq!(additionals, every.1, "{name}");
        }
        let (records, additionals) = lines(&ask(
            &s,
            &nodes,
            "primary.web.service.opsbro",
            RecordType::SRV,
        ));
        assert_eq!(
            records,
            [
                "primary.web.service.opsbro. 30 1 1 8080 a.node.opsbro.",
                "primary.web.service.opsbro. 30 1 1 8081 c.node.opsbro."
            ]
        );
        assert_eq!(
            additionals,
            ["a.node.opsbro. 30 10.0.0.1", "c.node.opsbro. 30 10.0.0.3"]
        );
        let (records, additionals) = lines(&ask(
            &s,
            &nodes,
            "_web._primary.service.dc1.opsbro",
            RecordType::SRV,
        ));
        assert_eq!(
            records,
            ["_web._primary.service.dc1.opsbro. 30 1 1 8080 a.node.opsbro."]
        );
        assert_eq!(additionals, ["a.node.opsbro. 30 10.0.0.1"]);
        // Instances without a port: the name exists, no SRV (NODATA), A still answered.
        assert!(is_nodata(&ask(
            &s,
            &nodes,
            "metrics.service.opsbro",
            RecordType::SRV
        )));
        assert!(is_nodata(&ask(
            &s,
            &nodes,
            "_metrics._tcp.service.opsbro",
            RecordType::SRV
        )));
        assert_eq!(
            ips(&ask(&s, &nodes, "metrics.service.opsbro", RecordType::A)),
            ["10.0.0.5"]
        );
        // SRV of group and node names: NODATA, as before.
        assert!(is_nodata(&ask(
            &s,
            &nodes,
            "g.group.opsbro",
            RecordType::SRV
        )));
    }

    #[test]
    fn addr_names_answer_only_known_addresses() {
        let (s, nodes) = (settings(), services());
        // A service's own address (b's web), a node's address, either case.
        assert_eq!(
            ips(&ask(&s, &nodes, "0a090909.addr.opsbro", RecordType::A)),
            ["10.9.9.9"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "0A090909.ADDR.opsbro", RecordType::A)),
            ["10.9.9.9"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "0a000001.addr.opsbro", RecordType::A)),
            ["10.0.0.1"]
        );
        assert_eq!(
            ips(&ask(
                &s,
                &nodes,
                "fd000000000000000000000000000004.addr.opsbro",
                RecordType::AAAA
            )),
            ["fd00::4"]
        );
        // The other family, another type: NODATA.
        assert!(is_nodata(&ask(
            &s,
            &nodes,
            "0a090909.addr.opsbro",
            RecordType::AAAA
        )));
        assert!(is_nodata(&ask(
            &s,
            &nodes,
            "0a090909.addr.opsbro",
            RecordType::SRV
        )));
        for unknown in [
            "01020304.addr.opsbro",                         // nobody's
            "0a070707.addr.opsbro",                         // g's critical cache
            "0a000008.addr.opsbro",                         // h is dead
            "zz090909.addr.opsbro",                         // not hex
            "0a0909.addr.opsbro",                           // 6 digits
            "0a09090900.addr.opsbro",                       // 10 digits
            "fd000000000000000000000000000005.addr.opsbro", // nobody's IPv6
            "0a090909.addr.dc1.opsbro",                     // no zone form
            "x.0a090909.addr.opsbro",                       // too many labels
        ] {
            assert_eq!(
                ask(&s, &nodes, unknown, RecordType::A).code(),
                ResponseCode::NXDomain,
                "{unknown}"
            );
        }
    }

    #[test]
    fn unusable_instances_are_hidden_and_a_name_without_any_is_nxdomain() {
        let nodes = services();
        let mut s = settings();
        // f warns, g is critical, h dead, i's node and j's service in maintenance.
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.dc1.opsbro", RecordType::A)),
            ["10.0.0.1", "10.0.0.5", "10.9.9.9"]
        );
        s.warning_passes = true;
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.dc1.opsbro", RecordType::A)),
            ["10.0.0.1", "10.0.0.5", "10.0.0.6", "10.9.9.9"]
        );
        let (records, additionals) = lines(&ask(
            &s,
            &nodes,
            "_web._tcp.service.dc1.opsbro",
            RecordType::SRV,
        ));
        assert!(
            records
                .contains(&"_web._tcp.service.dc1.opsbro. 30 1 1 8080 f.node.opsbro.".to_owned()),
            "{records:?}"
        );
        assert!(additionals.contains(&"f.node.opsbro. 30 10.0.0.6".to_owned()));
        s.warning_passes = false;
        for gone in [
            "cache.service.opsbro", // only a critical instance
            "_cache._tcp.service.opsbro",
            "nope.service.opsbro",              // no such service
            "nope.web.service.opsbro",          // no such tag
            "secondary.web.service.dc2.opsbro", // not in that zone
            "web.service.dc3.opsbro",           // no such zone
        ] {
            for t in [RecordType::A, RecordType::SRV] {
                assert_eq!(
                    ask(&s, &nodes, gone, t).code(),
                    ResponseCode::NXDomain,
                    "{gone} {t}"
                );
            }
        }
        // One instance in each unusable state, alone: NXDOMAIN every time.
        let lonely = |change: &dyn Fn(&mut Node)| {
            let mut n = node("x", "10.0.1.1", &[]);
            n.services = vec![svc("api", 80, &[], "10.0.1.1")];
            change(&mut n);
            ask(&s, &[n], "api.service.opsbro", RecordType::A).code()
        };
        assert_eq!(lonely(&|_| {}), ResponseCode::NoError);
        assert_eq!(lonely(&|n| n.alive = false), ResponseCode::NXDomain);
        assert_eq!(lonely(&|n| n.maintenance = true), ResponseCode::NXDomain);
        assert_eq!(
            lonely(&|n| n.services[0].maintenance = true),
            ResponseCode::NXDomain
        );
        assert_eq!(
            lonely(&|n| n.services[0].health = Health::Critical),
            ResponseCode::NXDomain
        );
        assert_eq!(
            lonely(&|n| n.services[0].health = Health::Warning),
            ResponseCode::NXDomain
        );
        // The NXDOMAIN carries the SOA.
        assert!(matches!(
            ask(&s, &nodes, "cache.service.opsbro", RecordType::A),
            Answer::NxDomain { ref soa } if soa.record_type() == RecordType::SOA
        ));
    }

    #[test]
    fn maintenance_hides_a_node_from_groups_not_from_its_name() {
        let (s, nodes) = (settings(), services());
        let group = ips(&ask(&s, &nodes, "g.group.dc1.opsbro", RecordType::A));
        assert_eq!(
            group,
            [
                "10.0.0.1",
                "10.0.0.10",
                "10.0.0.2",
                "10.0.0.5",
                "10.0.0.6",
                "10.0.0.7"
            ]
        );
        assert!(!group.contains(&"10.0.0.9".to_owned()));
        assert_eq!(
            ips(&ask(&s, &nodes, "i.node.opsbro", RecordType::A)),
            ["10.0.0.9"]
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "i.name.dc1.opsbro", RecordType::A)),
            ["10.0.0.9"]
        );
    }

    #[test]
    fn only_passing_does_not_hide_services_but_their_node_names() {
        let mut sick = node("sick", "10.0.2.1", &["g"]);
        sick.critical = true;
        sick.services = vec![svc("web", 80, &[], "10.0.2.1")];
        let nodes = vec![sick];
        let s = Settings::new("opsbro", 30, 60, true).expect("s");
        assert_eq!(
            ask(&s, &nodes, "sick.node.opsbro", RecordType::A).code(),
            ResponseCode::NXDomain
        );
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.opsbro", RecordType::A)),
            ["10.0.2.1"]
        );
        // Its node name does not answer, so the SRV target is the address form, which does.
        let (records, additionals) = lines(&ask(
            &s,
            &nodes,
            "_web._tcp.service.opsbro",
            RecordType::SRV,
        ));
        assert_eq!(
            records,
            ["_web._tcp.service.opsbro. 30 1 1 80 0a000201.addr.opsbro."]
        );
        assert_eq!(additionals, ["0a000201.addr.opsbro. 30 10.0.2.1"]);
        assert_eq!(
            ips(&ask(&s, &nodes, "0a000201.addr.opsbro", RecordType::A)),
            ["10.0.2.1"]
        );
    }

    #[test]
    fn shared_addresses_and_targets_are_answered_once() {
        // Two nodes behind one virtual IP, and a node with two instances on two ports.
        let mut a = node("a", "10.0.3.1", &[]);
        a.services = vec![
            svc("web", 80, &[], "10.0.3.100"),
            svc("web", 81, &[], "10.0.3.100"),
        ];
        let mut b = node("b", "10.0.3.2", &[]);
        b.services = vec![svc("web", 80, &[], "10.0.3.100")];
        let mut c = node("c", "10.0.3.3", &[]);
        c.services = vec![
            svc("web", 80, &[], "10.0.3.3"),
            svc("web", 81, &[], "10.0.3.3"),
        ];
        let nodes = vec![a, b, c];
        let s = settings();
        assert_eq!(
            ips(&ask(&s, &nodes, "web.service.opsbro", RecordType::A)),
            ["10.0.3.100", "10.0.3.3"]
        );
        let (records, additionals) = lines(&ask(&s, &nodes, "web.service.opsbro", RecordType::SRV));
        assert_eq!(
            records,
            [
                "web.service.opsbro. 30 1 1 80 0a000364.addr.opsbro.",
                "web.service.opsbro. 30 1 1 80 c.node.opsbro.",
                "web.service.opsbro. 30 1 1 81 0a000364.addr.opsbro.",
                "web.service.opsbro. 30 1 1 81 c.node.opsbro.",
            ]
        );
        assert_eq!(
            additionals,
            [
                "0a000364.addr.opsbro. 30 10.0.3.100",
                "c.node.opsbro. 30 10.0.3.3"
            ]
        );
    }

    #[test]
    fn service_answers_are_shuffled() {
        let s = settings();
        let nodes: Vec<Node> = (1..=8)
            .map(|i| {
                let mut n = node(&format!("n{i}"), &format!("10.0.0.{i}"), &[]);
                n.services = vec![svc("web", 80, &[], &format!("10.0.0.{i}"))];
                n
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (q, t) in [
            ("web.service.opsbro", RecordType::A),
            ("_web._tcp.service.opsbro", RecordType::SRV),
        ] {
            let name = LowerName::from(Name::from_ascii(q).expect("n"));
            let orders: std::collections::HashSet<String> = (0..20)
                .map(|_| match answer(&s, &nodes, &name, t, 1, &mut rng) {
                    Answer::Records { records, .. } => records
                        .iter()
                        .map(|r| r.data.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => String::new(),
                })
                .collect();
            assert!(orders.len() > 5, "{q}: {orders:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_name_and_type_gets_an_answer_without_panicking(
            labels in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-zA-Z0-9_-]{1,20}",
                    proptest::strategy::Strategy::prop_map(
                        proptest::sample::select(vec![
                        "service", "SERVICE", "_tcp", "_udp", "_web", "web", "primary", "_primary",
                        "addr", "0a000001", "0a090909", "group", "node", "name", "g", "dc1", "a",
                    ]),
                        String::from,
                    ),
                ],
                0..8,
            ),
            in_domain in proptest::bool::ANY,
            qtype in proptest::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::ANY, RecordType::MX, RecordType::SOA, RecordType::TXT, RecordType::SRV]),
            warning_passes in proptest::bool::ANY,
        ) {
            let mut s = Settings::new("opsbro", 30, 60, false).expect("s");
            s.warning_passes = warning_passes;
            let nodes = services();
            let mut text = labels.join(".");
            if in_domain {
                text = if text.is_empty() { "opsbro".into() } else { format!("{text}.opsbro") };
            }
            if let Ok(mut name) = Name::from_ascii(&text) {
                name.set_fqdn(true);
                let name = LowerName::from(name);
                let a = answer(&s, &nodes, &name, qtype, 1, &mut rand::rngs::StdRng::seed_from_u64(3));
                if !in_domain && !text.ends_with("opsbro") {
                    proptest::prop_assert_eq!(a.code(), ResponseCode::Refused);
                }
                if let Answer::Records { records, additionals, soa } = &a {
                    // Records of the asked type under the asked name; an empty answer has
                    // the SOA and no additionals.
                    proptest::prop_assert_eq!(records.is_empty(), soa.is_some());
                    for r in records {
                        proptest::prop_assert!(LowerName::from(&r.name) == name);
                        proptest::prop_assert!(qtype == RecordType::ANY || r.record_type() == qtype);
                    }
                    // The additionals are exactly the SRV targets' addresses.
                    let mut targets: Vec<String> = records.iter().filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(srv.target.to_string()),
                        _ => None,
                    }).collect();
                    targets.sort();
                    targets.dedup();
                    let mut owners: Vec<String> = additionals.iter().map(|r| r.name.to_string()).collect();
                    owners.sort();
                    proptest::prop_assert_eq!(targets, owners);
                }
            }
        }
    }
}
