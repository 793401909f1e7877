//! Arbitrary bytes as one Ethernet frame through the XDP program's header
//! parser (`lb_common::parse`, the code the kernel runs, on a byte slice).
//!
//! It must never panic or read outside the frame (the sanitizer sees every
//! read), and:
//! - its verdict is the one a plain reference parser below gives (one
//!   function per header, safe slice indexing, its own protocol numbers);
//! - bytes after the frame's end never change a verdict that was reached
//!   (only `Malformed` and `Unparsed` may become something else);
//! - IPv6 extension headers are transparent: behind a chain the program
//!   walks, the verdict is the one for the same packet without the chain,
//!   and TCP or UDP behind one is never `Pass`; a chain that does not end
//!   within the bound, or is cut short, is `Unparsed` (dropped when it is
//!   for a VIP), never handed to the stack as `Pass`.

#![no_main]

use lb_common::{
    FlowKey, IPV6_MAX_EXT_HEADERS, ServiceKey,
    parse::{Parsed, parse_frame},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let verdict = parse_frame(frame);
    assert_eq!(verdict, reference(frame), "the reference disagrees");
    check_trailing_bytes(frame, verdict);
    check_extension_chain(frame, verdict);
});

/// Protocol numbers as the IEEE and IANA registries give them, spelled out
/// here rather than taken from the parser, so a wrong constant there shows.
mod wire {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DEST_OPTIONS: u8 = 60;
    /// Where the IPv4 and IPv6 headers start (after the Ethernet header),
    /// and where an IPv6 header without extensions ends.
    pub const L3: usize = 14;
    pub const L3_END_V6: usize = L3 + 40;
}

/// The frame, read only through bounds-checked slicing.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        let end = at.checked_add(N)?;
        self.0.get(at..end)?.try_into().ok()
    }

    fn be16(&self, at: usize) -> Option<u16> {
        self.take::<2>(at).map(u16::from_be_bytes)
    }
}

fn reference(frame: &[u8]) -> Parsed {
    let bytes = Bytes(frame);
    let len = u32::try_from(frame.len()).expect("libFuzzer inputs are small");
    match bytes.be16(12) {
        None => Parsed::Malformed,
        Some(wire::IPV4) => ipv4(&bytes, len),
        Some(wire::IPV6) => ipv6(&bytes, len),
        Some(wire::VLAN | wire::QINQ) => Parsed::Vlan,
        Some(_) => Parsed::Pass,
    }
}

/// The address alone, as the VIP set holds it.
fn vip(addr: &[u8]) -> ServiceKey {
    ServiceKey::new(addr, 0, 0)
}

fn ipv4(bytes: &Bytes, len: u32) -> Parsed {
    let Some(header) = bytes.take::<20>(wire::L3) else {
        return Parsed::Malformed;
    };
    let version = header[0] >> 4;
    let words = usize::from(header[0] & 0x0f);
    if version != 4 || words < 5 {
        return Parsed::Malformed;
    }
    let (src, dst) = (&header[12..16], &header[16..20]);
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let more_fragments = flags_offset & 0x2000 != 0;
    let offset = flags_offset & 0x1fff;
    if more_fragments || offset != 0 {
        return Parsed::Fragment(vip(dst));
    }
    let l4 = wire::L3 + words * 4;
    match header[9] {
        proto @ (wire::TCP | wire::UDP) => transport(bytes, l4, proto, src, dst, len),
        wire::ICMP => frag_needed(bytes, l4, len),
        _ => Parsed::Pass,
    }
}

