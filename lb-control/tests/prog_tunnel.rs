//! The XDP program tunnelling to servers beyond the segments, under
//! `BPF_PROG_TEST_RUN` in a network namespace of the test's own (a thread
//! that unshared it: routes, neighbours and forwarding as a node has them,
//! gone with the thread): the exact bytes of IPIP over IPv4 and IPv6 and of
//! GUE, written by an independent implementation (etherparse) with its
//! checksums; the FIB's answers (a next hop, a neighbour not yet known, no
//! route, a packet too big for the egress MTU).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder, UdpHeader};
use lb_common::{
    FlowKey, PROTO_TCP,
    encap::{
        BACKEND_FLAG_GUE, BACKEND_FLAG_IPIP, TUNNEL_V4, TUNNEL_V6, TunnelConfig, gue_source_port,
        stats,
    },
    flow_hash,
};
use lb_control::node::dataplane::testbed::{
    CLIENT, CLIENT6, SEED, TestBed, VIP, VIP6, XDP_DROP, XDP_TX, may_test_run,
};

const SRC4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x11);
/// On the link, no neighbour entry yet.
const UNRESOLVED4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
/// No route at all.
const NOWHERE4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x77, 0x11];
const GUE_PORT: u16 = 6080;
const LINK: &str = "tun0";
const XDP_REDIRECT: u32 = 4;

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tun0` in the test's namespace: its MAC and ifindex.
#[derive(Clone, Copy)]
struct Link {
    mac: [u8; 6],
    ifindex: u32,
}

/// This thread in a namespace of its own: `tun0` (a veth) with the node's
/// addresses and a permanent neighbour for the server, forwarding on.
fn node_namespace() -> Link {
    // SAFETY: unshare with a flag, for this thread only (not CLONE_FS or
    // CLONE_FILES); the namespace goes when the thread ends.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&[
        "ip", "link", "add", LINK, "mtu", "1500", "type", "veth", "peer", "name", "tun1",
    ]);
    sh(&["ip", "link", "set", LINK, "up"]);
    sh(&["ip", "link", "set", "tun1", "up"]);
    sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", LINK]);
    sh(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd77::1/64",
        "dev",
        LINK,
        "nodad",
    ]);
    let mac = "02:00:00:00:77:11";
    for server in ["10.77.0.11", "fd77::11"] {
        sh(&[
            "ip",
            "neigh",
            "add",
            server,
            "lladdr",
            mac,
            "dev",
            LINK,
            "nud",
            "permanent",
        ]);
    }
    // /proc/sys/net is the opening thread's namespace's.
    for key in [
        "ipv4/conf/all/forwarding",
        "ipv4/conf/lo/forwarding",
        "ipv6/conf/all/forwarding",
    ] {
        std::fs::write(format!("/proc/sys/net/{key}"), "1").expect(key);
    }
    // sysfs shows the namespace it was mounted in; `ip` runs in this one.
    let out = Command::new("ip")
        .args(["-o", "link", "show", LINK])
        .output()
        .expect("ip");
    let line = String::from_utf8_lossy(&out.stdout);
    let ifindex = line
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("tun0's ifindex");
    let text = line
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("tun0's MAC");
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex");
    }
    Link { mac, ifindex }
}

/// A client's TCP segment to the VIP (checksums right), as a frame.
fn client_frame(v6: bool, sport: u16, payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
    let body = vec![0x42; payload];
    if v6 {
        eth.ipv6(CLIENT6.octets(), VIP6.octets(), 57)
            .tcp(sport, 80, 1, 64000)
            .ack(5)
            .write(&mut out, &body)
    } else {
        eth.ipv4(CLIENT.octets(), VIP.octets(), 57)
            .tcp(sport, 80, 1, 64000)
            .ack(5)
            .write(&mut out, &body)
    }
    .expect("frame");
    out
}

fn hash(v6: bool, sport: u16) -> u32 {
    let key = if v6 {
        FlowKey::new(&CLIENT6.octets(), sport, &VIP6.octets(), 80, PROTO_TCP)
    } else {
        FlowKey::new(&CLIENT.octets(), sport, &VIP.octets(), 80, PROTO_TCP)
    };
    flow_hash(&key, SEED)
}

/// What leaves: the server's and tun0's MACs, the outer header(s) as
/// etherparse writes them, the inner packet untouched.
fn expected(frame: &[u8], node_mac: [u8; 6], server: IpAddr, gue: bool, hash: u32) -> Vec<u8> {
    let inner = &frame[14..];
    let inner_v6 = inner[0] >> 4 == 6;
    let mut out = SERVER_MAC.to_vec();
    out.extend_from_slice(&node_mac);
    let mut payload = Vec::new();
    let inner_proto = IpNumber(if inner_v6 { 41 } else { 4 });
    let proto = if gue { IpNumber::UDP } else { inner_proto };
    let udp_len = u16::try_from(inner.len() + 12).expect("small");
    let class = if inner_v6 {
        (inner[0] << 4) | (inner[1] >> 4)
    } else {
        inner[1]
    };
    match server {
        IpAddr::V4(dst) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let len = if gue {
                udp_len
            } else {
                u16::try_from(inner.len()).expect("small")
            };
            let mut ip = Ipv4Header::new(len, 64, proto, SRC4.octets(), dst.octets()).expect("v4");
            ip.dont_fragment = true;
            ip.identification = 0;
            ip.dscp = etherparse::IpDscp::try_new(class >> 2).expect("dscp");
            ip.ecn = etherparse::IpEcn::try_new(class & 3).expect("ecn");
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).expect("write");
            if gue {
                let udp = UdpHeader {
                    source_port: gue_source_port(hash),
                    destination_port: GUE_PORT,
                    length: udp_len,
                    checksum: 0,
                };
                udp.write(&mut payload).expect("udp");
            }
        }
        IpAddr::V6(dst) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let len = if gue {
                udp_len
            } else {
                u16::try_from(inner.len()).expect("small")
            };
            let ip = Ipv6Header {
                traffic_class: class,
                flow_label: Ipv6FlowLabel::try_new(hash & 0xf_ffff).expect("label"),
                payload_length: len,
                next_header: proto,
                hop_limit: 64,
                source: SRC6.octets(),
                destination: dst.octets(),
            };
            ip.write(&mut out).expect("write");
            if gue {
                let mut rest = vec![0, inner_proto.0, 0, 0];
                rest.extend_from_slice(inner);
                let mut udp = UdpHeader {
                    source_port: gue_source_port(hash),
                    destination_port: GUE_PORT,
                    length: udp_len,
                    checksum: 0,
                };
                udp.checksum = udp.calc_checksum_ipv6(&ip, &rest).expect("checksum");
                udp.write(&mut payload).expect("udp");
            }
        }
    }
    out.extend(payload);
    if gue {
        out.extend_from_slice(&[0, inner_proto.0, 0, 0]);
    }
    out.extend_from_slice(inner);
    out
}

/// Backends 0..3 (the IPv4 service) and 4 (the IPv6 one) all tunnelled to
/// `server4` / `server6` with `flags`.
fn bed(server4: Ipv4Addr, server6: Ipv6Addr, flags: u32) -> TestBed {
    let mut h = TestBed::new(lb_control::node::dataplane::EMBEDDED_PROGRAM);
    for b in 0..3 {
        h.set_backend_tunnel(b, IpAddr::V4(server4), flags);
    }
    h.set_backend_tunnel(4, IpAddr::V6(server6), flags);
    h.set_tunnel(TunnelConfig {
        src4: SRC4.octets(),
        src6: SRC6.octets(),
        gue_port: GUE_PORT.to_be_bytes(),
        families: TUNNEL_V4 | TUNNEL_V6,
        pad: 0,
    });
    h
}

fn in_node_namespace(test: impl FnOnce(Link) + Send) {
    if !may_test_run() {
        return;
    }
    std::thread::scope(|s| {
        s.spawn(|| test(node_namespace()))
            .join()
            .expect("the test's thread");
    });
}

#[test]
fn ipip_and_gue_frames_are_exact() {
    in_node_namespace(|link| {
        for (flags, counter) in [
            (BACKEND_FLAG_IPIP, stats::IPIP),
            (BACKEND_FLAG_GUE, stats::GUE),
        ] {
            let gue = flags == BACKEND_FLAG_GUE;
            // IPv4 in IPv4 and IPv6 in IPv6; then each in the other family.
            for (server4, server6) in [
                (IpAddr::V4(SERVER4), IpAddr::V6(SERVER6)),
                (IpAddr::V6(SERVER6), IpAddr::V4(SERVER4)),
            ] {
                let h = {
                    let mut h = bed(SERVER4, SERVER6, flags);
                    // The IPv4 service's backends to `server4`, the IPv6
                    // one's to `server6`.
                    for b in 0..3 {
                        h.set_backend_tunnel(b, server4, flags);
                    }
                    h.set_backend_tunnel(4, server6, flags);
                    h
                };
                for (v6, server) in [(false, server4), (true, server6)] {
                    for (sport, size) in [(41000u16, 0usize), (41001, 1), (41002, 1000)] {
                        // In on tun0 and out again: XDP_TX.
                        let frame = client_frame(v6, sport, size);
                        let (action, out) = h.run_on(&frame, link.ifindex);
                        assert_eq!(action, XDP_TX, "gue {gue} v6 {v6} to {server}");
                        assert_eq!(
                            out,
                            expected(&frame, link.mac, server, gue, hash(v6, sport)),
                            "gue {gue}, inner v6 {v6}, to {server}, {size} bytes"
                        );
                    }
                }
                assert_eq!(h.tunnel_counter(counter), 6);
                // In on another interface (lo): redirected to tun0.
                let frame = client_frame(false, 41003, 10);
                assert_eq!(h.run(&frame).0, XDP_REDIRECT);
            }
        }
    });
}

#[test]
fn the_fib_decides_where_the_tunnel_goes() {
    in_node_namespace(|link| {
        // A next hop whose address the kernel does not know yet: dropped,
        // counted (lb-control has the kernel resolve it; the stack could
        // not forward a packet from its own address).
        let h = bed(UNRESOLVED4, SERVER6, BACKEND_FLAG_IPIP);
        let frame = client_frame(false, 42000, 10);
        assert_eq!(h.run_on(&frame, link.ifindex).0, XDP_DROP);
        assert_eq!(h.tunnel_counter(stats::NO_NEIGH), 1);
        // No route: dropped, counted, nothing written.
        let h = bed(NOWHERE4, SERVER6, BACKEND_FLAG_GUE);
        assert_eq!(h.run_on(&frame, link.ifindex).0, XDP_DROP);
        assert_eq!(h.tunnel_counter(stats::NO_ROUTE), 1);
        // Too big for tun0's MTU once tunnelled (1500 - 20 bytes of inner
        // packet fit, one more does not).
        let h = bed(SERVER4, SERVER6, BACKEND_FLAG_IPIP);
        let fits = client_frame(false, 42001, 1480 - 40);
        assert_eq!(h.run_on(&fits, link.ifindex).0, XDP_TX);
        let over = client_frame(false, 42002, 1480 - 40 + 1);
        assert_eq!(h.run_on(&over, link.ifindex).0, XDP_DROP);
        assert_eq!(h.tunnel_counter(stats::TOO_BIG), 1);
        // No tunnel source of the server's family: dropped, counted.
        let mut h = bed(SERVER4, SERVER6, BACKEND_FLAG_IPIP);
        h.set_tunnel(TunnelConfig {
            families: TUNNEL_V6,
            ..TunnelConfig::default()
        });
        assert_eq!(h.run_on(&frame, link.ifindex).0, XDP_DROP);
        assert_eq!(h.tunnel_counter(stats::NO_SOURCE), 1);
    });
}
