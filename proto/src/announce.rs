//! Discovery announcements: one signed UDP datagram by which an agent makes
//! itself known to managers that were never told about it.
//!
//! A datagram is two XML elements, each on its own line, at most
//! [`MAX_DATAGRAM_BYTES`]:
//!
//! ```text
//! <announce version="1" host="web-1" agent-version="0.1.0" cores="4" spare="true" time-ms="…" nonce="…"><application name="web" protocol="tcp" ports="80 443"/></announce>
//! <auth alg="ecdsa-p256-sha256" signature="3045…"><cert>-----BEGIN CERTIFICATE-----…</cert></auth>
//! ```
//!
//! The signature is made with the agent's TLS private key (ECDSA P-256,
//! SHA-256, ASN.1 DER, hex) over the exact bytes of the `<announce>` element,
//! from its `<` to the end of its closing tag; `<cert>` carries the agent's
//! certificate (PEM). No shared secret is needed: a manager
//! ([`AnnounceVerifier`]) accepts an announcement only when the certificate
//! chains to the project CA and may authenticate a client, its name is the
//! announced host, the signature verifies, `time-ms` is within the window
//! (±30 s by default) of its own clock, and the `(host, nonce)` pair was not
//! accepted before within that window. An agent makes datagrams with an
//! [`AnnounceSigner`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{ApplicationPorts, Hello};

use wire::is_lower_hex;

pub use sign::{AnnounceError, AnnounceSigner};
pub use verify::{AnnounceVerifier, Rejected, Verified};

mod replay;
mod sign;
#[cfg(test)]
mod tests;
mod verify;
mod wire;

/// The largest datagram sent or accepted, in bytes; a larger one is dropped
/// and counted as `oversized`.
pub const MAX_DATAGRAM_BYTES: usize = 4096;
/// The `version` attribute this code writes and accepts.
pub const ANNOUNCE_VERSION: u32 = 1;
/// The only signature algorithm: ECDSA on P-256 with SHA-256, ASN.1 DER
/// (the key type `lbctl certs issue` makes).
pub const SIGNATURE_ALGORITHM: &str = "ecdsa-p256-sha256";
/// How far an announcement's time may be from the manager's clock, either
/// way, by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// How many `(host, nonce)` pairs a verifier remembers by default. With the
/// default 5 s interval and ±30 s window an agent occupies about 7, so this
/// covers a couple of thousand agents; when it is full, announcements are
/// refused (`replay-cache-full`) until entries age out, never let through.
pub const DEFAULT_REPLAY_CAPACITY: usize = 16_384;
/// How many of those one host may hold: an agent announcing every second
/// (the shortest interval) within a ±30 s window holds about 61, so a host
/// that holds more is flooding, and cannot crowd the others out.
pub const DEFAULT_REPLAY_PER_HOST: usize = 128;
/// Random bytes in a nonce (written as twice as many hex digits).
pub const NONCE_BYTES: usize = 16;
/// Most applications one announcement may list.
pub const MAX_APPLICATIONS: usize = 64;
/// Longest host name (a DNS name).
const MAX_HOST_BYTES: usize = 253;
/// Deepest nesting accepted (`announce/application`, `auth/cert`).
const MAX_DEPTH: usize = 2;

/// `<announce>`: what a hello says (host, agent version, capacity, spare
/// flag, applications), plus when it was made and a random nonce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "announce")]
pub struct Announce {
    /// [`ANNOUNCE_VERSION`].
    #[serde(rename = "@version")]
    pub version: u32,
    /// The host name; must be the name on the signing certificate.
    #[serde(rename = "@host")]
    pub host: String,
    /// The `lb-agent` version.
    #[serde(rename = "@agent-version")]
    pub agent_version: String,
    /// Capacity, in CPU cores.
    #[serde(rename = "@cores")]
    pub cores: f64,
    /// True when the server offers itself to the free pool.
    #[serde(rename = "@spare")]
    pub spare: bool,
    /// When it was signed: Unix time in milliseconds.
    #[serde(rename = "@time-ms")]
    pub time_ms: u64,
    /// [`NONCE_BYTES`] random bytes, lowercase hex.
    #[serde(rename = "@nonce")]
    pub nonce: String,
    /// Applications hosted, one `<application>` element each.
    #[serde(rename = "application", default)]
    pub applications: Vec<ApplicationPorts>,
}

