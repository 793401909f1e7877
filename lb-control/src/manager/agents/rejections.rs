//! Why the manager rejected a message on an agent stream: a fixed set of
//! reasons (a label each in `lb_agent_messages_rejected_total` and in
//! `lbctl stats`, never free text), one counter per reason.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use lb_proto::ProtoError;

/// Why a message on an agent stream was rejected. The decoder's reasons
/// are named as the `code` of the `<error>` the agent is sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not the XML the protocol allows: broken syntax, mismatched tags,
    /// text between messages, a bad stream header (the stream ends).
    Malformed,
    /// A `<!DOCTYPE`, `<!ENTITY` or other declaration (the stream ends).
    DeclarationForbidden,
    /// Over `max_message_bytes` (the stream ends).
    MessageTooLarge,
    /// A stream header over `max_header_bytes` (the stream ends).
    HeaderTooLarge,
    /// Nested deeper than `max_depth` (the stream ends).
    TooDeep,
    /// An element with more than `max_attributes` (the stream ends).
    TooManyAttributes,
    /// Another protocol version (the stream ends).
    VersionMismatch,
    /// A well-framed element that is no message.
    UnknownMessage,
    /// A known message with a missing or wrong attribute or value.
    InvalidMessage,
    /// A `seq` not above the last one accepted on the stream: replayed,
    /// reordered or stale.
    OutOfSequence,
    /// A stream header, hello or report naming another host than the
    /// certificate (or the stream's hello) does.
    NameMismatch,
    /// A message the manager does not take from an agent.
    Unexpected,
}

impl Rejection {
    /// Every reason, in the order of their counters.
    pub const ALL: [Self; 12] = [
        Self::Malformed,
        Self::DeclarationForbidden,
        Self::MessageTooLarge,
        Self::HeaderTooLarge,
        Self::TooDeep,
        Self::TooManyAttributes,
        Self::VersionMismatch,
        Self::UnknownMessage,
        Self::InvalidMessage,
        Self::OutOfSequence,
        Self::NameMismatch,
        Self::Unexpected,
    ];

    /// Its label: `malformed`, `declaration-forbidden`,
    /// `message-too-large`, `header-too-large`, `too-deep`,
    /// `too-many-attributes`, `version-mismatch`, `unknown-message`,
    /// `invalid-message`, `out-of-sequence`, `name-mismatch` or
    /// `unexpected`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::DeclarationForbidden => "declaration-forbidden",
            Self::MessageTooLarge => "message-too-large",
            Self::HeaderTooLarge => "header-too-large",
            Self::TooDeep => "too-deep",
            Self::TooManyAttributes => "too-many-attributes",
            Self::VersionMismatch => "version-mismatch",
            Self::UnknownMessage => "unknown-message",
            Self::InvalidMessage => "invalid-message",
            Self::OutOfSequence => "out-of-sequence",
            Self::NameMismatch => "name-mismatch",
            Self::Unexpected => "unexpected",
        }
    }

    /// The reason of a decoder error; `None` for
    /// [`ProtoError::Closed`], the stream's end, which rejects nothing.
    #[must_use]
    pub fn of(error: &ProtoError) -> Option<Self> {
        Some(match error {
            ProtoError::Malformed(_) => Self::Malformed,
            ProtoError::DeclarationForbidden(_) => Self::DeclarationForbidden,
            ProtoError::MessageTooLarge { .. } => Self::MessageTooLarge,
            ProtoError::HeaderTooLarge { .. } => Self::HeaderTooLarge,
            ProtoError::TooDeep { .. } => Self::TooDeep,
            ProtoError::TooManyAttributes { .. } => Self::TooManyAttributes,
            ProtoError::VersionMismatch { .. } => Self::VersionMismatch,
            ProtoError::UnknownMessage { .. } => Self::UnknownMessage,
            ProtoError::InvalidMessage { .. } => Self::InvalidMessage,
            ProtoError::Closed => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A counter per [`Rejection`].
#[derive(Debug, Default)]
pub(super) struct Rejections([AtomicU64; Rejection::ALL.len()]);

impl Rejections {
    pub(super) fn count(&self, reason: Rejection) {
        if let Some(counter) = self.0.get(reason.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every rejection, whatever its reason.
    pub(super) fn total(&self) -> u64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// The count of every reason, by label (zeros included).
    pub(super) fn by_reason(&self) -> BTreeMap<String, u64> {
        Rejection::ALL
            .iter()
            .zip(&self.0)
            .map(|(r, n)| (r.label().to_owned(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` is in index order, so each reason has its own counter.
    #[test]
    fn every_reason_has_its_own_counter() {
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        let counts = Rejections::default();
        counts.count(Rejection::OutOfSequence);
        counts.count(Rejection::OutOfSequence);
        counts.count(Rejection::Malformed);
        let by = counts.by_reason();
        assert_eq!(by.len(), Rejection::ALL.len());
        assert_eq!(by["out-of-sequence"], 2);
        assert_eq!(by["malformed"], 1);
        assert_eq!(by["unexpected"], 0);
        assert_eq!(counts.total(), 3);
    }

    /// A decoder error's label is the code of the `<error>` reply the
    /// agent gets, so the two name the same thing.
    #[test]
    fn decoder_reasons_are_the_error_codes() {
        let errors = [
            ProtoError::Malformed("x".into()),
            ProtoError::DeclarationForbidden("x".into()),
            ProtoError::MessageTooLarge { limit: 1 },
            ProtoError::HeaderTooLarge { limit: 1 },
            ProtoError::TooDeep {
                element: "x".into(),
                limit: 1,
            },
            ProtoError::TooManyAttributes {
                element: "x".into(),
                limit: 1,
            },
            ProtoError::VersionMismatch { ours: 1, theirs: 2 },
            ProtoError::UnknownMessage {
                name: "x".into(),
                seq: None,
            },
            ProtoError::InvalidMessage {
                name: "x".into(),
                seq: None,
                reason: "x".into(),
            },
        ];
        for e in &errors {
            assert_eq!(Rejection::of(e).map(Rejection::label), Some(e.code()));
        }
        assert_eq!(Rejection::of(&ProtoError::Closed), None);
    }
}
