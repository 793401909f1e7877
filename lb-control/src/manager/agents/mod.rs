//! The manager role: agents stream hello and reports to it over mutual TLS;
//! it keeps the server database and asks agents for their settings.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_proto::{
    Decoder, ErrorMessage, Message, ProtoError, Role, SequenceGuard, SettingsKind,
    tls::{self, Pki},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Mutex, mpsc, oneshot},
};
use tracing::{debug, info, warn};

use self::session::{PushError, SEND_QUEUE, SessionTx, WRITE_TIMEOUT, write_stream};
use super::{
    db::{DbEvent, MonitorView, ServerDb, canonical},
    events::EventLog,
};
use crate::net::{ConnectionLimits, HANDSHAKE_TIMEOUT, HELLO_TIMEOUT, MessageReader};

mod config;
mod pins;
mod rejections;
mod session;
mod settings;
mod tunnel;

pub use config::{ManagerConfig, ManagerConfigError, RemoteNodeConfig};
pub use rejections::Rejection;
use rejections::Rejections;

/// Why an agent stream ended before its end of stream.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("message before the stream header")]
    NoHeader,
    #[error("no stream header and hello within {0:?}")]
    NoHello(Duration),
    #[error("`{0}` presented a certificate other than the one pinned for it")]
    NotPinned(String),
    #[error("the agent's certificate is on the deny list")]
    Denied,
    #[error(
        "the agent stopped reading: its messages were not taken within {WRITE_TIMEOUT:?} or {SEND_QUEUE} queued"
    )]
    Stalled,
    #[error("role {0} is not an agent")]
    NotAgent(Role),
    #[error(transparent)]
    Name(#[from] tls::TlsError),
}

/// Errors starting the manager or asking an agent.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server `{0}` has no agent stream")]
    NotConnected(String),
    #[error("server `{0}`'s agent does not read its stream; the stream was dropped")]
    Stalled(String),
    #[error("server `{host}` did not answer the {kind:?} settings request within {waited:?}")]
    Timeout {
        host: String,
        kind: SettingsKind,
        waited: Duration,
    },
    #[error(
        "server `{host}` answered with a certificate fingerprint {claimed} but its stream presents {presented}"
    )]
    FingerprintMismatch {
        host: String,
        claimed: String,
        presented: String,
    },
    /// `[manager.discovery]` cannot start.
    #[error(transparent)]
    Discovery(#[from] super::discovery::DiscoveryError),
}

/// Counters of the manager (and, later, metrics).
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct ManagerStats {
    pub streams_accepted: u64,
    pub handshakes_refused: u64,
    /// Messages rejected on agent streams, whatever the reason: the sum
    /// of `messages_rejected_by_reason`.
    pub messages_rejected: u64,
    /// Messages rejected on agent streams, by reason (`malformed`,
    /// `message-too-large`, `out-of-sequence`, ...: every
    /// [`Rejection`]'s label, zeros included).
    #[serde(default)]
    pub messages_rejected_by_reason: BTreeMap<String, u64>,
    pub reports_accepted: u64,
    pub reports_stale: u64,
    /// Settings answers refused: for a request their host was not asked,
    /// or naming another host.
    #[serde(default)]
    pub settings_refused: u64,
    /// Hellos and announcements refused: their certificate is not the one
    /// the file pins for the host.
    #[serde(default)]
    pub identities_refused: u64,
    /// Discovery announcements verified and recorded.
    #[serde(default)]
    pub announcements_accepted: u64,
    /// Discovery datagrams refused, by reason (`malformed`, `stale`,
    /// `bad-signature`, ...: `lb_proto::announce::Rejected::REASONS`).
    #[serde(default)]
    pub announcements_rejected: BTreeMap<String, u64>,
    /// Discovery datagrams dropped unread: over their source's rate
    /// (`[manager.discovery] rate_per_source`).
    #[serde(default)]
    pub announcements_rate_limited: u64,
    /// Discovery datagrams dropped unread: the verifier was behind.
    #[serde(default)]
    pub announcements_overloaded: u64,
}

