//! `xdp_decap`, installed on a real server by `lb-agent`: takes the outer
//! header off what a balancer node tunnelled to it (IPIP or GUE, see
//! `lb_common::decap`) and hands the inner packet to the stack, where the
//! VIP on loopback answers the client directly.
//!
//! Only packets from an allowed outer source (`DECAP_SOURCES`, the nodes'
//! tunnel sources) whose inner packet is for one of this server's VIPs
//! (`DECAP_VIPS`) are taken off; any other tunnel packet is dropped and
//! counted, so the server is never an open relay, even for a host that
//! forges a node's address. Everything else passes untouched.
#![no_std]
#![no_main]

#[path = "../packet.rs"]
mod packet;
#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    decap::{
        DEFAULT_GUE_PORT, DecapSource, MAX_DECAP_SOURCES, MAX_DECAP_VIPS, MAX_STRIP, Tunnelled,
        classify, stats,
    },
    parse::ptr_at,
};
use packet::Packet;

/// The outer UDP destination port of GUE (set by the loader).
#[unsafe(no_mangle)]
static GUE_PORT: u16 = DEFAULT_GUE_PORT;

#[map]
static DECAP_SOURCES: HashMap<DecapSource, u32> = HashMap::with_max_entries(MAX_DECAP_SOURCES, 0);
#[map]
static DECAP_VIPS: HashMap<DecapSource, u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);
#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

const ETH_P_IPV4: [u8; 2] = 0x0800u16.to_be_bytes();
const ETH_P_IPV6: [u8; 2] = 0x86ddu16.to_be_bytes();

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    // SAFETY: a plain aligned read of a `.rodata` value the loader set.
    let port = unsafe { core::ptr::read_volatile(&GUE_PORT) };
    match classify(&Packet(&ctx), port) {
        Tunnelled::Pass => {
            count(stats::PASSED);
            xdp_action::XDP_PASS
        }
        Tunnelled::Malformed => {
            count(stats::MALFORMED);
            xdp_action::XDP_DROP
        }
        Tunnelled::Packet {
            src,
            inner_dst,
            strip,
            inner_v6,
            gue,
        } => {
            if DECAP_SOURCES.get_ptr(&src).is_none() {
                count(stats::REFUSED);
                return xdp_action::XDP_DROP;
            }
            if DECAP_VIPS.get_ptr(&inner_dst).is_none() {
                count(stats::NOT_A_VIP);
                return xdp_action::XDP_DROP;
            }
            if strip_outer(&ctx, strip, inner_v6).is_err() {
                count(stats::MALFORMED);
                return xdp_action::XDP_DROP;
            }
            count(if gue { stats::GUE } else { stats::IPIP });
            xdp_action::XDP_PASS
        }
    }
}

/// Moves the Ethernet addresses `strip` bytes on, writes the inner
/// packet's ethertype after them, and drops the bytes before.
#[inline(always)]
fn strip_outer(ctx: &XdpContext, strip: usize, inner_v6: bool) -> Result<(), ()> {
    if strip > MAX_STRIP {
        return Err(());
    }
    let frame = Packet(ctx);
    let old = ptr_at::<[u8; 12]>(&frame, 0).ok_or(())?;
    let new = ptr_at::<[u8; 14]>(&frame, strip).ok_or(())?;
    // SAFETY: both ranges checked against the packet's end above; `new`
    // starts past `old` (strip is at least an IPv4 header), so the write
    // does not overlap the read.
    unsafe {
        let macs = core::ptr::read_unaligned(old);
        let mut head = [0u8; 14];
        head[..12].copy_from_slice(&macs);
        head[12..].copy_from_slice(if inner_v6 { &ETH_P_IPV6 } else { &ETH_P_IPV4 });
        core::ptr::write_unaligned(new, head);
    }
    // SAFETY: the helper checks the new start lies within the packet.
    let delta = i32::try_from(strip).map_err(|_| ())?;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(());
    }
    Ok(())
}
