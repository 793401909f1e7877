//! Forwarding to a server beyond the node's segments: the frame's IP
//! packet inside an outer IPv4 or IPv6 header (IPIP), or inside UDP and a
//! GUE header, addressed to the server from the node's tunnel source; the
//! next hop from the kernel's FIB (`bpf_fib_lookup`), never guessed. The
//! outer headers and their checksums are `lb_common::encap`'s.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::{
    Backend, FAMILY_V4, PROTO_TCP, PROTO_UDP,
    encap::{
        BACKEND_FLAG_GUE, GUE_OVERHEAD, IPV4_OVERHEAD, IPV6_OVERHEAD, InnerSum, PROTO_IPIP,
        PROTO_IPV6_IN_IP, TUNNEL_V4, TUNNEL_V6, TunnelConfig, gue_source_port, ipv4_header,
        ipv6_header, ipv6_pseudo, stats, udp_gue_header,
    },
    parse::ptr_at,
};

use crate::{TUNNEL, TUNNEL_STATS, bump, packet::Packet};

const ETH_LEN: usize = 14;

/// The FIB lookup's parameters and answer: per CPU, off the program's
/// stack (512 bytes for the whole verdict).
#[map]
static FIB_SCRATCH: PerCpuArray<FibParams> = PerCpuArray::with_max_entries(1, 0);
const _: () = assert!(core::mem::size_of::<FibParams>() == lb_common::encap::FIB_PARAMS_SIZE);
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
fn count(index: u32) {
    bump(&TUNNEL_STATS, index);
}

/// What the outer headers need from the inner packet, read before the
/// frame grows.
struct Inner {
    v6: bool,
    /// Bytes of the inner IP packet.
    len: u16,
    /// TOS / traffic class.
    class: u8,
    sum: InnerSum,
}

#[inline(always)]
fn inner(ctx: &XdpContext) -> Option<Inner> {
    let frame = Packet(ctx);
    let ethertype = ptr_at::<[u8; 2]>(&frame, 12)?;
    // The inner packet's length, once a header check has shown the frame
    // holds at least the Ethernet header (computed before the checks, the
    // compiler would fold them into it, a form the verifier does not
    // follow).
    let len = || u16::try_from(ctx.data_end() - ctx.data() - ETH_LEN).ok();
    // SAFETY: every read below is bounds-checked by `ptr_at`.
    if unsafe { *ethertype } == [0x86, 0xdd] {
        let header = unsafe { &*ptr_at::<[u8; 40]>(&frame, ETH_LEN)? };
        let class = (header[0] << 4) | (header[1] >> 4);
        Some(Inner {
            v6: true,
            len: len()?,
            class,
            sum: InnerSum::ipv6(header),
        })
    } else {
        let header = unsafe { &*ptr_at::<[u8; 20]>(&frame, ETH_LEN)? };
        // The parser let through IPv4 with options too: no checksum shortcut
        // there (the outer UDP checksum over IPv6 stays zero).
        let ihl = usize::from(header[0] & 0x0f) * 4;
        let check_at = match header[9] {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            _ => 2,
        };
        let l4_check = if ihl == 20 {
            unsafe { *ptr_at::<[u8; 2]>(&frame, ETH_LEN + 20 + check_at)? }
        } else {
            [0, 0]
        };
        let len = len()?;
        let l4_len = len.checked_sub(20)?;
        let mut sum = InnerSum::ipv4(header, l4_len, l4_check);
        if ihl != 20 {
            sum.segment = None;
        }
        Some(Inner {
            v6: false,
            len,
            class: header[1],
            sum,
        })
    }
}

/// Sends the frame tunnelled to `b` (IPIP, or GUE when its flags say so),
/// `hash` the flow's. The packet grows by the outer headers; the FIB gives
/// the MACs and the egress interface.
#[inline(always)]
pub fn tunnel(ctx: &XdpContext, b: &Backend, hash: u32) -> Result<u32, ()> {
    let config = TUNNEL.get_ptr(0).ok_or(())?;
    // SAFETY: a live map value of plain data, written only by user space.
    let config = unsafe { &*config };
    let outer_v4 = b.family == u32::from(FAMILY_V4);
    let wanted = if outer_v4 { TUNNEL_V4 } else { TUNNEL_V6 };
    if config.families & wanted == 0 {
        count(stats::NO_SOURCE);
        return Ok(xdp_action::XDP_DROP);
    }
    let inner = inner(ctx).ok_or(())?;
    let gue = b.flags & BACKEND_FLAG_GUE != 0;
    let ip_overhead = if outer_v4 {
        IPV4_OVERHEAD
    } else {
        IPV6_OVERHEAD
    };
    let overhead = ip_overhead + if gue { GUE_OVERHEAD } else { 0 };
    let outer_len = u32::from(inner.len) + overhead;

    // The next hop first: nothing is written when there is none.
    let fib = match next_hop(ctx, b, config, gue, outer_len)? {
        Ok(fib) => fib,
        Err(counter) => {
            count(counter);
            return Ok(xdp_action::XDP_DROP);
        }
    };

    // SAFETY: the helper checks the new start is within the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return Err(());
    }
    write_outer(ctx, b, config, &inner, hash, gue, fib)?;
    count(if gue { stats::GUE } else { stats::IPIP });
    if fib.ifindex as usize == ctx.ingress_ifindex() {
        return Ok(xdp_action::XDP_TX);
    }
    // SAFETY: helper with no memory arguments.
    Ok(unsafe { bpf_redirect(fib.ifindex, 0) } as u32)
}

