//! The debug variant's log records (feature `debug-log`): a few decisions
//! an operator cannot see in the counters alone, sent through aya-log's
//! ring buffer. `lb-control` loads that object with `[node] debug_xdp` and
//! forwards the records into its own log (target `xdp`).
//!
//! Without the feature every function here is empty and inlined away: the
//! production object carries no log call and no `AYA_LOGS` map.
//!
//! A record is an event in words, then `key=value` fields (`service`,
//! `backend` are map indexes, `server` and `client` addresses); the
//! reasons of drops are the names of the counters they bump. The loader
//! turns the fields into structured ones (lb-control's
//! `node/dataplane/xdp_log.rs`), so keep that shape.

use aya_ebpf::programs::XdpContext;
use lb_common::{Backend, FlowKey};

/// One record at `info`, compiled in only with `debug-log`.
macro_rules! record {
    ($ctx:expr, $($format:tt)+) => {
        #[cfg(feature = "debug-log")]
        aya_log_ebpf::info!($ctx, target: "xdp", $($format)+);
    };
}

#[cfg(feature = "debug-log")]
use address::{client, server};

#[cfg(feature = "debug-log")]
mod address {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use lb_common::{Backend, FAMILY_V4, FlowKey};

    /// A flow's client.
    #[inline(always)]
    pub fn client(key: &FlowKey) -> IpAddr {
        addr(key.family == FAMILY_V4, &key.src)
    }

    /// A backend's server.
    #[inline(always)]
    pub fn server(b: &Backend) -> IpAddr {
        addr(b.family == u32::from(FAMILY_V4), &b.addr)
    }

    /// IPv4 lives in the first four bytes.
    #[inline(always)]
    fn addr(v4: bool, a: &[u8; 16]) -> IpAddr {
        if v4 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*a))
        }
    }
}

/// A flow the flow table did not hold (or held stale): Maglev chose
/// `backend` and the flow is remembered.
#[inline(always)]
pub fn new_flow(ctx: &XdpContext, key: &FlowKey, svc: u32, backend: u32, b: &Backend) {
    record!(
        ctx,
        "new flow from maglev client={} client_port={} service={} backend={} server={}",
        client(key),
        u16::from_be_bytes(key.sport),
        svc,
        backend,
        server(b)
    );
    let _ = (ctx, key, svc, backend, b);
}

/// An ICMP "fragmentation needed" / "packet too big" sent on to the server
/// of the flow it quotes.
#[inline(always)]
pub fn icmp_routed(ctx: &XdpContext, key: &FlowKey, svc: u32, backend: u32, b: &Backend) {
    record!(
        ctx,
        "icmp too-big routed client={} service={} backend={} server={}",
        client(key),
        svc,
        backend,
        server(b)
    );
    let _ = (ctx, key, svc, backend, b);
}

/// A VIP packet dropped for want of a server (`global::NO_BACKEND`).
#[inline(always)]
pub fn drop_no_backend(ctx: &XdpContext, key: &FlowKey, svc: u32) {
    record!(
        ctx,
        "dropped reason=no_backend client={} service={}",
        client(key),
        svc
    );
    let _ = (ctx, key, svc);
}

/// An ICMP too-big quoting no flow on a usable server
/// (`guard::ICMP_NO_FLOW`).
#[inline(always)]
pub fn drop_icmp_no_flow(ctx: &XdpContext, key: &FlowKey, svc: u32) {
    record!(
        ctx,
        "dropped reason=icmp_no_flow client={} service={}",
        client(key),
        svc
    );
    let _ = (ctx, key, svc);
}

/// A fragment (`global::FRAGMENT`) or an IPv6 packet whose extension
/// headers the program does not walk (`guard::IPV6_EXT_UNPARSED`) to a VIP.
#[inline(always)]
pub fn drop_unbalanced(ctx: &XdpContext, fragment: bool) {
    if fragment {
        record!(ctx, "dropped reason=fragment");
    } else {
        record!(ctx, "dropped reason=ipv6_ext_unparsed");
    }
    let _ = ctx;
}

/// A frame `TX_PORTS` could not redirect (`global::ERROR`).
#[inline(always)]
pub fn drop_redirect_failed(ctx: &XdpContext, backend: u32, ifindex: u32) {
    record!(
        ctx,
        "dropped reason=redirect_failed backend={} ifindex={}",
        backend,
        ifindex
    );
    let _ = (ctx, backend, ifindex);
}
