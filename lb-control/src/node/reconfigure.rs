//! The node side of a reconfiguration: generations, apply, read-back, ack,
//! and the state a remote manager left, kept across node restarts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use lb_proto::{Ack, AckStatus, Reconfigure, Service};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    atomic_file,
    model::ModelError,
    node::{ApplyError, Node, VerifyError, desired::Desired},
};

/// What a node last applied for one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub generation: u64,
    pub service: Service,
}

/// The node's record of applied generations (and, for a node a remote
/// manager drives, the desired states themselves), by service name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeState {
    pub services: BTreeMap<String, Applied>,
}

impl NodeState {
    /// Reads a state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<Self, NodeStateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| NodeStateError::Corrupt {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(NodeStateError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The newest manager generation applied to any service (a retired
    /// one too): the manager's last change on this node.
    #[must_use]
    pub fn manager_generation(&self) -> Option<u64> {
        self.services.values().map(|a| a.generation).max()
    }

    /// `desired` with every recorded desired state in place of its
    /// service (a remote node restarting comes back as its manager left
    /// it). A state that no longer fits the node is skipped with a warning;
    /// the manager sends it again.
    #[must_use]
    pub fn overlay(&self, desired: Desired) -> Desired {
        let mut desired = desired;
        for (name, applied) in &self.services {
            match desired.with_service(&applied.service) {
                Ok(d) => desired = d,
                Err(e) => warn!(service = %name, error = %e, "recorded desired state skipped"),
            }
        }
        desired
    }
}

/// Why the state a remote manager left (`node-state.json`) does not load.
#[derive(Debug, thiserror::Error)]
pub enum NodeStateError {
    #[error("{}: {source} (move it away to start empty)", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A reconfiguration refused for its generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "generation {generation} is older than generation {applied} already applied to service `{service}`"
    )]
    Older {
        generation: u64,
        applied: u64,
        service: String,
    },
    #[error(
        "generation {generation} of service `{service}` was already applied with a different content"
    )]
    OtherContent { generation: u64, service: String },
}

/// Why a node did not apply (or did not record) a reconfiguration; the
/// text goes back to the manager in the ack.
#[derive(Debug, thiserror::Error)]
pub enum ReconfigureError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The service does not fit the node.
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(
        "no next hop for {0:?}: the node cannot reach them (not on a connected segment, or no neighbour answer)"
    )]
    Unresolved(Vec<String>),
    /// The maps read back differ from what was applied.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Encode(#[source] serde_json::Error),
    #[error("applied, but cannot record it in {}: {source}", path.display())]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a node does with a reconfiguration, given what it applied last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A newer generation (or the first for the service): apply it.
    Apply,
    /// The generation already applied, with the same content: read the
    /// maps back and ack again (the manager retried).
    Reack,
}

/// Refuses an older generation, or the same generation with another
/// content (the error says which).
pub fn judge(applied: Option<&Applied>, message: &Reconfigure) -> Result<Verdict, Refusal> {
    let Some(applied) = applied else {
        return Ok(Verdict::Apply);
    };
    let (generation, service) = (message.generation, &message.service);
    if generation < applied.generation {
        return Err(Refusal::Older {
            generation,
            applied: applied.generation,
            service: service.name.clone(),
        });
    }
    if generation == applied.generation {
        if applied.service != *service {
            return Err(Refusal::OtherContent {
                generation,
                service: service.name.clone(),
            });
        }
        return Ok(Verdict::Reack);
    }
    Ok(Verdict::Apply)
}

/// The path of a node's state file under `[node] state_dir`.
#[must_use]
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("node-state.json")
}

/// Applies reconfigurations to the node in this process.
pub struct Reconfigurer {
    name: String,
    node: Arc<Mutex<Node>>,
    state: Mutex<NodeState>,
    /// Where the state is persisted (nodes driven by a remote manager).
    persist: Option<PathBuf>,
}

