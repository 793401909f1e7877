//! What the controller observes: each service's pool as the policy sees
//! it, the manager's own probes, and utilization crossings as events.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use lb_proto::{Forward, HealthState, HealthTracker, ProbeOutcome};

use super::{Controller, Observed, Ops, allocate::CANDIDATE_HOLD};
use crate::{
    config::{Config, ServerState, ServiceConfig},
    manager::db::{Monitor, ServerDb},
    manager::{
        events::NewEvent,
        policy::{Candidate, Member, MemberState, PoolView, judge_health},
    },
};

/// How far utilization must move back past a level before the crossing
/// back is an event.
const CROSSING_HYSTERESIS: f64 = 0.1;
/// Report intervals a band is held before the next crossing is an event.
const CROSSING_DWELL: u32 = 5;
/// EWMA factor of the utilization crossings are judged on.
const CROSSING_ALPHA: f64 = 0.3;

/// Where a server's utilization sits relative to a service's levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Band {
    Low,
    Mid,
    High,
}

/// Rise and fall of the manager's probe.
const PROBE_RISE: u32 = 2;
const PROBE_FALL: u32 = 3;
/// How long the manager's probe waits for a connection: as the agent's
/// default, long enough for a saturated server, whatever the interval.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Observed {
    /// Whether `server` is held out of the candidates at `now`.
    pub(super) fn is_held(&self, server: &str, now: Instant) -> bool {
        self.held
            .get(server)
            .is_some_and(|at| now.saturating_duration_since(*at) < CANDIDATE_HOLD)
    }
}

impl Controller {
    pub(super) fn track_states(&self, ops: &mut Ops, config: &Config, now: Instant) {
        // What the first evaluation finds was there before the manager
        // started; a server that shows up later entered just now.
        let first_seen = if ops.watching { now } else { self.started };
        ops.watching = true;
        ops.observed
            .held
            .retain(|_, at| now.saturating_duration_since(*at) < CANDIDATE_HOLD);
        for s in &config.server {
            let entry = ops
                .observed
                .since
                .entry(s.name.clone())
                .or_insert((s.state, first_seen));
            if entry.0 != s.state {
                *entry = (s.state, now);
            }
        }
    }

    /// The policy's view of one service.
    pub(super) async fn pool_view(
        &self,
        observed: &Observed,
        config: &Config,
        svc: &ServiceConfig,
        now: Instant,
    ) -> PoolView {
        let name = &svc.name;
        let app = svc.application();
        let db = self.manager.db.lock().await;
        let mut view = PoolView::default();
        for s in config.members(name) {
            let state = match s.state {
                ServerState::Allocated => MemberState::Allocated,
                ServerState::Draining => MemberState::Draining,
                ServerState::Failed => MemberState::Failed,
                // Taken out by the operator: not the policy's to judge.
                ServerState::Down | ServerState::Free => continue,
            };
            let server = &s.name;
            let record = db.get(server);
            let report = record.and_then(|r| r.last_report.as_ref());
            let status = report.and_then(|r| r.applications.iter().find(|a| a.name == app));
            let utilization = report.map(|r| r.utilization.value);
            // Busy is judged over the recent reports, not one 200 ms sample:
            // the latest figure or the smoothed one (the crossings'),
            // whichever is higher, so one dip of a saturated server's sample
            // does not turn its late answers into a failure.
            let smoothed = observed
                .smoothed
                .get(&(name.clone(), server.clone()))
                .copied();
            let busy = match (utilization, smoothed) {
                (Some(u), Some(s)) => Some(u.max(s)),
                (u, s) => u.or(s),
            };
            view.members.push(Member {
                name: server.clone(),
                state,
                monitored: record.is_some_and(|r| r.monitor == Monitor::Monitored),
                health: judge_health(
                    status.map(|a| &a.health),
                    self.manager_probe(name, server).as_ref(),
                    busy,
                    svc.scaling.upper,
                ),
                utilization,
                capacity: record.map_or(1.0, |r| r.hello.cores).max(0.01),
                since: observed.since.get(server).map_or(self.started, |x| x.1),
            });
        }
        view.free = free_candidates(&db, observed, config, svc, now);
        view
    }

