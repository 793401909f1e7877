//! Map names, key/value layouts and constants of the XDP data plane.
//!
//! The ABI version below names the bpffs pin directory (`.../v1/`). Bump it
//! whenever a pinned map other than the flow table changes layout; the flow
//! table is migrated in place instead (`lb_common::flows`; earlier builds'
//! kernel LRU tables with [`FlowEntry`] or [`FlowEntryV0`] values too).

/// Version of the pinned-map layout; part of the pin directory name.
pub const MAP_ABI_VERSION: u32 = 1;

pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_SERVICE_STATE: &str = "SERVICE_STATE";
pub const MAP_SERVICE_BUCKETS: &str = "SERVICE_BUCKETS";
pub const MAP_TABLES: &str = "TABLES";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_TX_PORTS: &str = "TX_PORTS";
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_BACKEND_LAST_SEEN: &str = "BACKEND_LAST_SEEN";
pub const MAP_GLOBAL_STATS: &str = "GLOBAL_STATS";
pub const MAP_FLOW_STATS: &str = "FLOW_STATS";
pub const MAP_GUARD_STATS: &str = "GUARD_STATS";
// Their kinds, sizes and flags are one table on the user side
// (`lb-control`'s `node::dataplane::maps`), held to the built object by a test.

/// Name of the XDP entry point in the object file.
pub const PROGRAM_NAME: &str = "xdp_lb";

/// Global (`.rodata`) names set at load time.
pub const GLOBAL_HASH_SEED: &str = "HASH_SEED";
pub const GLOBAL_TABLE_STRIDE: &str = "TABLE_STRIDE";
pub const GLOBAL_UDP_IDLE_SECS: &str = "UDP_IDLE_SECS";
pub const GLOBAL_FLOW_SETS: &str = "FLOW_SETS";
pub const GLOBAL_SERVICE_BUCKETS: &str = "SERVICE_BUCKET_COUNT";

/// Compile-time defaults for map sizes; the loader overrides them from the
/// config (`[limits]`).
pub const DEFAULT_MAX_SERVICES: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
pub const DEFAULT_MAX_TABLE_SIZE: u32 = 65537;
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
pub const DEFAULT_UDP_IDLE_SECS: u32 = 30;
pub const MAX_TX_PORTS: u32 = 64;

/// Maglev table cells are `u16` backend indexes packed four to an 8-byte
/// array element (array values are stored 8-byte aligned; four lanes use all
/// of it).
pub const TABLE_LANES: u32 = 4;
/// A table cell that names no backend (empty pool).
pub const NO_BACKEND: u16 = u16::MAX;
/// Backend indexes are `u16`; `NO_BACKEND` is reserved.
pub const MAX_BACKEND_INDEX: u32 = NO_BACKEND as u32 - 1;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// `SERVICES` key: (VIP, port, protocol). IPv4 addresses use the first four
/// bytes of `addr`, the rest zero. Four-byte aligned so the program compares
/// it a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    /// Port, network order.
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// `SERVICES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index into `SERVICE_STATE`, `SERVICE_STATS` and the `TABLES` slots.
    pub index: u32,
    pub flags: u32,
}

/// `SERVICE_STATE` value (a `BPF_F_MMAPABLE` array indexed by service index).
///
/// The controller fills the inactive slot of `TABLES`, writes its size here,
/// then flips `active` with one aligned 4-byte store: a packet reads either
/// the old slot with its size or the new one with its size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Active slot, 0 or 1.
    pub active: u32,
    /// Table size of each slot (a prime, or 0 when the slot is unused).
    pub size: [u32; 2],
    /// Generation that produced the active slot (read back by the controller).
    pub generation: u32,
}

/// One `TABLES` element: four Maglev cells.
pub type TableCells = [u16; TABLE_LANES as usize];

/// Backend states, per (service, server).
pub const BACKEND_UNUSED: u32 = 0;
/// In the Maglev table; receives new flows.
pub const BACKEND_ACTIVE: u32 = 1;
/// Out of the table; existing flows are still forwarded to it.
pub const BACKEND_DRAINING: u32 = 2;
/// Out of service; existing flows are re-hashed.
pub const BACKEND_DOWN: u32 = 3;

