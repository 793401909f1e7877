//! The outer headers a node puts on a packet it tunnels to a real server
//! beyond its segments (`forward = "ipip"` or `"gue"`), and their
//! checksums. Pure functions on fixed-size arrays: the XDP program writes
//! what they return, the host's tests check the bytes.
//!
//! The outer UDP checksum of GUE over IPv6 (mandatory there) is computed
//! without reading the payload: a valid inner TCP, UDP or `ICMPv6` segment
//! sums, with its pseudo-header, to the ones' complement zero, so the
//! segment's own sum is the negated sum of its pseudo-header (local
//! checksum offload, as Linux does for tunnels). Where that does not hold
//! (an inner IPv4 UDP datagram without a checksum, IPv6 extension headers)
//! the checksum is zero, which RFC 6935 allows for tunnels. Over IPv4 the
//! outer UDP checksum is zero (RFC 768: none).

use crate::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// `Backend::flags`: the server is reached through a tunnel (IPIP or
/// GUE, with the node's tunnel source of the server's family), its next
/// hop from the kernel's FIB at each packet.
pub const BACKEND_FLAG_IPIP: u32 = 2;
pub const BACKEND_FLAG_GUE: u32 = 4;

/// `TUNNEL`'s one value: the outer sources and the GUE port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelConfig {
    pub src4: [u8; 4],
    pub src6: [u8; 16],
    pub gue_port: [u8; 2],
    /// Which sources are set: bit 0 IPv4, bit 1 IPv6.
    pub families: u8,
    pub pad: u8,
}

/// `TunnelConfig::families` bits.
pub const TUNNEL_V4: u8 = 1;
pub const TUNNEL_V6: u8 = 2;

/// The program's tunnel maps: the configuration (one element) and the
/// counters (per CPU, with room to grow like `GUARD_STATS`).
pub const MAP_TUNNEL: &str = "TUNNEL";
pub const MAP_TUNNEL_STATS: &str = "TUNNEL_STATS";
/// The program's per-CPU room for a FIB lookup's parameters (the kernel's
/// `struct bpf_fib_lookup`, [`FIB_PARAMS_SIZE`] bytes), off its stack.
pub const MAP_FIB_SCRATCH: &str = "FIB_SCRATCH";
pub const FIB_PARAMS_SIZE: usize = 64;

/// `TUNNEL_STATS` indexes.
pub mod stats {
    /// Packets sent tunnelled, by encapsulation.
    pub const IPIP: u32 = 0;
    pub const GUE: u32 = 1;
    /// The FIB knew the route but not yet its next hop's address
    /// (lb-control asks the kernel to resolve it): dropped.
    pub const NO_NEIGH: u32 = 2;
    /// No route to the server, or forwarding disabled on the ingress
    /// interface (`bpf_fib_lookup` needs it): dropped.
    pub const NO_ROUTE: u32 = 3;
    pub const FORWARDING_DISABLED: u32 = 4;
    /// The tunnelled packet would exceed the egress MTU.
    pub const TOO_BIG: u32 = 5;
    /// No tunnel source of the server's family configured: dropped.
    pub const NO_SOURCE: u32 = 6;
    pub const COUNT: u32 = 7;
    /// Entries the map is pinned with.
    pub const CAPACITY: u32 = 16;
    /// Names for display, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "tunnel_ipip",
        "tunnel_gue",
        "tunnel_no_neigh",
        "tunnel_no_route",
        "tunnel_forwarding_disabled",
        "tunnel_too_big",
        "tunnel_no_source",
    ];
}

/// IP protocol numbers of the inner packet in the outer header.
pub const PROTO_IPIP: u8 = crate::decap::PROTO_IPIP;
pub const PROTO_IPV6_IN_IP: u8 = crate::decap::PROTO_IPV6_IN_IP;
/// The outer header's TTL / hop limit.
pub const OUTER_TTL: u8 = 64;
/// Bytes each encapsulation adds: outer IPv4 or IPv6, and UDP + GUE.
pub const IPV4_OVERHEAD: u32 = 20;
pub const IPV6_OVERHEAD: u32 = 40;
pub const GUE_OVERHEAD: u32 = 12;

/// The ones' complement sum of `bytes` as big-endian 16-bit words (an odd
/// last byte padded with zero), added to `acc`, not folded.
#[inline(always)]
#[must_use]
pub fn sum16(bytes: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if i < bytes.len() {
        acc += u32::from(bytes[i]) << 8;
    }
    acc
}

/// `acc` folded to 16 bits (ones' complement addition of its halves).
#[inline(always)]
#[must_use]
pub fn fold(acc: u32) -> u16 {
    let a = (acc & 0xffff) + (acc >> 16);
    let a = (a & 0xffff) + (a >> 16);
    a as u16
}

