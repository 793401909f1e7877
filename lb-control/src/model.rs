//! The node's model of what it programs: services and the servers in each,
//! validated and parsed once at the edge (the configuration file, the
//! wire), so the apply path meets no strings for states, protocols or MACs.
//!
//! Each foreign form of a server state converts here, in one place each:
//! the file's [`crate::config::ServerState`], the wire's
//! [`lb_proto::ServerState`] and the `BACKEND_*` codes of the maps.

use std::net::IpAddr;

use lb_common::{BACKEND_ACTIVE, BACKEND_DOWN, BACKEND_DRAINING, PROTO_TCP, PROTO_UDP, ServiceKey};
pub use lb_proto::{MacAddr as Mac, Protocol};

use lb_common::maglev;

use crate::config::{self, Config, Limits};

/// Errors turning a configuration into the node's model, or a model the
/// node cannot hold.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A server's MAC address does not parse.
    #[error("server `{server}`: mac: {source}")]
    Mac {
        server: String,
        source: lb_proto::ParseError,
    },
    #[error("{count} services but limits.max_services = {max}")]
    Services { count: usize, max: u32 },
    #[error("{count} (service, server) pairs but limits.max_backends = {max}")]
    Backends { count: usize, max: u32 },
    #[error(
        "service `{service}`: {vip} port {port} {protocol:?} is already used by service `{other}`"
    )]
    KeyTaken {
        service: String,
        vip: IpAddr,
        port: u16,
        protocol: Protocol,
        other: String,
    },
    #[error(
        "service `{service}`: table_size = {size} must be a prime ≤ limits.max_table_size ({max}); try {next}",
        next = maglev::next_prime((*.size).min(*.max))
    )]
    TableSize {
        service: String,
        size: u32,
        max: u32,
    },
    #[error("service `{service}`: server `{server}` is listed twice")]
    ServerTwice { service: String, server: String },
    #[error("service `{service}`: server `{server}`: address {address} is also server `{other}`")]
    AddressTwice {
        service: String,
        server: String,
        address: IpAddr,
        other: String,
    },
    #[error(
        "server `{server}` ({address}) cannot serve `{service}` ({vip}): direct server return keeps the address family"
    )]
    Family {
        service: String,
        server: String,
        address: IpAddr,
        vip: IpAddr,
    },
    #[error(
        "service `{service}`: server `{server}` is reached by forward = \"{forward}\", but this node has no IPv{family} node.tunnel_source: add this node's address on the path to it"
    )]
    NoTunnelSource {
        service: String,
        server: String,
        forward: &'static str,
        family: u8,
    },
}

/// State of a programmed server in one service, ordered by permissiveness
/// (`Down < Draining < Active`): raising it is safe before a table flip,
/// lowering it only after one and a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerState {
    /// Out of service: its flows are re-hashed to other servers.
    Down,
    /// No new flows; existing ones still reach it.
    Draining,
    /// In the Maglev table: receives new flows.
    Active,
}

impl ServerState {
    /// The node state of a file state; `None` for `free` (not programmed).
    /// A `failed` server keeps its flows, like a draining one.
    #[must_use]
    pub fn from_file(state: config::ServerState) -> Option<Self> {
        match state {
            config::ServerState::Allocated => Some(Self::Active),
            config::ServerState::Draining | config::ServerState::Failed => Some(Self::Draining),
            config::ServerState::Down => Some(Self::Down),
            config::ServerState::Free => None,
        }
    }

    /// The node state of a wire state.
    #[must_use]
    pub fn from_wire(state: lb_proto::ServerState) -> Self {
        match state {
            lb_proto::ServerState::Allocated => Self::Active,
            lb_proto::ServerState::Draining => Self::Draining,
            lb_proto::ServerState::Down => Self::Down,
        }
    }

    /// The `BACKEND_*` code of the state in a backend record.
    #[must_use]
    pub fn code(self) -> u32 {
        match self {
            Self::Active => BACKEND_ACTIVE,
            Self::Draining => BACKEND_DRAINING,
            Self::Down => BACKEND_DOWN,
        }
    }

    /// The state a backend record's code names; `None` for unused (or
    /// unknown) records.
    #[must_use]
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            BACKEND_ACTIVE => Some(Self::Active),
            BACKEND_DRAINING => Some(Self::Draining),
            BACKEND_DOWN => Some(Self::Down),
            _ => None,
        }
    }

    /// Name for `lbctl`: `active`, `draining`, `down`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Down => "down",
        }
    }
}

