//! The program on the interfaces: adopting the running one, or loading this
//! one and attaching it — in place through a pinned link (no packet lost),
//! or fresh with a new pinned link — and detaching from interfaces no longer
//! configured.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::PROGRAM_NAME;
use tracing::{info, warn};

use super::{Adoption, DataPlaneError, pins};
use crate::config::{Config, XdpModeConfig};

/// Puts the program on every configured interface as `adoption` says and
/// returns the id of the program that runs. A new program's build identity
/// is recorded beside the maps.
pub fn start(
    ebpf: &mut Ebpf,
    config: &Config,
    dir: &Path,
    adoption: Adoption,
    identity: u64,
) -> Result<u32, DataPlaneError> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| DataPlaneError::Attach {
            interface: "-".into(),
            message: format!("object has no program `{PROGRAM_NAME}`"),
        })?
        .try_into()?;
    let interfaces = &config.node.interfaces;
    let id = if adoption == Adoption::Adopted {
        let pin = pins::link_pin(dir, &interfaces[0]);
        let link = PinnedLink::from_pin(&pin)
            .map_err(|source| DataPlaneError::Link { path: pin, source })?;
        let id = link_program_id(link)?;
        info!(program_id = id, dir = %dir.display(), "adopted the running XDP program");
        id
    } else {
        program.load()?;
        for interface in interfaces {
            attach_or_replace(program, dir, interface, config.node.xdp_mode)?;
        }
        let id = program.info()?.id();
        pins::write_build_id(dir, identity)?;
        info!(program_id = id, ?adoption, dir = %dir.display(), "XDP program attached");
        id
    };
    detach_stale_links(dir, interfaces);
    Ok(id)
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
    let pin = pins::link_pin(dir, interface);
    if pin.exists() {
        return replace(program, &pin, interface);
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

/// Replaces the program behind a pinned link.
fn replace(program: &mut Xdp, pin: &Path, interface: &str) -> Result<(), DataPlaneError> {
    let pinned = PinnedLink::from_pin(pin).map_err(|source| DataPlaneError::Link {
        path: pin.to_owned(),
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
    Ok(())
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
