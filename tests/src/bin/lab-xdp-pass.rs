//! `lab-xdp-pass IFACE...`: attaches the bare `xdp_pass` program to lab veth
//! ends and holds it until killed. On a veth, frames sent with `XDP_TX` (or
//! redirected into it) reach the peer only when the peer runs an XDP program.

use aya::{
    EbpfLoader,
    programs::{Xdp, XdpMode},
};

fn main() -> anyhow::Result<()> {
    let interfaces: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!interfaces.is_empty(), "usage: lab-xdp-pass IFACE...");
    let mut ebpf = EbpfLoader::new().load(lb_control::node::dataplane::FLOOR_PROGRAM)?;
    let program: &mut Xdp = ebpf
        .program_mut("xdp_pass")
        .ok_or_else(|| anyhow::anyhow!("no xdp_pass program in the floor object"))?
        .try_into()?;
    program.load()?;
    for interface in &interfaces {
        program
            .attach(interface, XdpMode::Driver)
            .or_else(|_| program.attach(interface, XdpMode::Skb))
            .map_err(|e| anyhow::anyhow!("attach to {interface}: {e}"))?;
    }
    println!("ready");
    // Held until the test kills us; the links detach with the process.
    loop {
        std::thread::park();
    }
}
