//! The plan of one apply: from what the maps hold (the [`Ledger`]) and what
//! the node should program (the [`NodeModel`] with its servers' next hops)
//! to the ordered [`Step`]s that get there, without touching a map. The
//! ordering rules of the module docs of [`crate::node`] are tests here.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_FLAG_LOCAL, Backend, FAMILY_V4, FAMILY_V6,
    NO_BACKEND, ServiceKey,
    maglev::{Member, build_into},
};

use super::{
    ApplyReport,
    ledger::{BackendKey, Ledger, Step},
    nexthop::NextHop,
};
use crate::model::{NodeModel, ServerState};

/// Why no plan reaches the model.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("maglev: {0}")]
    Maglev(String),
    #[error("no free {what} index (limit {limit}); raise limits.{key}")]
    Full {
        what: &'static str,
        limit: u32,
        key: &'static str,
    },
}

/// What the plan reads besides the ledger: facts of the maps and the
/// servers' next hops.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub max_services: u32,
    pub max_backends: u32,
    /// Next hop of every resolved server; an unresolved one is left out of
    /// its services.
    pub hops: &'a BTreeMap<IpAddr, NextHop>,
    /// The active table of each programmed service, by service index.
    pub active_tables: &'a BTreeMap<u32, Vec<u16>>,
    /// When each backend index last forwarded a packet (coarse clock).
    pub last_seen: &'a BTreeMap<u32, u32>,
}

/// The steps of one apply and what they add up to.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The counts of the apply (no generation, timing or next hops).
    pub report: ApplyReport,
}

/// The record a server should have in a service, before its incarnation.
struct Wanted {
    record: Backend,
    server: String,
    weight: u32,
}

/// Builds the plan while keeping a simulated ledger in step with it.
struct Planner<'a> {
    ledger: Ledger,
    facts: Facts<'a>,
    plan: Plan,
    /// Lowered states, written after the flips and a grace period.
    demotions: Vec<(BackendKey, Backend)>,
}

/// The steps from `ledger` to `model`.
///
/// # Errors
/// No free service or backend index, or a table Maglev cannot build.
pub fn plan(ledger: &Ledger, model: &NodeModel, facts: Facts<'_>) -> Result<Plan, PlanError> {
    let mut planner = Planner {
        ledger: ledger.clone(),
        facts,
        plan: Plan::default(),
        demotions: Vec::new(),
    };
    let desired: BTreeMap<String, ServiceKey> = model
        .services
        .iter()
        .map(|s| (s.name.clone(), s.key()))
        .collect();
    let removed = planner.services(&desired)?;
    let new_services: Vec<String> = planner.plan.report.services_added.clone();
    let want = planner.wanted(model);
    planner.records(&want)?;
    planner.tables(model, &want, &new_services)?;
    for name in &new_services {
        planner.push(Step::InsertService { name: name.clone() });
    }
    if !new_services.is_empty() {
        planner.push(Step::PublishServices);
    }
    planner.push(Step::SyncVips(vips(&desired)));
    planner.push(Step::SyncTxPorts);
    planner.leave(&want, &removed);
    planner.push(Step::KeepExpected(desired.into_keys().collect()));
    Ok(planner.plan)
}

