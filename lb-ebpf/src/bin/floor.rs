//! Reference programs built alongside the balancer:
//! - `xdp_floor`: swap MACs and `XDP_TX`, the cheapest forwarding program
//!   possible; `cargo xtask bench` reports the balancer's cost above it.
//! - `xdp_pass`: a bare `XDP_PASS`. On a veth, frames sent with `XDP_TX`
//!   reach the peer only when the peer runs an XDP program; labs attach this
//!   one there.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[path = "../runtime.rs"]
mod runtime;

#[xdp]
pub fn xdp_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *mut [u8; 12];
    // SAFETY: bounds checked above.
    unsafe {
        let old = *eth;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&old[6..]);
        swapped[6..].copy_from_slice(&old[..6]);
        *eth = swapped;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
