//! The health verdicts of one evaluation: which failed members come back
//! and which members whose application is down are taken out.

use super::{Decision, Health, Member, MemberState, NoticeKind, Round, ScalingPolicy};

pub(super) struct HealthOutcome<'a> {
    pub(super) restored: Vec<&'a str>,
    pub(super) failed: usize,
}

pub(super) fn known_down(m: &Member) -> bool {
    m.monitored && m.health == Health::Down
}

/// Restores failed members whose health is up, fails allocated members
/// whose health is down (after the grace period, within the cap).
pub(super) fn health_decisions<'a>(
    policy: &ScalingPolicy,
    members: &[&'a Member],
    judging: bool,
    round: &mut Round,
) -> HealthOutcome<'a> {
    let mut restored = Vec::new();
    for m in members
        .iter()
        .filter(|m| m.state == MemberState::Failed && m.monitored && m.health == Health::Up)
    {
        round.actions.push(Decision::Restore {
            server: m.name.clone(),
            reason: "application health is up again".into(),
        });
        restored.push(m.name.as_str());
    }
    let pool = members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Allocated | MemberState::Failed))
        .count();
    // A small epsilon so that 0.5 × 4 allows 2, whatever the rounding.
    let allowed = (policy.max_failed_fraction * pool as f64 + 1e-9).floor() as usize;
    let mut out = members
        .iter()
        .filter(|m| m.state == MemberState::Failed)
        .count()
        - restored.len();
    let mut failed = 0;
    let mut held = Vec::new();
    if judging {
        for m in members
            .iter()
            .filter(|m| m.state == MemberState::Allocated && known_down(m))
        {
            if out < allowed {
                out += 1;
                failed += 1;
                round.actions.push(Decision::Fail {
                    server: m.name.clone(),
                    reason: format!(
                        "application health is down: out of the table, its flows kept ({out} of {pool} servers failed; max_failed_fraction {:.2} allows {allowed})",
                        policy.max_failed_fraction
                    ),
                });
            } else {
                held.push(m.name.as_str());
            }
        }
    }
    if !held.is_empty() {
        let names = held.join(", ");
        round.notice(
            NoticeKind::FailureCapReached,
            &names,
            format!(
                "{names} report health down but {out} of {pool} servers are out already, the most max_failed_fraction {:.2} allows: they stay in the table",
                policy.max_failed_fraction
            ),
        );
    }
    HealthOutcome { restored, failed }
}
