//! The node's record of what its maps hold (recovered from them after a
//! restart), and how each step of a plan changes it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{Backend, ServiceKey};

/// A programmed backend: (service index, server address).
pub type BackendKey = (u32, IpAddr);

/// What the node knows of one programmed service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRuntime {
    pub key: ServiceKey,
    pub index: u32,
}

/// One (service, server) pair programmed in `BACKENDS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRuntime {
    pub index: u32,
    pub record: Backend,
    /// Server name (not stored in the map; recovered from the config).
    pub server: String,
    /// Removed from the config: out of every table, its flows still
    /// forwarded (like draining) until the index is needed again.
    pub retired: bool,
}

/// The bookkeeping of the maps' contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub services: BTreeMap<String, ServiceRuntime>,
    pub backends: BTreeMap<BackendKey, BackendRuntime>,
    /// Indexes released since the last grace period.
    pub quarantined_backends: Vec<u32>,
    pub quarantined_services: Vec<u32>,
    pub next_incarnation: u32,
    /// Next-fit cursor over backend indexes, so freed indexes are not
    /// immediately handed out again.
    pub cursor: u32,
    /// The table generation: one more at each flip.
    pub generation: u32,
    /// A table flipped since the last grace period.
    pub flipped_since_grace: bool,
    /// The table each service should have active after the last apply
    /// (what `verify` reads back against).
    pub expected_cells: BTreeMap<String, Vec<u16>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            quarantined_backends: Vec::new(),
            quarantined_services: Vec::new(),
            next_incarnation: 1,
            cursor: 0,
            generation: 0,
            // Nothing says the program has not just read a table.
            flipped_since_grace: true,
            expected_cells: BTreeMap::new(),
        }
    }
}

/// One change to the maps, in the order a plan lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Take a service's key out of `SERVICES` (packets stop matching it).
    RemoveService { name: String, key: ServiceKey },
    /// Make `SERVICES` changes visible to the program (its buckets).
    PublishServices,
    /// Wait one RCU grace period: nothing still reads what was replaced.
    WaitGrace,
    /// Give a new service an index (its state cleared); its `SERVICES`
    /// entry comes with [`Step::InsertService`].
    AddService {
        name: String,
        key: ServiceKey,
        index: u32,
    },
    /// Rewrite an existing backend's record.
    UpdateBackend { key: BackendKey, record: Backend },
    /// A backend in the configuration again: no longer retired.
    Unretire { key: BackendKey },
    /// A new backend record at a free index.
    AddBackend {
        key: BackendKey,
        index: u32,
        record: Backend,
        server: String,
        /// Where the next-fit search goes on (none for a reused index).
        cursor: Option<u32>,
    },
    /// Mark a record unused. Its index is `reused` for a new backend after
    /// a grace period, or else quarantined until the next one.
    ReleaseBackend { key: BackendKey, reused: bool },
    /// A service's table: written into the inactive slot and flipped as
    /// `flip` (the new generation), or, when `None`, already active.
    Table {
        name: String,
        index: u32,
        cells: Vec<u16>,
        flip: Option<u32>,
    },
    /// A new service's `SERVICES` entry, once its table exists.
    InsertService { name: String },
    /// `VIPS` to exactly these (VIP, number of services on it).
    SyncVips(BTreeMap<ServiceKey, u32>),
    /// Every node interface in `TX_PORTS`.
    SyncTxPorts,
    /// A backend left out of the configuration: out of the tables, its
    /// flows still reach it.
    RetireBackend { key: BackendKey, record: Backend },
    /// A removed service's state cleared (its index was quarantined when it
    /// left `SERVICES`), unless a new service has the index by now.
    DropService { index: u32 },
    /// Forget the expected tables of services not in this set.
    KeepExpected(BTreeSet<String>),
}

impl Ledger {
    /// The ledger after `step` was carried out on the maps.
    pub fn record(&mut self, step: &Step) {
        match step {
            Step::RemoveService { name, .. } => {
                // Packets that matched it may still read its index: not
                // given to another service before a grace period.
                if let Some(rt) = self.services.remove(name) {
                    self.quarantined_services.push(rt.index);
                }
            }
            Step::WaitGrace => {
                self.flipped_since_grace = false;
                self.quarantined_backends.clear();
                self.quarantined_services.clear();
            }
            Step::AddService { name, key, index } => {
                let rt = ServiceRuntime {
                    key: *key,
                    index: *index,
                };
                self.services.insert(name.clone(), rt);
            }
            Step::UpdateBackend { key, record } => {
                if let Some(rt) = self.backends.get_mut(key) {
                    rt.record = *record;
                }
            }
            Step::Unretire { key } => {
                if let Some(rt) = self.backends.get_mut(key) {
                    rt.retired = false;
                }
            }
            Step::AddBackend {
                key,
                index,
                record,
                server,
                cursor,
            } => {
                self.next_incarnation = self.next_incarnation.max(record.incarnation + 1);
                if let Some(c) = cursor {
                    self.cursor = *c;
                }
                let rt = BackendRuntime {
                    index: *index,
                    record: *record,
                    server: server.clone(),
                    retired: false,
                };
                self.backends.insert(*key, rt);
            }
            Step::ReleaseBackend { key, reused } => {
                if let Some(rt) = self.backends.remove(key)
                    && !*reused
                {
                    self.quarantined_backends.push(rt.index);
                }
            }
            Step::Table {
                name, cells, flip, ..
            } => {
                if let Some(generation) = flip {
                    self.generation = *generation;
                    self.flipped_since_grace = true;
                }
                self.expected_cells.insert(name.clone(), cells.clone());
            }
            Step::RetireBackend { key, record } => {
                if let Some(rt) = self.backends.get_mut(key) {
                    rt.retired = true;
                    rt.record = *record;
                }
            }
            Step::KeepExpected(names) => self.expected_cells.retain(|n, _| names.contains(n)),
            Step::PublishServices
            | Step::DropService { .. }
            | Step::InsertService { .. }
            | Step::SyncVips(_)
            | Step::SyncTxPorts => {}
        }
    }
}
