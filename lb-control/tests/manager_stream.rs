//! The manager's agent listener over real mutual TLS on loopback: good
//! streams update the server database; bad peers (wrong CA, expired or no
//! certificate, a name that does not match, malformed, oversized and deeply
//! nested XML, replays) are refused, counted, and disturb nobody else.
#![expect(clippy::cast_precision_loss, reason = "test figures are small counts")]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

mod common;

use common::report;
use lb_control::manager::{Manager, ManagerConfig, db::Monitor};
use lb_proto::{
    Application, Decoder, Encoder, Hello, Message, Protocol, Role, SettingsKind, StreamHeader,
    tls::{self, Pki, Role as CertRole, Validity},
};
use rustls::pki_types::pem::PemObject as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const DAY: Duration = Duration::from_hours(24);

struct Setup {
    _dir: tempfile::TempDir,
    pki: Pki,
    other: Pki,
    manager: Arc<Manager>,
    addr: SocketAddr,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path().join("pki"));
    pki.init_ca("test-ca", DAY, false).expect("ca");
    pki.issue("manager", CertRole::Server, &[], Validity::from_now(DAY))
        .expect("manager cert");
    for host in ["s1", "s2", "s3"] {
        pki.issue(host, CertRole::Client, &[], Validity::from_now(DAY))
            .expect("agent cert");
    }
    let past = SystemTime::now() - 2 * DAY;
    pki.issue("old", CertRole::Client, &[], Validity::starting(past, DAY))
        .expect("expired cert");
    let other = Pki::new(dir.path().join("other"));
    other.init_ca("stranger-ca", DAY, false).expect("ca");
    other
        .issue("s1", CertRole::Client, &[], Validity::from_now(DAY))
        .expect("stranger cert");
    let manager = Manager::new(ManagerConfig {
        tls_dir: Some(pki.dir().to_path_buf()),
        report_interval_ms: 100,
        state_dir: dir.path().to_path_buf(),
        ..ManagerConfig::new("127.0.0.1:0".parse().expect("addr"), "manager")
    });
    let addr = manager.clone().start().await.expect("manager starts");
    Setup {
        _dir: dir,
        pki,
        other,
        manager,
        addr,
    }
}

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

async fn dial(pki: &Pki, host: &str, addr: SocketAddr) -> Result<Stream, String> {
    let ca = pki.load_ca_cert().map_err(|e| e.to_string())?;
    // Read the files as they are (load_identity would refuse an expired
    // certificate before the manager ever saw it).
    let id = tls::Identity {
        host: host.into(),
        cert_pem: std::fs::read_to_string(pki.cert_path(host)).map_err(|e| e.to_string())?,
        key_pem: std::fs::read_to_string(pki.key_path(host)).map_err(|e| e.to_string())?,
    };
    let config = tls::client_config(&ca, &id).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut stream, _) = tls::connect(config, "manager", tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: a refused client certificate shows on the first read.
    stream.flush().await.map_err(|e| e.to_string())?;
    Ok(stream)
}

fn hello(host: &str) -> Message {
    Hello {
        seq: 0,
        host: host.into(),
        agent_version: "test".into(),
        cores: 0.2,
        spare: false,
        applications: vec![Application {
            name: "web".into(),
            protocol: Protocol::Tcp,
            ports: vec![80],
            probe: "tcp connect".into(),
        }],
    }
    .into()
}

/// An agent side of a stream, writing real protocol bytes.
struct Agent {
    stream: Stream,
    enc: Encoder<Vec<u8>>,
    dec: Decoder,
    /// Every `<tunnel-sources>` received, in order (`recv` sets them
    /// aside).
    tunnel_sources: Vec<Vec<std::net::IpAddr>>,
}

impl Agent {
    async fn open(stream: Stream, host: &str) -> Self {
        let mut a = Self {
            stream,
            enc: Encoder::new(Vec::new(), 1),
            dec: Decoder::new(),
            tunnel_sources: Vec::new(),
        };
        a.enc
            .start(&StreamHeader::new(Role::Agent, host))
            .expect("header");
        a.flush().await.expect("write header");
        a
    }

    async fn send(&mut self, mut m: Message) -> std::io::Result<()> {
        self.enc.encode(&mut m).expect("encode");
        self.flush().await
    }

