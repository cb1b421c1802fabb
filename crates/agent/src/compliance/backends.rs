//! Rule backends (file-rights, package-install, repository, system-user, get-url).
//!
//! The engine calls [`validate`] when a pack loads (a broken rule is a diagnostic, not a crash)
//! and [`run`] for each rule run: the backend looks at the host, reports what it found as
//! [`Info`] lines and, in [`Mode::Enforcing`], fixes what differs. Audit never changes the host.
//!
//! No shell anywhere: every command goes through [`run_command`] as an argv, and every name that
//! reaches one (package, user, group, repository) is checked against its format first, with `--`
//! before the names so none can pass for an option.

mod file_rights;
mod get_url;
mod packages;
mod repository;
mod system_user;

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use super::types::{Info, Mode, Outcome, RuleState};

/// The rule types, as packs name them.
pub const KINDS: [&str; 5] = [
    "file-rights",
    "package-install",
    "repository",
    "system-user",
    "get-url",
];

/// What a rule run needs.
#[derive(Debug, Clone, Copy)]
pub struct RuleRun<'a> {
    /// `file-rights`, `package-install`, `repository`, `system-user` or `get-url`.
    pub kind: &'a str,
    /// The matching environment's `parameters` (JSON object, as written in YAML).
    pub parameters: &'a Value,
    /// Audit never changes the host; Enforcing fixes.
    pub mode: Mode,
    /// Prefix for every path the rules read or write (`/` normally; tests use a temp dir for
    /// repository files). file-rights and get-url use their paths as given (absolute).
    pub root: &'a Path,
    /// Longest any one step (a command, a download) may take.
    pub timeout: Duration,
    /// The host's distribution id from the system collector (`debian`, `centos`...), None when
    /// unknown: picks the package backend (else the first of apt-get, dnf, yum, apk, zypper
    /// found in PATH).
    pub distro: Option<&'a str>,
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; None when a signal ended it.
    pub code: Option<i32>,
    /// Its standard output (the first 64 KiB, lossily decoded).
    pub stdout: String,
    /// Its standard error (the first 64 KiB, lossily decoded).
    pub stderr: String,
}

impl CommandOutput {
    /// It exited with 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

pub use crate::command::MAX_OUTPUT as MAX_COMMAND_OUTPUT;

/// Static checks of a rule's parameters (done at load so a broken object is a diagnostic):
/// unknown type, unknown, missing or malformed parameters, names that could not safely reach a
/// command.
pub fn validate(kind: &str, parameters: &Value) -> Result<(), String> {
    Spec::parse(kind, parameters).map(|_| ())
}

/// Run one rule: `Compliant`, `Fixed` or `Error`, with the lines that say why.
pub async fn run(run: RuleRun<'_>) -> Outcome {
    let spec = match Spec::parse(run.kind, run.parameters) {
        Ok(spec) => spec,
        Err(e) => return failed(e),
    };
    match spec {
        Spec::FileRights(spec) => {
            // lstat/chown and the user database (NSS may ask the network) block: off the runtime.
            let mode = run.mode;
            let work = tokio::task::spawn_blocking(move || file_rights::run(&spec, mode));
            match tokio::time::timeout(run.timeout, work).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => failed(format!("the file-rights check failed: {e}")),
                Err(_) => failed(format!(
                    "the file-rights check did not finish in {:?}",
                    run.timeout
                )),
            }
        }
        Spec::PackageInstall(spec) => packages::run(&spec, &run).await,
        Spec::Repository(spec) => repository::run(&spec, &run).await,
        Spec::SystemUser(spec) => system_user::run(&spec, &run).await,
        Spec::GetUrl(spec) => get_url::run(&spec, &run).await,
    }
}

