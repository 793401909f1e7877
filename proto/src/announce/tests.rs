//! Signing and verifying announcements, and every way a datagram is refused.

use std::time::SystemTime;

use super::*;
use crate::{
    Protocol,
    tls::{CaBundle, Identity, Role, TlsError, Validity, create_ca, issue, verify_client_cert},
};

const DAY: Duration = Duration::from_hours(24);
/// 2026-01-01T00:00:00Z, the documentation's clock.
const NOW_MS: u64 = 1_767_225_600_000;

struct Project {
    ca: CaBundle,
    web1: Identity,
}

fn project() -> Project {
    let ca = create_ca("test CA", DAY).expect("ca");
    let web1 = issue(&ca, "web-1", Role::Client, &[], Validity::from_now(DAY)).expect("web-1");
    Project { ca, web1 }
}

fn template(host: &str) -> Announce {
    Announce {
        version: ANNOUNCE_VERSION,
        host: host.into(),
        agent_version: "0.1.0".into(),
        cores: 4.0,
        spare: true,
        time_ms: 0,
        nonce: String::new(),
        applications: vec![ApplicationPorts {
            name: "web".into(),
            protocol: Protocol::Tcp,
            ports: vec![80, 443],
        }],
    }
}

fn signed(identity: &Identity, time_ms: u64) -> Vec<u8> {
    AnnounceSigner::new(identity)
        .expect("signer")
        .sign(&template(&identity.host), time_ms)
        .expect("sign")
}

fn verifier(ca: &CaBundle) -> AnnounceVerifier {
    AnnounceVerifier::new(&ca.cert_pem).expect("verifier")
}

#[track_caller]
fn rejected(verifier: &mut AnnounceVerifier, datagram: &[u8], reason: &str) -> Rejected {
    let err = verifier
        .verify(datagram, NOW_MS)
        .expect_err("must be rejected");
    assert_eq!(err.reason(), reason, "{err}");
    err
}

#[test]
fn round_trip_and_replay() {
    let p = project();
    let datagram = signed(&p.web1, NOW_MS);
    assert!(datagram.len() <= MAX_DATAGRAM_BYTES);
    let text = String::from_utf8(datagram.clone()).expect("utf-8");
    assert!(
        text.starts_with("<announce version=\"1\" host=\"web-1\""),
        "{text}"
    );
    assert!(text.contains("\n<auth alg=\"ecdsa-p256-sha256\" signature=\""));

    let mut v = verifier(&p.ca);
    let ok = v.verify(&datagram, NOW_MS + 1000).expect("verifies");
    assert_eq!(ok.identity.name, "web-1");
    assert_eq!(
        ok.identity.fingerprint_sha256,
        p.web1.fingerprint().expect("fp")
    );
    assert_eq!(ok.announce.time_ms, NOW_MS);
    assert_eq!(ok.announce.nonce.len(), 2 * NONCE_BYTES);
    assert_eq!(
        Announce {
            time_ms: 0,
            nonce: String::new(),
            ..ok.announce.clone()
        },
        template("web-1")
    );
    let hello = ok.announce.hello();
    assert_eq!(hello.host, "web-1");
    assert!(hello.spare);
    assert_eq!(hello.applications[0].ports, vec![80, 443]);
    assert_eq!(
        Announce::from_hello(&hello).applications,
        template("web-1").applications
    );
    assert_eq!(v.remembered(), 1);

    // The same bytes again: a replay.
    rejected(&mut v, &datagram, "replayed");
    // A fresh signature has a fresh nonce.
    v.verify(&signed(&p.web1, NOW_MS), NOW_MS)
        .expect("fresh announcement");
    assert_eq!(v.remembered(), 2);
}

