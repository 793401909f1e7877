//! Mutual TLS for every control connection (agent ↔ manager, manager ↔ node).
//!
//! One project CA signs a certificate per host. Both ends of a connection
//! present a certificate and verify the other's against the CA; a client also
//! checks that the server's certificate names the host it dialled. The
//! certificate's name (first DNS SAN, else CN) is the peer's identity, and its
//! SHA-256 fingerprint is what a manager pins.
//!
//! Files live in one directory ([`Pki`]):
//!
//! ```text
//! DIR/ca.pem        CA certificate (every host needs it)
//! DIR/ca.key        CA private key (0600; only where certificates are issued)
//! DIR/<host>.pem    host certificate
//! DIR/<host>.key    host private key (0600)
//! ```
//!
//! Only TLS 1.3 is offered: both ends are ours, so there is nothing older to
//! talk to.

use std::{fmt::Write as _, io, net::IpAddr, path::PathBuf, sync::Arc};

use rustls::{
    AlertDescription, CertificateError, ClientConfig, CommonState, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::io::{AsyncRead, AsyncWrite};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

mod pki;

pub use pki::{
    CA_CERT_FILE, CA_KEY_FILE, CaBundle, Identity, Pki, Role, SanEntry, Validity, create_ca, issue,
};

/// What went wrong, phrased so an operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is not there.
    #[error("{path} does not exist; {fix}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What to do, with the command that creates it.
        fix: String,
    },
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `init` would replace an existing CA.
    #[error(
        "a CA already exists in {dir} ({file}); pass --force to replace it, after which every \
         certificate it issued is refused and all hosts need new ones"
    )]
    CaExists {
        /// The PKI directory.
        dir: PathBuf,
        /// The file that is already there.
        file: PathBuf,
    },
    /// Text that should hold a certificate or key does not.
    #[error("{what} is not usable: {detail}")]
    BadPem {
        /// Which file or value.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A certificate on disk has expired.
    #[error("{what} (for {subject}) expired at {not_after}; {fix}")]
    Expired {
        /// Which file.
        what: String,
        /// The certificate's name.
        subject: String,
        /// Its end of validity.
        not_after: String,
        /// How to replace it.
        fix: String,
    },
    /// A certificate on disk is not valid yet.
    #[error("{what} (for {subject}) is not valid before {not_before}; check this machine's clock")]
    NotYetValid {
        /// Which file.
        what: String,
        /// The certificate's name.
        subject: String,
        /// Its start of validity.
        not_before: String,
    },
    /// A private key does not belong to the certificate beside it.
    #[error("{key} is not the key of {cert}; {fix}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// How to get a matching pair.
        fix: String,
    },
    /// A certificate on disk names a different host than its file name says.
    #[error("{path} is a certificate for {found:?}, not {expected:?}; reissue it with `{fix}`")]
    WrongHost {
        /// The certificate file.
        path: PathBuf,
        /// The host asked for.
        expected: String,
        /// The name in the certificate.
        found: String,
        /// The command that issues the right one.
        fix: String,
    },
    /// A validity period a certificate cannot carry.
    #[error(
        "a certificate's validity must end after it starts and before the year 10000; use \
         fewer --days"
    )]
    InvalidValidity,
    /// A host name cannot go into a certificate or a file name.
    #[error("{host:?} is not a usable host name: {reason}")]
    InvalidHostName {
        /// The name given.
        host: String,
        /// Why it is refused.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificates or keys when building a configuration.
    #[error("cannot build TLS configuration: {0}")]
    Config(String),
    /// The peer's certificate has expired (or is not valid yet).
    #[error(
        "the peer's certificate is outside its validity period ({detail}); renew it with `lbctl certs issue`, and check both clocks"
    )]
    PeerCertificateExpired {
        /// rustls' description, with the times.
        detail: String,
    },
    /// The peer's certificate is not signed by our CA.
    #[error(
        "the peer's certificate is not signed by this project's CA (wrong CA?); give both \
         sides the same ca.pem and issue both certificates from it"
    )]
    UnknownCa,
    /// The server's certificate does not name the host the client dialled.
    #[error(
        "the server's certificate is for {presented}, not for {expected}; dial the name in its \
         certificate or reissue it with `lbctl certs issue --host {expected}`"
    )]
    ServerNameMismatch {
        /// The name the client asked for.
        expected: String,
        /// The names in the certificate.
        presented: String,
    },
    /// The peer's certificate may not be used for its side of the connection.
    #[error(
        "the peer's certificate is not issued for this role ({detail}); reissue it with \
         `lbctl certs issue --role both`"
    )]
    WrongRole {
        /// rustls' description.
        detail: String,
    },
    /// The client presented no certificate.
    #[error(
        "the peer presented no client certificate; every connection needs one from \
         `lbctl certs issue`"
    )]
    NoClientCertificate,
    /// The peer refused our certificate or our connection.
    #[error("the peer refused the connection: {reason}")]
    RejectedByPeer {
        /// What the peer's alert means for us.
        reason: String,
    },
    /// The peer's certificate verified but carries no name to identify it by.
    #[error(
        "the peer's certificate carries neither a DNS name nor a CN; reissue it with `lbctl certs issue`"
    )]
    UnnamedPeer,
    /// Any other handshake failure.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// A certificate checked outside a handshake (see [`verify_client_cert`])
    /// is unusable for a reason without its own variant: unparsable,
    /// unsupported, or missing an extension.
    #[error(
        "the peer's certificate is not acceptable ({detail}); reissue it with `lbctl certs issue`"
    )]
    PeerCertificateInvalid {
        /// rustls' or the parser's description.
        detail: String,
    },
    /// A peer announced a different name than its certificate carries.
    #[error(
        "the peer says it is {claimed:?} but its certificate is for {certified:?}; configure it \
         with its own name or give it the certificate issued for {claimed:?}"
    )]
    PeerNameMismatch {
        /// The name in the peer's message.
        claimed: String,
        /// The name in its certificate.
        certified: String,
    },
    /// A peer's certificate is not the one pinned for it.
    #[error(
        "the peer {name:?} has certificate {actual}, but {expected} is pinned for it; if it was \
         reissued, update the pinned fingerprint"
    )]
    FingerprintMismatch {
        /// The peer's certificate name.
        name: String,
        /// The pinned fingerprint.
        expected: String,
        /// The presented fingerprint.
        actual: String,
    },
}

