//! The messages a stream carries, one XML element each.
//!
//! Every message has a `seq` attribute: a per-sender number that the
//! [`Encoder`](crate::Encoder) stamps and that strictly increases along a
//! stream (see [`SequenceGuard`](crate::SequenceGuard)). Attributes carry
//! scalars; lists are repeated child elements. Unknown attributes and child
//! elements are ignored, so a newer peer may add optional ones without a
//! version change.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Fingerprint, InvalidMessage, MacAddr, ProtoError, Protocol, Report};

/// One message of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Message {
    /// `<hello>`: agent → manager, first message of an agent stream.
    Hello(Hello),
    /// `<report>`: agent → manager, every report interval.
    Report(Report),
    /// `<settings-request>`: manager → agent.
    SettingsRequest(SettingsRequest),
    /// `<connection-settings>`: agent → manager, answers a request.
    ConnectionSettings(ConnectionSettings),
    /// `<auth-settings>`: agent → manager, answers a request.
    AuthSettings(AuthSettings),
    /// `<reconfigure>`: manager → node.
    Reconfigure(Reconfigure),
    /// `<ack>`: node → manager, answers a reconfigure.
    Ack(Ack),
    /// `<error>`: either way, rejects a message or announces a disconnect.
    Error(ErrorMessage),
    /// `<status-request>`: manager → node.
    StatusRequest(StatusRequest),
    /// `<node-status>`: node → manager, answers a status request.
    NodeStatus(NodeStatus),
    /// `<tunnel-sources>`: manager → agent, the nodes' tunnel sources.
    TunnelSources(TunnelSources),
}

impl Message {
    /// Every message element name, in the order of the variants.
    pub const NAMES: [&'static str; 11] = [
        "hello",
        "report",
        "settings-request",
        "connection-settings",
        "auth-settings",
        "reconfigure",
        "ack",
        "error",
        "status-request",
        "node-status",
        "tunnel-sources",
    ];

    /// The element name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        let index = match self {
            Self::Hello(_) => 0,
            Self::Report(_) => 1,
            Self::SettingsRequest(_) => 2,
            Self::ConnectionSettings(_) => 3,
            Self::AuthSettings(_) => 4,
            Self::Reconfigure(_) => 5,
            Self::Ack(_) => 6,
            Self::Error(_) => 7,
            Self::StatusRequest(_) => 8,
            Self::NodeStatus(_) => 9,
            Self::TunnelSources(_) => 10,
        };
        Self::NAMES[index]
    }

    /// The sequence number.
    #[must_use]
    pub fn seq(&self) -> u64 {
        match self {
            Self::Hello(m) => m.seq,
            Self::Report(m) => m.seq,
            Self::SettingsRequest(m) => m.seq,
            Self::ConnectionSettings(m) => m.seq,
            Self::AuthSettings(m) => m.seq,
            Self::Reconfigure(m) => m.seq,
            Self::Ack(m) => m.seq,
            Self::Error(m) => m.seq,
            Self::StatusRequest(m) => m.seq,
            Self::NodeStatus(m) => m.seq,
            Self::TunnelSources(m) => m.seq,
        }
    }

    /// Sets the sequence number (the [`Encoder`](crate::Encoder) does this).
    pub fn set_seq(&mut self, seq: u64) {
        let field = match self {
            Self::Hello(m) => &mut m.seq,
            Self::Report(m) => &mut m.seq,
            Self::SettingsRequest(m) => &mut m.seq,
            Self::ConnectionSettings(m) => &mut m.seq,
            Self::AuthSettings(m) => &mut m.seq,
            Self::Reconfigure(m) => &mut m.seq,
            Self::Ack(m) => &mut m.seq,
            Self::Error(m) => &mut m.seq,
            Self::StatusRequest(m) => &mut m.seq,
            Self::NodeStatus(m) => &mut m.seq,
            Self::TunnelSources(m) => &mut m.seq,
        };
        *field = seq;
    }

    /// Checks what the types alone do not: non-empty names, finite and
    /// non-negative numbers, non-zero ports and table sizes. The decoder runs
    /// it on every message; a failure is a [`ProtoError::InvalidMessage`].
    ///
    /// # Errors
    ///
    /// The first [`InvalidMessage`] found.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        match self {
            Self::Hello(m) => m.validate(),
            Self::Report(m) => m.validate(),
            Self::SettingsRequest(_) | Self::Ack(_) | Self::StatusRequest(_) => Ok(()),
            Self::NodeStatus(m) => m
                .backends
                .iter()
                .try_for_each(|b| not_empty("backend server", &b.server)),
            Self::ConnectionSettings(m) => m.validate(),
            Self::AuthSettings(m) => m.validate(),
            Self::Reconfigure(m) => m.service.validate(),
            Self::Error(m) => not_empty("code", &m.code),
            Self::TunnelSources(m) => m.validate(),
        }
    }
}

