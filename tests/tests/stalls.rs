//! End-to-end: an agent that stops reading its stream (its reader hung; it
//! goes on reporting, so it stays the best candidate) holds up nothing. The
//! allocation that picked it gives up within the ack timeout and the policy
//! takes the next candidate; meanwhile `lbctl pool`, `drain`, `deallocate`
//! and `allocate` answer at once. And a stream whose peer vanished without
//! a word is ended by the manager's keepalive.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lb_tests::{
    balancer::{Balancer, wait_until},
    fleet::{self, Fleet, ScaledService},
    require_root,
    scaling::{event_of, events, member, state_of},
};
use serde_json::Value;

const PORT: u16 = 80;
const INTERVAL_MS: u64 = 200;
/// How long the manager waits for an agent's settings (and a node's ack):
/// the window in which the stalled agent's allocation is in flight.
const ACK_TIMEOUT_MS: u64 = 6000;
/// Replacement only: the pool grows when `min_servers` rises, never
/// shrinks within the test, and weights stay as the file has them.
const SCALING: &str = "min_servers = 2\nupper = 0.95\nlower = 0.01\nscale_in_window = \"10m\"\n\
                       dynamic_weights = false";
/// The stalled server's CPU quota: twice the others', so the most idle
/// capacity of the free pool.
const STALLED_QUOTA: f64 = 0.4;

/// Runs `lbctl ARGS` and returns its answer and how long it took.
fn timed(bal: &Balancer, args: &[&str]) -> Result<(Value, Duration)> {
    let t0 = Instant::now();
    let v = bal.lbctl(args)?;
    Ok((v, t0.elapsed()))
}

fn functional_free(bal: &Balancer, server: &str) -> bool {
    member(bal, server).is_some_and(|m| m["state"] == "free" && m["monitor"] == "monitored")
}

