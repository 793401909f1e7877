//! A loaded, unattached XDP program with hand-filled maps, for
//! `BPF_PROG_TEST_RUN` in the program tests and `cargo xtask bench`.
//!
//! Three services: IPv4 TCP VIP:80 over backends 0, 1, 2; IPv4 UDP VIP:53 on
//! backend 3; IPv6 TCP VIP6:80 on backend 4. Tables have 13 cells cycling
//! over their backends, so a flow's backend is easy to predict.
#![expect(
    clippy::cast_possible_truncation,
    reason = "the test bed's frames, tables and indexes are a few dozen of each"
)]

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    BACKEND_ACTIVE, Backend, FlowEntry, FlowKey, FlowSet, NO_BACKEND, PROTO_TCP, PROTO_UDP,
    ServiceBucket, ServiceKey, ServiceState, ServiceValue, TableCells, flow_sets, service_buckets,
    slot_base, table_stride,
};

use super::{FlowSets, mmap::MmapArray};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const SEED: u32 = 0x1234_5678;
pub const MAX_SERVICES: u32 = 4;
/// `SERVICES` entries the test bed allows (more keys than `MAX_SERVICES`
/// may name the same service index).
pub const MAX_SERVICE_KEYS: u32 = 64;
pub const MAX_TABLE: u32 = 13;
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const LO_IFINDEX: u32 = 1;

/// A loaded (not attached) program with one IPv4 TCP, one IPv4 UDP and one
/// IPv6 TCP service.
pub struct TestBed {
    pub ebpf: Ebpf,
}

#[must_use]
pub fn server_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x10, i]
}

impl TestBed {
    #[must_use]
    pub fn new(bytes: &[u8]) -> Self {
        Self::with_flow_capacity(bytes, 1024)
    }

