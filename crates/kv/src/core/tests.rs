//! Unit tests of the core: single steps checked effect by effect, and a few cores wired
//! together synchronously.

use super::list::{batches, merge_pages, node_page};
use super::*;
use crate::error::WriteEffect;
use crate::storage::MemStorage;

const T0: Time = 1_700_000_000_000;

fn uuid(n: usize) -> NodeUuid {
    NodeUuid::from_bytes([u8::try_from(n + 1).unwrap_or(255); 16])
}

fn put(value: &str) -> WriteOp {
    WriteOp::Put {
        value: value.as_bytes().to_vec(),
        cas: None,
        ttl_ms: 0,
    }
}

fn entry(index: u64, value: &str) -> Entry {
    Entry {
        value: value.as_bytes().to_vec(),
        index,
        create_index: index,
        deleted: false,
        expires_ms: 0,
    }
}

/// A few cores wired synchronously: effects are performed in order until nothing is left
/// (sends delivered, flushes completed), except for nodes marked down (their messages are
/// dropped) and flushes held back.
struct Net {
    cores: Vec<Core<MemStorage>>,
    now: Time,
    down: Vec<bool>,
    hold_flushes: bool,
    held: Vec<(usize, u64)>,
    answers: Vec<(usize, ClientId, Result<ClientAnswer, KvError>)>,
    sent: Vec<(usize, NodeUuid, Request)>,
    next_client: u64,
}

impl Net {
    fn new(n: usize) -> Net {
        let cfg = Config::default();
        Net::with(n, &cfg)
    }

    fn with(n: usize, cfg: &Config) -> Net {
        // Booted a minute ago: past the CAS pause that follows a node's first ring.
        let boot = T0 - 60_000;
        let mut cores: Vec<Core<MemStorage>> = (0..n)
            .map(|i| {
                Core::new(uuid(i), cfg.clone(), MemStorage::new(), boot, i as u64).expect("memory")
            })
            .collect();
        let members: Vec<NodeUuid> = (0..n).map(uuid).collect();
        for c in &mut cores {
            c.handle_members(boot, &members);
            c.take_effects();
        }
        Net {
            cores,
            now: T0,
            down: vec![false; n],
            hold_flushes: false,
            held: Vec::new(),
            answers: Vec::new(),
            sent: Vec::new(),
            next_client: 1,
        }
    }

    fn index(&self, u: &NodeUuid) -> usize {
        (0..self.cores.len())
            .find(|i| uuid(*i) == *u)
            .expect("a node of the net")
    }

    fn client(&mut self, node: usize, req: ClientRequest) -> ClientId {
        let id = ClientId(self.next_client);
        self.next_client += 1;
        self.cores[node].handle_client(self.now, id, req);
        self.run();
        id
    }

    fn answer(&self, id: ClientId) -> Option<&Result<ClientAnswer, KvError>> {
        self.answers
            .iter()
            .find(|(_, i, _)| *i == id)
            .map(|(_, _, r)| r)
    }

    fn tick(&mut self, at: Time) {
        self.now = at;
        for i in 0..self.cores.len() {
            if !self.down[i] {
                self.cores[i].handle_tick(at);
            }
        }
        self.run();
    }

    /// Tick every second for `secs` seconds from now.
    fn advance(&mut self, secs: u64) {
        let start = self.now;
        for s in 1..=secs {
            self.tick(start + s * 1_000);
        }
    }

    fn release_flushes(&mut self) {
        for (node, token) in std::mem::take(&mut self.held) {
            self.cores[node].store_mut().flush();
            self.cores[node].handle_flushed(self.now, token, Ok(()));
        }
        self.run();
    }

    fn run(&mut self) {
        let mut progress = true;
        while progress {
            progress = false;
            for i in 0..self.cores.len() {
                let effects = self.cores[i].take_effects();
                progress |= !effects.is_empty();
                for e in effects {
                    self.perform(i, e);
                }
            }
        }
    }

    fn perform(&mut self, i: usize, e: Effect) {
        let now = self.now;
        match e {
            Effect::Send { to, id, request } => {
                self.sent.push((i, to, request.clone()));
                let j = self.index(&to);
                if !self.down[i] && !self.down[j] {
                    let from = Inbound { conn: i as u64, id };
                    self.cores[j].handle_request(now, from, request);
                }
            }
            Effect::Reply { to, response } => {
                let j = usize::try_from(to.conn).unwrap_or(0);
                if !self.down[i] && !self.down[j] {
                    self.cores[j].handle_response(now, uuid(i), to.id, response);
                }
            }
            Effect::Answer { id, result } => self.answers.push((i, id, result)),
            Effect::Flush { token } => {
                if self.hold_flushes {
                    self.held.push((i, token));
                } else {
                    self.cores[i].store_mut().flush();
                    self.cores[i].handle_flushed(now, token, Ok(()));
                }
            }
            Effect::Wake { .. } | Effect::Changed { .. } => {}
        }
    }
}

