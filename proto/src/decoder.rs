//! Reading a stream incrementally: bytes in, messages out.
//!
//! The decoder finds message boundaries itself. It walks the buffered bytes
//! one lexical unit at a time (text, or one piece of markup from `<` to its
//! end), keeping the element depth; when the element that opened at depth 1
//! closes, that slice is one message and goes to `quick_xml::de`. The end of
//! a piece of markup is searched for incrementally (quick-xml's
//! [`ElementParser`](quick_xml::parser::ElementParser) for tags, which
//! skips `>` inside quoted attribute values), so bytes that arrive one at a
//! time are scanned once, not once per arrival. Each complete piece of
//! markup is read by quick-xml's [`Reader`](quick_xml::Reader), which
//! checks its syntax and yields its name and attributes (`markup.rs`).
//!
//! A `<report>` (nearly all a manager reads) is also assembled from those
//! same events as they go by (`PartialReport` in `report.rs`, which checks
//! the attributes as it reads them), so reports in the layout the encoder
//! writes never go through serde; any other goes to serde as every other
//! message does, with the same result.

use std::ops::Range;

use quick_xml::{
    events::{BytesStart, Event},
    parser::Parser as _,
};

use crate::{Limits, Message, ProtoError, Report, StreamHeader, header::STREAM_ELEMENT};

use markup::{Pending, PendingKind, check_attributes, classify, read_markup};
use report::PartialReport;

mod markup;
mod report;
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
    /// Where the names of the message's open elements are, relative to its
    /// start, the message element first (kept here to reuse its capacity).
    open: Vec<Range<usize>>,
    /// Off in tests that compare the report fast path with serde.
    #[cfg(test)]
    fast_reports: bool,
    /// Reports the fast path produced, for those tests.
    #[cfg(test)]
    fast_decoded: usize,
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

#[derive(Debug)]
struct OpenMessage {
    /// Offset of its `<` in `buf`; its name follows.
    start: usize,
    /// Length of the message element's name.
    name_len: usize,
    /// Its `seq` attribute, if readable, for errors.
    seq: Option<u64>,
    /// A `<report>` assembled so far, while it keeps to the encoder's
    /// layout.
    report: Option<PartialReport>,
}

