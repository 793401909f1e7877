//! The host's network interfaces and their addresses, from route netlink.
//!
//! A link dump (`RTM_GETLINK`) gives each interface's name, flags and
//! link-layer (MAC) address; an address dump (`RTM_GETADDR`) gives its IPv4
//! and IPv6 addresses by interface index. Like `/proc/net`, it describes the
//! network namespace of the calling thread, which for the agent is the real
//! server's.

use std::{collections::BTreeMap, net::IpAddr};

use lb_proto::MacAddr;
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::netlink::{self, NetlinkError};

/// Why the interfaces could not be listed.
#[derive(Debug, thiserror::Error)]
#[error(
    "listing interfaces over route netlink failed: {0}; the agent cannot list this host's addresses"
)]
pub struct InterfacesError(#[from] NetlinkError);

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
        let socket = netlink::open(NETLINK_ROUTE)?;
        let links = netlink::dump(
            &socket,
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            1,
        )?;
        let addresses = netlink::dump(
            &socket,
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            2,
        )?;
        let mut by_index = BTreeMap::<u32, Interface>::new();
        for message in links {
            if let RouteNetlinkMessage::NewLink(link) = message {
                by_index.insert(link.header.index, interface(&link));
            }
        }
        for message in addresses {
            if let RouteNetlinkMessage::NewAddress(address) = message {
                let interface = by_index.get_mut(&address.header.index);
                if let (Some(interface), Some(ip)) = (interface, ip_of(&address)) {
                    interface.addresses.push(ip);
                }
            }
        }
        Ok(Self(
            by_index
                .into_values()
                .map(|i| (i.name.clone(), i))
                .collect(),
        ))
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

/// An interface as a link message describes it, without addresses.
fn interface(link: &LinkMessage) -> Interface {
    let mut interface = Interface {
        flags: link
            .header
            .flags
            .iter()
            .fold(0, |all, f| all | u32::from(*f)),
        ..Interface::default()
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => interface.name.clone_from(name),
            LinkAttribute::Address(bytes) => {
                interface.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
            }
            _ => {}
        }
    }
    interface
}

/// The interface's own address in an address message: `IFA_LOCAL` when
/// there is one (on a point-to-point link `IFA_ADDRESS` is the peer's), else
/// `IFA_ADDRESS`, as `getifaddrs(3)` reads them.
fn ip_of(message: &AddressMessage) -> Option<IpAddr> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn real_host_has_loopback() {
        let interfaces = Interfaces::read().expect("route netlink");
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