/// The name of a record's state code for `lbctl` (`unused` for a free
/// index).
#[must_use]
pub fn state_name(code: u32) -> &'static str {
    ServerState::from_code(code).map_or("unused", ServerState::name)
}

/// The IP protocol number of a protocol.
#[must_use]
pub fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// The wire's state of a server in the file: what the manager sends the
/// nodes; `None` for `free` (not sent). A failed server is out of the table
/// with its flows kept: on the node that is draining.
#[must_use]
pub fn wire_state_of_file(state: config::ServerState) -> Option<lb_proto::ServerState> {
    match state {
        config::ServerState::Allocated => Some(lb_proto::ServerState::Allocated),
        config::ServerState::Draining | config::ServerState::Failed => {
            Some(lb_proto::ServerState::Draining)
        }
        config::ServerState::Down => Some(lb_proto::ServerState::Down),
        config::ServerState::Free => None,
    }
}

/// The file's state of a wire state: how a node records a `<reconfigure>`.
#[must_use]
pub fn file_state_of_wire(state: lb_proto::ServerState) -> config::ServerState {
    match state {
        lb_proto::ServerState::Allocated => config::ServerState::Allocated,
        lb_proto::ServerState::Draining => config::ServerState::Draining,
        lb_proto::ServerState::Down => config::ServerState::Down,
    }
}

/// The model's (wire) protocol of the file's.
#[must_use]
pub fn protocol_of_file(protocol: config::Protocol) -> Protocol {
    match protocol {
        config::Protocol::Tcp => Protocol::Tcp,
        config::Protocol::Udp => Protocol::Udp,
    }
}

/// The file's protocol of the model's (wire) one.
#[must_use]
pub fn protocol_to_file(protocol: Protocol) -> config::Protocol {
    match protocol {
        Protocol::Tcp => config::Protocol::Tcp,
        Protocol::Udp => config::Protocol::Udp,
    }
}

/// One server programmed in one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub address: IpAddr,
    /// Given by the configuration; else resolved from the neighbour table.
    pub mac: Option<Mac>,
    /// Maglev weight in this service (0 keeps it out of the table).
    pub weight: u32,
    pub state: ServerState,
    /// Runs on this node: packets are delivered locally.
    pub local: bool,
    /// Reached at layer 2 or through a tunnel.
    pub forward: config::Forward,
}

/// One service the node programs, with its programmed servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub table_size: u32,
    /// Weights are in `1 / weight_scale` file units.
    pub weight_scale: u32,
    pub servers: Vec<ServerSpec>,
}

impl ServiceSpec {
    /// The service's key in the `SERVICES` map.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        let proto = protocol_number(self.protocol);
        match self.vip {
            IpAddr::V4(a) => ServiceKey::new(&a.octets(), self.port, proto),
            IpAddr::V6(a) => ServiceKey::new(&a.octets(), self.port, proto),
        }
    }

    /// Each server once by name and by address, in the family of the VIP.
    fn check_servers(&self) -> Result<(), ModelError> {
        let mut names = std::collections::BTreeSet::new();
        let mut addresses = std::collections::BTreeMap::new();
        for s in &self.servers {
            if !names.insert(s.name.as_str()) {
                return Err(ModelError::ServerTwice {
                    service: self.name.clone(),
                    server: s.name.clone(),
                });
            }
            if let Some(other) = addresses.insert(s.address, &s.name) {
                return Err(ModelError::AddressTwice {
                    service: self.name.clone(),
                    server: s.name.clone(),
                    address: s.address,
                    other: other.clone(),
                });
            }
            if s.address.is_ipv4() != self.vip.is_ipv4() && !s.forward.is_tunnel() {
                return Err(ModelError::Family {
                    service: self.name.clone(),
                    server: s.name.clone(),
                    address: s.address,
                    vip: self.vip,
                });
            }
        }
        Ok(())
    }

    /// The service a `<reconfigure>` describes (retired services have no
    /// model: they leave the node).
    #[must_use]
    pub fn from_wire(service: &lb_proto::Service) -> Self {
        Self {
            name: service.name.clone(),
            vip: service.vip,
            port: service.port,
            protocol: service.protocol,
            table_size: service.table_size,
            weight_scale: service.weight_scale,
            servers: service
                .servers
                .iter()
                .map(|s| ServerSpec {
                    name: s.name.clone(),
                    address: s.address,
                    mac: s.mac,
                    weight: s.weight,
                    state: ServerState::from_wire(s.state),
                    local: false,
                    forward: s.forward,
                })
                .collect(),
        }
    }
}

/// Everything the node programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeModel {
    pub services: Vec<ServiceSpec>,
}