/// The manager: server database, live agent sessions, pending requests.
pub struct Manager {
    pub config: ManagerConfig,
    pub db: Mutex<ServerDb>,
    sessions: Mutex<HashMap<String, SessionTx>>,
    /// Settings requests waiting for their answer, by (host asked, id):
    /// only that host's own stream can answer one.
    pending: Mutex<HashMap<(String, u64), oneshot::Sender<Message>>>,
    /// What the manager decided and saw, for `lbctl events`.
    pub events: Arc<EventLog>,
    /// The certificate fingerprint the file pins for each host (lowercase
    /// hex), as the controller last read it.
    pins: std::sync::Mutex<HashMap<String, String>>,
    /// The fingerprint each host last presented that did not match its
    /// pin: what `lbctl server repin` records.
    refused_identities: std::sync::Mutex<HashMap<String, String>>,
    identities_refused: AtomicU64,
    /// Fingerprints no agent may use (`[manager] denied_fingerprints`), as
    /// the controller last read them.
    denied: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The nodes' tunnel sources, as the controller last read them.
    tunnel_sources: std::sync::Mutex<Vec<std::net::IpAddr>>,
    streams_accepted: AtomicU64,
    settings_refused: AtomicU64,
    handshakes_refused: AtomicU64,
    rejections: Rejections,
    reports_accepted: AtomicU64,
    reports_stale: AtomicU64,
    started: Instant,
    pub(super) discovery: super::discovery::DiscoveryState,
}

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 16 * 1024;
impl Manager {
    #[must_use]
    pub fn new(config: ManagerConfig) -> Arc<Self> {
        let events = Arc::new(EventLog::open(Some(&config.state_dir)));
        Arc::new(Self {
            config,
            db: Mutex::new(ServerDb::new()),
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            events,
            pins: std::sync::Mutex::new(HashMap::new()),
            refused_identities: std::sync::Mutex::new(HashMap::new()),
            identities_refused: AtomicU64::new(0),
            denied: std::sync::Mutex::new(std::collections::HashSet::new()),
            tunnel_sources: std::sync::Mutex::new(Vec::new()),
            streams_accepted: AtomicU64::new(0),
            settings_refused: AtomicU64::new(0),
            handshakes_refused: AtomicU64::new(0),
            rejections: Rejections::default(),
            reports_accepted: AtomicU64::new(0),
            reports_stale: AtomicU64::new(0),
            started: Instant::now(),
            discovery: super::discovery::DiscoveryState::default(),
        })
    }

    pub fn stats(&self) -> ManagerStats {
        ManagerStats {
            streams_accepted: self.streams_accepted.load(Ordering::Relaxed),
            handshakes_refused: self.handshakes_refused.load(Ordering::Relaxed),
            messages_rejected: self.rejections.total(),
            messages_rejected_by_reason: self.rejections.by_reason(),
            reports_accepted: self.reports_accepted.load(Ordering::Relaxed),
            reports_stale: self.reports_stale.load(Ordering::Relaxed),
            settings_refused: self.settings_refused.load(Ordering::Relaxed),
            identities_refused: self.identities_refused.load(Ordering::Relaxed),
            announcements_accepted: self.discovery.accepted(),
            announcements_rejected: self.discovery.rejected(),
            announcements_rate_limited: self.discovery.dropped().0,
            announcements_overloaded: self.discovery.dropped().1,
        }
    }

    /// The address `host`'s agent stream comes from, if it has one.
    pub async fn peer_of(&self, host: &str) -> Option<std::net::IpAddr> {
        let db = self.db.lock().await;
        db.get(host)
            .and_then(|r| r.peer)
            .map(|p| p.ip().to_canonical())
    }

    /// Every known server as the manager sees it.
    pub async fn views(&self) -> Vec<MonitorView> {
        let now = Instant::now();
        self.db.lock().await.iter().map(|r| r.view(now)).collect()
    }

    /// Binds the listener, then serves agents and sweeps for silent servers
    /// in background tasks. Returns the bound address.
    pub async fn start(self: Arc<Self>) -> Result<SocketAddr, ManagerError> {
        let tls = match (&self.config.tls_dir, self.config.insecure_plaintext) {
            (Some(dir), _) => {
                let pki = Pki::new(dir);
                let ca = pki.load_ca_cert()?;
                let identity = pki.load_identity(&self.config.name)?;
                Some(tls::server_config(&ca, &identity)?)
            }
            (None, true) => {
                warn!(
                    "manager.insecure_plaintext = true: agent streams are NOT authenticated or encrypted"
                );
                None
            }
            (None, false) => None,
        };
        let addr = self.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ManagerError::Listen { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ManagerError::Listen { addr, source })?;
        info!(addr = %bound, tls = tls.is_some(), "manager listening for agents");
        if let Some(discovery) = &self.config.discovery {
            self.start_discovery(discovery).await?;
        }
        let sweeper = self.clone();
        tokio::spawn(async move { sweeper.sweep_loop().await });
        let limits = ConnectionLimits {
            total: self.config.max_agent_connections,
            per_source: self.config.max_connections_per_source,
        };
        crate::net::spawn_accept_loop("agents", listener, limits, move |tcp, peer, slot| {
            let me = self.clone();
            let tls = tls.clone();
            async move {
                let _slot = slot;
                me.connection(tcp, peer, tls).await;
            }
        });
        Ok(bound)
    }

