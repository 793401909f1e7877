//! The real `lb-agent` binary against a small TLS manager written here, on
//! 127.0.0.1 only.
//!
//! Sequence numbers: every new stream starts at the Unix time in
//! microseconds (and above the last `seq` sent before), so `seq` keeps
//! increasing across reconnections; the test checks exactly that.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use lb_proto::{
    Decoder, Encoder, HealthState, Message, ProtoError, Reconfigure, Role, Service, SettingsKind,
    SettingsRequest, StreamHeader, UtilizationSource,
    tls::{Identity, Pki, TlsError, Validity},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
};

const DAY: Duration = Duration::from_hours(24);
const WAIT: Duration = Duration::from_secs(10);

/// The agent process; killed when dropped, its log printed if the test
/// failed.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(config: &Path, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "lb_agent=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start lb-agent");
        Self { child, log }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
    }

    /// Waits for the agent to exit by itself; returns whether it succeeded.
    async fn exited(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- lb-agent log ----\n{}", self.log());
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A manager that accepts agents over mutual TLS.
struct TestManager {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    /// The name in its stream header.
    name: &'static str,
}

impl TestManager {
    async fn new(ca_pem: &str, identity: &Identity) -> Self {
        Self::named(ca_pem, identity, "manager").await
    }

    /// A manager whose stream header calls it `name`.
    async fn named(ca_pem: &str, identity: &Identity, name: &'static str) -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            tls: lb_proto::tls::server_config(ca_pem, identity).expect("server config"),
            name,
        }
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    /// Accepts the next connection and runs the TLS handshake.
    async fn accept(&self) -> Result<Connection, TlsError> {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the agent did not connect in time")
            .expect("accept");
        let (tls, peer) = lb_proto::tls::accept(self.tls.clone(), tcp).await?;
        let mut encoder = Encoder::new(Vec::new(), 1);
        encoder
            .start(&StreamHeader::new(Role::Manager, self.name))
            .expect("header");
        let mut connection = Connection {
            io: Box::new(tls),
            peer_name: peer.name,
            peer_fingerprint: peer.fingerprint_sha256,
            decoder: Decoder::new(),
            encoder,
        };
        connection.flush().await;
        Ok(connection)
    }
}

/// One agent connection, seen from the manager.
struct Connection {
    io: Box<dyn Io>,
    peer_name: String,
    peer_fingerprint: String,
    decoder: Decoder,
    encoder: Encoder<Vec<u8>>,
}

impl Connection {
    async fn flush(&mut self) {
        let bytes = self.encoder.take();
        self.io.write_all(&bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    async fn send(&mut self, message: impl Into<Message>) {
        self.encoder.encode(&mut message.into()).expect("encode");
        self.flush().await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// The next message, or the decoder's error (`Closed` at the footer).
    async fn next(&mut self) -> Result<Message, ProtoError> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(message) = self.decoder.next()? {
                return Ok(message);
            }
            let n = tokio::time::timeout(WAIT, self.io.read(&mut buf))
                .await
                .expect("no message from the agent in time")
                .expect("read");
            assert!(n > 0, "the agent closed the connection without a footer");
            self.decoder.feed(&buf[..n]);
        }
    }

    async fn message(&mut self) -> Message {
        self.next().await.expect("a message")
    }
}

struct Lab {
    dir: tempfile::TempDir,
    pki: Pki,
    manager_identity: Identity,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(dir.path().join("pki"));
        pki.init_ca("test CA", DAY, false).expect("ca");
        let manager_identity = pki
            .issue(
                "manager",
                lb_proto::tls::Role::Server,
                &[],
                Validity::from_now(DAY),
            )
            .expect("manager certificate");
        Self {
            dir,
            pki,
            manager_identity,
        }
    }

    fn ca_pem(&self) -> String {
        self.pki.load_ca_cert().expect("ca.pem")
    }

    fn config(&self, manager_port: u16, tls_dir: &Path, app_port: u16) -> PathBuf {
        let path = self.dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[agent]
host = "web-1"
manager = "127.0.0.1:{manager_port}"
manager_name = "manager"
report_interval_ms = 150
tls_dir = "{}"
control_port = 7443
spare = true

[[application]]
name = "web"
protocol = "tcp"
ports = [{app_port}]
vips = ["127.0.0.1"]
probe = {{ kind = "tcp", port = {app_port} }}
probe_interval_ms = 50
"#,
                tls_dir.display()
            ),
        )
        .expect("write config");
        path
    }
}

