//! Datagrams into the manager's announcement verifier: it must never
//! panic, and it accepts only what the CA's certificate for the host signed.
//!
//! An input whose first byte is 0 is applied as an XOR mask over a genuine
//! signed datagram (the rest of the input, byte for byte), so the fuzzer
//! explores near-genuine datagrams: the signature, time, name and
//! certificate checks. Any other input goes in as it is.

#![no_main]

use std::sync::OnceLock;

use lb_proto::{
    ApplicationPorts, Protocol,
    announce::{ANNOUNCE_VERSION, Announce, AnnounceSigner, AnnounceVerifier},
    tls::{Role, Validity, create_ca, issue},
};
use libfuzzer_sys::fuzz_target;

/// 2026-01-01T00:00:00Z.
const NOW_MS: u64 = 1_767_225_600_000;

struct Fixture {
    ca_pem: String,
    genuine: Vec<u8>,
    announce: Announce,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let day = std::time::Duration::from_secs(86_400);
        let ca = create_ca("fuzz CA", day * 3650).expect("ca");
        let web1 = issue(
            &ca,
            "web-1",
            Role::Client,
            &[],
            Validity::from_now(day * 3650),
        )
        .expect("web-1");
        let template = Announce {
            version: ANNOUNCE_VERSION,
            host: "web-1".into(),
            agent_version: "fuzz".into(),
            cores: 2.0,
            spare: true,
            time_ms: 0,
            nonce: String::new(),
            applications: vec![ApplicationPorts {
                name: "web".into(),
                protocol: Protocol::Tcp,
                ports: vec![80],
            }],
        };
        let genuine = AnnounceSigner::new(&web1)
            .expect("signer")
            .sign(&template, NOW_MS)
            .expect("sign");
        let announce = AnnounceVerifier::new(&ca.cert_pem)
            .expect("verifier")
            .verify(&genuine, NOW_MS)
            .expect("the genuine datagram verifies")
            .announce;
        Fixture {
            ca_pem: ca.cert_pem,
            genuine,
            announce,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let input: Vec<u8> = match data.split_first() {
        Some((0, mask)) => f
            .genuine
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask.get(i).copied().unwrap_or(0))
            .collect(),
        _ => data.to_vec(),
    };
    let mut verifier = AnnounceVerifier::new(&f.ca_pem).expect("verifier");
    if let Ok(verified) = verifier.verify(&input, NOW_MS) {
        // Only web-1's own announcement, as it signed it, can pass.
        assert_eq!(verified.announce, f.announce, "accepted a forgery");
        assert_eq!(verified.identity.name, "web-1");
    }
    // The same datagram again is a replay, never accepted twice.
    assert!(verifier.verify(&input, NOW_MS).is_err());
});
