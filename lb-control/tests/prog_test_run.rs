//! The XDP program under `BPF_PROG_TEST_RUN`: frames built here, expected
//! action, exact rewritten bytes and map side effects.
#![expect(
    clippy::cast_possible_truncation,
    reason = "test frames, ports and indexes are small"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::Array;
use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_FLAG_LOCAL, FAMILY_V4, FAMILY_V6,
    FlowKey, PROTO_TCP, PROTO_UDP, SYN_KEEP_SECS, ServiceKey, ServiceState, flow_hash, global,
    guard,
};
use lb_control::node::dataplane::testbed::{
    CLIENT, CLIENT6, MAX_TABLE, NODE_MAC, SEED, TestBed, VIP, VIP6, XDP_DROP, XDP_PASS, XDP_TX,
    frames::{ACK, SYN, eth, icmp4_too_big, ipv4, ipv6, tcp, udp},
    may_test_run, server_mac,
};

fn harness() -> Option<TestBed> {
    if !may_test_run() {
        return None;
    }
    Some(TestBed::new(lb_control::node::dataplane::EMBEDDED_PROGRAM))
}

/// The backend the test table gives a flow (cells cycle over `backends`).
fn expected_backend(key: &FlowKey, backends: &[u32]) -> u32 {
    let pos = flow_hash(key, SEED) % MAX_TABLE;
    backends[pos as usize % backends.len()]
}

fn v4_key(sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(&CLIENT.octets(), sport, &VIP.octets(), dport, proto)
}

#[test]
fn new_tcp_flow_rewrites_macs_and_records_flow() {
    let Some(h) = harness() else { return };
    for sport in 40000..40040u16 {
        let frame = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(sport, 80, SYN));
        let (action, out) = h.run(&frame);
        assert_eq!(action, XDP_TX);
        let key = v4_key(sport, 80, PROTO_TCP);
        let backend = expected_backend(&key, &[0, 1, 2]);
        let mut want = frame.clone();
        want[..6].copy_from_slice(&server_mac(backend as u8));
        want[6..12].copy_from_slice(&NODE_MAC);
        assert_eq!(out, want, "only the MACs change (sport {sport})");
        let entry = h.flow(&key).expect("flow entry written");
        assert_eq!(entry.backend, backend);
        assert_eq!(entry.incarnation, 100 + backend);
    }
    assert_eq!(h.counter(global::FLOW_MISS), 40);
    assert_eq!(h.counter(global::TX), 40);
    let total: u64 = (0..3).map(|b| h.backend_counters(b).2).sum();
    assert_eq!(total, 40, "new flows counted per backend");
}

#[test]
fn established_flow_sticks_draining_keeps_down_rehashes() {
    let Some(mut h) = harness() else { return };
    let sport = 41000;
    let key = v4_key(sport, 80, PROTO_TCP);
    let first = expected_backend(&key, &[0, 1, 2]);
    let syn = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(sport, 80, SYN));
    let ack = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(sport, 80, ACK));
    assert_eq!(h.run(&syn).0, XDP_TX);

    // Point the table elsewhere: the flow entry keeps the flow on `first`.
    let other = (first + 1) % 3;
    h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[other]);
    let (_, out) = h.run(&ack);
    assert_eq!(out[..6], server_mac(first as u8));

    // Draining: established packets still go to it, a new SYN does not.
    h.set_backend(first, 0, BACKEND_DRAINING, 0);
    assert_eq!(h.run(&ack).1[..6], server_mac(first as u8));
    assert_eq!(
        h.run(&syn).1[..6],
        server_mac(other as u8),
        "SYN re-hashed away from draining"
    );
    assert_eq!(
        h.flow(&key).expect("entry").backend,
        other,
        "re-hash overwrites the entry"
    );

    // Down: established flows are re-hashed.
    let key2 = v4_key(41001, 80, PROTO_TCP);
    h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[first]);
    h.set_backend(first, 0, BACKEND_ACTIVE, 0);
    let syn2 = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(41001, 80, SYN));
    assert_eq!(h.run(&syn2).1[..6], server_mac(first as u8));
    h.set_backend(first, 0, BACKEND_DOWN, 0);
    h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[other]);
    let ack2 = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(41001, 80, ACK));
    assert_eq!(h.run(&ack2).1[..6], server_mac(other as u8));
    assert_eq!(h.flow(&key2).expect("entry").backend, other);
}

