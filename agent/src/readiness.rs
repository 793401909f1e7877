//! Direct server return readiness: can this server answer a VIP's traffic?
//!
//! With direct server return the balancer forwards frames addressed to the
//! VIP unchanged, so the server must accept them (the VIP is on a loopback
//! interface), must not claim the VIP on the shared segment (ARP:
//! `arp_ignore` at least 1 and `arp_announce` 2, else it would steal the VIP
//! from the balancer), and the application must answer on VIP:port. The
//! ARP settings do not apply to IPv6 VIPs (neighbour discovery does not
//! answer for addresses on another interface), so they pass there.
//!
//! The kernel applies the larger of `net.ipv4.conf.all.<name>` and
//! `net.ipv4.conf.<interface>.<name>`; the agent reports the weakest
//! effective value over the interfaces that could answer ARP (those with an
//! IPv4 address), or `all` alone when there are none.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_proto::Readiness;

/// Where sysctls are read on a real host.
pub const PROC_SYS: &str = "/proc/sys";

/// Effective ARP settings for VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpSettings {
    /// Effective `arp_ignore`.
    pub arp_ignore: u8,
    /// Effective `arp_announce`.
    pub arp_announce: u8,
}

impl ArpSettings {
    /// Whether these keep the server from answering ARP for its VIPs.
    #[must_use]
    pub fn safe_for_dsr(self) -> bool {
        self.arp_ignore >= 1 && self.arp_announce >= 2
    }
}

/// Reads sysctls under a root (`/proc/sys` on a real host, a fixture tree
/// in tests).
#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
}

impl Sysctl {
    /// Sysctls under `root`, e.g. `<root>/net/ipv4/conf/all/arp_ignore`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The real `/proc/sys`.
    #[must_use]
    pub fn host() -> Self {
        Self::new(PROC_SYS)
    }

    /// The root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `net.ipv4.conf.<interface>.<name>`; `None` when unreadable or not a
    /// small number (the caller treats that as the kernel default, 0).
    fn conf(&self, interface: &str, name: &str) -> Option<u8> {
        let path = self.root.join("net/ipv4/conf").join(interface).join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let value = text.trim().parse::<u8>().ok();
                if value.is_none() {
                    tracing::debug!(path = %path.display(), text = text.trim(), "sysctl is not a number");
                }
                value
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "cannot read sysctl");
                None
            }
        }
    }

    /// The effective ARP settings over `interfaces` (the weakest of them),
    /// or of `all` alone when `interfaces` is empty.
    #[must_use]
    pub fn arp(&self, interfaces: &[&str]) -> ArpSettings {
        let all_ignore = self.conf("all", "arp_ignore").unwrap_or(0);
        let all_announce = self.conf("all", "arp_announce").unwrap_or(0);
        let effective = |interface: &str| ArpSettings {
            arp_ignore: all_ignore.max(self.conf(interface, "arp_ignore").unwrap_or(0)),
            arp_announce: all_announce.max(self.conf(interface, "arp_announce").unwrap_or(0)),
        };
        let all = ArpSettings {
            arp_ignore: all_ignore,
            arp_announce: all_announce,
        };
        // One interface with a weak value is enough to leak the VIP, so the
        // smallest effective value of each is reported.
        interfaces
            .iter()
            .map(|i| effective(i))
            .reduce(|a, b| ArpSettings {
                arp_ignore: a.arp_ignore.min(b.arp_ignore),
                arp_announce: a.arp_announce.min(b.arp_announce),
            })
            .unwrap_or(all)
    }
}

