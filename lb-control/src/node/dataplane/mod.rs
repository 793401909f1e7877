//! The XDP program and its maps: loading, attaching, pinning, adopting a
//! running instance after a restart, replacing it on upgrade, detaching.
//!
//! Pins live in `<pin_dir>/v<MAP_ABI_VERSION>/`: one file per map, one
//! `link_<interface>` per attachment. A restarted controller re-opens the
//! pinned maps and links; when the program build and its load-time constants
//! are unchanged it keeps the running program (same id, not a packet lost),
//! otherwise it replaces it in place through the pinned link.

mod attach;
mod bpffs;
pub mod flows;
pub mod grace;
mod handles;
mod load;
pub mod maps;
mod migrate;
pub mod mmap;
mod pins;
mod plan;
pub mod services;
pub mod tables;
#[cfg(feature = "test-support")]
pub mod testbed;
pub mod xdp_log;

use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, xdp::DevMapHash},
};
use lb_common::{
    Backend, Counters, ServiceBucket, ServiceKey, ServiceState, ServiceValue, TableCells,
    flow_stats, global, guard,
};

use crate::config::{Config, Limits};
pub use bpffs::{InstanceLock, detach, ensure_bpffs, lock_instance, pin_dir};
pub use flows::{FlowSets, FlowTable};
use grace::GracePeriod;
use maps::{FlowLayout, MapSizes};
use mmap::MmapArray;
use tracing::{info, warn};

