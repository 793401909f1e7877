//! `lbctl events --follow`: the event stream as it comes.

use std::path::Path;

use lb_control::{
    api::{Request, Response},
    manager::events::Event,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::{error::Error, output::out, table::print_event};

/// `lbctl events --follow`: prints each event line as the daemon sends it.
pub async fn follow(socket: &Path, after: u64, json: bool) -> Result<(), Error> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| Error::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(&Request::Events {
        after,
        follow: true,
    })?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(Error::Stream)?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.map_err(Error::Stream)? {
        print_line(&line, json)?;
    }
    Ok(())
}

/// One line of the stream: as it is with `--json`, else an event on a line
/// of its own, the daemon's error as the command's, anything else as it is.
fn print_line(line: &str, json: bool) -> Result<(), Error> {
    if json {
        out!("{line}");
        return Ok(());
    }
    match serde_json::from_str::<Event>(line) {
        Ok(e) => print_event(&e),
        Err(_) => match serde_json::from_str::<Response>(line) {
            Ok(Response::Error { message, .. }) => return Err(Error::Daemon(message)),
            _ => out!("{line}"),
        },
    }
    Ok(())
}
