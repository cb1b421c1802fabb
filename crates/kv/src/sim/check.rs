//! The checker: what a history of client operations must satisfy.
//!
//! Every write carries a value unique in the run, so a read names the write it saw. A write
//! is **acknowledged** (answered `Written`), **refused** (an error that guarantees nothing was
//! written: [`KvError::write_effect`](crate::KvError::write_effect) is `None`, or its node was down) or **unknown** (timed
//! out, or an error after which a copy may exist). A write takes effect (is stamped) between
//! its invocation and its end: its answer, whatever the answer; or, when its client gave up,
//! the protocol's horizon ([`SimConfig::write_horizon_ms`](super::SimConfig::write_horizon_ms))
//! after its entry node took it (a request that waited at a frozen node counts from when the
//! node got to it: no node can know how long a request sat in its socket).
//! Clocks differ by up to the skew, so "B after A" means "B invoked more than two skews after
//! A ended"; last-writer-wins must then keep B over A.
//!
//! At a check (everything healed and settled), for every key:
//!
//! * **Acknowledged writes survive** ([`Rule::LostWrite`]): the value every node reads comes
//!   from a write that no acknowledged write came after; an absent key is explained by a
//!   delete, an expired TTL, or no acknowledged write at all — not after an acknowledged put.
//! * **Deletes stay deleted** ([`Rule::Resurrected`]): no value written before an acknowledged
//!   delete is read after it; and between two checks a key nobody wrote does not change
//!   ([`Rule::Unstable`]: a tombstone collected while a stale copy survived would show here).
//! * **Every node gives the same answer** ([`Rule::Disagreement`]), listings included; no
//!   read returns a value past its expiry ([`Rule::ExpiredValue`]); every owner holds the
//!   same copy, expired entries being tombstones everywhere ([`Rule::ReplicaDivergence`]).
//!
//! Over the whole run — every read, and every version any node ever stored (the simulator
//! records each put of each store), so a wrong version that a later write hid is still seen:
//!
//! * **No phantoms** ([`Rule::Phantom`]): every value read or stored was written by a write
//!   that was not refused, invoked before the read ended.
//! * **Stamps follow real time** ([`Rule::StampOrder`]): no version of a write is stamped
//!   above an acknowledged write that began after it ended — last-writer-wins would let the
//!   older write overwrite the newer (a frozen coordinator applying a held write late).
//! * **CAS succeeds at most once per version** ([`Rule::CasTwice`]).
//! * Optionally ([`CheckOptions::cas_linearizable`]), **CAS succeeds only on the version
//!   current when it took effect** ([`Rule::StaleCas`]): no acknowledged write was stamped
//!   between the version a successful CAS expected and the CAS's own. The protocol does not
//!   promise this in general: a blind write that failed over to the second owner (its first
//!   owner silent for the forwarding timeout) can be stamped concurrently with a CAS at the
//!   first owner, below it, unseen by its read; last-writer-wins then keeps the CAS over a
//!   write it never compared with (about 1 random seed in 500 shows it). Scenarios where
//!   every write goes through one coordinator at a time assert it.

use std::collections::BTreeMap;
use std::fmt;

use crate::core::{ClientAnswer, ClientRequest};
use crate::entry::Entry;
use crate::error::WriteEffect;
use crate::wire::WriteOp;

use super::{OpRecord, Outcome};

/// What to assert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// CAS succeeds at most once per version. Only while nodes agree on the ring: with split
    /// membership each side has its own coordinator (see the core's docs).
    pub cas_exclusive: bool,
    /// A successful CAS saw the version current when it took effect ([`Rule::StaleCas`]).
    pub cas_linearizable: bool,
    /// Every owner holds the same copy after settling.
    pub replicas_converge: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            cas_exclusive: true,
            cas_linearizable: false,
            replicas_converge: true,
        }
    }
}

