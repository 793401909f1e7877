//! The daemon's side of the control socket: one JSON request per line, one
//! JSON response per line (or, for `events --follow`, one event per line
//! until the client goes away).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
};
use tracing::{debug, warn};

use super::{
    Daemon, ErrorKind, Request, Response,
    access::{Access, Role, reads_only},
};
use crate::manager::events::Event;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most control sessions open at once; one more is answered with an
/// error and closed.
pub const MAX_SESSIONS: usize = 64;

/// Limits of the control socket's sessions.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Who may do what.
    pub access: Access,
    /// How long a session may wait between requests (not while it
    /// follows events).
    pub idle: Duration,
}

/// Serves the control socket until the task is dropped. An accept error
/// (out of file descriptors) is logged once and retried after a pause;
/// the loop never ends on one.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener, limits: Limits) {
    let limits = Arc::new(limits);
    let open = Arc::new(AtomicUsize::new(0));
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                failing = false;
                stream
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "control socket: accept failed; retrying");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (daemon, limits, open) = (daemon.clone(), limits.clone(), open.clone());
        tokio::spawn(async move {
            let n = open.fetch_add(1, Ordering::AcqRel);
            let result = if n >= MAX_SESSIONS {
                refuse(
                    stream,
                    ErrorKind::Busy,
                    format!("{MAX_SESSIONS} control sessions are open; try again"),
                )
                .await
            } else {
                session(&daemon, &limits, stream).await
            };
            open.fetch_sub(1, Ordering::AcqRel);
            if let Err(e) = result {
                debug!(error = %e, "control session ended");
            }
        });
    }
}

/// Answers `stream` with one error and closes it.
async fn refuse(stream: UnixStream, kind: ErrorKind, message: String) -> std::io::Result<()> {
    let (_, mut write) = stream.into_split();
    respond(&mut write, &Response::error(kind, message)).await
}

/// One request line of a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The request's text (without its newline).
    Request(Vec<u8>),
    /// A line longer than the limit: read to its end and dropped whole.
    TooLong,
    /// The client closed the session.
    End,
}

/// The next line of `read`, at most `max` bytes of it kept (a longer line
/// is read to its newline and dropped: its tail is never taken for a
/// request of its own).
///
/// # Errors
/// Reading failed.
pub async fn read_line<R: AsyncBufRead + Unpin>(read: &mut R, max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = read.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Request(line),
            });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if !too_long && line.len() + take > max {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(&buf[..take]);
        }
        read.consume(take + usize::from(done));
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Request(line)
            });
        }
    }
}

/// What a session does with one request line.
#[derive(Debug)]
pub enum Decoded {
    /// Carry it out and answer.
    Run(Request),
    /// `events --follow`: the events after this id, then each new one.
    Follow(u64),
    /// Answer this error; nothing is done.
    Refuse(Response),
}

/// Judges one request line from a peer of `role`: a request of this
/// version that the role may send, or the error to answer.
#[must_use]
pub fn decode(text: &[u8], role: Role) -> Decoded {
    match serde_json::from_slice::<Request>(text.trim_ascii()) {
        Ok(r) if role != Role::Admin && !reads_only(&r) => Decoded::Refuse(Response::error(
            ErrorKind::Forbidden,
            "this request changes the balancer: only root and the members of node.admin_group may send it",
        )),
        Ok(Request::Events {
            after,
            follow: true,
        }) => Decoded::Follow(after),
        Ok(request) => Decoded::Run(request),
        Err(e) => {
            warn!(error = %e, "bad control request");
            Decoded::Refuse(Response::error(
                ErrorKind::BadRequest,
                format_args!("bad request: {e}"),
            ))
        }
    }
}

async fn session(daemon: &Daemon, limits: &Limits, stream: UnixStream) -> std::io::Result<()> {
    let role = limits.access.role_of(&stream)?;
    if role == Role::None {
        return refuse(
            stream,
            ErrorKind::Forbidden,
            "not allowed: the control socket admits root and the members of node.control_group (read) and node.admin_group (every verb)"
                .to_owned(),
        )
        .await;
    }
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    loop {
        let Ok(line) = tokio::time::timeout(limits.idle, read_line(&mut lines, MAX_REQUEST)).await
        else {
            debug!("control session idle; closed");
            return Ok(());
        };
        let response = match line? {
            Line::End => return Ok(()),
            Line::TooLong => {
                warn!("control request over {MAX_REQUEST} bytes refused");
                Response::error(
                    ErrorKind::BadRequest,
                    format_args!("request longer than {MAX_REQUEST} bytes; nothing done"),
                )
            }
            Line::Request(text) => match decode(&text, role) {
                Decoded::Run(request) => daemon.handle(request).await,
                Decoded::Follow(after) => return follow_events(daemon, after, &mut write).await,
                Decoded::Refuse(response) => response,
            },
        };
        respond(&mut write, &response).await?;
    }
}

/// Writes one response line.
async fn respond(write: &mut OwnedWriteHalf, response: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).unwrap_or_else(|e| {
        format!("{{\"response\":\"error\",\"kind\":\"internal\",\"message\":\"encoding: {e}\"}}")
    });
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// `lbctl events --follow`: the events after `after`, then each new one,
/// one JSON line each, until the client goes away.
async fn follow_events(
    daemon: &Daemon,
    after: u64,
    write: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    let Ok(c) = daemon.controller() else {
        let r = Response::error(ErrorKind::NoManager, "this lb-control runs no manager");
        return respond(write, &r).await;
    };
    // Subscribe first so nothing falls between the backlog and the stream.
    let mut rx = c.events.subscribe();
    let mut last = after;
    for e in c.events.since(after) {
        last = e.id;
        write_event(write, &e).await?;
    }
    loop {
        match rx.recv().await {
            Ok(e) if e.id > last => {
                last = e.id;
                write_event(write, &e).await?;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                for e in c.events.since(last) {
                    last = e.id;
                    write_event(write, &e).await?;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn write_event(write: &mut OwnedWriteHalf, event: &Event) -> std::io::Result<()> {
    let mut text = serde_json::to_string(event).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_oversized_line_is_dropped_whole() {
        let mut text = vec![b' '; MAX_REQUEST + 10];
        text.extend_from_slice(b"{\"request\":\"reload\"}\n{\"request\":\"status\"}\nlast");
        let mut read = BufReader::with_capacity(1000, &text[..]);
        assert_eq!(
            read_line(&mut read, MAX_REQUEST).await.unwrap(),
            Line::TooLong
        );
        assert_eq!(
            read_line(&mut read, MAX_REQUEST).await.unwrap(),
            Line::Request(b"{\"request\":\"status\"}".to_vec())
        );
        assert_eq!(
            read_line(&mut read, MAX_REQUEST).await.unwrap(),
            Line::Request(b"last".to_vec())
        );
        assert_eq!(read_line(&mut read, MAX_REQUEST).await.unwrap(), Line::End);
        let exact = [vec![b'x'; MAX_REQUEST], b"\n".to_vec()].concat();
        let mut read = BufReader::with_capacity(1000, &exact[..]);
        assert_eq!(
            read_line(&mut read, MAX_REQUEST).await.unwrap(),
            Line::Request(vec![b'x'; MAX_REQUEST])
        );
    }
}