    /// A test bed whose flow table holds `flows` entries (rounded up to a
    /// power-of-two number of sets).
    #[must_use]
    pub fn with_flow_capacity(bytes: &[u8], flows: u32) -> Self {
        let stride = table_stride(MAX_TABLE);
        let mut ebpf = EbpfLoader::new()
            .override_global("HASH_SEED", &SEED, true)
            .override_global("TABLE_STRIDE", &stride, true)
            .override_global("SERVICE_BUCKET_COUNT", &service_buckets(MAX_SERVICES), true)
            .map_max_entries("SERVICE_BUCKETS", service_buckets(MAX_SERVICES))
            // Room for more keys than buckets hold, to exercise overflow.
            .map_max_entries("SERVICES", MAX_SERVICE_KEYS)
            .map_max_entries("SERVICE_STATE", MAX_SERVICES)
            .map_max_entries("TABLES", MAX_SERVICES * 2 * stride)
            .map_max_entries("BACKENDS", 16)
            .override_global("FLOW_SETS", &flow_sets(flows), true)
            .map_max_entries("FLOWS", flow_sets(flows))
            .map_max_entries("VIPS", MAX_SERVICES)
            .map_max_entries("SERVICE_STATS", MAX_SERVICES)
            .map_max_entries("BACKEND_STATS", 16)
            .map_max_entries("BACKEND_LAST_SEEN", 16)
            .load(bytes)
            .expect("load object");
        let program: &mut Xdp = ebpf
            .program_mut("xdp_lb")
            .expect("xdp_lb")
            .try_into()
            .expect("xdp");
        program.load().expect("verifier accepts xdp_lb");
        let mut h = Self { ebpf };
        h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[0, 1, 2]);
        h.add_service(1, ServiceKey::new(&VIP.octets(), 53, PROTO_UDP), &[3]);
        h.add_service(2, ServiceKey::new(&VIP6.octets(), 80, PROTO_TCP), &[4]);
        for (i, svc) in [(0u32, 0u32), (1, 0), (2, 0), (3, 1), (4, 2)] {
            h.set_backend(i, svc, BACKEND_ACTIVE, 0);
        }
        let mut vips: HashMap<_, ServiceKey, u32> =
            HashMap::try_from(h.ebpf.map_mut("VIPS").expect("VIPS")).expect("VIPS");
        for addr in [&VIP.octets()[..], &VIP6.octets()[..]] {
            let mut k = ServiceKey::new(addr, 0, 0);
            k.port = [0, 0];
            vips.insert(k, 1, 0).expect("vip");
        }
        h
    }

    /// A service whose table (size 13, slot 1) cycles over `backends`.
    pub fn add_service(&mut self, index: u32, key: ServiceKey, backends: &[u32]) {
        let stride = table_stride(MAX_TABLE);
        let mut tables: Array<_, TableCells> =
            Array::try_from(self.ebpf.map_mut("TABLES").expect("TABLES")).expect("TABLES");
        let base = slot_base(index, 1, stride);
        for e in 0..stride {
            let mut cells = [NO_BACKEND; 4];
            for (lane, cell) in cells.iter_mut().enumerate() {
                let pos = e * 4 + lane as u32;
                if pos < MAX_TABLE {
                    *cell = backends[pos as usize % backends.len()] as u16;
                }
            }
            tables.set(base + e, cells, 0).expect("table");
        }
        let mut states: Array<_, ServiceState> =
            Array::try_from(self.ebpf.map_mut("SERVICE_STATE").expect("STATE")).expect("STATE");
        states
            .set(
                index,
                ServiceState {
                    active: 1,
                    size: [0, MAX_TABLE],
                    generation: 1,
                },
                0,
            )
            .expect("state");
        self.add_service_key(key, index);
    }

    /// A key for service `index` (its table must exist).
    pub fn add_service_key(&mut self, key: ServiceKey, index: u32) {
        self.services()
            .insert(key, ServiceValue { index, flags: 0 }, 0)
            .expect("service key");
        self.publish_services();
    }

    pub fn remove_service_key(&mut self, key: &ServiceKey) {
        self.services().remove(key).expect("remove service key");
        self.publish_services();
    }

    fn services(&mut self) -> HashMap<&mut aya::maps::MapData, ServiceKey, ServiceValue> {
        HashMap::try_from(self.ebpf.map_mut("SERVICES").expect("SERVICES")).expect("SERVICES")
    }

    /// `SERVICE_BUCKETS` through its mapping.
    #[must_use]
    pub fn service_buckets(&self) -> MmapArray<ServiceBucket> {
        let map = self.ebpf.map("SERVICE_BUCKETS").expect("SERVICE_BUCKETS");
        let aya::maps::Map::Array(data) = map else {
            panic!("SERVICE_BUCKETS is not an array: {map:?}");
        };
        MmapArray::new(
            "SERVICE_BUCKETS",
            data.fd().as_fd(),
            service_buckets(MAX_SERVICES),
        )
        .expect("map SERVICE_BUCKETS")
    }

    /// Makes `SERVICE_BUCKETS` follow `SERVICES`, as the controller does.
    fn publish_services(&mut self) {
        let services: HashMap<_, ServiceKey, ServiceValue> =
            HashMap::try_from(self.ebpf.map("SERVICES").expect("SERVICES")).expect("SERVICES");
        let entries: Vec<(ServiceKey, u32)> = services
            .iter()
            .map(|e| e.map(|(k, v)| (k, v.index)).expect("SERVICES entry"))
            .collect();
        super::services::publish(&mut self.service_buckets(), &entries);
    }

    pub fn set_backend(&mut self, index: u32, service: u32, state: u32, flags: u32) {
        let mut backends: Array<_, Backend> =
            Array::try_from(self.ebpf.map_mut("BACKENDS").expect("BACKENDS")).expect("BACKENDS");
        let mut record = backends.get(&index, 0).expect("backend");
        record.dst_mac = server_mac(index as u8);
        record.src_mac = NODE_MAC;
        record.ifindex = LO_IFINDEX;
        record.state = state;
        record.flags = flags;
        record.service = service;
        if record.incarnation == 0 {
            record.incarnation = 100 + index;
        }
        backends.set(index, record, 0).expect("backend");
    }

    /// Makes backend `index` a server beyond the segments at `addr`,
    /// reached through a tunnel (`lb_common::encap`'s flags).
    pub fn set_backend_tunnel(&mut self, index: u32, addr: std::net::IpAddr, flags: u32) {
        let mut backends: Array<_, Backend> =
            Array::try_from(self.ebpf.map_mut("BACKENDS").expect("BACKENDS")).expect("BACKENDS");
        let mut record = backends.get(&index, 0).expect("backend");
        record.flags = flags;
        record.addr = [0; 16];
        match addr {
            std::net::IpAddr::V4(a) => {
                record.addr[..4].copy_from_slice(&a.octets());
                record.family = u32::from(lb_common::FAMILY_V4);
            }
            std::net::IpAddr::V6(a) => {
                record.addr = a.octets();
                record.family = u32::from(lb_common::FAMILY_V6);
            }
        }
        backends.set(index, record, 0).expect("backend");
    }

    /// Sets the tunnel sources and GUE port.
    pub fn set_tunnel(&mut self, config: lb_common::encap::TunnelConfig) {
        let mut tunnel: Array<_, lb_common::encap::TunnelConfig> =
            Array::try_from(self.ebpf.map_mut("TUNNEL").expect("TUNNEL")).expect("TUNNEL");
        tunnel.set(0, config, 0).expect("tunnel");
    }

    /// A `TUNNEL_STATS` counter (`lb_common::encap::stats`) summed over CPUs.
    #[must_use]
    pub fn tunnel_counter(&self, index: u32) -> u64 {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("TUNNEL_STATS").expect("TUNNEL_STATS"))
                .expect("TUNNEL_STATS");
        stats.get(&index, 0).expect("counter").iter().sum()
    }

    pub fn bump_incarnation(&mut self, index: u32) {
        let mut backends: Array<_, Backend> =
            Array::try_from(self.ebpf.map_mut("BACKENDS").expect("BACKENDS")).expect("BACKENDS");
        let mut record = backends.get(&index, 0).expect("backend");
        record.incarnation += 1000;
        backends.set(index, record, 0).expect("backend");
    }

    /// Runs one frame; returns the action and the frame as it left.
    #[expect(
        clippy::must_use_candidate,
        reason = "tests run frames for their side effects on the maps too"
    )]
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_on(frame, LO_IFINDEX)
    }

    /// [`TestBed::run`] with the frame arriving on interface `ingress`.
    #[expect(
        clippy::must_use_candidate,
        reason = "tests run frames for their side effects on the maps too"
    )]
    pub fn run_on(&self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        let program: &Xdp = self
            .ebpf
            .program("xdp_lb")
            .expect("xdp_lb")
            .try_into()
            .expect("xdp");
        let mut out = vec![0u8; frame.len() + 256];
        // xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("test run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    #[must_use]
    pub fn counter(&self, index: u32) -> u64 {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("GLOBAL_STATS").expect("GLOBAL")).expect("GLOBAL");
        stats.get(&index, 0).expect("counter").iter().sum()
    }

    /// A `FLOW_STATS` counter summed over CPUs.
    #[must_use]
    pub fn flow_counter(&self, index: u32) -> u64 {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("FLOW_STATS").expect("FLOW_STATS"))
                .expect("FLOW_STATS");
        stats.get(&index, 0).expect("counter").iter().sum()
    }

    /// A `GUARD_STATS` counter (`lb_common::guard`) summed over CPUs.
    #[must_use]
    pub fn guard_counter(&self, index: u32) -> u64 {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("GUARD_STATS").expect("GUARD_STATS"))
                .expect("GUARD_STATS");
        stats.get(&index, 0).expect("counter").iter().sum()
    }

    #[must_use]
    pub fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.flow_sets().get(key)
    }

    /// The flow table through its mapping.
    #[must_use]
    pub fn flow_sets(&self) -> FlowSets {
        self.flow_sets_seeded(SEED)
    }

    /// The flow table as a controller configured with `seed` sees it.
    #[must_use]
    pub fn flow_sets_seeded(&self, seed: u32) -> FlowSets {
        let (fd, sets) = self.flows_map();
        FlowSets::new(fd, sets, seed).expect("map FLOWS")
    }

    /// The flow table's raw sets, to write what the program never would.
    #[must_use]
    pub fn flow_array(&self) -> MmapArray<FlowSet> {
        let (fd, sets) = self.flows_map();
        MmapArray::new("FLOWS", fd, sets).expect("map FLOWS")
    }

    fn flows_map(&self) -> (std::os::fd::BorrowedFd<'_>, u32) {
        let map = self.ebpf.map("FLOWS").expect("FLOWS");
        let aya::maps::Map::Array(data) = map else {
            panic!("FLOWS is not an array: {map:?}");
        };
        let sets = data.info().expect("FLOWS info").max_entries();
        (data.fd().as_fd(), sets)
    }

    /// Coarse second a backend last forwarded a packet (max over CPUs).
    #[must_use]
    pub fn backend_last_seen(&self, index: u32) -> u32 {
        let seen: PerCpuArray<_, u32> =
            PerCpuArray::try_from(self.ebpf.map("BACKEND_LAST_SEEN").expect("LAST_SEEN"))
                .expect("LAST_SEEN");
        let values = seen.get(&index, 0).expect("last seen");
        values.iter().copied().max().unwrap_or(0)
    }

    /// Sets a backend's last-seen second on every CPU.
    pub fn set_backend_last_seen(&mut self, index: u32, second: u32) {
        let mut seen: PerCpuArray<_, u32> =
            PerCpuArray::try_from(self.ebpf.map_mut("BACKEND_LAST_SEEN").expect("LAST_SEEN"))
                .expect("LAST_SEEN");
        let cpus = aya::util::nr_cpus().expect("number of CPUs");
        let values = aya::maps::PerCpuValues::try_from(vec![second; cpus]).expect("per CPU");
        seen.set(index, values, 0).expect("last seen");
    }

    #[must_use]
    pub fn backend_counters(&self, index: u32) -> (u64, u64, u64) {
        let stats: PerCpuArray<_, lb_common::Counters> =
            PerCpuArray::try_from(self.ebpf.map("BACKEND_STATS").expect("STATS")).expect("STATS");
        stats
            .get(&index, 0)
            .expect("stats")
            .iter()
            .fold((0, 0, 0), |a, c| {
                (a.0 + c.packets, a.1 + c.bytes, a.2 + c.new_flows)
            })
    }
}