impl Announce {
    /// The announcement of what `hello` says; [`AnnounceSigner::sign`]
    /// stamps the time and the nonce.
    #[must_use]
    pub fn from_hello(hello: &Hello) -> Self {
        Self {
            version: ANNOUNCE_VERSION,
            host: hello.host.clone(),
            agent_version: hello.agent_version.clone(),
            cores: hello.cores,
            spare: hello.spare,
            time_ms: 0,
            nonce: String::new(),
            applications: hello
                .applications
                .iter()
                .map(ApplicationPorts::from)
                .collect(),
        }
    }

    /// The hello a manager records for an announced server (`seq` 0, no
    /// probe descriptions: announcements do not carry them).
    #[must_use]
    pub fn hello(&self) -> Hello {
        Hello {
            seq: 0,
            host: self.host.clone(),
            agent_version: self.agent_version.clone(),
            cores: self.cores,
            spare: self.spare,
            applications: self
                .applications
                .iter()
                .map(|a| a.with_probe(String::new()))
                .collect(),
        }
    }

    /// Checks what the types alone do not.
    ///
    /// # Errors
    ///
    /// An [`InvalidAnnounce`] when the version is not [`ANNOUNCE_VERSION`], the
    /// host is empty or longer than a DNS name, `cores` is not a positive number,
    /// the nonce is not [`NONCE_BYTES`] in lowercase hex, or there are more than
    /// [`MAX_APPLICATIONS`] applications or one without a name or ports (or with
    /// port 0).
    pub fn validate(&self) -> Result<(), InvalidAnnounce> {
        if self.version != ANNOUNCE_VERSION {
            return Err(InvalidAnnounce::Version(self.version));
        }
        if self.host.is_empty() || self.host.len() > MAX_HOST_BYTES {
            return Err(InvalidAnnounce::HostLength(self.host.len()));
        }
        if !(self.cores.is_finite() && self.cores > 0.0) {
            return Err(InvalidAnnounce::Cores(self.cores));
        }
        if self.nonce.len() != 2 * NONCE_BYTES || !is_lower_hex(&self.nonce) {
            return Err(InvalidAnnounce::Nonce);
        }
        if self.applications.len() > MAX_APPLICATIONS {
            return Err(InvalidAnnounce::TooManyApplications(
                self.applications.len(),
            ));
        }
        for a in &self.applications {
            if a.name.is_empty() {
                return Err(InvalidAnnounce::EmptyApplicationName);
            }
            if a.ports.is_empty() || a.ports.contains(&0) {
                return Err(InvalidAnnounce::Ports(a.name.clone()));
            }
        }
        Ok(())
    }
}

/// What [`Announce::validate`] finds wrong in an announcement the types
/// alone accept.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum InvalidAnnounce {
    /// Another `version` than [`ANNOUNCE_VERSION`].
    #[error("version {0} is not supported (this side speaks {ANNOUNCE_VERSION})")]
    Version(u32),
    /// The host name is empty or longer than a DNS name may be; the length.
    #[error("host must be 1 to {MAX_HOST_BYTES} bytes, not {0}")]
    HostLength(usize),
    /// `cores` is not a finite number above 0.
    #[error("cores {0} is not a positive number")]
    Cores(f64),
    /// The nonce is not [`NONCE_BYTES`] bytes in lowercase hex.
    #[error("nonce must be {digits} lowercase hex digits", digits = 2 * NONCE_BYTES)]
    Nonce,
    /// More than [`MAX_APPLICATIONS`] applications; how many.
    #[error("{0} applications, more than {MAX_APPLICATIONS}")]
    TooManyApplications(usize),
    /// An application without a name.
    #[error("empty application name")]
    EmptyApplicationName,
    /// An application (named) without ports, or with port 0.
    #[error("application {0:?} must list ports, none of them 0")]
    Ports(String),
}

/// `<auth>`: the tag after the announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "auth")]
struct Auth {
    /// [`SIGNATURE_ALGORITHM`].
    #[serde(rename = "@alg")]
    alg: String,
    /// The signature, lowercase hex.
    #[serde(rename = "@signature")]
    signature: String,
    /// The signer's certificate, PEM.
    cert: String,
}
