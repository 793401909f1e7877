//! One connection to the manager: dial, handshake, stream header and
//! `<hello>`, then a `<report>` every interval while answering the
//! manager's requests, until either side ends it.
//!
//! Sequence numbers: each stream starts at the Unix time in microseconds
//! when it opens, and never at or below the last `seq` the agent sent
//! before, so they keep increasing across reconnections and across agent
//! restarts (as long as the clock does not go back by more than the time
//! the agent was down).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_proto::{
    Decoder, EncodeError, Encoder, ErrorMessage, Fingerprint, Message, ProtoError, Role,
    SequenceGuard, StreamHeader,
    tls::{PeerIdentity, TlsError},
};
use rustls::ClientConfig;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
    time::{MissedTickBehavior, timeout},
};

use crate::{
    collector::Collector,
    settings::{SettingsContext, answer},
};

/// How long dialling and the TLS handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one write may stall before the connection counts as dead.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sent data may stay unacknowledged before the kernel drops the
/// connection (`TCP_USER_TIMEOUT`): a manager that vanished without a FIN
/// is noticed in this time rather than after minutes of retransmissions.
pub const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The manager could not be reached.
    #[error("cannot connect to the manager at {manager}: {reason}")]
    Connect {
        /// `ADDR:PORT`.
        manager: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed; the error says what to fix.
    #[error("TLS handshake with the manager failed: {0}")]
    Tls(#[from] TlsError),
    /// Reading or writing the connection failed.
    #[error("connection to the manager lost: {0}")]
    Io(#[from] std::io::Error),
    /// A write did not finish in time.
    #[error("the manager did not take our data within {} s", WRITE_TIMEOUT.as_secs())]
    WriteTimeout,
    /// A message could not be encoded (a bug, or a value out of range).
    #[error("cannot encode a message: {0}")]
    Encode(#[from] EncodeError),
    /// The manager's stream broke the protocol.
    #[error("the manager's stream is unusable: {0}")]
    Protocol(ProtoError),
    /// The manager's stream header is not a manager's, or not this manager's.
    #[error("unexpected peer: {0}")]
    Peer(String),
    /// The manager closed the connection or its stream.
    #[error("the manager closed the connection")]
    Closed,
}

/// How the agent reaches the manager.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Mutual TLS (the default).
    Tls {
        /// Trusts the project CA, presents this host's certificate.
        config: Arc<ClientConfig>,
        /// This host's certificate fingerprint, for auth settings.
        own_fingerprint: Fingerprint,
    },
    /// Plain TCP (`insecure_plaintext = true`), with the fingerprint of the
    /// certificate in `tls_dir` when there is one.
    Plaintext {
        /// This host's certificate fingerprint, if known.
        own_fingerprint: Option<Fingerprint>,
    },
}

impl Transport {
    fn own_fingerprint(&self) -> Option<Fingerprint> {
        match self {
            Self::Tls {
                own_fingerprint, ..
            } => Some(*own_fingerprint),
            Self::Plaintext { own_fingerprint } => *own_fingerprint,
        }
    }
}

/// Hands out the first `seq` of each new stream.
#[derive(Debug, Clone, Default)]
pub struct SeqClock {
    last_sent: Option<u64>,
}

impl SeqClock {
    /// The first `seq` of a stream opening now.
    #[must_use]
    pub fn stream_start(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.last_sent
            .map_or(now, |last| now.max(last.saturating_add(1)))
    }

    /// Remembers the last `seq` a stream used.
    pub fn sent(&mut self, seq: u64) {
        self.last_sent = Some(self.last_sent.map_or(seq, |last| last.max(seq)));
    }
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionEnd {
    /// How long the connection was up, if it was established.
    pub connected_for: Option<Duration>,
    /// `Ok` when it ended because the agent shuts down.
    pub result: Result<(), SessionError>,
}

trait ManagerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ManagerStream for T {}

/// Everything a session needs, borrowed from the agent.
#[derive(Debug)]
pub struct Session<'a> {
    /// Builds hellos and reports.
    pub collector: &'a mut Collector,
    /// TLS or plain TCP.
    pub transport: &'a Transport,
    /// Sequence numbers across streams.
    pub seq: &'a mut SeqClock,
    /// Becomes `true` when the agent is to stop.
    pub shutdown: &'a mut watch::Receiver<bool>,
}

impl Session<'_> {
    /// Connects and runs the session until it ends.
    pub async fn run(mut self) -> SessionEnd {
        let (stream, local_addr, peer) = match self.open().await {
            Ok(opened) => opened,
            Err(e) => {
                return SessionEnd {
                    connected_for: None,
                    result: Err(e),
                };
            }
        };
        let connected = Instant::now();
        tracing::info!(
            manager = %self.collector.config().manager,
            %local_addr,
            peer = peer.as_ref().map_or("(plaintext)", |p| p.name.as_str()),
            "connected to the manager"
        );
        let mut stream = Stream {
            io: stream,
            encoder: Encoder::new(Vec::new(), self.seq.stream_start()),
        };
        let result = self.converse(&mut stream, local_addr, peer.as_ref()).await;
        if let Some(last) = stream.encoder.next_seq().checked_sub(1) {
            self.seq.sent(last);
        }
        SessionEnd {
            connected_for: Some(connected.elapsed()),
            result,
        }
    }

    async fn open(
        &self,
    ) -> Result<(Box<dyn ManagerStream>, SocketAddr, Option<PeerIdentity>), SessionError> {
        let config = self.collector.config();
        let connect_error = |reason: String| SessionError::Connect {
            manager: config.manager.clone(),
            reason,
        };
        let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(config.manager.as_str()))
            .await
            .map_err(|_| {
                connect_error(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))
            })?
            .map_err(|e| connect_error(e.to_string()))?;
        tcp.set_nodelay(true)?;
        if let Err(error) = set_user_timeout(&tcp, UNACKNOWLEDGED_TIMEOUT) {
            tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
        }
        let local_addr = tcp.local_addr()?;
        match self.transport {
            Transport::Plaintext { .. } => Ok((Box::new(tcp), local_addr, None)),
            Transport::Tls { config: tls, .. } => {
                let (stream, peer) = timeout(
                    CONNECT_TIMEOUT,
                    lb_proto::tls::connect(tls.clone(), &config.manager_name, tcp),
                )
                .await
                .map_err(|_| connect_error("TLS handshake timed out".to_owned()))??;
                Ok((Box::new(stream), local_addr, Some(peer)))
            }
        }
    }

    async fn converse(
        &mut self,
        stream: &mut Stream,
        local_addr: SocketAddr,
        peer: Option<&PeerIdentity>,
    ) -> Result<(), SessionError> {
        let config = self.collector.config().clone();
        stream
            .encoder
            .start(&StreamHeader::new(Role::Agent, config.host.clone()))?;
        let mut announced = self.collector.hello();
        stream.send(announced.clone().into()).await?;

        let context = SettingsContext {
            config: &config,
            local_addr,
            own_fingerprint: self.transport.own_fingerprint(),
        };
        let mut decoder = Decoder::new();
        let mut reader = ManagerReader {
            header_checked: false,
            guard: SequenceGuard::new(),
            peer,
            tunnel_sources: None,
        };
        let interval = config.report_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // After a stall, one report, not a burst of stale ones.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut buf = vec![0u8; 16 * 1024];
        let stalls = stalls_reads();
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => {
                    tracing::info!("shutting down: closing the stream to the manager");
                    stream.close().await?;
                    return Ok(());
                }
                _ = ticker.tick() => {
                    // A changed capacity (say, a new cgroup quota) is
                    // announced again, as the protocol asks.
                    let hello = self.collector.hello();
                    if hello != announced {
                        tracing::info!(cores = hello.cores, "capacity changed; announcing again");
                        stream.send(hello.clone().into()).await?;
                        announced = hello;
                    }
                    match self.collector.collect().await {
                        Ok(report) => match stream.send(report.into()).await {
                            Ok(seq) => tracing::debug!(seq, "report sent"),
                            // Say, a report over the size limit (thousands of
                            // interfaces): this one is lost, the stream is not.
                            Err(SessionError::Encode(error)) => {
                                tracing::warn!(%error, "report not sent");
                            }
                            Err(error) => return Err(error),
                        },
                        Err(error) => tracing::warn!(%error, "no report this interval"),
                    }
                }
                read = stream.io.read(&mut buf), if !(stalls && reader.header_checked) => {
                    let n = read?;
                    if n == 0 {
                        return Err(SessionError::Closed);
                    }
                    decoder.feed(buf.get(..n).unwrap_or_default());
                    reader.drain(&mut decoder, stream, &context).await?;
                    if let Some(sources) = reader.tunnel_sources.take() {
                        self.collector.set_tunnel_sources(sources);
                    }
                }
            }
        }
    }
}