/// Which rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// An acknowledged write is gone.
    LostWrite,
    /// A deleted value came back.
    Resurrected,
    /// A read returned a value nobody wrote (or a refused write's, or a future one's).
    Phantom,
    /// Two CAS writes succeeded on the same version.
    CasTwice,
    /// A successful CAS expected a version that another acknowledged write had replaced.
    StaleCas,
    /// A write was stamped above an acknowledged write that began after it ended.
    StampOrder,
    /// Nodes answer differently after settling.
    Disagreement,
    /// A value was read past its expiry.
    ExpiredValue,
    /// Owners hold different copies after settling.
    ReplicaDivergence,
    /// A read after settling failed.
    FinalReadFailed,
    /// A key nobody wrote changed between two checks.
    Unstable,
}

/// A broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The key.
    pub key: String,
    /// What happened, naming operations by id.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on {:?}: {}", self.rule, self.key, self.detail)
    }
}

/// What a check reads.
#[derive(Debug)]
pub struct Context<'a> {
    /// Every operation so far.
    pub history: &'a [OpRecord],
    /// The final reads of this check start at this operation.
    pub finals_from: usize,
    /// Every node's visible entries (empty for a node that is down).
    pub stores: &'a [Vec<(String, Entry)>],
    /// Each key's owners (node indexes) on the ring of every node.
    pub owners: &'a BTreeMap<String, Vec<usize>>,
    /// Two clock skews (and a millisecond).
    pub skew_margin_ms: u64,
    /// How long after its invocation an unknown write may still take effect.
    pub horizon_ms: u64,
    /// What to assert.
    pub options: &'a CheckOptions,
    /// The answers of the previous check.
    pub previous: Option<&'a Finals>,
    /// Every live version any node stored: (key, index) → value.
    pub versions: &'a BTreeMap<(String, u64), Vec<u8>>,
}

/// The answers of a check, for the next one.
#[derive(Debug, Clone)]
pub struct Finals {
    from: usize,
    answers: BTreeMap<String, Option<Entry>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Acked,
    Refused,
    Unknown,
}

#[derive(Debug)]
struct Write<'a> {
    op: usize,
    key: &'a str,
    value: Option<&'a [u8]>,
    ttl_ms: u64,
    cas: Option<u64>,
    status: Status,
    /// The acknowledged version.
    index: u64,
    invoked: u64,
    /// Latest time it may take effect.
    end: u64,
}

fn writes<'a>(history: &'a [OpRecord], horizon: u64) -> Vec<Write<'a>> {
    history
        .iter()
        .filter_map(|o| {
            let ClientRequest::Write { key, op } = &o.request else {
                return None;
            };
            let (value, ttl_ms, cas) = match op {
                WriteOp::Put { value, cas, ttl_ms } => (Some(value.as_slice()), *ttl_ms, *cas),
                WriteOp::Delete { cas } => (None, 0, *cas),
            };
            let index = match &o.outcome {
                Outcome::Done(Ok(ClientAnswer::Written { index })) => *index,
                _ => 0,
            };
            let status = match &o.outcome {
                Outcome::Done(Ok(_)) => Status::Acked,
                Outcome::Done(Err(e)) if e.write_effect() == WriteEffect::None => Status::Refused,
                Outcome::NotSent => Status::Refused,
                _ => Status::Unknown,
            };
            // A write is stamped before its answer, whatever the answer; one never answered
            // (its client gave up) within the protocol's horizon from when its entry node took
            // it (a frozen node takes a request late, and cannot know how long it waited).
            let end = match o.completed {
                Some(done) if matches!(o.outcome, Outcome::Done(_)) => done,
                _ => o.received.unwrap_or(o.invoked).saturating_add(horizon),
            };
            Some(Write {
                op: o.id,
                key,
                value,
                ttl_ms,
                cas,
                status,
                index,
                invoked: o.invoked,
                end,
            })
        })
        .collect()
}

