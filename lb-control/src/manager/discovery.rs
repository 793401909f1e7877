//! Discovery: the manager listens for agents' signed UDP announcements
//! (`lb_proto::announce`) on its segment, by broadcast or a multicast group,
//! and puts every verified one into the server database, so servers it was
//! never told about become known (*announced*: not connected, monitor
//! pending) until their agent's stream upgrades the record.
//!
//! ```toml
//! [manager.discovery]
//! listen = "0.0.0.0:7445"     # UDP; 0.0.0.0 receives broadcasts
//! group = "239.255.0.45"      # optional multicast group to join
//! interface = "10.0.0.1"      # optional: the IPv4 interface to join it on
//! ```
//!
//! Nothing but a valid signature by a certificate of the project CA, naming
//! the announced host, recent and not replayed, changes the database; every
//! refused datagram is counted by reason ([`super::ManagerStats`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_proto::{
    announce::{AnnounceVerifier, MAX_DATAGRAM_BYTES, Rejected},
    tls::{Pki, TlsError},
};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::agents::{Manager, log_events};

/// A refusal reason is logged at most once per this period (the others are
/// counted, and their number is logged with the next one).
const REJECTION_LOG_PERIOD: Duration = Duration::from_secs(10);

/// `[manager.discovery]`: where announcements are received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// UDP address to receive on, e.g. `0.0.0.0:7445` (an unspecified
    /// address is needed to receive broadcasts and multicast; port 0 picks
    /// a free port, for tests).
    pub listen: SocketAddr,
    /// A multicast group to join (same family as `listen`), e.g.
    /// `239.255.0.45`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<IpAddr>,
    /// The IPv4 address of the interface to join `group` on (default: the
    /// kernel's choice, by the routing table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<Ipv4Addr>,
    /// Datagrams a second taken from one source address (bursts of four
    /// times as many); the rest are dropped unread. An agent announces
    /// every second at most.
    #[serde(default = "default_rate_per_source")]
    pub rate_per_source: u32,
}

fn default_rate_per_source() -> u32 {
    50
}

impl DiscoveryConfig {
    /// Checks what serde cannot; `has_ca` tells whether the manager has a
    /// `tls_dir`, whose CA verifies announcements.
    pub fn validate(&self, has_ca: bool) -> Result<(), DiscoveryConfigError> {
        if !has_ca {
            return Err(DiscoveryConfigError::NoCa);
        }
        if let Some(group) = self.group {
            if !group.is_multicast() {
                return Err(DiscoveryConfigError::NotMulticast(group));
            }
            if group.is_ipv4() != self.listen.is_ipv4() {
                return Err(DiscoveryConfigError::FamilyMismatch {
                    group,
                    listen: self.listen,
                });
            }
        }
        if self.interface.is_some() && !matches!(self.group, Some(IpAddr::V4(_))) {
            return Err(DiscoveryConfigError::InterfaceWithoutGroup);
        }
        Ok(())
    }
}

/// A `[manager.discovery]` section that cannot work; each says what to
/// write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryConfigError {
    #[error(
        "manager.discovery needs manager.tls_dir: announcements are verified against the project CA in its ca.pem"
    )]
    NoCa,
    #[error(
        "manager.discovery.group {0} is not a multicast address: write a group such as 239.255.0.45 (IPv4) or ff02::1:45 (IPv6), or leave it out to receive broadcasts"
    )]
    NotMulticast(IpAddr),
    #[error(
        "manager.discovery.group {group} and listen {listen} are of different address families: listen on 0.0.0.0:PORT for an IPv4 group, [::]:PORT for an IPv6 one"
    )]
    FamilyMismatch { group: IpAddr, listen: SocketAddr },
    #[error(
        "manager.discovery.interface is only used to join an IPv4 group: set group, or remove interface"
    )]
    InterfaceWithoutGroup,
}