/// The connection and our stream on it.
struct Stream {
    io: Box<dyn ManagerStream>,
    encoder: Encoder<Vec<u8>>,
}

impl Stream {
    /// Encodes `message`, writes it (with anything pending) and returns its
    /// `seq`.
    async fn send(&mut self, mut message: Message) -> Result<u64, SessionError> {
        let seq = self.encoder.encode(&mut message)?;
        self.flush().await?;
        Ok(seq)
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        let bytes = self.encoder.take();
        timeout(WRITE_TIMEOUT, async {
            self.io.write_all(&bytes).await?;
            self.io.flush().await
        })
        .await
        .map_err(|_| SessionError::WriteTimeout)??;
        Ok(())
    }

    /// Writes `</lb-stream>` and closes the connection.
    async fn close(&mut self) -> Result<(), SessionError> {
        self.encoder.finish()?;
        self.flush().await?;
        // TLS close_notify and FIN; the peer may already be gone.
        let _ = timeout(WRITE_TIMEOUT, self.io.shutdown()).await;
        Ok(())
    }

    /// Answers with an `<error>`, ends our stream and drops the connection.
    async fn fail(&mut self, reply: ErrorMessage, error: SessionError) -> SessionError {
        if let Err(e) = self.send(reply.into()).await {
            return e;
        }
        match self.close().await {
            Ok(()) => error,
            Err(e) => e,
        }
    }
}

