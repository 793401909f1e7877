//! Discovery over loopback: an in-process manager listens for announcements;
//! the agent library's announcer sends real, signed datagrams. A verified
//! announcement puts an unknown server into the database (announced:
//! spare, pending, not connected) and a later stream upgrades it; forged,
//! tampered, replayed, malformed and oversized datagrams change nothing and
//! are counted by reason.
#![expect(
    clippy::float_cmp,
    reason = "the figures compared are the ones announced, exactly"
)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

mod common;

use lb_control::manager::{Manager, ManagerConfig, db::Monitor, discovery::DiscoveryConfig};
use lb_proto::{
    Application, Encoder, Hello, Message, Protocol, Role, StreamHeader,
    announce::{Announce, AnnounceSigner},
    tls::{self, Pki, Role as CertRole, Validity},
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, net::UdpSocket};

const DAY: Duration = Duration::from_hours(24);
const WAIT: Duration = Duration::from_secs(5);

struct Setup {
    _dir: tempfile::TempDir,
    pki: Pki,
    stranger: Pki,
    manager: Arc<Manager>,
    stream_addr: SocketAddr,
    discovery: SocketAddr,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path().join("pki"));
    pki.init_ca("test-ca", DAY, false).expect("ca");
    pki.issue("manager", CertRole::Server, &[], Validity::from_now(DAY))
        .expect("manager cert");
    for host in ["web-1", "web-2"] {
        pki.issue(host, CertRole::Client, &[], Validity::from_now(DAY))
            .expect("agent cert");
    }
    let stranger = Pki::new(dir.path().join("stranger"));
    stranger.init_ca("stranger-ca", DAY, false).expect("ca");
    stranger
        .issue("web-3", CertRole::Client, &[], Validity::from_now(DAY))
        .expect("stranger cert");
    let manager = Manager::new(ManagerConfig {
        tls_dir: Some(pki.dir().to_path_buf()),
        report_interval_ms: 100,
        state_dir: dir.path().to_path_buf(),
        discovery: Some(DiscoveryConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            group: None,
            interface: None,
            rate_per_source: 50,
        }),
        ..ManagerConfig::new("127.0.0.1:0".parse().expect("addr"), "manager")
    });
    manager.config.validate().expect("valid config");
    let stream_addr = manager.clone().start().await.expect("manager starts");
    let discovery = manager.discovery_addr().expect("discovery is bound");
    assert_ne!(discovery.port(), 0);
    Setup {
        _dir: dir,
        pki,
        stranger,
        manager,
        stream_addr,
        discovery,
    }
}

fn hello(host: &str, spare: bool) -> Hello {
    Hello {
        seq: 0,
        host: host.into(),
        agent_version: "test".into(),
        cores: 2.5,
        spare,
        applications: vec![Application {
            name: "web".into(),
            protocol: Protocol::Tcp,
            ports: vec![80, 443],
            probe: "tcp connect".into(),
        }],
    }
}

fn unix_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("ms")
}

/// Polls `check` until it holds or [`WAIT`] passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rejected(manager: &Manager, reason: &str) -> u64 {
    manager
        .stats()
        .announcements_rejected
        .get(reason)
        .copied()
        .unwrap_or_default()
}

async fn send_raw(to: SocketAddr, bytes: &[u8]) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(bytes, to).await.expect("send");
}

#[tokio::test]
async fn announced_server_appears_and_a_stream_upgrades_it() {
    let s = setup().await;
    let identity = s.pki.load_identity("web-1").expect("identity");
    let sent = lb_agent::discovery::announce_once(s.discovery, &identity, &hello("web-1", true))
        .await
        .expect("announced");
    assert!(sent <= lb_proto::announce::MAX_DATAGRAM_BYTES);

    let manager = s.manager.clone();
    eventually("web-1 discovered", || {
        let manager = manager.clone();
        async move { manager.views().await.iter().any(|v| v.host == "web-1") }
    })
    .await;
    let views = s.manager.views().await;
    let view = views.iter().find(|v| v.host == "web-1").expect("web-1");
    assert_eq!(view.monitor, Monitor::Pending);
    assert!(!view.connected);
    assert!(view.spare);
    assert_eq!(view.cores, 2.5);
    assert_eq!(view.applications, vec!["web".to_string()]);
    assert_eq!(view.fingerprint, identity.fingerprint().expect("fp"));
    assert_eq!(view.reports, 0);
    assert_eq!(s.manager.stats().announcements_accepted, 1);

    // Pending, not unmonitored: an announced server owes no reports, however
    // many report intervals pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let views = s.manager.views().await;
    let view = views.iter().find(|v| v.host == "web-1").expect("web-1");
    assert_eq!(view.monitor, Monitor::Pending);

    // Its agent's stream says hello: the same record, now connected.
    let ca = s.pki.load_ca_cert().expect("ca");
    let config = tls::client_config(&ca, &identity).expect("client config");
    let tcp = TcpStream::connect(s.stream_addr).await.expect("connect");
    let (mut stream, _) = tls::connect(config, "manager", tcp)
        .await
        .expect("handshake");
    let mut encoder = Encoder::new(Vec::new(), 1);
    encoder
        .start(&StreamHeader::new(Role::Agent, "web-1"))
        .expect("header");
    encoder
        .encode(&mut Message::from(hello("web-1", true)))
        .expect("hello");
    stream.write_all(&encoder.take()).await.expect("write");
    stream.flush().await.expect("flush");
    let manager = s.manager.clone();
    eventually("web-1 connected", || {
        let manager = manager.clone();
        async move {
            manager
                .views()
                .await
                .iter()
                .any(|v| v.host == "web-1" && v.connected)
        }
    })
    .await;
    assert_eq!(s.manager.views().await.len(), 1, "upgraded, not duplicated");
    // The stream is authoritative while it lasts: an announcement of other
    // figures changes nothing.
    lb_agent::discovery::announce_once(s.discovery, &identity, &hello("web-1", false))
        .await
        .expect("announced");
    let manager = s.manager.clone();
    eventually("second announcement counted", || {
        let manager = manager.clone();
        async move { manager.stats().announcements_accepted == 2 }
    })
    .await;
    let views = s.manager.views().await;
    assert!(views[0].spare && views[0].connected);
}