    async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let bytes = self.enc.take();
        self.raw(&bytes).await
    }

    /// Next message from the manager, or None at the end of the stream.
    async fn recv_any(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            match self.dec.next() {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(_) => return None,
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.dec.feed(&buf[..n]),
            }
        }
    }

    /// Next message from the manager but `<tunnel-sources>` (kept in
    /// `tunnel_sources`), or None at the end of the stream.
    async fn recv(&mut self, timeout: Duration) -> Option<Message> {
        loop {
            match self.recv_any(timeout).await? {
                Message::TunnelSources(t) => self.tunnel_sources.push(t.addresses),
                m => return Some(m),
            }
        }
    }

    /// True once the manager answered the hello (with the tunnel sources).
    async fn hello_answered(&mut self, timeout: Duration) -> bool {
        match self.recv_any(timeout).await {
            Some(Message::TunnelSources(t)) => {
                self.tunnel_sources.push(t.addresses);
                true
            }
            other => panic!("{other:?} before the hello's answer"),
        }
    }

    /// True once the manager closed the stream.
    async fn closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.recv(left).await.is_none() {
                return true;
            }
        }
        false
    }
}

async fn wait_for(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn utilization(m: &Manager, host: &str) -> Option<f64> {
    m.db.lock()
        .await
        .get(host)
        .and_then(|r| r.view(Instant::now()).utilization)
}

#[tokio::test]
async fn good_stream_updates_database_and_answers_settings() {
    let s = setup().await;
    let mut a = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    a.send(hello("s1")).await.expect("hello");
    for (i, u) in [0.2, 0.4, 0.6].into_iter().enumerate() {
        a.send(report("s1", 1000 + i as u64, u))
            .await
            .expect("report");
    }
    assert!(
        wait_for(Duration::from_secs(5), async || utilization(
            &s.manager, "s1"
        )
        .await
            == Some(0.6))
        .await
    );
    let rec = s.manager.views().await;
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].monitor, Monitor::Monitored);
    assert_eq!(rec[0].reports, 3);
    let expected_fp = s
        .pki
        .load_identity("s1")
        .expect("id")
        .fingerprint()
        .expect("fp");
    assert_eq!(rec[0].fingerprint, expected_fp);

    // A replayed report (same time) and an older one are ignored.
    a.send(report("s1", 1001, 0.99)).await.expect("replay");
    a.send(report("s1", 1003, 0.7)).await.expect("newer");
    assert!(
        wait_for(Duration::from_secs(5), async || utilization(
            &s.manager, "s1"
        )
        .await
            == Some(0.7))
        .await
    );
    assert_eq!(s.manager.stats().reports_stale, 1);

    // Settings on request: the manager asks, the agent answers by id.
    let manager = s.manager.clone();
    let ask = tokio::spawn(async move {
        manager
            .request_settings("s1", SettingsKind::Auth, None, Duration::from_secs(5))
            .await
    });
    let Some(Message::SettingsRequest(req)) = a.recv(Duration::from_secs(5)).await else {
        panic!("no settings request");
    };
    assert_eq!(req.kind, SettingsKind::Auth);
    a.send(
        lb_proto::AuthSettings {
            seq: 0,
            id: req.id,
            host: "s1".into(),
            control_port: 7444,
            expect_manager: "manager".into(),
            server_fingerprint: expected_fp.parse().expect("fingerprint"),
        }
        .into(),
    )
    .await
    .expect("answer");
    let answer = ask.await.expect("join").expect("answered");
    assert!(matches!(answer, Message::AuthSettings(a) if a.control_port == 7444));
    // The hello was answered with the nodes' tunnel sources (none yet);
    // a change reaches the connected agent, a repeat does not.
    assert_eq!(a.tunnel_sources, [Vec::<std::net::IpAddr>::new()]);
    let nodes: Vec<std::net::IpAddr> =
        vec!["10.0.1.2".parse().unwrap(), "fd00:1::2".parse().unwrap()];
    s.manager.set_tunnel_sources(nodes.clone()).await;
    s.manager.set_tunnel_sources(nodes.clone()).await;
    let extra = a.recv(Duration::from_millis(300)).await;
    assert!(extra.is_none(), "{extra:?}");
    assert_eq!(a.tunnel_sources, [vec![], nodes]);

    // Silence: unmonitored after 3 intervals, figures kept.
    assert!(
        wait_for(Duration::from_secs(5), async || {
            s.manager.views().await[0].monitor == Monitor::Unmonitored
        })
        .await
    );
    assert_eq!(utilization(&s.manager, "s1").await, Some(0.7));
}

