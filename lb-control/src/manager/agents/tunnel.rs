//! The nodes' tunnel sources, told to every agent: after its hello and
//! again whenever the file changes them. An agent with `[decap]` takes
//! tunnelled packets from these sources only.

use std::{net::IpAddr, sync::PoisonError};

use lb_proto::{Message, TunnelSources};
use tracing::info;

use super::{Manager, SessionTx};

impl Manager {
    /// Replaces the tunnel sources with `sources` (this node's and every
    /// `[[manager.node]]`'s, see [`crate::config::Config::tunnel_sources`])
    /// and, when they changed, tells every connected agent.
    pub async fn set_tunnel_sources(&self, sources: Vec<IpAddr>) {
        {
            let mut current = self
                .tunnel_sources
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *current == sources {
                return;
            }
            *current = sources;
        }
        let message = self.tunnel_sources_message();
        if let Message::TunnelSources(m) = &message {
            info!(sources = ?m.addresses, "tunnel sources changed; telling the agents");
        }
        for session in self.sessions.lock().await.values() {
            // An agent that stopped reading is dropped by the push.
            let _ = session.push(message.clone());
        }
    }

    /// Tells one agent the tunnel sources (after its hello).
    pub(super) fn send_tunnel_sources(&self, tx: &SessionTx) {
        let _ = tx.push(self.tunnel_sources_message());
    }

    fn tunnel_sources_message(&self) -> Message {
        let addresses = self
            .tunnel_sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TunnelSources { seq: 0, addresses }.into()
    }
}
