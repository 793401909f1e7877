//! One pool mixing the ways to reach a server: s1 at layer 2, s2 through
//! IPIP, s3 through GUE, each tunnelled one taking the outer header off
//! with `lb-agent decap` (its VIP on loopback answers the client
//! directly). Real TCP clients over IPv4 and IPv6; weighted Maglev shares
//! hold whatever the forwarding. The servers share the node's segment here
//! (the tunnel works the same across routers, which only forward the outer
//! packet): the node's FIB finds them on-link.

use anyhow::Result;
use lb_tests::{
    BurstOpts, Lab,
    balancer::{Balancer, LAB_SEED, attach_peer_pass},
    decap::DecapPins,
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
    let pins = DecapPins::new(&lab, "tunnels");
    let nodes = [lab.node.eth0.v4.into(), lab.node.eth0.v6.into()];
    let vips = [lab.vip4().into(), lab.vip6().into()];
    for s in &lab.servers[1..] {
        pins.attach(&s.ns, &nodes, &vips)?;
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
    // The servers took the headers off, from the node alone.
    for s in &lab.servers[1..] {
        let kind = if s.name == "s2" { "ipip" } else { "gue" };
        let n = pins.counter(&s.ns, kind)?;
        assert!(n >= COUNT as u64 / 3, "{}: {n} {kind} packets", s.name);
        assert_eq!(pins.counter(&s.ns, "refused")?, 0, "{}", s.name);
    }
    let stats = bal.lbctl(&["stats"])?;
    let tunnelled = |name: &str| {
        stats["global"]
            .as_array()
            .and_then(|g| g.iter().find(|e| e[0] == name))
            .and_then(|e| e[1].as_u64())
            .unwrap_or(0)
    };
    assert!(
        tunnelled("tunnel_ipip") > 0 && tunnelled("tunnel_gue") > 0,
        "{stats}"
    );
    drop(bal);
    for s in &lab.servers[1..] {
        pins.run(&s.ns, &["detach", "--interface", "eth0"])?;
    }
    Ok(())
}