fn connection_settings(host: &str, id: u64, mac: [u8; 6]) -> Message {
    lb_proto::ConnectionSettings {
        seq: 0,
        id,
        host: host.into(),
        addresses: vec!["10.0.0.99".parse().expect("ip")],
        mac: lb_proto::MacAddr(mac),
        interface: "eth0".into(),
        applications: Vec::new(),
    }
    .into()
}

/// Agent s2 answers s1's pending settings request before s1 does, by
/// every id it might have (and once naming s1): each answer is refused,
/// counted, and an event names s2; the request gets s1's own answer.
#[tokio::test]
async fn settings_are_answered_only_by_the_host_asked() {
    let s = setup().await;
    let mut a = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    a.send(hello("s1")).await.expect("hello");
    let mut b = Agent::open(dial(&s.pki, "s2", s.addr).await.expect("dial"), "s2").await;
    b.send(hello("s2")).await.expect("hello");
    assert!(
        wait_for(Duration::from_secs(5), async || s
            .manager
            .views()
            .await
            .len()
            == 2)
        .await
    );
    let manager = s.manager.clone();
    let ask = tokio::spawn(async move {
        manager
            .request_settings("s1", SettingsKind::Connection, None, Duration::from_secs(5))
            .await
    });
    let Some(Message::SettingsRequest(req)) = a.recv(Duration::from_secs(5)).await else {
        panic!("no settings request");
    };
    let rogue = [0x02, 0, 0, 0, 0, 0x66];
    // Sequential ids would start at 1; the real one is sprayed too (a
    // rogue that guessed it), with s2's name and with s1's.
    for id in (1..=32).chain([req.id]) {
        b.send(connection_settings("s2", id, rogue))
            .await
            .expect("spray");
    }
    b.send(connection_settings("s1", req.id, rogue))
        .await
        .expect("spoof");
    assert!(
        wait_for(Duration::from_secs(5), async || s
            .manager
            .stats()
            .settings_refused
            == 34)
        .await,
        "refused: {}",
        s.manager.stats().settings_refused
    );
    assert!(!ask.is_finished(), "the request took another host's answer");
    let real = [0x02, 0, 0, 0, 0, 0x11];
    a.send(connection_settings("s1", req.id, real))
        .await
        .expect("answer");
    let answer = ask.await.expect("join").expect("answered");
    let Message::ConnectionSettings(answer) = answer else {
        panic!("not connection settings: {answer:?}");
    };
    assert_eq!(answer.mac.0, real);
    let events = s.manager.events.since(0);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "settings-refused" && e.server.as_deref() == Some("s2")),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e.server.as_deref() == Some("s1")),
        "{events:?}"
    );
}

/// `S1` and `s1` are one host (TLS matches the certificate's name
/// without case), recorded once as `s1`. A stream replaced by a newer one
/// of the same host ends without disconnecting the host.
#[tokio::test]
async fn one_host_one_record_and_only_the_current_stream_counts() {
    let s = setup().await;
    let now = lb_proto::time::unix_ms();
    let mut upper = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "S1").await;
    upper.send(hello("S1")).await.expect("hello");
    upper.send(report("S1", now, 0.3)).await.expect("report");
    assert!(
        wait_for(Duration::from_secs(5), async || utilization(
            &s.manager, "s1"
        )
        .await
            == Some(0.3))
        .await
    );
    let mut lower = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    lower.send(hello("s1")).await.expect("hello");
    lower
        .send(report("s1", now + 1, 0.4))
        .await
        .expect("report");
    assert!(
        wait_for(Duration::from_secs(5), async || utilization(
            &s.manager, "S1"
        )
        .await
            == Some(0.4))
        .await
    );
    let views = s.manager.views().await;
    assert_eq!(
        views.iter().map(|v| v.host.as_str()).collect::<Vec<_>>(),
        ["s1"],
        "{views:?}"
    );
    // The replaced stream ends: the host stays connected on the new one.
    drop(upper);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.manager.views().await[0].connected,
        "the old stream's end disconnected s1"
    );
    lower
        .send(report("s1", now + 2, 0.5))
        .await
        .expect("report");
    assert!(
        wait_for(Duration::from_secs(5), async || utilization(
            &s.manager, "s1"
        )
        .await
            == Some(0.5))
        .await
    );
    drop(lower);
    assert!(
        wait_for(Duration::from_secs(5), async || !s.manager.views().await[0]
            .connected)
        .await,
        "the current stream's end must disconnect s1"
    );
}

