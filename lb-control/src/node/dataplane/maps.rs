//! The program's maps, declared once: name, kind, key and value sizes, how
//! many entries the limits give it, flags. The table drives the check of
//! pinned maps, the loader's sizes and pins, and the handles the controller
//! takes; a test holds it to the maps the built object declares.
//!
//! The key and value sizes come from the `lb_common` types the program and
//! the handles use (their layouts are checked at compile time there).

use std::mem::size_of;

use aya::maps::MapType;
use lb_common::{
    Backend, Counters, FlowEntryV0, FlowKey, FlowSet, MAP_BACKEND_LAST_SEEN, MAP_BACKEND_STATS,
    MAP_BACKENDS, MAP_FLOW_STATS, MAP_FLOWS, MAP_GLOBAL_STATS, MAP_GUARD_STATS,
    MAP_SERVICE_BUCKETS, MAP_SERVICE_STATE, MAP_SERVICE_STATS, MAP_SERVICES, MAP_TABLES,
    MAP_TX_PORTS, MAP_VIPS, MAX_TX_PORTS, ServiceBucket, ServiceKey, ServiceState, ServiceValue,
    TableCells,
    encap::{self, TunnelConfig},
    flow_sets, flow_stats, global, guard, service_buckets, table_stride,
};

use crate::config::Limits;

/// `BPF_F_MMAPABLE`: the controller maps the array into its memory.
pub const BPF_F_MMAPABLE: u32 = 0x400;

/// Which of the limits sizes a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entries {
    /// One per service (`max_services`).
    Services,
    /// The service index's buckets for `max_services`.
    ServiceBuckets,
    /// One per (service, server) pair (`max_backends`).
    Backends,
    /// Two table slots of `max_table_size` cells per service.
    TableElements,
    /// The flow table's sets for `flow_table_size` flows.
    FlowSets,
    /// `flow_table_size` flows (the first release's LRU hash).
    Flows,
    /// Fixed by the program, whatever the limits.
    Fixed(u32),
}

/// One map of the program.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapType,
    /// Key size in bytes.
    pub key: u32,
    /// Value size in bytes.
    pub value: u32,
    pub entries: Entries,
    pub flags: u32,
    /// Builds from before the map existed do not declare it.
    pub optional: bool,
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "map keys and values are a few hundred bytes"
)]
const fn spec<K, V>(name: &'static str, kind: MapType, entries: Entries, flags: u32) -> MapSpec {
    MapSpec {
        name,
        kind,
        key: size_of::<K>() as u32,
        value: size_of::<V>() as u32,
        entries,
        flags,
        optional: false,
    }
}

pub const SERVICES: MapSpec =
    spec::<ServiceKey, ServiceValue>(MAP_SERVICES, MapType::Hash, Entries::Services, 0);
pub const SERVICE_BUCKETS: MapSpec = spec::<u32, ServiceBucket>(
    MAP_SERVICE_BUCKETS,
    MapType::Array,
    Entries::ServiceBuckets,
    BPF_F_MMAPABLE,
);
pub const SERVICE_STATE: MapSpec = spec::<u32, ServiceState>(
    MAP_SERVICE_STATE,
    MapType::Array,
    Entries::Services,
    BPF_F_MMAPABLE,
);
pub const TABLES: MapSpec = spec::<u32, TableCells>(
    MAP_TABLES,
    MapType::Array,
    Entries::TableElements,
    BPF_F_MMAPABLE,
);
pub const BACKENDS: MapSpec =
    spec::<u32, Backend>(MAP_BACKENDS, MapType::Array, Entries::Backends, 0);
/// The flow table of this release: an array of sets.
pub const FLOWS: MapSpec =
    spec::<u32, FlowSet>(MAP_FLOWS, MapType::Array, Entries::FlowSets, BPF_F_MMAPABLE);
/// The flow table of the first release: a kernel LRU hash.
pub const LEGACY_FLOWS: MapSpec =
    spec::<FlowKey, FlowEntryV0>(MAP_FLOWS, MapType::LruHash, Entries::Flows, 0);
