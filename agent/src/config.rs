//! The agent's TOML configuration file: parsed with serde (unknown keys are
//! errors), then validated into an [`AgentConfig`] with every default
//! filled in. Every error names the key and the line.
//!
//! ```toml
//! [agent]
//! host = "web-1"                  # the name on this host's certificate
//! manager = "198.51.100.1:7400"   # ADDR:PORT of the manager
//! tls_dir = "/etc/xdplb/pki"      # ca.pem, web-1.pem, web-1.key
//! control_port = 7443
//!
//! [utilization]
//! kind = "host-cpu"
//!
//! [[application]]
//! name = "web"
//! protocol = "tcp"
//! ports = [80]
//! vips = ["192.0.2.10"]
//! probe = { kind = "http", port = 80, path = "/healthz" }
//!
//! [discovery]                     # optional: signed announcements
//! enabled = true
//! address = "255.255.255.255:7445"
//! interval_ms = 5000
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use lb_proto::Protocol;
use serde::Deserialize;

use crate::sources::{CommandSource, SourceKind};

mod file;

#[cfg(test)]
mod tests;

/// The report interval when `report_interval_ms` is not set.
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 1000;
/// Successful probes in a row before an application is up, by default.
pub const DEFAULT_RISE: u32 = 2;
/// Failed probes in a row before an application is down, by default.
pub const DEFAULT_FALL: u32 = 3;
/// How long a health probe waits for its answer unless
/// `probe_timeout_ms` says otherwise: a saturated server meets it.
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 1000;
/// The longest `probe_timeout_ms` accepted.
pub const MAX_PROBE_TIMEOUT_MS: u64 = 60_000;
/// The HTTP status a probe expects by default.
pub const DEFAULT_HTTP_EXPECT: u16 = 200;
/// The shortest report or probe interval accepted, in milliseconds.
pub const MIN_INTERVAL_MS: u64 = 50;
/// The longest report or probe interval accepted, in milliseconds (1 h).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;
/// Where announcements go by default: the limited broadcast address, port
/// 7445.
pub const DEFAULT_DISCOVERY_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), 7445);
/// The announcement interval when `discovery.interval_ms` is not set.
pub const DEFAULT_DISCOVERY_INTERVAL_MS: u64 = 5000;
/// The shortest announcement interval accepted, in milliseconds: every
/// host on the segment receives each announcement.
pub const MIN_DISCOVERY_INTERVAL_MS: u64 = 1000;

/// Why a valid configuration does not fit this host (`lb-agent check`).
#[derive(Debug, thiserror::Error)]
pub enum HostCheckError {
    /// `utilization.cgroup` names no cgroup here.
    #[error(
        "utilization.cgroup = {cgroup:?} is not a cgroup on this host: {source}; \
         create it or fix the name"
    )]
    NoSuchCgroup {
        /// The configured cgroup.
        cgroup: String,
        /// Where it was looked for.
        #[source]
        source: crate::sources::CgroupError,
    },
}

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not valid TOML (an unknown key, a
    /// value of the wrong type: the parser names the line and column).
    #[error(transparent)]
    File(#[from] lb_proto::toml_file::FileError),
    /// A value is well-typed but unusable.
    #[error("{path}:{line}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the offending value (of its section when the
        /// value is missing).
        line: usize,
        /// The key, e.g. `agent.manager` or `application[web].probe.path`.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

/// What the agent does, validated, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// This server's name: the name on its certificate and in every message.
    pub host: String,
    /// The manager's address, `ADDR:PORT` (an IP address or a DNS name).
    pub manager: String,
    /// The name the manager's certificate must carry.
    pub manager_name: String,
    /// How often a report is sent.
    pub report_interval: Duration,
    /// The PKI directory (`ca.pem`, `<host>.pem`, `<host>.key`); always set
    /// unless `insecure_plaintext`.
    pub tls_dir: Option<PathBuf>,
    /// Plain TCP to the manager, without TLS: only for labs.
    pub insecure_plaintext: bool,
    /// This server's control port, reported in auth settings.
    pub control_port: Option<u16>,
    /// Announce the server as a free (spare) server.
    pub spare: bool,
    /// Capacity in cores, overriding what the agent measures.
    pub capacity_cores: Option<f64>,
    /// What utilization means on this server.
    pub utilization: UtilizationConfig,
    /// The applications this server runs.
    pub applications: Vec<ApplicationConfig>,
    /// `[discovery]`: signed announcements on the local segment.
    pub discovery: DiscoveryConfig,
    /// `[decap]`: the decapsulation this agent installs and owns; `None`:
    /// none (only `forward = "l2"` reaches this server, unless it is
    /// installed with `lb-agent decap attach`).
    pub decap: Option<DecapConfig>,
}

/// `[decap]`, validated: where tunnelled packets arrive and whom to take
/// them from (beside the nodes' sources the manager sends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecapConfig {
    /// The interface tunnelled packets arrive on.
    pub interface: String,
    /// Outer sources allowed besides the manager's (`sources`).
    pub sources: Vec<IpAddr>,
    /// The outer UDP destination port of GUE.
    pub gue_port: u16,
    /// Where the pins go (default [`crate::decap::PIN_ROOT`]).
    pub pin_root: PathBuf,
    /// Every application's VIPs: inner packets for any other address are
    /// dropped.
    pub vips: Vec<IpAddr>,
}

