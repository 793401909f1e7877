//! The one utilization figure the manager's policy compares with its
//! thresholds, and which measurement it comes from.
//!
//! The operator chooses, per server, what "utilization" means: the host's
//! CPU, the application's cgroup CPU against its quota, established
//! connections against a configured capacity, or a number of the operator's
//! own. The figure travels with its definition, so a report (and an event
//! that cites it) says what was measured. 1.0 means fully used; values above
//! 1 are kept as they are, because how far over capacity a server runs
//! matters to the policy.

use super::CgroupCpuSample;

/// Why a utilization choice is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UtilizationError {
    /// A connection capacity of 0 would make every connection infinite load.
    #[error(
        "connection capacity must be at least 1: set connections.capacity to the connections one server handles at full load"
    )]
    ZeroCapacity,
}

/// Which measurement a utilization figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `/proc/stat`: the whole host's CPU.
    HostCpu,
    /// The application's cgroup CPU usage against its quota.
    CgroupCpu,
    /// Established connections against a configured capacity.
    Connections,
    /// The operator's command or file.
    Command,
}

impl SourceKind {
    /// What a figure from this source means, for reports and events.
    #[must_use]
    pub fn definition(self) -> &'static str {
        match self {
            Self::HostCpu => HOST_CPU,
            Self::CgroupCpu => CGROUP_CPU,
            Self::Connections => CONNECTIONS,
            Self::Command => COMMAND,
        }
    }
}

const HOST_CPU: &str = "host CPU busy share since the previous report, from /proc/stat: \
    (user+nice+system+irq+softirq+steal) / (those + idle+iowait), over all CPUs";
const CGROUP_CPU: &str = "application cgroup CPU time since the previous report divided by \
    the wall time and by the cgroup's CPU quota in cores (all host CPUs if unlimited)";
const CONNECTIONS: &str = "established TCP connections on the application's ports, without \
    the agent's own probes, divided by the configured connection capacity";
const COMMAND: &str = "the first number printed by the operator's command (or held in the \
    operator's file), taken as it is";

/// The configured meaning of utilization. In configuration:
/// `{ kind = "host-cpu" }`, `{ kind = "cgroup-cpu" }`,
/// `{ kind = "connections", capacity = 500 }` or `{ kind = "command" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum UtilizationChoice {
    /// The host's CPU busy share.
    #[default]
    HostCpu,
    /// The application cgroup's CPU usage over its quota.
    CgroupCpu,
    /// Established connections over `capacity`.
    Connections {
        /// The established connections one server handles at full load.
        capacity: u64,
    },
    /// The operator's command or file (configured apart, as a
    /// [`CommandSource`](super::CommandSource)).
    Command,
}

impl UtilizationChoice {
    /// The source this choice reads.
    #[must_use]
    pub fn source(self) -> SourceKind {
        match self {
            Self::HostCpu => SourceKind::HostCpu,
            Self::CgroupCpu => SourceKind::CgroupCpu,
            Self::Connections { .. } => SourceKind::Connections,
            Self::Command => SourceKind::Command,
        }
    }

    /// Checks the choice can give a figure: a connection capacity is at
    /// least 1.
    pub fn validate(self) -> Result<(), UtilizationError> {
        match self {
            Self::Connections { capacity: 0 } => Err(UtilizationError::ZeroCapacity),
            _ => Ok(()),
        }
    }
}

/// What one reporting round measured; `None` for what was not measured or
/// is not available yet (a delta source's first round).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Readings {
    /// [`CpuSampler::sample`](super::CpuSampler::sample).
    pub host_cpu_busy: Option<f64>,
    /// [`CgroupCpu::sample`](super::CgroupCpu::sample).
    pub cgroup_cpu: Option<CgroupCpuSample>,
    /// Established connections of the application: the VIP count when a VIP
    /// is configured, else the total over its ports
    /// ([`ConnectionCounts`](super::ConnectionCounts)).
    pub established_connections: Option<u64>,
    /// [`CommandSource::read`](super::CommandSource::read).
    pub command: Option<f64>,
}