#[test]
fn reused_index_never_inherits_flows() {
    let Some(mut h) = harness() else { return };
    let key = v4_key(42000, 80, PROTO_TCP);
    let first = expected_backend(&key, &[0, 1, 2]);
    let syn = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(42000, 80, SYN));
    let ack = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(42000, 80, ACK));
    h.run(&syn);
    // The index goes to another server (new incarnation) and the table no
    // longer names it for this flow: the flow is re-hashed, not inherited.
    h.bump_incarnation(first);
    let other = (first + 1) % 3;
    h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[other]);
    assert_eq!(h.run(&ack).1[..6], server_mac(other as u8));
    let entry = h.flow(&key).expect("entry");
    assert_eq!((entry.backend, entry.incarnation), (other, 100 + other));
}

#[test]
fn udp_ipv6_and_local_delivery() {
    let Some(mut h) = harness() else { return };
    let frame = ipv4(CLIENT, VIP, PROTO_UDP, &[], 0, &udp(5000, 53));
    let (action, out) = h.run(&frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(out[..6], server_mac(3));
    let entry = h.flow(&v4_key(5000, 53, PROTO_UDP)).expect("udp flow");
    assert!(entry.last_seen > 0, "UDP entries carry a last-seen time");

    let frame6 = ipv6(CLIENT6, VIP6, PROTO_TCP, &tcp(6000, 80, SYN));
    let (action, out) = h.run(&frame6);
    assert_eq!(action, XDP_TX);
    let mut want = frame6.clone();
    want[..6].copy_from_slice(&server_mac(4));
    want[6..12].copy_from_slice(&NODE_MAC);
    assert_eq!(out, want);
    let key6 = FlowKey::new(&CLIENT6.octets(), 6000, &VIP6.octets(), 80, PROTO_TCP);
    assert_eq!(key6.family, FAMILY_V6);
    assert!(h.flow(&key6).is_some());

    h.set_backend(4, 2, BACKEND_ACTIVE, BACKEND_FLAG_LOCAL);
    let frame6b = ipv6(CLIENT6, VIP6, PROTO_TCP, &tcp(6001, 80, SYN));
    let (action, out) = h.run(&frame6b);
    assert_eq!(action, XDP_PASS, "local server: delivered to this host");
    assert_eq!(out, frame6b, "untouched");
    assert_eq!(h.counter(global::LOCAL), 1);
}

#[test]
fn non_vip_traffic_passes_untouched() {
    let Some(h) = harness() else { return };
    let other = Ipv4Addr::new(10, 0, 0, 1);
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    let mut vlan = eth(0x8100);
    vlan.extend_from_slice(&[0, 5, 0x08, 0x00]);
    vlan.extend_from_slice(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(1, 80, SYN))[14..]);
    let mut unknown = eth(0x88b5);
    unknown.extend_from_slice(&[0u8; 46]);
    let icmp_echo = ipv4(CLIENT, VIP, 1, &[], 0, &[8, 0, 0, 0, 0, 1, 0, 1]);
    let frames = [
        ("arp", arp),
        (
            "host tcp",
            ipv4(CLIENT, other, PROTO_TCP, &[], 0, &tcp(1000, 22, SYN)),
        ),
        (
            "other port on vip",
            ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(1000, 22, SYN)),
        ),
        (
            "udp to host",
            ipv4(CLIENT, other, PROTO_UDP, &[], 0, &udp(1, 53)),
        ),
        ("icmp echo to vip", icmp_echo),
        ("vlan", vlan),
        ("unknown ethertype", unknown),
        (
            "ipv6 host",
            ipv6(CLIENT6, Ipv6Addr::LOCALHOST, PROTO_TCP, &tcp(1, 80, SYN)),
        ),
        (
            "fragment to host",
            ipv4(CLIENT, other, PROTO_UDP, &[], 0x2000, &udp(1, 53)),
        ),
    ];
    for (what, frame) in &frames {
        let (action, out) = h.run(frame);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(&out, frame, "{what} must leave untouched");
    }
    assert_eq!(h.counter(global::VLAN), 1);
    assert_eq!(h.counter(global::PASS), frames.len() as u64);
    assert_eq!(h.counter(global::TX), 0);
}

