//! The decapsulation program on this server (`xdp_decap`, see
//! `lb_common::decap`): loaded with the GUE port, attached to an interface
//! through a pinned link, its maps pinned beside it, so that an agent's
//! restart, upgrade or crash never interrupts it; [`detach`] removes it and
//! every pin.
//!
//! Pins live under `<root>/net-<inode>/<interface>/` (root
//! [`PIN_ROOT`]): every network namespace of a host shares one bpffs, and
//! the namespace's inode keeps two servers' `eth0` apart.

use std::{
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    FAMILY_V4, FAMILY_V6,
    decap::{
        DECAP_PROGRAM, DecapSource, GLOBAL_GUE_PORT, MAP_DECAP_SOURCES, MAP_DECAP_STATS,
        MAP_DECAP_VIPS, stats,
    },
};

/// The decapsulation object, built with the agent.
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_DECAP_OBJECT"));

/// Where the pins go unless told otherwise.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdplb-decap";
const LINK_PIN: &str = "link";
/// The program itself, pinned so a readiness probe can run it.
const PROGRAM_PIN: &str = "program";

/// What to install on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecapSpec {
    /// The interface the tunnelled packets arrive on.
    pub interface: String,
    /// The outer sources allowed to tunnel to this server (the nodes').
    pub sources: Vec<IpAddr>,
    /// The VIPs this server serves: an inner packet for any other address
    /// is dropped, never relayed.
    pub vips: Vec<IpAddr>,
    /// The outer UDP destination port of GUE.
    pub gue_port: u16,
}

