//! `package-install`: packages installed through the host's package manager (apt, dnf, yum,
//! apk, zypper), and the choice of that manager (shared with `repository`).
//!
//! The command lines are built by pure functions (tested per manager); names were checked by
//! [`check_package_name`] and always follow a `--`.

use serde_json::Value;

use super::{
    CommandOutput, Params, RuleRun, check_package_name, command_failure, failed, final_state,
    run_command,
};
use crate::compliance::types::{Info, Mode, Outcome, RuleState};

/// A checked `package-install` rule.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    packages: Vec<String>,
}

impl Spec {
    pub(super) fn parse(parameters: &Value) -> Result<Spec, String> {
        let p = Params::new("package-install", parameters, &["packages"])?;
        let names: Vec<&str> = match p.get("packages") {
            None => return Err("package-install: `packages` is missing".to_owned()),
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        format!("package-install: `packages` must list names, not {v}")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "package-install: `packages` must be a name or a list of names, not {other}"
                ));
            }
        };
        if names.is_empty() {
            return Err("package-install: `packages` is empty".to_owned());
        }
        let mut packages: Vec<String> = Vec::new();
        for name in names {
            check_package_name(name).map_err(|e| format!("package-install: {e}"))?;
            if !packages.iter().any(|p| p == name) {
                packages.push(name.to_owned());
            }
        }
        Ok(Spec { packages })
    }
}

/// The host's package manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PackageManager {
    /// dpkg to look, apt-get to install (Debian, Ubuntu...).
    Apt,
    /// rpm to look, dnf to install (Fedora, RHEL 8+...).
    Dnf,
    /// rpm to look, yum to install (CentOS 7, Amazon Linux 2...).
    Yum,
    /// apk (Alpine).
    Apk,
    /// rpm to look, zypper to install (openSUSE, SLES).
    Zypper,
}

/// Which family a distribution id belongs to, when it is one we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Debian,
    RedHat,
    Alpine,
    Suse,
}

fn family(distro: &str) -> Option<Family> {
    let id = distro.trim().to_ascii_lowercase();
    Some(match id.as_str() {
        "debian" | "ubuntu" | "raspbian" | "linuxmint" | "kali" | "pop" | "devuan"
        | "elementary" | "neon" | "zorin" => Family::Debian,
        "centos" | "fedora" | "redhat" | "rhel" | "rocky" | "almalinux" | "amazon-linux"
        | "amazon" | "amzn" | "ol" | "oracle" | "scientific" | "cloudlinux" => Family::RedHat,
        "alpine" => Family::Alpine,
        "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" | "suse" | "sles" | "sled" => {
            Family::Suse
        }
        _ => return None,
    })
}

/// The package manager for `distro`, else the first of apt-get, dnf, yum, apk, zypper that
/// `in_path` finds. In the Red Hat family dnf wins over yum when both exist.
pub(crate) fn pick(distro: Option<&str>, in_path: impl Fn(&str) -> bool) -> Option<PackageManager> {
    let rpm_family = |in_path: &dyn Fn(&str) -> bool| {
        if in_path("dnf") || !in_path("yum") {
            PackageManager::Dnf
        } else {
            PackageManager::Yum
        }
    };
    match distro.and_then(family) {
        Some(Family::Debian) => Some(PackageManager::Apt),
        Some(Family::RedHat) => Some(rpm_family(&in_path)),
        Some(Family::Alpine) => Some(PackageManager::Apk),
        Some(Family::Suse) => Some(PackageManager::Zypper),
        None => [
            ("apt-get", PackageManager::Apt),
            ("dnf", PackageManager::Dnf),
            ("yum", PackageManager::Yum),
            ("apk", PackageManager::Apk),
            ("zypper", PackageManager::Zypper),
        ]
        .into_iter()
        .find(|(program, _)| in_path(program))
        .map(|(_, pm)| pm),
    }
}

/// `program` is an executable file in one of PATH's directories.
pub(crate) fn in_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

impl PackageManager {
    /// The command that says whether `package` is installed.
    pub(crate) fn query_argv(self, package: &str) -> Vec<String> {
        let argv: &[&str] = match self {
            // One status line per installed architecture (`install ok installed`).
            PackageManager::Apt => &["dpkg-query", "-W", "-f=${Status}\n", "--"],
            PackageManager::Dnf | PackageManager::Yum | PackageManager::Zypper => {
                &["rpm", "-q", "--"]
            }
            PackageManager::Apk => &["apk", "info", "-e", "--"],
        };
        owned(argv, &[package.to_owned()])
    }

