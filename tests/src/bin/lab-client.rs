//! Test client, run inside the lab's client namespace.
//!
//! * `burst --target VIP:PORT --count N [--concurrency C] [--timeout-ms T]
//!   [--src-port-start P] [--close fin|rst]`: N TCP connections, each reads
//!   the server's greeting and closes; prints one `BurstReport` JSON line.
//! * `hold --target VIP:PORT --count N --src-port-start P`: N long-lived
//!   connections; prints one `HoldConn` JSON line per connection, then
//!   obeys stdin: `ping` (prints a `PingReport` line), `quit` (or EOF).
//! * `udp --target VIP:PORT --count N`: N datagrams from distinct sockets;
//!   prints a `BurstReport` JSON line.
//! * `load --target VIP:PORT --rate R --seconds S [--http]`: R fresh
//!   connections a second (with `--http` each one `GET /`, the server's
//!   name in the answer's body); prints a `LoadReport` JSON line.
//!
//! * `flood --target ADDR:PORT --idle N --stalled M`: N TCP connections
//!   that send nothing and M that start a TLS handshake and stall; prints
//!   `{"opened":..,"failed":..}`, then obeys stdin: `check` (prints
//!   `{"open":..,"closed":..}`: how many the peer closed), `quit` (or EOF).
//!
//! Every wait is bounded; `hold` and `flood` exit by themselves after
//! `--max-secs`.
//! With explicit source ports connections close with RST by default, so the
//! same ports can be used again at once (no TIME_WAIT).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use lb_tests::proto::{BurstReport, HoldConn, LoadReport, PingReport};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Errors kept in a report.
const MAX_ERRORS: usize = 10;
/// Longest greeting or echo line read.
const MAX_LINE: u64 = 4096;
/// Echo deadline of `hold`'s ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(about = "Lab test client")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Close {
    /// Orderly close (FIN); the client side keeps TIME_WAIT.
    Fin,
    /// Abortive close (RST, SO_LINGER 0); no TIME_WAIT.
    Rst,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Many short TCP connections.
    Burst {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Bind connection i to source port P+i (SO_REUSEADDR).
        #[arg(long)]
        src_port_start: Option<u16>,
        /// Default: rst with --src-port-start, fin otherwise.
        #[arg(long, value_enum)]
        close: Option<Close>,
    },
    /// Long-lived TCP connections driven from stdin.
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        src_port_start: u16,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[arg(long, value_enum, default_value = "rst")]
        close: Close,
        /// Exit (status 2) after this long whatever happens.
        #[arg(long, default_value_t = 600)]
        max_secs: u64,
    },
    /// Steady load: `rate` short TCP connections a second for `seconds`
    /// (each reads the greeting and closes); prints one `LoadReport` line,
    /// with the wall-clock time each server first answered.
    Load {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: u32,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Each connection is one HTTP request (`GET /`); the server's
        /// name is the response's body.
        #[arg(long)]
        http: bool,
    },
    /// Idle and stalled connections against a listener, held from stdin.
    Flood {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 0)]
        idle: usize,
        #[arg(long, default_value_t = 0)]
        stalled: usize,
        /// Exit (status 2) after this long whatever happens.
        #[arg(long, default_value_t = 120)]
        max_secs: u64,
    },
    /// UDP request/response from distinct source sockets.
    Udp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Resends (same socket) after a timeout.
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// Bind datagram i to source port P+i.
        #[arg(long)]
        src_port_start: Option<u16>,
    },
}

fn unspecified(target: SocketAddr, port: u16) -> SocketAddr {
    let ip: IpAddr = if target.is_ipv6() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, port)
}

fn src_port(start: Option<u16>, i: usize) -> Result<Option<u16>> {
    start
        .map(|p| u16::try_from(usize::from(p) + i).context("source port range runs past 65535"))
        .transpose()
}

fn connect(target: SocketAddr, port: Option<u16>, timeout: Duration) -> Result<TcpStream> {
    let stream = match port {
        None => TcpStream::connect_timeout(&target, timeout).context("connect")?,
        Some(p) => {
            let s = Socket::new(
                Domain::for_address(target),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            s.set_reuse_address(true)?;
            s.bind(&unspecified(target, p).into())
                .with_context(|| format!("bind port {p}"))?;
            s.connect_timeout(&target.into(), timeout)
                .context("connect")?;
            s.into()
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    let n = reader.take(MAX_LINE).read_line(&mut line).context("read")?;
    if n == 0 {
        bail!("connection closed before a line arrived");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// `GET /` on `stream`; the name in a `200` answer's body.
fn http_get(stream: &TcpStream, target: SocketAddr) -> Result<String> {
    let mut out = stream;
    out.write_all(
        format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .context("write request")?;
    let mut answer = String::new();
    stream
        .take(MAX_LINE)
        .read_to_string(&mut answer)
        .context("read answer")?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer: {answer:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        bail!("HTTP {status:?}");
    }
    Ok(body.trim().to_owned())
}

fn close(stream: &TcpStream, how: Close) {
    if how == Close::Rst {
        let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
    } else {
        let _ = stream.shutdown(Shutdown::Write);
    }
}

/// Runs `f(i)` for `i in 0..count` on `concurrency` threads; results in
/// index order.
fn parallel<T: Send>(count: usize, concurrency: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(count));
    thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, count.max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let r = f(i);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, r));
                }
            });
        }
    });
    let mut v = results.into_inner().unwrap_or_else(|e| e.into_inner());
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

