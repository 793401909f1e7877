//! Loading the object: the load-time constants and every map of the table
//! sized from the limits and pinned in the pin directory (the loader reuses
//! a pinned map, creates and pins a missing one).

use std::path::Path;

use aya::{Ebpf, EbpfLoader};
use lb_common::{
    GLOBAL_FLOW_SETS, GLOBAL_HASH_SEED, GLOBAL_SERVICE_BUCKETS, GLOBAL_TABLE_STRIDE,
    GLOBAL_UDP_IDLE_SECS,
};

use super::{
    DataPlaneError,
    maps::{MapSizes, MapSpec},
};
use crate::config::Config;

/// Loads `bytes` into the kernel with this config's constants and sizes;
/// the program itself is not loaded or attached yet.
pub fn load(
    bytes: &[u8],
    config: &Config,
    specs: &[MapSpec],
    sizes: &MapSizes,
    dir: &Path,
) -> Result<Ebpf, DataPlaneError> {
    let seed = config.node.hash_seed;
    let idle = config.node.udp_idle_timeout;
    let paths: Vec<_> = specs.iter().map(|s| (s.name, dir.join(s.name))).collect();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(GLOBAL_HASH_SEED, &seed, true)
        .override_global(GLOBAL_TABLE_STRIDE, &sizes.stride, true)
        .override_global(GLOBAL_UDP_IDLE_SECS, &idle, true)
        .override_global(GLOBAL_FLOW_SETS, &sizes.flow_sets, true)
        .override_global(GLOBAL_SERVICE_BUCKETS, &sizes.service_buckets, true);
    for spec in specs {
        loader.map_max_entries(spec.name, sizes.entries(spec));
    }
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    Ok(loader.load(bytes)?)
}
