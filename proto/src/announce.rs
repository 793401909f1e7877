//! Discovery announcements: one signed UDP datagram by which an agent makes
//! itself known to managers that were never told about it.
//!
//! A datagram is two XML elements, each on its own line, at most
//! [`MAX_DATAGRAM_BYTES`]:
//!
//! ```text
//! <announce version="1" host="web-1" agent-version="0.1.0" cores="4" spare="true" time-ms="…" nonce="…"><application name="web" protocol="tcp" ports="80 443"/></announce>
//! <auth alg="ecdsa-p256-sha256" signature="3045…"><cert>-----BEGIN CERTIFICATE-----…</cert></auth>
//! ```
//!
//! The signature is made with the agent's TLS private key (ECDSA P-256,
//! SHA-256, ASN.1 DER, hex) over the exact bytes of the `<announce>` element,
//! from its `<` to the end of its closing tag; `<cert>` carries the agent's
//! certificate (PEM). No shared secret is needed: a manager
//! ([`AnnounceVerifier`]) accepts an announcement only when the certificate
//! chains to the project CA and may authenticate a client, its name is the
//! announced host, the signature verifies, `time-ms` is within the window
//! (±30 s by default) of its own clock, and the `(host, nonce)` pair was not
//! accepted before within that window. An agent makes datagrams with an
//! [`AnnounceSigner`].

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    time::Duration,
};

use quick_xml::events::Event;
use ring::{
    rand::{SecureRandom as _, SystemRandom},
    signature::{self, EcdsaKeyPair, KeyPair as _},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    Application, ApplicationPorts, Hello,
    tls::{ClientCertChecker, Identity, PeerIdentity, TlsError},
};

/// The largest datagram sent or accepted, in bytes; a larger one is dropped
/// and counted as `oversized`.
pub const MAX_DATAGRAM_BYTES: usize = 4096;
/// The `version` attribute this code writes and accepts.
pub const ANNOUNCE_VERSION: u32 = 1;
/// The only signature algorithm: ECDSA on P-256 with SHA-256, ASN.1 DER
/// (the key type `lbctl certs issue` makes).
pub const SIGNATURE_ALGORITHM: &str = "ecdsa-p256-sha256";
/// How far an announcement's time may be from the manager's clock, either
/// way, by default.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// How many `(host, nonce)` pairs a verifier remembers by default. With the
/// default 5 s interval and ±30 s window an agent occupies about 7, so this
/// covers a couple of thousand agents; when it is full, announcements are
/// refused (`replay-cache-full`) until entries age out, never let through.
pub const DEFAULT_REPLAY_CAPACITY: usize = 16_384;
/// Random bytes in a nonce (written as twice as many hex digits).
pub const NONCE_BYTES: usize = 16;
/// Most applications one announcement may list.
pub const MAX_APPLICATIONS: usize = 64;
/// Longest host name (a DNS name).
const MAX_HOST_BYTES: usize = 253;
/// Deepest nesting accepted (`announce/application`, `auth/cert`).
const MAX_DEPTH: usize = 2;

/// `<announce>`: what a hello says (host, agent version, capacity, spare
/// flag, applications), plus when it was made and a random nonce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "announce")]
pub struct Announce {
    /// [`ANNOUNCE_VERSION`].
    #[serde(rename = "@version")]
    pub version: u32,
    /// The host name; must be the name on the signing certificate.
    #[serde(rename = "@host")]
    pub host: String,
    /// The `lb-agent` version.
    #[serde(rename = "@agent-version")]
    pub agent_version: String,
    /// Capacity, in CPU cores.
    #[serde(rename = "@cores")]
    pub cores: f64,
    /// True when the server offers itself to the free pool.
    #[serde(rename = "@spare")]
    pub spare: bool,
    /// When it was signed: Unix time in milliseconds.
    #[serde(rename = "@time-ms")]
    pub time_ms: u64,
    /// [`NONCE_BYTES`] random bytes, lowercase hex.
    #[serde(rename = "@nonce")]
    pub nonce: String,
    /// Applications hosted, one `<application>` element each.
    #[serde(rename = "application", default)]
    pub applications: Vec<ApplicationPorts>,
}