#[test]
fn truncated_and_odd_frames_never_forward() {
    let Some(h) = harness() else { return };
    let full = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(43000, 80, SYN));
    // Every truncation of a VIP frame: never XDP_TX with a partial header.
    for len in 14..34 + 14 {
        let (action, _) = h.run(&full[..len]);
        assert_eq!(action, XDP_PASS, "truncated to {len} bytes");
    }
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(h.run(&bad_ihl).0, XDP_PASS);
    let mut bad_version = full.clone();
    bad_version[14] = 0x65;
    assert_eq!(h.run(&bad_version).0, XDP_PASS);
    assert!(h.counter(global::MALFORMED) >= 20);
    assert_eq!(h.counter(global::TX), 0);

    // IPv4 options are skipped correctly: same flow as without them.
    let with_options = ipv4(
        CLIENT,
        VIP,
        PROTO_TCP,
        &[1, 1, 1, 0, 7, 4, 0, 0],
        0,
        &tcp(43001, 80, SYN),
    );
    let (action, out) = h.run(&with_options);
    assert_eq!(action, XDP_TX);
    let backend = expected_backend(&v4_key(43001, 80, PROTO_TCP), &[0, 1, 2]);
    assert_eq!(out[..6], server_mac(backend as u8));
    assert_eq!(out[12..], with_options[12..]);

    // Fragments to a VIP are dropped and counted.
    let frag = ipv4(CLIENT, VIP, PROTO_UDP, &[], 0x2000, &udp(1, 53));
    assert_eq!(h.run(&frag).0, XDP_DROP);
    let frag6 = ipv6(CLIENT6, VIP6, 44, &[17, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(h.run(&frag6).0, XDP_DROP);
    assert_eq!(h.counter(global::FRAGMENT), 2);
}

#[test]
fn icmp_too_big_follows_its_flow() {
    let Some(h) = harness() else { return };
    // Establish a flow, then an ICMP "fragmentation needed" quoting the
    // server's reply (VIP:80 → client:44000) must reach the same server.
    let syn = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(44000, 80, SYN));
    let (_, out) = h.run(&syn);
    let server = out[..6].to_vec();
    let router = Ipv4Addr::new(10, 0, 0, 254);
    let quoted = ipv4(VIP, CLIENT, PROTO_TCP, &[], 0, &tcp(80, 44000, ACK));
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(&quoted[14..14 + 28]);
    let frame = ipv4(router, VIP, 1, &[], 0, &icmp);
    let (action, out) = h.run(&frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(out[..6], server[..]);
    assert_eq!(h.counter(global::ICMP_FORWARDED), 1);

    // IPv6 packet too big.
    let syn6 = ipv6(CLIENT6, VIP6, PROTO_TCP, &tcp(44001, 80, SYN));
    h.run(&syn6);
    let quoted6 = ipv6(VIP6, CLIENT6, PROTO_TCP, &tcp(80, 44001, ACK));
    let mut icmp6 = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    icmp6.extend_from_slice(&quoted6[14..14 + 48]);
    let frame6 = ipv6(
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe),
        VIP6,
        58,
        &icmp6,
    );
    let (action, out) = h.run(&frame6);
    assert_eq!(action, XDP_TX);
    assert_eq!(out[..6], server_mac(4));
}

#[test]
fn empty_pool_drops_vip_traffic() {
    let Some(mut h) = harness() else { return };
    let mut states: Array<_, ServiceState> =
        Array::try_from(h.ebpf.map_mut("SERVICE_STATE").expect("STATE")).expect("STATE");
    states.set(0, ServiceState::default(), 0).expect("state");
    let frame = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(45000, 80, SYN));
    assert_eq!(h.run(&frame).0, XDP_DROP);
    assert_eq!(h.counter(global::NO_BACKEND), 1);
    let _ = FAMILY_V4;
}

