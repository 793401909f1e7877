//! What is pinned in a pin directory: the maps with their shapes, the build
//! identity of the program that runs, a link per interface. Reading the pins
//! changes nothing; [`super::plan`] decides what to do about them.

use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapInfo, MapType};

use super::{DataPlaneError, map_err, maps::MapSpec};

/// File (a one-value array: bpffs holds only BPF objects) with the build
/// identity of the program attached.
const BUILD_ID_FILE: &str = "BUILD_ID";

/// A map's kind, sizes and flags, as the kernel reports them or as this
/// build wants them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// `None`: a kind aya does not know.
    pub kind: Option<MapType>,
    pub key: u32,
    pub value: u32,
    pub entries: u32,
    pub flags: u32,
}

impl Shape {
    fn of(info: &MapInfo) -> Self {
        Self {
            kind: info.map_type().ok(),
            key: info.key_size(),
            value: info.value_size(),
            entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }
}

/// What a pin directory holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pins {
    /// Every map of the table found pinned, in table order.
    pub maps: Vec<(&'static str, Shape)>,
    /// Identity of the build that attached the running program.
    pub build_id: Option<u64>,
    /// For each configured interface, in order, whether a link is pinned.
    pub linked: Vec<bool>,
}

/// Reads what `dir` holds of the maps in `specs` and the links of
/// `interfaces`.
pub fn inspect(
    dir: &Path,
    specs: &[MapSpec],
    interfaces: &[String],
) -> Result<Pins, DataPlaneError> {
    let mut maps = Vec::new();
    for spec in specs {
        let path = dir.join(spec.name);
        if path.exists() {
            let info = MapInfo::from_pin(&path).map_err(map_err(spec.name))?;
            maps.push((spec.name, Shape::of(&info)));
        }
    }
    Ok(Pins {
        maps,
        build_id: read_build_id(&dir.join(BUILD_ID_FILE)),
        linked: interfaces
            .iter()
            .map(|i| link_pin(dir, i).exists())
            .collect(),
    })
}

/// Where the link of an interface is pinned.
pub fn link_pin(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

fn read_build_id(path: &Path) -> Option<u64> {
    let data = MapData::from_pin(path).ok()?;
    let array: Array<MapData, u64> = Array::try_from(Map::Array(data)).ok()?;
    array.get(&0, 0).ok()
}

/// Records the identity of the build just attached.
pub fn write_build_id(dir: &Path, id: u64) -> Result<(), DataPlaneError> {
    let path = dir.join(BUILD_ID_FILE);
    let mut array = if let Ok(data) = MapData::from_pin(&path) {
        Array::try_from(Map::Array(data)).map_err(map_err(BUILD_ID_FILE))?
    } else {
        let array: Array<MapData, u64> = Array::create(1, 0).map_err(map_err(BUILD_ID_FILE))?;
        let data: &MapData = {
            use aya::maps::IterableMap as _;
            array.map()
        };
        data.pin(&path)
            .map_err(|source| DataPlaneError::Pin { path, source })?;
        array
    };
    array.set(0, id, 0).map_err(map_err(BUILD_ID_FILE))
}
