//! Writing a stream: header, messages, footer.

use std::io::Write;

use crate::{EncodeError, Limits, Message, StreamHeader, header::STREAM_ELEMENT};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    New,
    Open,
    Finished,
}

/// Writes one stream: [`start`](Self::start) once, then any number of
/// [`encode`](Self::encode), then [`finish`](Self::finish).
///
/// Each message is one element on one line, without pretty printing. The
/// encoder stamps each message's `seq`, starting at the `first_seq` given to
/// [`new`](Self::new) and adding one per message. A message is serialized
/// completely before anything is written, so a failure writes nothing.
///
/// ```
/// use lb_proto::{Ack, AckStatus, Encoder, Message, Role, StreamHeader};
///
/// let mut encoder = Encoder::new(Vec::new(), 1);
/// encoder.start(&StreamHeader::new(Role::Node, "node-1"))?;
/// let mut ack = Message::from(Ack { seq: 0, generation: 7, status: AckStatus::Ok, error: None });
/// assert_eq!(encoder.encode(&mut ack)?, 1);
/// encoder.finish()?;
/// assert_eq!(
///     String::from_utf8(encoder.into_inner()).unwrap(),
///     "<lb-stream version=\"1\" role=\"node\" host=\"node-1\">\n\
///      <ack seq=\"1\" generation=\"7\" status=\"ok\"/>\n\
///      </lb-stream>\n",
/// );
/// # Ok::<(), lb_proto::EncodeError>(())
/// ```
#[derive(Debug)]
pub struct Encoder<W> {
    out: W,
    next_seq: u64,
    limits: Limits,
    state: State,
    scratch: String,
}

impl<W: Write> Encoder<W> {
    /// An encoder writing to `out` whose first message gets `first_seq`.
    ///
    /// A sender that reconnects should start above the last `seq` of its
    /// previous stream, so that a peer keeping a
    /// [`SequenceGuard`](crate::SequenceGuard) across connections never takes
    /// a new message for a stale one; the Unix time in microseconds at
    /// connection time does that without keeping state.
    pub fn new(out: W, first_seq: u64) -> Self {
        Self::with_limits(out, first_seq, Limits::default())
    }

    /// Like [`new`](Self::new), refusing messages larger than
    /// `limits.max_message_bytes` (the peer would drop the stream for them).
    pub fn with_limits(out: W, first_seq: u64, limits: Limits) -> Self {
        Self {
            out,
            next_seq: first_seq,
            limits,
            state: State::New,
            scratch: String::new(),
        }
    }

    /// Writes the `<lb-stream ...>` start tag.
    ///
    /// # Errors
    ///
    /// [`EncodeError::State`] when the stream was already started;
    /// [`EncodeError::Io`] when writing to the output fails.
    pub fn start(&mut self, header: &StreamHeader) -> Result<(), EncodeError> {
        if self.state != State::New {
            return Err(EncodeError::State("already started"));
        }
        header.write(&mut self.out)?;
        self.state = State::Open;
        Ok(())
    }

    /// Stamps the next sequence number into `message`, writes it and a
    /// newline, and returns the number.
    ///
    /// # Errors
    ///
    /// [`EncodeError::State`] before [`start`](Self::start) or after
    /// [`finish`](Self::finish); [`EncodeError::Serialize`] when serde cannot
    /// write the message; [`EncodeError::MessageTooLarge`] when it exceeds
    /// `max_message_bytes` (nothing is written and the number is not used);
    /// [`EncodeError::Io`] when writing to the output fails.
    pub fn encode(&mut self, message: &mut Message) -> Result<u64, EncodeError> {
        match self.state {
            State::New => return Err(EncodeError::State("not started")),
            State::Finished => return Err(EncodeError::State("finished")),
            State::Open => {}
        }
        let seq = self.next_seq;
        message.set_seq(seq);
        self.scratch.clear();
        let name = message.name();
        quick_xml::se::to_writer(&mut self.scratch, message).map_err(|e| {
            EncodeError::Serialize {
                name,
                reason: e.to_string(),
            }
        })?;
        if self.scratch.len() > self.limits.max_message_bytes {
            return Err(EncodeError::MessageTooLarge {
                name,
                size: self.scratch.len(),
                limit: self.limits.max_message_bytes,
            });
        }
        self.scratch.push('\n');
        self.out.write_all(self.scratch.as_bytes())?;
        self.next_seq = seq.saturating_add(1);
        Ok(seq)
    }

    /// Writes `</lb-stream>` and a newline; nothing may follow.
    ///
    /// # Errors
    ///
    /// [`EncodeError::State`] when the stream is not open (not started, or
    /// already finished); [`EncodeError::Io`] when writing to the output fails.
    pub fn finish(&mut self) -> Result<(), EncodeError> {
        if self.state != State::Open {
            return Err(EncodeError::State("not open"));
        }
        writeln!(self.out, "</{STREAM_ELEMENT}>")?;
        self.state = State::Finished;
        Ok(())
    }

    /// The `seq` the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The output.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The output, e.g. to flush it.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Gives the output back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl Encoder<Vec<u8>> {
    /// Takes the bytes written so far, leaving the buffer empty: the way to
    /// use an encoder with an async socket.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}