    fn manager_probe(&self, service: &str, server: &str) -> Option<lb_proto::Health> {
        self.probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(service.to_owned(), server.to_owned()))
            .map(HealthTracker::health)
    }

    /// The manager's own probes (`[service.scaling] probe_port`): a TCP
    /// connect to each member's address, once per report interval.
    pub(super) async fn probe_loop(self: Arc<Self>) {
        let interval = self
            .config
            .report_interval()
            .max(Duration::from_millis(100));
        let timeout = PROBE_TIMEOUT;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(snapshot) = self.file.read_cached() else {
                continue;
            };
            let results = futures::future::join_all(
                probe_targets(&snapshot.config).map(|(service, server, addr)| async move {
                    (service, server, probe(addr, timeout).await)
                }),
            )
            .await;
            let mut changes = Vec::new();
            {
                let mut probes = self
                    .probes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let live: BTreeSet<(String, String)> = results
                    .iter()
                    .map(|(a, b, _)| (a.clone(), b.clone()))
                    .collect();
                probes.retain(|k, _| live.contains(k));
                for (service, server, outcome) in results {
                    let p = probes
                        .entry((service.clone(), server.clone()))
                        .or_insert_with(|| HealthTracker::new(PROBE_RISE, PROBE_FALL));
                    let first = p.state() == HealthState::Unknown;
                    if let Some(state) = p.record(outcome) {
                        // Said when a known state changes, or a first one is
                        // not up.
                        if !first || state != HealthState::Up {
                            let detail = p.health().detail.unwrap_or_default();
                            changes.push((service, server, state, detail));
                        }
                    }
                }
            }
            for (service, server, state, detail) in changes {
                let reason = match state {
                    HealthState::Up => "the manager's probe answers again".to_owned(),
                    HealthState::Slow => format!(
                        "the manager's probe times out {PROBE_FALL} times in a row (a failure only while the server is not busy): {detail}"
                    ),
                    _ => format!("the manager's probe fails {PROBE_FALL} times in a row: {detail}"),
                };
                self.events.record(
                    NewEvent::new("probe", reason)
                        .service(&service)
                        .server(&server),
                );
            }
        }
    }

    /// Threshold crossings, judged on each new report, as events.
    pub(super) async fn crossings(&self, ops: &mut Ops, config: &Config) {
        let db = self.manager.db.lock().await;
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut found = Vec::new();
        let dwell = self.config.report_interval() * CROSSING_DWELL;
        for svc in &config.service {
            let policy = &svc.scaling;
            for s in config.members(&svc.name) {
                let server = &s.name;
                let Some(record) = db.get(server) else {
                    continue;
                };
                let (Some(report), Some(at)) = (&record.last_report, record.last_report_at) else {
                    continue;
                };
                let u = report.utilization.value;
                let key = (svc.name.clone(), server.clone());
                // Each new report moves a smoothed figure; a rise to the
                // upper level counts at once (it starts an allocation), every
                // other move needs the smoothed figure past the level by
                // CROSSING_HYSTERESIS, so noise is not a stream of events.
                let fresh = ops.judged.get(&key) != Some(&at);
                let smooth = ops.observed.smoothed.entry(key.clone()).or_insert(u);
                if fresh {
                    *smooth += CROSSING_ALPHA * (u - *smooth);
                }
                let smooth = *smooth;
                // Nothing seen yet counts as between the levels, long ago.
                let previous = ops
                    .bands
                    .get(&key)
                    .copied()
                    .or(Some((Band::Mid, now.checked_sub(dwell).unwrap_or(now))));
                let band = match previous {
                    Some((Band::High, _)) if smooth > policy.upper - CROSSING_HYSTERESIS => {
                        Band::High
                    }
                    Some((Band::Low, _)) if smooth < policy.lower + CROSSING_HYSTERESIS => {
                        Band::Low
                    }
                    _ if u >= policy.upper => Band::High,
                    _ if smooth <= policy.lower => Band::Low,
                    _ => Band::Mid,
                };
                match previous {
                    None => {
                        ops.bands.insert(key.clone(), (band, now));
                    }
                    // A band is held at least CROSSING_DWELL report
                    // intervals before the next crossing counts.
                    Some((old, since))
                        if old != band
                            && fresh
                            && now.saturating_duration_since(since) >= dwell =>
                    {
                        ops.bands.insert(key.clone(), (band, now));
                        let arrived = wall - now.saturating_duration_since(at);
                        found.push((svc.name.clone(), server.clone(), u, band, arrived));
                    }
                    Some(_) => {}
                }
                ops.judged.insert(key, at);
            }
        }
        drop(db);
        for (service, server, u, band, arrived) in found {
            let level = match band {
                Band::High => format!("rose to {u:.2}, at or above the upper level"),
                Band::Low => format!("fell to {u:.2}, at or below the lower level"),
                Band::Mid => format!("is back between the levels ({u:.2})"),
            };
            self.events.record(
                NewEvent::new("crossed", format!("utilization {level}"))
                    .service(&service)
                    .server(&server)
                    .observed(arrived),
            );
        }
    }
}

