//! The same socket list as `/proc/net/tcp`, from the kernel's `sock_diag`
//! netlink interface (`NETLINK_INET_DIAG`).
//!
//! The kernel filters by state before sending, and the reply is binary, so
//! this is cheaper than `/proc` on hosts with many sockets. Like `/proc/net`,
//! it describes one network namespace: the one the calling thread was in
//! when the netlink socket was made, that is, the agent's own.
//!
//! A request is a `nlmsghdr` followed by `inet_diag_req_v2`; each reply
//! message is a `nlmsghdr` followed by `inet_diag_msg`, until `NLMSG_DONE`.
//! `netlink-packet-sock-diag` (0.4, on the `netlink-packet-core` 0.7 that
//! `rtnetlink` uses too) lays out and decodes both; [`crate::netlink`] sends
//! the dump and retries one the kernel marks interrupted; this module keeps
//! only what the counts need.

use std::net::SocketAddr;

use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use super::{ConnectionCounts, ConnectionQuery, TcpSocket, TcpState, count, unmap};
#[cfg(test)]
use crate::netlink::NLMSG_HEADER_LEN;
use crate::netlink::{self, DUMP_ATTEMPTS, NetlinkError};

/// Why sockets could not be listed over netlink.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// A socket call failed.
    #[error(
        "sock_diag {call} failed: {source}; is CONFIG_INET_DIAG (inet_diag/tcp_diag) available?"
    )]
    Io {
        /// The system call.
        call: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered the request with an error.
    #[error("the kernel refused the sock_diag request: {0}; is the tcp_diag module loaded?")]
    Kernel(std::io::Error),
    /// A reply did not have the expected layout.
    #[error("malformed sock_diag reply: {0}")]
    Malformed(String),
    /// Every attempt was interrupted by concurrent socket changes.
    #[error("sock_diag dump was inconsistent {DUMP_ATTEMPTS} times in a row; try again")]
    Inconsistent,
}

impl From<NetlinkError> for SockDiagError {
    fn from(error: NetlinkError) -> Self {
        match error {
            NetlinkError::Io { call, source } => Self::Io { call, source },
            NetlinkError::Kernel(error) => Self::Kernel(error),
            NetlinkError::Malformed(what) => Self::Malformed(what),
            NetlinkError::Inconsistent => Self::Inconsistent,
        }
    }
}

/// Counts established connections as [`super::count_established`] does, but
/// listing sockets over netlink instead of `/proc`.
///
/// # Errors
///
/// See [`dump_tcp_sockets`].
pub fn count_established(query: &ConnectionQuery) -> Result<ConnectionCounts, SockDiagError> {
    Ok(count(&dump_tcp_sockets()?, query))
}

/// Lists the established and listening TCP sockets, IPv4 and IPv6, of the
/// calling thread's network namespace.
///
/// # Errors
///
/// When the netlink socket cannot be made or used, the kernel refuses the
/// request, a reply is malformed, or every dump was interrupted.
pub fn dump_tcp_sockets() -> Result<Vec<TcpSocket>, SockDiagError> {
    let socket = netlink::open(NETLINK_SOCK_DIAG)?;
    let mut sockets = Vec::new();
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        sockets.extend(dump_family(&socket, family, seq)?);
    }
    Ok(sockets)
}

fn dump_family(socket: &Socket, family: u8, seq: u32) -> Result<Vec<TcpSocket>, SockDiagError> {
    let replies = netlink::dump(socket, inet_request(family), seq)?;
    Ok(replies.into_iter().filter_map(tcp_socket).collect())
}

/// A dump request for TCP sockets of `family` in ESTABLISHED or LISTEN.
fn inet_request(family: u8) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::ESTABLISHED | StateFlags::LISTEN,
        // Any address; the family picks the address size.
        socket_id: if family == AF_INET6 {
            SocketId::new_v6()
        } else {
            SocketId::new_v4()
        },
    })
}

/// The request's bytes.
#[cfg(test)]
fn request(family: u8, seq: u32) -> Vec<u8> {
    netlink::serialize(inet_request(family), seq)
}

fn tcp_socket(message: SockDiagMessage) -> Option<TcpSocket> {
    let SockDiagMessage::InetResponse(response) = message else {
        return None;
    };
    let id = &response.header.socket_id;
    Some(TcpSocket {
        local: SocketAddr::new(unmap(id.source_address), id.source_port),
        remote: SocketAddr::new(unmap(id.destination_address), id.destination_port),
        state: TcpState(response.header.state),
    })
}

/// What one received datagram held.
#[cfg(test)]
#[derive(Debug, Default)]
struct Batch {
    sockets: Vec<TcpSocket>,
    done: bool,
}