impl Announce {
    /// The announcement of what `hello` says; [`AnnounceSigner::sign`]
    /// stamps the time and the nonce.
    pub fn from_hello(hello: &Hello) -> Self {
        Self {
            version: ANNOUNCE_VERSION,
            host: hello.host.clone(),
            agent_version: hello.agent_version.clone(),
            cores: hello.cores,
            spare: hello.spare,
            time_ms: 0,
            nonce: String::new(),
            applications: hello
                .applications
                .iter()
                .map(|a| ApplicationPorts {
                    name: a.name.clone(),
                    protocol: a.protocol,
                    ports: a.ports.clone(),
                })
                .collect(),
        }
    }

    /// The hello a manager records for an announced server (`seq` 0, no
    /// probe descriptions: announcements do not carry them).
    pub fn hello(&self) -> Hello {
        Hello {
            seq: 0,
            host: self.host.clone(),
            agent_version: self.agent_version.clone(),
            cores: self.cores,
            spare: self.spare,
            applications: self
                .applications
                .iter()
                .map(|a| Application {
                    name: a.name.clone(),
                    protocol: a.protocol,
                    ports: a.ports.clone(),
                    probe: String::new(),
                })
                .collect(),
        }
    }

    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != ANNOUNCE_VERSION {
            return Err(format!(
                "version {} is not supported (this side speaks {ANNOUNCE_VERSION})",
                self.version
            ));
        }
        if self.host.is_empty() || self.host.len() > MAX_HOST_BYTES {
            return Err(format!(
                "host must be 1 to {MAX_HOST_BYTES} bytes, not {}",
                self.host.len()
            ));
        }
        if !(self.cores.is_finite() && self.cores > 0.0) {
            return Err(format!("cores {} is not a positive number", self.cores));
        }
        if self.nonce.len() != 2 * NONCE_BYTES || !is_lower_hex(&self.nonce) {
            return Err(format!(
                "nonce must be {} lowercase hex digits",
                2 * NONCE_BYTES
            ));
        }
        if self.applications.len() > MAX_APPLICATIONS {
            return Err(format!(
                "{} applications, more than {MAX_APPLICATIONS}",
                self.applications.len()
            ));
        }
        for a in &self.applications {
            if a.name.is_empty() {
                return Err("empty application name".into());
            }
            if a.ports.is_empty() || a.ports.contains(&0) {
                return Err(format!(
                    "application {:?} must list ports, none of them 0",
                    a.name
                ));
            }
        }
        Ok(())
    }
}

/// `<auth>`: the tag after the announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "auth")]
struct Auth {
    /// [`SIGNATURE_ALGORITHM`].
    #[serde(rename = "@alg")]
    alg: String,
    /// The signature, lowercase hex.
    #[serde(rename = "@signature")]
    signature: String,
    /// The signer's certificate, PEM.
    cert: String,
}

/// Why an agent cannot make an announcement.
#[derive(Debug, Error)]
pub enum AnnounceError {
    /// The private key is not an ECDSA P-256 PKCS#8 key.
    #[error(
        "the key of {host} cannot sign announcements ({detail}); announcements need the ECDSA \
         P-256 key `lbctl certs issue` makes — reissue the host's certificate with it"
    )]
    Key {
        /// The identity's host.
        host: String,
        /// What is wrong.
        detail: String,
    },
    /// The certificate is missing, unreadable or not the key's.
    #[error("the certificate of {host} cannot go with announcements: {detail}")]
    Certificate {
        /// The identity's host.
        host: String,
        /// What is wrong.
        detail: String,
    },
    /// The announcement names another host than the signing identity.
    #[error(
        "the announcement is for {announced:?} but the signing certificate is for \
         {identity:?}; set agent.host to the certificate's name"
    )]
    HostMismatch {
        /// The host in the announcement.
        announced: String,
        /// The host of the identity.
        identity: String,
    },
    /// The announcement itself is invalid.
    #[error("the announcement is invalid: {0}")]
    Invalid(String),
    /// The signed datagram would not fit.
    #[error(
        "the announcement is {size} bytes, more than the {limit} a datagram may carry; list \
         fewer applications or ports"
    )]
    TooLarge {
        /// Its size.
        size: usize,
        /// [`MAX_DATAGRAM_BYTES`].
        limit: usize,
    },
    /// XML serialization failed.
    #[error("cannot serialize the announcement: {0}")]
    Serialize(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed; cannot make a nonce or a signature")]
    Random,
}

