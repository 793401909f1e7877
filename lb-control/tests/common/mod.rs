//! What the manager's stream tests share.

use lb_proto::{
    ApplicationStatus, Cpu, Health, HealthState, Load, Memory, Message, Report, Utilization,
    UtilizationSource,
};

/// A report from `host` at `time_ms` with utilization `value`.
pub fn report(host: &str, time_ms: u64, value: f64) -> Message {
    Report {
        seq: 0,
        host: host.into(),
        time_ms,
        interval_ms: 100,
        utilization: Utilization {
            value,
            source: UtilizationSource::CgroupCpu,
        },
        cpu: Cpu {
            host: 0.1,
            cgroup: Some(value),
        },
        load: Load {
            one: 0.1,
            five: 0.1,
            fifteen: 0.1,
        },
        memory: Memory {
            total_bytes: 100,
            available_bytes: 50,
        },
        nics: vec![],
        applications: vec![ApplicationStatus {
            name: "web".into(),
            established: 1,
            vip_established: 1,
            health: Health {
                state: HealthState::Up,
                rise: 2,
                fall: 3,
                ok_streak: 3,
                fail_streak: 0,
                detail: None,
            },
            readiness: vec![],
        }],
    }
    .into()
}