/// Parses the netlink messages in one datagram of a dump reply.
#[cfg(test)]
fn parse_messages(bytes: &[u8], seq: u32) -> Result<Batch, SockDiagError> {
    let batch = netlink::parse::<SockDiagMessage>(bytes, seq)?;
    Ok(Batch {
        sockets: batch.messages.into_iter().filter_map(tcp_socket).collect(),
        done: batch.done,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        net::{TcpListener, TcpStream},
    };

    use std::net::IpAddr;

    use super::*;

    /// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    /// `sizeof(struct inet_diag_msg)`.
    const DIAG_MSG_LEN: usize = 72;

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    /// A reply message as the kernel would send it.
    fn diag_message(
        seq: u32,
        family: u8,
        state: u8,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Vec<u8> {
        let mut payload = vec![family, state, 0, 0];
        payload.extend_from_slice(&local.port().to_be_bytes());
        payload.extend_from_slice(&remote.port().to_be_bytes());
        for addr in [local, remote] {
            let mut raw = [0u8; 16];
            match addr.ip() {
                IpAddr::V4(v4) => raw[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => raw.copy_from_slice(&v6.octets()),
            }
            payload.extend_from_slice(&raw);
        }
        payload.resize(DIAG_MSG_LEN, 0);
        header(seq, SOCK_DIAG_BY_FAMILY, &payload)
    }

    fn header(seq: u32, kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HEADER_LEN + payload.len()) as u32;
        let mut message = len.to_ne_bytes().to_vec();
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&(libc::NLM_F_MULTI as u16).to_ne_bytes());
        message.extend_from_slice(&seq.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(payload);
        message
    }

    #[test]
    fn request_layout() {
        let message = request(AF_INET6, 7);
        assert_eq!(message.len(), 72);
        assert_eq!(u32_at(&message, 0), 72);
        assert_eq!(u32_at(&message, 8), 7);
        assert_eq!(message[16], libc::AF_INET6 as u8);
        assert_eq!(message[17], libc::IPPROTO_TCP as u8);
        assert_eq!(u32_at(&message, 20), (1 << 1) | (1 << 10));
    }

    #[test]
    fn parses_a_dump_reply() {
        let v4 = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let mut datagram = diag_message(
            3,
            libc::AF_INET as u8,
            1,
            v4("10.0.0.100:80"),
            v4("192.168.1.7:51000"),
        );
        datagram.extend(diag_message(
            3,
            libc::AF_INET6 as u8,
            1,
            v4("[::ffff:10.0.0.100]:80"),
            v4("[2001:db8::5]:50000"),
        ));
        // A stray message of another request is skipped.
        datagram.extend(diag_message(
            9,
            libc::AF_INET as u8,
            1,
            v4("1.1.1.1:1"),
            v4("2.2.2.2:2"),
        ));
        let batch = parse_messages(&datagram, 3).expect("parse");
        assert!(!batch.done);
        assert_eq!(batch.sockets.len(), 2);
        assert_eq!(batch.sockets[0].local, v4("10.0.0.100:80"));
        assert_eq!(batch.sockets[0].remote, v4("192.168.1.7:51000"));
        assert_eq!(batch.sockets[1].local, v4("10.0.0.100:80"));
        assert_eq!(batch.sockets[1].remote, v4("[2001:db8::5]:50000"));

        let done = header(3, libc::NLMSG_DONE as u16, &0i32.to_ne_bytes());
        assert!(parse_messages(&done, 3).expect("done").done);
        let error = header(3, libc::NLMSG_ERROR as u16, &(-libc::ENOENT).to_ne_bytes());
        assert!(matches!(
            parse_messages(&error, 3),
            Err(SockDiagError::Kernel(_))
        ));
        assert!(parse_messages(&datagram[..40], 3).is_err());
    }

    #[test]
    fn real_dump_matches_proc() {
        // A loopback address of this test's own, so other tests' connections
        // (which may share a local port) are not counted: compare the VIP
        // counts of both readers.
        let addr = std::net::Ipv4Addr::new(127, 91, (std::process::id() % 250) as u8, 7);
        let listener = TcpListener::bind((addr, 0)).expect("bind");
        let local = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(local).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let query = ConnectionQuery {
            ports: BTreeSet::from([local.port()]),
            vip: Some(local),
            ..ConnectionQuery::default()
        };
        let netlink = count_established(&query).expect("sock_diag");
        assert_eq!(netlink.on_vip, 1, "{netlink:?}");
        let proc =
            super::super::count_established(std::path::Path::new("/"), &query).expect("proc");
        assert_eq!(netlink.on_vip, proc.on_vip);
        assert!(
            dump_tcp_sockets()
                .expect("dump")
                .iter()
                .any(|s| s.state == TcpState::LISTEN && s.local == local)
        );
    }
}