impl NodeModel {
    /// The model of a (validated) configuration: each service with the
    /// servers programmed for it (every state but `free`).
    ///
    /// # Errors
    /// A server whose MAC address does not parse.
    pub fn from_config(config: &Config) -> Result<Self, ModelError> {
        let services = config
            .service
            .iter()
            .map(|svc| {
                let name = &svc.name;
                let servers = config
                    .members(name)
                    .filter_map(|s| {
                        let state = ServerState::from_file(s.state)?;
                        Some((s, state))
                    })
                    .map(|(s, state)| {
                        Ok(ServerSpec {
                            name: s.name.clone(),
                            address: s.address,
                            mac: mac_of(s)?,
                            weight: s.weight,
                            state,
                            local: s.local,
                            forward: s.forward,
                        })
                    })
                    .collect::<Result<_, ModelError>>()?;
                Ok(ServiceSpec {
                    name: name.clone(),
                    vip: svc.vip,
                    port: svc.port,
                    protocol: protocol_of_file(svc.protocol),
                    table_size: svc.table_size,
                    weight_scale: 1,
                    servers,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self { services })
    }

    /// The service named `name`.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// This model with `service` in place of the one of its name (added
    /// last when there is none).
    #[must_use]
    pub fn with_service(&self, service: ServiceSpec) -> Self {
        let mut model = self.clone();
        match model.services.iter_mut().find(|s| s.name == service.name) {
            Some(s) => *s = service,
            None => model.services.push(service),
        }
        model
    }

    /// This model without service `name`.
    #[must_use]
    pub fn without_service(&self, name: &str) -> Self {
        let mut model = self.clone();
        model.services.retain(|s| s.name != name);
        model
    }

    /// Checks that the maps sized by `limits` hold the model, and what a
    /// configuration file's validation checks of services and servers: keys
    /// and names used once, table sizes, address families.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check(&self, limits: &Limits) -> Result<(), ModelError> {
        if self.services.len() > limits.max_services as usize {
            return Err(ModelError::Services {
                count: self.services.len(),
                max: limits.max_services,
            });
        }
        let mut keys = std::collections::BTreeMap::new();
        for svc in &self.services {
            if let Some(other) = keys.insert(svc.key(), &svc.name) {
                return Err(ModelError::KeyTaken {
                    service: svc.name.clone(),
                    vip: svc.vip,
                    port: svc.port,
                    protocol: svc.protocol,
                    other: other.clone(),
                });
            }
            if !maglev::is_prime(svc.table_size) || svc.table_size > limits.max_table_size {
                return Err(ModelError::TableSize {
                    service: svc.name.clone(),
                    size: svc.table_size,
                    max: limits.max_table_size,
                });
            }
            svc.check_servers()?;
        }
        let count = self.services.iter().map(|s| s.servers.len()).sum();
        if count > limits.max_backends as usize {
            return Err(ModelError::Backends {
                count,
                max: limits.max_backends,
            });
        }
        Ok(())
    }

    /// Warnings that do not stop the model (said in the log).
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| {
                let n = s.servers.len() as u64;
                n > 0 && u64::from(s.table_size) < 100 * n
            })
            .map(|s| {
                format!(
                    "service `{}`: table_size {} is under 100 × {} servers; the spread between servers will be uneven",
                    s.name,
                    s.table_size,
                    s.servers.len()
                )
            })
            .collect()
    }

    /// Every programmed server once (by name), in the order first met.
    #[must_use]
    pub fn servers(&self) -> Vec<&ServerSpec> {
        let mut seen = std::collections::BTreeSet::new();
        self.services
            .iter()
            .flat_map(|s| &s.servers)
            .filter(|s| seen.insert(s.name.as_str()))
            .collect()
    }
}