/// The free servers of `svc`'s pool: those the file lists free, and spares
/// the file does not name, whose agents host its application.
fn free_candidates(
    db: &ServerDb,
    observed: &Observed,
    config: &Config,
    svc: &ServiceConfig,
    now: Instant,
) -> Vec<Candidate> {
    let app = svc.application();
    let in_config: BTreeSet<&str> = config.server.iter().map(|s| s.name.as_str()).collect();
    let free_in_config: BTreeSet<&str> = config
        .server
        .iter()
        .filter(|s| s.state == ServerState::Free)
        .map(|s| s.name.as_str())
        .collect();
    let mut free = Vec::new();
    for record in db.iter() {
        let hosts = record.hello.applications.iter().any(|a| a.name == app);
        let is_free = free_in_config.contains(record.host.as_str())
            || (!in_config.contains(record.host.as_str()) && record.hello.spare);
        if !hosts || !is_free {
            continue;
        }
        let report = record.last_report.as_ref();
        let status = report.and_then(|r| r.applications.iter().find(|a| a.name == app));
        let forward = config
            .server
            .iter()
            .find(|s| s.name == record.host)
            .map_or(Forward::L2, |s| s.forward);
        let ready = status.is_some_and(|a| {
            a.readiness
                .iter()
                .any(|x| x.vip == svc.vip && x.ready_for(forward))
                && a.health.state == HealthState::Up
        });
        free.push(Candidate {
            name: record.host.clone(),
            utilization: report.map(|r| r.utilization.value),
            capacity: record.hello.cores.max(0.01),
            functional: record.monitor == Monitor::Monitored
                && ready
                && !observed.is_held(&record.host, now),
        });
    }
    free
}

/// What the manager probes: each member of each service with a
/// `probe_port`, as (service, server, address).
fn probe_targets(config: &Config) -> impl Iterator<Item = (String, String, SocketAddr)> + '_ {
    config.service.iter().flat_map(move |svc| {
        svc.scaling.probe_port.into_iter().flat_map(move |port| {
            config.members(&svc.name).map(move |s| {
                (
                    svc.name.clone(),
                    s.name.clone(),
                    SocketAddr::new(s.address, port),
                )
            })
        })
    })
}

/// One probe: a TCP connect to `addr` within `timeout`.
async fn probe(addr: SocketAddr, timeout: Duration) -> ProbeOutcome {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => ProbeOutcome::Answered,
        Ok(Err(e)) => ProbeOutcome::Failed(format!("connect {addr}: {e}")),
        Err(_) => ProbeOutcome::TimedOut(format!("connect {addr}: no answer within {timeout:?}")),
    }
}
