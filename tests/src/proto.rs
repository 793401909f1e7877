//! JSON printed by `lab-client` (one object per line on stdout).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Summary of `lab-client burst` and `lab-client udp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstReport {
    /// Connections (datagrams) answered with a server name.
    pub ok: u64,
    pub failed: u64,
    /// Answers per server name.
    pub by_server: BTreeMap<String, u64>,
    /// The first few errors, as text.
    pub errors: Vec<String>,
    /// Server per source port; filled only with `--src-port-start`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_port: BTreeMap<u16, String>,
}

/// One line per connection of `lab-client hold`, printed once all are
/// connected (or failed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldConn {
    /// Local (source) port.
    pub port: u16,
    /// Name the server greeted with; `None` when the connection failed.
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of `lab-client hold` to a `ping` command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReport {
    pub alive: u64,
    pub dead: u64,
    /// Per connection, in port order: the server that echoed, or `None`
    /// (dead: no echo within 2 s, or failed before; dead stays dead).
    pub servers: Vec<Option<String>>,
}

/// Summary of `lab-client load`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// Answers per server name.
    pub by_server: BTreeMap<String, u64>,
    /// Wall-clock milliseconds (Unix epoch) of each server's first answer.
    pub first_seen_ms: BTreeMap<String, u64>,
    /// The first few errors, as text.
    pub errors: Vec<String>,
    /// Latency of the answered connections, from when each was due to its
    /// greeting, in milliseconds: median, 99th percentile, largest.
    #[serde(default)]
    pub p50_ms: f64,
    #[serde(default)]
    pub p99_ms: f64,
    #[serde(default)]
    pub max_ms: f64,
}
