//! Real peers for handler tests: an SMTP server (Python `aiosmtpd`, as installed by
//! `.ci/install-deps.sh`) writing a maildir, and a tiny HTTP server that records requests and
//! answers like Slack's Web API. Both listen on free loopback ports and stop when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{DEADLINE, wait_for};

/// A free loopback TCP port (bound then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A loopback port free for both TCP and UDP, below the kernel's ephemeral range (so no
/// socket bound to port 0 elsewhere can take it after it was chosen): for an agent that must
/// come back on the same port after a restart.
pub fn free_port_outside_ephemeral() -> Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Start at a point that depends on the process, so parallel test runs spread out, and
    // move on at every call, so two tests of one process never get the same port.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let span = low.saturating_sub(10_000).max(1);
    let call = CALLS.fetch_add(97, std::sync::atomic::Ordering::Relaxed);
    let offset = (std::process::id() as u16).wrapping_add(call) % span;
    for i in 0..span {
        let port = 10_000 + (offset + i) % span;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port between 10000 and {low}")
}

/// The Python that has `aiosmtpd`: `$OPSBRO_TEST_PYTHON`, the venv `.ci/install-deps.sh` makes,
/// or `python3`.
pub fn python_with_aiosmtpd() -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("OPSBRO_TEST_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            PathBuf::from("/var/tmp/opsbro-venv/bin/python"),
            PathBuf::from("python3"),
        ])
        .collect();
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(py);
        }
    }
    bail!(
        "no Python with aiosmtpd: run `bash .ci/install-deps.sh` (it creates /var/tmp/opsbro-venv) \
         or set OPSBRO_TEST_PYTHON"
    )
}

/// `python -m aiosmtpd` delivering every mail into a maildir.
pub struct SmtpServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    maildir: tempfile::TempDir,
}

impl SmtpServer {
    /// Start it and wait until it accepts connections.
    pub fn start() -> Result<SmtpServer> {
        let python = python_with_aiosmtpd()?;
        let maildir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &addr.to_string()])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start aiosmtpd")?;
        SmtpServer::ready(child, addr, maildir)
    }

    /// An SMTP server that requires STARTTLS (with `cert`/`key`, PEM) and then AUTH with
    /// `user`/`password` before it takes a mail.
    pub fn start_tls(cert: &Path, key: &Path, user: &str, password: &str) -> Result<SmtpServer> {
        const SCRIPT: &str = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult
host, port, maildir, cert, key, user, password = sys.argv[1:]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
def check(server, session, envelope, mechanism, data):
    ok = data.login == user.encode() and data.password == password.encode()
    # handled=False: aiosmtpd answers 535 itself on failure (the default, True, answers nothing).
    return AuthResult(success=ok, handled=False)
c = Controller(Mailbox(maildir), hostname=host, port=int(port), tls_context=ctx,
               require_starttls=True, authenticator=check, auth_require_tls=True)
c.start()
while True:
    time.sleep(3600)
"#;
        let python = python_with_aiosmtpd()?;
        let maildir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(python)
            .args(["-c", SCRIPT, "127.0.0.1", &port.to_string()])
            .arg(maildir.path().join("mail"))
            .args([cert, key])
            .args([user, password])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start aiosmtpd with TLS")?;
        SmtpServer::ready(child, addr, maildir)
    }

    fn ready(child: Child, addr: SocketAddr, maildir: tempfile::TempDir) -> Result<SmtpServer> {
        let mut server = SmtpServer {
            child,
            addr,
            maildir,
        };
        wait_for("the SMTP server to listen", DEADLINE, || {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Some(Err(anyhow::anyhow!("aiosmtpd exited with {status}")));
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| Ok(()))
        })??;
        Ok(server)
    }

    /// Every mail received so far (raw RFC 5322 text), oldest first.
    pub fn mails(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail").join("new");
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| {
                        let t = e
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(std::time::UNIX_EPOCH);
                        (t, e.path())
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of header `name` in a raw mail (first occurrence, unfolded).
pub fn mail_header(mail: &str, name: &str) -> Option<String> {
    let head = mail.split("\n\n").next().unwrap_or(mail);
    let mut found: Option<String> = None;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        match &mut found {
            Some(v) if line.starts_with([' ', '\t']) => {
                v.push(' ');
                v.push_str(line.trim());
            }
            Some(_) => break,
            None => {
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case(name)
                {
                    found = Some(v.trim().to_owned());
                }
            }
        }
    }
    found
}

/// The body of a raw mail, quoted-printable decoded when the mail says so.
pub fn mail_body(mail: &str) -> String {
    let normalized = mail.replace("\r\n", "\n");
    let body = normalized
        .split_once("\n\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let qp = mail_header(&normalized, "Content-Transfer-Encoding")
        .is_some_and(|e| e.eq_ignore_ascii_case("quoted-printable"));
    if !qp {
        return body.to_owned();
    }
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(b) = std::str::from_utf8(bytes.get(i + 1..i + 3).unwrap_or_default())
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One recorded HTTP request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers (names lowercased).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP server answering `200 {"ok":true}` (Slack's Web API success) to everything, or
/// `{"ok":false,"error":"channel_not_found"}` to the first `failures` requests, recording them.
pub struct HttpRecorder {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl HttpRecorder {
    /// Start it on a free loopback port (a thread serves one connection at a time).
    pub fn start() -> Result<HttpRecorder> {
        HttpRecorder::start_failing(0)
    }

    /// Like [`HttpRecorder::start`], refusing the first `failures` requests the way Slack does.
    pub fn start_failing(failures: usize) -> Result<HttpRecorder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let store = requests.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                if let Ok(r) = serve_one(stream, n < failures) {
                    store.lock().unwrap_or_else(PoisonError::into_inner).push(r);
                }
            }
        });
        Ok(HttpRecorder { addr, requests })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn serve_one(stream: TcpStream, fail: bool) -> Result<Recorded> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let answer: &[u8] = if fail {
        br#"{"ok":false,"error":"channel_not_found"}"#
    } else {
        br#"{"ok":true,"channel":"C1","ts":"1.1"}"#
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    )?;
    stream.write_all(answer)?;
    Ok(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
