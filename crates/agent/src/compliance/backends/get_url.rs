//! `get-url`: a file downloaded into a directory, checked against the hashes the rule gives.
//!
//! The download goes to a temp file beside the destination and is renamed into place only once
//! every hash matched: the destination is the old file or the verified new one, never a part.

use std::path::PathBuf;

use serde_json::Value;
use sha2::Digest;
use sha2::digest::DynDigest;

use super::{
    Params, RuleRun, TempFileGuard, check_absolute_path, failed, final_state, http_client,
    temp_path_for,
};
use crate::compliance::types::{Info, Mode, Outcome, RuleState};

/// Largest download accepted.
const MAX_DOWNLOAD: u64 = 1024 * 1024 * 1024;

/// A hash a rule can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HashKind {
    Sha256,
    Sha1,
    Md5,
}

impl HashKind {
    const ALL: [HashKind; 3] = [HashKind::Sha256, HashKind::Sha1, HashKind::Md5];

    /// The parameter that gives it, and the word in messages.
    fn key(self) -> &'static str {
        match self {
            HashKind::Sha256 => "sha256",
            HashKind::Sha1 => "sha1",
            HashKind::Md5 => "md5",
        }
    }

    /// Its length in hex digits.
    fn hex_len(self) -> usize {
        match self {
            HashKind::Sha256 => 64,
            HashKind::Sha1 => 40,
            HashKind::Md5 => 32,
        }
    }

    fn hasher(self) -> Box<dyn DynDigest + Send> {
        match self {
            HashKind::Sha256 => Box::new(sha2::Sha256::new()),
            HashKind::Sha1 => Box::new(sha1::Sha1::new()),
            HashKind::Md5 => Box::new(md5::Md5::new()),
        }
    }
}

/// The hashes being computed over a stream, one per kind the rule gives.
struct Hashers(Vec<(HashKind, Box<dyn DynDigest + Send>)>);

impl Hashers {
    fn new(wanted: &[(HashKind, String)]) -> Hashers {
        Hashers(wanted.iter().map(|(k, _)| (*k, k.hasher())).collect())
    }

    fn update(&mut self, bytes: &[u8]) {
        for (_, h) in &mut self.0 {
            h.update(bytes);
        }
    }

    fn finish(self) -> Vec<(HashKind, String)> {
        self.0
            .into_iter()
            .map(|(k, h)| (k, hex(&h.finalize())))
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A checked `get-url` rule.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// As the rule wrote it (for messages).
    url_text: String,
    url: reqwest::Url,
    dest_directory: PathBuf,
    /// `dest_directory` + the URL path's last segment.
    dest: PathBuf,
    /// Lowercase hex.
    hashes: Vec<(HashKind, String)>,
}

impl Spec {
    pub(super) fn parse(parameters: &Value) -> Result<Spec, String> {
        let p = Params::new(
            "get-url",
            parameters,
            &["url", "dest_directory", "sha256", "sha1", "md5"],
        )?;
        let url_text = p.str_req("url")?.trim();
        let url = reqwest::Url::parse(url_text)
            .map_err(|e| format!("get-url: `url` `{url_text}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "get-url: `url` `{url_text}` must be an http:// or https:// URL"
            ));
        }
        let file_name = file_name(&url).ok_or_else(|| {
            format!("get-url: `url` `{url_text}` does not end with a file name to save it as")
        })?;
        let dest_directory = p.str_req("dest_directory")?;
        check_absolute_path("get-url: dest_directory", dest_directory)?;
        let mut hashes = Vec::new();
        for kind in HashKind::ALL {
            if let Some(given) = p.str_opt(kind.key())? {
                let given = given.trim().to_ascii_lowercase();
                if given.len() != kind.hex_len() || !given.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!(
                        "get-url: `{}` must be {} hex digits, not `{given}`",
                        kind.key(),
                        kind.hex_len()
                    ));
                }
                hashes.push((kind, given));
            }
        }
        let dest_directory = PathBuf::from(dest_directory);
        Ok(Spec {
            url_text: url_text.to_owned(),
            dest: dest_directory.join(file_name),
            url,
            dest_directory,
            hashes,
        })
    }
}

