//! Reconnection delays: exponential backoff with jitter.
//!
//! The base delay starts at [`INITIAL`] and doubles after every failed
//! attempt up to [`MAX`]; each delay handed out is the base ±[`JITTER`]
//! (uniformly), so agents that lost the manager together do not all come
//! back in the same millisecond. A connection that lived at least
//! [`HEALTHY_AFTER`] resets the base, so one drop after hours of service is
//! retried quickly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first delay's base.
pub const INITIAL: Duration = Duration::from_millis(200);
/// The largest base delay.
pub const MAX: Duration = Duration::from_secs(10);
/// How far a delay may stray from its base, as a share of it.
pub const JITTER: f64 = 0.25;
/// A connection that lasted this long counts as healthy and resets the
/// backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// The state of an exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    rng: SplitMix64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A backoff seeded from the clock and the process id.
    #[must_use]
    pub fn new() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "only the low bits seed the jitter"
            )]
            let low = d.as_nanos() as u64;
            low
        });
        Self::with_seed(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// A backoff whose jitter comes from `seed` (for tests).
    #[must_use]
    pub fn with_seed(seed: u64) -> Self {
        Self {
            base: INITIAL,
            rng: SplitMix64(seed),
        }
    }

    /// The base of the next delay, without jitter.
    #[must_use]
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The delay before the next attempt; doubles the base for the one
    /// after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = base.saturating_mul(2).min(MAX);
        // A uniform factor in [1 - JITTER, 1 + JITTER].
        let factor = 1.0 + JITTER * (2.0 * self.rng.next_unit() - 1.0);
        base.mul_f64(factor)
    }

    /// Starts over from [`INITIAL`].
    pub fn reset(&mut self) {
        self.base = INITIAL;
    }

    /// Resets if a connection that lasted `lived` was healthy (see
    /// [`HEALTHY_AFTER`]); returns whether it did.
    pub fn connection_ended(&mut self, lived: Duration) -> bool {
        let healthy = lived >= HEALTHY_AFTER;
        if healthy {
            self.reset();
        }
        healthy
    }
}

/// A small, fast pseudo-random generator; jitter needs no cryptography.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within_jitter(delay: Duration, base: Duration) -> bool {
        let lo = base.mul_f64(1.0 - JITTER);
        let hi = base.mul_f64(1.0 + JITTER);
        delay >= lo && delay <= hi
    }

    #[test]
    fn doubles_from_initial_up_to_max() {
        let mut backoff = Backoff::with_seed(1);
        let mut expected = INITIAL;
        for _ in 0..20 {
            assert_eq!(backoff.base(), expected);
            let delay = backoff.next_delay();
            assert!(within_jitter(delay, expected), "{delay:?} vs {expected:?}");
            expected = (expected * 2).min(MAX);
        }
        assert_eq!(backoff.base(), MAX);
    }

    #[test]
    fn bounds_hold_for_many_seeds() {
        for seed in 0..200 {
            let mut backoff = Backoff::with_seed(seed);
            for _ in 0..12 {
                let base = backoff.base();
                let delay = backoff.next_delay();
                assert!(
                    within_jitter(delay, base),
                    "seed {seed}: {delay:?} vs {base:?}"
                );
                assert!(delay >= INITIAL.mul_f64(1.0 - JITTER));
                assert!(delay <= MAX.mul_f64(1.0 + JITTER));
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut backoff = Backoff::with_seed(42);
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                backoff.reset();
                backoff.next_delay()
            })
            .collect();
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        // Both halves of the ±25% band are used, and values differ.
        assert!(min < INITIAL.mul_f64(0.9), "{min:?}");
        assert!(max > INITIAL.mul_f64(1.1), "{max:?}");
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "{}", distinct.len());
    }

    #[test]
    fn healthy_connection_resets_short_one_does_not() {
        let mut backoff = Backoff::with_seed(7);
        for _ in 0..5 {
            backoff.next_delay();
        }
        assert_eq!(backoff.base(), Duration::from_millis(6400));
        assert!(!backoff.connection_ended(Duration::from_secs(3)));
        assert_eq!(backoff.base(), Duration::from_millis(6400));
        assert!(backoff.connection_ended(HEALTHY_AFTER));
        assert_eq!(backoff.base(), INITIAL);
    }

    #[test]
    fn different_seeds_differ() {
        let a = Backoff::with_seed(1).next_delay();
        let b = Backoff::with_seed(2).next_delay();
        assert_ne!(a, b);
    }
}
