//! The node role: turns a configuration into map contents, atomically, and
//! recovers its bookkeeping from the pinned maps after a restart.
//!
//! Order of every change, so a packet never meets a half-made pool:
//! 1. new backend records (fresh indexes nothing points at yet) and
//!    promotions (to active, next-hop changes);
//! 2. each changed service's Maglev table into its inactive slot, flip, read
//!    back; a new service's `SERVICES` entry only after its table exists;
//! 3. one RCU grace period; then demotions (draining, down), removals, and
//!    the release of indexes, which are reused only after a further grace
//!    period.

pub mod dataplane;
pub mod desired;
mod execute;
pub mod ledger;
pub mod listener;
pub mod nexthop;
pub mod plan;
pub mod reconfigure;
mod recover;
mod view;

use std::{collections::BTreeMap, net::IpAddr, time::Instant};

use serde::Serialize;
use tracing::{info, warn};

use self::desired::Desired;
use self::{
    dataplane::{DataPlane, DataPlaneError, tables},
    ledger::{Ledger, Step},
    nexthop::{NextHop, NextHopError, NextHops, ResolvedHops},
    plan::{Facts, PlanError},
};
pub use self::{
    plan::identity,
    view::{BackendView, ServerView, ServiceView, VerifyError},
};
use crate::{config::Config, model::ModelError};

/// Errors applying a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    DataPlane(#[from] DataPlaneError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Table(#[from] tables::TableError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("maglev: netlink: {0}")]
    NextHops(#[from] NextHopError),
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> ApplyError {
    move |source| ApplyError::Map { map, source }
}

/// Summary of one apply, for the log and `lbctl`.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct ApplyReport {
    pub generation: u32,
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub tables_flipped: Vec<String>,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_retired: usize,
    /// Retired backends whose index went to another server (their remaining
    /// flows are re-hashed).
    pub backends_reused: usize,
    pub unresolved: Vec<String>,
    pub micros: u64,
    /// When the manager sent the configuration to its nodes: the
    /// generation they acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_generation: Option<u64>,
}

/// A desired state ready to apply, with its servers' next hops resolved
/// before the node lock is taken (see [`Node::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    desired: Desired,
    hops: ResolvedHops,
    started: Instant,
}

/// The node: data plane plus bookkeeping.
pub struct Node {
    pub dp: DataPlane,
    /// The node's configuration file as last loaded: what only a restart
    /// changes (interfaces, pins, limits) is read here.
    pub file: Config,
    /// What the maps hold since the last apply.
    desired: Desired,
    next_hops: NextHops,
    ledger: Ledger,
    /// Next hops resolved from the neighbour table (not from config).
    learned: BTreeMap<IpAddr, NextHop>,
    /// How many desired states were applied: a change prepared outside
    /// the lock from an older `desired` is made again.
    applied: u64,
}

impl Node {
    /// The next-hop resolver (it also reads the interfaces' XDP modes).
    #[must_use]
    pub fn resolver(&self) -> std::sync::Arc<nexthop::Resolver> {
        self.next_hops.resolver()
    }

    /// Opens the data plane of the node `file` configures and recovers the
    /// index assignment from its maps, naming what they hold from
    /// `desired` (what is applied next).
    pub async fn open(file: Config, desired: Desired) -> Result<Self, ApplyError> {
        let dp = DataPlane::open(&file)?;
        let next_hops = NextHops::start(&file.node.interfaces).await?;
        let ledger = recover::recover(&dp, &desired)?;
        Ok(Self {
            dp,
            file,
            desired,
            next_hops,
            ledger,
            learned: BTreeMap::new(),
            applied: 0,
        })
    }

    #[must_use]
    pub fn generation(&self) -> u32 {
        self.ledger.generation
    }

    /// The next-hop cache, for [`Node::prepare`] outside the node lock.
    #[must_use]
    pub fn next_hops(&self) -> NextHops {
        self.next_hops.clone()
    }

    /// The desired state the maps hold since the last apply.
    #[must_use]
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Resolves the next hops of `desired`'s servers: the slow part of an
    /// apply, done without the node.
    pub async fn prepare(next_hops: &NextHops, desired: Desired) -> Prepared {
        let started = Instant::now();
        for w in desired.model.warnings() {
            warn!(warning = %w, "config");
        }
        let hops = next_hops.resolve(&desired.model).await;
        Prepared {
            desired,
            hops,
            started,
        }
    }