/// The server runs on this node: deliver with `XDP_PASS`.
pub const BACKEND_FLAG_LOCAL: u32 = 1;

/// `BACKENDS` value (array indexed by backend index). A backend is one
/// (service, server) pair; the record also names both so the controller can
/// recover its index assignment from the pinned map after a restart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Server's MAC (destination of forwarded frames).
    pub dst_mac: [u8; 6],
    /// Egress port's own MAC (source of forwarded frames).
    pub src_mac: [u8; 6],
    /// Egress interface; equal to the ingress one means `XDP_TX`, otherwise
    /// `XDP_REDIRECT` through `TX_PORTS`.
    pub ifindex: u32,
    /// Bumped every time the index is given to a different (service,
    /// server); flow entries copy it so a reused index never inherits flows.
    pub incarnation: u32,
    pub state: u32,
    pub flags: u32,
    /// Service index this backend belongs to.
    pub service: u32,
    /// Server address (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    pub family: u32,
}

/// A flow's key: the 5-tuple as received (client → VIP). Eight-byte
/// aligned so the program compares it a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    #[expect(
        clippy::pub_underscore_fields,
        reason = "explicit padding of a #[repr(C)] value, public so literals can zero it"
    )]
    pub _pad: [u8; 2],
}

/// A flow entry as user space reports it (backend, incarnation, last-seen
/// time); also the value of the kernel LRU flow table of earlier builds,
/// which a node migrates from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub backend: u32,
    /// The backend's incarnation when the entry was written.
    pub incarnation: u32,
    /// Coarse seconds (`bpf_ktime_get_ns() >> 30`) the flow was last seen;
    /// written at most once per such second. Used for UDP idle expiry.
    pub last_seen: u32,
    pub flags: u32,
}

/// `FLOWS` value of layout 0 (the first release: no last-seen time). Kept so
/// a node upgraded from it migrates its flow table instead of dropping it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntryV0 {
    pub backend: u32,
    pub incarnation: u32,
}

impl From<FlowEntryV0> for FlowEntry {
    fn from(old: FlowEntryV0) -> Self {
        Self {
            backend: old.backend,
            incarnation: old.incarnation,
            last_seen: 0,
            flags: 0,
        }
    }
}

/// Coarse seconds as the program keeps them: `ktime_ns >> 30` (≈1.07 s).
#[inline(always)]
#[must_use]
pub const fn coarse_secs(ktime_ns: u64) -> u32 {
    (ktime_ns >> 30) as u32
}

/// Per-CPU counters per service and per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Indexes of `GLOBAL_STATS` (a per-CPU array of `u64`).
pub mod global {
    /// Frames handed to the kernel stack (not VIP traffic).
    pub const PASS: u32 = 0;
    /// Frames dropped (VIP fragments, VIP with no backend).
    pub const DROP: u32 = 1;
    /// Internal errors (map lookups that cannot fail, failed redirects).
    pub const ERROR: u32 = 2;
    /// VIP packets that found no usable flow entry (new flows and re-hashes).
    pub const FLOW_MISS: u32 = 3;
    /// VLAN-tagged frames (passed).
    pub const VLAN: u32 = 4;
    /// Truncated or malformed headers (passed to the stack, which drops them).
    pub const MALFORMED: u32 = 5;
    /// Fragments addressed to a VIP (dropped: no ports to hash).
    pub const FRAGMENT: u32 = 6;
    /// VIP packets sent with `XDP_TX`.
    pub const TX: u32 = 7;
    /// VIP packets sent with `XDP_REDIRECT`.
    pub const REDIRECT: u32 = 8;
    /// VIP packets for a local server (`XDP_PASS`).
    pub const LOCAL: u32 = 9;
    /// ICMP "fragmentation needed" / "packet too big" forwarded to a server.
    pub const ICMP_FORWARDED: u32 = 10;
    /// VIP packets whose service has no active backend (dropped).
    pub const NO_BACKEND: u32 = 11;
    /// UDP flows expired by idle time and re-hashed.
    pub const UDP_EXPIRED: u32 = 12;
    pub const COUNT: u32 = 13;

