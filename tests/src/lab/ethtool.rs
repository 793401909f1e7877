//! Transmit checksum offload, switched with the ethtool ioctl directly (the
//! same as `ethtool -K IF tx off`, without needing the ethtool tool).
//!
//! A veth sender leaves TCP/UDP checksums partial (the kernel trusts the
//! peer to not need them). Once an XDP program or a redirect sits on the
//! path the packet leaves the skb world and reaches the receiver with a bad
//! checksum, so lab clients must compute checksums in software.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

use super::netns::Netns;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union; padded to the
/// kernel's 40 bytes.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ethtool_value(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name too long: {ifname}");
    }
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: `raw` is a fresh, valid fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut value).cast(),
        _pad: [0; 16],
    };
    for (dst, src) in req.name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL reads `req` and the `EthtoolValue` it points to,
    // both alive for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &raw mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("SIOCETHTOOL {cmd:#x} on {ifname}"));
    }
    Ok(value.data)
}

/// Turns transmit checksum offload off on `ifname` inside `ns`
/// (`ethtool -K ifname tx off`; TSO goes off with it).
pub fn disable_tx_offload(ns: &Netns, ifname: &str) -> Result<()> {
    set_tx_offload(ns, ifname, false)
}

/// Turns transmit checksum offload on or off on `ifname` inside `ns`.
pub fn set_tx_offload(ns: &Netns, ifname: &str, on: bool) -> Result<()> {
    let name = ifname.to_owned();
    ns.run(move || ethtool_value(&name, ETHTOOL_STXCSUM, u32::from(on)).map(drop))
        .with_context(|| format!("setting tx offload on {ifname} in {}", ns.name()))
}

/// Whether transmit checksum offload is on for `ifname` inside `ns`.
pub fn tx_offload_enabled(ns: &Netns, ifname: &str) -> Result<bool> {
    let name = ifname.to_owned();
    ns.run(move || ethtool_value(&name, ETHTOOL_GTXCSUM, 0).map(|v| v != 0))
}
