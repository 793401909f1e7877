//! One pool mixing the ways to reach a server: s1 at layer 2, s2 through
//! IPIP, s3 through GUE, each tunnelled one taking the outer header off
//! with `lb-agent decap` (its VIP on loopback answers the client
//! directly). Real TCP clients over IPv4 and IPv6; weighted Maglev shares
//! hold whatever the forwarding. The servers share the node's segment here
//! (the tunnel works the same across routers, which only forward the outer
//! packet): the node's FIB finds them on-link.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use lb_tests::{
    BurstOpts, Lab,
    balancer::{Balancer, LAB_SEED, attach_peer_pass, workspace_bin},
    require_root, run_burst,
};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_lab-client");
const PORT: u16 = 80;
/// Connections per family.
const COUNT: usize = 3000;

fn config(lab: &Lab) -> String {
    let mut c = format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {LAB_SEED}\n\
         tunnel_source = [\"{}\", \"{}\"]\ngue_port = 6080\n\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nport = {PORT}\n\n\
         [[service]]\nname = \"web6\"\nvip = \"{}\"\nport = {PORT}\n\n",
        lab.node.eth0.v4,
        lab.node.eth0.v6,
        lab.vip4(),
        lab.vip6()
    );
    for (h, forward) in lab.servers.iter().zip(["l2", "ipip", "gue"]) {
        for (suffix, address) in [("", h.eth0.v4.to_string()), ("-6", h.eth0.v6.to_string())] {
            let service = if suffix.is_empty() { "web" } else { "web6" };
            c += &format!(
                "[[server]]\nname = \"{}{suffix}\"\naddress = \"{address}\"\nforward = \"{forward}\"\nservices = [\"{service}\"]\n\n",
                h.name
            );
        }
    }
    c
}

/// Removes the decapsulation pins even when the test fails.
struct PinRoot(PathBuf);

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn one_pool_mixes_layer_2_ipip_and_gue() -> Result<()> {
    if !require_root("one_pool_mixes_layer_2_ipip_and_gue") {
        return Ok(());
    }
    let mut lab = Lab::builder().servers(3).build()?;
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    // bpf_fib_lookup answers only where the node forwards.
    lab.node.ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
    lab.node.ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    let root = PinRoot(PathBuf::from(format!(
        "/sys/fs/bpf/lbt{}-tunnels-{}",
        std::process::id(),
        lab.id
    )));
    let agent = workspace_bin("lb-agent")?;
    let (node4, node6) = (lab.node.eth0.v4.to_string(), lab.node.eth0.v6.to_string());
    let (vip4, vip6) = (lab.vip4().to_string(), lab.vip6().to_string());
    for s in &lab.servers[1..] {
        s.ns.exec(&[
            agent.to_str().unwrap_or("lb-agent"),
            "decap",
            "attach",
            "--interface",
            "eth0",
            "--source",
            &node4,
            "--source",
            &node6,
            "--vip",
            &vip4,
            "--vip",
            &vip6,
            "--pin-root",
            root.0.to_str().unwrap_or_default(),
        ])?;
    }
    let bal = Balancer::start(&lab, &config(&lab))?;

    for (vip, suffix) in [(lab.vip4_addr(PORT), ""), (lab.vip6_addr(PORT), "-6")] {
        let report = run_burst(
            &lab.client.ns,
            CLIENT,
            &BurstOpts::new(vip, COUNT).concurrency(16),
        )?;
        assert_eq!(
            report.failed,
            0,
            "{vip}: {:?} {:?}",
            report.errors,
            bal.lbctl(&["stats"]).map(|s| s["global"].clone())
        );
        for s in &lab.servers {
            let n = report.by_server.get(&s.name).copied().unwrap_or(0);
            let share = n as f64 * 100.0 / COUNT as f64;
            assert!(
                (share - 100.0 / 3.0).abs() <= 3.0,
                "{vip}: {}{suffix} served {share:.1}% ({:?})",
                s.name,
                report.by_server
            );
        }
    }
    // The node tunnelled two thirds of them, the servers took the headers
    // off.
    let stats = bal.lbctl(&["stats"])?;
    let tunnel = stats.to_string();
    for s in &lab.servers[1..] {
        let out = s.ns.exec_stdout(&[
            agent.to_str().unwrap_or("lb-agent"),
            "decap",
            "status",
            "--interface",
            "eth0",
            "--pin-root",
            root.0.to_str().unwrap_or_default(),
        ])?;
        let kind = if s.name == "s2" { "ipip" } else { "gue" };
        let count: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix(kind).map(|v| v.trim().parse().unwrap_or(0)))
            .context("counter")?;
        assert!(count >= 1000, "{}: {out}", s.name);
        let refused: u64 = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("refused")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .context("refused")?;
        assert_eq!(refused, 0, "{}: {out}", s.name);
    }
    drop(tunnel);
    drop(bal);
    for s in &lab.servers[1..] {
        s.ns.exec(&[
            agent.to_str().unwrap_or("lb-agent"),
            "decap",
            "detach",
            "--interface",
            "eth0",
            "--pin-root",
            root.0.to_str().unwrap_or_default(),
        ])?;
    }
    Ok(())
}
