//! The manager's control loop: reads the server database and the
//! configuration file, asks the policy what to do for each service, and
//! carries it out — allocation, drain, de-allocation, failure, restoration,
//! weights — each as a recorded change: configuration file first (atomic,
//! compare-and-swap), then a new generation to every node, acked by all or
//! rolled back.

mod allocate;
mod change;
mod drain;
mod error;
mod observe;
mod operator;
pub mod settings;
mod weights;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_proto::tls::Pki;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::warn;

use super::{
    config_file::{ConfigFile, Edit, Snapshot},
    events::{EventLog, NewEvent},
    generation::Generations,
    policy::{Decision, PolicyState},
    weights::ServiceWeights,
};
use crate::{
    config::ServerState,
    manager::{Manager, ManagerConfig, node_client::RemoteNode, node_link::NodeLink},
    node::reconfigure::Reconfigurer,
};

use allocate::Asked;
pub use error::{ControllerError, NodeFailure};
use observe::Band;
pub use operator::{PoolMember, PoolReport, Pools};

/// Service → server → weight in force, in hundredths of the file's.
pub type ServiceWeightMap = BTreeMap<String, BTreeMap<String, u32>>;

/// What the manager keeps across its restarts besides the generation:
/// the weights the nodes have (so a restart rebuilds the same tables), the
/// dynamic weights' factors, and when each drain began (so a restart does
/// not restart its timeout). (Earlier builds kept `weights` by server on
/// another scale; that key is ignored.)
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    /// Service → server → weight in force (hundredths).
    #[serde(default)]
    service_weights: ServiceWeightMap,
    /// Service → server → dynamic factor.
    #[serde(default)]
    factors: BTreeMap<String, BTreeMap<String, f64>>,
    /// Server → wall-clock ms when its drain began.
    #[serde(default)]
    drains: BTreeMap<String, u64>,
}

