//! The control socket: one JSON request per line, one JSON response per line.
//! `lbctl` is its client.

pub mod access;
mod client;
mod daemon;
mod error;
mod protocol;
mod server;

pub use client::{ClientError, call};
pub use daemon::{Daemon, NodeRole};
pub use error::RequestError;
pub use protocol::{ErrorKind, Reloaded, Request, Response, Stats, Status};
pub use server::{Decoded, Limits, Line, MAX_REQUEST, MAX_SESSIONS, decode, read_line, serve};
