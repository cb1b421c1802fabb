//! Issue 19: bounded-time fuzzing of every parser that reads bytes from the network, and of the
//! gossip core behind its codec. Each target runs for `OPSBRO_FUZZ_SECS` seconds (default 3;
//! CI gives more) on inputs made by mutating valid encodings (bit flips, boundary bytes,
//! insertions, deletions, repeats, splices, truncations) and on random bytes. A panic fails the
//! test and prints the input, in hex, and the seed to replay it with `OPSBRO_FUZZ_SEED`.
//!
//! Coverage-guided fuzzers (cargo-fuzz, AFL++) need a nightly toolchain or extra builds; this
//! runs with the stable toolchain, on every `cargo test`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opsbro_gossip::codec::{self, Message, PushPull, UserEvent};
use opsbro_gossip::{CheckSummary, Gossip, GossipConfig, MemberState, NodeRecord};
use opsbro_types::NodeUuid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn budget() -> Duration {
    let secs = std::env::var("OPSBRO_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// Makes inputs from seeds.
struct Mutator {
    rng: StdRng,
}

impl Mutator {
    fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let r = &mut self.rng;
        if r.random_ratio(1, 20) {
            let n = r.random_range(0..256);
            return (0..n).map(|_| r.random()).collect();
        }
        let mut data = seeds[r.random_range(0..seeds.len())].clone();
        for _ in 0..r.random_range(1..=4) {
            let len = data.len();
            match r.random_range(0..8) {
                0 if len > 0 => {
                    let i = r.random_range(0..len);
                    data[i] ^= 1 << r.random_range(0..8);
                }
                1 if len > 0 => {
                    let i = r.random_range(0..len);
                    data[i] = [0, 1, 0x7f, 0x80, 0xff, 0xfe][r.random_range(0..6)];
                }
                2 => {
                    let i = r.random_range(0..=len);
                    let extra: Vec<u8> = (0..r.random_range(1..16)).map(|_| r.random()).collect();
                    data.splice(i..i, extra);
                }
                3 if len > 0 => {
                    let a = r.random_range(0..len);
                    let b = (a + r.random_range(1..=16)).min(len);
                    data.drain(a..b);
                }
                4 if len > 0 => {
                    let a = r.random_range(0..len);
                    let b = (a + r.random_range(1..=32)).min(len);
                    let chunk = data[a..b].to_vec();
                    data.splice(b..b, chunk);
                }
                5 => {
                    let other = &seeds[r.random_range(0..seeds.len())];
                    if !other.is_empty() {
                        let a = r.random_range(0..other.len());
                        let at = r.random_range(0..=len);
                        data.splice(at..at, other[a..].iter().copied());
                    }
                }
                6 if len > 0 => data.truncate(r.random_range(0..len)),
                _ if len > 0 => {
                    // A varint-looking run: length and count fields are where decoders break.
                    let i = r.random_range(0..len);
                    let run = r.random_range(1..11);
                    let end = (i + run).min(len);
                    data[i..end].fill(0xff);
                }
                _ => data.push(r.random()),
            }
        }
        data
    }
}

/// Feed mutated `seeds` to `target` until the budget is spent.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, mut target: impl FnMut(&[u8])) {
    let seed = std::env::var("OPSBRO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let mut m = Mutator {
        rng: StdRng::seed_from_u64(seed),
    };
    for s in &seeds {
        target(s);
    }
    let end = Instant::now() + budget();
    let mut runs = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            let input = m.mutate(&seeds);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
            if let Err(panic) = result {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("{name}: panic on input {hex} (OPSBRO_FUZZ_SEED={seed})");
                std::panic::resume_unwind(panic);
            }
            runs += 1;
        }
    }
    eprintln!("{name}: {runs} inputs in {:?} (seed {seed})", budget());
    assert!(runs > 0);
}

fn record(n: u8) -> NodeRecord {
    NodeRecord {
        uuid: NodeUuid::from_bytes([n; 16]),
        name: format!("node-{n}"),
        display_name: format!("Node {n}"),
        addr: SocketAddr::from(([10, 0, 0, n], 6768)),
        zone: "internet".into(),
        groups: vec!["linux".into(), "kv".into()],
        is_proxy: n.is_multiple_of(2),
        incarnation: u64::from(n) * 3,
        state: MemberState::Alive,
        version: "0.1.0".into(),
        checks: vec![CheckSummary {
            name: "linux/cpu".into(),
            state: 1,
        }],
        services: vec![opsbro_gossip::ServiceRecord {
            name: "web".into(),
            port: 80,
            address: None,
            tags: vec!["primary".into()],
            meta: vec![("v".into(), "1".into())],
            state: 0,
            maintenance: (n == 2).then(|| "upgrade".into()),
        }],
        maintenance: None,
    }
}