fn written(r: Option<&Result<ClientAnswer, KvError>>) -> u64 {
    match r {
        Some(Ok(ClientAnswer::Written { index })) => *index,
        other => panic!("not written: {other:?}"),
    }
}

fn value(r: Option<&Result<ClientAnswer, KvError>>) -> Option<String> {
    match r {
        Some(Ok(ClientAnswer::Entry(e))) => e
            .as_ref()
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
        other => panic!("not an entry: {other:?}"),
    }
}

#[test]
fn a_write_is_answered_once_its_copies_are_durable_and_reads_back_through_any_node() {
    let mut net = Net::new(3);
    net.hold_flushes = true;
    let w = net.client(
        1,
        ClientRequest::Write {
            key: "a/b".into(),
            op: put("v1"),
        },
    );
    assert!(net.answer(w).is_none(), "no answer before a flush");
    net.release_flushes();
    let index = written(net.answer(w));
    assert_eq!(Hlc::millis(index), T0);
    net.hold_flushes = false;
    for n in 0..3 {
        let r = net.client(n, ClientRequest::Get { key: "a/b".into() });
        assert_eq!(value(net.answer(r)).as_deref(), Some("v1"));
    }
    let d = net.client(
        2,
        ClientRequest::Write {
            key: "a/b".into(),
            op: WriteOp::Delete { cas: None },
        },
    );
    assert!(written(net.answer(d)) > index);
    let r = net.client(0, ClientRequest::Get { key: "a/b".into() });
    assert_eq!(value(net.answer(r)), None);
    let bad = net.client(0, ClientRequest::Get { key: "/a".into() });
    assert!(matches!(net.answer(bad), Some(Err(KvError::InvalidKey(_)))));
}

/// The default settings without the commit delay: flushes start at once, no tick needed.
fn no_delay() -> Config {
    Config {
        commit_delay_ms: 0,
        ..Config::default()
    }
}

#[test]
fn writes_waiting_together_share_the_next_flush() {
    let mut core = Core::new(uuid(0), Config::default(), MemStorage::new(), T0, 1).expect("memory");
    core.handle_members(T0, &[uuid(0)]);
    core.take_effects();
    let flushes = |effects: &[Effect]| -> Vec<u64> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Flush { token } => Some(*token),
                _ => None,
            })
            .collect()
    };
    let answered = |effects: &[Effect]| effects.iter().any(|e| matches!(e, Effect::Answer { .. }));
    let write = |core: &mut Core<MemStorage>, id, v| {
        core.handle_client(
            T0,
            ClientId(id),
            ClientRequest::Write {
                key: format!("k{id}"),
                op: put(v),
            },
        );
        core.take_effects()
    };
    let first = flushes(&write(&mut core, 1, "a"));
    assert_eq!(first.len(), 1);
    // Two more while that flush runs: they wait for one flush that starts after it.
    assert!(flushes(&write(&mut core, 2, "b")).is_empty());
    assert!(flushes(&write(&mut core, 3, "c")).is_empty());
    core.store_mut().flush();
    core.handle_flushed(T0, first[0], Ok(()));
    let e = core.take_effects();
    assert!(answered(&e));
    // A flush right after another waits out the commit delay (writes on their way join it).
    assert!(flushes(&e).is_empty());
    assert_eq!(core.next_deadline(), Some(T0 + 1));
    core.handle_tick(T0 + 1);
    let second = flushes(&core.take_effects());
    assert_eq!(second.len(), 1);
    core.store_mut().flush();
    core.handle_flushed(T0, second[0], Ok(()));
    let e = core.take_effects();
    let answers = e
        .iter()
        .filter(|e| matches!(e, Effect::Answer { .. }))
        .count();
    assert_eq!(answers, 2);
    assert!(flushes(&e).is_empty());
    assert_eq!(core.stats().flushes, 2);
}

#[test]
fn a_read_repairs_the_owners_that_answered_an_older_copy() {
    let mut net = Net::new(3);
    net.down[2] = true;
    let w = net.client(
        0,
        ClientRequest::Write {
            key: "k".into(),
            op: put("new"),
        },
    );
    written(net.answer(w));
    assert_eq!(net.cores[2].store().get("k").expect("get"), None);
    net.down[2] = false;
    net.sent.clear();
    let r = net.client(1, ClientRequest::Get { key: "k".into() });
    assert_eq!(value(net.answer(r)).as_deref(), Some("new"));
    assert!(
        net.sent
            .iter()
            .any(|(_, to, req)| *to == uuid(2) && matches!(req, Request::Replicate { .. })),
        "the stale owner is sent the newest copy"
    );
    let repaired = net.cores[2].store().get("k").expect("get");
    assert_eq!(repaired.map(|e| e.value), Some(b"new".to_vec()));
}

