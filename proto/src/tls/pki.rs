//! The project CA and host certificates: creating them, and the directory
//! they are kept in (layout in the [parent module](super)).

use std::{
    fmt,
    fs::DirBuilder,
    io,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{Result, TlsError, cert_name, fingerprint, first_cert};

/// File name of the CA certificate inside a [`Pki`] directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a [`Pki`] directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Clock skew tolerated between hosts: new certificates start this long ago.
const BACKDATE: Duration = Duration::from_mins(5);

/// Which side of a connection a certificate may act as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections (TLS server authentication).
    Server,
    /// Dials connections (TLS client authentication).
    Client,
    /// Both: a manager accepts agents and dials nodes.
    Both,
}

impl Role {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Self::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Self::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Self::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// An extra subject alternative name for a host certificate (the host name
/// itself is always the first DNS name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanEntry {
    /// Another DNS name the host is dialled by.
    Dns(String),
    /// An address the host is dialled by.
    Ip(IpAddr),
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity; may be in the past (for tests of expiry).
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from a few minutes ago (tolerating clock skew) for `valid_for`.
    #[must_use]
    pub fn from_now(valid_for: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            // An unrepresentable end is left empty and refused by `issue`.
            not_after: now.checked_add(valid_for).unwrap_or(now),
        }
    }

    /// Valid from `valid_from` for `valid_for`.
    #[must_use]
    pub fn starting(valid_from: SystemTime, valid_for: Duration) -> Self {
        Self {
            not_before: valid_from,
            not_after: valid_from.checked_add(valid_for).unwrap_or(valid_from),
        }
    }
}

/// The project CA: certificate and private key, PEM.
#[derive(Clone)]
pub struct CaBundle {
    /// CA certificate (PEM); what every host trusts.
    pub cert_pem: String,
    /// CA private key (PEM, PKCS#8); what signs host certificates.
    pub key_pem: String,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// One host's certificate and private key, PEM.
#[derive(Clone)]
pub struct Identity {
    /// Host name: the certificate's CN and first DNS name.
    pub host: String,
    /// Host certificate (PEM), signed by the CA.
    pub cert_pem: String,
    /// Host private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("host", &self.host)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

impl Identity {
    /// SHA-256 fingerprint of this certificate (see [`fingerprint`]).
    ///
    /// # Errors
    ///
    /// [`TlsError::BadPem`] when the certificate cannot be read.
    pub fn fingerprint(&self) -> Result<String> {
        fingerprint(self.cert_pem.as_bytes())
    }
}

/// Creates a self-signed CA named `name`, valid from now for `valid_for`.
///
/// # Errors
///
/// [`TlsError::InvalidValidity`] when the period cannot go into a certificate;
/// [`TlsError::Generate`] when the key or the certificate cannot be made.
pub fn create_ca(name: &str, valid_for: Duration) -> Result<CaBundle> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, name.to_string());
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, Validity::from_now(valid_for))?;
    let cert = params.self_signed(&key)?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate for `host`, signed by `ca`.
///
/// `host` becomes the CN and the first DNS name; `sans` adds more names and
/// addresses. `role` limits which side of a connection it may act as. The
/// validity is taken as given, so an already expired certificate can be made
/// for tests. Fails if `host` is not a DNS name or the CA is unusable.
///
/// # Errors
///
/// [`TlsError::InvalidHostName`] when `host` or a DNS name in `sans` is not a
/// usable host name; [`TlsError::BadPem`] when the CA's key or certificate
/// cannot be read; [`TlsError::InvalidValidity`] when `validity` cannot go
/// into a certificate; [`TlsError::Generate`] when the key or the certificate
/// cannot be made.
pub fn issue(
    ca: &CaBundle,
    host: &str,
    role: Role,
    sans: &[SanEntry],
    validity: Validity,
) -> Result<Identity> {
    validate_host(host)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| TlsError::BadPem {
        what: "CA key".to_string(),
        detail: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| TlsError::BadPem {
        what: "CA certificate".to_string(),
        detail: e.to_string(),
    })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, host.to_string());
    params.subject_alt_names = vec![SanType::DnsName(host.to_string().try_into()?)];
    for san in sans {
        let entry = match san {
            SanEntry::Dns(name) => {
                validate_host(name)?;
                SanType::DnsName(name.clone().try_into()?)
            }
            SanEntry::Ip(ip) => SanType::IpAddress(*ip),
        };
        params.subject_alt_names.push(entry);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = role.extended_key_usages();
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Identity {
        host: host.to_string(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn set_validity(params: &mut CertificateParams, validity: Validity) -> Result<()> {
    let invalid = || TlsError::InvalidValidity;
    if validity.not_after <= validity.not_before {
        return Err(invalid());
    }
    params.not_before = x509_time(validity.not_before).ok_or_else(invalid)?;
    params.not_after = x509_time(validity.not_after).ok_or_else(invalid)?;
    Ok(())
}

/// `t` if a certificate can carry it (X.509 times end with year 9999).
fn x509_time(t: SystemTime) -> Option<time::OffsetDateTime> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_secs()).ok()?,
    };
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    (1950..=9999).contains(&t.year()).then_some(t)
}