fn gossip_seeds() -> Vec<Vec<u8>> {
    let a = record(1).uuid;
    let b = record(2).uuid;
    let messages = vec![
        Message::Ping {
            seq: 1,
            target: a,
            from: b,
        },
        Message::Ack { seq: 1, from: a },
        Message::Nack { seq: 2 },
        Message::IndirectPing {
            seq: 3,
            target: b,
            target_addr: record(2).addr,
            want_nack: true,
        },
        Message::Alive(record(3)),
        Message::Suspect {
            node: b,
            incarnation: 6,
            from: a,
        },
        Message::Dead {
            node: b,
            incarnation: 7,
            from: a,
        },
        Message::Leave {
            node: b,
            incarnation: 8,
        },
        Message::Event(UserEvent {
            id: 9,
            origin: a,
            kind: "deploy".into(),
            payload: b"v1.2".to_vec(),
            created_ms: 1000,
        }),
        Message::DetectPing {
            id: 10,
            from: b,
            zone: "internet".into(), // zones: the asker's zone (wire version 5)
            padding: 4,
        },
        Message::DetectPong {
            id: 10,
            record: record(4),
        },
    ];
    let mut seeds: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| codec::datagram([codec::encode_message(m).as_slice()]))
        .collect();
    let all: Vec<Vec<u8>> = messages.iter().map(codec::encode_message).collect();
    seeds.push(codec::datagram(all.iter().map(Vec::as_slice)));
    seeds
}

#[test]
fn fuzz_gossip_datagrams_through_the_codec_and_the_core() {
    let mut core = Gossip::new(GossipConfig::default(), record(1), 7, 0);
    let mut now = 0;
    let from = SocketAddr::from(([10, 0, 0, 9], 6768));
    fuzz("gossip datagram", gossip_seeds(), |input| {
        let _ = codec::decode_datagram(input);
        now += 37;
        let _ = core.handle_datagram(now, from, input);
        core.handle_tick(now);
        core.take_effects();
    });
}

#[test]
fn fuzz_gossip_push_pull_through_the_codec_and_the_core() {
    let state = PushPull {
        join: true,
        members: (1..=6).map(record).collect(),
        events: vec![UserEvent {
            id: 1,
            origin: record(1).uuid,
            kind: "x".into(),
            payload: vec![],
            created_ms: 0,
        }],
    };
    let seeds = vec![codec::encode_push_pull(&state)];
    let mut core = Gossip::new(GossipConfig::default(), record(1), 8, 0);
    let mut now = 0;
    let from = SocketAddr::from(([10, 0, 0, 9], 6768));
    fuzz("gossip push-pull", seeds, |input| {
        if let Ok(p) = codec::decode_push_pull(input) {
            now += 1000;
            let _ = core.handle_push_pull(now, from, p);
            core.take_effects();
        }
    });
}

