//! `[service.scaling]`: the policy's settings as the configuration file
//! gives them, their defaults, and the checks serde cannot make.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What starts an allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The pool's average utilization against the target (Kubernetes HPA
    /// style).
    #[default]
    Pool,
    /// Any one server at or above `upper`.
    Server,
}

/// `[service.scaling]`: when the manager grows or shrinks a service's pool.
/// Utilizations are shares of a server's own capacity (1.0 = all its cores
/// busy, above 1.0 overloaded).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalingPolicy {
    /// Scale the pool at all. `false` keeps only the health decisions
    /// (take a failed server out, put it back). Default `true`.
    pub enabled: bool,
    /// Utilization above which the pool grows (and, with `trigger =
    /// "server"`, at or above which one server is hot). Default `0.75`.
    pub upper: f64,
    /// Pool utilization below which it may shrink. Default `0.25`.
    pub lower: f64,
    /// Utilization the pool is sized for when it grows or shrinks.
    /// Default: none, which means `upper`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    /// Relative band around the target inside which nothing happens: the
    /// pool grows when utilization / target > 1 + tolerance. Default `0.05`.
    pub tolerance: f64,
    /// `pool` (average over the pool) or `server` (any one server).
    /// Default `pool`.
    pub trigger: Trigger,
    /// The pool grows on the lowest recommendation over this window; `0s`
    /// acts on the current one. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub scale_out_window: Duration,
    /// The pool shrinks on the highest recommendation over this window.
    /// Default `300s`.
    #[serde(with = "humantime_serde")]
    pub scale_in_window: Duration,
    /// No allocation or drain this long after the last one completed
    /// (replacing failed servers does not wait). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// A server allocated this recently blocks every drain: its load is not
    /// settled yet. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    /// Fewest servers serving the service; fewer (failures) are replaced at
    /// once. Default `1`.
    pub min_servers: u32,
    /// Most servers serving the service. Default `16`.
    pub max_servers: u32,
    /// Largest share of the pool (allocated and failed servers) taken out
    /// for failed health at once; more failures are reported, not acted
    /// on. Default `0.5`.
    pub max_failed_fraction: f64,
    /// A drain must leave the other servers at or below `upper − margin`
    /// (`target − margin` when the target is lower), so that it does not
    /// bring the next scale-out. Default `0.1`.
    pub margin: f64,
    /// Longest a draining server keeps its flows before it goes back to
    /// the free pool. Default `300s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// A draining server with no flows for this long is done early.
    /// Default `10s`.
    #[serde(with = "humantime_serde")]
    pub drain_idle: Duration,
    /// Each server's weight is nudged toward equal utilization of the pool
    /// (a factor on its file weight, see `scaling::weights`); `false`
    /// keeps the file's weights. Default `true`.
    pub dynamic_weights: bool,
    /// A server entering the pool (allocated, or restored from failed)
    /// ramps from 10% of its fair weight to all of it over this long;
    /// `0s`: no ramp. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub slow_start: Duration,
    /// The manager's own TCP probe of each member's address on this port
    /// (rise 2, fall 3), beside the agents' probes: a server its agent
    /// calls healthy but the manager cannot reach fails too. Absent: the
    /// agents' probes only (a direct-server-return application often
    /// listens on the VIP alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_port: Option<u16>,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            upper: 0.75,
            lower: 0.25,
            target: None,
            tolerance: 0.05,
            trigger: Trigger::Pool,
            scale_out_window: Duration::ZERO,
            scale_in_window: Duration::from_mins(5),
            cooldown: Duration::from_secs(30),
            warmup: Duration::from_mins(1),
            min_servers: 1,
            max_servers: 16,
            max_failed_fraction: 0.5,
            margin: 0.1,
            drain_timeout: Duration::from_mins(5),
            drain_idle: Duration::from_secs(10),
            dynamic_weights: true,
            slow_start: Duration::ZERO,
            probe_port: None,
        }
    }
}

impl ScalingPolicy {
    /// The utilization the pool is sized for: `target`, or `upper`.
    #[must_use]
    pub fn target(&self) -> f64 {
        self.target.unwrap_or(self.upper)
    }

    /// The highest utilization a drain may leave on the other servers.
    pub(super) fn drain_limit(&self) -> f64 {
        self.upper.min(self.target()) - self.margin
    }