    /// Names for display, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "pass",
        "drop",
        "error",
        "flow_miss",
        "vlan",
        "malformed",
        "fragment",
        "tx",
        "redirect",
        "local",
        "icmp_forwarded",
        "no_backend",
        "udp_expired",
    ];
}

// `GLOBAL_STATS` is pinned with `global::COUNT` entries, and a pinned map
// of another size refuses the start (`lb-control`'s adoption plan): a
// counter added here would stop every node of an earlier release from
// upgrading in place. New counters go to `GUARD_STATS` (or a map of their
// own).
const _: () = assert!(global::COUNT == 13);

/// Indexes of `GUARD_STATS` (a per-CPU array of `u64`): what the program's
/// checks against forged or unparsed traffic decided. A map apart from
/// `GLOBAL_STATS`, with room to grow: it is pinned with [`guard::CAPACITY`]
/// entries whatever [`guard::COUNT`] is, so a counter added later takes a
/// spare index and never resizes a pinned map.
pub mod guard {
    /// Bare SYNs that met an entry seen with other traffic within
    /// [`SYN_KEEP_SECS`](crate::SYN_KEEP_SECS) whose backend is active: the
    /// flow kept its server (a retransmission, or a forged SYN).
    pub const SYN_KEPT_FLOW: u32 = 0;
    /// Bare SYNs that met their 4-tuple's entry and re-hashed past it (and
    /// wrote over it): idle past the window, or its backend gone, draining
    /// or down.
    pub const SYN_REPLACED_FLOW: u32 = 1;
    /// ICMP "fragmentation needed" / "packet too big" about a flow the flow
    /// table does not hold (or whose server is gone): dropped.
    pub const ICMP_NO_FLOW: u32 = 2;
    /// IPv6 packets to a VIP whose extension headers do not end within
    /// the program's bound
    /// ([`IPV6_MAX_EXT_HEADERS`](crate::IPV6_MAX_EXT_HEADERS)): dropped.
    pub const IPV6_EXT_UNPARSED: u32 = 3;
    /// Counters in use.
    pub const COUNT: u32 = 4;
    /// Entries of the map: fixed, so adding a counter does not change its
    /// pinned shape.
    pub const CAPACITY: u32 = 32;

    /// Names for display, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "syn_kept_flow",
        "syn_replaced_flow",
        "icmp_no_flow",
        "ipv6_ext_unparsed",
    ];

    const _: () = assert!(COUNT <= CAPACITY);
}

/// IPv6 extension headers (hop-by-hop, routing, destination options, an
/// atomic fragment header) the program walks before the TCP or UDP header
/// of a VIP packet; a packet to a VIP with more is dropped and counted
/// ([`guard::IPV6_EXT_UNPARSED`]).
pub const IPV6_MAX_EXT_HEADERS: u32 = 4;

impl ServiceKey {
    /// Builds a key from an address given as 4 or 16 bytes.
    #[must_use]
    pub fn new(addr: &[u8], port: u16, proto: u8) -> Self {
        let (bytes, family) = addr_bytes(addr);
        Self {
            addr: bytes,
            port: port.to_be_bytes(),
            proto,
            family,
        }
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// Whether two keys are equal, compared a word at a time.
    #[inline(always)]
    #[must_use]
    pub fn same(&self, other: &Self) -> bool {
        words_equal(self.words(), other.words())
    }

    /// The key as five words.
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> &[u32; 5] {
        // SAFETY: `ServiceKey` is 20 bytes, 4-byte aligned, without padding
        // (asserted below), so it is readable as five `u32`s.
        unsafe { &*core::ptr::from_ref::<Self>(self).cast::<[u32; 5]>() }
    }
}

impl FlowKey {
    /// Builds a key for a client → VIP flow from addresses given as 4 or 16
    /// bytes (both of one family).
    #[must_use]
    pub fn new(src: &[u8], sport: u16, dst: &[u8], dport: u16, proto: u8) -> Self {
        let (src, family) = addr_bytes(src);
        let (dst, _) = addr_bytes(dst);
        Self {
            src,
            dst,
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            proto,
            family,
            _pad: [0; 2],
        }
    }