/// The FIB's next hop toward `b` for an outer packet of `outer_len`
/// bytes, in this CPU's scratch value; `Err` with the counter of why there
/// is none (the packet is then dropped).
#[inline(always)]
fn next_hop<'a>(
    ctx: &XdpContext,
    b: &Backend,
    config: &TunnelConfig,
    gue: bool,
    outer_len: u32,
) -> Result<Result<&'a FibParams, u32>, ()> {
    let fib = FIB_SCRATCH.get_ptr_mut(0).ok_or(())?;
    let outer_v4 = b.family == u32::from(FAMILY_V4);
    // SAFETY: this CPU's scratch value, plain data; every field the helper
    // reads is written here (the rest zeroed).
    let found = unsafe {
        core::ptr::write_bytes(fib, 0, 1);
        (*fib).ifindex = ctx.ingress_ifindex() as u32;
        (*fib).__bindgen_anon_1.tot_len = outer_len as u16;
        if outer_v4 {
            (*fib).family = AF_INET;
            (*fib).l4_protocol = if gue { PROTO_UDP } else { PROTO_IPIP };
            (*fib).__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(config.src4);
            (*fib).__bindgen_anon_4.ipv4_dst =
                u32::from_ne_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
        } else {
            (*fib).family = AF_INET6;
            (*fib).l4_protocol = if gue { PROTO_UDP } else { PROTO_IPV6_IN_IP };
            (*fib).__bindgen_anon_3.ipv6_src = words(&config.src6);
            (*fib).__bindgen_anon_4.ipv6_dst = words(&b.addr);
        }
        bpf_fib_lookup(
            ctx.ctx.cast(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    Ok(match found {
        // SAFETY: the scratch value stays this CPU's for the whole run.
        BPF_FIB_LKUP_RET_SUCCESS => Ok(unsafe { &*fib }),
        // The stack cannot take it instead: it drops a packet to forward
        // whose source is its own address. lb-control has the kernel
        // resolve each tunnelled server's next hop when it programs it.
        BPF_FIB_LKUP_RET_NO_NEIGH => Err(stats::NO_NEIGH),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(stats::TOO_BIG),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(stats::FORWARDING_DISABLED),
        _ => Err(stats::NO_ROUTE),
    })
}

#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ]);
        i += 1;
    }
    out
}

/// The Ethernet header, the outer IP header and (GUE) the UDP and GUE
/// headers, in the room `bpf_xdp_adjust_head` just made.
#[inline(always)]
fn write_outer(
    ctx: &XdpContext,
    b: &Backend,
    config: &TunnelConfig,
    inner: &Inner,
    hash: u32,
    gue: bool,
    fib: &FibParams,
) -> Result<(), ()> {
    let frame = Packet(ctx);
    let outer_v4 = b.family == u32::from(FAMILY_V4);
    let eth = ptr_at::<[u8; ETH_LEN]>(&frame, 0).ok_or(())?;
    // SAFETY: bounds checked by `ptr_at`; plain bytes.
    unsafe {
        let eth = &mut *eth;
        eth[..6].copy_from_slice(&fib.dmac);
        eth[6..12].copy_from_slice(&fib.smac);
        eth[12..].copy_from_slice(if outer_v4 {
            &[0x08, 0x00]
        } else {
            &[0x86, 0xdd]
        });
    }
    let inner_proto = if inner.v6 {
        PROTO_IPV6_IN_IP
    } else {
        PROTO_IPIP
    };
    let udp_len = inner.len + GUE_OVERHEAD as u16;
    let payload_len = if gue { udp_len } else { inner.len };
    let next = if gue { PROTO_UDP } else { inner_proto };
    let l4 = if outer_v4 {
        let dst = [b.addr[0], b.addr[1], b.addr[2], b.addr[3]];
        let at = ptr_at::<[u8; 20]>(&frame, ETH_LEN).ok_or(())?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            core::ptr::write_unaligned(
                at,
                ipv4_header(config.src4, dst, next, inner.class, payload_len),
            );
        }
        ETH_LEN + 20
    } else {
        let at = ptr_at::<[u8; 40]>(&frame, ETH_LEN).ok_or(())?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            core::ptr::write_unaligned(
                at,
                ipv6_header(&config.src6, &b.addr, next, inner.class, hash, payload_len),
            );
        }
        ETH_LEN + 40
    };
    if gue {
        let checksum =
            (!outer_v4).then(|| (ipv6_pseudo(&config.src6, &b.addr, udp_len), inner.sum));
        let udp = udp_gue_header(
            gue_source_port(hash),
            u16::from_be_bytes(config.gue_port),
            inner.len,
            inner.v6,
            checksum,
        );
        let at = ptr_at::<[u8; 12]>(&frame, l4).ok_or(())?;
        // SAFETY: bounds checked by `ptr_at`.
        unsafe { core::ptr::write_unaligned(at, udp) };
    }
    Ok(())
}