#[test]
fn idle_udp_flow_expires_and_is_rehashed() {
    let Some(h) = harness() else { return };
    let key = v4_key(5001, 53, PROTO_UDP);
    let frame = ipv4(CLIENT, VIP, PROTO_UDP, &[], 0, &udp(5001, 53));
    assert_eq!(h.run(&frame).0, XDP_TX);
    let fresh = h.flow(&key).expect("entry");
    // A second packet within the idle time: no expiry.
    h.run(&frame);
    assert_eq!(h.counter(global::UDP_EXPIRED), 0);
    // Age the entry past the 30 s idle timeout.
    let mut aged = fresh;
    aged.last_seen = fresh.last_seen.wrapping_sub(31);
    assert!(h.flow_sets().insert(&key, &aged), "age entry");
    assert_eq!(h.run(&frame).0, XDP_TX);
    assert_eq!(h.counter(global::UDP_EXPIRED), 1);
    let renewed = h.flow(&key).expect("entry");
    assert!(
        renewed.last_seen >= fresh.last_seen,
        "entry rewritten with a new time"
    );
    // TCP entries do not expire by idle time.
    let tkey = v4_key(5002, 80, PROTO_TCP);
    h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(5002, 80, SYN)));
    let mut t = h.flow(&tkey).expect("tcp entry");
    t.last_seen = t.last_seen.wrapping_sub(1000);
    assert!(h.flow_sets().insert(&tkey, &t), "age tcp");
    h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(5002, 80, ACK)));
    assert_eq!(h.counter(global::UDP_EXPIRED), 1);
}

/// A table of one set: every flow competes for the same eight ways.
fn one_set() -> Option<TestBed> {
    may_test_run()
        .then(|| TestBed::with_flow_capacity(lb_control::node::dataplane::EMBEDDED_PROGRAM, 8))
}

#[test]
fn full_set_evicts_its_least_recently_seen_flow() {
    let Some(h) = one_set() else { return };
    let keys: Vec<FlowKey> = (6000..6008u16).map(|p| v4_key(p, 80, PROTO_TCP)).collect();
    for p in 6000..6008u16 {
        assert_eq!(
            h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(p, 80, SYN)))
                .0,
            XDP_TX
        );
    }
    assert_eq!(h.flow_sets().count(), 8, "eight ways, eight flows");
    assert_eq!(h.flow_counter(lb_common::flow_stats::EVICTED), 0);
    // Make flow 6003 the one seen longest ago; the others were seen now.
    let mut old = h.flow(&keys[3]).expect("entry");
    let now = old.last_seen;
    old.last_seen = now.wrapping_sub(100);
    assert!(h.flow_sets().insert(&keys[3], &old));
    // An established packet refreshes 6005's time (it is already `now`).
    h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(6005, 80, ACK)));
    // A ninth flow takes 6003's way; everything else stays.
    let ninth = v4_key(6100, 80, PROTO_TCP);
    h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(6100, 80, SYN)));
    assert!(h.flow(&keys[3]).is_none(), "the oldest flow was evicted");
    assert_eq!(
        h.flow_counter(lb_common::flow_stats::EVICTED),
        1,
        "and counted"
    );
    assert!(h.flow(&ninth).is_some(), "the new flow was written");
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert!(h.flow(k).is_some(), "flow {i} kept");
    }
    assert_eq!(h.flow_sets().count(), 8);
    // The evicted flow's next packet misses, is re-hashed by Maglev to the
    // same backend (the table did not change) and written again.
    let misses = h.counter(global::FLOW_MISS);
    let (action, out) = h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(6003, 80, ACK)));
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out[..6],
        server_mac(expected_backend(&keys[3], &[0, 1, 2]) as u8)
    );
    assert_eq!(h.counter(global::FLOW_MISS), misses + 1);
    assert!(h.flow(&keys[3]).is_some());
}

#[test]
fn a_repeated_syn_rewrites_its_own_entry() {
    let Some(h) = one_set() else { return };
    let key = v4_key(6200, 80, PROTO_TCP);
    let syn = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(6200, 80, SYN));
    for _ in 0..5 {
        assert_eq!(h.run(&syn).0, XDP_TX);
    }
    // The client port is reused after a drain: its entry pointed elsewhere.
    let mut stale = h.flow(&key).expect("entry");
    stale.backend = (stale.backend + 1) % 3;
    assert!(h.flow_sets().insert(&key, &stale));
    h.run(&syn);
    assert_eq!(h.flow_sets().count(), 1, "one entry per flow, never two");
    assert_eq!(
        h.flow(&key).expect("entry").backend,
        expected_backend(&key, &[0, 1, 2]),
        "the SYN took the table's choice"
    );
}

