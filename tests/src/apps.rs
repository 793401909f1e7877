//! Running `lab-server` and `lab-client` inside lab namespaces.
//!
//! The library cannot know where cargo put the binaries: integration tests
//! of this package pass `env!("CARGO_BIN_EXE_lab-server")` and
//! `env!("CARGO_BIN_EXE_lab-client")`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::lab::{LabProcess, Netns};
use crate::proto::{BurstReport, HoldConn, PingReport};

/// How long `start_lab_server` waits for "ready".
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `lab-server --name NAME --listen .. --udp ..` inside `ns` and
/// waits until it prints `ready`.
pub fn start_lab_server(
    ns: &Netns,
    server_bin: &str,
    name: &str,
    tcp: &[SocketAddr],
    udp: &[SocketAddr],
    extra: &[String],
) -> Result<LabProcess> {
    let mut args: Vec<String> = vec![server_bin.into(), "--name".into(), name.into()];
    args.extend(extra.iter().cloned());
    for a in tcp {
        args.extend(["--listen".into(), a.to_string()]);
    }
    for a in udp {
        args.extend(["--udp".into(), a.to_string()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = ns.spawn(&argv)?;
    p.wait_for_line("ready", SERVER_READY_TIMEOUT)
        .with_context(|| format!("lab-server {name} in {}", ns.name()))?;
    Ok(p)
}

/// Options of `lab-client burst` (and `udp`).
#[derive(Clone, Debug)]
pub struct BurstOpts {
    pub target: SocketAddr,
    pub count: usize,
    /// Default 8.
    pub concurrency: usize,
    /// Per operation (connect, read); default 2000.
    pub timeout_ms: u64,
    /// Explicit consecutive source ports `P..P+count` (keep them below the
    /// ephemeral range, 32768). Connections are then closed with RST so the
    /// ports are free again at once (no TIME_WAIT).
    pub src_port_start: Option<u16>,
    /// UDP only: resends on timeout; default 2.
    pub retries: u32,
}

impl BurstOpts {
    pub fn new(target: SocketAddr, count: usize) -> BurstOpts {
        BurstOpts {
            target,
            count,
            concurrency: 8,
            timeout_ms: 2000,
            src_port_start: None,
            retries: 2,
        }
    }

    pub fn concurrency(mut self, c: usize) -> Self {
        self.concurrency = c;
        self
    }

    pub fn timeout_ms(mut self, t: u64) -> Self {
        self.timeout_ms = t;
        self
    }

    pub fn src_port_start(mut self, p: u16) -> Self {
        self.src_port_start = Some(p);
        self
    }

    pub fn retries(mut self, r: u32) -> Self {
        self.retries = r;
        self
    }

    fn args(&self, mode: &str, client_bin: &str) -> Vec<String> {
        let mut a: Vec<String> = vec![
            client_bin.into(),
            mode.into(),
            "--target".into(),
            self.target.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
        ];
        if let Some(p) = self.src_port_start {
            a.extend(["--src-port-start".into(), p.to_string()]);
        }
        if mode == "udp" {
            a.extend(["--retries".into(), self.retries.to_string()]);
        }
        a
    }

    /// A generous bound on the whole run.
    fn run_timeout(&self) -> Duration {
        let rounds = self.count.div_ceil(self.concurrency.max(1)) as u64;
        let per = self.timeout_ms.saturating_mul(2 + u64::from(self.retries));
        Duration::from_millis(rounds.saturating_mul(per).saturating_add(10_000))
    }
}

fn run_report(ns: &Netns, argv: &[String], timeout: Duration) -> Result<BurstReport> {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = ns.exec_timeout(&argv, timeout)?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("parsing lab-client output {text:?}"))
}

/// Runs `lab-client burst` inside `ns` (normally `lab.client.ns`).
pub fn run_burst(ns: &Netns, client_bin: &str, opts: &BurstOpts) -> Result<BurstReport> {
    run_report(ns, &opts.args("burst", client_bin), opts.run_timeout())
}

/// Runs `lab-client udp` inside `ns`.
pub fn run_udp(ns: &Netns, client_bin: &str, opts: &BurstOpts) -> Result<BurstReport> {
    run_report(ns, &opts.args("udp", client_bin), opts.run_timeout())
}

/// A running `lab-client hold`: long-lived connections from ports
/// `src_port_start..+count`, pinged on demand. Killed on drop.
#[derive(Debug)]
pub struct HoldSession {
    /// The client process (kill it to drop every connection at once).
    pub process: LabProcess,
    /// One entry per connection, in port order, as first connected.
    pub conns: Vec<HoldConn>,
}

impl HoldSession {
    /// Starts `lab-client hold` inside `ns` and waits until every connection
    /// is connected or failed (failed ones have `server: None`).
    pub fn start(
        ns: &Netns,
        client_bin: &str,
        target: SocketAddr,
        count: usize,
        src_port_start: u16,
    ) -> Result<HoldSession> {
        let (t, c, p) = (
            target.to_string(),
            count.to_string(),
            src_port_start.to_string(),
        );
        let argv = [
            client_bin,
            "hold",
            "--target",
            &t,
            "--count",
            &c,
            "--src-port-start",
            &p,
        ];
        let mut process = ns.spawn(&argv)?;
        let mut conns = Vec::with_capacity(count);
        for _ in 0..count {
            let line = process.read_line(Duration::from_secs(30))?;
            conns.push(
                serde_json::from_str(&line)
                    .with_context(|| format!("parsing hold line {line:?}"))?,
            );
        }
        Ok(HoldSession { process, conns })
    }

    /// Sends "ping" on every connection and reports who answered.
    pub fn ping(&mut self) -> Result<PingReport> {
        self.process.write_line("ping")?;
        let line = self.process.read_line(Duration::from_secs(15))?;
        serde_json::from_str(&line).with_context(|| format!("parsing ping reply {line:?}"))
    }

    /// Closes every connection and waits for the client to exit.
    pub fn quit(mut self) -> Result<()> {
        self.process.write_line("quit")?;
        let status = self.process.wait_timeout(Duration::from_secs(10))?;
        if !status.success() {
            bail!("lab-client hold exited with {status}");
        }
        Ok(())
    }
}
