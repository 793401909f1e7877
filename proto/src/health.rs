//! The rise/fall state machine of a health probe, shared by the agent's
//! application probes and the manager's own probes, so both count the same
//! way.
//!
//! [`HealthTracker`] starts `unknown`, goes `up` after `rise` answers in a
//! row, and after `fall` failures in a row goes `down` when one of them was
//! a refusal or a wrong answer, `slow` when every one of them timed out. A
//! timeout is not a verdict by itself: a saturated server answers late, a
//! hung one never. Which of the two it is needs the server's utilization,
//! which the tracker does not know; the manager judges `slow` with the same
//! report's utilization (see `docs/scaling.md`, "What counts as a failure").

use crate::{Health, HealthState};

/// How much of a failure's detail a report carries.
pub const DETAIL_LIMIT: usize = 200;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The application answered as expected.
    Answered,
    /// Refused, reset, or answered wrongly: the detail says which.
    Failed(String),
    /// No answer within the probe timeout.
    TimedOut(String),
}

impl ProbeOutcome {
    /// The failure's detail, if the probe failed.
    #[must_use]
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Answered => None,
            Self::Failed(d) | Self::TimedOut(d) => Some(d),
        }
    }
}

/// Follows one application's probes: rise/fall counting and the resulting
/// state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    state: HealthState,
    ok_streak: u32,
    fail_streak: u32,
    /// Every failure of the current streak timed out.
    only_timeouts: bool,
    detail: Option<String>,
}

impl HealthTracker {
    /// A tracker in state `unknown`; `rise` and `fall` are at least 1.
    #[must_use]
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state: HealthState::Unknown,
            ok_streak: 0,
            fail_streak: 0,
            only_timeouts: true,
            detail: None,
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Counts one probe outcome; returns the new state when it changed.
    pub fn record(&mut self, outcome: ProbeOutcome) -> Option<HealthState> {
        let before = self.state;
        match outcome {
            ProbeOutcome::Answered => {
                self.ok_streak = self.ok_streak.saturating_add(1);
                self.fail_streak = 0;
                self.only_timeouts = true;
                self.detail = None;
                if self.ok_streak >= self.rise {
                    self.state = HealthState::Up;
                }
            }
            failure => {
                if matches!(failure, ProbeOutcome::Failed(_)) {
                    self.only_timeouts = false;
                }
                self.fail_streak = self.fail_streak.saturating_add(1);
                self.ok_streak = 0;
                // An empty detail would read as "no failure": say something.
                self.detail = failure.detail().filter(|d| !d.is_empty()).map_or_else(
                    || Some("probe failed".into()),
                    |d| Some(truncate(d, DETAIL_LIMIT)),
                );
                if self.fail_streak >= self.fall {
                    self.state = if self.only_timeouts {
                        HealthState::Slow
                    } else {
                        HealthState::Down
                    };
                }
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// The `<health>` element of a report.
    #[must_use]
    pub fn health(&self) -> Health {
        Health {
            state: self.state,
            rise: self.rise,
            fall: self.fall,
            ok_streak: self.ok_streak,
            fail_streak: self.fail_streak,
            detail: self.detail.clone(),
        }
    }
}

fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = text.get(..end).unwrap_or_default().to_owned();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> ProbeOutcome {
        ProbeOutcome::Failed("connect refused".into())
    }

    fn late() -> ProbeOutcome {
        ProbeOutcome::TimedOut("no answer within 1000 ms".into())
    }

    #[test]
    fn starts_unknown_and_rises_after_rise_successes() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.state(), HealthState::Unknown);
        assert_eq!(t.record(ProbeOutcome::Answered), None);
        assert_eq!(t.state(), HealthState::Unknown);
        assert_eq!(t.record(ProbeOutcome::Answered), Some(HealthState::Up));
        assert_eq!(t.record(ProbeOutcome::Answered), None);
        let h = t.health();
        assert_eq!((h.ok_streak, h.fail_streak, h.rise, h.fall), (3, 0, 2, 3));
        assert_eq!(h.detail, None);
    }

