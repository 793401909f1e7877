//! Application health probes and the rise/fall state machine.
//!
//! A probe is one TCP connection (`tcp`), or one `GET` over HTTP/1.0 whose
//! status line is compared with the expected status (`http`). The request
//! is written by hand and only the status line of the answer is read: no
//! HTTP client is needed for that.
//!
//! A probe's outcome tells a refusal or a wrong answer from a timeout;
//! [`lb_proto::HealthTracker`] turns outcomes into a state (`slow` when
//! every failure of a streak timed out, `down` otherwise).

use std::{net::SocketAddr, time::Duration};

use lb_proto::ProbeOutcome;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::config::ProbeConfig;

/// How long a probe waits for its answer unless the application says
/// otherwise (`probe_timeout_ms`): long enough for a saturated server,
/// whatever the probe interval.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of an HTTP answer is read looking for the status line.
const STATUS_LINE_LIMIT: usize = 1024;

/// Why a probe failed without timing out; the text goes to the manager as
/// the probe's detail, for the operator to see which server and which step.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// The application refused or reset the connection.
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The request could not be written.
    #[error("GET {path} on {addr}: write: {source}")]
    Write {
        path: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The answer could not be read.
    #[error("GET {path} on {addr}: read: {source}")]
    Read {
        path: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The answer did not start with an HTTP status line.
    #[error("GET {path} on {addr}: no HTTP status line in the answer {start:?}")]
    NoStatusLine {
        path: String,
        addr: SocketAddr,
        /// The first bytes of the answer.
        start: String,
    },
    /// The application answered with another status than the expected one.
    #[error("GET {path} on {addr}: status {status}, expected {expected}")]
    WrongStatus {
        path: String,
        addr: SocketAddr,
        status: u16,
        expected: u16,
    },
}
/// Runs `probe` against `addr` once: answered, failed (refused, reset,
/// wrong answer) or timed out after `timeout`.
pub async fn run_probe(probe: &ProbeConfig, addr: SocketAddr, timeout: Duration) -> ProbeOutcome {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        match probe {
            ProbeConfig::Tcp { .. } => Ok(()),
            ProbeConfig::Http { path, expect, .. } => {
                let status = http_status(&mut stream, addr, path).await?;
                if status == *expect {
                    Ok(())
                } else {
                    Err(ProbeError::WrongStatus {
                        path: path.clone(),
                        addr,
                        status,
                        expected: *expect,
                    })
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => ProbeOutcome::Answered,
        Ok(Err(detail)) => ProbeOutcome::Failed(detail.to_string()),
        Err(_) => ProbeOutcome::TimedOut(format!(
            "{addr}: no answer within {} ms",
            timeout.as_millis()
        )),
    }
}

/// Sends `GET path HTTP/1.0` and returns the status code of the answer.
async fn http_status(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
) -> Result<u16, ProbeError> {
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
        .map_err(|source| ProbeError::Write {
            path: path.to_owned(),
            addr,
            source,
        })?;
    let mut answer = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') && answer.len() < STATUS_LINE_LIMIT {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|source| ProbeError::Read {
                path: path.to_owned(),
                addr,
                source,
            })?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    parse_status_line(&answer).ok_or_else(|| {
        let start = String::from_utf8_lossy(answer.get(..answer.len().min(60)).unwrap_or_default())
            .into_owned();
        ProbeError::NoStatusLine {
            path: path.to_owned(),
            addr,
            start,
        }
    })
}

/// The status code of `HTTP/1.x NNN reason`, from the start of an answer.
#[must_use]
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
#[must_use]
pub fn describe(
    probe: &ProbeConfig,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
) -> String {
    let target = SocketAddr::new(probe.address(), probe.port());
    let what = match probe {
        ProbeConfig::Tcp { .. } => format!("tcp connect {target}"),
        ProbeConfig::Http { path, expect, .. } => {
            format!("http GET http://{target}{path} expect {expect}")
        }
    };
    format!(
        "{what} every {} ms, timeout {} ms, rise {rise}, fall {fall}",
        interval.as_millis(),
        timeout.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncBufReadExt as _, net::TcpListener};

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
            describe(
                &http,
                Duration::from_secs(1),
                Duration::from_millis(500),
                2,
                3
            ),
            "http GET http://127.0.0.1:80/healthz expect 200 every 1000 ms, timeout 500 ms, rise 2, fall 3"
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
        assert_eq!(
            run_probe(&http(ok.port()), ok, timeout).await,
            ProbeOutcome::Answered
        );
        let ProbeOutcome::Failed(err) = run_probe(&http(bad.port()), bad, timeout).await else {
            panic!("503 fails as a wrong answer");
        };
        assert!(err.contains("status 503"), "{err}");
        let tcp = ProbeConfig::Tcp {
            port: ok.port(),
            address: None,
        };
        assert_eq!(run_probe(&tcp, ok, timeout).await, ProbeOutcome::Answered);

        // A closed port: connection refused, a failure, not a timeout.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let ProbeOutcome::Failed(err) = run_probe(&tcp, closed, timeout).await else {
            panic!("a closed port is refused");
        };
        assert!(err.contains("connect"), "{err}");

        // A server that accepts and never answers: the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let ProbeOutcome::TimedOut(err) =
            run_probe(&http(addr.port()), addr, Duration::from_millis(100)).await
        else {
            panic!("a silent server times out");
        };
        assert!(err.contains("no answer"), "{err}");
        drop(silent);
    }
}
