//! Test backend: greets TCP connections with its name and echoes lines,
//! answers UDP datagrams with its name.
//!
//! `lab-server --name NAME --listen ADDR:PORT [--listen ..] [--udp ADDR:PORT ..]`
//!
//! TCP: on accept writes "NAME\n", then answers every line with
//! "NAME: <line>\n" until EOF. UDP: answers each datagram with "NAME\n".
//! Sockets use IP_FREEBIND, so addresses need not exist yet (VIPs on `lo`).
//! `--http ADDR:PORT` answers every HTTP request there with `200 OK` and
//! the name (a health endpoint that shares the server's CPU, so it answers
//! late when the server is saturated).
//! `--http-app` makes the `--listen` sockets an HTTP application instead:
//! each connection's request costs `--work-us` of CPU (`/healthz` costs
//! nothing) and is answered `200 OK` with the name, then closed.
//! Prints "ready" once every socket is bound; runs until killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Parser, Debug)]
#[command(about = "Lab test backend")]
struct Args {
    /// Name sent to clients.
    #[arg(long)]
    name: String,
    /// TCP address to listen on (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// UDP address to answer on (repeatable).
    #[arg(long)]
    udp: Vec<SocketAddr>,
    /// CPU to spend on each TCP connection before the greeting, in
    /// microseconds (a server that load makes hot).
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// TCP address of an HTTP health endpoint (repeatable).
    #[arg(long)]
    http: Vec<SocketAddr>,
    /// One worker does all the work, connections' and health answers' in
    /// turn (as a single-process application server does): a saturated
    /// server answers its health probe late.
    #[arg(long)]
    single_worker: bool,
    /// The `--listen` sockets speak HTTP (one request per connection).
    #[arg(long)]
    http_app: bool,
}

/// The one worker of `--single-worker`, taken in arrival order (a ticket
/// queue: the next ticket to hand out, the ticket being served), as an
/// application's request queue is.
static WORKER: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));
static WORKER_FREE: std::sync::Condvar = std::sync::Condvar::new();
static SINGLE_WORKER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `f` as the application's worker, after everything that came
/// before it.
fn as_worker<T>(f: impl FnOnce() -> T) -> T {
    if !SINGLE_WORKER.load(std::sync::atomic::Ordering::Relaxed) {
        return f();
    }
    let mut queue = WORKER.lock().unwrap_or_else(|e| e.into_inner());
    let ticket = queue.0;
    queue.0 += 1;
    while queue.1 != ticket {
        queue = WORKER_FREE.wait(queue).unwrap_or_else(|e| e.into_inner());
    }
    drop(queue);
    let out = f();
    WORKER.lock().unwrap_or_else(|e| e.into_inner()).1 += 1;
    WORKER_FREE.notify_all();
    out
}

/// Longest line echoed; longer input closes the connection.
const MAX_LINE: usize = 64 * 1024;

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
        sock.set_freebind_v6(true)?;
    } else {
        sock.set_freebind_v4(true)?;
    }
    sock.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    Ok(sock)
}

/// Spins for `us` microseconds of wall time (all of it on the CPU while
/// the thread runs).
fn burn(us: u64) {
    let until = std::time::Instant::now() + Duration::from_micros(us);
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}

fn serve_conn(name: &str, stream: TcpStream, work_us: u64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    as_worker(|| burn(work_us));
    let mut out = stream.try_clone()?;
    out.write_all(format!("{name}\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.by_ref().take(MAX_LINE as u64).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let text = line.trim_end_matches(['\n', '\r']);
        out.write_all(format!("{name}: {text}\n").as_bytes())?;
    }
}

/// Reads one HTTP request head and answers `200 OK` with the name, after
/// `work_us` of CPU unless the path is `/healthz`. A connection closed
/// before its request ends is left unanswered, at no cost.
fn serve_http(name: &str, stream: TcpStream, work_us: u64) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
    let mut line = String::new();
    let mut path = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim_end().is_empty() {
            break;
        }
        if path.is_none() {
            path = Some(line.split(' ').nth(1).unwrap_or("/").to_owned());
        }
    }
    let body = format!("{name}\n");
    let work = if path.as_deref() == Some("/healthz") {
        0
    } else {
        work_us
    };
    // The answer waits for its turn at the worker, behind the work queued
    // before it.
    as_worker(|| burn(work));
    out.write_all(
        format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn accept_loop(
    name: Arc<str>,
    listener: TcpListener,
    serve: impl Fn(&str, TcpStream) -> std::io::Result<()> + Clone + Send + 'static,
) {
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                let name = Arc::clone(&name);
                let serve = serve.clone();
                let spawned = thread::Builder::new().spawn(move || {
                    // Client errors (resets, timeouts) end only this connection.
                    let _ = serve(&name, stream);
                });
                if let Err(e) = spawned {
                    eprintln!("lab-server: spawning connection thread: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) => {
                eprintln!("lab-server: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn tcp_loop(name: Arc<str>, listener: TcpListener, work_us: u64, http: bool) {
    accept_loop(name, listener, move |name, stream| {
        if http {
            serve_http(name, stream, work_us)
        } else {
            serve_conn(name, stream, work_us)
        }
    });
}

fn udp_loop(name: Arc<str>, sock: UdpSocket) {
    let reply = format!("{name}\n");
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = sock.send_to(reply.as_bytes(), peer) {
                    eprintln!("lab-server: udp send to {peer}: {e}");
                }
            }
            Err(e) => {
                eprintln!("lab-server: udp recv: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.listen.is_empty() && args.udp.is_empty() {
        bail!("nothing to listen on: give --listen and/or --udp");
    }
    SINGLE_WORKER.store(args.single_worker, std::sync::atomic::Ordering::Relaxed);
    let name: Arc<str> = args.name.into();
    let mut threads = Vec::new();
    for addr in args.listen {
        let sock = socket(addr, Type::STREAM, Protocol::TCP)?;
        sock.listen(1024)
            .with_context(|| format!("listen {addr}"))?;
        let listener: TcpListener = sock.into();
        let name = Arc::clone(&name);
        let (work_us, http) = (args.work_us, args.http_app);
        threads.push(thread::spawn(move || {
            tcp_loop(name, listener, work_us, http)
        }));
    }
    for addr in args.http {
        let sock = socket(addr, Type::STREAM, Protocol::TCP)?;
        sock.listen(1024)
            .with_context(|| format!("listen {addr}"))?;
        let listener: TcpListener = sock.into();
        let name = Arc::clone(&name);
        threads.push(thread::spawn(move || {
            accept_loop(name, listener, |name, stream| serve_http(name, stream, 0))
        }));
    }
    for addr in args.udp {
        let sock: UdpSocket = socket(addr, Type::DGRAM, Protocol::UDP)?.into();
        let name = Arc::clone(&name);
        threads.push(thread::spawn(move || udp_loop(name, sock)));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
