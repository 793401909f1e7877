//! The readiness probe of the decapsulation: a packet as a node would
//! tunnel it to this server (IPIP from an allowed source, the inner packet
//! for a VIP) run through the pinned program itself
//! (`BPF_PROG_TEST_RUN`); it is ready when exactly the inner packet comes
//! out for the stack. The probe runs beside live traffic and counts in the
//! program's `ipip` and `passed` counters like any tunnelled packet.

use std::{net::IpAddr, path::Path};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use lb_common::decap::{PROTO_IPIP, PROTO_IPV6_IN_IP};

use super::{DecapError, PROGRAM_PIN, pin_dir};

const XDP_PASS: u32 = 2;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
/// The probe's inner source: TEST-NET-1 / the documentation prefix, never
/// a real client.
const PROBE_CLIENT_V4: [u8; 4] = [192, 0, 2, 1];
const PROBE_CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const MACS: [u8; 12] = [2, 0, 0, 0, 0, 0x11, 2, 0, 0, 0, 0, 0x01];

/// An Ethernet frame of `ethertype` around `payload`.
pub(crate) fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MACS.to_vec();
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The Ethernet type of `address`'s family.
pub(crate) fn ethertype(address: IpAddr) -> u16 {
    if address.is_ipv4() {
        ETH_P_IPV4
    } else {
        ETH_P_IPV6
    }
}

/// An IP header (IPv4: no options, DF, its checksum) from `src` to `dst`
/// (one family) around `payload`.
///
/// # Panics
/// A payload over 64 KiB, or addresses of two families.
pub(crate) fn ip(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(20 + payload.len()).expect("a small packet");
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let sum = checksum(&h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0];
            let len = u16::try_from(payload.len()).expect("a small packet");
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h
        }
        _ => panic!("{src} and {dst} are of two families"),
    };
    p.extend_from_slice(payload);
    p
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// A client's SYN to `vip`:80, as a node tunnels it (the inner packet).
pub(crate) fn inner_syn(vip: IpAddr) -> Vec<u8> {
    let tcp = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x02, 0x10, 0, 0x12, 0x34, 0, 0,
    ];
    let client = match vip {
        IpAddr::V4(_) => IpAddr::from(PROBE_CLIENT_V4),
        IpAddr::V6(_) => IpAddr::from(PROBE_CLIENT_V6),
    };
    ip(client, vip, PROTO_TCP, &tcp)
}

/// The frame a node at `source` sends `to` (this server) for `vip`: IPIP
/// (4 in 4, 6 in 6, or across families).
pub(crate) fn tunnelled(source: IpAddr, to: IpAddr, vip: IpAddr) -> Vec<u8> {
    let proto = if vip.is_ipv4() {
        PROTO_IPIP
    } else {
        PROTO_IPV6_IN_IP
    };
    ethernet(ethertype(source), &ip(source, to, proto, &inner_syn(vip)))
}

/// Runs the probe through the program pinned for `interface`: a packet
/// from `source` to `local` (an address of this server of the source's
/// family) for `vip`. `Ok(true)` when exactly the inner packet passes.
pub fn probe(
    root: &Path,
    interface: &str,
    source: IpAddr,
    local: IpAddr,
    vip: IpAddr,
) -> Result<bool, DecapError> {
    let path = pin_dir(root, interface)?.join(PROGRAM_PIN);
    let program = Xdp::from_pin(&path, XdpAttachType::Interface)?;
    let frame = tunnelled(source, local, vip);
    let want = ethernet(ethertype(vip), &inner_syn(vip));
    let mut out = vec![0u8; frame.len()];
    let result = program.test_run(TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(usize::try_from(result.data_size_out).unwrap_or(0));
    Ok(result.return_value == XDP_PASS && out == want)
}
