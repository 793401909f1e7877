//! The autoscaling policy of one service: when to grow its pool with a
//! server from the free pool, drain an idle one, take a failed one out or
//! put a recovered one back; and the Maglev weights that follow each
//! server's idle share.
//!
//! Pure: no I/O and no clock. The caller builds a [`PoolView`] for every
//! evaluation, passes `now`, carries out the [`Decision`]s before the next
//! evaluation and calls [`PolicyState::record_change`] once an allocation
//! or a drain has completed (the cooldown counts from there).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

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
    /// Maglev weights follow each server's capacity and idle share
    /// (smoothed, never below 10% of full weight); `false` keeps the
    /// configured weights. Default `true`.
    pub dynamic_weights: bool,
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
            scale_in_window: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            warmup: Duration::from_secs(60),
            min_servers: 1,
            max_servers: 16,
            max_failed_fraction: 0.5,
            margin: 0.1,
            drain_timeout: Duration::from_secs(300),
            drain_idle: Duration::from_secs(10),
            dynamic_weights: true,
            probe_port: None,
        }
    }
}

impl ScalingPolicy {
    /// The utilization the pool is sized for: `target`, or `upper`.
    pub fn target(&self) -> f64 {
        self.target.unwrap_or(self.upper)
    }

    /// The highest utilization a drain may leave on the other servers.
    fn drain_limit(&self) -> f64 {
        self.upper.min(self.target()) - self.margin
    }

    /// Checks what serde cannot; the message names the key and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.probe_port == Some(0) {
            return Err("scaling.probe_port = 0: give the port the manager probes".into());
        }
        for (key, value) in [
            ("upper", self.upper),
            ("lower", self.lower),
            ("tolerance", self.tolerance),
            ("max_failed_fraction", self.max_failed_fraction),
            ("margin", self.margin),
        ] {
            if !value.is_finite() {
                return Err(format!("scaling.{key} = {value}: give a finite number"));
            }
        }
        if self.lower < 0.0 || self.lower >= self.upper {
            return Err(format!(
                "scaling.lower = {} and scaling.upper = {}: need 0 ≤ lower < upper",
                self.lower, self.upper
            ));
        }
        if let Some(target) = self.target {
            if !(target.is_finite() && target > 0.0) {
                return Err(format!(
                    "scaling.target = {target}: give a utilization above 0 (0.6 = 60% of capacity), or leave it out to size for upper"
                ));
            }
            if target <= self.lower {
                return Err(format!(
                    "scaling.target = {target} is not above scaling.lower = {}: the pool would grow and shrink in turn",
                    self.lower
                ));
            }
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return Err(format!(
                "scaling.tolerance = {}: need 0 ≤ tolerance < 1 (0.05 acts 5% past the target)",
                self.tolerance
            ));
        }
        if self.max_servers == 0 {
            return Err("scaling.max_servers = 0: allow at least 1 server".into());
        }
        if self.min_servers == 0 {
            return Err(
                "scaling.min_servers = 0: a service needs at least 1 server (scaling to zero is not supported)"
                    .into(),
            );
        }
        if self.min_servers > self.max_servers {
            return Err(format!(
                "scaling.min_servers = {} is above scaling.max_servers = {}: raise max_servers or lower min_servers",
                self.min_servers, self.max_servers
            ));
        }
        if !(0.0..=1.0).contains(&self.max_failed_fraction) {
            return Err(format!(
                "scaling.max_failed_fraction = {}: need a share of the pool in [0, 1] (0.5 = half)",
                self.max_failed_fraction
            ));
        }
        let base = self.upper.min(self.target());
        if self.margin < 0.0 || self.margin >= base {
            return Err(format!(
                "scaling.margin = {}: need 0 ≤ margin < {base} (upper, or target when lower): a drain must leave the other servers at or below {base} − margin",
                self.margin
            ));
        }
        if self.drain_idle > self.drain_timeout {
            return Err(format!(
                "scaling.drain_idle = {:?} is longer than scaling.drain_timeout = {:?}: a drain would always time out first",
                self.drain_idle, self.drain_timeout
            ));
        }
        Ok(())
    }
}

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

/// Application health as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
    Unknown,
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
    /// The last completed allocation or drain.
    last_change: Option<Instant>,
    /// Per-server trigger: hot servers we allocated for, with their
    /// utilization at that time.
    relief: BTreeMap<String, f64>,
    /// Notices whose situation still holds (kind, subject).
    notices: BTreeSet<(NoticeKind, String)>,
}