/// Why the decapsulation could not be installed, changed or removed.
#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    /// A pin directory or the namespace could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was done.
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// The system's answer.
        source: std::io::Error,
    },
    /// The kernel refused the object (or the pinned maps).
    #[error(
        "loading the decapsulation program: {0} (root, or CAP_BPF and CAP_NET_ADMIN, are needed)"
    )]
    Load(#[from] aya::EbpfError),
    /// The kernel refused the program (the verifier, or its attachment).
    #[error("the decapsulation program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// A map could not be opened, read or written.
    #[error("the decapsulation maps: {0}")]
    Map(#[from] aya::maps::MapError),
    /// The program could not be attached to the interface.
    #[error("attaching to {interface}: {message}")]
    Attach {
        /// The interface.
        interface: String,
        /// Why.
        message: String,
    },
    /// Not a name an interface can have.
    #[error("{0:?} is not an interface name (1 to 15 bytes, no '/', not '.' or '..')")]
    BadInterface(String),
    /// Nothing is installed on the interface.
    #[error("no decapsulation on {interface} (nothing pinned at {})", dir.display())]
    NotAttached {
        /// The interface.
        interface: String,
        /// Where its pins would be.
        dir: PathBuf,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DecapError {
    let path = path.to_owned();
    move |source| DecapError::Io {
        action,
        path,
        source,
    }
}

/// Whether `name` can be an interface's (and so names no other directory).
#[must_use]
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace)
}

/// The pin directory of `interface` in this process's network namespace;
/// refuses names that are no interface's (they would name another
/// directory).
pub fn pin_dir(root: &Path, interface: &str) -> Result<PathBuf, DecapError> {
    if !valid_interface_name(interface) {
        return Err(DecapError::BadInterface(interface.to_owned()));
    }
    let ns = Path::new("/proc/self/ns/net");
    let inode = std::fs::metadata(ns).map_err(io("reading", ns))?.ino();
    Ok(root.join(format!("net-{inode}")).join(interface))
}

/// Installs (or replaces in place) the program on `spec.interface` and
/// sets its allowed sources and VIPs; returns the program's id. Returns
/// once the program is attached and pinned: nothing needs to keep running.
/// A failed first attach leaves no pin behind.
pub fn attach(spec: &DecapSpec, root: &Path) -> Result<u32, DecapError> {
    let dir = pin_dir(root, &spec.interface)?;
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let result = attach_in(spec, &dir);
    if result.is_err() && !dir.join(LINK_PIN).exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn attach_in(spec: &DecapSpec, dir: &Path) -> Result<u32, DecapError> {
    let mut loader = EbpfLoader::new();
    loader.override_global(GLOBAL_GUE_PORT, &spec.gue_port, true);
    for name in [MAP_DECAP_SOURCES, MAP_DECAP_VIPS, MAP_DECAP_STATS] {
        loader.map_pin_path(name, dir.join(name));
    }
    let mut ebpf = loader.load(DECAP_OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM)
        .ok_or_else(|| DecapError::Attach {
            interface: spec.interface.clone(),
            message: format!("the object has no program `{DECAP_PROGRAM}`"),
        })?
        .try_into()?;
    program.load()?;
    let link = dir.join(LINK_PIN);
    if link.exists() && replace(program, &link, &spec.interface).is_err() {
        // A link whose interface went away (deleted and made again, its
        // namespace gone): start afresh.
        std::fs::remove_file(&link).map_err(io("removing the stale link", &link))?;
    }
    if !link.exists() {
        attach_new(program, &link, &spec.interface)?;
    }
    let id = program.info()?.id();
    let program_pin = dir.join(PROGRAM_PIN);
    if program_pin.exists() {
        std::fs::remove_file(&program_pin).map_err(io("removing", &program_pin))?;
    }
    program.pin(&program_pin).map_err(|e| DecapError::Attach {
        interface: spec.interface.clone(),
        message: format!("pinning {}: {e}", program_pin.display()),
    })?;
    for (name, addrs) in [
        (MAP_DECAP_SOURCES, &spec.sources),
        (MAP_DECAP_VIPS, &spec.vips),
    ] {
        let map = ebpf.map_mut(name).ok_or_else(|| DecapError::Attach {
            interface: spec.interface.clone(),
            message: format!("the object has no map `{name}`"),
        })?;
        set_addrs_in(HashMap::try_from(map)?, addrs)?;
    }
    Ok(id)
}

fn attach_new(program: &mut Xdp, pin: &Path, interface: &str) -> Result<(), DecapError> {
    let mut last = String::new();
    for mode in [XdpMode::Driver, XdpMode::Skb] {
        match program.attach(interface, mode) {
            Ok(id) => {
                let link = program.take_link(id)?;
                let fd_link = FdLink::try_from(link).map_err(|e| DecapError::Attach {
                    interface: interface.into(),
                    message: format!("{e} (the kernel must support bpf links for XDP)"),
                })?;
                fd_link.pin(pin).map_err(|e| DecapError::Attach {
                    interface: interface.into(),
                    message: format!("pinning {}: {e}", pin.display()),
                })?;
                return Ok(());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(DecapError::Attach {
        interface: interface.into(),
        message: last,
    })
}

/// Swaps the program behind the pinned link: not a packet passes
/// undecapsulated.
fn replace(program: &mut Xdp, pin: &Path, interface: &str) -> Result<(), DecapError> {
    let attach_error = |message: String| DecapError::Attach {
        interface: interface.into(),
        message,
    };
    let pinned = PinnedLink::from_pin(pin).map_err(|e| attach_error(e.to_string()))?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| attach_error(e.to_string()))?;
    let id = program.attach_to_link(link)?;
    // The pin holds the link; let go of this handle without detaching.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

fn source_key(addr: IpAddr) -> DecapSource {
    match addr {
        IpAddr::V4(a) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&a.octets());
            DecapSource::new(bytes, FAMILY_V4)
        }
        IpAddr::V6(a) => DecapSource::new(a.octets(), FAMILY_V6),
    }
}

fn address_of(key: &DecapSource) -> Option<IpAddr> {
    match key.family {
        FAMILY_V4 => {
            let [a, b, c, d, ..] = key.addr;
            Some(IpAddr::from([a, b, c, d]))
        }
        FAMILY_V6 => Some(IpAddr::from(key.addr)),
        _ => None,
    }
}

/// Makes the map's addresses exactly `addrs`.
fn set_addrs_in<T: std::borrow::BorrowMut<MapData>>(
    mut map: HashMap<T, DecapSource, u32>,
    addrs: &[IpAddr],
) -> Result<(), DecapError> {
    let wanted: Vec<DecapSource> = addrs.iter().copied().map(source_key).collect();
    let stale: Vec<DecapSource> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        map.remove(&key)?;
    }
    for key in wanted {
        map.insert(key, 1, 0)?;
    }
    Ok(())
}

fn pinned_map(root: &Path, interface: &str, name: &str) -> Result<MapData, DecapError> {
    let dir = pin_dir(root, interface)?;
    let path = dir.join(name);
    if !path.exists() || !dir.join(LINK_PIN).exists() {
        return Err(DecapError::NotAttached {
            interface: interface.into(),
            dir,
        });
    }
    Ok(MapData::from_pin(&path)?)
}

/// Makes the allowed outer sources of the program on `interface` exactly
/// `sources` (in place: packets keep flowing).
pub fn set_sources(root: &Path, interface: &str, sources: &[IpAddr]) -> Result<(), DecapError> {
    let map = pinned_map(root, interface, MAP_DECAP_SOURCES)?;
    set_addrs_in(HashMap::try_from(Map::HashMap(map))?, sources)
}

/// The allowed outer sources of the program on `interface` (empty when
/// nothing is attached).
pub fn sources(root: &Path, interface: &str) -> Result<Vec<IpAddr>, DecapError> {
    let map = match pinned_map(root, interface, MAP_DECAP_SOURCES) {
        Ok(map) => map,
        Err(DecapError::NotAttached { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let map: HashMap<_, DecapSource, u32> = HashMap::try_from(Map::HashMap(map))?;
    Ok(map
        .keys()
        .filter_map(Result::ok)
        .filter_map(|k| address_of(&k))
        .collect())
}

/// Whether the program is attached on `interface` (its link pinned).
#[must_use]
pub fn is_attached(root: &Path, interface: &str) -> bool {
    pin_dir(root, interface).is_ok_and(|dir| dir.join(LINK_PIN).exists())
}

/// The program's counters on `interface`, summed over CPUs, by name
/// ([`stats::NAMES`]).
pub fn counters(root: &Path, interface: &str) -> Result<Vec<(&'static str, u64)>, DecapError> {
    let map = pinned_map(root, interface, MAP_DECAP_STATS)?;
    let stats_map: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::PerCpuArray(map))?;
    let mut out = Vec::new();
    for (i, name) in (0u32..).zip(stats::NAMES) {
        out.push((name, stats_map.get(&i, 0)?.iter().sum()));
    }
    Ok(out)
}

/// Detaches the program from `interface` and removes every pin made for
/// it. `Ok(false)` when nothing was attached.
pub fn detach(root: &Path, interface: &str) -> Result<bool, DecapError> {
    let dir = pin_dir(root, interface)?;
    if !dir.exists() {
        return Ok(false);
    }
    let link = dir.join(LINK_PIN);
    if link.exists() {
        let pinned = PinnedLink::from_pin(&link).map_err(|e| DecapError::Attach {
            interface: interface.into(),
            message: e.to_string(),
        })?;
        // Unpinned and dropped, the last reference: the program detaches.
        drop(pinned.unpin().map_err(io("unpinning", &link))?);
    }
    std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))?;
    if let Some(ns_dir) = dir.parent() {
        // Gone when this was the namespace's last interface.
        let _ = std::fs::remove_dir(ns_dir);
    }
    Ok(true)
}

mod owner;
mod probe;
pub use owner::DecapOwner;
pub use probe::probe;

#[cfg(test)]
mod tests;