macro_rules! message_from {
    ($($variant:ident),*) => {$(
        impl From<$variant> for Message {
            fn from(m: $variant) -> Self {
                Self::$variant(m)
            }
        }
    )*};
}

message_from!(
    Hello,
    Report,
    SettingsRequest,
    ConnectionSettings,
    AuthSettings,
    Reconfigure,
    Ack,
    StatusRequest,
    NodeStatus,
    TunnelSources
);

impl From<ErrorMessage> for Message {
    fn from(m: ErrorMessage) -> Self {
        Self::Error(m)
    }
}

/// `<hello>`: who the agent is, what it can carry and which applications it
/// hosts. Sent once, first, on every agent stream; sent again when any of it
/// changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// The real server's host name, as the manager knows it.
    #[serde(rename = "@host")]
    pub host: String,
    /// The `lb-agent` version, e.g. `0.1.0`.
    #[serde(rename = "@agent-version")]
    pub agent_version: String,
    /// Capacity, in CPU cores (fractional under a CPU quota).
    #[serde(rename = "@cores")]
    pub cores: f64,
    /// True when the server is idle and offers itself to the free pool (a
    /// spare announcement).
    #[serde(rename = "@spare")]
    pub spare: bool,
    /// Applications hosted, one `<application>` element each.
    #[serde(rename = "application", default)]
    pub applications: Vec<Application>,
}

impl Hello {
    fn validate(&self) -> Result<(), InvalidMessage> {
        not_empty("host", &self.host)?;
        if !(self.cores.is_finite() && self.cores > 0.0) {
            return Err(InvalidMessage::Cores(self.cores));
        }
        self.applications
            .iter()
            .try_for_each(|a| named_ports(&a.name, &a.ports))
    }
}

/// An application a host runs, as announced in `<hello>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Application name, the key services use to find their servers.
    #[serde(rename = "@name")]
    pub name: String,
    /// Transport protocol.
    #[serde(rename = "@protocol")]
    pub protocol: Protocol,
    /// Listening ports, space separated.
    #[serde(rename = "@ports", default)]
    pub ports: Vec<u16>,
    /// Human-readable description of the agent's health probe, as the text
    /// of a `<probe>` child, e.g. `tcp connect 127.0.0.1:80 every 1000 ms`.
    #[serde(default)]
    pub probe: String,
}

/// What a [`SettingsRequest`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingsKind {
    /// Answered by a [`ConnectionSettings`].
    Connection,
    /// Answered by an [`AuthSettings`].
    Auth,
}

/// `<settings-request>`: the manager asks an agent for settings it needs to
/// add the server to a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsRequest {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// Request id, chosen by the manager, echoed by the answer.
    #[serde(rename = "@id")]
    pub id: u64,
    /// Which settings.
    #[serde(rename = "@kind")]
    pub kind: SettingsKind,
    /// Restricts the answer to one application; absent means all.
    #[serde(
        rename = "@application",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub application: Option<String>,
}