impl OpenMessage {
    /// The message element's name, from the buffer it started in.
    fn name<'b>(&self, buf: &'b [u8]) -> &'b str {
        let name = buf.get(self.start + 1..self.start + 1 + self.name_len);
        std::str::from_utf8(name.unwrap_or_default()).unwrap_or_default()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default [`Limits`].
    #[must_use]
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// A decoder with the given limits.
    #[must_use]
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
            open: Vec::new(),
            #[cfg(test)]
            fast_reports: true,
            #[cfg(test)]
            fast_decoded: 0,
        }
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The peer's stream header, once [`next`](Self::next) has read it.
    /// Check the peer's role here before acting on its messages.
    #[must_use]
    pub fn header(&self) -> Option<&StreamHeader> {
        self.header.as_ref()
    }

    /// Bytes buffered and not yet returned as messages.
    #[must_use]
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
    ///
    /// # Errors
    ///
    /// A [`ProtoError`]: a fatal one (a limit, broken XML, a version mismatch,
    /// [`ProtoError::Closed`]) ends the stream; [`ProtoError::UnknownMessage`] and
    /// [`ProtoError::InvalidMessage`] reject one well-framed message only.
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
                match &mut self.message {
                    // The fast path takes no text, not even whitespace.
                    Some(message) => message.report = None,
                    None if !all_space => {
                        return Err(ProtoError::Malformed(match self.state {
                            State::Header => "text before the stream header".into(),
                            _ => "text between messages".into(),
                        }));
                    }
                    None => {}
                }
                continue;
            }
            let Some(end) = self.markup_end()? else {
                self.check_limits(self.buf.len())?;
                return Ok(None);
            };
            self.check_limits(end)?;
            // The event borrows the buffer while `handle` updates the rest.
            let buf = std::mem::take(&mut self.buf);
            let result = self.markup(&buf, end);
            self.buf = buf;
            if let Some(message) = result? {
                return Ok(Some(message));
            }
        }
    }

    /// Reads the complete piece of markup `buf[pos..end]` and acts on it.
    fn markup(&mut self, buf: &[u8], end: usize) -> Result<Option<Message>, ProtoError> {
        let start = self.pos;
        let event = read_markup(buf.get(start..end).unwrap_or_default())?;
        self.pos = end;
        self.handle(event, buf, start, end)
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
        event: Event<'_>,
        buf: &[u8],
        start: usize,
        end: usize,
    ) -> Result<Option<Message>, ProtoError> {
        match event {
            Event::Comment(_) | Event::CData(_) if self.message.is_some() => {
                // Inside a message: not the layout the fast path reads.
                if let Some(message) = &mut self.message {
                    message.report = None;
                }
                Ok(None)
            }
            Event::Comment(_) => Ok(None),
            Event::DocType(_) => Err(ProtoError::DeclarationForbidden("<!DOCTYPE".into())),
            Event::Decl(_) if matches!(self.state, State::Header) => Ok(None),
            Event::Decl(_) => Err(ProtoError::Malformed(
                "XML declaration after the stream header".into(),
            )),
            Event::PI(_) => Err(ProtoError::Malformed(
                "processing instructions are not allowed".into(),
            )),
            Event::CData(_) | Event::Text(_) | Event::GeneralRef(_) | Event::Eof => Err(
                ProtoError::Malformed("character data outside a message".into()),
            ),
            Event::Start(tag) => self.open(&tag, buf, start, end, false),
            Event::Empty(tag) => self.open(&tag, buf, start, end, true),
            Event::End(tag) => self.close(tag.name().as_ref(), buf, end),
        }
    }

    /// A start tag, or an empty element when `empty`, at `buf[start..end]`.
    fn open(
        &mut self,
        tag: &BytesStart<'_>,
        buf: &[u8],
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
        // The report fast path checks the attributes as it reads them; all
        // else is checked here.
        let fast = self.fast_reports();
        let report = match &mut self.message {
            Some(message) => message.report.take().and_then(|mut report| {
                report.open(tag, empty)?;
                Some(report)
            }),
            None if fast && !empty && name == "report" => {
                PartialReport::start(tag, self.limits.max_attributes)
            }
            None => None,
        };
        if report.is_none() {
            check_attributes(tag, &self.limits)?;
        }
        let depth = self.message.as_ref().map_or(0, |_| self.open.len()) + 1;
        if depth > self.limits.max_depth {
            return Err(ProtoError::TooDeep {
                element: short(name),
                limit: self.limits.max_depth,
            });
        }
        // quick-xml refuses space after `<`: the name starts right after it.
        let name_len = name.len();
        match &mut self.message {
            Some(message) => {
                message.report = report;
                if !empty {
                    let from = start - message.start + 1;
                    self.open.push(from..from + name_len);
                }
                Ok(None)
            }
            None if empty => {
                let bytes = buf.get(start..end).unwrap_or_default();
                decode(bytes, name, seq_of(tag), None).map(Some)
            }
            None => {
                self.message = Some(OpenMessage {
                    start,
                    name_len,
                    seq: seq_of(tag),
                    report,
                });
                self.open.clear();
                self.open.push(1..1 + name_len);
                Ok(None)
            }
        }
    }

    #[cfg(not(test))]
    #[expect(
        clippy::unused_self,
        reason = "the test build reads a switch in self; both builds call it alike"
    )]
    fn fast_reports(&self) -> bool {
        true
    }

    #[cfg(test)]
    fn fast_reports(&self) -> bool {
        self.fast_reports
    }

    /// An end tag ending at `end`.
    fn close(&mut self, name: &str, buf: &[u8], end: usize) -> Result<Option<Message>, ProtoError> {
        let Some(message) = &mut self.message else {
            return match self.state {
                State::Stream if name == STREAM_ELEMENT => Err(ProtoError::Closed),
                _ => Err(ProtoError::Malformed(format!(
                    "unexpected end tag </{}>",
                    short(name)
                ))),
            };
        };
        let open = self
            .open
            .pop()
            .and_then(|r| buf.get(message.start + r.start..message.start + r.end))
            .unwrap_or_default();
        if open != name.as_bytes() {
            return Err(ProtoError::Malformed(format!(
                "end tag </{}> does not match <{}>",
                short(name),
                short(std::str::from_utf8(open).unwrap_or_default())
            )));
        }
        if !self.open.is_empty() {
            if let Some(report) = &mut message.report
                && report.close().is_none()
            {
                message.report = None;
            }
            return Ok(None);
        }
        let Some(message) = self.message.take() else {
            return Ok(None);
        };
        let bytes = buf.get(message.start..end).unwrap_or_default();
        let name = truncated(message.name(buf));
        let report = message.report.and_then(PartialReport::finish);
        #[cfg(test)]
        if report.is_some() {
            self.fast_decoded += 1;
        }
        decode(bytes, name, message.seq, report).map(Some)
    }
}

/// The `seq` attribute, if present and a number (for error reports only).
fn seq_of(tag: &BytesStart<'_>) -> Option<u64> {
    let attr = tag.try_get_attribute("seq").ok()??;
    attr.value.parse().ok()
}

/// Deserializes and validates one complete message element, unless the
/// fast path already read it as `report`. Failures here reject that
/// message only: its framing was sound.
fn decode(
    bytes: &[u8],
    name: &str,
    seq: Option<u64>,
    report: Option<Report>,
) -> Result<Message, ProtoError> {
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
    let message = match report {
        Some(report) => Message::Report(report),
        None => quick_xml::de::from_str(text).map_err(|e| invalid(e.to_string()))?,
    };
    message.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(message)
}

/// A peer-supplied snippet for an error text, bounded in length.
fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.get(..64).unwrap_or(bytes)).into_owned()
}

/// A peer-supplied name for an error text, bounded in length.
fn short(name: &str) -> String {
    truncated(name).into()
}

/// The first 64 characters of `name`.
fn truncated(name: &str) -> &str {
    name.char_indices()
        .nth(64)
        .map_or(name, |(i, _)| name.get(..i).unwrap_or(name))
}
