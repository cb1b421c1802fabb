//! The binary's own command-line surface. (Having an integration test here also makes
//! `cargo test --workspace` build `target/<profile>/opsbro`, which the workspace tests in `tests/`
//! run as a real process.)

use assert_cmd::Command;

#[test]
fn help_lists_the_command_groups_and_version_matches() {
    let out = Command::cargo_bin("opsbro")
        .expect("bin")
        .arg("--help")
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("agent"), "{text}");
    assert!(text.contains("completions"), "{text}");
    let out = Command::cargo_bin("opsbro")
        .expect("bin")
        .arg("--version")
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("opsbro {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn agent_start_help_documents_every_flag_and_its_variable() {
    let out = Command::cargo_bin("opsbro")
        .expect("bin")
        .args(["agent", "start", "--help"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--data-dir",
        "--bind",
        "--port",
        "--api-bind",
        "--api-port",
        "--node-name",
        "--seed",
        "--log-level",
    ] {
        assert!(text.contains(flag), "missing {flag}: {text}");
    }
    assert!(text.contains("OPSBRO_DATA_DIR"), "{text}");
}
