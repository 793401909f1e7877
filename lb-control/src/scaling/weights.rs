//! The Maglev weight of one server, following its idle share: smoothed,
//! floored at a tenth of full weight, published only when it moved enough.

use std::time::{Duration, Instant};

/// The Maglev weight of one server, following its idle share.
///
/// Full weight is proportional to capacity (`round(100 × cores)`, at least
/// 1). The weight is `full × max(0.1, idle)`, `idle` an EWMA of
/// `1 − utilization` starting at 1 (a server starts at its full weight), so
/// it never falls below 10% of full weight nor to 0. A new weight is
/// published only when it differs from the last published one by more than
/// 10% and `min_interval` passed since the last publication.
#[derive(Debug, Clone)]
pub struct WeightTracker {
    full: u32,
    alpha: f64,
    min_interval: Duration,
    idle: f64,
    published: u32,
    published_at: Option<Instant>,
}

impl WeightTracker {
    /// EWMA factor: the share of a new observation.
    pub const DEFAULT_ALPHA: f64 = 0.3;
    /// Shortest time between two publications.
    pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(5);
    /// Lowest weight, as a share of full weight.
    pub const FLOOR: f64 = 0.1;
    /// Smallest relative change worth publishing.
    pub const THRESHOLD: f64 = 0.1;

    /// `alpha` is clamped to [0.01, 1] (1: no smoothing).
    pub fn new(capacity: f64, alpha: f64, min_interval: Duration) -> Self {
        let full = if capacity.is_finite() {
            (100.0 * capacity).round().clamp(1.0, u32::MAX as f64) as u32
        } else {
            1
        };
        let alpha = if alpha.is_finite() {
            alpha.clamp(0.01, 1.0)
        } else {
            Self::DEFAULT_ALPHA
        };
        Self {
            full,
            alpha,
            min_interval,
            idle: 1.0,
            published: full,
            published_at: None,
        }
    }

    /// Continues from the weight in force since `now` (persisted across a
    /// manager restart, say): the smoothed idle share starts at its share
    /// of full weight and the next publication waits `min_interval` from
    /// `now`. `None` means full weight.
    pub fn starting_at(mut self, published: Option<u32>, now: Instant) -> Self {
        if let Some(weight) = published {
            let floor = self.floor();
            self.published = weight.clamp(floor, self.full);
            self.idle = self.published as f64 / self.full as f64;
        }
        self.published_at = Some(now);
        self
    }

    fn floor(&self) -> u32 {
        (self.full as f64 * Self::FLOOR).ceil().max(1.0) as u32
    }

    pub fn full_weight(&self) -> u32 {
        self.full
    }

    /// The smoothed idle share, 0..=1.
    pub fn idle_share(&self) -> f64 {
        self.idle
    }

    /// The weight the smoothed idle share asks for (published or not).
    pub fn weight(&self) -> u32 {
        ((self.full as f64 * self.idle.max(Self::FLOOR)).round() as u32).max(self.floor())
    }

    /// The last published weight (full weight before the first).
    pub fn published(&self) -> u32 {
        self.published
    }

    /// Takes one utilization report; returns the weight to publish, if a
    /// new one is due. A non-finite utilization is ignored.
    pub fn observe(&mut self, utilization: f64, now: Instant) -> Option<u32> {
        if !utilization.is_finite() {
            return None;
        }
        let sample = (1.0 - utilization).clamp(0.0, 1.0);
        self.idle += self.alpha * (sample - self.idle);
        let weight = self.weight();
        let published = self.published as f64;
        let changed = (weight as f64 - published).abs() > Self::THRESHOLD * published;
        let due = self
            .published_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_interval);
        if changed && due {
            self.published = weight;
            self.published_at = Some(now);
            Some(weight)
        } else {
            None
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_follows_idle_share() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = WeightTracker::new(1.0, 0.5, Duration::from_secs(5));
        assert_eq!((w.full_weight(), w.published()), (100, 100));
        // idle 1 → 0.8: 80, 20% off, published.
        assert_eq!(w.observe(0.4, at(0)), Some(80));
        // 0.7: 70 is 12.5% off but within 5 s of the last publication.
        assert_eq!(w.observe(0.4, at(1)), None);
        assert_eq!((w.weight(), w.published()), (70, 80));
        // 0.65: due now.
        assert_eq!(w.observe(0.4, at(5)), Some(65));
        // 0.68: 68 is under 10% from 65.
        assert_eq!(w.observe(0.29, at(20)), None);
        assert_eq!((w.weight(), w.published()), (68, 65));

        let mut ewma = WeightTracker::new(1.0, WeightTracker::DEFAULT_ALPHA, Duration::ZERO);
        ewma.observe(0.5, t0);
        assert!((ewma.idle_share() - 0.85).abs() < 1e-9);
        assert_eq!(ewma.published(), 85);
        assert_eq!(ewma.observe(f64::NAN, t0), None);
    }

    #[test]
    fn weight_floor_is_a_tenth_never_zero() {
        let t0 = Instant::now();
        let mut w = WeightTracker::new(2.0, 0.5, Duration::ZERO);
        assert_eq!(w.full_weight(), 200);
        for i in 0..40 {
            w.observe(1.5, t0 + Duration::from_secs(i));
        }
        assert_eq!((w.weight(), w.published()), (20, 20));
        let mut tiny = WeightTracker::new(0.01, 1.0, Duration::ZERO);
        assert_eq!(tiny.full_weight(), 1);
        tiny.observe(1.0, t0);
        assert_eq!(tiny.weight(), 1);
    }

    #[test]
    fn weight_continues_from_a_persisted_one() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = WeightTracker::new(1.0, 0.5, Duration::from_secs(5)).starting_at(Some(40), t0);
        assert_eq!((w.published(), w.idle_share()), (40, 0.4));
        // Steady at 0.6 busy: nothing new to say.
        assert_eq!(w.observe(0.6, at(1)), None);
        // Idle now, but the last publication was less than 5 s ago.
        assert_eq!(w.observe(0.0, at(2)), None);
        assert_eq!(w.observe(0.0, at(5)), Some(85));
        // Out-of-range persisted weights are clamped to [floor, full].
        let w = WeightTracker::new(1.0, 0.5, Duration::ZERO).starting_at(Some(0), t0);
        assert_eq!(w.published(), 10);
        let w = WeightTracker::new(1.0, 0.5, Duration::ZERO).starting_at(None, t0);
        assert_eq!(w.published(), 100);
    }
}
