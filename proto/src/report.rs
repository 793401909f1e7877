//! `<report>`: an agent's periodic performance and health data.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    InvalidMessage,
    messages::{non_negative, not_empty},
};

/// `<report>`: what a real server did over the last interval. Sent by the
/// agent every `interval_ms` (1 s by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Sequence number (stamped by the encoder).
    #[serde(rename = "@seq")]
    pub seq: u64,
    /// The real server's host name.
    #[serde(rename = "@host")]
    pub host: String,
    /// When the interval ended, in milliseconds since the Unix epoch.
    #[serde(rename = "@time-ms")]
    pub time_ms: u64,
    /// Length of the interval the rates and shares cover, in milliseconds.
    #[serde(rename = "@interval-ms")]
    pub interval_ms: u64,
    /// The one number the analyser compares with its thresholds.
    pub utilization: Utilization,
    /// CPU busy shares.
    pub cpu: Cpu,
    /// Load averages.
    pub load: Load,
    /// Memory.
    pub memory: Memory,
    /// Network interfaces, one `<nic>` element each.
    #[serde(rename = "nic", default)]
    pub nics: Vec<Nic>,
    /// Applications, one `<application>` element each.
    #[serde(rename = "application", default)]
    pub applications: Vec<ApplicationStatus>,
}

impl Report {
    pub(crate) fn validate(&self) -> Result<(), InvalidMessage> {
        not_empty("host", &self.host)?;
        if self.interval_ms == 0 {
            return Err(InvalidMessage::Zero("interval-ms"));
        }
        non_negative("utilization", self.utilization.value)?;
        non_negative("cpu host", self.cpu.host)?;
        if let Some(cgroup) = self.cpu.cgroup {
            non_negative("cpu cgroup", cgroup)?;
        }
        non_negative("load one", self.load.one)?;
        non_negative("load five", self.load.five)?;
        non_negative("load fifteen", self.load.fifteen)?;
        if self.memory.available_bytes > self.memory.total_bytes {
            return Err(InvalidMessage::Memory {
                available: self.memory.available_bytes,
                total: self.memory.total_bytes,
            });
        }
        self.nics
            .iter()
            .try_for_each(|n| not_empty("nic name", &n.name))?;
        self.applications
            .iter()
            .try_for_each(|a| not_empty("application name", &a.name))
    }
}

/// Where a [`Utilization`] value came from (the agent's configured source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UtilizationSource {
    /// `host-cpu`: busy share of all the host's cores.
    HostCpu,
    /// `cgroup-cpu`: busy share of the application cgroup's CPU allowance.
    CgroupCpu,
    /// `connections`: established connections over a configured maximum.
    Connections,
    /// `command`: printed by an operator-supplied command.
    Command,
}

/// `<utilization value="0.42" source="host-cpu"/>`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Utilization {
    /// Share of capacity in use over the interval: 0 idle, 1 full, above 1
    /// overloaded (work queued).
    #[serde(rename = "@value")]
    pub value: f64,
    /// Which measurement `value` is.
    #[serde(rename = "@source")]
    pub source: UtilizationSource,
}

/// `<cpu host="0.42" cgroup="0.61"/>`: CPU busy shares over the interval,
/// from `/proc/stat` and cgroup `cpu.stat` deltas.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Busy share of all the host's cores, 0..=1.
    #[serde(rename = "@host")]
    pub host: f64,
    /// Busy share of the application cgroup's CPU allowance (its quota, or
    /// all cores without one), 0..=1 and above when throttled; absent when
    /// the agent watches no cgroup.
    #[serde(rename = "@cgroup", default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<f64>,
}

/// `<load one="0.50" five="0.40" fifteen="0.30"/>`: `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// 1-minute load average, in runnable tasks.
    #[serde(rename = "@one")]
    pub one: f64,
    /// 5-minute load average, in runnable tasks.
    #[serde(rename = "@five")]
    pub five: f64,
    /// 15-minute load average, in runnable tasks.
    #[serde(rename = "@fifteen")]
    pub fifteen: f64,
}

/// `<memory total-bytes="..." available-bytes="..."/>`: `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// `MemTotal`, in bytes.
    #[serde(rename = "@total-bytes")]
    pub total_bytes: u64,
    /// `MemAvailable`, in bytes.
    #[serde(rename = "@available-bytes")]
    pub available_bytes: u64,
}

