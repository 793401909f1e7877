//! `cargo xtask bench` runs this after `bench` (release build): a figure, not
//! a test.
//!
//! Reports ingested per second per core of manager CPU (TLS read, decode,
//! database update), with many simulated agents, each on its own real mutual
//! TLS connection with its own certificate, reporting at a fixed rate.
//!
//! Two modes in one binary:
//!
//! - `manager_bench [--agents N] [--rate R] [--seconds S] [--warmup W]`, the
//!   driver: creates a PKI in a temporary directory (a CA, the `manager`
//!   server certificate and one client certificate per agent, since the
//!   manager checks each stream's host against its certificate and keys its
//!   database by host), raises `RLIMIT_NOFILE`, starts `manager_bench serve`
//!   as a child process, opens the agent streams from source addresses
//!   spread over 127.0.0.0/8 (one address each, so ephemeral ports never run
//!   out), has every agent say hello and then report `R` times a second with
//!   jitter, and reads the manager's counters and its own `getrusage` at the
//!   start and end of the measurement window;
//! - `manager_bench serve --dir PKI --listen ADDR`: the manager
//!   (`lb_control::manager::Manager`) alone in its process, so its rusage is
//!   the manager's CPU and nothing else. It prints `ready ADDR`, then answers
//!   each `stats` line on stdin with one JSON line, and exits when stdin
//!   closes.
//!
//! The manager runs on the current-thread runtime of `lb-control run`
//! unless `--manager-threads` says otherwise. On loopback the TCP receive
//! path of a segment mostly runs in the sender's system call (softirq), so
//! the manager's rusage holds its own reads, TLS, decoding, database and
//! runtime, not the kernel's receive processing — as on a real network,
//! where that runs in the NIC's softirq. The driver also times decoding and
//! the database update alone, in-process, before the run.
#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::similar_names,
    clippy::too_many_lines,
    reason = "a benchmark: figures as f64 from counts and nanoseconds, one report in order"
)]

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};
use lb_control::manager::{Manager, ManagerConfig, db::ServerDb};
use lb_proto::{
    Application, ApplicationStatus, Cpu, Decoder, Encoder, Health, HealthState, Hello, Load,
    Memory, Message, Nic, Protocol, Readiness, Report, Role, StreamHeader, Utilization,
    UtilizationSource,
    tls::{self, Pki, Validity},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    net::TcpSocket,
    process::{Child, ChildStdin, ChildStdout},
    sync::{Semaphore, watch},
};

/// What the issue asks of one manager: 50,000 hosts at one report a second.
const TARGET_PER_CORE: f64 = 50_000.0;
/// The manager's certificate name and the name agents dial.
const MANAGER: &str = "manager";
/// Per-agent limit on connect + handshake + hello.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Limit on the whole setup (certificates excluded).
const SETUP_TIMEOUT: Duration = Duration::from_mins(5);
/// Limit on one stats exchange with the manager.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors kept free beside the sockets.
const FD_MARGIN: u64 = 256;

#[derive(Parser)]
#[command(name = "manager_bench", about = "Manager report ingestion benchmark")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Simulated agents, one TLS connection and certificate each.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Reports per second per agent.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Reporting time before the window, seconds.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Concurrent connection setups (TCP connect + TLS handshake + hello).
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
    /// Tokio worker threads of the driver (the simulated agents).
    #[arg(long, default_value_t = 2)]
    driver_threads: usize,
    /// Runtime threads of the manager process: 1 (the default) is the
    /// current-thread runtime `lb-control run` uses; more is a multi-thread
    /// runtime.
    #[arg(long, default_value_t = 1)]
    manager_threads: usize,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the manager alone and answer `stats` lines on stdin.
    Serve {
        /// PKI directory with ca.pem, manager.pem and manager.key.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (port 0: any; the bound one is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Runtime threads: 1 is the current-thread runtime of
        /// `lb-control run`; more is a multi-thread runtime.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Serve {
            dir,
            listen,
            threads,
        }) => serve(dir, listen, threads),
        None => drive(&cli),
    }
}

