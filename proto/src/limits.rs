//! Hard limits a decoder enforces on what a peer sends.

use serde::{Deserialize, Serialize};

/// What a [`Decoder`](crate::Decoder) accepts from a peer before it gives up
/// on the stream.
///
/// Every limit is checked while bytes are buffered, not after a message is
/// complete, so a peer can never make the decoder hold more than
/// `max_message_bytes` plus the bytes of one [`feed`](crate::Decoder::feed).
/// Breaking any of them is a fatal [`ProtoError`](crate::ProtoError): the
/// caller answers with an `<error>` message and disconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest message, in bytes, from its `<` to the end of its closing tag.
    /// Also bounds a comment between two messages.
    pub max_message_bytes: usize,
    /// Deepest element nesting inside one message; the message element itself
    /// is depth 1 (`<lb-stream>` does not count).
    pub max_depth: usize,
    /// Most attributes on one element, the stream header included.
    pub max_attributes: usize,
    /// Most bytes before the end of the `<lb-stream ...>` start tag, counting
    /// an XML declaration, comments and whitespace in front of it.
    pub max_header_bytes: usize,
}

impl Limits {
    /// 64 KiB: a report for a host with dozens of NICs and applications is a
    /// few KiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
    /// 8: the deepest message (`report/application/readiness`) is 3.
    pub const DEFAULT_MAX_DEPTH: usize = 8;
    /// 32: the widest element (`report/application/readiness`) has 6.
    pub const DEFAULT_MAX_ATTRIBUTES: usize = 32;
    /// 4 KiB: a header is `version`, `role` and a host name of at most 253
    /// bytes.
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 4 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_depth: Self::DEFAULT_MAX_DEPTH,
            max_attributes: Self::DEFAULT_MAX_ATTRIBUTES,
            max_header_bytes: Self::DEFAULT_MAX_HEADER_BYTES,
        }
    }
}
