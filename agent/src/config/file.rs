//! The configuration file as written (serde types that keep each value's
//! position) and the checks that turn it into an [`AgentConfig`].

use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_proto::Protocol;
use serde::Deserialize;
use toml::Spanned;

use super::{
    AgentConfig, ConfigError, DEFAULT_DISCOVERY_INTERVAL_MS, DEFAULT_REPORT_INTERVAL_MS,
    DiscoveryConfig, MAX_INTERVAL_MS, MIN_DISCOVERY_INTERVAL_MS, MIN_INTERVAL_MS, ProbeConfig,
    UtilizationConfig, kebab,
};
use crate::sources::{CommandSource, SourceKind};

mod application;
mod decap;

use decap::DecapSection;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    agent: Spanned<AgentSection>,
    #[serde(default)]
    utilization: Option<Spanned<UtilizationSection>>,
    #[serde(default)]
    application: Vec<Spanned<ApplicationSection>>,
    #[serde(default)]
    discovery: Option<Spanned<DiscoverySection>>,
    #[serde(default)]
    decap: Option<Spanned<DecapSection>>,
}

/// `[discovery]`; `None` is a key left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoverySection {
    #[serde(default)]
    enabled: Option<Spanned<bool>>,
    #[serde(default)]
    address: Option<Spanned<String>>,
    #[serde(default)]
    interval_ms: Option<Spanned<u64>>,
}

/// `[agent]`; `None` is a key left out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSection {
    host: Spanned<String>,
    manager: Spanned<String>,
    #[serde(default)]
    manager_name: Option<Spanned<String>>,
    #[serde(default)]
    report_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    tls_dir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    insecure_plaintext: Option<Spanned<bool>>,
    #[serde(default)]
    control_port: Option<Spanned<u16>>,
    #[serde(default)]
    spare: bool,
    #[serde(default)]
    capacity_cores: Option<Spanned<f64>>,
}

/// `[utilization]`: one flat table, checked against `kind` afterwards.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UtilizationSection {
    #[serde(default)]
    kind: Option<Spanned<SourceKind>>,
    #[serde(default)]
    capacity: Option<Spanned<u64>>,
    #[serde(default)]
    cgroup: Option<Spanned<String>>,
    #[serde(default)]
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    file: Option<Spanned<PathBuf>>,
}

/// One `[[application]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationSection {
    name: Spanned<String>,
    protocol: Spanned<Protocol>,
    ports: Spanned<Vec<u16>>,
    #[serde(default)]
    vips: Vec<Spanned<IpAddr>>,
    probe: Spanned<ProbeConfig>,
    #[serde(default)]
    rise: Option<Spanned<u32>>,
    #[serde(default)]
    fall: Option<Spanned<u32>>,
    #[serde(default)]
    probe_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    probe_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    connection_capacity: Option<Spanned<u64>>,
}

/// Checks a parsed file and turns value positions into line numbers for
/// errors.
pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
}

impl Validator<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_of(self.text, span.start),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn config(&self, file: File) -> Result<AgentConfig, ConfigError> {
        let agent_span = file.agent.span();
        let agent = file.agent.into_inner();

