//! Discovery announcements: with `[discovery] enabled = true` the agent
//! sends a signed `<announce>` datagram (see [`lb_proto::announce`]) every
//! interval to a broadcast address or multicast group of its segment, so a
//! manager that was never told about this server learns it. The stream to
//! the configured manager is unaffected; announcements are never answered.
//!
//! Each datagram is signed with this host's TLS key and carries its
//! certificate, so a manager trusts it exactly as far as it trusts the
//! host's stream. The key and certificate are read again before every
//! announcement, so renewed certificates take effect without a restart.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use lb_proto::{
    Hello,
    announce::{Announce, AnnounceError, AnnounceSigner},
    tls::{Identity, Pki, TlsError},
};
use tokio::{net::UdpSocket, sync::watch, task::JoinHandle, time::MissedTickBehavior};

use crate::config::{AgentConfig, DiscoveryConfig};

/// Why an announcement could not go out.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The host's key or certificate cannot make an announcement.
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    /// The key and certificate could not be read from `tls_dir`.
    #[error("cannot load this host's TLS credentials for announcements: {0}")]
    Credentials(#[source] Box<TlsError>),
    /// No UDP socket could be opened or set up for the target.
    #[error("cannot open a UDP socket to announce to {target}: {source}; check discovery.address")]
    Socket {
        /// discovery.address.
        target: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Sending failed (no route to the segment, a firewall, ...).
    #[error(
        "cannot send the announcement to {target}: {source}; check that this host has a route \
         to discovery.address (a broadcast needs an interface with a broadcast address)"
    )]
    Send {
        /// discovery.address.
        target: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Opens a UDP socket for announcements to `target`: `SO_BROADCAST` for an
/// IPv4 address that is not multicast (a limited or directed broadcast
/// needs it; a unicast target does not mind), and a multicast TTL of 1 for
/// an IPv4 group so announcements stay on the segment (IPv6 multicast hops
/// default to 1).
pub async fn socket_for(target: SocketAddr) -> Result<UdpSocket, DiscoveryError> {
    let error = |source| DiscoveryError::Socket { target, source };
    let any = match target.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))
        .await
        .map_err(error)?;
    if let IpAddr::V4(ip) = target.ip() {
        if ip.is_multicast() {
            socket.set_multicast_ttl_v4(1).map_err(error)?;
        } else {
            socket.set_broadcast(true).map_err(error)?;
        }
    }
    Ok(socket)
}

/// Signs what `hello` says with `identity` (the current time, a fresh
/// nonce) and sends it once to `target` from a new socket. Returns the
/// datagram's size.
pub async fn announce_once(
    target: SocketAddr,
    identity: &Identity,
    hello: &Hello,
) -> Result<usize, DiscoveryError> {
    let signer = AnnounceSigner::new(identity)?;
    let socket = socket_for(target).await?;
    send(&socket, target, &signer, &Announce::from_hello(hello)).await
}

/// Signs `template` now and sends it on `socket`.
async fn send(
    socket: &UdpSocket,
    target: SocketAddr,
    signer: &AnnounceSigner,
    template: &Announce,
) -> Result<usize, DiscoveryError> {
    let datagram = signer.sign(template, unix_ms())?;
    socket
        .send_to(&datagram, target)
        .await
        .map_err(|source| DiscoveryError::Send { target, source })
}

/// Starts announcing `hello` as `config` says, until `shutdown` becomes
/// `true`; `None` when discovery is disabled (or, which validation already
/// refuses, there is no `tls_dir` to sign with).
pub fn spawn(
    config: &AgentConfig,
    hello: Hello,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !config.discovery.enabled {
        return None;
    }
    let Some(tls_dir) = config.tls_dir.clone() else {
        tracing::error!(
            "discovery.enabled needs agent.tls_dir to sign announcements; not announcing"
        );
        return None;
    };
    Some(tokio::spawn(run(
        config.discovery.clone(),
        tls_dir,
        hello,
        shutdown,
    )))
}

