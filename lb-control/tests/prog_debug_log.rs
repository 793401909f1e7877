//! The debug variant of the XDP program (`[node] debug_xdp`) under
//! `BPF_PROG_TEST_RUN`: the verifier accepts it, it decides every frame as
//! the production program does, and it writes one record per event into
//! aya-log's ring; the production object has no ring at all.

use std::sync::Mutex;

use aya::maps::Array;
use lb_common::{PROTO_TCP, PROTO_UDP, ServiceState};
use lb_control::node::dataplane::{
    DEBUG_PROGRAM, EMBEDDED_PROGRAM,
    testbed::{
        CLIENT, TestBed, VIP, XDP_DROP, XDP_PASS, XDP_TX,
        frames::{ACK, SYN, icmp4_too_big, ipv4, tcp, udp},
        may_test_run,
    },
};

/// Every record aya-log hands over, as text.
#[derive(Default)]
struct Captured(Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        assert_eq!(record.target(), "xdp", "{}", record.args());
        self.0.lock().unwrap().push(record.args().to_string());
    }

    fn flush(&self) {}
}

fn empty_pool(h: &mut TestBed, service: u32) {
    let mut states: Array<_, ServiceState> =
        Array::try_from(h.ebpf.map_mut("SERVICE_STATE").expect("STATE")).expect("STATE");
    states
        .set(service, ServiceState::default(), 0)
        .expect("state");
}

#[test]
fn the_debug_variant_decides_alike_and_logs_each_event() {
    if !may_test_run() {
        return;
    }
    let mut production = TestBed::new(EMBEDDED_PROGRAM);
    let mut debug = TestBed::new(DEBUG_PROGRAM);
    assert!(production.ebpf.map("AYA_LOGS").is_none(), "no log ring");
    let captured = Captured::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut debug.ebpf, &captured)
        .expect("the debug object has aya-log's ring");

    let frames = [
        (
            "a new flow",
            ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(41000, 80, SYN)),
            XDP_TX,
        ),
        (
            "its next packet",
            ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(41000, 80, ACK)),
            XDP_TX,
        ),
        ("an ICMP too-big on it", icmp4_too_big(41000), XDP_TX),
        ("an ICMP too-big on no flow", icmp4_too_big(41001), XDP_DROP),
        (
            "a fragment",
            ipv4(CLIENT, VIP, PROTO_UDP, &[], 0x2000, &udp(1, 53)),
            XDP_DROP,
        ),
        (
            "host traffic",
            ipv4(
                CLIENT,
                [10, 0, 0, 9].into(),
                PROTO_TCP,
                &[],
                0,
                &tcp(1, 80, SYN),
            ),
            XDP_PASS,
        ),
    ];
    for (what, frame, action) in &frames {
        let want = production.run(frame);
        assert_eq!(want.0, *action, "{what}");
        assert_eq!(debug.run(frame), want, "{what}: same action, same bytes");
    }
    empty_pool(&mut production, 0);
    empty_pool(&mut debug, 0);
    let syn = ipv4(CLIENT, VIP, PROTO_TCP, &[], 0, &tcp(41002, 80, SYN));
    assert_eq!(production.run(&syn).0, XDP_DROP);
    assert_eq!(debug.run(&syn).0, XDP_DROP);

    logger.flush();
    let records = captured.0.lock().unwrap().clone();
    let starts = [
        "new flow from maglev client=10.0.0.2 client_port=41000 service=0 backend=",
        "icmp too-big routed client=10.0.0.2 service=0 backend=",
        "dropped reason=icmp_no_flow client=10.0.0.2 service=0",
        "dropped reason=fragment",
        "dropped reason=no_backend client=10.0.0.2 service=0",
    ];
    assert_eq!(
        records.len(),
        starts.len(),
        "one record per event: {records:#?}"
    );
    for (record, start) in records.iter().zip(starts) {
        assert!(
            record.starts_with(start),
            "{record:?} should start {start:?}"
        );
    }
}
