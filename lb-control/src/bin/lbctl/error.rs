//! Why a command failed: `main` prints it after `error: ` and exits with 1.

use std::{io, path::PathBuf};

use lb_proto::tls::TlsError;

/// A failed command; its text is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The async runtime did not start.
    #[error(transparent)]
    Runtime(io::Error),
    /// The request did not get an answer from the control socket (its text
    /// says why: no daemon, a bad response).
    #[error("{0}")]
    Call(Box<dyn std::error::Error + Send + Sync>),
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
}

impl Error {
    /// What `api::call` returned instead of a response: its text today,
    /// any error type it may return instead.
    pub fn call(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Call(error.into())
    }
}
