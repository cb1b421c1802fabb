//! Issue 24: compliance with the real binary on the real host — file rights on real files,
//! a package installed by the real apt (and removed after), a user made by the real
//! `useradd` (and removed), a download from an HTTP server the test runs (a good and a bad
//! hash), an apt repository file; audit never changes the host, enforcing fixes it; states,
//! history, `launch`, `wait-compliant` exit codes, a handler told of the change, the state in
//! expressions, and a pack in the original's format (`environments` with `if:` on the
//! distribution).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use opsbro_tests::{Agent, AgentOptions, DEADLINE, stderr, stdout, wait_for};
use serde_json::Value;

fn write(dir: &Path, name: &str, yaml: &str) {
    std::fs::write(dir.join(name), yaml).expect("write object");
}

fn object(agent: &Agent, name: &str) -> Option<Value> {
    let out = agent.cli(["compliance", "state", "--json"]);
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    list.into_iter()
        .find(|o| o["name"] == name || o["display_name"] == name)
}

fn wait_state(agent: &Agent, name: &str, want: &str) -> Value {
    wait_for(&format!("{name} to be {want}"), DEADLINE, || {
        object(agent, name).filter(|o| o["state"] == want)
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}\nlog:\n{}", object(agent, name), agent.log()))
}

fn infos(o: &Value) -> String {
    o["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["infos"].as_array().cloned().unwrap_or_default())
        .map(|i| {
            format!(
                "{}: {}",
                i["state"].as_str().unwrap_or(""),
                i["text"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn reload(agent: &Agent) {
    let out = agent.cli(["agent", "reload"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn file_rights_audit_reports_and_enforcing_fixes_and_a_handler_hears_it() {
    let dir = tempfile::tempdir().expect("dir");
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).expect("mkdir");
    let target = dir.path().join("app.conf");
    std::fs::write(&target, "x").expect("file");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let heard = dir.path().join("heard");
    write(
        &objects,
        "rights.yml",
        &format!(
            "compliance:\n  name: app conf rights\n  verify_if: \"True\"\n  mode: audit\n  interval: 1h\n  rule:\n    name: app-conf\n    type: file-rights\n    parameters: {{file: {}, owner: root, group: root, permissions: 644}}\n",
            target.display()
        ),
    );
    write(
        &objects,
        "never.yml",
        "compliance:\n  name: never here\n  verify_if: \"is_in_group('no-such-group')\"\n  rule: {type: file-rights, parameters: {file: /etc/passwd, permissions: 600}}\n",
    );
    // A broken object is a diagnostic; the others run.
    write(
        &objects,
        "broken.yml",
        "compliance:\n  verify_if: \"True\"\n  rule: {type: file-copy}\n",
    );
    write(
        &objects,
        "tell.yml",
        &format!(
            "handler:\n  type: command\n  events: [compliance]\n  command: \"echo {{{{compliance.name}}}} {{{{old_state}}}} {{{{state}}}} >> {}\"\n",
            heard.display()
        ),
    );
    let agent = Agent::start_with(
        AgentOptions::default().config(&format!("objects_dirs: [{}]\n", objects.display())),
    )
    .expect("agent");
    let log = agent.log();
    wait_for("the broken object to be reported", DEADLINE, || {
        agent
            .log()
            .contains("unknown rule type `file-copy`")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {log}"));

    // Audit: ERROR with what differs; the file is untouched.
    let o = wait_state(&agent, "app conf rights", "ERROR");
    assert_eq!(o["mode"], "audit");
    assert!(infos(&o).contains("permissions"), "{}", infos(&o));
    assert_eq!(mode(&target), 0o600, "audit changed the file");
    // NOT-ELIGIBLE where verify_if is false.
    wait_state(&agent, "never here", "NOT-ELIGIBLE");
    // wait-compliant: exit 2 while it is not.
    let out = agent.cli([
        "compliance",
        "wait-compliant",
        "app conf rights",
        "--timeout",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("still ERROR"), "{}", stderr(&out));
    // The rule's state in expressions.
    let out = agent.cli([
        "evaluator",
        "eval",
        "compliance_get_state_of_rule('app-conf')",
    ]);
    assert!(stdout(&out).contains("ERROR"), "{}", stdout(&out));

    // Enforcing: fixed, then compliant; the handler hears the change.
    write(
        &objects,
        "rights.yml",
        &format!(
            "compliance:\n  name: app conf rights\n  verify_if: \"True\"\n  mode: enforcing\n  interval: 1h\n  rule:\n    name: app-conf\n    type: file-rights\n    parameters: {{file: {}, owner: root, group: root, permissions: 644}}\n",
            target.display()
        ),
    );
    // A reload keeps the last good objects while one is broken: remove it first.
    std::fs::remove_file(objects.join("broken.yml")).expect("rm");
    reload(&agent);
    // A changed object runs at once.
    let o = wait_state(&agent, "app conf rights", "FIXED");
    assert!(infos(&o).contains("Fixing permissions"), "{}", infos(&o));
    assert_eq!(mode(&target), 0o644, "enforcing fixed the mode");
    let out = agent.cli([
        "compliance",
        "wait-compliant",
        "app conf rights",
        "--timeout",
        "10",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = agent.cli(["compliance", "launch", "app conf rights", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["state"], "COMPLIANT", "{v}");
    let told = wait_for("the handler", DEADLINE, || {
        std::fs::read_to_string(&heard)
            .ok()
            .filter(|t| t.contains("FIXED"))
    })
    .expect("handler ran");
    assert!(told.contains("local/rights ERROR FIXED"), "{told}");
    // History and the summary in agent info.
    let out = agent.cli(["compliance", "history", "--json"]);
    let h: Vec<Value> = serde_json::from_slice(&out.stdout).expect("history");
    assert!(
        h.iter()
            .any(|e| e["name"] == "local/rights" && e["state"] == "FIXED"),
        "{h:?}"
    );
    let info: Value =
        serde_json::from_slice(&agent.cli(["agent", "info", "--json"]).stdout).expect("info");
    assert!(
        info["compliance"]["COMPLIANT"].as_u64().unwrap_or(0) >= 1,
        "{info}"
    );
    // The state survives a restart of the agent (shown before the next run).
    let saved = std::fs::read_to_string(agent.data_dir.join("compliance-states.json"))
        .expect("saved states");
    assert!(saved.contains("COMPLIANT"), "{saved}");
}

/// Removes a package at the end of the test, whatever happens.
struct Uninstall(&'static str);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["remove", "-y", "-q", self.0])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

#[test]
fn a_pack_in_the_originals_format_installs_a_package_with_the_real_apt() {
    const PACKAGE: &str = "hello";
    let _cleanup = Uninstall(PACKAGE);
    if installed(PACKAGE) {
        drop(Uninstall(PACKAGE));
    }
    assert!(
        !installed(PACKAGE),
        "{PACKAGE} must not be installed before the test"
    );
    let dir = tempfile::tempdir().expect("dir");
    let pack = dir.path().join("packs/tools/compliance");
    std::fs::create_dir_all(&pack).expect("mkdir");
    std::fs::write(dir.path().join("packs/tools/package.yml"), "name: tools\n").expect("pkg");
    let object = |mode: &str| {
        format!(
            "compliance:\n   name: Install hello\n   verify_if: \"is_in_group('linux')\"\n   mode: {mode}\n   interval: 1h\n   rule:\n      type: package-install\n      variables:\n         is_debian: \"{{{{collector.system.os.linux.distribution}}}} == 'debian'\"\n         is_centos: \"{{{{collector.system.os.linux.distribution}}}} == 'centos'\"\n      environments:\n         - name: centos\n           if: \"{{{{variables.is_centos}}}}\"\n           parameters:\n              packages: [hello-centos]\n         - name: debian\n           if: \"{{{{variables.is_debian}}}}\"\n           parameters:\n              packages:\n                 - {PACKAGE}\n           post_commands:\n              - dpkg -s {PACKAGE}\n"
        )
    };
    std::fs::write(pack.join("hello.yml"), object("audit")).expect("object");
    let agent = Agent::start_with(AgentOptions::default().config(&format!(
        "packs_dirs: [{}]\n",
        dir.path().join("packs").display()
    )))
    .expect("agent");
    // Audit: the package is missing → ERROR, and nothing is installed.
    let o = wait_state(&agent, "tools/hello", "ERROR");
    assert_eq!(o["rules"][0]["environment"], "debian", "{o}");
    assert!(infos(&o).contains(PACKAGE), "{}", infos(&o));
    assert!(!installed(PACKAGE), "audit installed the package");
    // Enforcing: installed by apt-get → FIXED (post command ran), then COMPLIANT.
    std::fs::write(pack.join("hello.yml"), object("enforcing")).expect("object");
    reload(&agent);
    let v = wait_state(&agent, "tools/hello", "FIXED");
    assert!(installed(PACKAGE));
    assert!(infos(&v).contains("post command"), "{}", infos(&v));
    let out = agent.cli(["compliance", "launch", "tools/hello", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["state"], "COMPLIANT", "{v:#}");
}

/// Removes a user at the end of the test, whatever happens.
struct DelUser(String);

impl Drop for DelUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

/// An HTTP server on a free loopback port that answers every request with `body`.
fn http_file(body: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            });
        }
    });
    port
}

#[test]
fn users_downloads_and_repositories_in_audit_and_enforcing_mode() {
    let user = format!("opsbro-t{}", std::process::id() % 100_000);
    let _user_cleanup = DelUser(user.clone());
    let repo_name = format!("opsbro-test-{}", std::process::id());
    let repo_file = std::path::PathBuf::from(format!("/etc/apt/sources.list.d/{repo_name}.list"));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _repo_cleanup = Rm(repo_file.clone());
    let port = http_file(b"hello from the test server\n");
    let dir = tempfile::tempdir().expect("dir");
    let objects = dir.path().join("objects");
    std::fs::create_dir_all(&objects).expect("mkdir");
    let good_dest = dir.path().join("good");
    let bad_dest = dir.path().join("bad");
    // sha256 of the body above, by the system's sha256sum.
    let body_sha = {
        let out = Command::new("sh")
            .args(["-c", "printf 'hello from the test server\\n' | sha256sum"])
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("a hash")
            .to_owned()
    };
    let objects_yaml = |mode: &str| {
        format!(
            "compliance:\n  name: user\n  verify_if: \"True\"\n  mode: {mode}\n  interval: 1h\n  rule:\n    type: system-user\n    parameters: {{name: {user}, shell: /bin/sh, display_name: opsbro test}}\n",
        )
    };
    write(&objects, "user.yml", &objects_yaml("audit"));
    write(
        &objects,
        "download.yml",
        &format!(
            "compliance:\n  name: download\n  verify_if: \"True\"\n  mode: enforcing\n  interval: 1h\n  rules:\n    - name: good-file\n      type: get-url\n      parameters: {{url: 'http://127.0.0.1:{port}/data.txt', dest_directory: {}, sha256: {body_sha}}}\n",
            good_dest.display()
        ),
    );
    write(
        &objects,
        "bad-download.yml",
        &format!(
            "compliance:\n  name: bad download\n  verify_if: \"True\"\n  mode: enforcing\n  interval: 1h\n  rules:\n    - name: bad-file\n      type: get-url\n      parameters: {{url: 'http://127.0.0.1:{port}/data.txt', dest_directory: {}, sha256: {}}}\n    - name: after-bad\n      type: file-rights\n      parameters: {{file: /etc/passwd, permissions: 644}}\n",
            bad_dest.display(),
            "0".repeat(64)
        ),
    );
    write(
        &objects,
        "repo.yml",
        &format!(
            "compliance:\n  name: repo\n  verify_if: \"True\"\n  mode: audit\n  interval: 1h\n  rule:\n    type: repository\n    environments:\n      - name: debian\n        if: \"{{{{collector.system.os.linux.distribution}}}} == 'debian'\"\n        parameters: {{name: {repo_name}, url: 'file:/nonexistent ./'}}\n",
        ),
    );
    let agent = Agent::start_with(
        AgentOptions::default().config(&format!("objects_dirs: [{}]\n", objects.display())),
    )
    .expect("agent");
    // get-url: the good hash → FIXED with the file in place; the bad one → ERROR, nothing left
    // behind, and the next rule UNKNOWN.
    wait_state(&agent, "download", "FIXED");
    assert_eq!(
        std::fs::read_to_string(good_dest.join("data.txt")).expect("downloaded"),
        "hello from the test server\n"
    );
    let bad = wait_state(&agent, "bad download", "ERROR");
    assert_eq!(bad["rules"][1]["state"], "UNKNOWN", "{bad:#}");
    let left: Vec<_> = std::fs::read_dir(&bad_dest)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a bad download left {left:?}");
    // system-user: audit says it is missing (and creates nothing); enforcing creates it.
    let o = wait_state(&agent, "user", "ERROR");
    assert!(
        !Command::new("id")
            .arg(&user)
            .output()
            .expect("id")
            .status
            .success(),
        "audit created the user: {}",
        infos(&o)
    );
    write(&objects, "user.yml", &objects_yaml("enforcing"));
    reload(&agent);
    wait_state(&agent, "user", "FIXED");
    let out = agent.cli(["compliance", "launch", "user", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    assert_eq!(v["state"], "COMPLIANT", "{v:#}");
    let passwd = std::fs::read_to_string("/etc/passwd").expect("passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .expect("the user exists");
    assert!(line.ends_with(":/bin/sh"), "{line}");
    assert!(line.contains(":opsbro test:"), "{line}");
    // repository: audit reports the missing file and writes nothing.
    let o = wait_state(&agent, "repo", "ERROR");
    assert!(
        !repo_file.exists(),
        "audit wrote {}: {}",
        repo_file.display(),
        infos(&o)
    );
}