/// `<connection-settings>`: how to reach a server, answering a
/// [`SettingsRequest`] of kind `connection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSettings {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// The [`SettingsRequest::id`] this answers.
    #[serde(rename = "@id")]
    pub id: u64,
    /// The server's host name.
    #[serde(rename = "@host")]
    pub host: String,
    /// The server's addresses on the balancers' segment, space separated,
    /// IPv4 and IPv6.
    #[serde(rename = "@addresses")]
    pub addresses: Vec<IpAddr>,
    /// The MAC address of `interface`, where direct server return frames go.
    #[serde(rename = "@mac")]
    pub mac: MacAddr,
    /// The interface name on the server, e.g. `eth0`.
    #[serde(rename = "@interface")]
    pub interface: String,
    /// Ports per application, one `<application>` element each.
    #[serde(rename = "application", default)]
    pub applications: Vec<ApplicationPorts>,
}

impl ConnectionSettings {
    fn validate(&self) -> Result<(), InvalidMessage> {
        not_empty("host", &self.host)?;
        not_empty("interface", &self.interface)?;
        if self.addresses.is_empty() {
            return Err(InvalidMessage::NoAddresses);
        }
        self.applications
            .iter()
            .try_for_each(|a| named_ports(&a.name, &a.ports))
    }
}

/// The ports one application listens on, in [`ConnectionSettings`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationPorts {
    /// Application name.
    #[serde(rename = "@name")]
    pub name: String,
    /// Transport protocol.
    #[serde(rename = "@protocol")]
    pub protocol: Protocol,
    /// Ports, space separated.
    #[serde(rename = "@ports")]
    pub ports: Vec<u16>,
}

impl From<&Application> for ApplicationPorts {
    fn from(a: &Application) -> Self {
        Self {
            name: a.name.clone(),
            protocol: a.protocol,
            ports: a.ports.clone(),
        }
    }
}

impl ApplicationPorts {
    /// The application with a description of its health probe.
    #[must_use]
    pub fn with_probe(&self, probe: String) -> Application {
        Application {
            name: self.name.clone(),
            protocol: self.protocol,
            ports: self.ports.clone(),
            probe,
        }
    }
}

/// `<auth-settings>`: how the manager and the server authenticate each
/// other on the server's control port, answering a [`SettingsRequest`] of
/// kind `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSettings {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// The [`SettingsRequest::id`] this answers.
    #[serde(rename = "@id")]
    pub id: u64,
    /// The server's host name.
    #[serde(rename = "@host")]
    pub host: String,
    /// TCP port of the server's control (agent) listener.
    #[serde(rename = "@control-port")]
    pub control_port: u16,
    /// What the server expects the manager to present there: the manager's
    /// certificate name, or `sha256:<hex>` of the CA that signs it.
    #[serde(rename = "@expect-manager")]
    pub expect_manager: String,
    /// SHA-256 fingerprint of the server's own certificate, 64 hex digits:
    /// the manager pins it.
    #[serde(rename = "@server-fingerprint")]
    pub server_fingerprint: Fingerprint,
}

impl AuthSettings {
    fn validate(&self) -> Result<(), InvalidMessage> {
        not_empty("host", &self.host)?;
        not_empty("expect-manager", &self.expect_manager)?;
        if self.control_port == 0 {
            return Err(InvalidMessage::Zero("control-port"));
        }
        Ok(())
    }
}

/// `<reconfigure>`: the full desired state of one service; the node makes
/// its tables match and answers with an [`Ack`] of the same generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconfigure {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// Configuration generation, increasing with every change the manager
    /// makes; the ack echoes it.
    #[serde(rename = "@generation")]
    pub generation: u64,
    /// The service, as one `<service>` child.
    pub service: Service,
}

/// A service's desired state in a [`Reconfigure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Service name.
    #[serde(rename = "@name")]
    pub name: String,
    /// Virtual IP address.
    #[serde(rename = "@vip")]
    pub vip: IpAddr,
    /// Virtual port.
    #[serde(rename = "@port")]
    pub port: u16,
    /// Transport protocol.
    #[serde(rename = "@protocol")]
    pub protocol: Protocol,
    /// Maglev table size, in entries (a prime).
    #[serde(rename = "@table-size")]
    pub table_size: u32,
    /// Every server of the pool, one `<server>` element each; a server
    /// missing here is removed.
    #[serde(rename = "server", default)]
    pub servers: Vec<Server>,
    /// `true`: the service is removed from the node (its servers are
    /// ignored).
    #[serde(rename = "@retired", default, skip_serializing_if = "is_false")]
    pub retired: bool,
    /// The servers' weights are in `1 / weight-scale` units of the file's
    /// weights (a manager sends hundredths); absent: 1. Only for display:
    /// Maglev tables depend on the ratios of the weights alone.
    #[serde(
        rename = "@weight-scale",
        default = "one",
        skip_serializing_if = "is_one"
    )]
    pub weight_scale: u32,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes the field by reference"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