/// The weights a manager last published (from its state directory), to
/// apply with the file at start so a restart rebuilds the same tables.
#[must_use]
pub fn persisted_weights(state_dir: &std::path::Path) -> ServiceWeightMap {
    std::fs::read(state_dir.join("controller-state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Persisted>(&b).ok())
        .map(|p| p.service_weights)
        .unwrap_or_default()
}

/// What the loop has seen of the servers, which the policy's view and
/// `lbctl pool` are made of.
#[derive(Debug, Clone, Default)]
struct Observed {
    /// Server → (state seen, since when).
    since: BTreeMap<String, (ServerState, Instant)>,
    /// Per (service, server): utilization smoothed over the reports.
    smoothed: BTreeMap<(String, String), f64>,
    /// Free servers whose agent gave no usable settings, and when: not
    /// offered to the policy for [`allocate::CANDIDATE_HOLD`].
    held: BTreeMap<String, Instant>,
}

/// The loop's state as `lbctl pool` reads it, copied out after each
/// evaluation and each change: a reader never waits for `ops`, which a
/// change holds while the nodes apply it, and never sees a change the
/// nodes have not acked yet.
#[derive(Debug, Default)]
struct Published {
    /// The file as it stood then (`None` before the first evaluation).
    file: Option<Arc<Snapshot>>,
    observed: Observed,
    generation: u64,
    /// Service → server → weight in force (hundredths).
    service_weights: ServiceWeightMap,
    /// Service → the pool size its policy wanted at its last evaluation
    /// (services with scaling enabled).
    desired: BTreeMap<String, u32>,
}

/// The loop's state. One change at a time holds it, from the file to the
/// nodes' acks (each node's answer bounded by `ack_timeout_ms`); nothing
/// holds it while waiting for an agent.
struct Ops {
    generations: Generations,
    policies: BTreeMap<String, PolicyState>,
    /// Per service: factors, smoothed utilization, what was published.
    weights: BTreeMap<String, ServiceWeights>,
    persisted: Persisted,
    observed: Observed,
    /// The first evaluation is done: a server seen for the first time
    /// after it entered just now, not before the manager started.
    watching: bool,
    /// Per (service, server): the band last reported, and since when.
    bands: BTreeMap<(String, String), (Band, Instant)>,
    /// The last report time already judged for threshold crossings, per
    /// (service, server).
    judged: BTreeMap<(String, String), Instant>,
    /// The configuration file's last error, said once.
    file_error: Option<String>,
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
    published: std::sync::Mutex<Arc<Published>>,
    /// How long each node took to apply a change (for the metrics).
    latency: crate::metrics::ReconfigureLatency,
    /// The manager's own probes, per (service, server), counted like the
    /// agents' (rise 2, fall 3).
    probes: std::sync::Mutex<BTreeMap<(String, String), lb_proto::HealthTracker>>,
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
        local: Arc<Reconfigurer>,
    ) -> Result<Arc<Self>, ControllerError> {
        let config = manager.config.clone();
        let dir = config.state_dir.clone();
        let generations = Generations::open(&dir)?;
        let state_path = dir.join("controller-state.json");
        let persisted: Persisted = match std::fs::read(&state_path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ControllerError::StateCorrupt {
                    path: state_path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(source) => {
                return Err(ControllerError::StateRead {
                    path: state_path,
                    source,
                });
            }
        };
        let mut nodes = vec![NodeLink::Local(local)];
        if !config.nodes.is_empty() {
            let Some(tls_dir) = &config.tls_dir else {
                return Err(ControllerError::NodesWithoutTls);
            };
            let pki = Pki::new(tls_dir);
            for n in &config.nodes {
                let remote = RemoteNode::new(n.clone(), &config.name, &pki).map_err(|source| {
                    ControllerError::RemoteNode {
                        node: n.name.clone(),
                        source: Box::new(source),
                    }
                })?;
                nodes.push(NodeLink::Remote(Arc::new(remote)));
            }
        }
        let events = manager.events.clone();
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
            latency: crate::metrics::ReconfigureLatency::default(),
            published: std::sync::Mutex::new(Arc::new(Published {
                generation: generations.current(),
                service_weights: persisted.service_weights.clone(),
                ..Published::default()
            })),
            ops: Mutex::new(Ops {
                generations,
                policies: BTreeMap::new(),
                weights: BTreeMap::new(),
                persisted,
                observed: Observed::default(),
                watching: false,
                bands: BTreeMap::new(),
                judged: BTreeMap::new(),
                file_error: None,
            }),
        }))
    }

    /// The manager role this loop drives: agent streams, server database.
    #[must_use]
    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// How long each node took to apply the changes it acked.
    #[must_use]
    pub fn reconfigure_latency(&self) -> &crate::metrics::ReconfigureLatency {
        &self.latency
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
    pub async fn sync_all(&self, why: &str) -> Result<u64, ControllerError> {
        let mut ops = self.ops.lock().await;
        let snapshot = self.file.read()?;
        let mut services: Vec<String> = snapshot
            .config
            .service
            .iter()
            .map(|s| s.name.clone())
            .collect();
        // Services a node still has that the file no longer names, and the
        // newest generation any node applied: a manager that lost its state
        // directory goes on after it (the nodes refuse older ones).
        let mut newest = 0;
        for node in &self.nodes {
            if let Ok(status) = node
                .status(false, Duration::from_millis(self.config.ack_timeout_ms))
                .await
            {
                newest = newest.max(status.manager_generation.unwrap_or(0));
                for b in status.backends {
                    if !services.contains(&b.service) && !b.service.starts_with('#') {
                        services.push(b.service);
                    }
                }
            }
        }
        let generation = if newest > ops.generations.current() {
            warn!(
                newest,
                remembered = ops.generations.current(),
                "a node applied a newer generation than this manager remembers (its state directory was lost?); going on after it"
            );
            ops.generations.advance_to(newest + 1)?
        } else {
            ops.generations.take_next()?
        };
        let started = Instant::now();
        let weights = self.weights_for(&mut ops, &snapshot.config, &services, started);
        let result = self
            .push("sync", &snapshot.config, &services, generation, &weights)
            .await;
        if result.is_ok() {
            self.sent_weights(&mut ops, weights, started);
        }
        self.publish(&ops);
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
                let e = ControllerError::NotSynced(failures);
                self.events.record(
                    NewEvent::new("sync-failed", format!("{why}: {e}")).generation(generation),
                );
                Err(e)
            }
        }
    }

    /// Hands the manager the fingerprints `config` pins, which every
    /// hello and announcement must match, those it denies, and the nodes'
    /// tunnel sources the agents are told.
    async fn publish_pins(&self, config: &crate::config::Config) {
        self.manager.set_pins(pins(config));
        let denied = config
            .manager
            .as_ref()
            .map_or(&[][..], |m| m.denied_fingerprints.as_slice());
        self.manager.set_denied(denied).await;
        self.manager
            .set_tunnel_sources(config.tunnel_sources())
            .await;
    }

    /// One evaluation of every service. Allocations are carried out after
    /// the rest, each asking its agent for settings with `ops` released.
    pub async fn tick(&self) {
        let allocations = self.evaluate().await;
        for (service, candidate, reason) in allocations {
            if let Err(e) = self
                .allocate_server(&service, &candidate, &reason, Asked::Policy)
                .await
            {
                warn!(service, error = %e, "allocation not carried out");
            }
        }
        let mut ops = self.ops.lock().await;
        self.weights(&mut ops).await;
        self.publish(&ops);
    }

    /// The evaluation under `ops`: states, crossings, drains, the policy's
    /// decisions, all carried out but the allocations, which it returns
    /// as (service, candidate, reason).
    async fn evaluate(&self) -> Vec<(String, String, String)> {
        let mut ops = self.ops.lock().await;
        let snapshot = match self.file.read_cached() {
            Ok(s) => {
                self.publish_pins(&s.config).await;
                if ops.file_error.take().is_some() {
                    self.events.record(NewEvent::new(
                        "notice",
                        "the configuration file is valid again; decisions resume",
                    ));
                }
                s
            }
            Err(e) => {
                // Said once per distinct error, not four times a second.
                let text = e.to_string();
                if ops.file_error.as_deref() != Some(text.as_str()) {
                    warn!(error = %text, "configuration file unreadable; no decisions until it is fixed");
                    self.events.record(NewEvent::new(
                        "notice",
                        format!("no decisions until the configuration file is fixed: {text}"),
                    ));
                    ops.file_error = Some(text);
                }
                return Vec::new();
            }
        };
        let now = Instant::now();
        self.track_states(&mut ops, &snapshot.config, now);
        self.crossings(&mut ops, &snapshot.config).await;
        self.drains(&mut ops, &snapshot.config).await;
        let mut decisions = Vec::new();
        for svc in &snapshot.config.service {
            let name = svc.name.clone();
            let view = self
                .pool_view(&ops.observed, &snapshot.config, svc, now)
                .await;
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
        let mut allocations = Vec::new();
        for (service, decision) in decisions {
            match decision {
                Decision::Allocate { candidate, reason } => {
                    allocations.push((service, candidate, reason));
                }
                other => self.execute(&mut ops, &service, other).await,
            }
        }
        self.publish(&ops);
        allocations
    }

    /// Copies what `lbctl pool` reads out of `ops`.
    fn publish(&self, ops: &Ops) {
        // Read before the lock: readers of the snapshot never wait for
        // the file. An unreadable file keeps the last one read (`lbctl
        // pool` says the error).
        let read = self.file.read_cached().ok();
        let mut slot = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let file = read.or_else(|| slot.file.clone());
        *slot = Arc::new(Published {
            file,
            observed: ops.observed.clone(),
            generation: ops.generations.current(),
            service_weights: ops.persisted.service_weights.clone(),
            desired: ops
                .policies
                .iter()
                .filter_map(|(service, p)| Some((service.clone(), p.desired_servers()?)))
                .collect(),
        });
    }

    /// What the last evaluation or change published.
    fn published(&self) -> Arc<Published> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn execute(&self, ops: &mut Ops, service: &str, decision: Decision) {
        let result = match decision {
            // Carried out by `tick` with `ops` released.
            Decision::Allocate { .. } => Ok(()),
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

    #[expect(
        clippy::too_many_arguments,
        reason = "a state change is named by its action, event kind, service, server, edits and reason"
    )]
    async fn simple_change(
        &self,
        ops: &mut Ops,
        action: &str,
        kind: &'static str,
        service: &str,
        server: &str,
        edits: &[Edit],
        reason: &str,
    ) -> Result<(), ControllerError> {
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
    fn services_of(&self, server: &str, service: &str) -> Result<Vec<String>, ControllerError> {
        let snapshot = self.file.read()?;
        let mut out = snapshot.config.services_of(server);
        if !out.iter().any(|s| s == service) {
            out.push(service.to_owned());
        }
        Ok(out)
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
}

/// The (server, fingerprint) pairs `config` pins.
pub fn pins(config: &crate::config::Config) -> impl Iterator<Item = (&str, &str)> {
    config
        .server
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.fingerprint.as_deref()?)))
}
