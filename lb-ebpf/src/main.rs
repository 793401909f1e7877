//! The XDP data plane: VIP lookup, flow table, weighted Maglev, L2 direct
//! server return.
//!
//! Everything that is not traffic for a configured service leaves with
//! `XDP_PASS`, untouched. Map layouts live in `lb-common`.
#![no_std]
#![no_main]

mod debug;
mod flows;
mod packet;
mod runtime;
mod tunnel;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, xdp_action},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::XdpContext,
};
use flows::{Lookup, Probe};
use lb_common::encap::{self, BACKEND_FLAG_GUE, BACKEND_FLAG_IPIP, TunnelConfig};
use lb_common::parse::{Parsed, parse_frame, ptr_at};
use lb_common::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_FLAG_LOCAL, Backend, Counters,
    DEFAULT_FLOW_TABLE_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, DEFAULT_MAX_TABLE_SIZE,
    DEFAULT_UDP_IDLE_SECS, FlowKey, MAX_TX_PORTS, NO_BACKEND, ServiceBucket, ServiceKey,
    ServiceState, ServiceValue, TABLE_LANES, TableCells, coarse_secs, flow_hash, flow_sets,
    flow_stats, global, guard, service_bucket_of, service_buckets, slot_base, syn_entry_seen,
    table_stride,
};
use packet::Packet;

// Load-time constants (set by the loader with `EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static HASH_SEED: u32 = 0;
#[unsafe(no_mangle)]
static TABLE_STRIDE: u32 = table_stride(DEFAULT_MAX_TABLE_SIZE);
#[unsafe(no_mangle)]
pub(crate) static UDP_IDLE_SECS: u32 = DEFAULT_UDP_IDLE_SECS;
/// Number of `SERVICE_BUCKETS` (a power of two).
#[unsafe(no_mangle)]
static SERVICE_BUCKET_COUNT: u32 = service_buckets(DEFAULT_MAX_SERVICES);
/// Number of flow-table sets (a power of two).
#[unsafe(no_mangle)]
pub(crate) static FLOW_SETS: u32 = flow_sets(DEFAULT_FLOW_TABLE_SIZE);

#[map]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// The fast service index (see `lb_common::services`); `SERVICES` holds
/// every service and is read only for buckets marked as overflowing.
#[map]
static SERVICE_BUCKETS: Array<ServiceBucket> =
    Array::with_max_entries(service_buckets(DEFAULT_MAX_SERVICES), BPF_F_MMAPABLE);
#[map]
static SERVICE_STATE: Array<ServiceState> =
    Array::with_max_entries(DEFAULT_MAX_SERVICES, BPF_F_MMAPABLE);
#[map]
static TABLES: Array<TableCells> = Array::with_max_entries(
    DEFAULT_MAX_SERVICES * 2 * table_stride(DEFAULT_MAX_TABLE_SIZE),
    BPF_F_MMAPABLE,
);
#[map]
static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
/// VIP addresses (port and protocol zero), for traffic that carries no ports.
#[map]
static VIPS: HashMap<ServiceKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);
#[map]
static SERVICE_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static BACKEND_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map]
static BACKEND_LAST_SEEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(global::COUNT, 0);
#[map]
pub(crate) static FLOW_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(flow_stats::COUNT, 0);
/// `lb_common::guard` counters (room for more than are in use).
#[map]
static GUARD_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(guard::CAPACITY, 0);
/// The tunnel sources and GUE port (`lb_common::encap`), one element.
#[map]
pub(crate) static TUNNEL: Array<TunnelConfig> = Array::with_max_entries(1, 0);
/// `lb_common::encap::stats` counters.
#[map]
pub(crate) static TUNNEL_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(encap::stats::CAPACITY, 0);

