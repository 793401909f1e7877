//! The daemon's side of the control socket: one JSON request per line, one
//! JSON response per line (or, for `events --follow`, one event per line
//! until the client goes away).

use std::{path::Path, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use super::{Daemon, ErrorKind, Request, Response};
use crate::manager::events::Event;

/// Binds the control socket (replacing one a killed predecessor left), so
/// it accepts connections before the daemon says it is ready.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

/// Serves the control socket until the task is dropped.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = session(daemon, stream).await {
                debug!(error = %e, "control session ended");
            }
        });
    }
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

async fn session(daemon: Arc<Daemon>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Events {
                after,
                follow: true,
            }) => return follow_events(&daemon, after, &mut write).await,
            Ok(request) => daemon.handle(request).await,
            Err(e) => {
                warn!(error = %e, "bad control request");
                Response::error(ErrorKind::BadRequest, format_args!("bad request: {e}"))
            }
        };
        let mut text = serde_json::to_string(&response).unwrap_or_else(|e| {
            format!(
                "{{\"response\":\"error\",\"kind\":\"internal\",\"message\":\"encoding: {e}\"}}"
            )
        });
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
}

/// `lbctl events --follow`: the events after `after`, then each new one,
/// one JSON line each, until the client goes away.
async fn follow_events(
    daemon: &Daemon,
    after: u64,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let Ok(c) = daemon.controller() else {
        let r = Response::error(ErrorKind::NoManager, "this lb-control runs no manager");
        let mut text = serde_json::to_string(&r).unwrap_or_default();
        text.push('\n');
        return write.write_all(text.as_bytes()).await;
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

async fn write_event(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    event: &Event,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(event).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}