#[test]
fn tampered_bytes_break_the_signature() {
    let p = project();
    let text = String::from_utf8(signed(&p.web1, NOW_MS)).expect("utf-8");
    let mut v = verifier(&p.ca);
    for (from, to) in [
        ("cores=\"4\"", "cores=\"64\""),
        ("spare=\"true\"", "spare=\"false\""),
        ("ports=\"80 443\"", "ports=\"80 444\""),
    ] {
        assert!(text.contains(from), "{text}");
        rejected(&mut v, text.replace(from, to).as_bytes(), "bad-signature");
    }
    // Whitespace inside the signed element counts too.
    let spaced = text.replacen("<announce ", "<announce  ", 1);
    rejected(&mut v, spaced.as_bytes(), "bad-signature");
    // A signature over different bytes: another announcement's.
    let other = String::from_utf8(signed(&p.web1, NOW_MS)).expect("utf-8");
    let (body, _) = text.split_once('\n').expect("two lines");
    let (_, tag) = other.split_once('\n').expect("two lines");
    rejected(&mut v, format!("{body}\n{tag}").as_bytes(), "bad-signature");
    // The untouched datagram still verifies: failures remembered nothing.
    v.verify(text.as_bytes(), NOW_MS).expect("original");
}

#[test]
fn certificate_from_another_ca_is_untrusted() {
    let p = project();
    let stranger_ca = create_ca("stranger CA", DAY).expect("ca");
    let stranger = issue(
        &stranger_ca,
        "web-1",
        Role::Client,
        &[],
        Validity::from_now(DAY),
    )
    .expect("stranger");
    let err = rejected(
        &mut verifier(&p.ca),
        &signed(&stranger, NOW_MS),
        "untrusted-certificate",
    );
    assert!(
        matches!(err, Rejected::Certificate(TlsError::UnknownCa)),
        "{err}"
    );
}

#[test]
fn expired_or_server_only_certificates_are_untrusted() {
    let p = project();
    let past = SystemTime::now() - 3 * DAY;
    let old = issue(
        &p.ca,
        "old",
        Role::Client,
        &[],
        Validity::starting(past, DAY),
    )
    .expect("old");
    let err = rejected(
        &mut verifier(&p.ca),
        &signed(&old, NOW_MS),
        "untrusted-certificate",
    );
    assert!(
        matches!(
            err,
            Rejected::Certificate(TlsError::PeerCertificateExpired { .. })
        ),
        "{err}"
    );
    let server = issue(&p.ca, "srv", Role::Server, &[], Validity::from_now(DAY)).expect("srv");
    let err = rejected(
        &mut verifier(&p.ca),
        &signed(&server, NOW_MS),
        "untrusted-certificate",
    );
    assert!(
        matches!(err, Rejected::Certificate(TlsError::WrongRole { .. })),
        "{err}"
    );
}

#[test]
fn certificate_name_must_be_the_announced_host() {
    let p = project();
    let web2 = issue(&p.ca, "web-2", Role::Client, &[], Validity::from_now(DAY)).expect("web-2");
    // web-2's key and certificate, claiming to be web-1.
    let impostor = Identity {
        host: "web-1".into(),
        ..web2
    };
    let err = rejected(
        &mut verifier(&p.ca),
        &signed(&impostor, NOW_MS),
        "name-mismatch",
    );
    assert!(err.to_string().contains("\"web-2\""), "{err}");
}

#[test]
fn time_must_be_within_the_window() {
    let p = project();
    let mut v = verifier(&p.ca);
    let window = u64::try_from(DEFAULT_WINDOW.as_millis()).expect("ms");
    for time in [NOW_MS - window - 1, NOW_MS + window + 1, 0] {
        let err = rejected(&mut v, &signed(&p.web1, time), "stale");
        assert!(err.to_string().contains("NTP"), "{err}");
    }
    for time in [NOW_MS - window, NOW_MS + window] {
        v.verify(&signed(&p.web1, time), NOW_MS)
            .expect("at the edge of the window");
    }
    // A captured announcement replayed after the window is stale, however
    // the cache forgot it.
    let datagram = signed(&p.web1, NOW_MS);
    v.verify(&datagram, NOW_MS).expect("first");
    let later = NOW_MS + window + 1;
    assert!(matches!(
        v.verify(&datagram, later),
        Err(Rejected::Stale { .. })
    ));
    // Only the announcement dated a window ahead is still inside it.
    assert_eq!(v.remembered(), 1);
}

