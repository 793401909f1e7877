//! The autoscaling policy of one service: when to grow its pool with a
//! server from the free pool, drain an idle one, take a failed one out or
//! put a recovered one back.
//!
//! Pure: no I/O and no clock. The caller builds a [`PoolView`] for every
//! evaluation, passes `now`, carries out the [`Decision`]s before the next
//! evaluation and calls [`PolicyState::record_change`] once an allocation
//! has completed, [`PolicyState::record_drain`] once a drain has (the
//! cooldown counts from there).

mod config;
mod health;
mod load;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    time::{Duration, Instant},
};

pub use config::{ScalingError, ScalingPolicy, Trigger};
pub use health::judge_health;
use health::{health_decisions, known_down};
use load::{Load, desired_pool, scale_in_desired, servers_for};

/// A pool member's place, as the manager keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// In the table, receives new flows.
    Allocated,
    /// No new flows; existing ones finish.
    Draining,
    /// Taken out by this policy for failed health.
    Failed,
}

/// Application health as the manager judges it from the agent's probe,
/// its own probe and the same report's utilization ([`judge_health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Refused, answered wrongly, or timed out while the server was not
    /// busy: a failure, never load.
    Down,
    Unknown,
    /// Probes time out while the server runs at or above `upper`:
    /// functional but overloaded. It stays in the table and counts as
    /// load, so the pool grows instead of shrinking.
    Slow,
}

/// One member of the service's pool, at the time of the evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub state: MemberState,
    /// Its agent reports.
    pub monitored: bool,
    pub health: Health,
    /// Busy share of `capacity`; above 1 when overloaded.
    pub utilization: Option<f64>,
    /// Cores, > 0.
    pub capacity: f64,
    /// When it entered `state`.
    pub since: Instant,
}

/// A server of the free pool that could join the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    pub utilization: Option<f64>,
    /// Cores, > 0.
    pub capacity: f64,
    /// Reporting, health up, ready for direct server return.
    pub functional: bool,
}

/// What the policy sees of one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolView {
    pub members: Vec<Member>,
    pub free: Vec<Candidate>,
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoticeKind {
    /// The pool should grow (or replace a failed server) and no functional
    /// server is free.
    NoFreeServer,
    /// A hot server stayed as hot after a server was allocated for it.
    NotRelieved,
    /// The pool should grow and holds `max_servers` already.
    AtMaximum,
    /// Servers report health down and `max_failed_fraction` of the pool is
    /// out already: they stay in.
    FailureCapReached,
    /// A member's agent stopped reporting: it is left as it is and out of
    /// the decisions.
    Unmonitored,
    /// The pool is idle but a drain would push the other servers above
    /// `upper − margin`.
    DrainBlocked,
    /// A member's probes time out while it runs hot: overloaded, not
    /// failed.
    Slow,
}

/// One thing to do (or to tell the operator) for a service.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Move `candidate` from the free pool into the service.
    Allocate { candidate: String, reason: String },
    /// Stop new flows to `server`; it goes back to the free pool drained.
    Drain { server: String, reason: String },
    /// Take `server` out of the table for failed health; its flows are kept.
    Fail { server: String, reason: String },
    /// Put a failed `server` back into the table.
    Restore { server: String, reason: String },
    /// Nothing to do, something to say; emitted once when its situation
    /// starts, again only after it ended and started again.
    Notice { kind: NoticeKind, message: String },
}

/// What the policy remembers of one service between evaluations.
#[derive(Debug, Clone)]
pub struct PolicyState {
    /// When the manager started: failure verdicts wait for reports.
    started: Instant,
    /// (time, desired servers), oldest first, for the stabilization windows.
    history: VecDeque<(Instant, u32)>,
    /// The first recommendation since scaling was (re-)enabled: a window
    /// acts only once it is covered by recommendations.
    first_recommendation: Option<Instant>,
    /// The last completed allocation or drain, and whether it was a drain.
    last_change: Option<(Instant, bool)>,
    /// Per-server trigger: hot servers we allocated for, with their
    /// utilization at that time.
    relief: BTreeMap<String, f64>,
    /// Notices whose situation still holds (kind, subject).
    notices: BTreeSet<(NoticeKind, String)>,
    /// The pool size the last evaluation wanted (`None`: scaling off).
    desired: Option<u32>,
}