/// `[discovery]`, validated: whether and where the agent announces itself
/// (see [`crate::discovery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Send announcements (off unless configured).
    pub enabled: bool,
    /// Where they go: a broadcast address (`SO_BROADCAST` is set), a multicast
    /// group (sent with TTL 1, so they stay on the segment) or a manager's
    /// unicast address.
    pub address: SocketAddr,
    /// How often one is sent.
    pub interval: Duration,
}

impl Default for DiscoveryConfig {
    /// Off; broadcast to port 7445 every 5 s once enabled.
    fn default() -> Self {
        Self {
            enabled: false,
            address: DEFAULT_DISCOVERY_ADDRESS,
            interval: Duration::from_millis(DEFAULT_DISCOVERY_INTERVAL_MS),
        }
    }
}

/// `[utilization]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtilizationConfig {
    /// The measurement the figure comes from.
    pub kind: SourceKind,
    /// For `connections`: the established connections an application handles
    /// at full load, unless the application sets its own.
    pub connection_capacity: Option<u64>,
    /// The application cgroup (path in the hierarchy, e.g. `/lab/h1`):
    /// required for `cgroup-cpu`; with other kinds its CPU share is reported
    /// beside the figure.
    pub cgroup: Option<String>,
    /// For `command`: the operator's command or file.
    pub command: Option<CommandSource>,
}

impl Default for UtilizationConfig {
    /// The host's CPU, with no cgroup watched.
    fn default() -> Self {
        Self {
            kind: SourceKind::HostCpu,
            connection_capacity: None,
            cgroup: None,
            command: None,
        }
    }
}

/// One `[[application]]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplicationConfig {
    /// The name services use to find servers that run it.
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Listening ports.
    pub ports: Vec<u16>,
    /// VIPs served by direct server return (held on loopback).
    pub vips: Vec<IpAddr>,
    /// The health probe.
    pub probe: ProbeConfig,
    /// Successful probes in a row before the application is up.
    pub rise: u32,
    /// Failed probes in a row before the application is down.
    pub fall: u32,
    /// How often the probe runs.
    pub probe_interval: Duration,
    /// How long one probe waits for its answer (`probe_timeout_ms`,
    /// default 1 s, whatever the interval). A probe that times out counts
    /// as late, not as refused: see [`lb_proto::HealthTracker`].
    pub probe_timeout: Duration,
    /// For the `connections` utilization source: the established
    /// connections this application handles at full load.
    pub connection_capacity: Option<u64>,
}

/// How an application's health is probed; the probe goes to `address`
/// (default 127.0.0.1) for health and to each VIP for readiness.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProbeConfig {
    /// A TCP connection is accepted.
    Tcp {
        /// The port to connect to.
        port: u16,
        /// The address to connect to (default 127.0.0.1), for applications
        /// that listen only on their VIP or a service address.
        #[serde(default)]
        address: Option<IpAddr>,
    },
    /// `GET path` over HTTP/1.0 answers with status `expect`.
    Http {
        /// The port to connect to.
        port: u16,
        /// The request path; starts with `/`.
        path: String,
        /// The expected status code.
        #[serde(default = "default_expect")]
        expect: u16,
        /// The address to connect to (default 127.0.0.1).
        #[serde(default)]
        address: Option<IpAddr>,
    },
}

impl ProbeConfig {
    /// The port probed.
    #[must_use]
    pub fn port(&self) -> u16 {
        match self {
            Self::Tcp { port, .. } | Self::Http { port, .. } => *port,
        }
    }

    /// The address health probes go to.
    #[must_use]
    pub fn address(&self) -> IpAddr {
        match self {
            Self::Tcp { address, .. } | Self::Http { address, .. } => {
                address.unwrap_or(crate::monitor::HEALTH_PROBE_ADDRESS)
            }
        }
    }
}

fn default_expect() -> u16 {
    DEFAULT_HTTP_EXPECT
}

impl AgentConfig {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = lb_proto::toml_file::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: file::File = lb_proto::toml_file::parse(text, path)?;
        file::Validator { text, path }.config(file)
    }

    /// What `lb-agent check` verifies on the host beyond the file: that
    /// `utilization.cgroup` resolves under `<root>/sys/fs/cgroup` the way the
    /// agent resolves it when it starts (v1 `cpu`/`cpuacct` hierarchies,
    /// else the cgroup2 mount).
    ///
    /// # Errors
    ///
    /// [`HostCheckError::NoSuchCgroup`] when the cgroup is not found; its
    /// text names every path that was tried.
    pub fn check_host(&self, root: &Path) -> Result<(), HostCheckError> {
        if let Some(cgroup) = &self.utilization.cgroup {
            crate::sources::CgroupCpu::discover_under(root, cgroup).map_err(|source| {
                HostCheckError::NoSuchCgroup {
                    cgroup: cgroup.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }
}

/// The configuration spelling of a source kind (`host-cpu`, ...).
#[must_use]
pub fn kebab(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::HostCpu => "host-cpu",
        SourceKind::CgroupCpu => "cgroup-cpu",
        SourceKind::Connections => "connections",
        SourceKind::Command => "command",
    }
}
