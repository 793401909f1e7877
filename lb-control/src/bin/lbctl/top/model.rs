//! What `lbctl top` shows, built from the daemon's answers: per service its
//! members with their utilization, weight and rates, its free pool, and
//! the latest events. Rates are the counters' change between two polls.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Instant,
};

use lb_control::{
    manager::{controller::PoolReport, events::Event},
    node::{ServerView, ServiceView},
};

/// Events kept for the view.
pub const EVENTS_KEPT: usize = 50;

/// One poll of the daemon.
#[derive(Debug, Default)]
pub struct Poll {
    pub program_id: u32,
    pub table_generation: u32,
    pub manager_generation: Option<u64>,
    pub services: Vec<ServiceView>,
    pub servers: Vec<ServerView>,
    /// The manager's pools; `None` on a node without the manager.
    pub pools: Option<Vec<PoolReport>>,
    /// Events after the last one seen.
    pub events: Vec<Event>,
}

/// A member's line.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub server: String,
    pub state: String,
    pub utilization: Option<f64>,
    pub weight: Option<f64>,
    pub flows_per_s: Option<f64>,
    pub packets_per_s: Option<f64>,
}

/// A free server's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Free {
    pub server: String,
    pub state: String,
    pub utilization: Option<f64>,
}

/// One service as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRows {
    pub name: String,
    pub endpoint: String,
    pub flows_per_s: Option<f64>,
    pub packets_per_s: Option<f64>,
    pub members: Vec<Row>,
    pub free: Vec<Free>,
}

/// `lbctl top`'s state across polls.
#[derive(Debug, Default)]
pub struct Top {
    pub program_id: u32,
    pub table_generation: u32,
    pub manager_generation: Option<u64>,
    pub services: Vec<ServiceRows>,
    /// The service shown, an index into `services`.
    pub selected: usize,
    pub paused: bool,
    /// The daemon's refusal of the last poll (the view goes on polling).
    pub error: Option<String>,
    pub events: VecDeque<Event>,
    /// The id of the newest event seen (the next poll asks after it).
    pub last_event: u64,
    /// (service, server or "" for the service) → (when, new flows, packets).
    counters: BTreeMap<(String, String), (Instant, u64, u64)>,
}

impl Top {
    /// Takes one poll made at `at`.
    pub fn update(&mut self, poll: Poll, at: Instant) {
        self.program_id = poll.program_id;
        self.table_generation = poll.table_generation;
        self.manager_generation = poll.manager_generation;
        let selected = self.services.get(self.selected).map(|s| s.name.clone());
        self.services = poll
            .services
            .iter()
            .map(|s| self.service_rows(s, &poll, at))
            .collect();
        self.selected = selected
            .and_then(|name| self.services.iter().position(|s| s.name == name))
            .unwrap_or(0);
        for e in poll.events {
            self.last_event = self.last_event.max(e.id);
            self.events.push_back(e);
            if self.events.len() > EVENTS_KEPT {
                self.events.pop_front();
            }
        }
    }

    fn service_rows(&mut self, s: &ServiceView, poll: &Poll, at: Instant) -> ServiceRows {
        let (flows_per_s, packets_per_s) =
            self.rates((s.name.clone(), String::new()), at, s.new_flows, s.packets);
        let report = poll
            .pools
            .as_ref()
            .and_then(|p| p.iter().find(|p| p.service == s.name));
        let mut members = Vec::new();
        for server in &poll.servers {
            let Some(b) = server.services.iter().find(|b| b.service == s.name) else {
                continue;
            };
            let member = report.and_then(|p| p.members.iter().find(|m| m.server == server.name));
            let (flows, packets) = self.rates(
                (s.name.clone(), server.name.clone()),
                at,
                b.new_flows,
                b.packets,
            );
            members.push(Row {
                server: server.name.clone(),
                state: member.map_or_else(|| b.state.clone(), |m| m.state.clone()),
                utilization: member.and_then(|m| m.utilization),
                weight: b.weight.parse().ok(),
                flows_per_s: flows,
                packets_per_s: packets,
            });
        }
        let free = report.map_or_else(Vec::new, |p| {
            p.free
                .iter()
                .map(|m| Free {
                    server: m.server.clone(),
                    state: m.state.clone(),
                    utilization: m.utilization,
                })
                .collect()
        });
        ServiceRows {
            name: s.name.clone(),
            endpoint: format!("{}:{} {}", s.vip, s.port, s.protocol),
            flows_per_s,
            packets_per_s,
            members,
            free,
        }
    }

    /// Per-second rates of two counters since their last poll (none on the
    /// first, or after a counter went back: a restarted node).
    fn rates(
        &mut self,
        key: (String, String),
        at: Instant,
        flows: u64,
        packets: u64,
    ) -> (Option<f64>, Option<f64>) {
        let rate = |now: u64, before: u64, secs: f64| {
            #[expect(clippy::cast_precision_loss, reason = "rates, not exact counts")]
            now.checked_sub(before).map(|d| d as f64 / secs)
        };
        let out = match self.counters.get(&key) {
            Some(&(when, f, p)) => {
                let secs = at.saturating_duration_since(when).as_secs_f64();
                if secs > 0.0 {
                    (rate(flows, f, secs), rate(packets, p, secs))
                } else {
                    (None, None)
                }
            }
            None => (None, None),
        };
        self.counters.insert(key, (at, flows, packets));
        out
    }

    /// The next (`forward`) or previous service.
    pub fn switch(&mut self, forward: bool) {
        let n = self.services.len();
        if n > 0 {
            self.selected = if forward {
                (self.selected + 1) % n
            } else {
                (self.selected + n - 1) % n
            };
        }
    }
}
