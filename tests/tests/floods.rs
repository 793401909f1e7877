//! End-to-end: floods of idle TCP connections and stalled TLS handshakes
//! against the manager's agent port and a remote node's control port stop
//! nothing — the control socket answers, real agents keep reporting, a
//! change reaches every node — and the daemons' file descriptors come back
//! to where they were once the floods are closed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_proto::tls::{Role, SanEntry};
use lb_tests::{
    Lab,
    balancer::{Balancer, attach_peer_pass, wait_until, workspace_bin},
    fleet::{self, Fleet, MANAGER_PORT, NODE_PORT, ScaledService},
    require_root,
    scaling::pool,
};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const PORT: u16 = 80;
const INTERVAL_MS: u64 = 200;
const IDLE: usize = 3000;
const STALLED: usize = 500;

/// `lab-client flood` in the client namespace, driven over its stdin.
struct Flood {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Flood {
    fn start(lab: &Lab, target: &str) -> Result<Self> {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", lab.client.ns.name()])
            .arg(workspace_bin("lab-client")?)
            .args(["flood", "--target", target])
            .args([
                "--idle",
                &IDLE.to_string(),
                "--stalled",
                &STALLED.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn line(&mut self) -> Result<Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("flood said {line:?}"))
    }

    /// How many of its connections are still open.
    fn open(&mut self) -> Result<u64> {
        self.stdin.write_all(b"check\n")?;
        let v = self.line()?;
        v["open"].as_u64().with_context(|| format!("{v}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"quit\n");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

fn reports_accepted(bal: &Balancer) -> Result<u64> {
    let stats = bal.lbctl(&["stats"])?;
    stats["manager"]["reports_accepted"]
        .as_u64()
        .with_context(|| format!("{stats}"))
}

#[test]
fn floods_of_idle_and_stalled_connections_stop_nothing() -> Result<()> {
    if !require_root("floods_of_idle_and_stalled_connections_stop_nothing") {
        return Ok(());
    }
    let mut lab = Lab::builder().servers(2).second_node(true).build()?;
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    let n2 = lab.node2.as_ref().context("no node2")?;
    fleet.issue(
        "node2",
        Role::Server,
        &[SanEntry::Ip(IpAddr::V4(n2.eth0.v4))],
    )?;
    let node2 = Balancer::start_on(&lab, n2, &fleet::remote_node_config(&lab, fleet.pki_dir())?)?;
    let remote = [("node2", format!("{}:{NODE_PORT}", n2.eth0.v4))];
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService {
            port: PORT,
            interval_ms: INTERVAL_MS,
            scaling: "enabled = false\ndynamic_weights = false",
            manager_keys: "",
            remote_nodes: &remote,
            allocated: 1,
        },
    );
    let bal = Balancer::start(&lab, &config)?;
    let _agents = [
        fleet.start_agent(&lab, 0, PORT, INTERVAL_MS)?,
        fleet.start_agent(&lab, 1, PORT, INTERVAL_MS)?,
    ];
    let monitored = |bal: &Balancer| {
        pool(bal).is_some_and(|p| {
            ["members", "free"].iter().all(|k| {
                p[k].as_array()
                    .is_some_and(|l| !l.is_empty() && l.iter().all(|m| m["monitor"] == "monitored"))
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || monitored(&bal)),
        "agents never monitored"
    );
    let pids = [
        bal.process.as_ref().context("manager")?.pid(),
        node2.process.as_ref().context("node2")?.pid(),
    ];
    let baseline = [fds(pids[0])?, fds(pids[1])?];

    let mut floods = [
        Flood::start(&lab, &format!("{}:{MANAGER_PORT}", lab.node.eth0.v4))?,
        Flood::start(&lab, &format!("{}:{NODE_PORT}", n2.eth0.v4))?,
    ];
    for f in &mut floods {
        let v = f.line()?;
        assert_eq!(v["opened"].as_u64(), Some((IDLE + STALLED) as u64), "{v}");
    }
    // Meanwhile: the control socket answers, the agents report, a change
    // reaches both nodes.
    let asked = Instant::now();
    let p = bal.lbctl(&["pool"])?;
    println!("lbctl pool during the floods: {:?}", asked.elapsed());
    assert!(p["pools"].as_array().is_some_and(|a| !a.is_empty()), "{p}");
    let before = reports_accepted(&bal)?;
    std::thread::sleep(Duration::from_secs(2));
    let after = reports_accepted(&bal)?;
    assert!(after >= before + 10, "reports stalled: {before} -> {after}");
    bal.lbctl(&["server", "allocate", "s2", "--service", "web"])?;
    for (bal, name) in [(&bal, "node"), (&node2, "node2")] {
        let v = bal.lbctl(&["server", "list"])?;
        let s2 = v["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "s2"))
            .with_context(|| format!("{name}: no s2 in {v}"))?;
        assert!(
            s2["services"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["state"] == "active")),
            "{name}: s2 not active: {s2}"
        );
    }
    // The daemons hold only what the caps allow, and close what never
    // finishes its handshake.
    for (pid, base) in pids.iter().zip(baseline) {
        let now = fds(*pid)?;
        assert!(
            now < base + 64,
            "pid {pid}: {now} fds during the flood (baseline {base})"
        );
    }
    for f in &mut floods {
        assert!(
            wait_until(Duration::from_secs(30), || f.open().is_ok_and(|n| n == 0)),
            "connections that never finished a handshake stayed open"
        );
    }
    drop(floods);
    for (pid, base) in pids.iter().zip(baseline) {
        assert!(
            wait_until(Duration::from_secs(15), || fds(*pid)
                .is_ok_and(|n| n <= base + 4)),
            "pid {pid}: fds did not come back to {base}: {:?}",
            fds(*pid)
        );
    }
    Ok(())
}
