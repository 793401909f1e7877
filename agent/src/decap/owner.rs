//! The decapsulation an agent owns (`[decap]`): installed at start (and
//! again should its pins vanish), its allowed sources kept equal to the
//! file's plus the manager's, and its readiness probed for each VIP.
//!
//! The pins outlive the agent: a restart, upgrade or crash never stops
//! decapsulation, and a restarted agent keeps the sources it finds pinned
//! until the manager tells it the current ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{config::DecapConfig, interfaces::Interfaces};

use super::{DecapSpec, attach, is_attached, probe, set_sources, sources};

/// How long a readiness verdict stands before the probe runs again (it
/// counts in the program's counters; a change of sources probes at once).
const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How long after a failed installation the next is tried.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// The agent's decapsulation.
#[derive(Debug)]
pub struct DecapOwner {
    config: DecapConfig,
    /// What the manager sent last; `None` before it spoke.
    from_manager: Option<Vec<IpAddr>>,
    last_attempt: Option<Instant>,
    /// The last verdict for each VIP, and when it was found.
    verdicts: BTreeMap<IpAddr, bool>,
    probed_at: Option<Instant>,
}

impl DecapOwner {
    /// Owns the decapsulation `config` describes and installs it.
    #[must_use]
    pub fn start(config: DecapConfig) -> Self {
        let mut owner = Self {
            config,
            from_manager: None,
            last_attempt: None,
            verdicts: BTreeMap::new(),
            probed_at: None,
        };
        owner.ensure();
        owner
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DecapConfig {
        &self.config
    }

    /// The sources to allow: the file's and the manager's (before the
    /// manager spoke, those already pinned stand in for its).
    fn wanted_sources(&self) -> Vec<IpAddr> {
        let c = &self.config;
        let manager = self
            .from_manager
            .clone()
            .unwrap_or_else(|| sources(&c.pin_root, &c.interface).unwrap_or_default());
        let all: BTreeSet<IpAddr> = c.sources.iter().chain(&manager).copied().collect();
        all.into_iter().collect()
    }

    /// Installs the program unless it is attached (at most every
    /// [`RETRY_EVERY`]); whether it is attached now.
    fn ensure(&mut self) -> bool {
        let c = &self.config;
        if is_attached(&c.pin_root, &c.interface) {
            return true;
        }
        if self.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
            return false;
        }
        self.last_attempt = Some(Instant::now());
        self.probed_at = None;
        let spec = DecapSpec {
            interface: c.interface.clone(),
            sources: self.wanted_sources(),
            vips: c.vips.clone(),
            gue_port: c.gue_port,
        };
        match attach(&spec, &c.pin_root) {
            Ok(id) => {
                tracing::info!(interface = %spec.interface, program = id, sources = ?spec.sources, vips = ?spec.vips, "decapsulation installed");
                true
            }
            Err(error) => {
                tracing::error!(interface = %spec.interface, %error, "cannot install the decapsulation; trying again in 10 s");
                false
            }
        }
    }

    /// The manager's tunnel sources: allowed from now on, beside the
    /// file's; those it no longer sends are refused.
    pub fn set_manager_sources(&mut self, addresses: Vec<IpAddr>) {
        self.from_manager = Some(addresses);
        self.probed_at = None;
        if !self.ensure() {
            return;
        }
        let wanted = self.wanted_sources();
        let c = &self.config;
        match set_sources(&c.pin_root, &c.interface, &wanted) {
            Ok(()) => {
                tracing::info!(interface = %c.interface, sources = ?wanted, "decapsulation sources set");
            }
            Err(error) => {
                tracing::error!(interface = %c.interface, %error, "cannot set the decapsulation's sources");
            }
        }
    }

    /// Whether the decapsulation serves `vip`: attached, with allowed
    /// sources, and a tunnelled probe for it came through.
    pub fn ready(&mut self, vip: IpAddr, interfaces: &Interfaces) -> bool {
        if !self.ensure() {
            return false;
        }
        if self.probed_at.is_none_or(|t| t.elapsed() >= PROBE_EVERY) {
            self.verdicts.clear();
            self.probed_at = Some(Instant::now());
        }
        if let Some(&verdict) = self.verdicts.get(&vip) {
            return verdict;
        }
        let verdict = self.probe(vip, interfaces);
        self.verdicts.insert(vip, verdict);
        verdict
    }

    fn probe(&self, vip: IpAddr, interfaces: &Interfaces) -> bool {
        let c = &self.config;
        let local = interfaces
            .0
            .get(&c.interface)
            .map(|i| i.addresses.clone())
            .unwrap_or_default();
        let Some((source, to)) = self.wanted_sources().into_iter().find_map(|s| {
            local
                .iter()
                .find(|l| l.is_ipv4() == s.is_ipv4())
                .map(|&l| (s, l))
        }) else {
            tracing::debug!(interface = %c.interface, "no allowed tunnel source of a family the interface has: decapsulation not ready");
            return false;
        };
        match probe(&c.pin_root, &c.interface, source, to, vip) {
            Ok(passed) => {
                if !passed {
                    tracing::warn!(interface = %c.interface, %vip, %source, "the decapsulation probe did not come through");
                }
                passed
            }
            Err(error) => {
                tracing::warn!(interface = %c.interface, %vip, %error, "cannot probe the decapsulation");
                false
            }
        }
    }
}
