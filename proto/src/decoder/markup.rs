//! One piece of markup at a time: what kind it is, where it ends, and
//! whether quick-xml reads it as exactly one event with sound attributes.

use quick_xml::{
    Reader,
    events::{BytesStart, Event},
    parser::ElementParser,
};

use super::{lossy, short};
use crate::{Limits, ProtoError};

/// A piece of markup whose end has not arrived yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) kind: PendingKind,
    /// Where the search for the end goes on.
    pub(super) resume: usize,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum PendingKind {
    /// A start, end or empty-element tag: ends at the first `>` outside
    /// quotes.
    Tag(ElementParser),
    /// A comment, CDATA section or processing instruction: ends after this.
    Until(&'static [u8]),
}

/// What kind of markup `bytes` (starting with `<`) opens, and how many bytes
/// to skip before searching for its end; `None` until enough bytes arrived
/// to tell.
pub(super) fn classify(bytes: &[u8]) -> Result<Option<(PendingKind, usize)>, ProtoError> {
    const COMMENT: &[u8] = b"<!--";
    const CDATA: &[u8] = b"<![CDATA[";
    match bytes.get(1) {
        None => Ok(None),
        Some(b'?') => Ok(Some((PendingKind::Until(b"?>"), 2))),
        Some(b'!') => {
            if bytes.starts_with(COMMENT) {
                Ok(Some((PendingKind::Until(b"-->"), COMMENT.len())))
            } else if bytes.starts_with(CDATA) {
                Ok(Some((PendingKind::Until(b"]]>"), CDATA.len())))
            } else if COMMENT.starts_with(bytes) || CDATA.starts_with(bytes) {
                Ok(None)
            } else if bytes.get(2).is_some_and(u8::is_ascii_alphabetic) {
                // <!DOCTYPE, <!ENTITY, <!ELEMENT, <!ATTLIST, <!NOTATION: no
                // DTD, so no entity expansion, ever.
                Err(ProtoError::DeclarationForbidden(lossy(
                    bytes.get(..16).unwrap_or(bytes),
                )))
            } else {
                Err(ProtoError::Malformed("bad markup after <!".into()))
            }
        }
        Some(_) => Ok(Some((PendingKind::Tag(ElementParser::default()), 1))),
    }
}

/// Reads one complete piece of markup with quick-xml, which checks its
/// syntax. Anything but exactly one event spanning all of `bytes` is
/// malformed.
pub(super) fn read_markup(bytes: &[u8]) -> Result<Event<'_>, ProtoError> {
    let mut reader = Reader::from_reader(bytes);
    let config = reader.config_mut();
    // One piece of markup at a time: the decoder matches end tags itself.
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    config.check_comments = true;
    config.expand_empty_elements = false;
    let event = reader
        .read_event()
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if usize::try_from(reader.buffer_position()).ok() != Some(bytes.len()) {
        return Err(ProtoError::Malformed(format!(
            "cannot read markup {:?}",
            lossy(bytes.get(..32).unwrap_or(bytes))
        )));
    }
    Ok(event)
}

/// Counts an element's attributes against the limit and checks their
/// syntax (quoting, duplicates).
///
/// Duplicates among the first [`INLINE_ATTRIBUTES`] are found here without
/// allocating (quick-xml's own check keeps a `Vec` of names); for anything
/// else (an error, a duplicate, a wider element) quick-xml's check runs from
/// the start, so the error is the one it gives.
pub(super) fn check_attributes(tag: &BytesStart<'_>, limits: &Limits) -> Result<(), ProtoError> {
    let mut seen = [""; INLINE_ATTRIBUTES];
    let mut attributes = tag.attributes();
    attributes.with_checks(false);
    for (count, attr) in attributes.enumerate() {
        let Ok(attr) = attr else {
            return check_attributes_slowly(tag, limits);
        };
        let key = attr.key.into_inner();
        let earlier = seen.get(..count).unwrap_or_default();
        if count >= limits.max_attributes || earlier.contains(&key) {
            return check_attributes_slowly(tag, limits);
        }
        let Some(slot) = seen.get_mut(count) else {
            return check_attributes_slowly(tag, limits);
        };
        *slot = key;
    }
    Ok(())
}

/// Attributes [`check_attributes`] checks for duplicates without
/// allocating: the default limit.
const INLINE_ATTRIBUTES: usize = Limits::DEFAULT_MAX_ATTRIBUTES;

/// [`check_attributes`] with quick-xml's duplicate check.
#[cold]
fn check_attributes_slowly(tag: &BytesStart<'_>, limits: &Limits) -> Result<(), ProtoError> {
    for (count, attr) in tag.attributes().enumerate() {
        if count >= limits.max_attributes {
            return Err(ProtoError::TooManyAttributes {
                element: short(tag.name().as_ref()),
                limit: limits.max_attributes,
            });
        }
        attr.map_err(|e| ProtoError::Malformed(e.to_string()))?;
    }
    Ok(())
}