        let host = agent.host.get_ref().trim().to_owned();
        if host.is_empty() {
            return Err(self.error(
                agent.host.span(),
                "agent.host",
                "is empty: write this server's name, as on its certificate",
            ));
        }
        let manager_host = self.manager_host(&agent.manager)?;
        let manager_name = self.manager_name(agent.manager_name.as_ref(), manager_host)?;
        let report_interval_ms = match &agent.report_interval_ms {
            Some(ms) => self.interval(ms, "agent.report_interval_ms")?,
            None => DEFAULT_REPORT_INTERVAL_MS,
        };
        let insecure_plaintext = agent
            .insecure_plaintext
            .as_ref()
            .is_some_and(|v| *v.get_ref());
        if agent.tls_dir.is_none() && !insecure_plaintext {
            return Err(self.error(
                agent_span,
                "agent.tls_dir",
                "is missing: write the directory holding ca.pem, <host>.pem and <host>.key \
                 (see `lbctl certs`)",
            ));
        }
        self.agent_numbers(&agent)?;
        let utilization_span = file
            .utilization
            .as_ref()
            .map_or(agent_span.clone(), Spanned::span);
        let utilization = match file.utilization {
            Some(section) => self.utilization(section)?,
            None => UtilizationConfig::default(),
        };
        let applications = self.applications(
            file.application,
            report_interval_ms,
            &utilization,
            utilization_span,
        )?;
        let discovery = match file.discovery {
            Some(section) => self.discovery(section, agent.tls_dir.is_some())?,
            None => DiscoveryConfig::default(),
        };
        let decap = file
            .decap
            .map(|section| self.decap(section, &applications))
            .transpose()?;
        Ok(AgentConfig {
            host,
            manager: agent.manager.into_inner().trim().to_owned(),
            manager_name,
            report_interval: Duration::from_millis(report_interval_ms),
            tls_dir: agent.tls_dir.map(Spanned::into_inner),
            insecure_plaintext,
            control_port: agent.control_port.map(Spanned::into_inner),
            spare: agent.spare,
            capacity_cores: agent.capacity_cores.map(Spanned::into_inner),
            utilization,
            applications,
            discovery,
            decap,
        })
    }

    /// `agent.manager_name`, else the manager's host as written.
    fn manager_name(
        &self,
        name: Option<&Spanned<String>>,
        manager_host: String,
    ) -> Result<String, ConfigError> {
        match name {
            Some(name) if name.get_ref().trim().is_empty() => Err(self.error(
                name.span(),
                "agent.manager_name",
                "is empty: write the name on the manager's certificate, or leave the key out",
            )),
            Some(name) => Ok(name.get_ref().trim().to_owned()),
            None => Ok(manager_host),
        }
    }

    /// `agent.control_port` and `agent.capacity_cores`, when given.
    fn agent_numbers(&self, agent: &AgentSection) -> Result<(), ConfigError> {
        if let Some(port) = &agent.control_port
            && *port.get_ref() == 0
        {
            return Err(self.error(
                port.span(),
                "agent.control_port",
                "is 0: write the TCP port of this server's control listener",
            ));
        }
        if let Some(cores) = &agent.capacity_cores
            && !(cores.get_ref().is_finite() && *cores.get_ref() > 0.0)
        {
            return Err(self.error(
                cores.span(),
                "agent.capacity_cores",
                format!(
                    "{} is not a positive number of cores (fractions such as 0.5 are fine)",
                    cores.get_ref()
                ),
            ));
        }
        Ok(())
    }

    /// `[discovery]`: announcements are signed with this host's TLS key,
    /// so enabling them needs `agent.tls_dir`.
    fn discovery(
        &self,
        section: Spanned<DiscoverySection>,
        has_tls_dir: bool,
    ) -> Result<DiscoveryConfig, ConfigError> {
        let section = section.into_inner();
        let mut config = DiscoveryConfig::default();
        if let Some(address) = &section.address {
            config.address = self.discovery_address(address)?;
        }
        config.interval = Duration::from_millis(match &section.interval_ms {
            Some(ms) => {
                let value = *ms.get_ref();
                if !(MIN_DISCOVERY_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&value) {
                    return Err(self.error(
                        ms.span(),
                        "discovery.interval_ms",
                        format!(
                            "{value} ms is outside {MIN_DISCOVERY_INTERVAL_MS}..={MAX_INTERVAL_MS} \
                             ms (every host on the segment receives each announcement)"
                        ),
                    ));
                }
                value
            }
            None => DEFAULT_DISCOVERY_INTERVAL_MS,
        });
        if let Some(enabled) = &section.enabled {
            config.enabled = *enabled.get_ref();
            if config.enabled && !has_tls_dir {
                return Err(self.error(
                    enabled.span(),
                    "discovery.enabled",
                    "needs agent.tls_dir: announcements are signed with this host's key and \
                     carry its certificate (see `lbctl certs`)",
                ));
            }
        }
        Ok(config)
    }

    /// An `IP:PORT` to send announcements to: not the unspecified address,
    /// not port 0. (Whether an IPv4 address is a directed broadcast cannot
    /// be told without the netmask, so unicast is accepted too.)
    fn discovery_address(&self, address: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let bad = |why: &str| {
            self.error(
                address.span(),
                "discovery.address",
                format!(
                    "{:?} {why}: write IP:PORT, e.g. the broadcast \"255.255.255.255:7445\", a \
                     multicast group such as \"239.255.0.45:7445\" or \"[ff02::1:45]:7445\", or \
                     a manager's address",
                    address.get_ref()
                ),
            )
        };
        let parsed: SocketAddr = address
            .get_ref()
            .trim()
            .parse()
            .map_err(|_| bad("is not an IP address and port (names are not resolved)"))?;
        if parsed.port() == 0 {
            return Err(bad("has port 0"));
        }
        if parsed.ip().is_unspecified() {
            return Err(bad("is the unspecified address"));
        }
        Ok(parsed)
    }

    /// Checks `ADDR:PORT` and returns ADDR without IPv6 brackets.
    fn manager_host(&self, manager: &Spanned<String>) -> Result<String, ConfigError> {
        let bad = |why: &str| {
            self.error(
                manager.span(),
                "agent.manager",
                format!(
                    "{:?} {why}: write ADDR:PORT, e.g. \"198.51.100.1:7400\", \
                     \"[2001:db8::1]:7400\" or \"manager.example:7400\"",
                    manager.get_ref()
                ),
            )
        };
        let text = manager.get_ref().trim();
        let (host, port) = text.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
        match port.parse::<u16>() {
            Ok(0) => return Err(bad("has port 0")),
            Ok(_) => {}
            Err(_) => return Err(bad("has no valid port")),
        }
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| bad("has an unclosed '['"))?,
            None if host.contains(':') => {
                return Err(bad("is an IPv6 address without brackets"));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(bad("has no address"));
        }
        Ok(host.to_owned())
    }

    fn interval(&self, ms: &Spanned<u64>, key: &str) -> Result<u64, ConfigError> {
        let value = *ms.get_ref();
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&value) {
            return Err(self.error(
                ms.span(),
                key,
                format!("{value} ms is outside {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS} ms"),
            ));
        }
        Ok(value)
    }

    fn utilization(
        &self,
        section: Spanned<UtilizationSection>,
    ) -> Result<UtilizationConfig, ConfigError> {
        let span = section.span();
        let section = section.into_inner();
        let kind = section
            .kind
            .as_ref()
            .map_or(SourceKind::HostCpu, |k| *k.get_ref());
        let kind_name = kebab(kind);
        let only_for = |key: &str, value_span: Range<usize>, wanted: &str| {
            self.error(
                value_span,
                &format!("utilization.{key}"),
                format!(
                    "is only used with kind = \"{wanted}\", not \"{kind_name}\": remove it or \
                     change kind"
                ),
            )
        };
        if let Some(capacity) = &section.capacity {
            if kind != SourceKind::Connections {
                return Err(only_for("capacity", capacity.span(), "connections"));
            }
            if *capacity.get_ref() == 0 {
                return Err(self.error(
                    capacity.span(),
                    "utilization.capacity",
                    "is 0: write the established connections one server handles at full load",
                ));
            }
        }
        for (key, value_span) in [
            ("command", section.command.as_ref().map(Spanned::span)),
            ("file", section.file.as_ref().map(Spanned::span)),
        ] {
            if let Some(value_span) = value_span
                && kind != SourceKind::Command
            {
                return Err(only_for(key, value_span, "command"));
            }
        }
        let command =
            self.utilization_command(section.command, section.file, kind, span.clone())?;
        let cgroup = self.utilization_cgroup(section.cgroup, kind, span)?;
        Ok(UtilizationConfig {
            kind,
            connection_capacity: section.capacity.map(Spanned::into_inner),
            cgroup,
            command,
        })
    }

    /// `utilization.command` or `utilization.file`: one of them, and only
    /// with `kind = "command"` (checked by the caller).
    fn utilization_command(
        &self,
        command: Option<Spanned<Vec<String>>>,
        file: Option<Spanned<PathBuf>>,
        kind: SourceKind,
        span: Range<usize>,
    ) -> Result<Option<CommandSource>, ConfigError> {
        match (command, file) {
            (Some(c), Some(_)) => Err(self.error(
                c.span(),
                "utilization.command",
                "and utilization.file are both set: keep one",
            )),
            (Some(c), None) if c.get_ref().is_empty() => Err(self.error(
                c.span(),
                "utilization.command",
                "is empty: write the program and its arguments, e.g. [\"/usr/local/bin/load\"]",
            )),
            (Some(c), None) => Ok(Some(CommandSource::Command(c.into_inner()))),
            (None, Some(f)) => Ok(Some(CommandSource::File(f.into_inner()))),
            (None, None) if kind == SourceKind::Command => Err(self.error(
                span,
                "utilization.command",
                "is missing: kind = \"command\" needs command = [\"program\", \"arg\"] or \
                 file = \"/path\"",
            )),
            (None, None) => Ok(None),
        }
    }

    /// `utilization.cgroup`: required with `kind = "cgroup-cpu"`.
    fn utilization_cgroup(
        &self,
        cgroup: Option<Spanned<String>>,
        kind: SourceKind,
        span: Range<usize>,
    ) -> Result<Option<String>, ConfigError> {
        match cgroup {
            Some(c) if c.get_ref().trim().is_empty() => Err(self.error(
                c.span(),
                "utilization.cgroup",
                "is empty: write the cgroup's path in the hierarchy, e.g. \"/lab/h1\"",
            )),
            Some(c) => Ok(Some(c.into_inner())),
            None if kind == SourceKind::CgroupCpu => Err(self.error(
                span,
                "utilization.cgroup",
                "is missing: kind = \"cgroup-cpu\" needs the application's cgroup, e.g. \
                 cgroup = \"/lab/h1\"",
            )),
            None => Ok(None),
        }
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes().get(..end).map_or(0, |b| {
        #[expect(clippy::naive_bytecount, reason = "config files are small")]
        let newlines = b.iter().filter(|&&c| c == b'\n').count();
        newlines
    }) + 1
}
