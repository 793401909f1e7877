//! What the node shows of its maps: backends, services and servers for
//! `lbctl` and the manager, and the read-back of the last apply.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use super::{
    Node,
    dataplane::{DataPlane, tables},
    ledger::ServiceRuntime,
};
use crate::model::state_name;

/// A map that does not read back as the last apply wrote it.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("service `{name}`: SERVICES names index {found} instead of {expected}")]
    ServiceIndex {
        name: String,
        found: u32,
        expected: u32,
    },
    #[error("service `{name}`: SERVICES lookup: {source}")]
    ServiceLookup {
        name: String,
        source: aya::maps::MapError,
    },
    #[error("service `{name}`: SERVICE_BUCKETS names index {found} instead of {expected}")]
    BucketIndex {
        name: String,
        found: u32,
        expected: u32,
    },
    #[error("service `{name}`: missing from SERVICE_BUCKETS and its bucket does not overflow")]
    BucketMissing { name: String },
    #[error(
        "service `{name}`: active table differs from the one written (first difference at cell {at:?}, {read} vs {written} cells)"
    )]
    Table {
        name: String,
        at: Option<usize>,
        read: usize,
        written: usize,
    },
    #[error("BACKENDS[{index}]: {source}")]
    BackendLookup {
        index: u32,
        source: aya::maps::MapError,
    },
    #[error("backend {index} ({addr}): record reads back differently from the one written")]
    Backend { index: u32, addr: IpAddr },
}

impl Node {
    /// Every programmed (service, server) pair with its state, the time
    /// since it last received a packet and, when asked, the flow-table
    /// entries that point at it (walks the flow table).
    #[must_use]
    pub fn backend_status(&self, count_flows: bool) -> Vec<lb_proto::BackendStatus> {
        let names: BTreeMap<u32, &String> = self
            .ledger
            .services
            .iter()
            .map(|(n, s)| (s.index, n))
            .collect();
        let mut flows: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        if count_flows {
            for (_, backend, incarnation) in self.dp.flows.entries() {
                *flows.entry((backend, incarnation)).or_default() += 1;
            }
        }
        let now = crate::node::dataplane::now_coarse();
        self.ledger
            .backends
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
                        state_name(b.record.state)
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
    pub fn verify(&self) -> Result<(), VerifyError> {
        for (name, rt) in &self.ledger.services {
            self.verify_service(name, rt)?;
        }
        for ((_, addr), rt) in &self.ledger.backends {
            let read = self.dp.backends.get(&rt.index, 0).map_err(|source| {
                VerifyError::BackendLookup {
                    index: rt.index,
                    source,
                }
            })?;
            if read != rt.record {
                return Err(VerifyError::Backend {
                    index: rt.index,
                    addr: *addr,
                });
            }
        }
        Ok(())
    }

    fn verify_service(&self, name: &str, rt: &ServiceRuntime) -> Result<(), VerifyError> {
        let name = name.to_owned();
        match self.dp.services.get(&rt.key, 0) {
            Ok(v) if v.index == rt.index => {}
            Ok(v) => {
                return Err(VerifyError::ServiceIndex {
                    name,
                    found: v.index,
                    expected: rt.index,
                });
            }
            Err(source) => return Err(VerifyError::ServiceLookup { name, source }),
        }
        // What the program reads first: the bucket names the same index,
        // or sends the program on to SERVICES.
        match crate::node::dataplane::services::lookup(&self.dp.service_buckets, &rt.key) {
            Ok(index) if index == rt.index => {}
            Ok(found) => {
                return Err(VerifyError::BucketIndex {
                    name,
                    found,
                    expected: rt.index,
                });
            }
            Err(true) => {}
            Err(false) => return Err(VerifyError::BucketMissing { name }),
        }
        if let Some(cells) = self.ledger.expected_cells.get(&name) {
            let read = tables::read_active(
                &self.dp.service_state,
                &self.dp.tables,
                self.dp.stride,
                rt.index,
            );
            if &read != cells {
                let at = read.iter().zip(cells).position(|(a, b)| a != b);
                return Err(VerifyError::Table {
                    name,
                    at,
                    read: read.len(),
                    written: cells.len(),
                });
            }
        }
        Ok(())
    }

    /// Services with their counters, for `lbctl service list`.
    #[must_use]
    pub fn service_views(&self) -> Vec<ServiceView> {
        self.desired
            .model
            .services
            .iter()
            .filter_map(|s| {
                let rt = self.ledger.services.get(&s.name)?;
                let state = self.dp.service_state.get(rt.index);
                let c = DataPlane::sum_counters(&self.dp.service_stats, rt.index);
                Some(ServiceView {
                    name: s.name.clone(),
                    vip: s.vip,
                    port: s.port,
                    protocol: format!("{:?}", s.protocol).to_lowercase(),
                    index: rt.index,
                    active_slot: state.active,
                    table_size: state.size[state.active as usize & 1],
                    generation: state.generation,
                    servers: s.servers.len(),
                    packets: c.packets,
                    bytes: c.bytes,
                    new_flows: c.new_flows,
                })
            })
            .collect()
    }

    /// Servers (per service) with state and counters, for `lbctl server list`.
    #[must_use]
    pub fn server_views(&self) -> Vec<ServerView> {
        let now = crate::node::dataplane::now_coarse();
        let mut out = Vec::new();
        for server in &self.desired.servers {
            let mut row = ServerView {
                name: server.name.clone(),
                address: server.address,
                state: format!("{:?}", server.state).to_lowercase(),
                weight: server.weight,
                services: Vec::new(),
            };
            for (name, rt) in &self.ledger.services {
                let Some(b) = self.ledger.backends.get(&(rt.index, server.address)) else {
                    continue;
                };
                let c = DataPlane::sum_counters(&self.dp.backend_stats, b.index);
                let seen = self.dp.backend_last_seen(b.index);
                let scale = self
                    .desired
                    .model
                    .service(name)
                    .map_or(1, |s| s.weight_scale);
                row.services.push(BackendView {
                    service: name.clone(),
                    weight: crate::manager::weights::display_weight(
                        self.desired.weight_in(server, name),
                        scale,
                    ),
                    backend: b.index,
                    incarnation: b.record.incarnation,
                    state: if b.retired {
                        "retired"
                    } else {
                        state_name(b.record.state)
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
    #[must_use]
    pub fn backend_index(&self, service: &str, server: IpAddr) -> Option<u32> {
        let rt = self.ledger.services.get(service)?;
        self.ledger
            .backends
            .get(&(rt.index, server))
            .map(|b| b.index)
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
