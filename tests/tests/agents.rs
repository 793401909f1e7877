//! End-to-end: real `lb-agent` processes in the lab's server namespaces,
//! each server in a cgroup of its own with a CFS quota, streaming over
//! mutual TLS to the manager inside a real `lb-control`.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use lb_tests::{
    Lab, LabProcess,
    balancer::{Balancer, LAB_SEED, attach_peer_pass, burst_to_vip, wait_until},
    fleet::{Fleet, MANAGER_PORT},
    require_root,
    scaling::monitor,
};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const PORT: u16 = 80;
const INTERVAL_MS: u64 = 200;

fn node_config(lab: &Lab, pki: &Path) -> String {
    let mut c = format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {LAB_SEED}\n\n\
         [limits]\nmax_services = 4\nmax_backends = 16\nflow_table_size = 4096\n\n\
         [manager]\nlisten = \"{}:{MANAGER_PORT}\"\nname = \"manager\"\ntls_dir = \"{}\"\nreport_interval_ms = {INTERVAL_MS}\nstate_dir = \"{{state_dir}}\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{}\"\nport = {PORT}\n\n",
        lab.node.eth0.v4,
        pki.display(),
        lab.vip4()
    );
    for h in &lab.servers {
        c += &format!(
            "[[server]]\nname = \"{}\"\naddress = \"{}\"\nservices = [\"web\"]\n\n",
            h.name, h.eth0.v4
        );
    }
    c
}

fn build() -> Result<(Lab, Fleet)> {
    let mut lab = Lab::builder().servers(3).build()?;
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    Ok((lab, fleet))
}

fn monitored(bal: &Balancer, host: &str) -> bool {
    monitor(bal, host).is_some_and(|m| m["monitor"] == "monitored")
}

fn utilization(bal: &Balancer, host: &str) -> f64 {
    monitor(bal, host)
        .and_then(|m| m["utilization"].as_f64())
        .unwrap_or(-1.0)
}

#[test]
fn agents_report_real_load_and_survive_restarts() -> Result<()> {
    if !require_root("agents_report_real_load_and_survive_restarts") {
        return Ok(());
    }
    let (lab, fleet) = build()?;
    let lab = &lab;
    let mut bal = Balancer::start(lab, &node_config(lab, fleet.pki_dir()))?;
    let mut agents: Vec<Option<LabProcess>> = (0..3)
        .map(|i| fleet.start_agent(lab, i, PORT, INTERVAL_MS).map(Some))
        .collect::<Result<_>>()?;
    for h in &lab.servers {
        assert!(
            wait_until(Duration::from_secs(20), || monitored(&bal, &h.name)),
            "{} never monitored: {:?}",
            h.name,
            bal.lbctl(&["server", "list"])
        );
    }
    // Health needs `rise` probes in a row before it says up.
    assert!(wait_until(Duration::from_secs(10), || {
        monitor(&bal, "s1").is_some_and(|m| m["health"] == "up")
    }));
    let m = monitor(&bal, "s1").context("s1")?;
    assert_eq!(m["ready"], true, "{m}");
    assert_eq!(m["source"], "cgroup-cpu");
    assert!(
        (m["cores"].as_f64().unwrap_or(0.0) - 0.2).abs() < 1e-6,
        "{m}"
    );

    // Burn CPU in s2's cgroup only: only s2 rises.
    let burner = lab.servers[1]
        .ns
        .spawn(&["sh", "-c", "while :; do :; done"])?;
    fleet.cgroups[1].1.add_pid(burner.pid())?;
    let hot = wait_until(Duration::from_secs(15), || {
        utilization(&bal, "s2") > 0.7
            && utilization(&bal, "s1") < 0.3
            && utilization(&bal, "s3") < 0.3
    });
    assert!(
        hot,
        "s1 {} s2 {} s3 {}",
        utilization(&bal, "s1"),
        utilization(&bal, "s2"),
        utilization(&bal, "s3")
    );
    drop(burner);
    assert!(wait_until(Duration::from_secs(15), || utilization(
        &bal, "s2"
    ) < 0.3));

    // Kill s1's agent: s1 is unmonitored, not failed — it keeps serving.
    agents[0] = None;
    assert!(wait_until(Duration::from_secs(10), || {
        monitor(&bal, "s1").is_some_and(|m| m["monitor"] == "unmonitored")
    }));
    let burst = burst_to_vip(lab, PORT, 300)?;
    assert_eq!(burst.failed, 0, "{:?}", burst.errors);
    assert!(
        burst.by_server.get("s1").is_some_and(|n| *n > 0),
        "s1 still serves: {:?}",
        burst.by_server
    );
    agents[0] = Some(fleet.start_agent(lab, 0, PORT, INTERVAL_MS)?);
    assert!(wait_until(Duration::from_secs(20), || monitored(
        &bal, "s1"
    )));

    // Restart the manager (kill -9): agents reconnect, nothing duplicated.
    let before = monitor(&bal, "s3")
        .and_then(|m| m["reports"].as_u64())
        .unwrap_or(0);
    assert!(before > 0);
    bal.kill9()?;
    std::thread::sleep(Duration::from_millis(500));
    bal.launch()?;
    for h in &lab.servers {
        assert!(
            wait_until(Duration::from_secs(30), || monitored(&bal, &h.name)),
            "{} did not come back after the manager restart",
            h.name
        );
    }
    // Nothing duplicated: every report the restarted manager gets is new
    // to it (a replayed or repeated one would count as stale or rejected),
    // and reports keep arriving at the agents' rate.
    std::thread::sleep(Duration::from_secs(2));
    let stats = bal.lbctl(&["stats"])?;
    let m = &stats["manager"];
    assert_eq!(m["reports_stale"], 0, "{m}");
    assert_eq!(m["messages_rejected"], 0, "{m}");
    for h in &lab.servers {
        let n = monitor(&bal, &h.name)
            .and_then(|m| m["reports"].as_u64())
            .unwrap_or(0);
        assert!(n >= 5, "{}: {n} reports in 2 s after the restart", h.name);
    }
    let burst = burst_to_vip(lab, PORT, 100)?;
    assert_eq!(burst.failed, 0, "{:?}", burst.errors);
    drop(agents);
    Ok(())
}
