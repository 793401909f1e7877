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
//! [`Resolver`] reads everything over rtnetlink on each call; [`NextHops`]
//! (in `watch`) is a task that follows the kernel's neighbour, link,
//! address and route notifications and publishes snapshots, so an apply
//! resolves only what a snapshot lacks, and does it outside the node lock.

mod addr;
mod watch;

pub use addr::{MacError, format_mac, parse_mac, prefix_contains};
pub use watch::{NextHops, ResolvedHops, Snapshot};

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
    link::{LinkAttribute, LinkLayerType, LinkMessage, LinkXdp, XdpAttached},
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Held for each dump: the kernel runs one dump per netlink socket at a
    /// time and refuses a second (`EBUSY`), and lookups of several servers
    /// and the cache's refresh share this connection.
    dumping: tokio::sync::Mutex<()>,
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
            dumping: tokio::sync::Mutex::new(()),
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
        let dumping = self.dumping.lock().await;
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink_error("dumping the interface addresses"))?;
        drop(dumping);
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

    /// How the kernel runs XDP on each node interface now (`driver`,
    /// `skb`, `hw`, `multi`; `none` when nothing is attached), as
    /// `ip link` reports it; an interface that cannot be read is left out.
    pub async fn xdp_modes(&self) -> Vec<(String, &'static str)> {
        let mut out = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let Ok(link) = self.link_message(name).await else {
                continue;
            };
            let mode = link
                .attributes
                .iter()
                .filter_map(|a| match a {
                    LinkAttribute::Xdp(xdp) => Some(xdp),
                    _ => None,
                })
                .flatten()
                .find_map(|x| match x {
                    LinkXdp::Attached(a) => Some(xdp_mode_name(*a)),
                    _ => None,
                })
                .unwrap_or("none");
            out.push((name.clone(), mode));
        }
        out
    }

    /// Index and MAC of the interface `name`.
    async fn link(&self, name: &str) -> Result<(u32, [u8; 6]), NextHopError> {
        let link = self.link_message(name).await?;
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

    /// The kernel's description of the interface `name`.
    async fn link_message(&self, name: &str) -> Result<LinkMessage, NextHopError> {
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
                    if m.code.map(std::num::NonZero::get) == Some(-libc::ENODEV) =>
                {
                    NextHopError::UnknownInterface(name.to_owned())
                }
                e => NextHopError::Netlink(format!("reading interface {name}: {e}")),
            })?;
        links
            .into_iter()
            .next()
            .ok_or_else(|| NextHopError::UnknownInterface(name.to_owned()))
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
        let _dumping = self.dumping.lock().await;
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
/// address message: `IFA_ADDRESS` (the peer on point-to-point links, else the
/// local address), falling back to `IFA_LOCAL`.
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

/// Makes the kernel resolve the next hop of its route to `addr` (a
/// tunnelled server: the gateway, or the server when it is on-link): one
/// empty UDP datagram to its discard port, routed by the kernel, which
/// resolves the neighbour on the way. The XDP program finds the neighbour
/// in the FIB afterwards; until then it drops (and counts) what it would
/// tunnel there. Errors are logged and otherwise ignored.
pub fn trigger_routed_resolution(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sent = UdpSocket::bind(bind)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .and_then(|s| s.send_to(&[], SocketAddr::new(addr, DISCARD_PORT)));
    match sent {
        Ok(_) => debug!(server = %addr, "triggered the resolution of its route's next hop"),
        Err(e) => {
            debug!(server = %addr, error = %e, "datagram to resolve a tunnel's next hop not sent");
        }
    }
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

/// Binds `socket` to the interface `ifname` (`SO_BINDTODEVICE`).
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

/// The name `ip link` gives an XDP attachment.
fn xdp_mode_name(attached: XdpAttached) -> &'static str {
    match attached {
        XdpAttached::None => "none",
        XdpAttached::Driver => "driver",
        XdpAttached::SocketBuffer => "skb",
        XdpAttached::Hardware => "hw",
        XdpAttached::Multiple => "multi",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