/// A host whose certificate is not the one the file pins for it is
/// refused at its hello (counted, an event, the stream closed) and its
/// fingerprint kept for `lbctl server repin`; pinned to that certificate,
/// it is taken.
#[tokio::test]
async fn a_certificate_other_than_the_pinned_one_is_refused() {
    let s = setup().await;
    let real = s
        .pki
        .load_identity("s1")
        .expect("id")
        .fingerprint()
        .expect("fp")
        .replace(':', "")
        .to_lowercase();
    let other = "ab".repeat(32);
    s.manager.set_pins([("s1", other.as_str())]);
    let mut a = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    a.send(hello("s1")).await.expect("hello");
    let mut refusal = None;
    while let Some(m) = a.recv(Duration::from_secs(5)).await {
        if let Message::Error(e) = m {
            refusal = Some(e);
        }
    }
    let refusal = refusal.expect("no refusal before the stream ended");
    assert_eq!(refusal.code, "fingerprint-mismatch", "{refusal:?}");
    assert!(
        refusal.text.contains("lbctl server repin s1"),
        "{refusal:?}"
    );
    assert!(
        s.manager.views().await.is_empty(),
        "the refused hello was recorded"
    );
    assert_eq!(s.manager.stats().identities_refused, 1);
    assert_eq!(
        s.manager.refused_identity("S1").as_deref(),
        Some(real.as_str())
    );
    let events = s.manager.events.since(0);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "identity-refused" && e.server.as_deref() == Some("s1")),
        "{events:?}"
    );
    s.manager.set_pins([("s1", real.as_str())]);
    let mut a = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    a.send(hello("s1")).await.expect("hello");
    assert!(
        wait_for(Duration::from_secs(5), async || s
            .manager
            .views()
            .await
            .len()
            == 1)
        .await
    );
}

/// [`dial`] from a socket with a receive buffer of a few KiB: an agent
/// that stops reading fills the path quickly.
async fn dial_small_buffer(pki: &Pki, host: &str, addr: SocketAddr) -> Stream {
    let ca = pki.load_ca_cert().expect("ca");
    let id = pki.load_identity(host).expect("identity");
    let config = tls::client_config(&ca, &id).expect("client config");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(addr).await.expect("connect");
    let (stream, _) = tls::connect(config, "manager", tcp).await.expect("tls");
    stream
}

/// An agent that stops reading (and provokes a reply to every message it
/// sends) is dropped as soon as its queue is full: a settings request to it
/// fails at once instead of waiting forever, and other agents are served.
#[tokio::test]
async fn an_agent_that_stops_reading_is_dropped() {
    let s = setup().await;
    let mut good = Agent::open(dial(&s.pki, "s2", s.addr).await.expect("dial"), "s2").await;
    good.send(hello("s2")).await.expect("hello");
    let mut stalled = Agent::open(dial_small_buffer(&s.pki, "s1", s.addr).await, "s1").await;
    stalled.send(hello("s1")).await.expect("hello");
    assert!(
        wait_for(Duration::from_secs(5), async || s
            .manager
            .views()
            .await
            .len()
            == 2)
        .await
    );
    // Each of these earns an error reply the agent never reads.
    let flood = tokio::spawn(async move {
        let unexpected: Message = lb_proto::StatusRequest {
            seq: 0,
            id: 1,
            count_flows: false,
        }
        .into();
        for _ in 0..20_000 {
            let send = stalled.send(unexpected.clone());
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), send).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
        stalled
    });
    let dropped = wait_for(Duration::from_secs(20), async || {
        s.manager
            .views()
            .await
            .iter()
            .any(|v| v.host == "s1" && !v.connected)
    })
    .await;
    assert!(dropped, "the stalled agent's session was never dropped");
    let started = Instant::now();
    let asked = tokio::time::timeout(
        Duration::from_secs(10),
        s.manager
            .request_settings("s1", SettingsKind::Connection, None, Duration::from_secs(5)),
    )
    .await
    .expect("a settings request to a stalled agent must not hang");
    assert!(asked.is_err(), "a stalled agent answered: {asked:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The other agent is served.
    let manager = s.manager.clone();
    let ask = tokio::spawn(async move {
        manager
            .request_settings("s2", SettingsKind::Connection, None, Duration::from_secs(5))
            .await
    });
    let Some(Message::SettingsRequest(req)) = good.recv(Duration::from_secs(5)).await else {
        panic!("s2 got no settings request");
    };
    good.send(connection_settings("s2", req.id, [2, 0, 0, 0, 0, 0x12]))
        .await
        .expect("answer");
    assert!(ask.await.expect("join").is_ok());
    drop(flood.await);
}