/// TCP needs its ports and flags (byte 13) in the frame, UDP its whole
/// 8-byte header.
fn transport(bytes: &Bytes, at: usize, proto: u8, src: &[u8], dst: &[u8], len: u32) -> Parsed {
    let (Some(sport), Some(dport)) = (bytes.be16(at), bytes.be16(at + 2)) else {
        return Parsed::Malformed;
    };
    let syn = if proto == wire::TCP {
        let Some([flags]) = bytes.take::<1>(at + 13) else {
            return Parsed::Malformed;
        };
        let (syn, ack) = (flags & 0x02 != 0, flags & 0x10 != 0);
        syn && !ack
    } else {
        if bytes.take::<8>(at).is_none() {
            return Parsed::Malformed;
        }
        false
    };
    Parsed::Flow {
        key: FlowKey::new(src, sport, dst, dport, proto),
        syn,
        len,
    }
}

/// The client → VIP flow of a quoted packet, which went `from` the VIP `to`
/// the client.
fn quoted_flow(from: &[u8], to: &[u8], ports: [u8; 4], proto: u8) -> FlowKey {
    let from_port = u16::from_be_bytes([ports[0], ports[1]]);
    let to_port = u16::from_be_bytes([ports[2], ports[3]]);
    FlowKey::new(to, to_port, from, from_port, proto)
}

/// ICMP type 3 code 4; the quoted IPv4 header starts 8 bytes in.
fn frag_needed(bytes: &Bytes, at: usize, len: u32) -> Parsed {
    let Some([kind, code]) = bytes.take::<2>(at) else {
        return Parsed::Malformed;
    };
    if (kind, code) != (3, 4) {
        return Parsed::Pass;
    }
    let inner = at + 8;
    let Some(quoted) = bytes.take::<20>(inner) else {
        return Parsed::Malformed;
    };
    let words = usize::from(quoted[0] & 0x0f);
    let proto = quoted[9];
    if words < 5 || !matches!(proto, wire::TCP | wire::UDP) {
        return Parsed::Pass;
    }
    let Some(ports) = bytes.take::<4>(inner + words * 4) else {
        return Parsed::Malformed;
    };
    Parsed::IcmpTooBig {
        key: quoted_flow(&quoted[12..16], &quoted[16..20], ports, proto),
        len,
    }
}

/// Packet too big (ICMP for IPv6: type 2, any code); the quoted IPv6 header
/// starts 8 bytes in.
fn packet_too_big(bytes: &Bytes, at: usize, len: u32) -> Parsed {
    let Some([kind, _code]) = bytes.take::<2>(at) else {
        return Parsed::Malformed;
    };
    if kind != 2 {
        return Parsed::Pass;
    }
    let inner = at + 8;
    let Some(quoted) = bytes.take::<40>(inner) else {
        return Parsed::Malformed;
    };
    let proto = quoted[6];
    if !matches!(proto, wire::TCP | wire::UDP) {
        return Parsed::Pass;
    }
    let Some(ports) = bytes.take::<4>(inner + 40) else {
        return Parsed::Malformed;
    };
    Parsed::IcmpTooBig {
        key: quoted_flow(&quoted[8..24], &quoted[24..40], ports, proto),
        len,
    }
}

/// Where a walk of IPv6 extension headers ends.
#[derive(Debug)]
enum ChainEnd {
    /// A protocol that is not a walked extension header, at `at`.
    Protocol { proto: u8, at: usize },
    /// A fragment header with an offset or more to come.
    Fragment,
    /// Past the bound, or a header not wholly in the frame.
    Unparsed,
}

fn is_extension(next: u8) -> bool {
    matches!(
        next,
        wire::HOP_BY_HOP | wire::ROUTING | wire::FRAGMENT | wire::DEST_OPTIONS
    )
}

