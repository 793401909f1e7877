//! The manager's sending side of an agent session: a bounded queue that
//! never makes its sender wait, and a writer whose every write has a
//! deadline.

use std::{sync::Arc, time::Duration};

use lb_proto::{Encoder, Message, Role, StreamHeader};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};

/// Messages queued for one agent's writer; a session with this many
/// unsent pushes back, and is dropped.
pub(super) const SEND_QUEUE: usize = 64;
/// How long one write to an agent may take before its session is dropped
/// (an agent that stopped reading).
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sending side of one agent session: messages are queued without
/// waiting; a session whose queue is full (its agent stopped reading) or
/// whose writer gave up is ended, never waited for.
#[derive(Debug, Clone)]
pub(super) struct SessionTx {
    pub(super) tx: mpsc::Sender<Message>,
    /// Told when the session must end: its reader stops at once.
    pub(super) stalled: Arc<tokio::sync::Notify>,
    /// The certificate the session's agent presented (lowercase hex).
    pub(super) fingerprint: String,
}

/// Why a message was not queued for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PushError {
    /// The agent does not read: its session is being ended.
    Stalled,
    /// The session has ended.
    Closed,
}

impl SessionTx {
    /// Ends the session: its reader stops at once.
    pub(super) fn end(&self) {
        self.stalled.notify_one();
    }

    /// Queues `message`; a full queue ends the session.
    pub(super) fn push(&self, message: Message) -> Result<(), PushError> {
        match self.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stalled.notify_one();
                Err(PushError::Stalled)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
        }
    }
}

/// The manager's side of an agent stream: its header, then each message
/// queued on `rx`, then the end of stream.
pub(super) async fn write_stream<W: AsyncWrite + Unpin>(
    name: String,
    mut write: W,
    mut rx: mpsc::Receiver<Message>,
    stalled: Arc<tokio::sync::Notify>,
) {
    write_messages(name, &mut write, &mut rx).await;
    // However it ended (the queue closed, a write failed or timed out),
    // the session ends with it.
    stalled.notify_one();
}

/// Each write bounded by [`WRITE_TIMEOUT`].
async fn write_bounded<W: AsyncWrite + Unpin>(write: &mut W, bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, write.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

async fn write_messages<W: AsyncWrite + Unpin>(
    name: String,
    write: &mut W,
    rx: &mut mpsc::Receiver<Message>,
) {
    let mut enc = Encoder::new(Vec::new(), 1);
    if enc.start(&StreamHeader::new(Role::Manager, name)).is_err() {
        return;
    }
    if !write_bounded(write, &enc.take()).await {
        return;
    }
    while let Some(mut m) = rx.recv().await {
        if enc.encode(&mut m).is_err() {
            continue;
        }
        if !write_bounded(write, &enc.take()).await {
            return;
        }
    }
    let _ = enc.finish();
    let _ = write_bounded(write, &enc.take()).await;
    let _ = write.shutdown().await;
}
