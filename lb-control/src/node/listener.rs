//! The node's listener for remote managers: one mutual-TLS XML stream per
//! manager–node pair.
//!
//! The manager dials the node and opens its stream with a `manager` header;
//! the node answers with a `node` header. Each `<reconfigure>` gets one
//! `<ack>`; anything else is answered with an `<error>`.

use std::{net::SocketAddr, sync::Arc};

use lb_proto::{
    Decoder, Encoder, ErrorMessage, Limits, Message, ProtoError, Role, SequenceGuard, StreamHeader,
    tls::{self, Pki},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::{debug, info, warn};

use super::reconfigure::Reconfigurer;
use crate::{
    config::NodeControlConfig,
    net::{ConnectionLimits, HANDSHAKE_TIMEOUT, MessageReader},
};

/// Why the node cannot listen for managers.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("node `{node}` cannot listen on {address}: {reason}")]
    Bind {
        node: String,
        address: SocketAddr,
        reason: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(#[from] lb_proto::tls::TlsError),
}

/// Why a manager's stream on the node ended before its end of stream.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Encode(#[from] lb_proto::EncodeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("stream header says {role} `{host}` on the connection of manager `{manager}`")]
    NotTheManager {
        role: Role,
        host: String,
        manager: String,
    },
}

/// Limits for manager–node streams: both ends are authenticated, and a
/// service of 1000 servers is about 100 KiB of `<server>` elements.
#[must_use]
pub fn node_stream_limits() -> Limits {
    Limits {
        max_message_bytes: 4 << 20,
        ..Limits::default()
    }
}

/// Bytes read from a stream at a time.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Connections the listener holds: a few managers, each with a stream or
/// two; anything beyond is closed at once.
const MANAGER_CONNECTIONS: ConnectionLimits = ConnectionLimits {
    total: 64,
    per_source: 8,
};

/// Starts the node's listener for remote managers (`[node.control]`);
/// returns the bound address.
pub async fn serve(
    agent: Arc<Reconfigurer>,
    config: &NodeControlConfig,
) -> Result<SocketAddr, ListenError> {
    let pki = Pki::new(&config.tls_dir);
    let ca = pki.load_ca_cert()?;
    let identity = pki.load_identity(&config.name)?;
    let tls_config = tls::server_config(&ca, &identity)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|reason| ListenError::Bind {
            node: config.name.clone(),
            address: config.listen,
            reason,
        })?;
    let bound = listener.local_addr().map_err(|reason| ListenError::Bind {
        node: config.name.clone(),
        address: config.listen,
        reason,
    })?;
    info!(addr = %bound, "node listening for managers");
    let config = config.clone();
    crate::net::spawn_accept_loop(
        "node control",
        listener,
        MANAGER_CONNECTIONS,
        move |tcp, peer, slot| {
            let agent = agent.clone();
            let tls_config = tls_config.clone();
            let config = config.clone();
            async move {
                let _slot = slot;
                let Ok(handshake) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, tls::accept(tls_config, tcp)).await
                else {
                    debug!(%peer, "TLS handshake not finished in time; closed");
                    return;
                };
                match handshake {
                    Ok((stream, id)) => {
                        if !config.managers.contains(&id.name) {
                            warn!(%peer, name = %id.name, allowed = ?config.managers, "manager refused: its certificate name is not in node.control.managers");
                            return;
                        }
                        info!(%peer, manager = %id.name, "manager connected");
                        if let Err(e) = session(&agent, &config.name, stream, &id.name).await {
                            warn!(%peer, manager = %id.name, error = %e, "manager stream closed");
                        }
                    }
                    Err(e) => warn!(%peer, error = %e, "manager refused at the TLS handshake"),
                }
            }
        },
    );
    Ok(bound)
}

/// One manager stream on the node.
async fn session<S>(
    agent: &Reconfigurer,
    name: &str,
    stream: S,
    manager: &str,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut encoder = Encoder::with_limits(Vec::new(), 1, node_stream_limits());
    encoder.start(&StreamHeader::new(Role::Node, name.to_owned()))?;
    write.write_all(&encoder.take()).await?;
    let decoder = Decoder::with_limits(node_stream_limits());
    let mut messages = MessageReader::new(read, decoder, READ_CHUNK);
    let mut guard = SequenceGuard::new();
    while let Some(next) = messages.next().await? {
        let message = match next {
            Ok(m) => m,
            Err(e) => {
                let mut reply = ErrorMessage::from_error(&e).into();
                let _ = encoder.encode(&mut reply);
                let _ = write.write_all(&encoder.take()).await;
                if e.is_fatal() {
                    return Err(e.into());
                }
                continue;
            }
        };
        if let Some(h) = messages.decoder().header()
            && (h.role != Role::Manager || h.host != manager)
        {
            return Err(SessionError::NotTheManager {
                role: h.role,
                host: h.host.clone(),
                manager: manager.to_owned(),
            });
        }
        if let Err(stale) = guard.check(message.seq()) {
            warn!(manager, error = %stale, "replayed or stale message ignored");
            continue;
        }
        let mut reply: Message = match message {
            Message::Reconfigure(r) => agent.reconfigure(&r).await.into(),
            Message::StatusRequest(r) => lb_proto::NodeStatus {
                id: r.id,
                ..agent.node_status(r.count_flows).await
            }
            .into(),
            other => ErrorMessage {
                seq: 0,
                code: "unexpected".into(),
                rejected_seq: Some(other.seq()),
                text: format!("`{}` is not for a node", other.name()),
            }
            .into(),
        };
        encoder.encode(&mut reply)?;
        write.write_all(&encoder.take()).await?;
    }
    Ok(())
}
