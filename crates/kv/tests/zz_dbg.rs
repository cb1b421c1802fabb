#![allow(missing_docs)]
use opsbro_kv::sim::{workload, Action};
#[test]
fn dbg() {
    let s = workload::random(8534);
    println!("nodes {} rf {} acks {:?} skew {}", s.config.nodes, s.config.core.replication_factor, s.config.core.write_acks, s.config.max_skew_ms);
    let mut a = s.actions.clone(); a.sort_by_key(|(t, _)| *t);
    for (t, x) in a { match x { Action::Get{..} | Action::Put{..} | Action::Delete{..} | Action::Cas{..} | Action::List{..} => {}, _ => println!("{t} {x:?}") } }
    let cfg = s.config.clone();
    println!("owners k/4: {:?}", cfg.owners("k/4"));
}