/// Result of this module's operations.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

impl TlsError {
    /// Classifies a failed handshake (the error a `tokio_rustls` accept,
    /// connect, read or write returned) into a variant that says what to fix.
    #[must_use]
    pub fn from_handshake(err: io::Error) -> Self {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return Self::Handshake(err);
        };
        match tls {
            rustls::Error::NoCertificatesPresented => Self::NoClientCertificate,
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Self::PeerCertificateExpired {
                    detail: tls.to_string(),
                },
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => Self::ServerNameMismatch {
                    expected: server_name_text(expected),
                    presented: presented.join(", "),
                },
                CertificateError::NotValidForName => Self::ServerNameMismatch {
                    expected: "the dialled name".to_string(),
                    presented: "another name".to_string(),
                },
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => Self::WrongRole {
                    detail: tls.to_string(),
                },
                _ => Self::Handshake(err),
            },
            rustls::Error::AlertReceived(alert) => {
                let reason = match alert {
                    AlertDescription::CertificateExpired => {
                        "it says our certificate has expired; renew it with `lbctl certs issue`"
                    }
                    AlertDescription::UnknownCA | AlertDescription::BadCertificate => {
                        "it does not accept our certificate (issued by another CA, or for \
                         another name or role); check that both sides use the same ca.pem"
                    }
                    AlertDescription::CertificateRequired => {
                        "it requires a client certificate and we sent none"
                    }
                    AlertDescription::UnsupportedCertificate => {
                        "our certificate is not issued for this role; reissue it with \
                         `--role both`"
                    }
                    AlertDescription::ProtocolVersion => "it does not speak TLS 1.3",
                    _ => return Self::Handshake(err),
                };
                Self::RejectedByPeer {
                    reason: reason.to_string(),
                }
            }
            _ => Self::Handshake(err),
        }
    }
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// Lowercase hex SHA-256 of a certificate's DER encoding, given as PEM (the
/// first certificate in it) or as DER. This is what a manager pins.
///
/// # Errors
///
/// [`TlsError::BadPem`] when `cert` starts as PEM but holds no readable
/// certificate.
pub fn fingerprint(cert: &[u8]) -> Result<String> {
    if cert.starts_with(b"-----") {
        let der = first_cert("certificate", cert)?;
        Ok(fingerprint_der(&der))
    } else {
        Ok(fingerprint_der(cert))
    }
}