/// Run every rule; answers the violations and this check's answers.
pub fn check(ctx: &Context<'_>) -> (Vec<Violation>, Finals) {
    let mut out = Vec::new();
    let all = writes(ctx.history, ctx.horizon_ms);
    let mut by_value: BTreeMap<(&str, &[u8]), &Write<'_>> = BTreeMap::new();
    let mut by_key: BTreeMap<&str, Vec<&Write<'_>>> = BTreeMap::new();
    for w in &all {
        if let Some(v) = w.value {
            by_value.insert((w.key, v), w);
        }
        by_key.entry(w.key).or_default().push(w);
    }
    phantoms(ctx, &by_value, &mut out);
    versions(ctx, &by_value, &by_key, &mut out);
    if ctx.options.cas_exclusive {
        cas_twice(&all, &mut out);
    }
    if ctx.options.cas_linearizable {
        stale_cas(&by_key, &mut out);
    }
    let finals = final_answers(ctx, &mut out);
    for (key, answer) in &finals.answers {
        let ws = by_key.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let read_at = ctx.history[ctx.finals_from..]
            .iter()
            .filter_map(|o| o.completed)
            .max()
            .unwrap_or(0);
        survivors(ctx, key, answer.as_ref(), ws, &by_value, read_at, &mut out);
    }
    lists(ctx, &finals, &mut out);
    if ctx.options.replicas_converge {
        replicas(ctx, &mut out);
    }
    if let Some(prev) = ctx.previous {
        stability(ctx, prev, &finals, &mut out);
    }
    (out, finals)
}

fn read_values(o: &OpRecord) -> Vec<(&str, &Entry)> {
    match (&o.request, &o.outcome) {
        (ClientRequest::Get { key }, Outcome::Done(Ok(ClientAnswer::Entry(Some(e)))))
        | (ClientRequest::Wait { key, .. }, Outcome::Done(Ok(ClientAnswer::Entry(Some(e))))) => {
            vec![(key.as_str(), e)]
        }
        (_, Outcome::Done(Ok(ClientAnswer::List(entries)))) => {
            entries.iter().map(|(k, e)| (k.as_str(), e)).collect()
        }
        _ => Vec::new(),
    }
}

fn phantoms(
    ctx: &Context<'_>,
    by_value: &BTreeMap<(&str, &[u8]), &Write<'_>>,
    out: &mut Vec<Violation>,
) {
    for o in ctx.history {
        for (key, e) in read_values(o) {
            let detail = match by_value.get(&(key, e.value.as_slice())) {
                None => Some(format!(
                    "op {} read {:?}, which no write of this key wrote",
                    o.id,
                    String::from_utf8_lossy(&e.value)
                )),
                Some(w) if w.status == Status::Refused => Some(format!(
                    "op {} read the value of op {}, which was refused: {:?}",
                    o.id, w.op, ctx.history[w.op].outcome
                )),
                Some(w) if o.completed.is_some_and(|c| w.invoked > c) => Some(format!(
                    "op {} read the value of op {}, invoked after the read ended",
                    o.id, w.op
                )),
                Some(_) => None,
            };
            if let Some(detail) = detail {
                out.push(Violation {
                    rule: Rule::Phantom,
                    key: key.to_owned(),
                    detail,
                });
            }
        }
    }
}

/// Acknowledged writes of a key sorted by invocation, with the smallest acknowledged index
/// from each position on.
struct AckedAfter {
    invoked: Vec<u64>,
    min_index_from: Vec<(u64, usize)>,
}

