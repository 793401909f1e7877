//! The decapsulation program run on hand-built frames
//! (`BPF_PROG_TEST_RUN`): what leaves is the Ethernet header and the inner
//! packet exactly; a source not allowed is dropped and counted. Needs root
//! (fails under `CI=true` without it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::decap::{
    DECAP_PROGRAM, DecapSource, GLOBAL_GUE_PORT, MAP_DECAP_SOURCES, MAP_DECAP_STATS,
    MAP_DECAP_VIPS, PROTO_IPIP, PROTO_IPV6_IN_IP, stats,
};

use super::{DECAP_OBJECT, source_key};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const GUE_PORT: u16 = 6080;
const NODE4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
const STRANGER4: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 9);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 100, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the decapsulation tests load BPF: run them as root"
    );
    eprintln!("SKIPPED: the decapsulation tests load BPF and need root");
    false
}

fn load() -> Ebpf {
    let mut ebpf = EbpfLoader::new()
        .override_global(GLOBAL_GUE_PORT, &GUE_PORT, true)
        .load(DECAP_OBJECT)
        .expect("load");
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM)
        .expect("program")
        .try_into()
        .expect("xdp");
    program.load().expect("verifier");
    for (map, addrs) in [
        (MAP_DECAP_SOURCES, [IpAddr::V4(NODE4), IpAddr::V6(NODE6)]),
        (MAP_DECAP_VIPS, [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]),
    ] {
        let mut m: HashMap<_, DecapSource, u32> =
            HashMap::try_from(ebpf.map_mut(map).expect("map")).expect("hash");
        for addr in addrs {
            m.insert(source_key(addr), 1, 0).expect("insert");
        }
    }
    ebpf
}

fn run(ebpf: &Ebpf, frame: &[u8]) -> (u32, Vec<u8>) {
    let program: &Xdp = ebpf
        .program(DECAP_PROGRAM)
        .expect("program")
        .try_into()
        .expect("xdp");
    let mut out = vec![0u8; frame.len() + 64];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("test run");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn counter(ebpf: &Ebpf, index: u32) -> u64 {
    let stats: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(MAP_DECAP_STATS).expect("map")).expect("percpu");
    stats.get(&index, 0).expect("counter").iter().sum()
}

const MACS: [u8; 12] = [2, 0, 0, 0, 0, 0x11, 2, 0, 0, 0, 0, 0x01];

fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MACS.to_vec();
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header (no options, DF) from `src` to 10.0.2.11 around `payload`.
fn ipv4(src: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).expect("small");
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&[10, 0, 2, 11]);
    p.extend_from_slice(payload);
    p
}

fn ipv6(src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(payload.len()).expect("small").to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0x11).octets());
    p.extend_from_slice(payload);
    p
}

/// A client's SYN to the VIP, as the node tunnels it (inner packet).
fn inner4() -> Vec<u8> {
    let tcp = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x02, 0x10, 0, 0x12, 0x34, 0, 0,
    ];
    let mut p = ipv4(Ipv4Addr::new(10, 0, 0, 2), 6, &tcp);
    // The inner destination is the VIP.
    p[16..20].copy_from_slice(&VIP4.octets());
    p
}

fn inner6() -> Vec<u8> {
    let tcp = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 9, 0, 0, 0, 0, 0x50, 0x02, 0x10, 0, 0x56, 0x78, 0, 0,
    ];
    let mut p = ipv6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2), 6, &tcp);
    p[24..40].copy_from_slice(&VIP6.octets());
    p
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut u = 0xc123u16.to_be_bytes().to_vec();
    u.extend_from_slice(&GUE_PORT.to_be_bytes());
    u.extend_from_slice(
        &u16::try_from(8 + payload.len())
            .expect("small")
            .to_be_bytes(),
    );
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

