//! A hand-made agent stream for tests that attack the manager: mutual TLS
//! with a lab certificate, from a lab namespace, an agent's stream header,
//! then whatever bytes the test chooses; it returns what the manager
//! answered before it closed the stream.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use lb_proto::{
    Decoder, Encoder, Message, Role, StreamHeader,
    tls::{self, Pki},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::lab::Netns;

/// How long the manager has to answer and close the stream.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Connects from `ns` to the manager at `manager` with `host`'s
/// certificate from the CA in `pki_dir`, sends an agent's stream header
/// and `bytes`, and returns the manager's messages until it closes the
/// stream (or [`ANSWER_WITHIN`] passes).
///
/// # Errors
/// The connection or the TLS handshake fails.
pub fn send_as_agent(
    ns: &Netns,
    manager: SocketAddr,
    pki_dir: &Path,
    host: &str,
    bytes: &[u8],
) -> Result<Vec<Message>> {
    let pki = Pki::new(pki_dir);
    let config = tls::client_config(&pki.load_ca_cert()?, &pki.load_identity(host)?)?;
    let mut header = Encoder::new(Vec::new(), 1);
    header.start(&StreamHeader::new(Role::Agent, host))?;
    let mut out = header.take();
    out.extend_from_slice(bytes);
    ns.run(move || {
        // A runtime on this thread: its socket is made in `ns`.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(manager)
                .await
                .with_context(|| format!("connect {manager}"))?;
            let (mut stream, _) = tls::connect(config, "manager", tcp).await?;
            stream.write_all(&out).await?;
            stream.flush().await?;
            let mut decoder = Decoder::new();
            let mut answers = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
            loop {
                while let Ok(Some(m)) = decoder.next() {
                    answers.push(m);
                }
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => decoder.feed(&buf[..n]),
                    _ => break,
                }
            }
            Ok(answers)
        })
    })
}
