//! Established TCP connections on application ports, from `/proc/net/tcp`
//! and `/proc/net/tcp6`.
//!
//! Each line after the header is one socket:
//! `sl local_address rem_address st ...`, for example
//! `0: 0100007F:1F90 0100007F:C350 01 ...`. An address is the IP as 32-bit
//! words, each printed as 8 hex digits in the host's byte order (so
//! `0100007F` is 127.0.0.1 on a little-endian host; IPv6 has four such
//! words), then `:` and the port in 4 hex digits, big-endian as read. `st` is
//! the TCP state in hex: `01` ESTABLISHED, `0A` LISTEN.
//!
//! These files describe the network namespace of the process that reads them
//! (`/proc/net` is `/proc/self/net`), so the agent must run in the real
//! server's namespace to see its connections. The text is read in one go per
//! file, but the kernel produces it in chunks, so a socket that changes state
//! meanwhile may be missed or counted twice; counts are a snapshot.
//! [`sock_diag`] lists the same sockets over netlink.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use procfs::FromReadSI as _;

use super::under;

pub mod sock_diag;

/// Why connections could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}; is procfs mounted at <root>/proc?")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A socket line did not have the expected format.
    #[error("unexpected line {line} in {path}: {reason}")]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
}

/// A TCP socket state as `/proc/net/tcp` numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcpState(pub u8);

impl TcpState {
    /// A connection that completed its handshake.
    pub const ESTABLISHED: Self = Self(0x01);
    /// A listening socket.
    pub const LISTEN: Self = Self(0x0A);
}

/// One socket line of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// The local address and port. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`, from dual-stack sockets) are given as IPv4.
    pub local: SocketAddr,
    /// The remote address and port, mapped the same way.
    pub remote: SocketAddr,
    /// The TCP state.
    pub state: TcpState,
}

/// What to count: see [`count_established`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionQuery {
    /// The application ports to count. Empty means every port that has a
    /// listening socket, which leaves out the client side of the host's own
    /// outgoing connections.
    pub ports: BTreeSet<u16>,
    /// The service's VIP and port: connections whose local end is exactly
    /// this are also counted apart. With direct server return the VIP is on
    /// the real server's loopback, so client connections arrive on it.
    pub vip: Option<SocketAddr>,
    /// Connections from these remote addresses are not counted at all: the
    /// agent's own health probes, which come from 127.0.0.1, `::1` or the VIP.
    pub excluded_remotes: BTreeSet<IpAddr>,
}

impl ConnectionQuery {
    /// Counts on every listening port and on `vip`, excluding the agent's
    /// probes: remote 127.0.0.1, `::1` and the VIP's own address.
    #[must_use]
    pub fn for_vip(vip: SocketAddr) -> Self {
        Self {
            ports: BTreeSet::new(),
            vip: Some(vip),
            excluded_remotes: probe_sources(Some(vip.ip())),
        }
    }
}

/// The addresses the agent's own probes come from: loopback, and the VIP
/// when there is one (a connection to a local address takes it as source).
pub fn probe_sources(vip: Option<IpAddr>) -> BTreeSet<IpAddr> {
    let mut sources: BTreeSet<IpAddr> = [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        .into_iter()
        .collect();
    sources.extend(vip.map(unmap));
    sources
}

/// Established connections counted by [`count_established`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Established connections per local (application) port.
    pub per_port: BTreeMap<u16, u64>,
    /// Established connections whose local end is the query's VIP and port;
    /// 0 when the query has no VIP.
    pub on_vip: u64,
}

impl ConnectionCounts {
    /// All counted connections over all ports.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.per_port.values().sum()
    }
}