#[test]
fn services_beyond_a_full_bucket_are_still_found() {
    let Some(mut h) = harness() else { return };
    let buckets = lb_common::service_buckets(lb_control::node::dataplane::testbed::MAX_SERVICES);
    // Seven ports of the VIP whose keys share one bucket with each other
    // (not with the test bed's own services): four fit, three overflow.
    let taken: Vec<u32> = [
        ServiceKey::new(&VIP.octets(), 80, PROTO_TCP),
        ServiceKey::new(&VIP.octets(), 53, PROTO_UDP),
        ServiceKey::new(&VIP6.octets(), 80, PROTO_TCP),
    ]
    .iter()
    .map(|k| lb_common::service_bucket_of(k, buckets))
    .collect();
    let key = |port: u16| ServiceKey::new(&VIP.octets(), port, PROTO_TCP);
    let target = (1000..2000u16)
        .map(|p| lb_common::service_bucket_of(&key(p), buckets))
        .find(|b| !taken.contains(b))
        .expect("a free bucket");
    let ports: Vec<u16> = (1000..60000u16)
        .filter(|&p| lb_common::service_bucket_of(&key(p), buckets) == target)
        .take(7)
        .collect();
    assert_eq!(ports.len(), 7);
    let forwarded = |h: &TestBed, port: u16| {
        h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(7000, port, SYN)))
            .0
            == XDP_TX
    };
    for &p in &ports {
        assert!(!forwarded(&h, p), "port {p} is not a service yet");
        h.add_service_key(key(p), 0);
    }
    let bucket = h.service_buckets().get(target);
    assert_ne!(bucket.overflow, 0, "seven keys, four ways: overflow");
    for &p in &ports {
        assert!(
            forwarded(&h, p),
            "port {p} is a service (in a way or through SERVICES)"
        );
    }
    // Removing three keys leaves four: every one in a way, no overflow.
    for &p in &ports[..3] {
        h.remove_service_key(&key(p));
    }
    let bucket = h.service_buckets().get(target);
    assert_eq!(bucket.overflow, 0);
    for &p in &ports[..3] {
        assert!(!forwarded(&h, p), "port {p} was removed");
    }
    for &p in &ports[3..] {
        assert!(forwarded(&h, p), "port {p} stays a service");
        assert_eq!(bucket.find(&key(p)), Some(0));
    }
    // Host traffic to other ports of the VIP still passes.
    let (action, _) = h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(7000, 22, SYN)));
    assert_eq!(action, XDP_PASS);
}

#[test]
fn a_slot_two_writers_interleaved_reads_as_a_miss() {
    let Some(h) = one_set() else { return };
    let key = v4_key(6300, 80, PROTO_TCP);
    h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(6300, 80, SYN)));
    let right = expected_backend(&key, &[0, 1, 2]);
    // Another writer's backend word landed over this flow's key: the check
    // ties the word to its own flow's tag, so this flow's tag rejects it.
    let mut flows = h.flow_array();
    let mut set = flows.get(0);
    let w = set
        .tags
        .iter()
        .position(|&t| t != 0)
        .expect("the flow's way");
    let other_tag = lb_common::flow_tag(0x5eed_0001);
    let wrong = (right + 1) % 3;
    set.slots[w].target = lb_common::flow_target(other_tag, wrong, set.slots[w].incarnation);
    flows.set(0, set);
    assert!(
        h.flow(&key).is_none(),
        "user space does not believe it either"
    );
    let misses = h.counter(global::FLOW_MISS);
    let (action, out) = h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(6300, 80, ACK)));
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out[..6],
        server_mac(right as u8),
        "re-hashed, not sent to {wrong}"
    );
    assert_eq!(h.counter(global::FLOW_MISS), misses + 1);
    assert_eq!(h.flow(&key).expect("rewritten").backend, right);
    assert_eq!(h.flow_sets().count(), 1, "rewritten in its own way");
}

