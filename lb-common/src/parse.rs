//! Header parsing: one bounds-checked [`ptr_at`], small helpers, and a
//! verdict per frame ([`Parsed`]). Nothing here writes the packet.
//!
//! The XDP program parses its context's packet; the host parses byte slices
//! with the very same code (`parse/tests.rs`, and the `frames` fuzz target,
//! which holds it to a reference parser). Both are a [`Frame`]: the
//! addresses of the first byte and of one past the last. Every read goes
//! through [`ptr_at`], whose check is written as `start + offset + size >
//! end` on purpose: that is the form the verifier follows to admit the
//! packet access after it. The helpers are `#[inline(always)]` so the
//! verifier sees one function.

use crate::{
    FAMILY_V4, FAMILY_V6, FlowKey, IPV6_MAX_EXT_HEADERS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, ServiceKey,
};

/// A frame as the parser sees it: the address of its first byte and of one
/// past its last.
///
/// # Safety
///
/// `data()..data_end()` must be readable memory for as long as the value is
/// borrowed: the parser reads anything in that range without further checks.
pub unsafe trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

// SAFETY: a slice's bytes are readable while it is borrowed.
unsafe impl Frame for [u8] {
    #[inline(always)]
    fn data(&self) -> usize {
        self.as_ptr() as usize
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.as_ptr() as usize + self.len()
    }
}

pub(crate) const ETH_LEN: usize = 14;
pub(crate) const ETH_P_IPV4: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub(crate) const IPV6_LEN: usize = 40;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DEST_OPTIONS: u8 = 60;
/// Fragment header: offset (13 bits) and the more-fragments flag.
const IPV6_FRAG_OFFSET_MORE: u16 = 0xfff9;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMP_HEADER_LEN: usize = 8;

/// What the program should do with a frame, as far as headers tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not VIP material (ARP, other ethertypes, other protocols): pass.
    Pass,
    /// An 802.1Q or 802.1ad tag: not looked into (counted, passed).
    Vlan,
    /// Truncated or inconsistent headers.
    Malformed,
    /// An IP fragment; carries the destination address (port 0, proto 0)
    /// to check against the VIP set.
    Fragment(ServiceKey),
    /// IPv6 extension headers that do not end (or are cut short) within
    /// `IPV6_MAX_EXT_HEADERS`; carries the destination address like
    /// [`Parsed::Fragment`].
    Unparsed(ServiceKey),
    /// A TCP or UDP packet; `syn` is a bare SYN (new connection attempt).
    Flow { key: FlowKey, syn: bool, len: u32 },
    /// ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) about
    /// a packet a server sent from a VIP; `key` is the client → VIP flow it
    /// concerns.
    IcmpTooBig { key: FlowKey, len: u32 },
}

