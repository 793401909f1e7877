//! Next hops for direct server return at layer 2.
//!
//! The XDP program forwards a packet to a real server by rewriting only the
//! Ethernet header, so every server must sit on a segment directly connected
//! to one of the node's XDP interfaces. For each server address this module
//! finds:
//!
//! * the egress interface: the configured interface whose connected prefix
//!   contains the address (longest prefix wins, then configuration order);
//! * that interface's ifindex and MAC (the source MAC of forwarded frames);
//! * the server's MAC (the destination MAC) from the kernel neighbour table,
//!   asking the kernel to resolve it (ARP / neighbour discovery) when the
//!   table has no valid entry yet.
//!
//! Everything is read over rtnetlink; nothing is cached, so interface and
//! address changes are seen on the next call.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkLayerType, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
};
use rtnetlink::IpVersion;
use tokio::time::Instant;
use tracing::{debug, trace};

/// Where to send frames for one real server: out of `ifindex`, from
/// `src_mac` to `dst_mac`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface (one of the node's XDP interfaces).
    pub ifindex: u32,
    /// MAC address of the egress interface.
    pub src_mac: [u8; 6],
    /// MAC address of the real server, from the neighbour table.
    pub dst_mac: [u8; 6],
}

/// Errors finding a server's next hop.
#[derive(Debug, thiserror::Error)]
pub enum NextHopError {
    /// No configured interface has a connected prefix containing the server.
    #[error(
        "server {addr} is not on a segment directly connected to any of the node interfaces [{}]: direct server return needs it on-link",
        .interfaces.join(", ")
    )]
    NotConnected {
        /// The server address.
        addr: IpAddr,
        /// The node's configured interfaces.
        interfaces: Vec<String>,
    },
    /// The server address is one of the node's own addresses.
    #[error(
        "server {addr} is an address of this node (interface {ifname}): configure the real server's own address"
    )]
    LocalAddress {
        /// The server address.
        addr: IpAddr,
        /// The interface that has it.
        ifname: String,
    },
    /// A configured interface does not exist.
    #[error(
        "interface {0} does not exist on this node: check the interface names in the node configuration (`ip link` lists them)"
    )]
    UnknownInterface(String),
    /// A configured interface is not an Ethernet interface.
    #[error(
        "interface {ifname} has no Ethernet MAC address: direct server return at L2 needs Ethernet interfaces"
    )]
    NotEthernet {
        /// The interface.
        ifname: String,
    },
    /// The resolver was created without interfaces.
    #[error("no interfaces configured: list the node's XDP interfaces in the node configuration")]
    NoInterfaces,
    /// The kernel did not resolve the server's MAC address in time.
    #[error(
        "no neighbour entry for {addr} on {ifname} after {waited:?}; is the server up? (`ip neigh show dev {ifname}` shows what the kernel knows)"
    )]
    Unresolved {
        /// The server address.
        addr: IpAddr,
        /// The egress interface.
        ifname: String,
        /// How long the resolver waited.
        waited: Duration,
    },
    /// An rtnetlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
}

/// Facts about one of the node's interfaces, as read from the kernel.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// The interface's own MAC address.
    pub mac: [u8; 6],
    /// Connected prefixes: (address of the interface, prefix length).
    pub prefixes: Vec<(IpAddr, u8)>,
}

/// Finds next hops for real servers over rtnetlink.
#[derive(Debug)]
pub struct Resolver {
    handle: rtnetlink::Handle,
    names: Vec<String>,
}

/// Port of the UDP datagram that triggers address resolution ("discard").
const DISCARD_PORT: u16 = 9;
/// How often `resolve` looks at the neighbour table while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often `resolve` asks the kernel again to resolve an address. The
/// kernel gives up after a few probes (entry FAILED); a new datagram
/// restarts resolution.
const RETRIGGER_INTERVAL: Duration = Duration::from_secs(1);
/// Longest interface name the kernel accepts (`IFNAMSIZ` less the NUL).
const MAX_IFNAME_LEN: usize = 15;
/// Neighbour states whose link-layer address can be used (the kernel's
/// `NUD_VALID`).
const VALID_STATES: [NeighbourState; 6] = [
    NeighbourState::Reachable,
    NeighbourState::Stale,
    NeighbourState::Delay,
    NeighbourState::Probe,
    NeighbourState::Permanent,
    NeighbourState::Noarp,
];