/// Reads `<root>/proc/net/tcp` and `<root>/proc/net/tcp6` and counts
/// established connections as `query` says. A missing `tcp6` (IPv6 disabled)
/// counts as empty; a missing `tcp` is an error.
pub fn count_established(
    root: &Path,
    query: &ConnectionQuery,
) -> Result<ConnectionCounts, ConnectionsError> {
    let mut sockets = read_sockets(&under(root, "proc/net/tcp"))?;
    match read_sockets(&under(root, "proc/net/tcp6")) {
        Ok(v6) => sockets.extend(v6),
        Err(ConnectionsError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(count(&sockets, query))
}

/// Counts established sockets per `query` (see [`ConnectionQuery`]); for
/// sockets listed some other way, such as [`sock_diag::dump_tcp_sockets`].
pub fn count(sockets: &[TcpSocket], query: &ConnectionQuery) -> ConnectionCounts {
    let listening: BTreeSet<u16>;
    let ports = if query.ports.is_empty() {
        listening = sockets
            .iter()
            .filter(|s| s.state == TcpState::LISTEN)
            .map(|s| s.local.port())
            .collect();
        &listening
    } else {
        &query.ports
    };
    let excluded: BTreeSet<IpAddr> = query.excluded_remotes.iter().copied().map(unmap).collect();
    let vip = query.vip.map(|v| SocketAddr::new(unmap(v.ip()), v.port()));
    let mut counts = ConnectionCounts::default();
    for socket in sockets
        .iter()
        .filter(|s| s.state == TcpState::ESTABLISHED && !excluded.contains(&s.remote.ip()))
    {
        if ports.contains(&socket.local.port()) {
            *counts.per_port.entry(socket.local.port()).or_default() += 1;
        }
        if Some(socket.local) == vip {
            counts.on_vip += 1;
        }
    }
    counts
}

/// Reads and parses one `/proc/net/tcp`-format file.
///
/// # Errors
///
/// [`ConnectionsError::Read`] when the file cannot be read,
/// [`ConnectionsError::Parse`] (with the 1-based line) when a socket line is
/// not what the kernel writes.
pub fn read_sockets(path: &Path) -> Result<Vec<TcpSocket>, ConnectionsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConnectionsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses `/proc/net/tcp`-format text with procfs; errors carry the 1-based
/// line number.
fn parse(original: &str, path: &Path) -> Result<Vec<TcpSocket>, ConnectionsError> {
    // Blank lines are skipped, as before procfs; the kernel never writes
    // them, and procfs would reject them.
    let kept: String;
    let text = if original.lines().any(|l| l.trim().is_empty()) {
        kept = original
            .lines()
            .filter(|l| !l.trim().is_empty())
            .flat_map(|l| [l, "\n"])
            .collect();
        &kept
    } else {
        original
    };
    table(text).map_err(|whole| {
        // procfs's error does not say where: find the first line it rejects
        // (only on this error path, so a good file is parsed once).
        let (line, error) = original
            .lines()
            .enumerate()
            .skip(1)
            .filter(|(_, l)| !l.trim().is_empty())
            .find_map(|(i, line)| table(&format!("header\n{line}")).err().map(|e| (i + 1, e)))
            .unwrap_or((1, whole));
        ConnectionsError::Parse {
            path: path.to_owned(),
            line,
            reason: format!(
                "expected `sl local_address rem_address st tx_queue:rx_queue tr:when retrnsmt \
                 uid timeout inode`, addresses as hex IP:port ({error})"
            ),
        }
    })
}

/// One `/proc/net/tcp` table (header line first) as sockets.
fn table(text: &str) -> Result<Vec<TcpSocket>, procfs::ProcError> {
    let entries =
        procfs::net::TcpNetEntries::from_read(text.as_bytes(), procfs::current_system_info())?;
    Ok(entries
        .0
        .into_iter()
        .map(|entry| TcpSocket {
            local: unmap_socket(entry.local_address),
            remote: unmap_socket(entry.remote_address),
            state: TcpState(entry.state.to_u8()),
        })
        .collect())
}

/// A socket address with an IPv4-mapped IPv6 address given as IPv4.
fn unmap_socket(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(unmap(addr.ip()), addr.port())
}

/// An IPv4-mapped IPv6 address as IPv4; anything else unchanged.
pub(crate) fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests;
