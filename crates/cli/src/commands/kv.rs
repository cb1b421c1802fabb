//! `opsbro kv get|put|delete|list|wait-exists|locate|export|import`.

use std::io::{Read, Write};
use std::time::Instant;

use base64::Engine as _;
use opsbro_api::kv::{Entry, Location, Written};

use crate::client::Client;
use crate::commands::gossip::encode;
use crate::commands::{secs, to_json};
use crate::error::CliError;
use crate::render;

/// A key as a URL path (each segment percent-encoded, `/` kept).
fn key_path(key: &str) -> String {
    format!(
        "/kv/{}",
        key.split('/').map(encode).collect::<Vec<_>>().join("/")
    )
}

/// `kv get`.
pub async fn get(client: &Client, key: &str, raw: bool, json: bool) -> Result<(), CliError> {
    let path = key_path(key);
    if raw {
        let bytes = client.get_bytes(&format!("{path}?raw")).await?;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)
            .and_then(|()| out.flush())
            .map_err(|e| CliError::Other(e.into()))?;
        return Ok(());
    }
    let entry: Entry = client.get(&path).await?;
    if json {
        println!("{}", to_json(&entry)?);
        return Ok(());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&entry.value)
        .map_err(|e| CliError::Other(e.into()))?;
    println!("{}", String::from_utf8_lossy(&bytes));
    Ok(())
}

/// `kv put`.
pub async fn put(
    client: &Client,
    key: &str,
    value: &str,
    cas: Option<u64>,
    ttl: Option<String>,
) -> Result<(), CliError> {
    let bytes = if value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Other(e.into()))?;
        buf
    } else {
        value.as_bytes().to_vec()
    };
    let mut query = Vec::new();
    if let Some(c) = cas {
        query.push(format!("cas={c}"));
    }
    if let Some(t) = ttl {
        query.push(format!("ttl={}", encode(&t)));
    }
    let path = if query.is_empty() {
        key_path(key)
    } else {
        format!("{}?{}", key_path(key), query.join("&"))
    };
    let w: Written = client.put_bytes(&path, bytes).await?;
    println!("{} written (modify_index {})", w.key, w.modify_index);
    Ok(())
}

/// `kv delete`.
pub async fn delete(client: &Client, key: &str, cas: Option<u64>) -> Result<(), CliError> {
    let path = match cas {
        Some(c) => format!("{}?cas={c}", key_path(key)),
        None => key_path(key),
    };
    let w: Written = client.delete(&path).await?;
    println!("{} deleted (modify_index {})", w.key, w.modify_index);
    Ok(())
}

/// `kv list`.
pub async fn list(client: &Client, prefix: Option<String>, json: bool) -> Result<(), CliError> {
    let entries: Vec<Entry> = client
        .get(&format!(
            "/kv/?prefix={}",
            encode(prefix.as_deref().unwrap_or(""))
        ))
        .await?;
    if json {
        println!("{}", to_json(&entries)?);
        return Ok(());
    }
    for e in &entries {
        println!("{}", e.key);
    }
    Ok(())
}

