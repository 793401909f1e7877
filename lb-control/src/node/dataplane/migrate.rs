//! Established flows across a change of program: a flow table of another
//! layout or size is copied into the new one, and entries another hash seed
//! placed are moved to where this seed places them.
//!
//! Both happen twice: before the new program takes over, and once more
//! after, for flows the old program created in between.

use std::{os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapType},
};
use lb_common::{FlowEntry, FlowEntryV0, FlowKey, MAP_FLOWS};
use tracing::info;

use super::{
    DataPlaneError, FlowSets, handles, map_err,
    maps::{FlowLayout, MapSizes},
    now_coarse,
};

/// Holds the pinned old flow table open, then unpins it so the loader
/// creates the new one in its place (bpffs cannot rename). The running
/// program keeps using the old table until it is replaced.
pub fn unpin_old_flows(dir: &Path, detail: &str) -> Result<MapData, DataPlaneError> {
    let path = dir.join(MAP_FLOWS);
    let old = MapData::from_pin(&path).map_err(map_err(MAP_FLOWS))?;
    std::fs::remove_file(&path).map_err(|source| DataPlaneError::Io { path, source })?;
    info!(%detail, "flow table layout changed; migrating its entries");
    Ok(old)
}

/// Entries of a pinned old flow table, in any layout the plan migrates.
fn old_flow_entries(old: &MapData, seed: u32) -> Result<Vec<(FlowKey, FlowEntry)>, DataPlaneError> {
    let info = old.info().map_err(map_err(MAP_FLOWS))?;
    if info.map_type().ok() == Some(MapType::Array) {
        let sets = FlowSets::new(old.fd().as_fd(), info.max_entries(), seed)?;
        return Ok(sets.entries());
    }
    let old_map = aya::maps::Map::LruHashMap(
        MapData::from_fd(old.fd().as_fd().try_clone_to_owned().map_err(|source| {
            DataPlaneError::Io {
                path: MAP_FLOWS.into(),
                source,
            }
        })?)
        .map_err(map_err(MAP_FLOWS))?,
    );
    Ok(
        if info.value_size() as usize == std::mem::size_of::<FlowEntryV0>() {
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

/// Copies every entry of the old flow table into the new one, converting
/// the layout.
pub fn copy_flows(
    old: &MapData,
    ebpf: &mut Ebpf,
    layout: FlowLayout,
    seed: u32,
    sizes: &MapSizes,
) -> Result<(), DataPlaneError> {
    let entries = old_flow_entries(old, seed)?;
    let new = handles::map_mut(ebpf, MAP_FLOWS)?;
    let mut copied = 0usize;
    match layout {
        FlowLayout::Legacy => {
            let mut m: HashMap<_, FlowKey, FlowEntryV0> =
                HashMap::try_from(new).map_err(map_err(MAP_FLOWS))?;
            for (k, v) in &entries {
                let v0 = FlowEntryV0 {
                    backend: v.backend,
                    incarnation: v.incarnation,
                };
                copied += usize::from(m.insert(k, v0, 0).is_ok());
            }
        }
        FlowLayout::Sets => {
            let mut sets =
                FlowSets::new(handles::map_data(new).fd().as_fd(), sizes.flow_sets, seed)?;
            let now = now_coarse();
            for (k, v) in &entries {
                let mut v = *v;
                if v.last_seen == 0 {
                    v.last_seen = now;
                }
                copied += usize::from(sets.insert(k, &v));
            }
        }
    }
    info!(entries = entries.len(), copied, "flow table migrated");
    Ok(())
}

/// Entries a program with another hash seed placed go where this seed
/// places them: copied before the new program takes over (`after` false),
/// the originals freed after, so established flows stay on their servers
/// across a seed change.
pub fn rehome(table: &mut FlowSets, after: bool) {
    let moved = table.rehome(after);
    if moved == 0 {
        return;
    }
    if after {
        info!(
            moved,
            "flow entries moved to their places under this hash seed"
        );
    } else {
        info!(
            away = moved,
            "flow entries placed under another hash seed; copied to their places"
        );
    }
}