#[test]
fn a_coordinator_stamps_above_the_versions_it_received() {
    let mut net = Net::new(1);
    let ahead = (T0 + 30_000) << 16;
    net.cores[0].handle_request(
        T0,
        Inbound { conn: 0, id: 1 },
        Request::Replicate {
            entries: vec![("k".into(), entry(ahead, "from a fast clock"))],
        },
    );
    net.run();
    let w = net.client(
        0,
        ClientRequest::Write {
            key: "k".into(),
            op: put("mine"),
        },
    );
    assert!(written(net.answer(w)) > ahead);
}

#[test]
fn forwarded_writes_for_another_node_or_past_their_deadline_are_refused() {
    let mut core = Core::new(uuid(0), no_delay(), MemStorage::new(), T0, 1).expect("memory");
    core.handle_members(T0, &[uuid(0)]);
    let refusal = |core: &mut Core<MemStorage>, to, deadline_ms| {
        core.take_effects();
        core.handle_request(
            T0,
            Inbound { conn: 7, id: 9 },
            Request::Write {
                to,
                key: "k".into(),
                op: put("v"),
                deadline_ms,
            },
        );
        core.take_effects().into_iter().find_map(|e| match e {
            Effect::Reply {
                to,
                response: Response::Refused { code, message },
            } => {
                assert_eq!(to, Inbound { conn: 7, id: 9 });
                Some(KvError::from_refusal(code, message))
            }
            _ => None,
        })
    };
    assert_eq!(refusal(&mut core, uuid(5), 0), Some(KvError::Misaddressed));
    assert_eq!(
        refusal(&mut core, uuid(0), T0 - 1),
        Some(KvError::LateWrite)
    );
    assert_eq!(refusal(&mut core, uuid(0), T0 + 1_000), None);
    assert_eq!(
        core.store().get("k").expect("get").map(|e| e.value),
        Some(b"v".to_vec())
    );
}

#[test]
fn a_replica_refuses_entries_it_cannot_keep_instead_of_claiming_them_stored() {
    let mut core = Core::new(uuid(0), no_delay(), MemStorage::new(), T0, 1).expect("memory");
    let far = (T0 + crate::MAX_CLOCK_AHEAD_MS + 10_000) << 16;
    let from = Inbound { conn: 1, id: 2 };
    core.handle_request(
        T0,
        from,
        Request::Replicate {
            entries: vec![
                ("ok".into(), entry(T0 << 16, "a")),
                ("far".into(), entry(far, "b")),
            ],
        },
    );
    let reply = core.take_effects().into_iter().find_map(|e| match e {
        Effect::Reply { response, .. } => Some(response),
        _ => None,
    });
    assert!(
        matches!(reply, Some(Response::Refused { code: 400, .. })),
        "{reply:?}"
    );
    assert!(core.store().get("ok").expect("get").is_some());
    assert!(core.store().get("far").expect("get").is_none());
    assert_eq!(core.stats().rejected, 1);
    // A newer version held here is reported, after the flush.
    core.handle_request(
        T0,
        from,
        Request::Replicate {
            entries: vec![("ok".into(), entry((T0 << 16) - 5, "older"))],
        },
    );
    let token = core.take_effects().into_iter().find_map(|e| match e {
        Effect::Flush { token } => Some(token),
        _ => None,
    });
    let token = token.or_else(|| {
        // The earlier flush is still running: finish it first.
        core.handle_flushed(T0, 1, Ok(()));
        core.take_effects().into_iter().find_map(|e| match e {
            Effect::Flush { token } => Some(token),
            _ => None,
        })
    });
    core.handle_flushed(T0, token.expect("a flush"), Ok(()));
    let reply = core.take_effects().into_iter().find_map(|e| match e {
        Effect::Reply { response, .. } => Some(response),
        _ => None,
    });
    assert_eq!(
        reply,
        Some(Response::Superseded(vec![("ok".into(), T0 << 16)]))
    );
}

#[test]
fn a_digest_is_answered_with_the_keys_missing_here_and_the_newer_entries() {
    let mut core = Core::new(uuid(0), no_delay(), MemStorage::new(), T0, 1).expect("memory");
    let big = "x".repeat(wire::PAGE_BYTES / 2 + 10);
    for (k, i, v) in [
        ("a", 5, "a"),
        ("b", 7, big.as_str()),
        ("c", 7, big.as_str()),
    ] {
        core.store_mut().put(k, &entry(i, v)).expect("put");
    }
    core.handle_request(
        T0,
        Inbound { conn: 0, id: 1 },
        Request::Digest {
            items: vec![
                ("a".into(), 5),
                ("b".into(), 3),
                ("c".into(), 3),
                ("d".into(), 1),
            ],
        },
    );
    let reply = core.take_effects().into_iter().find_map(|e| match e {
        Effect::Reply { response, .. } => Some(response),
        _ => None,
    });
    let Some(Response::Digest { need, newer }) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(need, vec!["d".to_owned()]);
    // Two big entries do not fit one answer: the asker asks again for the rest.
    assert_eq!(newer.len(), 1);
    assert_eq!(newer[0].0, "b");
}