/// A TCP application for the probes: accepts and drops connections.
async fn application() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one agent's life in order: stream, requests, reconnect, reload, exit"
)]
async fn agent_streams_reports_answers_requests_and_reconnects() {
    let lab = Lab::new();
    let agent_identity = lab
        .pki
        .issue(
            "web-1",
            lb_proto::tls::Role::Client,
            &[],
            Validity::from_now(DAY),
        )
        .expect("agent certificate");
    let manager = TestManager::new(&lab.ca_pem(), &lab.manager_identity).await;
    let app_port = application().await;
    let config = lab.config(manager.port(), lab.pki.dir(), app_port);
    let mut agent = AgentProcess::spawn(&config, lab.dir.path().join("agent.log"));

    // Header and hello.
    let mut conn = manager.accept().await.expect("handshake");
    assert_eq!(conn.peer_name, "web-1");
    assert_eq!(
        conn.peer_fingerprint,
        agent_identity.fingerprint().expect("fp")
    );
    let Message::Hello(hello) = conn.message().await else {
        panic!("the first message is not a hello");
    };
    let header = conn.decoder.header().expect("header").clone();
    assert_eq!((header.role, header.host.as_str()), (Role::Agent, "web-1"));
    assert_eq!(hello.host, "web-1");
    assert!(hello.spare);
    assert!(hello.cores > 0.0);
    assert_eq!(hello.applications.len(), 1);
    assert_eq!(hello.applications[0].name, "web");
    assert_eq!(hello.applications[0].ports, vec![app_port]);
    assert!(
        hello.applications[0].probe.contains("tcp connect"),
        "{}",
        hello.applications[0].probe
    );

    // Reports: increasing seq, a sane figure, and the probe comes up.
    let mut last_seq = hello.seq;
    let mut reports = 0;
    let mut healthy = false;
    while reports < 3 || !healthy {
        let Message::Report(report) = conn.message().await else {
            panic!("expected a report");
        };
        assert!(report.seq > last_seq, "{} after {last_seq}", report.seq);
        last_seq = report.seq;
        assert_eq!(report.host, "web-1");
        assert_eq!(report.utilization.source, UtilizationSource::HostCpu);
        assert!(
            (0.0..=1.0).contains(&report.utilization.value),
            "{}",
            report.utilization.value
        );
        assert!(report.interval_ms > 0);
        assert!(report.memory.total_bytes > 0);
        let web = &report.applications[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.readiness.len(), 1);
        assert_eq!(web.readiness[0].vip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(web.readiness[0].vip_on_loopback);
        healthy = web.health.state == HealthState::Up && web.readiness[0].local_probe;
        reports += 1;
        assert!(reports < 40, "the probe never came up: {:?}", web.health);
    }

    // Settings requests, a message an agent does not take, and garbage.
    for (id, kind) in [(7, SettingsKind::Connection), (8, SettingsKind::Auth)] {
        conn.send(SettingsRequest {
            seq: 0,
            id,
            kind,
            application: Some("web".into()),
        })
        .await;
    }
    conn.send(Reconfigure {
        seq: 0,
        generation: 1,
        service: Service {
            name: "web".into(),
            vip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 80,
            protocol: lb_proto::Protocol::Tcp,
            table_size: 7,
            servers: vec![],
            retired: false,
            weight_scale: 1,
        },
    })
    .await;
    let reconfigure_seq = conn.encoder.next_seq() - 1;
    conn.send_raw(b"<bogus seq=\"99\"/>\n").await;
    let (mut connection_settings, mut auth, mut errors) = (None, None, Vec::new());
    while connection_settings.is_none() || auth.is_none() || errors.len() < 2 {
        match conn.message().await {
            Message::ConnectionSettings(s) => connection_settings = Some(s),
            Message::AuthSettings(a) => auth = Some(a),
            Message::Error(e) => errors.push(e),
            Message::Report(r) => {
                assert!(r.seq > last_seq);
                last_seq = r.seq;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let connection_settings = connection_settings.expect("connection settings");
    assert_eq!(connection_settings.id, 7);
    assert_eq!(connection_settings.host, "web-1");
    // The manager connection runs over loopback.
    assert_eq!(connection_settings.interface, "lo");
    assert!(!connection_settings.addresses.is_empty());
    assert_eq!(connection_settings.applications.len(), 1);
    assert_eq!(connection_settings.applications[0].ports, vec![app_port]);
    let auth = auth.expect("auth settings");
    assert_eq!(auth.id, 8);
    assert_eq!(auth.control_port, 7443);
    assert_eq!(auth.expect_manager, "manager");
    assert_eq!(
        auth.server_fingerprint.to_string(),
        agent_identity.fingerprint().expect("fingerprint")
    );
    let unexpected = errors
        .iter()
        .find(|e| e.code == "unexpected-message")
        .expect("reply to reconfigure");
    assert_eq!(unexpected.rejected_seq, Some(reconfigure_seq));
    let unknown = errors
        .iter()
        .find(|e| e.code == "unknown-message")
        .expect("reply to bogus");
    assert_eq!(unknown.rejected_seq, Some(99));

    // Drop the connection: the agent comes back with a new stream whose
    // seq continues above the old one.
    drop(conn);
    let mut conn = manager.accept().await.expect("second handshake");
    let Message::Hello(hello) = conn.message().await else {
        panic!("a new stream starts with hello");
    };
    assert!(hello.seq > last_seq, "{} after {last_seq}", hello.seq);
    let Message::Report(report) = conn.message().await else {
        panic!("expected a report");
    };
    assert!(report.seq > hello.seq);

    // SIGTERM: the agent closes its stream and exits cleanly.
    agent.signal(libc::SIGTERM);
    loop {
        match conn.next().await {
            Ok(Message::Report(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(ProtoError::Closed) => break,
            Err(e) => panic!("stream ended badly: {e}"),
        }
    }
    assert!(agent.exited().await, "lb-agent exited with an error");
    let log = agent.log();
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_a_certificate_from_another_ca_is_refused() {
    let lab = Lab::new();
    // The agent trusts the real CA (so only the manager can refuse), but its
    // own certificate comes from another CA.
    let agent_dir = lab.dir.path().join("agent-pki");
    let other = lb_proto::tls::create_ca("other CA", DAY).expect("other ca");
    let intruder = lb_proto::tls::issue(
        &other,
        "web-1",
        lb_proto::tls::Role::Client,
        &[],
        Validity::from_now(DAY),
    )
    .expect("intruder certificate");
    let agent_pki = Pki::new(&agent_dir);
    agent_pki.write_identity(&intruder).expect("write identity");
    std::fs::write(agent_pki.ca_cert_path(), lab.ca_pem()).expect("write ca.pem");

    let manager = TestManager::new(&lab.ca_pem(), &lab.manager_identity).await;
    let app_port = application().await;
    let config = lab.config(manager.port(), &agent_dir, app_port);
    let agent = AgentProcess::spawn(&config, lab.dir.path().join("agent.log"));

    for attempt in 0..2 {
        match manager.accept().await {
            Err(TlsError::UnknownCa) => {}
            Err(other) => panic!("attempt {attempt}: refused for another reason: {other}"),
            Ok(_) => panic!("attempt {attempt}: an untrusted agent was accepted"),
        }
    }
    // The agent saw the refusal and keeps retrying; it never got a stream.
    let log = agent.log();
    assert!(log.contains("manager connection ended"), "{log}");
}

/// A manager whose certificate names `manager` only as a further name
/// (its first is `impostor`, which its header claims) passes TLS, but the
/// agent wants `agent.manager_name` itself: it refuses the stream.
#[tokio::test]
async fn agent_refuses_a_manager_not_named_manager_name() {
    let lab = Lab::new();
    lab.pki
        .issue(
            "web-1",
            lb_proto::tls::Role::Client,
            &[],
            Validity::from_now(DAY),
        )
        .expect("agent certificate");
    let impostor = lab
        .pki
        .issue(
            "impostor",
            lb_proto::tls::Role::Server,
            &[lb_proto::tls::SanEntry::Dns("manager".into())],
            Validity::from_now(DAY),
        )
        .expect("impostor certificate");
    let manager = TestManager::named(&lab.ca_pem(), &impostor, "impostor").await;
    let app_port = application().await;
    let config = lab.config(manager.port(), lab.pki.dir(), app_port);
    let agent = AgentProcess::spawn(&config, lab.dir.path().join("agent.log"));
    let mut conn = manager
        .accept()
        .await
        .expect("TLS accepts `manager` among the names");
    let refusal = loop {
        match conn.next().await {
            Ok(Message::Error(e)) => break e,
            Ok(_) => {}
            Err(e) => panic!("the stream ended without a refusal: {e}"),
        }
    };
    assert_eq!(refusal.code, "manager-name-mismatch", "{refusal:?}");
    assert!(
        refusal.text.contains("agent.manager_name is `manager`"),
        "{refusal:?}"
    );
    drop(agent);
}

#[test]
fn check_validates_and_names_the_bad_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).expect("write");
        Command::new(env!("CARGO_BIN_EXE_lb-agent"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run lb-agent check")
    };
    let good = "[agent]\nhost = \"web-1\"\nmanager = \"127.0.0.1:7400\"\ntls_dir = \"/pki\"\n";
    let out = check(good);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{out:?}"
    );

    let out = check(&format!("{good}colour = \"blue\"\n"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("colour") && stderr.contains("line 5"),
        "{stderr}"
    );

    let out = check(&good.replace("7400", "0"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent.toml:3: agent.manager"), "{stderr}");
}
