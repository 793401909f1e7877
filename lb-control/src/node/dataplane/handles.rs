//! Typed handles to the loaded program's maps, each taken by its entry of
//! the map table (name, and size from the limits for the mapped arrays).

use std::{os::fd::AsFd as _, path::PathBuf};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, xdp::DevMapHash},
};
use lb_common::ServiceBucket;

use super::{
    Adoption, DataPlane, DataPlaneError, FlowSets, FlowTable, map_err,
    maps::{self, FlowLayout, MapSizes, MapSpec},
    mmap::MmapArray,
};
use crate::config::Limits;

/// What opening decided and prepared, for the [`DataPlane`] it becomes.
pub struct Opened {
    pub dir: PathBuf,
    pub limits: Limits,
    pub sizes: MapSizes,
    pub adoption: Adoption,
    pub program_id: u32,
    pub service_buckets: MmapArray<ServiceBucket>,
    /// The flow table when it is an array of sets (mapped before attach).
    pub flow_sets: Option<FlowSets>,
}

/// Takes every map out of `ebpf` (which the data plane keeps alive).
pub fn take_all(mut ebpf: Ebpf, opened: Opened) -> Result<DataPlane, DataPlaneError> {
    let flows_map = take(&mut ebpf, &maps::FLOWS)?;
    let flows = match opened.flow_sets {
        Some(table) => FlowTable::Sets(table),
        None => FlowTable::Legacy(HashMap::try_from(flows_map).map_err(map_err(maps::FLOWS.name))?),
    };
    let flow_stats = optional_counters(&mut ebpf, &maps::FLOW_STATS)?;
    let guard_stats = optional_counters(&mut ebpf, &maps::GUARD_STATS)?;
    let tunnel_stats = optional_counters(&mut ebpf, &maps::TUNNEL_STATS)?;
    let tunnel = ebpf
        .take_map(maps::TUNNEL.name)
        .map(|map| Array::try_from(map).map_err(map_err(maps::TUNNEL.name)))
        .transpose()?;
    let service_state = mapped(&mut ebpf, &maps::SERVICE_STATE, &opened.sizes)?;
    let tables = mapped(&mut ebpf, &maps::TABLES, &opened.sizes)?;
    Ok(DataPlane {
        services: typed(&mut ebpf, &maps::SERVICES, HashMap::try_from)?,
        vips: typed(&mut ebpf, &maps::VIPS, HashMap::try_from)?,
        backends: typed(&mut ebpf, &maps::BACKENDS, Array::try_from)?,
        flows,
        tx_ports: typed(&mut ebpf, &maps::TX_PORTS, DevMapHash::try_from)?,
        service_stats: typed(&mut ebpf, &maps::SERVICE_STATS, PerCpuArray::try_from)?,
        backend_stats: typed(&mut ebpf, &maps::BACKEND_STATS, PerCpuArray::try_from)?,
        backend_last_seen: typed(&mut ebpf, &maps::BACKEND_LAST_SEEN, PerCpuArray::try_from)?,
        global_stats: typed(&mut ebpf, &maps::GLOBAL_STATS, PerCpuArray::try_from)?,
        flow_stats,
        guard_stats,
        tunnel,
        tunnel_stats,
        service_state,
        tables,
        service_buckets: opened.service_buckets,
        _ebpf: ebpf,
        dir: opened.dir,
        limits: opened.limits,
        stride: opened.sizes.stride,
        adoption: opened.adoption,
        program_id: opened.program_id,
        grace: super::grace::GracePeriod::new()?,
    })
}

/// A counter map builds from before it existed do not declare.
fn optional_counters(
    ebpf: &mut Ebpf,
    spec: &MapSpec,
) -> Result<Option<PerCpuArray<MapData, u64>>, DataPlaneError> {
    ebpf.take_map(spec.name)
        .map(|map| PerCpuArray::try_from(map).map_err(map_err(spec.name)))
        .transpose()
}

/// The service index, mapped (still held by `ebpf`).
pub fn service_buckets(
    ebpf: &Ebpf,
    sizes: &MapSizes,
) -> Result<MmapArray<ServiceBucket>, DataPlaneError> {
    let spec = &maps::SERVICE_BUCKETS;
    let map = map_ref(ebpf, spec.name)?;
    Ok(MmapArray::new(
        spec.name,
        map_data(map).fd().as_fd(),
        sizes.entries(spec),
    )?)
}

/// The pinned `SERVICES` map (still held by `ebpf`).
pub fn services(
    ebpf: &Ebpf,
) -> Result<HashMap<&MapData, lb_common::ServiceKey, lb_common::ServiceValue>, DataPlaneError> {
    let name = maps::SERVICES.name;
    HashMap::try_from(map_ref(ebpf, name)?).map_err(map_err(name))
}

/// The flow table mapped, when this build's layout is an array of sets.
pub fn flow_sets(
    ebpf: &Ebpf,
    layout: FlowLayout,
    sizes: &MapSizes,
    seed: u32,
) -> Result<Option<FlowSets>, DataPlaneError> {
    if layout == FlowLayout::Legacy {
        return Ok(None);
    }
    let map = map_ref(ebpf, maps::FLOWS.name)?;
    Ok(Some(FlowSets::new(
        map_data(map).fd().as_fd(),
        sizes.entries(&maps::FLOWS),
        seed,
    )?))
}

fn typed<T>(
    ebpf: &mut Ebpf,
    spec: &MapSpec,
    convert: impl FnOnce(Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, DataPlaneError> {
    convert(take(ebpf, spec)?).map_err(map_err(spec.name))
}

fn mapped<T: Copy>(
    ebpf: &mut Ebpf,
    spec: &MapSpec,
    sizes: &MapSizes,
) -> Result<MmapArray<T>, DataPlaneError> {
    let map = take(ebpf, spec)?;
    Ok(MmapArray::new(
        spec.name,
        map_data(&map).fd().as_fd(),
        sizes.entries(spec),
    )?)
}

fn missing(name: &'static str) -> DataPlaneError {
    DataPlaneError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    }
}

fn take(ebpf: &mut Ebpf, spec: &MapSpec) -> Result<Map, DataPlaneError> {
    ebpf.take_map(spec.name).ok_or_else(|| missing(spec.name))
}

fn map_ref<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Map, DataPlaneError> {
    ebpf.map(name).ok_or_else(|| missing(name))
}

/// A map still held by `ebpf`, to write.
pub fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, DataPlaneError> {
    ebpf.map_mut(name).ok_or_else(|| missing(name))
}

/// The map behind any of the kinds the program declares.
pub fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::DevMapHash(m) => m,
        other => panic!("unexpected map kind {other:?}"),
    }
}
