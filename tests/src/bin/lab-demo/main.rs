//! `lab-demo`, run by `cargo xtask demo`: the balancer and its manager in a
//! network-namespace lab, telling what happens as it happens.
//!
//! A client, the balancer node, and three real servers (`s1` serving, `s2`
//! and `s3` in the free pool), each an HTTP server in a cgroup of 0.2 CPU
//! with an agent. Offered load rises past one server's capacity, the
//! manager brings in a free server, the load falls, and a server is
//! drained and handed back. One line per step on the terminal; the
//! daemons' logs, a summary (`summary.json`) and a chart (`demo.svg`) in
//! the demo's directory. Everything is removed at the end, also on Ctrl-C
//! (exit 130); `--keep` leaves the lab running until Ctrl-C.

mod chart;
mod story;
mod watch;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use lb_tests::{
    Lab, LabProcess,
    balancer::{Balancer, wait_until, workspace_bin},
    fleet::{self, Fleet, SERVER_QUOTA, ScaledService},
};

use crate::watch::Watch;

#[derive(Parser, Debug)]
#[command(about = "The balancer's autoscaling story in a network-namespace lab")]
struct Args {
    /// The short story (CI): load past capacity and back, about half the
    /// time.
    #[arg(long)]
    short: bool,
    /// At the end, leave the lab running (for `lbctl top`, a metrics
    /// scrape, your own requests) until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Where the logs, the summary and the chart go (default: a new
    /// directory under the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The service's port, and the CPU each request costs its server (at 0.2
/// CPU a server answers about 40 requests a second).
const PORT: u16 = 80;
const WORK_US: u64 = 4000;
const INTERVAL_MS: u64 = 200;
/// Where the node's metrics are served, inside its namespace.
const METRICS: &str = "127.0.0.1:9641";
const UPPER: f64 = 0.75;
const LOWER: f64 = 0.25;

/// One step of offered load.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    /// Requests a second (0: idle until the pool is back to one server).
    pub rate: u32,
    pub seconds: u32,
    pub words: &'static str,
}

const FULL: &[Phase] = &[
    Phase {
        rate: 10,
        seconds: 6,
        words: "light traffic",
    },
    Phase {
        rate: 25,
        seconds: 6,
        words: "load rising",
    },
    Phase {
        rate: 42,
        seconds: 20,
        words: "more than one server can carry",
    },
    Phase {
        rate: 15,
        seconds: 8,
        words: "load falling",
    },
];

const SHORT: &[Phase] = &[
    Phase {
        rate: 10,
        seconds: 3,
        words: "light traffic",
    },
    Phase {
        rate: 42,
        seconds: 12,
        words: "more than one server can carry",
    },
];

/// Longest wait for the pool to shrink back once the load has stopped.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C (or SIGTERM, SIGHUP) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Sleeps `d` in short steps; fails once interrupted.
pub fn pause(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed)) {
        eprintln!("lab-demo: cannot catch Ctrl-C: {e}");
        return ExitCode::FAILURE;
    }
    if !lb_tests::is_root() {
        eprintln!("lab-demo: it builds network namespaces and loads XDP: run it as root");
        return ExitCode::FAILURE;
    }
    // Killed outright (SIGKILL), the demo takes its processes with it; the
    // next lab removes the namespaces, pins and cgroups it left.
    lb_tests::lab::die_with_parent();
    let result = run(&args);
    if interrupted() {
        println!("interrupted");
    }
    let leftovers = leftovers();
    if leftovers.is_empty() {
        println!("cleaned up: program detached, pins, namespaces, cgroups and processes gone");
    } else {
        eprintln!("lab-demo: left behind: {}", leftovers.join(", "));
    }
    match result {
        _ if interrupted() => ExitCode::from(130),
        Ok(()) if leftovers.is_empty() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lab-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What this process created and did not remove: namespaces, pins,
/// cgroups (every name carries the process id).
fn leftovers() -> Vec<String> {
    let pid = std::process::id();
    let mut left = Vec::new();
    let named = |dir: &Path, prefix: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect()
    };
    for name in named(Path::new("/var/run/netns"), "lbt-") {
        if name.contains(&format!("-{pid}-")) {
            left.push(format!("namespace {name}"));
        }
    }
    for name in named(Path::new("/sys/fs/bpf"), &format!("lbt{pid}-")) {
        left.push(format!("pins /sys/fs/bpf/{name}"));
    }
    for hierarchy in named(Path::new("/sys/fs/cgroup"), "") {
        let dir = Path::new("/sys/fs/cgroup").join(&hierarchy);
        for name in named(&dir, &format!("lbt-{pid}-")) {
            left.push(format!("cgroup {}", dir.join(name).display()));
        }
    }
    left
}