/// The `<readiness>` verdict for one VIP.
#[must_use]
pub fn readiness(
    vip: IpAddr,
    on_loopback: bool,
    arp: ArpSettings,
    local_probe: bool,
    decap: Option<bool>,
) -> Readiness {
    let arp_ok = vip.is_ipv6() || arp.safe_for_dsr();
    Readiness {
        vip,
        vip_on_loopback: on_loopback,
        arp_ignore: arp.arp_ignore,
        arp_announce: arp.arp_announce,
        local_probe,
        ready: on_loopback && arp_ok && local_probe,
        decap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, interface: &str, name: &str, value: &str) {
        let dir = root.join("net/ipv4/conf").join(interface);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), format!("{value}\n")).expect("write");
    }

    fn safe() -> ArpSettings {
        ArpSettings {
            arp_ignore: 1,
            arp_announce: 2,
        }
    }

    #[test]
    fn all_alone_when_no_interface() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "all", "arp_ignore", "1");
        write(dir.path(), "all", "arp_announce", "2");
        let sysctl = Sysctl::new(dir.path());
        assert_eq!(sysctl.arp(&[]), safe());
        assert!(sysctl.arp(&[]).safe_for_dsr());
    }

    #[test]
    fn interface_value_raises_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "all", "arp_ignore", "0");
        write(dir.path(), "all", "arp_announce", "0");
        write(dir.path(), "eth0", "arp_ignore", "1");
        write(dir.path(), "eth0", "arp_announce", "2");
        let sysctl = Sysctl::new(dir.path());
        assert_eq!(sysctl.arp(&["eth0"]), safe());
        // `all` alone is not safe.
        assert!(!sysctl.arp(&[]).safe_for_dsr());
    }

    #[test]
    fn the_weakest_interface_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "all", "arp_ignore", "0");
        write(dir.path(), "all", "arp_announce", "2");
        write(dir.path(), "eth0", "arp_ignore", "1");
        write(dir.path(), "eth1", "arp_ignore", "0");
        let sysctl = Sysctl::new(dir.path());
        let arp = sysctl.arp(&["eth0", "eth1"]);
        assert_eq!(
            arp,
            ArpSettings {
                arp_ignore: 0,
                arp_announce: 2
            }
        );
        assert!(!arp.safe_for_dsr());
        // Order does not matter.
        assert_eq!(sysctl.arp(&["eth1", "eth0"]), arp);
    }

    #[test]
    fn missing_or_garbled_files_count_as_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "all", "arp_ignore", "x");
        let sysctl = Sysctl::new(dir.path());
        assert_eq!(
            sysctl.arp(&["eth9"]),
            ArpSettings {
                arp_ignore: 0,
                arp_announce: 0
            }
        );
    }

    #[test]
    fn arp_ignore_values() {
        for (ignore, ok) in [(0, false), (1, true), (2, true), (8, true)] {
            let arp = ArpSettings {
                arp_ignore: ignore,
                arp_announce: 2,
            };
            assert_eq!(arp.safe_for_dsr(), ok, "arp_ignore {ignore}");
        }
        let announce1 = ArpSettings {
            arp_ignore: 1,
            arp_announce: 1,
        };
        assert!(!announce1.safe_for_dsr());
    }

    #[test]
    fn verdict_needs_everything() {
        let v4: IpAddr = "192.0.2.10".parse().expect("ip");
        let v6: IpAddr = "2001:db8::10".parse().expect("ip");
        let unsafe_arp = ArpSettings {
            arp_ignore: 0,
            arp_announce: 0,
        };
        assert!(readiness(v4, true, safe(), true, None).ready);
        assert!(!readiness(v4, false, safe(), true, None).ready);
        assert!(!readiness(v4, true, safe(), false, None).ready);
        let r = readiness(v4, true, unsafe_arp, true, None);
        assert!(!r.ready);
        assert_eq!((r.arp_ignore, r.arp_announce), (0, 0));
        // IPv6: ARP does not apply.
        assert!(readiness(v6, true, unsafe_arp, true, None).ready);
        assert!(!readiness(v6, false, unsafe_arp, true, None).ready);
    }

    #[test]
    fn real_proc_sys_reads() {
        let arp = Sysctl::host().arp(&[]);
        assert!(arp.arp_ignore <= 8 && arp.arp_announce <= 2, "{arp:?}");
    }
}