    async fn sweep_loop(self: Arc<Self>) {
        let period = Duration::from_millis((self.config.report_interval_ms / 2).max(50));
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let events = self
                .db
                .lock()
                .await
                .sweep(Instant::now(), self.config.silence());
            log_events(&events);
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) {
        match tls {
            Some(config) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls::accept(config, tcp)).await {
                    Ok(Ok((stream, identity))) => {
                        self.session(stream, peer, Some(identity)).await;
                    }
                    Ok(Err(e)) => {
                        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                        warn!(%peer, error = %e, "agent refused at the TLS handshake");
                    }
                    Err(_) => {
                        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                        debug!(%peer, "TLS handshake not finished in time; closed");
                    }
                }
            }
            None => self.session(tcp, peer, None).await,
        }
    }

    /// One agent stream: header, then messages until the end or an error.
    async fn session<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        identity: Option<tls::PeerIdentity>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.streams_accepted.fetch_add(1, Ordering::Relaxed);
        let (read, write) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<Message>(SEND_QUEUE);
        let stalled = Arc::new(tokio::sync::Notify::new());
        let writer = tokio::spawn(write_stream(
            self.config.name.clone(),
            write,
            rx,
            stalled.clone(),
        ));
        let tx = SessionTx {
            tx,
            stalled,
            fingerprint: identity
                .as_ref()
                .map(|i| pins::normal_fingerprint(&i.fingerprint_sha256))
                .unwrap_or_default(),
        };
        let mut host: Option<String> = None;
        let outcome = self
            .read_stream(read, peer, identity.as_ref(), &tx, &mut host)
            .await;
        if let Some(h) = &host {
            // Only the current stream's end disconnects the server: a
            // stream another one replaced ends without a say.
            let mut sessions = self.sessions.lock().await;
            let current = sessions.get(h).is_some_and(|s| s.tx.same_channel(&tx.tx));
            if current {
                sessions.remove(h);
            }
            drop(sessions);
            if current {
                let events = self.db.lock().await.disconnected(h);
                log_events(&events);
            }
        }
        if let Err(e) = outcome {
            warn!(%peer, host = host.as_deref().unwrap_or("-"), error = %e, "agent stream closed");
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Reads an agent stream's messages until its end; `host` is set once
    /// its header named an agent (with a certificate of that name).
    async fn read_stream<R: AsyncRead + Unpin>(
        &self,
        read: R,
        peer: SocketAddr,
        identity: Option<&tls::PeerIdentity>,
        tx: &SessionTx,
        host: &mut Option<String>,
    ) -> Result<(), StreamError> {
        let fingerprint = identity
            .map(|i| i.fingerprint_sha256.clone())
            .unwrap_or_default();
        let mut messages = MessageReader::new(read, Decoder::new(), READ_CHUNK);
        let mut guard = SequenceGuard::new();
        loop {
            // Until its header and first message, a stream has a deadline;
            // a session that stopped taking messages ends at once.
            let waiting_hello = host.is_none();
            let read = async {
                if waiting_hello {
                    tokio::time::timeout(HELLO_TIMEOUT, messages.next())
                        .await
                        .map_err(|_| StreamError::NoHello(HELLO_TIMEOUT))
                } else {
                    Ok(messages.next().await)
                }
            };
            let next = tokio::select! {
                next = read => next?,
                () = tx.stalled.notified() => {
                    return Err(if self.denied(&tx.fingerprint) {
                        StreamError::Denied
                    } else {
                        StreamError::Stalled
                    });
                }
            };
            let Some(next) = next.map_err(StreamError::Read)? else {
                break;
            };
            let message = match next {
                Ok(m) => m,
                Err(e) => {
                    if let Some(reason) = Rejection::of(&e) {
                        self.rejections.count(reason);
                    }
                    warn!(%peer, host = host.as_deref().unwrap_or("-"), code = e.code(), error = %e, "message rejected");
                    let _ = tx.push(ErrorMessage::from_error(&e).into());
                    if e.is_fatal() {
                        return Err(e.into());
                    }
                    continue;
                }
            };
            if host.is_none() {
                *host = Some(self.admit(messages.decoder(), identity, tx).await?);
            }
            let Some(h) = host.as_deref() else { continue };
            if let Err(stale) = guard.check(message.seq()) {
                self.rejections.count(Rejection::OutOfSequence);
                warn!(host = %h, error = %stale, "replayed or stale message ignored");
                continue;
            }
            self.handle(h, peer, &fingerprint, message, tx).await?;
        }
        Ok(())
    }

    /// The stream header names the sender; it must be an agent whose
    /// certificate carries that name. Returns the name, its session
    /// registered.
    async fn admit(
        &self,
        decoder: &Decoder,
        identity: Option<&tls::PeerIdentity>,
        tx: &SessionTx,
    ) -> Result<String, StreamError> {
        let Some(header) = decoder.header().cloned() else {
            return Err(StreamError::NoHeader);
        };
        if header.role != Role::Agent {
            return Err(StreamError::NotAgent(header.role));
        }
        if let Some(id) = identity
            && let Err(e) = tls::check_peer_name(id, &header.host)
        {
            self.rejections.count(Rejection::NameMismatch);
            let _ = tx.push(reject(Rejection::NameMismatch.label(), &e.to_string()));
            return Err(e.into());
        }
        // The certificate's name, spelt one way (TLS compared it without
        // case).
        let host = canonical(&header.host);
        self.sessions.lock().await.insert(host.clone(), tx.clone());
        Ok(host)
    }

    async fn handle(
        &self,
        host: &str,
        peer: SocketAddr,
        fingerprint: &str,
        message: Message,
        tx: &SessionTx,
    ) -> Result<(), StreamError> {
        match message {
            Message::Hello(hello) => {
                match self.identity(host, fingerprint) {
                    Ok(()) => {}
                    Err(pins::Refused::Denied) => {
                        let text = "this certificate is on the manager's deny list (manager.denied_fingerprints)";
                        let _ = tx.push(reject("certificate-denied", text));
                        return Err(StreamError::Denied);
                    }
                    Err(pins::Refused::NotPinned) => {
                        let text = format!(
                            "the certificate presented for `{host}` is not the one pinned for it; an operator re-pins it with `lbctl server repin {host}`"
                        );
                        let _ = tx.push(reject("fingerprint-mismatch", &text));
                        return Err(StreamError::NotPinned(host.to_owned()));
                    }
                }
                if !hello.host.eq_ignore_ascii_case(host) {
                    self.rejections.count(Rejection::NameMismatch);
                    let _ = tx.push(reject(
                        Rejection::NameMismatch.label(),
                        &format!("hello from `{}` on the stream of `{host}`", hello.host),
                    ));
                    return Ok(());
                }
                let events =
                    self.db
                        .lock()
                        .await
                        .hello(hello, Some(peer), fingerprint, Instant::now());
                log_events(&events);
                self.send_tunnel_sources(tx);
            }
            Message::Report(report) => {
                if !report.host.eq_ignore_ascii_case(host) {
                    self.rejections.count(Rejection::NameMismatch);
                    return Ok(());
                }
                match self.db.lock().await.report(report, Instant::now()) {
                    Ok(events) => {
                        self.reports_accepted.fetch_add(1, Ordering::Relaxed);
                        log_events(&events);
                    }
                    Err(e) => {
                        self.reports_stale.fetch_add(1, Ordering::Relaxed);
                        warn!(host, error = %e, "report ignored");
                    }
                }
            }
            Message::ConnectionSettings(ref s) => {
                self.answer(host, &s.host, s.id, message.clone()).await;
            }
            Message::AuthSettings(ref s) => {
                self.answer(host, &s.host, s.id, message.clone()).await;
            }
            Message::Error(e) => {
                warn!(host, code = %e.code, text = %e.text, "agent reported an error");
            }
            other => {
                self.rejections.count(Rejection::Unexpected);
                let _ = tx.push(reject(
                    Rejection::Unexpected.label(),
                    &format!("`{}` is not for the manager", other.name()),
                ));
            }
        }
        Ok(())
    }

    /// Time since the manager started (failure verdicts wait for a grace
    /// period after a start).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

fn reject(code: &str, text: &str) -> Message {
    ErrorMessage {
        seq: 0,
        code: code.into(),
        text: text.into(),
        rejected_seq: None,
    }
    .into()
}

pub(super) fn log_events(events: &[DbEvent]) {
    for e in events {
        match e {
            DbEvent::Connected { host } => info!(server = %host, "agent connected"),
            DbEvent::Disconnected { host } => {
                info!(server = %host, "agent disconnected; the server keeps serving");
            }
            DbEvent::Announced { host } => info!(server = %host, "spare server announced"),
            DbEvent::Discovered { host } => info!(
                server = %host,
                "server discovered by its announcement; waiting for its agent stream"
            ),
            DbEvent::Unmonitored { host, silent_for } => info!(
                server = %host,
                silent_ms = lb_proto::time::millis(*silent_for),
                "server unmonitored: no report; it keeps serving and is left out of decisions"
            ),
            DbEvent::Monitored { host } => info!(server = %host, "server monitored again"),
        }
    }
}
