//! Builds each `<report>` from the measurement sources and the probe
//! results. A report is computed fresh when it is due and never kept: rates
//! and shares cover the time since the previous report was computed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_proto::{
    Application, ApplicationStatus, Cpu, Hello, Load, Memory, Nic, Protocol, Report,
    Utilization as ProtoUtilization, UtilizationSource,
};

use crate::{
    config::{AgentConfig, ApplicationConfig},
    decap::DecapOwner,
    interfaces::Interfaces,
    monitor::ApplicationMonitor,
    probe::describe,
    readiness::{Sysctl, readiness},
    sources::{
        self, CgroupCpu, CgroupCpuSample, CommandSource, ConnectionQuery, CpuSampler,
        NetDevSampler, NicRate, Readings, SourceKind, TcpSocket, Utilization, UtilizationChoice,
        connections, probe_sources,
    },
};

/// The longest an operator's command may run, at most one report interval.
const COMMAND_TIMEOUT: Duration = sources::DEFAULT_COMMAND_TIMEOUT;

/// Why no report could be built this time; the next tick tries again.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A source that every report needs failed.
    #[error("{what}: {reason}")]
    Source {
        /// The measurement.
        what: &'static str,
        /// Its error.
        reason: String,
    },
    /// The utilization figure could not be computed.
    #[error("no utilization figure ({source_kind}): {reason}")]
    NoUtilization {
        /// The configured source.
        source_kind: &'static str,
        /// Why.
        reason: String,
    },
}

