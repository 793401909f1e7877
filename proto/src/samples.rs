//! Realistic messages of every kind, for tests and the documented examples.

use std::net::{IpAddr, Ipv4Addr};

use crate::{
    Ack, AckStatus, Application, ApplicationPorts, ApplicationStatus, AuthSettings, BackendStatus,
    ConnectionSettings, Cpu, ErrorMessage, Forward, Health, HealthState, Hello, Load, MacAddr,
    Memory, Message, Nic, NodeStatus, Protocol, Readiness, Reconfigure, Report, Server,
    ServerState, Service, SettingsKind, SettingsRequest, StatusRequest, TunnelSources, Utilization,
    UtilizationSource,
};

pub const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

pub fn hello() -> Message {
    Hello {
        seq: 0,
        host: "web-1".into(),
        agent_version: "0.1.0".into(),
        cores: 4.0,
        spare: true,
        applications: vec![Application {
            name: "web".into(),
            protocol: Protocol::Tcp,
            ports: vec![80, 443],
            probe: "http GET http://127.0.0.1:80/healthz every 1000 ms, rise 2, fall 3".into(),
        }],
    }
    .into()
}

/// The `n`th report of `web-1` (0-based), one second apart.
pub fn report(n: u32) -> Message {
    let i = usize::try_from(n % 3).unwrap();
    let busy = [0.42, 0.78, 0.91][i];
    Report {
        seq: 0,
        host: "web-1".into(),
        time_ms: 1_767_225_600_000 + u64::from(n) * 1000,
        interval_ms: 1000,
        utilization: Utilization {
            value: busy,
            source: UtilizationSource::HostCpu,
        },
        cpu: Cpu {
            host: busy,
            cgroup: Some([0.5, 0.93, 1.12][i]),
        },
        load: Load {
            one: [1.5, 2.75, 3.5][i],
            five: 1.25,
            fifteen: 0.75,
        },
        memory: Memory {
            total_bytes: 8_589_934_592,
            available_bytes: 6_442_450_944 - u64::from(n) * 1_048_576,
        },
        nics: vec![Nic {
            name: "eth0".into(),
            rx_bps: 120_000_000 + u64::from(n) * 10_000_000,
            tx_bps: 940_000_000,
        }],
        applications: vec![ApplicationStatus {
            name: "web".into(),
            established: 310 + u64::from(n) * 40,
            vip_established: 300 + u64::from(n) * 40,
            health: Health {
                state: HealthState::Up,
                rise: 2,
                fall: 3,
                ok_streak: 40 + n,
                fail_streak: 0,
                detail: None,
            },
            readiness: vec![Readiness {
                vip: VIP,
                vip_on_loopback: true,
                arp_ignore: 1,
                arp_announce: 2,
                local_probe: true,
                ready: true,
                decap: Some(true),
            }],
        }],
    }
    .into()
}

pub fn tunnel_sources() -> Message {
    TunnelSources {
        seq: 0,
        addresses: vec![
            "198.51.100.2".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        ],
    }
    .into()
}

pub fn settings_request(id: u64, kind: SettingsKind) -> Message {
    SettingsRequest {
        seq: 0,
        id,
        kind,
        application: Some("web".into()),
    }
    .into()
}

pub fn connection_settings(id: u64) -> Message {
    ConnectionSettings {
        seq: 0,
        id,
        host: "web-1".into(),
        addresses: vec![
            "198.51.100.21".parse().unwrap(),
            "2001:db8::21".parse().unwrap(),
        ],
        mac: MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x21]),
        interface: "eth0".into(),
        applications: vec![ApplicationPorts {
            name: "web".into(),
            protocol: Protocol::Tcp,
            ports: vec![80, 443],
        }],
    }
    .into()
}

pub fn auth_settings(id: u64) -> Message {
    AuthSettings {
        seq: 0,
        id,
        host: "web-1".into(),
        control_port: 7443,
        expect_manager: "manager.lb.example".into(),
        server_fingerprint: "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"
            .parse()
            .unwrap(),
    }
    .into()
}

pub fn reconfigure(generation: u64, web2_state: ServerState) -> Message {
    Reconfigure {
        seq: 0,
        generation,
        service: Service {
            name: "web".into(),
            vip: VIP,
            port: 80,
            protocol: Protocol::Tcp,
            table_size: 65537,
            servers: vec![
                Server {
                    name: "web-1".into(),
                    address: "198.51.100.21".parse().unwrap(),
                    weight: 100,
                    state: ServerState::Allocated,
                    mac: Some(MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x21])),
                    forward: Forward::L2,
                },
                Server {
                    name: "web-2".into(),
                    address: "198.51.100.22".parse().unwrap(),
                    weight: 60,
                    state: web2_state,
                    mac: None,
                    forward: Forward::Ipip,
                },
            ],
            retired: false,
            weight_scale: 1,
        },
    }
    .into()
}

pub fn retire(generation: u64) -> Message {
    let Message::Reconfigure(mut r) = reconfigure(generation, ServerState::Down) else {
        unreachable!()
    };
    r.service.servers.clear();
    r.service.retired = true;
    r.into()
}

pub fn status_request(id: u64) -> Message {
    StatusRequest {
        seq: 0,
        id,
        count_flows: true,
    }
    .into()
}

pub fn node_status(id: u64) -> Message {
    NodeStatus {
        seq: 0,
        id,
        manager_generation: Some(12),
        backends: vec![
            BackendStatus {
                service: "web".into(),
                server: "web-1".into(),
                state: "active".into(),
                idle_ms: Some(3),
                flows: Some(1874),
            },
            BackendStatus {
                service: "web".into(),
                server: "web-2".into(),
                state: "draining".into(),
                idle_ms: Some(12400),
                flows: Some(0),
            },
        ],
    }
    .into()
}

pub fn ack(generation: u64, status: AckStatus) -> Message {
    Ack {
        seq: 0,
        generation,
        status,
        error: match status {
            AckStatus::Ok => None,
            AckStatus::Failed => Some("flow table full".into()),
        },
    }
    .into()
}

pub fn error() -> Message {
    ErrorMessage {
        seq: 0,
        code: "invalid-message".into(),
        rejected_seq: Some(41),
        text: "invalid <report> message: missing field `@host` & more".into(),
    }
    .into()
}

/// One of every kind, with every optional part present somewhere.
pub fn all() -> Vec<Message> {
    let mut no_options = report(0);
    if let Message::Report(r) = &mut no_options {
        r.cpu.cgroup = None;
        r.nics.clear();
        r.applications[0].health.state = HealthState::Down;
        r.applications[0].health.detail = Some("connect: refused \"127.0.0.1:80\" <x>".into());
        r.applications[0].readiness[0].decap = None;
    }
    vec![
        hello(),
        report(0),
        no_options,
        settings_request(1, SettingsKind::Connection),
        SettingsRequest {
            seq: 0,
            id: 2,
            kind: SettingsKind::Auth,
            application: None,
        }
        .into(),
        connection_settings(1),
        auth_settings(2),
        reconfigure(7, ServerState::Draining),
        reconfigure(8, ServerState::Down),
        ack(7, AckStatus::Ok),
        ack(8, AckStatus::Failed),
        error(),
        retire(10),
        status_request(3),
        StatusRequest {
            seq: 0,
            id: 4,
            count_flows: false,
        }
        .into(),
        tunnel_sources(),
        TunnelSources {
            seq: 0,
            addresses: Vec::new(),
        }
        .into(),
        node_status(3),
        NodeStatus {
            seq: 0,
            id: 4,
            manager_generation: None,
            backends: Vec::new(),
        }
        .into(),
    ]
}