impl TestBed {
    /// Empties the flow table.
    pub fn clear_flows(&mut self) {
        self.flow_sets().clear();
    }

    /// Runs `frame` `repeat` times in the kernel; returns the average time
    /// per run as the kernel measured it.
    #[must_use]
    pub fn time(&self, frame: &[u8], repeat: u32) -> std::time::Duration {
        let program: &Xdp = self
            .ebpf
            .program("xdp_lb")
            .expect("xdp_lb")
            .try_into()
            .expect("xdp");
        run_timed(program, frame, repeat)
    }
}

/// Average kernel time of `repeat` runs of any XDP program on `frame`.
#[must_use]
pub fn run_timed(program: &Xdp, frame: &[u8], repeat: u32) -> std::time::Duration {
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .expect("test run");
    result.duration
}

/// Whether `BPF_PROG_TEST_RUN` can run here: as root. Otherwise the test
/// is skipped, said on stderr, or fails under `CI=true` (CI never skips).
#[must_use]
pub fn may_test_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "BPF_PROG_TEST_RUN needs root and CI=true: refusing to skip"
    );
    eprintln!("SKIPPED: needs root");
    false
}

/// Frame builders.
pub mod frames {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use lb_common::PROTO_TCP;

    use super::{CLIENT, CLIENT_MAC, NODE_MAC, VIP};

