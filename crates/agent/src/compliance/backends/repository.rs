//! `repository`: a package repository declared to the package manager, as a file of its own
//! (`sources.list.d/<name>.list` with its keyring for apt, `<name>.repo` for yum/dnf and
//! zypper). Nothing else is run: refreshing the lists is for the rule's post commands.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::packages::{PackageManager, in_path, pick};
use super::{
    Params, RuleRun, check_absolute_path, check_one_line, check_repository_name, failed,
    fetch_capped, write_atomically,
};
use crate::compliance::types::{Info, Mode, Outcome, RuleState};

/// Largest key accepted (real ones are a few KiB).
const MAX_KEY: usize = 1024 * 1024;

/// Where the repository's signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// Downloaded (http or https).
    Url(String),
    /// A file on this host.
    Path(PathBuf),
}

/// A checked `repository` rule.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    name: String,
    url: String,
    key: Option<KeySource>,
    key_server: Option<String>,
}

impl Spec {
    pub(super) fn parse(parameters: &Value) -> Result<Spec, String> {
        let p = Params::new(
            "repository",
            parameters,
            &["name", "url", "key", "key-server"],
        )?;
        let name = p.str_req("name")?;
        check_repository_name(name).map_err(|e| format!("repository: {e}"))?;
        let url = p.str_req("url")?;
        check_one_line("repository: url", url)?;
        let key = match p.str_opt("key")?.map(str::trim) {
            None | Some("") => None,
            Some(k) if k.starts_with("http://") || k.starts_with("https://") => {
                check_one_line("repository: key", k)?;
                Some(KeySource::Url(k.to_owned()))
            }
            Some(k) if k.starts_with('/') => {
                check_absolute_path("repository: key", k)?;
                Some(KeySource::Path(PathBuf::from(k)))
            }
            Some(k) => {
                return Err(format!(
                    "repository: `key` must be an http(s) URL or an absolute path: `{}`",
                    k.escape_debug()
                ));
            }
        };
        let key_server = p.str_opt("key-server")?.map(str::to_owned);
        if let Some(ks) = &key_server {
            check_one_line("repository: key-server", ks)?;
        }
        Ok(Spec {
            name: name.to_owned(),
            url: url.trim().to_owned(),
            key,
            key_server,
        })
    }
}

/// The `deb` line for `url` (the rest of the line as the original wrote it: `URI SUITE
/// [COMPONENT...]`, optionally led by `[options]`), with `signed-by` when there is a keyring.
pub(crate) fn apt_source(url: &str, signed_by: Option<&str>) -> Result<String, String> {
    let url = url.trim();
    let (mut options, rest): (Vec<&str>, &str) = match url.strip_prefix('[') {
        Some(after) => {
            let Some((inside, rest)) = after.split_once(']') else {
                return Err(format!(
                    "the url `{url}` opens [options] without closing them"
                ));
            };
            (inside.split_whitespace().collect(), rest)
        }
        None => (Vec::new(), url),
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    if words.len() < 2 || !words[0].contains(':') {
        return Err(format!(
            "the url `{url}` of an apt repository must read `URI SUITE [COMPONENT...]`"
        ));
    }
    let signed_by = signed_by.map(|path| format!("signed-by={path}"));
    if let Some(signed_by) = &signed_by {
        // The keyring this rule manages wins over one written in the url.
        options.retain(|o| !o.starts_with("signed-by="));
        options.push(signed_by);
    }
    Ok(if options.is_empty() {
        format!("deb {}\n", words.join(" "))
    } else {
        format!("deb [{}] {}\n", options.join(" "), words.join(" "))
    })
}

/// A `.repo` file (yum, dnf and zypper read the same form).
pub(crate) fn rpm_repo(name: &str, url: &str, gpgkey: Option<&str>) -> Result<String, String> {
    if url.split_whitespace().count() != 1 {
        return Err(format!(
            "the url `{url}` of a yum/zypper repository must be one URL"
        ));
    }
    let mut text = format!("[{name}]\nname={name}\nbaseurl={url}\nenabled=1\n");
    match gpgkey {
        Some(key) => text.push_str(&format!("gpgcheck=1\ngpgkey={key}\n")),
        None => text.push_str("gpgcheck=0\n"),
    }
    Ok(text)
}

/// The keyring's extension apt expects for this key: `asc` (ASCII-armored) or `gpg` (binary).
pub(crate) fn keyring_extension(key: &[u8]) -> Result<&'static str, String> {
    if key
        .trim_ascii_start()
        .starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    {
        Ok("asc")
    } else if key.first().is_some_and(|b| b & 0x80 != 0) {
        // An OpenPGP packet header always has its high bit set.
        Ok("gpg")
    } else {
        Err("it is neither an ASCII-armored nor a binary OpenPGP public key".to_owned())
    }
}