#[tokio::test]
async fn forged_and_broken_announcements_are_counted_and_ignored() {
    let s = setup().await;
    let web2 = s.pki.load_identity("web-2").expect("identity");

    // A certificate from another CA.
    let stranger = s.stranger.load_identity("web-3").expect("identity");
    lb_agent::discovery::announce_once(s.discovery, &stranger, &hello("web-3", true))
        .await
        .expect("sent");

    // A genuine signature over different bytes.
    let genuine = AnnounceSigner::new(&web2)
        .expect("signer")
        .sign(&Announce::from_hello(&hello("web-2", true)), unix_ms())
        .expect("signed");
    let text = String::from_utf8(genuine.clone()).expect("utf-8");
    let tampered = text.replace("cores=\"2.5\"", "cores=\"64\"");
    assert_ne!(tampered, text);
    send_raw(s.discovery, tampered.as_bytes()).await;

    // Stale: signed 10 minutes ago.
    let stale = AnnounceSigner::new(&web2)
        .expect("signer")
        .sign(
            &Announce::from_hello(&hello("web-2", true)),
            unix_ms() - 600_000,
        )
        .expect("signed");
    send_raw(s.discovery, &stale).await;

    // Malformed and oversized.
    send_raw(s.discovery, b"<announce>hello</announce>").await;
    send_raw(s.discovery, &vec![b' '; 5000]).await;

    let manager = s.manager.clone();
    eventually("every bad datagram counted", || {
        let manager = manager.clone();
        async move {
            rejected(&manager, "untrusted-certificate") == 1
                && rejected(&manager, "bad-signature") == 1
                && rejected(&manager, "stale") == 1
                && rejected(&manager, "malformed") == 1
                && rejected(&manager, "oversized") == 1
        }
    })
    .await;
    assert!(s.manager.views().await.is_empty(), "nothing was recorded");
    assert_eq!(s.manager.stats().announcements_accepted, 0);

    // The genuine one is accepted; its replay is not.
    send_raw(s.discovery, &genuine).await;
    send_raw(s.discovery, &genuine).await;
    let manager = s.manager.clone();
    eventually("replay counted", || {
        let manager = manager.clone();
        async move { rejected(&manager, "replayed") == 1 }
    })
    .await;
    let stats = s.manager.stats();
    assert_eq!(stats.announcements_accepted, 1);
    let hosts: Vec<String> = s
        .manager
        .views()
        .await
        .into_iter()
        .map(|v| v.host)
        .collect();
    assert_eq!(hosts, vec!["web-2".to_string()]);
    let views = s.manager.views().await;
    assert_eq!(
        views[0].cores, 2.5,
        "the signed figure, not the tampered one"
    );
    // Every reason is listed, so dashboards see zeros too.
    assert_eq!(
        stats.announcements_rejected.len(),
        lb_proto::announce::Rejected::REASONS.len()
    );
    assert_eq!(stats.announcements_rejected.get("name-mismatch"), Some(&0));
    // The counters travel to lbctl as JSON.
    let json = serde_json::to_value(&stats).expect("json");
    assert_eq!(json["announcements_rejected"]["replayed"], 1);
}

