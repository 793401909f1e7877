//! Settings requests to agents and their answers: keyed by (host asked,
//! unpredictable id), answered only on that host's own stream.

use std::{sync::atomic::Ordering, time::Duration};

use lb_proto::{Message, SettingsKind, SettingsRequest};
use tokio::sync::oneshot;
use tracing::warn;

use super::{Manager, ManagerError, PushError};
use crate::manager::{db::canonical, events::NewEvent};

impl Manager {
    /// A settings answer on `host`'s stream, naming `named` and request
    /// `id`: it goes to the request only if that request asked `host` and
    /// the answer names `host`. Any other answer is refused, counted and
    /// recorded as an event naming `host` (a host answering for another
    /// would take its share of a VIP).
    pub(super) async fn answer(&self, host: &str, named: &str, id: u64, message: Message) {
        let key = (host.to_owned(), id);
        if named.eq_ignore_ascii_case(host)
            && let Some(waiter) = self.pending.lock().await.remove(&key)
        {
            let _ = waiter.send(message);
            return;
        }
        self.settings_refused.fetch_add(1, Ordering::Relaxed);
        warn!(
            server = host,
            named, id, "settings answer refused: not for a request this host was asked"
        );
        self.events.record(
            NewEvent::new(
                "settings-refused",
                format!(
                    "`{host}` answered settings request {id} (naming `{named}`), which it was not asked; refused"
                ),
            )
            .server(host),
        );
    }

    /// Asks `host`'s agent for settings and waits for the answer. For auth
    /// settings, the fingerprint the agent claims must be the one its
    /// stream presented (so it can be pinned).
    pub async fn request_settings(
        &self,
        host: &str,
        kind: SettingsKind,
        application: Option<String>,
        timeout: Duration,
    ) -> Result<Message, ManagerError> {
        let canonical = canonical(host);
        let Some(tx) = self.sessions.lock().await.get(&canonical).cloned() else {
            return Err(ManagerError::NotConnected(host.into()));
        };
        let id = request_id();
        let key = (canonical, id);
        let (done, wait) = oneshot::channel();
        self.pending.lock().await.insert(key.clone(), done);
        let request = SettingsRequest {
            seq: 0,
            id,
            kind,
            application,
        };
        // Queued without waiting: an agent that stopped reading is dropped,
        // and the caller moves on.
        if let Err(e) = tx.push(request.into()) {
            self.pending.lock().await.remove(&key);
            return Err(match e {
                PushError::Stalled => ManagerError::Stalled(host.into()),
                PushError::Closed => ManagerError::NotConnected(host.into()),
            });
        }
        let Ok(Ok(answer)) = tokio::time::timeout(timeout, wait).await else {
            self.pending.lock().await.remove(&key);
            return Err(ManagerError::Timeout {
                host: host.into(),
                kind,
                waited: timeout,
            });
        };
        if let Message::AuthSettings(a) = &answer {
            let presented = self
                .db
                .lock()
                .await
                .get(host)
                .map(|r| r.fingerprint.clone())
                .unwrap_or_default();
            let claimed = a.server_fingerprint.to_string();
            if !presented.is_empty() && !claimed.eq_ignore_ascii_case(&presented) {
                return Err(ManagerError::FingerprintMismatch {
                    host: host.into(),
                    claimed,
                    presented,
                });
            }
        }
        Ok(answer)
    }
}

/// An id for a settings request no agent can guess (answers are also
/// matched to their host; an unpredictable id keeps a host from answering
/// ahead of its own next request, too).
fn request_id() -> u64 {
    let mut bytes = [0u8; 8];
    // The system's random source does not fail on Linux once booted; a
    // zero id is still only accepted from the host asked.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}
