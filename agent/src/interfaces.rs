//! The host's network interfaces and their addresses, from `getifaddrs(3)`.
//!
//! `getifaddrs` lists one entry per address: `AF_INET` and `AF_INET6`
//! entries carry an IP address, and one `AF_PACKET` entry per interface
//! carries its link-layer (MAC) address. Like `/proc/net`, it describes the
//! network namespace of the calling thread, which for the agent is the real
//! server's.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_proto::MacAddr;

/// Why the interfaces could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("getifaddrs failed: {0}; the agent cannot list this host's addresses")]
pub struct InterfacesError(#[source] std::io::Error);

/// One interface with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// The name, e.g. `eth0`.
    pub name: String,
    /// `IFF_*` flags.
    pub flags: u32,
    /// Its MAC address, when it has one.
    pub mac: Option<MacAddr>,
    /// Its IPv4 and IPv6 addresses.
    pub addresses: Vec<IpAddr>,
}

impl Interface {
    /// Whether the interface is a loopback interface (`IFF_LOOPBACK`).
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        self.flags & libc::IFF_LOOPBACK as u32 != 0
    }
}

/// Every interface of the host, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interfaces(pub BTreeMap<String, Interface>);

impl Interfaces {
    /// Lists the interfaces of the calling thread's network namespace.
    pub fn read() -> Result<Self, InterfacesError> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: `head` is a valid out-pointer; on success the list is
        // freed below with `freeifaddrs`.
        if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
            return Err(InterfacesError(std::io::Error::last_os_error()));
        }
        let mut interfaces = BTreeMap::<String, Interface>::new();
        let mut cursor = head;
        while !cursor.is_null() {
            // SAFETY: `cursor` is a non-null node of the list getifaddrs
            // returned, valid until `freeifaddrs`.
            let entry = unsafe { &*cursor };
            cursor = entry.ifa_next;
            if entry.ifa_name.is_null() {
                continue;
            }
            // SAFETY: `ifa_name` is a non-null, NUL-terminated string owned
            // by the list.
            let name = unsafe { CStr::from_ptr(entry.ifa_name) }
                .to_string_lossy()
                .into_owned();
            let interface = interfaces.entry(name.clone()).or_insert_with(|| Interface {
                name,
                ..Interface::default()
            });
            interface.flags |= entry.ifa_flags;
            // SAFETY: `ifa_addr` is null or points to a sockaddr whose family
            // says how large it is.
            match unsafe { address(entry.ifa_addr) } {
                Some(Address::Ip(ip)) => interface.addresses.push(ip),
                Some(Address::Mac(mac)) => interface.mac = Some(mac),
                None => {}
            }
        }
        // SAFETY: `head` came from a successful getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(head) };
        Ok(Self(interfaces))
    }

    /// The interface holding `ip`.
    #[must_use]
    pub fn holding(&self, ip: IpAddr) -> Option<&Interface> {
        self.0.values().find(|i| i.addresses.contains(&ip))
    }

    /// Whether `ip` is configured on a loopback interface.
    pub fn on_loopback(&self, ip: IpAddr) -> bool {
        self.holding_all(ip).any(Interface::is_loopback)
    }

    fn holding_all(&self, ip: IpAddr) -> impl Iterator<Item = &Interface> {
        self.0.values().filter(move |i| i.addresses.contains(&ip))
    }

    /// The addresses on non-loopback interfaces that other hosts can reach:
    /// everything but loopback, link-local IPv6 (it needs a scope) and
    /// unspecified addresses.
    #[must_use]
    pub fn reachable_addresses(&self) -> Vec<IpAddr> {
        self.0
            .values()
            .filter(|i| !i.is_loopback())
            .flat_map(|i| i.addresses.iter().copied())
            .filter(|ip| reachable(*ip))
            .collect()
    }

    /// Names of the non-loopback interfaces with an IPv4 address: those
    /// that could answer ARP for a VIP.
    #[must_use]
    pub fn ipv4_interfaces(&self) -> Vec<&str> {
        self.0
            .values()
            .filter(|i| !i.is_loopback() && i.addresses.iter().any(IpAddr::is_ipv4))
            .map(|i| i.name.as_str())
            .collect()
    }
}

/// Whether another host could reach `ip` without extra context.
fn reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local()),
    }
}

enum Address {
    Ip(IpAddr),
    Mac(MacAddr),
}

/// Reads an address out of a `sockaddr` of family `AF_INET`, `AF_INET6`
/// or `AF_PACKET` (with a 6-byte hardware address).
///
/// # Safety
///
/// `addr` is null or points to a valid sockaddr of the size its family
/// implies.
unsafe fn address(addr: *const libc::sockaddr) -> Option<Address> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: non-null and valid per the contract; every sockaddr starts
    // with its family.
    let family = i32::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*addr.cast::<libc::sockaddr_in>() };
            Some(Address::Ip(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            )))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*addr.cast::<libc::sockaddr_in6>() };
            Some(Address::Ip(IpAddr::V6(Ipv6Addr::from(
                sin6.sin6_addr.s6_addr,
            ))))
        }
        libc::AF_PACKET => {
            // SAFETY: the family says this is a sockaddr_ll.
            let sll = unsafe { &*addr.cast::<libc::sockaddr_ll>() };
            if sll.sll_halen != 6 {
                return None;
            }
            let mut mac = [0u8; 6];
            mac.copy_from_slice(sll.sll_addr.get(..6)?);
            Some(Address::Mac(MacAddr(mac)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_host_has_loopback() {
        let interfaces = Interfaces::read().expect("getifaddrs");
        let lo = interfaces
            .holding(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("127.0.0.1 is configured");
        assert!(lo.is_loopback(), "{lo:?}");
        assert!(interfaces.on_loopback(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(
            !interfaces
                .reachable_addresses()
                .contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert!(!interfaces.ipv4_interfaces().contains(&lo.name.as_str()));
    }

    #[test]
    fn filters() {
        let mut map = BTreeMap::new();
        map.insert(
            "lo".to_owned(),
            Interface {
                name: "lo".into(),
                flags: libc::IFF_LOOPBACK as u32,
                mac: Some(MacAddr([0; 6])),
                addresses: vec![
                    "127.0.0.1".parse().expect("ip"),
                    "192.0.2.10".parse().expect("ip"),
                ],
            },
        );
        map.insert(
            "eth0".to_owned(),
            Interface {
                name: "eth0".into(),
                flags: 0,
                mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
                addresses: vec![
                    "198.51.100.21".parse().expect("ip"),
                    "fe80::1".parse().expect("ip"),
                    "2001:db8::21".parse().expect("ip"),
                ],
            },
        );
        let interfaces = Interfaces(map);
        assert_eq!(
            interfaces.reachable_addresses(),
            vec![
                "198.51.100.21".parse::<IpAddr>().expect("ip"),
                "2001:db8::21".parse().expect("ip")
            ]
        );
        assert!(interfaces.on_loopback("192.0.2.10".parse().expect("ip")));
        assert!(!interfaces.on_loopback("198.51.100.21".parse().expect("ip")));
        assert_eq!(interfaces.ipv4_interfaces(), vec!["eth0"]);
        assert_eq!(
            interfaces
                .holding("2001:db8::21".parse().expect("ip"))
                .map(|i| i.name.as_str()),
            Some("eth0")
        );
    }
}
