//! The manager's metrics: each server as its agent reports it, each pool
//! as the loop left it, the decisions by kind, how long nodes take to
//! apply a change, and what the agent streams and discovery refused.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use super::Value;
use crate::manager::{
    ManagerStats, Rejection,
    controller::{Controller, Pools},
    db::MonitorView,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    server: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerStateLabel {
    server: Value,
    state: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    service: Value,
    state: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    service: Value,
    server: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: Value,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Value,
}

/// The label of a node in [`ReconfigureLatency`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: Value,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// How long each node took to apply and read back a reconfiguration
/// (seconds, 1 ms to about 16 s), kept by the controller across scrapes.
#[derive(Debug, Clone)]
pub struct ReconfigureLatency(Family<NodeLabel, Histogram, fn() -> Histogram>);

impl Default for ReconfigureLatency {
    fn default() -> Self {
        fn buckets() -> Histogram {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        }
        Self(Family::new_with_constructor(buckets))
    }
}

impl ReconfigureLatency {
    /// One acked reconfiguration of `node` that took `seconds`.
    pub fn observe(&self, node: &str, seconds: f64) {
        self.0
            .get_or_create(&NodeLabel {
                node: node.to_owned().into(),
            })
            .observe(seconds);
    }
}

/// Adds the manager's metrics, as they stand now, to `registry`.
pub(super) async fn register(registry: &mut Registry, controller: &Arc<Controller>) {
    register_servers(registry, &controller.manager().views().await);
    if let Ok(pools) = controller.pool().await {
        register_pools(registry, &pools);
    }
    let decisions = Family::<KindLabel, Counter>::default();
    for (kind, n) in controller.events.counts() {
        decisions
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc_by(n);
    }
    registry.register(
        "manager_events",
        "The manager's decisions and observations by event kind (allocated, deallocated, allocation-failed, rolled-back, failed, restored, ...)",
        decisions,
    );
    registry.register_with_unit(
        "reconfigure_duration",
        "Time a node took to apply and read back a reconfiguration it acked",
        Unit::Seconds,
        controller.reconfigure_latency().0.clone(),
    );
    register_streams(registry, &controller.manager().stats());
}

fn register_servers(registry: &mut Registry, views: &[MonitorView]) {
    let utilization = Family::<ServerLabel, FloatGauge>::default();
    let cores = Family::<ServerLabel, FloatGauge>::default();
    let age = Family::<ServerLabel, FloatGauge>::default();
    let connected = Family::<ServerLabel, Gauge>::default();
    let monitor = Family::<ServerStateLabel, Gauge>::default();
    let health = Family::<ServerStateLabel, Gauge>::default();
    let reports = Family::<ServerLabel, Counter>::default();
    for v in views {
        let label = ServerLabel {
            server: v.host.clone().into(),
        };
        if let Some(u) = v.utilization {
            utilization.get_or_create(&label).set(u);
        }
        cores.get_or_create(&label).set(v.cores);
        if let Some(ms) = v.report_age_ms {
            #[expect(clippy::cast_precision_loss, reason = "milliseconds far below 2^52")]
            age.get_or_create(&label).set(ms as f64 / 1000.0);
        }
        connected.get_or_create(&label).set(i64::from(v.connected));
        reports.get_or_create(&label).inc_by(v.reports);
        let state = |state: String| ServerStateLabel {
            server: v.host.clone().into(),
            state: state.into(),
        };
        monitor
            .get_or_create(&state(format!("{:?}", v.monitor).to_lowercase()))
            .set(1);
        if let Some(h) = &v.health {
            health.get_or_create(&state(h.clone())).set(1);
        }
    }
    registry.register(
        "server_utilization",
        "The server's utilization as its agent last reported it (0 to 1 of its cores)",
        utilization,
    );
    registry.register(
        "server_cores",
        "The server's capacity in cores, as its agent says",
        cores,
    );
    registry.register_with_unit(
        "server_report_age",
        "Time since the server's last report",
        Unit::Seconds,
        age,
    );
    registry.register(
        "server_connected",
        "1 while the manager holds a stream from the server's agent",
        connected,
    );
    registry.register(
        "server_monitor",
        "1 for the manager's view of the server's agent: pending, monitored or unmonitored",
        monitor,
    );
    registry.register(
        "server_health",
        "1 for the server's worst application health as its agent reports it: up, slow, down or unknown",
        health,
    );
    registry.register(
        "server_reports",
        "Reports taken from the server's agent",
        reports,
    );
}

fn register_pools(registry: &mut Registry, pools: &Pools) {
    let size = Family::<PoolLabel, Gauge>::default();
    let desired = Family::<ServiceLabel, Gauge>::default();
    let free = Family::<ServiceLabel, Gauge>::default();
    let weight = Family::<MemberLabel, FloatGauge>::default();
    for pool in &pools.pools {
        for m in &pool.members {
            size.get_or_create(&PoolLabel {
                service: pool.service.clone().into(),
                state: m.state.clone().into(),
            })
            .inc();
            if let Some(w) = m.weight {
                weight
                    .get_or_create(&MemberLabel {
                        service: pool.service.clone().into(),
                        server: m.server.clone().into(),
                    })
                    .set(w);
            }
        }
        let service = ServiceLabel {
            service: pool.service.clone().into(),
        };
        if let Some(n) = pool.desired_servers {
            desired.get_or_create(&service).set(i64::from(n));
        }
        free.get_or_create(&service)
            .set(i64::try_from(pool.free.len()).unwrap_or(i64::MAX));
    }
    registry.register(
        "pool_servers",
        "Servers in the service's pool, by state (allocated, draining, failed, down)",
        size,
    );
    registry.register(
        "pool_desired_servers",
        "The pool size the scaling policy wants for the utilization of its last evaluation, within min_servers..max_servers (absent while scaling is disabled)",
        desired,
    );
    registry.register(
        "pool_free_servers",
        "Free servers that could join the service (functional or not)",
        free,
    );
    registry.register(
        "pool_weight",
        "The member's weight in force on the nodes, in the file's units",
        weight,
    );
}

fn register_streams(registry: &mut Registry, stats: &ManagerStats) {
    let counter = |n: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        c
    };
    registry.register(
        "agent_streams_accepted",
        "Agent streams that finished their TLS handshake",
        counter(stats.streams_accepted),
    );
    let refused = Family::<ReasonLabel, Counter>::default();
    for (reason, n) in [
        ("handshake", stats.handshakes_refused),
        ("message", stats.messages_rejected),
        ("stale-report", stats.reports_stale),
        ("settings", stats.settings_refused),
        ("identity", stats.identities_refused),
    ] {
        refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned().into(),
            })
            .inc_by(n);
    }
    registry.register(
        "agent_refused",
        "What the agent streams refused, by reason: a TLS handshake, a message (every reason of agent_messages_rejected), a stale report, a settings answer from the wrong host, a certificate other than the pinned one",
        refused,
    );
    let messages = Family::<ReasonLabel, Counter>::default();
    for (reason, n) in &stats.messages_rejected_by_reason {
        messages
            .get_or_create(&ReasonLabel {
                reason: reason.clone().into(),
            })
            .inc_by(*n);
    }
    let reasons: Vec<&str> = Rejection::ALL.iter().map(|r| r.label()).collect();
    registry.register(
        "agent_messages_rejected",
        format!(
            "Messages the agent streams rejected, by reason: {}",
            reasons.join(", ")
        ),
        messages,
    );
    registry.register(
        "agent_reports",
        "Reports taken from every agent",
        counter(stats.reports_accepted),
    );
    let announcements = Family::<ReasonLabel, Counter>::default();
    let mut counts: Vec<(String, u64)> = vec![
        ("accepted".to_owned(), stats.announcements_accepted),
        ("rate-limited".to_owned(), stats.announcements_rate_limited),
        ("overloaded".to_owned(), stats.announcements_overloaded),
    ];
    counts.extend(stats.announcements_rejected.clone());
    for (reason, n) in counts {
        announcements
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc_by(n);
    }
    registry.register(
        "discovery_announcements",
        "Discovery datagrams: accepted, or refused by reason",
        announcements,
    );
}