#[test]
fn replay_cache_is_bounded_and_fails_closed() {
    let p = project();
    let mut v = AnnounceVerifier::with_limits(&p.ca.cert_pem, Duration::from_secs(30), 2)
        .expect("verifier");
    v.verify(&signed(&p.web1, NOW_MS), NOW_MS).expect("1");
    v.verify(&signed(&p.web1, NOW_MS + 10), NOW_MS).expect("2");
    let third = signed(&p.web1, NOW_MS + 20);
    let err = v.verify(&third, NOW_MS).expect_err("full");
    assert_eq!(err.reason(), "replay-cache-full");
    // Once the first two are outside the window, there is room again.
    v.verify(&signed(&p.web1, NOW_MS + 30_011), NOW_MS + 30_011)
        .expect("room after ageing");
    assert_eq!(v.remembered(), 1);
}

/// One host cannot take more than its share of the replay cache: its
/// announcements past the share are refused, another host's still go in.
#[test]
fn a_host_floods_only_its_share_of_the_replay_cache() {
    let p = project();
    let web2 = issue(&p.ca, "web-2", Role::Client, &[], Validity::from_now(DAY)).expect("web-2");
    let mut v = AnnounceVerifier::with_limits(&p.ca.cert_pem, Duration::from_secs(30), 1000)
        .expect("verifier");
    for i in 0..DEFAULT_REPLAY_PER_HOST as u64 {
        v.verify(&signed(&p.web1, NOW_MS + i), NOW_MS)
            .expect("within the share");
    }
    let over = signed(&p.web1, NOW_MS + 500);
    let err = v.verify(&over, NOW_MS).expect_err("past the share");
    assert_eq!(err.reason(), "host-quota", "{err}");
    v.verify(&signed(&web2, NOW_MS), NOW_MS)
        .expect("another host");
    assert_eq!(v.remembered(), DEFAULT_REPLAY_PER_HOST + 1);
}

#[test]
fn oversized_datagrams_are_dropped() {
    let p = project();
    let mut v = verifier(&p.ca);
    let mut big = signed(&p.web1, NOW_MS);
    big.resize(MAX_DATAGRAM_BYTES + 1, b' ');
    rejected(&mut v, &big, "oversized");
    // The signer refuses to make one.
    let mut many = template("web-1");
    many.applications = (0..MAX_APPLICATIONS)
        .map(|n| ApplicationPorts {
            name: format!("application-with-a-rather-long-name-{n:03}"),
            protocol: Protocol::Tcp,
            ports: vec![8000, 8001, 8002],
        })
        .collect();
    let err = AnnounceSigner::new(&p.web1)
        .expect("signer")
        .sign(&many, NOW_MS)
        .expect_err("too large");
    assert!(matches!(err, AnnounceError::TooLarge { .. }), "{err}");
}

