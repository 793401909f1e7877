//! What can stop a change of the controller, each error saying what the
//! operator can do about it.

use std::path::PathBuf;

use crate::manager::{
    ManagerError, config_file::ConfigFileError, generation::GenerationError, node_link::LinkError,
};

/// Why the controller could not start, or a change was not made (or was
/// rolled back).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(
        "server `{0}` presented no certificate other than the one pinned for it: nothing to re-pin"
    )]
    NothingToRepin(String),
    /// A task run off the runtime (the file's update) did not finish.
    #[error("a background task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The configuration file could not be read or updated.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// No generation could be recorded, so no change was sent.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error("{}: {source} (move it away to start with configured weights)", path.display())]
    StateCorrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    StateRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manager.node needs manager.tls_dir")]
    NodesWithoutTls,
    #[error("manager.node `{node}`: {source}")]
    RemoteNode {
        node: String,
        source: Box<LinkError>,
    },
    #[error("no server `{0}` in the configuration")]
    UnknownServer(String),
    #[error("no service `{0}` in the configuration")]
    UnknownService(String),
    #[error("server `{0}` is already free")]
    AlreadyFree(String),
    #[error("server `{0}` serves no service")]
    ServesNoService(String),
    #[error("server `{0}` hosts no configured service's application; name one with --service")]
    NoApplication(String),
    #[error("server `{server}` could serve {services:?}; name one with --service")]
    Ambiguous {
        server: String,
        services: Vec<String>,
    },
    #[error("server `{server}` is already in service `{service}` ({state})")]
    AlreadyMember {
        server: String,
        service: String,
        state: &'static str,
    },
    /// The agent did not give the server's settings.
    #[error("{kind} settings: {source}")]
    Settings {
        kind: &'static str,
        source: Box<ManagerError>,
    },
    #[error("{kind} settings: unexpected answer")]
    UnexpectedSettings { kind: &'static str },
    /// The agent's connection settings name what its host may not have.
    #[error("server `{server}`: connection settings refused: {source}")]
    BadSettings {
        server: String,
        source: super::settings::SettingsRefusal,
    },
    /// A change some node did not apply; it was rolled back.
    #[error(
        "nodes did not all apply generation {generation}: {}",
        joined(failures)
    )]
    NotApplied {
        generation: u64,
        failures: Vec<NodeFailure>,
    },
    /// A full sync some node did not take; the next change retries.
    #[error("{}", joined(.0))]
    NotSynced(Vec<NodeFailure>),
}

/// Why one node did not apply a reconfiguration.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    #[error("node `{node}` did not apply generation {generation}: {error}")]
    Refused {
        node: String,
        generation: u64,
        error: String,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The failures one after another, as the events and errors say them.
pub fn joined(failures: &[NodeFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
