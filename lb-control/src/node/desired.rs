//! What the node is asked to program: its file's services, each replaced
//! (or removed) by the desired state a manager sent for it, as the
//! validated model; beside it every server the node knows by name, for
//! what `lbctl` shows and for naming what the maps hold after a restart.
//!
//! A `<reconfigure>` speaks for one service: its servers' states and
//! weights hold there alone, and a server named only by a manager is known
//! to the node as `free` (its file state).

use std::net::IpAddr;

use lb_proto::Service;

use crate::{
    config::{Config, Limits, ServerState},
    model::{Mac, ModelError, NodeModel, ServiceSpec},
};

/// A server the node knows by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownServer {
    pub name: String,
    pub address: IpAddr,
    /// Its pool state in the node's file (`free` for one only a manager
    /// named).
    pub state: ServerState,
    /// Its weight in the file (for one only a manager named, the weight
    /// it was first sent with).
    pub weight: u32,
    /// Its MAC in the file, or the one a manager sent last.
    pub mac: Option<Mac>,
    /// Runs on this node (from the file).
    pub local: bool,
}

/// The node's desired state.
#[derive(Debug, Clone)]
pub struct Desired {
    pub model: NodeModel,
    /// Every server known by name, in the order first met: the file's,
    /// then those only a manager named.
    pub servers: Vec<KnownServer>,
    /// The map sizes a desired state must fit.
    limits: Limits,
    /// `[node] tunnel_source`: a tunnelled server needs one of its family.
    tunnel_sources: Vec<IpAddr>,
}