/// The last segment of the URL's path, as the original took it (not decoded): refused when
/// empty, `.` or `..`.
pub(crate) fn file_name(url: &reqwest::Url) -> Option<String> {
    let last = url.path_segments()?.next_back()?;
    if last.is_empty() || last == "." || last == ".." || last.len() > 255 {
        return None;
    }
    Some(last.to_owned())
}

/// The lines for hashes that differ (`the file X sha256 hash GOT did not match defined one:
/// WANT`), none when all match.
fn mismatches(
    what: &str,
    wanted: &[(HashKind, String)],
    got: &[(HashKind, String)],
) -> Vec<String> {
    wanted
        .iter()
        .zip(got)
        .filter(|((_, want), (_, have))| want != have)
        .map(|((kind, want), (_, have))| {
            format!(
                "the file {what} {} hash {have} did not match defined one: {want}",
                kind.key()
            )
        })
        .collect()
}

/// Hash a file already there (blocking: run off the runtime).
fn hash_file(
    path: &std::path::Path,
    wanted: &[(HashKind, String)],
) -> std::io::Result<Vec<(HashKind, String)>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hashers = Hashers::new(wanted);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hashers.finish());
        }
        hashers.update(&buf[..n]);
    }
}

pub(super) async fn run(spec: &Spec, run: &RuleRun<'_>) -> Outcome {
    let url = &spec.url_text;
    let dest = spec.dest.display().to_string();
    let mut infos = Vec::new();
    match tokio::fs::metadata(&spec.dest).await {
        Ok(meta) if meta.is_file() => {
            let present = format!("The file at {url} is already present at {dest}");
            if spec.hashes.is_empty() {
                return Outcome {
                    state: RuleState::Compliant,
                    infos: vec![Info::compliant(present)],
                };
            }
            let path = spec.dest.clone();
            let wanted = spec.hashes.clone();
            let got = match tokio::task::spawn_blocking(move || hash_file(&path, &wanted)).await {
                Ok(Ok(got)) => got,
                Ok(Err(e)) => return failed(format!("Cannot read {dest}: {e}")),
                Err(e) => return failed(format!("Cannot read {dest}: {e}")),
            };
            let bad = mismatches(&dest, &spec.hashes, &got);
            if bad.is_empty() {
                return Outcome {
                    state: RuleState::Compliant,
                    infos: vec![Info::compliant(present)],
                };
            }
            infos.extend(bad.into_iter().map(Info::error));
        }
        Ok(_) => return failed(format!("{dest} exists but is not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            infos.push(Info::error(format!(
                "The file {url} is not present at {dest}"
            )));
        }
        Err(e) => return failed(format!("Cannot look at {dest}: {e}")),
    }
    if run.mode == Mode::Audit {
        return Outcome {
            state: RuleState::Error,
            infos,
        };
    }
    if let Err(e) = tokio::fs::create_dir_all(&spec.dest_directory).await {
        infos.push(Info::error(format!(
            "Cannot create {}: {e}",
            spec.dest_directory.display()
        )));
        return Outcome {
            state: RuleState::Error,
            infos,
        };
    }
    match download(spec, run.timeout).await {
        Ok(()) => {
            infos.push(Info::fix(format!(
                "The file at {url} was downloaded at {dest}"
            )));
            Outcome {
                state: final_state(false, true),
                infos,
            }
        }
        Err(errors) => {
            infos.extend(errors.into_iter().map(Info::error));
            Outcome {
                state: RuleState::Error,
                infos,
            }
        }
    }
}