/// What the agent checks on the manager's stream.
struct ManagerReader<'p> {
    header_checked: bool,
    guard: SequenceGuard,
    peer: Option<&'p PeerIdentity>,
    /// The nodes' tunnel sources the manager sent last, not yet handed to
    /// the decapsulation.
    tunnel_sources: Option<Vec<std::net::IpAddr>>,
}

impl ManagerReader<'_> {
    /// Handles every complete message in `decoder`.
    async fn drain(
        &mut self,
        decoder: &mut Decoder,
        stream: &mut Stream,
        context: &SettingsContext<'_>,
    ) -> Result<(), SessionError> {
        loop {
            let next = decoder.next();
            if !self.header_checked
                && let Some(header) = decoder.header()
            {
                if let Err((code, why)) = self.check_header(header, &context.config.manager_name) {
                    let reply = error_reply(code, None, why.clone());
                    return Err(stream.fail(reply, SessionError::Peer(why)).await);
                }
                self.header_checked = true;
            }
            match next {
                Ok(None) => return Ok(()),
                Ok(Some(message)) => self.handle(message, stream, context).await?,
                Err(ProtoError::Closed) => {
                    tracing::info!("the manager closed its stream");
                    stream.close().await?;
                    return Err(SessionError::Closed);
                }
                Err(error) if !error.is_fatal() => {
                    tracing::warn!(code = error.code(), %error, "rejected a message from the manager");
                    stream.send(ErrorMessage::from_error(&error).into()).await?;
                }
                Err(error) => {
                    tracing::warn!(code = error.code(), %error, "the manager's stream is broken");
                    let reply = ErrorMessage::from_error(&error);
                    return Err(stream.fail(reply, SessionError::Protocol(error)).await);
                }
            }
        }
    }

    /// The manager's stream header: the manager role and, over TLS, named
    /// `manager_name` (as configured, whatever else its certificate names)
    /// and by the name its certificate gives first.
    fn check_header(
        &self,
        header: &StreamHeader,
        manager_name: &str,
    ) -> Result<(), (&'static str, String)> {
        if header.role != Role::Manager {
            return Err((
                "unexpected-role",
                format!(
                    "stream header role is {}, an agent talks only to a manager",
                    header.role
                ),
            ));
        }
        // Over plain TCP nothing is proven, and the header is all there is.
        if let Some(peer) = self.peer {
            if !header.host.eq_ignore_ascii_case(manager_name) {
                return Err((
                    "manager-name-mismatch",
                    format!(
                        "the manager calls itself `{}`, but agent.manager_name is `{manager_name}`",
                        header.host
                    ),
                ));
            }
            lb_proto::tls::check_peer_name(peer, &header.host)
                .map_err(|e| ("peer-name-mismatch", e.to_string()))?;
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        message: Message,
        stream: &mut Stream,
        context: &SettingsContext<'_>,
    ) -> Result<(), SessionError> {
        if let Err(stale) = self.guard.check(message.seq()) {
            tracing::warn!(%stale, message = message.name(), "ignored a stale message from the manager");
            return Ok(());
        }
        match message {
            Message::SettingsRequest(request) => {
                tracing::info!(id = request.id, kind = ?request.kind, application = ?request.application, "settings requested");
                stream.send(answer(&request, context)).await?;
            }
            Message::TunnelSources(sources) => {
                tracing::debug!(sources = ?sources.addresses, "the nodes' tunnel sources");
                self.tunnel_sources = Some(sources.addresses);
            }
            Message::Error(error) => {
                tracing::warn!(
                    code = %error.code,
                    rejected_seq = ?error.rejected_seq,
                    text = %error.text,
                    "the manager rejected a message"
                );
            }
            other => {
                tracing::warn!(
                    message = other.name(),
                    "unexpected message from the manager"
                );
                let reply = error_reply(
                    "unexpected-message",
                    Some(other.seq()),
                    format!("<{}> is not a message an agent accepts", other.name()),
                );
                stream.send(reply.into()).await?;
            }
        }
        Ok(())
    }
}

