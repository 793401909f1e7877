//! Reading a stream incrementally: bytes in, messages out.
//!
//! The decoder finds message boundaries itself. It walks the buffered bytes
//! one lexical unit at a time (text, or one piece of markup from `<` to its
//! end), keeping the element depth; when the element that opened at depth 1
//! closes, that slice is one message and goes to `quick_xml::de`. The end of
//! a piece of markup is searched for incrementally (quick-xml's
//! [`ElementParser`] for tags, which skips `>` inside quoted attribute
//! values), so bytes that arrive one at a time are scanned once, not once
//! per arrival. Each complete piece of markup is read by quick-xml's
//! [`Reader`], which checks its syntax and yields its name and attributes.

use quick_xml::{
    Reader,
    events::{BytesStart, Event},
    parser::{ElementParser, Parser as _},
};

use crate::{Limits, Message, ProtoError, StreamHeader, header::STREAM_ELEMENT};

#[cfg(test)]
mod tests;

/// Decodes one stream from the bytes a peer sends.
///
/// Feed it whatever the socket gave with [`feed`](Self::feed), then call
/// [`next`](Self::next) until it returns `Ok(None)`; the decoder then holds
/// at most one incomplete message, which the [`Limits`] bound. It never
/// panics on any input, and refuses DTDs and entity declarations outright.
///
/// ```
/// use lb_proto::{Decoder, Message, ProtoError, Role};
///
/// let mut decoder = Decoder::new();
/// decoder.feed(b"<lb-stream version=\"1\" role=\"node\" host=\"node-1\">\n<ack seq=\"1\" gener");
/// assert_eq!(decoder.next(), Ok(None)); // the ack is incomplete
/// assert_eq!(decoder.header().map(|h| h.role), Some(Role::Node));
/// decoder.feed(b"ation=\"7\" status=\"ok\"/>\n</lb-stream>\n");
/// assert!(matches!(decoder.next(), Ok(Some(Message::Ack(ack))) if ack.generation == 7));
/// assert_eq!(decoder.next(), Err(ProtoError::Closed));
/// ```
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes removed from the front of `buf` so far.
    dropped: usize,
    /// The first byte not yet scanned.
    pos: usize,
    state: State,
    header: Option<StreamHeader>,
    /// The piece of markup starting at `pos`, when its end is still missing.
    pending: Option<Pending>,
    /// The message being scanned, when its end is still missing.
    message: Option<OpenMessage>,
}

#[derive(Debug)]
enum State {
    /// Waiting for `<lb-stream ...>`.
    Header,
    /// Between or inside messages.
    Stream,
    /// `</lb-stream>` was read.
    Closed,
    /// A fatal error happened; it is returned again on every call.
    Failed(ProtoError),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    kind: PendingKind,
    /// Where the search for the end goes on.
    resume: usize,
}

#[derive(Debug, Clone, Copy)]
enum PendingKind {
    /// A start, end or empty-element tag: ends at the first `>` outside
    /// quotes.
    Tag(ElementParser),
    /// A comment, CDATA section or processing instruction: ends after this.
    Until(&'static [u8]),
}

#[derive(Debug)]
struct OpenMessage {
    /// Offset of its `<` in `buf`.
    start: usize,
    /// The message element's name, for errors.
    name: String,
    /// Its `seq` attribute, if readable, for errors.
    seq: Option<u64>,
    /// Names of the open elements, the message element first.
    open: Vec<String>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default [`Limits`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            dropped: 0,
            pos: 0,
            state: State::Header,
            header: None,
            pending: None,
            message: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The peer's stream header, once [`next`](Self::next) has read it.
    /// Check the peer's role here before acting on its messages.
    pub fn header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// Bytes buffered and not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.keep_from())
    }

    /// Adds bytes read from the peer. Bytes fed after the stream closed or
    /// failed are dropped.
    pub fn feed(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Closed | State::Failed(_)) {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message: `Ok(None)` when more bytes are needed;
    /// [`ProtoError::Closed`] after `</lb-stream>`. After a fatal error (see
    /// [`ProtoError::is_fatal`]) every call returns that error again; after
    /// a non-fatal one the rejected message is skipped and the next call
    /// goes on after it.
    #[expect(
        clippy::should_implement_trait,
        reason = "fallible and resumable after Ok(None): not an Iterator"
    )]
    pub fn next(&mut self) -> Result<Option<Message>, ProtoError> {
        match &self.state {
            State::Closed => return Err(ProtoError::Closed),
            State::Failed(e) => return Err(e.clone()),
            State::Header | State::Stream => {}
        }
        let result = self.step();
        if let Err(e) = &result
            && e.is_fatal()
        {
            self.state = match e {
                ProtoError::Closed => State::Closed,
                e => State::Failed(e.clone()),
            };
            self.buf = Vec::new();
            self.pending = None;
            self.message = None;
        }
        result
    }