#[test]
fn entries_move_to_the_sets_a_new_seed_picks() {
    let Some(h) = harness() else { return };
    let keys: Vec<FlowKey> = (6400..6450u16).map(|p| v4_key(p, 80, PROTO_TCP)).collect();
    for p in 6400..6450u16 {
        h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(p, 80, SYN)));
    }
    let before: Vec<_> = keys.iter().map(|k| h.flow(k).expect("entry")).collect();
    // The controller restarts with another hash seed.
    let mut reseeded = h.flow_sets_seeded(SEED ^ 0x5eed);
    let found = keys.iter().filter(|k| reseeded.get(k).is_some()).count();
    assert!(
        found < keys.len() / 4,
        "{found} of {} found before the move",
        keys.len()
    );
    // Copy first: the old program still finds the originals.
    assert_eq!(reseeded.rehome(false), keys.len());
    for (k, b) in keys.iter().zip(&before) {
        assert_eq!(
            h.flow(k).map(|e| e.backend),
            Some(b.backend),
            "original kept"
        );
        assert_eq!(
            reseeded.get(k).map(|e| e.backend),
            Some(b.backend),
            "copy in place"
        );
    }
    // Then the originals go.
    assert_eq!(reseeded.rehome(true), keys.len());
    assert_eq!(reseeded.rehome(true), 0, "nothing left away");
    assert_eq!(reseeded.count(), keys.len());
}

/// Issue 11, point 16: a bare SYN for a 4-tuple whose flow is carrying
/// traffic keeps the flow's server, even when the table now picks another
/// (forged SYNs cannot move a live connection); one idle past the window,
/// or whose server is no longer active, takes the table's choice.
#[test]
fn a_syn_keeps_a_live_flow_and_replaces_a_stale_one() {
    let Some(mut h) = harness() else { return };
    let sport = 46000;
    let key = v4_key(sport, 80, PROTO_TCP);
    let first = expected_backend(&key, &[0, 1, 2]);
    let other = (first + 1) % 3;
    let syn = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(sport, 80, SYN));
    let ack = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(sport, 80, ACK));
    assert_eq!(h.run(&syn).1[..6], server_mac(first as u8));
    assert_eq!(h.run(&ack).1[..6], server_mac(first as u8));

    // The pool changes: the table now gives this 4-tuple to `other`.
    h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[other]);
    let (action, out) = h.run(&syn);
    assert_eq!(action, XDP_TX);
    assert_eq!(
        out[..6],
        server_mac(first as u8),
        "a SYN on a live flow must keep its server"
    );
    assert_eq!(h.guard_counter(guard::SYN_KEPT_FLOW), 1);
    assert_eq!(h.guard_counter(guard::SYN_REPLACED_FLOW), 0);
    assert_eq!(h.flow(&key).expect("entry").backend, first);
    assert_eq!(h.run(&ack).1[..6], server_mac(first as u8), "still there");

    // Idle past the window: the next SYN is a new connection.
    let mut idle = h.flow(&key).expect("entry");
    idle.last_seen = idle.last_seen.wrapping_sub(SYN_KEEP_SECS + 1);
    assert!(h.flow_sets().insert(&key, &idle), "age the entry");
    assert_eq!(
        h.run(&syn).1[..6],
        server_mac(other as u8),
        "a SYN over a stale entry takes the table's choice"
    );
    assert_eq!(h.guard_counter(guard::SYN_REPLACED_FLOW), 1);
    assert_eq!(h.guard_counter(guard::SYN_KEPT_FLOW), 1);
    assert_eq!(h.flow(&key).expect("entry").backend, other);
    assert_eq!(h.flow_sets().count(), 1, "rewritten in its own way");

    // A live flow whose server is no longer active (draining here) is not
    // kept either: a SYN never starts a connection on a draining server.
    assert_eq!(h.run(&ack).1[..6], server_mac(other as u8));
    h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[first]);
    h.set_backend(other, 0, BACKEND_DRAINING, 0);
    assert_eq!(h.run(&syn).1[..6], server_mac(first as u8));
    assert_eq!(h.guard_counter(guard::SYN_REPLACED_FLOW), 2);
    assert_eq!(h.guard_counter(guard::SYN_KEPT_FLOW), 1);

    // Repeated SYNs alone (no other traffic) never make an entry SYNs keep.
    h.set_backend(other, 0, BACKEND_ACTIVE, 0);
    let key2 = v4_key(46001, 80, PROTO_TCP);
    let syn2 = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(46001, 80, SYN));
    assert_eq!(h.run(&syn2).1[..6], server_mac(first as u8));
    h.add_service(0, ServiceKey::new(&VIP.octets(), 80, PROTO_TCP), &[other]);
    assert_eq!(h.run(&syn2).1[..6], server_mac(other as u8));
    assert_eq!(h.flow(&key2).expect("entry").backend, other);
    assert_eq!(h.guard_counter(guard::SYN_KEPT_FLOW), 1);
    assert_eq!(h.guard_counter(guard::SYN_REPLACED_FLOW), 3);
}