/// Run a command WITHOUT a shell (see [`crate::command::run`]): an error when it could not
/// start or was killed at the timeout.
pub async fn run_command(
    argv: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<CommandOutput, String> {
    let ran = crate::command::run(argv, env, timeout).await?;
    if ran.timed_out {
        return Err(format!(
            "`{}` did not finish in {timeout:?} and was killed",
            argv.first().copied().unwrap_or_default()
        ));
    }
    Ok(CommandOutput {
        code: ran.code,
        stdout: ran.stdout,
        stderr: ran.stderr,
    })
}

/// A rule's parameters once checked: one typed spec per rule type.
enum Spec {
    FileRights(file_rights::Spec),
    PackageInstall(packages::Spec),
    Repository(repository::Spec),
    SystemUser(system_user::Spec),
    GetUrl(get_url::Spec),
}

impl Spec {
    fn parse(kind: &str, parameters: &Value) -> Result<Spec, String> {
        Ok(match kind {
            "file-rights" => Spec::FileRights(file_rights::Spec::parse(parameters)?),
            "package-install" => Spec::PackageInstall(packages::Spec::parse(parameters)?),
            "repository" => Spec::Repository(repository::Spec::parse(parameters)?),
            "system-user" => Spec::SystemUser(system_user::Spec::parse(parameters)?),
            "get-url" => Spec::GetUrl(get_url::Spec::parse(parameters)?),
            other => {
                return Err(format!(
                    "unknown compliance rule type `{other}`: use one of {}",
                    KINDS.join(", ")
                ));
            }
        })
    }
}

/// An `Error` outcome with one line.
fn failed(text: impl Into<String>) -> Outcome {
    Outcome {
        state: RuleState::Error,
        infos: vec![Info::error(text)],
    }
}

/// The state a run ends in: any error left → Error; else something fixed → Fixed; else Compliant.
fn final_state(error: bool, fixed: bool) -> RuleState {
    if error {
        RuleState::Error
    } else if fixed {
        RuleState::Fixed
    } else {
        RuleState::Compliant
    }
}

/// A rule's `parameters` being read. Unknown keys are refused: a misspelt `permision` would
/// otherwise leave the host unchecked while the rule says COMPLIANT.
struct Params<'a> {
    kind: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    fn new(kind: &'static str, value: &'a Value, known: &[&str]) -> Result<Params<'a>, String> {
        let Some(map) = value.as_object() else {
            return Err(format!(
                "{kind}: the parameters must be a mapping, not {}",
                json_type(value)
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "{kind}: unknown parameter `{unknown}` (known: {})",
                known.join(", ")
            ));
        }
        Ok(Params { kind, map })
    }

    /// The value of `key`; a YAML null (`key:` with nothing) counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(format!(
                "{}: `{key}` must be a string, not {}",
                self.kind,
                json_type(other)
            )),
        }
    }

    fn str_req(&self, key: &str) -> Result<&'a str, String> {
        match self.str_opt(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            _ => Err(format!("{}: `{key}` is missing", self.kind)),
        }
    }

    /// A string or a whole number, as text (`owner: 0` and `owner: "root"` alike).
    fn text_opt(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
            Some(other) => Err(format!(
                "{}: `{key}` must be a name or a whole number, not {}",
                self.kind,
                json_type(other)
            )),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!(
                "{}: `{key}` must be true or false, not {}",
                self.kind,
                json_type(other)
            )),
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Longest package name accepted.
const MAX_PACKAGE_NAME: usize = 128;