/// Makes signed announcement datagrams with one host's TLS identity.
pub struct AnnounceSigner {
    host: String,
    cert_pem: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for AnnounceSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnnounceSigner")
            .field("host", &self.host)
            .field("key", &"[elided]")
            .finish()
    }
}

impl AnnounceSigner {
    /// Uses `identity`'s key to sign and its (first) certificate to
    /// authenticate; they must belong together.
    pub fn new(identity: &Identity) -> Result<Self, AnnounceError> {
        let host = identity.host.clone();
        let key_error = |detail: String| AnnounceError::Key {
            host: host.clone(),
            detail,
        };
        let cert_error = |detail: String| AnnounceError::Certificate {
            host: host.clone(),
            detail,
        };
        let rng = SystemRandom::new();
        let key = match PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(der)) => EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                der.secret_pkcs8_der(),
                &rng,
            )
            .map_err(|e| key_error(e.to_string()))?,
            Ok(_) => return Err(key_error("not a PKCS#8 key".into())),
            Err(e) => return Err(key_error(e.to_string())),
        };
        let cert_pem = first_pem_block(&identity.cert_pem)
            .ok_or_else(|| cert_error("no PEM certificate in it".into()))?
            .to_owned();
        let der = single_cert(&cert_pem).map_err(cert_error)?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| cert_error(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key().as_ref() {
            return Err(cert_error(
                "it is not the certificate of this key; keep <host>.pem and <host>.key from the \
                 same `lbctl certs issue`"
                    .into(),
            ));
        }
        Ok(Self {
            host,
            cert_pem,
            key,
            rng,
        })
    }

    /// The host this signer announces.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Stamps `template` with `time_ms` and a fresh nonce, signs it and
    /// returns the datagram.
    pub fn sign(&self, template: &Announce, time_ms: u64) -> Result<Vec<u8>, AnnounceError> {
        if !template.host.eq_ignore_ascii_case(&self.host) {
            return Err(AnnounceError::HostMismatch {
                announced: template.host.clone(),
                identity: self.host.clone(),
            });
        }
        let mut nonce = [0u8; NONCE_BYTES];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| AnnounceError::Random)?;
        let announce = Announce {
            time_ms,
            nonce: to_hex(&nonce),
            ..template.clone()
        };
        announce.validate().map_err(AnnounceError::Invalid)?;
        let body = quick_xml::se::to_string(&announce)
            .map_err(|e| AnnounceError::Serialize(e.to_string()))?;
        let signature = self
            .key
            .sign(&self.rng, body.as_bytes())
            .map_err(|_| AnnounceError::Random)?;
        let auth = quick_xml::se::to_string(&Auth {
            alg: SIGNATURE_ALGORITHM.to_owned(),
            signature: to_hex(signature.as_ref()),
            cert: self.cert_pem.clone(),
        })
        .map_err(|e| AnnounceError::Serialize(e.to_string()))?;
        let datagram = format!("{body}\n{auth}\n").into_bytes();
        if datagram.len() > MAX_DATAGRAM_BYTES {
            return Err(AnnounceError::TooLarge {
                size: datagram.len(),
                limit: MAX_DATAGRAM_BYTES,
            });
        }
        Ok(datagram)
    }
}

