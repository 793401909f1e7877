//! The manager's control loop: reads the server database and the
//! configuration file, asks the policy what to do for each service, and
//! carries it out — allocation, drain, de-allocation, failure, restoration,
//! weights — each as a recorded change: configuration file first (atomic,
//! compare-and-swap), then a new generation to every node, acked by all or
//! rolled back.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_proto::{ConnectionSettings, HealthState, Message, Reconfigure, SettingsKind, tls::Pki};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::warn;

use super::{
    config_file::{ConfigFile, Edit, Snapshot},
    events::{EventLog, NewEvent},
    failpoint,
    generation::Generations,
    policy::{
        Candidate, Decision, Health, Member, MemberState, PolicyState, PoolView, WeightTracker,
    },
};
use crate::{
    config::{Config, ServerConfig, ServerState, ServiceConfig},
    manager::{Manager, ManagerConfig, db::Monitor},
    nodelink::{NodeAgent, NodeLink, desired_service, remote::RemoteNode, retired_service},
};

/// EWMA factor of the weight trackers.
const WEIGHT_ALPHA: f64 = 0.3;
/// How far utilization must move back past a level before the crossing
/// back is an event.
const CROSSING_HYSTERESIS: f64 = 0.1;
/// Report intervals a band is held before the next crossing is an event.
const CROSSING_DWELL: u32 = 5;
/// EWMA factor of the utilization crossings are judged on.
const CROSSING_ALPHA: f64 = 0.3;
/// Weights are republished at most this often.
const WEIGHT_INTERVAL: Duration = Duration::from_secs(5);

/// What the manager keeps across its restarts besides the generation:
/// the weights the nodes have (so a restart rebuilds the same tables) and
/// when each drain began (so a restart does not restart its timeout).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    weights: BTreeMap<String, u32>,
    /// Server → wall-clock ms when its drain began.
    drains: BTreeMap<String, u64>,
}

/// The weights a manager last published (from its state directory), to
/// apply with the file at start so a restart rebuilds the same tables.
pub fn persisted_weights(state_dir: &std::path::Path) -> BTreeMap<String, u32> {
    std::fs::read(state_dir.join("controller-state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Persisted>(&b).ok())
        .map(|p| p.weights)
        .unwrap_or_default()
}

/// Where a server's utilization sits relative to a service's levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Band {
    Low,
    Mid,
    High,
}

struct Ops {
    generations: Generations,
    policies: BTreeMap<String, PolicyState>,
    trackers: BTreeMap<String, WeightTracker>,
    persisted: Persisted,
    /// Server → (state seen, since when).
    since: BTreeMap<String, (ServerState, Instant)>,
    /// Per (service, server): the band last reported, and since when.
    bands: BTreeMap<(String, String), (Band, Instant)>,
    smoothed: BTreeMap<(String, String), f64>,
    /// The last report time already judged for threshold crossings, per
    /// (service, server).
    judged: BTreeMap<(String, String), Instant>,
}

/// A pool as `lbctl pool` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolReport {
    pub service: String,
    pub application: String,
    pub generation: u64,
    pub members: Vec<PoolMember>,
    pub free: Vec<PoolMember>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolMember {
    pub server: String,
    pub state: String,
    pub monitor: String,
    pub health: String,
    pub utilization: Option<f64>,
    pub capacity: f64,
    pub weight: Option<u32>,
    pub vip_established: Option<u64>,
}

/// The control loop and the operator's actions.
pub struct Controller {
    manager: Arc<Manager>,
    config: ManagerConfig,
    file: ConfigFile,
    nodes: Vec<NodeLink>,
    pub events: Arc<EventLog>,
    state_path: PathBuf,
    started: Instant,
    ops: Mutex<Ops>,
    /// The manager's own probes, per (service, server).
    probes: std::sync::Mutex<BTreeMap<(String, String), ProbeState>>,
}

/// Rise and fall of the manager's probe.
const PROBE_RISE: u32 = 2;
const PROBE_FALL: u32 = 3;

/// One member's manager-side probe.
#[derive(Debug, Clone, Default)]
struct ProbeState {
    ok_streak: u32,
    fail_streak: u32,
    /// `Some(true)` up, `Some(false)` down, `None` not enough probes yet.
    up: Option<bool>,
    detail: String,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Allocated => "allocated",
        ServerState::Draining => "draining",
        ServerState::Down => "down",
        ServerState::Failed => "failed",
        ServerState::Free => "free",
    }
}