impl PolicyState {
    #[must_use]
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            history: VecDeque::new(),
            first_recommendation: None,
            last_change: None,
            relief: BTreeMap::new(),
            notices: BTreeSet::new(),
            desired: None,
        }
    }

    /// The pool size the last evaluation wanted for the utilization it
    /// saw, within `min_servers..=max_servers` (the others that serve count too);
    /// `None` while scaling is disabled. The policy acts on it once its
    /// window holds it, after the cooldown.
    #[must_use]
    pub fn desired_servers(&self) -> Option<u32> {
        self.desired
    }

    /// An allocation completed (or failed) at `now`: the cooldown starts,
    /// for growing and for shrinking alike.
    pub fn record_change(&mut self, now: Instant) {
        self.last_change = Some((now, false));
    }

    /// A drain began at `now`: the cooldown starts for the next drain only.
    /// A scale-out right after a scale-in does not wait — the load that
    /// came back is answered at once; flapping is held off by the scale-in
    /// window and the drain margin, which a drain had to pass.
    pub fn record_drain(&mut self, now: Instant) {
        self.last_change = Some((now, true));
    }

    /// Decides what to do for one service. `report_interval` and
    /// `max_backoff` (the agents' reconnect backoff) set the grace period
    /// after `started` during which no server is declared failed.
    pub fn evaluate(
        &mut self,
        policy: &ScalingPolicy,
        view: &PoolView,
        report_interval: Duration,
        max_backoff: Duration,
        now: Instant,
    ) -> Vec<Decision> {
        let mut members: Vec<&Member> = view.members.iter().collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let grace = report_interval
            .saturating_mul(3)
            .saturating_add(max_backoff);
        let judging = now.saturating_duration_since(self.started) >= grace;
        let mut round = Round::default();

        // Right after a start agents are still reconnecting: no notice yet.
        for m in members
            .iter()
            .filter(|m| judging && !m.monitored && m.state != MemberState::Draining)
        {
            round.notice(
                NoticeKind::Unmonitored,
                &m.name,
                format!(
                    "server {}: its agent is not reporting; it stays {:?} and out of the scaling decisions until it reports again",
                    m.name, m.state
                ),
            );
        }

        let health = health_decisions(policy, &members, judging, &mut round);
        let serving = members
            .iter()
            .filter(|m| match m.state {
                MemberState::Allocated => !(judging && known_down(m)),
                MemberState::Failed => health.restored.contains(&m.name.as_str()),
                MemberState::Draining => false,
            })
            .count();
        let serving = u32::try_from(serving).unwrap_or(u32::MAX);

        self.desired = None;
        if policy.enabled {
            let replaced = replace(policy, view, &members, serving, &mut round);
            let fleet = Fleet {
                view,
                members: &members,
                serving,
                settled: !replaced && health.failed == 0,
                acting: !replaced,
            };
            self.scale(policy, &fleet, now, &mut round);
        } else {
            self.history.clear();
            self.first_recommendation = None;
            self.relief.clear();
        }
        self.finish(round)
    }

    fn scale(&mut self, policy: &ScalingPolicy, fleet: &Fleet, now: Instant, round: &mut Round) {
        let load = Load::of(fleet.members);
        self.relief.retain(|name, _| {
            fleet.members.iter().any(|m| &m.name == name)
                && load.utilization(name).is_none_or(|u| u >= policy.upper)
        });
        if load.n() == 0 {
            self.desired = Some(desired_pool(policy, None, 0, fleet.serving));
            return;
        }
        let n = load.n();
        let hot = match policy.trigger {
            Trigger::Pool => Vec::new(),
            Trigger::Server => load.hot(policy.upper),
        };
        let desired = match policy.trigger {
            Trigger::Pool if load.ratio(policy) > 1.0 + policy.tolerance => {
                servers_for(f64::from(n) * load.ratio(policy))
            }
            Trigger::Server if !hot.is_empty() => n + 1,
            _ => scale_in_desired(policy, &load),
        };
        self.desired = Some(desired_pool(policy, Some(desired), n, fleet.serving));
        self.remember(desired, policy, now);
        if !fleet.acting {
            return;
        }
        let cooling_since = |drains_too: bool| {
            self.last_change.is_some_and(|(t, drain)| {
                (drains_too || !drain) && now < t.checked_add(policy.cooldown).unwrap_or(t)
            })
        };
        let (cooling_out, cooling) = (cooling_since(false), cooling_since(true));
        let grow = self.window(policy.scale_out_window, now, u32::min);
        let shrink = self.window(policy.scale_in_window, now, u32::max);
        if let Some(up) = grow.filter(|&up| up > n) {
            if fleet.serving >= policy.max_servers {
                round.notice(
                    NoticeKind::AtMaximum,
                    "",
                    format!(
                        "the pool should grow to {up} servers ({}) but {} serve already, max_servers {}",
                        load.figures(),
                        fleet.serving,
                        policy.max_servers
                    ),
                );
            } else if !cooling_out {
                self.scale_out(policy, fleet, &load, &hot, up, round);
            }
        } else if let Some(down) = shrink.filter(|&down| down < n)
            && fleet.settled
            && !cooling
            && fleet.serving > policy.min_servers
            && !fleet.members.iter().any(|m| {
                m.state == MemberState::Allocated
                    && m.since.checked_add(policy.warmup).is_none_or(|t| t > now)
            })
        {
            scale_in(policy, &load, down, round);
        }
    }

    fn scale_out(
        &mut self,
        policy: &ScalingPolicy,
        fleet: &Fleet,
        load: &Load,
        hot: &[(&Member, f64)],
        desired: u32,
        round: &mut Round,
    ) {
        let why = if policy.trigger == Trigger::Server {
            let mut relieved = None;
            for &(m, u) in hot {
                match self.relief.get(&m.name) {
                    Some(&before) if u >= before => round.notice(
                        NoticeKind::NotRelieved,
                        &m.name,
                        format!(
                            "server {} is still at {u:.2} ({before:.2} when a server was last allocated for it): more servers do not relieve it (long-lived flows?); no allocation for it until its load falls",
                            m.name
                        ),
                    ),
                    before if relieved.is_none() => relieved = Some((m, u, before.copied())),
                    _ => {}
                }
            }
            let Some((m, u, before)) = relieved else {
                return;
            };
            self.relief.insert(m.name.clone(), u);
            let mut why = format!(
                "server {} utilization {u:.2} ≥ upper {:.2} ({})",
                m.name,
                policy.upper,
                load.figures()
            );
            if let Some(before) = before {
                let _ = write!(
                    why,
                    "; it fell from {before:.2} after the last allocation for it"
                );
            }
            why
        } else {
            let mut why = format!(
                "pool utilization {:.2} > {} × (1 + tolerance {:.2}) ({}); desired {desired} servers",
                load.average(),
                target_words(policy),
                policy.tolerance,
                load.figures()
            );
            if !policy.scale_out_window.is_zero() {
                let _ = write!(
                    why,
                    " (lowest recommendation over {:?})",
                    policy.scale_out_window
                );
            }
            why
        };
        match candidates(fleet.view, fleet.members).first() {
            Some(c) => round.actions.push(Decision::Allocate {
                candidate: c.name.clone(),
                reason: format!("{why}; allocating {}", describe_candidate(c)),
            }),
            None => {
                round.notice(
                    NoticeKind::NoFreeServer,
                    "",
                    format!("no functional server in the free pool: {why}"),
                );
            }
        }
    }

    /// Records a recommendation and forgets those older than both windows.
    fn remember(&mut self, desired: u32, policy: &ScalingPolicy, now: Instant) {
        self.history.push_back((now, desired));
        self.first_recommendation.get_or_insert(now);
        let keep = policy.scale_out_window.max(policy.scale_in_window);
        if let Some(oldest) = now.checked_sub(keep) {
            while self.history.front().is_some_and(|&(t, _)| t < oldest) {
                self.history.pop_front();
            }
        }
    }

    /// Folds the recommendations of the last `window` with `pick`; `None`
    /// until recommendations cover the whole window.
    fn window(&self, window: Duration, now: Instant, pick: fn(u32, u32) -> u32) -> Option<u32> {
        let start = now.checked_sub(window)?;
        if self.first_recommendation.is_none_or(|first| first > start) {
            return None;
        }
        self.history
            .iter()
            .filter(|&&(t, _)| t >= start)
            .map(|&(_, d)| d)
            .reduce(pick)
    }

    /// Emits the notices whose situation is new and remembers them all.
    fn finish(&mut self, round: Round) -> Vec<Decision> {
        let mut out = round.actions;
        let mut active = BTreeSet::new();
        for (kind, subject, message) in round.notices {
            let key = (kind, subject);
            if !self.notices.contains(&key) {
                out.push(Decision::Notice { kind, message });
            }
            active.insert(key);
        }
        self.notices = active;
        out
    }
}

