//! Hand-built frames through the parser, as the host sees them (a byte
//! slice is a [`Frame`]). The program test-runs in lb-control check the
//! same verdicts end to end; these are the cheap ones, one per shape.
#![expect(
    clippy::cast_possible_truncation,
    reason = "test frames are a few hundred bytes"
)]

use super::*;

const CLIENT4: [u8; 4] = [10, 0, 0, 2];
const VIP4: [u8; 4] = [10, 0, 0, 100];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0];

/// Destination and source MACs, then the ethertype.
pub(crate) fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// An IPv4 header without options; `frag` is the flags and offset word.
pub(crate) fn ipv4_header(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    frag: u16,
    payload: usize,
) -> Vec<u8> {
    let total = (20 + payload) as u16;
    let mut header = vec![0x45, 0];
    header.extend_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&[0, 7]);
    header.extend_from_slice(&frag.to_be_bytes());
    header.extend_from_slice(&[64, proto, 0, 0]);
    header.extend_from_slice(&src);
    header.extend_from_slice(&dst);
    header
}

pub(crate) fn ipv6_header(src: [u8; 16], dst: [u8; 16], next: u8, payload: usize) -> Vec<u8> {
    let mut header = vec![0x60, 0, 0, 0];
    header.extend_from_slice(&(payload as u16).to_be_bytes());
    header.extend_from_slice(&[next, 64]);
    header.extend_from_slice(&src);
    header.extend_from_slice(&dst);
    header
}

/// A TCP header (no options) with `flags` and no payload.
pub(crate) fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&sport.to_be_bytes());
    header.extend_from_slice(&dport.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0, 0x50, flags, 0x10, 0, 0, 0, 0, 0]);
    header
}

fn frame4(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(ETH_P_IPV4);
    frame.extend(ipv4_header(CLIENT4, VIP4, proto, frag, l4.len()));
    frame.extend_from_slice(l4);
    frame
}