impl AckedAfter {
    fn new(ws: &[&Write<'_>]) -> AckedAfter {
        let mut acked: Vec<&&Write<'_>> = ws.iter().filter(|w| w.status == Status::Acked).collect();
        acked.sort_by_key(|w| w.invoked);
        let invoked = acked.iter().map(|w| w.invoked).collect();
        let mut min_index_from = vec![(u64::MAX, usize::MAX); acked.len()];
        let mut best = (u64::MAX, usize::MAX);
        for (i, w) in acked.iter().enumerate().rev() {
            if w.index < best.0 {
                best = (w.index, w.op);
            }
            min_index_from[i] = best;
        }
        AckedAfter {
            invoked,
            min_index_from,
        }
    }

    /// The acknowledged write with the smallest index among those invoked after `t`.
    fn smallest_after(&self, t: u64) -> Option<(u64, usize)> {
        let from = self.invoked.partition_point(|i| *i <= t);
        self.min_index_from.get(from).copied()
    }
}

fn versions(
    ctx: &Context<'_>,
    by_value: &BTreeMap<(&str, &[u8]), &Write<'_>>,
    by_key: &BTreeMap<&str, Vec<&Write<'_>>>,
    out: &mut Vec<Violation>,
) {
    let after: BTreeMap<&str, AckedAfter> = by_key
        .iter()
        .map(|(k, ws)| (*k, AckedAfter::new(ws)))
        .collect();
    for ((key, index), value) in ctx.versions {
        let Some(w) = by_value.get(&(key.as_str(), value.as_slice())) else {
            out.push(Violation {
                rule: Rule::Phantom,
                key: key.clone(),
                detail: format!(
                    "a node stored {:?} at index {index}, which no write of this key wrote",
                    String::from_utf8_lossy(value)
                ),
            });
            continue;
        };
        if w.status == Status::Refused {
            out.push(Violation {
                rule: Rule::Phantom,
                key: key.clone(),
                detail: format!(
                    "a node stored the value of op {} at index {index}, but it was refused: {:?}",
                    w.op, ctx.history[w.op].outcome
                ),
            });
        }
        let threshold = w.end.saturating_add(ctx.skew_margin_ms);
        if let Some((b, op)) = after
            .get(key.as_str())
            .and_then(|a| a.smallest_after(threshold))
            && b < *index
        {
            out.push(Violation {
                rule: Rule::StampOrder,
                key: key.clone(),
                detail: format!(
                    "op {} (ended by {}) was stamped {index}, above op {op} acknowledged at {b} and invoked after it ended",
                    w.op, w.end
                ),
            });
        }
    }
}

fn stale_cas(by_key: &BTreeMap<&str, Vec<&Write<'_>>>, out: &mut Vec<Violation>) {
    for (key, ws) in by_key {
        let mut acked: Vec<(u64, usize)> = ws
            .iter()
            .filter(|w| w.status == Status::Acked)
            .map(|w| (w.index, w.op))
            .collect();
        acked.sort_unstable();
        for w in ws.iter().filter(|w| w.status == Status::Acked) {
            let Some(expected) = w.cas.filter(|i| *i > 0) else {
                continue;
            };
            let from = acked.partition_point(|(i, _)| *i <= expected);
            if let Some((b, op)) = acked[from..]
                .iter()
                .find(|(i, op)| *i < w.index && *op != w.op)
            {
                out.push(Violation {
                    rule: Rule::StaleCas,
                    key: (*key).to_owned(),
                    detail: format!(
                        "CAS op {} expected {expected} and was stamped {}, but op {op} was acknowledged at {b} in between",
                        w.op, w.index
                    ),
                });
            }
        }
    }
}

fn cas_twice(all: &[Write<'_>], out: &mut Vec<Violation>) {
    let mut seen: BTreeMap<(&str, u64), Vec<usize>> = BTreeMap::new();
    for w in all {
        if let Some(i) = w.cas
            && i > 0
            && w.status == Status::Acked
        {
            seen.entry((w.key, i)).or_default().push(w.op);
        }
    }
    for ((key, index), ops) in seen {
        if ops.len() > 1 {
            out.push(Violation {
                rule: Rule::CasTwice,
                key: key.to_owned(),
                detail: format!("CAS writes {ops:?} all succeeded on modify_index {index}"),
            });
        }
    }
}

fn final_answers(ctx: &Context<'_>, out: &mut Vec<Violation>) -> Finals {
    let mut answers: BTreeMap<String, Option<Entry>> = BTreeMap::new();
    let mut failed: BTreeMap<String, bool> = BTreeMap::new();
    for o in &ctx.history[ctx.finals_from..] {
        let ClientRequest::Get { key } = &o.request else {
            continue;
        };
        let got = match &o.outcome {
            Outcome::Done(Ok(ClientAnswer::Entry(e))) => e.clone(),
            other => {
                out.push(Violation {
                    rule: Rule::FinalReadFailed,
                    key: key.clone(),
                    detail: format!("op {} through node {}: {other:?}", o.id, o.node),
                });
                failed.insert(key.clone(), true);
                continue;
            }
        };
        match answers.get(key) {
            None => {
                answers.insert(key.clone(), got);
            }
            Some(first) if !same(first.as_ref(), got.as_ref()) => out.push(Violation {
                rule: Rule::Disagreement,
                key: key.clone(),
                detail: format!(
                    "op {} through node {} read {}, another node read {}",
                    o.id,
                    o.node,
                    show(got.as_ref()),
                    show(first.as_ref())
                ),
            }),
            Some(_) => {}
        }
    }
    for k in failed.keys() {
        answers.remove(k);
    }
    Finals {
        from: ctx.finals_from,
        answers,
    }
}

fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.index == b.index && a.value == b.value,
        (None, None) => true,
        _ => false,
    }
}

