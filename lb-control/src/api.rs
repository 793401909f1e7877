//! The control socket: one JSON request per line, one JSON response per line.
//! `lbctl` is its client.

use std::{path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};
use tracing::{debug, warn};

use crate::{
    config::Config,
    manager::{Manager, ManagerStats, db::MonitorView},
    node::{ApplyReport, Node, ServerView, ServiceView},
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
}

/// Daemon status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub program_id: u32,
    pub adoption: String,
    pub generation: u32,
    pub pin_dir: String,
    pub interfaces: Vec<String>,
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
    Reloaded(ApplyReport),
    Error {
        message: String,
    },
}

/// Shared daemon state for the handlers.
pub struct Daemon {
    pub node: Mutex<Node>,
    pub config_path: std::path::PathBuf,
    pub manager: Option<std::sync::Arc<Manager>>,
}

impl Daemon {
    /// Re-reads the config file and applies it; a bad file changes nothing.
    pub async fn reload(&self) -> Result<ApplyReport, String> {
        let config = Config::load(&self.config_path).map_err(|e| e.to_string())?;
        let mut node = self.node.lock().await;
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
        node.apply(config).await.map_err(|e| e.to_string())
    }

    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => {
                let node = self.node.lock().await;
                Response::Status(Status {
                    program_id: node.dp.program_id,
                    adoption: format!("{:?}", node.dp.adoption).to_lowercase(),
                    generation: node.generation(),
                    pin_dir: node.dp.dir.display().to_string(),
                    interfaces: node.config.node.interfaces.clone(),
                })
            }
            Request::ServiceList => Response::Services {
                services: self.node.lock().await.service_views(),
            },
            Request::ServerList => {
                let servers = self.node.lock().await.server_views();
                let monitors = match &self.manager {
                    Some(m) => m.views().await,
                    None => Vec::new(),
                };
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
                })
            }
            Request::Reload => match self.reload().await {
                Ok(report) => Response::Reloaded(report),
                Err(message) => Response::Error { message },
            },
        }
    }
}

/// Serves the control socket until the task is dropped.
pub async fn serve(daemon: Arc<Daemon>, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a killed predecessor.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
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