#[test]
fn malformed_datagrams_are_refused() {
    let p = project();
    let mut v = verifier(&p.ca);
    let good = String::from_utf8(signed(&p.web1, NOW_MS)).expect("utf-8");
    let (body, tag) = good.trim_end().split_once('\n').expect("two lines");
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("garbage", "hello there".into()),
        ("not XML", "<announce".into()),
        ("announce alone", body.into()),
        ("auth alone", tag.into()),
        ("swapped", format!("{tag}\n{body}")),
        ("three", format!("{body}\n{tag}\n{tag}")),
        (
            "unclosed",
            format!("{body}\n{}", tag.trim_end_matches("</auth>")),
        ),
        ("stray closing tag", format!("</auth>{body}\n{tag}")),
        ("text outside", format!("{body}\nx{tag}")),
        ("comment", format!("<!-- hi -->{body}\n{tag}")),
        (
            "doctype",
            format!("<!DOCTYPE a [<!ENTITY x \"y\">]>{body}\n{tag}"),
        ),
        (
            "declaration",
            format!("<?xml version=\"1.0\"?>{body}\n{tag}"),
        ),
        (
            "deep",
            format!(
                "{}\n{tag}",
                body.replace("/></announce>", "><x><y/></x></application></announce>")
            ),
        ),
        (
            "version",
            format!("{}\n{tag}", body.replace("version=\"1\"", "version=\"2\"")),
        ),
        ("bad nonce", {
            let nonce_at = body.find("nonce=\"").expect("nonce") + 7;
            let mut b = body.to_owned();
            b.replace_range(nonce_at..nonce_at + 4, "ZZZZ");
            format!("{b}\n{tag}")
        }),
        (
            "cores",
            format!("{}\n{tag}", body.replace("cores=\"4\"", "cores=\"-1\"")),
        ),
        ("port 0", format!("{}\n{tag}", body.replace("80 443", "0"))),
        (
            "algorithm",
            format!("{body}\n{}", tag.replace(SIGNATURE_ALGORITHM, "none")),
        ),
        (
            "signature hex",
            format!("{body}\n{}", tag.replace("signature=\"", "signature=\"+z")),
        ),
        (
            "no certificate",
            format!("{body}\n{}", {
                let start = tag.find("<cert>").expect("cert");
                format!("{}<cert>nothing</cert></auth>", &tag[..start])
            }),
        ),
    ];
    for (what, datagram) in cases {
        let err = v.verify(datagram.as_bytes(), NOW_MS).expect_err(what);
        assert_eq!(err.reason(), "malformed", "{what}: {err}");
    }
    rejected(&mut v, &[0xff, 0xfe, b'<'], "malformed");
    v.verify(good.as_bytes(), NOW_MS).expect("the good one");
}

#[test]
fn signer_checks_its_identity() {
    let p = project();
    let other = issue(&p.ca, "web-2", Role::Client, &[], Validity::from_now(DAY)).expect("web-2");
    let mismatched = Identity {
        key_pem: other.key_pem.clone(),
        ..p.web1.clone()
    };
    let err = AnnounceSigner::new(&mismatched).expect_err("key of another certificate");
    assert!(matches!(err, AnnounceError::Certificate { .. }), "{err}");
    let err = AnnounceSigner::new(&p.web1)
        .expect("signer")
        .sign(&template("web-2"), NOW_MS)
        .expect_err("another host");
    assert!(matches!(err, AnnounceError::HostMismatch { .. }), "{err}");
    assert!(format!("{:?}", AnnounceSigner::new(&p.web1).expect("signer")).contains("elided"));
}

#[test]
fn verify_client_cert_names_the_peer() {
    let p = project();
    let der = wire::single_cert(&p.web1.cert_pem).expect("der");
    let id = verify_client_cert(&p.ca.cert_pem, der.as_ref()).expect("trusted");
    assert_eq!(id.name, "web-1");
    let stranger = create_ca("stranger CA", DAY).expect("ca");
    assert!(matches!(
        verify_client_cert(&stranger.cert_pem, der.as_ref()),
        Err(TlsError::UnknownCa)
    ));
    assert!(matches!(
        verify_client_cert(&p.ca.cert_pem, b"not a certificate"),
        Err(TlsError::PeerCertificateInvalid { .. })
    ));
}

/// docs/protocol.md shows this announcement; keep the two the same.
#[test]
fn documented_announcement_is_what_the_encoder_writes() {
    let doc = include_str!("../../../docs/protocol.md");
    let announce = Announce {
        time_ms: NOW_MS,
        nonce: "9f86d081884c7d659a2feaa0c55ad015".into(),
        ..template("web-1")
    };
    announce.validate().expect("valid");
    let xml = quick_xml::se::to_string(&announce).expect("xml");
    assert!(
        doc.contains(&format!("{xml}\n")),
        "docs/protocol.md does not show {xml}"
    );
    let back: Announce = quick_xml::de::from_str(&xml).expect("parses");
    assert_eq!(back, announce);
}
