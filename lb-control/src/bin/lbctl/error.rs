//! Why a command failed: `main` prints it after `error: ` and exits with
//! its [`Error::exit_code`].

use std::{io, path::PathBuf};

use lb_control::api::ClientError;
use lb_proto::tls::TlsError;

/// A failed command; its text is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The async runtime did not start.
    #[error(transparent)]
    Runtime(io::Error),
    /// The request did not get an answer from the control socket (its text
    /// says why: no daemon, a bad response).
    #[error(transparent)]
    Call(ClientError),
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(String),
    /// `events --follow` reached no control socket.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    /// The event stream broke.
    #[error(transparent)]
    Stream(io::Error),
    /// A request or response that does not encode as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A certificate not made.
    #[error(transparent)]
    Certs(#[from] TlsError),
    /// `lbctl top`: the daemon stopped answering.
    #[error("the daemon went away: {0}")]
    Gone(ClientError),
    /// `lbctl top`: the terminal could not be drawn or read.
    #[error("terminal: {0}")]
    Terminal(io::Error),
    /// Man pages not written.
    #[error("cannot write man pages into {}: {source}", dir.display())]
    Man { dir: PathBuf, source: io::Error },
}

/// No daemon answered at the socket (`lbctl`'s exit code 3).
pub const UNREACHABLE: u8 = 3;

impl Error {
    /// The exit code: [`UNREACHABLE`] when no daemon could be reached at
    /// the socket, 1 for everything else (the daemon said no, a file not
    /// written, ...).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Call(ClientError::Connect { .. }) | Self::Connect { .. } | Self::Gone(_) => {
                UNREACHABLE
            }
            _ => 1,
        }
    }
}
