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
pub mod listener;
pub mod nexthop;
pub mod reconfigure;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{
    BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_FLAG_LOCAL, BACKEND_UNUSED, Backend,
    FAMILY_V4, FAMILY_V6, NO_BACKEND, ServiceKey, ServiceValue,
    maglev::{Member, build_into},
};
use serde::Serialize;
use tracing::{info, warn};

use crate::{
    config::{Config, ServerConfig, ServerState},
    node::{
        dataplane::{DataPlane, DataPlaneError, tables},
        nexthop::{NextHop, Resolver, parse_mac},
    },
};

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
    #[error("maglev: {0}")]
    Maglev(String),
    #[error("no free {what} index (limit {limit}); raise limits.{key}")]
    Full {
        what: &'static str,
        limit: u32,
        key: &'static str,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> ApplyError {
    move |source| ApplyError::Map { map, source }
}

/// What the node knows of one programmed service.
#[derive(Debug, Clone)]
struct ServiceRuntime {
    key: ServiceKey,
    index: u32,
}

/// One (service, server) pair programmed in `BACKENDS`.
#[derive(Debug, Clone)]
struct BackendRuntime {
    index: u32,
    record: Backend,
    /// Server name (not stored in the map; recovered from the config).
    server: String,
    /// Removed from the config: out of every table, its flows still
    /// forwarded (like draining) until the index is needed again.
    retired: bool,
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

/// The node: data plane plus bookkeeping.
pub struct Node {
    pub dp: DataPlane,
    pub config: Config,
    resolver: Resolver,
    services: BTreeMap<String, ServiceRuntime>,
    backends: BTreeMap<(u32, IpAddr), BackendRuntime>,
    /// Indexes released since the last grace period.
    quarantined_backends: Vec<u32>,
    quarantined_services: Vec<u32>,
    next_incarnation: u32,
    /// Next-fit cursor over backend indexes, so freed indexes are not
    /// immediately handed out again.
    cursor: u32,
    generation: u32,
    /// A table flipped since the last grace period.
    flipped_since_grace: bool,
    /// Next hops resolved from the neighbour table (not from config).
    learned: BTreeMap<IpAddr, NextHop>,
    /// The table each service should have active after the last apply
    /// (what `verify` reads back against).
    expected_cells: BTreeMap<String, Vec<u16>>,
}

fn addr_of(bytes: &[u8; 16], family: u32) -> IpAddr {
    if family == FAMILY_V4 as u32 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

fn addr_bytes(addr: IpAddr) -> ([u8; 16], u32) {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, FAMILY_V4 as u32)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6 as u32),
    }
}

fn service_key(vip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    match vip {
        IpAddr::V4(a) => ServiceKey::new(&a.octets(), port, proto),
        IpAddr::V6(a) => ServiceKey::new(&a.octets(), port, proto),
    }
}

fn state_code(state: ServerState) -> u32 {
    match state {
        ServerState::Allocated => BACKEND_ACTIVE,
        ServerState::Draining | ServerState::Failed => BACKEND_DRAINING,
        ServerState::Down | ServerState::Free => BACKEND_DOWN,
    }
}

fn backend_state_name(state: u32) -> &'static str {
    match state {
        BACKEND_ACTIVE => "active",
        BACKEND_DRAINING => "draining",
        BACKEND_DOWN => "down",
        _ => "unused",
    }
}

/// Rank of permissiveness: raising it is safe before a table flip, lowering
/// it only after one and a grace period.
fn rank(state: u32) -> u8 {
    match state {
        BACKEND_ACTIVE => 3,
        BACKEND_DRAINING => 2,
        BACKEND_DOWN => 1,
        _ => 0,
    }
}

impl Node {
    /// Opens the data plane and recovers the index assignment from its maps.
    pub async fn open(config: Config) -> Result<Self, ApplyError> {
        let dp = DataPlane::open(&config)?;
        let resolver = Resolver::new(&config.node.interfaces)
            .await
            .map_err(|e| ApplyError::Maglev(format!("netlink: {e}")))?;
        let mut node = Self {
            dp,
            config,
            resolver,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            quarantined_backends: Vec::new(),
            quarantined_services: Vec::new(),
            next_incarnation: 1,
            cursor: 0,
            generation: 0,
            flipped_since_grace: true,
            learned: BTreeMap::new(),
            expected_cells: BTreeMap::new(),
        };
        node.recover()?;
        Ok(node)
    }