/// A fingerprint put on the deny list ends the sessions of the agents
/// that presented it and refuses them from then on; the others go on;
/// off the list, the certificate is taken again.
#[tokio::test]
async fn a_denied_certificate_is_cut_off_at_once() {
    let s = setup().await;
    let fp = s
        .pki
        .load_identity("s1")
        .expect("id")
        .fingerprint()
        .expect("fp");
    let mut a = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    a.send(hello("s1")).await.expect("hello");
    let mut b = Agent::open(dial(&s.pki, "s2", s.addr).await.expect("dial"), "s2").await;
    b.send(hello("s2")).await.expect("hello");
    let connected = async |host: &str| {
        s.manager
            .views()
            .await
            .iter()
            .any(|v| v.host == host && v.connected)
    };
    assert!(
        wait_for(Duration::from_secs(5), async || connected("s1").await
            && connected("s2").await)
        .await
    );
    s.manager.set_denied(std::slice::from_ref(&fp)).await;
    // s1's stream ends (its reader stopped), s2's does not.
    while a.recv(Duration::from_secs(5)).await.is_some() {}
    assert!(wait_for(Duration::from_secs(5), async || !connected("s1").await).await);
    assert!(connected("s2").await, "s2 was cut off too");
    // Its next stream is refused at the hello.
    let mut again = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    again.send(hello("s1")).await.expect("hello");
    let mut refusal = None;
    while let Some(m) = again.recv(Duration::from_secs(5)).await {
        if let Message::Error(e) = m {
            refusal = Some(e);
        }
    }
    assert_eq!(
        refusal.map(|e| e.code).as_deref(),
        Some("certificate-denied")
    );
    assert!(!connected("s1").await);
    let events = s.manager.events.since(0);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "identity-denied" && e.server.as_deref() == Some("s1")),
        "{events:?}"
    );
    // Off the list: taken again.
    s.manager.set_denied(&[]).await;
    let mut back = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    back.send(hello("s1")).await.expect("hello");
    assert!(wait_for(Duration::from_secs(5), async || connected("s1").await).await);
}

#[tokio::test]
async fn untrusted_certificates_are_refused() {
    let s = setup().await;
    // Another CA.
    let r = dial(&s.other, "s1", s.addr).await;
    let refused_stranger = match r {
        Err(_) => true,
        Ok(stream) => {
            Agent::open(stream, "s1")
                .await
                .closed(Duration::from_secs(5))
                .await
        }
    };
    assert!(
        refused_stranger,
        "a certificate from another CA must be refused"
    );
    // Expired.
    let refused_expired = match dial(&s.pki, "old", s.addr).await {
        Err(_) => true,
        Ok(stream) => {
            Agent::open(stream, "old")
                .await
                .closed(Duration::from_secs(5))
                .await
        }
    };
    assert!(refused_expired, "an expired certificate must be refused");
    // No certificate at all: a TLS client without client auth.
    let ca = s.pki.load_ca_cert().expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.addr).await.expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let refused_anonymous = match connector
        .connect(tls::server_name("manager").expect("name"), tcp)
        .await
    {
        Err(_) => true,
        Ok(stream) => {
            Agent::open(stream, "s1")
                .await
                .closed(Duration::from_secs(5))
                .await
        }
    };
    assert!(
        refused_anonymous,
        "a client without a certificate must be refused"
    );
    assert!(
        wait_for(Duration::from_secs(5), async || s
            .manager
            .stats()
            .handshakes_refused
            >= 3)
        .await,
        "{:?}",
        s.manager.stats()
    );
    assert!(s.manager.views().await.is_empty());

    // A good certificate claiming another host's name.
    let mut liar = Agent::open(dial(&s.pki, "s2", s.addr).await.expect("dial"), "s1").await;
    liar.send(hello("s1")).await.expect("hello");
    assert!(
        liar.closed(Duration::from_secs(5)).await,
        "name mismatch must end the stream"
    );
    assert!(s.manager.views().await.is_empty());
}