    fn keep_from(&self) -> usize {
        self.message.as_ref().map_or(self.pos, |m| m.start)
    }

    /// Drops the bytes before the first one still needed.
    fn compact(&mut self) {
        let keep = self.keep_from().min(self.buf.len());
        if keep == 0 {
            return;
        }
        self.buf.drain(..keep);
        self.dropped = self.dropped.saturating_add(keep);
        self.pos = self.pos.saturating_sub(keep);
        if let Some(m) = &mut self.message {
            m.start = m.start.saturating_sub(keep);
        }
        if let Some(p) = &mut self.pending {
            p.resume = p.resume.saturating_sub(keep);
        }
        // One huge feed must not pin a huge buffer for the stream's life.
        let roomy = self.limits.max_message_bytes.saturating_mul(2);
        if self.buf.capacity() > roomy.saturating_mul(2) && self.buf.len() <= roomy {
            self.buf.shrink_to(roomy);
        }
    }

    /// Scans until a message is complete or the bytes run out.
    fn step(&mut self) -> Result<Option<Message>, ProtoError> {
        loop {
            let Some(&first) = self.buf.get(self.pos) else {
                self.check_limits(self.buf.len())?;
                return Ok(None);
            };
            if first != b'<' {
                let all_space = self.skip_text();
                if self.message.is_none() && !all_space {
                    return Err(ProtoError::Malformed(match self.state {
                        State::Header => "text before the stream header".into(),
                        _ => "text between messages".into(),
                    }));
                }
                continue;
            }
            let Some(end) = self.markup_end()? else {
                self.check_limits(self.buf.len())?;
                return Ok(None);
            };
            self.check_limits(end)?;
            let start = self.pos;
            let event = read_markup(self.buf.get(start..end).unwrap_or_default())?;
            self.pos = end;
            if let Some(message) = self.handle(event, start, end)? {
                return Ok(Some(message));
            }
        }
    }

