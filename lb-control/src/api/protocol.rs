//! What travels over the control socket: the requests, the responses, and
//! the stable kinds of error responses.

use serde::{Deserialize, Serialize};

use crate::{
    manager::{
        ManagerStats,
        config_file::NewService,
        controller::{PoolMember, PoolReport},
        db::MonitorView,
        events::Event,
    },
    node::{ApplyReport, ServerView, ServiceView},
};

/// Requests `lbctl` sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    ServiceList,
    ServerList,
    Stats,
    /// Re-read the config file and apply the difference.
    Reload,
    /// Each service's allocated and free servers (manager).
    Pool,
    /// Events after id `after`; `follow`: keep the stream open and send
    /// each new event as it happens.
    Events {
        #[serde(default)]
        after: u64,
        #[serde(default)]
        follow: bool,
    },
    /// Allocate a free server to a service (manager).
    ServerAllocate {
        server: String,
        #[serde(default)]
        service: Option<String>,
    },
    /// Drain a server: no new flows, back to the free pool when idle.
    ServerDrain {
        server: String,
    },
    /// Return a server to the free pool now.
    ServerDeallocate {
        server: String,
    },
    /// Pin the certificate a server presented last against its pin.
    ServerRepin {
        server: String,
    },
    /// Add a service at run time.
    ServiceAdd(NewService),
    /// Remove a service at run time.
    ServiceRemove {
        name: String,
    },
}

/// Daemon status.
///
/// Two counters are called generation: the node's **table generation**
/// (one more at each Maglev table flip on this node; its own on every
/// node) and the **manager generation** (one more at each change the
/// manager sends to every node; what its events and `lbctl config reload`
/// name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub program_id: u32,
    pub adoption: String,
    /// The table generation, under its old name.
    pub generation: u32,
    /// This node's table generation.
    #[serde(default)]
    pub table_generation: u32,
    /// The manager generation of the last change this node applied; none
    /// before a manager configured it.
    #[serde(default)]
    pub manager_generation: Option<u64>,
    pub pin_dir: String,
    pub interfaces: Vec<String>,
}

/// `lbctl config reload`: the apply on this node, with both generations
/// named plainly (see [`Status`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    /// `generation` in it is the table generation, under its old name;
    /// `manager_generation` is set when the manager sent the file to every
    /// node.
    #[serde(flatten)]
    pub report: ApplyReport,
    /// This node's table generation after the reload.
    pub table_generation: u32,
}

/// Counters for `lbctl stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub global: Vec<(String, u64)>,
    pub flows: usize,
    pub services: Vec<ServiceView>,
    /// Agent streams, when this process is also the manager.
    #[serde(default)]
    pub manager: Option<ManagerStats>,
    /// The manager's decisions since it started, by event kind
    /// (`allocated`, `rolled-back`, `allocation-failed`, ...).
    #[serde(default)]
    pub decisions: std::collections::BTreeMap<String, u64>,
}

/// Responses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Services {
        services: Vec<ServiceView>,
    },
    Servers {
        servers: Vec<ServerView>,
        /// The manager's view of every server with an agent (also those not
        /// in the config: announced spares).
        #[serde(default)]
        monitors: Vec<MonitorView>,
    },
    Stats(Stats),
    Reloaded(Reloaded),
    /// A change the manager made and every node acked.
    Done {
        /// Its manager generation (0: none).
        generation: u64,
        message: String,
    },
    Pool {
        pools: Vec<PoolReport>,
        /// Servers of the configuration file no pool lists.
        #[serde(default)]
        unassigned: Vec<PoolMember>,
    },
    Events {
        events: Vec<Event>,
    },
    /// The request was not carried out. `message` says why and what to do
    /// (what lbctl prints); `kind` is the stable class of it for scripts
    /// (absent from daemons before it existed: `internal`).
    Error {
        #[serde(default)]
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    /// An error response with its kind and message.
    pub fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Self {
        Response::Error {
            kind,
            message: message.to_string(),
        }
    }
}

/// The class of an error response, stable across versions (the message
/// is not): scripts match on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request line is not a request of this version.
    BadRequest,
    /// A manager request to a daemon that runs no manager.
    NoManager,
    /// The server or service named is not in the configuration.
    NotFound,
    /// The request contradicts the state: a server already free or already
    /// in the service, a name that exists, the file edited meanwhile.
    Conflict,
    /// The request needs more: name the service with `--service`.
    InvalidRequest,
    /// The configuration file is invalid, or the change would make it so;
    /// nothing was changed.
    InvalidConfig,
    /// The change is to settings read only at start: restart lb-control.
    RestartRequired,
    /// The server's agent did not give its settings (not connected, or
    /// no answer in time).
    AgentUnavailable,
    /// Some node did not apply the change; it was rolled back (or, for a
    /// reload, the next change retries).
    NodesFailed,
    /// The peer may not send this request (see `node.control_group` and
    /// `node.admin_group`).
    Forbidden,
    /// Too many control sessions are open: try again.
    Busy,
    /// Anything else: I/O, the state directory, an error of a kind this
    /// client does not know.
    #[default]
    #[serde(other)]
    Internal,
}
