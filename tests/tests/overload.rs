//! The scaling loop's core under real overload: servers in cgroups with a
//! CFS quota, agents with HTTP health probes on the servers' own CPU, fresh
//! connections at the VIP.
//!
//! - a saturated server answers its probes late: that is overload, never a
//!   failure, and its pool grows; a server whose application is killed is
//!   failed as before;
//! - a server that joins ramps up over `slow_start`: its share of new flows
//!   follows the ramp;
//! - dynamic weights converge on equal utilization over servers of
//!   different sizes instead of swinging.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lb_tests::{
    Lab, LabProcess,
    balancer::{Balancer, attach_peer_pass, wait_until},
    fleet::{self, Fleet, ScaledService},
    require_root,
    scaling::{events, finish_load, last_event_id, member, members_in, start_load, state_of},
};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const PORT: u16 = 80;
/// The servers' health endpoint, in the same process as the application.
const HEALTH_PORT: u16 = 8080;
const INTERVAL_MS: u64 = 200;
/// CPU each connection costs: at 0.2 CPU a server carries 50 a second.
const WORK_US: &str = "4000";

/// An HTTP probe of the server's own health endpoint: it shares the
/// application's CPU quota, so it answers late when the server is
/// saturated. Probe interval: the report interval (200 ms), the default.
fn http_probe() -> String {
    format!(
        "{{ kind = \"http\", port = {HEALTH_PORT}, path = \"/healthz\", address = \"127.0.0.1\" }}"
    )
}

/// Servers with a health endpoint; `single_worker`: they do their work
/// and answer their probe with one worker in arrival order, so that a
/// saturated one answers late.
fn lab_with_servers(n: usize, single_worker: bool) -> Result<(Lab, Fleet)> {
    let mut lab = Lab::builder().servers(n).build()?;
    lab.server_args = vec![
        "--work-us".into(),
        WORK_US.into(),
        "--http".into(),
        format!("0.0.0.0:{HEALTH_PORT}"),
    ];
    if single_worker {
        lab.server_args.push("--single-worker".into());
    }
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    Ok((lab, fleet))
}

fn start_agents(lab: &Lab, fleet: &Fleet) -> Result<Vec<LabProcess>> {
    (0..lab.servers.len())
        .map(|i| {
            let config = fleet.agent_config_probing(lab, i, PORT, INTERVAL_MS, &http_probe());
            fleet.start_agent_with(lab, i, &config)
        })
        .collect()
}

fn all_up(bal: &Balancer, servers: &[&str]) -> bool {
    servers
        .iter()
        .all(|s| member(bal, s).is_some_and(|m| m["health"] == "up" && m["monitor"] == "monitored"))
}

fn events_after(bal: &Balancer, after: u64) -> Vec<Value> {
    events(bal)
        .into_iter()
        .filter(|e| e["id"].as_u64().unwrap_or(0) > after)
        .collect()
}

/// The scaling settings of the overload tests; `max_servers` 1: no help.
fn overload_scaling(max_servers: u32) -> String {
    format!(
        "upper = 0.75\nlower = 0.25\nscale_out_window = \"0s\"\nscale_in_window = \"10m\"\n\
         cooldown = \"3s\"\nwarmup = \"2s\"\nmin_servers = 1\nmax_servers = {max_servers}"
    )
}

/// A manager's node serving `web` with s1 allocated, s2 and s3 free, and
/// agents probing over HTTP.
fn overload_lab(
    scaling: &str,
    single_worker: bool,
) -> Result<(Lab, Fleet, Balancer, Vec<LabProcess>, String)> {
    let (lab, fleet) = lab_with_servers(3, single_worker)?;
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, scaling, 1),
    );
    let bal = Balancer::start(&lab, &config)?;
    let agents = (0..lab.servers.len())
        .map(|i| {
            let config = fleet.agent_config_probing(&lab, i, PORT, INTERVAL_MS, &http_probe());
            fleet.start_agent_with(&lab, i, &config)
        })
        .collect::<Result<Vec<_>>>()?;
    assert!(
        wait_until(Duration::from_secs(30), || all_up(
            &bal,
            &["s1", "s2", "s3"]
        )),
        "agents not up: {:?}",
        lb_tests::scaling::pool(&bal)
    );
    Ok((lab, fleet, bal, agents, config))
}

fn is_slow_notice(e: &Value) -> bool {
    e["kind"] == "notice" && e["reason"].as_str().is_some_and(|r| r.starts_with("Slow"))
}

