//! The agent's life: load credentials, start the probes, then connect to the
//! manager again and again (with backoff) until told to stop.

use std::path::{Path, PathBuf};

use lb_proto::{
    Fingerprint,
    tls::{Pki, TlsError},
};
use tokio::sync::watch;

use crate::{
    backoff::Backoff,
    collector::{CollectError, Collector},
    config::AgentConfig,
    discovery,
    monitor::ApplicationMonitor,
    readiness::Sysctl,
    session::{SeqClock, Session, Transport},
    sources::HOST_ROOT,
};

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The certificates in `tls_dir` are missing or unusable.
    #[error("TLS credentials in {dir}: {source}")]
    Credentials {
        /// The PKI directory.
        dir: PathBuf,
        /// What is wrong, and how to fix it.
        #[source]
        source: Box<TlsError>,
    },
    /// A credential file the agent's user may not read (or whose directory
    /// it may not enter): the systemd unit runs it as a user of its own.
    #[error(
        "TLS credentials in {dir}: {source}; lb-agent runs as uid {uid}, which must be able to \
         enter {dir} and read ca.pem, its host's .pem and its host's .key: chown the key to the \
         agent's user (it stays 0600) and let that user into the directory (`lbctl certs` makes \
         it 0700: chmod 755 it, or chgrp it to the agent's group and chmod 750)"
    )]
    Unreadable {
        /// The PKI directory.
        dir: PathBuf,
        /// The agent's user id.
        uid: u32,
        /// The refused read.
        #[source]
        source: Box<TlsError>,
    },
    /// A measurement source cannot be set up (e.g. the cgroup is missing).
    #[error("cannot set up measurements: {0}")]
    Sources(#[from] CollectError),
}

/// Reads the CA, this host's certificate and key from `tls_dir` (or nothing
/// in plaintext mode without one) and builds the transport.
pub fn load_transport(config: &AgentConfig) -> Result<Transport, AgentError> {
    let Some(dir) = &config.tls_dir else {
        return Ok(Transport::Plaintext {
            own_fingerprint: None,
        });
    };
    let credentials = |source: TlsError| match &source {
        TlsError::Read { source: io, .. } if io.kind() == std::io::ErrorKind::PermissionDenied => {
            AgentError::Unreadable {
                dir: dir.clone(),
                // SAFETY: geteuid(2) has no preconditions and cannot fail.
                uid: unsafe { libc::geteuid() },
                source: Box::new(source),
            }
        }
        _ => AgentError::Credentials {
            dir: dir.clone(),
            source: Box::new(source),
        },
    };
    let pki = Pki::new(dir);
    let identity = pki.load_identity(&config.host).map_err(credentials)?;
    let own_fingerprint = own_fingerprint(&identity.cert_pem).map_err(credentials)?;
    if config.insecure_plaintext {
        return Ok(Transport::Plaintext {
            own_fingerprint: Some(own_fingerprint),
        });
    }
    let ca = pki.load_ca_cert().map_err(credentials)?;
    let tls = lb_proto::tls::client_config(&ca, &identity).map_err(credentials)?;
    Ok(Transport::Tls {
        config: tls,
        own_fingerprint,
    })
}

fn own_fingerprint(cert_pem: &str) -> Result<Fingerprint, TlsError> {
    let hex = lb_proto::tls::fingerprint(cert_pem.as_bytes())?;
    hex.parse()
        .map_err(|e: lb_proto::ParseError| TlsError::BadPem {
            what: "own certificate fingerprint".to_owned(),
            detail: e.to_string(),
        })
}

/// Runs the agent until `shutdown` becomes `true`. Fails only when it
/// cannot start; losing the manager is retried forever.
pub async fn run(
    config: AgentConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut transport = load_transport(&config)?;
    let monitors = config
        .applications
        .iter()
        .map(ApplicationMonitor::spawn)
        .collect();
    let tls_dir = config.tls_dir.clone();
    let mut collector = Collector::new(config, Path::new(HOST_ROOT), Sysctl::host(), monitors)?;
    // Signed announcements on the segment, when `[discovery]` enables them;
    // the task ends with `shutdown`.
    let _announcer = discovery::spawn(collector.config(), collector.hello(), shutdown.clone());
    let mut backoff = Backoff::new();
    let mut seq = SeqClock::default();
    tracing::info!(
        host = %collector.config().host,
        manager = %collector.config().manager,
        manager_name = %collector.config().manager_name,
        cores = collector.capacity_cores(),
        applications = collector.config().applications.len(),
        "lb-agent started"
    );
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        if collector.config().insecure_plaintext {
            tracing::warn!(
                manager = %collector.config().manager,
                "insecure_plaintext = true: the manager connection is NOT encrypted and \
                 neither side is authenticated; use this only in a lab"
            );
        } else if tls_dir.is_some() {
            // Renewed certificates take effect on the next connection.
            match load_transport(collector.config()) {
                Ok(fresh) => transport = fresh,
                Err(error) => {
                    tracing::error!(%error, "cannot reload TLS credentials; using the ones loaded before");
                }
            }
        }
        let end = Session {
            collector: &mut collector,
            transport: &transport,
            seq: &mut seq,
            shutdown: &mut shutdown,
        }
        .run()
        .await;
        if let Some(lived) = end.connected_for
            && backoff.connection_ended(lived)
        {
            tracing::debug!(
                lived_s = lived.as_secs(),
                "connection was healthy; backoff reset"
            );
        }
        match end.result {
            Ok(()) => return Ok(()),
            Err(error) => tracing::warn!(%error, "manager connection ended"),
        }
        let delay = backoff.next_delay();
        tracing::info!(delay_ms = millis(delay), "reconnecting to the manager");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

use lb_proto::time::millis;