#[test]
fn an_expired_entry_becomes_a_tombstone_with_the_same_version_at_its_expiry() {
    let mut net = Net::new(3);
    let w = net.client(
        0,
        ClientRequest::Write {
            key: "t".into(),
            op: WriteOp::Put {
                value: b"v".to_vec(),
                cas: None,
                ttl_ms: 1_000,
            },
        },
    );
    let index = written(net.answer(w));
    net.tick(T0 + 999);
    let r = net.client(1, ClientRequest::Get { key: "t".into() });
    assert_eq!(value(net.answer(r)).as_deref(), Some("v"));
    net.tick(T0 + 1_000);
    for c in &net.cores {
        let e = c.store().get("t").expect("get").expect("a tombstone");
        assert!(e.deleted && e.index == index && e.value.is_empty());
    }
    let r = net.client(2, ClientRequest::Get { key: "t".into() });
    assert_eq!(value(net.answer(r)), None);
}

#[test]
fn tombstones_are_collected_after_their_ttl() {
    let cfg = Config {
        tombstone_ttl_ms: 60_000,
        tombstone_gc_interval_ms: 10_000,
        ..Config::default()
    };
    let mut net = Net::with(1, &cfg);
    let d = net.client(
        0,
        ClientRequest::Write {
            key: "gone".into(),
            op: WriteOp::Delete { cas: None },
        },
    );
    written(net.answer(d));
    net.tick(T0 + 10_000);
    assert!(net.cores[0].store().get("gone").expect("get").is_some());
    net.tick(T0 + 70_000);
    assert!(net.cores[0].store().get("gone").expect("get").is_none());
}

#[test]
fn a_blocking_read_is_answered_by_a_change_or_at_its_timeout() {
    let mut net = Net::new(1);
    let w = net.client(
        0,
        ClientRequest::Write {
            key: "w".into(),
            op: put("one"),
        },
    );
    let index = written(net.answer(w));
    let wait = |timeout_ms| ClientRequest::Wait {
        key: "w".into(),
        index,
        timeout_ms,
    };
    let first = net.client(0, wait(60_000));
    assert!(net.answer(first).is_none());
    let w2 = net.client(
        0,
        ClientRequest::Write {
            key: "w".into(),
            op: put("two"),
        },
    );
    written(net.answer(w2));
    assert_eq!(value(net.answer(first)).as_deref(), Some("two"));
    let second = net.client(0, wait(500));
    let second_index = match net.answers.last() {
        Some((_, id, _)) if *id == second => "answered at once",
        _ => "waiting",
    };
    assert_eq!(
        second_index, "answered at once",
        "the version already passed"
    );
    let idle = net.client(
        0,
        ClientRequest::Wait {
            key: "w".into(),
            index: u64::MAX - 1,
            timeout_ms: 500,
        },
    );
    assert!(net.answer(idle).is_none());
    net.tick(T0 + 500);
    assert_eq!(value(net.answer(idle)).as_deref(), Some("two"));
}

#[test]
fn every_client_request_is_answered_once_even_when_peers_never_answer() {
    let mut net = Net::new(3);
    net.down[1] = true;
    net.down[2] = true;
    let key_of_1 = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| net.cores[0].owners(k).first() == Some(&uuid(1)))
        .unwrap_or_default();
    let requests = vec![
        ClientRequest::Get {
            key: key_of_1.clone(),
        },
        ClientRequest::Write {
            key: key_of_1.clone(),
            op: put("v"),
        },
        ClientRequest::Write {
            key: key_of_1.clone(),
            op: WriteOp::Put {
                value: b"c".to_vec(),
                cas: Some(0),
                ttl_ms: 0,
            },
        },
        ClientRequest::List { prefix: "".into() },
        ClientRequest::ListPage {
            prefix: "".into(),
            after: "".into(),
            max_bytes: 100,
        },
        ClientRequest::Wait {
            key: key_of_1.clone(),
            index: 0,
            timeout_ms: 1_000,
        },
        ClientRequest::Import {
            entries: vec![(key_of_1, entry(T0 << 16, "imported"))],
        },
    ];
    let ids: Vec<ClientId> = requests.into_iter().map(|r| net.client(0, r)).collect();
    net.advance(60);
    for id in ids {
        let n = net.answers.iter().filter(|(_, i, _)| *i == id).count();
        assert_eq!(n, 1, "{id:?}: {:?}", net.answer(id));
    }
    assert_eq!(net.cores[0].ops_in_progress(), 0);
    assert_eq!(net.cores[0].requests_in_flight(), 0);
}

