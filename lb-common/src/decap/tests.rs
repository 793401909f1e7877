//! Hand-built tunnel frames through the classifier, one per shape; the
//! program's test runs check the same frames end to end.
#![expect(
    clippy::cast_possible_truncation,
    reason = "test frames are a few hundred bytes"
)]

use super::*;
use crate::{
    PROTO_TCP,
    parse::tests::{ethernet, ipv4_header, ipv6_header, tcp},
};

const NODE4: [u8; 4] = [10, 0, 1, 2];
const SERVER4: [u8; 4] = [10, 0, 2, 11];
const CLIENT4: [u8; 4] = [10, 0, 0, 2];
const VIP4: [u8; 4] = [10, 0, 100, 1];
const NODE6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn inner4() -> Vec<u8> {
    let l4 = tcp(40000, 80, 0x02);
    let mut p = ipv4_header(CLIENT4, VIP4, PROTO_TCP, 0x4000, l4.len());
    p.extend(l4);
    p
}

fn inner6() -> Vec<u8> {
    let l4 = tcp(40000, 80, 0x02);
    let mut p = ipv6_header(CLIENT6, VIP6, PROTO_TCP, l4.len());
    p.extend(l4);
    p
}

/// An outer IPv4 header (`frag` its flags word) around `payload`.
fn outer4(proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IPV4);
    f.extend(ipv4_header(NODE4, SERVER4, proto, frag, payload.len()));
    f.extend_from_slice(payload);
    f
}

fn outer6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ethernet(ETH_P_IPV6);
    f.extend(ipv6_header(NODE6, SERVER6, next, payload.len()));
    f.extend_from_slice(payload);
    f
}