impl Controller {
    /// Sets up the controller: state directory, generation counter, event
    /// log, links to the local node and every `[[manager.node]]`.
    pub fn new(
        manager: Arc<Manager>,
        config_path: PathBuf,
        local: Arc<NodeAgent>,
    ) -> Result<Arc<Self>, String> {
        let config = manager.config.clone();
        let dir = config.state_dir.clone();
        let generations = Generations::open(&dir)?;
        let state_path = dir.join("controller-state.json");
        let persisted: Persisted = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}: {e} (move it away to start with configured weights)",
                    state_path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", state_path.display())),
        };
        let mut nodes = vec![NodeLink::Local(local)];
        if !config.nodes.is_empty() {
            let Some(tls_dir) = &config.tls_dir else {
                return Err("manager.node needs manager.tls_dir".into());
            };
            let pki = Pki::new(tls_dir);
            for n in &config.nodes {
                let remote = RemoteNode::new(n.clone(), &config.name, &pki)
                    .map_err(|e| format!("manager.node `{}`: {e}", n.name))?;
                nodes.push(NodeLink::Remote(Arc::new(remote)));
            }
        }
        let events = Arc::new(EventLog::open(Some(&dir)));
        let started = Instant::now();
        Ok(Arc::new(Self {
            manager,
            config,
            file: ConfigFile::new(config_path),
            nodes,
            events,
            state_path,
            started,
            probes: std::sync::Mutex::new(BTreeMap::new()),
            ops: Mutex::new(Ops {
                generations,
                policies: BTreeMap::new(),
                trackers: BTreeMap::new(),
                persisted,
                since: BTreeMap::new(),
                bands: BTreeMap::new(),
                smoothed: BTreeMap::new(),
                judged: BTreeMap::new(),
            }),
        }))
    }

    /// The weights the nodes were last given (applied by the local node
    /// at start, before the first generation, so a restart changes no
    /// table).
    pub async fn published_weights(&self) -> BTreeMap<String, u32> {
        self.ops.lock().await.persisted.weights.clone()
    }

    /// The agents' longest reconnect backoff (their 10 s cap plus jitter):
    /// failure verdicts wait for it after a start.
    fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.config.agent_backoff_ms)
    }

    /// Runs the loop forever: evaluates four times per report interval.
    pub async fn run(self: Arc<Self>) {
        tokio::spawn(self.clone().probe_loop());
        let period = (self.config.report_interval() / 4).max(Duration::from_millis(25));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.tick().await;
        }
    }

    /// Sends every service of the file to every node with a new generation
    /// (at start, after a reload): the nodes converge on the file.
    pub async fn sync_all(&self, why: &str) -> Result<u64, String> {
        let mut ops = self.ops.lock().await;
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let mut services: Vec<String> = snapshot
            .config
            .service
            .iter()
            .map(|s| s.name.get_ref().clone())
            .collect();
        // Services a node still has that the file no longer names.
        for node in &self.nodes {
            if let Ok(list) = node
                .status(false, Duration::from_millis(self.config.ack_timeout_ms))
                .await
            {
                for b in list {
                    if !services.contains(&b.service) && !b.service.starts_with('#') {
                        services.push(b.service);
                    }
                }
            }
        }
        let generation = ops.generations.take_next()?;
        let started = Instant::now();
        let weights = ops.persisted.weights.clone();
        let result = self
            .push("sync", &snapshot.config, &services, generation, &weights)
            .await;
        match result {
            Ok(_) => {
                self.events.record(
                    NewEvent::new(
                        "synced",
                        format!(
                            "{why}: {} services sent to {} nodes, all acked",
                            services.len(),
                            self.nodes.len()
                        ),
                    )
                    .took(started.elapsed())
                    .generation(generation),
                );
                Ok(generation)
            }
            Err(failures) => {
                let text = failures.join("; ");
                self.events.record(
                    NewEvent::new("sync-failed", format!("{why}: {text}")).generation(generation),
                );
                Err(text)
            }
        }
    }

    /// One evaluation of every service.
    pub async fn tick(&self) {
        let mut ops = self.ops.lock().await;
        let snapshot = match self.file.read() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "configuration file unreadable; no decisions until it is fixed");
                return;
            }
        };
        let now = Instant::now();
        self.track_states(&mut ops, &snapshot.config, now);
        self.crossings(&mut ops, &snapshot.config).await;
        self.drains(&mut ops, &snapshot.config).await;
        let mut decisions = Vec::new();
        for svc in &snapshot.config.service {
            let name = svc.name.get_ref().clone();
            let view = self.pool_view(&ops, &snapshot.config, svc, now).await;
            let started = self.started;
            let state = ops
                .policies
                .entry(name.clone())
                .or_insert_with(|| PolicyState::new(started));
            for d in state.evaluate(
                &svc.scaling,
                &view,
                self.config.report_interval(),
                self.max_backoff(),
                now,
            ) {
                decisions.push((name.clone(), d));
            }
        }
        for (service, decision) in decisions {
            self.execute(&mut ops, &service, decision).await;
        }
        self.weights(&mut ops).await;
    }

    fn track_states(&self, ops: &mut Ops, config: &Config, now: Instant) {
        let started = self.started;
        for s in &config.server {
            let entry = ops
                .since
                .entry(s.name.get_ref().clone())
                .or_insert((s.state, started));
            if entry.0 != s.state {
                *entry = (s.state, now);
            }
        }
    }

    /// The policy's view of one service.
    async fn pool_view(
        &self,
        ops: &Ops,
        config: &Config,
        svc: &ServiceConfig,
        _now: Instant,
    ) -> PoolView {
        let name = svc.name.get_ref();
        let app = svc.application();
        let db = self.manager.db.lock().await;
        let mut view = PoolView::default();
        let mut in_config = BTreeSet::new();
        for s in &config.server {
            in_config.insert(s.name.get_ref().clone());
        }
        for s in config.members(name) {
            let state = match s.state {
                ServerState::Allocated => MemberState::Allocated,
                ServerState::Draining => MemberState::Draining,
                ServerState::Failed => MemberState::Failed,
                // Taken out by the operator: not the policy's to judge.
                ServerState::Down | ServerState::Free => continue,
            };
            let server = s.name.get_ref();
            let record = db.get(server);
            let report = record.and_then(|r| r.last_report.as_ref());
            let status = report.and_then(|r| r.applications.iter().find(|a| a.name == app));
            view.members.push(Member {
                name: server.clone(),
                state,
                monitored: record.is_some_and(|r| r.monitor == Monitor::Monitored),
                health: match (status.map(|a| a.health.state), self.probe_up(name, server)) {
                    (Some(HealthState::Down), _) | (_, Some(false)) => Health::Down,
                    (Some(HealthState::Up), _) => Health::Up,
                    _ => Health::Unknown,
                },
                utilization: report.map(|r| r.utilization.value),
                capacity: record.map_or(1.0, |r| r.hello.cores).max(0.01),
                since: ops.since.get(server).map_or(self.started, |x| x.1),
            });
        }
        let free_in_config: BTreeSet<&str> = config
            .server
            .iter()
            .filter(|s| s.state == ServerState::Free)
            .map(|s| s.name.get_ref().as_str())
            .collect();
        for record in db.iter() {
            let hosts = record.hello.applications.iter().any(|a| a.name == app);
            let free = free_in_config.contains(record.host.as_str())
                || (!in_config.contains(&record.host) && record.hello.spare);
            if !hosts || !free {
                continue;
            }
            let report = record.last_report.as_ref();
            let status = report.and_then(|r| r.applications.iter().find(|a| a.name == app));
            let ready = status.is_some_and(|a| {
                a.readiness.iter().any(|x| x.vip == svc.vip && x.ready)
                    && a.health.state == HealthState::Up
            });
            view.free.push(Candidate {
                name: record.host.clone(),
                utilization: report.map(|r| r.utilization.value),
                capacity: record.hello.cores.max(0.01),
                functional: record.monitor == Monitor::Monitored && ready,
            });
        }
        view
    }

    fn probe_up(&self, service: &str, server: &str) -> Option<bool> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(service.to_owned(), server.to_owned()))
            .and_then(|p| p.up)
    }

    /// The manager's own probes (`[service.scaling] probe_port`): a TCP
    /// connect to each member's address, once per report interval.
    async fn probe_loop(self: Arc<Self>) {
        let interval = self
            .config
            .report_interval()
            .max(Duration::from_millis(100));
        let timeout = interval.min(Duration::from_secs(1));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(snapshot) = self.file.read() else {
                continue;
            };
            let mut targets = Vec::new();
            for svc in &snapshot.config.service {
                let Some(port) = svc.scaling.probe_port else {
                    continue;
                };
                for s in snapshot.config.members(svc.name.get_ref()) {
                    targets.push((
                        svc.name.get_ref().clone(),
                        s.name.get_ref().clone(),
                        std::net::SocketAddr::new(s.address, port),
                    ));
                }
            }
            let results = futures::future::join_all(targets.into_iter().map(
                |(service, server, addr)| async move {
                    let outcome =
                        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                            .await
                        {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                            Err(_) => Err(format!("connect {addr}: no answer within {timeout:?}")),
                        };
                    (service, server, outcome)
                },
            ))
            .await;
            let mut changes = Vec::new();
            {
                let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
                let live: BTreeSet<(String, String)> = results
                    .iter()
                    .map(|(a, b, _)| (a.clone(), b.clone()))
                    .collect();
                probes.retain(|k, _| live.contains(k));
                for (service, server, outcome) in results {
                    let p = probes.entry((service.clone(), server.clone())).or_default();
                    let before = p.up;
                    match outcome {
                        Ok(()) => {
                            p.ok_streak += 1;
                            p.fail_streak = 0;
                            if p.ok_streak >= PROBE_RISE {
                                p.up = Some(true);
                            }
                        }
                        Err(detail) => {
                            p.fail_streak += 1;
                            p.ok_streak = 0;
                            p.detail = detail;
                            if p.fail_streak >= PROBE_FALL {
                                p.up = Some(false);
                            }
                        }
                    }
                    if before.is_some() && before != p.up || before.is_none() && p.up == Some(false)
                    {
                        changes.push((service, server, p.up, p.detail.clone()));
                    }
                }
            }
            for (service, server, up, detail) in changes {
                let reason = if up == Some(true) {
                    "the manager's probe answers again".to_owned()
                } else {
                    format!("the manager's probe fails {PROBE_FALL} times in a row: {detail}")
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
    async fn crossings(&self, ops: &mut Ops, config: &Config) {
        let db = self.manager.db.lock().await;
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut found = Vec::new();
        let dwell = self.config.report_interval() * CROSSING_DWELL;
        for svc in &config.service {
            let policy = &svc.scaling;
            for s in config.members(svc.name.get_ref()) {
                let server = s.name.get_ref();
                let Some(record) = db.get(server) else {
                    continue;
                };
                let (Some(report), Some(at)) = (&record.last_report, record.last_report_at) else {
                    continue;
                };
                let u = report.utilization.value;
                let key = (svc.name.get_ref().clone(), server.clone());
                // Each new report moves a smoothed figure; a rise to the
                // upper level counts at once (it starts an allocation), every
                // other move needs the smoothed figure past the level by
                // CROSSING_HYSTERESIS, so noise is not a stream of events.
                let fresh = ops.judged.get(&key) != Some(&at);
                let smooth = ops.smoothed.entry(key.clone()).or_insert(u);
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
                        found.push((svc.name.get_ref().clone(), server.clone(), u, band, arrived));
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

    async fn execute(&self, ops: &mut Ops, service: &str, decision: Decision) {
        let result = match decision {
            Decision::Allocate { candidate, reason } => {
                self.allocate_locked(ops, service, &candidate, &reason)
                    .await
            }
            Decision::Drain { server, reason } => {
                self.drain_locked(ops, service, &server, &reason).await
            }
            Decision::Fail { server, reason } => {
                let edits = [Edit::SetState {
                    server: server.clone(),
                    state: ServerState::Failed,
                }];
                self.simple_change(ops, "fail", "failed", service, &server, &edits, &reason)
                    .await
            }
            Decision::Restore { server, reason } => {
                let edits = [Edit::SetState {
                    server: server.clone(),
                    state: ServerState::Allocated,
                }];
                self.simple_change(
                    ops, "restore", "restored", service, &server, &edits, &reason,
                )
                .await
            }
            Decision::Notice { kind, message } => {
                self.events.record(
                    NewEvent::new("notice", format!("{kind:?}: {message}")).service(service),
                );
                Ok(())
            }
        };
        if let Err(e) = result {
            warn!(service, error = %e, "decision not carried out");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn simple_change(
        &self,
        ops: &mut Ops,
        action: &str,
        kind: &'static str,
        service: &str,
        server: &str,
        edits: &[Edit],
        reason: &str,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        let services = self.services_of(server, service)?;
        let generation = self.change(ops, action, &services, edits).await?;
        self.events.record(
            NewEvent::new(kind, reason)
                .service(service)
                .server(server)
                .took(t0.elapsed())
                .generation(generation),
        );
        Ok(())
    }

    /// The services a change of `server`'s state touches: every service it
    /// is listed in, and `service`.
    fn services_of(&self, server: &str, service: &str) -> Result<Vec<String>, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let mut out: Vec<String> = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name.get_ref() == server)
            .map(|s| s.services.iter().map(|n| n.get_ref().clone()).collect())
            .unwrap_or_default();
        if !out.iter().any(|s| s == service) {
            out.push(service.to_owned());
        }
        Ok(out)
    }

    /// Allocation, steps 2–5: settings over the agent stream, the file,
    /// the nodes.
    async fn allocate_locked(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
        reason: &str,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        self.events.record(
            NewEvent::new("allocating", reason)
                .service(service)
                .server(server),
        );
        let result = self.allocate_steps(ops, service, server).await;
        match result {
            Ok(generation) => {
                if let Some(p) = ops.policies.get_mut(service) {
                    p.record_change(Instant::now());
                }
                self.events.record(
                    NewEvent::new(
                        "allocated",
                        format!(
                            "in the pool on every node ({} nodes acked)",
                            self.nodes.len()
                        ),
                    )
                    .service(service)
                    .server(server)
                    .took(t0.elapsed())
                    .generation(generation),
                );
                Ok(())
            }
            Err(e) => {
                // A failed attempt counts as a change: the cooldown keeps
                // the next one from following at once.
                if let Some(p) = ops.policies.get_mut(service) {
                    p.record_change(Instant::now());
                }
                self.events.record(
                    NewEvent::new("allocation-failed", e.clone())
                        .service(service)
                        .server(server)
                        .took(t0.elapsed()),
                );
                Err(e)
            }
        }
    }

    async fn allocate_steps(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
    ) -> Result<u64, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let svc = snapshot
            .config
            .service
            .iter()
            .find(|s| s.name.get_ref() == service)
            .ok_or_else(|| format!("no service `{service}` in the configuration"))?;
        let app = svc.application().to_owned();
        let vip = svc.vip;
        let existing: Option<&ServerConfig> = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name.get_ref() == server);
        if let Some(s) = existing
            && s.state != ServerState::Free
            && s.services.iter().any(|n| n.get_ref() == service)
        {
            return Err(format!(
                "server `{server}` is already in service `{service}` ({})",
                state_name(s.state)
            ));
        }
        failpoint::hit("allocate.settings");
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let connection = self
            .manager
            .request_settings(server, SettingsKind::Connection, Some(app.clone()), timeout)
            .await
            .map_err(|e| format!("connection settings: {e}"))?;
        let Message::ConnectionSettings(ConnectionSettings {
            addresses,
            mac,
            interface,
            ..
        }) = connection
        else {
            return Err("connection settings: unexpected answer".into());
        };
        let auth = self
            .manager
            .request_settings(server, SettingsKind::Auth, Some(app), timeout)
            .await
            .map_err(|e| format!("auth settings: {e}"))?;
        let Message::AuthSettings(auth) = auth else {
            return Err("auth settings: unexpected answer".into());
        };
        let fingerprint = auth.server_fingerprint.to_string();
        self.events.record(
            NewEvent::new(
                "settings",
                format!(
                    "connection settings: {} mac {} on {}; auth settings: control port {}, certificate {} pinned",
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    mac,
                    interface,
                    auth.control_port,
                    fingerprint
                ),
            )
            .service(service)
            .server(server),
        );
        let address = match existing {
            Some(s) => s.address,
            None => *addresses
                .iter()
                .find(|a| a.is_ipv4() == vip.is_ipv4())
                .ok_or_else(|| {
                    format!(
                        "server `{server}` has no {} address for {vip}",
                        if vip.is_ipv4() { "IPv4" } else { "IPv6" }
                    )
                })?,
        };
        let mut edits = Vec::new();
        // The services the change touches on the nodes.
        let mut services = vec![service.to_owned()];
        match existing {
            Some(s) => {
                if s.state == ServerState::Free {
                    // A free server's `services` only recall what it served
                    // last: it now serves this one alone.
                    for other in s.services.iter().filter(|n| n.get_ref() != service) {
                        edits.push(Edit::LeaveService {
                            server: server.into(),
                            service: other.get_ref().clone(),
                        });
                    }
                } else {
                    // In other pools already: it joins this one too.
                    services.extend(
                        s.services
                            .iter()
                            .map(|n| n.get_ref().clone())
                            .filter(|n| n != service),
                    );
                }
                edits.push(Edit::JoinService {
                    server: server.into(),
                    service: service.into(),
                });
                edits.push(Edit::SetState {
                    server: server.into(),
                    state: ServerState::Allocated,
                });
                edits.push(Edit::SetMac {
                    server: server.into(),
                    mac: mac.to_string(),
                });
            }
            None => edits.push(Edit::AddServer {
                name: server.into(),
                address,
                mac: Some(mac.to_string()),
                services: vec![service.into()],
                state: ServerState::Allocated,
                weight: None,
            }),
        }
        edits.push(Edit::SetFingerprint {
            server: server.into(),
            fingerprint,
        });
        self.change(ops, "allocate", &services, &edits).await
    }

    /// Marks `server` draining (or, when it also serves other services,
    /// takes it out of this one, which keeps its flows the same way).
    async fn drain_locked(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
        reason: &str,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let Some(s) = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name.get_ref() == server)
        else {
            return Err(format!("no server `{server}` in the configuration"));
        };
        let shared = s.services.iter().filter(|n| n.get_ref() != service).count() > 0;
        let edits = if shared {
            vec![Edit::LeaveService {
                server: server.into(),
                service: service.into(),
            }]
        } else {
            vec![Edit::SetState {
                server: server.into(),
                state: ServerState::Draining,
            }]
        };
        let services = self.services_of(server, service)?;
        let generation = self.change(ops, "drain", &services, &edits).await?;
        if !shared {
            ops.persisted.drains.insert(server.to_owned(), wall_ms());
            self.save(ops);
        }
        if let Some(p) = ops.policies.get_mut(service) {
            p.record_change(Instant::now());
        }
        self.events.record(
            NewEvent::new(
                "draining",
                format!(
                    "{reason}{}",
                    if shared {
                        "; it serves other services too, so it left this one (its flows still reach it)"
                    } else {
                        ""
                    }
                ),
            )
            .service(service)
            .server(server)
            .took(t0.elapsed())
            .generation(generation),
        );
        Ok(())
    }

    /// Ends the drains that are complete (no connection on the VIP, no
    /// packet on any node for `drain_idle`) or timed out.
    async fn drains(&self, ops: &mut Ops, config: &Config) {
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let draining: Vec<(&ServerConfig, &ServiceConfig)> = config
            .server
            .iter()
            .filter(|s| s.state == ServerState::Draining)
            .filter_map(|s| {
                let first = s.services.first()?;
                let svc = config
                    .service
                    .iter()
                    .find(|x| x.name.get_ref() == first.get_ref())?;
                Some((s, svc))
            })
            .collect();
        if draining.is_empty() {
            if !ops.persisted.drains.is_empty() {
                ops.persisted.drains.clear();
                self.save(ops);
            }
            return;
        }
        let mut statuses = Vec::new();
        for node in &self.nodes {
            statuses.push((node.name().to_owned(), node.status(false, timeout).await));
        }
        for (server, svc) in draining {
            let name = server.name.get_ref();
            let service = svc.name.get_ref();
            let policy = &svc.scaling;
            let began = *ops
                .persisted
                .drains
                .entry(name.clone())
                .or_insert_with(wall_ms);
            let elapsed = Duration::from_millis(wall_ms().saturating_sub(began));
            let established = {
                let db = self.manager.db.lock().await;
                db.get(name)
                    .filter(|r| r.monitor == Monitor::Monitored)
                    .and_then(|r| r.last_report.as_ref())
                    .and_then(|r| r.applications.iter().find(|a| a.name == svc.application()))
                    .map(|a| a.vip_established)
            };
            let mut idle_everywhere = true;
            let mut busiest = Duration::ZERO;
            for (node, status) in &statuses {
                match status {
                    Ok(list) => {
                        for b in list
                            .iter()
                            .filter(|b| &b.service == service && &b.server == name)
                        {
                            if let Some(ms) = b.idle_ms {
                                let idle = Duration::from_millis(ms);
                                if idle < policy.drain_idle {
                                    idle_everywhere = false;
                                    busiest = busiest.max(policy.drain_idle - idle);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        idle_everywhere = false;
                        warn!(node, error = %e, "no status from node; drain waits");
                    }
                }
            }
            if established == Some(0) && idle_everywhere {
                let reason = format!(
                    "drained after {:.1} s: no connection on {}:{} and no packet on any node for {:?}",
                    elapsed.as_secs_f64(),
                    svc.vip,
                    svc.port,
                    policy.drain_idle
                );
                let _ = self.release(ops, service, name, &reason, false).await;
            } else if elapsed >= policy.drain_timeout {
                let mut flows = 0;
                for node in &self.nodes {
                    if let Ok(list) = node.status(true, timeout).await {
                        flows += list
                            .iter()
                            .filter(|b| &b.service == service && &b.server == name)
                            .filter_map(|b| b.flows)
                            .sum::<u64>();
                    }
                }
                let reason = format!(
                    "drain timeout {:?} passed with {} connections reported on the VIP; {flows} flow entries invalidated",
                    policy.drain_timeout,
                    established.map_or("unknown".into(), |n| n.to_string()),
                );
                let _ = self.release(ops, service, name, &reason, true).await;
            }
        }
    }

    /// Returns a drained server to the free pool; `invalidate`: first put it
    /// down so the flows still pointing at it are re-hashed.
    async fn release(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
        reason: &str,
        invalidate: bool,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        let services = self.services_of(server, service)?;
        if invalidate {
            let edits = [Edit::SetState {
                server: server.into(),
                state: ServerState::Down,
            }];
            self.change(ops, "deallocate", &services, &edits).await?;
        }
        let edits = [Edit::SetState {
            server: server.into(),
            state: ServerState::Free,
        }];
        let generation = self.change(ops, "deallocate", &services, &edits).await?;
        ops.persisted.drains.remove(server);
        ops.persisted.weights.remove(server);
        ops.trackers.remove(server);
        self.save(ops);
        self.events.record(
            NewEvent::new("deallocated", format!("{reason}; back in the free pool"))
                .service(service)
                .server(server)
                .took(t0.elapsed())
                .generation(generation),
        );
        Ok(())
    }

    /// Weights follow capacity and idle share; a service whose weights
    /// moved enough is sent again (no file change: weights are runtime
    /// state, kept in the manager's state directory).
    async fn weights(&self, ops: &mut Ops) {
        let Ok(snapshot) = self.file.read() else {
            return;
        };
        let now = Instant::now();
        let mut changed_servers = BTreeSet::new();
        {
            let db = self.manager.db.lock().await;
            for svc in snapshot
                .config
                .service
                .iter()
                .filter(|s| s.scaling.enabled && s.scaling.dynamic_weights)
            {
                for s in snapshot.config.members(svc.name.get_ref()) {
                    if s.state != ServerState::Allocated {
                        continue;
                    }
                    let server = s.name.get_ref();
                    let Some(record) = db.get(server).filter(|r| r.monitor == Monitor::Monitored)
                    else {
                        continue;
                    };
                    let Some(report) = &record.last_report else {
                        continue;
                    };
                    let persisted = ops.persisted.weights.get(server).copied();
                    let tracker = ops.trackers.entry(server.clone()).or_insert_with(|| {
                        WeightTracker::new(
                            record.hello.cores.max(0.01),
                            WEIGHT_ALPHA,
                            WEIGHT_INTERVAL,
                        )
                        .starting_at(persisted, now)
                    });
                    if let Some(w) = tracker.observe(report.utilization.value, now) {
                        ops.persisted.weights.insert(server.clone(), w);
                        changed_servers.insert(server.clone());
                    }
                }
            }
        }
        if changed_servers.is_empty() {
            return;
        }
        let services: Vec<String> = snapshot
            .config
            .service
            .iter()
            .filter(|svc| {
                snapshot
                    .config
                    .members(svc.name.get_ref())
                    .any(|m| changed_servers.contains(m.name.get_ref()))
            })
            .map(|s| s.name.get_ref().clone())
            .collect();
        self.save(ops);
        let Ok(generation) = ops.generations.take_next() else {
            return;
        };
        let weights = ops.persisted.weights.clone();
        let detail: Vec<String> = changed_servers
            .iter()
            .map(|s| format!("{s}={}", weights.get(s).copied().unwrap_or_default()))
            .collect();
        match self
            .push("weights", &snapshot.config, &services, generation, &weights)
            .await
        {
            Ok(_) => {
                self.events.record(
                    NewEvent::new(
                        "weights",
                        format!("weights follow idle capacity: {}", detail.join(", ")),
                    )
                    .generation(generation),
                );
            }
            Err(f) => {
                self.events
                    .record(NewEvent::new("weights-failed", f.join("; ")).generation(generation));
            }
        }
    }

    fn save(&self, ops: &Ops) {
        match serde_json::to_vec_pretty(&ops.persisted) {
            Ok(bytes) => {
                if let Err(e) = crate::atomic_file::write(&self.state_path, &bytes) {
                    warn!(file = %self.state_path.display(), error = %e, "cannot record controller state");
                }
            }
            Err(e) => warn!(error = %e, "cannot encode controller state"),
        }
    }

    /// One recorded change: the file (compare-and-swap), a generation, every
    /// node; on any node's failure the file and the nodes go back.
    async fn change(
        &self,
        ops: &mut Ops,
        action: &str,
        services: &[String],
        edits: &[Edit],
    ) -> Result<u64, String> {
        let base: Snapshot = self.file.read().map_err(|e| e.to_string())?;
        failpoint::hit(&format!("{action}.file"));
        let updated = self.file.update(&base, edits).map_err(|e| e.to_string())?;
        if updated.rebased {
            self.events.record(NewEvent::new(
                "conflict",
                format!(
                    "{} was edited by someone else since it was read; the change ({}) was re-applied on top of that edit",
                    self.file.path().display(),
                    edits.iter().map(Edit::describe).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let described: Vec<String> = edits.iter().map(Edit::describe).collect();
        self.events.record(NewEvent::new(
            "recorded",
            format!("{}: {}", self.file.path().display(), described.join(", ")),
        ));
        failpoint::hit(&format!("{action}.generation"));
        let generation = ops.generations.take_next()?;
        failpoint::hit(&format!("{action}.nodes"));
        let weights = ops.persisted.weights.clone();
        let sent = Instant::now();
        match self
            .push(
                action,
                &updated.snapshot.config,
                services,
                generation,
                &weights,
            )
            .await
        {
            Ok(acks) => {
                self.events.record(
                    NewEvent::new(
                        "acked",
                        format!(
                            "{} applied and read back on every node ({})",
                            services.join(", "),
                            acks.join(", ")
                        ),
                    )
                    .took(sent.elapsed())
                    .generation(generation),
                );
                failpoint::hit(&format!("{action}.done"));
                Ok(generation)
            }
            Err(failures) => {
                let failure = failures.join("; ");
                let file = match self.file.restore(&updated.previous, &updated.snapshot) {
                    Ok(()) => "the file is back as it was".to_owned(),
                    Err(e) => format!("the file could not be restored: {e}"),
                };
                let nodes = match ops.generations.take_next() {
                    Ok(g) => match self
                        .push("rollback", &updated.previous.config, services, g, &weights)
                        .await
                    {
                        Ok(_) => {
                            format!("every node is back on the previous state (generation {g})")
                        }
                        Err(f) => format!(
                            "nodes not all back on the previous state (generation {g}): {}",
                            f.join("; ")
                        ),
                    },
                    Err(e) => e,
                };
                self.events.record(
                    NewEvent::new(
                        "rolled-back",
                        format!(
                            "{} failed on the nodes ({failure}); {file}; {nodes}",
                            edits
                                .iter()
                                .map(Edit::describe)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                    .generation(generation),
                );
                Err(format!(
                    "nodes did not all apply generation {generation}: {failure}"
                ))
            }
        }
    }

    /// Sends the desired state of `services` in `config` to every node and
    /// waits for every ack (each node retried `ack_retries` times).
    async fn push(
        &self,
        action: &str,
        config: &Config,
        services: &[String],
        generation: u64,
        weights: &BTreeMap<String, u32>,
    ) -> Result<Vec<String>, Vec<String>> {
        let mut failures = Vec::new();
        let mut acks = Vec::new();
        for name in services {
            let service =
                desired_service(config, name, weights).unwrap_or_else(|| retired_service(name));
            let message = Reconfigure {
                seq: 0,
                generation,
                service,
            };
            // The crash test's `<action>.partial` failpoint stops after the
            // first node applied and before the others heard of it.
            let partial = format!("{action}.partial");
            let rest = if failpoint::is_armed(&partial) {
                if let Some(first) = self.nodes.first() {
                    match self.send(first, message.clone()).await {
                        Ok(a) => acks.push(a),
                        Err(e) => failures.push(e),
                    }
                }
                failpoint::hit(&partial);
                &self.nodes[1..]
            } else {
                &self.nodes[..]
            };
            let results =
                futures::future::join_all(rest.iter().map(|node| self.send(node, message.clone())))
                    .await;
            for r in results {
                match r {
                    Ok(a) => acks.push(a),
                    Err(e) => failures.push(e),
                }
            }
        }
        if failures.is_empty() {
            Ok(acks)
        } else {
            Err(failures)
        }
    }

    /// Sends one reconfiguration to one node, with retries; `Ok` names the
    /// node and how long its ack took.
    async fn send(&self, node: &NodeLink, message: Reconfigure) -> Result<String, String> {
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let mut last = String::new();
        let started = Instant::now();
        for attempt in 0..=self.config.ack_retries {
            match node.reconfigure(message.clone(), timeout).await {
                Ok(ack) if ack.status == lb_proto::AckStatus::Ok => {
                    return Ok(format!(
                        "{} {} ms",
                        node.name(),
                        started.elapsed().as_millis()
                    ));
                }
                Ok(ack) => {
                    last = format!(
                        "node `{}` did not apply generation {}: {}",
                        node.name(),
                        ack.generation,
                        ack.error.unwrap_or_default()
                    )
                }
                Err(e) => last = e.to_string(),
            }
            if attempt < self.config.ack_retries {
                tokio::time::sleep(Duration::from_millis(200 * (attempt as u64 + 1))).await;
            }
        }
        Err(last)
    }

    // ----- operator actions (lbctl) -----

    /// `lbctl server allocate NAME [--service S]`.
    pub async fn allocate(&self, server: &str, service: Option<&str>) -> Result<(), String> {
        let service = match service {
            Some(s) => s.to_owned(),
            None => self.service_for(server).await?,
        };
        let mut ops = self.ops.lock().await;
        self.allocate_locked(
            &mut ops,
            &service,
            server,
            "operator: lbctl server allocate",
        )
        .await
    }

    /// `lbctl server drain NAME`: draining until idle or the drain timeout.
    pub async fn drain(&self, server: &str) -> Result<(), String> {
        let service = self.member_service(server)?;
        let mut ops = self.ops.lock().await;
        self.drain_locked(&mut ops, &service, server, "operator: lbctl server drain")
            .await
    }

    /// `lbctl server deallocate NAME`: back to the free pool now (its
    /// remaining flows keep reaching it until its index is reused).
    pub async fn deallocate(&self, server: &str) -> Result<(), String> {
        let service = self.member_service(server)?;
        let mut ops = self.ops.lock().await;
        self.release(
            &mut ops,
            &service,
            server,
            "operator: lbctl server deallocate",
            false,
        )
        .await
    }

    /// `lbctl service add`.
    pub async fn add_service(&self, edit: Edit) -> Result<u64, String> {
        let Edit::AddService { name, .. } = &edit else {
            return Err("not a service addition".into());
        };
        let name = name.clone();
        let mut ops = self.ops.lock().await;
        let t0 = Instant::now();
        let generation = self
            .change(
                &mut ops,
                "service-add",
                std::slice::from_ref(&name),
                std::slice::from_ref(&edit),
            )
            .await?;
        self.events.record(
            NewEvent::new("service-added", edit.describe())
                .service(&name)
                .took(t0.elapsed())
                .generation(generation),
        );
        Ok(generation)
    }

    /// `lbctl service remove`.
    pub async fn remove_service(&self, name: &str) -> Result<u64, String> {
        let mut ops = self.ops.lock().await;
        let t0 = Instant::now();
        let edit = Edit::RemoveService { name: name.into() };
        // Servers that served this service alone go back to the free pool;
        // the other services of shared ones are sent again as they are.
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let mut edits = vec![edit.clone()];
        let mut services = vec![name.to_owned()];
        for s in &snapshot.config.server {
            if !s.services.iter().any(|n| n.get_ref() == name) {
                continue;
            }
            let others: Vec<String> = s
                .services
                .iter()
                .map(|n| n.get_ref().clone())
                .filter(|n| n != name)
                .collect();
            if others.is_empty() && s.state != ServerState::Free {
                edits.push(Edit::SetState {
                    server: s.name.get_ref().clone(),
                    state: ServerState::Free,
                });
            }
            services.extend(others);
        }
        services.sort();
        services.dedup();
        let generation = self
            .change(&mut ops, "service-remove", &services, &edits)
            .await?;
        ops.policies.remove(name);
        self.events.record(
            NewEvent::new("service-removed", edit.describe())
                .service(name)
                .took(t0.elapsed())
                .generation(generation),
        );
        Ok(generation)
    }

    /// The one service of the file whose application `server` hosts.
    async fn service_for(&self, server: &str) -> Result<String, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let apps: Vec<String> = {
            let db = self.manager.db.lock().await;
            db.get(server)
                .map(|r| {
                    r.hello
                        .applications
                        .iter()
                        .map(|a| a.name.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let listed: Vec<String> = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name.get_ref() == server)
            .map(|s| s.services.iter().map(|n| n.get_ref().clone()).collect())
            .unwrap_or_default();
        let matches: Vec<String> = snapshot
            .config
            .service
            .iter()
            .filter(|s| {
                apps.iter().any(|a| a == s.application()) || listed.contains(s.name.get_ref())
            })
            .map(|s| s.name.get_ref().clone())
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!(
                "server `{server}` hosts no configured service's application; name one with --service"
            )),
            many => Err(format!(
                "server `{server}` could serve {many:?}; name one with --service"
            )),
        }
    }

    fn member_service(&self, server: &str) -> Result<String, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let s = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name.get_ref() == server)
            .ok_or_else(|| format!("no server `{server}` in the configuration"))?;
        if s.state == ServerState::Free {
            return Err(format!("server `{server}` is already free"));
        }
        s.services
            .first()
            .map(|n| n.get_ref().clone())
            .ok_or_else(|| format!("server `{server}` serves no service"))
    }

    /// `lbctl pool`: each service's members and free candidates.
    pub async fn pool(&self) -> Result<Vec<PoolReport>, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let ops = self.ops.lock().await;
        let now = Instant::now();
        let mut out = Vec::new();
        for svc in &snapshot.config.service {
            let view = self.pool_view(&ops, &snapshot.config, svc, now).await;
            let db = self.manager.db.lock().await;
            let row = |name: &str, state: String, utilization, capacity| {
                let record = db.get(name);
                let app = record
                    .and_then(|r| r.last_report.as_ref())
                    .and_then(|r| r.applications.iter().find(|a| a.name == svc.application()));
                PoolMember {
                    server: name.to_owned(),
                    state,
                    monitor: record
                        .map_or("none".into(), |r| format!("{:?}", r.monitor).to_lowercase()),
                    health: app.map_or("unknown".into(), |a| {
                        format!("{:?}", a.health.state).to_lowercase()
                    }),
                    utilization,
                    capacity,
                    weight: ops.persisted.weights.get(name).copied(),
                    vip_established: app.map(|a| a.vip_established),
                }
            };
            let mut members: Vec<PoolMember> = Vec::new();
            for s in snapshot.config.members(svc.name.get_ref()) {
                let m = view.members.iter().find(|m| m.name == *s.name.get_ref());
                members.push(row(
                    s.name.get_ref(),
                    state_name(s.state).to_owned(),
                    m.and_then(|m| m.utilization),
                    m.map_or(1.0, |m| m.capacity),
                ));
            }
            let free = view
                .free
                .iter()
                .map(|c| {
                    let mut r = row(
                        &c.name,
                        if c.functional {
                            "free"
                        } else {
                            "free (not functional)"
                        }
                        .into(),
                        c.utilization,
                        c.capacity,
                    );
                    r.weight = None;
                    r
                })
                .collect();
            out.push(PoolReport {
                service: svc.name.get_ref().clone(),
                application: svc.application().to_owned(),
                generation: ops.generations.current(),
                members,
                free,
            });
        }
        Ok(out)
    }
}
