//! `lab-demo`, run by `cargo xtask demo`: a network-namespace lab (client, balancer node, three
//! real servers on a bridge), the balancer serving a VIP to real TCP
//! clients with direct server return, printed results; then a second lab
//! where the manager grows the pool under real load and shrinks it again;
//! clean-up.

use std::net::IpAddr;

use std::time::Duration;

use anyhow::{Result, bail};
use lb_tests::{
    BurstOpts, Lab,
    balancer::{Balancer, LAB_SEED, attach_peer_pass, wait_until, workspace_bin},
    fleet::{self, Fleet, ScaledService},
    proto::LoadReport,
    run_burst,
};

fn config(lab: &Lab, states: &[&str]) -> String {
    let mut c = format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {LAB_SEED}\n\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\n",
        lab.vip4()
    );
    for ((h, w), st) in lab.servers.iter().zip([1, 2, 3]).zip(states) {
        c += &format!(
            "[[server]]\nname = \"{}\"\naddress = \"{}\"\nweight = {w}\nstate = \"{st}\"\nservices = [\"web\"]\n\n",
            h.name, h.eth0.v4
        );
    }
    c
}

fn show(title: &str, report: &lb_tests::BurstReport) {
    println!("{title}: {} ok, {} failed", report.ok, report.failed);
    for (server, n) in &report.by_server {
        let share = *n as f64 * 100.0 / report.ok.max(1) as f64;
        println!(
            "  {server:<4} {n:5}  {share:5.1}%  {}",
            "#".repeat((share / 2.0) as usize)
        );
    }
}

fn lbctl(bal: &Balancer, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(workspace_bin("lbctl")?)
        .arg("--socket")
        .arg(&bal.socket)
        .args(args)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn main() -> Result<()> {
    if !lb_tests::is_root() {
        bail!("the demo builds network namespaces and loads XDP: run it as root");
    }
    let server_bin = workspace_bin("lab-server")?;
    let client_bin = workspace_bin("lab-client")?;
    let server_bin = server_bin.to_str().unwrap_or_default();
    let client_bin = client_bin.to_str().unwrap_or_default();

    println!("building the lab: client, balancer node, servers s1 s2 s3 on one bridge ...");
    let mut lab = Lab::builder().servers(3).build()?;
    lab.start_servers(server_bin, &[80], &[])?;
    attach_peer_pass(&mut lab)?;
    println!(
        "VIP {}:80 held on the servers' loopback; client {} routes it via the node {}",
        lab.vip4(),
        lab.client.eth0.v4,
        lab.node.eth0.v4
    );
    let bal = Balancer::start(&lab, &config(&lab, &["allocated"; 3]))?;
    println!("\n$ lbctl service list");
    lbctl(&bal, &["service", "list"])?;

    let report = run_burst(
        &lab.client.ns,
        client_bin,
        &BurstOpts::new(lab.vip4_addr(80), 3000).concurrency(16),
    )?;
    println!();
    show("3000 TCP connections to the VIP, weights 1:2:3", &report);

    bal.reload(&config(&lab, &["draining", "allocated", "allocated"]))?;
    let report = run_burst(
        &lab.client.ns,
        client_bin,
        &BurstOpts::new(lab.vip4_addr(80), 1000).concurrency(16),
    )?;
    println!();
    show(
        "after draining s1 (lbctl config reload), 1000 more",
        &report,
    );

    println!("\n$ lbctl server list");
    lbctl(&bal, &["server", "list"])?;
    println!("\n$ lbctl stats");
    lbctl(&bal, &["stats"])?;
    let _ = IpAddr::V4(lab.vip4());
    println!("\ncleaning up (program detached, pins removed, namespaces deleted)");
    drop(bal);
    drop(lab);
    autoscaling(server_bin, client_bin)
}

/// The manager at work: s1 serves, s2 and s3 wait in the free pool, each
/// server in a cgroup of 0.2 CPU with an agent; load past s1's capacity
/// brings in a free server, and the pool shrinks back when it stops.
fn autoscaling(server_bin: &str, client_bin: &str) -> Result<()> {
    println!("\n== autoscaling: a second lab, servers with agents and 0.2 CPU each ...");
    let mut lab = Lab::builder().servers(3).build()?;
    lab.server_args = vec!["--work-us".into(), "4000".into()];
    lab.start_servers(server_bin, &[80], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService {
            port: 80,
            interval_ms: 200,
            scaling: "scale_in_window = \"3s\"\ncooldown = \"2s\"\nwarmup = \"2s\"\ndrain_idle = \"2s\"",
            manager_keys: "",
            remote_nodes: &[],
            allocated: 1,
        },
    );
    let bal = Balancer::start(&lab, &config)?;
    let _agents: Vec<_> = (0..3)
        .map(|i| fleet.start_agent(&lab, i, 80, 200))
        .collect::<Result<_>>()?;
    let ready = wait_until(Duration::from_secs(30), || {
        bal.lbctl(&["pool"]).is_ok_and(|v| {
            v["pools"][0]["free"]
                .as_array()
                .is_some_and(|f| f.len() == 2 && f.iter().all(|m| m["health"] == "up"))
        })
    });
    if !ready {
        bail!("the agents did not all report in 30 s");
    }
    println!("\n$ lbctl pool");
    lbctl(&bal, &["pool"])?;
    println!("\n40 connections a second for 12 s (each costs its server about 5 ms of CPU) ...");
    let target = lab.vip4_addr(80).to_string();
    let mut load = lab.client.ns.spawn(&[
        client_bin,
        "load",
        "--target",
        &target,
        "--rate",
        "40",
        "--seconds",
        "12",
    ])?;
    let line = load.read_line(Duration::from_secs(60))?;
    let report: LoadReport = serde_json::from_str(&line)?;
    println!(
        "{} ok, {} failed, by server {:?}",
        report.ok, report.failed, report.by_server
    );
    println!("\n$ lbctl pool");
    lbctl(&bal, &["pool"])?;
    println!("\nidle now: waiting for the scale-in window and the drain ...");
    let shrunk = wait_until(Duration::from_secs(40), || {
        bal.lbctl(&["pool"]).is_ok_and(|v| {
            v["pools"][0]["members"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
        })
    });
    if !shrunk {
        println!("(the pool has not shrunk yet)");
    }
    println!("\n$ lbctl events");
    lbctl(&bal, &["events"])?;
    println!("\n$ lbctl pool");
    lbctl(&bal, &["pool"])?;
    println!("\ncleaning up");
    drop(bal);
    drop(lab);
    Ok(())
}
