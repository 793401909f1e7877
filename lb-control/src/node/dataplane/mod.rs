//! The XDP program and its maps: loading, attaching, pinning, adopting a
//! running instance after a restart, replacing it on upgrade, detaching.
//!
//! Pins live in `<pin_dir>/v<MAP_ABI_VERSION>/`: one file per map, one
//! `link_<interface>` per attachment. A restarted controller re-opens the
//! pinned maps and links; when the program build and its load-time constants
//! are unchanged it keeps the running program (same id, not a packet lost),
//! otherwise it replaces it in place through the pinned link.

pub mod flows;
pub mod grace;
pub mod mmap;
pub mod services;
pub mod tables;
#[cfg(feature = "test-support")]
pub mod testbed;

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapInfo, MapType, PerCpuArray, xdp::DevMapHash},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    ALL_MAPS, Backend, Counters, FlowEntry, FlowEntryV0, FlowKey, FlowSet, GLOBAL_FLOW_SETS,
    GLOBAL_HASH_SEED, GLOBAL_SERVICE_BUCKETS, GLOBAL_TABLE_STRIDE, GLOBAL_UDP_IDLE_SECS,
    MAP_ABI_VERSION, MAP_BACKEND_LAST_SEEN, MAP_BACKEND_STATS, MAP_BACKENDS, MAP_FLOW_STATS,
    MAP_FLOWS, MAP_GLOBAL_STATS, MAP_SERVICE_BUCKETS, MAP_SERVICE_STATE, MAP_SERVICE_STATS,
    MAP_SERVICES, MAP_TABLES, MAP_TX_PORTS, MAP_VIPS, PROGRAM_NAME, ServiceBucket, ServiceKey,
    ServiceState, ServiceValue, TableCells, flow_sets, flow_stats, global, service_buckets,
    table_stride,
};
use tracing::{info, warn};

use crate::config::{Config, Limits, XdpModeConfig};
pub use flows::{FlowSets, FlowTable};
use grace::GracePeriod;
use mmap::MmapArray;

/// The XDP object built by `cargo xtask build-ebpf` (see `build.rs`).
pub static EMBEDDED_PROGRAM: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));
/// Reference programs `xdp_floor` (MAC swap + `XDP_TX`, the benchmark floor)
/// and `xdp_pass` (what a veth peer needs for `XDP_TX` to reach it in labs).
pub static FLOOR_PROGRAM: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_FLOOR_OBJECT"));
/// Where the build left the XDP object with the first release's flow-entry
/// layout (upgrade tests load it with `node.program`). Built only with the
/// `test-support` feature.
#[cfg(feature = "test-support")]
pub const LEGACY_PROGRAM_PATH: &str = env!("LB_EBPF_LEGACY_OBJECT");

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_F_RDONLY_PROG: u32 = 0x80;
const BPF_F_MMAPABLE: u32 = 0x400;

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

/// Expected shape of a pinned map.
struct Shape {
    name: &'static str,
    kind: MapType,
    key: u32,
    value: u32,
    entries: u32,
    flags: u32,
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
    pub service_state: MmapArray<ServiceState>,
    /// The program's fast service index; follows `services` through
    /// [`DataPlane::publish_services`].
    pub service_buckets: MmapArray<ServiceBucket>,
    pub tables: MmapArray<TableCells>,
    pub grace: GracePeriod,
}

/// Program bytes: the configured object file or the embedded build.
pub fn program_bytes(config: &Config) -> Result<Vec<u8>, DataPlaneError> {
    match &config.node.program {
        Some(path) => std::fs::read(path).map_err(|source| DataPlaneError::Object {
            path: path.clone(),
            source,
        }),
        None => Ok(EMBEDDED_PROGRAM.to_vec()),
    }
}