/// `kv wait-exists`.
pub async fn wait_exists(client: &Client, key: &str, timeout: f64) -> Result<(), CliError> {
    let deadline = Instant::now() + secs(timeout);
    let path = key_path(key);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A blocking read: answers as soon as the key is written.
        let wait = format!("{path}?index=0&wait={}ms", left.as_millis().max(1));
        match client.get::<Entry>(&wait).await {
            Ok(e) => {
                println!("{} exists (modify_index {})", e.key, e.modify_index);
                return Ok(());
            }
            Err(CliError::Api { status: 404, .. }) if Instant::now() < deadline => {}
            Err(CliError::Api { status: 404, .. }) => {
                return Err(CliError::Negative(format!(
                    "{key} does not exist after {timeout}s"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `kv locate`.
pub async fn locate(client: &Client, key: &str, json: bool) -> Result<(), CliError> {
    let loc: Location = client.get(&format!("{}?locate", key_path(key))).await?;
    if json {
        println!("{}", to_json(&loc)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = loc
        .owners
        .iter()
        .enumerate()
        .map(|(i, o)| {
            vec![
                if i == 0 { "coordinator" } else { "replica" }.to_owned(),
                o.name.clone(),
                o.addr.to_string(),
                o.uuid.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(&["ROLE", "NODE", "ADDRESS", "UUID"], &rows)
    );
    Ok(())
}

/// Longest line `kv import` sends (a body holds at least one line).
const MAX_LINE_BYTES: usize = opsbro_api::MAX_BODY_BYTES - 1024;

/// Where `kv export` writes: standard output, or a file made whole or not at all.
enum ExportOutput {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        tmp: std::path::PathBuf,
        path: std::path::PathBuf,
        out: std::io::BufWriter<std::fs::File>,
    },
}

impl ExportOutput {
    fn open(path: Option<&std::path::Path>) -> Result<ExportOutput, CliError> {
        let Some(path) = path else {
            return Ok(ExportOutput::Stdout(std::io::BufWriter::new(
                std::io::stdout(),
            )));
        };
        let name = path
            .file_name()
            .ok_or_else(|| CliError::Usage(format!("{}: not a file name", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
        }
        .map_err(|e| CliError::Other(anyhow::anyhow!("{}: {e}", tmp.display())))?;
        Ok(ExportOutput::File {
            tmp,
            path: path.to_owned(),
            out: std::io::BufWriter::new(file),
        })
    }

    fn line(&mut self, line: &opsbro_api::kv::ExportLine) -> std::io::Result<()> {
        let out: &mut dyn Write = match self {
            ExportOutput::Stdout(o) => o,
            ExportOutput::File { out, .. } => out,
        };
        out.write_all(line.to_line().as_bytes())?;
        out.write_all(b"\n")
    }

    /// Flush (and for a file: sync, rename into place).
    fn finish(self) -> std::io::Result<()> {
        match self {
            ExportOutput::Stdout(mut o) => o.flush(),
            ExportOutput::File { tmp, path, out } => {
                let done = out
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .and_then(|()| std::fs::rename(&tmp, &path));
                if done.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                done
            }
        }
    }

    /// Give up: a file output leaves nothing behind.
    fn abandon(self) {
        if let ExportOutput::File { tmp, out, .. } = self {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// `kv export`: a header line, every entry of the cluster (page by page), an end line.
pub async fn export(
    client: &Client,
    prefix: Option<String>,
    output: Option<std::path::PathBuf>,
) -> Result<(), CliError> {
    use opsbro_api::kv::{
        EXPORT, EXPORT_FORMAT, EXPORT_VERSION, ExportFooter, ExportHeader, ExportLine, ExportPage,
    };
    let prefix = prefix.unwrap_or_default();
    let info: opsbro_api::AgentInfo = client.get(opsbro_api::routes::AGENT_INFO).await?;
    let mut out = ExportOutput::open(output.as_deref())?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let header = ExportLine::Header(ExportHeader {
        format: EXPORT_FORMAT.to_owned(),
        version: EXPORT_VERSION,
        created_ms: started,
        source: info.name,
        prefix: prefix.clone(),
    });
    let mut count: u64 = 0;
    let result: Result<(), CliError> = async {
        let write_err = |e: std::io::Error| CliError::Other(anyhow::anyhow!("writing: {e}"));
        out.line(&header).map_err(write_err)?;
        let mut after = String::new();
        loop {
            let page: ExportPage = client
                .get(&format!(
                    "{EXPORT}?prefix={}&after={}",
                    encode(&prefix),
                    encode(&after)
                ))
                .await?;
            for e in page.entries {
                out.line(&ExportLine::Entry(e)).map_err(write_err)?;
                count += 1;
            }
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
        out.line(&ExportLine::Footer(ExportFooter {
            end: EXPORT_FORMAT.to_owned(),
            entries: count,
        }))
        .map_err(write_err)
    }
    .await;
    let result = match result {
        Ok(()) => out.finish().map_err(|e| CliError::Other(e.into())),
        Err(e) => {
            out.abandon();
            Err(e)
        }
    };
    match result {
        Ok(()) => {
            if let Some(path) = &output {
                eprintln!("{count} entries exported to {}", path.display());
            }
            Ok(())
        }
        Err(e) => Err(CliError::Other(anyhow::anyhow!(
            "the export failed after {count} entries and is not a usable backup{}: {e}",
            if output.is_some() {
                " (no file was written)"
            } else {
                " (what was written has no end line)"
            }
        ))),
    }
}

/// Read one line (without its line ending) into `buf`: None at the end of the input, false
/// when the line is longer than `max` bytes (the rest of it is skipped, never held).
fn next_line(
    input: &mut dyn std::io::BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    use std::io::BufRead as _;
    buf.clear();
    let n = input.take(max as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(true));
    }
    if buf.len() <= max {
        return Ok(Some(true));
    }
    let mut skipped = Vec::new();
    loop {
        skipped.clear();
        let n = input.take(64 * 1024).read_until(b'\n', &mut skipped)?;
        if n == 0 || skipped.last() == Some(&b'\n') {
            return Ok(Some(false));
        }
    }
}

/// `kv import`: check the header, send the entry lines in batches under the API body limit,
/// report bad lines by number, check the end line.
pub async fn import(client: &Client, file: Option<std::path::PathBuf>) -> Result<(), CliError> {
    use opsbro_api::kv::{ExportLine, IMPORT, ImportAnswer, LineError};
    let name = match &file {
        Some(p) if p.as_os_str() != "-" => p.display().to_string(),
        _ => "standard input".to_owned(),
    };
    let mut input: Box<dyn std::io::BufRead> = match &file {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))?,
        )),
        _ => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let read_err = |e: std::io::Error| CliError::Other(anyhow::anyhow!("reading {name}: {e}"));
    let mut line = Vec::new();
    // The header, before anything is sent.
    let header = match next_line(&mut *input, &mut line, MAX_LINE_BYTES).map_err(read_err)? {
        None => return Err(CliError::Usage(format!("{name} is empty"))),
        Some(false) => return Err(CliError::Usage(format!("{name}: line 1 is not a header"))),
        Some(true) => std::str::from_utf8(&line)
            .map_err(|_| "not UTF-8 text".to_owned())
            .and_then(ExportLine::parse),
    };
    match header {
        Ok(ExportLine::Header(h)) => h
            .check()
            .map_err(|why| CliError::Usage(format!("{name}: {why}")))?,
        Ok(_) => {
            return Err(CliError::Usage(format!(
                "{name}: line 1 is not an export header (the file must come from `opsbro kv export`)"
            )));
        }
        Err(why) => return Err(CliError::Usage(format!("{name}: line 1: {why}"))),
    }

    let mut total = ImportAnswer::default();
    fn report(answer: ImportAnswer, total: &mut ImportAnswer) {
        for LineError { line, error } in &answer.errors {
            eprintln!("line {line}: {error}");
        }
        total.imported += answer.imported;
        total.skipped_older += answer.skipped_older;
        total.errors.extend(answer.errors);
    }
    let mut body: Vec<u8> = Vec::new();
    let mut body_first: u64 = 2;
    let mut number: u64 = 1;
    let mut entry_lines: u64 = 0;
    let mut footer: Option<(u64, u64)> = None;
    let send = |body: Vec<u8>, first: u64| async move {
        client
            .post_bytes::<ImportAnswer>(
                &format!("{IMPORT}?line={first}"),
                "application/x-ndjson",
                body,
            )
            .await
            .map_err(|e| {
                CliError::Other(anyhow::anyhow!(
                    "the import stopped at line {first}: {e} (the lines before it were imported; importing the whole file again is safe, newer versions win)"
                ))
            })
    };
    while let Some(fits) = next_line(&mut *input, &mut line, MAX_LINE_BYTES).map_err(read_err)? {
        number += 1;
        let blank = line.iter().all(u8::is_ascii_whitespace);
        let mut keep = fits && !blank;
        if fits && !blank {
            if let Some((end_line, _)) = footer {
                report(
                    ImportAnswer {
                        errors: vec![LineError {
                            line: number,
                            error: format!("after the end line (line {end_line})"),
                        }],
                        ..ImportAnswer::default()
                    },
                    &mut total,
                );
                keep = false;
            } else if line.windows(5).any(|w| w == b"\"end\"")
                && let Ok(ExportLine::Footer(f)) = std::str::from_utf8(&line)
                    .map_err(|_| String::new())
                    .and_then(ExportLine::parse)
            {
                footer = Some((number, f.entries));
                keep = false;
            } else {
                entry_lines += 1;
            }
        } else if !fits {
            entry_lines += 1;
            report(
                ImportAnswer {
                    errors: vec![LineError {
                        line: number,
                        error: format!("longer than {MAX_LINE_BYTES} bytes"),
                    }],
                    ..ImportAnswer::default()
                },
                &mut total,
            );
        }
        // Every line takes its place in the body (an empty one when not sent) so the agent
        // numbers them as the file does.
        let text: &[u8] = if keep { &line } else { b"" };
        if !body.is_empty() && body.len() + text.len() + 1 > opsbro_api::MAX_BODY_BYTES {
            let answer = send(std::mem::take(&mut body), body_first).await?;
            report(answer, &mut total);
        }
        if body.is_empty() {
            body_first = number;
        }
        body.extend_from_slice(text);
        body.push(b'\n');
    }
    if body.iter().any(|b| !b.is_ascii_whitespace()) {
        let answer = send(body, body_first).await?;
        report(answer, &mut total);
    }
    println!(
        "{} imported, {} skipped (the cluster holds a newer version), {} errors",
        total.imported,
        total.skipped_older,
        total.errors.len()
    );
    match footer {
        None => Err(CliError::Negative(format!(
            "{name} has no end line: it is a partial export (the entries it holds were imported)"
        ))),
        Some((_, expected)) if expected != entry_lines => Err(CliError::Negative(format!(
            "{name} has {entry_lines} entry lines but its end line says {expected}: the file was changed or cut"
        ))),
        Some(_) if !total.errors.is_empty() => Err(CliError::Negative(format!(
            "{} lines were not imported (see above)",
            total.errors.len()
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_bounded() {
        let text = b"short\r\n\nthis one is too long\nlast".to_vec();
        let mut input = std::io::Cursor::new(text);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(fits) = next_line(&mut input, &mut buf, 10).expect("read") {
            got.push((fits, String::from_utf8_lossy(&buf).into_owned()));
        }
        assert_eq!(
            got,
            [
                (true, "short".to_owned()),
                (true, String::new()),
                (false, "this one is".to_owned()),
                (true, "last".to_owned()),
            ]
        );
    }
}
