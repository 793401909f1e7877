//! The decapsulation program on a real server, installed with `lb-agent
//! decap attach` (no agent running) in a lab: real tunnelled packets (IPIP
//! over IPv4 and IPv6, GUE) from another host reach the server's
//! application on the VIP, which answers the inner packet's client
//! directly; a tunnel from a source that is not allowed is dropped and
//! counted; attaching again replaces the program in place; `detach`
//! removes it and every pin.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use lb_tests::{Lab, Netns, decap::DecapPins, require_root};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const PORT: u16 = 53;
const GUE_PORT: u16 = 6080;

fn xdp_program(ns: &Netns) -> Result<Option<u64>> {
    let out = ns.exec_stdout(&["ip", "-j", "link", "show", "dev", "eth0"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0]["xdp"]["prog"]["id"].as_u64())
}

/// The ones' complement sum of `data`, folded.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// An inner UDP datagram `client:sport → vip:PORT` with its IP header.
fn inner(client: IpAddr, vip: IpAddr, sport: u16) -> Vec<u8> {
    let payload = b"hello";
    let len = u16::try_from(8 + payload.len()).unwrap_or(0);
    let mut udp = sport.to_be_bytes().to_vec();
    udp.extend_from_slice(&PORT.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    match (client, vip) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            // An IPv4 UDP checksum of zero means none.
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + len).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&c.octets());
            ip.extend_from_slice(&v.octets());
            let check = !(sum(&ip, 0) as u16);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            ip.extend(udp);
            ip
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            let mut pseudo = c.octets().to_vec();
            pseudo.extend_from_slice(&v.octets());
            pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            let check = !(sum(&udp, sum(&pseudo, 0)) as u16);
            udp[6..8].copy_from_slice(&check.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&len.to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&c.octets());
            ip.extend_from_slice(&v.octets());
            ip.extend(udp);
            ip
        }
        _ => Vec::new(),
    }
}

/// How the client wraps the inner packet.
#[derive(Clone, Copy, Debug)]
enum Wrap {
    /// A raw socket of protocol 4 (IPv4) or 41 (IPv6): the kernel adds
    /// the outer header.
    Ipip,
    /// UDP to the GUE port with a version-0 GUE header.
    Gue,
}

/// From the client namespace: the inner datagram to the VIP, tunnelled to
/// `server`; the answer to the inner packet's client, if one comes.
fn tunnel(lab: &Lab, server: IpAddr, vip: IpAddr, wrap: Wrap) -> Result<Option<String>> {
    // The inner packet's client is of the VIP's family, the outer
    // source of the server's.
    let client = match vip {
        IpAddr::V4(_) => IpAddr::V4(lab.client.eth0.v4),
        IpAddr::V6(_) => IpAddr::V6(lab.client.eth0.v6),
    };
    let outer = match server {
        IpAddr::V4(_) => IpAddr::V4(lab.client.eth0.v4),
        IpAddr::V6(_) => IpAddr::V6(lab.client.eth0.v6),
    };
    lab.client.ns.run(move || {
        let answers = UdpSocket::bind(SocketAddr::new(client, 0))?;
        answers.set_read_timeout(Some(Duration::from_millis(700)))?;
        let sport = answers.local_addr()?.port();
        let packet = inner(client, vip, sport);
        let domain = Domain::for_address(SocketAddr::new(server, 0));
        for _ in 0..3 {
            match wrap {
                Wrap::Ipip => {
                    let proto = if server.is_ipv4() { 4 } else { 41 };
                    let raw = Socket::new(domain, Type::RAW, Some(Protocol::from(proto)))?;
                    raw.send_to(&packet, &SockAddr::from(SocketAddr::new(server, 0)))?;
                }
                Wrap::Gue => {
                    let proto = if vip.is_ipv4() { 4 } else { 41 };
                    let mut payload = vec![0, proto, 0, 0];
                    payload.extend_from_slice(&packet);
                    let udp = UdpSocket::bind(SocketAddr::new(outer, 0))?;
                    udp.send_to(&payload, SocketAddr::new(server, GUE_PORT))?;
                }
            }
            let mut buf = [0u8; 256];
            match answers.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from != SocketAddr::new(vip, PORT) {
                        bail!("answer from {from}, not the VIP");
                    }
                    return Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    })
}

#[test]
fn tunnelled_packets_from_allowed_sources_reach_the_vip_and_others_are_dropped() -> Result<()> {
    if !require_root("tunnelled_packets_from_allowed_sources_reach_the_vip_and_others_are_dropped")
    {
        return Ok(());
    }
    let mut lab = Lab::builder().servers(1).build()?;
    lab.start_servers(SERVER, &[], &[PORT])?;
    let pins = DecapPins::new(&lab, "decap");
    let s1 = &lab.servers[0];
    let (server4, server6) = (IpAddr::V4(s1.eth0.v4), IpAddr::V6(s1.eth0.v6));
    let (vip4, vip6) = (IpAddr::V4(lab.vip4()), IpAddr::V6(lab.vip6()));
    let node4 = IpAddr::V4(lab.node.eth0.v4);
    let vips = [vip4, vip6];
    let out = pins.attach(&s1.ns, &[node4], &vips)?;
    assert!(out.contains("decapsulation on eth0"), "{out}");
    let first = xdp_program(&s1.ns)?.context("no XDP program on eth0")?;
    assert_eq!(tunnel(&lab, server4, vip4, Wrap::Ipip)?, None);
    assert_eq!(tunnel(&lab, server4, vip4, Wrap::Gue)?, None);
    assert!(pins.counter(&s1.ns, "refused")? >= 2);
    assert_eq!(pins.counter(&s1.ns, "ipip")?, 0);

    // The client allowed too (both families): attached again in place.
    let clients = [
        node4,
        IpAddr::V4(lab.client.eth0.v4),
        IpAddr::V6(lab.client.eth0.v6),
    ];
    pins.attach(&s1.ns, &clients, &vips)?;
    let second = xdp_program(&s1.ns)?.context("no XDP program after the replace")?;
    assert_ne!(first, second, "the program was not replaced");
    for (server, vip, wrap) in [
        (server4, vip4, Wrap::Ipip),
        (server6, vip6, Wrap::Ipip),
        (server4, vip4, Wrap::Gue),
        (server6, vip6, Wrap::Gue),
        (server4, vip6, Wrap::Gue),
    ] {
        assert_eq!(
            tunnel(&lab, server, vip, wrap)?.as_deref(),
            Some("s1"),
            "{wrap:?} to {server} for {vip}"
        );
    }
    assert!(pins.counter(&s1.ns, "ipip")? >= 2);
    assert!(pins.counter(&s1.ns, "gue")? >= 3);
    // From an allowed source, but for an address that is no VIP here (the
    // server's own): dropped, never relayed.
    assert_eq!(tunnel(&lab, server4, server4, Wrap::Ipip)?, None);
    assert!(pins.counter(&s1.ns, "not_a_vip")? >= 1);

    // Detached: no program, no pins; a second detach has nothing to do.
    let out = pins.run(&s1.ns, &["detach", "--interface", "eth0"])?;
    assert!(out.contains("removed"), "{out}");
    assert_eq!(xdp_program(&s1.ns)?, None);
    let left: Vec<_> = std::fs::read_dir(&pins.root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "pins left: {left:?}");
    let out = pins.run(&s1.ns, &["detach", "--interface", "eth0"])?;
    assert!(out.contains("nothing to remove"), "{out}");
    assert_eq!(tunnel(&lab, server4, vip4, Wrap::Ipip)?, None);
    Ok(())
}