#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    match try_xdp_lb(&ctx) {
        Ok(action) => action,
        // An internal inconsistency: hand the frame to the stack rather than
        // lose host traffic, and count it.
        Err(()) => {
            count(global::ERROR);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
pub(crate) fn read_global(value: &u32) -> u32 {
    // SAFETY: a plain aligned read of a `.rodata` value the loader set.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
fn count(index: u32) {
    bump(&GLOBAL_STATS, index);
}

#[inline(always)]
fn count_guard(index: u32) {
    bump(&GUARD_STATS, index);
}

#[inline(always)]
pub(crate) fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn pass() -> Result<u32, ()> {
    count(global::PASS);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn drop_guarded(index: u32) -> Result<u32, ()> {
    count_guard(index);
    count(global::DROP);
    Ok(xdp_action::XDP_DROP)
}

#[inline(always)]
fn drop_counted(index: u32) -> Result<u32, ()> {
    count(index);
    count(global::DROP);
    Ok(xdp_action::XDP_DROP)
}

fn try_xdp_lb(ctx: &XdpContext) -> Result<u32, ()> {
    match parse_frame(&Packet(ctx)) {
        Parsed::Pass => pass(),
        Parsed::Vlan => {
            count(global::VLAN);
            pass()
        }
        Parsed::Malformed => {
            count(global::MALFORMED);
            pass()
        }
        Parsed::Fragment(vip) => {
            if VIPS.get_ptr(vip).is_some() {
                debug::drop_unbalanced(ctx, true);
                drop_counted(global::FRAGMENT)
            } else {
                pass()
            }
        }
        Parsed::Unparsed(vip) => {
            if VIPS.get_ptr(vip).is_some() {
                debug::drop_unbalanced(ctx, false);
                drop_guarded(guard::IPV6_EXT_UNPARSED)
            } else {
                pass()
            }
        }
        Parsed::Flow { key, syn, len } => {
            let Some(svc) = service_of(&key) else {
                return pass();
            };
            balance(ctx, svc, &key, syn, len)
        }
        Parsed::IcmpTooBig { key, len } => {
            let Some(svc) = service_of(&key) else {
                return pass();
            };
            follow_icmp(ctx, svc, &key, len)
        }
    }
}

/// Index of the service a client → VIP flow is for.
#[inline(always)]
fn service_of(key: &FlowKey) -> Option<u32> {
    let service = ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    let bucket = service_bucket_of(&service, read_global(&SERVICE_BUCKET_COUNT));
    let bucket = SERVICE_BUCKETS.get_ptr(bucket)?;
    // SAFETY: a live map value; user space publishes a way by writing its
    // key's family last (module docs of lb_common::services).
    unsafe {
        if let Some(index) = (*bucket).find(&service) {
            return Some(index);
        }
        if core::ptr::read_volatile(&(*bucket).overflow) == 0 {
            return None;
        }
        // SAFETY: values are plain data; the program never writes this map.
        SERVICES.get(service).map(|s| s.index)
    }
}

/// The coarse clock: second resolution is all the flow and backend
/// last-seen times need, and it is cheaper than the precise one.
#[inline(always)]
fn now_coarse() -> u32 {
    coarse_secs(
        // SAFETY: helper with no preconditions.
        unsafe { bpf_ktime_get_coarse_ns() },
    )
}

/// Sends an ICMP "fragmentation needed" / "packet too big" to the server of
/// the flow it quotes, if the flow table holds that flow on a usable
/// server; drops it otherwise. Anyone can forge one: it creates no state,
/// never re-hashes, and leaves the flow's and the server's last-seen times
/// alone (an ICMP error is no sign the connection is alive).
#[inline(always)]
fn follow_icmp(ctx: &XdpContext, svc: u32, key: &FlowKey, len: u32) -> Result<u32, ()> {
    let now = now_coarse();
    let hash = flow_hash(key, read_global(&HASH_SEED));
    let (found, _) = flows::lookup(key, hash, Probe::Icmp, now)?;
    if let Lookup::Hit {
        backend,
        incarnation,
    } = found
        && let Some(b) = BACKENDS.get(backend)
    {
        let state_ok = b.state == BACKEND_ACTIVE || b.state == BACKEND_DRAINING;
        if state_ok && b.incarnation == incarnation {
            count(global::ICMP_FORWARDED);
            debug::icmp_routed(ctx, key, svc, backend, b);
            return forward(ctx, svc, backend, b, len, hash, false, None);
        }
    }
    debug::drop_icmp_no_flow(ctx, key, svc);
    drop_guarded(guard::ICMP_NO_FLOW)
}

/// Picks the flow's backend (flow table first, Maglev otherwise) and forwards.
#[inline(always)]
fn balance(ctx: &XdpContext, svc: u32, key: &FlowKey, syn: bool, len: u32) -> Result<u32, ()> {
    let now = now_coarse();
    let hash = flow_hash(key, read_global(&HASH_SEED));
    // A bare SYN starts a connection: it takes the current table's choice
    // (never a draining server through a reused client port, never a
    // stale entry) unless its 4-tuple's flow is live on an active server,
    // which a forged SYN must not move.
    let probe = if syn { Probe::Syn } else { Probe::Packet };
    let (found, place) = flows::lookup(key, hash, probe, now)?;
    match found {
        Lookup::Hit {
            backend,
            incarnation,
        } => {
            if let Some(b) = BACKENDS.get(backend) {
                let state_ok = b.state == BACKEND_ACTIVE || (!syn && b.state == BACKEND_DRAINING);
                if state_ok && b.incarnation == incarnation {
                    if syn {
                        count_guard(guard::SYN_KEPT_FLOW);
                    }
                    return forward(ctx, svc, backend, b, len, hash, false, Some(now));
                }
            }
            if syn {
                count_guard(guard::SYN_REPLACED_FLOW);
            }
        }
        Lookup::Stale => count_guard(guard::SYN_REPLACED_FLOW),
        Lookup::Expired => count(global::UDP_EXPIRED),
        Lookup::Miss => {}
    }
    count(global::FLOW_MISS);

    let Some(index) = maglev_pick(svc, hash) else {
        debug::drop_no_backend(ctx, key, svc);
        return drop_counted(global::NO_BACKEND);
    };
    let Some(b) = BACKENDS.get(index) else {
        return Err(());
    };
    if b.state != BACKEND_ACTIVE {
        // Tables only ever name active backends; a state change races a
        // table flip only by the grace period the controller waits out.
        debug::drop_no_backend(ctx, key, svc);
        return drop_counted(global::NO_BACKEND);
    }
    // A SYN's entry waits for the flow's other packets to become one that
    // SYNs keep (lb_common::SYN_KEEP_SECS).
    let seen = if syn { syn_entry_seen(now) } else { now };
    flows::remember(place, key, hash, (index, b.incarnation), seen, now);
    debug::new_flow(ctx, key, svc, index, b);
    forward(ctx, svc, index, b, len, hash, true, Some(now))
}

/// Maglev lookup in the service's active table slot.
#[inline(always)]
fn maglev_pick(svc: u32, hash: u32) -> Option<u32> {
    let state = SERVICE_STATE.get_ptr(svc)?;
    // SAFETY: mmapable array value; `active` is flipped by one aligned store
    // after the slot and its size were written.
    let slot = unsafe { core::ptr::read_volatile(&(*state).active) } & 1;
    let size = unsafe { core::ptr::read_volatile(&(*state).size[slot as usize]) };
    if size == 0 {
        return None;
    }
    let pos = hash % size;
    let base = slot_base(svc, slot, read_global(&TABLE_STRIDE));
    let cells = TABLES.get(base + pos / TABLE_LANES)?;
    let index = cells[(pos % TABLE_LANES) as usize];
    if index == NO_BACKEND {
        return None;
    }
    Some(index as u32)
}

#[inline(always)]
fn add(counters: Option<*mut Counters>, len: u32, new_flow: bool) {
    if let Some(c) = counters {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
            if new_flow {
                (*c).new_flows += 1;
            }
        }
    }
}

/// Rewrites the Ethernet header for direct server return and sends the frame
/// on its way (`XDP_TX`, `XDP_REDIRECT`, or `XDP_PASS` for a local server),
/// or tunnels it to a server beyond the node's segments; the backend counts
/// as seen at `now` when that is given. `hash` is the flow's.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one inlined step of the verdict")]
fn forward(
    ctx: &XdpContext,
    svc: u32,
    index: u32,
    b: &Backend,
    len: u32,
    hash: u32,
    new_flow: bool,
    now: Option<u32>,
) -> Result<u32, ()> {
    add(SERVICE_STATS.get_ptr_mut(svc), len, new_flow);
    add(BACKEND_STATS.get_ptr_mut(index), len, new_flow);
    if let Some(now) = now
        && let Some(seen) = BACKEND_LAST_SEEN.get_ptr_mut(index)
    {
        // SAFETY: per-CPU value; written at most once per coarse second.
        unsafe {
            if *seen != now {
                *seen = now;
            }
        }
    }
    if b.flags & BACKEND_FLAG_LOCAL != 0 {
        count(global::LOCAL);
        return Ok(xdp_action::XDP_PASS);
    }
    if b.flags & (BACKEND_FLAG_IPIP | BACKEND_FLAG_GUE) != 0 {
        let action = tunnel::tunnel(ctx, b, hash)?;
        count(match action {
            xdp_action::XDP_TX => global::TX,
            xdp_action::XDP_REDIRECT => global::REDIRECT,
            xdp_action::XDP_DROP => global::DROP,
            _ => global::ERROR,
        });
        return Ok(action);
    }
    let eth = ptr_at::<[u8; 12]>(&Packet(ctx), 0).ok_or(())?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&b.dst_mac);
        macs[6..].copy_from_slice(&b.src_mac);
        *eth = macs;
    }
    if b.ifindex as usize == ctx.ingress_ifindex() {
        count(global::TX);
        return Ok(xdp_action::XDP_TX);
    }
    match TX_PORTS.redirect(b.ifindex, 0) {
        Ok(action) => {
            count(global::REDIRECT);
            Ok(action)
        }
        Err(_) => {
            debug::drop_redirect_failed(ctx, index, b.ifindex);
            drop_counted(global::ERROR)
        }
    }
}
