//! The outer headers against an independent implementation (etherparse):
//! every field where a parser reads it, every checksum as it computes it
//! over the whole assembled packet.

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, PacketBuilder, UdpHeaderSlice};

use super::*;

const NODE4: [u8; 4] = [10, 0, 1, 2];
const SERVER4: [u8; 4] = [10, 0, 2, 11];
const NODE6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const CLIENT4: [u8; 4] = [192, 0, 2, 7];
const VIP4: [u8; 4] = [198, 51, 100, 1];
const CLIENT6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const VIP6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A client's TCP segment to the VIP with `len` bytes of payload, as the
/// client's stack (etherparse here) writes it.
fn tcp4(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(CLIENT4, VIP4, 61)
        .tcp(40000, 80, 7, 65000)
        .ack(9)
        .write(&mut out, &vec![0x5a; len])
        .expect("write");
    out
}

fn udp4(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(CLIENT4, VIP4, 61)
        .udp(40000, 53)
        .write(&mut out, &vec![0x33; len])
        .expect("write");
    out
}

fn tcp6(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(CLIENT6, VIP6, 61)
        .tcp(40000, 443, 7, 65000)
        .write(&mut out, &vec![0xa5; len])
        .expect("write");
    out
}

fn udp6(len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(CLIENT6, VIP6, 61)
        .udp(40000, 53)
        .write(&mut out, &vec![0x77; len])
        .expect("write");
    out
}

#[test]
fn the_ipv4_header_is_valid_and_says_what_it_carries() {
    for (inner, proto) in [(tcp4(100), PROTO_IPIP), (tcp6(100), PROTO_IPV6_IN_IP)] {
        let len = u16::try_from(inner.len()).expect("small");
        let h = ipv4_header(NODE4, SERVER4, proto, 0x28, len);
        let parsed = Ipv4HeaderSlice::from_slice(&h).expect("parses").to_header();
        assert_eq!(parsed.header_checksum, parsed.calc_header_checksum());
        assert_eq!(parsed.total_len, len + 20);
        assert_eq!(parsed.protocol.0, proto);
        assert!(parsed.dont_fragment);
        assert_eq!((parsed.source, parsed.destination), (NODE4, SERVER4));
        assert_eq!(parsed.time_to_live, OUTER_TTL);
        assert_eq!(parsed.dscp.value() << 2 | parsed.ecn.value(), 0x28);
    }
}

#[test]
fn the_ipv6_header_says_what_it_carries() {
    let h = ipv6_header(&NODE6, &SERVER6, PROTO_IPV6_IN_IP, 0xb8, 0x1234_5678, 140);
    let parsed = Ipv6HeaderSlice::from_slice(&h).expect("parses").to_header();
    assert_eq!(parsed.payload_length, 140);
    assert_eq!(parsed.next_header.0, PROTO_IPV6_IN_IP);
    assert_eq!(parsed.hop_limit, OUTER_TTL);
    assert_eq!(parsed.traffic_class, 0xb8);
    assert_eq!(parsed.flow_label.value(), 0x4_5678);
    assert_eq!((parsed.source, parsed.destination), (NODE6, SERVER6));
}

/// GUE over IPv6 around `inner`: the outer UDP checksum etherparse
/// computes over the whole datagram.
fn gue6(inner: &[u8], sum: InnerSum) -> (u16, u16) {
    let inner_v6 = inner[0] >> 4 == 6;
    let inner_len = u16::try_from(inner.len()).expect("small");
    let udp_len = inner_len + 12;
    let pseudo = ipv6_pseudo(&NODE6, &SERVER6, udp_len);
    let udp = udp_gue_header(0xc123, 6080, inner_len, inner_v6, Some((pseudo, sum)));
    let ip = ipv6_header(&NODE6, &SERVER6, PROTO_UDP, 0, 7, udp_len);
    let mut payload = udp[8..].to_vec();
    payload.extend_from_slice(inner);
    let header = UdpHeaderSlice::from_slice(&udp).expect("udp").to_header();
    let ip = Ipv6HeaderSlice::from_slice(&ip).expect("ipv6").to_header();
    let expected = header.calc_checksum_ipv6(&ip, &payload).expect("checksum");
    (header.checksum, expected)
}

fn sum4(inner: &[u8]) -> InnerSum {
    let header: [u8; 20] = inner[..20].try_into().expect("20 bytes");
    let l4_len = u16::try_from(inner.len() - 20).expect("small");
    let check = if header[9] == PROTO_TCP { 16 } else { 6 };
    InnerSum::ipv4(&header, l4_len, [inner[20 + check], inner[20 + check + 1]])
}

fn sum6(inner: &[u8]) -> InnerSum {
    InnerSum::ipv6(&inner[..40].try_into().expect("40 bytes"))
}

#[test]
fn the_gue_checksum_over_ipv6_is_right_without_reading_the_payload() {
    for len in [0, 1, 2, 3, 100, 1351, 1400] {
        for inner in [tcp4(len), udp4(len)] {
            let (got, expected) = gue6(&inner, sum4(&inner));
            assert_eq!(got, expected, "IPv4 inner, {len} bytes");
        }
        for inner in [tcp6(len), udp6(len)] {
            let (got, expected) = gue6(&inner, sum6(&inner));
            assert_eq!(got, expected, "IPv6 inner, {len} bytes");
        }
    }
}

#[test]
fn an_unknown_inner_sum_leaves_the_checksum_zero() {
    // An IPv4 UDP datagram sent without a checksum.
    let mut inner = udp4(20);
    inner[26] = 0;
    inner[27] = 0;
    let sum = sum4(&inner);
    assert_eq!(sum.segment, None);
    let inner_len = u16::try_from(inner.len()).expect("small");
    let pseudo = ipv6_pseudo(&NODE6, &SERVER6, inner_len + 12);
    let udp = udp_gue_header(1, 6080, inner_len, false, Some((pseudo, sum)));
    assert_eq!(&udp[6..8], &[0, 0]);
    // Over IPv4 there is no checksum at all; the GUE header says IPv4.
    let udp = udp_gue_header(1, 6080, inner_len, false, None);
    assert_eq!(
        &udp[4..12],
        &[0, 12 + inner_len as u8, 0, 0, 0, PROTO_IPIP, 0, 0]
    );
}

#[test]
fn gue_source_ports_spread_over_the_dynamic_range() {
    let ports: std::collections::BTreeSet<u16> = (0..1000u32)
        .map(|i| gue_source_port(i.wrapping_mul(0x9e37_79b9)))
        .collect();
    assert!(ports.iter().all(|p| *p >= 0xc000));
    assert!(ports.len() > 900, "{} distinct ports", ports.len());
    assert_eq!(gue_source_port(42), gue_source_port(42));
}