pub const VIPS: MapSpec = spec::<ServiceKey, u32>(MAP_VIPS, MapType::Hash, Entries::Services, 0);
/// Devmap values are the egress ifindex and a program fd.
pub const TX_PORTS: MapSpec = spec::<u32, u64>(
    MAP_TX_PORTS,
    MapType::DevMapHash,
    Entries::Fixed(MAX_TX_PORTS),
    0,
);
pub const SERVICE_STATS: MapSpec = spec::<u32, Counters>(
    MAP_SERVICE_STATS,
    MapType::PerCpuArray,
    Entries::Services,
    0,
);
pub const BACKEND_STATS: MapSpec = spec::<u32, Counters>(
    MAP_BACKEND_STATS,
    MapType::PerCpuArray,
    Entries::Backends,
    0,
);
pub const BACKEND_LAST_SEEN: MapSpec = spec::<u32, u32>(
    MAP_BACKEND_LAST_SEEN,
    MapType::PerCpuArray,
    Entries::Backends,
    0,
);
pub const GLOBAL_STATS: MapSpec = spec::<u32, u64>(
    MAP_GLOBAL_STATS,
    MapType::PerCpuArray,
    Entries::Fixed(global::COUNT),
    0,
);
pub const FLOW_STATS: MapSpec = MapSpec {
    optional: true,
    ..spec::<u32, u64>(
        MAP_FLOW_STATS,
        MapType::PerCpuArray,
        Entries::Fixed(flow_stats::COUNT),
        0,
    )
};
/// Counters of the program's checks against forged and unparsed traffic;
/// sized by [`guard::CAPACITY`], not by the counters in use, so that a new
/// one keeps the pinned shape.
pub const GUARD_STATS: MapSpec = MapSpec {
    optional: true,
    ..spec::<u32, u64>(
        MAP_GUARD_STATS,
        MapType::PerCpuArray,
        Entries::Fixed(guard::CAPACITY),
        0,
    )
};

/// aya-log's ring buffer (its name and size are aya-log-ebpf's): only the
/// debug variant declares it. Pinned like the others, so that a controller
/// that adopts a running debug program reads the ring it writes.
pub const LOG_RING: MapSpec = MapSpec {
    optional: true,
    ..spec::<(), ()>("AYA_LOGS", MapType::RingBuf, Entries::Fixed(1 << 17), 0)
};
/// The tunnel sources and GUE port (`lb_common::encap`), one element;
/// optional: a program of an earlier release has none.
pub const TUNNEL: MapSpec = MapSpec {
    optional: true,
    ..spec::<u32, TunnelConfig>(encap::MAP_TUNNEL, MapType::Array, Entries::Fixed(1), 0)
};
/// The program's room for a FIB lookup (per CPU, one element).
pub const FIB_SCRATCH: MapSpec = MapSpec {
    optional: true,
    ..spec::<u32, [u8; encap::FIB_PARAMS_SIZE]>(
        encap::MAP_FIB_SCRATCH,
        MapType::PerCpuArray,
        Entries::Fixed(1),
        0,
    )
};
/// The tunnel counters, sized by their capacity like `GUARD_STATS`.
pub const TUNNEL_STATS: MapSpec = MapSpec {
    optional: true,
    ..spec::<u32, u64>(
        encap::MAP_TUNNEL_STATS,
        MapType::PerCpuArray,
        Entries::Fixed(encap::stats::CAPACITY),
        0,
    )
};

/// Every map of this release's program, in the order they are pinned.
pub const MAP_SPECS: [MapSpec; 18] = [
    SERVICES,
    SERVICE_BUCKETS,
    SERVICE_STATE,
    TABLES,
    BACKENDS,
    FLOWS,
    VIPS,
    TX_PORTS,
    SERVICE_STATS,
    BACKEND_STATS,
    BACKEND_LAST_SEEN,
    GLOBAL_STATS,
    FLOW_STATS,
    GUARD_STATS,
    LOG_RING,
    TUNNEL,
    TUNNEL_STATS,
    FIB_SCRATCH,
];

/// The flow table's layout in a program build (the program decides it; the
/// loader follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowLayout {
    /// This release's array of sets.
    Sets,
    /// The first release's kernel LRU hash of [`FlowEntryV0`].
    Legacy,
}

impl FlowLayout {
    /// The layout an object file declares.
    #[must_use]
    pub fn of_object(bytes: &[u8]) -> Self {
        let value = aya_obj::Object::parse(bytes)
            .ok()
            .and_then(|obj| obj.maps.get(MAP_FLOWS).map(aya_obj::Map::value_size));
        if value == Some(LEGACY_FLOWS.value) {
            Self::Legacy
        } else {
            Self::Sets
        }
    }

    /// The flow table's spec in this layout.
    #[must_use]
    pub fn flows(self) -> MapSpec {
        match self {
            Self::Sets => FLOWS,
            Self::Legacy => LEGACY_FLOWS,
        }
    }
}

/// Every map of a build with this flow-table layout.
#[must_use]
pub fn specs(layout: FlowLayout) -> [MapSpec; 18] {
    MAP_SPECS.map(|spec| {
        if spec.name == MAP_FLOWS {
            layout.flows()
        } else {
            spec
        }
    })
}

/// Entry counts the limits give the maps (and the program's load-time
/// constants derived from them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    pub service_buckets: u32,
    pub backends: u32,
    /// `TABLES` elements one slot of `max_table_size` cells takes.
    pub stride: u32,
    /// `TABLES` elements: two slots per service.
    pub table_elements: u32,
    pub flow_sets: u32,
    pub flows: u32,
}

impl MapSizes {
    #[must_use]
    pub fn new(limits: &Limits) -> Self {
        let stride = table_stride(limits.max_table_size);
        Self {
            services: limits.max_services,
            service_buckets: service_buckets(limits.max_services),
            backends: limits.max_backends,
            stride,
            table_elements: limits.max_services * 2 * stride,
            flow_sets: flow_sets(limits.flow_table_size),
            flows: limits.flow_table_size,
        }
    }

