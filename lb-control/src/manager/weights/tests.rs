//! The weights' scale, slow start, and the law's convergence on a
//! simulated pool (fake clock, utilization that follows the share of new
//! flows with a lag).

use super::*;

fn input(name: &str, file_weight: u32, capacity: f64) -> MemberInput<'_> {
    MemberInput {
        name,
        file_weight,
        capacity,
        entered: None,
        report: None,
    }
}

const STATIC: WeightSettings = WeightSettings {
    dynamic: false,
    slow_start: Duration::ZERO,
    period: Duration::from_secs(2),
};

#[test]
fn static_weights_in_hundredths_build_the_file_table() {
    let t0 = Instant::now();
    let members = [
        input("s1", 10, 0.1),
        input("s2", 20, 0.2),
        input("s3", 40, 0.4),
    ];
    let w = ServiceWeights::default().in_force(&members, &STATIC, t0);
    assert_eq!(w.values().copied().collect::<Vec<_>>(), [1000, 2000, 4000]);
    let table = |weights: [u32; 3]| {
        let names = [b"s1", b"s2", b"s3"];
        let m: Vec<lb_common::maglev::Member<'_>> = names
            .iter()
            .zip(weights)
            .map(|(n, weight)| lb_common::maglev::Member {
                identity: &n[..],
                weight,
            })
            .collect();
        lb_common::maglev::build_table(&m, 65_537).expect("table")
    };
    assert_eq!(table([10, 20, 40]), table([1000, 2000, 4000]));
    assert_eq!(table([1, 1, 1]), table([100, 100, 100]));
    // Weight 0 stays 0: out of the table.
    let zero = ServiceWeights::default().in_force(&[input("s1", 0, 1.0)], &STATIC, t0);
    assert_eq!(zero["s1"], 0);
    assert_eq!(display_weight(1250, 100), "12.5");
    assert_eq!(display_weight(1200, 100), "12");
    assert_eq!(display_weight(7, 1), "7");
    assert_eq!(display_weight(1, 100), "0.01");
}

#[test]
fn an_entering_member_ramps_from_the_floor_to_its_fair_share() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let settings = WeightSettings {
        slow_start: Duration::from_secs(30),
        ..STATIC
    };
    let mut new = input("s2", 1, 0.2);
    new.entered = Some(t0);
    let members = [input("s1", 1, 0.2), new];
    let weights = ServiceWeights::default();
    let share = |s: u64| weights.in_force(&members, &settings, at(s))["s2"];
    // 10 % of its file share at once (never 0, never the others' full
    // weight), half-way at 15 s (10 + 90 / 2 = 55 %), all of it at 30 s.
    assert_eq!(share(0), 10);
    assert_eq!(share(15), 55);
    assert_eq!(share(30), 100);
    assert_eq!(share(300), 100);
    assert_eq!(weights.in_force(&members, &settings, at(0))["s1"], 100);
    // Slow start 0: in at once.
    assert_eq!(
        weights.in_force(&members, &STATIC, at(0))["s2"],
        100,
        "no ramp"
    );
}

#[test]
fn a_ramp_is_published_in_steps_a_second_apart() {
    let t0 = Instant::now();
    let settings = WeightSettings {
        slow_start: Duration::from_secs(10),
        ..STATIC
    };
    let mut new = input("s2", 1, 0.2);
    new.entered = Some(t0);
    let members = [input("s1", 1, 0.2), new];
    let mut weights = ServiceWeights::default();
    let mut published = Vec::new();
    for tick in 0..60 {
        let now = t0 + Duration::from_millis(250 * tick);
        let w = weights.in_force(&members, &settings, now);
        if weights.due(&w, &members, &settings, now) {
            published.push((tick, w["s2"]));
            weights.mark_published(w, now);
        }
    }
    // Once when it enters, then about once a second until the ramp is
    // over, then never again.
    assert_eq!(published.first(), Some(&(0, 10)));
    assert_eq!(published.last().map(|p| p.1), Some(100));
    assert!((9..=12).contains(&published.len()), "{published:?}");
    for pair in published.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= 4, "{published:?}");
    }
}

/// A pool whose utilization follows the weights: each member's share of
/// new flows is its share of the weights, its utilization moves toward
/// `load × share / capacity` (capped at 1, saturated) with a time constant
/// of `lag` (long-lived flows), reports every 200 ms.
struct Plant {
    capacity: Vec<f64>,
    file: Vec<u32>,
    load: f64,
    lag: Duration,
    utilization: Vec<f64>,
}

const NAMES: [&str; 3] = ["s1", "s2", "s3"];