impl Resolver {
    /// Opens an rtnetlink connection for the node interfaces `interfaces`
    /// and checks that they exist and are Ethernet interfaces.
    ///
    /// Spawns the netlink connection on the current tokio runtime; it ends
    /// when the resolver is dropped.
    pub async fn new(interfaces: &[String]) -> Result<Self, NextHopError> {
        if interfaces.is_empty() {
            return Err(NextHopError::NoInterfaces);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            NextHopError::Netlink(format!(
                "the resolver needs a tokio runtime for its rtnetlink connection: {e}"
            ))
        })?;
        let (connection, handle, _unsolicited) = rtnetlink::new_connection()
            .map_err(|e| NextHopError::Netlink(format!("cannot open an rtnetlink socket: {e}")))?;
        runtime.spawn(connection);
        let resolver = Self {
            handle,
            names: interfaces.to_vec(),
        };
        for interface in resolver.interfaces().await? {
            debug!(
                interface = %interface.name,
                ifindex = interface.ifindex,
                mac = %format_mac(&interface.mac),
                prefixes = ?interface.prefixes,
                "next-hop resolver: node interface"
            );
        }
        Ok(resolver)
    }

    /// Reads the node interfaces from the kernel: index, MAC and connected
    /// prefixes. Re-read on each call.
    pub async fn interfaces(&self) -> Result<Vec<Interface>, NextHopError> {
        let mut interfaces = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let (ifindex, mac) = self.link(name).await?;
            interfaces.push(Interface {
                name: name.clone(),
                ifindex,
                mac,
                prefixes: Vec::new(),
            });
        }
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink_error("dumping the interface addresses"))?;
        for message in &addresses {
            let Some(interface) = interfaces
                .iter_mut()
                .find(|i| i.ifindex == message.header.index)
            else {
                continue;
            };
            if let Some(address) = prefix_address(message) {
                interface
                    .prefixes
                    .push((address, message.header.prefix_len));
            }
        }
        Ok(interfaces)
    }

    /// Resolves one server: its egress interface and MAC address.
    ///
    /// If the neighbour table has no valid entry for the server (missing,
    /// INCOMPLETE or FAILED), asks the kernel to resolve it by sending an
    /// empty UDP datagram to the server's discard port (9) out of the egress
    /// interface, then polls the table every 50 ms for up to `timeout`,
    /// sending a new datagram each second. Entries in states REACHABLE,
    /// STALE, DELAY, PROBE, PERMANENT and NOARP count as valid.
    pub async fn resolve(&self, addr: IpAddr, timeout: Duration) -> Result<NextHop, NextHopError> {
        let interfaces = self.interfaces().await?;
        if let Some(local) = interfaces
            .iter()
            .find(|i| i.prefixes.iter().any(|&(a, _)| a == addr))
        {
            return Err(NextHopError::LocalAddress {
                addr,
                ifname: local.name.clone(),
            });
        }
        let Some(egress) = select_egress(&interfaces, addr) else {
            return Err(NextHopError::NotConnected {
                addr,
                interfaces: self.names.clone(),
            });
        };
        let start = Instant::now();
        let deadline = start + timeout;
        let mut next_trigger = start;
        loop {
            if let Some(dst_mac) = self.lookup(egress.ifindex, addr).await? {
                let hop = NextHop {
                    ifindex: egress.ifindex,
                    src_mac: egress.mac,
                    dst_mac,
                };
                debug!(
                    server = %addr,
                    interface = %egress.name,
                    ifindex = egress.ifindex,
                    src_mac = %format_mac(&hop.src_mac),
                    dst_mac = %format_mac(&hop.dst_mac),
                    waited = ?start.elapsed(),
                    "resolved server next hop"
                );
                return Ok(hop);
            }
            let now = Instant::now();
            if now >= next_trigger {
                trigger_resolution(&egress.name, egress.ifindex, addr);
                next_trigger = now + RETRIGGER_INTERVAL;
            }
            if now >= deadline {
                return Err(NextHopError::Unresolved {
                    addr,
                    ifname: egress.name.clone(),
                    waited: now - start,
                });
            }
            trace!(server = %addr, interface = %egress.name, "waiting for neighbour entry");
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Egress interface (ifindex, own MAC) for a server address, without
    /// touching the neighbour table: for servers whose MAC the config gives.
    pub async fn egress(&self, addr: IpAddr) -> Result<(u32, [u8; 6]), NextHopError> {
        let interfaces = self.interfaces().await?;
        select_egress(&interfaces, addr)
            .map(|i| (i.ifindex, i.mac))
            .ok_or_else(|| NextHopError::NotConnected {
                addr,
                interfaces: self.names.clone(),
            })
    }

    /// One dump of the neighbour table of the node interfaces:
    /// (ifindex, address) -> MAC for valid entries (see
    /// [`resolve`](Self::resolve)). The caller polls it to follow MAC
    /// changes.
    pub async fn neighbours(&self) -> Result<HashMap<(u32, IpAddr), [u8; 6]>, NextHopError> {
        let mut ifindexes = Vec::with_capacity(self.names.len());
        for name in &self.names {
            ifindexes.push(self.link(name).await?.0);
        }
        Ok(self
            .dump_neighbours(None)
            .await?
            .iter()
            .filter_map(valid_neighbour)
            .filter(|(ifindex, _, _)| ifindexes.contains(ifindex))
            .map(|(ifindex, addr, mac)| ((ifindex, addr), mac))
            .collect())
    }

    /// Index and MAC of the interface `name`.
    async fn link(&self, name: &str) -> Result<(u32, [u8; 6]), NextHopError> {
        if name.is_empty() || name.len() > MAX_IFNAME_LEN {
            return Err(NextHopError::UnknownInterface(name.to_owned()));
        }
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_collect()
            .await
            .map_err(|e| match e {
                rtnetlink::Error::NetlinkError(ref m)
                    if m.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
                {
                    NextHopError::UnknownInterface(name.to_owned())
                }
                e => NextHopError::Netlink(format!("reading interface {name}: {e}")),
            })?;
        let Some(link) = links.first() else {
            return Err(NextHopError::UnknownInterface(name.to_owned()));
        };
        if link.header.link_layer_type != LinkLayerType::Ether {
            return Err(NextHopError::NotEthernet {
                ifname: name.to_owned(),
            });
        }
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| NextHopError::NotEthernet {
                ifname: name.to_owned(),
            })?;
        Ok((link.header.index, mac))
    }

    /// The MAC of `addr` on `ifindex`, if the neighbour table has a valid
    /// entry.
    async fn lookup(&self, ifindex: u32, addr: IpAddr) -> Result<Option<[u8; 6]>, NextHopError> {
        let family = match addr {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        };
        Ok(self
            .dump_neighbours(Some(family))
            .await?
            .iter()
            .filter_map(valid_neighbour)
            .find(|&(i, a, _)| i == ifindex && a == addr)
            .map(|(_, _, mac)| mac))
    }

    /// All neighbour entries, of one family or of both.
    async fn dump_neighbours(
        &self,
        family: Option<IpVersion>,
    ) -> Result<Vec<NeighbourMessage>, NextHopError> {
        let mut request = self.handle.neighbours().get();
        if let Some(family) = family {
            request = request.set_family(family);
        }
        request
            .execute()
            .try_collect()
            .await
            .map_err(netlink_error("dumping the neighbour table"))
    }
}