/// Decisions and notices of one evaluation.
#[derive(Default)]
struct Round {
    actions: Vec<Decision>,
    /// (kind, subject, message); the subject tells situations of one kind
    /// apart (a server's name, the servers held back).
    notices: Vec<(NoticeKind, String, String)>,
}

impl Round {
    fn notice(&mut self, kind: NoticeKind, subject: &str, message: String) {
        if !self
            .notices
            .iter()
            .any(|(k, s, _)| *k == kind && s == subject)
        {
            self.notices.push((kind, subject.to_string(), message));
        }
    }
}

/// The pool as one evaluation sees it after the health decisions.
struct Fleet<'a> {
    view: &'a PoolView,
    /// Sorted by name.
    members: &'a [&'a Member],
    /// Allocated members not known to be down (unmonitored ones count:
    /// losing an agent is not losing a server), plus those restored now.
    serving: u32,
    /// No server failed or was replaced in this evaluation.
    settled: bool,
    /// No replacement was allocated in this evaluation.
    acting: bool,
}

/// Allocates replacements when fewer than `min_servers` serve, without
/// waiting for cooldown or windows. Returns whether the pool was short.
fn replace(
    policy: &ScalingPolicy,
    view: &PoolView,
    members: &[&Member],
    serving: u32,
    round: &mut Round,
) -> bool {
    if serving >= policy.min_servers {
        return false;
    }
    let need = (policy.min_servers - serving) as usize;
    let free = candidates(view, members);
    for c in free.iter().take(need) {
        round.actions.push(Decision::Allocate {
            candidate: c.name.clone(),
            reason: format!(
                "{serving} {} serving, under min_servers {}: replacing lost capacity without waiting; allocating {}",
                plural(serving as usize),
                policy.min_servers,
                describe_candidate(c)
            ),
        });
    }
    if free.len() < need {
        round.notice(
            NoticeKind::NoFreeServer,
            "",
            format!(
                "no functional server in the free pool: {serving} {} serving, under min_servers {}",
                plural(serving as usize),
                policy.min_servers
            ),
        );
    }
    true
}

