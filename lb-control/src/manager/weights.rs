//! The weights in force of one service's members: one scale for static and
//! dynamic weights, slow start for a member that enters, and a law that
//! converges on equal utilization.
//!
//! # Scale
//!
//! The file's `weight` is the operator's statement of a server's relative
//! capacity, at any scale. The weight in force is
//! `file weight × factor × ramp`: `factor` is the dynamic correction (1
//! with `dynamic_weights = false`), `ramp` the slow start (1 once it is
//! over). Nodes get it in hundredths ([`WEIGHT_SCALE`]); Maglev tables depend
//! only on the ratios of the weights, so the hundredths of plain file
//! weights build the very table the file weights do.
//!
//! # Slow start
//!
//! A member that enters the pool while the manager watches (allocated, or
//! restored from failed) ramps linearly from [`RAMP_FLOOR`] of its fair
//! weight to all of it over `slow_start`, like `HAProxy`'s `slowstart` and
//! Envoy's slow start: not flooded because it is idle, not starved because
//! its number is small. Its factor starts at the geometric mean of the
//! others' (the mean is 1: the others' scale), and the law leaves it alone
//! until the ramp is over.
//!
//! # The law
//!
//! Every [`WeightSettings::period`] each settled member's factor is nudged
//! toward equal utilization: multiplied by `(mean / own)^GAIN`, the step
//! bounded to `[1/MAX_STEP, MAX_STEP]`, nothing inside a dead band of
//! `DEAD_BAND`; then the factors are normalised to a geometric mean of 1
//! and bounded to `[FACTOR_MIN, FACTOR_MAX]`. `mean` is the pool's
//! utilization (load over capacity), `own` a member's mean utilization
//! over the period's reports, each report counted once. If a member's share of new flows
//! moves its utilization in proportion, the log of `own / mean` shrinks by
//! `1 − GAIN` per period: the weights settle instead of swinging, whatever
//! the file says. (The earlier law, `full × idle share`, was proportional:
//! it handed most new flows to whoever was idle at that moment, and with a
//! publication lag it oscillated.)

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Weights in force reach the nodes in hundredths of file weight units.
pub const WEIGHT_SCALE: u32 = 100;
/// Where slow start begins: this share of the fair weight.
pub const RAMP_FLOOR: f64 = 0.1;
/// Share of the log error corrected per period.
const GAIN: f64 = 0.4;
/// Largest factor change per period.
const MAX_STEP: f64 = 1.25;
/// Relative difference from the mean that is left alone (a period's
/// mean of 20 reports is steadier than that).
const DEAD_BAND: f64 = 0.05;
const FACTOR_MIN: f64 = 0.1;
const FACTOR_MAX: f64 = 10.0;
/// A pool below this utilization has nothing to balance.
const IDLE_POOL: f64 = 0.02;
/// A new weight is published when one moved by more than this share.
const PUBLISH_THRESHOLD: f64 = 0.05;
/// Shortest time between two publications while a ramp runs.
const RAMP_STEP: Duration = Duration::from_secs(1);

/// How a service's weights behave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightSettings {
    /// The law runs (`dynamic_weights`).
    pub dynamic: bool,
    /// Slow start of an entering member; zero: none.
    pub slow_start: Duration,
    /// How often the law takes a step.
    pub period: Duration,
}

