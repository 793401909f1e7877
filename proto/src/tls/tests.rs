//! Real handshakes over loopback, and the certificate directory.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{ClientConfig, ServerConfig};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::*;

const DAY: Duration = Duration::from_hours(24);
const LIMIT: Duration = Duration::from_secs(10);

struct Project {
    ca: CaBundle,
    manager: Identity,
    agent: Identity,
}

fn project() -> Project {
    let ca = create_ca("test CA", DAY).expect("ca");
    let manager = issue(
        &ca,
        "manager.lb",
        Role::Both,
        &[SanEntry::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))],
        Validity::from_now(DAY),
    )
    .expect("manager");
    let agent = issue(&ca, "agent-1", Role::Client, &[], Validity::from_now(DAY)).expect("agent");
    Project { ca, manager, agent }
}

/// What each side saw: the peer's identity if the exchange worked.
struct Outcome {
    server: Result<PeerIdentity>,
    client: Result<PeerIdentity>,
}

/// Runs one connection over loopback: the client sends "ping", the server
/// answers "pong", each records the other's identity.
async fn exchange(server: Arc<ServerConfig>, client: Arc<ClientConfig>, dial: &str) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut tls, peer) = accept(server, tcp).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(TlsError::from_handshake)?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong")
            .await
            .map_err(TlsError::from_handshake)?;
        tls.shutdown().await.map_err(TlsError::from_handshake)?;
        // The raw connection state says the same as `accept` did.
        assert_eq!(peer_identity(tls.get_ref().1).as_ref(), Some(&peer));
        Ok(peer)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut tls, peer) = connect(client, dial, tcp).await?;
        tls.write_all(b"ping")
            .await
            .map_err(TlsError::from_handshake)?;
        tls.flush().await.map_err(TlsError::from_handshake)?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(TlsError::from_handshake)?;
        assert_eq!(&buf, b"pong");
        Ok(peer)
    };
    let client = tokio::time::timeout(LIMIT, client_side)
        .await
        .expect("client timed out");
    let server = tokio::time::timeout(LIMIT, server_side)
        .await
        .expect("server timed out")
        .expect("server task");
    Outcome { server, client }
}

#[tokio::test]
async fn good_pair_exchanges_bytes_and_sees_identities() {
    let p = project();
    let out = exchange(
        server_config(&p.ca.cert_pem, &p.manager).expect("server config"),
        client_config(&p.ca.cert_pem, &p.agent).expect("client config"),
        "manager.lb",
    )
    .await;
    let seen_by_server = out.server.expect("server side");
    let seen_by_client = out.client.expect("client side");
    assert_eq!(seen_by_server.name, "agent-1");
    assert_eq!(
        seen_by_server.fingerprint_sha256,
        p.agent.fingerprint().expect("fingerprint")
    );
    assert_eq!(seen_by_client.name, "manager.lb");
    assert_eq!(
        seen_by_client.fingerprint_sha256,
        p.manager.fingerprint().expect("fingerprint")
    );
    check_peer_name(&seen_by_server, "agent-1").expect("name matches");
    check_peer_fingerprint(&seen_by_client, &p.manager.fingerprint().expect("fp"))
        .expect("pinned fingerprint matches");
}