/// The XDP object built by `cargo xtask build-ebpf` (see `build.rs`).
pub static EMBEDDED_PROGRAM: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));
/// The same program with its debug log records (lb-ebpf's `debug-log`),
/// loaded instead with `[node] debug_xdp`.
pub static DEBUG_PROGRAM: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_DEBUG_OBJECT"));
/// Reference programs `xdp_floor` (MAC swap + `XDP_TX`, the benchmark floor)
/// and `xdp_pass` (what a veth peer needs for `XDP_TX` to reach it in labs).
pub static FLOOR_PROGRAM: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_FLOOR_OBJECT"));
/// Where the build left the XDP object with the first release's flow-entry
/// layout (upgrade tests load it with `node.program`). Built only with the
/// `test-support` feature.
#[cfg(feature = "test-support")]
pub const LEGACY_PROGRAM_PATH: &str = env!("LB_EBPF_LEGACY_OBJECT");

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("bpffs: {0}")]
    BpfFs(String),
    #[error("cannot read XDP object {path}: {source}")]
    Object {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "pinned map {path} does not match this build ({detail}); run `lb-control detach --config ...` to start afresh (drops flows) or go back to the matching build"
    )]
    Incompatible { path: PathBuf, detail: String },
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("XDP program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("attaching to {interface}: {message}")]
    Attach { interface: String, message: String },
    #[error("{0}")]
    Mmap(#[from] mmap::MmapError),
    #[error("{0}")]
    Grace(#[from] grace::GraceError),
    #[error(
        "another lb-control{} drives the pins in {}: stop it first (two would both write the maps)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("io on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataPlaneError {
    move |source| DataPlaneError::Map { name, source }
}

/// How the controller came to hold the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Adoption {
    /// Nothing was pinned: loaded and attached fresh.
    Fresh,
    /// Same build and constants were running: kept as is.
    Adopted,
    /// A different build was running: replaced in place, maps kept.
    Replaced,
}

/// The loaded program and typed handles to its maps.
pub struct DataPlane {
    _ebpf: Ebpf,
    pub dir: PathBuf,
    pub limits: Limits,
    pub stride: u32,
    pub adoption: Adoption,
    pub program_id: u32,
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub vips: HashMap<MapData, ServiceKey, u32>,
    pub backends: Array<MapData, Backend>,
    pub flows: FlowTable,
    pub tx_ports: DevMapHash<MapData>,
    pub service_stats: PerCpuArray<MapData, Counters>,
    pub backend_stats: PerCpuArray<MapData, Counters>,
    pub backend_last_seen: PerCpuArray<MapData, u32>,
    pub global_stats: PerCpuArray<MapData, u64>,
    /// Flow-table counters (absent from builds before it existed).
    pub flow_stats: Option<PerCpuArray<MapData, u64>>,
    /// Counters of the program's checks against forged and unparsed
    /// traffic (absent from builds before it existed).
    pub guard_stats: Option<PerCpuArray<MapData, u64>>,
    /// The tunnel sources and GUE port, and the tunnel counters (absent
    /// from builds before tunnels).
    pub tunnel: Option<Array<MapData, lb_common::encap::TunnelConfig>>,
    pub tunnel_stats: Option<PerCpuArray<MapData, u64>>,
    pub service_state: MmapArray<ServiceState>,
    /// The program's fast service index; follows `services` through
    /// [`DataPlane::publish_services`].
    pub service_buckets: MmapArray<ServiceBucket>,
    pub tables: MmapArray<TableCells>,
    pub grace: GracePeriod,
}

/// Program bytes: the configured object file or the embedded build (its
/// debug variant with `debug_xdp`).
pub fn program_bytes(config: &Config) -> Result<Vec<u8>, DataPlaneError> {
    match &config.node.program {
        Some(path) => std::fs::read(path).map_err(|source| DataPlaneError::Object {
            path: path.clone(),
            source,
        }),
        None if config.node.debug_xdp => Ok(DEBUG_PROGRAM.to_vec()),
        None => Ok(EMBEDDED_PROGRAM.to_vec()),
    }
}

impl DataPlane {
    /// Loads or adopts the program, attaches it to the configured interfaces
    /// and opens every map. What is pinned is read first and the plan made
    /// from it ([`plan`]) before anything changes; then the object is loaded
    /// with the maps pinned, flows carried over, the program attached.
    pub fn open(config: &Config) -> Result<Self, DataPlaneError> {
        ensure_bpffs()?;
        let bytes = program_bytes(config)?;
        let dir = pin_dir(config);
        std::fs::create_dir_all(&dir).map_err(|source| DataPlaneError::Io {
            path: dir.clone(),
            source,
        })?;
        // The program decides the flow table's layout; the loader follows.
        let layout = FlowLayout::of_object(&bytes);
        let specs = maps::specs(layout);
        let sizes = MapSizes::new(&config.limits);
        let identity = plan::build_identity(&bytes, config);
        let found = pins::inspect(&dir, &specs, &config.node.interfaces)?;
        let plan = plan::decide(&found, &specs, &sizes, identity).map_err(|m| {
            DataPlaneError::Incompatible {
                path: dir.join(m.name),
                detail: m.detail,
            }
        })?;
        let old_flows = match &plan.migrate_flows {
            Some(detail) => Some(migrate::unpin_old_flows(&dir, detail)?),
            None => None,
        };
        let mut ebpf = load::load(&bytes, config, &specs, &sizes, &dir)?;

        let seed = config.node.hash_seed;
        if let Some(old) = &old_flows {
            migrate::copy_flows(old, &mut ebpf, layout, seed, &sizes)?;
        }
        // The service index follows SERVICES before a new program reads it
        // (a build that predates it leaves the pinned SERVICES only).
        let mut service_buckets = handles::service_buckets(&ebpf, &sizes)?;
        services::publish(
            &mut service_buckets,
            &service_entries(&handles::services(&ebpf)?)?,
        );
        let mut flow_sets = handles::flow_sets(&ebpf, layout, &sizes, seed)?;
        let rehome = plan.adoption != Adoption::Adopted;
        if let (true, Some(table)) = (rehome, &mut flow_sets) {
            migrate::rehome(table, false);
        }
        let logs = xdp_log::object_logs(&ebpf);
        let ring_pinned = found
            .maps
            .iter()
            .any(|(name, _)| *name == maps::LOG_RING.name);
        if plan.adoption == Adoption::Replaced && ring_pinned != logs {
            say_variant_change(ring_pinned, config);
        }
        let program_id = attach::start(&mut ebpf, config, &dir, plan.adoption, identity)?;
        if !logs {
            xdp_log::unpin_ring(&dir);
        } else if let Err(e) = xdp_log::forward(&mut ebpf) {
            warn!(error = %e, "the XDP program logs, but its records stay unread");
        }
        if let Some(old) = old_flows {
            migrate::copy_flows(&old, &mut ebpf, layout, seed, &sizes)?;
        }
        if let (true, Some(table)) = (rehome, &mut flow_sets) {
            migrate::rehome(table, true);
        }
        let opened = handles::Opened {
            dir,
            limits: config.limits.clone(),
            sizes,
            adoption: plan.adoption,
            program_id,
            service_buckets,
            flow_sets,
        };
        let mut dp = handles::take_all(ebpf, opened)?;
        dp.set_tunnel(&config.node)?;
        Ok(dp)
    }

    /// Writes `[node] tunnel_source` and `gue_port` where the program reads
    /// them (before the servers that need them are programmed).
    ///
    /// # Errors
    /// The map cannot be written, or the running program predates tunnels
    /// while sources are configured.
    pub fn set_tunnel(&mut self, node: &crate::config::NodeConfig) -> Result<(), DataPlaneError> {
        use lb_common::encap::{TUNNEL_V4, TUNNEL_V6, TunnelConfig};
        let mut value = TunnelConfig {
            gue_port: node.gue_port.to_be_bytes(),
            ..TunnelConfig::default()
        };
        for source in &node.tunnel_source {
            match source {
                std::net::IpAddr::V4(a) => {
                    value.src4 = a.octets();
                    value.families |= TUNNEL_V4;
                }
                std::net::IpAddr::V6(a) => {
                    value.src6 = a.octets();
                    value.families |= TUNNEL_V6;
                }
            }
        }
        let name = lb_common::encap::MAP_TUNNEL;
        match &mut self.tunnel {
            Some(map) => map.set(0, value, 0).map_err(map_err(name)),
            None if value.families == 0 => Ok(()),
            None => Err(DataPlaneError::Incompatible {
                path: self.dir.join(name),
                detail: "the running XDP program predates tunnels (node.tunnel_source): restart with this build to replace it".into(),
            }),
        }
    }
    /// Makes `SERVICE_BUCKETS` say what `SERVICES` says; call after every
    /// change of `services`.
    pub fn publish_services(&mut self) -> Result<(), DataPlaneError> {
        let entries = service_entries(&self.services)?;
        services::publish(&mut self.service_buckets, &entries);
        Ok(())
    }

    /// Global counters summed over CPUs, by name.
    #[must_use]
    pub fn global_counters(&self) -> Vec<(&'static str, u64)> {
        let sum = |map: &PerCpuArray<MapData, u64>, i: u32| -> u64 {
            map.get(&i, 0).map_or(0, |per_cpu| per_cpu.iter().sum())
        };
        let mut out: Vec<(&'static str, u64)> = (0..global::COUNT)
            .map(|i| (global::NAMES[i as usize], sum(&self.global_stats, i)))
            .collect();
        if let Some(flow_stats) = &self.flow_stats {
            out.extend(
                (0..flow_stats::COUNT).map(|i| (flow_stats::NAMES[i as usize], sum(flow_stats, i))),
            );
        }
        if let Some(guard_stats) = &self.guard_stats {
            out.extend((0..guard::COUNT).map(|i| (guard::NAMES[i as usize], sum(guard_stats, i))));
        }
        if let Some(tunnel_stats) = &self.tunnel_stats {
            use lb_common::encap::stats;
            out.extend((0..stats::COUNT).map(|i| (stats::NAMES[i as usize], sum(tunnel_stats, i))));
        }
        out
    }

    /// A service's or backend's counters summed over CPUs.
    #[must_use]
    pub fn sum_counters(map: &PerCpuArray<MapData, Counters>, index: u32) -> Counters {
        let mut out = Counters::default();
        if let Ok(values) = map.get(&index, 0) {
            for c in values.iter() {
                out.packets += c.packets;
                out.bytes += c.bytes;
                out.new_flows += c.new_flows;
            }
        }
        out
    }

    /// Coarse second a backend last forwarded a packet (max over CPUs; 0 =
    /// never).
    #[must_use]
    pub fn backend_last_seen(&self, index: u32) -> u32 {
        self.backend_last_seen
            .get(&index, 0)
            .map_or(0, |v| v.iter().copied().max().unwrap_or(0))
    }
}

/// Says that the program about to be replaced is the other variant (debug
/// when `running_debug`, production otherwise): `debug_xdp` changed.
fn say_variant_change(running_debug: bool, config: &Config) {
    let variant = |debug: bool| if debug { "debug" } else { "production" };
    info!(
        running = variant(running_debug),
        loading = variant(!running_debug),
        debug_xdp = config.node.debug_xdp,
        "the running XDP program is the other variant: replacing it in place"
    );
}

/// The kernel's current coarse second, as the program computes it.
#[must_use]
pub fn now_coarse() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer. CLOCK_MONOTONIC_COARSE is what bpf_ktime_get_coarse_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    lb_common::coarse_secs(ts.tv_sec.cast_unsigned() * 1_000_000_000 + ts.tv_nsec.cast_unsigned())
}

/// Every (key, index) of a `SERVICES` map.
fn service_entries<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, ServiceKey, ServiceValue>,
) -> Result<Vec<(ServiceKey, u32)>, DataPlaneError> {
    map.iter()
        .map(|item| {
            item.map(|(k, v)| (k, v.index))
                .map_err(map_err(maps::SERVICES.name))
        })
        .collect()
}
