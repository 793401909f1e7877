//! `lab-demo`, run by `cargo xtask demo`: a network-namespace lab (client, balancer node, three
//! real servers on a bridge), the balancer serving a VIP to real TCP
//! clients with direct server return, printed results, then clean-up.

use std::net::IpAddr;

use anyhow::{Result, bail};
use lb_tests::{
    BurstOpts, Lab,
    balancer::{Balancer, LAB_SEED, attach_peer_pass, workspace_bin},
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
    Ok(())
}
