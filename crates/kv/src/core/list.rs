//! Listings and imports: a page from every node merged up to the smallest last key of the
//! nodes that have more, judged complete when every key has an owner that answered
//! ([`Ring::covered_by`](crate::Ring::covered_by)); imports sent to each key's owners as
//! `Replicate` batches, so the newest version wins.

use std::collections::BTreeMap;

use opsbro_types::NodeUuid;

use super::{
    BATCH, BATCH_BYTES, ClientAnswer, ClientId, Core, Failure, FlushWaiter, ImportOp, Imported,
    ListOp, NodePage, Op, OpId, Page, Purpose, failure_text,
};
use crate::entry::Entry;
use crate::error::KvError;
use crate::key::validate_key;
use crate::storage::Storage;
use crate::wire::{self, Request, Response};

impl<S: Storage> Core<S> {
    // ----- listings -----

    pub(super) fn start_list(
        &mut self,
        client: ClientId,
        prefix: String,
        after: String,
        max_bytes: usize,
        full: bool,
    ) {
        // The ring as it is now: completeness is judged against the nodes we asked, even if a
        // silent one leaves the ring while we wait for it.
        let id = self.new_op(Op::List(ListOp {
            client,
            prefix,
            after,
            max_bytes,
            full,
            ring: self.ring.clone(),
            pages: Vec::new(),
            answered: Vec::new(),
            failures: Vec::new(),
            waiting: 0,
            gathered: Vec::new(),
            bytes: 0,
        }));
        self.list_round(id);
    }

    pub(super) fn list_round(&mut self, id: OpId) {
        let Some(Op::List(op)) = self.ops.get_mut(&id) else {
            return;
        };
        let (prefix, after) = (op.prefix.clone(), op.after.clone());
        let local = match self.store.scan_page(&prefix, &after, wire::PAGE_BYTES) {
            Ok(page) => page,
            Err(e) => {
                let client = op.client;
                self.ops.remove(&id);
                return self.answer(client, Err(e.into()));
            }
        };
        let nodes: Vec<NodeUuid> = op
            .ring
            .nodes()
            .iter()
            .copied()
            .filter(|n| *n != self.me)
            .collect();
        op.pages = vec![node_page(local.0, local.1)];
        op.answered = vec![self.me];
        op.failures.clear();
        op.waiting = nodes.len();
        for n in nodes {
            self.send(
                n,
                Request::List {
                    prefix: prefix.clone(),
                    after: after.clone(),
                },
                self.cfg.peer_timeout_ms,
                Purpose::List(id),
            );
        }
        self.list_progress(id);
    }

    pub(super) fn list_answer(
        &mut self,
        id: OpId,
        from: NodeUuid,
        outcome: Result<Response, Failure>,
    ) {
        let now = self.now;
        let mut rejected = 0;
        let Some(Op::List(op)) = self.ops.get_mut(&id) else {
            return;
        };
        match outcome {
            Ok(Response::Entries { entries, more }) => {
                let kept: Vec<(String, Entry)> = entries
                    .into_iter()
                    .filter(|(k, e)| {
                        let ok = k.starts_with(op.prefix.as_str())
                            && validate_key(k).is_ok()
                            && e.is_plausible(now);
                        if !ok {
                            rejected += 1;
                        }
                        ok
                    })
                    .collect();
                op.answered.push(from);
                op.pages.push(node_page(kept, more));
            }
            Ok(Response::Refused { message, .. }) => op.failures.push(format!("{from}: {message}")),
            Ok(other) => op.failures.push(format!("{from}: unexpected {other:?}")),
            Err(f) => op.failures.push(format!("{from}: {}", failure_text(f))),
        }
        op.waiting = op.waiting.saturating_sub(1);
        self.stats.rejected += rejected;
        self.list_progress(id);
    }

