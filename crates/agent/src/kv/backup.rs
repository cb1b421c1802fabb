//! Backups of the whole cluster's keys (`opsbro kv export` / `opsbro kv import`): export pages
//! gathered from every node with the completeness rule of `GET /kv/?prefix=`, and imports that
//! travel as `Replicate` messages to each key's owners, so the same last-writer-wins merge as
//! replication decides: an imported entry replaces a copy only when its version is newer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use opsbro_kv::Entry;
use opsbro_kv::wire::{Request, Response};
use opsbro_types::NodeUuid;

use super::{BATCH, BATCH_BYTES, KvError, KvHandle, PEER_TIMEOUT, futures_join_all};

/// What became of one imported entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    /// Enough owners hold it (written now, or already there at that version).
    Stored,
    /// An owner holds a newer version of the key: left alone.
    Older,
    /// Not enough owners could store it.
    Failed(String),
}

/// One node's page of a listing: its entries and, when more follow, its last key.
struct NodePage {
    entries: Vec<(String, Entry)>,
    last_if_more: Option<String>,
}

/// A page of an export: entries in key order, and the key to continue after (none: the last).
pub type ExportPage = (Vec<(String, Entry)>, Option<String>);

/// A node's answer about one batch of an import: the keys for which it holds a newer version
/// (with that version), or why it did not store the batch.
type BatchAnswer = Result<HashMap<String, u64>, String>;

impl KvHandle {
    /// One page of the cluster's entries under `prefix` after the key `after` (tombstones and
    /// expired entries included: they are versions too), the newest copy of each key, in key
    /// order; at most about `max_bytes` of keys and values (at least one entry). Answers the
    /// entries and the key to continue after, none on the last page.
    ///
    /// Every node on the ring is asked for one page; a node may be silent as long as every key
    /// has another owner that answered (else 503: a page is never answered short). The page
    /// ends at the smallest last key among the nodes that have more, so every key up to there
    /// was seen by every node that answered. Memory: one page (1 MiB) per node.
    pub async fn export_page(
        &self,
        prefix: &str,
        after: &str,
        max_bytes: usize,
    ) -> Result<ExportPage, KvError> {
        let kv = &self.0;
        let ring = kv.ring_now();
        let nodes: Vec<NodeUuid> = ring.nodes().to_vec();
        let mut pages = vec![local_page(kv.local_page(prefix, after)?)];
        let mut answered = vec![kv.me];
        let asks = nodes.iter().filter(|n| **n != kv.me).map(|n| {
            let (me, n) = (kv.clone(), *n);
            let req = Request::List {
                prefix: prefix.to_owned(),
                after: after.to_owned(),
            };
            async move {
                let Some(addr) = me.addr_of(&n) else {
                    return (n, Err(format!("{n}: no address")));
                };
                let answer = match me.peers.request(addr, &req, PEER_TIMEOUT).await {
                    Ok(Response::Entries { entries, more }) => Ok(NodePage {
                        last_if_more: if more {
                            entries.last().map(|(k, _)| k.clone())
                        } else {
                            None
                        },
                        entries,
                    }),
                    Ok(Response::Refused { message, .. }) => Err(format!("{addr}: {message}")),
                    Ok(other) => Err(format!("{addr}: unexpected {other:?}")),
                    Err(e) => Err(format!("{addr}: {e}")),
                };
                (n, answer)
            }
        });
        let mut failures = Vec::new();
        for (node, answer) in futures_join_all(asks).await {
            match answer {
                Ok(page) => {
                    answered.push(node);
                    pages.push(page);
                }
                Err(e) => failures.push(e),
            }
        }
        if !ring.covered_by(&answered, kv.config.replication_factor) {
            return Err(KvError::new(
                503,
                format!(
                    "incomplete export: {} of {} nodes did not answer and some keys have no other copy ({}); try again when they are back",
                    failures.len(),
                    nodes.len(),
                    failures.join("; ")
                ),
            ));
        }
        merge_pages(pages, after, max_bytes)
    }

    /// Store exported entries on their owners (each key's first `replication_factor` nodes on
    /// the ring) with `Replicate`, as handoff does: each owner keeps an entry only if it is
    /// newer than its copy. One outcome per entry, in order. Entries must be checked first
    /// (key rules, plausible versions): an owner drops implausible ones without saying so.
    pub async fn import(&self, entries: Vec<(String, Entry)>) -> Vec<Imported> {
        let kv = &self.0;
        let ring = kv.ring_now();
        if ring.is_empty() {
            return vec![Imported::Failed("no node can store keys yet".into()); entries.len()];
        }
        let owners: Vec<Vec<NodeUuid>> = entries
            .iter()
            .map(|(k, _)| ring.owners(k, kv.config.replication_factor))
            .collect();
        let mut per_node: BTreeMap<NodeUuid, Vec<usize>> = BTreeMap::new();
        for (i, os) in owners.iter().enumerate() {
            for o in os {
                per_node.entry(*o).or_default().push(i);
            }
        }
        let entries = Arc::new(entries);
        let sends = per_node.into_iter().map(|(node, indexes)| {
            let (me, entries) = (kv.clone(), entries.clone());
            async move {
                let mut answers: Vec<(usize, BatchAnswer)> = Vec::with_capacity(indexes.len());
                for batch in batches(&entries, &indexes) {
                    let items: Vec<(String, Entry)> =
                        batch.iter().map(|i| entries[*i].clone()).collect();
                    let answer = me.store_on(node, items).await;
                    answers.extend(batch.iter().map(|i| (*i, answer.clone())));
                }
                answers
            }
        });
        // Per entry: copies durable, the newest version an owner reported, the last problem.
        let mut durable = vec![0usize; entries.len()];
        let mut newer = vec![0u64; entries.len()];
        let mut problems = vec![String::new(); entries.len()];
        for answers in futures_join_all(sends).await {
            for (i, answer) in answers {
                let (key, entry) = &entries[i];
                match answer {
                    Ok(held) => match held.get(key) {
                        Some(h) if *h > entry.index => newer[i] = newer[i].max(*h),
                        _ => durable[i] += 1,
                    },
                    Err(e) => problems[i] = e,
                }
            }
        }
        (0..entries.len())
            .map(|i| {
                let needed = kv.config.write_acks.needed(owners[i].len());
                if newer[i] > 0 {
                    Imported::Older
                } else if durable[i] >= needed {
                    Imported::Stored
                } else {
                    Imported::Failed(format!(
                        "{} of the {needed} owners needed stored it ({}); import the file again later",
                        durable[i], problems[i]
                    ))
                }
            })
            .collect()
    }
}