/// A utilization figure with what it means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Utilization {
    /// 0 is idle, 1 fully used; above 1 is overload.
    pub value: f64,
    /// The measurement it comes from.
    pub source: SourceKind,
    /// What `value` is, in words ([`SourceKind::definition`]).
    pub definition: &'static str,
}

impl Utilization {
    /// The figure `choice` defines, from `readings`; `None` when the reading
    /// it needs is missing, or for a connection capacity of 0 (which
    /// [`UtilizationChoice::validate`] rejects up front). Negative or
    /// non-finite readings (a command printing `-1`) are passed on for the
    /// caller to judge, except that NaN gives `None`.
    #[must_use]
    pub fn compute(choice: UtilizationChoice, readings: &Readings) -> Option<Self> {
        let value = match choice {
            UtilizationChoice::HostCpu => readings.host_cpu_busy?,
            UtilizationChoice::CgroupCpu => readings.cgroup_cpu?.usage_share_of_capacity,
            UtilizationChoice::Connections { capacity: 0 } => return None,
            UtilizationChoice::Connections { capacity } => {
                readings.established_connections? as f64 / capacity as f64
            }
            UtilizationChoice::Command => readings.command?,
        };
        if value.is_nan() {
            return None;
        }
        let source = choice.source();
        Some(Self {
            value,
            source,
            definition: source.definition(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Readings {
        Readings {
            host_cpu_busy: Some(0.25),
            cgroup_cpu: Some(CgroupCpuSample {
                usage_share_of_capacity: 1.2,
                capacity_cores: 0.2,
            }),
            established_connections: Some(150),
            command: Some(0.42),
        }
    }

    #[test]
    fn each_choice_takes_its_reading() {
        let r = readings();
        let value = |choice| Utilization::compute(choice, &r).expect("figure").value;
        assert_eq!(value(UtilizationChoice::HostCpu), 0.25);
        // Overload is kept as it is.
        assert_eq!(value(UtilizationChoice::CgroupCpu), 1.2);
        assert_eq!(value(UtilizationChoice::Connections { capacity: 100 }), 1.5);
        assert_eq!(value(UtilizationChoice::Command), 0.42);

        let u = Utilization::compute(UtilizationChoice::Connections { capacity: 300 }, &r)
            .expect("figure");
        assert_eq!(u.source, SourceKind::Connections);
        assert_eq!(u.definition, SourceKind::Connections.definition());
        assert!(u.definition.contains("capacity"));
    }

    #[test]
    fn missing_readings_give_nothing() {
        let none = Readings::default();
        for choice in [
            UtilizationChoice::HostCpu,
            UtilizationChoice::CgroupCpu,
            UtilizationChoice::Connections { capacity: 10 },
            UtilizationChoice::Command,
        ] {
            assert_eq!(Utilization::compute(choice, &none), None, "{choice:?}");
        }
        let nan = Readings {
            command: Some(f64::NAN),
            ..readings()
        };
        assert_eq!(Utilization::compute(UtilizationChoice::Command, &nan), None);
    }

    #[test]
    fn zero_capacity_is_rejected() {
        let choice = UtilizationChoice::Connections { capacity: 0 };
        assert_eq!(choice.validate(), Err(UtilizationError::ZeroCapacity));
        assert_eq!(Utilization::compute(choice, &readings()), None);
        assert_eq!(UtilizationChoice::HostCpu.validate(), Ok(()));
    }

    #[test]
    fn configuration_form() {
        let parse = |json: &str| serde_json::from_str::<UtilizationChoice>(json);
        assert_eq!(
            parse(r#"{"kind":"host-cpu"}"#).expect("host"),
            UtilizationChoice::HostCpu
        );
        assert_eq!(
            parse(r#"{"kind":"connections","capacity":500}"#).expect("connections"),
            UtilizationChoice::Connections { capacity: 500 }
        );
        assert!(parse(r#"{"kind":"connections"}"#).is_err());
        assert!(parse(r#"{"kind":"gpu"}"#).is_err());
    }
}