async fn load_key(key: &KeySource, timeout: std::time::Duration) -> Result<Vec<u8>, String> {
    match key {
        KeySource::Url(url) => fetch_capped(url, MAX_KEY, timeout).await,
        KeySource::Path(path) => {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if meta.len() > MAX_KEY as u64 {
                return Err(format!("{} is bigger than {MAX_KEY} bytes", path.display()));
            }
            tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
    }
}

/// One file the repository needs.
struct Wanted {
    path: PathBuf,
    content: Vec<u8>,
    /// `The repository NAME` / `The key of the repository NAME`.
    what: String,
}

/// `root` + an absolute path.
fn under_root(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

pub(super) async fn run(spec: &Spec, run: &RuleRun<'_>) -> Outcome {
    let name = &spec.name;
    if let Some(ks) = &spec.key_server {
        return failed(format!(
            "The key server {ks} is not supported: opsbro does not call key servers, give \
             `key` as an URL or a path to the key file"
        ));
    }
    let Some(pm) = pick(run.distro, in_path) else {
        return failed(
            "No package manager found: none of apt-get, dnf, yum, apk, zypper is in PATH",
        );
    };
    let repository = format!("The repository {name}");
    let mut wanted = Vec::new();
    match pm {
        PackageManager::Apt => {
            let mut keyring = None;
            if let Some(source) = &spec.key {
                let key = match load_key(source, run.timeout).await {
                    Ok(k) => k,
                    Err(e) => {
                        return failed(format!("Cannot get the key of the repository {name}: {e}"));
                    }
                };
                let extension = match keyring_extension(&key) {
                    Ok(x) => x,
                    Err(e) => {
                        return failed(format!("The key of the repository {name} is refused: {e}"));
                    }
                };
                let path = format!("/etc/apt/keyrings/{name}.{extension}");
                // The keyring first: apt must never see a source whose keyring is not there.
                wanted.push(Wanted {
                    path: under_root(run.root, &path),
                    content: key,
                    what: format!("The key of the repository {name}"),
                });
                keyring = Some(path);
            }
            let line = match apt_source(&spec.url, keyring.as_deref()) {
                Ok(l) => l,
                Err(e) => return failed(format!("{repository} cannot be set: {e}")),
            };
            wanted.push(Wanted {
                path: under_root(run.root, &format!("/etc/apt/sources.list.d/{name}.list")),
                content: line.into_bytes(),
                what: repository.clone(),
            });
        }
        PackageManager::Dnf | PackageManager::Yum | PackageManager::Zypper => {
            let dir = if pm == PackageManager::Zypper {
                "/etc/zypp/repos.d"
            } else {
                "/etc/yum.repos.d"
            };
            // yum and zypper fetch the key themselves: it is named, not copied.
            let gpgkey = spec.key.as_ref().map(|k| match k {
                KeySource::Url(url) => url.clone(),
                KeySource::Path(path) => format!("file://{}", path.display()),
            });
            let text = match rpm_repo(name, &spec.url, gpgkey.as_deref()) {
                Ok(t) => t,
                Err(e) => return failed(format!("{repository} cannot be set: {e}")),
            };
            wanted.push(Wanted {
                path: under_root(run.root, &format!("{dir}/{name}.repo")),
                content: text.into_bytes(),
                what: repository.clone(),
            });
        }
        PackageManager::Apk => {
            return failed("Repository rules are not supported with apk (Alpine)");
        }
    }
    converge(&wanted, run.mode).await
}

/// Compare each wanted file with the host's, and in enforcing mode write those that differ.
async fn converge(wanted: &[Wanted], mode: Mode) -> Outcome {
    let mut infos = Vec::new();
    let mut differing = Vec::new();
    for file in wanted {
        let path = file.path.display();
        match tokio::fs::read(&file.path).await {
            Ok(current) if current == file.content => {}
            Ok(_) => {
                infos.push(Info::error(format!(
                    "{} is not set: {path} is not what expected",
                    file.what
                )));
                differing.push(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                infos.push(Info::error(format!(
                    "{} is not set: {path} is missing",
                    file.what
                )));
                differing.push(file);
            }
            Err(e) => {
                infos.push(Info::error(format!("Cannot read {path}: {e}")));
                return Outcome {
                    state: RuleState::Error,
                    infos,
                };
            }
        }
    }
    if differing.is_empty() {
        let infos = wanted
            .iter()
            .map(|f| Info::compliant(format!("{} is set in {}", f.what, f.path.display())))
            .collect();
        return Outcome {
            state: RuleState::Compliant,
            infos,
        };
    }
    if mode == Mode::Audit {
        return Outcome {
            state: RuleState::Error,
            infos,
        };
    }
    for file in differing {
        match write_atomically(&file.path, &file.content).await {
            Ok(()) => infos.push(Info::fix(format!(
                "{} was written to {}",
                file.what,
                file.path.display()
            ))),
            Err(e) => {
                infos.push(Info::error(e));
                return Outcome {
                    state: RuleState::Error,
                    infos,
                };
            }
        }
    }
    Outcome {
        state: RuleState::Fixed,
        infos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::types::InfoKind;
    use serde_json::json;
    use std::time::Duration;

    const ARMORED: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBFake\n=abcd\n\
                           -----END PGP PUBLIC KEY BLOCK-----\n";

    #[test]
    fn deb_lines_carry_the_keyring() {
        let url = "http://repo.mongodb.org/apt/debian jessie/mongodb-org/3.6 main";
        assert_eq!(
            apt_source(url, Some("/etc/apt/keyrings/mongodb.asc")),
            Ok(
                "deb [signed-by=/etc/apt/keyrings/mongodb.asc] http://repo.mongodb.org/apt/debian \
                jessie/mongodb-org/3.6 main\n"
                    .to_owned()
            )
        );
        assert_eq!(
            apt_source(url, None),
            Ok("deb http://repo.mongodb.org/apt/debian jessie/mongodb-org/3.6 main\n".to_owned())
        );
        assert_eq!(
            apt_source(
                "[ arch=amd64,arm64 signed-by=/old.gpg ] https://repo.mongodb.org/apt/ubuntu xenial/mongodb-org/3.6 multiverse",
                Some("/etc/apt/keyrings/m.gpg")
            ),
            Ok("deb [arch=amd64,arm64 signed-by=/etc/apt/keyrings/m.gpg] \
                https://repo.mongodb.org/apt/ubuntu xenial/mongodb-org/3.6 multiverse\n"
                .to_owned())
        );
        assert!(apt_source("http://only-an-uri", None).is_err());
        assert!(apt_source("jessie main", None).is_err());
        assert!(apt_source("[arch=amd64 http://x y", None).is_err());
    }

    #[test]
    fn repo_files_say_whether_packages_are_checked() {
        assert_eq!(
            rpm_repo(
                "mongodb-org-3.6",
                "https://repo.mongodb.org/yum/amazon/2013.03/mongodb-org/3.6/x86_64/",
                Some("https://www.mongodb.org/static/pgp/server-3.6.asc")
            ),
            Ok("[mongodb-org-3.6]\nname=mongodb-org-3.6\n\
                baseurl=https://repo.mongodb.org/yum/amazon/2013.03/mongodb-org/3.6/x86_64/\n\
                enabled=1\ngpgcheck=1\ngpgkey=https://www.mongodb.org/static/pgp/server-3.6.asc\n"
                .to_owned())
        );
        assert_eq!(
            rpm_repo("r", "http://x/", None),
            Ok("[r]\nname=r\nbaseurl=http://x/\nenabled=1\ngpgcheck=0\n".to_owned())
        );
        assert!(rpm_repo("r", "http://x/ main", None).is_err());
    }

    #[test]
    fn keys_are_armored_or_binary() {
        assert_eq!(keyring_extension(ARMORED.as_bytes()), Ok("asc"));
        assert_eq!(keyring_extension(&[0x99, 0x01, 0x0d]), Ok("gpg"));
        assert!(keyring_extension(b"<html>404</html>").is_err());
        assert!(keyring_extension(b"").is_err());
    }

    fn rule_run<'a>(
        parameters: &'a Value,
        root: &'a Path,
        mode: Mode,
        distro: &'a str,
    ) -> RuleRun<'a> {
        RuleRun {
            kind: "repository",
            parameters,
            mode,
            root,
            timeout: Duration::from_secs(30),
            distro: Some(distro),
        }
    }

    fn texts(o: &Outcome) -> Vec<(InfoKind, String)> {
        o.infos.iter().map(|i| (i.kind, i.text.clone())).collect()
    }

    #[tokio::test]
    async fn apt_repository_and_keyring_are_written_under_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let keys = tempfile::tempdir().expect("tempdir");
        let key_path = keys.path().join("mongo.asc");
        std::fs::write(&key_path, ARMORED).expect("write");
        let parameters = json!({
            "name": "mongodb-org-3.6",
            "url": "http://repo.mongodb.org/apt/debian jessie/mongodb-org/3.6 main",
            "key": key_path.display().to_string(),
        });
        let list = root
            .path()
            .join("etc/apt/sources.list.d/mongodb-org-3.6.list");
        let keyring = root.path().join("etc/apt/keyrings/mongodb-org-3.6.asc");

        let audit =
            super::super::run(rule_run(&parameters, root.path(), Mode::Audit, "debian")).await;
        assert_eq!(audit.state, RuleState::Error);
        assert_eq!(
            texts(&audit),
            vec![
                (
                    InfoKind::Error,
                    format!(
                        "The key of the repository mongodb-org-3.6 is not set: {} is missing",
                        keyring.display()
                    )
                ),
                (
                    InfoKind::Error,
                    format!(
                        "The repository mongodb-org-3.6 is not set: {} is missing",
                        list.display()
                    )
                ),
            ]
        );
        assert!(!list.exists() && !keyring.exists(), "audit must not write");

        let fix = super::super::run(rule_run(
            &parameters,
            root.path(),
            Mode::Enforcing,
            "debian",
        ))
        .await;
        assert_eq!(fix.state, RuleState::Fixed, "{fix:?}");
        assert_eq!(
            texts(&fix)[2..],
            [
                (
                    InfoKind::Fix,
                    format!(
                        "The key of the repository mongodb-org-3.6 was written to {}",
                        keyring.display()
                    )
                ),
                (
                    InfoKind::Fix,
                    format!(
                        "The repository mongodb-org-3.6 was written to {}",
                        list.display()
                    )
                ),
            ]
        );
        assert_eq!(
            std::fs::read_to_string(&list).expect("list"),
            "deb [signed-by=/etc/apt/keyrings/mongodb-org-3.6.asc] \
             http://repo.mongodb.org/apt/debian jessie/mongodb-org/3.6 main\n"
        );
        assert_eq!(std::fs::read_to_string(&keyring).expect("keyring"), ARMORED);
        // No temp file left beside them.
        let entries = std::fs::read_dir(list.parent().expect("dir"))
            .expect("read_dir")
            .count();
        assert_eq!(entries, 1);

        let audit =
            super::super::run(rule_run(&parameters, root.path(), Mode::Audit, "debian")).await;
        assert_eq!(audit.state, RuleState::Compliant);
        assert_eq!(
            texts(&audit)[1],
            (
                InfoKind::Compliant,
                format!(
                    "The repository mongodb-org-3.6 is set in {}",
                    list.display()
                )
            )
        );

        // Someone edits the file: audit sees it, enforcing puts it back.
        std::fs::write(&list, "deb http://elsewhere/ x main\n").expect("write");
        let audit =
            super::super::run(rule_run(&parameters, root.path(), Mode::Audit, "ubuntu")).await;
        assert_eq!(audit.state, RuleState::Error);
        assert_eq!(
            texts(&audit),
            vec![(
                InfoKind::Error,
                format!(
                    "The repository mongodb-org-3.6 is not set: {} is not what expected",
                    list.display()
                )
            )]
        );
        let fix = super::super::run(rule_run(
            &parameters,
            root.path(),
            Mode::Enforcing,
            "debian",
        ))
        .await;
        assert_eq!(fix.state, RuleState::Fixed);
        assert!(
            std::fs::read_to_string(&list)
                .expect("list")
                .contains("signed-by=")
        );
    }

    #[tokio::test]
    async fn a_downloaded_binary_key_becomes_a_gpg_keyring() {
        let binary_key = vec![0x99u8, 0x01, 0x0d, 0x04, 0x5a];
        let base = super::super::test_http::serve(vec![("/key.gpg", binary_key.clone())]);
        let root = tempfile::tempdir().expect("tempdir");
        let parameters = json!({
            "name": "vendor",
            "url": "https://vendor.example/debian bookworm main",
            "key": format!("{base}/key.gpg"),
        });
        let fix = super::super::run(rule_run(
            &parameters,
            root.path(),
            Mode::Enforcing,
            "debian",
        ))
        .await;
        assert_eq!(fix.state, RuleState::Fixed, "{fix:?}");
        assert_eq!(
            std::fs::read(root.path().join("etc/apt/keyrings/vendor.gpg")).expect("keyring"),
            binary_key
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/apt/sources.list.d/vendor.list"))
                .expect("list"),
            "deb [signed-by=/etc/apt/keyrings/vendor.gpg] https://vendor.example/debian bookworm \
             main\n"
        );

        // A key URL answering 404 writes nothing.
        let parameters = json!({
            "name": "broken",
            "url": "https://vendor.example/debian bookworm main",
            "key": format!("{base}/nothing.asc"),
        });
        let fix = super::super::run(rule_run(
            &parameters,
            root.path(),
            Mode::Enforcing,
            "debian",
        ))
        .await;
        assert_eq!(
            texts(&fix),
            vec![(
                InfoKind::Error,
                format!(
                    "Cannot get the key of the repository broken: cannot download \
                     {base}/nothing.asc: HTTP 404 Not Found"
                )
            )]
        );
        assert!(
            !root
                .path()
                .join("etc/apt/sources.list.d/broken.list")
                .exists()
        );
    }

    #[tokio::test]
    async fn yum_and_zypper_repositories_are_ini_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let parameters = json!({
            "name": "mongodb-org-3.4",
            "url": "https://repo.mongodb.org/yum/redhat/$releasever/mongodb-org/3.4/x86_64/",
            "key": "https://www.mongodb.org/static/pgp/server-3.4.asc",
        });
        let repo = root.path().join("etc/yum.repos.d/mongodb-org-3.4.repo");
        let audit =
            super::super::run(rule_run(&parameters, root.path(), Mode::Audit, "centos")).await;
        assert_eq!(audit.state, RuleState::Error);
        assert_eq!(
            texts(&audit),
            vec![(
                InfoKind::Error,
                format!(
                    "The repository mongodb-org-3.4 is not set: {} is missing",
                    repo.display()
                )
            )]
        );
        assert!(!repo.exists());
        let fix = super::super::run(rule_run(
            &parameters,
            root.path(),
            Mode::Enforcing,
            "centos",
        ))
        .await;
        assert_eq!(fix.state, RuleState::Fixed);
        assert_eq!(
            std::fs::read_to_string(&repo).expect("repo"),
            "[mongodb-org-3.4]\nname=mongodb-org-3.4\n\
             baseurl=https://repo.mongodb.org/yum/redhat/$releasever/mongodb-org/3.4/x86_64/\n\
             enabled=1\ngpgcheck=1\ngpgkey=https://www.mongodb.org/static/pgp/server-3.4.asc\n"
        );
        let audit =
            super::super::run(rule_run(&parameters, root.path(), Mode::Audit, "fedora")).await;
        assert_eq!(audit.state, RuleState::Compliant);

        let parameters =
            json!({"name": "local", "url": "http://mirror/suse/", "key": "/etc/pki/local.asc"});
        let fix = super::super::run(rule_run(
            &parameters,
            root.path(),
            Mode::Enforcing,
            "opensuse",
        ))
        .await;
        assert_eq!(fix.state, RuleState::Fixed);
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/zypp/repos.d/local.repo")).expect("repo"),
            "[local]\nname=local\nbaseurl=http://mirror/suse/\nenabled=1\ngpgcheck=1\n\
             gpgkey=file:///etc/pki/local.asc\n"
        );
    }

    #[tokio::test]
    async fn key_servers_are_reported_as_not_supported() {
        let root = tempfile::tempdir().expect("tempdir");
        let parameters = json!({
            "name": "mongodb",
            "url": "http://repo.mongodb.org/apt/debian jessie/mongodb-org/3.6 main",
            "key": "/nonexistent",
            "key-server": "hkp://keyserver.ubuntu.com:80",
        });
        assert_eq!(super::super::validate("repository", &parameters), Ok(()));
        let outcome = super::super::run(rule_run(
            &parameters,
            root.path(),
            Mode::Enforcing,
            "debian",
        ))
        .await;
        assert_eq!(
            outcome,
            Outcome {
                state: RuleState::Error,
                infos: vec![Info::error(
                    "The key server hkp://keyserver.ubuntu.com:80 is not supported: opsbro does \
                     not call key servers, give `key` as an URL or a path to the key file"
                )],
            }
        );
        assert_eq!(std::fs::read_dir(root.path()).expect("dir").count(), 0);
    }
}