#[test]
fn a_cas_is_compared_again_with_the_local_copy_when_it_is_stamped() {
    let mut net = Net::new(3);
    let key = (0..)
        .map(|i| format!("c{i}"))
        .find(|k| net.cores[0].owners(k).first() == Some(&uuid(0)))
        .unwrap_or_default();
    let w = net.client(
        0,
        ClientRequest::Write {
            key: key.clone(),
            op: put("base"),
        },
    );
    let base = written(net.answer(w));
    // Two CAS on the same version start before either has read: their reads see the
    // same version; the second one's stamp meets the first one's copy here.
    let cas = |v: &str| ClientRequest::Write {
        key: key.clone(),
        op: WriteOp::Put {
            value: v.as_bytes().to_vec(),
            cas: Some(base),
            ttl_ms: 0,
        },
    };
    let (a, b) = (ClientId(100), ClientId(101));
    net.cores[0].handle_client(net.now, a, cas("a"));
    net.cores[0].handle_client(net.now, b, cas("b"));
    net.run();
    assert!(matches!(
        net.answer(a),
        Some(Ok(ClientAnswer::Written { .. }))
    ));
    assert!(
        matches!(net.answer(b), Some(Err(KvError::CasFailed { .. }))),
        "{:?}",
        net.answer(b)
    );
}

