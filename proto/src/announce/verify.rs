//! The manager's side: checking announcement datagrams.

use std::time::Duration;

use ring::signature;
use thiserror::Error;

use super::{
    Announce, Auth, DEFAULT_REPLAY_CAPACITY, DEFAULT_WINDOW, MAX_DATAGRAM_BYTES,
    SIGNATURE_ALGORITHM,
    replay::ReplayCache,
    wire::{from_hex, short, single_cert, split},
};
use crate::tls::{ClientCertChecker, PeerIdentity, TlsError};

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
    /// The host already has its share of the replay cache: more
    /// announcements within the window than an agent sends.
    #[error(
        "{host} already has {quota} announcements within the window, its share of the replay cache; this one is refused"
    )]
    HostQuota {
        /// The announced (and certified) host.
        host: String,
        /// Its share.
        quota: usize,
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
    pub const REASONS: [&'static str; 9] = [
        "oversized",
        "malformed",
        "stale",
        "replayed",
        "replay-cache-full",
        "untrusted-certificate",
        "name-mismatch",
        "bad-signature",
        "host-quota",
    ];

    /// The position of [`reason`](Self::reason) in [`REASONS`](Self::REASONS).
    #[must_use]
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
            Self::HostQuota { .. } => 8,
        }
    }

    /// A short label: `oversized`, `malformed`, `stale`, `replayed`,
    /// `replay-cache-full`, `untrusted-certificate`, `name-mismatch` or
    /// `bad-signature`.
    #[must_use]
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
    /// Certificates that chained to the CA, by SHA-256 of their DER, with
    /// when they were checked: a flood of announcements signed (or claimed
    /// to be) by one certificate costs one chain check a [`CERT_CACHE_TTL_MS`].
    checked: std::collections::HashMap<[u8; 32], (PeerIdentity, u64)>,
}

/// How long a certificate's chain check is reused.
const CERT_CACHE_TTL_MS: u64 = 60_000;
/// Most certificates remembered (then the memory starts afresh).
const CERT_CACHE_SIZE: usize = 4096;

impl AnnounceVerifier {
    /// Trusts the CA certificates in `ca_pem`, with [`DEFAULT_WINDOW`] and
    /// [`DEFAULT_REPLAY_CAPACITY`].
    ///
    /// # Errors
    ///
    /// A [`TlsError`] when `ca_pem` holds no usable CA certificate.
    pub fn new(ca_pem: &str) -> Result<Self, TlsError> {
        Self::with_limits(ca_pem, DEFAULT_WINDOW, DEFAULT_REPLAY_CAPACITY)
    }

    /// Like [`new`](Self::new) with another clock window and replay cache
    /// size.
    ///
    /// # Errors
    ///
    /// A [`TlsError`] when `ca_pem` holds no usable CA certificate.
    pub fn with_limits(
        ca_pem: &str,
        window: Duration,
        replay_capacity: usize,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            certificates: ClientCertChecker::new(ca_pem)?,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            replay: ReplayCache::new(replay_capacity),
            checked: std::collections::HashMap::new(),
        })
    }

    /// The identity of a certificate that chains to the CA: checked once a
    /// [`CERT_CACHE_TTL_MS`], remembered meanwhile.
    fn check_certificate(&mut self, der: &[u8], now_ms: u64) -> Result<PeerIdentity, Rejected> {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some((identity, at)) = self.checked.get(&key)
            && now_ms.saturating_sub(*at) < CERT_CACHE_TTL_MS
        {
            return Ok(identity.clone());
        }
        let identity = self
            .certificates
            .check(der)
            .map_err(Rejected::Certificate)?;
        if self.checked.len() >= CERT_CACHE_SIZE {
            self.checked.clear();
        }
        self.checked.insert(key, (identity.clone(), now_ms));
        Ok(identity)
    }

    /// The `(host, nonce)` pairs remembered now.
    #[must_use]
    pub fn remembered(&self) -> usize {
        self.replay.len()
    }

    /// Checks one datagram received at `now_ms` (Unix milliseconds). Cheap
    /// checks (size, syntax, time, replay) come before the signature ones;
    /// the nonce is remembered only once everything passed.
    ///
    /// # Errors
    ///
    /// A [`Rejected`] saying why the datagram is refused:
    /// [`Oversized`](Rejected::Oversized); [`Malformed`](Rejected::Malformed)
    /// when it is not the two elements this protocol allows, the
    /// announcement is invalid, the algorithm unknown, or the signature or
    /// certificate unreadable; [`Stale`](Rejected::Stale) when its time is
    /// outside the window; [`Replayed`](Rejected::Replayed);
    /// [`Certificate`](Rejected::Certificate) when the certificate does not
    /// chain to the CA or may not authenticate a client;
    /// [`NameMismatch`](Rejected::NameMismatch) when it is for another host;
    /// [`BadSignature`](Rejected::BadSignature); and
    /// [`ReplayCacheFull`](Rejected::ReplayCacheFull) when everything passed
    /// but its nonce cannot be remembered.
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
        announce
            .validate()
            .map_err(|e| Rejected::Malformed(e.to_string()))?;
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
        let identity = self.check_certificate(der.as_ref(), now_ms)?;
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
