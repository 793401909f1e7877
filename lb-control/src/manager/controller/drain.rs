//! Draining: a server stops taking new flows, and goes back to the free
//! pool once its flows ended or the drain timed out.

use std::time::{Duration, Instant};

use tracing::warn;

use lb_proto::BackendStatus;

use super::{Controller, ControllerError, Ops};
use crate::{
    config::{Config, ServerConfig, ServerState, ServiceConfig},
    manager::{config_file::Edit, events::NewEvent},
    manager::{db::Monitor, node_link::LinkError},
};

/// A node's name and its backends (or why it gave none).
type NodeStatus = (String, Result<Vec<BackendStatus>, LinkError>);

/// No node saw a packet of `server` for `service` within `drain_idle`;
/// a node that gave no status is not idle.
fn idle_everywhere(
    statuses: &[NodeStatus],
    service: &str,
    server: &str,
    drain_idle: Duration,
) -> bool {
    let mut idle = true;
    for (node, status) in statuses {
        match status {
            Ok(list) => {
                let busy = list
                    .iter()
                    .filter(|b| b.service == service && b.server == server)
                    .filter_map(|b| b.idle_ms)
                    .any(|ms| Duration::from_millis(ms) < drain_idle);
                if busy {
                    idle = false;
                }
            }
            Err(e) => {
                idle = false;
                warn!(node, error = %e, "no status from node; drain waits");
            }
        }
    }
    idle
}

fn wall_ms() -> u64 {
    lb_proto::time::unix_ms()
}

impl Controller {
    /// Marks `server` draining (or, when it also serves other services,
    /// takes it out of this one, which keeps its flows the same way).
    pub(super) async fn drain_locked(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
        reason: &str,
    ) -> Result<(), ControllerError> {
        let t0 = Instant::now();
        let snapshot = self.file.read()?;
        let Some(s) = snapshot.config.server.iter().find(|s| s.name == server) else {
            return Err(ControllerError::UnknownServer(server.to_owned()));
        };
        let shared = s.services.iter().filter(|n| *n != service).count() > 0;
        let edits = if shared {
            vec![Edit::LeaveService {
                server: server.into(),
                service: service.into(),
            }]
        } else {
            vec![Edit::SetState {
                server: server.into(),
                state: ServerState::Draining,
            }]
        };
        let services = self.services_of(server, service)?;
        let generation = self.change(ops, "drain", &services, &edits).await?;
        if !shared {
            ops.persisted.drains.insert(server.to_owned(), wall_ms());
            self.save(ops);
        }
        if let Some(p) = ops.policies.get_mut(service) {
            p.record_drain(Instant::now());
        }
        self.events.record(
            NewEvent::new(
                "draining",
                format!(
                    "{reason}{}",
                    if shared {
                        "; it serves other services too, so it left this one (its flows still reach it)"
                    } else {
                        ""
                    }
                ),
            )
            .service(service)
            .server(server)
            .took(t0.elapsed())
            .generation(generation),
        );
        Ok(())
    }

    /// Ends the drains that are complete (no connection on the VIP, no
    /// packet on any node for `drain_idle`) or timed out.
    pub(super) async fn drains(&self, ops: &mut Ops, config: &Config) {
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let draining: Vec<(&ServerConfig, &ServiceConfig)> = config
            .server
            .iter()
            .filter(|s| s.state == ServerState::Draining)
            .filter_map(|s| {
                let first = s.services.first()?;
                let svc = config.service.iter().find(|x| x.name == *first)?;
                Some((s, svc))
            })
            .collect();
        if draining.is_empty() {
            if !ops.persisted.drains.is_empty() {
                ops.persisted.drains.clear();
                self.save(ops);
            }
            return;
        }
        let mut statuses = Vec::new();
        for node in &self.nodes {
            let status = node.status(false, timeout).await.map(|s| s.backends);
            statuses.push((node.name().to_owned(), status));
        }
        for (server, svc) in draining {
            self.end_drain_if_done(ops, server, svc, &statuses).await;
        }
    }

    /// Releases `server` when its drain from `svc` is complete or timed
    /// out; `statuses` are the nodes' backends now.
    async fn end_drain_if_done(
        &self,
        ops: &mut Ops,
        server: &ServerConfig,
        svc: &ServiceConfig,
        statuses: &[NodeStatus],
    ) {
        let name = &server.name;
        let service = &svc.name;
        let policy = &svc.scaling;
        let began = *ops
            .persisted
            .drains
            .entry(name.clone())
            .or_insert_with(wall_ms);
        let elapsed = Duration::from_millis(wall_ms().saturating_sub(began));
        let established = {
            let db = self.manager.db.lock().await;
            db.get(name)
                .filter(|r| r.monitor == Monitor::Monitored)
                .and_then(|r| r.last_report.as_ref())
                .and_then(|r| r.applications.iter().find(|a| a.name == svc.application()))
                .map(|a| a.vip_established)
        };
        // Judged (and nodes without status logged) whatever the VIP says.
        let idle = idle_everywhere(statuses, service, name, policy.drain_idle);
        if established == Some(0) && idle {
            let reason = format!(
                "drained after {:.1} s: no connection on {}:{} and no packet on any node for {:?}",
                elapsed.as_secs_f64(),
                svc.vip,
                svc.port,
                policy.drain_idle
            );
            let _ = self.release(ops, service, name, &reason, false).await;
        } else if elapsed >= policy.drain_timeout {
            let timeout = Duration::from_millis(self.config.ack_timeout_ms);
            let mut flows = 0;
            for node in &self.nodes {
                if let Ok(status) = node.status(true, timeout).await {
                    flows += status
                        .backends
                        .iter()
                        .filter(|b| &b.service == service && &b.server == name)
                        .filter_map(|b| b.flows)
                        .sum::<u64>();
                }
            }
            let reason = format!(
                "drain timeout {:?} passed with {} connections reported on the VIP; {flows} flow entries invalidated",
                policy.drain_timeout,
                established.map_or("unknown".into(), |n| n.to_string()),
            );
            let _ = self.release(ops, service, name, &reason, true).await;
        }
    }

    /// Returns a drained server to the free pool; `invalidate`: first put it
    /// down so the flows still pointing at it are re-hashed.
    pub(super) async fn release(
        &self,
        ops: &mut Ops,
        service: &str,
        server: &str,
        reason: &str,
        invalidate: bool,
    ) -> Result<(), ControllerError> {
        let t0 = Instant::now();
        let services = self.services_of(server, service)?;
        if invalidate {
            let edits = [Edit::SetState {
                server: server.into(),
                state: ServerState::Down,
            }];
            self.change(ops, "deallocate", &services, &edits).await?;
        }
        let edits = [Edit::SetState {
            server: server.into(),
            state: ServerState::Free,
        }];
        let generation = self.change(ops, "deallocate", &services, &edits).await?;
        ops.persisted.drains.remove(server);
        self.save(ops);
        self.events.record(
            NewEvent::new("deallocated", format!("{reason}; back in the free pool"))
                .service(service)
                .server(server)
                .took(t0.elapsed())
                .generation(generation),
        );
        Ok(())
    }
}