/// An `ICMPv6` "packet too big" quoting the reply of `client_port`'s flow.
fn icmp6_too_big(client_port: u16) -> Vec<u8> {
    let quoted = ipv6(VIP6, CLIENT6, PROTO_TCP, &tcp(80, client_port, ACK));
    let mut icmp = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    icmp.extend_from_slice(&quoted[14..14 + 48]);
    ipv6(
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe),
        VIP6,
        58,
        &icmp,
    )
}

/// Issue 11, point 17: an ICMP too-big is forwarded only along a flow the
/// table holds, and never makes the flow (or its server) look recently used.
#[test]
fn icmp_too_big_needs_a_flow_and_leaves_its_time() {
    let Some(mut h) = harness() else { return };
    // No such flow: dropped and counted, no entry made.
    for (what, frame, key) in [
        ("v4", icmp4_too_big(47000), v4_key(47000, 80, PROTO_TCP)),
        (
            "v6",
            icmp6_too_big(47000),
            FlowKey::new(&CLIENT6.octets(), 47000, &VIP6.octets(), 80, PROTO_TCP),
        ),
    ] {
        let (action, _) = h.run(&frame);
        assert_eq!(action, XDP_DROP, "{what}: an ICMP error about no flow");
        assert!(h.flow(&key).is_none(), "{what}: no entry for it");
    }
    assert_eq!(h.guard_counter(guard::ICMP_NO_FLOW), 2);
    assert_eq!(h.counter(global::ICMP_FORWARDED), 0);

    // A flow: forwarded to its server, its times untouched.
    let key = v4_key(47001, 80, PROTO_TCP);
    let server = expected_backend(&key, &[0, 1, 2]);
    h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(47001, 80, SYN)));
    h.run(&ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(47001, 80, ACK)));
    let mut entry = h.flow(&key).expect("entry");
    entry.last_seen = entry.last_seen.wrapping_sub(10);
    assert!(h.flow_sets().insert(&key, &entry), "age the entry");
    let backend_seen = h.backend_last_seen(server).wrapping_sub(10);
    h.set_backend_last_seen(server, backend_seen);
    let (action, out) = h.run(&icmp4_too_big(47001));
    assert_eq!(action, XDP_TX);
    assert_eq!(out[..6], server_mac(server as u8));
    assert_eq!(h.counter(global::ICMP_FORWARDED), 1);
    assert_eq!(
        h.flow(&key).expect("entry").last_seen,
        entry.last_seen,
        "an ICMP error must not refresh its flow"
    );
    assert_eq!(
        h.backend_last_seen(server),
        backend_seen,
        "nor its server's last-seen time"
    );

    // The flow's server went down: the entry no longer holds, dropped.
    h.set_backend(server, 0, BACKEND_DOWN, 0);
    assert_eq!(h.run(&icmp4_too_big(47001)).0, XDP_DROP);
    assert_eq!(h.guard_counter(guard::ICMP_NO_FLOW), 3);
    assert_eq!(h.counter(global::ICMP_FORWARDED), 1);
}

