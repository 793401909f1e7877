//! Decapsulation on a real server: which frames carry a packet a node
//! tunnelled to it, and how many bytes after the Ethernet header to strip.
//!
//! Tunnels: IPIP (IPv4 or IPv6 inside IPv4 or IPv6, protocol 4 or 41) and
//! GUE (UDP to the configured port, then a GUE header: version 0 with its
//! 4-byte header and the inner protocol, or version 1, the inner IP header
//! at once). Whether the outer source may tunnel to this server is the
//! program's check (its map of allowed sources), after this verdict.
//! Like [`crate::parse`], the XDP program and the host's tests run this
//! same code.

use crate::{
    FAMILY_V4, FAMILY_V6, PROTO_UDP,
    parse::{
        ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, Frame, IPV6_LEN, Ipv4Header, Ipv6Header, read, widen4,
    },
};

/// IP protocol numbers of an inner packet: IPv4 and IPv6.
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6_IN_IP: u8 = 41;
/// The outer UDP destination port GUE uses unless configured.
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Bytes of a UDP header and of a version-0 GUE header (no extensions).
pub const UDP_LEN: usize = 8;
pub const GUE_LEN: usize = 4;
/// The most a verdict strips: an outer IPv4 header with options, UDP, and
/// a GUE header with the most extension words (31).
pub const MAX_STRIP: usize = 60 + UDP_LEN + GUE_LEN + 31 * 4;

/// The decapsulation program's load-time global: the GUE port.
pub const GLOBAL_GUE_PORT: &str = "GUE_PORT";
/// Its maps: allowed outer sources and the VIPs inner packets may be
/// addressed to (each [`DecapSource`] → 1), counters.
pub const MAP_DECAP_SOURCES: &str = "DECAP_SOURCES";
pub const MAP_DECAP_VIPS: &str = "DECAP_VIPS";
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";
/// The program's name in its object.
pub const DECAP_PROGRAM: &str = "xdp_decap";
/// Most allowed outer sources (every node's, both families), and VIPs.
pub const MAX_DECAP_SOURCES: u32 = 256;
pub const MAX_DECAP_VIPS: u32 = 256;

/// An address in the program's maps: an allowed outer source, a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecapSource {
    /// IPv4 in the first four bytes.
    pub addr: [u8; 16],
    pub family: u8,
    pub pad: [u8; 3],
}

impl DecapSource {
    #[must_use]
    pub fn new(addr: [u8; 16], family: u8) -> Self {
        Self {
            addr,
            family,
            pad: [0; 3],
        }
    }
}

/// `DECAP_STATS` indexes.
pub mod stats {
    /// Inner packets handed to the stack, by tunnel.
    pub const IPIP: u32 = 0;
    pub const GUE: u32 = 1;
    /// Tunnelled packets from a source not allowed: dropped.
    pub const REFUSED: u32 = 2;
    /// Tunnel headers cut short or inconsistent (a fragment, an inner
    /// packet that is not IP, GUE control messages): dropped.
    pub const MALFORMED: u32 = 3;
    /// Everything else: passed untouched.
    pub const PASSED: u32 = 4;
    /// Tunnelled packets from an allowed source whose inner packet is not
    /// for one of this server's VIPs: dropped (never relayed).
    pub const NOT_A_VIP: u32 = 5;
    pub const COUNT: u32 = 8;
    /// Names, in index order, for counters' output.
    pub const NAMES: [&str; 6] = ["ipip", "gue", "refused", "malformed", "passed", "not_a_vip"];
}

/// What a frame is, as far as tunnels go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnelled {
    /// Not a tunnel packet: pass it on untouched.
    Pass,
    /// A tunnel header that cannot be taken off: drop.
    Malformed,
    /// A tunnelled packet from `src` to `inner_dst`: strip `strip` bytes
    /// after the Ethernet header; the inner packet is IPv6 when `inner_v6`.
    Packet {
        src: DecapSource,
        inner_dst: DecapSource,
        strip: usize,
        inner_v6: bool,
        gue: bool,
    },
}

/// The verdict on one frame, GUE on UDP port `gue_port`.
#[must_use]
pub fn classify(frame: &(impl Frame + ?Sized), gue_port: u16) -> Tunnelled {
    let Some(ethertype) = read::<[u8; 2]>(frame, 12) else {
        return Tunnelled::Pass;
    };
    let (src, outer_len, proto) = match outer(frame, u16::from_be_bytes(ethertype), gue_port) {
        Ok(outer) => outer,
        Err(verdict) => return verdict,
    };
    let (strip, declared) = if proto == PROTO_UDP {
        match gue_header(frame, ETH_LEN + outer_len + UDP_LEN) {
            Some((len, declared)) => (outer_len + UDP_LEN + len, declared),
            None => return Tunnelled::Malformed,
        }
    } else {
        (outer_len, Some(proto))
    };
    if strip > MAX_STRIP {
        return Tunnelled::Malformed;
    }
    let Some(inner) = read::<u8>(frame, ETH_LEN + strip) else {
        return Tunnelled::Malformed;
    };
    let inner_v6 = match inner >> 4 {
        4 => false,
        6 => true,
        _ => return Tunnelled::Malformed,
    };
    let inner_dst = if inner_v6 {
        read::<[u8; 16]>(frame, ETH_LEN + strip + 24).map(|a| DecapSource::new(a, FAMILY_V6))
    } else {
        read::<[u8; 4]>(frame, ETH_LEN + strip + 16).map(|a| DecapSource::new(widen4(a), FAMILY_V4))
    };
    let Some(inner_dst) = inner_dst else {
        return Tunnelled::Malformed;
    };
    if let Some(declared) = declared
        && inner_v6 != (declared == PROTO_IPV6_IN_IP)
    {
        return Tunnelled::Malformed;
    }
    Tunnelled::Packet {
        src,
        inner_dst,
        strip,
        inner_v6,
        gue: proto == PROTO_UDP,
    }
}