/// An outer IPv4 header (no options, DF set, id 0) carrying `payload_len`
/// bytes of protocol `proto`, its checksum filled in.
#[inline(always)]
#[must_use]
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, tos: u8, payload_len: u16) -> [u8; 20] {
    let total = (payload_len + 20).to_be_bytes();
    let mut h = [
        0x45, tos, total[0], total[1], 0, 0, 0x40, 0, OUTER_TTL, proto, 0, 0, src[0], src[1],
        src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    let check = (!fold(sum16(&h, 0))).to_be_bytes();
    h[10] = check[0];
    h[11] = check[1];
    h
}

/// An outer IPv6 header carrying `payload_len` bytes of `next`, with the
/// inner packet's traffic class and a flow label from the flow's hash.
#[inline(always)]
#[must_use]
pub fn ipv6_header(
    src: &[u8; 16],
    dst: &[u8; 16],
    next: u8,
    class: u8,
    hash: u32,
    payload_len: u16,
) -> [u8; 40] {
    let label = hash & 0x000f_ffff;
    let len = payload_len.to_be_bytes();
    let mut h = [0u8; 40];
    h[0] = 0x60 | (class >> 4);
    h[1] = (class << 4) | ((label >> 16) as u8 & 0x0f);
    h[2] = (label >> 8) as u8;
    h[3] = label as u8;
    h[4] = len[0];
    h[5] = len[1];
    h[6] = next;
    h[7] = OUTER_TTL;
    h[8..24].copy_from_slice(src);
    h[24..40].copy_from_slice(dst);
    h
}

/// The outer UDP source port of GUE: from the flow's hash, in the dynamic
/// range, so a server's NIC spreads flows over its queues (RSS) while each
/// flow stays on one.
#[inline(always)]
#[must_use]
pub fn gue_source_port(hash: u32) -> u16 {
    0xc000 | ((hash ^ (hash >> 16)) as u16 & 0x3fff)
}

/// What the outer UDP checksum needs to know about the inner packet
/// without reading its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerSum {
    /// The ones' complement sum (unfolded) of everything in the inner
    /// packet before its transport segment: the IP header(s).
    pub headers: u32,
    /// The sum of the transport segment itself, when it is known (a
    /// segment with a valid checksum); `None` leaves the outer checksum
    /// zero.
    pub segment: Option<u32>,
}

impl InnerSum {
    /// The inner IPv4 packet `header` (20 bytes, no options), its segment
    /// of `l4_len` bytes of `proto` with checksum field `l4_check`.
    #[inline(always)]
    #[must_use]
    pub fn ipv4(header: &[u8; 20], l4_len: u16, l4_check: [u8; 2]) -> Self {
        let proto = header[9];
        let pseudo = sum16(&header[12..20], u32::from(proto) + u32::from(l4_len));
        let segment = match proto {
            PROTO_TCP => Some(negated(pseudo)),
            // A zero UDP checksum over IPv4 is "none": nothing is known.
            PROTO_UDP if l4_check != [0, 0] => Some(negated(pseudo)),
            // An ICMP message sums to zero by itself.
            PROTO_ICMP => Some(0),
            _ => None,
        };
        Self {
            headers: sum16(header, 0),
            segment,
        }
    }

    /// The inner IPv6 packet `header` (40 bytes, the segment right after
    /// it: no extension headers), a TCP, UDP or `ICMPv6` segment.
    #[inline(always)]
    #[must_use]
    pub fn ipv6(header: &[u8; 40]) -> Self {
        let next = header[6];
        let len = u32::from(u16::from_be_bytes([header[4], header[5]]));
        let pseudo = sum16(&header[8..40], u32::from(next) + len);
        let segment =
            matches!(next, PROTO_TCP | PROTO_UDP | crate::PROTO_ICMPV6).then(|| negated(pseudo));
        Self {
            headers: sum16(header, 0),
            segment,
        }
    }
}

/// The ones' complement negation of a (folded) sum: what a valid segment
/// sums to, given its pseudo-header's sum.
#[inline(always)]
fn negated(sum: u32) -> u32 {
    u32::from(!fold(sum))
}

/// The UDP and GUE (version 0) headers in front of an inner packet of
/// `inner_len` bytes, IPv6 inside when `inner_v6`. `pseudo`: the outer
/// pseudo-header's sum for IPv6 (the checksum is computed), `None` for
/// IPv4 (the checksum is zero).
#[inline(always)]
#[must_use]
pub fn udp_gue_header(
    sport: u16,
    dport: u16,
    inner_len: u16,
    inner_v6: bool,
    checksum: Option<(u32, InnerSum)>,
) -> [u8; 12] {
    let len = (inner_len + 12).to_be_bytes();
    let (s, d) = (sport.to_be_bytes(), dport.to_be_bytes());
    let proto = if inner_v6 {
        PROTO_IPV6_IN_IP
    } else {
        PROTO_IPIP
    };
    let mut h = [
        s[0], s[1], d[0], d[1], len[0], len[1], 0, 0, 0x00, proto, 0, 0,
    ];
    if let Some((pseudo, inner)) = checksum
        && let Some(segment) = inner.segment
    {
        let sum = sum16(&h, pseudo) + inner.headers + segment;
        let mut check = !fold(sum);
        // A computed zero is sent as all ones (zero means none).
        if check == 0 {
            check = 0xffff;
        }
        let check = check.to_be_bytes();
        h[6] = check[0];
        h[7] = check[1];
    }
    h
}

/// The outer IPv6 pseudo-header's sum for a UDP datagram of `udp_len`
/// bytes.
#[inline(always)]
#[must_use]
pub fn ipv6_pseudo(src: &[u8; 16], dst: &[u8; 16], udp_len: u16) -> u32 {
    sum16(dst, sum16(src, u32::from(PROTO_UDP) + u32::from(udp_len)))
}

#[cfg(test)]
mod tests;