// ---------------------------------------------------------------- manager

/// One answer to `stats`: the manager's counters and its process's CPU.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct ManagerSample {
    streams_accepted: u64,
    handshakes_refused: u64,
    messages_rejected: u64,
    reports_accepted: u64,
    reports_stale: u64,
    servers: u64,
    rusage_user_us: u64,
    rusage_sys_us: u64,
}

impl ManagerSample {
    fn cpu_s(&self) -> f64 {
        (self.rusage_user_us + self.rusage_sys_us) as f64 / 1e6
    }
}

fn serve(dir: PathBuf, listen: SocketAddr, threads: usize) -> Result<()> {
    raise_nofile()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // One thread: the current-thread runtime `lb-control run` uses.
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        // Through serde, as `lb-control` reads it: every key not given
        // keeps its default.
        let config: ManagerConfig = serde_json::from_value(serde_json::json!({
            "listen": listen,
            "name": MANAGER,
            "tls_dir": dir,
            "report_interval_ms": 200,
            // Every agent of the bench comes from loopback.
            "max_connections_per_source": 100_000,
        }))
        .context("manager configuration")?;
        config.validate().map_err(anyhow::Error::msg)?;
        let manager = Manager::new(config);
        let bound = manager.clone().start().await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {bound}")?;
        out.flush()?;
        drop(out);
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        // The driver closes stdin (or dies): time to go.
        while let Some(line) = lines.next_line().await? {
            if line.trim() != "stats" {
                continue;
            }
            let stats = manager.stats();
            let servers = manager.db.lock().await.len() as u64;
            let (user, sys) = rusage_self()?;
            let sample = ManagerSample {
                streams_accepted: stats.streams_accepted,
                handshakes_refused: stats.handshakes_refused,
                messages_rejected: stats.messages_rejected,
                reports_accepted: stats.reports_accepted,
                reports_stale: stats.reports_stale,
                servers,
                rusage_user_us: user,
                rusage_sys_us: sys,
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string(&sample)?)?;
            out.flush()?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------- driver

/// The manager child process: killed by pid when dropped, whatever happened.
struct ManagerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ManagerProcess {
    async fn spawn(dir: &std::path::Path, threads: usize) -> Result<(Self, SocketAddr)> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the manager process")?;
        let stdin = child.stdin.take().context("manager stdin")?;
        let stdout = child.stdout.take().context("manager stdout")?;
        let mut me = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        };
        let line = tokio::time::timeout(Duration::from_secs(30), me.stdout.next_line())
            .await
            .context("the manager did not get ready within 30 s")??
            .context("the manager exited before it was ready")?;
        let addr = line
            .strip_prefix("ready ")
            .with_context(|| format!("unexpected line from the manager: {line:?}"))?
            .parse()
            .with_context(|| format!("bad address in {line:?}"))?;
        Ok((me, addr))
    }

    async fn sample(&mut self) -> Result<ManagerSample> {
        self.stdin.write_all(b"stats\n").await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(STATS_TIMEOUT, self.stdout.next_line())
            .await
            .context("the manager did not answer `stats`")??
            .context("the manager exited")?;
        serde_json::from_str(&line).with_context(|| format!("manager stats {line:?}"))
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        // SIGKILL by pid; kill_on_drop also reaps it.
        let _ = self.child.start_kill();
    }
}

/// Counters shared by the agent tasks.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    disconnected: AtomicU64,
    sent: AtomicU64,
    first_error: StdMutex<Option<String>>,
}

impl Counters {
    fn fail(&self, what: &AtomicU64, error: &anyhow::Error) {
        what.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(format!("{error:#}"));
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }
}

