//! Reconfiguring balancer nodes.
//!
//! The manager sends every node the full desired state of one service in a
//! `<reconfigure>` with a generation number; the node makes its maps match
//! (inactive table slot, flip), reads them back and answers with an `<ack>`
//! of that generation. The node in the manager's own process is reached
//! through the same [`NodeAgent`] entry point a remote node's listener
//! calls, so both apply, verify and answer in exactly the same way.

pub mod agent;
pub mod remote;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use lb_proto::{
    Ack, Protocol as WireProtocol, Reconfigure, Server, ServerState as WireState, Service,
};

pub use agent::NodeAgent;

use crate::config::{Config, Protocol, ServerState};

/// A way to reach one balancer node.
#[derive(Clone)]
pub enum NodeLink {
    /// The node in this process.
    Local(Arc<NodeAgent>),
    /// A node on another host, over mutual TLS.
    Remote(Arc<remote::RemoteNode>),
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
    pub fn name(&self) -> &str {
        match self {
            Self::Local(a) => a.name(),
            Self::Remote(r) => r.name(),
        }
    }

    /// Asks the node for its backends' status.
    pub async fn status(
        &self,
        count_flows: bool,
        timeout: Duration,
    ) -> Result<Vec<lb_proto::BackendStatus>, LinkError> {
        match self {
            Self::Local(a) => Ok(a.status(count_flows).await),
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

/// Server states as the wire names them (`free` servers are not sent).
pub fn wire_state(state: ServerState) -> Option<WireState> {
    match state {
        ServerState::Allocated => Some(WireState::Allocated),
        // A failed server is out of the table with its flows kept: on the
        // node that is draining.
        ServerState::Draining | ServerState::Failed => Some(WireState::Draining),
        ServerState::Down => Some(WireState::Down),
        ServerState::Free => None,
    }
}

fn config_state(state: WireState) -> ServerState {
    match state {
        WireState::Allocated => ServerState::Allocated,
        WireState::Draining => ServerState::Draining,
        WireState::Down => ServerState::Down,
    }
}

pub(crate) fn wire_protocol(p: Protocol) -> WireProtocol {
    match p {
        Protocol::Tcp => WireProtocol::Tcp,
        Protocol::Udp => WireProtocol::Udp,
    }
}

fn config_protocol(p: WireProtocol) -> Protocol {
    match p {
        WireProtocol::Tcp => Protocol::Tcp,
        WireProtocol::Udp => Protocol::Udp,
    }
}

/// The desired state of service `name` in `config`: every server that is
/// not free, with the weight in force the manager computed for it
/// (`weights`, by server name, in hundredths of the file's weights; a
/// server without one gets its file weight in hundredths). `None` if there
/// is no such service.
pub fn desired_service(
    config: &Config,
    name: &str,
    weights: &BTreeMap<String, u32>,
) -> Option<Service> {
    let scale = crate::scaling::weights::WEIGHT_SCALE;
    let svc = config.service.iter().find(|s| s.name.get_ref() == name)?;
    let servers = config
        .members(name)
        .filter_map(|s| {
            let server = s.name.get_ref();
            Some(Server {
                name: server.clone(),
                address: s.address,
                weight: weights
                    .get(server)
                    .copied()
                    .unwrap_or_else(|| s.weight_in(name).saturating_mul(scale)),
                state: wire_state(s.state_in(name))?,
                mac: s.mac.as_deref().and_then(|m| m.parse().ok()),
            })
        })
        .collect();
    Some(Service {
        name: name.to_owned(),
        vip: svc.vip,
        port: svc.port,
        protocol: wire_protocol(svc.protocol),
        table_size: svc.table_size,
        servers,
        retired: false,
        weight_scale: scale,
    })
}

/// The reconfiguration that removes service `name` from a node.
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

/// `base` without service `name` (a retired service): its entry goes, and
/// its name leaves every server's `services`.
pub fn remove_service(base: &Config, name: &str) -> Config {
    let mut config = base.clone();
    config.service.retain(|s| s.name.get_ref() != name);
    for server in &mut config.server {
        server.services.retain(|s| s.get_ref() != name);
        server.per_service.remove(name);
    }
    config
}

/// `base` with service `svc.name` replaced by the desired state `svc` (the
/// node side of a reconfiguration). Servers are matched by name; a server
/// not in `base` is added. The states and weights it carries hold for this
/// service alone (a server's state in the file is for all its services).
pub fn merge_service(base: &Config, svc: &Service) -> Result<Config, String> {
    let mut config = base.clone();
    let name = &svc.name;
    let spanned = |s: &str| toml::Spanned::new(0..0, s.to_owned());
    match config.service.iter_mut().find(|s| s.name.get_ref() == name) {
        Some(s) => {
            s.vip = svc.vip;
            s.port = svc.port;
            s.protocol = config_protocol(svc.protocol);
            s.table_size = svc.table_size;
            s.weight_scale = svc.weight_scale;
        }
        None => config.service.push(crate::config::ServiceConfig {
            name: spanned(name),
            vip: svc.vip,
            port: svc.port,
            protocol: config_protocol(svc.protocol),
            table_size: svc.table_size,
            application: None,
            scaling: Default::default(),
            weight_scale: svc.weight_scale,
        }),
    }
    for server in &mut config.server {
        server.services.retain(|s| s.get_ref() != name);
        server.per_service.remove(name);
    }
    for want in &svc.servers {
        let state = config_state(want.state);
        let mac = want.mac.map(|m| m.to_string());
        match config
            .server
            .iter_mut()
            .find(|s| s.name.get_ref() == &want.name)
        {
            Some(s) => {
                s.address = want.address;
                if mac.is_some() {
                    s.mac = mac;
                }
                s.per_service.insert(name.clone(), (state, want.weight));
                s.services.push(spanned(name));
            }
            None => config.server.push(crate::config::ServerConfig {
                name: spanned(&want.name),
                address: want.address,
                services: vec![spanned(name)],
                // Known to the node only through services' desired states.
                state: ServerState::Free,
                mac,
                weight: want.weight,
                local: false,
                fingerprint: None,
                per_service: BTreeMap::from([(name.clone(), (state, want.weight))]),
            }),
        }
    }
    config
        .validate("", std::path::Path::new("<reconfigure>"))
        .map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MANAGER: &str = r#"
[node]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80

[[server]]
name = "s1"
address = "10.0.0.11"
services = ["web"]
mac = "02:00:00:00:00:11"

[[server]]
name = "s2"
address = "10.0.0.12"
services = ["web"]
state = "failed"

[[server]]
name = "s3"
address = "10.0.0.13"
services = ["web"]
state = "free"
"#;

    #[test]
    fn desired_state_survives_the_trip_to_a_node() {
        let manager = Config::parse(MANAGER, Path::new("m.toml")).unwrap();
        let weights = BTreeMap::from([("s1".to_owned(), 40)]);
        let svc = desired_service(&manager, "web", &weights).unwrap();
        // Free servers are not sent; a failed one is draining on the node.
        // Weights travel in hundredths of file units: the published 40,
        // and s2's file weight 1 as 100.
        assert_eq!(svc.weight_scale, 100);
        let sent: Vec<(&str, u32, WireState)> = svc
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.weight, s.state))
            .collect();
        assert_eq!(
            sent,
            [
                ("s1", 40, WireState::Allocated),
                ("s2", 100, WireState::Draining)
            ]
        );
        let node = Config::parse("[node]\ninterfaces = [\"eth0\"]\n", Path::new("n.toml")).unwrap();
        let merged = merge_service(&node, &svc).unwrap();
        let members: Vec<(&str, u32, ServerState)> = merged
            .members("web")
            .map(|s| {
                (
                    s.name.get_ref().as_str(),
                    s.weight_in("web"),
                    s.state_in("web"),
                )
            })
            .collect();
        assert_eq!(
            members,
            [
                ("s1", 40, ServerState::Allocated),
                ("s2", 100, ServerState::Draining)
            ]
        );
        assert_eq!(merged.service[0].weight_scale, 100);
        assert_eq!(merged.server[0].mac.as_deref(), Some("02:00:00:00:00:11"));
        // A second merge replaces the pool; a server left out leaves it.
        let mut smaller = svc.clone();
        smaller.servers.truncate(1);
        let merged = merge_service(&merged, &smaller).unwrap();
        assert_eq!(merged.members("web").count(), 1);
        let gone = remove_service(&merged, "web");
        assert!(gone.service.is_empty() && gone.members("web").count() == 0);
        // A desired state the node cannot hold is refused with the reason.
        let mut limits = node.clone();
        limits.limits.max_backends = 1;
        let e = merge_service(&limits, &svc).unwrap_err();
        assert!(e.contains("max_backends = 1"), "{e}");
        assert!(desired_service(&manager, "nope", &weights).is_none());
    }
}
