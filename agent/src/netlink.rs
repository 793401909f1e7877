//! Synchronous netlink dumps: one request, the replies until `NLMSG_DONE`.
//!
//! The agent asks the kernel for lists (TCP sockets over `sock_diag`, links
//! and addresses over route netlink) from synchronous code, so it uses
//! `netlink-sys` sockets directly rather than rtnetlink's async connection;
//! the messages are laid out and decoded by the `netlink-packet-*` crates.
//! A socket describes the network namespace of the thread that made it,
//! which for the agent is the real server's.
//!
//! A dump the kernel marks interrupted (`NLM_F_DUMP_INTR`: the list changed
//! while it was sent) is asked for again, up to [`DUMP_ATTEMPTS`] times.

use std::{fmt::Debug, time::Duration};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::Socket;

/// `sizeof(struct nlmsghdr)`: a datagram's tail shorter than this holds no
/// message.
pub const NLMSG_HEADER_LEN: usize = 16;
/// How long to wait for the kernel's reply before giving up.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often to ask again for a dump the kernel marked inconsistent.
pub const DUMP_ATTEMPTS: usize = 3;

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket call failed.
    #[error("{call} failed: {source}")]
    Io {
        /// The system call.
        call: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered the request with an error.
    #[error("the kernel refused the request: {0}")]
    Kernel(std::io::Error),
    /// A reply did not have the expected layout.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// Every attempt was interrupted by concurrent changes.
    #[error("the dump was inconsistent {DUMP_ATTEMPTS} times in a row; try again")]
    Inconsistent,
}

/// A netlink socket of `protocol` with a receive timeout.
pub fn open(protocol: isize) -> Result<Socket, NetlinkError> {
    let socket = Socket::new(protocol).map_err(io_error("socket"))?;
    socket2::SockRef::from(&socket)
        .set_read_timeout(Some(RECEIVE_TIMEOUT))
        .map_err(io_error("setsockopt(SO_RCVTIMEO)"))?;
    Ok(socket)
}

fn io_error(call: &'static str) -> impl FnOnce(std::io::Error) -> NetlinkError {
    move |source| NetlinkError::Io { call, source }
}

/// Sends `request` as a dump with sequence number `seq` and returns every
/// message of the reply.
pub fn dump<M>(socket: &Socket, request: M, seq: u32) -> Result<Vec<M>, NetlinkError>
where
    M: NetlinkSerializable + NetlinkDeserializable + Debug + Clone,
{
    let kernel = netlink_sys::SocketAddr::new(0, 0);
    let bytes = serialize(request, seq);
    for _ in 0..DUMP_ATTEMPTS {
        socket
            .send_to(&bytes, &kernel, 0)
            .map_err(io_error("sendto"))?;
        let mut messages = Vec::new();
        let mut interrupted = false;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = socket
                .recv(&mut &mut buf[..], 0)
                .map_err(io_error("recv"))?;
            if n == 0 {
                return Err(NetlinkError::Malformed(
                    "empty reply before NLMSG_DONE".into(),
                ));
            }
            let batch = parse::<M>(&buf[..n], seq)?;
            messages.extend(batch.messages);
            interrupted |= batch.interrupted;
            if batch.done {
                break;
            }
        }
        if !interrupted {
            return Ok(messages);
        }
        tracing::debug!(seq, "netlink dump interrupted; asking again");
    }
    Err(NetlinkError::Inconsistent)
}

/// `request` as a dump request's bytes.
pub fn serialize<M>(request: M, seq: u32) -> Vec<u8>
where
    M: NetlinkSerializable + Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// What one received datagram of a dump held.
#[derive(Debug)]
pub struct Batch<M> {
    /// The messages of the dump (those of other sequence numbers skipped).
    pub messages: Vec<M>,
    /// `NLMSG_DONE` came.
    pub done: bool,
    /// The kernel marked a message `NLM_F_DUMP_INTR`.
    pub interrupted: bool,
}

/// Parses the netlink messages in one datagram of the reply to `seq`.
pub fn parse<M>(mut bytes: &[u8], seq: u32) -> Result<Batch<M>, NetlinkError>
where
    M: NetlinkDeserializable + Debug,
{
    let mut batch = Batch {
        messages: Vec::new(),
        done: false,
        interrupted: false,
    };
    while bytes.len() >= NLMSG_HEADER_LEN {
        let message = NetlinkMessage::<M>::deserialize(bytes)
            .map_err(|e| NetlinkError::Malformed(format!("{e} with {} bytes left", bytes.len())))?;
        let header = message.header;
        if header.sequence_number == seq {
            batch.interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
            match message.payload {
                NetlinkPayload::Done(_) => {
                    batch.done = true;
                    return Ok(batch);
                }
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(NetlinkError::Kernel(error.to_io()));
                }
                NetlinkPayload::InnerMessage(inner) => batch.messages.push(inner),
                _ => {}
            }
        }
        let aligned = (header.length as usize + 3) & !3;
        bytes = bytes.get(aligned..).unwrap_or_default();
    }
    Ok(batch)
}