impl Planner<'_> {
    fn push(&mut self, step: Step) {
        self.ledger.record(&step);
        self.plan.steps.push(step);
    }

    fn wait_grace(&mut self) {
        self.push(Step::WaitGrace);
    }

    /// Removed services leave `SERVICES` first (packets stop matching
    /// them); new ones get an index now and a `SERVICES` entry after their
    /// table is written. Returns the removed services' indexes.
    fn services(&mut self, desired: &BTreeMap<String, ServiceKey>) -> Result<Vec<u32>, PlanError> {
        let removed: Vec<(String, ServiceKey, u32)> = self
            .ledger
            .services
            .iter()
            .filter(|(name, rt)| desired.get(*name) != Some(&rt.key))
            .map(|(name, rt)| (name.clone(), rt.key, rt.index))
            .collect();
        for (name, key, _) in &removed {
            self.push(Step::RemoveService {
                name: name.clone(),
                key: *key,
            });
            self.plan.report.services_removed.push(name.clone());
        }
        if !removed.is_empty() {
            self.push(Step::PublishServices);
        }
        for (name, key) in desired {
            if !self.ledger.services.contains_key(name) {
                let index = self.free_service_index()?;
                self.push(Step::AddService {
                    name: name.clone(),
                    key: *key,
                    index,
                });
                self.plan.report.services_added.push(name.clone());
            }
        }
        Ok(removed.into_iter().map(|(_, _, index)| index).collect())
    }

    fn free_service_index(&mut self) -> Result<u32, PlanError> {
        for attempt in 0..2 {
            let used: BTreeSet<u32> = self.ledger.services.values().map(|s| s.index).collect();
            let quarantined = &self.ledger.quarantined_services;
            if let Some(i) =
                (0..self.facts.max_services).find(|i| !used.contains(i) && !quarantined.contains(i))
            {
                return Ok(i);
            }
            if attempt == 0 && !quarantined.is_empty() {
                self.wait_grace();
            }
        }
        Err(PlanError::Full {
            what: "service",
            limit: self.facts.max_services,
            key: "max_services",
        })
    }

    /// The desired record of every (service, resolved server) pair.
    fn wanted(&self, model: &NodeModel) -> BTreeMap<BackendKey, Wanted> {
        let mut want = BTreeMap::new();
        for svc in &model.services {
            let index = self.ledger.services[&svc.name].index;
            for server in &svc.servers {
                // A tunnelled server's next hop is the FIB's, at each packet.
                let hop = if server.forward.is_tunnel() {
                    NextHop {
                        ifindex: 0,
                        src_mac: [0; 6],
                        dst_mac: [0; 6],
                    }
                } else if let Some(hop) = self.facts.hops.get(&server.address) {
                    *hop
                } else {
                    continue;
                };
                let (addr, family) = addr_bytes(server.address);
                let local = if server.local { BACKEND_FLAG_LOCAL } else { 0 };
                let record = Backend {
                    dst_mac: hop.dst_mac,
                    src_mac: hop.src_mac,
                    ifindex: hop.ifindex,
                    incarnation: 0,
                    state: server.state.code(),
                    flags: local | crate::config::backend_flags(server.forward),
                    service: index,
                    addr,
                    family,
                };
                let wanted = Wanted {
                    record,
                    server: server.name.clone(),
                    weight: server.weight,
                };
                want.insert((index, server.address), wanted);
            }
        }
        want
    }

    /// 1. New records and promotions; a demotion keeps the old state (the
    ///    rest, a next hop, changes now) until phase 3.
    fn records(&mut self, want: &BTreeMap<BackendKey, Wanted>) -> Result<(), PlanError> {
        let mut taken = BTreeSet::new();
        for (key, wanted) in want {
            let Some(rt) = self.ledger.backends.get(key).cloned() else {
                let index = self.free_backend_index(&taken)?;
                taken.insert(index.0);
                let mut record = wanted.record;
                record.incarnation = self.ledger.next_incarnation;
                self.push(Step::AddBackend {
                    key: *key,
                    index: index.0,
                    record,
                    server: wanted.server.clone(),
                    cursor: index.1,
                });
                self.plan.report.backends_added += 1;
                continue;
            };
            let mut next = wanted.record;
            next.incarnation = rt.record.incarnation;
            if rt.retired {
                self.push(Step::Unretire { key: *key });
            }
            if next == rt.record {
                continue;
            }
            if rank(next.state) < rank(rt.record.state) {
                let mut now = next;
                now.state = rt.record.state;
                if now != rt.record {
                    self.push(Step::UpdateBackend {
                        key: *key,
                        record: now,
                    });
                }
                self.demotions.push((*key, next));
            } else {
                self.push(Step::UpdateBackend {
                    key: *key,
                    record: next,
                });
            }
        }
        Ok(())
    }

    /// An index for a new backend, and where the next-fit cursor goes on: a
    /// never-used or released one (next fit), else the index of the retired
    /// backend idle the longest, after its record is released and a grace
    /// period has passed.
    fn free_backend_index(
        &mut self,
        taken: &BTreeSet<u32>,
    ) -> Result<(u32, Option<u32>), PlanError> {
        let max = self.facts.max_backends;
        for attempt in 0..2 {
            let ledger = &self.ledger;
            let used: BTreeSet<u32> = ledger.backends.values().map(|b| b.index).collect();
            let free = (0..max).map(|i| (ledger.cursor + i) % max).find(|i| {
                !used.contains(i) && !taken.contains(i) && !ledger.quarantined_backends.contains(i)
            });
            if let Some(i) = free {
                return Ok((i, Some((i + 1) % max)));
            }
            if attempt == 0 && !ledger.quarantined_backends.is_empty() {
                self.wait_grace();
            }
        }
        let last_seen = |index: u32| self.facts.last_seen.get(&index).copied().unwrap_or(0);
        let oldest = self
            .ledger
            .backends
            .iter()
            .filter(|(_, b)| b.retired && !taken.contains(&b.index))
            .min_by_key(|(_, b)| last_seen(b.index))
            .map(|(k, b)| (*k, b.index));
        let Some((key, index)) = oldest else {
            return Err(PlanError::Full {
                what: "backend",
                limit: max,
                key: "max_backends",
            });
        };
        self.push(Step::ReleaseBackend { key, reused: true });
        // Nothing may still be reading the old record when it is rewritten.
        self.wait_grace();
        self.plan.report.backends_reused += 1;
        Ok((index, None))
    }

    /// 2. Each service's table: into the inactive slot and flipped when it
    ///    differs from the active one (always for a new service), at most
    ///    one flip per grace period.
    fn tables(
        &mut self,
        model: &NodeModel,
        want: &BTreeMap<BackendKey, Wanted>,
        new_services: &[String],
    ) -> Result<(), PlanError> {
        for svc in &model.services {
            let index = self.ledger.services[&svc.name].index;
            let mut members: Vec<(IpAddr, u32, u32)> = want
                .iter()
                .filter(|((s, _), w)| {
                    *s == index && w.record.state == BACKEND_ACTIVE && w.weight > 0
                })
                .map(|((_, addr), w)| {
                    (*addr, w.weight, self.ledger.backends[&(index, *addr)].index)
                })
                .collect();
            members.sort_unstable();
            let cells = maglev_cells(&svc.name, &members, svc.table_size)?;
            let is_new = new_services.contains(&svc.name);
            if !is_new && self.facts.active_tables.get(&index) == Some(&cells) {
                self.push(Step::Table {
                    name: svc.name.clone(),
                    index,
                    cells,
                    flip: None,
                });
                continue;
            }
            if self.ledger.flipped_since_grace {
                self.wait_grace();
            }
            let generation = self.ledger.generation + 1;
            self.push(Step::Table {
                name: svc.name.clone(),
                index,
                cells,
                flip: Some(generation),
            });
            self.plan.report.tables_flipped.push(svc.name.clone());
        }
        Ok(())
    }

    /// 3. After a grace period: demotions, retirements and removals. A
    ///    backend left out of the config is retired (draining: its flows
    ///    still reach it); one whose service is gone is released, its index
    ///    quarantined until the next grace period.
    fn leave(&mut self, want: &BTreeMap<BackendKey, Wanted>, removed_services: &[u32]) {
        let live: BTreeSet<u32> = self.ledger.services.values().map(|s| s.index).collect();
        let leaving: Vec<BackendKey> = self
            .ledger
            .backends
            .iter()
            .filter(|(k, b)| !want.contains_key(k) && (!b.retired || !live.contains(&k.0)))
            .map(|(k, _)| *k)
            .collect();
        let demotions = std::mem::take(&mut self.demotions);
        if !demotions.is_empty() || !leaving.is_empty() || !removed_services.is_empty() {
            self.wait_grace();
        }
        for (key, record) in demotions {
            self.push(Step::UpdateBackend { key, record });
        }
        for key in leaving {
            if live.contains(&key.0) {
                let mut record = self.ledger.backends[&key].record;
                if record.state == BACKEND_ACTIVE {
                    record.state = BACKEND_DRAINING;
                }
                self.push(Step::RetireBackend { key, record });
                self.plan.report.backends_retired += 1;
            } else {
                self.push(Step::ReleaseBackend { key, reused: false });
                self.plan.report.backends_removed += 1;
            }
        }
        for &index in removed_services {
            // A new service given the index after a grace period cleared
            // its state itself and owns it now.
            if !self.ledger.services.values().any(|s| s.index == index) {
                self.push(Step::DropService { index });
            }
        }
    }
}