    pub(super) fn list_progress(&mut self, id: OpId) {
        let now = self.now;
        let rf = self.cfg.replication_factor;
        let max_list = self.cfg.max_list_bytes;
        let Some(Op::List(op)) = self.ops.get_mut(&id) else {
            return;
        };
        if op.waiting > 0 {
            return;
        }
        let client = op.client;
        // A silent node is fine as long as every key has another owner that answered; an
        // incomplete list is an error, never a short answer.
        if !op.ring.covered_by(&op.answered, rf) {
            let e = KvError::IncompleteList {
                silent: op.failures.len(),
                nodes: op.ring.nodes().len(),
                reasons: op.failures.join("; "),
            };
            self.ops.remove(&id);
            return self.answer(client, Err(e));
        }
        let pages = std::mem::take(&mut op.pages);
        let merged = merge_pages(pages, &op.after, op.max_bytes);
        let (entries, next) = match merged {
            Ok(m) => m,
            Err(e) => {
                self.ops.remove(&id);
                return self.answer(client, Err(e));
            }
        };
        if !op.full {
            self.ops.remove(&id);
            return self.answer(client, Ok(ClientAnswer::Page { entries, next }));
        }
        for (k, e) in entries {
            op.bytes += k.len() + e.value.len() + 32;
            if e.is_live(now) {
                op.gathered.push((k, e));
            }
        }
        if op.bytes > max_list {
            self.ops.remove(&id);
            return self.answer(
                client,
                Err(KvError::ListTooBig {
                    max_mib: max_list >> 20,
                }),
            );
        }
        match next {
            Some(next) => {
                op.after = next;
                self.list_round(id);
            }
            None => {
                let gathered = std::mem::take(&mut op.gathered);
                self.ops.remove(&id);
                self.answer(client, Ok(ClientAnswer::List(gathered)));
            }
        }
    }

    // ----- imports -----

    pub(super) fn start_import(&mut self, client: ClientId, entries: Vec<(String, Entry)>) {
        if entries.is_empty() {
            // Nothing to send: no answer would ever come to wait for.
            return self.answer(client, Ok(ClientAnswer::Imported(Vec::new())));
        }
        if self.ring.is_empty() {
            let failed = vec![Imported::Failed("no node can store keys yet".into()); entries.len()];
            return self.answer(client, Ok(ClientAnswer::Imported(failed)));
        }
        let owners: Vec<Vec<NodeUuid>> = entries.iter().map(|(k, _)| self.owners(k)).collect();
        let mut per_node: BTreeMap<NodeUuid, Vec<usize>> = BTreeMap::new();
        for (i, os) in owners.iter().enumerate() {
            for o in os {
                per_node.entry(*o).or_default().push(i);
            }
        }
        let n = entries.len();
        let id = self.new_op(Op::Import(ImportOp {
            client,
            entries,
            owners: owners.iter().map(Vec::len).collect(),
            durable: vec![0; n],
            newer: vec![0; n],
            problems: vec![String::new(); n],
            waiting: 0,
        }));
        let mut sends = Vec::new();
        if let Some(Op::Import(op)) = self.ops.get(&id) {
            for (node, indexes) in per_node {
                for batch in batches(&op.entries, &indexes) {
                    let items: Vec<(String, Entry)> =
                        batch.iter().map(|i| op.entries[*i].clone()).collect();
                    sends.push((node, batch, items));
                }
            }
        }
        if let Some(Op::Import(op)) = self.ops.get_mut(&id) {
            op.waiting = sends.len();
        }
        for (node, batch, items) in sends {
            if node == self.me {
                match self.merge_local(&items) {
                    Ok(m) if m.refused > 0 => {
                        self.stats.received += m.taken as u64;
                        self.request_flush(None);
                        let why = format!("{} entries refused by this node", m.refused);
                        self.import_answer(id, &batch, Err(why));
                    }
                    Ok(m) => {
                        self.stats.received += m.taken as u64;
                        let held = m.superseded.into_iter().map(|(k, e)| (k, e.index));
                        self.request_flush(Some(FlushWaiter::Import(id, batch, held.collect())));
                    }
                    Err(e) => self.import_answer(id, &batch, Err(e.to_string())),
                }
            } else {
                self.send(
                    node,
                    Request::Replicate { entries: items },
                    self.cfg.peer_timeout_ms.saturating_mul(2),
                    Purpose::Import(id, batch),
                );
            }
        }
    }