/// A package name as Debian, RPM and apk write them (`^[a-zA-Z0-9][a-zA-Z0-9.+_:~-]*$`): no
/// option (`-y`), no shell text, no version constraint.
pub(crate) fn check_package_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || ".+_:~-".contains(c));
    if !first_ok || !rest_ok || name.len() > MAX_PACKAGE_NAME {
        return Err(format!(
            "`{}` is not a valid package name: letters, digits and . + _ : ~ - only, starting \
             with a letter or digit, at most {MAX_PACKAGE_NAME} characters",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Longest user or group name accepted (useradd's own limit).
const MAX_USER_NAME: usize = 32;

/// A user or group name as useradd accepts it by default (`^[a-z_][a-z0-9_-]*[$]?$`).
pub(crate) fn check_user_name(what: &str, name: &str) -> Result<(), String> {
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
    if !first_ok || !rest_ok || name.len() > MAX_USER_NAME {
        return Err(format!(
            "`{}` is not a valid {what} name: lowercase letters, digits, _ and - only, starting \
             with a letter or _, an optional final $, at most {MAX_USER_NAME} characters",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// A repository name (`[A-Za-z0-9._-]+`, not `.` or `..`): it names a file.
pub(crate) fn check_repository_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(format!(
            "`{}` is not a valid repository name: letters, digits, . _ and - only",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// An absolute path without NUL or line breaks (which would cut a passwd or config line).
pub(crate) fn check_absolute_path(what: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{what} `{}` is not an absolute path",
            path.escape_debug()
        ));
    }
    if path.chars().any(|c| c == '\0' || c == '\n' || c == '\r') {
        return Err(format!(
            "{what} `{}` has a NUL or a line break",
            path.escape_debug()
        ));
    }
    Ok(())
}

/// Text that goes on one line of a config file: no control characters.
fn check_one_line(what: &str, text: &str) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{what} `{}` has control characters (line breaks...)",
            text.escape_debug()
        ));
    }
    Ok(())
}

/// Why a command failed, in one line: its exit and the end of what it said.
fn command_failure(argv: &[&str], out: &CommandOutput) -> String {
    let said = if out.stderr.trim().is_empty() {
        out.stdout.trim()
    } else {
        out.stderr.trim()
    };
    // The end of the output is where package managers say what went wrong.
    let tail: String = {
        let chars: Vec<char> = said.chars().collect();
        let start = chars.len().saturating_sub(600);
        chars[start..].iter().collect()
    };
    let exit = match out.code {
        Some(code) => format!("exited with {code}"),
        None => "was killed by a signal".to_owned(),
    };
    format!(
        "`{}` {exit}: {}",
        argv.join(" "),
        tail.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// An HTTP client for downloads (packages' keys, get-url), like the HTTP checks' one: rustls
/// with ring, certificates verified, at most 5 redirects.
fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    // Idempotent; the binary does it first thing, tests and other embedders may not have.
    crate::install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

/// GET `url` into memory: at most `cap` bytes, the whole exchange within `timeout`.
async fn fetch_capped(url: &str, cap: usize, timeout: Duration) -> Result<Vec<u8>, String> {
    let client = http_client(timeout)?;
    let exchange = async {
        let mut answer = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot download {url}: {}", crate::host::error_chain(&e)))?;
        if !answer.status().is_success() {
            return Err(format!("cannot download {url}: HTTP {}", answer.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| format!("cannot download {url}: {}", crate::host::error_chain(&e)))?
        {
            if body.len().saturating_add(chunk.len()) > cap {
                return Err(format!("{url} is bigger than {cap} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("cannot download {url}: no complete answer within {timeout:?}"))?
}

/// A temp file's name beside `dest`: hidden, unique to this process and run.
fn temp_path_for(dest: &Path) -> std::path::PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    dest.with_file_name(format!(
        ".{name}.opsbro-{}-{nonce:016x}.tmp",
        std::process::id()
    ))
}

/// Removes a temp file when dropped (an error, a timeout, a cancelled run), unless disarmed
/// once it was renamed into place.
struct TempFileGuard(Option<std::path::PathBuf>);

impl TempFileGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Write `content` to `path` atomically (a temp file beside it, synced, then renamed), mode
/// 0644, creating the parent directories: readers see the old file or the new one, never half.
async fn write_atomically(path: &Path, content: &[u8]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let temp = temp_path_for(path);
    let mut guard = TempFileGuard(Some(temp.clone()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp)
        .await
        .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    file.write_all(content)
        .await
        .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    file.sync_all()
        .await
        .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    drop(file);
    tokio::fs::rename(&temp, path).await.map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            temp.display(),
            path.display()
        )
    })?;
    guard.disarm();
    Ok(())
}

/// A tiny HTTP/1.1 server for the download tests (keys, get-url).
#[cfg(test)]
pub(crate) mod test_http {
    use std::io::{Read, Write};

    /// Serve `files` (path → body; 404 for any other path) on 127.0.0.1 from a thread that lives
    /// as long as the test process; the base URL (`http://127.0.0.1:PORT`).
    pub(crate) fn serve(files: Vec<(&'static str, Vec<u8>)>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => ("200 OK", body.as_slice()),
                    None => ("404 Not Found", &b"not found"[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hostile_package_names_are_refused() {
        for bad in [
            "-y; rm -rf /",
            "-y",
            "--allow-unauthenticated",
            "nginx rm",
            "a;b",
            "$(reboot)",
            "`id`",
            "",
            "a/b",
            "pkg=1.0",
        ] {
            let e = check_package_name(bad).expect_err(bad);
            assert!(e.contains("is not a valid package name"), "{e}");
        }
        let long = "a".repeat(129);
        assert!(check_package_name(&long).is_err());
        for good in [
            "hello",
            "libc6:amd64",
            "g++",
            "python3.11",
            "nginx-full",
            "a~b_c",
        ] {
            assert_eq!(check_package_name(good), Ok(()), "{good}");
        }
        let e = validate(
            "package-install",
            &json!({"packages": ["nginx", "-y; rm -rf /"]}),
        )
        .expect_err("hostile");
        assert_eq!(
            e,
            "package-install: `-y; rm -rf /` is not a valid package name: letters, digits and \
             . + _ : ~ - only, starting with a letter or digit, at most 128 characters"
        );
    }

    #[tokio::test]
    async fn a_run_with_a_hostile_name_runs_nothing() {
        let parameters = json!({"packages": "-y; rm -rf /"});
        let outcome = run(RuleRun {
            kind: "package-install",
            parameters: &parameters,
            mode: Mode::Enforcing,
            root: Path::new("/"),
            timeout: Duration::from_secs(5),
            distro: Some("debian"),
        })
        .await;
        assert_eq!(outcome.state, RuleState::Error);
        assert_eq!(outcome.infos.len(), 1);
        assert!(
            outcome.infos[0]
                .text
                .starts_with("package-install: `-y; rm -rf /` is not a valid package name"),
            "{:?}",
            outcome.infos
        );
    }

    #[test]
    fn bad_user_names_are_refused() {
        for bad in [
            "Root",
            "-r",
            "1abc",
            "a b",
            "a:b",
            "a$b",
            "",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(check_user_name("user", bad).is_err(), "{bad}");
        }
        for good in ["ftp", "_apt", "www-data", "opsbro-test-123", "host$", "a_1"] {
            assert_eq!(check_user_name("user", good), Ok(()), "{good}");
        }
        let e = validate("system-user", &json!({"name": "Bad Name"})).expect_err("bad");
        assert!(
            e.starts_with("system-user: `Bad Name` is not a valid user name"),
            "{e}"
        );
    }

    #[test]
    fn unknown_types_missing_and_unknown_parameters_are_refused() {
        assert_eq!(
            validate("cron", &json!({})),
            Err(
                "unknown compliance rule type `cron`: use one of file-rights, package-install, \
                 repository, system-user, get-url"
                    .to_owned()
            )
        );
        assert_eq!(
            validate("file-rights", &json!({"owner": "root"})),
            Err("file-rights: `file` is missing".to_owned())
        );
        assert_eq!(
            validate("get-url", &json!({"url": "http://x/a.tgz"})),
            Err("get-url: `dest_directory` is missing".to_owned())
        );
        assert_eq!(
            validate("repository", &json!({"name": "x"})),
            Err("repository: `url` is missing".to_owned())
        );
        assert_eq!(
            validate("package-install", &json!({})),
            Err("package-install: `packages` is missing".to_owned())
        );
        assert_eq!(
            validate("system-user", &json!({"uid": 5})),
            Err("system-user: `name` is missing".to_owned())
        );
        assert_eq!(
            validate(
                "file-rights",
                &json!({"file": "/etc/passwd", "permision": 644})
            ),
            Err(
                "file-rights: unknown parameter `permision` (known: file, owner, group, \
                 permissions, follow_symlinks)"
                    .to_owned()
            )
        );
        assert_eq!(
            validate("file-rights", &json!(["file"])),
            Err("file-rights: the parameters must be a mapping, not a list".to_owned())
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert_eq!(
            validate(
                "file-rights",
                &json!({"file": "etc/passwd", "owner": "root"})
            ),
            Err("file-rights: file `etc/passwd` is not an absolute path".to_owned())
        );
        assert_eq!(
            validate(
                "get-url",
                &json!({"url": "http://x/a.tgz", "dest_directory": "tmp"})
            ),
            Err("get-url: dest_directory `tmp` is not an absolute path".to_owned())
        );
        assert_eq!(
            validate("system-user", &json!({"name": "ftp", "shell": "bash"})),
            Err("system-user: shell `bash` is not an absolute path".to_owned())
        );
        assert_eq!(
            validate(
                "system-user",
                &json!({"name": "ftp", "home_dir": "/srv/ftp\nx"})
            ),
            Err("system-user: home_dir `/srv/ftp\\nx` has a NUL or a line break".to_owned())
        );
        assert_eq!(
            validate(
                "repository",
                &json!({"name": "r", "url": "http://x d main", "key": "k.asc"})
            ),
            Err("repository: `key` must be an http(s) URL or an absolute path: `k.asc`".to_owned())
        );
    }

    #[test]
    fn repository_names_are_file_names() {
        for bad in ["..", ".", "a/b", "a b", "", "x;y"] {
            assert!(check_repository_name(bad).is_err(), "{bad}");
        }
        assert_eq!(check_repository_name("mongodb-org-3.6"), Ok(()));
    }

    #[tokio::test]
    async fn commands_run_without_a_shell_with_env_and_exit_code() {
        let out = run_command(
            &[
                "/bin/sh",
                "-c",
                "printf '%s' \"$OPSBRO_X\"; echo err >&2; exit 3",
            ],
            &[("OPSBRO_X", "a;b $(id)")],
            Duration::from_secs(30),
        )
        .await
        .expect("ran");
        assert_eq!(
            out,
            CommandOutput {
                code: Some(3),
                stdout: "a;b $(id)".to_owned(),
                stderr: "err\n".to_owned(),
            }
        );
        // An argument is one argument, whatever it holds.
        let out = run_command(&["echo", "-y; rm -rf /"], &[], Duration::from_secs(30))
            .await
            .expect("ran");
        assert_eq!(out.stdout, "-y; rm -rf /\n");
        let e = run_command(&["/nonexistent/opsbro"], &[], Duration::from_secs(30))
            .await
            .expect_err("missing");
        assert!(e.starts_with("cannot run `/nonexistent/opsbro`"), "{e}");
        assert_eq!(
            run_command(&[], &[], Duration::from_secs(1)).await,
            Err("no command to run".to_owned())
        );
    }

    #[tokio::test]
    async fn command_output_is_capped() {
        let out = run_command(
            &["head", "-c", "200000", "/dev/zero"],
            &[],
            Duration::from_secs(30),
        )
        .await
        .expect("ran");
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout.len(), MAX_COMMAND_OUTPUT);
    }

    #[tokio::test]
    async fn a_command_whose_daemon_keeps_its_pipes_still_returns_when_it_exits() {
        // The background sleep inherits stdout and outlives the shell (as a service started by
        // a package's postinst would): the command is over when the shell exits.
        let out = run_command(
            &["/bin/sh", "-c", "sleep 300 & echo $!; exit 7"],
            &[],
            Duration::from_secs(120),
        )
        .await
        .expect("returned at the exit, not at the timeout");
        assert_eq!(out.code, Some(7));
        let pid: i32 = out.stdout.trim().parse().expect("the daemon's pid");
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("child.pid");
        let pid_path = pid_file.to_str().expect("utf-8");
        // The shell starts a child that writes its pid, then waits on it; the timeout must take
        // both.
        let e = run_command(
            &[
                "/bin/sh",
                "-c",
                "sleep 300 & echo $! > \"$1\"; wait",
                "sh",
                pid_path,
            ],
            &[],
            Duration::from_secs(3),
        )
        .await
        .expect_err("timed out");
        assert_eq!(e, "`/bin/sh` did not finish in 3s and was killed");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid written")
            .trim()
            .parse()
            .expect("pid");
        // The kill is sent before run_command returns; wait for the kernel to reap the child
        // (its parent shell died, so init reaps it) with a deadline, not a fixed sleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let gone = loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            // Gone, or a zombie (`Z`) waiting for its reaper: either way no longer running.
            let alive = state.is_some_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            });
            if !alive {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(gone, "the child {pid} outlived the timeout");
    }
}
