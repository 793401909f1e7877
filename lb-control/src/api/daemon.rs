//! The daemon's state behind the control socket, and its handling of each
//! request.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use tokio::sync::Mutex;
use tracing::debug;

use super::{Reloaded, Request, RequestError, Response, Stats, Status};
use crate::{
    config::Config,
    manager::{
        controller::{Controller, Pools},
        db::MonitorView,
    },
    node::{
        ApplyError, ApplyReport, Node, ServerView, desired::Desired, reconfigure::Reconfigurer,
    },
};

/// The node role every lb-control has: the data plane and what applies
/// changes to it.
pub struct NodeRole {
    pub node: Arc<Mutex<Node>>,
    /// Applies the manager's changes to `node`, and knows their generation.
    pub agent: Arc<Reconfigurer>,
    pub config_path: PathBuf,
}

/// Shared daemon state for the handlers: always a node; a manager (its
/// control loop, which owns the agent streams) only beside one, as
/// `[manager]` in the node's file makes it.
pub struct Daemon {
    pub node: NodeRole,
    /// The manager role, when this process is also the manager.
    pub manager: Option<Arc<Controller>>,
}

impl Daemon {
    /// Re-reads the config file and applies it; a bad file changes nothing.
    ///
    /// # Errors
    /// The file does not load, changes what only a restart changes, or the
    /// node (or, with a manager, some node) did not apply it.
    pub async fn reload(&self) -> Result<ApplyReport, RequestError> {
        let config = Config::load(&self.node.config_path)?;
        let mut node = self.node.node.lock().await;
        if restart_only_changed(&config, &node.file) {
            return Err(RequestError::RestartRequired);
        }
        if let Some(controller) = &self.manager {
            // The manager sends the file to every node, this one included.
            drop(node);
            let generation = controller.sync_all("configuration reloaded").await?;
            let node = self.node.node.lock().await;
            return Ok(ApplyReport {
                generation: node.generation(),
                micros: 0,
                manager_generation: Some(generation),
                ..ApplyReport::default()
            });
        }
        node.dp.set_tunnel(&config.node).map_err(ApplyError::from)?;
        drop(node);
        let desired = Desired::from_config(&config).map_err(ApplyError::from)?;
        let (report, mut node) =
            Node::apply_outside_lock(&self.node.node, |_| Ok::<_, RequestError>(desired.clone()))
                .await?;
        node.file = config;
        Ok(report)
    }

    /// The manager role, or why there is none.
    pub(super) fn controller(&self) -> Result<&Arc<Controller>, RequestError> {
        self.manager.as_ref().ok_or(RequestError::NoManager)
    }

    async fn manage(&self, request: Request) -> Result<Response, RequestError> {
        let c = self.controller()?;
        let done = |generation: u64, message: String| Response::Done {
            generation,
            message,
        };
        Ok(match request {
            Request::Pool => {
                let Pools { pools, unassigned } = c.pool().await?;
                Response::Pool { pools, unassigned }
            }
            Request::Events { after, .. } => Response::Events {
                events: c.events.since(after),
            },
            Request::ServerAllocate { server, service } => {
                c.allocate(&server, service.as_deref()).await?;
                done(0, format!("server `{server}` allocated"))
            }
            Request::ServerDrain { server } => {
                c.drain(&server).await?;
                done(0, format!("server `{server}` draining"))
            }
            Request::ServerRepin { server } => {
                let fingerprint = c.repin(&server).await?;
                done(
                    0,
                    format!("server `{server}` pinned to certificate {fingerprint}"),
                )
            }
            Request::ServerDeallocate { server } => {
                c.deallocate(&server).await?;
                done(0, format!("server `{server}` back in the free pool"))
            }
            Request::ServiceAdd(service) => {
                let name = service.name.clone();
                let g = c.add_service(service).await?;
                done(g, format!("service `{name}` added on every node"))
            }
            Request::ServiceRemove { name } => {
                let g = c.remove_service(&name).await?;
                done(g, format!("service `{name}` removed from every node"))
            }
            _ => return Err(RequestError::NotManagerRequest),
        })
    }

    /// The response to one request.
    pub(super) async fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Status => Ok(Response::Status(self.status().await)),
            Request::ServiceList => Ok(Response::Services {
                services: self.node.node.lock().await.service_views(),
            }),
            Request::ServerList => Ok(self.server_list().await),
            Request::Stats => Ok(Response::Stats(self.stats().await)),
            Request::Reload => self.reload().await.map(|report| {
                Response::Reloaded(Reloaded {
                    table_generation: report.generation,
                    report,
                })
            }),
            other => self.manage(other).await,
        };
        result.unwrap_or_else(|e| Response::error(e.kind(), e))
    }

    async fn status(&self) -> Status {
        // Before the node: a reconfiguration locks the agent's state
        // first, then the node.
        let manager_generation = self.node.agent.manager_generation().await;
        let node = self.node.node.lock().await;
        Status {
            program_id: node.dp.program_id,
            adoption: format!("{:?}", node.dp.adoption).to_lowercase(),
            generation: node.generation(),
            table_generation: node.generation(),
            manager_generation,
            pin_dir: node.dp.dir.display().to_string(),
            interfaces: node.file.node.interfaces.clone(),
        }
    }

    async fn server_list(&self) -> Response {
        let mut servers = self.node.node.lock().await.server_views();
        let (mut monitors, file) = match &self.manager {
            Some(c) => (
                c.manager().views().await,
                c.file_states()
                    .map_err(|e| debug!(error = %e, "server list: the configuration file is unreadable; pool states are the node's"))
                    .ok(),
            ),
            None => (Vec::new(), None),
        };
        live_pool_states(&mut servers, &mut monitors, file.as_ref());
        Response::Servers { servers, monitors }
    }

    async fn stats(&self) -> Stats {
        let node = self.node.node.lock().await;
        Stats {
            global: node
                .dp
                .global_counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            flows: node.dp.flows.count(),
            services: node.service_views(),
            manager: self.manager.as_ref().map(|c| c.manager().stats()),
            decisions: self
                .manager
                .as_ref()
                .map(|c| c.events.counts())
                .unwrap_or_default(),
        }
    }
}