fn one() -> u32 {
    1
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes the field by reference"
)]
fn is_one(n: &u32) -> bool {
    *n == 1
}

impl Service {
    fn validate(&self) -> Result<(), InvalidMessage> {
        not_empty("service name", &self.name)?;
        if self.port == 0 {
            return Err(InvalidMessage::Zero("service port"));
        }
        if self.table_size == 0 {
            return Err(InvalidMessage::Zero("table-size"));
        }
        if self.weight_scale == 0 {
            return Err(InvalidMessage::Zero("weight-scale"));
        }
        self.servers
            .iter()
            .try_for_each(|s| not_empty("server name", &s.name))
    }
}

/// Pool state of a [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// In the pool, receives new flows.
    Allocated,
    /// No new flows; existing connections finish.
    Draining,
    /// Out of service; its flows are re-hashed to other servers.
    Down,
}

/// One real server of a [`Service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// Server name (its host name).
    #[serde(rename = "@name")]
    pub name: String,
    /// Address the node forwards to.
    #[serde(rename = "@address")]
    pub address: IpAddr,
    /// Maglev weight, relative to the pool's other servers; 0 keeps it out
    /// of the table.
    #[serde(rename = "@weight")]
    pub weight: u32,
    /// Pool state.
    #[serde(rename = "@state")]
    pub state: ServerState,
    /// MAC address for direct server return; absent means the node resolves
    /// `address` itself.
    #[serde(rename = "@mac", default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// How the node sends the server its packets; absent: `l2`.
    #[serde(rename = "@forward", default, skip_serializing_if = "Forward::is_l2")]
    pub forward: Forward,
}

/// How a node sends a server its packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// Direct server return at layer 2: only the Ethernet header changes.
    #[default]
    L2,
    /// The packet inside an outer IP header (IPv4 or IPv6 in IPv4 or IPv6).
    Ipip,
    /// The packet inside UDP and a GUE header.
    Gue,
}

impl Forward {
    /// Layer 2, the default (by reference: serde's `skip_serializing_if`
    /// passes the field so).
    #[must_use]
    pub fn is_l2(&self) -> bool {
        *self == Self::L2
    }

    /// Whether the server is reached through a tunnel.
    #[must_use]
    pub fn is_tunnel(self) -> bool {
        self != Self::L2
    }

    /// Its name in files and on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::L2 => "l2",
            Self::Ipip => "ipip",
            Self::Gue => "gue",
        }
    }
}

/// The most addresses a [`TunnelSources`] may carry (the decapsulation's
/// source map holds 256).
pub const MAX_TUNNEL_SOURCES: usize = 64;

/// `<tunnel-sources>`: the outer source addresses the balancer nodes
/// tunnel from (their `tunnel_source`). Sent by the manager after an
/// agent's hello and again whenever the set changes; an agent that
/// decapsulates accepts tunnelled packets from these (and its own
/// `[decap] sources`) only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSources {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// The addresses, space separated, IPv4 and IPv6; may be empty.
    #[serde(rename = "@addresses", default)]
    pub addresses: Vec<IpAddr>,
}

impl TunnelSources {
    fn validate(&self) -> Result<(), InvalidMessage> {
        if self.addresses.len() > MAX_TUNNEL_SOURCES {
            return Err(InvalidMessage::TooMany {
                what: "tunnel sources",
                count: self.addresses.len(),
                limit: MAX_TUNNEL_SOURCES,
            });
        }
        match self.addresses.iter().find(|a| !is_unicast(**a)) {
            Some(&address) => Err(InvalidMessage::NotUnicast(address)),
            None => Ok(()),
        }
    }
}