    pub(super) fn import_answer(
        &mut self,
        id: OpId,
        indexes: &[usize],
        answer: Result<BTreeMap<String, u64>, String>,
    ) {
        let Some(Op::Import(op)) = self.ops.get_mut(&id) else {
            return;
        };
        for &i in indexes {
            let Some((key, entry)) = op.entries.get(i) else {
                continue;
            };
            match &answer {
                Ok(held) => match held.get(key) {
                    Some(h) if *h > entry.index => op.newer[i] = op.newer[i].max(*h),
                    _ => op.durable[i] += 1,
                },
                Err(e) => op.problems[i] = e.clone(),
            }
        }
        op.waiting = op.waiting.saturating_sub(1);
        if op.waiting > 0 {
            return;
        }
        let Some(Op::Import(op)) = self.ops.remove(&id) else {
            return;
        };
        let outcomes = (0..op.entries.len())
            .map(|i| {
                let needed = self.cfg.write_acks.needed(op.owners[i]);
                if op.newer[i] > 0 {
                    Imported::Older
                } else if op.durable[i] >= needed {
                    Imported::Stored
                } else {
                    Imported::Failed(format!(
                        "{} of the {needed} owners needed stored it ({}); import the file again later",
                        op.durable[i], op.problems[i]
                    ))
                }
            })
            .collect();
        self.answer(op.client, Ok(ClientAnswer::Imported(outcomes)));
    }
}

pub(super) fn node_page(entries: Vec<(String, Entry)>, more: bool) -> NodePage {
    NodePage {
        last_if_more: if more {
            entries.last().map(|(k, _)| k.clone())
        } else {
            None
        },
        entries,
    }
}

/// Merge the nodes' pages into one: the newest copy of each key up to the smallest last key
/// of the nodes that have more (all of them when none has), then cut at `max_bytes`. Answers
/// the entries and where the next page starts.
pub(super) fn merge_pages(
    pages: Vec<NodePage>,
    after: &str,
    max_bytes: usize,
) -> Result<Page, KvError> {
    let bound: Option<String> = pages.iter().filter_map(|p| p.last_if_more.clone()).min();
    if let Some(b) = &bound
        && b.as_str() <= after
    {
        return Err(KvError::Unavailable(
            "a node's page does not advance".into(),
        ));
    }
    let mut merged: BTreeMap<String, Entry> = BTreeMap::new();
    for page in pages {
        for (k, e) in page.entries {
            if bound.as_ref().is_some_and(|b| &k > b) || k.as_str() <= after {
                continue;
            }
            match merged.get(&k) {
                Some(old) if !e.is_newer_than(old) => {}
                _ => {
                    merged.insert(k, e);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut cut = false;
    for (k, e) in merged {
        let size = k.len() + e.value.len() + 64;
        if !out.is_empty() && bytes + size > max_bytes {
            cut = true;
            break;
        }
        bytes += size;
        out.push((k, e));
    }
    let next = if cut {
        out.last().map(|(k, _)| k.clone())
    } else {
        bound
    };
    Ok((out, next))
}

/// Split `indexes` (into `entries`) into `Replicate`-sized batches.
pub(super) fn batches(entries: &[(String, Entry)], indexes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for i in indexes {
        let Some((k, e)) = entries.get(*i) else {
            continue;
        };
        let size = k.len() + e.value.len() + 32;
        if !batch.is_empty() && (batch.len() >= BATCH || bytes + size > BATCH_BYTES) {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(*i);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}