impl super::Kv {
    /// Make `entries` durable on `node` (this one or another): the keys it holds newer.
    async fn store_on(
        self: &Arc<Self>,
        node: NodeUuid,
        entries: Vec<(String, Entry)>,
    ) -> BatchAnswer {
        if node == self.me {
            let merged = self.merge_local(&entries).map_err(|e| e.message)?;
            self.durable().await.map_err(|e| e.message)?;
            self.counters
                .received
                .fetch_add(merged.taken as u64, std::sync::atomic::Ordering::Relaxed);
            return Ok(merged
                .superseded
                .into_iter()
                .map(|(k, e)| (k, e.index))
                .collect());
        }
        let addr = self
            .addr_of(&node)
            .ok_or_else(|| format!("{node}: no address"))?;
        match self
            .peers
            .request(addr, &Request::Replicate { entries }, PEER_TIMEOUT * 2)
            .await
        {
            Ok(Response::Stored) => Ok(HashMap::new()),
            Ok(Response::Superseded(held)) => Ok(held.into_iter().collect()),
            Ok(Response::Refused { message, .. }) => Err(format!("{addr}: {message}")),
            Ok(other) => Err(format!("{addr}: unexpected {other:?}")),
            Err(e) => Err(format!("{addr}: {e}")),
        }
    }
}

fn local_page(page: Response) -> NodePage {
    match page {
        Response::Entries { entries, more } => NodePage {
            last_if_more: if more {
                entries.last().map(|(k, _)| k.clone())
            } else {
                None
            },
            entries,
        },
        _ => NodePage {
            entries: Vec::new(),
            last_if_more: None,
        },
    }
}

/// Merge the nodes' pages into one: the newest copy of each key up to the smallest last key
/// of the nodes that have more (all of them when none has), then cut at `max_bytes`. Answers
/// the entries and where the next page starts.
fn merge_pages(pages: Vec<NodePage>, after: &str, max_bytes: usize) -> Result<ExportPage, KvError> {
    let bound: Option<String> = pages.iter().filter_map(|p| p.last_if_more.clone()).min();
    if let Some(b) = &bound
        && b.as_str() <= after
    {
        return Err(KvError::new(500, "a node's page does not advance"));
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
fn batches(entries: &[(String, Entry)], indexes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for i in indexes {
        let (k, e) = &entries[*i];
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, value: &str) -> Entry {
        Entry {
            value: value.as_bytes().to_vec(),
            index,
            create_index: 1,
            deleted: false,
            expires_ms: 0,
        }
    }

    fn page(keys: &[(&str, u64)], more: bool) -> NodePage {
        let entries: Vec<(String, Entry)> = keys
            .iter()
            .map(|(k, i)| ((*k).to_owned(), entry(*i, k)))
            .collect();
        NodePage {
            last_if_more: if more {
                entries.last().map(|(k, _)| k.clone())
            } else {
                None
            },
            entries,
        }
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
        // The first node's page ends at `e`, the second's at `d`: `e` waits for the next page.
        assert_eq!(got, [("a", 2), ("b", 1), ("c", 5), ("d", 1)]);
        assert_eq!(next.as_deref(), Some("d"));
    }

    #[test]
    fn the_last_page_has_no_next_and_a_cut_page_continues_after_its_last_key() {
        let pages = vec![page(&[("x", 1), ("y", 1), ("z", 1)], false)];
        let (entries, next) = merge_pages(pages, "w", 1 << 20).expect("merge");
        assert_eq!(entries.len(), 3);
        assert_eq!(next, None);
        let pages = vec![page(&[("x", 1), ("y", 1), ("z", 1)], false)];
        let (entries, next) = merge_pages(pages, "", 70).expect("merge");
        assert_eq!(
            entries.len(),
            1,
            "at least one entry, then cut at max_bytes"
        );
        assert_eq!(next.as_deref(), Some("x"));
    }

    #[test]
    fn a_page_that_does_not_advance_is_an_error() {
        let pages = vec![page(&[("a", 1)], true)];
        assert!(merge_pages(pages, "a", 1 << 20).is_err());
    }

    #[test]
    fn batches_respect_count_and_bytes() {
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
}