fn report(results: Vec<(Option<u16>, Result<String>)>) -> BurstReport {
    let mut r = BurstReport::default();
    for (i, (port, res)) in results.into_iter().enumerate() {
        match res {
            Ok(name) => {
                r.ok += 1;
                *r.by_server.entry(name.clone()).or_default() += 1;
                if let Some(p) = port {
                    r.by_port.insert(p, name);
                }
            }
            Err(e) => {
                r.failed += 1;
                if r.errors.len() < MAX_ERRORS {
                    let port = port.map_or(String::new(), |p| format!(" port {p}"));
                    r.errors.push(format!("#{i}{port}: {e:#}"));
                }
            }
        }
    }
    r
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn burst(
    target: SocketAddr,
    count: usize,
    concurrency: usize,
    timeout: Duration,
    start: Option<u16>,
    how: Close,
) -> Result<BurstReport> {
    src_port(start, count.saturating_sub(1))?;
    let results = parallel(count, concurrency, |i| {
        let port = src_port(start, i).ok().flatten();
        let res = connect(target, port, timeout).and_then(|s| {
            let name = read_line(&mut BufReader::new(&s));
            close(&s, how);
            name
        });
        (port, res)
    });
    Ok(report(results))
}

fn load(
    target: SocketAddr,
    rate: u32,
    seconds: u32,
    concurrency: usize,
    timeout: Duration,
    http: bool,
) -> Result<LoadReport> {
    if rate == 0 || rate > 10_000 || seconds > 600 {
        bail!("--rate must be 1..=10000 and --seconds at most 600");
    }
    let count = rate as usize * seconds as usize;
    let start = std::time::Instant::now();
    let report = Mutex::new(LoadReport::default());
    let latencies = Mutex::new(Vec::with_capacity(count));
    parallel(count, concurrency, |i| {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            thread::sleep(wait);
        }
        let res = connect(target, None, timeout).and_then(|s| {
            let name = if http {
                http_get(&s, target)
            } else {
                read_line(&mut BufReader::new(&s))
            };
            close(&s, Close::Fin);
            name
        });
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let took = due.elapsed().as_secs_f64() * 1000.0;
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(name) => {
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(took);
                r.ok += 1;
                *r.by_server.entry(name.clone()).or_default() += 1;
                let first = r.first_seen_ms.entry(name).or_insert(now_ms);
                *first = (*first).min(now_ms);
            }
            Err(e) => {
                r.failed += 1;
                if r.errors.len() < MAX_ERRORS {
                    r.errors.push(format!("#{i}: {e:#}"));
                }
            }
        }
    });
    let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut latencies = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    report.p50_ms = at(0.5);
    report.p99_ms = at(0.99);
    report.max_ms = latencies.last().copied().unwrap_or(0.0);
    Ok(report)
}

fn udp(
    target: SocketAddr,
    count: usize,
    concurrency: usize,
    timeout: Duration,
    retries: u32,
    start: Option<u16>,
) -> Result<BurstReport> {
    src_port(start, count.saturating_sub(1))?;
    let results = parallel(count, concurrency, |i| {
        let port = src_port(start, i).ok().flatten();
        let res = (|| {
            let sock = UdpSocket::bind(unspecified(target, port.unwrap_or(0))).context("bind")?;
            sock.connect(target).context("connect")?;
            sock.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 512];
            let mut last = anyhow::anyhow!("no attempt");
            for _ in 0..=retries {
                sock.send(b"hello\n").context("send")?;
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
                    }
                    Err(e) => last = anyhow::Error::new(e).context("recv"),
                }
            }
            Err(last)
        })();
        (port, res)
    });
    Ok(report(results))
}