/// Why a manager refused a datagram. [`reason`](Self::reason) is the short
/// label it is counted under.
#[derive(Debug, Error)]
pub enum Rejected {
    /// Larger than [`MAX_DATAGRAM_BYTES`].
    #[error("datagram of {size} bytes or more exceeds the limit of {limit}")]
    Oversized {
        /// Its size (at least; the receive buffer may have cut it).
        size: usize,
        /// [`MAX_DATAGRAM_BYTES`].
        limit: usize,
    },
    /// Not the two elements this protocol allows, or a bad value in them.
    #[error("malformed announcement: {0}")]
    Malformed(String),
    /// `time-ms` too far from the manager's clock.
    #[error(
        "announcement time {time_ms} ms is {skew_ms} ms away from this manager's clock, more \
         than the {window_ms} ms allowed (replayed, or a clock is off: check NTP on both)"
    )]
    Stale {
        /// The announced time.
        time_ms: u64,
        /// Its distance from the manager's clock.
        skew_ms: u64,
        /// The window.
        window_ms: u64,
    },
    /// The same `(host, nonce)` was accepted before.
    #[error("announcement {nonce} of {host} was already accepted: a replay")]
    Replayed {
        /// The announced host.
        host: String,
        /// Its nonce.
        nonce: String,
    },
    /// The replay cache is full of live entries.
    #[error(
        "the replay cache holds {capacity} announcements within the window; this one is refused \
         until some age out (more agents than it was sized for, or announcing too often)"
    )]
    ReplayCacheFull {
        /// Its capacity.
        capacity: usize,
    },
    /// The certificate does not chain to the project CA, has expired or may
    /// not authenticate a client.
    #[error("certificate refused: {0}")]
    Certificate(#[source] TlsError),
    /// The certificate is for another host than the one announced.
    #[error("the announcement is for {host:?} but its certificate is for {certified:?}")]
    NameMismatch {
        /// The announced host.
        host: String,
        /// The name on the certificate.
        certified: String,
    },
    /// The signature does not verify over the announcement's bytes with the
    /// certificate's key.
    #[error("the signature does not verify over the announcement with its certificate's key")]
    BadSignature,
}

impl Rejected {
    /// Every [`reason`](Self::reason), in a fixed order (for counters).
    pub const REASONS: [&'static str; 8] = [
        "oversized",
        "malformed",
        "stale",
        "replayed",
        "replay-cache-full",
        "untrusted-certificate",
        "name-mismatch",
        "bad-signature",
    ];

    /// The position of [`reason`](Self::reason) in [`REASONS`](Self::REASONS).
    pub fn index(&self) -> usize {
        match self {
            Self::Oversized { .. } => 0,
            Self::Malformed(_) => 1,
            Self::Stale { .. } => 2,
            Self::Replayed { .. } => 3,
            Self::ReplayCacheFull { .. } => 4,
            Self::Certificate(_) => 5,
            Self::NameMismatch { .. } => 6,
            Self::BadSignature => 7,
        }
    }

    /// A short label: `oversized`, `malformed`, `stale`, `replayed`,
    /// `replay-cache-full`, `untrusted-certificate`, `name-mismatch` or
    /// `bad-signature`.
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }
}

/// An announcement that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// What it says.
    pub announce: Announce,
    /// Who signed it (the certificate's name and fingerprint).
    pub identity: PeerIdentity,
}

/// Checks datagrams against the project CA and remembers accepted nonces.
#[derive(Debug)]
pub struct AnnounceVerifier {
    certificates: ClientCertChecker,
    window_ms: u64,
    replay: ReplayCache,
}

impl AnnounceVerifier {
    /// Trusts the CA certificates in `ca_pem`, with [`DEFAULT_WINDOW`] and
    /// [`DEFAULT_REPLAY_CAPACITY`].
    pub fn new(ca_pem: &str) -> Result<Self, TlsError> {
        Self::with_limits(ca_pem, DEFAULT_WINDOW, DEFAULT_REPLAY_CAPACITY)
    }