/// A host name must be a DNS name (it goes into the certificate and is what
/// clients dial) and a plain file name (it names `DIR/<host>.pem`).
pub(super) fn validate_host(host: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(TlsError::InvalidHostName {
            host: host.to_string(),
            reason: reason.to_string(),
        })
    };
    if host.parse::<IpAddr>().is_ok() {
        return refuse(
            "an address is not a host name; name the host and add the address with --ip",
        );
    }
    if host == "ca" {
        return refuse("\"ca\" is the CA's own file name");
    }
    if rustls::pki_types::DnsName::try_from(host).is_err() || host.starts_with('.') {
        return refuse("use letters, digits, '-' and '.' (a DNS name)");
    }
    Ok(())
}

/// A directory of CA and host certificates (layout in the module docs).
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// The PKI directory `dir` (nothing is read or created yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ca.pem`.
    #[must_use]
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// `DIR/ca.key`.
    #[must_use]
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join(CA_KEY_FILE)
    }

    /// `DIR/<host>.pem`.
    #[must_use]
    pub fn cert_path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.pem"))
    }

    /// `DIR/<host>.key`.
    #[must_use]
    pub fn key_path(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.key"))
    }

    fn init_command(&self) -> String {
        format!("lbctl certs init --dir {}", self.dir.display())
    }

    fn issue_command(&self, host: &str) -> String {
        format!(
            "lbctl certs issue --dir {} --host {host}",
            self.dir.display()
        )
    }

    /// Creates a CA (see [`create_ca`]) and writes it here. Refuses to replace
    /// an existing one unless `force`.
    ///
    /// # Errors
    ///
    /// [`TlsError::CaExists`] when a CA is here and `force` is false; as
    /// [`create_ca`]; [`TlsError::Write`] when the directory or a file cannot be
    /// written.
    pub fn init_ca(&self, name: &str, valid_for: Duration, force: bool) -> Result<CaBundle> {
        self.check_no_ca(force)?;
        let ca = create_ca(name, valid_for)?;
        self.write_ca(&ca, force)?;
        Ok(ca)
    }

    /// Issues a certificate for `host` from the CA here (see [`issue`]) and
    /// writes it, replacing an older one for the same host.
    ///
    /// # Errors
    ///
    /// As [`load_ca`](Self::load_ca) and [`issue`](fn@issue); [`TlsError::Write`]
    /// when the directory or a file cannot be written.
    pub fn issue(
        &self,
        host: &str,
        role: Role,
        sans: &[SanEntry],
        validity: Validity,
    ) -> Result<Identity> {
        let ca = self.load_ca()?;
        let identity = issue(&ca, host, role, sans, validity)?;
        self.write_identity(&identity)?;
        Ok(identity)
    }

    fn check_no_ca(&self, force: bool) -> Result<()> {
        if force {
            return Ok(());
        }
        for file in [self.ca_cert_path(), self.ca_key_path()] {
            if file.exists() {
                return Err(TlsError::CaExists {
                    dir: self.dir.clone(),
                    file,
                });
            }
        }
        Ok(())
    }

    /// Writes `DIR/ca.pem` and `DIR/ca.key` (0600), creating the directory
    /// (0700) if needed. Refuses to replace an existing CA unless `force`.
    ///
    /// # Errors
    ///
    /// [`TlsError::CaExists`] when a CA is here and `force` is false;
    /// [`TlsError::Write`] when the directory or a file cannot be written.
    pub fn write_ca(&self, ca: &CaBundle, force: bool) -> Result<()> {
        self.check_no_ca(force)?;
        self.create_dir()?;
        write_atomic(&self.ca_key_path(), ca.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.ca_cert_path(), ca.cert_pem.as_bytes(), 0o644)
    }

    /// Writes `DIR/<host>.pem` and `DIR/<host>.key` (0600), replacing older
    /// ones.
    ///
    /// # Errors
    ///
    /// [`TlsError::InvalidHostName`] when the identity's host cannot name a file;
    /// [`TlsError::Write`] when the directory or a file cannot be written.
    pub fn write_identity(&self, identity: &Identity) -> Result<()> {
        validate_host(&identity.host)?;
        self.create_dir()?;
        write_atomic(
            &self.key_path(&identity.host),
            identity.key_pem.as_bytes(),
            0o600,
        )?;
        write_atomic(
            &self.cert_path(&identity.host),
            identity.cert_pem.as_bytes(),
            0o644,
        )
    }

    fn create_dir(&self) -> Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| TlsError::Write {
                path: self.dir.clone(),
                source,
            })
    }

    /// Reads `DIR/ca.pem`: what a host needs to verify its peers. Fails if it
    /// is missing, unreadable or outside its validity period.
    ///
    /// # Errors
    ///
    /// [`TlsError::MissingFile`] or [`TlsError::Read`] when it cannot be read,
    /// [`TlsError::BadPem`] when it holds no readable certificate,
    /// [`TlsError::Expired`] or [`TlsError::NotYetValid`] outside its validity
    /// period; each says what to do.
    pub fn load_ca_cert(&self) -> Result<String> {
        let path = self.ca_cert_path();
        let pem = read_text(&path, || {
            format!(
                "create the CA with `{}` (or copy ca.pem from where it was created)",
                self.init_command()
            )
        })?;
        check_cert_file(&path, &pem, || {
            format!("create a new CA with `{} --force`", self.init_command())
        })?;
        Ok(pem)
    }

    /// Reads the CA certificate and key: what issuing needs.
    ///
    /// # Errors
    ///
    /// As [`load_ca_cert`](Self::load_ca_cert); [`TlsError::MissingFile`],
    /// [`TlsError::Read`] or [`TlsError::BadPem`] for the key;
    /// [`TlsError::KeyMismatch`] when it is not the certificate's key.
    pub fn load_ca(&self) -> Result<CaBundle> {
        let cert_pem = self.load_ca_cert()?;
        let key_path = self.ca_key_path();
        let key_pem = read_key(&key_path, || {
            format!(
                "certificates are issued where the CA key is; run this there, or replace the \
                 CA with `{} --force`",
                self.init_command()
            )
        })?;
        check_key_matches(&cert_pem, &key_pem, &key_path, &self.ca_cert_path(), || {
            format!(
                "restore the matching ca.key, or create a new CA with `{} --force`",
                self.init_command()
            )
        })?;
        Ok(CaBundle { cert_pem, key_pem })
    }

    /// Reads `DIR/<host>.pem` and `DIR/<host>.key`. Fails if either is
    /// missing, the certificate is outside its validity period or names
    /// another host, or the key is not the certificate's.
    ///
    /// # Errors
    ///
    /// [`TlsError::InvalidHostName`] when `host` cannot name a file;
    /// [`TlsError::MissingFile`], [`TlsError::Read`] or [`TlsError::BadPem`] when
    /// the certificate or the key cannot be read; [`TlsError::Expired`] or
    /// [`TlsError::NotYetValid`] outside the certificate's validity period;
    /// [`TlsError::WrongHost`] when it names another host;
    /// [`TlsError::KeyMismatch`] when the key is not the certificate's.
    pub fn load_identity(&self, host: &str) -> Result<Identity> {
        validate_host(host)?;
        let cert_path = self.cert_path(host);
        let key_path = self.key_path(host);
        let fix = || self.issue_command(host);
        let cert_pem = read_text(&cert_path, || format!("issue it with `{}`", fix()))?;
        let cert = check_cert_file(&cert_path, &cert_pem, || {
            format!("issue a new one with `{}`", fix())
        })?;
        if !cert.eq_ignore_ascii_case(host) {
            return Err(TlsError::WrongHost {
                path: cert_path,
                expected: host.to_string(),
                found: cert,
                fix: fix(),
            });
        }
        let key_pem = read_key(&key_path, || format!("issue a new pair with `{}`", fix()))?;
        check_key_matches(&cert_pem, &key_pem, &key_path, &cert_path, || {
            format!("issue a new pair with `{}`", fix())
        })?;
        Ok(Identity {
            host: host.to_string(),
            cert_pem,
            key_pem,
        })
    }
}

