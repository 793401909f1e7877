//! The health verdicts of one evaluation: which failed members come back
//! and which members whose application is down are taken out; and what
//! counts as down in the first place ([`judge_health`]).

use lb_proto::{Health as Probe, HealthState};

use super::{Decision, Health, Member, MemberState, NoticeKind, Round, ScalingPolicy};

/// The manager's verdict on one member from the agent's probe, the
/// manager's own probe (if the service has one) and the utilization of the
/// same report.
///
/// A refusal or a wrong answer (`down`) is a failure. A streak of
/// timeouts only (`slow`) is overload while the utilization is at or above
/// `upper` — the server accepts work and answers late — and a failure
/// (a hang) below it, or with no utilization to tell, once the current
/// streak holds `fall` timeouts. A `slow` probe whose last attempt answered,
/// or whose current streak is shorter than `fall`, counts as functional.
#[must_use]
pub fn judge_health(
    agent: Option<&Probe>,
    manager: Option<&Probe>,
    utilization: Option<f64>,
    upper: f64,
) -> Health {
    let hot = utilization.is_some_and(|u| u.is_finite() && u >= upper);
    let one = |p: &Probe| match p.state {
        HealthState::Down => Health::Down,
        HealthState::Slow if hot && p.fail_streak > 0 => Health::Slow,
        // Timeouts count toward `fall` only while the server is not busy:
        // a failure needs `fall` of them in a row now.
        HealthState::Slow if !hot && p.fail_streak >= p.fall => Health::Down,
        HealthState::Slow | HealthState::Up => Health::Up,
        HealthState::Unknown => Health::Unknown,
    };
    let (agent, manager) = (agent.map(one), manager.map(one));
    let any = |h: Health| agent == Some(h) || manager == Some(h);
    if any(Health::Down) {
        Health::Down
    } else if any(Health::Slow) {
        Health::Slow
    } else if agent == Some(Health::Up) {
        Health::Up
    } else {
        Health::Unknown
    }
}

pub(super) struct HealthOutcome<'a> {
    pub(super) restored: Vec<&'a str>,
    pub(super) failed: usize,
}

pub(super) fn known_down(m: &Member) -> bool {
    m.monitored && m.health == Health::Down
}

/// How many of a pool of `pool` may be failed at once: `fraction` of it,
/// rounded down (a small epsilon so that 0.5 × 4 allows 2, whatever the
/// rounding).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a fraction in 0..=1 of the pool size, floored: 0..=pool"
)]
fn allowed_failures(fraction: f64, pool: usize) -> usize {
    (fraction * pool as f64 + 1e-9).floor() as usize
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
    let allowed = allowed_failures(policy.max_failed_fraction, pool);
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
    for m in members
        .iter()
        .filter(|m| m.state == MemberState::Allocated && m.monitored && m.health == Health::Slow)
    {
        round.notice(
            NoticeKind::Slow,
            &m.name,
            format!(
                "{} answers its probes late at utilization {}, at or above upper {:.2}: overloaded, not failed; it stays in the table and counts as load",
                m.name,
                m.utilization.map_or("-".into(), |u| format!("{u:.2}")),
                policy.upper
            ),
        );
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
