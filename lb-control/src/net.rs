//! Listening sockets shared by the node's and the manager's TCP listeners,
//! and the reading of the message streams they accept.

use std::{net::SocketAddr, time::Duration};

use lb_proto::{Decoder, Message, ProtoError};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::warn;

/// Accepts connections on `listener` forever, each handled by its own task
/// (an accept error is logged and retried after a short pause).
pub fn spawn_accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    tokio::spawn(handle(tcp, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// The messages of a stream a listener accepted (agent streams on the
/// manager, manager streams on the node), read a chunk at a time: the
/// decoder gives all it has before the next read.
pub struct MessageReader<R> {
    read: R,
    decoder: Decoder,
    buf: Vec<u8>,
    /// The decoder has nothing more until the next read.
    drained: bool,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// Reads `read` into `decoder` up to `chunk` bytes at a time.
    pub fn new(read: R, decoder: Decoder, chunk: usize) -> Self {
        Self {
            read,
            decoder,
            buf: vec![0; chunk],
            drained: true,
        }
    }

    /// The decoder (its stream header, once read).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The next message, or the decoder's error for one it rejected (the
    /// stream goes on unless the error is fatal); `None` at the end of the
    /// stream (end of file, or its closing tag).
    ///
    /// # Errors
    /// Reading the stream failed.
    pub async fn next(&mut self) -> std::io::Result<Option<Result<Message, ProtoError>>> {
        loop {
            if self.drained {
                let n = self.read.read(&mut self.buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                self.decoder.feed(&self.buf[..n]);
                self.drained = false;
            }
            match self.decoder.next() {
                Ok(Some(m)) => return Ok(Some(Ok(m))),
                Ok(None) => self.drained = true,
                Err(ProtoError::Closed) => return Ok(None),
                Err(e) => return Ok(Some(Err(e))),
            }
        }
    }
}