/// Test support: `LB_AGENT_TEST_STALL=reads` makes the agent stop reading
/// its stream once the manager's header is checked, as an agent whose
/// reader hung would (it goes on reporting). Builds without the
/// `test-support` feature have no such switch.
fn stalls_reads() -> bool {
    #[cfg(feature = "test-support")]
    {
        std::env::var("LB_AGENT_TEST_STALL").is_ok_and(|v| v == "reads")
    }
    #[cfg(not(feature = "test-support"))]
    {
        false
    }
}

fn set_user_timeout(tcp: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    // Clamped to `c_uint::MAX` milliseconds by socket2.
    socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout))
}

fn error_reply(code: &str, rejected_seq: Option<u64>, text: String) -> ErrorMessage {
    ErrorMessage {
        seq: 0,
        code: code.to_owned(),
        rejected_seq,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_start_is_clock_or_above_last() {
        let mut clock = SeqClock::default();
        let first = clock.stream_start();
        assert!(first > 1_600_000_000_000_000, "{first}"); // microseconds
        clock.sent(u64::MAX / 2);
        assert_eq!(clock.stream_start(), u64::MAX / 2 + 1);
        // A smaller `sent` never moves it back.
        clock.sent(5);
        assert_eq!(clock.stream_start(), u64::MAX / 2 + 1);
    }
}
