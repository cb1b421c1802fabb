//! Issue 32: the Debian package installs, runs, upgrades and purges like a fleet agent's, and the
//! RPM carries the same files.
//!
//! The package is built by `packaging/build.sh` from the debug binary the other tests use (a
//! release build would add minutes to CI): the script stages and strips it exactly as it does a
//! release binary, so only the code generation differs. The test works on the real system paths
//! (/usr/bin/opsbro, /etc/opsbro, /var/lib/opsbro...), which no other test uses; the installed
//! agent gets free ports through the administrator's edits of its configuration, and a guard
//! stops it and purges the package even when an assertion fails.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use opsbro_tests::{opsbro_bin, repo_path, stdout, wait_for};

/// The binary the package installs (a variable: it is the one this test builds, not a tool).
const INSTALLED_BIN: &str = "/usr/bin/opsbro";
const PIDFILE: &str = "/var/run/opsbro.pid";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    out
}

/// `dpkg ARGS`, waiting while another dpkg/apt holds the lock (other work on this machine).
fn dpkg(args: &[&str], env: &[(&str, &str)]) -> Output {
    wait_for("the dpkg lock", Duration::from_secs(300), || {
        let out = Command::new("dpkg")
            .args(args)
            .envs(env.iter().copied())
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("run dpkg");
        let busy = !out.status.success() && text(&out).contains("lock");
        if busy {
            std::thread::sleep(Duration::from_millis(500));
        }
        (!busy).then_some(out)
    })
    .expect("dpkg lock")
}

/// Builds the packages; returns (.deb, .rpm).
fn build(out_dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let out = Command::new("bash")
        .arg(repo_path("packaging/build.sh"))
        .arg("--binary")
        .arg(opsbro_bin())
        .arg("--out")
        .arg(out_dir)
        .arg("--fast")
        .args(extra)
        .output()
        .expect("run packaging/build.sh");
    assert!(
        out.status.success(),
        "packaging/build.sh failed (cargo-deb, cargo-generate-rpm: `bash .ci/install-deps.sh`):\n{}",
        text(&out)
    );
    let lines: Vec<PathBuf> = stdout(&out).lines().map(PathBuf::from).collect();
    let deb = lines
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let rpm = lines
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "rpm"));
    match (deb, rpm) {
        (Some(d), Some(r)) if d.exists() && r.exists() => (d.clone(), r.clone()),
        _ => panic!("build.sh named no packages:\n{}", text(&out)),
    }
}

/// Regular files and symlinks a .deb holds, as absolute paths with their mode bits.
fn deb_files(deb: &Path) -> Vec<(String, u32)> {
    let out = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    stdout(&out)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let mode = l
                .chars()
                .skip(1)
                .take(9)
                .enumerate()
                .fold(0, |m, (i, c)| m | (u32::from(c != '-') << (8 - i)));
            let path = l.split_whitespace().nth(5).expect("path column");
            (path.trim_start_matches('.').to_owned(), mode)
        })
        .collect()
}

/// The pid of the agent started by the init script, while it runs.
fn agent_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// A local policy that forbids invoke-rc.d actions (Docker images ship one that exits 101).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// Where the test keeps the machine's policy while it exercises the maintainer scripts.
const POLICY_RC_D_ASIDE: &str = "/usr/sbin/policy-rc.d.opsbro-test";

/// Undoes everything the test did to the system, also when an assertion failed half-way.
struct SystemGuard;

impl SystemGuard {
    /// Takes the machine's policy-rc.d aside: with it, invoke-rc.d declines every start, stop and
    /// restart (as the administrator asked), and the maintainer scripts could not be tested.
    fn new() -> SystemGuard {
        if Path::new(POLICY_RC_D).exists() {
            std::fs::rename(POLICY_RC_D, POLICY_RC_D_ASIDE).expect("take policy-rc.d aside");
        }
        SystemGuard
    }
}

