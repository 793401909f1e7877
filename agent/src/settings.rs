//! Answers to the manager's `<settings-request>`: how to reach this server
//! (connection settings) and how the manager and the server authenticate
//! each other on its control port (auth settings).

use std::net::SocketAddr;

use lb_proto::{
    ApplicationPorts, AuthSettings, ConnectionSettings, ErrorMessage, Fingerprint, Message,
    SettingsKind, SettingsRequest,
};

use crate::{config::AgentConfig, interfaces::Interfaces, sources::connections::unmap};

/// Why a settings request cannot be answered; sent back as an `<error>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The request names an application this server does not run.
    #[error("this server runs no application {0:?}")]
    UnknownApplication(String),
    /// The settings asked for are not configured or cannot be found.
    #[error("{0}")]
    Unavailable(String),
}

impl SettingsError {
    /// The `code` of the `<error>` reply.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownApplication(_) => "unknown-application",
            Self::Unavailable(_) => "settings-unavailable",
        }
    }

    /// The `<error>` that rejects `request` (seq stamped by the encoder).
    #[must_use]
    pub fn reply(&self, request: &SettingsRequest) -> Message {
        Message::Error(ErrorMessage {
            seq: 0,
            code: self.code().to_owned(),
            rejected_seq: Some(request.seq),
            text: format!("settings-request id {}: {self}", request.id),
        })
    }
}

/// What answering needs to know about this connection and this server.
#[derive(Debug, Clone, Copy)]
pub struct SettingsContext<'a> {
    /// The configuration.
    pub config: &'a AgentConfig,
    /// The local end of the manager connection: its interface is the one
    /// facing the balancers.
    pub local_addr: SocketAddr,
    /// SHA-256 of this server's certificate, when it has one.
    pub own_fingerprint: Option<Fingerprint>,
}

/// The answer to `request`: a `<connection-settings>`, an `<auth-settings>`
/// or an `<error>`.
#[must_use]
pub fn answer(request: &SettingsRequest, context: &SettingsContext<'_>) -> Message {
    let result = check_application(request, context.config).and_then(|()| match request.kind {
        SettingsKind::Connection => {
            let interfaces =
                Interfaces::read().map_err(|e| SettingsError::Unavailable(e.to_string()))?;
            connection_settings(request, context, &interfaces).map(Message::ConnectionSettings)
        }
        SettingsKind::Auth => auth_settings(request, context).map(Message::AuthSettings),
    });
    result.unwrap_or_else(|error| {
        tracing::warn!(id = request.id, kind = ?request.kind, %error, "cannot answer settings request");
        error.reply(request)
    })
}

fn check_application(request: &SettingsRequest, config: &AgentConfig) -> Result<(), SettingsError> {
    match &request.application {
        Some(name) if !config.applications.iter().any(|a| &a.name == name) => {
            Err(SettingsError::UnknownApplication(name.clone()))
        }
        _ => Ok(()),
    }
}

/// Connection settings, given the host's interfaces.
pub fn connection_settings(
    request: &SettingsRequest,
    context: &SettingsContext<'_>,
    interfaces: &Interfaces,
) -> Result<ConnectionSettings, SettingsError> {
    let local = unmap(context.local_addr.ip());
    let interface = interfaces.holding(local).ok_or_else(|| {
        SettingsError::Unavailable(format!(
            "the manager connection's local address {local} is on no interface"
        ))
    })?;
    let mac = interface.mac.ok_or_else(|| {
        SettingsError::Unavailable(format!("interface {} has no MAC address", interface.name))
    })?;
    // The address the manager sees comes first: it is on the balancers'
    // segment. Without any other usable address it is the only one.
    let mut addresses = interfaces.reachable_addresses();
    if let Some(at) = addresses.iter().position(|a| *a == local) {
        addresses.remove(at);
        addresses.insert(0, local);
    } else if addresses.is_empty() {
        addresses.push(local);
    }
    let applications = context
        .config
        .applications
        .iter()
        .filter(|a| request.application.as_ref().is_none_or(|n| *n == a.name))
        .map(|a| ApplicationPorts {
            name: a.name.clone(),
            protocol: a.protocol,
            ports: a.ports.clone(),
        })
        .collect();
    Ok(ConnectionSettings {
        seq: 0,
        id: request.id,
        host: context.config.host.clone(),
        addresses,
        mac,
        interface: interface.name.clone(),
        applications,
    })
}

