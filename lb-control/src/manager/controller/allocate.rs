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
    config::{Config, ServerConfig, ServerState, ServiceConfig},
    manager::{config_file::Edit, events::NewEvent, failpoint},
};

/// Who asked for an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// The policy, for a candidate it saw free: taken only if it still is.
    Policy,
    /// `lbctl server allocate`: a free server, or one that serves other
    /// services and joins this one too.
    Operator,
}

/// How long a free server whose agent did not give usable settings is
/// left out of the policy's candidates: the next candidate is taken at
/// once, and this one is tried again only after this long (an operator
/// may name it before).
pub(super) const CANDIDATE_HOLD: Duration = Duration::from_secs(30);

impl ControllerError {
    /// The candidate's own failure (its agent did not answer, or answered
    /// what cannot be used), not the change's: another candidate may do.
    fn is_candidates(&self) -> bool {
        matches!(
            self,
            Self::Settings { .. } | Self::UnexpectedSettings { .. } | Self::BadSettings { .. }
        )
    }
}

impl Controller {
    /// Allocation: the server's settings over its agent stream with no
    /// lock held (an agent that does not answer holds up no other verb and
    /// no change; the evaluation that decided it waits, at most the ack
    /// timeout for each of the two settings), then under `ops` the checks
    /// again, the file and the nodes.
    ///
    /// A candidate whose settings failed is held out of the policy's
    /// choice for [`CANDIDATE_HOLD`] and the cooldown does not start: the
    /// next evaluation takes the next candidate. A policy's candidate that
    /// joined a pool meanwhile (another service's allocation in the same
    /// evaluation, an operator) is a stale decision: no cooldown either.
    pub(super) async fn allocate_server(
        &self,
        service: &str,
        server: &str,
        reason: &str,
        asked: Asked,
    ) -> Result<(), ControllerError> {
        let t0 = Instant::now();
        self.events.record(
            NewEvent::new("allocating", reason)
                .service(service)
                .server(server),
        );
        let (result, mut ops) = match self.settings_for(service, server, asked).await {
            Ok(settings) => {
                let mut ops = self.ops.lock().await;
                let result = self
                    .allocate_steps(&mut ops, service, server, settings, asked)
                    .await;
                (result, ops)
            }
            Err(e) => (Err(e), self.ops.lock().await),
        };
        let held = matches!(&result, Err(e) if e.is_candidates());
        let stale =
            asked == Asked::Policy && matches!(&result, Err(ControllerError::AlreadyMember { .. }));
        if held {
            ops.observed.held.insert(server.to_owned(), Instant::now());
            self.publish(&ops);
        } else if !stale && let Some(p) = ops.policies.get_mut(service) {
            // A failed change counts as a change too: the cooldown keeps
            // the next one from following at once.
            p.record_change(Instant::now());
        }
        drop(ops);
        match result {
            Ok(generation) => {
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
                let message = if held {
                    format!(
                        "{e}; the policy takes the next candidate and leaves this one for {} s",
                        CANDIDATE_HOLD.as_secs()
                    )
                } else {
                    e.to_string()
                };
                self.events.record(
                    NewEvent::new("allocation-failed", message)
                        .service(service)
                        .server(server)
                        .took(t0.elapsed()),
                );
                Err(e)
            }
        }
    }

    /// Whether `server` may join `service` as `config` has them, asked by
    /// `asked`; the service and the server's entry, if it has one.
    fn allocation_target<'c>(
        config: &'c Config,
        service: &str,
        server: &str,
        asked: Asked,
    ) -> Result<(&'c ServiceConfig, Option<&'c ServerConfig>), ControllerError> {
        let svc = config
            .service
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ControllerError::UnknownService(service.to_owned()))?;
        let existing = config.server.iter().find(|s| s.name == server);
        // A server in another pool joins this one only when an operator
        // says so; the policy saw it free.
        if let Some(s) = existing
            && s.state != ServerState::Free
            && (s.serves(service) || asked == Asked::Policy)
        {
            let held_by = if s.serves(service) {
                service
            } else {
                s.services.first().map_or("(none)", String::as_str)
            };
            return Err(ControllerError::AlreadyMember {
                server: server.to_owned(),
                service: held_by.to_owned(),
                state: state_name(s.state),
            });
        }
        Ok((svc, existing))
    }

    /// The settings of `server` for `service`, once the file says it may
    /// join (read again under the lock after: the file may change while
    /// the agent answers).
    async fn settings_for(
        &self,
        service: &str,
        server: &str,
        asked: Asked,
    ) -> Result<Settings, ControllerError> {
        let app = {
            let snapshot = self.file.read()?;
            let (svc, _) = Self::allocation_target(&snapshot.config, service, server, asked)?;
            svc.application().to_owned()
        };
        failpoint::hit("allocate.settings");
        self.settings(service, server, app).await
    }

    /// Allocation under `ops`: the settings checked against the file as
    /// it is now, then the change.
    async fn allocate_steps(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
        settings: Settings,
        asked: Asked,
    ) -> Result<u64, ControllerError> {
        let snapshot = self.file.read()?;
        let (svc, existing) = Self::allocation_target(&snapshot.config, service, server, asked)?;
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
                .usable(&settings.addresses, svc.vip)
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
            // A tunnelled server's next hop comes from the routing table;
            // the MAC of its manager-facing interface means nothing there.
            if !s.forward.is_tunnel() {
                edits.push(Edit::SetMac {
                    server: server.into(),
                    mac: settings.mac.to_string(),
                });
            }
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
