//! The `<lb-stream>` element that opens every stream.

use std::{fmt, io::Write};

use quick_xml::{XmlVersion, events::BytesStart};

use crate::{Limits, ProtoError};

/// The protocol version this crate speaks, sent in every stream header.
pub const PROTOCOL_VERSION: u32 = 1;

/// The name of the root element.
pub(crate) const STREAM_ELEMENT: &str = "lb-stream";

/// Who opened a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `agent`: an `lb-agent` on a real server.
    Agent,
    /// `manager`: the manager in `lb-control`.
    Manager,
    /// `node`: a balancer node in `lb-control`.
    Node,
}

impl Role {
    /// The attribute value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Manager => "manager",
            Self::Node => "node",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "agent" => Some(Self::Agent),
            "manager" => Some(Self::Manager),
            "node" => Some(Self::Node),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attributes of `<lb-stream version="1" role="agent" host="web-1">`,
/// which each side sends once, before its first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Protocol version; a decoder accepts only [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What the sender is.
    pub role: Role,
    /// The sender's host name (for a manager or node: its configured name).
    pub host: String,
}

impl StreamHeader {
    /// A header for this crate's [`PROTOCOL_VERSION`].
    pub fn new(role: Role, host: impl Into<String>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            role,
            host: host.into(),
        }
    }

    /// Writes the start tag and a newline.
    pub(crate) fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            r#"<{STREAM_ELEMENT} version="{}" role="{}" host="{}">"#,
            self.version,
            self.role,
            quick_xml::escape::escape(self.host.as_str())
        )
    }

    /// Reads the header from the `<lb-stream ...>` start tag. The version is
    /// checked first, so a peer of another version gets
    /// [`ProtoError::VersionMismatch`] whatever else its header holds.
    /// Unknown attributes are ignored.
    pub(crate) fn parse(tag: &BytesStart<'_>, limits: &Limits) -> Result<Self, ProtoError> {
        let bad = |what: String| ProtoError::Malformed(format!("stream header: {what}"));
        let (mut version, mut role, mut host) = (None, None, None);
        for (count, attr) in tag.attributes().enumerate() {
            if count >= limits.max_attributes {
                return Err(ProtoError::TooManyAttributes {
                    element: STREAM_ELEMENT.into(),
                    limit: limits.max_attributes,
                });
            }
            let attr = attr.map_err(|e| bad(e.to_string()))?;
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| bad(e.to_string()))?;
            match attr.key.as_ref() {
                "version" => version = Some(value.into_owned()),
                "role" => role = Some(value.into_owned()),
                "host" => host = Some(value.into_owned()),
                _ => {}
            }
        }
        let version = version.ok_or_else(|| bad("no version attribute".into()))?;
        let version: u32 = version
            .parse()
            .map_err(|_| bad(format!("version {version:?} is not a number")))?;
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let role = role.ok_or_else(|| bad("no role attribute".into()))?;
        let role = Role::parse(&role)
            .ok_or_else(|| bad(format!("role {role:?} is not agent, manager or node")))?;
        let host = host.ok_or_else(|| bad("no host attribute".into()))?;
        if host.is_empty() {
            return Err(bad("empty host".into()));
        }
        Ok(Self {
            version,
            role,
            host,
        })
    }
}