/// Follows next-header fields from the fixed header, at most
/// `IPV6_MAX_EXT_HEADERS` of them.
fn walk_extensions(bytes: &Bytes, first: u8) -> ChainEnd {
    let (mut proto, mut at) = (first, wire::L3_END_V6);
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        if !is_extension(proto) {
            return ChainEnd::Protocol { proto, at };
        }
        if proto == wire::FRAGMENT {
            let Some([next, _, hi, lo]) = bytes.take::<4>(at) else {
                return ChainEnd::Unparsed;
            };
            let word = u16::from_be_bytes([hi, lo]);
            let (offset, more) = (word >> 3, word & 1 != 0);
            if offset != 0 || more {
                return ChainEnd::Fragment;
            }
            (proto, at) = (next, at + 8);
        } else {
            let Some([next, units]) = bytes.take::<2>(at) else {
                return ChainEnd::Unparsed;
            };
            (proto, at) = (next, at + 8 + usize::from(units) * 8);
        }
    }
    if is_extension(proto) {
        ChainEnd::Unparsed
    } else {
        ChainEnd::Protocol { proto, at }
    }
}

fn ipv6(bytes: &Bytes, len: u32) -> Parsed {
    let Some(header) = bytes.take::<40>(wire::L3) else {
        return Parsed::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let (src, dst) = (&header[8..24], &header[24..40]);
    match walk_extensions(bytes, header[6]) {
        ChainEnd::Fragment => Parsed::Fragment(vip(dst)),
        ChainEnd::Unparsed => Parsed::Unparsed(vip(dst)),
        ChainEnd::Protocol { proto, at } => match proto {
            wire::TCP | wire::UDP => transport(bytes, at, proto, src, dst, len),
            wire::ICMPV6 => packet_too_big(bytes, at, len),
            _ => Parsed::Pass,
        },
    }
}

/// `verdict` as it would be for a frame of `len` bytes.
fn with_len(verdict: Parsed, len: u32) -> Parsed {
    match verdict {
        Parsed::Flow { key, syn, .. } => Parsed::Flow { key, syn, len },
        Parsed::IcmpTooBig { key, .. } => Parsed::IcmpTooBig { key, len },
        other => other,
    }
}

fn frame_len(frame: &[u8]) -> u32 {
    u32::try_from(frame.len()).expect("libFuzzer inputs are small")
}

/// A verdict reached from bytes within the frame stands whatever follows
/// them; only a frame that ended too soon may read differently.
fn check_trailing_bytes(frame: &[u8], verdict: Parsed) {
    if matches!(verdict, Parsed::Malformed | Parsed::Unparsed(_)) {
        return;
    }
    let mut longer = frame.to_vec();
    longer.extend_from_slice(&[0xa5; 64]);
    assert_eq!(
        parse_frame(&longer[..]),
        with_len(verdict, frame_len(&longer)),
        "trailing bytes changed the verdict"
    );
}

/// The rule for IPv6 extension headers (see the module docs).
fn check_extension_chain(frame: &[u8], verdict: Parsed) {
    let bytes = Bytes(frame);
    if bytes.be16(12) != Some(wire::IPV6) {
        return;
    }
    let Some(header) = bytes.take::<40>(wire::L3) else {
        return;
    };
    if header[0] >> 4 != 6 || !is_extension(header[6]) {
        return;
    }
    let dst = vip(&header[24..40]);
    match walk_extensions(&bytes, header[6]) {
        ChainEnd::Unparsed => assert_eq!(verdict, Parsed::Unparsed(dst), "cannot be walked"),
        ChainEnd::Fragment => assert_eq!(verdict, Parsed::Fragment(dst), "a fragment"),
        ChainEnd::Protocol { proto, at } => {
            if matches!(proto, wire::TCP | wire::UDP) {
                assert_ne!(verdict, Parsed::Pass, "TCP or UDP behind extension headers");
            }
            // The same packet, its fixed header naming `proto` directly.
            let mut bare = frame[..wire::L3_END_V6].to_vec();
            bare[wire::L3 + 6] = proto;
            bare.extend_from_slice(frame.get(at..).unwrap_or_default());
            assert_eq!(
                with_len(parse_frame(&bare[..]), frame_len(frame)),
                verdict,
                "extension headers changed the verdict"
            );
        }
    }
}