fn fingerprint_der(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut hex = String::with_capacity(2 * digest.as_ref().len());
    for b in digest.as_ref() {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            what: what.to_string(),
            detail: "no PEM certificate in it".to_string(),
        });
    }
    Ok(certs)
}

fn first_cert(what: &str, pem: &[u8]) -> Result<CertificateDer<'static>> {
    let mut certs = certs_from_pem(what, pem)?;
    Ok(certs.swap_remove(0))
}

fn key_from_pem(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::BadPem {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    // Several CAs may be trusted at once while one replaces another.
    for cert in certs_from_pem("CA certificate", ca_pem.as_bytes())? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn chain_and_key(
    identity: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let what = format!("certificate of {}", identity.host);
    let chain = certs_from_pem(&what, identity.cert_pem.as_bytes())?;
    let key = key_from_pem(
        &format!("key of {}", identity.host),
        identity.key_pem.as_bytes(),
    )?;
    Ok((chain, key))
}

/// Server side: presents `identity` and requires every client to present a
/// certificate issued by a CA in `ca_pem`.
///
/// # Errors
///
/// [`TlsError::BadPem`] when `ca_pem`, the certificate or the key of
/// `identity` cannot be read; [`TlsError::Config`] when rustls refuses them
/// (e.g. a key that is not the certificate's).
pub fn server_config(ca_pem: &str, identity: &Identity) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let (chain, key) = chain_and_key(identity)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate of {}: {e}", identity.host)))?;
    Ok(Arc::new(config))
}

/// Client side: presents `identity` and accepts a server whose certificate is
/// issued by a CA in `ca_pem` for the name dialled (see [`server_name`]).
///
/// # Errors
///
/// [`TlsError::BadPem`] when `ca_pem`, the certificate or the key of
/// `identity` cannot be read; [`TlsError::Config`] when rustls refuses them
/// (e.g. a key that is not the certificate's).
pub fn client_config(ca_pem: &str, identity: &Identity) -> Result<Arc<ClientConfig>> {
    let (chain, key) = chain_and_key(identity)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("certificate of {}: {e}", identity.host)))?;
    Ok(Arc::new(config))
}

/// The name a client dials `host` by: a DNS name, or an address (which the
/// server's certificate must carry as an IP SAN).
///
/// # Errors
///
/// [`TlsError::InvalidHostName`] when `host` is neither a DNS name nor an
/// address.
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| TlsError::InvalidHostName {
        host: host.to_string(),
        reason: e.to_string(),
    })
}

/// Accepts a TLS connection on `io` and returns it with the client's
/// verified identity. Errors say what to fix (see [`TlsError::from_handshake`]).
///
/// # Errors
///
/// The handshake's failure, classified by [`TlsError::from_handshake`];
/// [`TlsError::UnnamedPeer`] when the client's certificate carries no name.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
) -> Result<(tokio_rustls::server::TlsStream<IO>, PeerIdentity)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = tokio_rustls::TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(TlsError::from_handshake)?;
    let peer = peer_identity(stream.get_ref().1).ok_or(TlsError::UnnamedPeer)?;
    Ok((stream, peer))
}

/// Opens a TLS connection on `io` to `host` (a DNS name or address that the
/// server's certificate must carry) and returns it with the server's verified
/// identity.
///
/// # Errors
///
/// [`TlsError::InvalidHostName`] when `host` cannot be dialled by name; the
/// handshake's failure, classified by [`TlsError::from_handshake`];
/// [`TlsError::UnnamedPeer`] when the server's certificate carries no name.
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    host: &str,
    io: IO,
) -> Result<(tokio_rustls::client::TlsStream<IO>, PeerIdentity)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name(host)?, io)
        .await
        .map_err(TlsError::from_handshake)?;
    let peer = peer_identity(stream.get_ref().1).ok_or(TlsError::UnnamedPeer)?;
    Ok((stream, peer))
}

/// Who is at the other end of an established connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// First DNS name in the peer's certificate, else its CN.
    pub name: String,
    /// Lowercase hex SHA-256 of the peer's certificate (DER).
    pub fingerprint_sha256: String,
}

/// The verified peer of a connection, from its leaf certificate. Pass the
/// connection state, e.g. `stream.get_ref().1` of a `tokio_rustls` stream.
/// `None` before the handshake, or if the certificate carries no name.
#[must_use]
pub fn peer_identity(conn: &CommonState) -> Option<PeerIdentity> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(PeerIdentity {
        name: cert_name(&cert)?,
        fingerprint_sha256: fingerprint_der(leaf.as_ref()),
    })
}