impl PolicyState {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            history: VecDeque::new(),
            first_recommendation: None,
            last_change: None,
            relief: BTreeMap::new(),
            notices: BTreeSet::new(),
        }
    }

    /// An allocation or a drain completed at `now`: the cooldown starts.
    pub fn record_change(&mut self, now: Instant) {
        self.last_change = Some(now);
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

        for m in members
            .iter()
            .filter(|m| !m.monitored && m.state != MemberState::Draining)
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
            .count() as u32;

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
            return;
        }
        let n = load.n();
        let hot = match policy.trigger {
            Trigger::Pool => Vec::new(),
            Trigger::Server => load.hot(policy.upper),
        };
        let desired = match policy.trigger {
            Trigger::Pool if load.ratio(policy) > 1.0 + policy.tolerance => {
                servers_for(n as f64 * load.ratio(policy))
            }
            Trigger::Server if !hot.is_empty() => n + 1,
            _ => scale_in_desired(policy, &load),
        };
        self.remember(desired, policy, now);
        if !fleet.acting {
            return;
        }
        let cooling = self
            .last_change
            .is_some_and(|t| now < t.checked_add(policy.cooldown).unwrap_or(t));
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
            } else if !cooling {
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
                why += &format!("; it fell from {before:.2} after the last allocation for it");
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
                why += &format!(
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

struct HealthOutcome<'a> {
    restored: Vec<&'a str>,
    failed: usize,
}

fn known_down(m: &Member) -> bool {
    m.monitored && m.health == Health::Down
}

/// Restores failed members whose health is up, fails allocated members
/// whose health is down (after the grace period, within the cap).
fn health_decisions<'a>(
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
        reason += &format!(
            " (highest recommendation over {:?})",
            policy.scale_in_window
        );
    }
    reason += &format!(
        "; draining {} (load {:.2} cores) leaves the others at {after:.2} ≤ {limit:.2}",
        s.name,
        u * s.capacity
    );
    round.actions.push(Decision::Drain {
        server: s.name.clone(),
        reason,
    });
}

/// The members that count as load: allocated, monitored, not down, with a
/// utilization and a capacity.
struct Load<'a> {
    members: Vec<(&'a Member, f64)>,
    load: f64,
    capacity: f64,
}

impl<'a> Load<'a> {
    fn of(members: &[&'a Member]) -> Self {
        let members: Vec<(&Member, f64)> = members
            .iter()
            .filter(|m| {
                m.state == MemberState::Allocated
                    && m.monitored
                    && m.health != Health::Down
                    && m.capacity.is_finite()
                    && m.capacity > 0.0
            })
            .filter_map(|m| {
                let u = m.utilization.filter(|u| u.is_finite())?;
                Some((*m, u.max(0.0)))
            })
            .collect();
        let load = members.iter().map(|(m, u)| u * m.capacity).sum();
        let capacity = members.iter().map(|(m, _)| m.capacity).sum();
        Self {
            members,
            load,
            capacity,
        }
    }

    fn n(&self) -> u32 {
        self.members.len() as u32
    }

    fn average(&self) -> f64 {
        self.load / self.capacity
    }

    fn ratio(&self, policy: &ScalingPolicy) -> f64 {
        self.average() / policy.target()
    }

    fn utilization(&self, name: &str) -> Option<f64> {
        self.members
            .iter()
            .find(|(m, _)| m.name == name)
            .map(|&(_, u)| u)
    }

    /// Members at or above `upper`, hottest first (ties by name).
    fn hot(&self, upper: f64) -> Vec<(&'a Member, f64)> {
        let mut hot: Vec<_> = self
            .members
            .iter()
            .copied()
            .filter(|&(_, u)| u >= upper)
            .collect();
        hot.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));
        hot
    }

    fn figures(&self) -> String {
        format!(
            "load {:.2} cores over {:.2} on {} {}",
            self.load,
            self.capacity,
            self.n(),
            plural(self.members.len())
        )
    }
}

/// The scale-in recommendation: `max(min_servers, ceil(n × avg / target))`
/// below `lower`, the current count otherwise.
fn scale_in_desired(policy: &ScalingPolicy, load: &Load) -> u32 {
    let n = load.n();
    if load.average() < policy.lower {
        policy
            .min_servers
            .max(servers_for(n as f64 * load.ratio(policy)))
            .min(n)
    } else {
        n
    }
}