    /// Like [`new`](Self::new) with another clock window and replay cache
    /// size.
    pub fn with_limits(
        ca_pem: &str,
        window: Duration,
        replay_capacity: usize,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            certificates: ClientCertChecker::new(ca_pem)?,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            replay: ReplayCache::new(replay_capacity),
        })
    }

    /// The `(host, nonce)` pairs remembered now.
    pub fn remembered(&self) -> usize {
        self.replay.len()
    }

    /// Checks one datagram received at `now_ms` (Unix milliseconds). Cheap
    /// checks (size, syntax, time, replay) come before the signature ones;
    /// the nonce is remembered only once everything passed.
    pub fn verify(&mut self, datagram: &[u8], now_ms: u64) -> Result<Verified, Rejected> {
        self.replay.forget_before(now_ms);
        if datagram.len() > MAX_DATAGRAM_BYTES {
            return Err(Rejected::Oversized {
                size: datagram.len(),
                limit: MAX_DATAGRAM_BYTES,
            });
        }
        let text =
            std::str::from_utf8(datagram).map_err(|_| Rejected::Malformed("not UTF-8".into()))?;
        let (body, tag) = split(text)?;
        let announce: Announce = quick_xml::de::from_str(body)
            .map_err(|e| Rejected::Malformed(format!("<announce>: {e}")))?;
        announce.validate().map_err(Rejected::Malformed)?;
        let auth: Auth = quick_xml::de::from_str(tag)
            .map_err(|e| Rejected::Malformed(format!("<auth>: {e}")))?;
        if auth.alg != SIGNATURE_ALGORITHM {
            return Err(Rejected::Malformed(format!(
                "signature algorithm {:?} is not {SIGNATURE_ALGORITHM:?}",
                short(&auth.alg)
            )));
        }
        let signature = from_hex(&auth.signature)
            .ok_or_else(|| Rejected::Malformed("signature is not hex".into()))?;
        let skew_ms = now_ms.abs_diff(announce.time_ms);
        if skew_ms > self.window_ms {
            return Err(Rejected::Stale {
                time_ms: announce.time_ms,
                skew_ms,
                window_ms: self.window_ms,
            });
        }
        if self.replay.contains(&announce.host, &announce.nonce) {
            return Err(Rejected::Replayed {
                host: announce.host,
                nonce: announce.nonce,
            });
        }
        let der =
            single_cert(&auth.cert).map_err(|e| Rejected::Malformed(format!("<cert>: {e}")))?;
        let identity = self
            .certificates
            .check(der.as_ref())
            .map_err(Rejected::Certificate)?;
        if !identity.name.eq_ignore_ascii_case(&announce.host) {
            return Err(Rejected::NameMismatch {
                host: announce.host,
                certified: identity.name,
            });
        }
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            Rejected::Certificate(TlsError::PeerCertificateInvalid {
                detail: e.to_string(),
            })
        })?;
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            cert.public_key().subject_public_key.data.as_ref(),
        )
        .verify(body.as_bytes(), &signature)
        .map_err(|_| Rejected::BadSignature)?;
        self.replay.insert(
            &announce.host,
            &announce.nonce,
            announce.time_ms.saturating_add(self.window_ms),
        )?;
        Ok(Verified { announce, identity })
    }
}

/// `(host, nonce)` pairs accepted and still inside the window, bounded.
#[derive(Debug)]
struct ReplayCache {
    capacity: usize,
    /// `(lowercase host, nonce)` → the Unix ms after which it may go.
    seen: HashMap<(String, String), u64>,
    /// The same entries, oldest expiry first.
    by_expiry: BTreeSet<(u64, String, String)>,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    fn len(&self) -> usize {
        self.seen.len()
    }

    /// Drops entries whose announcement is outside the window at `now_ms`:
    /// the time check refuses a replay of those anyway.
    fn forget_before(&mut self, now_ms: u64) {
        while let Some(first) = self.by_expiry.first() {
            if first.0 >= now_ms {
                break;
            }
            if let Some((_, host, nonce)) = self.by_expiry.pop_first() {
                self.seen.remove(&(host, nonce));
            }
        }
    }

    fn contains(&self, host: &str, nonce: &str) -> bool {
        self.seen
            .contains_key(&(host.to_ascii_lowercase(), nonce.to_owned()))
    }

