//! The node's TOML configuration: one serde struct, documented fields,
//! defaults, and a `validate()` step. Errors name the key and the line:
//! where names stand in the text is read beside the struct, by the
//! validation alone, so the rest of the program meets plain names.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::{PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

mod validate;

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or is not valid TOML.
    #[error(transparent)]
    File(#[from] lb_proto::toml_file::FileError),
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This balancer node.
    pub node: NodeConfig,
    /// Map sizes, fixed when the program is loaded.
    #[serde(default)]
    pub limits: Limits,
    /// Services (VIP, port, protocol).
    #[serde(default)]
    pub service: Vec<ServiceConfig>,
    /// Real servers.
    #[serde(default)]
    pub server: Vec<ServerConfig>,
    /// The manager role (agent streams); absent: this process is a node only.
    #[serde(default)]
    pub manager: Option<crate::manager::ManagerConfig>,
    /// `[metrics]`: the HTTP metrics endpoint; absent: none.
    #[serde(default)]
    pub metrics: Option<crate::metrics::MetricsConfig>,
}

/// `[node]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Interfaces the XDP program is attached to. The first is the default
    /// egress for servers; a server on another listed interface is reached
    /// with `XDP_REDIRECT`.
    pub interfaces: Vec<String>,
    /// bpffs directory for pinned maps and links; the map ABI version is
    /// appended (`<pin_dir>/v1`). Different nodes on one host need different
    /// directories.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Unix socket `lbctl` talks to.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Group whose members may use the control socket's verbs that only
    /// read (`status`, `service list`, `server list`, `stats`, `events`,
    /// `pool`): the socket is made `root:<group>` mode 0660. Absent: the
    /// socket is `root:root` 0660 and only root may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_group: Option<String>,
    /// Group whose members may also use the verbs that change something
    /// (`config reload`, `server allocate|drain|deallocate`, `service
    /// add|remove`); root always may. To open the socket they must also be
    /// in `control_group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_group: Option<String>,
    /// Seconds a control session may wait between two requests before it
    /// is closed (a session following events is not idle).
    #[serde(default = "default_control_idle")]
    pub control_idle_timeout: u32,
    /// `auto` (driver mode when the interface supports it, skb otherwise),
    /// `driver` or `skb`.
    #[serde(default)]
    pub xdp_mode: XdpModeConfig,
    /// Seed of the flow hash; must be the same on every node of a cluster so
    /// they pick the same server for a flow.
    #[serde(default = "default_seed")]
    pub hash_seed: u32,
    /// Seconds a UDP flow may be idle before it is re-hashed.
    #[serde(default = "default_udp_idle")]
    pub udp_idle_timeout: u32,
    /// Load this XDP object instead of the one built into the binary
    /// (upgrades and tests).
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// Load the built-in debug variant of the XDP program: the same program
    /// with a few log records (a new flow's backend, a drop's reason, an
    /// ICMP too-big routed), forwarded into this log under target `xdp`.
    /// Each record costs the packet a ring-buffer write: for finding a
    /// problem, not for production load. Read at start only: a restart with
    /// it changed replaces the running program in place, as an upgrade
    /// does. Not with `program` (an object that logs is forwarded anyway).
    #[serde(default)]
    pub debug_xdp: bool,
    /// Outer source addresses of tunnelled packets (`forward = "ipip"` or
    /// `"gue"` servers), one per family used: addresses of this node on
    /// the path to those servers, which their decapsulation allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_source: Vec<IpAddr>,
    /// The outer UDP destination port of GUE.
    #[serde(default = "default_gue_port")]
    pub gue_port: u16,
    /// Directory for the node's own state: the desired state a remote
    /// manager sent, with its generations, so a restarted node comes back as
    /// the manager left it.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `[node.control]`: accept reconfigurations from a manager on another
    /// host over mutual TLS. Absent: only the manager in this process (if
    /// any) drives this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<NodeControlConfig>,
}

