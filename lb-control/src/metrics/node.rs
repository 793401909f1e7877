//! The node's metrics: what its XDP program forwarded, per service and per
//! server, why it passed or dropped what it did not, and its tables.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use super::Value;
use crate::node::Node;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    service: Value,
    server: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendStateLabel {
    service: Value,
    server: Value,
    state: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    interface: Value,
    mode: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: Value,
}

/// The program's counters by what they count: the verdict every packet
/// gets, the reason for a pass or drop other than forwarding, and the flow
/// table's events. (name in the map, label value)
const VERDICTS: [(&str, &str); 5] = [
    ("pass", "pass"),
    ("drop", "drop"),
    ("error", "aborted"),
    ("tx", "tx"),
    ("redirect", "redirect"),
];
const REASONS: [(&str, &str); 12] = [
    ("vlan", "vlan"),
    ("malformed", "malformed"),
    ("fragment", "fragment"),
    ("local", "local"),
    ("no_backend", "no_backend"),
    ("icmp_no_flow", "icmp_no_flow"),
    ("ipv6_ext_unparsed", "ipv6_ext_unparsed"),
    ("tunnel_no_neigh", "tunnel_no_neigh"),
    ("tunnel_no_route", "tunnel_no_route"),
    ("tunnel_forwarding_disabled", "tunnel_forwarding_disabled"),
    ("tunnel_too_big", "tunnel_too_big"),
    ("tunnel_no_source", "tunnel_no_source"),
];
/// Packets tunnelled, by encapsulation.
const TUNNELLED: [(&str, &str); 2] = [("tunnel_ipip", "ipip"), ("tunnel_gue", "gue")];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EncapsulationLabel {
    encapsulation: Value,
}
const FLOW_EVENTS: [(&str, &str); 6] = [
    ("flow_miss", "miss"),
    ("flow_evicted", "evicted"),
    ("udp_expired", "udp_expired"),
    ("syn_kept_flow", "syn_kept"),
    ("syn_replaced_flow", "syn_replaced"),
    ("icmp_forwarded", "icmp_forwarded"),
];

/// Adds the node's metrics, read from its maps now, to `registry`.
pub(super) fn register(registry: &mut Registry, node: &Node) {
    register_services(registry, node);
    register_backends(registry, node);
    register_program(registry, node);
}

fn register_services(registry: &mut Registry, node: &Node) {
    let packets = Family::<ServiceLabel, Counter>::default();
    let bytes = Family::<ServiceLabel, Counter>::default();
    let flows = Family::<ServiceLabel, Counter>::default();
    let servers = Family::<ServiceLabel, Gauge>::default();
    for v in node.service_views() {
        let label = ServiceLabel {
            service: v.name.into(),
        };
        packets.get_or_create(&label).inc_by(v.packets);
        bytes.get_or_create(&label).inc_by(v.bytes);
        flows.get_or_create(&label).inc_by(v.new_flows);
        servers
            .get_or_create(&label)
            .set(i64::try_from(v.servers).unwrap_or(i64::MAX));
    }
    registry.register(
        "service_packets",
        "Packets to the service's VIP the node forwarded",
        packets,
    );
    registry.register_with_unit(
        "service_forwarded",
        "Bytes to the service's VIP the node forwarded",
        Unit::Bytes,
        bytes,
    );
    registry.register(
        "service_new_flows",
        "Flows the node assigned a server for the service",
        flows,
    );
    registry.register(
        "service_servers",
        "Servers in the service's pool on this node (every state)",
        servers,
    );
}