impl Desired {
    /// The desired state of a (validated) configuration file.
    ///
    /// # Errors
    /// A server whose MAC address does not parse.
    pub fn from_config(config: &Config) -> Result<Self, ModelError> {
        let servers = config
            .server
            .iter()
            .map(|s| {
                Ok(KnownServer {
                    name: s.name.clone(),
                    address: s.address,
                    state: s.state,
                    weight: s.weight,
                    mac: crate::model::mac_of(s)?,
                    local: s.local,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            model: NodeModel::from_config(config)?,
            servers,
            limits: config.limits.clone(),
            tunnel_sources: config.node.tunnel_source.clone(),
        })
    }

    /// This desired state with service `service.name` as a manager
    /// describes it: replaced, or gone when retired. Servers are known by
    /// name: one the node knows keeps its file's MAC (unless one is sent)
    /// and `local`, and takes the address sent; one it does not know is
    /// added.
    ///
    /// # Errors
    /// A service the node cannot hold (limits, keys, address families).
    pub fn with_service(&self, service: &Service) -> Result<Self, ModelError> {
        if service.retired {
            return Ok(self.without_service(&service.name));
        }
        let mut desired = self.clone();
        let mut spec = ServiceSpec::from_wire(service);
        for server in &mut spec.servers {
            match desired.servers.iter_mut().find(|k| k.name == server.name) {
                Some(known) => {
                    known.address = server.address;
                    if server.mac.is_some() {
                        known.mac = server.mac;
                    }
                    server.mac = known.mac;
                    server.local = known.local;
                }
                None => desired.servers.push(KnownServer {
                    name: server.name.clone(),
                    address: server.address,
                    state: ServerState::Free,
                    weight: server.weight,
                    mac: server.mac,
                    local: false,
                }),
            }
        }
        if let Some(server) = spec.servers.iter().find(|s| {
            s.forward.is_tunnel()
                && !desired
                    .tunnel_sources
                    .iter()
                    .any(|a| a.is_ipv4() == s.address.is_ipv4())
        }) {
            return Err(ModelError::NoTunnelSource {
                service: spec.name.clone(),
                server: server.name.clone(),
                forward: server.forward.name(),
                family: if server.address.is_ipv4() { 4 } else { 6 },
            });
        }
        desired.model = desired.model.with_service(spec);
        desired.model.check(&desired.limits)?;
        Ok(desired)
    }

    /// This desired state without service `name` (a retired service).
    #[must_use]
    pub fn without_service(&self, name: &str) -> Self {
        Self {
            model: self.model.without_service(name),
            ..self.clone()
        }
    }

    /// The weight of server `server` in `service`, in the service's units:
    /// the one it is programmed with, else its file's.
    #[must_use]
    pub fn weight_in(&self, server: &KnownServer, service: &str) -> u32 {
        self.model
            .service(service)
            .and_then(|s| s.servers.iter().find(|x| x.name == server.name))
            .map_or(server.weight, |s| s.weight)
    }

    /// The name of the server at `address`, if known.
    #[must_use]
    pub fn server_at(&self, address: IpAddr) -> Option<&str> {
        self.servers
            .iter()
            .find(|s| s.address == address)
            .map(|s| s.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::collections::BTreeMap;

    use super::*;
    use lb_proto::{Forward, ServerState as WireState};

    use crate::{manager::node_link::desired_service, model::ServerState as ModelState};

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
        let node = Desired::from_config(&node).unwrap();
        let merged = node.with_service(&svc).unwrap();
        let members: Vec<(&str, u32, ModelState)> = merged
            .model
            .service("web")
            .unwrap()
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.weight, s.state))
            .collect();
        assert_eq!(
            members,
            [
                ("s1", 40, ModelState::Active),
                ("s2", 100, ModelState::Draining)
            ]
        );
        assert_eq!(merged.model.services[0].weight_scale, 100);
        assert_eq!(
            merged.servers[0].mac.map(|m| m.to_string()).as_deref(),
            Some("02:00:00:00:00:11")
        );
        // A second merge replaces the pool; a server left out leaves it.
        let mut smaller = svc.clone();
        smaller.servers.truncate(1);
        let merged = merged.with_service(&smaller).unwrap();
        assert_eq!(merged.model.service("web").unwrap().servers.len(), 1);
        let gone = merged.without_service("web");
        assert!(gone.model.services.is_empty() && gone.model.service("web").is_none());
        // A desired state the node cannot hold is refused with the reason.
        let mut limits =
            Config::parse("[node]\ninterfaces = [\"eth0\"]\n", Path::new("n.toml")).unwrap();
        limits.limits.max_backends = 1;
        let e = Desired::from_config(&limits)
            .unwrap()
            .with_service(&svc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_backends = 1"), "{e}");
        assert!(desired_service(&manager, "nope", &weights).is_none());
    }

    #[test]
    fn a_tunnelled_server_travels_and_needs_a_tunnel_source_on_the_node() {
        let tunnelled = MANAGER.replace(
            "name = \"s2\"\naddress = \"10.0.0.12\"",
            "name = \"s2\"\naddress = \"10.0.0.12\"\nforward = \"gue\"",
        );
        let manager = Config::parse(
            &tunnelled.replace("[node]\n", "[node]\ntunnel_source = [\"10.0.0.1\"]\n"),
            Path::new("m.toml"),
        )
        .unwrap();
        let svc = desired_service(&manager, "web", &BTreeMap::new()).unwrap();
        let forward: Vec<Forward> = svc.servers.iter().map(|s| s.forward).collect();
        assert_eq!(forward, [Forward::L2, Forward::Gue]);
        // A node with a tunnel source of the family programs it so.
        let node = Config::parse(
            "[node]\ninterfaces = [\"eth0\"]\ntunnel_source = [\"fd00::1\", \"10.9.0.1\"]\n",
            Path::new("n.toml"),
        )
        .unwrap();
        let merged = Desired::from_config(&node)
            .unwrap()
            .with_service(&svc)
            .unwrap();
        let s2 = &merged.model.service("web").unwrap().servers[1];
        assert_eq!((s2.name.as_str(), s2.forward), ("s2", Forward::Gue));
        // One without refuses the service, saying what to add.
        let bare = Config::parse(
            "[node]\ninterfaces = [\"eth0\"]\ntunnel_source = [\"fd00::1\"]\n",
            Path::new("n.toml"),
        )
        .unwrap();
        let e = Desired::from_config(&bare)
            .unwrap()
            .with_service(&svc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server `s2`") && e.contains("no IPv4 node.tunnel_source"),
            "{e}"
        );
    }
}