fn frame6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(ETH_P_IPV6);
    frame.extend(ipv6_header(CLIENT6, VIP6, next, payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// An 8-byte hop-by-hop or destination-options header (one `PadN`).
fn options_header(next: u8) -> [u8; 8] {
    [next, 0, 1, 4, 0, 0, 0, 0]
}

/// The key a fragment or an unparsed packet carries: the address alone.
fn vip(addr: &[u8]) -> ServiceKey {
    ServiceKey::new(addr, 0, 0)
}

fn len_of(frame: &[u8]) -> u32 {
    frame.len() as u32
}

#[test]
fn an_ipv4_tcp_syn_is_a_new_flow() {
    let frame = frame4(PROTO_TCP, 0x4000, &tcp(40000, 80, TCP_SYN));
    assert_eq!(
        parse_frame(&frame[..]),
        Parsed::Flow {
            key: FlowKey::new(&CLIENT4, 40000, &VIP4, 80, PROTO_TCP),
            syn: true,
            len: len_of(&frame),
        }
    );
    // SYN-ACK and ACK are not connection attempts.
    for flags in [TCP_SYN | TCP_ACK, TCP_ACK] {
        let frame = frame4(PROTO_TCP, 0, &tcp(40000, 80, flags));
        assert!(matches!(
            parse_frame(&frame[..]),
            Parsed::Flow { syn: false, .. }
        ));
    }
}

#[test]
fn ipv6_behind_a_hop_by_hop_header_is_parsed_to_its_ports() {
    let mut payload = options_header(PROTO_TCP).to_vec();
    payload.extend(tcp(40001, 80, TCP_SYN));
    let frame = frame6(NEXT_HOP_BY_HOP, &payload);
    assert_eq!(
        parse_frame(&frame[..]),
        Parsed::Flow {
            key: FlowKey::new(&CLIENT6, 40001, &VIP6, 80, PROTO_TCP),
            syn: true,
            len: len_of(&frame),
        }
    );
}

#[test]
fn more_extension_headers_than_the_bound_are_unparsed() {
    let headers = IPV6_MAX_EXT_HEADERS as usize + 1;
    let mut payload = Vec::new();
    for i in 0..headers {
        let next = if i + 1 == headers {
            PROTO_TCP
        } else {
            NEXT_DEST_OPTIONS
        };
        payload.extend(options_header(next));
    }
    payload.extend(tcp(40002, 80, TCP_SYN));
    let frame = frame6(NEXT_HOP_BY_HOP, &payload);
    assert_eq!(parse_frame(&frame[..]), Parsed::Unparsed(vip(&VIP6)));
}

#[test]
fn fragments_carry_only_their_destination() {
    // IPv4: more fragments, then a later piece.
    for frag in [0x2000, 0x00b9] {
        let frame = frame4(PROTO_UDP, frag, &[0; 16]);
        assert_eq!(parse_frame(&frame[..]), Parsed::Fragment(vip(&VIP4)));
    }
    // IPv6: a non-first fragment (offset 185, more to come).
    let mut payload = vec![PROTO_TCP, 0, 0x05, 0xc9, 0, 0, 0, 1];
    payload.extend_from_slice(&[0; 16]);
    let frame = frame6(NEXT_FRAGMENT, &payload);
    assert_eq!(parse_frame(&frame[..]), Parsed::Fragment(vip(&VIP6)));
    // An atomic fragment (offset 0, no more) is a whole packet.
    let mut payload = vec![PROTO_TCP, 0, 0, 0, 0, 0, 0, 1];
    payload.extend(tcp(40003, 80, TCP_ACK));
    let frame = frame6(NEXT_FRAGMENT, &payload);
    assert!(matches!(parse_frame(&frame[..]), Parsed::Flow { .. }));
}

#[test]
fn a_frame_cut_anywhere_before_the_tcp_flags_is_malformed() {
    let frame = frame4(PROTO_TCP, 0, &tcp(40004, 80, TCP_SYN));
    // Ethernet, IPv4, then ports and flags: 14 bytes of TCP.
    let needed = ETH_LEN + 20 + 14;
    for cut in 0..needed {
        assert_eq!(parse_frame(&frame[..cut]), Parsed::Malformed, "{cut} bytes");
    }
    assert!(matches!(
        parse_frame(&frame[..needed]),
        Parsed::Flow { syn: true, .. }
    ));
    // An extension header whose length runs past the frame, onto another.
    let mut cut = options_header(NEXT_DEST_OPTIONS);
    cut[1] = 4;
    let frame = frame6(NEXT_HOP_BY_HOP, &cut);
    assert_eq!(parse_frame(&frame[..]), Parsed::Unparsed(vip(&VIP6)));
}

#[test]
fn frag_needed_names_the_client_to_vip_flow_it_quotes() {
    // The packet the server sent: VIP:80 → client:40005.
    let mut quoted = ipv4_header(VIP4, CLIENT4, PROTO_TCP, 0x4000, 20);
    quoted.extend_from_slice(&tcp(80, 40005, TCP_ACK)[..8]);
    let mut icmp = vec![ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend(quoted);
    let frame = frame4(PROTO_ICMP, 0, &icmp);
    assert_eq!(
        parse_frame(&frame[..]),
        Parsed::IcmpTooBig {
            key: FlowKey::new(&CLIENT4, 40005, &VIP4, 80, PROTO_TCP),
            len: len_of(&frame),
        }
    );
    // Other ICMP (an echo request) is the stack's.
    let frame = frame4(PROTO_ICMP, 0, &[8, 0, 0, 0, 0, 1, 0, 1]);
    assert_eq!(parse_frame(&frame[..]), Parsed::Pass);
}

#[test]
fn packet_too_big_names_the_client_to_vip_flow_it_quotes() {
    let mut quoted = ipv6_header(VIP6, CLIENT6, PROTO_TCP, 20);
    quoted.extend_from_slice(&tcp(80, 40006, TCP_ACK)[..8]);
    let mut icmp = vec![ICMPV6_PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0x05, 0x00];
    icmp.extend(quoted);
    let frame = frame6(PROTO_ICMPV6, &icmp);
    assert_eq!(
        parse_frame(&frame[..]),
        Parsed::IcmpTooBig {
            key: FlowKey::new(&CLIENT6, 40006, &VIP6, 80, PROTO_TCP),
            len: len_of(&frame),
        }
    );
}

#[test]
fn other_frames_are_passed_or_counted_as_tagged() {
    let mut arp = ethernet(0x0806);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(parse_frame(&arp[..]), Parsed::Pass);
    let mut tagged = ethernet(ETH_P_8021Q);
    tagged.extend_from_slice(&[0, 5, 0x08, 0x00]);
    assert_eq!(parse_frame(&tagged[..]), Parsed::Vlan);
    // A protocol the balancer does not serve (GRE).
    let frame = frame4(47, 0, &[0; 8]);
    assert_eq!(parse_frame(&frame[..]), Parsed::Pass);
}
