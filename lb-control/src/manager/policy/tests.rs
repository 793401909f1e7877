//! Tests of the policy: simulated evaluations on a fake clock, and the
//! settings' validation and parsing.

use lb_proto::HealthState;
use serde::Deserialize;

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
fn a_spike_right_after_a_drain_is_answered_at_once() {
    let mut sim = Sim::new(ScalingPolicy::default());
    sim.state.record_drain(sim.at(100));
    let hot = view(vec![sim.member("s1", 0.95, 0)]);
    assert_eq!(allocated(&sim.eval(101, &hot)), ["f1"]);
    // A drain after a drain still waits for the cooldown.
    let mut sim = Sim::new(ScalingPolicy {
        scale_in_window: Duration::ZERO,
        warmup: Duration::ZERO,
        ..ScalingPolicy::default()
    });
    let idle = view(vec![
        sim.member("s1", 0.1, 0),
        sim.member("s2", 0.1, 0),
        sim.member("s3", 0.1, 0),
    ]);
    sim.state.record_drain(sim.at(100));
    assert_eq!(sim.eval(110, &idle), vec![]);
    assert_eq!(drained(&sim.eval(130, &idle)).len(), 1);
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

fn probe(state: HealthState, fail_streak: u32) -> lb_proto::Health {
    lb_proto::Health {
        state,
        rise: 2,
        fall: 3,
        ok_streak: u32::from(fail_streak == 0),
        fail_streak,
        detail: None,
    }
}

#[test]
fn timeouts_are_overload_when_hot_and_a_failure_when_idle() {
    use HealthState::{Down, Slow, Unknown, Up};
    let judge = |agent: Option<(HealthState, u32)>, manager: Option<(HealthState, u32)>, u| {
        judge_health(
            agent.map(|(s, f)| probe(s, f)).as_ref(),
            manager.map(|(s, f)| probe(s, f)).as_ref(),
            u,
            0.75,
        )
    };
    // Timeouts only, utilization at or above upper: overloaded, not failed.
    assert_eq!(judge(Some((Slow, 3)), None, Some(0.75)), Health::Slow);
    assert_eq!(judge(Some((Slow, 9)), None, Some(1.3)), Health::Slow);
    // The same timeouts on an idle server: a hang, a failure.
    assert_eq!(judge(Some((Slow, 3)), None, Some(0.2)), Health::Down);
    assert_eq!(judge(Some((Slow, 3)), None, None), Health::Down);
    assert_eq!(judge(Some((Slow, 3)), None, Some(f64::NAN)), Health::Down);
    // Recovering: the last probe answered; or a new streak, once the load
    // fell, is still shorter than `fall`.
    assert_eq!(judge(Some((Slow, 0)), None, Some(0.1)), Health::Up);
    assert_eq!(judge(Some((Slow, 2)), None, Some(0.1)), Health::Up);
    // Refusals and wrong answers fail whatever the load.
    assert_eq!(judge(Some((Down, 3)), None, Some(1.0)), Health::Down);
    // The manager's own probe is judged the same way, and the worse wins.
    assert_eq!(
        judge(Some((Up, 0)), Some((Slow, 3)), Some(0.9)),
        Health::Slow
    );
    assert_eq!(
        judge(Some((Up, 0)), Some((Slow, 3)), Some(0.3)),
        Health::Down
    );
    assert_eq!(
        judge(Some((Slow, 3)), Some((Down, 3)), Some(0.9)),
        Health::Down
    );
    assert_eq!(judge(Some((Up, 0)), Some((Up, 0)), Some(0.9)), Health::Up);
    assert_eq!(judge(None, Some((Up, 0)), Some(0.9)), Health::Unknown);
    assert_eq!(judge(Some((Unknown, 0)), None, None), Health::Unknown);
}

#[test]
fn a_slow_hot_member_is_never_failed_and_its_pool_grows() {
    let mut sim = Sim::new(ScalingPolicy::default());
    let slow = |m: Member| Member {
        health: Health::Slow,
        ..m
    };
    let v = view(vec![slow(sim.member("s1", 0.98, 0))]);
    let ds = sim.eval(30, &v);
    assert_eq!(failed(&ds), Vec::<&str>::new(), "{ds:?}");
    assert_eq!(allocated(&ds), ["f1"], "{ds:?}");
    let said = notices(&ds, NoticeKind::Slow);
    assert_eq!(said.len(), 1, "{ds:?}");
    assert!(said[0].contains("overloaded, not failed"), "{}", said[0]);
    // Said once while it lasts.
    let ds = sim.eval(35, &v);
    assert_eq!(notices(&ds, NoticeKind::Slow).len(), 0, "{ds:?}");
    assert_eq!(failed(&ds), Vec::<&str>::new(), "{ds:?}");
}

#[test]
fn replacement_below_min_skips_cooldown_and_windows() {
    let mut sim = Sim::new(ScalingPolicy {
        min_servers: 2,
        scale_out_window: Duration::from_mins(1),
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
fn no_unmonitored_notice_while_agents_reconnect_after_a_start() {
    let mut sim = Sim::new(ScalingPolicy::default());
    let mut pending = sim.member("s1", 0.5, 0);
    pending.monitored = false;
    let v = view(vec![pending]);
    // Within 3 intervals + the backoff after the start: quiet.
    assert_eq!(sim.eval(1, &v), vec![]);
    // Past it, the agent still silent: said once.
    let ds = sim.eval(30, &v);
    assert_eq!(notices(&ds, NoticeKind::Unmonitored).len(), 1, "{ds:?}");
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

fn invalid(p: ScalingPolicy) -> String {
    p.validate().expect_err("invalid policy").to_string()
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
        drain_idle: Duration::from_mins(10),
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
    assert_eq!(web.scale_in_window, Duration::from_mins(5));
    assert_eq!(web.cooldown, Duration::from_millis(200));
    assert_eq!(web.warmup, Duration::from_secs(90));
    assert_eq!(web.max_servers, 8);
    // Everything else is the default.
    assert_eq!(web.lower, 0.25);
    assert_eq!(web.scale_out_window, Duration::ZERO);
    assert_eq!(web.drain_timeout, Duration::from_mins(5));
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

/// The desired pool size follows the utilization the evaluation saw,
/// counts the members that serve without reporting, stays within
/// `min_servers..=max_servers`, and is absent while scaling is off.
#[test]
fn desired_servers_follow_the_load_within_the_bounds() {
    let mut sim = Sim::new(ScalingPolicy {
        max_servers: 4,
        ..ScalingPolicy::default()
    });
    assert_eq!(sim.state.desired_servers(), None, "before an evaluation");
    // 2 × 0.9 / 0.75 = 2.4: three servers.
    let hot = view(vec![sim.member("s1", 0.9, 0), sim.member("s2", 0.9, 0)]);
    sim.eval(0, &hot);
    assert_eq!(sim.state.desired_servers(), Some(3));
    // An unmonitored member keeps its place beside the three.
    let mut quiet = sim.member("s3", 0.0, 0);
    quiet.monitored = false;
    let mut with_quiet = hot.clone();
    with_quiet.members.push(quiet);
    sim.eval(1, &with_quiet);
    assert_eq!(sim.state.desired_servers(), Some(4));
    // 3 × 1.5 / 0.75 = 6, over max_servers.
    let burning = view(vec![
        sim.member("s1", 1.5, 0),
        sim.member("s2", 1.5, 0),
        sim.member("s3", 1.5, 0),
    ]);
    sim.eval(2, &burning);
    assert_eq!(sim.state.desired_servers(), Some(4));
    // Between the levels: the pool as it is.
    let calm = view(vec![sim.member("s1", 0.5, 0), sim.member("s2", 0.5, 0)]);
    sim.eval(3, &calm);
    assert_eq!(sim.state.desired_servers(), Some(2));
    // Idle: ceil(3 × 0.05 / 0.75) = 1, but min_servers 2.
    sim.policy.min_servers = 2;
    let idle = view(vec![
        sim.member("s1", 0.05, 0),
        sim.member("s2", 0.05, 0),
        sim.member("s3", 0.05, 0),
    ]);
    sim.eval(4, &idle);
    assert_eq!(sim.state.desired_servers(), Some(2));
    // No member reported yet: the pool as it is, at least min_servers.
    let mut unknown = sim.member("s1", 0.0, 0);
    unknown.utilization = None;
    sim.eval(5, &view(vec![unknown]));
    assert_eq!(sim.state.desired_servers(), Some(2));
    sim.policy.enabled = false;
    sim.eval(6, &hot);
    assert_eq!(sim.state.desired_servers(), None);
}