fn source_error(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> CollectError {
    move |e| CollectError::Source {
        what,
        reason: e.to_string(),
    }
}

/// Owns the samplers (which keep the previous reading for deltas) and
/// reads the probe results.
#[derive(Debug)]
pub struct Collector {
    config: AgentConfig,
    root: PathBuf,
    sysctl: Sysctl,
    cpu: CpuSampler,
    cgroup: Option<CgroupCpu>,
    net: NetDevSampler,
    monitors: Vec<ApplicationMonitor>,
    last_sample: Instant,
    /// The decapsulation this agent owns (`[decap]`).
    decap: Option<DecapOwner>,
}

impl Collector {
    /// A collector reading `<root>/proc`, `<root>/sys/fs/cgroup` and the
    /// sysctls of `sysctl`; `monitors` are the applications' probes, in the
    /// order of `config.applications`. Takes a first sample so the first
    /// report has deltas. Fails when the configured cgroup is not found.
    pub fn new(
        config: AgentConfig,
        root: &Path,
        sysctl: Sysctl,
        monitors: Vec<ApplicationMonitor>,
    ) -> Result<Self, CollectError> {
        let cgroup = config
            .utilization
            .cgroup
            .as_deref()
            .map(|path| CgroupCpu::discover_under(root, path))
            .transpose()
            .map_err(|e| source_error("cgroup")(&e))?;
        let mut collector = Self {
            cpu: CpuSampler::new(root),
            net: NetDevSampler::new(root),
            config,
            root: root.to_owned(),
            sysctl,
            cgroup,
            monitors,
            last_sample: Instant::now(),
            decap: None,
        };
        collector.decap = collector.config.decap.clone().map(DecapOwner::start);
        // Priming: deltas start here. Errors show again on the first report.
        let _ = collector.cpu.sample();
        let _ = collector.net.sample(Duration::ZERO);
        if let Some(cgroup) = &mut collector.cgroup {
            let _ = cgroup.sample(Duration::ZERO);
        }
        Ok(collector)
    }

    /// The nodes' tunnel sources, from the manager: handed to the
    /// decapsulation (ignored without `[decap]`).
    pub fn set_tunnel_sources(&mut self, sources: Vec<IpAddr>) {
        if let Some(decap) = &mut self.decap {
            decap.set_manager_sources(sources);
        }
    }

    /// The configuration the collector reports on.
    #[must_use]
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Capacity in cores: the configured override, else the cgroup's quota
    /// when utilization is the cgroup's CPU, else the host's online CPUs.
    pub fn capacity_cores(&self) -> f64 {
        if let Some(cores) = self.config.capacity_cores {
            return cores;
        }
        if self.config.utilization.kind == SourceKind::CgroupCpu
            && let Some(cgroup) = &self.cgroup
        {
            match cgroup.capacity_cores() {
                Ok(cores) if cores > 0.0 => return cores,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot read the cgroup quota; using host CPUs");
                }
            }
        }
        host_cpus()
    }

    /// The `<hello>` for a new stream.
    #[must_use]
    pub fn hello(&self) -> Hello {
        Hello {
            seq: 0,
            host: self.config.host.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            cores: self.capacity_cores(),
            spare: self.config.spare,
            applications: self
                .config
                .applications
                .iter()
                .map(|a| Application {
                    name: a.name.clone(),
                    protocol: a.protocol,
                    ports: a.ports.clone(),
                    probe: describe(&a.probe, a.probe_interval, a.probe_timeout, a.rise, a.fall),
                })
                .collect(),
        }
    }

    /// Measures everything and builds a report covering the time since the
    /// previous call.
    ///
    /// # Errors
    ///
    /// When a source every report needs (host CPU, load, memory, sockets,
    /// and the configured utilization source) fails.
    pub async fn collect(&mut self) -> Result<Report, CollectError> {
        // The only source that may block; it runs before the samplers so
        // their interval ends as close to the report time as possible.
        let command = match &self.config.utilization.command {
            Some(source) if self.config.utilization.kind == SourceKind::Command => {
                Some(self.read_command(source.clone()).await?)
            }
            _ => None,
        };
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_sample);
        self.last_sample = now;

        let host_cpu = self
            .cpu
            .sample()
            .map_err(|e| source_error("host cpu")(&e))?;
        let cgroup = self.sample_cgroup(elapsed)?;
        let load = sources::read_loadavg(&self.root).map_err(|e| source_error("load")(&e))?;
        let memory = sources::read_meminfo(&self.root).map_err(|e| source_error("memory")(&e))?;
        let nics = match self.net.sample(elapsed) {
            Ok(rates) => rates.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "cannot sample interface rates");
                BTreeMap::default()
            }
        };
        let sockets = self.sockets()?;
        let (applications, connection_figures) = self.applications(&sockets);

        let readings = Readings {
            host_cpu_busy: host_cpu,
            cgroup_cpu: cgroup,
            established_connections: None,
            command,
        };
        let utilization = self.utilization(&readings, &connection_figures)?;
        let host = host_cpu.ok_or_else(|| CollectError::Source {
            what: "host cpu",
            reason: "no CPU time passed since the previous sample".to_owned(),
        })?;
        Ok(Report {
            seq: 0,
            host: self.config.host.clone(),
            time_ms: unix_ms(),
            interval_ms: u64::try_from(elapsed.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            utilization,
            cpu: Cpu {
                host,
                cgroup: cgroup.map(|c| c.usage_share_of_capacity),
            },
            load: Load {
                one: load.one,
                five: load.five,
                fifteen: load.fifteen,
            },
            memory: Memory {
                total_bytes: memory.total_bytes,
                available_bytes: memory.available_bytes.min(memory.total_bytes),
            },
            nics: nics.into_iter().map(nic).collect(),
            applications,
        })
    }

    /// The cgroup's CPU since the previous sample; its failure fails the
    /// report only when it is the utilization source.
    fn sample_cgroup(
        &mut self,
        elapsed: Duration,
    ) -> Result<Option<CgroupCpuSample>, CollectError> {
        let Some(cgroup) = &mut self.cgroup else {
            return Ok(None);
        };
        match cgroup.sample(elapsed) {
            Ok(sample) => Ok(sample),
            Err(error) if self.config.utilization.kind == SourceKind::CgroupCpu => {
                Err(source_error("cgroup cpu")(&error))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot sample the cgroup's CPU");
                Ok(None)
            }
        }
    }

    /// Each application's status, and for each TCP application the
    /// connections the utilization counts (on its VIPs when it has any) with
    /// its capacity.
    fn applications(
        &mut self,
        sockets: &[TcpSocket],
    ) -> (Vec<ApplicationStatus>, Vec<(u64, Option<u64>)>) {
        let interfaces = Interfaces::read().unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot list interfaces; VIPs count as missing");
            Interfaces::default()
        });
        let arp = self.sysctl.arp(&interfaces.ipv4_interfaces());
        let decap: BTreeMap<IpAddr, bool> = match &mut self.decap {
            Some(owner) => {
                let vips = owner.config().vips.clone();
                vips.into_iter()
                    .map(|vip| (vip, owner.ready(vip, &interfaces)))
                    .collect()
            }
            None => BTreeMap::new(),
        };
        let mut applications = Vec::with_capacity(self.config.applications.len());
        let mut connection_figures = Vec::new();
        for (app, monitor) in self.config.applications.iter().zip(&self.monitors) {
            let (established, vip_established) = count_connections(app, sockets);
            if app.protocol == Protocol::Tcp {
                let counted = if app.vips.is_empty() {
                    established
                } else {
                    vip_established
                };
                let capacity = app
                    .connection_capacity
                    .or(self.config.utilization.connection_capacity);
                connection_figures.push((counted, capacity));
            }
            applications.push(ApplicationStatus {
                name: app.name.clone(),
                established,
                vip_established,
                health: monitor.health(),
                readiness: app
                    .vips
                    .iter()
                    .map(|&vip| {
                        let decap = self.decap.as_ref().map(|_| decap.get(&vip) == Some(&true));
                        readiness(
                            vip,
                            interfaces.on_loopback(vip),
                            arp,
                            monitor.vip_probe(vip),
                            decap,
                        )
                    })
                    .collect(),
            });
        }
        (applications, connection_figures)
    }

    async fn read_command(&self, source: CommandSource) -> Result<f64, CollectError> {
        let timeout = COMMAND_TIMEOUT.min(self.config.report_interval);
        tokio::task::spawn_blocking(move || source.read_with_timeout(timeout))
            .await
            .map_err(|e| no_utilization(SourceKind::Command, e.to_string()))?
            .map_err(|e| no_utilization(SourceKind::Command, e.to_string()))
    }

    /// Every TCP socket of `<root>/proc/net/tcp` and `tcp6`.
    fn sockets(&self) -> Result<Vec<TcpSocket>, CollectError> {
        let read = |file: &str| connections::read_sockets(&self.root.join(file));
        let mut sockets = read("proc/net/tcp").map_err(|e| source_error("connections")(&e))?;
        match read("proc/net/tcp6") {
            Ok(v6) => sockets.extend(v6),
            Err(connections::ConnectionsError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(source_error("connections")(&e)),
        }
        Ok(sockets)
    }

    /// The configured figure. For connections, the busiest TCP application
    /// counts: established (on its VIPs when it has any) over its capacity.
    fn utilization(
        &self,
        readings: &Readings,
        connection_figures: &[(u64, Option<u64>)],
    ) -> Result<ProtoUtilization, CollectError> {
        let kind = self.config.utilization.kind;
        let figure = match kind {
            SourceKind::HostCpu => Utilization::compute(UtilizationChoice::HostCpu, readings),
            SourceKind::CgroupCpu => Utilization::compute(UtilizationChoice::CgroupCpu, readings),
            SourceKind::Command => Utilization::compute(UtilizationChoice::Command, readings),
            SourceKind::Connections => connection_figures
                .iter()
                .filter_map(|&(count, capacity)| {
                    let readings = Readings {
                        established_connections: Some(count),
                        ..*readings
                    };
                    Utilization::compute(
                        UtilizationChoice::Connections {
                            capacity: capacity?,
                        },
                        &readings,
                    )
                })
                .max_by(|a, b| a.value.total_cmp(&b.value)),
        };
        let figure = figure.ok_or_else(|| {
            no_utilization(kind, "the measurement is not available yet".to_owned())
        })?;
        if !(figure.value.is_finite() && figure.value >= 0.0) {
            return Err(no_utilization(
                kind,
                format!("{} is not a finite, non-negative number", figure.value),
            ));
        }
        Ok(ProtoUtilization {
            value: figure.value,
            source: proto_source(figure.source),
        })
    }
}