    /// Checks what serde cannot; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), ScalingError> {
        if self.probe_port == Some(0) {
            return Err(ScalingError::ProbePortZero);
        }
        for (key, value) in [
            ("upper", self.upper),
            ("lower", self.lower),
            ("tolerance", self.tolerance),
            ("max_failed_fraction", self.max_failed_fraction),
            ("margin", self.margin),
        ] {
            if !value.is_finite() {
                return Err(ScalingError::NotFinite { key, value });
            }
        }
        if self.lower < 0.0 || self.lower >= self.upper {
            return Err(ScalingError::Band {
                lower: self.lower,
                upper: self.upper,
            });
        }
        if let Some(target) = self.target {
            if !(target.is_finite() && target > 0.0) {
                return Err(ScalingError::TargetNotPositive { target });
            }
            if target <= self.lower {
                return Err(ScalingError::TargetNotAboveLower {
                    target,
                    lower: self.lower,
                });
            }
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return Err(ScalingError::Tolerance(self.tolerance));
        }
        self.validate_pool()?;
        self.validate_timing()
    }

    /// The pool's bounds and the share of it that may fail.
    fn validate_pool(&self) -> Result<(), ScalingError> {
        if self.max_servers == 0 {
            return Err(ScalingError::MaxServersZero);
        }
        if self.min_servers == 0 {
            return Err(ScalingError::MinServersZero);
        }
        if self.min_servers > self.max_servers {
            return Err(ScalingError::MinAboveMax {
                min: self.min_servers,
                max: self.max_servers,
            });
        }
        if !(0.0..=1.0).contains(&self.max_failed_fraction) {
            return Err(ScalingError::MaxFailedFraction(self.max_failed_fraction));
        }
        let base = self.upper.min(self.target());
        if self.margin < 0.0 || self.margin >= base {
            return Err(ScalingError::Margin {
                margin: self.margin,
                base,
            });
        }
        Ok(())
    }

    /// The ramp and the drain's durations.
    fn validate_timing(&self) -> Result<(), ScalingError> {
        if self.slow_start > Duration::from_hours(1) {
            return Err(ScalingError::SlowStart(self.slow_start));
        }
        if self.drain_idle > self.drain_timeout {
            return Err(ScalingError::DrainIdle {
                idle: self.drain_idle,
                timeout: self.drain_timeout,
            });
        }
        Ok(())
    }
}

/// A `[service.scaling]` value the policy cannot work with; each message
/// names the key and what to write instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScalingError {
    #[error("scaling.probe_port = 0: give the port the manager probes")]
    ProbePortZero,
    #[error("scaling.{key} = {value}: give a finite number")]
    NotFinite { key: &'static str, value: f64 },
    #[error("scaling.lower = {lower} and scaling.upper = {upper}: need 0 ≤ lower < upper")]
    Band { lower: f64, upper: f64 },
    #[error(
        "scaling.target = {target}: give a utilization above 0 (0.6 = 60% of capacity), or leave it out to size for upper"
    )]
    TargetNotPositive { target: f64 },
    #[error(
        "scaling.target = {target} is not above scaling.lower = {lower}: the pool would grow and shrink in turn"
    )]
    TargetNotAboveLower { target: f64, lower: f64 },
    #[error("scaling.tolerance = {0}: need 0 ≤ tolerance < 1 (0.05 acts 5% past the target)")]
    Tolerance(f64),
    #[error("scaling.max_servers = 0: allow at least 1 server")]
    MaxServersZero,
    #[error(
        "scaling.min_servers = 0: a service needs at least 1 server (scaling to zero is not supported)"
    )]
    MinServersZero,
    #[error(
        "scaling.min_servers = {min} is above scaling.max_servers = {max}: raise max_servers or lower min_servers"
    )]
    MinAboveMax { min: u32, max: u32 },
    #[error("scaling.max_failed_fraction = {0}: need a share of the pool in [0, 1] (0.5 = half)")]
    MaxFailedFraction(f64),
    #[error(
        "scaling.margin = {margin}: need 0 ≤ margin < {base} (upper, or target when lower): a drain must leave the other servers at or below {base} − margin"
    )]
    Margin { margin: f64, base: f64 },
    #[error(
        "scaling.slow_start = {0:?} is longer than an hour: write a ramp of seconds or minutes, or \"0s\" for none"
    )]
    SlowStart(Duration),
    #[error(
        "scaling.drain_idle = {idle:?} is longer than scaling.drain_timeout = {timeout:?}: a drain would always time out first"
    )]
    DrainIdle { idle: Duration, timeout: Duration },
}