/// Maps an rtnetlink error to [`NextHopError::Netlink`] saying what failed.
fn netlink_error(context: &'static str) -> impl FnOnce(rtnetlink::Error) -> NextHopError {
    move |e| NextHopError::Netlink(format!("{context}: {e}"))
}

/// The address that, with the prefix length, gives the connected prefix of an
/// address message: IFA_ADDRESS (the peer on point-to-point links, else the
/// local address), falling back to IFA_LOCAL.
fn prefix_address(message: &AddressMessage) -> Option<IpAddr> {
    let mut local = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Address(a) => return Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            _ => {}
        }
    }
    local
}

/// (ifindex, address, MAC) of a neighbour entry whose state is valid and
/// that has an Ethernet link-layer address.
fn valid_neighbour(message: &NeighbourMessage) -> Option<(u32, IpAddr, [u8; 6])> {
    let valid = VALID_STATES.iter().fold(0u16, |m, &s| m | u16::from(s));
    if u16::from(message.header.state) & valid == 0 {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(*a));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(*a));
            }
            NeighbourAttribute::LinkLocalAddress(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice()).ok();
            }
            _ => {}
        }
    }
    Some((message.header.ifindex, addr?, mac?))
}

/// The interface to reach `addr` through: the one with the longest connected
/// prefix containing it; on a tie, the first in configuration order.
fn select_egress(interfaces: &[Interface], addr: IpAddr) -> Option<&Interface> {
    let mut best: Option<(&Interface, u8)> = None;
    for interface in interfaces {
        for &(prefix, len) in &interface.prefixes {
            if prefix_contains(prefix, len, addr) && best.is_none_or(|(_, l)| len > l) {
                best = Some((interface, len));
            }
        }
    }
    best.map(|(interface, _)| interface)
}