fn no_utilization(kind: SourceKind, reason: String) -> CollectError {
    CollectError::NoUtilization {
        source_kind: crate::config::kebab(kind),
        reason,
    }
}

/// Established connections of `app`: on its ports, and on each VIP:port;
/// the agent's own probes (from loopback or a VIP) are left out.
fn count_connections(app: &ApplicationConfig, sockets: &[TcpSocket]) -> (u64, u64) {
    if app.protocol != Protocol::Tcp {
        return (0, 0);
    }
    let mut excluded = probe_sources(None);
    excluded.extend(app.vips.iter().copied());
    let ports: BTreeSet<u16> = app.ports.iter().copied().collect();
    let query = |vip: Option<SocketAddr>| ConnectionQuery {
        ports: ports.clone(),
        vip,
        excluded_remotes: excluded.clone(),
    };
    let established = connections::count(sockets, &query(None)).total();
    let on_vips = app
        .vips
        .iter()
        .flat_map(|&vip| ports.iter().map(move |&port| SocketAddr::new(vip, port)))
        .map(|vip_port| connections::count(sockets, &query(Some(vip_port))).on_vip)
        .sum();
    (established, on_vips)
}

fn proto_source(kind: SourceKind) -> UtilizationSource {
    match kind {
        SourceKind::HostCpu => UtilizationSource::HostCpu,
        SourceKind::CgroupCpu => UtilizationSource::CgroupCpu,
        SourceKind::Connections => UtilizationSource::Connections,
        SourceKind::Command => UtilizationSource::Command,
    }
}

/// One interface's rates as reported.
fn nic((name, rate): (String, NicRate)) -> Nic {
    Nic {
        name,
        rx_bps: bits(rate.rx_bytes_per_sec),
        tx_bps: bits(rate.tx_bytes_per_sec),
    }
}

/// Bytes per second to bits per second.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "finite and positive is checked; `as` saturates past u64::MAX"
)]
fn bits(bytes_per_sec: f64) -> u64 {
    let bits = (bytes_per_sec * 8.0).round();
    if bits.is_finite() && bits > 0.0 {
        bits as u64
    } else {
        0
    }
}

use lb_proto::time::unix_ms;

/// The CPUs the kernel has online.
fn host_cpus() -> f64 {
    // SAFETY: sysconf only reads a system value.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online > 0 {
        online as f64
    } else {
        std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
    }
}

#[cfg(test)]
mod tests;