    #[must_use]
    pub fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&NODE_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    #[must_use]
    pub fn ipv4(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        options: &[u8],
        frag: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = eth(0x0800);
        let ihl = 5 + options.len() / 4;
        let total = (ihl * 4 + payload.len()) as u16;
        f.push(0x40 | ihl as u8);
        f.push(0);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.push(64);
        f.push(proto);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(options);
        f.extend_from_slice(payload);
        f
    }

    #[must_use]
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = eth(0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.push(next);
        f.push(64);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(payload);
        f
    }

    #[must_use]
    pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(b"hello");
        t
    }

    #[must_use]
    pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&[0, 12, 0, 0]);
        u.extend_from_slice(b"ping");
        u
    }

    /// An ICMP "fragmentation needed" from a router, quoting the reply of
    /// `client_port`'s flow to the TCP VIP.
    #[must_use]
    pub fn icmp4_too_big(client_port: u16) -> Vec<u8> {
        let router = Ipv4Addr::new(10, 0, 0, 254);
        let quoted = ipv4(VIP, CLIENT, PROTO_TCP, &[], 0, &tcp(80, client_port, ACK));
        let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
        icmp.extend_from_slice(&quoted[14..14 + 28]);
        ipv4(router, VIP, 1, &[], 0, &icmp)
    }

    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;
}
