//! `lbctl certs`: the project's TLS certificates, files with no daemon.

use std::{path::PathBuf, time::Duration};

use lb_proto::tls::{Pki, SanEntry, TlsError, Validity};

use crate::{cli::CertsCommand, error::Error, output::out};

/// A certificate and key written, and the certificate's fingerprint.
struct Written {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

/// `lbctl certs init` or `lbctl certs issue`, then the files it wrote.
pub fn run(command: CertsCommand, json: bool) -> Result<(), Error> {
    let written = match command {
        CertsCommand::Init {
            dir,
            name,
            days: n,
            force,
        } => init(&Pki::new(dir), &name, n, force)?,
        CertsCommand::Issue {
            dir,
            host,
            ip,
            dns,
            role,
            days: n,
        } => {
            let sans: Vec<SanEntry> = ip
                .into_iter()
                .map(SanEntry::Ip)
                .chain(dns.into_iter().map(SanEntry::Dns))
                .collect();
            let validity = Validity::from_now(days(n));
            issue(&Pki::new(dir), &host, role.into(), &sans, validity)?
        }
    };
    print(&written, json);
    Ok(())
}

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 3600)
}

/// The project CA, valid for `n` days.
fn init(pki: &Pki, name: &str, n: u32, force: bool) -> Result<Written, TlsError> {
    let ca = pki.init_ca(name, days(n), force)?;
    Ok(Written {
        fingerprint: lb_proto::tls::fingerprint(ca.cert_pem.as_bytes())?,
        cert: pki.ca_cert_path(),
        key: pki.ca_key_path(),
    })
}

/// A host's certificate from the CA in `pki`'s directory.
fn issue(
    pki: &Pki,
    host: &str,
    role: lb_proto::tls::Role,
    sans: &[SanEntry],
    validity: Validity,
) -> Result<Written, TlsError> {
    let identity = pki.issue(host, role, sans, validity)?;
    Ok(Written {
        fingerprint: identity.fingerprint()?,
        cert: pki.cert_path(host),
        key: pki.key_path(host),
    })
}

fn print(written: &Written, json: bool) {
    let Written {
        cert,
        key,
        fingerprint,
    } = written;
    if json {
        let out = serde_json::json!({
            "certificate": cert,
            "key": key,
            "fingerprint_sha256": fingerprint,
        });
        out!("{out:#}");
    } else {
        out!("certificate  {}", cert.display());
        out!("key          {}", key.display());
        out!("sha256       {fingerprint}");
    }
}