/// `ceil(x)` as a server count, forgiving float noise (2.0000000001 is 2).
fn servers_for(x: f64) -> u32 {
    (x - 1e-9).ceil().clamp(0.0, u32::MAX as f64) as u32
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

    /// Agents report every 5 s and reconnect within 10 s: no failure
    /// verdict before 3 × 5 + 10 = 25 s.
    const INTERVAL: Duration = Duration::from_secs(5);
    const BACKOFF: Duration = Duration::from_secs(10);

    /// A policy with a fake clock: time is seconds after `t0`.
    struct Sim {
        t0: Instant,
        state: PolicyState,
        policy: ScalingPolicy,
    }

    impl Sim {
        fn new(policy: ScalingPolicy) -> Self {
            policy.validate().expect("test policy is valid");
            let t0 = Instant::now();
            Self {
                t0,
                state: PolicyState::new(t0),
                policy,
            }
        }

        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }

        fn eval(&mut self, secs: u64, view: &PoolView) -> Vec<Decision> {
            let now = self.at(secs);
            self.state
                .evaluate(&self.policy, view, INTERVAL, BACKOFF, now)
        }

        fn changed(&mut self, secs: u64) {
            let now = self.at(secs);
            self.state.record_change(now);
        }

        /// An allocated, monitored, healthy 1-core member since `since` s.
        fn member(&self, name: &str, utilization: f64, since: u64) -> Member {
            Member {
                name: name.into(),
                state: MemberState::Allocated,
                monitored: true,
                health: Health::Up,
                utilization: Some(utilization),
                capacity: 1.0,
                since: self.at(since),
            }
        }
    }

    fn free(name: &str, utilization: Option<f64>, capacity: f64) -> Candidate {
        Candidate {
            name: name.into(),
            utilization,
            capacity,
            functional: true,
        }
    }

    fn view(members: Vec<Member>) -> PoolView {
        PoolView {
            members,
            free: vec![free("f1", Some(0.0), 1.0), free("f2", Some(0.0), 1.0)],
        }
    }

    fn allocated(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Allocate { candidate, .. } => Some(candidate.as_str()),
                _ => None,
            })
            .collect()
    }

    fn drained(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Drain { server, .. } => Some(server.as_str()),
                _ => None,
            })
            .collect()
    }

    fn failed(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Fail { server, .. } => Some(server.as_str()),
                _ => None,
            })
            .collect()
    }

    fn restored(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Restore { server, .. } => Some(server.as_str()),
                _ => None,
            })
            .collect()
    }

    fn notices(ds: &[Decision], want: NoticeKind) -> Vec<&str> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Notice { kind, message } if *kind == want => Some(message.as_str()),
                _ => None,
            })
            .collect()
    }

    fn reason(d: &Decision) -> &str {
        match d {
            Decision::Allocate { reason, .. }
            | Decision::Drain { reason, .. }
            | Decision::Fail { reason, .. }
            | Decision::Restore { reason, .. } => reason,
            Decision::Notice { message, .. } => message,
        }
    }

    #[test]
    fn tolerance_band_holds_then_allocates() {
        let mut sim = Sim::new(ScalingPolicy::default());
        // 0.77 / 0.75 = 1.027: inside the 5% band.
        let calm = view(vec![sim.member("s1", 0.77, 0)]);
        assert_eq!(sim.eval(0, &calm), vec![]);
        assert_eq!(sim.eval(5, &calm), vec![]);
        // 0.80 / 0.75 = 1.067: out of it.
        let hot = view(vec![sim.member("s1", 0.80, 0)]);
        let ds = sim.eval(10, &hot);
        assert_eq!(allocated(&ds), ["f1"], "{ds:?}");
        let why = reason(&ds[0]);
        assert!(
            why.contains("0.80") && why.contains("upper 0.75") && why.contains("desired 2 servers"),
            "{why}"
        );
    }

    #[test]
    fn target_sizes_the_pool() {
        let mut sim = Sim::new(ScalingPolicy {
            target: Some(0.6),
            ..ScalingPolicy::default()
        });
        // 0.66 is under upper but 1.1 × the target.
        let ds = sim.eval(
            0,
            &view(vec![sim.member("s1", 0.66, 0), sim.member("s2", 0.66, 0)]),
        );
        assert_eq!(allocated(&ds), ["f1"]);
        assert!(reason(&ds[0]).contains("desired 3 servers"), "{ds:?}");
        // 0.62 is within 5% of it.
        let mut sim = Sim::new(sim.policy.clone());
        let ds = sim.eval(0, &view(vec![sim.member("s1", 0.62, 0)]));
        assert_eq!(ds, vec![]);
    }

    #[test]
    fn scale_out_window_zero_acts_on_first_hot_evaluation() {
        let mut sim = Sim::new(ScalingPolicy::default());
        let ds = sim.eval(0, &view(vec![sim.member("s1", 0.9, 0)]));
        assert_eq!(allocated(&ds), ["f1"]);
    }

    #[test]
    fn scale_out_window_waits_for_sustained_load() {
        let mut sim = Sim::new(ScalingPolicy {
            scale_out_window: Duration::from_secs(30),
            ..ScalingPolicy::default()
        });
        let hot = view(vec![sim.member("s1", 0.9, 0)]);
        let calm = view(vec![sim.member("s1", 0.5, 0)]);
        for t in [0, 10, 20] {
            assert_eq!(sim.eval(t, &hot), vec![], "t={t}");
        }
        // A calm sample inside the window holds it back...
        assert_eq!(sim.eval(25, &calm), vec![]);
        for t in [30, 40, 50] {
            assert_eq!(sim.eval(t, &hot), vec![], "t={t}");
        }
        // ...until it leaves the window.
        assert_eq!(allocated(&sim.eval(56, &hot)), ["f1"]);
    }

    #[test]
    fn scale_in_waits_for_the_window() {
        let mut sim = Sim::new(ScalingPolicy::default());
        let idle = view(vec![sim.member("s1", 0.1, 0), sim.member("s2", 0.05, 0)]);
        for t in (0..300).step_by(10) {
            assert_eq!(sim.eval(t, &idle), vec![], "t={t}");
        }
        let ds = sim.eval(300, &idle);
        // The least loaded one goes.
        assert_eq!(drained(&ds), ["s2"], "{ds:?}");
        let why = reason(&ds[0]);
        assert!(
            why.contains("0.08 < lower 0.25") && why.contains("desired 1 server"),
            "{why}"
        );
    }

    #[test]
    fn busy_sample_restarts_the_scale_in_window() {
        let mut sim = Sim::new(ScalingPolicy::default());
        let idle = view(vec![sim.member("s1", 0.1, 0), sim.member("s2", 0.1, 0)]);
        let busy = view(vec![sim.member("s1", 0.5, 0), sim.member("s2", 0.5, 0)]);
        // The busy sample at 150 s is in the window until after 450 s.
        for t in (0..=450).step_by(10) {
            let v = if t == 150 { &busy } else { &idle };
            assert_eq!(sim.eval(t, v), vec![], "t={t}");
        }
        assert_eq!(drained(&sim.eval(460, &idle)), ["s1"]);
    }

    #[test]
    fn cooldown_blocks_a_second_allocation() {
        let mut sim = Sim::new(ScalingPolicy::default());
        assert_eq!(
            allocated(&sim.eval(0, &view(vec![sim.member("s1", 0.95, 0)]))),
            ["f1"]
        );
        sim.changed(2);
        let still_hot = PoolView {
            members: vec![sim.member("s1", 0.95, 0), sim.member("f1", 0.95, 2)],
            free: vec![free("f2", Some(0.0), 1.0)],
        };
        for t in [5, 15, 25, 31] {
            assert_eq!(sim.eval(t, &still_hot), vec![], "t={t}");
        }
        assert_eq!(allocated(&sim.eval(32, &still_hot)), ["f2"]);
    }

    #[test]
    fn cooldown_blocks_a_drain_after_a_change() {
        let mut sim = Sim::new(ScalingPolicy {
            scale_in_window: Duration::ZERO,
            warmup: Duration::ZERO,
            ..ScalingPolicy::default()
        });
        let idle = view(vec![sim.member("s1", 0.1, 0), sim.member("s2", 0.1, 0)]);
        sim.changed(100);
        assert_eq!(sim.eval(110, &idle), vec![]);
        assert_eq!(sim.eval(129, &idle), vec![]);
        assert_eq!(drained(&sim.eval(130, &idle)), ["s1"]);
    }

    #[test]
    fn warmup_blocks_scale_in() {
        let mut sim = Sim::new(ScalingPolicy {
            scale_in_window: Duration::ZERO,
            ..ScalingPolicy::default()
        });
        // s2 joined at 100 s: no drain before 160 s, of it or of anyone.
        let idle = view(vec![sim.member("s1", 0.2, 0), sim.member("s2", 0.0, 100)]);
        for t in [100, 120, 159] {
            assert_eq!(sim.eval(t, &idle), vec![], "t={t}");
        }
        assert_eq!(drained(&sim.eval(160, &idle)), ["s2"]);
    }

    #[test]
    fn never_drains_below_min_servers() {
        let mut sim = Sim::new(ScalingPolicy {
            min_servers: 2,
            scale_in_window: Duration::ZERO,
            warmup: Duration::ZERO,
            ..ScalingPolicy::default()
        });
        let idle = view(vec![sim.member("s1", 0.0, 0), sim.member("s2", 0.0, 0)]);
        for t in (0..600).step_by(30) {
            assert_eq!(sim.eval(t, &idle), vec![], "t={t}");
        }
    }

    #[test]
    fn at_maximum_is_said_once() {
        let mut sim = Sim::new(ScalingPolicy {
            max_servers: 2,
            ..ScalingPolicy::default()
        });
        let hot = view(vec![sim.member("s1", 0.9, 0), sim.member("s2", 0.9, 0)]);
        let ds = sim.eval(0, &hot);
        assert_eq!(allocated(&ds), Vec::<&str>::new());
        let said = notices(&ds, NoticeKind::AtMaximum);
        assert_eq!(said.len(), 1, "{ds:?}");
        assert!(said[0].contains("max_servers 2"), "{}", said[0]);
        for t in (5..100).step_by(5) {
            assert_eq!(sim.eval(t, &hot), vec![], "t={t}");
        }
        // The situation ends and comes back: said again.
        let calm = view(vec![sim.member("s1", 0.5, 0), sim.member("s2", 0.5, 0)]);
        assert_eq!(sim.eval(100, &calm), vec![]);
        assert_eq!(
            notices(&sim.eval(105, &hot), NoticeKind::AtMaximum).len(),
            1
        );
    }

    /// A pool that carries a demand in cores, spread evenly, and carries
    /// out the decisions as the manager would.
    fn run_demand(sim: &mut Sim, demand: impl Fn(u64) -> f64, until: u64) -> (Vec<u64>, Vec<u64>) {
        let mut names = vec!["s1".to_string()];
        let mut free_names: Vec<String> = (1..=8).map(|i| format!("f{i}")).collect();
        let mut since = BTreeMap::from([("s1".to_string(), 0)]);
        let (mut allocations, mut drains) = (Vec::new(), Vec::new());
        for t in (0..until).step_by(INTERVAL.as_secs() as usize) {
            let u = demand(t) / names.len() as f64;
            let v = PoolView {
                members: names.iter().map(|n| sim.member(n, u, since[n])).collect(),
                free: free_names.iter().map(|n| free(n, Some(0.0), 1.0)).collect(),
            };
            for d in sim.eval(t, &v) {
                match d {
                    Decision::Allocate { candidate, .. } => {
                        free_names.retain(|n| *n != candidate);
                        since.insert(candidate.clone(), t);
                        names.push(candidate);
                        allocations.push(t);
                        sim.changed(t);
                    }
                    Decision::Drain { server, .. } => {
                        names.retain(|n| *n != server);
                        drains.push(t);
                        sim.changed(t);
                    }
                    _ => {}
                }
            }
        }
        (allocations, drains)
    }

    #[test]
    fn flapping_load_allocates_once_and_never_drains() {
        let mut sim = Sim::new(ScalingPolicy::default());
        // 0.9 and 0.1 cores in turn, every report interval, for an hour.
        let (allocations, drains) = run_demand(
            &mut sim,
            |t| {
                if (t / INTERVAL.as_secs()).is_multiple_of(2) {
                    0.9
                } else {
                    0.1
                }
            },
            3600,
        );
        assert_eq!(allocations, [0]);
        assert_eq!(drains, Vec::<u64>::new());
    }

    #[test]
    fn settled_low_load_drains_after_the_window() {
        let mut sim = Sim::new(ScalingPolicy::default());
        // A burst that needs two servers, then calm from 100 s on.
        let (allocations, drains) = run_demand(&mut sim, |t| if t < 100 { 0.9 } else { 0.1 }, 1200);
        assert_eq!(allocations, [0]);
        // The last 2-server recommendation is at 95 s: it leaves the
        // window after 395 s, drain at the next evaluation.
        assert_eq!(drains, [400]);
    }

    #[test]
    fn drain_needs_room_on_the_others() {
        let mut sim = Sim::new(ScalingPolicy {
            scale_in_window: Duration::ZERO,
            warmup: Duration::ZERO,
            ..ScalingPolicy::default()
        });
        let pool = |sim: &Sim, small: f64| {
            let mut big = sim.member("big", 0.05, 0);
            big.capacity = 4.0;
            view(vec![big, sim.member("small", small, 0)])
        };
        // Pool at 1.1 / 5 = 0.22, but without `big` (load 0.2, the lowest)
        // `small` would carry 1.1 > 0.75 − 0.1.
        let blocked = pool(&sim, 0.9);
        let roomy = pool(&sim, 0.3);
        let ds = sim.eval(0, &blocked);
        assert_eq!(drained(&ds), Vec::<&str>::new());
        let said = notices(&ds, NoticeKind::DrainBlocked);
        assert_eq!(said.len(), 1, "{ds:?}");
        assert!(said[0].contains("1.10 > 0.65"), "{}", said[0]);
        assert_eq!(sim.eval(10, &blocked), vec![]);
        // With `small` at 0.3 the rest is at 0.5 ≤ 0.65.
        let ds = sim.eval(20, &roomy);
        assert_eq!(drained(&ds), ["big"], "{ds:?}");
        assert!(reason(&ds[0]).contains("0.50 ≤ 0.65"), "{ds:?}");
    }

    fn down(mut m: Member) -> Member {
        m.health = Health::Down;
        m
    }

    fn out(mut m: Member) -> Member {
        m.state = MemberState::Failed;
        m
    }

    #[test]
    fn no_failure_verdict_during_grace() {
        let mut sim = Sim::new(ScalingPolicy::default());
        let v = view(vec![
            down(sim.member("s1", 0.5, 0)),
            sim.member("s2", 0.5, 0),
        ]);
        for t in [0, 10, 24] {
            assert_eq!(sim.eval(t, &v), vec![], "t={t}");
        }
        let ds = sim.eval(25, &v);
        assert_eq!(failed(&ds), ["s1"]);
        assert!(reason(&ds[0]).contains("1 of 2 servers failed"), "{ds:?}");
    }

    #[test]
    fn failures_are_capped_at_half_the_pool() {
        let mut sim = Sim::new(ScalingPolicy::default());
        let ds = sim.eval(
            30,
            &view(vec![
                down(sim.member("s1", 0.5, 0)),
                down(sim.member("s2", 0.5, 0)),
                down(sim.member("s3", 0.5, 0)),
                sim.member("s4", 0.5, 0),
            ]),
        );
        assert_eq!(failed(&ds), ["s1", "s2"]);
        let said = notices(&ds, NoticeKind::FailureCapReached);
        assert_eq!(said.len(), 1, "{ds:?}");
        assert!(said[0].starts_with("s3 report health down"), "{}", said[0]);
        // Next evaluation: s1 and s2 are out, s3 still held, said once.
        let v = view(vec![
            out(down(sim.member("s1", 0.5, 0))),
            out(down(sim.member("s2", 0.5, 0))),
            down(sim.member("s3", 0.5, 0)),
            sim.member("s4", 0.5, 0),
        ]);
        assert_eq!(sim.eval(35, &v), vec![]);
        // s1 recovers: back in, and s3 may go out in its place.
        let v = view(vec![
            out(sim.member("s1", 0.5, 0)),
            out(down(sim.member("s2", 0.5, 0))),
            down(sim.member("s3", 0.5, 0)),
            sim.member("s4", 0.5, 0),
        ]);
        let ds = sim.eval(40, &v);
        assert_eq!(restored(&ds), ["s1"]);
        assert_eq!(failed(&ds), ["s3"]);
    }

    #[test]
    fn failed_members_are_not_load() {
        let mut sim = Sim::new(ScalingPolicy {
            max_failed_fraction: 1.0,
            ..ScalingPolicy::default()
        });
        let v = view(vec![
            out(down(sim.member("s1", 1.5, 0))),
            sim.member("s2", 0.5, 0),
            down(sim.member("s3", 1.2, 0)),
        ]);
        let ds = sim.eval(30, &v);
        assert_eq!(failed(&ds), ["s3"]);
        assert_eq!(allocated(&ds), Vec::<&str>::new(), "{ds:?}");
    }

    #[test]
    fn replacement_below_min_skips_cooldown_and_windows() {
        let mut sim = Sim::new(ScalingPolicy {
            min_servers: 2,
            scale_out_window: Duration::from_secs(60),
            ..ScalingPolicy::default()
        });
        sim.changed(100);
        let v = view(vec![
            sim.member("s1", 0.3, 0),
            down(sim.member("s2", 0.3, 0)),
        ]);
        let ds = sim.eval(105, &v);
        assert_eq!(failed(&ds), ["s2"]);
        assert_eq!(allocated(&ds), ["f1"], "{ds:?}");
        assert!(
            reason(&ds[1]).contains("1 server serving, under min_servers 2"),
            "{ds:?}"
        );
    }

    #[test]
    fn empty_pool_is_filled_to_min() {
        let mut sim = Sim::new(ScalingPolicy {
            min_servers: 2,
            ..ScalingPolicy::default()
        });
        let ds = sim.eval(0, &view(vec![]));
        assert_eq!(allocated(&ds), ["f1", "f2"]);
    }

    #[test]
    fn unmonitored_member_is_left_out() {
        let mut sim = Sim::new(ScalingPolicy {
            scale_in_window: Duration::ZERO,
            warmup: Duration::ZERO,
            ..ScalingPolicy::default()
        });
        let mut lost = down(sim.member("s2", 3.0, 0));
        lost.monitored = false;
        let v = view(vec![sim.member("s1", 0.5, 0), lost.clone()]);
        let ds = sim.eval(30, &v);
        // Not failed, not load (3.0 would scale out), said once.
        assert_eq!(failed(&ds), Vec::<&str>::new());
        assert_eq!(allocated(&ds), Vec::<&str>::new());
        assert_eq!(notices(&ds, NoticeKind::Unmonitored).len(), 1, "{ds:?}");
        assert_eq!(sim.eval(35, &v), vec![]);
        // Idle and unmonitored: not drained either.
        let mut quiet = sim.member("s2", 0.0, 0);
        quiet.monitored = false;
        let v = view(vec![sim.member("s1", 0.2, 0), quiet.clone()]);
        assert_eq!(sim.eval(40, &v), vec![]);
        // Reports again, then stops again: said again.
        assert_eq!(
            drained(&sim.eval(
                45,
                &view(vec![sim.member("s1", 0.2, 0), sim.member("s2", 0.0, 0)])
            )),
            ["s2"]
        );
        let ds = sim.eval(50, &v);
        assert_eq!(notices(&ds, NoticeKind::Unmonitored).len(), 1, "{ds:?}");
    }

    #[test]
    fn per_server_trigger_stops_when_allocations_do_not_relieve() {
        let policy = ScalingPolicy {
            trigger: Trigger::Server,
            ..ScalingPolicy::default()
        };
        // The pool trigger sees 0.625 and does nothing.
        let mut pool = Sim::new(ScalingPolicy::default());
        let v = view(vec![pool.member("s1", 0.95, 0), pool.member("s2", 0.3, 0)]);
        assert_eq!(pool.eval(0, &v), vec![]);

        let mut sim = Sim::new(policy);
        let ds = sim.eval(
            0,
            &view(vec![sim.member("s1", 0.95, 0), sim.member("s2", 0.3, 0)]),
        );
        assert_eq!(allocated(&ds), ["f1"]);
        assert!(
            reason(&ds[0]).contains("server s1 utilization 0.95"),
            "{ds:?}"
        );
        sim.changed(0);
        // Sticky flows: s1 stays at 0.95 with f1 idle beside it.
        let stuck = PoolView {
            members: vec![
                sim.member("f1", 0.0, 0),
                sim.member("s1", 0.95, 0),
                sim.member("s2", 0.3, 0),
            ],
            free: vec![free("f2", Some(0.0), 1.0)],
        };
        let ds = sim.eval(40, &stuck);
        assert_eq!(allocated(&ds), Vec::<&str>::new());
        assert_eq!(notices(&ds, NoticeKind::NotRelieved).len(), 1, "{ds:?}");
        assert_eq!(sim.eval(45, &stuck), vec![]);
        // Its load fell: one more allocation is worth trying.
        let mut eased = stuck.clone();
        eased.members[1].utilization = Some(0.85);
        let ds = sim.eval(50, &eased);
        assert_eq!(allocated(&ds), ["f2"]);
        assert!(reason(&ds[0]).contains("fell from 0.95"), "{ds:?}");
    }

    #[test]
    fn candidates_by_idle_capacity_functional_only() {
        let mut broken = free("c", Some(0.0), 8.0);
        broken.functional = false;
        let mut v = PoolView {
            members: vec![],
            free: vec![
                free("a", Some(0.9), 4.0), // 0.4 idle cores
                free("b", Some(0.1), 2.0), // 1.8
                broken,
                free("d", None, 16.0), // unknown
                free("e", Some(0.1), 2.0),
            ],
        };
        let names = |v: &PoolView| -> Vec<String> {
            candidates(v, &[]).iter().map(|c| c.name.clone()).collect()
        };
        assert_eq!(names(&v), ["b", "e", "a", "d"]);
        let mut sim = Sim::new(ScalingPolicy::default());
        v.members = vec![sim.member("s1", 0.9, 0)];
        let ds = sim.eval(0, &v);
        assert_eq!(allocated(&ds), ["b"]);
        assert!(
            reason(&ds[0]).contains("b (1.80 idle cores of 2.00)"),
            "{ds:?}"
        );
    }

    #[test]
    fn no_free_server_is_said_once() {
        let mut sim = Sim::new(ScalingPolicy::default());
        let mut broken = free("f1", Some(0.0), 4.0);
        broken.functional = false;
        let v = PoolView {
            members: vec![sim.member("s1", 0.9, 0)],
            free: vec![broken],
        };
        let ds = sim.eval(0, &v);
        assert_eq!(allocated(&ds), Vec::<&str>::new());
        assert_eq!(notices(&ds, NoticeKind::NoFreeServer).len(), 1, "{ds:?}");
        for t in (5..60).step_by(5) {
            assert_eq!(sim.eval(t, &v), vec![], "t={t}");
        }
    }

    #[test]
    fn disabled_policy_only_judges_health() {
        let mut sim = Sim::new(ScalingPolicy {
            enabled: false,
            min_servers: 3,
            ..ScalingPolicy::default()
        });
        let v = view(vec![
            sim.member("s1", 0.99, 0),
            down(sim.member("s2", 0.99, 0)),
            out(sim.member("s3", 0.0, 0)),
        ]);
        let ds = sim.eval(30, &v);
        assert_eq!(restored(&ds), ["s3"]);
        assert_eq!(failed(&ds), ["s2"]);
        assert_eq!(ds.len(), 2, "{ds:?}");
    }

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

    fn invalid(p: ScalingPolicy) -> String {
        p.validate().expect_err("invalid policy")
    }

    #[test]
    fn validate_says_what_to_fix() {
        let d = ScalingPolicy::default;
        assert_eq!(d().validate(), Ok(()));
        let e = invalid(ScalingPolicy { lower: 0.8, ..d() });
        assert!(
            e.contains("scaling.lower = 0.8") && e.contains("0 ≤ lower < upper"),
            "{e}"
        );
        let e = invalid(ScalingPolicy { lower: -0.1, ..d() });
        assert!(e.contains("0 ≤ lower < upper"), "{e}");
        let e = invalid(ScalingPolicy {
            upper: f64::NAN,
            ..d()
        });
        assert!(e.contains("scaling.upper") && e.contains("finite"), "{e}");
        let e = invalid(ScalingPolicy {
            target: Some(0.0),
            ..d()
        });
        assert!(
            e.contains("scaling.target = 0") && e.contains("above 0"),
            "{e}"
        );
        let e = invalid(ScalingPolicy {
            target: Some(0.2),
            ..d()
        });
        assert!(e.contains("not above scaling.lower"), "{e}");
        let e = invalid(ScalingPolicy {
            tolerance: 1.0,
            ..d()
        });
        assert!(e.contains("scaling.tolerance"), "{e}");
        let e = invalid(ScalingPolicy {
            max_servers: 0,
            ..d()
        });
        assert!(e.contains("scaling.max_servers = 0"), "{e}");
        let e = invalid(ScalingPolicy {
            min_servers: 0,
            ..d()
        });
        assert!(e.contains("scaling.min_servers = 0"), "{e}");
        let e = invalid(ScalingPolicy {
            min_servers: 5,
            max_servers: 3,
            ..d()
        });
        assert!(
            e.contains("min_servers = 5 is above scaling.max_servers = 3"),
            "{e}"
        );
        let e = invalid(ScalingPolicy {
            max_failed_fraction: 1.5,
            ..d()
        });
        assert!(e.contains("scaling.max_failed_fraction = 1.5"), "{e}");
        let e = invalid(ScalingPolicy {
            margin: 0.75,
            ..d()
        });
        assert!(
            e.contains("scaling.margin = 0.75") && e.contains("margin < 0.75"),
            "{e}"
        );
        let e = invalid(ScalingPolicy {
            target: Some(0.5),
            margin: 0.5,
            ..d()
        });
        assert!(e.contains("margin < 0.5"), "{e}");
        let e = invalid(ScalingPolicy {
            drain_idle: Duration::from_secs(600),
            ..d()
        });
        assert!(e.contains("scaling.drain_idle"), "{e}");
    }

    #[derive(Debug, Deserialize)]
    struct File {
        service: Vec<Service>,
    }

    #[derive(Debug, Deserialize)]
    struct Service {
        #[expect(dead_code, reason = "only there to be parsed beside `scaling`")]
        name: String,
        #[serde(default)]
        scaling: ScalingPolicy,
    }

    #[test]
    fn parses_service_scaling_tables() {
        let file: File = toml::from_str(
            r#"
[[service]]
name = "web"

[service.scaling]
upper = 0.8
target = 0.6
trigger = "server"
scale_in_window = "5m"
cooldown = "200ms"
warmup = "1m 30s"
max_servers = 8

[[service]]
name = "dns"
"#,
        )
        .expect("parses");
        let web = &file.service[0].scaling;
        assert_eq!(web.upper, 0.8);
        assert_eq!(web.target, Some(0.6));
        assert_eq!(web.target(), 0.6);
        assert_eq!(web.trigger, Trigger::Server);
        assert_eq!(web.scale_in_window, Duration::from_secs(300));
        assert_eq!(web.cooldown, Duration::from_millis(200));
        assert_eq!(web.warmup, Duration::from_secs(90));
        assert_eq!(web.max_servers, 8);
        // Everything else is the default.
        assert_eq!(web.lower, 0.25);
        assert_eq!(web.scale_out_window, Duration::ZERO);
        assert_eq!(web.drain_timeout, Duration::from_secs(300));
        assert_eq!(web.drain_idle, Duration::from_secs(10));
        assert!(web.enabled);
        assert_eq!(web.validate(), Ok(()));
        assert_eq!(file.service[1].scaling, ScalingPolicy::default());
        assert_eq!(file.service[1].scaling.target(), 0.75);

        let e = toml::from_str::<File>(
            "[[service]]\nname = \"web\"\n[service.scaling]\ncoldown = \"5s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("coldown"), "{e}");
        let e = toml::from_str::<File>(
            "[[service]]\nname = \"web\"\n[service.scaling]\ncooldown = \"5 parsecs\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cooldown") || e.contains("parsecs"), "{e}");
        let e = toml::from_str::<File>(
            "[[service]]\nname = \"web\"\n[service.scaling]\ntrigger = \"Pool\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pool"), "{e}");
    }

    #[test]
    fn default_policy_round_trips_through_toml() {
        let text = toml::to_string(&ScalingPolicy::default()).expect("serializes");
        assert!(text.contains("scale_in_window = \"5m\""), "{text}");
        let back: ScalingPolicy = toml::from_str(&text).expect("parses");
        assert_eq!(back, ScalingPolicy::default());
    }
}