#[tokio::test]
async fn bad_xml_is_refused_without_disturbing_others() {
    let s = setup().await;
    let mut good = Agent::open(dial(&s.pki, "s1", s.addr).await.expect("dial"), "s1").await;
    good.send(hello("s1")).await.expect("hello");
    good.send(report("s1", 1, 0.1)).await.expect("report");

    // (what, the reason it is counted under, the bytes)
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "malformed",
            "malformed",
            b"<report seq=\"9\" host=\"s2\"><unclosed></report>".to_vec(),
        ),
        ("oversized", "message-too-large", {
            let mut v = b"<hello seq=\"9\" host=\"s2\" agent-version=\"x\" cores=\"1\" spare=\"false\"><application name=\"".to_vec();
            v.extend(std::iter::repeat_n(b'a', 200 * 1024));
            v
        }),
        ("deeply nested", "too-deep", {
            let mut v = Vec::new();
            for _ in 0..100 {
                v.extend_from_slice(b"<report>");
            }
            v
        }),
        (
            "entity declaration",
            "declaration-forbidden",
            b"<!DOCTYPE x [<!ENTITY a \"aaaa\">]><report/>".to_vec(),
        ),
    ];
    for (i, (what, reason, bytes)) in cases.into_iter().enumerate() {
        let before = s.manager.stats();
        let mut bad = Agent::open(dial(&s.pki, "s2", s.addr).await.expect("dial"), "s2").await;
        bad.send(hello("s2")).await.expect("hello");
        // The hello is handled (its answer is the tunnel sources) before
        // the bad bytes go.
        assert!(bad.hello_answered(Duration::from_secs(5)).await, "{what}");
        let _ = bad.raw(&bytes).await;
        let mut saw_error = false;
        while let Some(m) = bad.recv(Duration::from_secs(5)).await {
            if let Message::Error(e) = m {
                assert_eq!(e.code, reason, "{what}: the error's code");
                saw_error = true;
            }
        }
        assert!(saw_error, "{what}: the peer gets an error message");
        let after = s.manager.stats();
        assert_eq!(
            after.messages_rejected,
            before.messages_rejected + 1,
            "{what}: counted"
        );
        assert_eq!(
            after.messages_rejected_by_reason[reason],
            before.messages_rejected_by_reason[reason] + 1,
            "{what}: counted as {reason}: {:?}",
            after.messages_rejected_by_reason
        );
        // The good agent's stream carries on.
        good.send(report("s1", 10 + i as u64, 0.2 + i as f64 / 10.0))
            .await
            .expect("still open");
        let want = 0.2 + i as f64 / 10.0;
        assert!(
            wait_for(Duration::from_secs(5), async || utilization(
                &s.manager, "s1"
            )
            .await
                == Some(want))
            .await,
            "{what}: the other agent was disturbed"
        );
    }
    let s1 = s
        .manager
        .views()
        .await
        .into_iter()
        .find(|v| v.host == "s1")
        .expect("s1");
    assert!(s1.connected);
}

/// The rejections a stream survives, each counted under its own reason:
/// a replayed message, a report for another host, a message only the
/// manager sends, an element that is no message, a message missing its
/// attributes. The stream carries on after each.
#[tokio::test]
async fn each_rejection_is_counted_under_its_reason() {
    let s = setup().await;
    let mut a = Agent::open(dial(&s.pki, "s2", s.addr).await.expect("dial"), "s2").await;
    a.send(hello("s2")).await.expect("hello");
    let before = s.manager.stats().messages_rejected_by_reason;
    a.enc.encode(&mut report("s2", 1, 0.1)).expect("encode");
    let first = a.enc.take();
    a.raw(&first).await.expect("report");
    a.raw(&first).await.expect("the same report again");
    a.send(report("s3", 2, 0.1))
        .await
        .expect("another host's report");
    a.send(
        lb_proto::SettingsRequest {
            seq: 0,
            id: 1,
            kind: SettingsKind::Connection,
            application: None,
        }
        .into(),
    )
    .await
    .expect("a request only the manager sends");
    a.raw(b"<bogus seq=\"900\"/>").await.expect("no message");
    a.raw(b"<report seq=\"901\" host=\"s2\"/>")
        .await
        .expect("no attributes");
    a.send(report("s2", 3, 0.3)).await.expect("a good report");
    assert!(
        wait_for(Duration::from_secs(5), async || utilization(
            &s.manager, "s2"
        )
        .await
            == Some(0.3))
        .await,
        "the stream carried on"
    );
    let after = s.manager.stats().messages_rejected_by_reason;
    let moved: Vec<(&str, u64)> = after
        .iter()
        .filter_map(|(reason, n)| {
            let was = before.get(reason).copied().unwrap_or(0);
            (*n != was).then_some((reason.as_str(), n - was))
        })
        .collect();
    assert_eq!(
        moved,
        [
            ("invalid-message", 1),
            ("name-mismatch", 1),
            ("out-of-sequence", 1),
            ("unexpected", 1),
            ("unknown-message", 1),
        ]
    );
}