/// One allocated member as the weights see it at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInput<'a> {
    pub name: &'a str,
    /// The file's weight.
    pub file_weight: u32,
    /// Cores, > 0.
    pub capacity: f64,
    /// When it entered the pool, if the manager saw it enter; `None` for a
    /// member that was in before the manager started (no slow start).
    pub entered: Option<Instant>,
    /// Its latest report: when it arrived and the utilization it gave.
    pub report: Option<(Instant, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
struct MemberWeight {
    factor: f64,
    /// Sum and count of the utilization reports since the last step: the
    /// law acts on the period's mean, every report counted once.
    sum: f64,
    reports: u32,
    last_report: Option<Instant>,
}

impl MemberWeight {
    fn new(factor: f64) -> Self {
        Self {
            factor,
            sum: 0.0,
            reports: 0,
            last_report: None,
        }
    }

    fn mean(&self) -> Option<f64> {
        (self.reports > 0).then(|| self.sum / f64::from(self.reports))
    }
}

/// The weights of one service, between evaluations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceWeights {
    members: BTreeMap<String, MemberWeight>,
    last_step: Option<Instant>,
    published: BTreeMap<String, u32>,
    published_at: Option<Instant>,
}

impl ServiceWeights {
    /// Continues from persisted factors and the weights last published
    /// (a manager restart): nothing moves until the law says so.
    #[must_use]
    pub fn resume(factors: &BTreeMap<String, f64>, published: &BTreeMap<String, u32>) -> Self {
        let members = factors
            .iter()
            .filter(|(_, f)| f.is_finite() && **f > 0.0)
            .map(|(name, &factor)| {
                let member = MemberWeight::new(factor.clamp(FACTOR_MIN, FACTOR_MAX));
                (name.clone(), member)
            })
            .collect();
        Self {
            members,
            last_step: None,
            published: published.clone(),
            published_at: None,
        }
    }

    /// The correction factors, to persist.
    #[must_use]
    pub fn factors(&self) -> BTreeMap<String, f64> {
        self.members
            .iter()
            .map(|(n, m)| (n.clone(), m.factor))
            .collect()
    }