/// What every agent task needs.
struct Shared {
    manager: SocketAddr,
    period: Duration,
    setup: Semaphore,
    go: watch::Receiver<bool>,
    counters: Counters,
}

fn drive(cli: &Cli) -> Result<()> {
    ensure!(cli.agents > 0, "--agents must be at least 1");
    ensure!(
        cli.rate > 0.0 && cli.rate.is_finite(),
        "--rate must be a positive number"
    );
    ensure!(cli.seconds > 0, "--seconds must be at least 1");
    let nofile = raise_nofile()?;
    let needed = cli.agents as u64 + FD_MARGIN;
    ensure!(
        nofile >= needed,
        "{} agents need {needed} file descriptors per process but RLIMIT_NOFILE allows {nofile}; \
         raise the hard limit (ulimit -Hn, /etc/security/limits.conf) or use fewer --agents",
        cli.agents
    );
    eprintln!("manager_bench: RLIMIT_NOFILE {nofile}");

    // First, on a quiet machine: decoding and the database alone.
    let split = breakdown(cli.agents)?;

    // The PKI: CA and manager on disk (the manager loads them), agents in
    // memory.
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let pki = Pki::new(dir.path().join("pki"));
    let day = Duration::from_hours(24);
    let ca = pki.init_ca("manager-bench CA", day, false)?;
    pki.issue(MANAGER, tls::Role::Server, &[], Validity::from_now(day))?;
    let started = Instant::now();
    let configs = issue_agents(&ca, cli.agents)?;
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "manager_bench: issued {} agent certificates in {took:.1} s ({:.0}/s)",
        cli.agents,
        cli.agents as f64 / took
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.driver_threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(cli, pki.dir().to_path_buf(), configs, split));
    // Agent tasks still running die with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// One client configuration (own certificate) per agent, issued on every
/// core.
fn issue_agents(ca: &tls::CaBundle, n: usize) -> Result<Vec<Arc<rustls::ClientConfig>>> {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let chunk = n.div_ceil(threads);
    let validity = Validity::from_now(Duration::from_hours(24));
    let parts: Vec<Result<Vec<_>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Vec<_>> {
                    let mut out = Vec::new();
                    for i in (t * chunk)..((t + 1) * chunk).min(n) {
                        let identity =
                            tls::issue(ca, &agent_name(i), tls::Role::Client, &[], validity)?;
                        out.push(tls::client_config(&ca.cert_pem, &identity)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a certificate thread panicked")))
            })
            .collect()
    });
    let mut configs = Vec::with_capacity(n);
    for part in parts {
        configs.extend(part?);
    }
    Ok(configs)
}

fn agent_name(i: usize) -> String {
    format!("agent-{i:05}")
}

/// Agent `i`'s source address: 127.b.c.d, spread over 127.0.0.0/8 and never
/// in 127.0.0.0/16, where the manager listens.
fn source_addr(i: usize) -> Ipv4Addr {
    let b = 1 + i % 254;
    let rest = i / 254;
    let c = rest % 256;
    let d = 1 + (rest / 256) % 254;
    Ipv4Addr::new(127, b as u8, c as u8, d as u8)
}