/// Makes sure a bpffs is mounted at /sys/fs/bpf.
pub fn ensure_bpffs() -> Result<(), DataPlaneError> {
    let path = Path::new("/sys/fs/bpf");
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| DataPlaneError::Io {
        path: path.to_owned(),
        source,
    })?;
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .map_err(|e| DataPlaneError::BpfFs(format!("running mount: {e}")))?;
    if !status.success() || !is_bpffs(path) {
        return Err(DataPlaneError::BpfFs(
            "/sys/fs/bpf is not a bpf filesystem and mounting one failed (are we root? inside `ip netns exec` /sys is private: use nsenter --net= instead)".into(),
        ));
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// The versioned pin directory of a config.
pub fn pin_dir(config: &Config) -> PathBuf {
    config.node.pin_dir.join(format!("v{MAP_ABI_VERSION}"))
}

fn link_pin(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

const BUILD_ID_FILE: &str = "BUILD_ID";

/// Identity of a program build with its load-time constants. Changing any
/// of them means the running program must be replaced.
fn build_identity(bytes: &[u8], config: &Config) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for x in b {
            h ^= *x as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(bytes);
    eat(&config.node.hash_seed.to_le_bytes());
    eat(&config.node.udp_idle_timeout.to_le_bytes());
    eat(&config.limits.max_table_size.to_le_bytes());
    h
}

fn expected_shapes(limits: &Limits, legacy_flows: bool) -> Vec<Shape> {
    use std::mem::size_of;
    let stride = table_stride(limits.max_table_size);
    vec![
        shape(
            MAP_SERVICES,
            MapType::Hash,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            limits.max_services,
            0,
        ),
        shape(
            MAP_SERVICE_BUCKETS,
            MapType::Array,
            4,
            size_of::<ServiceBucket>(),
            service_buckets(limits.max_services),
            BPF_F_MMAPABLE,
        ),
        shape(
            MAP_SERVICE_STATE,
            MapType::Array,
            4,
            size_of::<ServiceState>(),
            limits.max_services,
            BPF_F_MMAPABLE,
        ),
        shape(
            MAP_TABLES,
            MapType::Array,
            4,
            size_of::<TableCells>(),
            limits.max_services * 2 * stride,
            BPF_F_MMAPABLE,
        ),
        shape(
            MAP_BACKENDS,
            MapType::Array,
            4,
            size_of::<Backend>(),
            limits.max_backends,
            0,
        ),
        if legacy_flows {
            shape(
                MAP_FLOWS,
                MapType::LruHash,
                size_of::<FlowKey>(),
                size_of::<FlowEntryV0>(),
                limits.flow_table_size,
                0,
            )
        } else {
            shape(
                MAP_FLOWS,
                MapType::Array,
                4,
                size_of::<FlowSet>(),
                flow_sets(limits.flow_table_size),
                BPF_F_MMAPABLE,
            )
        },
        shape(
            MAP_VIPS,
            MapType::Hash,
            size_of::<ServiceKey>(),
            4,
            limits.max_services,
            0,
        ),
        shape(
            MAP_TX_PORTS,
            MapType::DevMapHash,
            4,
            8,
            lb_common::MAX_TX_PORTS,
            0,
        ),
        shape(
            MAP_SERVICE_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<Counters>(),
            limits.max_services,
            0,
        ),
        shape(
            MAP_BACKEND_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<Counters>(),
            limits.max_backends,
            0,
        ),
        shape(
            MAP_BACKEND_LAST_SEEN,
            MapType::PerCpuArray,
            4,
            4,
            limits.max_backends,
            0,
        ),
        shape(
            MAP_GLOBAL_STATS,
            MapType::PerCpuArray,
            4,
            8,
            global::COUNT,
            0,
        ),
        shape(
            MAP_FLOW_STATS,
            MapType::PerCpuArray,
            4,
            8,
            flow_stats::COUNT,
            0,
        ),
    ]
}

fn shape(
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
    entries: u32,
    flags: u32,
) -> Shape {
    Shape {
        name,
        kind,
        key: key as u32,
        value: value as u32,
        entries,
        flags,
    }
}

/// Value size of the flow table in an object file (the program decides its
/// layout; the loader follows it).
fn object_flow_value_size(bytes: &[u8]) -> Option<u32> {
    let obj = aya_obj::Object::parse(bytes).ok()?;
    obj.maps.get(MAP_FLOWS).map(|map| map.value_size())
}

impl DataPlane {
    /// Loads or adopts the program, attaches it to the configured interfaces
    /// and opens every map.
    pub fn open(config: &Config) -> Result<Self, DataPlaneError> {
        ensure_bpffs()?;
        let bytes = program_bytes(config)?;
        let dir = pin_dir(config);
        std::fs::create_dir_all(&dir).map_err(|source| DataPlaneError::Io {
            path: dir.clone(),
            source,
        })?;
        let limits = config.limits.clone();
        // The program decides the flow table's layout; the loader follows.
        let legacy =
            object_flow_value_size(&bytes) == Some(std::mem::size_of::<FlowEntryV0>() as u32);

        // Check every pinned map against what this build expects; the flow
        // table alone may be migrated (layout or size change).
        let mut migrating_flows: Option<MapData> = None;
        for want in expected_shapes(&limits, legacy) {
            let path = dir.join(want.name);
            if !path.exists() {
                continue;
            }
            let have = MapInfo::from_pin(&path).map_err(map_err(want.name))?;
            let same = have.map_type().ok() == Some(want.kind)
                && have.key_size() == want.key
                && have.value_size() == want.value
                && have.max_entries() == want.entries
                // The kernel marks devmaps read-only for programs (0x80).
                && have.map_flags() & !BPF_F_RDONLY_PROG == want.flags;
            if same {
                continue;
            }
            let detail = format!(
                "{:?} key {} value {} entries {} flags {:#x}; expected {:?} key {} value {} entries {} flags {:#x}",
                have.map_type().ok(),
                have.key_size(),
                have.value_size(),
                have.max_entries(),
                have.map_flags(),
                want.kind,
                want.key,
                want.value,
                want.entries,
                want.flags
            );
            if want.name == MAP_FLOWS && migratable_flows(&have) {
                // Hold the old table open, then unpin it so the loader
                // creates the new one in its place (bpffs cannot rename).
                // The running program keeps using the old table until it
                // is replaced.
                let old = MapData::from_pin(&path).map_err(map_err(MAP_FLOWS))?;
                std::fs::remove_file(&path).map_err(|source| DataPlaneError::Io {
                    path: path.clone(),
                    source,
                })?;
                info!(%detail, "flow table layout changed; migrating its entries");
                migrating_flows = Some(old);
            } else {
                return Err(DataPlaneError::Incompatible { path, detail });
            }
        }

        let stride = table_stride(limits.max_table_size);
        let seed = config.node.hash_seed;
        let idle = config.node.udp_idle_timeout;
        let sets = flow_sets(limits.flow_table_size);
        let buckets = service_buckets(limits.max_services);
        let map_paths: Vec<(&str, PathBuf)> = ALL_MAPS
            .iter()
            .map(|name| (*name, dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader
            .override_global(GLOBAL_HASH_SEED, &seed, true)
            .override_global(GLOBAL_TABLE_STRIDE, &stride, true)
            .override_global(GLOBAL_UDP_IDLE_SECS, &idle, true)
            .override_global(GLOBAL_FLOW_SETS, &sets, true)
            .override_global(GLOBAL_SERVICE_BUCKETS, &buckets, true)
            .map_max_entries(MAP_SERVICE_BUCKETS, buckets)
            .map_max_entries(MAP_SERVICES, limits.max_services)
            .map_max_entries(MAP_SERVICE_STATE, limits.max_services)
            .map_max_entries(MAP_TABLES, limits.max_services * 2 * stride)
            .map_max_entries(MAP_BACKENDS, limits.max_backends)
            .map_max_entries(
                MAP_FLOWS,
                if legacy { limits.flow_table_size } else { sets },
            )
            .map_max_entries(MAP_VIPS, limits.max_services)
            .map_max_entries(MAP_SERVICE_STATS, limits.max_services)
            .map_max_entries(MAP_BACKEND_STATS, limits.max_backends)
            .map_max_entries(MAP_BACKEND_LAST_SEEN, limits.max_backends);
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(&bytes)?;

        let identity = build_identity(&bytes, config);
        let id_path = dir.join(BUILD_ID_FILE);
        let running_identity = read_build_id(&id_path);
        let all_linked = config
            .node
            .interfaces
            .iter()
            .all(|i| link_pin(&dir, i).exists());
        let adoption =
            if running_identity == Some(identity) && all_linked && migrating_flows.is_none() {
                Adoption::Adopted
            } else if config
                .node
                .interfaces
                .iter()
                .any(|i| link_pin(&dir, i).exists())
            {
                Adoption::Replaced
            } else {
                Adoption::Fresh
            };

        // Flow entries from the old table go to the new one before the new
        // program takes over, and once more after, for flows the old program
        // created in between.
        if let Some(old) = &migrating_flows {
            migrate_flows(old, &mut ebpf, legacy, seed, sets)?;
        }
        // The service index follows SERVICES before a new program reads it
        // (a build that predates it leaves the pinned SERVICES only).
        let mut service_buckets = MmapArray::new(
            MAP_SERVICE_BUCKETS,
            map_data(map_ref(&ebpf, MAP_SERVICE_BUCKETS)?).fd().as_fd(),
            buckets,
        )?;
        {
            let pinned: HashMap<_, ServiceKey, ServiceValue> =
                HashMap::try_from(map_ref(&ebpf, MAP_SERVICES)?).map_err(map_err(MAP_SERVICES))?;
            services::publish(&mut service_buckets, &service_entries(&pinned)?);
        }
        // Flow entries a program with another hash seed placed (the seed
        // changed) go where this seed places them: copied before the new
        // program takes over, the originals freed after, so established
        // flows stay on their servers across a seed change.
        let mut flow_sets = if legacy {
            None
        } else {
            Some(FlowSets::new(
                map_data(map_ref(&ebpf, MAP_FLOWS)?).fd().as_fd(),
                sets,
                seed,
            )?)
        };
        let rehome = adoption != Adoption::Adopted;
        if let (true, Some(table)) = (rehome, &mut flow_sets) {
            let away = table.rehome(false);
            if away > 0 {
                info!(
                    away,
                    "flow entries placed under another hash seed; copied to their places"
                );
            }
        }

        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| DataPlaneError::Attach {
                interface: "-".into(),
                message: format!("object has no program `{PROGRAM_NAME}`"),
            })?
            .try_into()?;
        let program_id = if adoption == Adoption::Adopted {
            let link = PinnedLink::from_pin(link_pin(&dir, &config.node.interfaces[0])).map_err(
                |source| DataPlaneError::Link {
                    path: link_pin(&dir, &config.node.interfaces[0]),
                    source,
                },
            )?;
            let id = link_program_id(link)?;
            info!(program_id = id, dir = %dir.display(), "adopted the running XDP program");
            id
        } else {
            program.load()?;
            for interface in &config.node.interfaces {
                attach_or_replace(program, &dir, interface, config.node.xdp_mode)?;
            }
            let id = program.info()?.id();
            write_build_id(&dir.join(BUILD_ID_FILE), identity)?;
            info!(program_id = id, ?adoption, dir = %dir.display(), "XDP program attached");
            id
        };
        detach_stale_links(&dir, &config.node.interfaces);
        if let Some(old) = migrating_flows.take() {
            migrate_flows(&old, &mut ebpf, legacy, seed, sets)?;
        }
        if let (true, Some(table)) = (rehome, &mut flow_sets) {
            let moved = table.rehome(true);
            if moved > 0 {
                info!(
                    moved,
                    "flow entries moved to their places under this hash seed"
                );
            }
        }

        let services =
            HashMap::try_from(take(&mut ebpf, MAP_SERVICES)?).map_err(map_err(MAP_SERVICES))?;
        let vips = HashMap::try_from(take(&mut ebpf, MAP_VIPS)?).map_err(map_err(MAP_VIPS))?;
        let backends =
            Array::try_from(take(&mut ebpf, MAP_BACKENDS)?).map_err(map_err(MAP_BACKENDS))?;
        let flows_map = take(&mut ebpf, MAP_FLOWS)?;
        let flows = match flow_sets {
            Some(table) => FlowTable::Sets(table),
            None => FlowTable::Legacy(HashMap::try_from(flows_map).map_err(map_err(MAP_FLOWS))?),
        };
        let tx_ports =
            DevMapHash::try_from(take(&mut ebpf, MAP_TX_PORTS)?).map_err(map_err(MAP_TX_PORTS))?;
        let service_stats = PerCpuArray::try_from(take(&mut ebpf, MAP_SERVICE_STATS)?)
            .map_err(map_err(MAP_SERVICE_STATS))?;
        let backend_stats = PerCpuArray::try_from(take(&mut ebpf, MAP_BACKEND_STATS)?)
            .map_err(map_err(MAP_BACKEND_STATS))?;
        let backend_last_seen = PerCpuArray::try_from(take(&mut ebpf, MAP_BACKEND_LAST_SEEN)?)
            .map_err(map_err(MAP_BACKEND_LAST_SEEN))?;
        let global_stats = PerCpuArray::try_from(take(&mut ebpf, MAP_GLOBAL_STATS)?)
            .map_err(map_err(MAP_GLOBAL_STATS))?;
        let flow_stats = match ebpf.take_map(MAP_FLOW_STATS) {
            Some(map) => Some(PerCpuArray::try_from(map).map_err(map_err(MAP_FLOW_STATS))?),
            None => None,
        };
        let state_map = take(&mut ebpf, MAP_SERVICE_STATE)?;
        let service_state = MmapArray::new(
            MAP_SERVICE_STATE,
            map_data(&state_map).fd().as_fd(),
            limits.max_services,
        )?;
        let tables_map = take(&mut ebpf, MAP_TABLES)?;
        let tables = MmapArray::new(
            MAP_TABLES,
            map_data(&tables_map).fd().as_fd(),
            limits.max_services * 2 * stride,
        )?;
        Ok(Self {
            service_buckets,
            _ebpf: ebpf,
            dir,
            limits,
            stride,
            adoption,
            program_id,
            services,
            vips,
            backends,
            flows,
            tx_ports,
            service_stats,
            backend_stats,
            backend_last_seen,
            global_stats,
            flow_stats,
            service_state,
            tables,
            grace: GracePeriod::new()?,
        })
    }

    /// Makes `SERVICE_BUCKETS` say what `SERVICES` says; call after every
    /// change of `services`.
    pub fn publish_services(&mut self) -> Result<(), DataPlaneError> {
        let entries = service_entries(&self.services)?;
        services::publish(&mut self.service_buckets, &entries);
        Ok(())
    }

    /// Global counters summed over CPUs, by name.
    pub fn global_counters(&self) -> Vec<(&'static str, u64)> {
        let sum = |map: &PerCpuArray<MapData, u64>, i: u32| -> u64 {
            map.get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        let mut out: Vec<(&'static str, u64)> = (0..global::COUNT)
            .map(|i| (global::NAMES[i as usize], sum(&self.global_stats, i)))
            .collect();
        if let Some(flow_stats) = &self.flow_stats {
            out.extend(
                (0..flow_stats::COUNT).map(|i| (flow_stats::NAMES[i as usize], sum(flow_stats, i))),
            );
        }
        out
    }

    /// A service's or backend's counters summed over CPUs.
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
    pub fn backend_last_seen(&self, index: u32) -> u32 {
        self.backend_last_seen
            .get(&index, 0)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// The kernel's current coarse second, as the program computes it.
pub fn now_coarse() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer. CLOCK_MONOTONIC_COARSE is what bpf_ktime_get_coarse_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    lb_common::coarse_secs(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataPlaneError> {
    ebpf.take_map(name).ok_or(DataPlaneError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map, DataPlaneError> {
    ebpf.map(name).ok_or(DataPlaneError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m) => m,
        Map::HashMap(m) => m,
        Map::LruHashMap(m) => m,
        Map::PerCpuArray(m) => m,
        Map::DevMapHash(m) => m,
        other => panic!("unexpected map kind {other:?}"),
    }
}

/// The build identity lives in a one-value array pinned beside the maps
/// (bpffs holds only BPF objects, no regular files).
fn read_build_id(path: &Path) -> Option<u64> {
    let data = MapData::from_pin(path).ok()?;
    let array: Array<MapData, u64> = Array::try_from(Map::Array(data)).ok()?;
    array.get(&0, 0).ok()
}

fn write_build_id(path: &Path, id: u64) -> Result<(), DataPlaneError> {
    let mut array = match MapData::from_pin(path) {
        Ok(data) => Array::try_from(Map::Array(data)).map_err(map_err("BUILD_ID"))?,
        Err(_) => {
            let array: Array<MapData, u64> = Array::create(1, 0).map_err(map_err("BUILD_ID"))?;
            let data: &MapData = array_data(&array);
            data.pin(path).map_err(|source| DataPlaneError::Pin {
                path: path.to_owned(),
                source,
            })?;
            array
        }
    };
    array.set(0, id, 0).map_err(map_err("BUILD_ID"))
}

fn array_data(array: &Array<MapData, u64>) -> &MapData {
    use aya::maps::IterableMap as _;
    array.map()
}

fn link_program_id(link: PinnedLink) -> Result<u32, DataPlaneError> {
    let fd_link: FdLink = link.into();
    let info = fd_link.info().map_err(|source| DataPlaneError::Link {
        path: PathBuf::from("-"),
        source,
    })?;
    // Dropping an FdLink obtained from a pin does not detach: the pin holds it.
    Ok(info.program_id())
}

fn attach_or_replace(
    program: &mut Xdp,
    dir: &Path,
    interface: &str,
    mode: XdpModeConfig,
) -> Result<(), DataPlaneError> {
    let pin = link_pin(dir, interface);
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin).map_err(|source| DataPlaneError::Link {
            path: pin.clone(),
            source,
        })?;
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link).map_err(|e| DataPlaneError::Attach {
            interface: interface.into(),
            message: e.to_string(),
        })?;
        let id = program.attach_to_link(link)?;
        // The link stays pinned; release our handle without detaching.
        let link = program.take_link(id)?;
        std::mem::forget(link);
        info!(interface, "replaced the XDP program in place");
        return Ok(());
    }
    warn_if_vlan(interface);
    let modes: &[(aya::programs::XdpMode, &str)] = match mode {
        XdpModeConfig::Auto => &[
            (aya::programs::XdpMode::Driver, "driver"),
            (aya::programs::XdpMode::Skb, "skb"),
        ],
        XdpModeConfig::Driver => &[(aya::programs::XdpMode::Driver, "driver")],
        XdpModeConfig::Skb => &[(aya::programs::XdpMode::Skb, "skb")],
    };
    let mut last = String::new();
    for (m, label) in modes {
        match program.attach(interface, *m) {
            Ok(id) => {
                let link = program.take_link(id)?;
                let fd_link = FdLink::try_from(link).map_err(|e| DataPlaneError::Attach {
                    interface: interface.into(),
                    message: format!("{e} (the kernel must support bpf links for XDP)"),
                })?;
                fd_link.pin(&pin).map_err(|source| DataPlaneError::Pin {
                    path: pin.clone(),
                    source,
                })?;
                info!(interface, mode = label, "attached XDP program");
                return Ok(());
            }
            Err(e) => {
                if mode == XdpModeConfig::Auto {
                    info!(interface, mode = label, error = %e, "XDP mode not available");
                }
                last = e.to_string();
            }
        }
    }
    Err(DataPlaneError::Attach {
        interface: interface.into(),
        message: last,
    })
}

/// Removes links pinned for interfaces no longer in the config.
fn detach_stale_links(dir: &Path, interfaces: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(ifname) = name.strip_prefix("link_")
            && !interfaces.iter().any(|i| i == ifname)
            && let Ok(link) = PinnedLink::from_pin(e.path())
        {
            // Unpinning and dropping the last reference detaches it.
            let _ = link.unpin();
            info!(
                interface = ifname,
                "detached from interface no longer configured"
            );
        }
    }
}

fn warn_if_vlan(interface: &str) {
    let Ok(text) = std::fs::read_to_string("/proc/net/vlan/config") else {
        return;
    };
    let tagged = text
        .lines()
        .filter_map(|l| l.split('|').map(str::trim).nth(2))
        .any(|parent| parent == interface);
    if tagged {
        warn!(
            interface,
            "interface carries VLAN-tagged traffic; tagged frames are passed to the stack, not balanced"
        );
    }
}

/// Every (key, index) of a `SERVICES` map.
fn service_entries<T: std::borrow::Borrow<MapData>>(
    map: &HashMap<T, ServiceKey, ServiceValue>,
) -> Result<Vec<(ServiceKey, u32)>, DataPlaneError> {
    map.iter()
        .map(|item| {
            item.map(|(k, v)| (k, v.index))
                .map_err(map_err(MAP_SERVICES))
        })
        .collect()
}

/// Whether a pinned flow table can be migrated into this build's: a kernel
/// LRU hash of either earlier entry layout, or a set array of another size.
fn migratable_flows(have: &MapInfo) -> bool {
    use std::mem::size_of;
    match have.map_type().ok() {
        Some(MapType::LruHash) => {
            have.key_size() == size_of::<FlowKey>() as u32
                && [size_of::<FlowEntryV0>(), size_of::<FlowEntry>()]
                    .contains(&(have.value_size() as usize))
        }
        Some(MapType::Array) => have.value_size() == size_of::<FlowSet>() as u32,
        _ => false,
    }
}

/// Entries of a pinned old flow table, in any layout [`migratable_flows`]
/// accepts.
fn old_flow_entries(old: &MapData, seed: u32) -> Result<Vec<(FlowKey, FlowEntry)>, DataPlaneError> {
    let info = old.info().map_err(map_err(MAP_FLOWS))?;
    if info.map_type().ok() == Some(MapType::Array) {
        let sets = FlowSets::new(old.fd().as_fd(), info.max_entries(), seed)?;
        return Ok(sets.entries());
    }
    let old_map = Map::LruHashMap(
        MapData::from_fd(old.fd().as_fd().try_clone_to_owned().map_err(|source| {
            DataPlaneError::Io {
                path: PathBuf::from(MAP_FLOWS),
                source,
            }
        })?)
        .map_err(map_err(MAP_FLOWS))?,
    );
    Ok(
        if info.value_size() == std::mem::size_of::<FlowEntryV0>() as u32 {
            let m: HashMap<_, FlowKey, FlowEntryV0> =
                HashMap::try_from(&old_map).map_err(map_err(MAP_FLOWS))?;
            m.iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (k, v.into()))
                .collect()
        } else {
            let m: HashMap<_, FlowKey, FlowEntry> =
                HashMap::try_from(&old_map).map_err(map_err(MAP_FLOWS))?;
            m.iter().filter_map(Result::ok).collect()
        },
    )
}

/// Copies every entry of the pinned old flow table into the new one,
/// converting the layout.
fn migrate_flows(
    old: &MapData,
    ebpf: &mut Ebpf,
    legacy_new: bool,
    seed: u32,
    new_sets: u32,
) -> Result<(), DataPlaneError> {
    let entries = old_flow_entries(old, seed)?;
    let new = ebpf.map_mut(MAP_FLOWS).ok_or(DataPlaneError::Map {
        name: MAP_FLOWS,
        source: aya::maps::MapError::InvalidName {
            name: MAP_FLOWS.into(),
        },
    })?;
    let mut copied = 0usize;
    if legacy_new {
        let mut m: HashMap<_, FlowKey, FlowEntryV0> =
            HashMap::try_from(new).map_err(map_err(MAP_FLOWS))?;
        for (k, v) in &entries {
            let v0 = FlowEntryV0 {
                backend: v.backend,
                incarnation: v.incarnation,
            };
            copied += m.insert(k, v0, 0).is_ok() as usize;
        }
    } else {
        let mut sets = FlowSets::new(map_data(new).fd().as_fd(), new_sets, seed)?;
        let now = now_coarse();
        for (k, v) in &entries {
            let mut v = *v;
            if v.last_seen == 0 {
                v.last_seen = now;
            }
            copied += sets.insert(k, &v) as usize;
        }
    }
    info!(entries = entries.len(), copied, "flow table migrated");
    Ok(())
}

/// Detaches the program from every interface and removes every pin.
pub fn detach(config: &Config) -> Result<(), DataPlaneError> {
    let dir = pin_dir(config);
    if !dir.exists() {
        info!(dir = %dir.display(), "nothing pinned");
        return Ok(());
    }
    let entries = std::fs::read_dir(&dir).map_err(|source| DataPlaneError::Io {
        path: dir.clone(),
        source,
    })?;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("link_")
            && let Ok(link) = PinnedLink::from_pin(&path)
        {
            let _ = link.unpin();
            info!(link = %name, "detached");
            continue;
        }
        let _ = std::fs::remove_file(&path);
    }
    std::fs::remove_dir(&dir).map_err(|source| DataPlaneError::Io {
        path: dir.clone(),
        source,
    })?;
    let _ = std::fs::remove_dir(&config.node.pin_dir);
    info!(dir = %dir.display(), "detached and unpinned everything");
    Ok(())
}