    /// Applies the desired state `change` makes of the node's, resolving
    /// next hops without holding `node`'s lock: `change` is made of a
    /// snapshot and prepared outside the lock, then planned and carried out
    /// under it. If another desired state was applied meanwhile, `change`
    /// is made of that one and applied under the lock. Returns with the
    /// lock still held, for a read-back of what was applied.
    pub async fn apply_outside_lock<E: From<ApplyError>>(
        node: &tokio::sync::Mutex<Node>,
        change: impl Fn(&Desired) -> Result<Desired, E>,
    ) -> Result<(ApplyReport, tokio::sync::MutexGuard<'_, Node>), E> {
        let (base, applied, next_hops) = {
            let node = node.lock().await;
            (node.desired.clone(), node.applied, node.next_hops())
        };
        let prepared = Self::prepare(&next_hops, change(&base)?).await;
        let mut node = node.lock().await;
        let report = if node.applied == applied {
            node.apply_prepared(prepared)?
        } else {
            let changed = change(&node.desired)?;
            node.apply(changed).await?
        };
        Ok((report, node))
    }

    /// Applies `desired` to the maps: prepares it, then
    /// [`Node::apply_prepared`].
    pub async fn apply(&mut self, desired: Desired) -> Result<ApplyReport, ApplyError> {
        let prepared = Self::prepare(&self.next_hops, desired).await;
        self.apply_prepared(prepared)
    }

    /// Plans the change from what the maps hold to `prepared`'s model and
    /// carries it out.
    pub fn apply_prepared(&mut self, prepared: Prepared) -> Result<ApplyReport, ApplyError> {
        let Prepared {
            desired,
            hops,
            started,
        } = prepared;
        self.learned
            .extend(hops.learned.iter().map(|(a, h)| (*a, *h)));
        let (active_tables, last_seen) = execute::map_facts(&self.dp, &self.ledger);
        let facts = Facts {
            max_services: self.dp.limits.max_services,
            max_backends: self.dp.limits.max_backends,
            hops: &hops.hops,
            active_tables: &active_tables,
            last_seen: &last_seen,
        };
        let plan = plan::plan(&self.ledger, &desired.model, facts)?;
        execute::execute(
            &mut self.dp,
            &mut self.ledger,
            &plan.steps,
            &hops.interfaces,
        )?;
        self.desired = desired;
        self.applied += 1;
        let mut report = plan.report;
        report.unresolved = hops.unresolved;
        report.generation = self.ledger.generation;
        report.micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        info!(
            generation = report.generation,
            added = ?report.services_added,
            removed = ?report.services_removed,
            flipped = ?report.tables_flipped,
            backends_added = report.backends_added,
            backends_removed = report.backends_removed,
            backends_retired = report.backends_retired,
            backends_reused = report.backends_reused,
            micros = report.micros,
            "configuration applied"
        );
        Ok(report)
    }

    /// Follows the neighbour table (the next-hop cache's latest snapshot):
    /// re-programs servers whose MAC changed. Returns true when anything
    /// changed.
    pub fn refresh_neighbours(&mut self) -> Result<bool, ApplyError> {
        let snapshot = self.next_hops.snapshot();
        let Ok(table) = &snapshot.neighbours else {
            return Ok(false);
        };
        let mut changed = Vec::new();
        for (key, rt) in &self.ledger.backends {
            let Some(hop) = self.learned.get(&key.1) else {
                continue;
            };
            if let Some(mac) = table.get(&(hop.ifindex, key.1))
                && *mac != rt.record.dst_mac
            {
                let mut record = rt.record;
                record.dst_mac = *mac;
                info!(server = %rt.server, mac = %nexthop::format_mac(mac), "server MAC changed; re-programmed");
                changed.push(Step::UpdateBackend { key: *key, record });
            }
        }
        for step in &changed {
            execute::execute(
                &mut self.dp,
                &mut self.ledger,
                std::slice::from_ref(step),
                &Ok(Vec::new()),
            )?;
            if let Step::UpdateBackend { key, record } = step
                && let Some(h) = self.learned.get_mut(&key.1)
            {
                h.dst_mac = record.dst_mac;
            }
        }
        Ok(!changed.is_empty())
    }
}
