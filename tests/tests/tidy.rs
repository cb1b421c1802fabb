//! Issue 22: the shape the house style asks for, checked where a test can check it. The protocol
//! cores (`crates/gossip`, `crates/kv`) do no IO: they depend — directly or through another crate
//! of the workspace — on no async runtime, no storage engine and no socket library, so they can
//! run on virtual time in simulations. (The clock ban is each core's `clippy.toml`, enforced by clippy.)

use std::collections::BTreeSet;

use opsbro_tests::repo_path;

/// What an IO-free core must not reach.
const IO_CRATES: &[&str] = &[
    "tokio",
    "tokio-util",
    "tokio-stream",
    "sled",
    "mio",
    "socket2",
    "hyper",
    "axum",
    "reqwest",
    "async-std",
    "smol",
];

/// The normal (not dev, not build) dependencies named in a crate's Cargo.toml.
fn dependencies(krate: &str) -> Vec<String> {
    let manifest = repo_path(&format!("crates/{krate}/Cargo.toml"));
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.split(['.', '=', ' ']).next() {
            deps.push(name.trim().to_owned());
        }
    }
    deps
}

/// Every dependency a crate reaches through the workspace's own crates.
fn reachable(krate: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![krate.to_owned()];
    while let Some(k) = todo.pop() {
        for dep in dependencies(&k) {
            if let Some(inner) = dep.strip_prefix("opsbro-")
                && !seen.contains(&dep)
            {
                todo.push(inner.to_owned());
            }
            seen.insert(dep);
        }
    }
    seen
}

#[test]
fn the_gossip_and_kv_cores_reach_no_runtime_storage_or_socket_crate() {
    for core in ["gossip", "kv"] {
        let deps = reachable(core);
        assert!(
            deps.contains("opsbro-types"),
            "the scan reads the manifests: {deps:?}"
        );
        let io: Vec<&String> = deps
            .iter()
            .filter(|d| IO_CRATES.contains(&d.as_str()))
            .collect();
        assert!(
            io.is_empty(),
            "crates/{core} must stay IO-free (driven by the agent), but it depends on {io:?}"
        );
    }
}

#[test]
fn the_clock_is_banned_in_the_cores() {
    // clippy reads the clippy.toml next to a crate's manifest: the cores carry the ban, the
    // drivers (agent, CLI, adapters) own the clock.
    for core in ["gossip", "kv", "checks", "metrics", "types", "transport"] {
        let path = repo_path(&format!("crates/{core}/clippy.toml"));
        let clippy = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (the clock ban of this core)", path.display()));
        for banned in ["std::time::Instant::now", "std::time::SystemTime::now"] {
            assert!(clippy.contains(banned), "{} bans {banned}", path.display());
        }
        for e in std::fs::read_dir(repo_path(&format!("crates/{core}/src")))
            .expect("src")
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            assert!(
                !text.contains("disallowed_methods"),
                "{} opts out of the clock ban",
                e.path().display()
            );
        }
    }
}
