//! The control socket: one JSON request per line, one JSON response per line.
//! `lbctl` is its client.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};
use tracing::{debug, warn};

use crate::{
    config::{Config, Protocol},
    manager::{
        Manager, ManagerStats,
        config_file::Edit,
        controller::{Controller, PoolMember, PoolReport, Pools},
        db::MonitorView,
        events::Event,
    },
    node::{ApplyReport, Node, ServerView, ServiceView, reconfigure::Reconfigurer},
};

/// Requests `lbctl` sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    ServiceList,
    ServerList,
    Stats,
    /// Re-read the config file and apply the difference.
    Reload,
    /// Each service's allocated and free servers (manager).
    Pool,
    /// Events after id `after`; `follow`: keep the stream open and send
    /// each new event as it happens.
    Events {
        #[serde(default)]
        after: u64,
        #[serde(default)]
        follow: bool,
    },
    /// Allocate a free server to a service (manager).
    ServerAllocate {
        server: String,
        #[serde(default)]
        service: Option<String>,
    },
    /// Drain a server: no new flows, back to the free pool when idle.
    ServerDrain {
        server: String,
    },
    /// Return a server to the free pool now.
    ServerDeallocate {
        server: String,
    },
    /// Add a service at run time.
    ServiceAdd {
        name: String,
        vip: std::net::IpAddr,
        port: u16,
        #[serde(default)]
        protocol: Protocol,
        #[serde(default)]
        table_size: Option<u32>,
        #[serde(default)]
        application: Option<String>,
    },
    /// Remove a service at run time.
    ServiceRemove {
        name: String,
    },
}

/// Daemon status.
///
/// Two counters are called generation: the node's **table generation**
/// (one more at each Maglev table flip on this node; its own on every
/// node) and the **manager generation** (one more at each change the
/// manager sends to every node; what its events and `lbctl config reload`
/// name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub program_id: u32,
    pub adoption: String,
    /// The table generation, under its old name.
    pub generation: u32,
    /// This node's table generation.
    #[serde(default)]
    pub table_generation: u32,
    /// The manager generation of the last change this node applied; none
    /// before a manager configured it.
    #[serde(default)]
    pub manager_generation: Option<u64>,
    pub pin_dir: String,
    pub interfaces: Vec<String>,
}

/// `lbctl config reload`: the apply on this node, with both generations
/// named plainly (see [`Status`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    /// `generation` in it is the table generation, under its old name;
    /// `manager_generation` is set when the manager sent the file to every
    /// node.
    #[serde(flatten)]
    pub report: ApplyReport,
    /// This node's table generation after the reload.
    pub table_generation: u32,
}

/// Counters for `lbctl stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub global: Vec<(String, u64)>,
    pub flows: usize,
    pub services: Vec<ServiceView>,
    /// Agent streams, when this process is also the manager.
    #[serde(default)]
    pub manager: Option<ManagerStats>,
    /// The manager's decisions since it started, by event kind
    /// (`allocated`, `rolled-back`, `allocation-failed`, ...).
    #[serde(default)]
    pub decisions: std::collections::BTreeMap<String, u64>,
}

/// Responses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Services {
        services: Vec<ServiceView>,
    },
    Servers {
        servers: Vec<ServerView>,
        /// The manager's view of every server with an agent (also those not
        /// in the config: announced spares).
        #[serde(default)]
        monitors: Vec<MonitorView>,
    },
    Stats(Stats),
    Reloaded(Reloaded),
    /// A change the manager made and every node acked.
    Done {
        /// Its manager generation (0: none).
        generation: u64,
        message: String,
    },
    Pool {
        pools: Vec<PoolReport>,
        /// Servers of the configuration file no pool lists.
        #[serde(default)]
        unassigned: Vec<PoolMember>,
    },
    Events {
        events: Vec<Event>,
    },
    Error {
        message: String,
    },
}

/// Shared daemon state for the handlers.
pub struct Daemon {
    pub node: Arc<Mutex<Node>>,
    /// Applies the manager's changes to `node`, and knows their generation.
    pub agent: Arc<Reconfigurer>,
    pub config_path: std::path::PathBuf,
    pub manager: Option<std::sync::Arc<Manager>>,
    /// The manager's control loop, when this process is the manager.
    pub controller: Option<Arc<Controller>>,
}