fn show(e: Option<&Entry>) -> String {
    match e {
        Some(e) => format!(
            "{:?} (index {}, expires {})",
            String::from_utf8_lossy(&e.value),
            e.index,
            e.expires_ms
        ),
        None => "nothing".into(),
    }
}

fn survivors(
    ctx: &Context<'_>,
    key: &str,
    answer: Option<&Entry>,
    ws: &[&Write<'_>],
    by_value: &BTreeMap<(&str, &[u8]), &Write<'_>>,
    read_at: u64,
    out: &mut Vec<Violation>,
) {
    let margin = ctx.skew_margin_ms;
    let after = |w: &Write<'_>| -> Option<&Write<'_>> {
        ws.iter()
            .filter(|a| a.status == Status::Acked && a.op != w.op)
            .filter(|a| a.invoked > w.end.saturating_add(margin))
            .max_by_key(|a| a.invoked)
            .copied()
    };
    match answer {
        Some(e) => {
            let Some(w) = by_value.get(&(key, e.value.as_slice())) else {
                return; // a phantom, reported already
            };
            if let Some(a) = after(w) {
                let rule = if a.value.is_none() {
                    Rule::Resurrected
                } else {
                    Rule::LostWrite
                };
                out.push(Violation {
                    rule,
                    key: key.to_owned(),
                    detail: format!(
                        "every node reads the value of op {} (ended by {}), but op {} was acknowledged after it (invoked at {})",
                        w.op, w.end, a.op, a.invoked
                    ),
                });
            }
            if e.expires_ms != 0 && e.expires_ms.saturating_add(margin) < read_at {
                out.push(Violation {
                    rule: Rule::ExpiredValue,
                    key: key.to_owned(),
                    detail: format!(
                        "the value of op {} expired at {} and was read at {read_at}",
                        w.op, e.expires_ms
                    ),
                });
            }
        }
        None => {
            let explains = |c: &&&Write<'_>| {
                c.status != Status::Refused
                    && after(c).is_none()
                    && (c.value.is_none()
                        || (c.ttl_ms > 0
                            && c.invoked.saturating_add(c.ttl_ms)
                                <= read_at.saturating_add(margin)))
            };
            let nothing_acked = ws.iter().all(|w| w.status != Status::Acked);
            if !nothing_acked && !ws.iter().any(|c| explains(&c)) {
                let latest = ws
                    .iter()
                    .filter(|w| w.status == Status::Acked)
                    .max_by_key(|w| w.invoked)
                    .map_or(0, |w| w.op);
                out.push(Violation {
                    rule: Rule::LostWrite,
                    key: key.to_owned(),
                    detail: format!(
                        "every node reads nothing, but no delete or expiry explains it (last acknowledged write: op {latest})"
                    ),
                });
            }
        }
    }
}

