//! Issue 3: `init.d/opsbro` start/status/stop/restart drive the real binary, with pid and log
//! paths taken from a defaults file and the environment.

use std::process::Command;
use std::time::Duration;

use opsbro_tests::{opsbro_bin, repo_path, stdout, wait_for};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn init_script_start_status_restart_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let pidfile = tmp.path().join("run/opsbro.pid");
    let logfile = tmp.path().join("log/opsbro.log");
    let defaults = tmp.path().join("default-opsbro");
    let config = tmp.path().join("agent.yml");
    std::fs::write(&config, "node_name: init-test\n").expect("config");
    // Paths come from the defaults file; the binary comes from the environment.
    std::fs::write(
        &defaults,
        format!(
            "OPSBRO_PIDFILE={}\nOPSBRO_LOGFILE={}\nOPSBRO_CONFIG={}\nOPSBRO_DATA_DIR={}\nOPSBRO_API_PORT={port}\nOPSBRO_PORT=0\nOPSBRO_BIND=127.0.0.1\nOPSBRO_API=127.0.0.1:{port}\nOPSBRO_WAIT_TIMEOUT=30\n",
            pidfile.display(),
            logfile.display(),
            config.display(),
            tmp.path().join("data").display(),
        ),
    )
    .expect("defaults");
    let script = repo_path("init.d/opsbro");
    let run = |action: &str| {
        Command::new("sh")
            .arg(&script)
            .arg(action)
            .env("OPSBRO_DEFAULTS", &defaults)
            .env("OPSBRO_BIN", opsbro_bin())
            .env_remove("OPSBRO_API_TOKEN")
            .output()
            .expect("run init script")
    };
    let pid_of = || -> u32 {
        std::fs::read_to_string(&pidfile)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    };
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();

    let out = run("status");
    assert_eq!(
        out.status.code(),
        Some(3),
        "not running yet: {}",
        stdout(&out)
    );

    let out = run("start");
    assert!(
        out.status.success(),
        "start: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("agent initialized"),
        "{}",
        stdout(&out)
    );
    let pid = pid_of();
    assert!(alive(pid));
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        cmdline.contains("agent"),
        "the pid file names the agent itself: {cmdline:?}"
    );
    assert!(logfile.exists());

    let out = run("status");
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("init-test"), "{}", stdout(&out));

    let out = run("start");
    assert!(out.status.success());
    assert!(stdout(&out).contains("already running"), "{}", stdout(&out));
    assert_eq!(pid_of(), pid, "a second start must not start another agent");

    let out = run("restart");
    assert!(out.status.success(), "restart: {}", stdout(&out));
    let new_pid = pid_of();
    assert_ne!(new_pid, pid);
    wait_for("the old agent to be gone", Duration::from_secs(15), || {
        (!alive(pid)).then_some(())
    })
    .expect("gone");

    let out = run("stop");
    assert!(out.status.success(), "stop: {}", stdout(&out));
    assert!(!pidfile.exists(), "pid file removed");
    wait_for("the agent to exit", Duration::from_secs(15), || {
        (!alive(new_pid)).then_some(())
    })
    .expect("exited");
    let log = std::fs::read_to_string(&logfile).expect("log");
    assert!(log.contains("agent stopped"), "{log}");

    let out = run("status");
    assert_eq!(out.status.code(), Some(3));
}