/// The outer IP header of a tunnel packet: its source, its length and the
/// protocol it carries; `Err` with the verdict when it is none.
#[inline(always)]
fn outer(
    frame: &(impl Frame + ?Sized),
    ethertype: u16,
    gue_port: u16,
) -> Result<(DecapSource, usize, u8), Tunnelled> {
    Ok(match ethertype {
        ETH_P_IPV4 => {
            let Some(ip) = read::<Ipv4Header>(frame, ETH_LEN) else {
                return Err(Tunnelled::Pass);
            };
            let ihl = (ip.version_ihl & 0x0f) as usize;
            if ip.version_ihl >> 4 != 4 || ihl < 5 {
                return Err(Tunnelled::Pass);
            }
            if !carries_tunnel(frame, ETH_LEN + ihl * 4, ip.proto, gue_port) {
                return Err(Tunnelled::Pass);
            }
            // A node never fragments what it tunnels.
            if u16::from_be_bytes(ip.frag) & 0x3fff != 0 {
                return Err(Tunnelled::Malformed);
            }
            (
                DecapSource::new(widen4(ip.src), FAMILY_V4),
                ihl * 4,
                ip.proto,
            )
        }
        ETH_P_IPV6 => {
            let Some(ip) = read::<Ipv6Header>(frame, ETH_LEN) else {
                return Err(Tunnelled::Pass);
            };
            if ip.version_flow[0] >> 4 != 6 {
                return Err(Tunnelled::Pass);
            }
            if is_extension(ip.next) {
                // A node sends no extension headers: a tunnel behind them
                // (a fragment of one, above all) is not taken off, and not
                // let through to the stack either.
                return Err(if extensions_hide_tunnel(frame, ip.next, gue_port) {
                    Tunnelled::Malformed
                } else {
                    Tunnelled::Pass
                });
            }
            if !carries_tunnel(frame, ETH_LEN + IPV6_LEN, ip.next, gue_port) {
                return Err(Tunnelled::Pass);
            }
            (DecapSource::new(ip.src, FAMILY_V6), IPV6_LEN, ip.next)
        }
        _ => return Err(Tunnelled::Pass),
    })
}

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DEST_OPTIONS: u8 = 60;

#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_FRAGMENT | NEXT_DEST_OPTIONS
    )
}

/// Whether IPv6 extension headers starting with `next` lead to a tunnel
/// header (or a fragment of one: a later fragment of UDP cannot tell its
/// port and passes), within [`crate::IPV6_MAX_EXT_HEADERS`]; headers past
/// the bound count as hiding one.
#[inline(always)]
fn extensions_hide_tunnel(frame: &(impl Frame + ?Sized), mut next: u8, gue_port: u16) -> bool {
    let mut at = ETH_LEN + IPV6_LEN;
    let mut later_fragment = false;
    for _ in 0..crate::IPV6_MAX_EXT_HEADERS {
        if !is_extension(next) {
            break;
        }
        let Some(head) = read::<[u8; 4]>(frame, at) else {
            return false;
        };
        if next == NEXT_FRAGMENT {
            later_fragment |= u16::from_be_bytes([head[2], head[3]]) & 0xfff8 != 0;
            at += 8;
        } else {
            at += (head[1] as usize + 1) * 8;
        }
        next = head[0];
    }
    match next {
        PROTO_IPIP | PROTO_IPV6_IN_IP => true,
        PROTO_UDP => !later_fragment && carries_tunnel(frame, at, next, gue_port),
        _ => is_extension(next),
    }
}

/// Whether the outer header's protocol (and, for UDP, its destination
/// port) says a tunnel: IPIP, IPv6-in-IP, or UDP to the GUE port.
#[inline(always)]
fn carries_tunnel(frame: &(impl Frame + ?Sized), l4: usize, proto: u8, gue_port: u16) -> bool {
    match proto {
        PROTO_IPIP | PROTO_IPV6_IN_IP => true,
        PROTO_UDP => read::<[u8; 4]>(frame, l4)
            .is_some_and(|ports| u16::from_be_bytes([ports[2], ports[3]]) == gue_port),
        _ => false,
    }
}

/// The GUE header at `at`: its length and the inner protocol it declares.
/// Version 0 (4 bytes and its extension words, the protocol in its second
/// byte; data messages only, and only IPv4 or IPv6 inside) or version 1
/// (no header: the inner IP header follows the UDP header, its version
/// says which). `None` for control messages, other versions and
/// protocols.
#[inline(always)]
fn gue_header(frame: &(impl Frame + ?Sized), at: usize) -> Option<(usize, Option<u8>)> {
    let head = read::<[u8; 2]>(frame, at)?;
    match head[0] >> 6 {
        0 if head[0] & 0x20 == 0 && matches!(head[1], PROTO_IPIP | PROTO_IPV6_IN_IP) => {
            Some((GUE_LEN + (head[0] & 0x1f) as usize * 4, Some(head[1])))
        }
        1 => Some((0, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
