//! Issue 21: the README's test command (`./test.sh`) installs what the tests need before any test
//! runs. This keeps its list (`.ci/install-deps.sh`) complete: every program a test starts must be
//! in it, or a fresh machine would fail where the developer's passed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use opsbro_tests::repo_path;

/// Programs every Debian machine has (Essential packages), or that the harness builds.
const ALWAYS_THERE: &[&str] = &["sh", "/bin/sh", "bash", "kill", "cat", "true", "false"];

/// Plugins a test names to see what happens when they are not there.
const MISSING_ON_PURPOSE: &[&str] = &["check_does_not_exist"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The string literal right after `marker` at each place it occurs.
fn literals_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// Programs the test sources start: `Command::new("x")`, programs run in a namespace
/// (`"netns", "exec", ns, "x"`), and the nagios plugins of their packs (`$nagiosplugins$/x`).
fn programs_used() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&repo_path("tests"), &mut files);
    for krate in std::fs::read_dir(repo_path("crates"))
        .expect("crates")
        .flatten()
    {
        rust_files(&krate.path().join("tests"), &mut files);
    }
    let mut used = BTreeSet::new();
    // This file names the patterns it looks for.
    files.retain(|f| !f.ends_with("tests/deps.rs"));
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for name in literals_after(&text, "Command::new(\"") {
            used.insert(name.to_owned());
        }
        for (i, _) in text.match_indices("\"exec\",") {
            // `"netns", "exec", &ns, "python3", ...`: the first literal after the namespace
            // (not `"executors", "exec", "web", ...`: opsbro's own arguments).
            if !text[..i].trim_end().ends_with("\"netns\",") {
                continue;
            }
            let rest = &text[i..text.len().min(i + 200)];
            let rest = &rest[..rest.find("])").unwrap_or(rest.len())];
            if let Some(name) = rest
                .split(',')
                .skip(2)
                .map(str::trim)
                .find_map(|a| a.strip_prefix('"').and_then(|a| a.strip_suffix('"')))
            {
                used.insert(name.to_owned());
            }
        }
        for (i, _) in text.match_indices("$nagiosplugins$/") {
            let rest = &text[i + "$nagiosplugins$/".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let plugin = &rest[..end];
            if !MISSING_ON_PURPOSE.contains(&plugin) {
                used.insert(format!("/usr/lib/nagios/plugins/{plugin}"));
            }
        }
    }
    used
}

/// The keys of `NEEDED` in the dependency step.
fn programs_installed() -> BTreeSet<String> {
    let script = std::fs::read_to_string(repo_path(".ci/install-deps.sh")).expect("install-deps");
    let start = script.find("declare -A NEEDED=(").expect("NEEDED list");
    let end = start + script[start..].find("\n)").expect("end of NEEDED");
    script[start..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix('['))
        .filter_map(|l| l.split_once(']').map(|(k, _)| k.to_owned()))
        .collect()
}

#[test]
fn every_program_a_test_starts_is_installed_by_the_test_command() {
    let installed = programs_installed();
    let used = programs_used();
    assert!(
        used.contains("dig") && used.contains("ip"),
        "the scan finds the programs the tests start: {used:?}"
    );
    let missing: Vec<&String> = used
        .iter()
        .filter(|p| !ALWAYS_THERE.contains(&p.as_str()) && !installed.contains(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "tests start {missing:?} but .ci/install-deps.sh (run by ./test.sh) does not install them: \
         add each to its NEEDED list with its Debian package"
    );
}

#[test]
fn the_test_command_and_ci_run_the_dependency_step_first() {
    let test_sh = std::fs::read_to_string(repo_path("test.sh")).expect("test.sh");
    let step = test_sh
        .find(".ci/install-deps.sh")
        .expect("test.sh runs the step");
    let tests = test_sh
        .find("cargo test --workspace")
        .expect("then the tests");
    assert!(step < tests, "{test_sh}");
    let ci = std::fs::read_to_string(repo_path(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "./test.sh"),
        ".ci/run calls the README's test command: {ci}"
    );
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README");
    assert!(readme.contains("\n./test.sh "), "README names ./test.sh");
}
