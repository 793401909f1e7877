//! What can go wrong with certificates and connections, and how rustls'
//! failures map onto variants that say what to fix.

use std::{io, net::IpAddr, path::PathBuf};

use rustls::{AlertDescription, CertificateError, pki_types::ServerName};

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
    /// A certificate checked outside a handshake (see
    /// [`verify_client_cert`](super::verify_client_cert)) is unusable for a
    /// reason without its own variant: unparsable, unsupported, or missing
    /// an extension.
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

/// Classifies a certificate refused outside a handshake like
/// [`TlsError::from_handshake`] does inside one.
pub(super) fn certificate_error(err: rustls::Error) -> TlsError {
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