fn scale_in(policy: &ScalingPolicy, load: &Load, desired: u32, round: &mut Round) {
    // The least loaded member goes first; ties by name (members are sorted).
    let Some(&(s, u)) = load
        .members
        .iter()
        .min_by(|a, b| (a.1 * a.0.capacity).total_cmp(&(b.1 * b.0.capacity)))
    else {
        return;
    };
    let rest = load.capacity - s.capacity;
    let after = if rest > 0.0 {
        load.load / rest
    } else {
        f64::INFINITY
    };
    let limit = policy.drain_limit();
    if after > limit {
        round.notice(
            NoticeKind::DrainBlocked,
            &s.name,
            format!(
                "the pool is idle ({}) but draining {} would leave the others at {after:.2} > {limit:.2} (upper − margin): keeping it",
                load.figures(),
                s.name
            ),
        );
        return;
    }
    let mut reason = format!(
        "pool utilization {:.2} < lower {:.2} ({}); desired {desired} {}",
        load.average(),
        policy.lower,
        load.figures(),
        plural(desired as usize)
    );
    if !policy.scale_in_window.is_zero() {
        let _ = write!(
            reason,
            " (highest recommendation over {:?})",
            policy.scale_in_window
        );
    }
    let _ = write!(
        reason,
        "; draining {} (load {:.2} cores) leaves the others at {after:.2} ≤ {limit:.2}",
        s.name,
        u * s.capacity
    );
    round.actions.push(Decision::Drain {
        server: s.name.clone(),
        reason,
    });
}

/// Functional free servers, best first: those with a known utilization by
/// idle capacity `c × (1 − u)`, then those that did not report one yet (an
/// unknown is not taken for idle) by capacity; ties by name.
fn candidates<'a>(view: &'a PoolView, members: &[&Member]) -> Vec<&'a Candidate> {
    let mut free: Vec<&Candidate> = view
        .free
        .iter()
        .filter(|c| {
            c.functional
                && c.capacity.is_finite()
                && c.capacity > 0.0
                && !members.iter().any(|m| m.name == c.name)
        })
        .collect();
    let rank = |c: &Candidate| match known(c.utilization) {
        Some(u) => (0, c.capacity * (1.0 - u.clamp(0.0, 1.0))),
        None => (1, c.capacity),
    };
    free.sort_by(|a, b| {
        let (ka, va) = rank(a);
        let (kb, vb) = rank(b);
        ka.cmp(&kb)
            .then_with(|| vb.total_cmp(&va))
            .then_with(|| a.name.cmp(&b.name))
    });
    free
}

fn known(u: Option<f64>) -> Option<f64> {
    u.filter(|u| u.is_finite())
}

fn describe_candidate(c: &Candidate) -> String {
    match known(c.utilization) {
        Some(u) => format!(
            "{} ({:.2} idle cores of {:.2})",
            c.name,
            c.capacity * (1.0 - u.clamp(0.0, 1.0)),
            c.capacity
        ),
        None => format!(
            "{} ({:.2} cores, utilization not reported yet)",
            c.name, c.capacity
        ),
    }
}

fn target_words(policy: &ScalingPolicy) -> String {
    match policy.target {
        Some(t) => format!("target {t:.2}"),
        None => format!("upper {:.2}", policy.upper),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "server" } else { "servers" }
}