fn lists(ctx: &Context<'_>, finals: &Finals, out: &mut Vec<Violation>) {
    let expected: BTreeMap<&str, &Entry> = finals
        .answers
        .iter()
        .filter_map(|(k, e)| e.as_ref().map(|e| (k.as_str(), e)))
        .collect();
    for o in &ctx.history[ctx.finals_from..] {
        let ClientRequest::List { .. } = &o.request else {
            continue;
        };
        match &o.outcome {
            Outcome::Done(Ok(ClientAnswer::List(entries))) => {
                let got: BTreeMap<&str, &Entry> =
                    entries.iter().map(|(k, e)| (k.as_str(), e)).collect();
                let differs = got.len() != expected.len()
                    || got
                        .iter()
                        .any(|(k, e)| !expected.get(k).is_some_and(|x| same(Some(x), Some(e))));
                if differs {
                    let keys: Vec<&str> = got.keys().copied().collect();
                    out.push(Violation {
                        rule: Rule::Disagreement,
                        key: String::new(),
                        detail: format!(
                            "the listing through node {} (op {}) has keys {keys:?}, reads found {:?}",
                            o.node,
                            o.id,
                            expected.keys().collect::<Vec<_>>()
                        ),
                    });
                }
            }
            other => out.push(Violation {
                rule: Rule::FinalReadFailed,
                key: String::new(),
                detail: format!("listing op {} through node {}: {other:?}", o.id, o.node),
            }),
        }
    }
}

fn replicas(ctx: &Context<'_>, out: &mut Vec<Violation>) {
    let stores: Vec<BTreeMap<&str, &Entry>> = ctx
        .stores
        .iter()
        .map(|s| s.iter().map(|(k, e)| (k.as_str(), e)).collect())
        .collect();
    for (key, owners) in ctx.owners {
        // A collected tombstone and a tombstone read the same; live copies must be equal.
        let copy = |n: usize| -> Option<(u64, &[u8], u64)> {
            stores
                .get(n)
                .and_then(|s| s.get(key.as_str()))
                .filter(|e| !e.deleted)
                .map(|e| (e.index, e.value.as_slice(), e.expires_ms))
        };
        let Some(&first) = owners.first() else {
            continue;
        };
        for &o in &owners[1..] {
            if copy(o) != copy(first) {
                out.push(Violation {
                    rule: Rule::ReplicaDivergence,
                    key: key.clone(),
                    detail: format!(
                        "owner {first} holds {:?}, owner {o} holds {:?}",
                        copy(first).map(|(i, v, x)| (i, String::from_utf8_lossy(v), x)),
                        copy(o).map(|(i, v, x)| (i, String::from_utf8_lossy(v), x)),
                    ),
                });
            }
        }
    }
}

fn stability(ctx: &Context<'_>, prev: &Finals, now: &Finals, out: &mut Vec<Violation>) {
    for (key, before) in &prev.answers {
        let Some(after) = now.answers.get(key) else {
            continue;
        };
        if same(before.as_ref(), after.as_ref()) {
            continue;
        }
        let written = ctx.history[prev.from..]
            .iter()
            .any(|o| matches!(&o.request, ClientRequest::Write { key: k, .. } if k == key));
        let expired = after.is_none() && before.as_ref().is_some_and(|e| e.expires_ms != 0);
        if !written && !expired {
            out.push(Violation {
                rule: Rule::Unstable,
                key: key.clone(),
                detail: format!(
                    "nobody wrote it since the previous check, which read {}; this one reads {}",
                    show(before.as_ref()),
                    show(after.as_ref())
                ),
            });
        }
    }
}
