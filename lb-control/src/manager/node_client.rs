//! Nodes on other hosts: the manager's client, one mutual-TLS XML stream
//! per manager–node pair (the node's end is `node::listener`).
//!
//! The manager dials the node and opens its stream with a `manager` header;
//! the node answers with a `node` header. Each `<reconfigure>` gets one
//! `<ack>`; the client sends one at a time and waits. Anything else is
//! answered with an `<error>`. A stream that breaks or times out is
//! dropped and dialled again on the next request.

use std::{sync::Arc, time::Duration};

use lb_proto::{
    Ack, Decoder, Encoder, Message, Reconfigure, Role, StreamHeader,
    tls::{self, Pki},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Mutex,
};
use tracing::{info, warn};

use super::node_link::LinkError;
use crate::manager::RemoteNodeConfig;
use crate::node::listener::{READ_CHUNK, node_stream_limits};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

struct Stream {
    io: ClientStream,
    encoder: Encoder<Vec<u8>>,
    decoder: Decoder,
    buf: Vec<u8>,
}

/// The manager's handle on one remote node.
pub struct RemoteNode {
    config: RemoteNodeConfig,
    manager: String,
    tls: Arc<rustls::ClientConfig>,
    stream: Mutex<Option<Stream>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl RemoteNode {
    /// `manager` is the manager's name (its certificate in `pki`).
    pub fn new(config: RemoteNodeConfig, manager: &str, pki: &Pki) -> Result<Self, LinkError> {
        let ca = pki.load_ca_cert()?;
        let identity = pki.load_identity(manager)?;
        Ok(Self {
            config,
            manager: manager.to_owned(),
            tls: tls::client_config(&ca, &identity)?,
            stream: Mutex::new(None),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Sends `message`, waits up to `timeout` for the ack of its generation.
    pub async fn reconfigure(
        &self,
        message: Reconfigure,
        timeout: Duration,
    ) -> Result<Ack, LinkError> {
        let generation = message.generation;
        self.round_trip(message.into(), timeout, |m| match m {
            Message::Ack(a) if a.generation == generation => Some(a),
            _ => None,
        })
        .await
    }

    /// Sends `message` and waits for the answer `pick` recognises, dialling
    /// first if needed; a stream that fails or times out is dropped.
    async fn round_trip<T>(
        &self,
        message: Message,
        timeout: Duration,
        pick: impl Fn(Message) -> Option<T>,
    ) -> Result<T, LinkError> {
        let mut slot = self.stream.lock().await;
        let result = tokio::time::timeout(timeout, async {
            if slot.is_none() {
                *slot = Some(self.connect().await?);
            }
            let Some(stream) = slot.as_mut() else {
                unreachable!("connected above")
            };
            self.exchange(stream, message, &pick).await
        })
        .await;
        match result {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e)) => {
                *slot = None;
                Err(e)
            }
            Err(_) => {
                // A half-read answer would confuse the next request.
                *slot = None;
                Err(LinkError::Timeout {
                    node: self.config.name.clone(),
                    waited: timeout,
                })
            }
        }
    }

    /// Asks the node for its status.
    pub async fn status(
        &self,
        count_flows: bool,
        timeout: Duration,
    ) -> Result<lb_proto::NodeStatus, LinkError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = lb_proto::StatusRequest {
            seq: 0,
            id,
            count_flows,
        };
        self.round_trip(request.into(), timeout, |m| match m {
            Message::NodeStatus(s) if s.id == id => Some(s),
            _ => None,
        })
        .await
    }

    async fn connect(&self) -> Result<Stream, LinkError> {
        let connect_error = |reason: String| LinkError::Connect {
            node: self.config.name.clone(),
            address: self.config.address.clone(),
            reason,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(self.config.address.as_str()),
        )
        .await
        .map_err(|_| connect_error(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_error(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (io, peer) = tls::connect(self.tls.clone(), &self.config.name, tcp)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let mut encoder = Encoder::with_limits(Vec::new(), 1, node_stream_limits());
        encoder
            .start(&StreamHeader::new(Role::Manager, self.manager.clone()))
            .map_err(|e| connect_error(e.to_string()))?;
        let mut stream = Stream {
            io,
            encoder,
            decoder: Decoder::with_limits(node_stream_limits()),
            buf: vec![0; READ_CHUNK],
        };
        let header = stream.encoder.take();
        stream
            .io
            .write_all(&header)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        info!(node = %self.config.name, address = %self.config.address, peer = %peer.name, "connected to node");
        Ok(stream)
    }

    async fn exchange<T>(
        &self,
        stream: &mut Stream,
        mut message: Message,
        pick: &impl Fn(Message) -> Option<T>,
    ) -> Result<T, LinkError> {
        let broken = |reason: String| LinkError::Stream {
            node: self.config.name.clone(),
            reason,
        };
        stream
            .encoder
            .encode(&mut message)
            .map_err(|e| broken(e.to_string()))?;
        let bytes = stream.encoder.take();
        stream
            .io
            .write_all(&bytes)
            .await
            .map_err(|e| broken(format!("write: {e}")))?;
        loop {
            while let Some(m) = stream.decoder.next().map_err(|e| broken(e.to_string()))? {
                if let Some(h) = stream.decoder.header()
                    && h.role != Role::Node
                {
                    return Err(broken(format!("peer says it is a {}, not a node", h.role)));
                }
                if let Message::Error(e) = &m {
                    return Err(broken(format!("error {}: {}", e.code, e.text)));
                }
                let name = m.name();
                match pick(m) {
                    Some(answer) => return Ok(answer),
                    None => {
                        warn!(node = %self.config.name, message = name, "unexpected message from node ignored");
                    }
                }
            }
            let n = stream
                .io
                .read(&mut stream.buf)
                .await
                .map_err(|e| broken(format!("read: {e}")))?;
            if n == 0 {
                return Err(broken("the node closed the stream".into()));
            }
            let Stream { decoder, buf, .. } = stream;
            decoder.feed(&buf[..n]);
        }
    }
}
