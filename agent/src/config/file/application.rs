//! `[[application]]` sections: each checked on its own, then the checks
//! across them (unique names, something to count for `connections`).

use std::{collections::BTreeSet, net::IpAddr, ops::Range, time::Duration};

use lb_proto::Protocol;
use toml::Spanned;

use super::{ApplicationSection, Validator};
use crate::{
    config::{
        ApplicationConfig, ConfigError, DEFAULT_FALL, DEFAULT_PROBE_TIMEOUT_MS, DEFAULT_RISE,
        MAX_PROBE_TIMEOUT_MS, MIN_INTERVAL_MS, ProbeConfig, UtilizationConfig,
    },
    sources::SourceKind,
};

impl Validator<'_> {
    pub(super) fn applications(
        &self,
        sections: Vec<Spanned<ApplicationSection>>,
        report_interval_ms: u64,
        utilization: &UtilizationConfig,
        utilization_span: Range<usize>,
    ) -> Result<Vec<ApplicationConfig>, ConfigError> {
        let mut names = BTreeSet::new();
        let mut applications = Vec::with_capacity(sections.len());
        for section in sections {
            let app = section.into_inner();
            let name = app.name.get_ref().trim().to_owned();
            if name.is_empty() {
                return Err(self.error(app.name.span(), "application.name", "is empty"));
            }
            if !names.insert(name.clone()) {
                return Err(self.error(
                    app.name.span(),
                    "application.name",
                    format!("{name:?} is defined twice"),
                ));
            }
            applications.push(self.application(app, name, report_interval_ms, utilization)?);
        }
        if utilization.kind == SourceKind::Connections
            && !applications.iter().any(|a| a.protocol == Protocol::Tcp)
        {
            return Err(self.error(
                utilization_span,
                "utilization.kind",
                "is \"connections\" but no TCP [[application]] is configured to count",
            ));
        }
        Ok(applications)
    }

    /// One `[[application]]` named `name` (already trimmed and unique).
    fn application(
        &self,
        app: ApplicationSection,
        name: String,
        report_interval_ms: u64,
        utilization: &UtilizationConfig,
    ) -> Result<ApplicationConfig, ConfigError> {
        let key = |field: &str| format!("application[{name}].{field}");
        self.ports(&app.ports, &key("ports"))?;
        let vips = self.vips(&app.vips, &key("vips"))?;
        self.probe(&app.probe, &key("probe"))?;
        let rise = self.probe_count(app.rise.as_ref(), &key("rise"), DEFAULT_RISE)?;
        let fall = self.probe_count(app.fall.as_ref(), &key("fall"), DEFAULT_FALL)?;
        let probe_interval_ms = match &app.probe_interval_ms {
            Some(ms) => self.interval(ms, &key("probe_interval_ms"))?,
            None => report_interval_ms,
        };
        let probe_timeout_ms =
            self.probe_timeout(app.probe_timeout_ms.as_ref(), &key("probe_timeout_ms"))?;
        if let Some(capacity) = &app.connection_capacity
            && *capacity.get_ref() == 0
        {
            return Err(self.error(
                capacity.span(),
                &key("connection_capacity"),
                "is 0: write the established connections it handles at full load",
            ));
        }
        let connection_capacity = app.connection_capacity.as_ref().map(|c| *c.get_ref());
        if utilization.kind == SourceKind::Connections
            && *app.protocol.get_ref() == Protocol::Tcp
            && connection_capacity
                .or(utilization.connection_capacity)
                .is_none()
        {
            return Err(self.error(
                app.name.span(),
                &key("connection_capacity"),
                "is missing: utilization kind = \"connections\" needs a capacity, here or \
                 as utilization.capacity",
            ));
        }
        Ok(ApplicationConfig {
            name,
            protocol: *app.protocol.get_ref(),
            ports: app.ports.into_inner(),
            vips,
            probe: app.probe.into_inner(),
            rise,
            fall,
            probe_interval: Duration::from_millis(probe_interval_ms),
            probe_timeout: Duration::from_millis(probe_timeout_ms),
            connection_capacity,
        })
    }

    fn ports(&self, ports: &Spanned<Vec<u16>>, key: &str) -> Result<(), ConfigError> {
        if ports.get_ref().is_empty() {
            return Err(self.error(
                ports.span(),
                key,
                "is empty: list the ports the application listens on",
            ));
        }
        if ports.get_ref().contains(&0) {
            return Err(self.error(ports.span(), key, "contains port 0"));
        }
        Ok(())
    }

    fn vips(&self, listed: &[Spanned<IpAddr>], key: &str) -> Result<Vec<IpAddr>, ConfigError> {
        let mut vips = Vec::with_capacity(listed.len());
        for vip in listed {
            if vips.contains(vip.get_ref()) {
                return Err(self.error(
                    vip.span(),
                    key,
                    format!("{} is listed twice", vip.get_ref()),
                ));
            }
            vips.push(*vip.get_ref());
        }
        Ok(vips)
    }

    /// `rise` or `fall`: how many probes in a row change the state.
    fn probe_count(
        &self,
        value: Option<&Spanned<u32>>,
        key: &str,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match value {
            Some(n) if *n.get_ref() == 0 => Err(self.error(
                n.span(),
                key,
                "is 0: at least one probe is needed to change state",
            )),
            Some(n) => Ok(*n.get_ref()),
            None => Ok(default),
        }
    }

    /// Its own setting, never the interval: a saturated server answers
    /// late, and a timeout tied to a short report interval called that a
    /// failure.
    fn probe_timeout(&self, value: Option<&Spanned<u64>>, key: &str) -> Result<u64, ConfigError> {
        match value {
            Some(ms) if !(MIN_INTERVAL_MS..=MAX_PROBE_TIMEOUT_MS).contains(ms.get_ref()) => {
                Err(self.error(
                    ms.span(),
                    key,
                    format!(
                        "{} ms is outside {MIN_INTERVAL_MS}..={MAX_PROBE_TIMEOUT_MS} ms",
                        ms.get_ref()
                    ),
                ))
            }
            Some(ms) => Ok(*ms.get_ref()),
            None => Ok(DEFAULT_PROBE_TIMEOUT_MS),
        }
    }

    fn probe(&self, probe: &Spanned<ProbeConfig>, key: &str) -> Result<(), ConfigError> {
        if probe.get_ref().port() == 0 {
            return Err(self.error(probe.span(), &format!("{key}.port"), "is 0"));
        }
        if let ProbeConfig::Http { path, expect, .. } = probe.get_ref() {
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.error(
                    probe.span(),
                    &format!("{key}.path"),
                    format!(
                        "{path:?} must start with '/' and hold no spaces or control characters"
                    ),
                ));
            }
            if !(100..=599).contains(expect) {
                return Err(self.error(
                    probe.span(),
                    &format!("{key}.expect"),
                    format!("{expect} is not an HTTP status code (100..=599)"),
                ));
            }
        }
        Ok(())
    }
}