/// `<nic name="eth0" rx-bps="..." tx-bps="..."/>`: one interface's rates
/// over the interval, from `/proc/net/dev` deltas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Interface name.
    #[serde(rename = "@name")]
    pub name: String,
    /// Received, in bits per second.
    #[serde(rename = "@rx-bps")]
    pub rx_bps: u64,
    /// Transmitted, in bits per second.
    #[serde(rename = "@tx-bps")]
    pub tx_bps: u64,
}

/// `<application>` in a report: one hosted application's connections,
/// health and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationStatus {
    /// Application name, as in `<hello>`.
    #[serde(rename = "@name")]
    pub name: String,
    /// Established TCP connections on the application's ports, any local
    /// address, at the end of the interval (UDP: 0).
    #[serde(rename = "@established")]
    pub established: u64,
    /// Of those, connections whose local address is a VIP, i.e. traffic the
    /// balancer sent.
    #[serde(rename = "@vip-established")]
    pub vip_established: u64,
    /// Probe outcome.
    pub health: Health,
    /// Direct server return readiness, one `<readiness>` element per VIP.
    #[serde(rename = "readiness", default)]
    pub readiness: Vec<Readiness>,
}

/// State of an application's health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Passing: at least `rise` probes in a row succeeded.
    Up,
    /// Failing: at least `fall` probes in a row failed and one of them was
    /// refused or answered wrongly. The manager treats this as a failure,
    /// never as load.
    Down,
    /// Not enough probes yet to say.
    Unknown,
    /// Late: at least `fall` probes in a row failed and every one of them
    /// timed out. The application accepts work but answers slowly; the
    /// manager decides with the same report's utilization whether that is
    /// overload (at or above the service's `upper`: functional, counted as
    /// load) or a hang (below it: a failure).
    Slow,
}

/// `<health state="up" rise="2" fall="3" ok-streak="12" fail-streak="0"/>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Current state.
    #[serde(rename = "@state")]
    pub state: HealthState,
    /// Successful probes in a row needed to go up.
    #[serde(rename = "@rise")]
    pub rise: u32,
    /// Failed probes in a row needed to go down.
    #[serde(rename = "@fall")]
    pub fall: u32,
    /// Successful probes in a row so far (0 after a failure).
    #[serde(rename = "@ok-streak")]
    pub ok_streak: u32,
    /// Failed probes in a row so far (0 after a success).
    #[serde(rename = "@fail-streak")]
    pub fail_streak: u32,
    /// Why the last probe failed, if it did.
    #[serde(rename = "@detail", default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `<readiness vip="..." .../>`: whether the server can answer one VIP's
/// traffic by direct server return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The VIP.
    #[serde(rename = "@vip")]
    pub vip: IpAddr,
    /// The VIP is configured on a loopback interface.
    #[serde(rename = "@vip-on-loopback")]
    pub vip_on_loopback: bool,
    /// Effective `net.ipv4.conf.*.arp_ignore` (DSR needs 1 or more).
    #[serde(rename = "@arp-ignore")]
    pub arp_ignore: u8,
    /// Effective `net.ipv4.conf.*.arp_announce` (DSR needs 2).
    #[serde(rename = "@arp-announce")]
    pub arp_announce: u8,
    /// A local probe of the application on VIP:port succeeded.
    #[serde(rename = "@local-probe")]
    pub local_probe: bool,
    /// The agent's verdict from all of the above: safe to send this VIP's
    /// flows here.
    #[serde(rename = "@ready")]
    pub ready: bool,
    /// With the agent's decapsulation (`[decap]`): it is attached, knows
    /// allowed tunnel sources, and a tunnelled probe for this VIP came
    /// through it. Absent: the agent decapsulates nothing, so only `l2`
    /// can reach this server. A tunnelled server needs `ready` and this.
    #[serde(rename = "@decap", default, skip_serializing_if = "Option::is_none")]
    pub decap: Option<bool>,
}

impl Readiness {
    /// Whether this VIP's flows may go to the server when the node reaches
    /// it by `forward`: `ready`, and through a tunnel `decap` too.
    #[must_use]
    pub fn ready_for(&self, forward: crate::Forward) -> bool {
        self.ready && (!forward.is_tunnel() || self.decap == Some(true))
    }
}