/// Download into a temp file beside the destination, verify, rename. The temp file goes away
/// on any failure, at the timeout, and if this future is dropped.
async fn download(spec: &Spec, timeout: std::time::Duration) -> Result<(), Vec<String>> {
    use tokio::io::AsyncWriteExt;
    let url = &spec.url_text;
    let client = http_client(timeout).map_err(|e| vec![e])?;
    let temp = temp_path_for(&spec.dest);
    let mut guard = TempFileGuard(Some(temp.clone()));
    let work = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)
            .await
            .map_err(|e| vec![format!("Cannot create {}: {e}", temp.display())])?;
        let cannot = |e: &reqwest::Error| {
            vec![format!(
                "Cannot download {url}: {}",
                crate::host::error_chain(e)
            )]
        };
        let mut answer = client
            .get(spec.url.clone())
            .send()
            .await
            .map_err(|e| cannot(&e))?;
        if !answer.status().is_success() {
            return Err(vec![format!(
                "Cannot download {url}: HTTP {}",
                answer.status()
            )]);
        }
        let too_big = || {
            vec![format!(
                "The file {url} is bigger than 1 GiB: not downloaded"
            )]
        };
        if answer.content_length().is_some_and(|n| n > MAX_DOWNLOAD) {
            return Err(too_big());
        }
        let mut hashers = Hashers::new(&spec.hashes);
        let mut total: u64 = 0;
        while let Some(chunk) = answer.chunk().await.map_err(|e| cannot(&e))? {
            total = total.saturating_add(chunk.len() as u64);
            if total > MAX_DOWNLOAD {
                return Err(too_big());
            }
            hashers.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| vec![format!("Cannot write {}: {e}", temp.display())])?;
        }
        file.sync_all()
            .await
            .map_err(|e| vec![format!("Cannot write {}: {e}", temp.display())])?;
        drop(file);
        let bad = mismatches(url, &spec.hashes, &hashers.finish());
        if !bad.is_empty() {
            return Err(bad);
        }
        tokio::fs::rename(&temp, &spec.dest).await.map_err(|e| {
            vec![format!(
                "Cannot rename {} to {}: {e}",
                temp.display(),
                spec.dest.display()
            )]
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => {
            guard.disarm();
            Ok(())
        }
        Ok(Err(errors)) => Err(errors),
        Err(_) => Err(vec![format!(
            "Cannot download {url}: not finished within {timeout:?}"
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::types::InfoKind;
    use serde_json::json;
    use std::time::Duration;

    const PAYLOAD: &[u8] = b"opsbro get-url test payload\n";

    fn sha256_hex(bytes: &[u8]) -> String {
        hex(&sha2::Sha256::digest(bytes))
    }

    fn texts(o: &Outcome) -> Vec<(InfoKind, String)> {
        o.infos.iter().map(|i| (i.kind, i.text.clone())).collect()
    }

    async fn get(parameters: &Value, mode: Mode) -> Outcome {
        super::super::run(RuleRun {
            kind: "get-url",
            parameters,
            mode,
            root: std::path::Path::new("/"),
            timeout: Duration::from_secs(60),
            distro: None,
        })
        .await
    }

    fn entries(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn urls_name_the_file_and_hashes_are_hex() {
        let name = |u: &str| file_name(&reqwest::Url::parse(u).expect("url"));
        assert_eq!(
            name("http://x/files/tool-1.2.tar.gz"),
            Some("tool-1.2.tar.gz".into())
        );
        assert_eq!(name("https://x/a/b?x=1#f"), Some("b".into()));
        assert_eq!(name("http://x/"), None);
        assert_eq!(name("http://x"), None);
        assert_eq!(name("http://x/a/.."), None);
        assert_eq!(name("http://x/a/%2e%2e"), None);
        let check = |p: Value| Spec::parse(&p).map(|_| ());
        assert_eq!(
            check(json!({"url": "ftp://x/a", "dest_directory": "/tmp"})),
            Err("get-url: `url` `ftp://x/a` must be an http:// or https:// URL".to_owned())
        );
        assert_eq!(
            check(json!({"url": "http://x/", "dest_directory": "/tmp"})),
            Err(
                "get-url: `url` `http://x/` does not end with a file name to save it as".to_owned()
            )
        );
        assert_eq!(
            check(json!({"url": "http://x/a", "dest_directory": "/tmp", "md5": "abc"})),
            Err("get-url: `md5` must be 32 hex digits, not `abc`".to_owned())
        );
        let spec = Spec::parse(&json!({
            "url": "http://x/a",
            "dest_directory": "/opt/dl",
            "sha1": "DA39A3EE5E6B4B0D3255BFEF95601890AFD80709",
        }))
        .expect("valid");
        assert_eq!(spec.dest, PathBuf::from("/opt/dl/a"));
        assert_eq!(
            spec.hashes,
            vec![(
                HashKind::Sha1,
                "da39a3ee5e6b4b0d3255bfef95601890afd80709".to_owned()
            )]
        );
    }

    #[tokio::test]
    async fn a_verified_download_lands_and_audits_compliant() {
        let base = super::super::test_http::serve(vec![("/files/tool.bin", PAYLOAD.to_vec())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest_dir = dir.path().join("new/sub");
        let url = format!("{base}/files/tool.bin");
        let dest = dest_dir.join("tool.bin");
        let parameters = json!({
            "url": url,
            "dest_directory": dest_dir.display().to_string(),
            "sha256": sha256_hex(PAYLOAD).to_uppercase(),
            "sha1": hex(&sha1::Sha1::digest(PAYLOAD)),
            "md5": hex(&md5::Md5::digest(PAYLOAD)),
        });

        let audit = get(&parameters, Mode::Audit).await;
        assert_eq!(
            audit,
            Outcome {
                state: RuleState::Error,
                infos: vec![Info::error(format!(
                    "The file {url} is not present at {}",
                    dest.display()
                ))],
            }
        );
        assert!(!dest_dir.exists(), "audit must not create the directory");

        let fix = get(&parameters, Mode::Enforcing).await;
        assert_eq!(fix.state, RuleState::Fixed, "{fix:?}");
        assert_eq!(
            texts(&fix)[1],
            (
                InfoKind::Fix,
                format!("The file at {url} was downloaded at {}", dest.display())
            )
        );
        assert_eq!(std::fs::read(&dest).expect("downloaded"), PAYLOAD);
        assert_eq!(entries(&dest_dir), vec!["tool.bin".to_owned()]);

        let audit = get(&parameters, Mode::Audit).await;
        assert_eq!(
            audit,
            Outcome {
                state: RuleState::Compliant,
                infos: vec![Info::compliant(format!(
                    "The file at {url} is already present at {}",
                    dest.display()
                ))],
            }
        );
    }

    #[tokio::test]
    async fn a_hash_mismatch_leaves_no_file() {
        let base = super::super::test_http::serve(vec![("/files/tool.bin", PAYLOAD.to_vec())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("{base}/files/tool.bin");
        let wrong = "0".repeat(64);
        let parameters = json!({
            "url": url,
            "dest_directory": dir.path().display().to_string(),
            "sha256": wrong,
        });
        let fix = get(&parameters, Mode::Enforcing).await;
        assert_eq!(fix.state, RuleState::Error);
        assert_eq!(
            texts(&fix)[1],
            (
                InfoKind::Error,
                format!(
                    "the file {url} sha256 hash {} did not match defined one: {wrong}",
                    sha256_hex(PAYLOAD)
                )
            )
        );
        assert_eq!(
            entries(dir.path()),
            Vec::<String>::new(),
            "no dest, no temp"
        );

        // A 404 leaves nothing either.
        let missing = json!({
            "url": format!("{base}/files/nothing.bin"),
            "dest_directory": dir.path().display().to_string(),
        });
        let fix = get(&missing, Mode::Enforcing).await;
        assert_eq!(fix.state, RuleState::Error);
        assert_eq!(
            texts(&fix)[1],
            (
                InfoKind::Error,
                format!("Cannot download {base}/files/nothing.bin: HTTP 404 Not Found")
            )
        );
        assert_eq!(entries(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_present_file_with_the_wrong_hash_is_downloaded_again() {
        let base = super::super::test_http::serve(vec![("/files/tool.bin", PAYLOAD.to_vec())]);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("tool.bin");
        std::fs::write(&dest, b"stale").expect("write");
        let parameters = json!({
            "url": format!("{base}/files/tool.bin"),
            "dest_directory": dir.path().display().to_string(),
            "sha256": sha256_hex(PAYLOAD),
        });
        let audit = get(&parameters, Mode::Audit).await;
        assert_eq!(
            texts(&audit),
            vec![(
                InfoKind::Error,
                format!(
                    "the file {} sha256 hash {} did not match defined one: {}",
                    dest.display(),
                    sha256_hex(b"stale"),
                    sha256_hex(PAYLOAD)
                )
            )]
        );
        assert_eq!(std::fs::read(&dest).expect("kept"), b"stale");
        let fix = get(&parameters, Mode::Enforcing).await;
        assert_eq!(fix.state, RuleState::Fixed, "{fix:?}");
        assert_eq!(std::fs::read(&dest).expect("replaced"), PAYLOAD);
        assert_eq!(
            get(&parameters, Mode::Audit).await.state,
            RuleState::Compliant
        );
    }
}