    /// Moves `pos` over text up to the next `<` (or the end of the buffer);
    /// returns whether it was all XML whitespace. Text inside a message is
    /// checked later, by the deserializer.
    fn skip_text(&mut self) -> bool {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == b'<').unwrap_or(rest.len());
        let all_space = rest
            .iter()
            .take(len)
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        self.pos += len;
        all_space
    }

    /// The end (exclusive) of the markup starting at `pos`, or `None` while
    /// it is incomplete.
    fn markup_end(&mut self) -> Result<Option<usize>, ProtoError> {
        let pending = match self.pending.take() {
            Some(pending) => pending,
            None => match classify(self.buf.get(self.pos..).unwrap_or_default())? {
                Some((kind, skip)) => Pending {
                    kind,
                    resume: self.pos + skip,
                },
                None => return Ok(None),
            },
        };
        let rest = self.buf.get(pending.resume..).unwrap_or_default();
        let (found, kind) = match pending.kind {
            PendingKind::Tag(mut parser) => {
                // `feed` gives the offset of the closing `>`.
                let found = parser.feed(rest).map(|i| i + 1);
                (found, PendingKind::Tag(parser))
            }
            PendingKind::Until(terminator) => {
                let found = rest
                    .windows(terminator.len())
                    .position(|w| w == terminator)
                    .map(|i| i + terminator.len());
                (found, pending.kind)
            }
        };
        if let Some(len) = found {
            return Ok(Some(pending.resume + len));
        }
        // Resume where this search stopped; a terminator may straddle feeds.
        let resume = match kind {
            PendingKind::Tag(_) => self.buf.len(),
            PendingKind::Until(t) => self
                .buf
                .len()
                .saturating_sub(t.len() - 1)
                .max(pending.resume),
        };
        self.pending = Some(Pending { kind, resume });
        Ok(None)
    }

    /// Checks the limits against the bytes up to `end`: the buffer's end
    /// while waiting for more, or the end of a complete piece of markup.
    fn check_limits(&self, end: usize) -> Result<(), ProtoError> {
        match self.state {
            State::Header => {
                if self.dropped.saturating_add(end) > self.limits.max_header_bytes {
                    return Err(ProtoError::HeaderTooLarge {
                        limit: self.limits.max_header_bytes,
                    });
                }
            }
            _ => {
                if end.saturating_sub(self.keep_from()) > self.limits.max_message_bytes {
                    return Err(ProtoError::MessageTooLarge {
                        limit: self.limits.max_message_bytes,
                    });
                }
            }
        }
        Ok(())
    }

    /// Acts on one piece of markup, `buf[start..end]`; returns a message
    /// when it completed one.
    fn handle(
        &mut self,
        event: Event<'static>,
        start: usize,
        end: usize,
    ) -> Result<Option<Message>, ProtoError> {
        match event {
            Event::Comment(_) => Ok(None),
            Event::DocType(_) => Err(ProtoError::DeclarationForbidden("<!DOCTYPE".into())),
            Event::Decl(_) if matches!(self.state, State::Header) => Ok(None),
            Event::Decl(_) => Err(ProtoError::Malformed(
                "XML declaration after the stream header".into(),
            )),
            Event::PI(_) => Err(ProtoError::Malformed(
                "processing instructions are not allowed".into(),
            )),
            Event::CData(_) if self.message.is_some() => Ok(None),
            Event::CData(_) | Event::Text(_) | Event::GeneralRef(_) | Event::Eof => Err(
                ProtoError::Malformed("character data outside a message".into()),
            ),
            Event::Start(tag) => self.open(&tag, start, end, false),
            Event::Empty(tag) => self.open(&tag, start, end, true),
            Event::End(tag) => self.close(tag.name().as_ref(), end),
        }
    }

    /// A start tag, or an empty element when `empty`, at `buf[start..end]`.
    fn open(
        &mut self,
        tag: &BytesStart<'_>,
        start: usize,
        end: usize,
        empty: bool,
    ) -> Result<Option<Message>, ProtoError> {
        let name = tag.name();
        let name = name.as_ref();
        if matches!(self.state, State::Header) {
            if name != STREAM_ELEMENT {
                return Err(ProtoError::Malformed(format!(
                    "expected <{STREAM_ELEMENT}>, got <{}>",
                    short(name)
                )));
            }
            self.header = Some(StreamHeader::parse(tag, &self.limits)?);
            self.state = State::Stream;
            return if empty {
                Err(ProtoError::Closed)
            } else {
                Ok(None)
            };
        }
        check_attributes(tag, &self.limits)?;
        let depth = self.message.as_ref().map_or(0, |m| m.open.len()) + 1;
        if depth > self.limits.max_depth {
            return Err(ProtoError::TooDeep {
                element: short(name),
                limit: self.limits.max_depth,
            });
        }
        match &mut self.message {
            Some(message) => {
                if !empty {
                    message.open.push(name.to_owned());
                }
                Ok(None)
            }
            None if empty => {
                let bytes = self.buf.get(start..end).unwrap_or_default();
                decode(bytes, name, seq_of(tag)).map(Some)
            }
            None => {
                self.message = Some(OpenMessage {
                    start,
                    name: short(name),
                    seq: seq_of(tag),
                    open: vec![name.to_owned()],
                });
                Ok(None)
            }
        }
    }

    /// An end tag ending at `end`.
    fn close(&mut self, name: &str, end: usize) -> Result<Option<Message>, ProtoError> {
        let Some(message) = &mut self.message else {
            return match self.state {
                State::Stream if name == STREAM_ELEMENT => Err(ProtoError::Closed),
                _ => Err(ProtoError::Malformed(format!(
                    "unexpected end tag </{}>",
                    short(name)
                ))),
            };
        };
        match message.open.pop() {
            Some(open) if open == name => {}
            open => {
                return Err(ProtoError::Malformed(format!(
                    "end tag </{}> does not match <{}>",
                    short(name),
                    short(open.as_deref().unwrap_or_default())
                )));
            }
        }
        if !message.open.is_empty() {
            return Ok(None);
        }
        let Some(message) = self.message.take() else {
            return Ok(None);
        };
        let bytes = self.buf.get(message.start..end).unwrap_or_default();
        decode(bytes, &message.name, message.seq).map(Some)
    }
}

/// What kind of markup `bytes` (starting with `<`) opens, and how many bytes
/// to skip before searching for its end; `None` until enough bytes arrived
/// to tell.
fn classify(bytes: &[u8]) -> Result<Option<(PendingKind, usize)>, ProtoError> {
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
fn read_markup(bytes: &[u8]) -> Result<Event<'static>, ProtoError> {
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
    Ok(event.into_owned())
}

/// Counts an element's attributes against the limit and checks their
/// syntax (quoting, duplicates).
fn check_attributes(tag: &BytesStart<'_>, limits: &Limits) -> Result<(), ProtoError> {
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

/// The `seq` attribute, if present and a number (for error reports only).
fn seq_of(tag: &BytesStart<'_>) -> Option<u64> {
    let attr = tag.try_get_attribute("seq").ok()??;
    attr.value.parse().ok()
}

/// Deserializes and validates one complete message element. Failures here
/// reject that message only: its framing was sound.
fn decode(bytes: &[u8], name: &str, seq: Option<u64>) -> Result<Message, ProtoError> {
    if !Message::NAMES.contains(&name) {
        return Err(ProtoError::UnknownMessage {
            name: name.into(),
            seq,
        });
    }
    let invalid = |reason: String| ProtoError::InvalidMessage {
        name: name.into(),
        seq,
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
    let message: Message = quick_xml::de::from_str(text).map_err(|e| invalid(e.to_string()))?;
    message.validate().map_err(invalid)?;
    Ok(message)
}

/// A peer-supplied snippet for an error text, bounded in length.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.get(..64).unwrap_or(bytes)).into_owned()
}

/// A peer-supplied name for an error text, bounded in length.
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}