    /// The command that installs `packages`.
    pub(crate) fn install_argv(self, packages: &[String]) -> Vec<String> {
        let argv: &[&str] = match self {
            PackageManager::Apt => &[
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
                "--",
            ],
            PackageManager::Dnf => &["dnf", "install", "-y", "--"],
            PackageManager::Yum => &["yum", "install", "-y", "--"],
            PackageManager::Apk => &["apk", "add", "--no-cache", "--"],
            PackageManager::Zypper => &["zypper", "--non-interactive", "install", "--"],
        };
        owned(argv, packages)
    }

    /// The environment its commands run with: messages in English (they are matched), and no
    /// question asked (debconf).
    pub(crate) fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            PackageManager::Apt => &[("LC_ALL", "C"), ("DEBIAN_FRONTEND", "noninteractive")],
            _ => &[("LC_ALL", "C")],
        }
    }

    /// What the query said: installed or not.
    fn is_installed(self, out: &CommandOutput) -> bool {
        match self {
            PackageManager::Apt => out.success() && dpkg_status_installed(&out.stdout),
            _ => out.success(),
        }
    }
}

fn owned(head: &[&str], tail: &[String]) -> Vec<String> {
    head.iter()
        .map(|s| (*s).to_owned())
        .chain(tail.iter().cloned())
        .collect()
}

/// dpkg's `${Status}` says installed: `install ok installed`, `hold ok installed` (one line per
/// architecture; any will do).
pub(crate) fn dpkg_status_installed(status: &str) -> bool {
    status.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        matches!(words.as_slice(), [_, "ok", "installed"])
    })
}

/// apt-get failed because its package lists are stale or missing: an `apt-get update` may help.
pub(crate) fn apt_needs_update(out: &CommandOutput) -> bool {
    [&out.stdout, &out.stderr].iter().any(|text| {
        text.contains("Unable to locate package")
            || text.contains("has no installation candidate")
            || text.contains("Failed to fetch")
            || text.contains("404  Not Found")
            || text.contains("404 Not Found")
    })
}

/// The argv of `apt-get update`.
pub(crate) fn apt_update_argv() -> Vec<String> {
    owned(&["apt-get", "update", "-q"], &[])
}

async fn run_owned(
    argv: &[String],
    pm: PackageManager,
    timeout: std::time::Duration,
) -> Result<CommandOutput, String> {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run_command(&argv, pm.env(), timeout).await
}

/// Whether `package` is installed; an error when the manager itself cannot be run.
async fn is_installed(
    pm: PackageManager,
    package: &str,
    timeout: std::time::Duration,
) -> Result<bool, String> {
    let out = run_owned(&pm.query_argv(package), pm, timeout).await?;
    Ok(pm.is_installed(&out))
}

