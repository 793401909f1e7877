//! `lbctl events --follow`: the event stream as it comes.

use lb_control::{
    api::{Request, Response},
    manager::events::Event,
};

use crate::{output::out, table::print_event};

/// `lbctl events --follow`: prints each event line as the daemon sends it.
pub async fn follow_events(socket: &std::path::Path, after: u64, json: bool) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(&Request::Events {
        after,
        follow: true,
    })
    .map_err(|e| e.to_string())?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        if json {
            out!("{line}");
            continue;
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(e) => print_event(&e),
            Err(_) => match serde_json::from_str::<Response>(&line) {
                Ok(Response::Error { message }) => return Err(message),
                _ => out!("{line}"),
            },
        }
    }
    Ok(())
}
