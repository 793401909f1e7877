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

use std::{fmt::Write as _, sync::Arc};

use rustls::{
    ClientConfig, CommonState, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::io::{AsyncRead, AsyncWrite};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

use error::certificate_error;

mod error;
mod pki;

pub use error::TlsError;
pub use pki::{
    CA_CERT_FILE, CA_KEY_FILE, CaBundle, Identity, Pki, Role, SanEntry, Validity, create_ca, issue,
};

/// Result of this module's operations.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

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

#[cfg(test)]
mod tests;
