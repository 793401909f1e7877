//! Allocation: a free server's settings fetched over its agent stream,
//! then recorded in the file and sent to every node.

use std::time::{Duration, Instant};

use lb_proto::{ConnectionSettings, Message, SettingsKind};

use super::{Controller, Ops, state_name};
use crate::{
    config::{ServerConfig, ServerState},
    manager::{config_file::Edit, events::NewEvent, failpoint},
};

impl Controller {
    /// Allocation, steps 2–5: settings over the agent stream, the file,
    /// the nodes.
    pub(super) async fn allocate_locked(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
        reason: &str,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        self.events.record(
            NewEvent::new("allocating", reason)
                .service(service)
                .server(server),
        );
        let result = self.allocate_steps(ops, service, server).await;
        match result {
            Ok(generation) => {
                if let Some(p) = ops.policies.get_mut(service) {
                    p.record_change(Instant::now());
                }
                self.events.record(
                    NewEvent::new(
                        "allocated",
                        format!(
                            "in the pool on every node ({} nodes acked)",
                            self.nodes.len()
                        ),
                    )
                    .service(service)
                    .server(server)
                    .took(t0.elapsed())
                    .generation(generation),
                );
                Ok(())
            }
            Err(e) => {
                // A failed attempt counts as a change: the cooldown keeps
                // the next one from following at once.
                if let Some(p) = ops.policies.get_mut(service) {
                    p.record_change(Instant::now());
                }
                self.events.record(
                    NewEvent::new("allocation-failed", e.clone())
                        .service(service)
                        .server(server)
                        .took(t0.elapsed()),
                );
                Err(e)
            }
        }
    }

    async fn allocate_steps(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
    ) -> Result<u64, String> {
        let snapshot = self.file.read().map_err(|e| e.to_string())?;
        let svc = snapshot
            .config
            .service
            .iter()
            .find(|s| s.name.get_ref() == service)
            .ok_or_else(|| format!("no service `{service}` in the configuration"))?;
        let app = svc.application().to_owned();
        let vip = svc.vip;
        let existing: Option<&ServerConfig> = snapshot
            .config
            .server
            .iter()
            .find(|s| s.name.get_ref() == server);
        if let Some(s) = existing
            && s.state != ServerState::Free
            && s.services.iter().any(|n| n.get_ref() == service)
        {
            return Err(format!(
                "server `{server}` is already in service `{service}` ({})",
                state_name(s.state)
            ));
        }
        failpoint::hit("allocate.settings");
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let connection = self
            .manager
            .request_settings(server, SettingsKind::Connection, Some(app.clone()), timeout)
            .await
            .map_err(|e| format!("connection settings: {e}"))?;
        let Message::ConnectionSettings(ConnectionSettings {
            addresses,
            mac,
            interface,
            ..
        }) = connection
        else {
            return Err("connection settings: unexpected answer".into());
        };
        let auth = self
            .manager
            .request_settings(server, SettingsKind::Auth, Some(app), timeout)
            .await
            .map_err(|e| format!("auth settings: {e}"))?;
        let Message::AuthSettings(auth) = auth else {
            return Err("auth settings: unexpected answer".into());
        };
        let fingerprint = auth.server_fingerprint.to_string();
        self.events.record(
            NewEvent::new(
                "settings",
                format!(
                    "connection settings: {} mac {} on {}; auth settings: control port {}, certificate {} pinned",
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    mac,
                    interface,
                    auth.control_port,
                    fingerprint
                ),
            )
            .service(service)
            .server(server),
        );
        let address = match existing {
            Some(s) => s.address,
            None => *addresses
                .iter()
                .find(|a| a.is_ipv4() == vip.is_ipv4())
                .ok_or_else(|| {
                    format!(
                        "server `{server}` has no {} address for {vip}",
                        if vip.is_ipv4() { "IPv4" } else { "IPv6" }
                    )
                })?,
        };
        let mut edits = Vec::new();
        // The services the change touches on the nodes.
        let mut services = vec![service.to_owned()];
        match existing {
            Some(s) => {
                if s.state == ServerState::Free {
                    // A free server's `services` only recall what it served
                    // last: it now serves this one alone.
                    for other in s.services.iter().filter(|n| n.get_ref() != service) {
                        edits.push(Edit::LeaveService {
                            server: server.into(),
                            service: other.get_ref().clone(),
                        });
                    }
                } else {
                    // In other pools already: it joins this one too.
                    services.extend(
                        s.services
                            .iter()
                            .map(|n| n.get_ref().clone())
                            .filter(|n| n != service),
                    );
                }
                edits.push(Edit::JoinService {
                    server: server.into(),
                    service: service.into(),
                });
                edits.push(Edit::SetState {
                    server: server.into(),
                    state: ServerState::Allocated,
                });
                edits.push(Edit::SetMac {
                    server: server.into(),
                    mac: mac.to_string(),
                });
            }
            None => edits.push(Edit::AddServer {
                name: server.into(),
                address,
                mac: Some(mac.to_string()),
                services: vec![service.into()],
                state: ServerState::Allocated,
                weight: None,
            }),
        }
        edits.push(Edit::SetFingerprint {
            server: server.into(),
            fingerprint,
        });
        self.change(ops, "allocate", &services, &edits).await
    }
}