/// `[node.control]`: the listener a remote manager sends `<reconfigure>`
/// to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeControlConfig {
    /// Address to listen on, e.g. `10.0.0.2:7301`.
    pub listen: std::net::SocketAddr,
    /// This node's name: its certificate in `tls_dir` (`<name>.pem`).
    pub name: String,
    /// PKI directory with `ca.pem`, `<name>.pem`, `<name>.key`.
    pub tls_dir: PathBuf,
    /// Certificate names of the managers allowed to reconfigure this node.
    #[serde(default = "default_managers")]
    pub managers: Vec<String>,
}

fn default_gue_port() -> u16 {
    lb_common::decap::DEFAULT_GUE_PORT
}

fn default_managers() -> Vec<String> {
    vec!["manager".into()]
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/xdplb")
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    #[default]
    Auto,
    Driver,
    Skb,
}

/// Largest flow table accepted: 2^28 flows (14 GiB of sets).
pub const MAX_FLOW_TABLE_SIZE: u32 = 1 << 28;

/// `[limits]`: map sizes. Memory: each service costs
/// `2 × ceil(max_table_size / 4) × 8` bytes of Maglev table (256 KiB at
/// 65537), each flow-table entry 56 bytes, each backend under 100.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most services the node can hold.
    pub max_services: u32,
    /// Most (service, server) pairs.
    pub max_backends: u32,
    /// Largest Maglev table a service may use (a prime).
    pub max_table_size: u32,
    /// Flow-table capacity in flows (rounded up to a power of two of
    /// 8-way sets).
    pub flow_table_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: lb_common::DEFAULT_MAX_SERVICES,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            max_table_size: lb_common::DEFAULT_MAX_TABLE_SIZE,
            flow_table_size: lb_common::DEFAULT_FLOW_TABLE_SIZE,
        }
    }
}

/// `[[service]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name, referenced by servers.
    pub name: String,
    /// Virtual IP, IPv4 or IPv6.
    pub vip: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Maglev table size, a prime ≥ 100 × servers for even spread.
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// The application (as the agents name it in their hello) that serves
    /// this service; a free server hosting it can be allocated. Default:
    /// the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// `[service.scaling]`: when the manager grows or shrinks the pool
    /// (used only when this process runs the manager).
    #[serde(default)]
    pub scaling: crate::manager::policy::ScalingPolicy,
}

impl ServiceConfig {
    /// The application name agents host this service under.
    #[must_use]
    pub fn application(&self) -> &str {
        self.application.as_deref().unwrap_or(self.name.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

/// `[[server]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unique name.
    pub name: String,
    /// Address the server is reached at (on a segment directly connected to
    /// the node: direct server return rewrites MACs only).
    pub address: IpAddr,
    /// Services this server serves.
    #[serde(default)]
    pub services: Vec<String>,
    /// Pool state.
    #[serde(default)]
    pub state: ServerState,
    /// MAC address; resolved through the neighbour table when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Maglev weight (0 keeps it out of the table).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The server runs on this node: packets are delivered locally.
    #[serde(default)]
    pub local: bool,
    /// SHA-256 fingerprint of the server's certificate, pinned by the
    /// manager when it allocated the server (from its auth settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// How the node sends the server its packets: `l2` (a segment the
    /// node is on: the MAC rewritten), `ipip` or `gue` (anywhere routed:
    /// tunnelled from `[node] tunnel_source`; the server takes the outer
    /// header off, see docs/tunnels.md).
    #[serde(default, skip_serializing_if = "Forward::is_l2")]
    pub forward: Forward,
}

/// How a node sends a server its packets (`l2`, `ipip`, `gue`): the
/// same values on the wire.
pub use lb_proto::Forward;

/// The backend record's flags for a server reached by `forward`.
#[must_use]
pub fn backend_flags(forward: Forward) -> u32 {
    match forward {
        Forward::L2 => 0,
        Forward::Ipip => lb_common::encap::BACKEND_FLAG_IPIP,
        Forward::Gue => lb_common::encap::BACKEND_FLAG_GUE,
    }
}

impl ServerConfig {
    /// Listed in `service`.
    #[must_use]
    pub fn serves(&self, service: &str) -> bool {
        self.services.iter().any(|n| n == service)
    }
}

/// Pool state of a server.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// In the pool, receives new flows.
    #[default]
    Allocated,
    /// No new flows; existing connections finish.
    Draining,
    /// Out of service: existing flows are re-hashed to other servers.
    Down,
    /// Taken out by the manager because its application's health probe
    /// fails: no new flows, existing ones kept (as draining); put back when
    /// it passes again.
    Failed,
    /// In the free pool: not programmed on the node.
    Free,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/xdplb")
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/xdplb/control.sock")
}
fn default_control_idle() -> u32 {
    60
}
fn default_seed() -> u32 {
    0x5eed_1b00
}
fn default_udp_idle() -> u32 {
    lb_common::DEFAULT_UDP_IDLE_SECS
}
fn default_table_size() -> u32 {
    lb_common::DEFAULT_TABLE_SIZE
}
fn default_weight() -> u32 {
    1
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = lb_proto::toml_file::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = lb_proto::toml_file::parse(text, path)?;
        config.validate(text, path)?;
        Ok(config)
    }