/// Pointer to a `T` at `offset` into the frame, if the frame holds it all.
/// Only the XDP program writes through it (its packet is writable; a
/// slice is not).
#[inline(always)]
pub fn ptr_at<T>(frame: &(impl Frame + ?Sized), offset: usize) -> Option<*mut T> {
    let start = frame.data();
    let end = frame.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub(crate) fn read<T: Copy>(frame: &(impl Frame + ?Sized), offset: usize) -> Option<T> {
    // SAFETY: bounds checked by `ptr_at` against a readable range (`Frame`);
    // T is plain bytes (unaligned read).
    ptr_at::<T>(frame, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Header {
    pub(crate) version_ihl: u8,
    pub(crate) tos: u8,
    pub(crate) total_len: [u8; 2],
    pub(crate) id: [u8; 2],
    pub(crate) frag: [u8; 2],
    pub(crate) ttl: u8,
    pub(crate) proto: u8,
    pub(crate) check: [u8; 2],
    pub(crate) src: [u8; 4],
    pub(crate) dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv6Header {
    pub(crate) version_flow: [u8; 4],
    pub(crate) payload_len: [u8; 2],
    pub(crate) next: u8,
    pub(crate) hop_limit: u8,
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
}

/// The first bytes of TCP and UDP headers: ports.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ports {
    src: [u8; 2],
    dst: [u8; 2],
}

#[inline(always)]
pub(crate) fn widen4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}

/// The verdict on one frame.
#[must_use]
pub fn parse_frame(frame: &(impl Frame + ?Sized)) -> Parsed {
    let Some(ethertype) = read::<[u8; 2]>(frame, 12) else {
        return Parsed::Malformed;
    };
    let frame_len = (frame.data_end() - frame.data()) as u32;
    match u16::from_be_bytes(ethertype) {
        ETH_P_IPV4 => parse_ipv4(frame, frame_len),
        ETH_P_IPV6 => parse_ipv6(frame, frame_len),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Vlan,
        _ => Parsed::Pass,
    }
}

#[inline(always)]
fn parse_ipv4(frame: &(impl Frame + ?Sized), len: u32) -> Parsed {
    let Some(ip) = read::<Ipv4Header>(frame, ETH_LEN) else {
        return Parsed::Malformed;
    };
    let ihl = (ip.version_ihl & 0x0f) as usize;
    if ip.version_ihl >> 4 != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let l4 = ETH_LEN + ihl * 4;
    // More-fragments flag or a fragment offset: no reliable ports.
    if u16::from_be_bytes(ip.frag) & 0x3fff != 0 {
        return Parsed::Fragment(vip_key(widen4(ip.dst), FAMILY_V4));
    }
    match ip.proto {
        PROTO_TCP | PROTO_UDP => l4_flow(
            frame,
            l4,
            ip.proto,
            widen4(ip.src),
            widen4(ip.dst),
            FAMILY_V4,
            len,
        ),
        PROTO_ICMP => icmp4_too_big(frame, l4, len),
        _ => Parsed::Pass,
    }
}

#[inline(always)]
fn parse_ipv6(frame: &(impl Frame + ?Sized), len: u32) -> Parsed {
    let Some(ip) = read::<Ipv6Header>(frame, ETH_LEN) else {
        return Parsed::Malformed;
    };
    if ip.version_flow[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut next = ip.next;
    let mut l4 = ETH_LEN + IPV6_LEN;
    // Extension headers, a bounded number (the verifier sees each step).
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTIONS => {
                // Next header, then the length in 8-byte units past the first 8.
                let Some(head) = read::<[u8; 2]>(frame, l4) else {
                    return Parsed::Unparsed(vip_key(ip.dst, FAMILY_V6));
                };
                next = head[0];
                l4 += (head[1] as usize + 1) * 8;
            }
            NEXT_FRAGMENT => {
                let Some(head) = read::<[u8; 4]>(frame, l4) else {
                    return Parsed::Unparsed(vip_key(ip.dst, FAMILY_V6));
                };
                // An offset (no L4 header here) or more to come: no
                // reliable ports. An atomic fragment is a whole packet.
                if u16::from_be_bytes([head[2], head[3]]) & IPV6_FRAG_OFFSET_MORE != 0 {
                    return Parsed::Fragment(vip_key(ip.dst, FAMILY_V6));
                }
                next = head[0];
                l4 += 8;
            }
            _ => break,
        }
    }
    match next {
        PROTO_TCP | PROTO_UDP => l4_flow(frame, l4, next, ip.src, ip.dst, FAMILY_V6, len),
        PROTO_ICMPV6 => icmp6_too_big(frame, l4, len),
        // Still in extension headers: past the bound.
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTIONS | NEXT_FRAGMENT => {
            Parsed::Unparsed(vip_key(ip.dst, FAMILY_V6))
        }
        // Other protocols: not balanced, left to the stack.
        _ => Parsed::Pass,
    }
}

#[inline(always)]
fn vip_key(addr: [u8; 16], family: u8) -> ServiceKey {
    ServiceKey {
        addr,
        port: [0; 2],
        proto: 0,
        family,
    }
}

#[inline(always)]
fn l4_flow(
    frame: &(impl Frame + ?Sized),
    l4: usize,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    family: u8,
    len: u32,
) -> Parsed {
    let Some(ports) = read::<Ports>(frame, l4) else {
        return Parsed::Malformed;
    };
    let syn = if proto == PROTO_TCP {
        // Flags byte is at offset 13 of the TCP header.
        let Some(flags) = read::<u8>(frame, l4 + 13) else {
            return Parsed::Malformed;
        };
        flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    } else {
        // A UDP header is 8 bytes; refuse shorter ones.
        if read::<[u8; 8]>(frame, l4).is_none() {
            return Parsed::Malformed;
        }
        false
    };
    Parsed::Flow {
        key: FlowKey {
            src,
            dst,
            sport: ports.src,
            dport: ports.dst,
            proto,
            family,
            _pad: [0; 2],
        },
        syn,
        len,
    }
}

/// The flow an ICMP error is about: the quoted packet went VIP → client, so
/// the client → VIP key swaps its addresses and ports.
#[inline(always)]
fn quoted_flow(
    quoted_src: [u8; 16],
    quoted_dst: [u8; 16],
    ports: Ports,
    proto: u8,
    family: u8,
) -> FlowKey {
    FlowKey {
        src: quoted_dst,
        dst: quoted_src,
        sport: ports.dst,
        dport: ports.src,
        proto,
        family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn icmp4_too_big(frame: &(impl Frame + ?Sized), l4: usize, len: u32) -> Parsed {
    let Some(head) = read::<[u8; 2]>(frame, l4) else {
        return Parsed::Malformed;
    };
    if head[0] != ICMP_DEST_UNREACH || head[1] != ICMP_FRAG_NEEDED {
        return Parsed::Pass;
    }
    let inner = l4 + ICMP_HEADER_LEN;
    let Some(ip) = read::<Ipv4Header>(frame, inner) else {
        return Parsed::Malformed;
    };
    let ihl = (ip.version_ihl & 0x0f) as usize;
    if ihl < 5 || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        return Parsed::Pass;
    }
    let Some(ports) = read::<Ports>(frame, inner + ihl * 4) else {
        return Parsed::Malformed;
    };
    Parsed::IcmpTooBig {
        key: quoted_flow(widen4(ip.src), widen4(ip.dst), ports, ip.proto, FAMILY_V4),
        len,
    }
}

#[inline(always)]
fn icmp6_too_big(frame: &(impl Frame + ?Sized), l4: usize, len: u32) -> Parsed {
    let Some(head) = read::<[u8; 2]>(frame, l4) else {
        return Parsed::Malformed;
    };
    if head[0] != ICMPV6_PACKET_TOO_BIG {
        return Parsed::Pass;
    }
    let inner = l4 + ICMP_HEADER_LEN;
    let Some(ip) = read::<Ipv6Header>(frame, inner) else {
        return Parsed::Malformed;
    };
    if ip.next != PROTO_TCP && ip.next != PROTO_UDP {
        return Parsed::Pass;
    }
    let Some(ports) = read::<Ports>(frame, inner + IPV6_LEN) else {
        return Parsed::Malformed;
    };
    Parsed::IcmpTooBig {
        key: quoted_flow(ip.src, ip.dst, ports, ip.next, FAMILY_V6),
        len,
    }
}

#[cfg(test)]
pub(crate) mod tests;