#[test]
fn a_stalled_agent_holds_up_neither_the_policy_nor_the_operator() -> Result<()> {
    if !require_root("a_stalled_agent_holds_up_neither_the_policy_nor_the_operator") {
        return Ok(());
    }
    let quota = fleet::SERVER_QUOTA;
    let (lab, fleet) = Fleet::lab(&[quota, quota, STALLED_QUOTA, quota], PORT)?;
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, SCALING, 2),
    )
    .replace(
        "ack_timeout_ms = 3000",
        &format!("ack_timeout_ms = {ACK_TIMEOUT_MS}"),
    );
    let bal = Balancer::start(&lab, &config)?;
    let mut agents = Vec::new();
    for i in [0, 1, 3] {
        agents.push(fleet.start_agent(&lab, i, PORT, INTERVAL_MS)?);
    }
    let stalled_config = fleet.agent_config(&lab, 2, PORT, INTERVAL_MS);
    agents.push(fleet.start_agent_env(&lab, 2, &stalled_config, &["LB_AGENT_TEST_STALL=reads"])?);
    let ready = wait_until(Duration::from_secs(30), || {
        functional_free(&bal, "s3") && functional_free(&bal, "s4")
    });
    assert!(
        ready,
        "the free servers never reported: {:?}",
        bal.lbctl(&["pool"])
    );

    // The operator raises min_servers: the policy replaces at once, with
    // the most idle capacity first — the stalled s3.
    let after = events(&bal)
        .last()
        .and_then(|e| e["id"].as_u64())
        .unwrap_or(0);
    let text = std::fs::read_to_string(&bal.config_path)?;
    let raised = text.replace("min_servers = 2", "min_servers = 3");
    assert_ne!(raised, text);
    let tmp = bal.config_path.with_extension("tmp");
    std::fs::write(&tmp, raised)?;
    std::fs::rename(&tmp, &bal.config_path)?;
    let mut picked = None;
    wait_until(Duration::from_secs(20), || {
        picked = events(&bal)
            .into_iter()
            .find(|e| e["kind"] == "allocating" && e["id"].as_u64().unwrap_or(0) > after);
        picked.is_some()
    });
    let picked = picked.with_context(|| format!("no allocation: {:?}", events(&bal)))?;
    assert_eq!(picked["server"], "s3", "{picked}");
    let in_flight = Instant::now();

    // While s3's settings are awaited: every verb answers at once.
    let (pool, took) = timed(&bal, &["pool"])?;
    assert!(took < Duration::from_secs(1), "lbctl pool took {took:?}");
    assert!(
        pool["pools"].as_array().is_some_and(|p| !p.is_empty()),
        "{pool}"
    );
    for verb in ["drain", "deallocate", "allocate"] {
        let (v, took) = timed(&bal, &["server", verb, "s2"])?;
        assert!(
            took < Duration::from_secs(2),
            "lbctl server {verb} took {took:?}: {v}"
        );
    }
    assert_eq!(state_of(&bal, "s2"), "allocated");
    let failed = event_of(&events(&bal), "allocation-failed", Some("s3")).cloned();
    assert!(
        failed.is_none(),
        "the operator's verbs finished only after s3's allocation gave up: {failed:?}"
    );
    assert!(in_flight.elapsed() < Duration::from_millis(ACK_TIMEOUT_MS));

    // The allocation gives up on s3 within the ack timeout, and s4 is
    // taken next, without waiting for a cooldown.
    let mut failed = None;
    wait_until(Duration::from_millis(ACK_TIMEOUT_MS * 2), || {
        failed = event_of(&events(&bal), "allocation-failed", Some("s3")).cloned();
        failed.is_some()
    });
    let failed =
        failed.with_context(|| format!("s3's allocation never ended: {:?}", events(&bal)))?;
    let took = failed["duration_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(
        took < ACK_TIMEOUT_MS + 2000,
        "s3's allocation took {took} ms: {failed}"
    );
    let next = wait_until(Duration::from_secs(10), || {
        state_of(&bal, "s4") == "allocated"
    });
    assert!(next, "s4 was not taken after s3: {:?}", events(&bal));
    assert!(
        state_of(&bal, "s3").starts_with("free (held"),
        "{:?}",
        member(&bal, "s3")
    );
    let tries = events(&bal)
        .iter()
        .filter(|e| e["kind"] == "allocating" && e["server"] == "s3")
        .count();
    assert_eq!(tries, 1, "s3 was tried again at once: {:?}", events(&bal));
    drop(agents);
    Ok(())
}

/// Whether the manager holds a stream from `server`'s agent.
fn connected(bal: &Balancer, server: &str) -> Option<bool> {
    let v = bal.lbctl(&["server", "list"]).ok()?;
    v["monitors"]
        .as_array()?
        .iter()
        .find(|m| m["host"] == server)
        .and_then(|m| m["connected"].as_bool())
}

/// An agent whose path goes silent (its link down: no FIN, no reset ever
/// reaches the manager) is noticed by the keepalive on the manager's end
/// of the stream, and its session ended, within the keepalive's idle time
/// and probes (20 s + 4 × 5 s).
#[test]
fn a_stream_whose_peer_vanished_is_ended() -> Result<()> {
    if !require_root("a_stream_whose_peer_vanished_is_ended") {
        return Ok(());
    }
    let (lab, fleet) = Fleet::lab(&[fleet::SERVER_QUOTA], PORT)?;
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, "enabled = false", 1),
    );
    let bal = Balancer::start(&lab, &config)?;
    let _agent = fleet.start_agent(&lab, 0, PORT, INTERVAL_MS)?;
    assert!(
        wait_until(Duration::from_secs(20), || connected(&bal, "s1")
            == Some(true)),
        "s1 never connected: {:?}",
        bal.lbctl(&["server", "list"])
    );
    lab.servers[0]
        .ns
        .exec(&["ip", "link", "set", "eth0", "down"])?;
    let ended = wait_until(Duration::from_secs(70), || {
        connected(&bal, "s1") == Some(false)
    });
    assert!(
        ended,
        "the manager still holds the stream of an agent that vanished: {:?}",
        bal.lbctl(&["server", "list"])
    );
    Ok(())
}