#[tokio::test]
async fn discovery_without_a_ca_is_refused() {
    let config = ManagerConfig {
        tls_dir: None,
        insecure_plaintext: true,
        report_interval_ms: 100,
        state_dir: std::env::temp_dir(),
        discovery: Some(DiscoveryConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            group: None,
            interface: None,
            rate_per_source: 50,
        }),
        ..ManagerConfig::new("127.0.0.1:0".parse().expect("addr"), "manager")
    };
    let err = config.validate().expect_err("needs tls_dir").to_string();
    assert!(err.contains("tls_dir"), "{err}");
    let err = Manager::new(config)
        .start()
        .await
        .expect_err("cannot verify announcements");
    assert!(err.to_string().contains("tls_dir"), "{err}");
}

/// 20,000 forged announcements a second for 10 s (genuine certificates,
/// signatures over other bytes: the costliest kind), from 10 source
/// addresses: each source is cut to its rate before anything is parsed,
/// what passes is verified off the runtime thread, and the real
/// announcements of another source are all taken and an agent stream's
/// reports all ingested meanwhile.
#[tokio::test]
async fn a_flood_of_forged_announcements_stops_no_real_one() {
    const FLOOD_SECS: u64 = 10;
    const FLOOD_RATE: u64 = 20_000;
    let s = setup().await;
    let web1 = s.pki.load_identity("web-1").expect("identity");
    let web2 = s.pki.load_identity("web-2").expect("identity");
    // web-2's agent stream, reporting throughout.
    let ca = s.pki.load_ca_cert().expect("ca");
    let config = tls::client_config(&ca, &web2).expect("client config");
    let tcp = TcpStream::connect(s.stream_addr).await.expect("connect");
    let (mut stream, _) = tls::connect(config, "manager", tcp)
        .await
        .expect("handshake");
    let mut encoder = Encoder::new(Vec::new(), 1);
    encoder
        .start(&StreamHeader::new(Role::Agent, "web-2"))
        .expect("header");
    encoder
        .encode(&mut Message::from(hello("web-2", false)))
        .expect("hello");
    stream.write_all(&encoder.take()).await.expect("write");
    stream.flush().await.expect("flush");

    let genuine = AnnounceSigner::new(&web1)
        .expect("signer")
        .sign(&Announce::from_hello(&hello("web-1", true)), unix_ms())
        .expect("signed");
    let forged = String::from_utf8(genuine)
        .expect("utf-8")
        .replace("cores=\"2.5\"", "cores=\"64\"")
        .into_bytes();
    let target = s.discovery;
    let flood = std::thread::spawn(move || {
        let sockets: Vec<std::net::UdpSocket> = (10..20)
            .map(|i| std::net::UdpSocket::bind(format!("127.0.0.{i}:0")).expect("bind"))
            .collect();
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        let mut next = sockets.iter().cycle();
        while started.elapsed() < Duration::from_secs(FLOOD_SECS) {
            let due = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX) * FLOOD_RATE
                / 1000;
            while sent < due {
                if let Some(socket) = next.next() {
                    let _ = socket.send_to(&forged, target);
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });

    // Meanwhile: web-1's real announcements from its own address, and
    // web-2's reports.
    let real = UdpSocket::bind("127.0.0.2:0").await.expect("bind");
    let before = s.manager.stats();
    let mut announced = 0u64;
    let mut reported = 0u64;
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < Duration::from_secs(FLOOD_SECS) {
        tick.tick().await;
        let mut report = common::report("web-2", unix_ms(), 0.3);
        encoder.encode(&mut report).expect("report");
        stream.write_all(&encoder.take()).await.expect("write");
        stream.flush().await.expect("flush");
        reported += 1;
        // From 2 s on, past the flood's first burst (each source's bucket
        // starts full), an announcement every 500 ms.
        if reported > 20 && reported.is_multiple_of(5) {
            let datagram = AnnounceSigner::new(&web1)
                .expect("signer")
                .sign(&Announce::from_hello(&hello("web-1", true)), unix_ms())
                .expect("signed");
            real.send_to(&datagram, target).await.expect("send");
            announced += 1;
        }
    }
    let sent = flood.join().expect("flood");
    assert!(
        sent >= FLOOD_RATE * FLOOD_SECS * 9 / 10,
        "the flood sent only {sent}"
    );
    let manager = s.manager.clone();
    eventually("every real announcement and report taken", || {
        let manager = manager.clone();
        async move {
            let now = manager.stats();
            now.announcements_accepted >= before.announcements_accepted + announced
                && now.reports_accepted >= before.reports_accepted + reported
        }
    })
    .await;
    let stats = s.manager.stats();
    let forged_seen = stats
        .announcements_rejected
        .get("bad-signature")
        .copied()
        .unwrap_or(0);
    println!(
        "flood: {sent} sent, {forged_seen} verified and refused, {} rate-limited, {} overloaded; {announced} real announcements and {reported} reports all taken",
        stats.announcements_rate_limited, stats.announcements_overloaded
    );
    assert!(
        forged_seen > 0 && stats.announcements_rate_limited > 0,
        "{stats:?}"
    );
}