    /// Whether two keys are equal, compared a word at a time.
    #[inline(always)]
    #[must_use]
    pub fn same(&self, other: &Self) -> bool {
        words_equal(self.words(), other.words())
    }

    /// The key as five words (for word-wise copies and comparisons).
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> &[u64; 5] {
        // SAFETY: `FlowKey` is 40 bytes, 8-byte aligned, without padding
        // (asserted below), so it is readable as five `u64`s.
        unsafe { &*core::ptr::from_ref::<Self>(self).cast::<[u64; 5]>() }
    }
}

/// Whether two keys' words are all equal: every word compared, one test at
/// the end (the derived `==` on byte arrays can become a `memcmp` call,
/// which the XDP program does not have).
#[inline(always)]
fn words_equal<T, const N: usize>(a: &[T; N], b: &[T; N]) -> bool
where
    T: Copy + Default + PartialEq + core::ops::BitXor<Output = T> + core::ops::BitOr<Output = T>,
{
    let mut diff = T::default();
    let mut i = 0;
    while i < N {
        diff = diff | (a[i] ^ b[i]);
        i += 1;
    }
    diff == T::default()
}

/// Widens a 4- or 16-byte address to the 16-byte map form and its family.
fn addr_bytes(addr: &[u8]) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    if addr.len() == 4 {
        out[..4].copy_from_slice(addr);
        (out, FAMILY_V4)
    } else {
        let n = if addr.len() < 16 { addr.len() } else { 16 };
        out[..n].copy_from_slice(&addr[..n]);
        (out, FAMILY_V6)
    }
}

/// Number of `TABLES` elements one slot of `max_table_size` cells takes.
#[must_use]
pub const fn table_stride(max_table_size: u32) -> u32 {
    max_table_size.div_ceil(TABLE_LANES)
}

/// Index of the first `TABLES` element of a service's slot.
#[must_use]
pub const fn slot_base(service: u32, slot: u32, stride: u32) -> u32 {
    (service * 2 + (slot & 1)) * stride
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], Copy, and has no padding (checked by
    // the size assertions below), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::ServiceState {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::FlowEntryV0 {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for crate::flows::FlowSet {}
    unsafe impl aya::Pod for crate::decap::DecapSource {}
    unsafe impl aya::Pod for crate::encap::TunnelConfig {}
    unsafe impl aya::Pod for crate::services::ServiceBucket {}
}

// No implicit padding anywhere: sizes are the sum of the fields.
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceState>() == 16);
const _: () = assert!(core::mem::size_of::<Backend>() == 52);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowEntry>() == 16);
const _: () = assert!(core::mem::size_of::<FlowEntryV0>() == 8);
const _: () = assert!(core::mem::size_of::<Counters>() == 24);
const _: () = assert!(core::mem::size_of::<TableCells>() == 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_widen_ipv4_and_keep_ipv6() {
        let k = ServiceKey::new(&[10, 0, 0, 1], 80, PROTO_TCP);
        assert_eq!(k.family, FAMILY_V4);
        assert_eq!(&k.addr[..4], &[10, 0, 0, 1]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        assert_eq!(k.port, [0, 80]);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let k = ServiceKey::new(&v6, 443, PROTO_UDP);
        assert_eq!(k.family, FAMILY_V6);
        assert_eq!(k.addr, v6);
        assert_eq!(k.port(), 443);
    }

    #[test]
    fn slots_do_not_overlap() {
        let stride = table_stride(65537);
        assert_eq!(stride, 16385);
        assert_eq!(slot_base(0, 1, stride), stride);
        assert_eq!(slot_base(1, 0, stride), 2 * stride);
        // The last cell of slot 1 of service 0 is below the first of service 1.
        assert!(slot_base(0, 1, stride) + (65536 / TABLE_LANES) < slot_base(1, 0, stride));
    }
}
