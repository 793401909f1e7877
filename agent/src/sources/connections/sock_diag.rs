//! The same socket list as `/proc/net/tcp`, from the kernel's sock_diag
//! netlink interface (`NETLINK_INET_DIAG`).
//!
//! The kernel filters by state before sending, and the reply is binary, so
//! this is cheaper than `/proc` on hosts with many sockets. Like `/proc/net`,
//! it describes one network namespace: the one the calling thread was in
//! when the netlink socket was made, that is, the agent's own.
//!
//! A request is a `nlmsghdr` followed by `inet_diag_req_v2`; each reply
//! message is a `nlmsghdr` followed by `inet_diag_msg`, until `NLMSG_DONE`.
//! Addresses and ports in `inet_diag_sockid` are in network byte order; the
//! netlink header is in host byte order.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use super::{ConnectionCounts, ConnectionQuery, TcpSocket, TcpState, count, unmap};

/// `SOCK_DIAG_BY_FAMILY` from `linux/sock_diag.h`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HEADER_LEN: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQUEST_LEN: usize = 56;
/// `sizeof(struct inet_diag_msg)`.
const DIAG_MSG_LEN: usize = 72;
/// How long to wait for the kernel's reply before giving up.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often to retry a dump the kernel marked inconsistent.
const DUMP_ATTEMPTS: usize = 3;

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

/// Counts established connections as [`super::count_established`] does, but
/// listing sockets over netlink instead of `/proc`.
pub fn count_established(query: &ConnectionQuery) -> Result<ConnectionCounts, SockDiagError> {
    Ok(count(&dump_tcp_sockets()?, query))
}

/// Lists the established and listening TCP sockets, IPv4 and IPv6, of the
/// calling thread's network namespace.
pub fn dump_tcp_sockets() -> Result<Vec<TcpSocket>, SockDiagError> {
    let socket = open()?;
    let mut sockets = Vec::new();
    for (seq, family) in [(1, libc::AF_INET), (2, libc::AF_INET6)] {
        sockets.extend(dump_family(&socket, family, seq)?);
    }
    Ok(sockets)
}

fn open() -> Result<OwnedFd, SockDiagError> {
    // SAFETY: socket takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io_error("socket"));
    }
    // SAFETY: fd is a new, valid descriptor owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: the option value points at a live timeval of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io_error("setsockopt(SO_RCVTIMEO)"));
    }
    Ok(socket)
}

fn io_error(call: &'static str) -> SockDiagError {
    SockDiagError::Io {
        call,
        source: std::io::Error::last_os_error(),
    }
}

fn dump_family(socket: &OwnedFd, family: i32, seq: u32) -> Result<Vec<TcpSocket>, SockDiagError> {
    for _ in 0..DUMP_ATTEMPTS {
        send(socket, &request(family, seq))?;
        let mut sockets = Vec::new();
        let mut interrupted = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).map_err(|_| io_error("recv"))?;
            if n == 0 {
                return Err(SockDiagError::Malformed(
                    "empty reply before NLMSG_DONE".into(),
                ));
            }
            let batch = parse_messages(&buf[..n], seq)?;
            sockets.extend(batch.sockets);
            interrupted |= batch.interrupted;
            if batch.done {
                break;
            }
        }
        if !interrupted {
            return Ok(sockets);
        }
        tracing::debug!(family, "sock_diag dump interrupted; retrying");
    }
    Err(SockDiagError::Inconsistent)
}

fn send(socket: &OwnedFd, message: &[u8]) -> Result<(), SockDiagError> {
    // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: message and kernel are live for the call, with the sizes given.
    let n = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io_error("sendto"));
    }
    Ok(())
}

/// A dump request for TCP sockets of `family` in ESTABLISHED or LISTEN.
fn request(family: i32, seq: u32) -> Vec<u8> {
    let len = NLMSG_HEADER_LEN + REQUEST_LEN;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let states: u32 = (1 << TcpState::ESTABLISHED.0) | (1 << TcpState::LISTEN.0);
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
    message.push(family as u8); // sdiag_family
    message.push(libc::IPPROTO_TCP as u8); // sdiag_protocol
    message.push(0); // idiag_ext: no extensions
    message.push(0); // pad
    message.extend_from_slice(&states.to_ne_bytes());
    message.resize(len, 0); // inet_diag_sockid: match any
    message
}

/// What one received datagram held.
#[derive(Debug, Default)]
struct Batch {
    sockets: Vec<TcpSocket>,
    done: bool,
    interrupted: bool,
}

/// Parses the netlink messages in one datagram of a dump reply.
fn parse_messages(mut bytes: &[u8], seq: u32) -> Result<Batch, SockDiagError> {
    let mut batch = Batch::default();
    while bytes.len() >= NLMSG_HEADER_LEN {
        let len = u32_at(bytes, 0) as usize;
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let flags = u16::from_ne_bytes([bytes[6], bytes[7]]);
        if len < NLMSG_HEADER_LEN || len > bytes.len() {
            return Err(SockDiagError::Malformed(format!(
                "message length {len} with {} bytes left",
                bytes.len()
            )));
        }
        let payload = &bytes[NLMSG_HEADER_LEN..len];
        if u32_at(bytes, 8) == seq {
            batch.interrupted |= flags & libc::NLM_F_DUMP_INTR as u16 != 0;
            match i32::from(kind) {
                libc::NLMSG_DONE => {
                    batch.done = true;
                    return Ok(batch);
                }
                libc::NLMSG_ERROR => {
                    let errno = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| SockDiagError::Malformed("short error message".into()))?;
                    if errno != 0 {
                        return Err(SockDiagError::Kernel(std::io::Error::from_raw_os_error(
                            -errno,
                        )));
                    }
                }
                _ if kind == SOCK_DIAG_BY_FAMILY => batch.sockets.push(parse_diag_msg(payload)?),
                _ => {}
            }
        }
        let aligned = (len + 3) & !3;
        bytes = bytes.get(aligned..).unwrap_or_default();
    }
    Ok(batch)
}

/// One `inet_diag_msg`.
fn parse_diag_msg(payload: &[u8]) -> Result<TcpSocket, SockDiagError> {
    if payload.len() < DIAG_MSG_LEN {
        return Err(SockDiagError::Malformed(format!(
            "inet_diag_msg of {} bytes, {DIAG_MSG_LEN} expected",
            payload.len()
        )));
    }
    let family = i32::from(payload[0]);
    let state = TcpState(payload[1]);
    // inet_diag_sockid starts at offset 4: sport, dport, src[16], dst[16].
    let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
    let ip = |at: usize| -> Result<IpAddr, SockDiagError> {
        let raw = &payload[at..at + 16];
        match family {
            libc::AF_INET => Ok(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()),
            libc::AF_INET6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(raw);
                Ok(unmap(Ipv6Addr::from(octets).into()))
            }
            other => Err(SockDiagError::Malformed(format!("address family {other}"))),
        }
    };
    Ok(TcpSocket {
        local: SocketAddr::new(ip(8)?, port(4)),
        remote: SocketAddr::new(ip(24)?, port(6)),
        state,
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        net::{TcpListener, TcpStream},
    };

    use super::*;

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
        let message = request(libc::AF_INET6, 7);
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