#[test]
fn fuzz_kv_wire() {
    use opsbro_kv::Entry;
    use opsbro_kv::wire::{Request, Response, WriteOp, encode_request, encode_response};
    let entry = Entry {
        value: b"value".to_vec(),
        index: 5 << 16,
        create_index: 4 << 16,
        deleted: false,
        expires_ms: 99,
    };
    let mut seeds: Vec<Vec<u8>> = [
        Request::Write {
            to: NodeUuid::from_bytes([1; 16]),
            key: "a/b".into(),
            op: WriteOp::Put {
                value: b"v".to_vec(),
                cas: Some(3),
                ttl_ms: 1000,
            },
            deadline_ms: 5,
        },
        Request::Write {
            to: NodeUuid::from_bytes([1; 16]),
            key: "a".into(),
            op: WriteOp::Delete { cas: None },
            deadline_ms: 0,
        },
        Request::Replicate {
            entries: vec![("k".into(), entry.clone())],
        },
        Request::Get { key: "k".into() },
        Request::List {
            prefix: "p/".into(),
            after: "p/a".into(),
        },
        Request::Digest {
            items: vec![("k".into(), 7)],
        },
        Request::Wait {
            key: "k".into(),
            index: 1,
            timeout_ms: 10,
        },
    ]
    .iter()
    .map(|r| encode_request(1, r))
    .collect();
    seeds.extend(
        [
            Response::Written { index: 3 },
            Response::Refused {
                code: 409,
                message: "cas".into(),
            },
            Response::Stored,
            Response::Superseded(vec![("k".into(), 9 << 16)]),
            Response::Entry(Some(entry.clone())),
            Response::Entries {
                entries: vec![("k".into(), entry.clone())],
                more: true,
            },
            Response::Digest {
                need: vec!["a".into()],
                newer: vec![("b".into(), entry.clone())],
            },
        ]
        .iter()
        .map(|r| encode_response(2, r)),
    );
    seeds.push(entry.to_bytes());
    fuzz("kv wire", seeds, |input| {
        let _ = opsbro_kv::wire::decode(input);
        if let Ok(e) = Entry::from_bytes(input) {
            let _ = e.is_plausible(1_700_000_000_000);
        }
    });
}

/// A DNS query for `name`, type `qtype`, with an EDNS0 OPT record when `edns`.
fn dns_query(name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if edns {
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

#[test]
fn fuzz_dns_fast_path() {
    let settings = opsbro_dns::Settings::new("opsbro", 30, 30, false).expect("settings");
    let directory = Arc::new(
        (1..=5u8)
            .map(|n| opsbro_dns::Node {
                name: format!("web-{n}"),
                zone: "dc1".into(),
                addr: IpAddr::from([10, 0, 0, n]),
                groups: vec!["web".into()],
                alive: true,
                critical: false,
                maintenance: false,
                services: Vec::new(),
            })
            .collect::<Vec<_>>(),
    );
    let seeds = vec![
        dns_query("web.group.opsbro", 1, false),
        dns_query("web-1.name.dc1.opsbro", 1, true),
        dns_query("WEB.Group.OpsBro", 28, true),
        dns_query("nope.example", 1, false),
    ];
    let mut fast = opsbro_dns::fast::FastPath::default();
    let mut rng = StdRng::seed_from_u64(3);
    let mut out = Vec::new();
    fuzz("dns fast path", seeds, |input| {
        out.clear();
        let _ = fast.answer(&settings, &directory, false, input, &mut rng, &mut out);
    });
}

#[test]
fn fuzz_statsd_packets() {
    let seeds = vec![
        b"shop.orders:1|c\nshop.latency:320|ms|@0.5\ngauge:+3|g\nusers:alice|s\nh:1.5|h|#tag:x"
            .to_vec(),
        b"a:1|c:2|c\nb:-4|g\n".to_vec(),
        b"x:1|c|@0.1|#a,b\n\n".to_vec(),
    ];
    let mut agg = opsbro_metrics::statsd::Aggregator::new(Default::default(), 1);
    let mut n = 0u64;
    fuzz("statsd", seeds, |input| {
        agg.handle_packet(input);
        n += 1;
        if n.is_multiple_of(1000) {
            let _ = agg.take_interval().points(n, 10.0);
        }
    });
}

#[test]
fn fuzz_graphite_lines() {
    let seeds = vec![
        b"servers.web1.load 0.42 1700000000".to_vec(),
        b"a.b -1 -1".to_vec(),
        b"a.b NaN 1700000000".to_vec(),
        b"x.y 1e308 1700000000\n".to_vec(),
    ];
    fuzz("graphite", seeds, |input| {
        for line in input.split(|b| *b == b'\n') {
            let _ = opsbro_metrics::graphite::parse_line(line, 1_700_000_000);
        }
    });
}

#[test]
fn fuzz_sealed_envelopes() {
    let ring = opsbro_transport::Keyring::with_key(opsbro_transport::Key::new([7; 32]));
    let rng = opsbro_transport::system_random();
    let now = 1_700_000_000_000;
    let seeds = vec![
        ring.seal(&rng, b"hello", now),
        ring.seal(&rng, &gossip_seeds()[0], now),
    ];
    let mut t = now;
    fuzz("sealed envelope", seeds, |input| {
        t += 1;
        let _ = ring.open(input, t);
    });
}