    /// Takes the members' new reports and, when a period passed, one step
    /// of the law. Members no longer given are forgotten.
    pub fn observe(
        &mut self,
        members: &[MemberInput<'_>],
        settings: &WeightSettings,
        now: Instant,
    ) {
        self.members
            .retain(|name, _| members.iter().any(|m| m.name == name));
        let start = self.mean_factor();
        for m in members {
            let entry = self
                .members
                .entry(m.name.to_owned())
                .or_insert_with(|| MemberWeight::new(start));
            let Some((at, u)) = m.report.filter(|(_, u)| u.is_finite()) else {
                continue;
            };
            if entry.last_report == Some(at) {
                continue;
            }
            entry.sum += u.max(0.0);
            entry.reports += 1;
            entry.last_report = Some(at);
        }
        if !settings.dynamic {
            return;
        }
        let due = self
            .last_step
            .is_none_or(|t| now.saturating_duration_since(t) >= settings.period);
        if due {
            self.last_step = Some(now);
            self.step(members, settings, now);
        }
    }

    fn mean_factor(&self) -> f64 {
        if self.members.is_empty() {
            return 1.0;
        }
        let logs: f64 = self.members.values().map(|m| m.factor.ln()).sum();
        (logs / self.members.len() as f64).exp()
    }

    /// One step of the law over the settled members.
    fn step(&mut self, members: &[MemberInput<'_>], settings: &WeightSettings, now: Instant) {
        let settled: Vec<(&MemberInput<'_>, f64)> = members
            .iter()
            .filter(|m| ramp(m, settings, now) >= 1.0 && m.capacity.is_finite() && m.capacity > 0.0)
            .filter_map(|m| Some((m, self.members.get(m.name)?.mean()?)))
            .collect();
        // The next period starts afresh.
        for w in self.members.values_mut() {
            w.sum = 0.0;
            w.reports = 0;
        }
        if settled.len() < 2 {
            return;
        }
        let load: f64 = settled.iter().map(|(m, u)| u * m.capacity).sum();
        let capacity: f64 = settled.iter().map(|(m, _)| m.capacity).sum();
        let mean = load / capacity;
        if mean < IDLE_POOL {
            return;
        }
        for (m, u) in &settled {
            let ratio = mean / u.max(IDLE_POOL / 2.0);
            if (ratio - 1.0).abs() <= DEAD_BAND {
                continue;
            }
            let step = ratio.powf(GAIN).clamp(1.0 / MAX_STEP, MAX_STEP);
            if let Some(w) = self.members.get_mut(m.name) {
                w.factor *= step;
            }
        }
        // Normalise the settled members' factors to a geometric mean of 1.
        let logs: f64 = settled
            .iter()
            .filter_map(|(m, _)| self.members.get(m.name))
            .map(|w| w.factor.ln())
            .sum();
        let mean_factor = (logs / settled.len() as f64).exp();
        for (m, _) in &settled {
            if let Some(w) = self.members.get_mut(m.name) {
                w.factor = (w.factor / mean_factor).clamp(FACTOR_MIN, FACTOR_MAX);
            }
        }
    }

    /// The weights in force now, in hundredths of file units; a member not
    /// seen yet enters at the others' mean factor.
    #[must_use]
    pub fn in_force(
        &self,
        members: &[MemberInput<'_>],
        settings: &WeightSettings,
        now: Instant,
    ) -> BTreeMap<String, u32> {
        let start = self.mean_factor();
        members
            .iter()
            .map(|m| {
                let factor = if settings.dynamic {
                    self.members.get(m.name).map_or(start, |w| w.factor)
                } else {
                    1.0
                };
                let w = f64::from(m.file_weight)
                    * f64::from(WEIGHT_SCALE)
                    * factor
                    * ramp(m, settings, now);
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "clamped to 1..=u32::MAX first"
                )]
                let w = if m.file_weight == 0 {
                    0
                } else {
                    w.round().clamp(1.0, f64::from(u32::MAX)) as u32
                };
                (m.name.to_owned(), w)
            })
            .collect()
    }

    /// Whether `weights` (from [`Self::in_force`]) should be published now:
    /// a member came or went, or one moved by more than 5 %, and the last
    /// publication is at least a ramp step old (a law step, without ramp).
    #[must_use]
    pub fn due(
        &self,
        weights: &BTreeMap<String, u32>,
        members: &[MemberInput<'_>],
        settings: &WeightSettings,
        now: Instant,
    ) -> bool {
        if weights.keys().ne(self.published.keys()) {
            return true;
        }
        let moved = weights.iter().any(|(name, &w)| {
            let before = f64::from(self.published.get(name).copied().unwrap_or(0)).max(1.0);
            (f64::from(w) - before).abs() > PUBLISH_THRESHOLD * before
        });
        let ramping = members.iter().any(|m| ramp(m, settings, now) < 1.0);
        let gap = if ramping { RAMP_STEP } else { settings.period };
        moved
            && self
                .published_at
                .is_none_or(|t| now.saturating_duration_since(t) >= gap)
    }

    /// Records that `weights` reached every node.
    pub fn mark_published(&mut self, weights: BTreeMap<String, u32>, now: Instant) {
        self.published = weights;
        self.published_at = Some(now);
    }
}

/// A member's slow-start ramp now: `RAMP_FLOOR` when it enters, 1 after
/// `slow_start`.
#[must_use]
pub fn ramp(m: &MemberInput<'_>, settings: &WeightSettings, now: Instant) -> f64 {
    let Some(entered) = m.entered else {
        return 1.0;
    };
    if settings.slow_start.is_zero() {
        return 1.0;
    }
    let done =
        now.saturating_duration_since(entered).as_secs_f64() / settings.slow_start.as_secs_f64();
    if done >= 1.0 {
        1.0
    } else {
        RAMP_FLOOR + (1.0 - RAMP_FLOOR) * done
    }
}

/// A weight in force (hundredths) in file units, for people: `12`, `12.5`.
#[must_use]
pub fn display_weight(weight: u32, scale: u32) -> String {
    let scale = scale.max(1);
    if weight.is_multiple_of(scale) {
        (weight / scale).to_string()
    } else {
        let text = format!("{:.2}", f64::from(weight) / f64::from(scale));
        text.trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests;
