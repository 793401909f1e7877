//! The agent's side: making signed announcement datagrams.

use std::fmt;

use ring::{
    rand::{SecureRandom as _, SystemRandom},
    signature::{self, EcdsaKeyPair, KeyPair as _},
};
use rustls::pki_types::{PrivateKeyDer, pem::PemObject as _};
use thiserror::Error;

use super::{
    Announce, Auth, InvalidAnnounce, MAX_DATAGRAM_BYTES, NONCE_BYTES, SIGNATURE_ALGORITHM,
    wire::{first_pem_block, single_cert, to_hex},
};
use crate::tls::Identity;

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
    Invalid(InvalidAnnounce),
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
            .finish_non_exhaustive()
    }
}

impl AnnounceSigner {
    /// Uses `identity`'s key to sign and its (first) certificate to
    /// authenticate; they must belong together.
    ///
    /// # Errors
    ///
    /// [`AnnounceError::Key`] when the key is not an ECDSA P-256 PKCS#8 key;
    /// [`AnnounceError::Certificate`] when the certificate is missing, unreadable,
    /// or not the certificate of that key.
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
        let der = single_cert(&cert_pem).map_err(|e| cert_error(e.to_string()))?;
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
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Stamps `template` with `time_ms` and a fresh nonce, signs it and
    /// returns the datagram.
    ///
    /// # Errors
    ///
    /// [`AnnounceError::HostMismatch`] when `template` is for another host than
    /// this signer's; [`AnnounceError::Invalid`] when the stamped announcement
    /// does not [`validate`](Announce::validate); [`AnnounceError::TooLarge`] when
    /// the datagram would exceed [`MAX_DATAGRAM_BYTES`];
    /// [`AnnounceError::Serialize`] or [`AnnounceError::Random`] when the XML
    /// serializer or the system random number generator fails.
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