#[test]
fn saturated_server_is_slow_not_failed_and_its_pool_grows() -> Result<()> {
    if !require_root("saturated_server_is_slow_not_failed_and_its_pool_grows") {
        return Ok(());
    }
    // No help at first (max_servers 1); the default probe timeout.
    let (mut lab, _fleet, bal, _agents, config) = overload_lab(&overload_scaling(1), true)?;
    let after = last_event_id(&bal);

    // 1. 1.8 × s1's capacity for 15 s from many clients: its queue grows
    // past the probe timeout, its probes time out; it is slow, never
    // failed.
    let seconds = 15;
    let load = lb_tests::scaling::start_load_with(&lab, PORT, 65, seconds, 256)?;
    let until = Instant::now() + Duration::from_secs(u64::from(seconds));
    let mut states = Vec::new();
    let mut health = Vec::new();
    while Instant::now() < until {
        states.push(state_of(&bal, "s1"));
        health.push(
            member(&bal, "s1")
                .map(|m| m["health"].to_string())
                .unwrap_or_default(),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = finish_load(load, seconds)?;
    println!("s1's health as its agent reports it: {health:?}; load {report:?}");
    let seen = events_after(&bal, after);
    let failed: Vec<&Value> = seen.iter().filter(|e| e["kind"] == "failed").collect();
    let slow = seen.iter().filter(|e| is_slow_notice(e)).count();
    println!(
        "saturated, no help: failed verdicts {}, slow notices {slow}",
        failed.len()
    );
    assert!(failed.is_empty(), "overload taken for failure: {failed:?}");
    assert!(
        !states.iter().any(|s| s == "failed"),
        "s1 was failed while saturated: {states:?}"
    );
    assert!(
        slow >= 1,
        "s1's probes never timed out: no test of the judgement: {seen:?}"
    );

    // 2. Help allowed: the same overload grows the pool, and still fails
    // nobody.
    bal.reload(&config.replace("max_servers = 1", "max_servers = 3"))?;
    let after = last_event_id(&bal);
    let load = start_load(&lab, PORT, 65, 10)?;
    finish_load(load, 10)?;
    let seen = events_after(&bal, after);
    let allocations = seen.iter().filter(|e| e["kind"] == "allocated").count();
    println!("saturated, help allowed: allocations {allocations}");
    assert!(allocations >= 1, "the pool did not grow: {seen:?}");
    assert!(!seen.iter().any(|e| e["kind"] == "failed"), "{seen:?}");

    // 3. A killed application is a failure, as before: refusals count.
    lab.stop_process("s1");
    assert!(
        wait_until(Duration::from_secs(20), || state_of(&bal, "s1") == "failed"),
        "s1 not failed after its application was killed: {:?}",
        events(&bal)
    );
    let why = events(&bal)
        .into_iter()
        .rev()
        .find(|e| e["kind"] == "failed" && e["server"] == "s1")
        .context("no failed event")?;
    assert!(
        why["reason"]
            .as_str()
            .is_some_and(|r| r.contains("application health is down")),
        "{why}"
    );
    Ok(())
}

#[test]
fn a_spike_gets_exactly_the_server_it_needs() -> Result<()> {
    if !require_root("a_spike_gets_exactly_the_server_it_needs") {
        return Ok(());
    }
    // The documented settings otherwise: dynamic weights on, the default
    // probe timeout.
    let (_lab, _fleet, bal, _agents, _) = overload_lab(&overload_scaling(3), false)?;
    let lab = &_lab;
    let after = last_event_id(&bal);
    // Past one server and well within two: 37 fresh connections a second
    // (4 ms of work each, plus the kernel's and the thread's share: one
    // server reads 0.85–1.0 of its 0.2 CPU, two read 0.5–0.7), for 20 s.
    let seconds = 20;
    let load = start_load(lab, PORT, 37, seconds)?;
    let report = finish_load(load, seconds)?;
    let seen = events_after(&bal, after);
    let failed = seen.iter().filter(|e| e["kind"] == "failed").count();
    let allocations = seen.iter().filter(|e| e["kind"] == "allocated").count();
    let weights = seen.iter().filter(|e| e["kind"] == "weights").count();
    println!(
        "spike: failed verdicts {failed}, allocations {allocations}, weights events {weights}, load {report:?}"
    );
    for e in seen.iter().filter(|e| {
        ["allocating", "weights", "crossed"].contains(&e["kind"].as_str().unwrap_or_default())
    }) {
        println!("  {} {} {}", e["time_ms"], e["kind"], e["reason"]);
    }
    assert_eq!(failed, 0, "{seen:?}");
    // Exactly the one server the load needs: no weights event brings
    // another.
    assert_eq!(allocations, 1, "the pool should grow by one: {seen:?}");
    assert_eq!(
        members_in(&bal, "allocated").len(),
        2,
        "{:?}",
        lb_tests::scaling::pool(&bal)
    );
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    Ok(())
}

/// The ramp a member follows over `slow_start`: 10 % of its fair weight
/// when it enters, all of it after `slow_start` (see `scaling::weights`).
fn ramp(elapsed: Duration, slow_start: Duration) -> f64 {
    let done = (elapsed.as_secs_f64() / slow_start.as_secs_f64()).min(1.0);
    0.1 + 0.9 * done
}

#[test]
fn a_joining_server_ramps_up_over_slow_start() -> Result<()> {
    if !require_root("a_joining_server_ramps_up_over_slow_start") {
        return Ok(());
    }
    let mut lab = Lab::builder().servers(2).build()?;
    lab.server_args = vec!["--http".into(), format!("0.0.0.0:{HEALTH_PORT}")];
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    let slow_start = Duration::from_secs(10);
    // Nothing scales by itself here: the operator allocates s2.
    let scaling = "upper = 0.95\nlower = 0.01\nscale_out_window = \"0s\"\nscale_in_window = \"10m\"\n\
                   cooldown = \"1s\"\nwarmup = \"1s\"\nmin_servers = 1\nmax_servers = 2\n\
                   dynamic_weights = false\nslow_start = \"10s\"";
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, scaling, 1),
    );
    let bal = Balancer::start(&lab, &config)?;
    let _agents = start_agents(&lab, &fleet)?;
    assert!(
        wait_until(Duration::from_secs(30), || all_up(&bal, &["s1", "s2"])),
        "agents not up: {:?}",
        lb_tests::scaling::pool(&bal)
    );
    bal.lbctl(&["server", "allocate", "s2"])?;
    let t0 = Instant::now();
    // One burst of new connections a second; s2's share of each against
    // the ramp at the burst's middle: r / (1 + r) beside s1's weight 1.
    let mut rows = Vec::new();
    for second in 0..14u32 {
        let next = t0 + Duration::from_secs(u64::from(second));
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let from = t0.elapsed();
        let burst = lb_tests::balancer::burst_to_vip(&lab, PORT, 300)?;
        let mid = (from + t0.elapsed()) / 2;
        assert_eq!(burst.failed, 0, "{:?}", burst.errors);
        let share = burst.by_server.get("s2").copied().unwrap_or(0) as f64 / burst.ok as f64;
        let r = ramp(mid, slow_start);
        rows.push((mid, share, r / (1.0 + r)));
        if second == 3 {
            // The weight in force, in file units, beside the file's: in
            // `lbctl pool` and in the node's table.
            let m = member(&bal, "s2").context("s2 in the pool")?;
            let w = m["weight"].as_f64().context("s2's weight in force")?;
            assert!(w > 0.1 && w < 0.6 && m["file_weight"] == 1, "{m}");
            let list = bal.lbctl(&["server", "list"])?;
            let node = list["servers"]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["name"] == "s2"))
                .context("s2 in server list")?;
            let in_force: f64 = node["services"][0]["weight"]
                .as_str()
                .and_then(|w| w.parse().ok())
                .context("weight in force on the node")?;
            assert!(
                in_force > 0.1 && in_force < 0.6 && node["weight"] == 1,
                "{node}"
            );
        }
    }
    println!("slow start {slow_start:?}: t, s2's share of new flows, the ramp's share");
    for (t, share, want) in &rows {
        println!("  {:5.2} s  {share:.3}  {want:.3}", t.as_secs_f64());
    }
    for (t, share, want) in &rows {
        assert!(
            (share - want).abs() <= 0.1,
            "at {t:?}: share {share:.3}, ramp {want:.3}: {rows:?}"
        );
    }
    let (first, last) = (rows[0].1, rows[rows.len() - 1].1);
    assert!(
        (0.02..=0.2).contains(&first),
        "neither flooded nor starved at first: {first:.3}"
    );
    assert!(
        (0.4..=0.6).contains(&last),
        "its fair share at the end: {last:.3}"
    );
    Ok(())
}

