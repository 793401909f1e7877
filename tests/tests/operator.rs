//! End-to-end: what the operator reads from `lbctl` on a node that runs the
//! manager — every server of the file in `lbctl pool`, the live pool state
//! in `lbctl server list`, and plainly named generations.

use anyhow::{Context as _, Result};
use lb_tests::{
    Lab,
    balancer::{Balancer, attach_peer_pass},
    fleet::{self, Fleet, ScaledService},
    require_root,
};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const PORT: u16 = 80;
const INTERVAL_MS: u64 = 200;
/// Health decisions only: no pool growth or shrinking, no weight changes,
/// so every change in the test is the operator's.
const SCALING: &str = "enabled = false\ndynamic_weights = false";

/// Three servers with agents' certificates and cgroups (no agent started
/// yet); s1 allocated, s2 and s3 free.
fn build() -> Result<(Lab, Fleet, Balancer)> {
    let mut lab = Lab::builder().servers(3).build()?;
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    let config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService {
            port: PORT,
            interval_ms: INTERVAL_MS,
            scaling: SCALING,
            manager_keys: "",
            remote_nodes: &[],
            allocated: 1,
        },
    );
    let bal = Balancer::start(&lab, &config)?;
    Ok((lab, fleet, bal))
}

/// The `web` pool's members and free servers, by name: (state, monitor).
fn pool_rows(bal: &Balancer) -> Result<Vec<(String, String, String)>> {
    let v = bal.lbctl(&["pool"])?;
    let web = v["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["service"] == "web"))
        .with_context(|| format!("no web pool: {v}"))?;
    let mut rows = Vec::new();
    for list in ["members", "free"] {
        for m in web[list].as_array().into_iter().flatten() {
            rows.push((
                m["server"].as_str().unwrap_or_default().to_owned(),
                m["state"].as_str().unwrap_or_default().to_owned(),
                m["monitor"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    rows.sort();
    Ok(rows)
}

/// `lbctl pool` lists every server of the file, also those whose agent
/// never connected.
#[test]
fn pool_lists_servers_whose_agent_never_connected() -> Result<()> {
    if !require_root("pool_lists_servers_whose_agent_never_connected") {
        return Ok(());
    }
    let (_lab, _fleet, bal) = build()?;
    let rows = pool_rows(&bal)?;
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["s1", "s2", "s3"], "{rows:?}");
    for (server, state, monitor) in &rows {
        assert_eq!(monitor, "never connected", "{server}: {rows:?}");
        let expected = if server == "s1" { "allocated" } else { "free" };
        assert!(state.starts_with(expected), "{server} {state}: {rows:?}");
    }
    let text = bal.lbctl_text(&["pool"])?;
    for server in ["s1", "s2", "s3"] {
        assert!(
            text.lines()
                .any(|l| l.contains(server) && l.contains("never connected")),
            "{server} not shown:\n{text}"
        );
    }
    Ok(())
}