    #[test]
    fn falls_after_fall_failures_and_a_success_resets_the_count() {
        let mut t = HealthTracker::new(2, 3);
        t.record(ProbeOutcome::Answered);
        t.record(ProbeOutcome::Answered);
        assert_eq!(t.record(refused()), None);
        assert_eq!(t.record(refused()), None);
        // One success in between: the failure streak starts over.
        assert_eq!(t.record(ProbeOutcome::Answered), None);
        assert_eq!(t.state(), HealthState::Up);
        assert_eq!(t.record(refused()), None);
        assert_eq!(t.record(refused()), None);
        assert_eq!(t.record(refused()), Some(HealthState::Down));
        let h = t.health();
        assert_eq!((h.ok_streak, h.fail_streak), (0, 3));
        assert_eq!(h.detail.as_deref(), Some("connect refused"));
        // Back up needs `rise` successes.
        assert_eq!(t.record(ProbeOutcome::Answered), None);
        assert_eq!(t.state(), HealthState::Down);
        assert_eq!(t.record(ProbeOutcome::Answered), Some(HealthState::Up));
    }

    #[test]
    fn timeouts_alone_make_slow_never_down() {
        let mut t = HealthTracker::new(2, 3);
        t.record(ProbeOutcome::Answered);
        t.record(ProbeOutcome::Answered);
        for _ in 0..2 {
            assert_eq!(t.record(late()), None);
        }
        assert_eq!(t.record(late()), Some(HealthState::Slow));
        for _ in 0..20 {
            t.record(late());
        }
        assert_eq!(t.state(), HealthState::Slow);
        // One refusal in the streak: it is a failure now.
        assert_eq!(t.record(refused()), Some(HealthState::Down));
        // A later streak of timeouts only is slow again.
        t.record(ProbeOutcome::Answered);
        for _ in 0..3 {
            t.record(late());
        }
        assert_eq!(t.state(), HealthState::Slow);
        assert_eq!(t.record(ProbeOutcome::Answered), None);
        assert_eq!(t.record(ProbeOutcome::Answered), Some(HealthState::Up));
    }

    #[test]
    fn a_refusal_among_timeouts_counts_the_whole_streak() {
        let mut t = HealthTracker::new(1, 3);
        t.record(late());
        t.record(refused());
        assert_eq!(t.record(late()), Some(HealthState::Down));
    }

    #[test]
    fn unknown_goes_down_after_fall_failures() {
        let mut t = HealthTracker::new(2, 2);
        assert_eq!(t.record(refused()), None);
        assert_eq!(t.record(refused()), Some(HealthState::Down));
    }

    #[test]
    fn rise_and_fall_of_one_switch_at_once() {
        let mut t = HealthTracker::new(0, 1);
        assert_eq!(t.record(ProbeOutcome::Answered), Some(HealthState::Up));
        assert_eq!(t.record(refused()), Some(HealthState::Down));
        assert_eq!(t.record(ProbeOutcome::Answered), Some(HealthState::Up));
        assert_eq!(t.record(late()), Some(HealthState::Slow));
    }

    #[test]
    fn long_details_are_cut_and_empty_ones_filled() {
        let mut t = HealthTracker::new(1, 1);
        t.record(ProbeOutcome::Failed("é".repeat(500)));
        let detail = t.health().detail.unwrap_or_default();
        assert!(
            detail.len() <= DETAIL_LIMIT + '…'.len_utf8(),
            "{}",
            detail.len()
        );
        t.record(ProbeOutcome::Answered);
        assert_eq!(
            t.record(ProbeOutcome::TimedOut(String::new())),
            Some(HealthState::Slow)
        );
        assert_eq!(t.health().detail.as_deref(), Some("probe failed"));
    }
}