#[tokio::test]
async fn server_dialled_by_ip_san() {
    let p = project();
    let out = exchange(
        server_config(&p.ca.cert_pem, &p.manager).expect("server config"),
        client_config(&p.ca.cert_pem, &p.agent).expect("client config"),
        "127.0.0.1",
    )
    .await;
    assert_eq!(out.client.expect("client side").name, "manager.lb");
    out.server.expect("server side");
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let p = project();
    let other = create_ca("other CA", DAY).expect("ca");
    let stranger = issue(
        &other,
        "agent-1",
        Role::Client,
        &[],
        Validity::from_now(DAY),
    )
    .expect("stranger");
    // The stranger trusts our CA, so only the server can refuse it.
    let out = exchange(
        server_config(&p.ca.cert_pem, &p.manager).expect("server config"),
        client_config(&p.ca.cert_pem, &stranger).expect("client config"),
        "manager.lb",
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert!(matches!(err, TlsError::UnknownCa), "{err:?}");
    assert!(err.to_string().contains("wrong CA"), "{err}");
    let err = out.client.expect_err("client must fail");
    assert!(matches!(err, TlsError::RejectedByPeer { .. }), "{err:?}");
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    let p = project();
    let other = create_ca("other CA", DAY).expect("ca");
    let impostor = issue(
        &other,
        "manager.lb",
        Role::Server,
        &[],
        Validity::from_now(DAY),
    )
    .expect("impostor");
    let out = exchange(
        server_config(&p.ca.cert_pem, &impostor).expect("server config"),
        client_config(&p.ca.cert_pem, &p.agent).expect("client config"),
        "manager.lb",
    )
    .await;
    let err = out.client.expect_err("client must refuse");
    assert!(matches!(err, TlsError::UnknownCa), "{err:?}");
    out.server.expect_err("server sees the refusal");
}

#[tokio::test]
async fn expired_client_is_refused() {
    let p = project();
    let long_ago = SystemTime::now() - 3 * DAY;
    let expired = issue(
        &p.ca,
        "agent-1",
        Role::Client,
        &[],
        Validity::starting(long_ago, DAY),
    )
    .expect("expired");
    let out = exchange(
        server_config(&p.ca.cert_pem, &p.manager).expect("server config"),
        client_config(&p.ca.cert_pem, &expired).expect("client config"),
        "manager.lb",
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert!(
        matches!(err, TlsError::PeerCertificateExpired { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("lbctl certs issue"), "{err}");
    let err = out.client.expect_err("client must fail");
    assert!(matches!(err, TlsError::RejectedByPeer { .. }), "{err:?}");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let p = project();
    let anonymous = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots(&p.ca.cert_pem).expect("roots"))
        .with_no_client_auth();
    let out = exchange(
        server_config(&p.ca.cert_pem, &p.manager).expect("server config"),
        Arc::new(anonymous),
        "manager.lb",
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert!(matches!(err, TlsError::NoClientCertificate), "{err:?}");
    let err = out.client.expect_err("client must fail");
    assert!(matches!(err, TlsError::RejectedByPeer { .. }), "{err:?}");
}

#[tokio::test]
async fn client_only_certificate_cannot_serve() {
    let p = project();
    let out = exchange(
        server_config(&p.ca.cert_pem, &p.agent).expect("server config"),
        client_config(&p.ca.cert_pem, &p.manager).expect("client config"),
        "agent-1",
    )
    .await;
    let err = out.client.expect_err("client must refuse");
    assert!(matches!(err, TlsError::WrongRole { .. }), "{err:?}");
    out.server.expect_err("server sees the refusal");
}

#[tokio::test]
async fn server_with_another_name_is_refused() {
    let p = project();
    let out = exchange(
        server_config(&p.ca.cert_pem, &p.manager).expect("server config"),
        client_config(&p.ca.cert_pem, &p.agent).expect("client config"),
        "node-7.lb",
    )
    .await;
    let err = out.client.expect_err("client must refuse");
    match &err {
        TlsError::ServerNameMismatch {
            expected,
            presented,
        } => {
            assert_eq!(expected, "node-7.lb");
            assert!(presented.contains("manager.lb"), "{presented}");
        }
        other => panic!("unexpected {other:?}"),
    }
    out.server.expect_err("server sees the refusal");
}

#[test]
fn peer_name_mismatch_is_explained() {
    let peer = PeerIdentity {
        name: "agent-1".to_string(),
        fingerprint_sha256: "00".repeat(32),
    };
    check_peer_name(&peer, "AGENT-1").expect("case does not matter");
    let err = check_peer_name(&peer, "agent-2").expect_err("mismatch");
    assert!(matches!(err, TlsError::PeerNameMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("agent-2") && text.contains("agent-1"),
        "{text}"
    );
    let err = check_peer_fingerprint(&peer, &"11".repeat(32)).expect_err("not pinned");
    assert!(
        matches!(err, TlsError::FingerprintMismatch { .. }),
        "{err:?}"
    );
}

#[test]
fn fingerprint_of_pem_and_der_agree() {
    let p = project();
    let der = first_cert("test", p.agent.cert_pem.as_bytes()).expect("der");
    let from_pem = fingerprint(p.agent.cert_pem.as_bytes()).expect("pem");
    assert_eq!(from_pem, fingerprint(der.as_ref()).expect("der"));
    assert_eq!(from_pem.len(), 64);
    assert!(
        from_pem
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert!(fingerprint(b"-----BEGIN NOTHING-----\n").is_err());
}

#[test]
fn bad_host_names_are_refused() {
    let ca = create_ca("test CA", DAY).expect("ca");
    for host in ["../etc/passwd", "10.0.0.1", "ca", "", "a b", ".hidden"] {
        let err = issue(&ca, host, Role::Both, &[], Validity::from_now(DAY))
            .expect_err(&format!("{host:?} must be refused"));
        assert!(matches!(err, TlsError::InvalidHostName { .. }), "{err:?}");
    }
}

#[test]
fn impossible_validity_is_refused() {
    let ca = create_ca("test CA", DAY).expect("ca");
    let now = SystemTime::now();
    for validity in [
        Validity::starting(now, Duration::ZERO),
        Validity::from_now(Duration::from_hours(20_000 * 365 * 24)),
    ] {
        let err = issue(&ca, "node-1", Role::Both, &[], validity).expect_err("refused");
        assert!(matches!(err, TlsError::InvalidValidity), "{err:?}");
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn files_are_written_private_and_reload() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path().join("pki"));
    let ca = pki.init_ca("test CA", DAY, false).expect("init");
    let issued = pki
        .issue("node-1", Role::Server, &[], Validity::from_now(DAY))
        .expect("issue");
    assert_eq!(mode(&pki.ca_key_path()), 0o600);
    assert_eq!(mode(&pki.key_path("node-1")), 0o600);
    assert_eq!(mode(&pki.ca_cert_path()), 0o644);
    assert_eq!(mode(pki.dir()), 0o700);
    let loaded_ca = pki.load_ca().expect("load ca");
    assert_eq!(loaded_ca.cert_pem, ca.cert_pem);
    assert_eq!(loaded_ca.key_pem, ca.key_pem);
    assert_eq!(pki.load_ca_cert().expect("ca cert"), ca.cert_pem);
    let loaded = pki.load_identity("node-1").expect("load identity");
    assert_eq!(loaded.cert_pem, issued.cert_pem);
    assert_eq!(loaded.key_pem, issued.key_pem);
    // No temporary files are left behind.
    let mut names: Vec<_> = std::fs::read_dir(pki.dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.key", "ca.pem", "node-1.key", "node-1.pem"]);
    // What was loaded works.
    server_config(&loaded_ca.cert_pem, &loaded).expect("server config");
}

#[test]
fn ca_is_not_replaced_without_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let first = pki.init_ca("test CA", DAY, false).expect("init");
    let err = pki.init_ca("test CA", DAY, false).expect_err("refused");
    assert!(matches!(err, TlsError::CaExists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(pki.load_ca().expect("load").cert_pem, first.cert_pem);
    let second = pki.init_ca("test CA", DAY, true).expect("forced");
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(pki.load_ca().expect("load").cert_pem, second.cert_pem);
}

#[test]
fn missing_files_name_the_command_that_creates_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    let err = pki.load_ca_cert().expect_err("no CA yet");
    assert!(matches!(err, TlsError::MissingFile { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("ca.pem") && text.contains("lbctl certs init --dir"),
        "{text}"
    );
    pki.init_ca("test CA", DAY, false).expect("init");
    let err = pki.load_identity("node-9").expect_err("not issued");
    let text = err.to_string();
    assert!(
        text.contains("node-9.pem") && text.contains("lbctl certs issue --dir"),
        "{text}"
    );
}

#[test]
fn expired_certificate_on_disk_is_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    pki.init_ca("test CA", DAY, false).expect("init");
    let long_ago = SystemTime::now() - 3 * DAY;
    pki.issue(
        "node-1",
        Role::Server,
        &[],
        Validity::starting(long_ago, DAY),
    )
    .expect("issue expired");
    let err = pki.load_identity("node-1").expect_err("expired");
    assert!(matches!(err, TlsError::Expired { .. }), "{err:?}");
    assert!(err.to_string().contains("lbctl certs issue"), "{err}");
}

#[test]
fn mismatched_key_and_wrong_host_are_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(tmp.path());
    pki.init_ca("test CA", DAY, false).expect("init");
    let one = pki
        .issue("node-1", Role::Server, &[], Validity::from_now(DAY))
        .expect("one");
    let two = pki
        .issue("node-2", Role::Server, &[], Validity::from_now(DAY))
        .expect("two");
    std::fs::write(pki.key_path("node-1"), &two.key_pem).expect("swap key");
    let err = pki.load_identity("node-1").expect_err("key mismatch");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    std::fs::write(pki.key_path("node-1"), &one.key_pem).expect("restore key");
    std::fs::write(pki.cert_path("node-1"), &two.cert_pem).expect("swap cert");
    let err = pki.load_identity("node-1").expect_err("wrong host");
    assert!(matches!(err, TlsError::WrongHost { .. }), "{err:?}");
}