fn register_backends(registry: &mut Registry, node: &Node) {
    let packets = Family::<BackendLabel, Counter>::default();
    let bytes = Family::<BackendLabel, Counter>::default();
    let flows = Family::<BackendLabel, Counter>::default();
    let weight = Family::<BackendLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let state = Family::<BackendStateLabel, Gauge>::default();
    for server in node.server_views() {
        for b in server.services {
            let label = BackendLabel {
                service: b.service.clone().into(),
                server: server.name.clone().into(),
            };
            packets.get_or_create(&label).inc_by(b.packets);
            bytes.get_or_create(&label).inc_by(b.bytes);
            flows.get_or_create(&label).inc_by(b.new_flows);
            if let Ok(w) = b.weight.parse::<f64>() {
                weight.get_or_create(&label).set(w);
            }
            state
                .get_or_create(&BackendStateLabel {
                    service: b.service.into(),
                    server: server.name.clone().into(),
                    state: b.state.into(),
                })
                .set(1);
        }
    }
    registry.register(
        "backend_packets",
        "Packets the node forwarded to the server for the service",
        packets,
    );
    registry.register_with_unit(
        "backend_forwarded",
        "Bytes the node forwarded to the server for the service",
        Unit::Bytes,
        bytes,
    );
    registry.register(
        "backend_new_flows",
        "New flows the node sent to the server for the service",
        flows,
    );
    registry.register(
        "backend_weight",
        "The server's weight in force in the service, in the file's units",
        weight,
    );
    registry.register(
        "backend_state",
        "1 for the server's state in the service's table (active, draining, down, retired)",
        state,
    );
}

fn register_program(registry: &mut Registry, node: &Node) {
    let counters = node.dp.global_counters();
    registry.register(
        "xdp_verdicts",
        "Packets by the XDP verdict they got: pass (to the node's stack), drop, aborted, tx (forwarded out the same port), redirect (out another)",
        counted(&counters, &VERDICTS, |verdict| VerdictLabel {
            verdict: verdict.into(),
        }),
    );
    registry.register(
        "xdp_not_forwarded",
        "Packets passed or dropped instead of forwarded, by reason (local: to a server on this node)",
        counted(&counters, &REASONS, |reason| ReasonLabel {
            reason: reason.into(),
        }),
    );
    registry.register(
        "xdp_tunnelled",
        "Packets tunnelled to servers beyond the segment (forward = ipip or gue), by encapsulation",
        counted(&counters, &TUNNELLED, |encapsulation| EncapsulationLabel {
            encapsulation: encapsulation.into(),
        }),
    );
    registry.register(
        "flow_table_events",
        "Flow-table events: misses (a new flow hashed), evictions, idle UDP flows re-hashed, SYNs that kept or replaced an entry, ICMP errors forwarded along a flow",
        counted(&counters, &FLOW_EVENTS, |event| EventLabel {
            event: event.into(),
        }),
    );
    let entries = Gauge::<i64>::default();
    entries.set(i64::try_from(node.dp.flows.count()).unwrap_or(i64::MAX));
    registry.register("flow_table_entries", "Flows in the flow table", entries);
    let capacity = Gauge::<i64>::default();
    capacity.set(i64::from(node.dp.limits.flow_table_size));
    registry.register(
        "flow_table_capacity",
        "Flows the flow table holds at most",
        capacity,
    );
    let generation = Gauge::<i64>::default();
    generation.set(i64::from(node.generation()));
    registry.register(
        "table_generation",
        "This node's count of Maglev table flips",
        generation,
    );
    registry.register(
        "xdp_program",
        "The XDP program attached: its id",
        Info::new(vec![(
            "program_id".to_owned(),
            node.dp.program_id.to_string(),
        )]),
    );
}

/// How XDP runs on each interface (`driver`, `skb`, ...), as the kernel
/// says now: `skb` where `driver` was wanted is a driver without native
/// XDP, and costs speed.
pub(super) fn register_modes(registry: &mut Registry, modes: &[(String, &'static str)]) {
    let family = Family::<ModeLabel, Gauge>::default();
    for (interface, mode) in modes {
        family
            .get_or_create(&ModeLabel {
                interface: interface.clone().into(),
                mode: (*mode).to_owned().into(),
            })
            .set(1);
    }
    registry.register(
        "xdp_mode",
        "1 for the mode XDP runs in on the interface: driver, skb (generic), hw, multi, none",
        family,
    );
}

/// One counter per (counter in the maps, label value) of `names`, valued
/// from the program's `counters`.
fn counted<L>(
    counters: &[(&str, u64)],
    names: &[(&str, &str)],
    label: impl Fn(&str) -> L,
) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    for (name, value) in names {
        let n = counters
            .iter()
            .find(|(c, _)| c == name)
            .map_or(0, |(_, v)| *v);
        family.get_or_create(&label(value)).inc_by(n);
    }
    family
}