    /// Rebuilds the bookkeeping from the pinned maps (after a restart the
    /// indexes in the flow table must keep their meaning).
    fn recover(&mut self) -> Result<(), ApplyError> {
        let names: BTreeMap<ServiceKey, String> = self
            .config
            .service
            .iter()
            .map(|s| {
                (
                    service_key(s.vip, s.port, s.protocol.number()),
                    s.name.get_ref().clone(),
                )
            })
            .collect();
        for item in self.dp.services.iter() {
            let (key, value) = item.map_err(map_err("SERVICES"))?;
            let name = names
                .get(&key)
                .cloned()
                .unwrap_or_else(|| format!("#orphan-{}", value.index));
            self.services.insert(
                name,
                ServiceRuntime {
                    key,
                    index: value.index,
                },
            );
            self.generation = self
                .generation
                .max(self.dp.service_state.get(value.index).generation);
        }
        let servers: BTreeMap<IpAddr, String> = self
            .config
            .server
            .iter()
            .map(|s| (s.address, s.name.get_ref().clone()))
            .collect();
        let members: BTreeSet<(u32, IpAddr)> = self
            .config
            .service
            .iter()
            .filter_map(|svc| {
                let rt = self.services.get(svc.name.get_ref())?;
                Some(
                    self.config
                        .members(svc.name.get_ref())
                        .map(move |m| (rt.index, m.address)),
                )
            })
            .flatten()
            .collect();
        for index in 0..self.dp.limits.max_backends {
            let record = self
                .dp
                .backends
                .get(&index, 0)
                .map_err(map_err("BACKENDS"))?;
            self.next_incarnation = self.next_incarnation.max(record.incarnation + 1);
            if record.state == BACKEND_UNUSED {
                continue;
            }
            let addr = addr_of(&record.addr, record.family);
            let server = servers
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| addr.to_string());
            self.backends.insert(
                (record.service, addr),
                BackendRuntime {
                    index,
                    record,
                    server,
                    retired: !members.contains(&(record.service, addr)),
                },
            );
        }
        if !self.services.is_empty() {
            info!(
                services = self.services.len(),
                backends = self.backends.len(),
                generation = self.generation,
                "recovered state from pinned maps"
            );
        }
        Ok(())
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn wait_grace(&mut self) -> Result<(), ApplyError> {
        self.dp.grace.wait().map_err(DataPlaneError::from)?;
        self.flipped_since_grace = false;
        self.quarantined_backends.clear();
        self.quarantined_services.clear();
        Ok(())
    }

    fn free_service_index(&mut self) -> Result<u32, ApplyError> {
        for attempt in 0..2 {
            let used: BTreeSet<u32> = self.services.values().map(|s| s.index).collect();
            if let Some(i) = (0..self.dp.limits.max_services)
                .find(|i| !used.contains(i) && !self.quarantined_services.contains(i))
            {
                return Ok(i);
            }
            if attempt == 0 && !self.quarantined_services.is_empty() {
                self.wait_grace()?;
            }
        }
        Err(ApplyError::Full {
            what: "service",
            limit: self.dp.limits.max_services,
            key: "max_services",
        })
    }