async fn run(
    cli: &Cli,
    dir: PathBuf,
    configs: Vec<Arc<rustls::ClientConfig>>,
    (decode_us, db_us): (f64, f64),
) -> Result<()> {
    let (mut manager, addr) = ManagerProcess::spawn(&dir, cli.manager_threads).await?;
    eprintln!(
        "manager_bench: manager pid {} listening on {addr}",
        manager.pid().unwrap_or(0)
    );
    let (go_tx, go) = watch::channel(false);
    let shared = Arc::new(Shared {
        manager: addr,
        period: Duration::from_secs_f64(1.0 / cli.rate),
        setup: Semaphore::new(cli.handshakes.max(1)),
        go,
        counters: Counters::default(),
    });
    let n = configs.len() as u64;

    // Setup: every agent connects, handshakes and says hello; none reports
    // until all are done, so the setup figure is the handshakes alone.
    let before_setup = manager.sample().await?;
    let setup_started = Instant::now();
    for (i, config) in configs.into_iter().enumerate() {
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = agent(i, config, &shared).await {
                shared.counters.fail(&shared.counters.disconnected, &e);
            }
        });
    }
    let c = &shared.counters;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connected = c.connected.load(Ordering::Relaxed);
        let failed = c.failed.load(Ordering::Relaxed);
        eprintln!("manager_bench: setup: {connected} connected, {failed} failed of {n}");
        if connected + failed >= n {
            break;
        }
        if setup_started.elapsed() > SETUP_TIMEOUT {
            eprintln!(
                "manager_bench: setup timed out after {SETUP_TIMEOUT:?}; going on with those connected"
            );
            break;
        }
    }
    let setup_s = setup_started.elapsed().as_secs_f64();
    let after_setup = manager.sample().await?;
    let connected = c.connected.load(Ordering::Relaxed);
    if let Some(e) = c.first_error() {
        eprintln!("manager_bench: first agent error: {e}");
    }
    ensure!(connected > 0, "no agent could connect");

    // Reporting.
    go_tx.send(true)?;
    eprintln!("manager_bench: reporting; warm-up {} s", cli.warmup);
    tokio::time::sleep(Duration::from_secs(cli.warmup)).await;
    let m0 = manager.sample().await?;
    let d0 = rusage_self()?;
    let b0 = machine_busy_s();
    let s0 = c.sent.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for left in (0..cli.seconds).rev() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if left % 5 == 0 && left > 0 {
            eprintln!("manager_bench: measuring, {left} s left");
        }
    }
    let m1 = manager.sample().await?;
    let d1 = rusage_self()?;
    let b1 = machine_busy_s();
    let s1 = c.sent.load(Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let disconnected = c.disconnected.load(Ordering::Relaxed);
    drop(manager); // SIGKILL by pid

    let accepted = m1.reports_accepted - m0.reports_accepted;
    let manager_cpu = m1.cpu_s() - m0.cpu_s();
    let driver_cpu = (d1.0 + d1.1 - d0.0 - d0.1) as f64 / 1e6;
    let per_core = accepted as f64 / manager_cpu.max(1e-9);
    let handshake_cpu = after_setup.cpu_s() - before_setup.cpu_s();
    let offered = (s1 - s0) as f64 / wall;

    println!(
        "== Manager report ingestion (mutual TLS over loopback; {} reports/s per agent, {} s window after {} s warm-up)",
        cli.rate, cli.seconds, cli.warmup
    );
    println!(
        "agents connected           {connected} of {n} (setup {setup_s:.1} s; manager CPU {:.2} ms per handshake + hello)",
        handshake_cpu * 1e3 / connected as f64
    );
    println!("offered reports/s          {offered:.0}");
    println!("accepted reports/s         {:.0}", accepted as f64 / wall);
    println!(
        "manager CPU in window      {manager_cpu:.2} s (user {:.2} + sys {:.2}) = {:.2} cores",
        (m1.rusage_user_us - m0.rusage_user_us) as f64 / 1e6,
        (m1.rusage_sys_us - m0.rusage_sys_us) as f64 / 1e6,
        manager_cpu / wall
    );
    println!(
        "driver CPU in window       {driver_cpu:.2} s = {:.2} cores (machine: {} cores)",
        driver_cpu / wall,
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    if let (Some(b0), Some(b1)) = (b0, b1) {
        let busy = b1 - b0;
        println!(
            "machine busy in window     {:.2} cores (other processes {:.2})",
            busy / wall,
            (busy - manager_cpu - driver_cpu).max(0.0) / wall
        );
    }
    println!(
        "manager µs per report      {:.1}",
        manager_cpu * 1e6 / accepted.max(1) as f64
    );
    println!(
        "reports/s per manager core {per_core:.0} (target ≥ {TARGET_PER_CORE:.0}: {})",
        if per_core >= TARGET_PER_CORE {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "in window: rejected {}, stale {}, servers {}, agent streams lost {disconnected}",
        m1.messages_rejected - m0.messages_rejected,
        m1.reports_stale - m0.reports_stale,
        m1.servers,
    );
    let taken = accepted as f64 / wall;
    if taken < 0.98 * offered {
        println!(
            "note: the manager is saturated and took less than was offered (the rest waits in \
             socket buffers, so its reads carry several reports): reports/s per core is its \
             capacity under a backlog, above its cost when it keeps up (try a lower --rate)"
        );
    } else if taken > 1.02 * offered {
        println!(
            "note: the manager took more than was offered: it was catching up on a backlog \
             from the warm-up (lengthen --warmup)"
        );
    }
    println!(
        "decode alone               {decode_us:.1} µs per report, database update alone \
         {db_us:.1} µs (in-process, thread CPU time, no network: a lower bound; the rest of \
         the manager's time is TLS, system calls, the runtime and cache misses)"
    );
    Ok(())
}

/// Where a report's time goes without the network: the same report bytes
/// through one `Decoder` per host (fed one report at a time, as the
/// manager's reads deliver them), then `ServerDb::report`, on one thread.
/// Returns µs of thread CPU time per report for each, the best of several
/// rounds over all hosts (noise only adds).
fn breakdown(hosts: usize) -> Result<(f64, f64)> {
    const ROUNDS: u64 = 10;
    let mut rng = XorShift::new(7);
    let mut streams = Vec::with_capacity(hosts);
    let mut db = ServerDb::new();
    let now = Instant::now();
    for i in 0..hosts {
        let host = agent_name(i);
        let mut decoder = Decoder::new();
        let mut encoder = Encoder::new(Vec::new(), 1);
        encoder.start(&StreamHeader::new(Role::Agent, host.clone()))?;
        encoder.encode(&mut hello(&host))?;
        decoder.feed(&encoder.take());
        match decoder.next()? {
            Some(Message::Hello(h)) => {
                db.hello(h, None, "", now);
            }
            other => bail!("expected the hello of {host}, got {other:?}"),
        }
        streams.push((decoder, ReportTemplate::new(&host, &mut rng)?));
    }
    let (mut decode_best, mut db_best) = (f64::MAX, f64::MAX);
    for round in 0..ROUNDS {
        // Writing the bytes is the agent's work: done first, not timed.
        let bytes: Vec<Vec<u8>> = streams
            .iter()
            .map(|(_, template)| {
                let mut buf = Vec::new();
                template.write(&mut buf, 10 + round, 1_000 + round);
                buf
            })
            .collect();
        let mut reports = Vec::with_capacity(hosts);
        // Thread CPU time: another process taking the core does not count.
        let t = thread_cpu_s()?;
        for ((decoder, _), bytes) in streams.iter_mut().zip(&bytes) {
            decoder.feed(bytes);
            match decoder.next()? {
                Some(Message::Report(r)) => reports.push(r),
                other => bail!("expected a report, got {other:?}"),
            }
        }
        let decode = thread_cpu_s()? - t;
        let n = reports.len().max(1) as f64;
        let t = thread_cpu_s()?;
        for r in reports {
            db.report(r, now)
                .map_err(|e| anyhow::anyhow!("database refused a report: {e}"))?;
        }
        db_best = db_best.min((thread_cpu_s()? - t) * 1e6 / n);
        decode_best = decode_best.min(decode * 1e6 / n);
    }
    Ok((decode_best, db_best))
}

/// A small, fast generator for jitter (no cryptographic quality needed).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Stand-ins the report template carries where `seq` and `time-ms` go.
const SEQ_MARK: u64 = 987_654_321_987_654_321;
const TIME_MARK: u64 = 123_456_789_123_456_789;

/// A report of one agent as bytes, with `seq` and `time-ms` spliced in per
/// report (what the real encoder would write, without serializing the rest
/// again each time).
struct ReportTemplate {
    before_seq: Vec<u8>,
    before_time: Vec<u8>,
    after_time: Vec<u8>,
}

impl ReportTemplate {
    /// Encodes a report of `host` with the real encoder, which stamps
    /// [`SEQ_MARK`] as its `seq`, and cuts it at the two markers.
    fn new(host: &str, rng: &mut XorShift) -> Result<Self> {
        let mut encoder = Encoder::new(Vec::new(), SEQ_MARK);
        encoder.start(&StreamHeader::new(Role::Agent, host))?;
        encoder.take();
        encoder.encode(&mut report(host, rng))?;
        let encoded = encoder.take();
        let encoded = encoded.as_slice();
        let seq = find_once(encoded, SEQ_MARK.to_string().as_bytes())?;
        let time = find_once(encoded, TIME_MARK.to_string().as_bytes())?;
        ensure!(seq < time, "seq after time-ms in the encoded report");
        let seq_end = seq + SEQ_MARK.to_string().len();
        let time_end = time + TIME_MARK.to_string().len();
        Ok(Self {
            before_seq: encoded[..seq].to_vec(),
            before_time: encoded[seq_end..time].to_vec(),
            after_time: encoded[time_end..].to_vec(),
        })
    }

    fn write(&self, out: &mut Vec<u8>, seq: u64, time_ms: u64) {
        out.clear();
        out.extend_from_slice(&self.before_seq);
        push_decimal(out, seq);
        out.extend_from_slice(&self.before_time);
        push_decimal(out, time_ms);
        out.extend_from_slice(&self.after_time);
    }
}

fn find_once(haystack: &[u8], needle: &[u8]) -> Result<usize> {
    let mut found = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i);
    let first = found
        .next()
        .context("marker missing from the encoded report")?;
    ensure!(found.next().is_none(), "marker twice in the encoded report");
    Ok(first)
}

fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn hello(host: &str) -> Message {
    Hello {
        seq: 0,
        host: host.into(),
        agent_version: "0.1.0".into(),
        cores: 4.0,
        spare: false,
        applications: vec![Application {
            name: "web".into(),
            protocol: Protocol::Tcp,
            ports: vec![80, 443],
            probe: "http GET http://127.0.0.1:80/healthz every 1000 ms, rise 2, fall 3".into(),
        }],
    }
    .into()
}

/// A realistic report (one NIC, one application with one VIP), the size of
/// what `lb-agent` sends.
fn report(host: &str, rng: &mut XorShift) -> Message {
    let busy = (rng.unit() * 100.0).round() / 100.0;
    Report {
        seq: 0,
        host: host.into(),
        time_ms: TIME_MARK,
        interval_ms: 200,
        utilization: Utilization {
            value: busy,
            source: UtilizationSource::HostCpu,
        },
        cpu: Cpu {
            host: busy,
            cgroup: Some((busy * 1.2 * 100.0).round() / 100.0),
        },
        load: Load {
            one: 1.5,
            five: 1.25,
            fifteen: 0.75,
        },
        memory: Memory {
            total_bytes: 8_589_934_592,
            available_bytes: 6_442_450_944,
        },
        nics: vec![Nic {
            name: "eth0".into(),
            rx_bps: 120_000_000,
            tx_bps: 940_000_000,
        }],
        applications: vec![ApplicationStatus {
            name: "web".into(),
            established: 310,
            vip_established: 300,
            health: Health {
                state: HealthState::Up,
                rise: 2,
                fall: 3,
                ok_streak: 40,
                fail_streak: 0,
                detail: None,
            },
            readiness: vec![Readiness {
                vip: std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                vip_on_loopback: true,
                arp_ignore: 1,
                arp_announce: 2,
                local_probe: true,
                ready: true,
                decap: None,
            }],
        }],
    }
    .into()
}

/// One simulated agent: connect from its own address, handshake, header
/// and hello, wait for the start, then report every period with jitter
/// while draining whatever the manager sends.
async fn agent(i: usize, config: Arc<rustls::ClientConfig>, shared: &Shared) -> Result<()> {
    let host = agent_name(i);
    let mut rng = XorShift::new(i as u64 + 1);
    let setup = async {
        let _permit = shared.setup.acquire().await?;
        let socket = TcpSocket::new_v4()?;
        let src = source_addr(i);
        socket
            .bind(SocketAddr::from((src, 0)))
            .with_context(|| format!("binding {src}"))?;
        let tcp = socket
            .connect(shared.manager)
            .await
            .with_context(|| format!("connecting from {src}"))?;
        tcp.set_nodelay(true)?;
        let (mut stream, _) = tls::connect(config, MANAGER, tcp).await?;
        let mut encoder = Encoder::new(Vec::new(), unix_us());
        encoder.start(&StreamHeader::new(Role::Agent, host.clone()))?;
        encoder.encode(&mut hello(&host))?;
        stream.write_all(&encoder.take()).await?;
        stream.flush().await?;
        let template = ReportTemplate::new(&host, &mut rng)?;
        anyhow::Ok((stream, template, encoder.next_seq()))
    };
    let (mut stream, template, mut seq) = match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            shared.counters.fail(&shared.counters.failed, &e);
            return Ok(());
        }
        Err(_) => {
            let e = anyhow::anyhow!("setup timed out after {CONNECT_TIMEOUT:?}");
            shared.counters.fail(&shared.counters.failed, &e);
            return Ok(());
        }
    };
    shared.counters.connected.fetch_add(1, Ordering::Relaxed);

    let mut scratch = vec![0u8; 1024];
    let mut go = shared.go.clone();
    // Drain the manager's header (and session tickets) while waiting.
    loop {
        tokio::select! {
            r = go.wait_for(|g| *g) => { r?; break; }
            r = stream.read(&mut scratch) => {
                if r? == 0 { bail!("{host}: the manager closed the stream"); }
            }
        }
    }

    let period = shared.period;
    let mut buf = Vec::with_capacity(1024);
    let mut last_ms = 0;
    // A random phase spreads the agents over the period.
    let mut base = tokio::time::Instant::now() + period.mul_f64(rng.unit());
    loop {
        // ±10% jitter around the nominal time, not accumulating.
        let deadline = base + period.mul_f64(0.2 * rng.unit()) - period.mul_f64(0.1);
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                r = stream.read(&mut scratch) => {
                    if r? == 0 { bail!("{host}: the manager closed the stream"); }
                }
            }
        }
        let time_ms = unix_ms().max(last_ms + 1);
        last_ms = time_ms;
        template.write(&mut buf, seq, time_ms);
        seq += 1;
        stream.write_all(&buf).await?;
        stream.flush().await?;
        shared.counters.sent.fetch_add(1, Ordering::Relaxed);
        base += period;
        // Fallen behind by more than a period: skip, do not burst.
        let now = tokio::time::Instant::now();
        if base + period < now {
            base = now;
        }
    }
}

// ---------------------------------------------------------------- system

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft
/// limit.
fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// CPU time spent busy (not idle, not waiting for I/O) by the whole
/// machine since boot, seconds, from `/proc/stat`.
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = ticks.iter().take(8).sum::<u64>()
        - ticks.get(3).copied().unwrap_or(0)
        - ticks.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_s() -> Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) } != 0 {
        bail!("clock_gettime: {}", std::io::Error::last_os_error());
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// This process's user and system CPU time, microseconds.
fn rusage_self() -> Result<(u64, u64)> {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) } != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok((us(ru.ru_utime), us(ru.ru_stime)))
}