impl Reconfigurer {
    pub fn new(
        name: String,
        node: Arc<Mutex<Node>>,
        state: NodeState,
        persist: Option<PathBuf>,
    ) -> Self {
        Self {
            name,
            node,
            state: Mutex::new(state),
            persist,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The newest manager generation this node applied (to any service):
    /// the number of the manager's last change here. `None` before the
    /// first.
    pub async fn manager_generation(&self) -> Option<u64> {
        self.state.lock().await.manager_generation()
    }

    /// The node's status for a manager: its backends (see
    /// [`Node::backend_status`]) and the newest manager generation it
    /// applied.
    pub async fn node_status(&self, count_flows: bool) -> lb_proto::NodeStatus {
        // The state before the node, as a reconfiguration locks them.
        let manager_generation = self.manager_generation().await;
        lb_proto::NodeStatus {
            seq: 0,
            id: 0,
            manager_generation,
            backends: self.node.lock().await.backend_status(count_flows),
        }
    }

    /// Applies `message` unless its generation is older than the one the
    /// service already has (refused) or equal (acked again after a
    /// read-back, nothing applied); answers with the ack.
    pub async fn reconfigure(&self, message: &Reconfigure) -> Ack {
        let generation = message.generation;
        let result = self.apply(message).await;
        let (status, error) = match result {
            Ok(()) => (AckStatus::Ok, None),
            Err(e) => {
                warn!(node = %self.name, service = %message.service.name, generation, error = %e, "reconfiguration refused");
                (AckStatus::Failed, Some(e.to_string()))
            }
        };
        Ack {
            seq: 0,
            generation,
            status,
            error,
        }
    }

    async fn apply(&self, message: &Reconfigure) -> Result<(), ReconfigureError> {
        let service = &message.service;
        let generation = message.generation;
        let mut state = self.state.lock().await;
        let node = self.node.lock().await;
        match judge(state.services.get(&service.name), message)? {
            Verdict::Apply => {}
            Verdict::Reack => return Ok(node.verify()?),
        }
        drop(node);
        // The node goes on serving the API meanwhile.
        let (report, node) = Node::apply_outside_lock(&self.node, |desired| {
            desired
                .with_service(service)
                .map_err(ReconfigureError::from)
        })
        .await?;
        let unresolved: Vec<String> = report
            .unresolved
            .iter()
            .filter(|u| service.servers.iter().any(|s| &s.name == *u))
            .cloned()
            .collect();
        if !unresolved.is_empty() {
            return Err(ReconfigureError::Unresolved(unresolved));
        }
        node.verify()?;
        drop(node);
        state.services.insert(
            service.name.clone(),
            Applied {
                generation,
                service: service.clone(),
            },
        );
        if let Some(path) = &self.persist {
            let bytes = serde_json::to_vec_pretty(&*state).map_err(ReconfigureError::Encode)?;
            atomic_file::write(path, &bytes).map_err(|source| ReconfigureError::Record {
                path: path.clone(),
                source,
            })?;
        }
        info!(node = %self.name, service = %service.name, generation, micros = report.micros, "reconfiguration applied and verified");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lb_proto::{Protocol, Server, ServerState};

    use super::*;

    fn message(generation: u64, weight: u32) -> Reconfigure {
        Reconfigure {
            seq: 0,
            generation,
            service: Service {
                name: "web".into(),
                vip: "192.0.2.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                table_size: 65537,
                servers: vec![Server {
                    name: "s1".into(),
                    address: "192.0.2.11".parse().unwrap(),
                    weight,
                    state: ServerState::Allocated,
                    mac: None,
                    forward: lb_proto::Forward::L2,
                }],
                retired: false,
                weight_scale: 1,
            },
        }
    }

    #[test]
    fn older_refused_equal_reacked_newer_applied() {
        let applied = Applied {
            generation: 7,
            service: message(7, 100).service,
        };
        assert_eq!(judge(None, &message(1, 100)), Ok(Verdict::Apply));
        assert_eq!(judge(Some(&applied), &message(8, 50)), Ok(Verdict::Apply));
        assert_eq!(judge(Some(&applied), &message(7, 100)), Ok(Verdict::Reack));
        let e = judge(Some(&applied), &message(6, 100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("older than generation 7"), "{e}");
        let e = judge(Some(&applied), &message(7, 50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different content"), "{e}");
    }

    #[test]
    fn state_file_round_trip_and_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        assert!(NodeState::load(&path).unwrap().services.is_empty());
        let mut state = NodeState::default();
        state.services.insert(
            "web".into(),
            Applied {
                generation: 3,
                service: message(3, 100).service,
            },
        );
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
        let loaded = NodeState::load(&path).unwrap();
        assert_eq!(loaded.services["web"].generation, 3);
        assert_eq!(NodeState::default().manager_generation(), None);
        let mut two = loaded.clone();
        two.services.insert(
            "db".into(),
            Applied {
                generation: 9,
                service: crate::manager::node_link::retired_service("db"),
            },
        );
        assert_eq!(loaded.manager_generation(), Some(3));
        assert_eq!(two.manager_generation(), Some(9));
        let base = crate::config::Config::parse(
            "[node]\ninterfaces = [\"eth0\"]\n",
            std::path::Path::new("node.toml"),
        )
        .unwrap();
        let merged = loaded.overlay(Desired::from_config(&base).unwrap());
        assert_eq!(merged.model.services.len(), 1);
        assert_eq!(merged.model.service("web").unwrap().servers.len(), 1);
        std::fs::write(&path, "{").unwrap();
        let e = NodeState::load(&path).unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}