/// An IPv6 extension header of 8 bytes (next header, length 0, a `PadN` option).
fn ext(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// `headers` (next-header numbers) chained in front of `l4` (protocol `proto`).
fn chain(headers: &[u8], proto: u8, l4: &[u8]) -> (u8, Vec<u8>) {
    let mut payload = Vec::new();
    for (i, _) in headers.iter().enumerate() {
        let next = headers.get(i + 1).copied().unwrap_or(proto);
        if headers[i] == 44 {
            // An atomic fragment: offset 0, no more fragments.
            payload.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 7]);
        } else if headers[i] == 43 {
            // A routing header with no segments left.
            payload.extend_from_slice(&[next, 0, 4, 0, 0, 0, 0, 0]);
        } else {
            payload.extend_from_slice(&ext(next));
        }
    }
    payload.extend_from_slice(l4);
    (headers.first().copied().unwrap_or(proto), payload)
}

/// Issue 11, point 18: IPv6 packets to a VIP behind hop-by-hop, routing and
/// destination-options headers are balanced; more headers than the program
/// walks, or a non-first fragment, are dropped and counted; packets to other
/// addresses pass as before.
#[test]
fn ipv6_extension_headers_are_walked_to_the_tcp_header() {
    let Some(h) = harness() else { return };
    let cases: [(&str, &[u8]); 4] = [
        ("hop-by-hop", &[0]),
        ("destination options", &[60]),
        ("routing", &[43]),
        ("four headers", &[0, 43, 60, 44]),
    ];
    for (i, (what, headers)) in cases.iter().enumerate() {
        let sport = 48000 + i as u16;
        let (next, payload) = chain(headers, PROTO_TCP, &tcp(sport, 80, SYN));
        let frame = ipv6(CLIENT6, VIP6, next, &payload);
        let (action, out) = h.run(&frame);
        assert_eq!(action, XDP_TX, "{what}: a SYN to the VIP is balanced");
        let mut want = frame.clone();
        want[..6].copy_from_slice(&server_mac(4));
        want[6..12].copy_from_slice(&NODE_MAC);
        assert_eq!(out, want, "{what}: only the MACs change");
        let key = FlowKey::new(&CLIENT6.octets(), sport, &VIP6.octets(), 80, PROTO_TCP);
        assert!(h.flow(&key).is_some(), "{what}: flow recorded by its ports");
    }

    // Five headers: beyond the bound, dropped and counted.
    let (next, payload) = chain(&[0, 60, 60, 60, 60], PROTO_TCP, &tcp(48100, 80, SYN));
    let too_deep = ipv6(CLIENT6, VIP6, next, &payload);
    assert_eq!(h.run(&too_deep).0, XDP_DROP, "five extension headers");
    assert_eq!(h.guard_counter(guard::IPV6_EXT_UNPARSED), 1);
    // A header whose length runs past the frame, onto the next header:
    // dropped too, never passed.
    let mut cut = ext(60);
    cut[1] = 4;
    assert_eq!(
        h.run(&ipv6(CLIENT6, VIP6, 0, &cut)).0,
        XDP_DROP,
        "cut short"
    );
    assert_eq!(h.guard_counter(guard::IPV6_EXT_UNPARSED), 2);

    // A non-first fragment behind a hop-by-hop header: no ports, dropped.
    let mut payload = ext(44);
    payload.extend_from_slice(&[PROTO_TCP, 0, 0x05, 0xc9, 0, 0, 0, 8]);
    payload.extend_from_slice(&[0u8; 16]);
    let fragments = h.counter(global::FRAGMENT);
    assert_eq!(h.run(&ipv6(CLIENT6, VIP6, 0, &payload)).0, XDP_DROP);
    assert_eq!(h.counter(global::FRAGMENT), fragments + 1);

    // Not to a VIP: passed untouched, however many headers.
    let host = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let passes = h.counter(global::PASS);
    for headers in [&[0u8][..], &[0, 60, 60, 60, 60, 60]] {
        let (next, payload) = chain(headers, PROTO_TCP, &tcp(48200, 22, SYN));
        let frame = ipv6(CLIENT6, host, next, &payload);
        let (action, out) = h.run(&frame);
        assert_eq!(action, XDP_PASS, "{} headers to the host", headers.len());
        assert_eq!(out, frame, "untouched");
    }
    assert_eq!(h.counter(global::PASS), passes + 2);
    assert_eq!(h.guard_counter(guard::IPV6_EXT_UNPARSED), 2);
    assert_eq!(h.counter(global::DROP), 3);
}