/// UDP to `port`, then `gue` (a GUE header or none), then `inner`.
fn udp(port: u16, gue: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut u = 49152u16.to_be_bytes().to_vec();
    u.extend_from_slice(&port.to_be_bytes());
    u.extend_from_slice(&((8 + gue.len() + inner.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(gue);
    u.extend_from_slice(inner);
    u
}

/// The verdict on a packet from `src` whose inner packet (to the VIP of
/// its family) starts `strip` bytes in.
fn packet(src: DecapSource, strip: usize, inner_v6: bool, gue: bool) -> Tunnelled {
    let inner_dst = if inner_v6 {
        DecapSource::new(VIP6, FAMILY_V6)
    } else {
        DecapSource::new(widen4(VIP4), FAMILY_V4)
    };
    Tunnelled::Packet {
        src,
        inner_dst,
        strip,
        inner_v6,
        gue,
    }
}

fn node4() -> DecapSource {
    DecapSource::new(widen4(NODE4), FAMILY_V4)
}

fn node6() -> DecapSource {
    DecapSource::new(NODE6, FAMILY_V6)
}

#[test]
fn ipip_in_either_family() {
    let port = DEFAULT_GUE_PORT;
    assert_eq!(
        classify(&outer4(PROTO_IPIP, 0x4000, &inner4())[..], port),
        packet(node4(), 20, false, false)
    );
    assert_eq!(
        classify(&outer6(PROTO_IPV6_IN_IP, &inner6())[..], port),
        packet(node6(), 40, true, false)
    );
    // IPv6 inside IPv4 (protocol 41) and IPv4 inside IPv6 (next header 4).
    assert_eq!(
        classify(&outer4(PROTO_IPV6_IN_IP, 0, &inner6())[..], port),
        packet(node4(), 20, true, false)
    );
    assert_eq!(
        classify(&outer6(PROTO_IPIP, &inner4())[..], port),
        packet(node6(), 40, false, false)
    );
}

#[test]
fn gue_version_0_and_1() {
    let port = 7000;
    let v0_4 = [0x00, PROTO_IPIP, 0, 0];
    assert_eq!(
        classify(
            &outer4(PROTO_UDP, 0, &udp(port, &v0_4, &inner4()))[..],
            port
        ),
        packet(node4(), 20 + 8 + 4, false, true)
    );
    let v0_6 = [0x00, PROTO_IPV6_IN_IP, 0, 0];
    assert_eq!(
        classify(&outer6(PROTO_UDP, &udp(port, &v0_6, &inner6()))[..], port),
        packet(node6(), 40 + 8 + 4, true, true)
    );
    // Two extension words.
    let ext = [0x02, PROTO_IPIP, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(
        classify(&outer4(PROTO_UDP, 0, &udp(port, &ext, &inner4()))[..], port),
        packet(node4(), 20 + 8 + 12, false, true)
    );
    // Version 1: the inner header right after UDP.
    assert_eq!(
        classify(&outer6(PROTO_UDP, &udp(port, &[], &inner4()))[..], port),
        packet(node6(), 48, false, true)
    );
}

#[test]
fn other_traffic_passes() {
    let port = DEFAULT_GUE_PORT;
    // UDP to another port, TCP, a bare Ethernet header, ARP.
    let other = udp(53, &[0x00, PROTO_IPIP, 0, 0], &inner4());
    assert_eq!(
        classify(&outer4(PROTO_UDP, 0, &other)[..], port),
        Tunnelled::Pass
    );
    assert_eq!(classify(&inner_framed()[..], port), Tunnelled::Pass);
    assert_eq!(classify(&ethernet(ETH_P_IPV4)[..], port), Tunnelled::Pass);
    assert_eq!(classify(&ethernet(0x0806)[..], port), Tunnelled::Pass);
}

fn inner_framed() -> Vec<u8> {
    let mut f = ethernet(ETH_P_IPV4);
    f.extend(inner4());
    f
}

#[test]
fn broken_tunnels_are_malformed() {
    let port = DEFAULT_GUE_PORT;
    // A fragment of a tunnel packet.
    assert_eq!(
        classify(&outer4(PROTO_IPIP, 0x2000, &inner4())[..], port),
        Tunnelled::Malformed
    );
    // Protocol 4 with an IPv6 packet inside; cut short before the inner
    // header.
    assert_eq!(
        classify(&outer4(PROTO_IPIP, 0, &inner6())[..], port),
        Tunnelled::Malformed
    );
    assert_eq!(
        classify(&outer6(PROTO_IPV6_IN_IP, &[])[..], port),
        Tunnelled::Malformed
    );
    // Not IP inside.
    assert_eq!(
        classify(&outer4(PROTO_IPIP, 0, &[0x11; 20])[..], port),
        Tunnelled::Malformed
    );
    // GUE: a control message, version 2, a protocol that is not IP, a
    // declared protocol the inner header contradicts, cut short.
    for gue in [
        &[0x20, 0, 0, 0][..],
        &[0x80, PROTO_IPIP, 0, 0][..],
        &[0x00, 17, 0, 0][..],
        &[0x00, PROTO_IPV6_IN_IP, 0, 0][..],
    ] {
        assert_eq!(
            classify(&outer4(PROTO_UDP, 0, &udp(port, gue, &inner4()))[..], port),
            Tunnelled::Malformed,
            "{gue:?}"
        );
    }
    assert_eq!(
        classify(&outer4(PROTO_UDP, 0, &udp(port, &[], &[]))[..], port),
        Tunnelled::Malformed
    );
}

/// IPv6 extension headers (`headers`: next header, length byte, then the
/// rest of each 8-byte header) in front of `payload` of protocol `last`.
fn outer6_ext(headers: &[[u8; 8]], first: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for h in headers {
        body.extend_from_slice(h);
    }
    body.extend_from_slice(payload);
    outer6(first, &body)
}

#[test]
fn ipv6_extension_headers_never_hide_a_tunnel() {
    let port = DEFAULT_GUE_PORT;
    // A first fragment of IPIP, a later one, a hop-by-hop header before
    // IPIP: dropped, whatever the source.
    let first = [PROTO_IPIP, 0, 0, 0x01, 0, 0, 0, 1];
    let later = [PROTO_IPV6_IN_IP, 0, 0x05, 0x00, 0, 0, 0, 1];
    let hop = [PROTO_IPIP, 0, 1, 4, 0, 0, 0, 0];
    for (headers, first_next) in [(vec![first], 44), (vec![later], 44), (vec![hop], 0)] {
        assert_eq!(
            classify(&outer6_ext(&headers, first_next, &inner4())[..], port),
            Tunnelled::Malformed,
            "{headers:?}"
        );
    }
    // UDP to the GUE port behind a first fragment; a later fragment of UDP
    // (no port to tell) and TCP behind destination options pass.
    let udp_first = [PROTO_UDP, 0, 0, 0x01, 0, 0, 0, 2];
    let gue = udp(port, &[0, PROTO_IPIP, 0, 0], &inner4());
    assert_eq!(
        classify(&outer6_ext(&[udp_first], 44, &gue)[..], port),
        Tunnelled::Malformed
    );
    let udp_later = [PROTO_UDP, 0, 0x05, 0x00, 0, 0, 0, 2];
    assert_eq!(
        classify(&outer6_ext(&[udp_later], 44, &gue)[..], port),
        Tunnelled::Pass
    );
    let options = [PROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
    assert_eq!(
        classify(&outer6_ext(&[options], 60, &tcp(1, 80, 0x10))[..], port),
        Tunnelled::Pass
    );
}