impl Daemon {
    /// Re-reads the config file and applies it; a bad file changes nothing.
    pub async fn reload(&self) -> Result<ApplyReport, String> {
        let config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let node = self.node.lock().await;
        if config.node.interfaces != node.config.node.interfaces
            || config.node.pin_dir != node.config.node.pin_dir
            || config.node.hash_seed != node.config.node.hash_seed
            || config.limits.max_services != node.config.limits.max_services
            || config.limits.max_backends != node.config.limits.max_backends
            || config.limits.max_table_size != node.config.limits.max_table_size
            || config.limits.flow_table_size != node.config.limits.flow_table_size
        {
            return Err(
                "[node] interfaces/pin_dir/hash_seed and [limits] take effect on restart only; restart lb-control to change them (services and servers were not changed either)"
                    .into(),
            );
        }
        if let Some(controller) = &self.controller {
            // The manager sends the file to every node, this one included.
            drop(node);
            let generation = controller.sync_all("configuration reloaded").await?;
            let node = self.node.lock().await;
            return Ok(ApplyReport {
                generation: node.generation(),
                micros: 0,
                manager_generation: Some(generation),
                ..ApplyReport::default()
            });
        }
        // Next hops are resolved without the node lock.
        let (applied, next_hops) = (node.applied(), node.next_hops());
        drop(node);
        let prepared = Node::prepare(&next_hops, config.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut node = self.node.lock().await;
        if node.applied() == applied {
            node.apply_prepared(prepared)
        } else {
            node.apply(config).await
        }
        .map_err(|e| e.to_string())
    }

    fn controller(&self) -> Result<&Arc<Controller>, String> {
        self.controller.as_ref().ok_or_else(|| {
            "this lb-control runs no manager: add a [manager] section to its config to let it allocate servers".to_owned()
        })
    }

    async fn manage(&self, request: Request) -> Result<Response, String> {
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
            Request::ServerDeallocate { server } => {
                c.deallocate(&server).await?;
                done(0, format!("server `{server}` back in the free pool"))
            }
            Request::ServiceAdd {
                name,
                vip,
                port,
                protocol,
                table_size,
                application,
            } => {
                let g = c
                    .add_service(Edit::AddService {
                        name: name.clone(),
                        vip,
                        port,
                        protocol,
                        table_size,
                        application,
                    })
                    .await?;
                done(g, format!("service `{name}` added on every node"))
            }
            Request::ServiceRemove { name } => {
                let g = c.remove_service(&name).await?;
                done(g, format!("service `{name}` removed from every node"))
            }
            _ => return Err("not a manager request".into()),
        })
    }

    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => {
                // Before the node: a reconfiguration locks the agent's state
                // first, then the node.
                let manager_generation = self.agent.manager_generation().await;
                let node = self.node.lock().await;
                Response::Status(Status {
                    program_id: node.dp.program_id,
                    adoption: format!("{:?}", node.dp.adoption).to_lowercase(),
                    generation: node.generation(),
                    table_generation: node.generation(),
                    manager_generation,
                    pin_dir: node.dp.dir.display().to_string(),
                    interfaces: node.config.node.interfaces.clone(),
                })
            }
            Request::ServiceList => Response::Services {
                services: self.node.lock().await.service_views(),
            },
            Request::ServerList => {
                let mut servers = self.node.lock().await.server_views();
                let mut monitors = match &self.manager {
                    Some(m) => m.views().await,
                    None => Vec::new(),
                };
                let file = self.controller.as_ref().and_then(|c| {
                    c.file_states()
                        .map_err(|e| debug!(error = %e, "server list: the configuration file is unreadable; pool states are the node's"))
                        .ok()
                });
                live_pool_states(&mut servers, &mut monitors, file.as_ref());
                Response::Servers { servers, monitors }
            }
            Request::Stats => {
                let node = self.node.lock().await;
                Response::Stats(Stats {
                    global: node
                        .dp
                        .global_counters()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    flows: node.dp.flows.count(),
                    services: node.service_views(),
                    manager: self.manager.as_ref().map(|m| m.stats()),
                    decisions: self
                        .controller
                        .as_ref()
                        .map(|c| c.events.counts())
                        .unwrap_or_default(),
                })
            }
            Request::Reload => match self.reload().await {
                Ok(report) => Response::Reloaded(Reloaded {
                    table_generation: report.generation,
                    report,
                }),
                Err(message) => Response::Error { message },
            },
            other => match self.manage(other).await {
                Ok(r) => r,
                Err(message) => Response::Error { message },
            },
        }
    }
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

/// Binds the control socket (replacing one a killed predecessor left), so
/// it accepts connections before the daemon says it is ready.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

/// Serves the control socket until the task is dropped.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = session(daemon, stream).await {
                debug!(error = %e, "control session ended");
            }
        });
    }
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

async fn session(daemon: Arc<Daemon>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = match serde_json::from_str::<Request>(line.trim()) {
            Ok(Request::Events {
                after,
                follow: true,
            }) => return follow_events(&daemon, after, &mut write).await,
            Ok(request) => daemon.handle(request).await,
            Err(e) => {
                warn!(error = %e, "bad control request");
                Response::Error {
                    message: format!("bad request: {e}"),
                }
            }
        };
        let mut text = serde_json::to_string(&response).unwrap_or_else(|e| {
            format!("{{\"response\":\"error\",\"message\":\"encoding: {e}\"}}")
        });
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
}

/// `lbctl events --follow`: the events after `after`, then each new one,
/// one JSON line each, until the client goes away.
async fn follow_events(
    daemon: &Daemon,
    after: u64,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let Ok(c) = daemon.controller() else {
        let r = Response::Error {
            message: "this lb-control runs no manager".into(),
        };
        let mut text = serde_json::to_string(&r).unwrap_or_default();
        text.push('\n');
        return write.write_all(text.as_bytes()).await;
    };
    // Subscribe first so nothing falls between the backlog and the stream.
    let mut rx = c.events.subscribe();
    let mut last = after;
    for e in c.events.since(after) {
        last = e.id;
        write_event(write, &e).await?;
    }
    loop {
        match rx.recv().await {
            Ok(e) if e.id > last => {
                last = e.id;
                write_event(write, &e).await?;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                for e in c.events.since(last) {
                    last = e.id;
                    write_event(write, &e).await?;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn write_event(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    event: &Event,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(event).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Client side: one request, one response.
pub async fn call(path: &Path, request: &Request) -> Result<Response, String> {
    let stream = UnixStream::connect(path).await.map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is lb-control running? --socket sets the path)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(|e| e.to_string())?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("bad response: {e}"))
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