#[test]
fn a_cas_needs_a_read_quorum_and_only_the_first_owner_coordinates_it() {
    let mut net = Net::new(3);
    let key = (0..)
        .map(|i| format!("q{i}"))
        .find(|k| net.cores[0].owners(k).first() == Some(&uuid(1)))
        .unwrap_or_default();
    net.down[1] = true;
    let w = net.client(
        2,
        ClientRequest::Write {
            key: key.clone(),
            op: WriteOp::Put {
                value: b"v".to_vec(),
                cas: Some(0),
                ttl_ms: 0,
            },
        },
    );
    net.advance(10);
    let e = match net.answer(w) {
        Some(Err(e)) => e.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(e.write_effect(), WriteEffect::Unknown, "{e}");
    assert!(
        !net.sent.iter().any(|(from, to, req)| *from == 2
            && *to == uuid(0)
            && matches!(req, Request::Write { .. })),
        "no CAS goes to the second owner"
    );
}

#[test]
fn correlation_ids_start_at_a_random_point() {
    let first_id = |seed| {
        let mut c = Core::new(uuid(0), no_delay(), MemStorage::new(), T0, seed).expect("memory");
        c.handle_members(T0, &[uuid(0), uuid(1)]);
        c.handle_client(T0, ClientId(1), ClientRequest::Get { key: "k".into() });
        c.take_effects().into_iter().find_map(|e| match e {
            Effect::Send { id, .. } => Some(id),
            _ => None,
        })
    };
    assert_ne!(first_id(1), first_id(2));
    assert_eq!(first_id(3), first_id(3));
}

#[test]
fn a_restarted_node_continues_its_clock_above_what_it_stored_and_expires_what_is_due() {
    let mut store = MemStorage::new();
    let ahead = (T0 + 20_000) << 16;
    store.put("k", &entry(ahead, "v")).expect("put");
    let mut ttl = entry(T0 << 16, "t");
    ttl.expires_ms = T0 + 5;
    store.put("t", &ttl).expect("put");
    let mut core = Core::new(uuid(0), no_delay(), store, T0, 1).expect("memory");
    core.handle_members(T0, &[uuid(0)]);
    assert_eq!(core.next_deadline(), Some(T0 + 5));
    core.handle_tick(T0 + 5);
    assert!(
        core.store()
            .get("t")
            .expect("get")
            .is_some_and(|e| e.deleted)
    );
    core.handle_client(
        T0 + 5,
        ClientId(1),
        ClientRequest::Write {
            key: "k".into(),
            op: put("w"),
        },
    );
    // Flush until the answer comes (the expiry asked for a flush first).
    let mut answer = None;
    for _ in 0..3 {
        for e in core.take_effects() {
            match e {
                Effect::Flush { token } => {
                    core.store_mut().flush();
                    core.handle_flushed(T0 + 5, token, Ok(()));
                }
                Effect::Answer { result, .. } => answer = Some(result),
                _ => {}
            }
        }
    }
    assert!(matches!(answer, Some(Ok(ClientAnswer::Written { index })) if index > ahead));
}

#[test]
fn imports_report_stored_older_and_failed_entries() {
    let cfg = Config {
        write_acks: WriteAcks::All,
        ..Config::default()
    };
    let mut net = Net::with(3, &cfg);
    let w = net.client(
        0,
        ClientRequest::Write {
            key: "held".into(),
            op: put("newer"),
        },
    );
    let held = written(net.answer(w));
    let import = |net: &mut Net| {
        let id = net.client(
            1,
            ClientRequest::Import {
                entries: vec![
                    ("fresh".into(), entry(T0 << 16, "f")),
                    ("held".into(), entry(held - 1, "old")),
                ],
            },
        );
        net.advance(10);
        match net.answer(id) {
            Some(Ok(ClientAnswer::Imported(v))) => v.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(import(&mut net), vec![Imported::Stored, Imported::Older]);
    // An empty import is answered at once (it once waited forever).
    let id = net.client(1, ClientRequest::Import { entries: vec![] });
    assert!(
        matches!(net.answer(id), Some(Ok(ClientAnswer::Imported(v))) if v.is_empty()),
        "an empty import is answered"
    );
    net.down[2] = true;
    let outcomes = import(&mut net);
    assert!(matches!(outcomes[0], Imported::Failed(_)), "{outcomes:?}");
}

fn page(keys: &[(&str, u64)], more: bool) -> NodePage {
    let entries: Vec<(String, Entry)> = keys
        .iter()
        .map(|(k, i)| ((*k).to_owned(), entry(*i, k)))
        .collect();
    node_page(entries, more)
}

#[test]
fn a_merged_page_stops_where_every_node_has_answered_and_keeps_the_newest() {
    let pages = vec![
        page(&[("a", 1), ("c", 5), ("e", 1)], true),
        page(&[("a", 2), ("b", 1), ("c", 3), ("d", 1)], true),
        page(&[("b", 1)], false),
    ];
    let (entries, next) = merge_pages(pages, "", 1 << 20).expect("merge");
    let got: Vec<(&str, u64)> = entries.iter().map(|(k, e)| (k.as_str(), e.index)).collect();
    assert_eq!(got, [("a", 2), ("b", 1), ("c", 5), ("d", 1)]);
    assert_eq!(next.as_deref(), Some("d"));
    let (entries, next) =
        merge_pages(vec![page(&[("x", 1), ("y", 1)], false)], "", 70).expect("merge");
    assert_eq!((entries.len(), next.as_deref()), (1, Some("x")));
    assert!(merge_pages(vec![page(&[("a", 1)], true)], "a", 1 << 20).is_err());
}

#[test]
fn import_batches_respect_count_and_bytes() {
    let entries: Vec<(String, Entry)> = (0..2500)
        .map(|i| (format!("k{i}"), entry(1, "v")))
        .collect();
    let indexes: Vec<usize> = (0..entries.len()).collect();
    let b = batches(&entries, &indexes);
    assert_eq!(
        b.iter().map(Vec::len).collect::<Vec<_>>(),
        [BATCH, BATCH, 500]
    );
    let big = vec![
        ("a".to_owned(), entry(1, &"x".repeat(BATCH_BYTES - 10))),
        ("b".to_owned(), entry(1, "small")),
    ];
    assert_eq!(batches(&big, &[0, 1]).len(), 2);
}

#[test]
fn a_whole_listing_is_gathered_page_by_page_from_every_node() {
    let mut net = Net::new(5);
    for i in 0..40 {
        let w = net.client(
            i % 5,
            ClientRequest::Write {
                key: format!("l/{i:02}"),
                op: put(&"v".repeat(40_000)),
            },
        );
        written(net.answer(w));
    }
    let d = net.client(
        0,
        ClientRequest::Write {
            key: "l/07".into(),
            op: WriteOp::Delete { cas: None },
        },
    );
    written(net.answer(d));
    let l = net.client(
        1,
        ClientRequest::List {
            prefix: "l/".into(),
        },
    );
    match net.answer(l) {
        Some(Ok(ClientAnswer::List(entries))) => {
            assert_eq!(entries.len(), 39);
            assert!(entries.iter().all(|(k, _)| k != "l/07"));
        }
        other => panic!("{other:?}"),
    }
    // Three copies on five nodes: with three nodes silent, some keys have no copy that
    // answered.
    for n in 2..5 {
        net.down[n] = true;
    }
    let l = net.client(
        0,
        ClientRequest::List {
            prefix: "l/".into(),
        },
    );
    net.advance(5);
    assert!(matches!(
        net.answer(l),
        Some(Err(KvError::IncompleteList { .. }))
    ));
}

// ----- hash-range anti-entropy, key-only scans, indexes -----

/// Put `entries` straight into the stores of `nodes` (durable), as if replicated earlier, and
/// let those cores index them again.
fn load(net: &mut Net, nodes: &[usize], entries: &[(String, Entry)]) {
    for &n in nodes {
        let store = net.cores[n].store_mut();
        for (k, e) in entries {
            store.put(k, e).expect("put");
        }
        store.flush();
        net.cores[n].rebuild_indexes().expect("index");
    }
}

/// `count` keys written ten seconds before `T0`, each with a 100-byte value.
fn stored_keys(count: usize) -> Vec<(String, Entry)> {
    (0..count)
        .map(|i| {
            let index = ((T0 - 10_000) << 16) | i as u64;
            (format!("app/{i:06}"), entry(index, &"v".repeat(100)))
        })
        .collect()
}

fn digest_items_sent(net: &Net) -> usize {
    net.sent
        .iter()
        .map(|(_, _, r)| match r {
            Request::Digest { items } => items.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn a_node_that_missed_one_percent_of_the_writes_is_repaired_within_two_anti_entropy_rounds() {
    let mut net = Net::new(3);
    let keys = 20_000;
    let all = stored_keys(keys);
    load(&mut net, &[0, 1, 2], &all);
    // Node 2 missed 1% of the writes: 100 new keys, 50 updates and 50 deletes.
    let later = |i: usize| ((T0 - 5_000) << 16) | i as u64;
    let mut missed: Vec<(String, Entry)> = (0..100)
        .map(|i| (format!("new/{i}"), entry(later(i), "fresh")))
        .collect();
    for i in 0..50 {
        let (k, _) = &all[i * 97];
        missed.push((k.clone(), entry(later(1000 + i), "updated")));
    }
    for i in 0..50 {
        let (k, _) = &all[i * 101 + 7];
        let tomb = Entry {
            value: Vec::new(),
            deleted: true,
            ..entry(later(2000 + i), "")
        };
        missed.push((k.clone(), tomb));
    }
    load(&mut net, &[0, 1], &missed);
    assert_ne!(
        net.cores[0].store().entries(),
        net.cores[2].store().entries()
    );
    // Two rounds: one interval plus its jitter (10%) each.
    let round = Config::default().anti_entropy_interval_ms / 1000 * 11 / 10 + 1;
    net.advance(2 * round);
    let reference = net.cores[0].store().entries();
    assert_eq!(reference.len(), keys + 100);
    for c in &net.cores[1..] {
        assert!(c.store().entries() == reference, "a replica still differs");
    }
    // Only the differing buckets' keys were digested: a full digest of every key to both
    // co-owners, from every node, would have been 120,000 items a round.
    let items = digest_items_sent(&net);
    assert!(items > 0 && items < 30_000, "{items} digest items");
    // And the repaired cluster is idle: the next round compares hashes only.
    net.sent.clear();
    net.advance(round);
    assert_eq!(digest_items_sent(&net), 0);
}

#[test]
fn an_idle_round_in_sync_sends_only_bucket_hashes_and_reads_no_values() {
    let mut net = Net::new(3);
    load(&mut net, &[0, 1, 2], &stored_keys(5_000));
    let reads: Vec<(u64, u64)> = net
        .cores
        .iter()
        .map(|c| (c.store().value_reads(), c.store().meta_reads()))
        .collect();
    let in_sync: u64 = net.cores.iter().map(|c| c.stats().buckets_in_sync).sum();
    let round = Config::default().anti_entropy_interval_ms / 1000 * 11 / 10 + 1;
    net.advance(round);
    assert!(!net.sent.is_empty(), "no round ran");
    let mut bytes = 0;
    for (i, to, r) in &net.sent {
        let Request::Buckets { from, hashes, .. } = r else {
            panic!("node {i} sent {r:?} to {to} in an idle round");
        };
        assert_eq!((from, hashes.len()), (&uuid(*i), crate::buckets::BUCKETS));
        bytes += wire::encode_request(1, r).len();
    }
    // Each node asked each of its two co-owners once (a round per node), 8 KiB each.
    let asked = net.sent.len();
    assert!((6..=12).contains(&asked), "{asked} comparisons");
    assert!(bytes <= asked * (8 * 1024 + 32), "{bytes} bytes");
    let now_in_sync: u64 = net.cores.iter().map(|c| c.stats().buckets_in_sync).sum();
    assert_eq!(
        now_in_sync - in_sync,
        asked as u64,
        "every comparison matched"
    );
    for (c, before) in net.cores.iter().zip(reads) {
        assert_eq!(
            (c.store().value_reads(), c.store().meta_reads()),
            before,
            "an idle round read the store"
        );
    }
}

#[test]
fn a_new_node_gets_its_keys_by_handoff_and_the_cluster_goes_idle_again() {
    let cfg = Config {
        replication_factor: 2,
        ..Config::default()
    };
    let mut net = Net::with(4, &cfg);
    let three: Vec<NodeUuid> = (0..3).map(uuid).collect();
    let four: Vec<NodeUuid> = (0..4).map(uuid).collect();
    for c in &mut net.cores {
        c.handle_members(T0 - 30_000, &three);
        c.take_effects();
    }
    // Every key on its two owners among the first three nodes.
    let all = stored_keys(3_000);
    for n in 0..3 {
        let mine: Vec<(String, Entry)> = all
            .iter()
            .filter(|(k, _)| net.cores[n].owners(k).contains(&uuid(n)))
            .cloned()
            .collect();
        load(&mut net, &[n], &mine);
    }
    for c in &mut net.cores {
        c.handle_members(net.now, &four);
    }
    net.run();
    let round = cfg.anti_entropy_interval_ms / 1000 * 11 / 10 + 1;
    net.advance(2 * round);
    let owned_by_3: Vec<&String> = all
        .iter()
        .map(|(k, _)| k)
        .filter(|k| net.cores[3].owners(k).contains(&uuid(3)))
        .collect();
    assert!(owned_by_3.len() > 300, "{} keys moved", owned_by_3.len());
    for k in &owned_by_3 {
        let e = net.cores[3].store().get(k).expect("get");
        assert!(e.is_some(), "{k} was not handed off");
    }
    // Every owner holds every key it owns, and nothing is left to hand off: the next round
    // only compares hashes.
    for (n, c) in net.cores.iter().enumerate() {
        for (k, _) in &all {
            if c.owners(k).contains(&uuid(n)) {
                assert!(
                    c.store().get(k).expect("get").is_some(),
                    "{k} missing on {n}"
                );
            }
        }
    }
    net.sent.clear();
    net.advance(round);
    assert!(
        net.sent
            .iter()
            .all(|(_, _, r)| matches!(r, Request::Buckets { .. })),
        "a round after handoff still sent digests"
    );
}

/// Check that the indexes kept write by write are what a key-only scan builds.
fn assert_indexes_match_a_rebuild(core: &mut Core<MemStorage>, step: usize) {
    core.shared_index().expect("index");
    let (kept, built) = core.indexes_against_rebuild().expect("scan");
    assert_eq!(kept.expiring, built.expiring, "expiry index at step {step}");
    assert_eq!(
        kept.tombstones, built.tombstones,
        "tombstone index at step {step}"
    );
    assert_eq!(kept.entries, built.entries, "entry count at step {step}");
    assert_eq!(
        core.stats().local_entries,
        core.store().len() as u64,
        "the local_entries gauge at step {step}"
    );
    let (Some(kept), Some(built)) = (kept.shared, built.shared) else {
        panic!("no shared index at step {step}");
    };
    assert!(
        kept.buckets == built.buckets,
        "bucket hashes differ from a rebuild at step {step}"
    );
    for (k, index) in &kept.handoff {
        assert_eq!(
            built.handoff.get(k),
            Some(index),
            "handoff of {k} at step {step}"
        );
    }
}

#[test]
fn bucket_hashes_kept_write_by_write_equal_a_rebuild_after_random_operations() {
    for seed in 0..4u64 {
        let mut rng = crate::rng::SeededRng::new(seed);
        let cfg = Config {
            tombstone_ttl_ms: 20_000,
            tombstone_gc_interval_ms: 5_000,
            anti_entropy_interval_ms: 7_000,
            ..Config::default()
        };
        let mut net = Net::with(4, &cfg);
        let every: Vec<NodeUuid> = (0..4).map(uuid).collect();
        for step in 0..300 {
            let node = rng.below(4);
            let key = format!("k/{}", rng.below(60));
            match rng.below(10) {
                0..=3 => {
                    let ttl_ms = if rng.chance(0.3) {
                        rng.between(1, 8_000)
                    } else {
                        0
                    };
                    net.client(
                        node,
                        ClientRequest::Write {
                            key,
                            op: WriteOp::Put {
                                value: format!("v{step}").into_bytes(),
                                cas: None,
                                ttl_ms,
                            },
                        },
                    );
                }
                4..=5 => {
                    net.client(
                        node,
                        ClientRequest::Write {
                            key,
                            op: WriteOp::Delete { cas: None },
                        },
                    );
                }
                6 => {
                    // A ring change: a node leaves the ring, or every node is back.
                    let members: Vec<NodeUuid> = if rng.chance(0.5) {
                        let gone = rng.below(4);
                        every.iter().copied().filter(|u| *u != uuid(gone)).collect()
                    } else {
                        every.clone()
                    };
                    let now = net.now;
                    for c in &mut net.cores {
                        c.handle_members(now, &members);
                    }
                    net.run();
                }
                _ => net.advance(rng.between(1, 6)),
            }
            if step % 10 == 0 {
                for c in &mut net.cores {
                    assert_indexes_match_a_rebuild(c, step);
                }
            }
        }
        net.advance(30);
        for c in &mut net.cores {
            assert_indexes_match_a_rebuild(c, 300);
        }
        let builds: u64 = net.cores.iter().map(|c| c.stats().index_builds).sum();
        assert!(builds > 0);
    }
}

#[test]
fn tombstones_are_collected_from_their_index_at_the_same_moment_on_every_replica() {
    let cfg = Config {
        tombstone_ttl_ms: 60_000,
        tombstone_gc_interval_ms: 10_000,
        ..Config::default()
    };
    let mut net = Net::with(3, &cfg);
    let d = net.client(
        0,
        ClientRequest::Write {
            key: "gone".into(),
            op: WriteOp::Delete { cas: None },
        },
    );
    written(net.answer(d));
    let reads: Vec<u64> = net.cores.iter().map(|c| c.store().value_reads()).collect();
    // Nodes tick at different moments within a collection interval: none collects early.
    net.advance(69);
    for c in &net.cores {
        assert!(c.store().get("gone").expect("get").is_some());
    }
    net.advance(1);
    for (c, before) in net.cores.iter().zip(reads) {
        assert!(c.store().get("gone").expect("get").is_none());
        // Collection read the one tombstone it removed (and the checks above), not the store.
        assert!(
            c.store().value_reads() - before <= 72,
            "{}",
            c.store().value_reads() - before
        );
    }
}