fn read_text(path: &Path, fix: impl FnOnce() -> String) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            TlsError::MissingFile {
                path: path.to_path_buf(),
                fix: fix(),
            }
        } else {
            TlsError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn read_key(path: &Path, fix: impl FnOnce() -> String) -> Result<String> {
    let pem = read_text(path, fix)?;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "private key is readable by other users; chmod 600 it");
        }
    }
    Ok(pem)
}

/// Parses the first certificate in `pem` and checks its validity period
/// against now. Returns its name.
fn check_cert_file(path: &Path, pem: &str, fix: impl FnOnce() -> String) -> Result<String> {
    let what = path.display().to_string();
    let der = first_cert(&what, pem.as_bytes())?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::BadPem {
            what: what.clone(),
            detail: e.to_string(),
        })?;
    let subject = cert_name(&cert).unwrap_or_else(|| "an unnamed subject".to_string());
    let now = unix_now();
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(TlsError::Expired {
            what,
            subject,
            not_after: validity.not_after.to_string(),
            fix: fix(),
        });
    }
    if validity.not_before.timestamp() > now {
        return Err(TlsError::NotYetValid {
            what,
            subject,
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(subject)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn check_key_matches(
    cert_pem: &str,
    key_pem: &str,
    key_path: &Path,
    cert_path: &Path,
    fix: impl FnOnce() -> String,
) -> Result<()> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::BadPem {
        what: key_path.display().to_string(),
        detail: e.to_string(),
    })?;
    let der = first_cert(&cert_path.display().to_string(), cert_pem.as_bytes())?;
    let matches = x509_parser::parse_x509_certificate(der.as_ref())
        .is_ok_and(|(_, cert)| cert.public_key().subject_public_key.data == key.public_key_raw());
    if matches {
        Ok(())
    } else {
        Err(TlsError::KeyMismatch {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
            fix: fix(),
        })
    }
}

/// Replaces `path` atomically with exactly `mode` (keys 0600): the
/// project's one atomic write.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    crate::atomic_file::write(path, contents, Some(mode)).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}
