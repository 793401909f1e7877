//! Allocation: a free server's settings fetched over its agent stream,
//! then recorded in the file and sent to every node.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_proto::{ConnectionSettings, Message, SettingsKind};

use super::{
    Controller, ControllerError, Ops,
    settings::{Known, check_mac},
    state_name,
};
use crate::{
    config::{Config, ServerConfig, ServerState},
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
    ) -> Result<(), ControllerError> {
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
                    NewEvent::new("allocation-failed", e.to_string())
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
    ) -> Result<u64, ControllerError> {
        let snapshot = self.file.read()?;
        let svc = snapshot
            .config
            .service
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ControllerError::UnknownService(service.to_owned()))?;
        let vip = svc.vip;
        let existing: Option<&ServerConfig> =
            snapshot.config.server.iter().find(|s| s.name == server);
        if let Some(s) = existing
            && s.state != ServerState::Free
            && s.serves(service)
        {
            return Err(ControllerError::AlreadyMember {
                server: server.to_owned(),
                service: service.to_owned(),
                state: state_name(s.state),
            });
        }
        failpoint::hit("allocate.settings");
        let settings = self
            .settings(service, server, svc.application().to_owned())
            .await?;
        let refused = |source| ControllerError::BadSettings {
            server: server.to_owned(),
            source,
        };
        check_mac(settings.mac).map_err(refused)?;
        let address = if let Some(s) = existing {
            s.address
        } else {
            let peer = self.manager.peer_of(server).await;
            self.known(&snapshot.config, server, peer)
                .usable(&settings.addresses, vip)
                .map_err(refused)?
        };
        let (services, edits) = allocation(existing, service, server, address, settings);
        self.change(ops, "allocate", &services, &edits).await
    }

    /// The server's connection and auth settings from its agent, recorded
    /// as an event.
    async fn settings(
        &self,
        service: &str,
        server: &str,
        app: String,
    ) -> Result<Settings, ControllerError> {
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let connection = self
            .manager
            .request_settings(server, SettingsKind::Connection, Some(app.clone()), timeout)
            .await
            .map_err(|source| ControllerError::Settings {
                kind: "connection",
                source: Box::new(source),
            })?;
        let Message::ConnectionSettings(ConnectionSettings {
            addresses,
            mac,
            interface,
            ..
        }) = connection
        else {
            return Err(ControllerError::UnexpectedSettings { kind: "connection" });
        };
        let auth = self
            .manager
            .request_settings(server, SettingsKind::Auth, Some(app), timeout)
            .await
            .map_err(|source| ControllerError::Settings {
                kind: "auth",
                source: Box::new(source),
            })?;
        let Message::AuthSettings(auth) = auth else {
            return Err(ControllerError::UnexpectedSettings { kind: "auth" });
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
        Ok(Settings {
            addresses,
            mac,
            fingerprint,
        })
    }

    /// What an address given by `server`'s agent (its stream from `peer`)
    /// must not be, from the file `config` and the manager's settings.
    fn known<'a>(&'a self, config: &'a Config, server: &str, peer: Option<IpAddr>) -> Known<'a> {
        let nodes = std::iter::once(self.config.listen.ip())
            .chain(self.config.nodes.iter().filter_map(|n| {
                n.address
                    .parse::<std::net::SocketAddr>()
                    .ok()
                    .map(|a| a.ip())
            }))
            .collect();
        Known {
            peer,
            subnets: &self.config.server_subnets,
            vips: config.service.iter().map(|s| s.vip).collect(),
            nodes,
            others: config
                .server
                .iter()
                .filter(|s| s.name != server)
                .map(|s| (s.address, s.name.as_str()))
                .collect(),
        }
    }
}

/// What an allocation takes from the agent's settings.
struct Settings {
    addresses: Vec<IpAddr>,
    mac: lb_proto::MacAddr,
    fingerprint: String,
}

/// The plan of an allocation of `server` (as the file has it, if at all)
/// to `service`: the services the change touches on the nodes, and the
/// edits of the file.
fn allocation(
    existing: Option<&ServerConfig>,
    service: &str,
    server: &str,
    address: IpAddr,
    settings: Settings,
) -> (Vec<String>, Vec<Edit>) {
    let mut edits = Vec::new();
    let mut services = vec![service.to_owned()];
    match existing {
        Some(s) => {
            if s.state == ServerState::Free {
                // A free server's `services` only recall what it served
                // last: it now serves this one alone.
                for other in s.services.iter().filter(|n| *n != service) {
                    edits.push(Edit::LeaveService {
                        server: server.into(),
                        service: other.clone(),
                    });
                }
            } else {
                // In other pools already: it joins this one too.
                services.extend(s.services.iter().filter(|&n| n != service).cloned());
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
                mac: settings.mac.to_string(),
            });
        }
        None => edits.push(Edit::AddServer {
            name: server.into(),
            address,
            mac: Some(settings.mac.to_string()),
            services: vec![service.into()],
            state: ServerState::Allocated,
            weight: None,
        }),
    }
    edits.push(Edit::SetFingerprint {
        server: server.into(),
        fingerprint: settings.fingerprint,
    });
    (services, edits)
}