impl Plant {
    /// Runs `seconds` of controller ticks (4 per report) with `settings`;
    /// returns the published weights over time and the final utilization.
    fn run(
        &mut self,
        settings: &WeightSettings,
        seconds: u64,
    ) -> (Vec<BTreeMap<String, u32>>, Vec<f64>) {
        let t0 = Instant::now();
        let tick = Duration::from_millis(50);
        let mut weights = ServiceWeights::default();
        let mut in_force: Vec<u32> = self.file.iter().map(|w| w * WEIGHT_SCALE).collect();
        let mut publications = Vec::new();
        let mut report_at = t0;
        for i in 0..(seconds * 20) {
            let now = t0 + tick * u32::try_from(i).expect("ticks");
            if i % 4 == 0 {
                report_at = now;
                let total: f64 = in_force.iter().map(|&w| f64::from(w)).sum();
                let alpha = 1.0 - (-0.2 / self.lag.as_secs_f64()).exp();
                for ((u, &w), capacity) in self
                    .utilization
                    .iter_mut()
                    .zip(&in_force)
                    .zip(&self.capacity)
                {
                    let share = if total > 0.0 {
                        f64::from(w) / total
                    } else {
                        1.0 / 3.0
                    };
                    let target = (self.load * share / capacity).min(1.0);
                    *u += alpha * (target - *u);
                }
            }
            let members: Vec<MemberInput<'_>> = (0..3)
                .map(|k| MemberInput {
                    name: NAMES[k],
                    file_weight: self.file[k],
                    capacity: self.capacity[k],
                    entered: None,
                    report: Some((report_at, self.utilization[k])),
                })
                .collect();
            weights.observe(&members, settings, now);
            let w = weights.in_force(&members, settings, now);
            if weights.due(&w, &members, settings, now) || publications.is_empty() {
                in_force = NAMES.iter().map(|n| w[*n]).collect();
                publications.push(w.clone());
                weights.mark_published(w, now);
            }
        }
        (publications, self.utilization.clone())
    }
}

fn max_over_mean(u: &[f64], capacity: &[f64]) -> f64 {
    let load: f64 = u.iter().zip(capacity).map(|(u, c)| u * c).sum();
    let mean = load / capacity.iter().sum::<f64>();
    u.iter().copied().fold(0.0, f64::max) / mean
}

/// Mean relative change of the weights from one publication to the next,
/// over a window of publications.
fn churn(publications: &[BTreeMap<String, u32>]) -> f64 {
    let steps: Vec<f64> = publications
        .windows(2)
        .flat_map(|p| {
            NAMES.iter().map(move |n| {
                let (a, b) = (f64::from(p[0][*n]), f64::from(p[1][*n]));
                ((b - a) / a).abs()
            })
        })
        .collect();
    steps.iter().sum::<f64>() / steps.len().max(1) as f64
}

#[test]
fn the_law_converges_on_equal_utilization_over_mixed_sizes() {
    let dynamic = WeightSettings {
        dynamic: true,
        ..STATIC
    };
    let capacity = vec![0.1, 0.2, 0.4];
    // 60 % of the total capacity, equal file weights: static weights leave
    // the small server saturated.
    let plant = |lag: f64| Plant {
        capacity: capacity.clone(),
        file: vec![1, 1, 1],
        load: 0.6 * 0.7,
        lag: Duration::from_secs_f64(lag),
        utilization: vec![0.0; 3],
    };
    let (_, u) = plant(1.0).run(&STATIC, 60);
    assert!(u[0] > 0.99, "static equal weights: {u:?}");
    for lag in [0.5, 2.0, 5.0] {
        let (publications, u) = plant(lag).run(&dynamic, 120);
        let ratio = max_over_mean(&u, &capacity);
        assert!(ratio <= 1.15, "lag {lag}: max/mean {ratio:.3}, {u:?}");
        // The weights settle: later publications change less than the
        // first ones, and the last ones hardly at all.
        let n = publications.len();
        println!("lag {lag}: {n} publications, utilization {u:?}: {publications:?}");
        assert!(n >= 3, "{publications:?}");
        let early = churn(&publications[..=(n / 2)]);
        let late = churn(&publications[n / 2..]);
        assert!(late < early, "lag {lag}: churn {early:.3} then {late:.3}");
        // Weights follow capacity: 0.1 : 0.2 : 0.4.
        let last = &publications[n - 1];
        let (w1, w3) = (f64::from(last["s1"]), f64::from(last["s3"]));
        assert!((w3 / w1 - 4.0).abs() < 1.0, "lag {lag}: {last:?}");
    }
}

#[test]
fn weights_right_from_the_start_stay_where_they_are() {
    let dynamic = WeightSettings {
        dynamic: true,
        ..STATIC
    };
    let mut plant = Plant {
        capacity: vec![0.1, 0.2, 0.4],
        file: vec![10, 20, 40],
        load: 0.6 * 0.7,
        lag: Duration::from_secs(1),
        utilization: vec![0.6; 3],
    };
    let (publications, u) = plant.run(&dynamic, 60);
    assert_eq!(publications.len(), 1, "{publications:?}");
    assert!(max_over_mean(&u, &plant.capacity) < 1.05, "{u:?}");
}

#[test]
fn an_entering_member_starts_at_the_others_scale_and_factors_resume() {
    let t0 = Instant::now();
    let dynamic = WeightSettings {
        dynamic: true,
        slow_start: Duration::from_secs(10),
        period: Duration::from_secs(2),
    };
    let mut factors = BTreeMap::new();
    factors.insert("s1".to_owned(), 2.0);
    factors.insert("s2".to_owned(), 0.5);
    factors.insert("gone".to_owned(), f64::NAN);
    let mut published = BTreeMap::new();
    published.insert("s1".to_owned(), 200);
    published.insert("s2".to_owned(), 50);
    let mut weights = ServiceWeights::resume(&factors, &published);
    assert_eq!(weights.factors().len(), 2, "a broken factor is dropped");
    let mut new = input("s3", 1, 1.0);
    new.entered = Some(t0);
    let members = [input("s1", 1, 1.0), input("s2", 1, 1.0), new];
    weights.observe(&members, &dynamic, t0);
    let w = weights.in_force(&members, &dynamic, t0);
    // The geometric mean of 2 and 0.5 is 1: s3's fair weight is 100, and it
    // enters at 10 % of that.
    assert_eq!((w["s1"], w["s2"], w["s3"]), (200, 50, 10));
    assert!(weights.due(&w, &members, &dynamic, t0), "a member came");
}