/// An address a host can send from: not unspecified, loopback, multicast
/// or broadcast.
#[must_use]
pub fn is_unicast(address: IpAddr) -> bool {
    let common = !address.is_unspecified() && !address.is_loopback() && !address.is_multicast();
    match address {
        IpAddr::V4(a) => common && !a.is_broadcast(),
        IpAddr::V6(_) => common,
    }
}

/// Outcome in an [`Ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Applied and read back.
    Ok,
    /// Not applied; the node kept the previous state.
    Failed,
}

/// `<ack>`: a node's answer to a [`Reconfigure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// The [`Reconfigure::generation`] this answers.
    #[serde(rename = "@generation")]
    pub generation: u64,
    /// Whether it was applied.
    #[serde(rename = "@status")]
    pub status: AckStatus,
    /// Why it failed.
    #[serde(rename = "@error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `<status-request>`: the manager asks a node about its backends, e.g.
/// whether a draining server still receives packets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// Request number, echoed in the [`NodeStatus`].
    #[serde(rename = "@id")]
    pub id: u64,
    /// Also count the flow-table entries that point at each backend (a walk
    /// of the whole flow table: ask only when the count is needed).
    #[serde(rename = "@count-flows", default, skip_serializing_if = "is_false")]
    pub count_flows: bool,
}

/// `<node-status>`: a node's answer to a [`StatusRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// The [`StatusRequest::id`] this answers.
    #[serde(rename = "@id")]
    pub id: u64,
    /// The newest manager generation the node applied (to any service);
    /// absent before the first. A manager that lost its own count starts
    /// after it.
    #[serde(
        rename = "@manager-generation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub manager_generation: Option<u64>,
    /// One `<backend>` per (service, server) programmed on the node.
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendStatus>,
}

/// One (service, server) pair in a [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Service name.
    #[serde(rename = "@service")]
    pub service: String,
    /// Server name.
    #[serde(rename = "@server")]
    pub server: String,
    /// `active`, `draining`, `down` or `retired` (removed from the service,
    /// its remaining flows still forwarded).
    #[serde(rename = "@state")]
    pub state: String,
    /// Milliseconds since the node last forwarded a packet to it; absent if
    /// it never did.
    #[serde(rename = "@idle-ms", default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Flow-table entries that point at it (only when asked).
    #[serde(rename = "@flows", default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u64>,
}

/// `<error>`: a rejected message, or the reason for a disconnect that
/// follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// A short token, e.g. `invalid-message` ([`ProtoError::code`]).
    #[serde(rename = "@code")]
    pub code: String,
    /// The `seq` of the rejected message, when known.
    #[serde(
        rename = "@rejected-seq",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rejected_seq: Option<u64>,
    /// Human-readable detail, as the element's text.
    #[serde(rename = "$text", default)]
    pub text: String,
}

impl ErrorMessage {
    /// The reply to a decoding error (`seq` is stamped by the encoder).
    #[must_use]
    pub fn from_error(error: &ProtoError) -> Self {
        Self {
            seq: 0,
            code: error.code().into(),
            rejected_seq: error.rejected_seq(),
            text: error.to_string(),
        }
    }
}

pub(crate) fn not_empty(what: &'static str, value: &str) -> Result<(), InvalidMessage> {
    if value.is_empty() {
        return Err(InvalidMessage::Empty(what));
    }
    Ok(())
}

pub(crate) fn non_negative(what: &'static str, value: f64) -> Result<(), InvalidMessage> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(InvalidMessage::Negative { what, value });
    }
    Ok(())
}

/// An application entry: a name and non-zero ports.
fn named_ports(name: &str, ports: &[u16]) -> Result<(), InvalidMessage> {
    not_empty("application name", name)?;
    ports_non_zero(name, ports)
}

fn ports_non_zero(application: &str, ports: &[u16]) -> Result<(), InvalidMessage> {
    if ports.contains(&0) {
        return Err(InvalidMessage::PortZero(application.to_owned()));
    }
    Ok(())
}