    /// An index for a new backend: a never-used or released one (next fit),
    /// else the index of the retired backend idle the longest, after its
    /// record is released and a grace period has passed.
    fn free_backend_index(
        &mut self,
        taken: &BTreeSet<u32>,
        report: &mut ApplyReport,
    ) -> Result<u32, ApplyError> {
        let max = self.dp.limits.max_backends;
        for attempt in 0..2 {
            let used: BTreeSet<u32> = self.backends.values().map(|b| b.index).collect();
            let free = (0..max).map(|i| (self.cursor + i) % max).find(|i| {
                !used.contains(i) && !taken.contains(i) && !self.quarantined_backends.contains(i)
            });
            if let Some(i) = free {
                self.cursor = (i + 1) % max;
                return Ok(i);
            }
            if attempt == 0 && !self.quarantined_backends.is_empty() {
                self.wait_grace()?;
            }
        }
        let oldest = self
            .backends
            .iter()
            .filter(|(_, b)| b.retired && !taken.contains(&b.index))
            .min_by_key(|(_, b)| self.dp.backend_last_seen(b.index))
            .map(|(k, _)| *k);
        let Some(key) = oldest else {
            return Err(ApplyError::Full {
                what: "backend",
                limit: max,
                key: "max_backends",
            });
        };
        let Some(rt) = self.backends.remove(&key) else {
            return Err(ApplyError::Full {
                what: "backend",
                limit: max,
                key: "max_backends",
            });
        };
        self.release_record(&rt)?;
        // Nothing may still be reading the old record when it is rewritten.
        self.wait_grace()?;
        info!(server = %rt.server, backend = rt.index, "index of retired backend reused; its remaining flows are re-hashed");
        report.backends_reused += 1;
        Ok(rt.index)
    }

    /// Next hop of a server: from the config's MAC or the neighbour table.
    async fn next_hop(&mut self, server: &ServerConfig) -> Option<NextHop> {
        if server.local {
            return Some(NextHop {
                ifindex: 0,
                src_mac: [0; 6],
                dst_mac: [0; 6],
            });
        }

        if let Some(mac) = &server.mac {
            // The egress port still comes from the interfaces' prefixes.
            let dst_mac = parse_mac(mac).ok()?;
            match self.resolver.egress(server.address).await {
                Ok((ifindex, src_mac)) => Some(NextHop {
                    ifindex,
                    src_mac,
                    dst_mac,
                }),
                Err(e) => {
                    warn!(server = %server.name.get_ref(), error = %e, "no egress interface");
                    None
                }
            }
        } else {
            match self
                .resolver
                .resolve(server.address, Duration::from_secs(2))
                .await
            {
                Ok(hop) => {
                    self.learned.insert(server.address, hop);
                    Some(hop)
                }
                Err(e) => {
                    warn!(server = %server.name.get_ref(), error = %e, "cannot resolve server");
                    None
                }
            }
        }
    }