/// What a reload cannot change: the interfaces, pins and hash seed the
/// program was loaded with, which variant of it (`debug_xdp`), the sizes
/// of its maps, and the control socket with its access.
fn restart_only_changed(new: &Config, running: &Config) -> bool {
    new.node.interfaces != running.node.interfaces
        || new.node.debug_xdp != running.node.debug_xdp
        || new.node.pin_dir != running.node.pin_dir
        || new.node.socket != running.node.socket
        || new.node.control_group != running.node.control_group
        || new.node.admin_group != running.node.admin_group
        || new.node.control_idle_timeout != running.node.control_idle_timeout
        || new.node.hash_seed != running.node.hash_seed
        || new.metrics != running.metrics
        || new.limits.max_services != running.limits.max_services
        || new.limits.max_backends != running.limits.max_backends
        || new.limits.max_table_size != running.limits.max_table_size
        || new.limits.flow_table_size != running.limits.flow_table_size
}

/// `lbctl server list` shows each server's pool state as it is now: its
/// state in the manager's configuration file (`file`, when this process is
/// the manager) over the one this node started with. A backend still in the
/// maps after its server went back to the free pool (retired: its last
/// flows still reach it) shows as `free`. Each agent's `pool` is its
/// server's state, `spare` for an announced spare the file does not name.
fn live_pool_states(
    servers: &mut [ServerView],
    monitors: &mut [MonitorView],
    file: Option<&BTreeMap<String, String>>,
) {
    for s in servers.iter_mut() {
        if let Some(state) = file.and_then(|f| f.get(&s.name)) {
            s.state.clone_from(state);
        }
        if s.state == "free" {
            for b in s.services.iter_mut().filter(|b| b.state == "retired") {
                b.state = "free".into();
            }
        }
    }
    for m in monitors.iter_mut() {
        let state = file
            .and_then(|f| f.get(&m.host))
            .or_else(|| servers.iter().find(|s| s.name == m.host).map(|s| &s.state));
        m.pool = Some(match state {
            Some(state) => state.clone(),
            None if m.spare => "spare".into(),
            None => "not configured".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{manager::db::Monitor, node::BackendView};

    fn backend(service: &str, state: &str) -> BackendView {
        BackendView {
            service: service.into(),
            weight: "1".into(),
            backend: 0,
            incarnation: 1,
            state: state.into(),
            mac: "02:00:00:00:00:01".into(),
            ifindex: 2,
            packets: 0,
            bytes: 0,
            new_flows: 0,
            idle_secs: None,
        }
    }

    fn server(name: &str, state: &str, services: Vec<BackendView>) -> ServerView {
        ServerView {
            name: name.into(),
            address: std::net::IpAddr::from([10, 0, 0, 1]),
            state: state.into(),
            weight: 1,
            services,
        }
    }

    fn monitor(host: &str, spare: bool) -> MonitorView {
        MonitorView {
            host: host.into(),
            monitor: Monitor::Monitored,
            connected: true,
            spare,
            cores: 1.0,
            applications: vec!["web".into()],
            utilization: None,
            source: None,
            health: None,
            ready: None,
            report_age_ms: None,
            reports: 0,
            fingerprint: String::new(),
            pool: None,
        }
    }

    #[test]
    fn the_program_variant_changes_on_restart_only() {
        let path = std::path::Path::new("reload.toml");
        let running = Config::parse("[node]\ninterfaces = [\"eth0\"]\n", path).unwrap();
        let debug =
            Config::parse("[node]\ninterfaces = [\"eth0\"]\ndebug_xdp = true\n", path).unwrap();
        assert!(!restart_only_changed(&running, &running));
        assert!(restart_only_changed(&debug, &running));
        assert!(restart_only_changed(&running, &debug));
    }

    #[test]
    fn server_list_shows_the_pool_state_of_the_file_now() {
        // The node started with s1 allocated and s2 free; since then the
        // manager allocated s2 and gave s1 back (its backend is retired).
        let mut servers = vec![
            server("s1", "allocated", vec![backend("web", "retired")]),
            server("s2", "free", vec![backend("web", "active")]),
            server("s3", "allocated", vec![backend("web", "retired")]),
        ];
        let mut monitors = vec![
            monitor("s1", false),
            monitor("s2", false),
            monitor("extra", true),
            monitor("stranger", false),
        ];
        let file = BTreeMap::from([
            ("s1".to_owned(), "free".to_owned()),
            ("s2".to_owned(), "allocated".to_owned()),
            ("s3".to_owned(), "allocated".to_owned()),
        ]);
        live_pool_states(&mut servers, &mut monitors, Some(&file));
        let states: Vec<(&str, &str, &str)> = servers
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.state.as_str(),
                    s.services[0].state.as_str(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("s1", "free", "free"),
                ("s2", "allocated", "active"),
                // Left one service while allocated to another: retired.
                ("s3", "allocated", "retired"),
            ]
        );
        let pools: Vec<&str> = monitors.iter().filter_map(|m| m.pool.as_deref()).collect();
        assert_eq!(pools, ["free", "allocated", "spare", "not configured"]);

        // No manager: the node's own file is its configuration.
        let mut servers = vec![server("s1", "free", vec![backend("web", "retired")])];
        live_pool_states(&mut servers, &mut [], None);
        assert_eq!(servers[0].services[0].state, "free");
    }
}
