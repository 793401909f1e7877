//! `[manager]` of the config file: where the manager listens, how it
//! trusts agents and nodes, and its timing; `validate` says what to write
//! when a section cannot work.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// `[manager]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// Address agents connect to, e.g. `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// The manager's name: its certificate's name, and the host of its
    /// stream header.
    pub name: String,
    /// PKI directory (`lbctl certs init/issue`): `ca.pem`, `<name>.pem`,
    /// `<name>.key`.
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    /// Plain TCP without authentication. Only for labs; said loudly.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The agents' report interval, in milliseconds.
    #[serde(default = "default_interval")]
    pub report_interval_ms: u64,
    /// Intervals without a report before a server is unmonitored.
    #[serde(default = "default_silent_intervals")]
    pub unmonitored_after_intervals: u32,
    /// `[manager.discovery]`: receive agents' signed announcements on the
    /// segment; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<crate::manager::discovery::DiscoveryConfig>,
    /// Balancer nodes on other hosts (`[[manager.node]]`), reconfigured over
    /// mutual TLS like the node in this process.
    #[serde(default, rename = "node", skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<RemoteNodeConfig>,
    /// Directory for the manager's own state: the generation counter and
    /// the published weights.
    #[serde(default = "default_manager_state_dir")]
    pub state_dir: PathBuf,
    /// How long to wait for each node's ack of a reconfiguration, in
    /// milliseconds.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// Resends of a reconfiguration to a node that did not ack before the
    /// change is rolled back.
    #[serde(default = "default_ack_retries")]
    pub ack_retries: u32,
    /// The agents' longest reconnect delay, in milliseconds (their backoff
    /// cap plus jitter): after a manager start, no server is judged failed
    /// before 3 report intervals plus this have passed.
    #[serde(default = "default_agent_backoff")]
    pub agent_backoff_ms: u64,
    /// Subnets the real servers' addresses are in: an agent's connection
    /// settings may give an address there other than the one its stream
    /// comes from (its IPv6 address when it connects over IPv4, say).
    /// Empty: only the stream's own address is taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_subnets: Vec<ipnet::IpNet>,
    /// Most agent connections held at once; one more is closed at once.
    #[serde(default = "default_max_agent_connections")]
    pub max_agent_connections: usize,
    /// Most agent connections from one source address (a host has one
    /// stream; a few more while it reconnects).
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: usize,
    /// Certificate fingerprints (SHA-256, hex, `:` allowed) no agent may
    /// use: a stolen or retired certificate. Read again with the file, so
    /// adding one ends its sessions and refuses its hellos and
    /// announcements without a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_fingerprints: Vec<String>,
}

fn default_max_agent_connections() -> usize {
    16_384
}
fn default_max_per_source() -> usize {
    16
}

/// `[[manager.node]]`: a balancer node on another host.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteNodeConfig {
    /// The node's certificate name (`[node.control] name` on that node).
    pub name: String,
    /// `host:port` of its `[node.control] listen`.
    pub address: String,
    /// The addresses it tunnels from (its `[node] tunnel_source`): the
    /// manager tells the agents, whose decapsulation accepts tunnelled
    /// packets from listed sources only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_source: Vec<std::net::IpAddr>,
}

fn default_manager_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/xdplb/manager")
}
fn default_ack_timeout() -> u64 {
    5000
}
fn default_ack_retries() -> u32 {
    2
}
fn default_agent_backoff() -> u64 {
    12_500
}

fn default_interval() -> u64 {
    1000
}
fn default_silent_intervals() -> u32 {
    3
}

impl ManagerConfig {
    /// A manager named `name` on `listen` with every other key at its
    /// default (no TLS directory yet: set `tls_dir` or
    /// `insecure_plaintext`).
    #[must_use]
    pub fn new(listen: SocketAddr, name: &str) -> Self {
        Self {
            listen,
            name: name.to_owned(),
            tls_dir: None,
            insecure_plaintext: false,
            report_interval_ms: default_interval(),
            unmonitored_after_intervals: default_silent_intervals(),
            discovery: None,
            nodes: Vec::new(),
            state_dir: default_manager_state_dir(),
            ack_timeout_ms: default_ack_timeout(),
            ack_retries: default_ack_retries(),
            agent_backoff_ms: default_agent_backoff(),
            server_subnets: Vec::new(),
            max_agent_connections: default_max_agent_connections(),
            max_connections_per_source: default_max_per_source(),
            denied_fingerprints: Vec::new(),
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ManagerConfigError> {
        if self.tls_dir.is_none() && !self.insecure_plaintext {
            return Err(ManagerConfigError::NoTls);
        }
        if self.report_interval_ms == 0 || self.unmonitored_after_intervals == 0 {
            return Err(ManagerConfigError::ZeroInterval);
        }
        if let Some(d) = &self.discovery {
            d.validate(self.tls_dir.is_some())?;
        }
        if !self.nodes.is_empty() && self.tls_dir.is_none() {
            return Err(ManagerConfigError::NodesWithoutTls);
        }
        let mut names = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !names.insert(&n.name) {
                return Err(ManagerConfigError::NodeTwice(n.name.clone()));
            }
        }
        if self.ack_timeout_ms == 0 {
            return Err(ManagerConfigError::ZeroAckTimeout);
        }
        if let Some(f) = self.denied_fingerprints.iter().find(|f| {
            let hex: Vec<char> = f.chars().filter(|c| *c != ':').collect();
            hex.len() != 64 || !hex.iter().all(char::is_ascii_hexdigit)
        }) {
            return Err(ManagerConfigError::Fingerprint(f.clone()));
        }
        Ok(())
    }

    #[must_use]
    pub fn report_interval(&self) -> Duration {
        Duration::from_millis(self.report_interval_ms)
    }

    #[must_use]
    pub fn silence(&self) -> Duration {
        Duration::from_millis(self.report_interval_ms * u64::from(self.unmonitored_after_intervals))
    }
}

/// A `[manager]` section that cannot work; each says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerConfigError {
    #[error(
        "manager.tls_dir is missing: create a CA with `lbctl certs init --dir DIR` and the manager's certificate with `lbctl certs issue --dir DIR --host NAME --role server`, or write manager.insecure_plaintext = true for a lab"
    )]
    NoTls,
    #[error("manager.report_interval_ms and unmonitored_after_intervals must be > 0")]
    ZeroInterval,
    #[error(transparent)]
    Discovery(#[from] crate::manager::discovery::DiscoveryConfigError),
    #[error(
        "manager.node entries need manager.tls_dir: remote nodes are only reconfigured over mutual TLS"
    )]
    NodesWithoutTls,
    #[error("manager.node `{0}` is listed twice")]
    NodeTwice(String),
    #[error("manager.ack_timeout_ms must be > 0")]
    ZeroAckTimeout,
    #[error(
        "manager.denied_fingerprints: {0:?} is not a SHA-256 fingerprint (64 hex digits, `:` allowed), as `lbctl certs issue` prints it"
    )]
    Fingerprint(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_fingerprints_must_be_sha256() {
        let mut c = ManagerConfig {
            insecure_plaintext: true,
            ..ManagerConfig::new("127.0.0.1:7443".parse().unwrap(), "manager")
        };
        c.denied_fingerprints = vec!["ab".repeat(32), "AB:".repeat(31) + "AB"];
        c.validate().unwrap();
        c.denied_fingerprints.push("abc".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("\"abc\" is not a SHA-256 fingerprint"), "{e}");
    }
}