struct Held {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn ping_one(conn: &mut Option<Held>, how: Close) -> Option<String> {
    let c = conn.as_mut()?;
    let res = (|| -> Result<String> {
        c.writer.write_all(b"ping\n")?;
        let line = read_line(&mut c.reader)?;
        match line.strip_suffix(": ping") {
            Some(name) => Ok(name.to_owned()),
            None => bail!("unexpected echo {line:?}"),
        }
    })();
    match res {
        Ok(name) => Some(name),
        Err(_) => {
            if let Some(c) = conn.take() {
                close(&c.writer, how);
            }
            None
        }
    }
}

fn hold(target: SocketAddr, count: usize, start: u16, timeout: Duration, how: Close) -> Result<()> {
    src_port(Some(start), count.saturating_sub(1))?;
    let opened = parallel(count, 16, |i| {
        let port = src_port(Some(start), i).ok().flatten().unwrap_or(0);
        let res = connect(target, Some(port), timeout).and_then(|s| {
            s.set_read_timeout(Some(PING_TIMEOUT))?;
            let mut reader = BufReader::new(s.try_clone()?);
            let name = read_line(&mut reader)?;
            Ok((name, Held { reader, writer: s }))
        });
        (port, res)
    });
    let mut conns: Vec<Option<Held>> = Vec::with_capacity(count);
    for (port, res) in opened {
        let line = match res {
            Ok((name, held)) => {
                conns.push(Some(held));
                HoldConn {
                    port,
                    server: Some(name),
                    error: None,
                }
            }
            Err(e) => {
                conns.push(None);
                HoldConn {
                    port,
                    server: None,
                    error: Some(format!("{e:#}")),
                }
            }
        };
        print_json(&line)?;
    }
    for cmd in std::io::stdin().lock().lines() {
        let cmd = cmd.context("reading stdin")?;
        match cmd.trim() {
            "ping" => {
                let servers: Vec<Option<String>> = thread::scope(|s| {
                    let handles: Vec<_> = conns
                        .iter_mut()
                        .map(|c| s.spawn(move || ping_one(c, how)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().ok().flatten())
                        .collect()
                });
                let alive = servers.iter().filter(|s| s.is_some()).count() as u64;
                print_json(&PingReport {
                    alive,
                    dead: servers.len() as u64 - alive,
                    servers,
                })?;
            }
            "quit" => break,
            "" => {}
            other => {
                print_json(&serde_json::json!({ "error": format!("unknown command {other:?}") }))?
            }
        }
    }
    for c in conns.into_iter().flatten() {
        close(&c.writer, how);
    }
    Ok(())
}

/// The start of a TLS ClientHello: a handshake record of 512 bytes, of
/// which only these few are ever sent.
const STALLED_HELLO: [u8; 9] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

/// Raises this process's open-file limit to its hard limit.
fn raise_fd_limit() {
    // SAFETY: zeroed is a valid rlimit; getrlimit fills it, setrlimit
    // reads it.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// Whether the peer closed `stream` (end of file or reset); reads and
/// drops whatever it sent.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let _ = stream.set_nonblocking(true);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn flood(target: SocketAddr, idle: usize, stalled: usize) -> Result<()> {
    raise_fd_limit();
    let mut held = Vec::with_capacity(idle + stalled);
    let mut failed = 0usize;
    for i in 0..idle + stalled {
        match connect(target, None, Duration::from_secs(2)) {
            Ok(mut s) => {
                if i >= idle {
                    let _ = s.write_all(&STALLED_HELLO);
                }
                held.push(s);
            }
            Err(_) => failed += 1,
        }
    }
    print_json(&serde_json::json!({ "opened": held.len(), "failed": failed }))?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "check" => {
                let closed = held.iter_mut().map(closed_by_peer).filter(|c| *c).count();
                print_json(&serde_json::json!({ "open": held.len() - closed, "closed": closed }))?;
            }
            "quit" => break,
            _ => {}
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Burst {
            target,
            count,
            concurrency,
            timeout_ms,
            src_port_start,
            close,
        } => {
            let how = close.unwrap_or(if src_port_start.is_some() {
                Close::Rst
            } else {
                Close::Fin
            });
            let t = Duration::from_millis(timeout_ms);
            print_json(&burst(target, count, concurrency, t, src_port_start, how)?)
        }
        Cmd::Load {
            target,
            rate,
            seconds,
            concurrency,
            timeout_ms,
            http,
        } => print_json(&load(
            target,
            rate,
            seconds,
            concurrency,
            Duration::from_millis(timeout_ms),
            http,
        )?),
        Cmd::Hold {
            target,
            count,
            src_port_start,
            timeout_ms,
            close,
            max_secs,
        } => {
            thread::spawn(move || {
                thread::sleep(Duration::from_secs(max_secs));
                eprintln!("lab-client hold: --max-secs {max_secs} reached, exiting");
                std::process::exit(2);
            });
            hold(
                target,
                count,
                src_port_start,
                Duration::from_millis(timeout_ms),
                close,
            )
        }
        Cmd::Flood {
            target,
            idle,
            stalled,
            max_secs,
        } => {
            thread::spawn(move || {
                thread::sleep(Duration::from_secs(max_secs));
                eprintln!("lab-client flood: --max-secs {max_secs} reached, exiting");
                std::process::exit(2);
            });
            flood(target, idle, stalled)
        }
        Cmd::Udp {
            target,
            count,
            concurrency,
            timeout_ms,
            retries,
            src_port_start,
        } => {
            let t = Duration::from_millis(timeout_ms);
            print_json(&udp(
                target,
                count,
                concurrency,
                t,
                retries,
                src_port_start,
            )?)
        }
    }
}