/// Announces `hello` every `config.interval` (the first at once), loading
/// this host's identity from `tls_dir` each time, until `shutdown` becomes
/// `true` or its sender goes away. Failures are logged (once when they
/// start, again when announcements go out anew) and retried at the next
/// interval.
pub async fn run(
    config: DiscoveryConfig,
    tls_dir: PathBuf,
    hello: Hello,
    mut shutdown: watch::Receiver<bool>,
) {
    let target = config.address;
    let template = Announce::from_hello(&hello);
    let pki = Pki::new(&tls_dir);
    let mut signer: Option<AnnounceSigner> = None;
    let mut socket: Option<UdpSocket> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(
        %target,
        host = %hello.host,
        spare = hello.spare,
        interval_ms = millis(config.interval),
        "announcing this server for discovery"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        }
        if *shutdown.borrow() {
            return;
        }
        match load_signer(&pki, &hello.host) {
            Ok(fresh) => signer = Some(fresh),
            Err(error) if signer.is_some() => {
                tracing::warn!(%error, "cannot reload TLS credentials; announcing with the ones loaded before");
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%target, %error, "cannot announce this server");
                }
                failing = true;
                continue;
            }
        }
        let Some(signer) = &signer else { continue };
        let result = match &socket {
            Some(open) => send(open, target, signer, &template).await,
            None => match socket_for(target).await {
                Ok(open) => {
                    let sent = send(&open, target, signer, &template).await;
                    socket = Some(open);
                    sent
                }
                Err(error) => Err(error),
            },
        };
        match result {
            Ok(bytes) => {
                if failing {
                    tracing::info!(%target, "announcements are going out again");
                }
                failing = false;
                tracing::debug!(%target, bytes, "announcement sent");
            }
            Err(error) => {
                if failing {
                    tracing::debug!(%target, %error, "announcement failed again");
                } else {
                    tracing::warn!(%target, %error, "cannot announce this server; retrying every interval");
                }
                failing = true;
                // A fresh socket next time (the route or interface may have changed).
                socket = None;
            }
        }
    }
}

fn load_signer(pki: &Pki, host: &str) -> Result<AnnounceSigner, DiscoveryError> {
    let identity = pki
        .load_identity(host)
        .map_err(|e| DiscoveryError::Credentials(Box::new(e)))?;
    Ok(AnnounceSigner::new(&identity)?)
}

use lb_proto::time::{millis, unix_ms};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_proto::{
        Application, Protocol,
        announce::AnnounceVerifier,
        tls::{Role, Validity},
    };

    use super::*;

    const DAY: Duration = Duration::from_hours(24);

    fn hello() -> Hello {
        Hello {
            seq: 0,
            host: "web-1".into(),
            agent_version: "test".into(),
            cores: 2.0,
            spare: true,
            applications: vec![Application {
                name: "web".into(),
                protocol: Protocol::Tcp,
                ports: vec![80],
                probe: "tcp".into(),
            }],
        }
    }

    fn pki(dir: &std::path::Path) -> Pki {
        let pki = Pki::new(dir);
        pki.init_ca("test-ca", DAY, false).expect("ca");
        pki.issue("web-1", Role::Client, &[], Validity::from_now(DAY))
            .expect("cert");
        pki
    }

    #[tokio::test]
    async fn socket_options_follow_the_target() {
        let broadcast = socket_for("255.255.255.255:7445".parse().expect("addr"))
            .await
            .expect("socket");
        assert!(broadcast.broadcast().expect("SO_BROADCAST"));
        let multicast = socket_for("239.255.0.45:7445".parse().expect("addr"))
            .await
            .expect("socket");
        assert_eq!(multicast.multicast_ttl_v4().expect("ttl"), 1);
        assert!(!multicast.broadcast().expect("SO_BROADCAST"));
    }

    #[tokio::test]
    async fn one_announcement_verifies_at_the_receiver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path());
        let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let target = receiver.local_addr().expect("addr");
        let identity = pki.load_identity("web-1").expect("identity");
        let sent = announce_once(target, &identity, &hello())
            .await
            .expect("sent");
        let mut buf = vec![0u8; 8192];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), receiver.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("received");
        assert_eq!(n, sent);
        let mut verifier =
            AnnounceVerifier::new(&pki.load_ca_cert().expect("ca")).expect("verifier");
        let ok = verifier.verify(&buf[..n], unix_ms()).expect("verifies");
        assert_eq!(ok.announce.hello().applications[0].name, "web");
        assert!(ok.announce.spare);
    }

    #[tokio::test]
    async fn run_announces_every_interval_until_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = pki(dir.path());
        let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(run(
            DiscoveryConfig {
                enabled: true,
                address: receiver.local_addr().expect("addr"),
                interval: Duration::from_millis(50),
            },
            pki.dir().to_path_buf(),
            hello(),
            shutdown,
        ));
        let mut buf = vec![0u8; 8192];
        let mut nonces = std::collections::BTreeSet::new();
        let mut verifier =
            AnnounceVerifier::new(&pki.load_ca_cert().expect("ca")).expect("verifier");
        for _ in 0..3 {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), receiver.recv_from(&mut buf))
                .await
                .expect("in time")
                .expect("received");
            let ok = verifier.verify(&buf[..n], unix_ms()).expect("verifies");
            nonces.insert(ok.announce.nonce);
        }
        assert_eq!(nonces.len(), 3, "a fresh nonce every time");
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .expect("task");
    }
}