    /// Applies `config` (already validated) to the maps.
    pub async fn apply(&mut self, config: Config) -> Result<ApplyReport, ApplyError> {
        let started = Instant::now();
        let mut report = ApplyReport::default();
        for w in config.warnings() {
            warn!(warning = %w, "config");
        }

        // Next hops of every programmed server.
        let mut hops: BTreeMap<IpAddr, Option<NextHop>> = BTreeMap::new();
        for server in config.server.iter().filter(|s| s.programmed()) {
            let hop = self.next_hop(server).await;
            if hop.is_none() {
                report.unresolved.push(server.name.get_ref().clone());
            }
            hops.insert(server.address, hop);
        }

        // Services: removed ones leave SERVICES first (packets stop matching
        // them); new ones get an index now and a SERVICES entry after their
        // table is written.
        let desired: BTreeMap<String, ServiceKey> = config
            .service
            .iter()
            .map(|s| {
                (
                    s.name.get_ref().clone(),
                    service_key(s.vip, s.port, s.protocol.number()),
                )
            })
            .collect();
        let mut removed_services = Vec::new();
        for (name, rt) in &self.services {
            if desired.get(name) != Some(&rt.key) {
                self.dp
                    .services
                    .remove(&rt.key)
                    .map_err(map_err("SERVICES"))?;
                removed_services.push((name.clone(), rt.index));
            }
        }
        if !removed_services.is_empty() {
            self.dp.publish_services()?;
        }
        for (name, _) in &removed_services {
            self.services.remove(name);
            report.services_removed.push(name.clone());
        }
        let mut new_services = Vec::new();
        for (name, key) in &desired {
            if !self.services.contains_key(name) {
                let index = self.free_service_index()?;
                tables::clear(&mut self.dp.service_state, index);
                self.services
                    .insert(name.clone(), ServiceRuntime { key: *key, index });
                new_services.push(name.clone());
                report.services_added.push(name.clone());
            }
        }

        // Backends: desired records per (service index, server address).
        let mut want: BTreeMap<(u32, IpAddr), (Backend, String, u32)> = BTreeMap::new();
        for svc in &config.service {
            let index = self.services[svc.name.get_ref()].index;
            for server in config.members(svc.name.get_ref()) {
                let Some(Some(hop)) = hops.get(&server.address) else {
                    continue;
                };
                let (addr, family) = addr_bytes(server.address);
                let record = Backend {
                    dst_mac: hop.dst_mac,
                    src_mac: hop.src_mac,
                    ifindex: hop.ifindex,
                    incarnation: 0,
                    state: state_code(server.state_in(svc.name.get_ref())),
                    flags: if server.local { BACKEND_FLAG_LOCAL } else { 0 },
                    service: index,
                    addr,
                    family,
                };
                want.insert(
                    (index, server.address),
                    (
                        record,
                        server.name.get_ref().clone(),
                        server.weight_in(svc.name.get_ref()),
                    ),
                );
            }
        }

        // 1. New records and promotions.
        let mut demotions: Vec<((u32, IpAddr), Backend)> = Vec::new();
        let mut taken = BTreeSet::new();
        for (key, (record, server, _)) in &want {
            match self.backends.get(key).cloned() {
                Some(rt) => {
                    let mut next = *record;
                    next.incarnation = rt.record.incarnation;
                    if let Some(rt) = self.backends.get_mut(key) {
                        rt.retired = false;
                    }
                    if next == rt.record {
                        continue;
                    }
                    if rank(next.state) < rank(rt.record.state) {
                        // Keep the old state until the tables no longer name
                        // it; apply the rest (next hop) now.
                        let mut now_record = next;
                        now_record.state = rt.record.state;
                        if now_record != rt.record {
                            self.write_backend(key, now_record)?;
                        }
                        demotions.push((*key, next));
                    } else {
                        self.write_backend(key, next)?;
                    }
                }
                None => {
                    let index = self.free_backend_index(&taken, &mut report)?;
                    taken.insert(index);
                    let mut next = *record;
                    next.incarnation = self.next_incarnation;
                    self.next_incarnation += 1;
                    self.dp
                        .backends
                        .set(index, next, 0)
                        .map_err(map_err("BACKENDS"))?;
                    self.backends.insert(
                        *key,
                        BackendRuntime {
                            index,
                            record: next,
                            server: server.clone(),
                            retired: false,
                        },
                    );
                    report.backends_added += 1;
                }
            }
        }

        // 2. Tables.
        for svc in &config.service {
            let name = svc.name.get_ref();
            let index = self.services[name].index;
            let mut members: Vec<(IpAddr, u32, u32)> = want
                .iter()
                .filter(|((s, _), (r, _, w))| *s == index && r.state == BACKEND_ACTIVE && *w > 0)
                .map(|((_, addr), (_, _, w))| (*addr, *w, self.backends[&(index, *addr)].index))
                .collect();
            members.sort();
            let identities: Vec<Vec<u8>> = members.iter().map(|(a, _, _)| identity(*a)).collect();
            let list: Vec<Member<'_>> = members
                .iter()
                .zip(&identities)
                .map(|((_, w, _), id)| Member {
                    identity: id,
                    weight: *w,
                })
                .collect();
            let mut cells = vec![NO_BACKEND; svc.table_size as usize];
            build_into(&list, svc.table_size, &mut cells)
                .map_err(|e| ApplyError::Maglev(format!("service `{name}`: {e:?}")))?;
            for c in cells.iter_mut() {
                if *c != NO_BACKEND {
                    *c = members[*c as usize].2 as u16;
                }
            }
            let current = tables::read_active(
                &self.dp.service_state,
                &self.dp.tables,
                self.dp.stride,
                index,
            );
            if current == cells && !new_services.contains(name) {
                self.expected_cells.insert(name.clone(), cells);
                continue;
            }
            if self.flipped_since_grace {
                self.wait_grace()?;
            }
            self.generation += 1;
            tables::write_and_flip(
                &mut self.dp.service_state,
                &mut self.dp.tables,
                self.dp.stride,
                index,
                &cells,
                self.generation,
            )?;
            self.flipped_since_grace = true;
            report.tables_flipped.push(name.clone());
            self.expected_cells.insert(name.clone(), cells);
        }
        for name in &new_services {
            let rt = &self.services[name];
            self.dp
                .services
                .insert(
                    rt.key,
                    ServiceValue {
                        index: rt.index,
                        flags: 0,
                    },
                    0,
                )
                .map_err(map_err("SERVICES"))?;
        }
        if !new_services.is_empty() {
            self.dp.publish_services()?;
        }
        self.sync_vips(&desired)?;
        self.sync_tx_ports().await;

        // 3. After a grace period: demotions, retirements and removals.
        // A backend left out of the config is retired (draining: its flows
        // still reach it); one whose service is gone is released.
        let live_services: BTreeSet<u32> = self.services.values().map(|s| s.index).collect();
        let leaving: Vec<(u32, IpAddr)> = self
            .backends
            .iter()
            .filter(|(k, b)| !want.contains_key(k) && (!b.retired || !live_services.contains(&k.0)))
            .map(|(k, _)| *k)
            .collect();
        if !demotions.is_empty() || !leaving.is_empty() || !removed_services.is_empty() {
            self.wait_grace()?;
        }
        for (key, record) in demotions {
            self.write_backend(&key, record)?;
        }
        for key in leaving {
            if live_services.contains(&key.0) {
                let Some(rt) = self.backends.get_mut(&key) else {
                    continue;
                };
                rt.retired = true;
                let mut record = rt.record;
                if record.state == BACKEND_ACTIVE {
                    record.state = BACKEND_DRAINING;
                }
                self.write_backend(&key, record)?;
                report.backends_retired += 1;
            } else if let Some(rt) = self.backends.remove(&key) {
                self.release_record(&rt)?;
                self.quarantined_backends.push(rt.index);
                report.backends_removed += 1;
            }
        }
        for (_, index) in removed_services {
            tables::clear(&mut self.dp.service_state, index);
            self.quarantined_services.push(index);
        }

        self.expected_cells
            .retain(|name, _| desired.contains_key(name));
        self.config = config;
        report.generation = self.generation;
        report.micros = started.elapsed().as_micros() as u64;
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

    /// Every programmed (service, server) pair with its state, the time
    /// since it last received a packet and, when asked, the flow-table
    /// entries that point at it (walks the flow table).
    pub fn backend_status(&self, count_flows: bool) -> Vec<lb_proto::BackendStatus> {
        let names: BTreeMap<u32, &String> =
            self.services.iter().map(|(n, s)| (s.index, n)).collect();
        let mut flows: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        if count_flows {
            for (_, backend, incarnation) in self.dp.flows.entries() {
                *flows.entry((backend, incarnation)).or_default() += 1;
            }
        }
        let now = crate::node::dataplane::now_coarse();
        self.backends
            .values()
            .map(|b| {
                let seen = self.dp.backend_last_seen(b.index);
                lb_proto::BackendStatus {
                    service: names
                        .get(&b.record.service)
                        .map_or_else(|| format!("#{}", b.record.service), |n| (*n).clone()),
                    server: b.server.clone(),
                    state: if b.retired {
                        "retired"
                    } else {
                        backend_state_name(b.record.state)
                    }
                    .to_owned(),
                    // Coarse seconds are 2^30 ns.
                    idle_ms: (seen != 0)
                        .then(|| u64::from(now.saturating_sub(seen)) * 1_073_741 / 1000),
                    flows: count_flows.then(|| {
                        flows
                            .get(&(b.index, b.record.incarnation))
                            .copied()
                            .unwrap_or(0)
                    }),
                }
            })
            .collect()
    }

    /// Reads the maps back and compares them with what the last apply
    /// wrote: every service's key and active table, every backend record.
    pub fn verify(&self) -> Result<(), String> {
        for (name, rt) in &self.services {
            match self.dp.services.get(&rt.key, 0) {
                Ok(v) if v.index == rt.index => {}
                Ok(v) => {
                    return Err(format!(
                        "service `{name}`: SERVICES names index {} instead of {}",
                        v.index, rt.index
                    ));
                }
                Err(e) => return Err(format!("service `{name}`: SERVICES lookup: {e}")),
            }
            // What the program reads first: the bucket names the same index,
            // or sends the program on to SERVICES.
            match crate::node::dataplane::services::lookup(&self.dp.service_buckets, &rt.key) {
                Ok(index) if index == rt.index => {}
                Ok(index) => {
                    return Err(format!(
                        "service `{name}`: SERVICE_BUCKETS names index {index} instead of {}",
                        rt.index
                    ));
                }
                Err(true) => {}
                Err(false) => {
                    return Err(format!(
                        "service `{name}`: missing from SERVICE_BUCKETS and its bucket does not overflow"
                    ));
                }
            }
            if let Some(cells) = self.expected_cells.get(name) {
                let read = tables::read_active(
                    &self.dp.service_state,
                    &self.dp.tables,
                    self.dp.stride,
                    rt.index,
                );
                if &read != cells {
                    let at = read.iter().zip(cells).position(|(a, b)| a != b);
                    return Err(format!(
                        "service `{name}`: active table differs from the one written (first difference at cell {at:?}, {} vs {} cells)",
                        read.len(),
                        cells.len()
                    ));
                }
            }
        }
        for ((_, addr), rt) in &self.backends {
            let read = self
                .dp
                .backends
                .get(&rt.index, 0)
                .map_err(|e| format!("BACKENDS[{}]: {e}", rt.index))?;
            if read != rt.record {
                return Err(format!(
                    "backend {} ({addr}): record reads back differently from the one written",
                    rt.index
                ));
            }
        }
        Ok(())
    }

    /// Marks a backend's record unused (its index keeps its incarnation, so
    /// flow entries that name it are re-hashed).
    fn release_record(&mut self, rt: &BackendRuntime) -> Result<(), ApplyError> {
        let mut record = rt.record;
        record.state = BACKEND_UNUSED;
        self.dp
            .backends
            .set(rt.index, record, 0)
            .map_err(map_err("BACKENDS"))
    }

    fn write_backend(&mut self, key: &(u32, IpAddr), record: Backend) -> Result<(), ApplyError> {
        let rt = self.backends.get_mut(key).ok_or(ApplyError::Map {
            map: "BACKENDS",
            source: aya::maps::MapError::KeyNotFound,
        })?;
        self.dp
            .backends
            .set(rt.index, record, 0)
            .map_err(map_err("BACKENDS"))?;
        rt.record = record;
        Ok(())
    }

    fn sync_vips(&mut self, desired: &BTreeMap<String, ServiceKey>) -> Result<(), ApplyError> {
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
        let have: Vec<ServiceKey> = self.dp.vips.keys().filter_map(Result::ok).collect();
        for k in have {
            if !want.contains_key(&k) {
                self.dp.vips.remove(&k).map_err(map_err("VIPS"))?;
            }
        }
        for (k, n) in want {
            self.dp.vips.insert(k, n, 0).map_err(map_err("VIPS"))?;
        }
        Ok(())
    }

    async fn sync_tx_ports(&mut self) {
        match self.resolver.interfaces().await {
            Ok(list) => {
                for i in list {
                    if let Err(e) = self.dp.tx_ports.insert(i.ifindex, i.ifindex, None, 0) {
                        warn!(interface = %i.name, error = %e, "cannot add redirect port");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list interfaces"),
        }
    }

    /// Follows the neighbour table: re-programs servers whose MAC changed
    /// and retries unresolved ones. Returns true when anything changed.
    pub async fn refresh_neighbours(&mut self) -> Result<bool, ApplyError> {
        let Ok(table) = self.resolver.neighbours().await else {
            return Ok(false);
        };
        let mut changed = Vec::new();
        for (key, rt) in &self.backends {
            let Some(hop) = self.learned.get(&key.1) else {
                continue;
            };
            if let Some(mac) = table.get(&(hop.ifindex, key.1))
                && *mac != rt.record.dst_mac
            {
                let mut r = rt.record;
                r.dst_mac = *mac;
                changed.push((*key, r, rt.server.clone()));
            }
        }
        for (key, record, server) in &changed {
            info!(server = %server, mac = %crate::node::nexthop::format_mac(&record.dst_mac), "server MAC changed; re-programmed");
            self.write_backend(key, *record)?;
            if let Some(h) = self.learned.get_mut(&key.1) {
                h.dst_mac = record.dst_mac;
            }
        }
        Ok(!changed.is_empty())
    }

    /// Services with their counters, for `lbctl service list`.
    pub fn service_views(&self) -> Vec<ServiceView> {
        self.config
            .service
            .iter()
            .filter_map(|s| {
                let rt = self.services.get(s.name.get_ref())?;
                let state = self.dp.service_state.get(rt.index);
                let c = DataPlane::sum_counters(&self.dp.service_stats, rt.index);
                Some(ServiceView {
                    name: s.name.get_ref().clone(),
                    vip: s.vip,
                    port: s.port,
                    protocol: format!("{:?}", s.protocol).to_lowercase(),
                    index: rt.index,
                    active_slot: state.active,
                    table_size: state.size[state.active as usize & 1],
                    generation: state.generation,
                    servers: self.config.members(s.name.get_ref()).count(),
                    packets: c.packets,
                    bytes: c.bytes,
                    new_flows: c.new_flows,
                })
            })
            .collect()
    }

    /// Servers (per service) with state and counters, for `lbctl server list`.
    pub fn server_views(&self) -> Vec<ServerView> {
        let now = crate::node::dataplane::now_coarse();
        let mut out = Vec::new();
        for server in &self.config.server {
            let mut row = ServerView {
                name: server.name.get_ref().clone(),
                address: server.address,
                state: format!("{:?}", server.state).to_lowercase(),
                weight: server.weight,
                services: Vec::new(),
            };
            for (name, rt) in &self.services {
                let Some(b) = self.backends.get(&(rt.index, server.address)) else {
                    continue;
                };
                let c = DataPlane::sum_counters(&self.dp.backend_stats, b.index);
                let seen = self.dp.backend_last_seen(b.index);
                let scale = self
                    .config
                    .service
                    .iter()
                    .find(|s| s.name.get_ref() == name)
                    .map_or(1, |s| s.weight_scale);
                row.services.push(BackendView {
                    service: name.clone(),
                    weight: crate::manager::weights::display_weight(server.weight_in(name), scale),
                    backend: b.index,
                    incarnation: b.record.incarnation,
                    state: match b.record.state {
                        _ if b.retired => "retired",
                        BACKEND_ACTIVE => "active",
                        BACKEND_DRAINING => "draining",
                        BACKEND_DOWN => "down",
                        _ => "unused",
                    }
                    .into(),
                    mac: crate::node::nexthop::format_mac(&b.record.dst_mac),
                    ifindex: b.record.ifindex,
                    packets: c.packets,
                    bytes: c.bytes,
                    new_flows: c.new_flows,
                    idle_secs: (seen != 0).then(|| now.saturating_sub(seen)),
                });
            }
            out.push(row);
        }
        out
    }

    /// The backend index of (service, server), if programmed.
    pub fn backend_index(&self, service: &str, server: IpAddr) -> Option<u32> {
        let rt = self.services.get(service)?;
        self.backends.get(&(rt.index, server)).map(|b| b.index)
    }
}

/// Maglev identity of a server: its address bytes, the same on every node.
pub fn identity(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub index: u32,
    pub active_slot: u32,
    pub table_size: u32,
    pub generation: u32,
    pub servers: usize,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ServerView {
    pub name: String,
    pub address: IpAddr,
    pub state: String,
    /// The file's weight.
    pub weight: u32,
    pub services: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BackendView {
    pub service: String,
    /// The weight in force in this service, in file units (`12.5`).
    #[serde(default)]
    pub weight: String,
    pub backend: u32,
    pub incarnation: u32,
    pub state: String,
    pub mac: String,
    pub ifindex: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Seconds since the node last forwarded a packet to it.
    pub idle_secs: Option<u32>,
}
