//! Native checks: a TCP connect and an HTTP request, run by the agent itself (no shell, no
//! plugin), each bounded by the check's `timeout`. Their results go through the same state
//! machine as every check (flap damping, handlers, history) and carry the response time as
//! perfdata (`time`, seconds).

use std::time::{Duration, Instant};

use opsbro_api::monitoring::PerfData;
use opsbro_checks::CheckState;
use opsbro_packs::HttpProbe;

use super::RunResult;

/// Most of an answer's body read (for `expect_body` and the long output).
const MAX_BODY: usize = 64 * 1024;
/// Most of the body shown in the long output.
const SHOWN_BODY: usize = 512;

fn time_perfdata(elapsed: Duration, timeout: Duration) -> Vec<PerfData> {
    vec![PerfData {
        label: "time".into(),
        value: elapsed.as_secs_f64(),
        unit: "s".into(),
        warning: None,
        critical: None,
        min: Some(0.0),
        max: Some(timeout.as_secs_f64()),
    }]
}

fn result(index: usize, state: CheckState, output: String, long_output: String) -> RunResult {
    RunResult {
        index,
        state,
        output,
        long_output,
        perfdata: Vec::new(),
    }
}

/// Connect to `address` (`host:port`).
pub(super) async fn run_tcp(index: usize, address: &str, timeout: Duration) -> RunResult {
    let started = Instant::now();
    let connected = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await;
    let elapsed = started.elapsed();
    let (state, output) = match connected {
        Ok(Ok(_)) => (
            CheckState::Ok,
            format!(
                "TCP OK: connected to {address} in {:.1} ms",
                elapsed.as_secs_f64() * 1000.0
            ),
        ),
        Ok(Err(e)) => (
            CheckState::Critical,
            format!("TCP CRITICAL: cannot connect to {address}: {e}"),
        ),
        Err(_) => (
            CheckState::Critical,
            format!("TCP CRITICAL: no connection to {address} within {timeout:?}"),
        ),
    };
    RunResult {
        perfdata: time_perfdata(elapsed, timeout),
        ..result(index, state, output, String::new())
    }
}

/// The state an answer's status gives (Consul's rule, with the expected range): in range OK,
/// 429 WARNING, else CRITICAL.
pub(super) fn status_state(status: u16, expect: (u16, u16)) -> CheckState {
    if (expect.0..=expect.1).contains(&status) {
        CheckState::Ok
    } else if status == 429 {
        CheckState::Warning
    } else {
        CheckState::Critical
    }
}

/// Make the request and judge the answer.
pub(super) async fn run_http(index: usize, probe: &HttpProbe, timeout: Duration) -> RunResult {
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .danger_accept_invalid_certs(probe.tls_skip_verify)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return RunResult::unknown(index, format!("UNKNOWN: cannot make an HTTP client: {e}"));
        }
    };
    let method = match reqwest::Method::from_bytes(probe.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return RunResult::unknown(index, format!("UNKNOWN: bad method `{}`", probe.method));
        }
    };
    let mut request = client.request(method, &probe.url);
    for (name, value) in &probe.headers {
        request = request.header(name, value);
    }
    if let Some(body) = &probe.body {
        request = request.body(body.clone());
    }
    let started = Instant::now();
    let what = format!("{} {}", probe.method, probe.url);
    // The whole exchange, body included, within the timeout.
    let exchange = tokio::time::timeout(timeout, async {
        let mut answer = request.send().await?;
        let status = answer.status();
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await? {
            let room = MAX_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_BODY {
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    let elapsed = started.elapsed();
    let ms = elapsed.as_secs_f64() * 1000.0;
    let (state, output, long_output) = match exchange {
        Err(_) => (
            CheckState::Critical,
            format!("HTTP CRITICAL: {what}: no answer within {timeout:?}"),
            String::new(),
        ),
        Ok(Err(e)) if e.is_timeout() => (
            CheckState::Critical,
            format!("HTTP CRITICAL: {what}: no answer within {timeout:?}"),
            String::new(),
        ),
        Ok(Err(e)) => (
            CheckState::Critical,
            format!("HTTP CRITICAL: {what}: {}", crate::host::error_chain(&e)),
            String::new(),
        ),
        Ok(Ok((status, body))) => {
            let text = String::from_utf8_lossy(&body);
            let shown: String = text.chars().take(SHOWN_BODY).collect();
            let mut state = status_state(status.as_u16(), probe.expect_status);
            let mut output = format!("HTTP {}: {what}: {status} in {ms:.1} ms", state_word(state));
            if state == CheckState::Ok
                && let Some(wanted) = &probe.expect_body
                && !text.contains(wanted.as_str())
            {
                state = CheckState::Critical;
                output = format!(
                    "HTTP CRITICAL: {what}: {status}, but the body does not contain `{wanted}`"
                );
            }
            (state, output, shown)
        }
    };
    RunResult {
        perfdata: time_perfdata(elapsed, timeout),
        ..result(index, state, output, long_output)
    }
}

fn state_word(state: CheckState) -> &'static str {
    match state {
        CheckState::Ok => "OK",
        CheckState::Warning => "WARNING",
        _ => "CRITICAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_in_range_pass_429_warns_the_rest_fail() {
        assert_eq!(status_state(200, (200, 299)), CheckState::Ok);
        assert_eq!(status_state(204, (200, 299)), CheckState::Ok);
        assert_eq!(status_state(301, (200, 399)), CheckState::Ok);
        assert_eq!(status_state(429, (200, 299)), CheckState::Warning);
        assert_eq!(status_state(500, (200, 299)), CheckState::Critical);
        assert_eq!(status_state(404, (200, 299)), CheckState::Critical);
    }
}