/// One steady run over servers of 0.1, 0.2 and 0.4 CPU: utilization and
/// weights sampled after the settling time, the load's latency then.
#[derive(Debug)]
struct SteadyRun {
    /// Mean utilization per server over the measurement.
    utilization: Vec<f64>,
    /// Most / least weight in force per server over the measurement.
    weight_swing: Vec<f64>,
    p99_ms: f64,
    failed_verdicts: usize,
}

impl SteadyRun {
    /// Max over the capacity-weighted mean utilization.
    fn max_over_mean(&self) -> f64 {
        let load: f64 = self
            .utilization
            .iter()
            .zip(QUOTAS)
            .map(|(u, c)| u * c)
            .sum();
        let mean = load / QUOTAS.iter().sum::<f64>();
        self.utilization.iter().copied().fold(0.0, f64::max) / mean
    }
}

const QUOTAS: [f64; 3] = [0.1, 0.2, 0.4];

fn steady_run(
    file_weights: [u32; 3],
    dynamic: bool,
    settle: u32,
    measure: u32,
) -> Result<SteadyRun> {
    let mut lab = Lab::builder().servers(3).build()?;
    lab.server_args = vec![
        "--work-us".into(),
        WORK_US.into(),
        "--http".into(),
        format!("0.0.0.0:{HEALTH_PORT}"),
    ];
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::with_quotas(&mut lab, &QUOTAS)?;
    // Three servers, all allocated, none to add or drain.
    let scaling = format!(
        "upper = 0.95\nlower = 0.01\nscale_in_window = \"10m\"\nmin_servers = 3\nmax_servers = 3\n\
         dynamic_weights = {dynamic}"
    );
    let mut config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, &scaling, 3),
    );
    for (name, weight) in ["s1", "s2", "s3"].iter().zip(file_weights) {
        let line = format!("name = \"{name}\"\n");
        config = config.replacen(&line, &format!("{line}weight = {weight}\n"), 1);
    }
    let bal = Balancer::start(&lab, &config)?;
    let _agents = start_agents(&lab, &fleet)?;
    assert!(
        wait_until(Duration::from_secs(30), || all_up(
            &bal,
            &["s1", "s2", "s3"]
        )),
        "agents not up: {:?}",
        lb_tests::scaling::pool(&bal)
    );
    let after = last_event_id(&bal);
    // 60 % of the total capacity (0.7 CPU at about 5.5 ms a connection).
    let rate = 75;
    let settling = start_load(&lab, PORT, rate, settle)?;
    finish_load(settling, settle)?;
    let load = start_load(&lab, PORT, rate, measure)?;
    let until = Instant::now() + Duration::from_secs(u64::from(measure));
    let mut utilization = vec![Vec::new(); 3];
    let mut weights = vec![Vec::new(); 3];
    while Instant::now() < until {
        for (k, name) in ["s1", "s2", "s3"].iter().enumerate() {
            if let Some(m) = member(&bal, name) {
                if let Some(u) = m["utilization"].as_f64() {
                    utilization[k].push(u);
                }
                if let Some(w) = m["weight"].as_f64() {
                    weights[k].push(w);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let report = finish_load(load, measure)?;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let failed_verdicts = events(&bal)
        .iter()
        .filter(|e| e["kind"] == "failed" && e["id"].as_u64().unwrap_or(0) > after)
        .count();
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let swing = |v: &Vec<f64>| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &w| (lo.min(w), hi.max(w)));
        if v.is_empty() { 1.0 } else { hi / lo.max(1e-9) }
    };
    Ok(SteadyRun {
        utilization: utilization.iter().map(mean).collect(),
        weight_swing: weights.iter().map(swing).collect(),
        p99_ms: report.p99_ms,
        failed_verdicts,
    })
}

#[test]
fn dynamic_weights_converge_over_mixed_server_sizes() -> Result<()> {
    if !require_root("dynamic_weights_converge_over_mixed_server_sizes") {
        return Ok(());
    }
    let capacity = steady_run([10, 20, 40], false, 10, 30)?;
    let dynamic = steady_run([10, 20, 40], true, 10, 30)?;
    let equal = steady_run([1, 1, 1], false, 10, 20)?;
    let learnt = steady_run([1, 1, 1], true, 45, 30)?;
    for (what, run) in [
        ("static capacity weights 10/20/40", &capacity),
        ("dynamic weights from 10/20/40", &dynamic),
        ("static equal weights", &equal),
        ("dynamic weights from equal file weights", &learnt),
    ] {
        println!(
            "{what}: utilization {:.2?}, max/mean {:.2}, weight swing {:.2?}, p99 {:.0} ms, failed verdicts {}",
            run.utilization,
            run.max_over_mean(),
            run.weight_swing,
            run.p99_ms,
            run.failed_verdicts
        );
    }
    for run in [&dynamic, &learnt] {
        assert!(run.max_over_mean() <= 1.15, "{run:?}");
        assert!(
            run.weight_swing.iter().all(|&s| s <= 1.3),
            "weights still swing: {run:?}"
        );
        assert_eq!(run.failed_verdicts, 0, "{run:?}");
        assert!(
            run.p99_ms <= capacity.p99_ms * 1.25 + 20.0,
            "p99 {:.0} ms against {:.0} ms with static capacity weights",
            run.p99_ms,
            capacity.p99_ms
        );
    }
    assert_eq!(capacity.failed_verdicts + equal.failed_verdicts, 0);
    // Equal weights leave the small server overloaded.
    assert!(
        equal.max_over_mean() > 1.3,
        "equal weights should overload the 0.1 CPU server: {equal:?}"
    );
    Ok(())
}