    /// Servers that serve `service` and are programmed on the node (every
    /// state but `free`).
    pub fn members<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a ServerConfig> {
        self.server
            .iter()
            .filter(move |s| s.serves(service) && s.state != ServerState::Free)
    }

    /// The outer sources tunnelled packets come from: this node's and, under
    /// `[manager]`, every `[[manager.node]]`'s; each once, sorted. What the
    /// manager tells the agents.
    #[must_use]
    pub fn tunnel_sources(&self) -> Vec<IpAddr> {
        let remote = self.manager.iter().flat_map(|m| &m.nodes);
        let all: BTreeSet<IpAddr> = self
            .node
            .tunnel_source
            .iter()
            .chain(remote.flat_map(|n| &n.tunnel_source))
            .copied()
            .collect();
        all.into_iter().collect()
    }

    /// The services server `server` is listed in (none if there is no such
    /// server).
    #[must_use]
    pub fn services_of(&self, server: &str) -> Vec<String> {
        self.server
            .iter()
            .find(|s| s.name == server)
            .map(|s| s.services.clone())
            .unwrap_or_default()
    }

    /// Warnings that do not stop the config (said in the log).
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        crate::model::NodeModel::from_config(self)
            .map(|m| m.warnings())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80

[[server]]
name = "s1"
address = "10.0.0.11"
services = ["web"]
weight = 2

[[server]]
name = "s2"
address = "10.0.0.12"
services = ["web"]
state = "free"
mac = "02:00:00:00:00:12"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn parses_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.service[0].protocol, Protocol::Tcp);
        assert_eq!(c.service[0].table_size, 65537);
        assert_eq!(c.server[0].weight, 2);
        assert_eq!(c.server[1].state, ServerState::Free);
        assert_eq!(c.members("web").count(), 1);
        assert_eq!(c.node.pin_dir, PathBuf::from("/sys/fs/bpf/xdplb"));
    }

    #[test]
    fn tunnelled_servers_need_a_source_of_their_family() {
        let tunnel = GOOD.replace(
            "services = [\"web\"]\nweight = 2",
            "services = [\"web\"]\nweight = 2\nforward = \"ipip\"",
        );
        let e = parse(&tunnel).unwrap_err().to_string();
        assert!(
            e.contains("server `s1`: forward = \"ipip\" needs an IPv4 node.tunnel_source"),
            "{e}"
        );
        assert!(e.starts_with("test.toml:11:"), "{e}");
        let with_source = tunnel.replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\ntunnel_source = [\"10.0.1.2\", \"fd00::2\"]",
        );
        let c = parse(&with_source).expect("valid");
        assert_eq!(c.server[0].forward, Forward::Ipip);
        assert_eq!(c.server[1].forward, Forward::L2);
        assert_eq!(c.node.gue_port, 6080);
        // A tunnel carries either family: an IPv6 server for an IPv4 VIP.
        let v6 = with_source.replace("address = \"10.0.0.11\"", "address = \"fd00::11\"");
        parse(&v6).expect("IPv6 server behind a tunnel");
        // At layer 2 the family must match.
        let l2 = v6.replace("forward = \"ipip\"", "forward = \"l2\"");
        let e = parse(&l2).unwrap_err().to_string();
        assert!(e.contains("keeps the address family"), "{e}");
        // Two sources of one family; a MAC with a tunnel; a manager.
        let two = with_source.replace("\"fd00::2\"", "\"10.0.1.3\"");
        let e = parse(&two).unwrap_err().to_string();
        assert!(e.contains("more than one IPv4 address"), "{e}");
        let mac = with_source.replace(
            "forward = \"ipip\"",
            "forward = \"gue\"\nmac = \"02:00:00:00:00:11\"",
        );
        let e = parse(&mac).unwrap_err().to_string();
        assert!(e.contains("drop `mac`"), "{e}");
        let e = parse(&with_source.replace("forward = \"ipip\"", "forward = \"vxlan\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vxlan"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replace("weight = 2", "wieght = 2");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("wieght"), "{e}");
        assert!(e.contains("line 14"), "{e}");
    }

    #[test]
    fn bad_values_are_errors() {
        let e = parse(&GOOD.replace("10.0.0.100", "10.0.0.300"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 7"), "{e}");
        let e = parse(&GOOD.replace("port = 80", "port = 70000"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
        let e = parse(&GOOD.replace(
            "services = [\"web\"]\nweight",
            "services = [\"db\"]\nweight",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("test.toml:13") && e.contains("unknown service `db`"),
            "{e}"
        );
        let e = parse(&GOOD.replace("02:00:00:00:00:12", "02:00:00:00:12"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mac"), "{e}");
        let e = parse(&GOOD.replace("port = 80", "port = 80\ntable_size = 65536"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prime") && e.contains("65537"), "{e}");
        let e = parse(&GOOD.replace("\"s2\"", "\"s1\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("defined twice") && e.contains("test.toml:17"),
            "{e}"
        );
        let e = parse(&GOOD.replace("\"s2\"", "\"S2\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:17") && e.contains("write it `s2`"),
            "{e}"
        );
        let e = parse(&GOOD.replace("10.0.0.12", "10.0.0.11"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("also server"), "{e}");
        let e = parse(&GOOD.replace("address = \"10.0.0.11\"", "address = \"fd00::11\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("address family"), "{e}");
        let e = parse(&format!("{GOOD}\n[limits]\nflow_table_size = 4\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.flow_table_size = 4 must be 8.."), "{e}");
    }

    #[test]
    fn debug_xdp_selects_the_built_in_debug_object_only() {
        assert!(!parse(GOOD).expect("valid").node.debug_xdp);
        let debug = GOOD.replace("[node]\n", "[node]\ndebug_xdp = true\n");
        assert!(parse(&debug).expect("valid").node.debug_xdp);
        let e = parse(&debug.replace("debug_xdp", "program = \"/tmp/x.o\"\ndebug_xdp"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml:4") && e.contains("node.debug_xdp") && e.contains("node.program"),
            "{e}"
        );
    }

    #[test]
    fn small_table_warns() {
        let c = parse(&GOOD.replace("port = 80", "port = 80\ntable_size = 13")).expect("valid");
        assert_eq!(c.warnings().len(), 1);
    }
}
