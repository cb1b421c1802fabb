//! Issue 22: the shape the house style asks for, checked where a test can check it. The protocol
//! cores (`crates/gossip`, `crates/kv`, `crates/raft`) do no IO: they depend — directly or through another crate
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
    for (core, known) in [
        ("gossip", "opsbro-types"),
        ("kv", "opsbro-types"),
        ("raft", "raft"),
    ] {
        let deps = reachable(core);
        assert!(
            deps.contains(known),
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
    for core in [
        "gossip",
        "kv",
        "raft",
        "checks",
        "metrics",
        "types",
        "transport",
    ] {
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

/// The top-level modules of a crate's `src/` (files and folders), and for each the modules
/// of the same crate it names (`crate::x`, `use crate::{x, y}`). The crate root (`lib.rs`:
/// the agent's composition root, the cores' list of re-exports) names every module and is
/// left out.
fn module_graph(krate: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let src = repo_path(&format!("crates/{krate}/src"));
    let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("src").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let rel = path.strip_prefix(&src).expect("under src");
                let first = rel.components().next().expect("a component");
                let name = first.as_os_str().to_string_lossy();
                files.push((name.trim_end_matches(".rs").to_owned(), path));
            }
        }
    }
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).expect("read");
        // Code only: not comments, and not tests (they may reach anywhere).
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let idents: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().split("::").next().unwrap_or_default())
                    .collect(),
                None => vec![
                    rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or_default(),
                ],
            };
            for ident in idents.into_iter().filter(|s| !s.is_empty()) {
                if modules.contains(ident) && ident != module && ident != "lib" {
                    named.insert(ident.to_owned());
                }
            }
        }
        if module != "lib" {
            graph.entry(module.clone()).or_default().extend(named);
        }
    }
    graph
}

#[test]
fn no_module_of_the_agent_or_kv_crates_reaches_back_to_itself() {
    for krate in ["agent", "kv", "gossip"] {
        let graph = module_graph(krate);
        assert!(
            graph.values().any(|named| !named.is_empty()),
            "{krate}: the scan found imports"
        );
        for start in graph.keys() {
            // Depth-first over what `start` names, looking for `start` again.
            let mut seen = BTreeSet::new();
            let mut stack: Vec<Vec<String>> = vec![vec![start.clone()]];
            while let Some(path) = stack.pop() {
                let last = path.last().expect("non-empty");
                for next in graph.get(last).into_iter().flatten() {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    assert!(
                        next != start,
                        "crates/{krate}: an import circle: {}",
                        longer.join(" -> ")
                    );
                    if seen.insert(next.clone()) {
                        stack.push(longer);
                    }
                }
            }
        }
    }
}