/// Auth settings: the control port, the manager this server expects there
/// (its certificate name), and this server's certificate fingerprint.
pub fn auth_settings(
    request: &SettingsRequest,
    context: &SettingsContext<'_>,
) -> Result<AuthSettings, SettingsError> {
    let config = context.config;
    let control_port = config.control_port.ok_or_else(|| {
        SettingsError::Unavailable(
            "agent.control_port is not configured on this server; set it to its control \
             listener's port"
                .to_owned(),
        )
    })?;
    let server_fingerprint = context.own_fingerprint.ok_or_else(|| {
        SettingsError::Unavailable(
            "this agent has no certificate (insecure_plaintext without tls_dir); set \
             agent.tls_dir"
                .to_owned(),
        )
    })?;
    Ok(AuthSettings {
        seq: 0,
        id: request.id,
        host: config.host.clone(),
        control_port,
        expect_manager: config.manager_name.clone(),
        server_fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::IpAddr, path::Path};

    use lb_proto::{MacAddr, Protocol};

    use super::*;
    use crate::interfaces::Interface;

    fn config() -> AgentConfig {
        AgentConfig::parse(
            r#"
            [agent]
            host = "web-1"
            manager = "198.51.100.1:7400"
            manager_name = "manager.lb"
            tls_dir = "/pki"
            control_port = 7443
            [[application]]
            name = "web"
            protocol = "tcp"
            ports = [80, 443]
            probe = { kind = "tcp", port = 80 }
            [[application]]
            name = "dns"
            protocol = "udp"
            ports = [53]
            probe = { kind = "tcp", port = 53 }
            "#,
            Path::new("agent.toml"),
        )
        .expect("config")
    }

    fn interfaces() -> Interfaces {
        let mut map = BTreeMap::new();
        for (name, flags, mac, addresses) in [
            (
                "lo",
                libc::IFF_LOOPBACK as u32,
                [0; 6],
                vec!["127.0.0.1", "192.0.2.10"],
            ),
            (
                "eth0",
                0,
                [2, 0, 0x5e, 0x10, 0, 0x21],
                vec!["10.1.0.5", "198.51.100.21"],
            ),
        ] {
            map.insert(
                name.to_owned(),
                Interface {
                    name: name.to_owned(),
                    flags,
                    mac: Some(MacAddr(mac)),
                    addresses: addresses
                        .into_iter()
                        .map(|a| a.parse().expect("ip"))
                        .collect(),
                },
            );
        }
        Interfaces(map)
    }

    fn request(kind: SettingsKind, application: Option<&str>) -> SettingsRequest {
        SettingsRequest {
            seq: 9,
            id: 4,
            kind,
            application: application.map(str::to_owned),
        }
    }

    #[test]
    fn connection_settings_name_the_managers_interface() {
        let config = config();
        let context = SettingsContext {
            config: &config,
            local_addr: "198.51.100.21:40000".parse().expect("addr"),
            own_fingerprint: None,
        };
        let s = connection_settings(
            &request(SettingsKind::Connection, None),
            &context,
            &interfaces(),
        )
        .expect("settings");
        assert_eq!(s.id, 4);
        assert_eq!(s.interface, "eth0");
        assert_eq!(s.mac.to_string(), "02:00:5e:10:00:21");
        assert_eq!(
            s.addresses,
            vec![
                "198.51.100.21".parse::<IpAddr>().expect("ip"),
                "10.1.0.5".parse().expect("ip")
            ]
        );
        assert_eq!(s.applications.len(), 2);

        let one = connection_settings(
            &request(SettingsKind::Connection, Some("dns")),
            &context,
            &interfaces(),
        )
        .expect("settings");
        assert_eq!(one.applications.len(), 1);
        assert_eq!(one.applications[0].protocol, Protocol::Udp);
        assert_eq!(one.applications[0].ports, vec![53]);
    }

    #[test]
    fn loopback_connection_still_lists_addresses() {
        let config = config();
        let context = SettingsContext {
            config: &config,
            local_addr: "127.0.0.1:40000".parse().expect("addr"),
            own_fingerprint: None,
        };
        let s = connection_settings(
            &request(SettingsKind::Connection, None),
            &context,
            &interfaces(),
        )
        .expect("settings");
        assert_eq!(s.interface, "lo");
        assert!(!s.addresses.is_empty());
        let unknown = SettingsContext {
            local_addr: "203.0.113.1:1".parse().expect("addr"),
            ..context
        };
        let err = connection_settings(
            &request(SettingsKind::Connection, None),
            &unknown,
            &interfaces(),
        )
        .expect_err("no interface");
        assert_eq!(err.code(), "settings-unavailable");
    }

    #[test]
    fn auth_settings_and_their_errors() {
        let config = config();
        let fingerprint: Fingerprint = "ab".repeat(32).parse().expect("fingerprint");
        let context = SettingsContext {
            config: &config,
            local_addr: "198.51.100.21:40000".parse().expect("addr"),
            own_fingerprint: Some(fingerprint),
        };
        let auth = auth_settings(&request(SettingsKind::Auth, None), &context).expect("auth");
        assert_eq!(auth.control_port, 7443);
        assert_eq!(auth.expect_manager, "manager.lb");
        assert_eq!(auth.server_fingerprint, fingerprint);

        let no_cert = SettingsContext {
            own_fingerprint: None,
            ..context
        };
        let err = auth_settings(&request(SettingsKind::Auth, None), &no_cert).expect_err("no cert");
        assert!(err.to_string().contains("tls_dir"), "{err}");

        let mut no_port = config.clone();
        no_port.control_port = None;
        let context = SettingsContext {
            config: &no_port,
            ..context
        };
        let err = auth_settings(&request(SettingsKind::Auth, None), &context).expect_err("no port");
        assert!(err.to_string().contains("control_port"), "{err}");
    }

    #[test]
    fn unknown_application_is_an_error_reply() {
        let config = config();
        let context = SettingsContext {
            config: &config,
            local_addr: "127.0.0.1:1".parse().expect("addr"),
            own_fingerprint: None,
        };
        let req = request(SettingsKind::Auth, Some("mail"));
        match answer(&req, &context) {
            Message::Error(e) => {
                assert_eq!(e.code, "unknown-application");
                assert_eq!(e.rejected_seq, Some(9));
                assert!(e.text.contains("mail"), "{}", e.text);
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