/// Why discovery cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No `tls_dir`, so no CA to verify announcements with.
    #[error(
        "manager.discovery needs manager.tls_dir: announcements are verified against the project CA"
    )]
    NoCa,
    /// The CA certificate cannot be read or used.
    #[error("manager.discovery: {0}")]
    Ca(#[source] TlsError),
    /// The UDP socket cannot be bound.
    #[error(
        "manager.discovery: cannot listen on UDP {addr}: {source}; is another process using the port?"
    )]
    Bind {
        /// manager.discovery.listen.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The multicast group cannot be joined.
    #[error(
        "manager.discovery: cannot join multicast group {group}: {source}; check manager.discovery.interface and that the host has a multicast route"
    )]
    Join {
        /// manager.discovery.group.
        group: IpAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The manager's discovery counters and bound address.
#[derive(Debug, Default)]
pub(super) struct DiscoveryState {
    bound: OnceLock<SocketAddr>,
    accepted: AtomicU64,
    rejected: [AtomicU64; Rejected::REASONS.len()],
    /// Dropped unread: over their source's rate.
    rate_limited: AtomicU64,
    /// Dropped unread: the verifier's queue was full.
    overloaded: AtomicU64,
}

impl DiscoveryState {
    /// Announcements accepted.
    pub(super) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Datagrams dropped unread: over their source's rate, and with the
    /// verifier's queue full.
    pub(super) fn dropped(&self) -> (u64, u64) {
        (
            self.rate_limited.load(Ordering::Relaxed),
            self.overloaded.load(Ordering::Relaxed),
        )
    }

    /// Datagrams refused, by reason (every reason, zeros included).
    pub(super) fn rejected(&self) -> BTreeMap<String, u64> {
        Rejected::REASONS
            .iter()
            .zip(&self.rejected)
            .map(|(reason, n)| ((*reason).to_owned(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Manager {
    /// The UDP address discovery listens on, once [`start`](Self::start)
    /// bound it; `None` without `[manager.discovery]`.
    pub fn discovery_addr(&self) -> Option<SocketAddr> {
        self.discovery.bound.get().copied()
    }

    /// Binds the discovery socket, joins the group and spawns the receiver.
    /// Returns the bound address.
    pub(super) async fn start_discovery(
        self: &Arc<Self>,
        config: &DiscoveryConfig,
    ) -> Result<SocketAddr, DiscoveryError> {
        let dir = self.config.tls_dir.as_ref().ok_or(DiscoveryError::NoCa)?;
        let ca = Pki::new(dir).load_ca_cert().map_err(DiscoveryError::Ca)?;
        let mut verifier = AnnounceVerifier::new(&ca).map_err(DiscoveryError::Ca)?;
        let addr = config.listen;
        let bind = |source| DiscoveryError::Bind { addr, source };
        let socket = UdpSocket::bind(addr).await.map_err(bind)?;
        let bound = socket.local_addr().map_err(bind)?;
        if let Some(group) = config.group {
            let join = |source| DiscoveryError::Join { group, source };
            match group {
                IpAddr::V4(g) => socket
                    .join_multicast_v4(g, config.interface.unwrap_or(Ipv4Addr::UNSPECIFIED))
                    .map_err(join)?,
                IpAddr::V6(g) => socket.join_multicast_v6(&g, 0).map_err(join)?,
            }
        }
        // Set once: `start` runs once per manager.
        let _ = self.discovery.bound.set(bound);
        info!(
            addr = %bound,
            group = config.group.map(|g| g.to_string()).unwrap_or_default(),
            "manager listening for discovery announcements"
        );
        let (queue, datagrams) = std::sync::mpsc::sync_channel(VERIFY_QUEUE);
        let me = self.clone();
        // Signatures and chains are checked off the runtime, whose one
        // thread also carries every agent stream.
        std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || me.verify_loop(&mut verifier, &datagrams))
            .map_err(bind)?;
        let me = self.clone();
        let rate = config.rate_per_source;
        tokio::spawn(async move { me.receive_loop(socket, queue, rate).await });
        Ok(bound)
    }

    /// Receives datagrams until the task is dropped: each source within
    /// its rate, queued for the verifier while its queue has room.
    async fn receive_loop(
        self: Arc<Self>,
        socket: UdpSocket,
        queue: std::sync::mpsc::SyncSender<(Vec<u8>, SocketAddr)>,
        rate: u32,
    ) {
        // One byte more than allowed, so an oversized datagram shows as one.
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        let mut sources = SourceRates::new(rate);
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "discovery receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !sources.admit(from.ip(), Instant::now()) {
                self.discovery.rate_limited.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let datagram = buf.get(..n).unwrap_or_default().to_vec();
            match queue.try_send((datagram, from)) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    self.discovery.overloaded.fetch_add(1, Ordering::Relaxed);
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    warn!("discovery verifier stopped; announcements are no longer taken");
                    return;
                }
            }
        }
    }

    /// Verifies and records queued datagrams until the queue is closed (on
    /// its own thread).
    fn verify_loop(
        &self,
        verifier: &mut AnnounceVerifier,
        datagrams: &std::sync::mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    ) {
        let mut log = RejectionLog::default();
        while let Ok((datagram, from)) = datagrams.recv() {
            match verifier.verify(&datagram, unix_ms()) {
                Ok(signed) => {
                    self.discovery.accepted.fetch_add(1, Ordering::Relaxed);
                    let host = signed.announce.host.clone();
                    debug!(
                        %from,
                        server = %host,
                        spare = signed.announce.spare,
                        fingerprint = %signed.identity.fingerprint_sha256,
                        "announcement accepted"
                    );
                    if self
                        .identity(&host, &signed.identity.fingerprint_sha256)
                        .is_err()
                    {
                        continue;
                    }
                    let events = self.db.blocking_lock().announced(
                        signed.announce.hello(),
                        &signed.identity.fingerprint_sha256,
                        Instant::now(),
                    );
                    log_events(&events);
                }
                Err(rejected) => {
                    if let Some(counter) = self.discovery.rejected.get(rejected.index()) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    log.said(&rejected, from, datagram.len());
                }
            }
        }
    }
}

/// Datagrams waiting for the verifier; more are dropped unread (counted).
const VERIFY_QUEUE: usize = 1024;
/// Sources remembered by the rate limit; past this, the quiet ones are
/// forgotten.
const MAX_SOURCES: usize = 65_536;

/// A token bucket per source address.
#[derive(Debug)]
struct SourceRates {
    rate: f64,
    burst: f64,
    buckets: std::collections::HashMap<IpAddr, (f64, Instant)>,
}

impl SourceRates {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(rate) * 4.0,
            buckets: std::collections::HashMap::new(),
        }
    }

    /// Whether one more datagram from `source` is within its rate.
    fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES {
            let burst = self.burst;
            self.buckets.retain(|_, (tokens, _)| *tokens < burst);
        }
        let (rate, burst) = (self.rate, self.burst);
        let (tokens, at) = self.buckets.entry(source).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Each refusal reason logged at most once a [`REJECTION_LOG_PERIOD`],
/// with how many were not.
#[derive(Debug, Default)]
struct RejectionLog {
    last: [Option<Instant>; Rejected::REASONS.len()],
    suppressed: [u64; Rejected::REASONS.len()],
}

impl RejectionLog {
    fn said(&mut self, rejected: &Rejected, from: SocketAddr, bytes: usize) {
        let index = rejected.index();
        let now = Instant::now();
        let (Some(last), Some(skipped)) =
            (self.last.get_mut(index), self.suppressed.get_mut(index))
        else {
            return;
        };
        if last.is_some_and(|t| now.duration_since(t) < REJECTION_LOG_PERIOD) {
            *skipped += 1;
            return;
        }
        warn!(
            %from,
            bytes,
            reason = rejected.reason(),
            error = %rejected,
            suppressed = *skipped,
            "announcement rejected"
        );
        *last = Some(now);
        *skipped = 0;
    }
}

use lb_proto::time::unix_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<DiscoveryConfig, toml::de::Error> {
        toml::from_str::<DiscoveryConfig>(text)
    }

    #[test]
    fn config_parses_and_validates() {
        let plain = config("listen = \"0.0.0.0:7445\"").expect("parses");
        assert_eq!(plain.group, None);
        plain.validate(true).expect("valid");
        assert!(
            plain
                .validate(false)
                .expect_err("needs a CA")
                .to_string()
                .contains("tls_dir")
        );
        let group =
            config("listen = \"0.0.0.0:7445\"\ngroup = \"239.255.0.45\"\ninterface = \"10.0.0.1\"")
                .expect("parses");
        group.validate(true).expect("valid");
        let v6 = config("listen = \"[::]:7445\"\ngroup = \"ff02::1:45\"").expect("parses");
        v6.validate(true).expect("valid");
        for (text, says) in [
            (
                "listen = \"0.0.0.0:7445\"\ngroup = \"10.0.0.1\"",
                "not a multicast",
            ),
            (
                "listen = \"0.0.0.0:7445\"\ngroup = \"ff02::1:45\"",
                "families",
            ),
            (
                "listen = \"0.0.0.0:7445\"\ninterface = \"10.0.0.1\"",
                "interface",
            ),
        ] {
            let err = config(text)
                .expect("parses")
                .validate(true)
                .expect_err(text)
                .to_string();
            assert!(err.contains(says), "{err}");
        }
        assert!(config("listen = \"0.0.0.0:7445\"\ngorup = \"239.255.0.45\"").is_err());
    }

    #[test]
    fn each_source_is_held_to_its_rate() {
        let mut rates = SourceRates::new(10);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let admitted = (0..100).filter(|_| rates.admit(a, t0)).count();
        assert_eq!(admitted, 40, "a burst of four times the rate");
        assert!(rates.admit(b, t0), "another source has its own bucket");
        assert!(!rates.admit(a, t0));
        assert!(
            rates.admit(a, t0 + Duration::from_millis(100)),
            "refilled at the rate"
        );
        assert!(!rates.admit(a, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn rejected_counters_name_every_reason() {
        let state = DiscoveryState::default();
        state.rejected[1].fetch_add(2, Ordering::Relaxed);
        let counts = state.rejected();
        assert_eq!(counts.len(), Rejected::REASONS.len());
        assert_eq!(counts.get("malformed"), Some(&2));
        assert_eq!(counts.get("bad-signature"), Some(&0));
        assert_eq!(state.accepted(), 0);
    }
}
