//! Listening sockets shared by the node's and the manager's TCP listeners,
//! and the reading of the message streams they accept.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use lb_proto::{Decoder, Message, ProtoError};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::warn;

/// How long a peer has for its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer has, after its handshake, for its stream header and
/// first message.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before TCP keepalive probes, their interval and count, and
/// the user timeout: a peer gone without a word is found in under a minute.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(20);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 4;
const USER_TIMEOUT: Duration = Duration::from_secs(40);
/// Pause after an accept error (out of file descriptors: connections end
/// meanwhile).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line a period for refused connections.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// How many connections a listener holds at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// In all.
    pub total: usize,
    /// From one source address.
    pub per_source: usize,
}

/// Connections open per source, and in all; a [`Slot`] is one of them.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One accepted connection's place in its listener's counts, given back
/// when it is dropped.
#[derive(Debug)]
pub struct Slot {
    open: Arc<Mutex<Open>>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// A slot for a connection from `source`, if the limits leave one.
fn take_slot(open: &Arc<Mutex<Open>>, limits: ConnectionLimits, source: IpAddr) -> Option<Slot> {
    let mut o = open.lock().unwrap_or_else(PoisonError::into_inner);
    let from = o.by_source.get(&source).copied().unwrap_or(0);
    if o.total >= limits.total || from >= limits.per_source {
        return None;
    }
    o.total += 1;
    *o.by_source.entry(source).or_default() += 1;
    Some(Slot {
        open: open.clone(),
        source,
    })
}

/// TCP keepalive and a user timeout, so a peer that vanished is noticed.
fn keep_alive(tcp: &TcpStream) {
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(USER_TIMEOUT));
    let _ = tcp.set_nodelay(true);
}

/// Accepts connections on `listener` forever, each handled by its own task
/// holding its [`Slot`]: a connection over `limits` is closed at once, an
/// accept error (out of file descriptors) is logged once and retried after
/// a pause, so the loop never ends. Accepted sockets get TCP keepalive.
pub fn spawn_accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ConnectionLimits,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Slot) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let open = Arc::new(Mutex::new(Open::default()));
        let mut failing = false;
        let mut refused = 0u64;
        let mut refusal_logged: Option<Instant> = None;
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    failing = false;
                    let Some(slot) = take_slot(&open, limits, peer.ip().to_canonical()) else {
                        refused += 1;
                        if refusal_logged.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_PERIOD) {
                            warn!(listener = name, %peer, refused, total = limits.total, per_source = limits.per_source, "connection over the limit closed");
                            refusal_logged = Some(Instant::now());
                        }
                        continue;
                    };
                    keep_alive(&tcp);
                    tokio::spawn(handle(tcp, peer, slot));
                }
                Err(e) => {
                    if !failing {
                        warn!(listener = name, error = %e, "accept failed; retrying");
                        failing = true;
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
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