pub(super) async fn run(spec: &Spec, run: &RuleRun<'_>) -> Outcome {
    let Some(pm) = pick(run.distro, in_path) else {
        return failed(
            "No package manager found: none of apt-get, dnf, yum, apk, zypper is in PATH",
        );
    };
    let mut infos = Vec::new();
    let mut missing = Vec::new();
    let mut cannot_check = false;
    for package in &spec.packages {
        match is_installed(pm, package, run.timeout).await {
            Ok(true) => infos.push(Info::compliant(format!("Package {package} is installed"))),
            Ok(false) => missing.push(package.clone()),
            Err(e) => {
                infos.push(Info::error(format!(
                    "Cannot check the package {package}: {e}"
                )));
                cannot_check = true;
            }
        }
    }
    infos.extend(
        missing
            .iter()
            .map(|p| Info::error(format!("Package {p} is missing"))),
    );
    // Nothing is installed on a host we could not even look at.
    if missing.is_empty() || cannot_check || run.mode == Mode::Audit {
        return Outcome {
            state: final_state(cannot_check || !missing.is_empty(), false),
            infos,
        };
    }

    let install = pm.install_argv(&missing);
    let mut result = run_owned(&install, pm, run.timeout).await;
    if pm == PackageManager::Apt
        && let Ok(out) = &result
        && !out.success()
        && apt_needs_update(out)
    {
        // Stale or missing package lists: refresh them once and try again.
        let update = apt_update_argv();
        match run_owned(&update, pm, run.timeout).await {
            Ok(out) if out.success() => {
                result = run_owned(&install, pm, run.timeout).await;
            }
            Ok(out) => {
                let argv: Vec<&str> = update.iter().map(String::as_str).collect();
                infos.push(Info::error(command_failure(&argv, &out)));
            }
            Err(e) => infos.push(Info::error(e)),
        }
    }
    let install_text: Vec<&str> = install.iter().map(String::as_str).collect();
    match result {
        Ok(out) if out.success() => {}
        Ok(out) => {
            infos.push(Info::error(format!(
                "Cannot install {}: {}",
                missing.join(", "),
                command_failure(&install_text, &out)
            )));
            return Outcome {
                state: RuleState::Error,
                infos,
            };
        }
        Err(e) => {
            infos.push(Info::error(format!(
                "Cannot install {}: {e}",
                missing.join(", ")
            )));
            return Outcome {
                state: RuleState::Error,
                infos,
            };
        }
    }

    // The manager said yes: look again rather than trust it (a virtual name, a typo it
    // resolved to something else).
    let mut still_missing = false;
    for package in &missing {
        match is_installed(pm, package, run.timeout).await {
            Ok(true) => infos.push(Info::fix(format!("Package {package} was installed"))),
            Ok(false) => {
                infos.push(Info::error(format!(
                    "Package {package} is still missing after `{}`",
                    install_text.join(" ")
                )));
                still_missing = true;
            }
            Err(e) => {
                infos.push(Info::error(format!(
                    "Cannot check the package {package}: {e}"
                )));
                still_missing = true;
            }
        }
    }
    Outcome {
        state: final_state(still_missing, true),
        infos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::types::InfoKind;
    use serde_json::json;
    use std::time::Duration;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn apt_command_lines() {
        let pm = PackageManager::Apt;
        assert_eq!(
            pm.query_argv("nginx"),
            names(&["dpkg-query", "-W", "-f=${Status}\n", "--", "nginx"])
        );
        assert_eq!(
            pm.install_argv(&names(&["nginx", "bash"])),
            names(&[
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
                "--",
                "nginx",
                "bash"
            ])
        );
        assert_eq!(apt_update_argv(), names(&["apt-get", "update", "-q"]));
        assert_eq!(
            pm.env(),
            &[("LC_ALL", "C"), ("DEBIAN_FRONTEND", "noninteractive")]
        );
    }

    #[test]
    fn dnf_yum_apk_zypper_command_lines() {
        let two = names(&["nginx", "bash"]);
        assert_eq!(
            PackageManager::Dnf.query_argv("nginx"),
            names(&["rpm", "-q", "--", "nginx"])
        );
        assert_eq!(
            PackageManager::Dnf.install_argv(&two),
            names(&["dnf", "install", "-y", "--", "nginx", "bash"])
        );
        assert_eq!(
            PackageManager::Yum.query_argv("nginx"),
            names(&["rpm", "-q", "--", "nginx"])
        );
        assert_eq!(
            PackageManager::Yum.install_argv(&two),
            names(&["yum", "install", "-y", "--", "nginx", "bash"])
        );
        assert_eq!(
            PackageManager::Apk.query_argv("nginx"),
            names(&["apk", "info", "-e", "--", "nginx"])
        );
        assert_eq!(
            PackageManager::Apk.install_argv(&two),
            names(&["apk", "add", "--no-cache", "--", "nginx", "bash"])
        );
        assert_eq!(
            PackageManager::Zypper.query_argv("nginx"),
            names(&["rpm", "-q", "--", "nginx"])
        );
        assert_eq!(
            PackageManager::Zypper.install_argv(&two),
            names(&[
                "zypper",
                "--non-interactive",
                "install",
                "--",
                "nginx",
                "bash"
            ])
        );
        assert_eq!(PackageManager::Dnf.env(), &[("LC_ALL", "C")]);
    }

    #[test]
    fn the_manager_follows_the_distro_then_path() {
        let nothing = |_: &str| false;
        let only = |have: &'static [&'static str]| move |p: &str| have.contains(&p);
        assert_eq!(pick(Some("debian"), nothing), Some(PackageManager::Apt));
        assert_eq!(pick(Some("ubuntu"), nothing), Some(PackageManager::Apt));
        assert_eq!(
            pick(Some("fedora"), only(&["dnf"])),
            Some(PackageManager::Dnf)
        );
        assert_eq!(
            pick(Some("centos"), only(&["yum"])),
            Some(PackageManager::Yum)
        );
        assert_eq!(
            pick(Some("amazon-linux"), only(&["yum", "dnf"])),
            Some(PackageManager::Dnf)
        );
        assert_eq!(pick(Some("redhat"), nothing), Some(PackageManager::Dnf));
        assert_eq!(pick(Some("alpine"), nothing), Some(PackageManager::Apk));
        assert_eq!(
            pick(Some("opensuse"), nothing),
            Some(PackageManager::Zypper)
        );
        assert_eq!(
            pick(None, only(&["zypper", "apk"])),
            Some(PackageManager::Apk)
        );
        assert_eq!(
            pick(Some("gentoo"), only(&["yum"])),
            Some(PackageManager::Yum)
        );
        assert_eq!(
            pick(None, only(&["apt-get", "dnf"])),
            Some(PackageManager::Apt)
        );
        assert_eq!(pick(None, nothing), None);
    }

    #[test]
    fn dpkg_statuses_and_apt_failures_are_read() {
        assert!(dpkg_status_installed("install ok installed\n"));
        assert!(dpkg_status_installed("hold ok installed\n"));
        assert!(dpkg_status_installed(
            "deinstall ok config-files\ninstall ok installed\n"
        ));
        assert!(!dpkg_status_installed("deinstall ok config-files\n"));
        assert!(!dpkg_status_installed("unknown ok not-installed\n"));
        assert!(!dpkg_status_installed(""));
        let failed = |stderr: &str| CommandOutput {
            code: Some(100),
            stdout: String::new(),
            stderr: stderr.to_owned(),
        };
        assert!(apt_needs_update(&failed(
            "E: Unable to locate package hello"
        )));
        assert!(apt_needs_update(&failed(
            "E: Failed to fetch http://deb.debian.org/x.deb  404  Not Found [IP: 1.2.3.4 80]"
        )));
        assert!(!apt_needs_update(&failed(
            "E: Could not get lock /var/lib/dpkg/lock-frontend"
        )));
    }

    #[test]
    fn package_lists_are_read_and_checked() {
        assert_eq!(
            Spec::parse(&json!({"packages": "nginx"})).map(|s| s.packages),
            Ok(names(&["nginx"]))
        );
        assert_eq!(
            Spec::parse(&json!({"packages": ["a", "b", "a"]})).map(|s| s.packages),
            Ok(names(&["a", "b"]))
        );
        assert_eq!(
            Spec::parse(&json!({"packages": []})).map(|s| s.packages),
            Err("package-install: `packages` is empty".to_owned())
        );
        assert!(Spec::parse(&json!({"packages": [1]})).is_err());
        assert!(Spec::parse(&json!({"packages": ["ok", "--force-yes"]})).is_err());
    }

    fn dpkg_installed(package: &str) -> bool {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f=${Status}\n", "--", package])
            .output()
            .is_ok_and(|o| dpkg_status_installed(&String::from_utf8_lossy(&o.stdout)))
    }

    fn apt_remove(package: &str) {
        let status = std::process::Command::new("apt-get")
            .args(["remove", "-y", "-q", "--", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "apt-get remove {package} failed"
        );
    }

    /// Removes `hello` when the test ends, passed or failed.
    struct RemoveHello;

    impl Drop for RemoveHello {
        fn drop(&mut self) {
            if dpkg_installed("hello") {
                apt_remove("hello");
            }
        }
    }

    #[tokio::test]
    async fn apt_installs_a_missing_package_and_audits_it() {
        assert!(
            in_path("apt-get") && in_path("dpkg-query"),
            "this test needs apt-get and dpkg-query (a Debian host)"
        );
        assert!(
            rustix::process::geteuid().is_root(),
            "this test installs a package: run it as root"
        );
        if dpkg_installed("hello") {
            apt_remove("hello");
        }
        assert!(!dpkg_installed("hello"));
        let _cleanup = RemoveHello;

        let parameters = json!({"packages": ["bash", "hello"]});
        let root = std::path::Path::new("/");
        let rule = |mode| RuleRun {
            kind: "package-install",
            parameters: &parameters,
            mode,
            root,
            timeout: Duration::from_secs(600),
            distro: Some("debian"),
        };
        let texts = |o: &Outcome| -> Vec<(InfoKind, String)> {
            o.infos.iter().map(|i| (i.kind, i.text.clone())).collect()
        };

        let audit = super::super::run(rule(Mode::Audit)).await;
        assert_eq!(audit.state, RuleState::Error, "{audit:?}");
        assert_eq!(
            texts(&audit),
            vec![
                (InfoKind::Compliant, "Package bash is installed".to_owned()),
                (InfoKind::Error, "Package hello is missing".to_owned()),
            ]
        );
        assert!(!dpkg_installed("hello"), "audit must not install");

        let enforce = super::super::run(rule(Mode::Enforcing)).await;
        assert_eq!(enforce.state, RuleState::Fixed, "{enforce:?}");
        assert_eq!(
            texts(&enforce),
            vec![
                (InfoKind::Compliant, "Package bash is installed".to_owned()),
                (InfoKind::Error, "Package hello is missing".to_owned()),
                (InfoKind::Fix, "Package hello was installed".to_owned()),
            ]
        );
        assert!(dpkg_installed("hello"));

        let audit = super::super::run(rule(Mode::Audit)).await;
        assert_eq!(audit.state, RuleState::Compliant, "{audit:?}");
        assert_eq!(
            texts(&audit),
            vec![
                (InfoKind::Compliant, "Package bash is installed".to_owned()),
                (InfoKind::Compliant, "Package hello is installed".to_owned()),
            ]
        );
    }
}