#[test]
fn tunnelled_packets_leave_as_the_inner_packet() {
    if !root() {
        return;
    }
    let ebpf = load();
    // IPIP: IPv4 in IPv4.
    let frame = ethernet(0x0800, &ipv4(NODE4, PROTO_IPIP, &inner4()));
    assert_eq!(run(&ebpf, &frame), (XDP_PASS, ethernet(0x0800, &inner4())));
    // IPv6 in IPv6.
    let frame = ethernet(0x86dd, &ipv6(NODE6, PROTO_IPV6_IN_IP, &inner6()));
    assert_eq!(run(&ebpf, &frame), (XDP_PASS, ethernet(0x86dd, &inner6())));
    assert_eq!(counter(&ebpf, stats::IPIP), 2);
    // GUE version 0 (IPv6 inside, over IPv4) and version 1 (IPv4 inside).
    let mut gue = vec![0, PROTO_IPV6_IN_IP, 0, 0];
    gue.extend(inner6());
    let frame = ethernet(0x0800, &ipv4(NODE4, 17, &udp(&gue)));
    assert_eq!(run(&ebpf, &frame), (XDP_PASS, ethernet(0x86dd, &inner6())));
    let frame = ethernet(0x86dd, &ipv6(NODE6, 17, &udp(&inner4())));
    assert_eq!(run(&ebpf, &frame), (XDP_PASS, ethernet(0x0800, &inner4())));
    assert_eq!(counter(&ebpf, stats::GUE), 2);
}

#[test]
fn only_allowed_sources_are_decapsulated() {
    if !root() {
        return;
    }
    let ebpf = load();
    // A tunnel packet from a host that is no node: dropped, whatever is
    // inside.
    let forged = ethernet(0x0800, &ipv4(STRANGER4, PROTO_IPIP, &inner4()));
    assert_eq!(run(&ebpf, &forged).0, XDP_DROP);
    let mut gue = vec![0, PROTO_IPIP, 0, 0];
    gue.extend(inner4());
    let forged = ethernet(0x0800, &ipv4(STRANGER4, 17, &udp(&gue)));
    assert_eq!(run(&ebpf, &forged).0, XDP_DROP);
    assert_eq!(counter(&ebpf, stats::REFUSED), 2);
    // A broken tunnel header from a node: dropped too.
    let broken = ethernet(0x0800, &ipv4(NODE4, PROTO_IPIP, &[0x11; 24]));
    assert_eq!(run(&ebpf, &broken).0, XDP_DROP);
    assert_eq!(counter(&ebpf, stats::MALFORMED), 1);
    // From a node, but for an address that is no VIP here (this server's
    // own, another host's): dropped, never relayed.
    let mut elsewhere = inner4();
    elsewhere[16..20].copy_from_slice(&[192, 0, 2, 1]);
    let relay = ethernet(0x0800, &ipv4(NODE4, PROTO_IPIP, &elsewhere));
    assert_eq!(run(&ebpf, &relay).0, XDP_DROP);
    assert_eq!(counter(&ebpf, stats::NOT_A_VIP), 1);
    // Plain traffic passes untouched.
    let plain = ethernet(0x0800, &inner4());
    assert_eq!(run(&ebpf, &plain), (XDP_PASS, plain.clone()));
    assert_eq!(counter(&ebpf, stats::PASSED), 1);
    assert_eq!(counter(&ebpf, stats::IPIP), 0);
}

#[test]
fn only_interface_names_name_a_pin_directory() {
    let root = std::path::Path::new("/sys/fs/bpf/xdplb-decap");
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "../../etc",
        "eth0\0",
        "sixteen-letters!",
        "a b",
    ] {
        assert!(
            matches!(
                super::pin_dir(root, bad),
                Err(super::DecapError::BadInterface(_))
            ),
            "{bad:?}"
        );
    }
    let dir = super::pin_dir(root, "eth0").expect("a name");
    assert!(
        dir.starts_with(root) && dir.ends_with("eth0"),
        "{}",
        dir.display()
    );
}