    fn insert(&mut self, host: &str, nonce: &str, expires_ms: u64) -> Result<(), Rejected> {
        if self.seen.len() >= self.capacity {
            return Err(Rejected::ReplayCacheFull {
                capacity: self.capacity,
            });
        }
        let host = host.to_ascii_lowercase();
        self.seen
            .insert((host.clone(), nonce.to_owned()), expires_ms);
        self.by_expiry.insert((expires_ms, host, nonce.to_owned()));
        Ok(())
    }
}

/// Splits a datagram into the exact text of its `<announce>` element and of
/// its `<auth>` element; only whitespace may surround them, and nothing but
/// elements, text and character references may be inside (no declarations,
/// comments, CDATA or processing instructions).
fn split(text: &str) -> Result<(&str, &str), Rejected> {
    let malformed = Rejected::Malformed;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut elements: Vec<(String, usize, usize)> = Vec::with_capacity(2);
    loop {
        let before = offset(reader.buffer_position())?;
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("XML: {e}")))?;
        let after = offset(reader.buffer_position())?;
        match event {
            Event::Start(tag) => {
                if depth == 0 && elements.len() == 2 {
                    return Err(malformed("more than two elements".into()));
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(malformed(format!(
                        "elements nested deeper than {MAX_DEPTH}"
                    )));
                }
                if depth == 1 {
                    elements.push((tag.name().into_inner().to_owned(), before, 0));
                }
            }
            Event::End(_) => {
                if depth == 0 {
                    return Err(malformed("a closing tag without its opening tag".into()));
                }
                depth -= 1;
                if depth == 0
                    && let Some(last) = elements.last_mut()
                {
                    last.2 = after;
                }
            }
            Event::Empty(tag) => {
                if depth == 0 {
                    if elements.len() == 2 {
                        return Err(malformed("more than two elements".into()));
                    }
                    elements.push((tag.name().into_inner().to_owned(), before, after));
                }
            }
            Event::Text(t) => {
                if depth == 0 && !t.into_inner().chars().all(|c| c.is_ascii_whitespace()) {
                    return Err(malformed("text outside the elements".into()));
                }
            }
            Event::GeneralRef(_) => {
                if depth == 0 {
                    return Err(malformed("text outside the elements".into()));
                }
            }
            Event::Eof if depth == 0 => break,
            Event::Eof => return Err(malformed("an element is not closed".into())),
            Event::CData(_)
            | Event::Comment(_)
            | Event::Decl(_)
            | Event::PI(_)
            | Event::DocType(_) => {
                return Err(malformed(
                    "declarations, comments, CDATA and processing instructions are not allowed"
                        .into(),
                ));
            }
        }
    }
    match elements.as_slice() {
        [(a, a_start, a_end), (b, b_start, b_end)] if a == "announce" && b == "auth" => {
            let body = text
                .get(*a_start..*a_end)
                .ok_or_else(|| malformed("bad element bounds".into()))?;
            let tag = text
                .get(*b_start..*b_end)
                .ok_or_else(|| malformed("bad element bounds".into()))?;
            Ok((body, tag))
        }
        _ => Err(malformed(format!(
            "expected <announce> then <auth>, found {:?}",
            elements
                .iter()
                .map(|(name, ..)| short(name))
                .collect::<Vec<_>>()
        ))),
    }
}

fn offset(position: u64) -> Result<usize, Rejected> {
    usize::try_from(position).map_err(|_| Rejected::Malformed("offset out of range".into()))
}

/// At most 40 characters of what a peer sent, for error texts.
fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The one certificate in `pem`.
fn single_cert(pem: &str) -> Result<CertificateDer<'static>, String> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    match certs.len() {
        1 => Ok(certs.swap_remove(0)),
        0 => Err("no PEM certificate".into()),
        n => Err(format!("{n} certificates, expected one")),
    }
}

/// The first `-----BEGIN CERTIFICATE-----` block of `pem`, with its end line.
fn first_pem_block(pem: &str) -> Option<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)?;
    let end = start + pem.get(start..)?.find(END)? + END.len();
    pem.get(start..end)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(digits, 16).ok()
        })
        .collect()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests;
