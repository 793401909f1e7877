//! The node's desired state of one service from a `<reconfigure>`: the
//! wire service merged into the node's configuration.

use std::collections::BTreeMap;

use lb_proto::Service;

use crate::{
    config::{Config, ConfigError, ServerState},
    model::{file_state_of_wire, protocol_to_file},
};

/// `base` without service `name` (a retired service): its entry goes, and
/// its name leaves every server's `services`.
#[must_use]
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
pub fn merge_service(base: &Config, svc: &Service) -> Result<Config, ConfigError> {
    let mut config = base.clone();
    let name = &svc.name;
    let spanned = |s: &str| toml::Spanned::new(0..0, s.to_owned());
    match config.service.iter_mut().find(|s| s.name.get_ref() == name) {
        Some(s) => {
            s.vip = svc.vip;
            s.port = svc.port;
            s.protocol = protocol_to_file(svc.protocol);
            s.table_size = svc.table_size;
            s.weight_scale = svc.weight_scale;
        }
        None => config.service.push(crate::config::ServiceConfig {
            name: spanned(name),
            vip: svc.vip,
            port: svc.port,
            protocol: protocol_to_file(svc.protocol),
            table_size: svc.table_size,
            application: None,
            scaling: crate::manager::policy::ScalingPolicy::default(),
            weight_scale: svc.weight_scale,
        }),
    }
    for server in &mut config.server {
        server.services.retain(|s| s.get_ref() != name);
        server.per_service.remove(name);
    }
    for want in &svc.servers {
        let state = file_state_of_wire(want.state);
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
    config.validate("", std::path::Path::new("<reconfigure>"))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use lb_proto::ServerState as WireState;

    use crate::manager::node_link::desired_service;

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
        let e = merge_service(&limits, &svc).unwrap_err().to_string();
        assert!(e.contains("max_backends = 1"), "{e}");
        assert!(desired_service(&manager, "nope", &weights).is_none());
    }
}
