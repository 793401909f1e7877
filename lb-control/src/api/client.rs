//! `lbctl`'s side of the control socket: one request, one response.

use std::path::{Path, PathBuf};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::{Request, Response};

/// Why no response came from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {}: {source} (is lb-control running? --socket sets the path)",
        path.display()
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad response: {0}")]
    BadResponse(#[source] serde_json::Error),
}

/// Sends `request` to the daemon at `path` and reads its response.
///
/// # Errors
/// The socket cannot be reached, or the answer is not a response.
pub async fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(ClientError::Encode)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(ClientError::BadResponse)
}