    /// How many entries a map has under these limits.
    #[must_use]
    pub fn entries(&self, spec: &MapSpec) -> u32 {
        match spec.entries {
            Entries::Services => self.services,
            Entries::ServiceBuckets => self.service_buckets,
            Entries::Backends => self.backends,
            Entries::TableElements => self.table_elements,
            Entries::FlowSets => self.flow_sets,
            Entries::Flows => self.flows,
            Entries::Fixed(n) => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya_obj::EbpfSectionKind;

    use super::*;

    /// The maps an object declares (not its `.rodata`/`.bss` globals).
    fn declared(bytes: &[u8]) -> std::collections::HashMap<String, aya_obj::Map> {
        let obj = aya_obj::Object::parse(bytes).expect("the built object parses");
        obj.maps
            .into_iter()
            .filter(|(_, m)| {
                matches!(
                    m.section_kind(),
                    EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
                )
            })
            .collect()
    }

    /// Every map of the object is in the table with its kind, sizes and
    /// flags, and every map of the table is in the object (optional ones
    /// when `all`; the log ring when `logs`).
    fn object_matches_table(bytes: &[u8], layout: FlowLayout, all: bool, logs: bool) {
        let maps = declared(bytes);
        let table = specs(layout);
        let in_table: BTreeSet<&str> = table.iter().map(|s| s.name).collect();
        let in_object: BTreeSet<&str> = maps.keys().map(String::as_str).collect();
        let missing: Vec<&str> = in_object.difference(&in_table).copied().collect();
        assert!(
            missing.is_empty(),
            "maps of the object not in the table: {missing:?}"
        );
        for spec in &table {
            let Some(map) = maps.get(spec.name) else {
                let absent_ok = if spec.name == LOG_RING.name {
                    !logs
                } else {
                    spec.optional && !all
                };
                assert!(absent_ok, "{} not in the object", spec.name);
                continue;
            };
            assert!(logs || spec.name != LOG_RING.name, "a log ring");
            assert_eq!(map.map_type(), spec.kind as u32, "{} kind", spec.name);
            assert_eq!(map.key_size(), spec.key, "{} key size", spec.name);
            assert_eq!(map.value_size(), spec.value, "{} value size", spec.name);
            assert_eq!(map.map_flags(), spec.flags, "{} flags", spec.name);
            if let Entries::Fixed(n) = spec.entries {
                assert_eq!(map.max_entries(), n, "{} entries", spec.name);
            }
        }
    }

    #[test]
    fn the_built_object_declares_the_table() {
        let bytes = super::super::EMBEDDED_PROGRAM;
        assert_eq!(FlowLayout::of_object(bytes), FlowLayout::Sets);
        object_matches_table(bytes, FlowLayout::Sets, true, false);
    }

    #[test]
    fn the_debug_object_declares_the_table_and_the_log_ring() {
        let bytes = super::super::DEBUG_PROGRAM;
        assert_eq!(FlowLayout::of_object(bytes), FlowLayout::Sets);
        object_matches_table(bytes, FlowLayout::Sets, true, true);
    }

    #[cfg(feature = "test-support")]
    #[test]
    fn the_legacy_object_declares_the_legacy_table() {
        let bytes = std::fs::read(super::super::LEGACY_PROGRAM_PATH).expect("legacy object");
        assert_eq!(FlowLayout::of_object(&bytes), FlowLayout::Legacy);
        object_matches_table(&bytes, FlowLayout::Legacy, false, false);
    }

    #[test]
    fn names_are_unique_and_the_layout_swaps_the_flow_table_only() {
        let names: BTreeSet<&str> = MAP_SPECS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), MAP_SPECS.len());
        let legacy = specs(FlowLayout::Legacy);
        for (now, then) in MAP_SPECS.iter().zip(&legacy) {
            assert_eq!(now.name, then.name);
            assert_eq!(now == then, now.name != MAP_FLOWS, "{}", now.name);
        }
    }

    #[test]
    fn sizes_follow_the_limits() {
        let limits = Limits {
            max_services: 3,
            max_backends: 10,
            max_table_size: 13,
            flow_table_size: 1000,
        };
        let sizes = MapSizes::new(&limits);
        assert_eq!(sizes.stride, table_stride(13));
        assert_eq!(sizes.entries(&TABLES), 3 * 2 * table_stride(13));
        assert_eq!(sizes.entries(&SERVICES), 3);
        assert_eq!(sizes.entries(&VIPS), 3);
        assert_eq!(sizes.entries(&SERVICE_BUCKETS), service_buckets(3));
        assert_eq!(sizes.entries(&BACKEND_LAST_SEEN), 10);
        assert_eq!(sizes.entries(&FLOWS), flow_sets(1000));
        assert_eq!(sizes.entries(&LEGACY_FLOWS), 1000);
        assert_eq!(sizes.entries(&TX_PORTS), MAX_TX_PORTS);
    }
}