/// The demo's directory: `--dir`, or a new one under the temporary
/// directory; `logs/` inside it.
fn demo_dir(args: &Args) -> Result<PathBuf> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("xdplb-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The lab's daemons, dropped in field order: agents, balancer, then the
/// lab (its servers, namespaces), then the cgroups (held for that alone).
struct Running {
    _agents: Vec<LabProcess>,
    bal: Balancer,
    lab: Lab,
    _fleet: Fleet,
}

fn run(args: &Args) -> Result<()> {
    let dir = demo_dir(args)?;
    let started = Instant::now();
    story::say(
        started,
        "building the lab: a client, the balancer node, servers s1 s2 s3 (each an HTTP server in a cgroup of 0.2 CPU, with an agent)",
    );
    let running = start(&dir)?;
    let (lab, bal) = (&running.lab, &running.bal);
    story::say(
        started,
        &format!(
            "VIP {}:{PORT} → node {} (XDP on eth0) → s1 {}, s2 {}, s3 {} by direct server return",
            lab.vip4(),
            lab.node.eth0.v4,
            lab.servers[0].eth0.v4,
            lab.servers[1].eth0.v4,
            lab.servers[2].eth0.v4,
        ),
    );
    story::say(
        started,
        &format!(
            "daemons' logs in {}/logs (lb-control.log, agent-s1.log, …)",
            dir.display()
        ),
    );
    let heard = Instant::now();
    let ready = wait_until(Duration::from_secs(30), || {
        interrupted() || watch::all_reporting(bal)
    });
    pause(Duration::ZERO)?;
    if !ready {
        bail!(
            "the agents did not all report in 30 s: see {}/logs",
            dir.display()
        );
    }
    story::say(
        started,
        &format!(
            "the manager hears all three agents ({:.1} s): s1 serves web, s2 and s3 wait in the free pool, all healthy",
            heard.elapsed().as_secs_f64()
        ),
    );
    let phases = if args.short { SHORT } else { FULL };
    let mut watch = Watch::new(bal, lab, started, UPPER)?;
    watch.play(phases, IDLE_LIMIT)?;
    let summary = watch.finish()?;
    let chart_path = dir.join("demo.svg");
    chart::draw(&chart_path, &summary, UPPER, LOWER)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary.to_json())?,
    )?;
    summary.print(&chart_path, &dir);
    if let Err(e) = summary.check() {
        bail!("the story did not happen as it should: {e}");
    }
    if args.keep {
        keep(&running, &dir)?;
    }
    drop(running);
    Ok(())
}

/// The lab, the balancer with the manager, and the agents.
fn start(dir: &Path) -> Result<Running> {
    let mut lab = Lab::builder().servers(3).build()?;
    lab.server_args = vec!["--work-us".into(), WORK_US.to_string(), "--http-app".into()];
    let (lab, fleet) = {
        let server = workspace_bin("lab-server")?;
        lab.start_servers(server.to_str().unwrap_or("lab-server"), &[PORT], &[])?;
        lb_tests::balancer::attach_peer_pass(&mut lab)?;
        let fleet = Fleet::with_quotas(&mut lab, &[SERVER_QUOTA; 3])?;
        (lab, fleet)
    };
    let scaling = format!(
        "upper = {UPPER}\nlower = {LOWER}\nscale_out_window = \"0s\"\nscale_in_window = \"3s\"\n\
         cooldown = \"2s\"\nwarmup = \"2s\"\nmin_servers = 1\nmax_servers = 3\ndrain_idle = \"2s\"\ndrain_timeout = \"10s\""
    );
    let mut config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, &scaling, 1),
    );
    config += &format!("[metrics]\nlisten = \"{METRICS}\"\n");
    let bal = Balancer::start_logged(&lab, &config, &dir.join("logs/lb-control.log"))?;
    let probe = format!(
        "{{ kind = \"http\", port = {PORT}, path = \"/healthz\", address = \"{}\" }}",
        lab.vip4()
    );
    let agents = (0..3)
        .map(|i| {
            let config = fleet.agent_config_probing(&lab, i, PORT, INTERVAL_MS, &probe);
            let log = dir.join(format!("logs/agent-{}.log", lab.servers[i].name));
            fleet.start_agent_logged(&lab, i, &config, &log)
        })
        .collect::<Result<_>>()?;
    Ok(Running {
        _agents: agents,
        bal,
        lab,
        _fleet: fleet,
    })
}

/// `--keep`: the commands to look at the running lab, then wait for
/// Ctrl-C.
fn keep(running: &Running, dir: &Path) -> Result<()> {
    let lbctl = workspace_bin("lbctl")?;
    let client = workspace_bin("lab-client")?;
    let lab = &running.lab;
    println!(
        "\nthe lab keeps running; from another terminal:\n\
         \x20 {} --socket {} top\n\
         \x20 ip netns exec {} curl -s http://{METRICS}/metrics | grep '^lb_'\n\
         \x20 ip netns exec {} curl -s http://{}/\n\
         \x20 ip netns exec {} {} load --http --target {} --rate 42 --seconds 20\n\
         \x20 tail -f {}/logs/lb-control.log\n\
         Ctrl-C here ends it and cleans up.",
        lbctl.display(),
        running.bal.socket.display(),
        lab.node.ns.name(),
        lab.client.ns.name(),
        lab.vip4_addr(PORT),
        lab.client.ns.name(),
        client.display(),
        lab.vip4_addr(PORT),
        dir.display(),
    );
    while !interrupted() {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C is how a kept lab ends: not an interruption of the story.
    INTERRUPTED.store(false, Ordering::Relaxed);
    println!();
    Ok(())
}
