//! `lbctl certs`: the project's TLS certificates, files with no daemon.

use std::{process::ExitCode, time::Duration};

use lb_proto::tls::{Pki, SanEntry, Validity};

use crate::{cli::CertsCommand, output::out};

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 3600)
}

pub fn certs(command: CertsCommand, json: bool) -> ExitCode {
    let (pki, host, result) = match command {
        CertsCommand::Init {
            dir,
            name,
            days: n,
            force,
        } => {
            let pki = Pki::new(dir);
            let result = pki
                .init_ca(&name, days(n), force)
                .and_then(|ca| lb_proto::tls::fingerprint(ca.cert_pem.as_bytes()));
            (pki, None, result)
        }
        CertsCommand::Issue {
            dir,
            host,
            ip,
            dns,
            role,
            days: n,
        } => {
            let pki = Pki::new(dir);
            let sans: Vec<SanEntry> = ip
                .into_iter()
                .map(SanEntry::Ip)
                .chain(dns.into_iter().map(SanEntry::Dns))
                .collect();
            let result = pki
                .issue(&host, role.into(), &sans, Validity::from_now(days(n)))
                .and_then(|identity| identity.fingerprint());
            (pki, Some(host), result)
        }
    };
    let fingerprint = match result {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (cert, key) = match &host {
        Some(h) => (pki.cert_path(h), pki.key_path(h)),
        None => (pki.ca_cert_path(), pki.ca_key_path()),
    };
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
    ExitCode::SUCCESS
}
