//! Application health probes and the rise/fall state machine.
//!
//! A probe is one TCP connection (`tcp`), or one `GET` over HTTP/1.0 whose
//! status line is compared with the expected status (`http`). The request
//! is written by hand and only the status line of the answer is read: no
//! HTTP client is needed for that.
//!
//! [`HealthTracker`] turns probe outcomes into a state: it starts
//! `unknown`, goes `up` after `rise` successes in a row and `down` after
//! `fall` failures in a row, and otherwise keeps its state.

use std::{net::SocketAddr, time::Duration};

use lb_proto::{Health, HealthState};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::config::ProbeConfig;

/// The longest a single probe may take.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of an HTTP answer is read looking for the status line.
const STATUS_LINE_LIMIT: usize = 1024;
/// How much of a failure's detail a report carries.
const DETAIL_LIMIT: usize = 200;

/// The timeout of a probe that runs every `interval`.
pub fn probe_timeout(interval: Duration) -> Duration {
    interval.min(MAX_PROBE_TIMEOUT)
}

/// Runs `probe` against `addr` once; `Err` says why it failed.
pub async fn run_probe(
    probe: &ProbeConfig,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        match probe {
            ProbeConfig::Tcp { .. } => Ok(()),
            ProbeConfig::Http { path, expect, .. } => {
                let status = http_status(&mut stream, addr, path).await?;
                if status == *expect {
                    Ok(())
                } else {
                    Err(format!(
                        "GET {path} on {addr}: status {status}, expected {expect}"
                    ))
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{addr}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Sends `GET path HTTP/1.0` and returns the status code of the answer.
async fn http_status(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let host = match addr {
        SocketAddr::V4(v4) => v4.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    };
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lb-agent/{}\r\n\
         Connection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {path} on {addr}: write: {e}"))?;
    let mut answer = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') && answer.len() < STATUS_LINE_LIMIT {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET {path} on {addr}: read: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    parse_status_line(&answer).ok_or_else(|| {
        let start = String::from_utf8_lossy(answer.get(..answer.len().min(60)).unwrap_or_default())
            .into_owned();
        format!("GET {path} on {addr}: no HTTP status line in the answer {start:?}")
    })
}

/// The status code of `HTTP/1.x NNN reason`, from the start of an answer.
pub fn parse_status_line(answer: &[u8]) -> Option<u16> {
    let end = answer.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(answer.get(..end)?).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

/// The human-readable probe description sent in `<hello>`.
pub fn describe(probe: &ProbeConfig, interval: Duration, rise: u32, fall: u32) -> String {
    let target = SocketAddr::new(probe.address(), probe.port());
    let what = match probe {
        ProbeConfig::Tcp { .. } => format!("tcp connect {target}"),
        ProbeConfig::Http { path, expect, .. } => {
            format!("http GET http://{target}{path} expect {expect}")
        }
    };
    format!(
        "{what} every {} ms, rise {rise}, fall {fall}",
        interval.as_millis()
    )
}

/// Follows one application's probes: rise/fall counting and the resulting
/// state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    state: HealthState,
    ok_streak: u32,
    fail_streak: u32,
    detail: Option<String>,
}

impl HealthTracker {
    /// A tracker in state `unknown`; `rise` and `fall` are at least 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state: HealthState::Unknown,
            ok_streak: 0,
            fail_streak: 0,
            detail: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Counts one probe outcome; returns the new state when it changed.
    pub fn record(&mut self, outcome: Result<(), String>) -> Option<HealthState> {
        let before = self.state;
        match outcome {
            Ok(()) => {
                self.ok_streak = self.ok_streak.saturating_add(1);
                self.fail_streak = 0;
                self.detail = None;
                if self.ok_streak >= self.rise {
                    self.state = HealthState::Up;
                }
            }
            Err(detail) => {
                self.fail_streak = self.fail_streak.saturating_add(1);
                self.ok_streak = 0;
                self.detail = Some(truncate(detail, DETAIL_LIMIT));
                if self.fail_streak >= self.fall {
                    self.state = HealthState::Down;
                }
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// The `<health>` element of a report.
    pub fn health(&self) -> Health {
        Health {
            state: self.state,
            rise: self.rise,
            fall: self.fall,
            ok_streak: self.ok_streak,
            fail_streak: self.fail_streak,
            detail: self.detail.clone(),
        }
    }
}

fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncBufReadExt as _, net::TcpListener};

    fn fail() -> Result<(), String> {
        Err("connect refused".into())
    }

    #[test]
    fn starts_unknown_and_rises_after_rise_successes() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.state(), HealthState::Unknown);
        assert_eq!(t.record(Ok(())), None);
        assert_eq!(t.state(), HealthState::Unknown);
        assert_eq!(t.record(Ok(())), Some(HealthState::Up));
        assert_eq!(t.record(Ok(())), None);
        let h = t.health();
        assert_eq!((h.ok_streak, h.fail_streak, h.rise, h.fall), (3, 0, 2, 3));
        assert_eq!(h.detail, None);
    }

    #[test]
    fn falls_after_fall_failures_and_a_success_resets_the_count() {
        let mut t = HealthTracker::new(2, 3);
        t.record(Ok(()));
        t.record(Ok(()));
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), None);
        // One success in between: the failure streak starts over.
        assert_eq!(t.record(Ok(())), None);
        assert_eq!(t.state(), HealthState::Up);
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), Some(HealthState::Down));
        let h = t.health();
        assert_eq!((h.ok_streak, h.fail_streak), (0, 3));
        assert_eq!(h.detail.as_deref(), Some("connect refused"));
        // Back up needs `rise` successes.
        assert_eq!(t.record(Ok(())), None);
        assert_eq!(t.state(), HealthState::Down);
        assert_eq!(t.record(Ok(())), Some(HealthState::Up));
    }

    #[test]
    fn unknown_goes_down_after_fall_failures() {
        let mut t = HealthTracker::new(2, 2);
        assert_eq!(t.record(fail()), None);
        assert_eq!(t.record(fail()), Some(HealthState::Down));
    }

    #[test]
    fn rise_and_fall_of_one_switch_at_once() {
        let mut t = HealthTracker::new(0, 1);
        assert_eq!(t.record(Ok(())), Some(HealthState::Up));
        assert_eq!(t.record(fail()), Some(HealthState::Down));
        assert_eq!(t.record(Ok(())), Some(HealthState::Up));
    }

    #[test]
    fn long_details_are_cut() {
        let mut t = HealthTracker::new(1, 1);
        t.record(Err("é".repeat(500)));
        let detail = t.health().detail.unwrap_or_default();
        assert!(
            detail.len() <= DETAIL_LIMIT + '…'.len_utf8(),
            "{}",
            detail.len()
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503\r\nServer: x\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None); // no end of line yet
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20x OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
    }

    #[test]
    fn description() {
        let http = ProbeConfig::Http {
            port: 80,
            path: "/healthz".into(),
            expect: 200,
            address: None,
        };
        assert_eq!(
            describe(&http, Duration::from_secs(1), 2, 3),
            "http GET http://127.0.0.1:80/healthz expect 200 every 1000 ms, rise 2, fall 3"
        );
    }

    /// Answers each connection's request line with `status_line`.
    async fn http_server(status_line: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    stream.read_line(&mut line).await.expect("request");
                    assert!(line.starts_with("GET /healthz HTTP/1.0"), "{line}");
                    let answer = format!("{status_line}\r\nContent-Length: 0\r\n\r\n");
                    stream
                        .get_mut()
                        .write_all(answer.as_bytes())
                        .await
                        .expect("answer");
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_against_real_sockets() {
        let timeout = Duration::from_millis(500);
        let ok = http_server("HTTP/1.1 200 OK").await;
        let bad = http_server("HTTP/1.1 503 Service Unavailable").await;
        let http = |port| ProbeConfig::Http {
            port,
            path: "/healthz".into(),
            expect: 200,
            address: None,
        };
        run_probe(&http(ok.port()), ok, timeout)
            .await
            .expect("200 passes");
        let err = run_probe(&http(bad.port()), bad, timeout)
            .await
            .expect_err("503 fails");
        assert!(err.contains("status 503"), "{err}");
        let tcp = ProbeConfig::Tcp {
            port: ok.port(),
            address: None,
        };
        run_probe(&tcp, ok, timeout).await.expect("tcp connect");

        // A closed port: connection refused.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let err = run_probe(&tcp, closed, timeout)
            .await
            .expect_err("closed port");
        assert!(err.contains("connect"), "{err}");

        // A server that accepts and never answers: the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let err = run_probe(&http(addr.port()), addr, Duration::from_millis(100))
            .await
            .expect_err("silent");
        assert!(err.contains("no answer"), "{err}");
        drop(silent);
    }
}