/// Makes the kernel resolve `addr` on the interface: sends one empty UDP
/// datagram to its discard port from a socket bound to the interface. The
/// datagram waits in the neighbour queue while the kernel sends ARP requests
/// or neighbour solicitations. Errors are logged and otherwise ignored: the
/// caller only watches the neighbour table.
fn trigger_resolution(ifname: &str, ifindex: u32, addr: IpAddr) {
    let (bind, target): (SocketAddr, SocketAddr) = match addr {
        IpAddr::V4(a) => ((Ipv4Addr::UNSPECIFIED, 0).into(), (a, DISCARD_PORT).into()),
        IpAddr::V6(a) => (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            // The scope id matters only for link-local addresses.
            SocketAddrV6::new(a, DISCARD_PORT, 0, ifindex).into(),
        ),
    };
    let socket = match UdpSocket::bind(bind).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
        Ok(socket) => socket,
        Err(e) => {
            debug!(server = %addr, error = %e, "cannot open a UDP socket to trigger address resolution");
            return;
        }
    };
    if let Err(e) = bind_to_device(&socket, ifname) {
        // Without the binding the routing table picks the interface, which
        // for a connected prefix is normally the same one.
        debug!(interface = %ifname, error = %e, "SO_BINDTODEVICE failed; sending unbound");
    }
    match socket.send_to(&[], target) {
        Ok(_) => debug!(server = %addr, interface = %ifname, "triggered address resolution"),
        Err(e) => {
            debug!(server = %addr, interface = %ifname, error = %e, "datagram to trigger address resolution not sent");
        }
    }
}

/// Binds `socket` to the interface `ifname` (SO_BINDTODEVICE).
fn bind_to_device(socket: &UdpSocket, ifname: &str) -> io::Result<()> {
    let len = libc::socklen_t::try_from(ifname.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the fd is a valid open socket for the duration of the call, and
    // the option value points to `len` readable bytes (the kernel copies them
    // and does not need a NUL terminator).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr().cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the prefix `prefix`/`len` contains `addr`. Addresses of different
/// families are never contained; a length beyond the family's width (33 for
/// IPv4, 129 for IPv6) makes an invalid prefix that contains nothing.
pub fn prefix_contains(prefix: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (prefix, addr) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            if len > 32 {
                return false;
            }
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            (p.to_bits() ^ a.to_bits()) & mask == 0
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            if len > 128 {
                return false;
            }
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            (p.to_bits() ^ a.to_bits()) & mask == 0
        }
        _ => false,
    }
}

