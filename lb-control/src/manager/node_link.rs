//! Reconfiguring balancer nodes.
//!
//! The manager sends every node the full desired state of one service in a
//! `<reconfigure>` with a generation number; the node makes its maps match
//! (inactive table slot, flip), reads them back and answers with an `<ack>`
//! of that generation. The node in the manager's own process is reached
//! through the same [`Reconfigurer`] entry point a remote node's listener
//! calls, so both apply, verify and answer in exactly the same way.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use lb_proto::{Ack, Protocol as WireProtocol, Reconfigure, Server, Service};

use crate::{config::Config, manager::node_client::RemoteNode, node::reconfigure::Reconfigurer};

/// A way to reach one balancer node.
#[derive(Clone)]
pub enum NodeLink {
    /// The node in this process.
    Local(Arc<Reconfigurer>),
    /// A node on another host, over mutual TLS.
    Remote(Arc<RemoteNode>),
}

/// Why a node could not be asked (as opposed to a failed ack).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to node `{node}` at {address}: {reason}")]
    Connect {
        node: String,
        address: String,
        reason: String,
    },
    #[error("node `{node}`: {reason}")]
    Stream { node: String, reason: String },
    #[error("node `{node}` did not answer within {waited:?}")]
    Timeout { node: String, waited: Duration },
    #[error("tls: {0}")]
    Tls(#[from] lb_proto::tls::TlsError),
}

impl NodeLink {
    /// The node's name (`local` for the node in this process).
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Local(a) => a.name(),
            Self::Remote(r) => r.name(),
        }
    }

    /// Asks the node for its status: its backends, and the newest manager
    /// generation it applied.
    pub async fn status(
        &self,
        count_flows: bool,
        timeout: Duration,
    ) -> Result<lb_proto::NodeStatus, LinkError> {
        match self {
            Self::Local(a) => Ok(a.node_status(count_flows).await),
            Self::Remote(r) => r.status(count_flows, timeout).await,
        }
    }

    /// Sends `message` and waits for the node's ack of its generation.
    pub async fn reconfigure(
        &self,
        message: Reconfigure,
        timeout: Duration,
    ) -> Result<Ack, LinkError> {
        match self {
            Self::Local(a) => Ok(a.reconfigure(&message).await),
            Self::Remote(r) => r.reconfigure(message, timeout).await,
        }
    }
}

/// The desired state of service `name` in `config`: every server that is
/// not free, with the weight in force the manager computed for it
/// (`weights`, by server name, in hundredths of the file's weights; a
/// server without one gets its file weight in hundredths). `None` if there
/// is no such service.
#[must_use]
pub fn desired_service(
    config: &Config,
    name: &str,
    weights: &BTreeMap<String, u32>,
) -> Option<Service> {
    let scale = crate::manager::weights::WEIGHT_SCALE;
    let svc = config.service.iter().find(|s| s.name == name)?;
    let servers = config
        .members(name)
        .filter_map(|s| {
            let server = &s.name;
            Some(Server {
                name: server.clone(),
                address: s.address,
                weight: weights
                    .get(server)
                    .copied()
                    .unwrap_or_else(|| s.weight.saturating_mul(scale)),
                state: crate::model::wire_state_of_file(s.state)?,
                mac: s.mac.as_deref().and_then(|m| m.parse().ok()),
                forward: s.forward,
            })
        })
        .collect();
    Some(Service {
        name: name.to_owned(),
        vip: svc.vip,
        port: svc.port,
        protocol: crate::model::protocol_of_file(svc.protocol),
        table_size: svc.table_size,
        servers,
        retired: false,
        weight_scale: scale,
    })
}

/// The reconfiguration that removes service `name` from a node.
#[must_use]
pub fn retired_service(name: &str) -> Service {
    Service {
        name: name.to_owned(),
        vip: std::net::IpAddr::from([0, 0, 0, 0]),
        port: 1,
        protocol: WireProtocol::Tcp,
        table_size: 1,
        servers: Vec::new(),
        retired: true,
        weight_scale: 1,
    }
}
