//! What can go wrong while decoding a stream, or in a message once decoded.

use thiserror::Error;

/// A decoding failure.
///
/// [`is_fatal`](Self::is_fatal) tells the caller what to do: a fatal error
/// means the stream cannot go on (answer with an `<error>` carrying
/// [`code`](Self::code), then disconnect); a non-fatal one rejects a single,
/// well-framed message (answer with an `<error>`, count and log it, and keep
/// reading).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// A message (or a comment between messages) grew past
    /// [`Limits::max_message_bytes`](crate::Limits::max_message_bytes).
    #[error("message exceeds the limit of {limit} bytes (max_message_bytes)")]
    MessageTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Elements nested deeper than [`Limits::max_depth`](crate::Limits::max_depth).
    #[error("element <{element}> is nested deeper than the limit of {limit} (max_depth)")]
    TooDeep {
        /// The element that went one level too deep.
        element: String,
        /// The limit, in levels.
        limit: usize,
    },
    /// An element with more than
    /// [`Limits::max_attributes`](crate::Limits::max_attributes) attributes.
    #[error("element <{element}> has more than the limit of {limit} attributes (max_attributes)")]
    TooManyAttributes {
        /// The element.
        element: String,
        /// The limit, in attributes.
        limit: usize,
    },
    /// The stream header did not end within
    /// [`Limits::max_header_bytes`](crate::Limits::max_header_bytes).
    #[error("stream header exceeds the limit of {limit} bytes (max_header_bytes)")]
    HeaderTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A `<!DOCTYPE`, `<!ENTITY` or other markup declaration: never allowed,
    /// so entity expansion attacks cannot start.
    #[error("markup declarations (<!DOCTYPE, <!ENTITY, ...) are not allowed: {0}")]
    DeclarationForbidden(String),
    /// The peer speaks another protocol version.
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    VersionMismatch {
        /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u32,
        /// What the peer's header said.
        theirs: u32,
    },
    /// The byte stream is not the XML this protocol allows (broken syntax,
    /// mismatched tags, text between messages, a bad header): the stream
    /// cannot be resynchronised.
    #[error("malformed stream: {0}")]
    Malformed(String),
    /// A well-framed message whose element name is not a known message.
    #[error("unknown message <{name}>")]
    UnknownMessage {
        /// The element name.
        name: String,
        /// Its `seq` attribute, if it had a readable one.
        seq: Option<u64>,
    },
    /// A well-framed, known message whose content is wrong: a missing or
    /// unparsable attribute, a bad number, a value out of range.
    #[error("invalid <{name}> message: {reason}")]
    InvalidMessage {
        /// The element name.
        name: String,
        /// Its `seq` attribute, if it had a readable one.
        seq: Option<u64>,
        /// What was wrong.
        reason: String,
    },
    /// The peer closed the stream with `</lb-stream>`.
    #[error("stream closed by the peer")]
    Closed,
}

impl ProtoError {
    /// Whether the stream must be dropped: true for every limit, for broken
    /// XML, for a version mismatch and for [`Closed`](Self::Closed); false
    /// for [`UnknownMessage`](Self::UnknownMessage) and
    /// [`InvalidMessage`](Self::InvalidMessage), after which the decoder
    /// goes on with the next message.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::UnknownMessage { .. } | Self::InvalidMessage { .. }
        )
    }

    /// A short token for the `code` attribute of an `<error>` reply.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::MessageTooLarge { .. } => "message-too-large",
            Self::TooDeep { .. } => "too-deep",
            Self::TooManyAttributes { .. } => "too-many-attributes",
            Self::HeaderTooLarge { .. } => "header-too-large",
            Self::DeclarationForbidden(_) => "declaration-forbidden",
            Self::VersionMismatch { .. } => "version-mismatch",
            Self::Malformed(_) => "malformed",
            Self::UnknownMessage { .. } => "unknown-message",
            Self::InvalidMessage { .. } => "invalid-message",
            Self::Closed => "closed",
        }
    }

    /// The `seq` of the rejected message, when the error is about one.
    #[must_use]
    pub fn rejected_seq(&self) -> Option<u64> {
        match self {
            Self::UnknownMessage { seq, .. } | Self::InvalidMessage { seq, .. } => *seq,
            _ => None,
        }
    }
}

/// What [`Message::validate`](crate::Message::validate) finds wrong in a
/// message the types alone accept; its text is the `reason` of the
/// [`ProtoError::InvalidMessage`] the decoder returns.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum InvalidMessage {
    /// A name or token that must be given is empty.
    #[error("empty {0}")]
    Empty(&'static str),
    /// A port, size, scale or interval that must not be 0 is.
    #[error("{0} 0")]
    Zero(&'static str),
    /// `cores` is not a finite number above 0.
    #[error("cores {0} is not a positive number")]
    Cores(f64),
    /// A measurement is negative, infinite or not a number.
    #[error("{what} {value} is not a finite, non-negative number")]
    Negative {
        /// Which measurement.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// An application lists port 0.
    #[error("application {0:?} has port 0")]
    PortZero(String),
    /// A `<connection-settings>` lists no address.
    #[error("no addresses")]
    NoAddresses,
    /// A list is longer than the protocol allows.
    #[error("{count} {what}, over the limit of {limit}")]
    TooMany {
        /// What is listed.
        what: &'static str,
        /// How many were sent.
        count: usize,
        /// The most allowed.
        limit: usize,
    },
    /// An address that must be a host's is not (unspecified, loopback,
    /// multicast or broadcast).
    #[error("{0} is not a unicast address")]
    NotUnicast(std::net::IpAddr),
    /// A report says more memory is available than there is.
    #[error("memory available {available} > total {total}")]
    Memory {
        /// Available bytes.
        available: u64,
        /// Total bytes.
        total: u64,
    },
}

/// A failure to write a stream.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// Writing to the output failed.
    #[error("writing the stream: {0}")]
    Io(#[from] std::io::Error),
    /// Serde could not serialize the message.
    #[error("serializing <{name}>: {reason}")]
    Serialize {
        /// The message's element name.
        name: &'static str,
        /// What serde said.
        reason: String,
    },
    /// The message is larger than the limit the peer enforces; nothing was
    /// written.
    #[error("<{name}> message is {size} bytes, over the limit of {limit} (max_message_bytes)")]
    MessageTooLarge {
        /// The message's element name.
        name: &'static str,
        /// Its encoded size, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// [`Encoder::start`](crate::Encoder::start) was not called, was called
    /// twice, or the stream is already finished.
    #[error("stream is {0}")]
    State(&'static str),
}
