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

fn lab_with_servers(n: usize) -> Result<(Lab, Fleet)> {
    let mut lab = Lab::builder().servers(n).build()?;
    lab.server_args = vec![
        "--work-us".into(),
        WORK_US.into(),
        "--http".into(),
        format!("0.0.0.0:{HEALTH_PORT}"),
    ];
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

#[test]
fn saturated_server_is_slow_not_failed_and_its_pool_grows() -> Result<()> {
    if !require_root("saturated_server_is_slow_not_failed_and_its_pool_grows") {
        return Ok(());
    }
    let (mut lab, fleet) = lab_with_servers(3)?;
    let scaling = "upper = 0.75\nlower = 0.25\nscale_out_window = \"0s\"\nscale_in_window = \"10m\"\n\
                   cooldown = \"3s\"\nwarmup = \"2s\"\nmin_servers = 1\nmax_servers = 3\n\
                   dynamic_weights = false";
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService {
            port: PORT,
            interval_ms: INTERVAL_MS,
            scaling,
            manager_keys: "agent_backoff_ms = 500",
            remote_nodes: &[],
            allocated: 1,
        },
    );
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

    // 1.3 × one server's capacity, fresh connections, for 20 s: s1 is
    // pushed past its quota until help arrives.
    let seconds = 20;
    let load = start_load(&lab, PORT, 65, seconds)?;
    let until = Instant::now() + Duration::from_secs(u64::from(seconds));
    let mut states = Vec::new();
    while Instant::now() < until {
        states.push(state_of(&bal, "s1"));
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = finish_load(load, seconds)?;
    let seen = events_after(&bal, after);
    let failed: Vec<&Value> = seen.iter().filter(|e| e["kind"] == "failed").collect();
    let slow = seen
        .iter()
        .filter(|e| {
            e["kind"] == "notice" && e["reason"].as_str().is_some_and(|r| r.starts_with("Slow"))
        })
        .count();
    let allocations = seen.iter().filter(|e| e["kind"] == "allocated").count();
    println!(
        "overload: failed verdicts {}, slow notices {slow}, allocations {allocations}, load {report:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "overload taken for failure: {failed:?}");
    assert!(
        !states.iter().any(|s| s == "failed"),
        "s1 was failed while saturated: {states:?}"
    );
    assert!(allocations >= 1, "the pool did not grow: {seen:?}");
    assert!(
        members_in(&bal, "allocated").len() >= 2,
        "{:?}",
        lb_tests::scaling::pool(&bal)
    );

    // 2. A killed application is a failure, as before: refusals count.
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