/// A service's Maglev table over `members` (address, weight, backend
/// index, sorted): each cell the backend index of its server.
fn maglev_cells(
    name: &str,
    members: &[(IpAddr, u32, u32)],
    table_size: u32,
) -> Result<Vec<u16>, PlanError> {
    let identities: Vec<Vec<u8>> = members.iter().map(|(a, _, _)| identity(*a)).collect();
    let list: Vec<Member<'_>> = members
        .iter()
        .zip(&identities)
        .map(|((_, w, _), id)| Member {
            identity: id,
            weight: *w,
        })
        .collect();
    let mut cells = vec![NO_BACKEND; table_size as usize];
    build_into(&list, table_size, &mut cells)
        .map_err(|e| PlanError::Maglev(format!("service `{name}`: {e:?}")))?;
    for c in &mut cells {
        if *c != NO_BACKEND {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "backend indexes are below limits.max_backends (at most MAX_BACKEND_INDEX + 1)"
            )]
            let index = members[usize::from(*c)].2 as u16;
            *c = index;
        }
    }
    Ok(cells)
}

/// Maglev identity of a server: its address bytes, the same on every node.
#[must_use]
pub fn identity(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Rank of permissiveness of a record's state (0 for unused).
fn rank(code: u32) -> Option<ServerState> {
    ServerState::from_code(code)
}

/// (address bytes, family) of a backend record.
#[must_use]
pub fn addr_bytes(addr: IpAddr) -> ([u8; 16], u32) {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, u32::from(FAMILY_V4))
        }
        IpAddr::V6(a) => (a.octets(), u32::from(FAMILY_V6)),
    }
}

/// The `VIPS` entries of the desired services: each VIP with how many
/// services it has.
fn vips(desired: &BTreeMap<String, ServiceKey>) -> BTreeMap<ServiceKey, u32> {
    let mut want: BTreeMap<ServiceKey, u32> = BTreeMap::new();
    for key in desired.values() {
        let vip = ServiceKey {
            addr: key.addr,
            port: [0; 2],
            proto: 0,
            family: key.family,
        };
        *want.entry(vip).or_default() += 1;
    }
    want
}

#[cfg(test)]
mod tests;
