//! The XML stream protocol between per-host agents (`lb-agent`), the manager
//! and balancer nodes (`lb-control`).
//!
//! A stream is UTF-8 XML: `<lb-stream version="1" role="agent" host="web-1">`,
//! then one message per child element, then `</lb-stream>`. [`Encoder`]
//! writes one; [`Decoder`] reads one incrementally under hard [`Limits`];
//! [`SequenceGuard`] drops stale or replayed messages. `docs/protocol.md`
//! describes every message with example streams.

#[cfg(feature = "tls")]
pub mod announce;
pub mod atomic_file;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod header;
pub mod health;
pub mod limits;
#[cfg(feature = "daemon")]
pub mod logging;
pub mod messages;
pub mod report;
pub mod sequence;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "daemon")]
pub mod toml_file;
pub mod types;

#[cfg(test)]
mod examples;
#[cfg(test)]
mod samples;

pub use decoder::Decoder;
pub use encoder::Encoder;
pub use error::{EncodeError, InvalidMessage, ProtoError};
pub use header::{PROTOCOL_VERSION, Role, StreamHeader};
pub use health::{HealthTracker, ProbeOutcome};
pub use limits::Limits;
pub use messages::{
    Ack, AckStatus, Application, ApplicationPorts, AuthSettings, BackendStatus, ConnectionSettings,
    ErrorMessage, Forward, Hello, MAX_TUNNEL_SOURCES, Message, NodeStatus, Reconfigure, Server,
    ServerState, Service, SettingsKind, SettingsRequest, StatusRequest, TunnelSources, is_unicast,
};
pub use report::{
    ApplicationStatus, Cpu, Health, HealthState, Load, Memory, Nic, Readiness, Report, Utilization,
    UtilizationSource,
};
pub use sequence::{SequenceGuard, Stale};
pub use types::{Fingerprint, MacAddr, ParseError, Protocol};