impl Drop for SystemGuard {
    fn drop(&mut self) {
        if Path::new(POLICY_RC_D_ASIDE).exists() {
            let _ = std::fs::rename(POLICY_RC_D_ASIDE, POLICY_RC_D);
        }
        if let Some(pid) = agent_pid() {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if exe.to_string_lossy().starts_with(INSTALLED_BIN) {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
        let _ = dpkg(&["--purge", "opsbro"], &[]);
        for p in ["/var/lib/opsbro", "/var/log/opsbro", "/etc/opsbro"] {
            let _ = std::fs::remove_dir_all(p);
        }
        let _ = std::fs::remove_file(PIDFILE);
    }
}

fn mode_of(path: &str) -> (u32, u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid())
}

fn adm_gid() -> u32 {
    let group = std::fs::read_to_string("/etc/group").expect("/etc/group");
    group
        .lines()
        .find_map(|l| l.strip_prefix("adm:x:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|gid| gid.parse().ok())
        .expect("group adm")
}

/// Everything of ours that may exist outside the package's own files.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    for p in [
        INSTALLED_BIN,
        "/etc/opsbro",
        "/etc/default/opsbro",
        "/etc/init.d/opsbro",
        "/var/lib/opsbro",
        "/var/log/opsbro",
        PIDFILE,
        "/usr/lib/systemd/system/opsbro.service",
        "/etc/systemd/system/multi-user.target.wants/opsbro.service",
        "/var/lib/systemd/deb-systemd-helper-masked/opsbro.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/opsbro.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/opsbro.service",
        "/usr/share/man/man1/opsbro.1.gz",
    ] {
        if std::fs::symlink_metadata(p).is_ok() {
            found.push(p.to_owned());
        }
    }
    for rc in [
        "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d",
    ] {
        for e in std::fs::read_dir(format!("/etc/{rc}"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with("opsbro") {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

#[test]
fn deb_installs_runs_upgrades_keeping_the_edited_config_and_purges() {
    assert!(
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
        "this test installs a package: run it as root"
    );
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "opsbro"])
        .output()
        .expect("dpkg-query");
    assert!(
        !installed.status.success() || stdout(&installed).contains("not-installed"),
        "an opsbro package is installed on this machine: `dpkg --purge opsbro` first"
    );
    assert!(
        leftovers().is_empty(),
        "opsbro files are on this machine (remove them first): {:?}",
        leftovers()
    );

    let tmp = tempfile::tempdir().expect("tmp");
    let (deb, rpm) = build(&tmp.path().join("v1"), &[]);

    // The RPM carries the same files, and the same ones as configuration.
    let files = deb_files(&deb);
    let deb_paths: BTreeSet<String> = files.iter().map(|(p, _)| p.clone()).collect();
    let rpm_list = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    let rpm_paths: BTreeSet<String> = stdout(&rpm_list).lines().map(str::to_owned).collect();
    assert_eq!(deb_paths, rpm_paths, "rpm -qlp lists the .deb's files");
    let deb_conffiles = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    let rpm_config = run(Command::new("rpm").arg("-qcp").arg(&rpm));
    let deb_conf: BTreeSet<String> = stdout(&deb_conffiles).lines().map(str::to_owned).collect();
    let rpm_conf: BTreeSet<String> = stdout(&rpm_config).lines().map(str::to_owned).collect();
    let expected_conf: BTreeSet<String> = [
        "/etc/opsbro/agent.yml",
        "/etc/default/opsbro",
        "/etc/init.d/opsbro",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(deb_conf, expected_conf, "the .deb's conffiles");
    assert_eq!(rpm_conf, expected_conf, "the .rpm's %config files");
    let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    for phase in ["postinstall", "preuninstall", "postuninstall"] {
        assert!(
            stdout(&scripts).contains(phase),
            "rpm {phase} script: {}",
            stdout(&scripts)
        );
    }

    // What the package holds, with its modes: the binary, configuration, both init systems,
    // documentation, man pages generated from the CLI and the three shells' completions.
    let expected_modes: &[(&str, u32)] = &[
        ("/usr/bin/opsbro", 0o755),
        ("/etc/opsbro/agent.yml", 0o644),
        ("/etc/default/opsbro", 0o644),
        ("/etc/init.d/opsbro", 0o755),
        ("/usr/lib/systemd/system/opsbro.service", 0o644),
        ("/usr/share/bash-completion/completions/opsbro", 0o644),
        ("/usr/share/zsh/vendor-completions/_opsbro", 0o644),
        ("/usr/share/fish/vendor_completions.d/opsbro.fish", 0o644),
        ("/usr/share/doc/opsbro/copyright", 0o644),
        ("/usr/share/doc/opsbro/README.md", 0o644),
        ("/usr/share/man/man1/opsbro.1.gz", 0o644),
        ("/usr/share/man/man1/opsbro-agent.1.gz", 0o644),
        ("/usr/share/man/man1/opsbro-agent-start.1.gz", 0o644),
    ];
    for (path, mode) in expected_modes {
        assert!(
            files.iter().any(|(p, m)| p == path && m == mode),
            "{path} with mode {mode:o} in the package: {files:?}"
        );
    }
    let unexpected: Vec<&(String, u32)> = files
        .iter()
        .filter(|(p, m)| {
            let listed = expected_modes.iter().any(|(e, _)| e == p);
            let man_page =
                p.starts_with("/usr/share/man/man1/opsbro-") && p.ends_with(".1.gz") && *m == 0o644;
            !(listed || man_page)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "files nobody expects: {unexpected:?}"
    );

    // Install. From here on the guard undoes it all whatever happens.
    let _guard = SystemGuard::new();
    let out = dpkg(&["-i", &deb.display().to_string()], &[]);
    assert!(out.status.success(), "dpkg -i:\n{}", text(&out));
    for (path, mode) in &files {
        assert_eq!(mode_of(path), (*mode, 0, 0), "{path}: mode, owner, group");
    }
    assert_eq!(
        mode_of("/var/lib/opsbro"),
        (0o700, 0, 0),
        "state: root only"
    );
    assert_eq!(
        mode_of("/var/log/opsbro"),
        (0o750, 0, adm_gid()),
        "logs: root, group adm"
    );
    // Enabled at boot for both init systems, started by neither.
    let wants = "/etc/systemd/system/multi-user.target.wants/opsbro.service";
    // deb-systemd-helper links to /lib/systemd/system, the same directory on a merged /usr.
    assert_eq!(
        std::fs::canonicalize(wants).expect("systemd unit enabled"),
        std::fs::canonicalize("/usr/lib/systemd/system/opsbro.service").expect("unit")
    );
    let rc2: Vec<String> = std::fs::read_dir("/etc/rc2.d")
        .expect("rc2.d")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('S') && n.ends_with("opsbro"))
        .collect();
    assert_eq!(rc2.len(), 1, "SysV start link in runlevel 2: {rc2:?}");
    assert!(agent_pid().is_none(), "not started on install");

    // The man pages render, the completions load.
    let man = run(Command::new("man")
        .arg("opsbro-agent")
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80"));
    let page = stdout(&man);
    assert!(
        page.contains("NAME") && page.contains("opsbro-agent - Run, stop"),
        "{page}"
    );
    let man = run(Command::new("man")
        .arg("-l")
        .arg("/usr/share/man/man1/opsbro-agent-start.1.gz")
        .env("MANPAGER", "cat"));
    assert!(stdout(&man).contains("--data-dir"), "{}", stdout(&man));
    let complete = run(Command::new("bash")
        .arg("-c")
        .arg("source /usr/share/bash-completion/completions/opsbro && complete -p opsbro"));
    assert!(
        stdout(&complete).contains("opsbro"),
        "{}",
        stdout(&complete)
    );

    // The administrator's edits: free ports (the other tests' agents may be running) and a name.
    let default_config = std::fs::read_to_string("/etc/opsbro/agent.yml").expect("agent.yml");
    let (gossip, api, dns) = (free_port(), free_port(), free_port());
    let edited = format!(
        "{default_config}\n# site settings\nnode_name: pkg-test\nport: {gossip}\napi:\n  port: {api}\ndns:\n  port: {dns}\n"
    );
    std::fs::write("/etc/opsbro/agent.yml", &edited).expect("edit agent.yml");
    let defaults = std::fs::read_to_string("/etc/default/opsbro").expect("defaults");
    let edited_defaults = format!(
        "{defaults}\n# site settings\nOPSBRO_API=127.0.0.1:{api}\nOPSBRO_HOSTING_DRIVER=none\nOPSBRO_DISABLED_PACKS=*\n"
    );
    std::fs::write("/etc/default/opsbro", &edited_defaults).expect("edit defaults");

    // Started through the SysV script (systemd is not PID 1 here), as root.
    let start = run(Command::new("sh").args(["/etc/init.d/opsbro", "start"]));
    assert!(
        stdout(&start).contains("Starting opsbro"),
        "{}",
        text(&start)
    );
    let pid = agent_pid().expect("running after start");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        Path::new(INSTALLED_BIN)
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t0\t")),
        "the agent runs as root: {status}"
    );
    let info = run(Command::new(INSTALLED_BIN)
        .args(["agent", "info"])
        .env("OPSBRO_API", format!("127.0.0.1:{api}")));
    assert!(stdout(&info).contains("pkg-test"), "{}", stdout(&info));
    assert_eq!(mode_of("/var/lib/opsbro/api.token").0, 0o600);
    assert!(Path::new("/var/log/opsbro/opsbro.log").exists());

    // Upgrade to a package whose default agent.yml changed, as an unattended upgrade does.
    let changed_default = tmp.path().join("agent.yml");
    std::fs::write(
        &changed_default,
        format!("{default_config}\n# A new default in revision 2.\n#new_key: 1\n"),
    )
    .expect("changed default");
    let (deb2, _) = build(
        &tmp.path().join("v2"),
        &[
            "--revision",
            "2",
            "--config",
            &changed_default.display().to_string(),
        ],
    );
    let out = dpkg(&["-i", "--force-confold", &deb2.display().to_string()], &[]);
    assert!(out.status.success(), "upgrade:\n{}", text(&out));
    let version = run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "opsbro"]));
    assert_eq!(stdout(&version), "0.1.0-2");
    assert_eq!(
        std::fs::read_to_string("/etc/opsbro/agent.yml").expect("agent.yml"),
        edited,
        "the administrator's agent.yml is kept"
    );
    let dist = std::fs::read_to_string("/etc/opsbro/agent.yml.dpkg-dist").expect(".dpkg-dist");
    assert!(dist.contains("A new default in revision 2"), "{dist}");
    assert_eq!(
        std::fs::read_to_string("/etc/default/opsbro").expect("defaults"),
        edited_defaults,
        "unchanged in the package: kept without a .dpkg-dist"
    );
    assert!(!Path::new("/etc/default/opsbro.dpkg-dist").exists());
    assert_eq!(mode_of("/var/lib/opsbro/api.token").0, 0o600, "state kept");
    // A running agent is restarted on the new binary by postinst (`invoke-rc.d try-restart`),
    // with the kept configuration. invoke-rc.d acts only in a known runlevel: without an init
    // that records one (a container, as here and in CI) it declines, like for every Debian
    // service, and the agent keeps running until the administrator restarts it.
    let runlevel_known = Command::new("sh")
        .args(["-c", "[ -x /sbin/runlevel ] && /sbin/runlevel"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !runlevel_known {
        assert_eq!(agent_pid(), Some(pid), "left running by the upgrade");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
        assert!(
            exe.to_string_lossy().ends_with("(deleted)"),
            "still the old binary: {exe:?}"
        );
        run(Command::new("sh").args(["/etc/init.d/opsbro", "restart"]));
    }
    let new_pid = wait_for("the agent restarted", Duration::from_secs(60), || {
        agent_pid().filter(|p| *p != pid)
    })
    .expect("restarted");
    assert_eq!(
        std::fs::read_link(format!("/proc/{new_pid}/exe")).expect("exe"),
        Path::new(INSTALLED_BIN)
    );
    let info = run(Command::new(INSTALLED_BIN)
        .args(["agent", "info"])
        .env("OPSBRO_API", format!("127.0.0.1:{api}")));
    assert!(stdout(&info).contains("pkg-test"), "{}", stdout(&info));

    // Remove: the agent stops, configuration and data stay.
    let out = dpkg(&["--remove", "opsbro"], &[]);
    assert!(out.status.success(), "remove:\n{}", text(&out));
    wait_for("the agent to stop", Duration::from_secs(30), || {
        (!Path::new(&format!("/proc/{new_pid}")).exists()).then_some(())
    })
    .expect("stopped by prerm");
    assert!(!Path::new(INSTALLED_BIN).exists());
    assert_eq!(
        std::fs::read_to_string("/etc/opsbro/agent.yml").expect("agent.yml after remove"),
        edited
    );
    assert!(
        Path::new("/var/lib/opsbro/api.token").exists(),
        "data kept on remove"
    );

    // Purge: nothing is left.
    let out = dpkg(&["--purge", "opsbro"], &[]);
    assert!(out.status.success(), "purge:\n{}", text(&out));
    assert_eq!(leftovers(), Vec::<String>::new(), "left after purge");
    assert!(!Path::new("/etc/opsbro/agent.yml.dpkg-dist").exists());
}