/// Parses a MAC address written as six two-digit hex bytes separated by
/// colons, `aa:bb:cc:dd:ee:ff` (upper or lower case).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let invalid = || {
        format!(
            "invalid MAC address {s:?}: expected six two-digit hex bytes separated by colons, like aa:bb:cc:dd:ee:ff"
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn prefix_contains_v4() {
        assert!(prefix_contains(ip("10.1.2.0"), 24, ip("10.1.2.3")));
        assert!(prefix_contains(ip("10.1.2.1"), 24, ip("10.1.2.255")));
        assert!(!prefix_contains(ip("10.1.2.0"), 24, ip("10.1.3.3")));
        assert!(prefix_contains(ip("10.1.2.0"), 23, ip("10.1.3.3")));
        assert!(!prefix_contains(ip("10.1.2.0"), 23, ip("10.1.4.0")));
        assert!(prefix_contains(ip("10.1.2.3"), 32, ip("10.1.2.3")));
        assert!(!prefix_contains(ip("10.1.2.3"), 32, ip("10.1.2.4")));
        assert!(prefix_contains(ip("0.0.0.0"), 0, ip("203.0.113.9")));
        assert!(prefix_contains(ip("10.0.0.0"), 0, ip("255.255.255.255")));
        assert!(prefix_contains(ip("128.0.0.0"), 1, ip("200.0.0.1")));
        assert!(!prefix_contains(ip("128.0.0.0"), 1, ip("100.0.0.1")));
        assert!(!prefix_contains(ip("10.1.2.3"), 33, ip("10.1.2.3")));
    }

    #[test]
    fn prefix_contains_v6() {
        assert!(prefix_contains(ip("fd00:1::1"), 64, ip("fd00:1::ffff:2")));
        assert!(!prefix_contains(ip("fd00:1::1"), 64, ip("fd00:2::1")));
        assert!(prefix_contains(ip("fd00:1::"), 48, ip("fd00:1:0:ff::1")));
        assert!(prefix_contains(ip("fd00::1"), 128, ip("fd00::1")));
        assert!(!prefix_contains(ip("fd00::1"), 128, ip("fd00::2")));
        assert!(prefix_contains(ip("::"), 0, ip("2001:db8::1")));
        assert!(prefix_contains(ip("fe80::1"), 0, ip("::1")));
        assert!(!prefix_contains(ip("fd00::1"), 129, ip("fd00::1")));
    }

    #[test]
    fn prefix_contains_mixed_families_is_false() {
        assert!(!prefix_contains(ip("0.0.0.0"), 0, ip("::")));
        assert!(!prefix_contains(ip("::"), 0, ip("0.0.0.0")));
        assert!(!prefix_contains(ip("::ffff:10.1.2.0"), 120, ip("10.1.2.3")));
        assert!(!prefix_contains(ip("10.1.2.0"), 24, ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn egress_is_longest_prefix_then_configuration_order() {
        let iface = |name: &str, ifindex, prefixes: &[(&str, u8)]| Interface {
            name: name.to_owned(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            prefixes: prefixes.iter().map(|&(a, l)| (ip(a), l)).collect(),
        };
        let interfaces = [
            iface("eth0", 1, &[("10.0.0.1", 16), ("fd00::1", 64)]),
            iface("eth1", 2, &[("10.0.5.1", 24), ("fd00::2", 64)]),
        ];
        let pick = |a: &str| select_egress(&interfaces, ip(a)).map(|i| i.name.as_str());
        assert_eq!(pick("10.0.5.9"), Some("eth1"));
        assert_eq!(pick("10.0.6.9"), Some("eth0"));
        assert_eq!(pick("fd00::99"), Some("eth0"));
        assert_eq!(pick("10.1.0.1"), None);
        assert_eq!(pick("2001:db8::1"), None);
        assert_eq!(select_egress(&[], ip("10.0.0.1")).map(|i| i.ifindex), None);
    }

    #[test]
    fn neighbour_states() {
        let message = |state, with_mac: bool| {
            let mut m = NeighbourMessage::default();
            m.header.ifindex = 7;
            m.header.state = state;
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    Ipv4Addr::new(10, 0, 0, 2),
                )));
            if with_mac {
                m.attributes
                    .push(NeighbourAttribute::LinkLocalAddress(vec![2, 0, 0, 0, 0, 2]));
            }
            m
        };
        let expected = Some((7, ip("10.0.0.2"), [2, 0, 0, 0, 0, 2]));
        for state in VALID_STATES {
            assert_eq!(
                valid_neighbour(&message(state, true)),
                expected,
                "{state:?}"
            );
        }
        for state in [
            NeighbourState::Incomplete,
            NeighbourState::Failed,
            NeighbourState::None,
        ] {
            assert_eq!(valid_neighbour(&message(state, true)), None, "{state:?}");
        }
        assert_eq!(
            valid_neighbour(&message(NeighbourState::Reachable, false)),
            None
        );
    }

    #[test]
    fn mac_round_trip() {
        let mac = [0x00, 0x1b, 0x21, 0xaa, 0xbc, 0xff];
        assert_eq!(format_mac(&mac), "00:1b:21:aa:bc:ff");
        assert_eq!(parse_mac("00:1b:21:aa:bc:ff"), Ok(mac));
        assert_eq!(parse_mac("00:1B:21:AA:BC:FF"), Ok(mac));
        assert_eq!(format_mac(&[0; 6]), "00:00:00:00:00:00");
        assert_eq!(parse_mac(&format_mac(&[0xff; 6])), Ok([0xff; 6]));
    }

    #[test]
    fn mac_parse_errors() {
        for bad in [
            "",
            "00:1b:21:aa:bc",
            "00:1b:21:aa:bc:ff:01",
            "00-1b-21-aa-bc-ff",
            "001b21aabcff",
            "0:1b:21:aa:bc:ff",
            "000:1b:21:aa:bc:ff",
            "+0:1b:21:aa:bc:ff",
            "gg:1b:21:aa:bc:ff",
            "00:1b:21:aa:bc:ff:",
            " 00:1b:21:aa:bc:ff",
        ] {
            let err = parse_mac(bad).expect_err(bad);
            assert!(err.contains("aa:bb:cc:dd:ee:ff"), "{err}");
        }
    }

    #[test]
    fn error_messages_say_what_to_fix() {
        let err = NextHopError::NotConnected {
            addr: ip("10.1.2.3"),
            interfaces: vec!["eth0".into()],
        };
        assert_eq!(
            err.to_string(),
            "server 10.1.2.3 is not on a segment directly connected to any of the node interfaces [eth0]: direct server return needs it on-link"
        );
        let err = NextHopError::NotConnected {
            addr: ip("fd00::3"),
            interfaces: vec!["eth0".into(), "eth1".into()],
        };
        assert!(err.to_string().contains("[eth0, eth1]"), "{err}");
        let err = NextHopError::Unresolved {
            addr: ip("10.1.2.3"),
            ifname: "eth0".into(),
            waited: Duration::from_secs(3),
        };
        assert!(
            err.to_string()
                .starts_with("no neighbour entry for 10.1.2.3 on eth0 after 3s; is the server up?"),
            "{err}"
        );
    }

    /// Resolver tests in network namespaces made for the test (needs root).
    mod netns {
        use std::{
            fs::File,
            os::fd::AsRawFd,
            process::Command,
            sync::atomic::{AtomicU32, Ordering},
            time::Duration,
        };

        use super::super::*;

        const NODE_IF: &str = "lbnh0";
        const PEER_IF: &str = "lbnhpeer0";
        const NODE_V4: &str = "10.77.0.1";
        const PEER_V4: &str = "10.77.0.2";
        const NODE_V6: &str = "fd00:77::1";
        const PEER_V6: &str = "fd00:77::2";

        /// Deletes the namespaces it holds when dropped, on panic too.
        struct Namespaces(Vec<String>);

        impl Drop for Namespaces {
            fn drop(&mut self) {
                for name in &self.0 {
                    let status = Command::new("ip").args(["netns", "del", name]).status();
                    if !matches!(status, Ok(s) if s.success()) {
                        eprintln!("could not delete network namespace {name}: {status:?}");
                    }
                }
            }
        }

        /// Runs `ip ARGS`, panics on failure, returns stdout.
        fn run_ip(args: &[&str]) -> String {
            let out = Command::new("ip")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run ip {}: {e}", args.join(" ")));
            assert!(
                out.status.success(),
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// (ifindex, MAC) of `ifname` in namespace `ns`, from `ip -o link`.
        fn link_facts(ns: &str, ifname: &str) -> (u32, [u8; 6]) {
            let line = run_ip(&["-n", ns, "-o", "link", "show", "dev", ifname]);
            let ifindex = line
                .split(':')
                .next()
                .and_then(|i| i.trim().parse().ok())
                .unwrap_or_else(|| panic!("no ifindex in {line:?}"));
            let mac = line
                .split_whitespace()
                .skip_while(|w| *w != "link/ether")
                .nth(1)
                .unwrap_or_else(|| panic!("no link/ether in {line:?}"));
            (ifindex, parse_mac(mac).expect("MAC from ip link"))
        }

        fn is_root() -> bool {
            // SAFETY: geteuid has no preconditions and cannot fail.
            unsafe { libc::geteuid() == 0 }
        }

        /// Moves the calling thread into the network namespace `name`.
        fn enter_netns(name: &str) {
            let path = format!("/var/run/netns/{name}");
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: the fd is an open namespace file; setns only changes
            // the calling thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        }

        struct Expected {
            ifindex: u32,
            node_mac: [u8; 6],
            peer_mac: [u8; 6],
        }

        #[tokio::test(flavor = "current_thread")]
        async fn resolver_in_network_namespace() {
            if !is_root() {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "the next-hop resolver test needs root (network namespaces, veth) and CI=true: run the tests as root"
                    );
                }
                eprintln!("skipped: needs root");
                return;
            }
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let node = format!("lbnh-{}-{n}", std::process::id());
            let peer = format!("{node}-peer");
            let mut namespaces = Namespaces(Vec::new());
            for ns in [&node, &peer] {
                run_ip(&["netns", "add", ns]);
                namespaces.0.push(ns.clone());
            }
            run_ip(&[
                "-n", &node, "link", "add", NODE_IF, "type", "veth", "peer", "name", PEER_IF,
                "netns", &peer,
            ]);
            for (ns, ifname, v4, v6) in [
                (&node, NODE_IF, NODE_V4, NODE_V6),
                (&peer, PEER_IF, PEER_V4, PEER_V6),
            ] {
                run_ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname]);
                run_ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    ifname,
                    "nodad",
                ]);
                run_ip(&["-n", ns, "link", "set", ifname, "up"]);
            }
            let (ifindex, node_mac) = link_facts(&node, NODE_IF);
            let (_, peer_mac) = link_facts(&peer, PEER_IF);
            let expected = Expected {
                ifindex,
                node_mac,
                peer_mac,
            };

            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let ns = node.clone();
            let thread = std::thread::spawn(move || {
                enter_netns(&ns);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(checks(expected));
                let _ = done_tx.send(());
            });
            // Resolves when the thread finishes or panics (sender dropped).
            let _ = done_rx.await;
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
            drop(namespaces);
        }

        /// The checks, run inside the node namespace.
        async fn checks(expected: Expected) {
            let err = Resolver::new(&["lbnhnope0".to_owned()])
                .await
                .expect_err("missing interface");
            assert!(
                matches!(&err, NextHopError::UnknownInterface(n) if n == "lbnhnope0"),
                "{err:?}"
            );
            let err = Resolver::new(&["lo".to_owned()])
                .await
                .expect_err("loopback");
            assert!(matches!(err, NextHopError::NotEthernet { .. }), "{err:?}");
            assert!(matches!(
                Resolver::new(&[]).await,
                Err(NextHopError::NoInterfaces)
            ));

            let resolver = Resolver::new(&[NODE_IF.to_owned()])
                .await
                .expect("resolver");
            let interfaces = resolver.interfaces().await.expect("interfaces");
            assert_eq!(interfaces.len(), 1);
            assert_eq!(interfaces[0].name, NODE_IF);
            assert_eq!(interfaces[0].ifindex, expected.ifindex);
            assert_eq!(interfaces[0].mac, expected.node_mac);
            for prefix in [(ip(NODE_V4), 24), (ip(NODE_V6), 64)] {
                assert!(
                    interfaces[0].prefixes.contains(&prefix),
                    "{prefix:?} not in {:?}",
                    interfaces[0].prefixes
                );
            }

            let want = NextHop {
                ifindex: expected.ifindex,
                src_mac: expected.node_mac,
                dst_mac: expected.peer_mac,
            };
            for peer in [PEER_V4, PEER_V6] {
                let hop = resolver
                    .resolve(ip(peer), Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|e| panic!("resolve {peer}: {e}"));
                assert_eq!(hop, want, "{peer}");
                // Now in the table: resolves without waiting.
                let hop = resolver
                    .resolve(ip(peer), Duration::ZERO)
                    .await
                    .unwrap_or_else(|e| panic!("resolve {peer} again: {e}"));
                assert_eq!(hop, want, "{peer}");
            }
            let neighbours = resolver.neighbours().await.expect("neighbours");
            for peer in [PEER_V4, PEER_V6] {
                assert_eq!(
                    neighbours.get(&(expected.ifindex, ip(peer))),
                    Some(&expected.peer_mac),
                    "{peer} in {neighbours:?}"
                );
            }

            for off_link in ["10.78.0.2", "fd00:78::2"] {
                let err = resolver
                    .resolve(ip(off_link), Duration::from_secs(1))
                    .await
                    .expect_err(off_link);
                assert!(
                    matches!(&err, NextHopError::NotConnected { addr, interfaces }
                        if *addr == ip(off_link) && interfaces == &[NODE_IF.to_owned()]),
                    "{err:?}"
                );
                assert!(err.to_string().contains("[lbnh0]"), "{err}");
            }

            let err = resolver
                .resolve(ip(NODE_V4), Duration::from_secs(1))
                .await
                .expect_err("own address");
            assert!(matches!(err, NextHopError::LocalAddress { .. }), "{err:?}");

            let timeout = Duration::from_millis(300);
            for absent in ["10.77.0.99", "fd00:77::99"] {
                let start = std::time::Instant::now();
                let err = resolver
                    .resolve(ip(absent), timeout)
                    .await
                    .expect_err(absent);
                let took = start.elapsed();
                assert!(
                    matches!(&err, NextHopError::Unresolved { addr, ifname, waited }
                        if *addr == ip(absent) && ifname == NODE_IF && *waited >= timeout),
                    "{err:?}"
                );
                assert!(
                    took >= timeout && took < timeout + Duration::from_secs(2),
                    "{absent}: took {took:?}"
                );
                assert!(
                    !resolver
                        .neighbours()
                        .await
                        .expect("neighbours")
                        .contains_key(&(expected.ifindex, ip(absent)))
                );
            }
        }

        fn ip(s: &str) -> IpAddr {
            s.parse().expect("test address")
        }
    }
}