fn cert_name(cert: &X509Certificate<'_>) -> Option<String> {
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return Some((*dns).to_string());
            }
        }
    }
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Checks that the name a peer announced (e.g. the host in an agent's hello)
/// is the name its certificate was issued for.
///
/// # Errors
///
/// [`TlsError::PeerNameMismatch`] when `claimed` is not the certificate's name
/// (compared without regard to ASCII case).
pub fn check_peer_name(identity: &PeerIdentity, claimed: &str) -> Result<()> {
    if identity.name.eq_ignore_ascii_case(claimed) {
        Ok(())
    } else {
        Err(TlsError::PeerNameMismatch {
            claimed: claimed.to_string(),
            certified: identity.name.clone(),
        })
    }
}

/// Checks that a peer presented the certificate pinned for it (`expected`,
/// as printed by [`fingerprint`]; case and ':' separators are ignored).
///
/// # Errors
///
/// [`TlsError::FingerprintMismatch`] when the peer's certificate is not the
/// pinned one.
pub fn check_peer_fingerprint(identity: &PeerIdentity, expected: &str) -> Result<()> {
    let normal: String = expected
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if normal == identity.fingerprint_sha256 {
        Ok(())
    } else {
        Err(TlsError::FingerprintMismatch {
            name: identity.name.clone(),
            expected: expected.to_string(),
            actual: identity.fingerprint_sha256.clone(),
        })
    }
}

/// Checks a client certificate (DER) outside a TLS handshake — e.g. the one
/// a signed discovery announcement carries: it must be issued by a CA in
/// `ca_pem`, be within its validity period now and allow client
/// authentication. Returns the identity it names, as [`accept`] would.
///
/// A listener checking many certificates builds a [`ClientCertChecker`]
/// once instead.
///
/// # Errors
///
/// As [`ClientCertChecker::new`] and [`ClientCertChecker::check`].
pub fn verify_client_cert(ca_pem: &str, cert_der: &[u8]) -> Result<PeerIdentity> {
    ClientCertChecker::new(ca_pem)?.check(cert_der)
}

/// [`verify_client_cert`] with the CA certificates parsed once.
#[derive(Debug, Clone)]
pub struct ClientCertChecker {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl ClientCertChecker {
    /// Trusts the CA certificates in `ca_pem` (several while one replaces
    /// another), as [`server_config`] does.
    ///
    /// # Errors
    ///
    /// [`TlsError::BadPem`] when `ca_pem` holds no readable certificate;
    /// [`TlsError::Config`] when rustls refuses one as a CA.
    pub fn new(ca_pem: &str) -> Result<Self> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Self { verifier })
    }

    /// Checks `cert_der` (an end-entity certificate, no intermediates) at
    /// the current time; see [`verify_client_cert`].
    ///
    /// # Errors
    ///
    /// [`TlsError::PeerCertificateExpired`] outside its validity period;
    /// [`TlsError::UnknownCa`] when no trusted CA issued it;
    /// [`TlsError::WrongRole`] when it may not authenticate a client;
    /// [`TlsError::PeerCertificateInvalid`] when it cannot be parsed or is
    /// otherwise refused; [`TlsError::UnnamedPeer`] when it carries no name.
    pub fn check(&self, cert_der: &[u8]) -> Result<PeerIdentity> {
        let cert = CertificateDer::from(cert_der);
        self.verifier
            .verify_client_cert(&cert, &[], rustls::pki_types::UnixTime::now())
            .map_err(certificate_error)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| {
            TlsError::PeerCertificateInvalid {
                detail: e.to_string(),
            }
        })?;
        Ok(PeerIdentity {
            name: cert_name(&parsed).ok_or(TlsError::UnnamedPeer)?,
            fingerprint_sha256: fingerprint_der(cert_der),
        })
    }
}

/// Classifies a certificate refused outside a handshake like
/// [`TlsError::from_handshake`] does inside one.
fn certificate_error(err: rustls::Error) -> TlsError {
    let detail = err.to_string();
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                TlsError::PeerCertificateExpired { detail }
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => TlsError::UnknownCa,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                TlsError::WrongRole { detail }
            }
            _ => TlsError::PeerCertificateInvalid { detail },
        },
        _ => TlsError::PeerCertificateInvalid { detail },
    }
}

#[cfg(test)]
mod tests;
