//! Embeds the repository's `packs/` folder (YAML objects and pack templates) and its
//! `templates/` folder (default notification templates) into the crate, so that
//! `opsbro agent start` has its default packs from any directory with no install step.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Pack files (relative to packs/) that packs use: YAML objects anywhere, and anything under a
/// `templates/` folder.
fn wanted(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "yml" || e == "yaml")
        || p.components().any(|c| c.as_os_str() == "templates")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn embed(code: &mut String, name: &str, doc: &str, root: &Path, only: fn(&Path) -> bool) {
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    walk(root, &mut files);
    files.retain(|f| only(f.strip_prefix(root).unwrap_or(f)));
    let _ = writeln!(code, "/// {doc}\npub static {name}: &[(&str, &str)] = &[");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f
            .strip_prefix(root)
            .expect("under packs/")
            .to_string_lossy()
            .replace('\\', "/");
        let abs = f.canonicalize().expect("canonical path");
        let _ = writeln!(
            code,
            "    ({rel:?}, include_str!({:?})),",
            abs.display().to_string()
        );
    }
    code.push_str("];\n");
}

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut code = String::new();
    embed(
        &mut code,
        "EMBEDDED",
        "(path relative to packs/, contents) of every embedded pack file.",
        &manifest.join("../../packs"),
        wanted,
    );
    embed(
        &mut code,
        "EMBEDDED_TEMPLATES",
        "(path relative to templates/, contents) of the default notification templates.",
        &manifest.join("../../templates"),
        |p| p.extension().is_some_and(|e| e != "md"),
    );
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded.rs");
    std::fs::write(out, code).expect("write embedded.rs");
}