/// The MAC a file's server gives, parsed (`None` when it gives none).
///
/// # Errors
/// [`ModelError::Mac`] when it does not parse.
pub fn mac_of(server: &config::ServerConfig) -> Result<Option<Mac>, ModelError> {
    server
        .mac
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|source| ModelError::Mac {
            server: server.name.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn states_convert_in_one_place() {
        use config::ServerState as File;
        assert_eq!(
            ServerState::from_file(File::Allocated),
            Some(ServerState::Active)
        );
        assert_eq!(
            ServerState::from_file(File::Failed),
            Some(ServerState::Draining)
        );
        assert_eq!(ServerState::from_file(File::Free), None);
        for s in [
            ServerState::Active,
            ServerState::Draining,
            ServerState::Down,
        ] {
            assert_eq!(ServerState::from_code(s.code()), Some(s));
        }
        assert_eq!(state_name(lb_common::BACKEND_UNUSED), "unused");
        assert!(
            ServerState::Down < ServerState::Draining
                && ServerState::Draining < ServerState::Active
        );
        assert_eq!(
            ServerState::from_wire(lb_proto::ServerState::Draining),
            ServerState::Draining
        );
    }

    fn wire(name: &str, vip: &str, servers: &[(&str, &str)]) -> lb_proto::Service {
        lb_proto::Service {
            name: name.into(),
            vip: vip.parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            table_size: 251,
            servers: servers
                .iter()
                .map(|(n, a)| lb_proto::Server {
                    name: (*n).into(),
                    address: a.parse().unwrap(),
                    weight: 1,
                    state: lb_proto::ServerState::Allocated,
                    mac: None,
                    forward: lb_proto::Forward::L2,
                })
                .collect(),
            retired: false,
            weight_scale: 1,
        }
    }

    #[test]
    fn a_desired_state_the_node_cannot_hold_is_refused() {
        let limits = Limits {
            max_services: 2,
            max_backends: 3,
            ..Limits::default()
        };
        let web = ServiceSpec::from_wire(&wire("web", "10.0.0.1", &[("s1", "10.0.0.11")]));
        let model = NodeModel::default().with_service(web);
        model.check(&limits).unwrap();
        let refused = |svc: lb_proto::Service| {
            model
                .with_service(ServiceSpec::from_wire(&svc))
                .check(&limits)
                .unwrap_err()
                .to_string()
        };
        let e = refused(wire("api", "10.0.0.1", &[]));
        assert!(e.contains("already used by service `web`"), "{e}");
        let e = refused(wire(
            "api",
            "10.0.0.2",
            &[("a", "10.0.0.5"), ("a", "10.0.0.6")],
        ));
        assert!(e.contains("server `a` is listed twice"), "{e}");
        let e = refused(wire(
            "api",
            "10.0.0.2",
            &[("a", "10.0.0.5"), ("b", "10.0.0.5")],
        ));
        assert!(e.contains("is also server `a`"), "{e}");
        let e = refused(wire("api", "10.0.0.2", &[("a", "fd00::5")]));
        assert!(e.contains("keeps the address family"), "{e}");
        let e = refused(wire(
            "api",
            "10.0.0.2",
            &[("a", "10.0.0.5"), ("b", "10.0.0.6"), ("c", "10.0.0.7")],
        ));
        assert!(
            e.contains("4 (service, server) pairs but limits.max_backends = 3"),
            "{e}"
        );
        let mut big = wire("api", "10.0.0.2", &[]);
        big.table_size = 65536;
        let e = refused(big);
        assert!(
            e.contains("must be a prime") && e.contains("try 65537"),
            "{e}"
        );
        let three = model
            .with_service(ServiceSpec::from_wire(&wire("api", "10.0.0.2", &[])))
            .with_service(ServiceSpec::from_wire(&wire("db", "10.0.0.3", &[])));
        let e = three.check(&limits).unwrap_err().to_string();
        assert!(e.contains("3 services but limits.max_services = 2"), "{e}");
        // Replaced in place, removed by name.
        let replaced = model.with_service(ServiceSpec::from_wire(&wire("web", "10.0.0.9", &[])));
        assert_eq!(replaced.services.len(), 1);
        assert!(replaced.service("web").unwrap().servers.is_empty());
        assert!(replaced.without_service("web").services.is_empty());
    }

    #[test]
    fn a_bad_mac_is_an_error() {
        let text = "[node]\ninterfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\n[[server]]\nname = \"s1\"\naddress = \"10.0.0.11\"\nservices = [\"web\"]\nmac = \"02:00:00:00:00:11\"\n";
        let mut config = Config::parse(text, Path::new("n.toml")).unwrap();
        let model = NodeModel::from_config(&config).unwrap();
        assert_eq!(
            model.services[0].servers[0].mac,
            Some(Mac([2, 0, 0, 0, 0, 0x11]))
        );
        assert_eq!(
            model.services[0].key(),
            ServiceSpec::from_wire(&lb_proto::Service {
                name: "web".into(),
                vip: "10.0.0.1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                table_size: 1,
                servers: Vec::new(),
                retired: false,
                weight_scale: 1,
            })
            .key()
        );
        config.server[0].mac = Some("02:00:00:00:00".into());
        let e = NodeModel::from_config(&config).unwrap_err();
        assert!(e.to_string().starts_with("server `s1`: mac: "), "{e}");
    }
}
