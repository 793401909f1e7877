//! End-to-end autoscaling: two balancer nodes (the manager's own, and one
//! on another host driven over mutual TLS), three servers each in a cgroup
//! with a CFS quota of 0.2 CPU and an agent, real load at the VIP.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use lb_proto::tls::{Role, SanEntry};
use lb_tests::{
    HoldSession, Lab, LabProcess,
    balancer::{Balancer, LAB_SEED, attach_peer_pass, wait_until},
    fleet::{Fleet, MANAGER_PORT},
    proto::LoadReport,
    require_root,
};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_lab-client");
const PORT: u16 = 80;
const NODE_PORT: u16 = 7301;
const INTERVAL_MS: u64 = 200;
/// CPU each connection costs its server: at 0.2 CPU a server carries 50
/// connections a second.
const WORK_US: &str = "4000";
/// Connections a second of the load: about 0.22 CPU, past one server's
/// 0.2 and well within two.
const LOAD_RATE: u32 = 40;

fn scaling_section() -> &'static str {
    "[service.scaling]\nupper = 0.75\nlower = 0.25\nscale_out_window = \"0s\"\nscale_in_window = \"3s\"\n\
     cooldown = \"2s\"\nwarmup = \"2s\"\nmin_servers = 1\nmax_servers = 3\ndrain_idle = \"2s\"\ndrain_timeout = \"10s\"\n\n"
}

/// The manager's node: s1 allocated, s2 and s3 in the free pool.
fn manager_config(lab: &Lab, pki: &Path) -> String {
    let node2 = lab.node2.as_ref().map(|h| h.eth0.v4);
    let mut c = format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {LAB_SEED}\n\n\
         [limits]\nmax_services = 4\nmax_backends = 16\nflow_table_size = 4096\n\n\
         # The manager of this lab.\n\
         [manager]\nlisten = \"{}:{MANAGER_PORT}\"\nname = \"manager\"\ntls_dir = \"{}\"\nreport_interval_ms = {INTERVAL_MS}\n\
         state_dir = \"{{state_dir}}\"\nack_timeout_ms = 3000\n\n",
        lab.node.eth0.v4,
        pki.display(),
    );
    if let Some(n2) = node2 {
        c += &format!("[[manager.node]]\nname = \"node2\"\naddress = \"{n2}:{NODE_PORT}\"\n\n");
    }
    c += &format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = {PORT}\n",
        lab.vip4()
    );
    c += scaling_section();
    for (i, h) in lab.servers.iter().enumerate() {
        let state = if i == 0 { "allocated" } else { "free" };
        c += &format!(
            "# {} is a lab server.\n[[server]]\nname = \"{}\"\naddress = \"{}\"\nservices = [\"web\"]\nstate = \"{state}\"\n\n",
            h.name, h.name, h.eth0.v4
        );
    }
    c
}

/// The remote node: no services of its own, everything from the manager.
fn node2_config(lab: &Lab, pki: &Path) -> Result<String> {
    let n2 = lab.node2.as_ref().context("no node2")?;
    Ok(format!(
        "[node]\ninterfaces = [\"eth0\"]\npin_dir = \"{{pin_dir}}\"\nsocket = \"{{socket}}\"\nhash_seed = {LAB_SEED}\n\
         state_dir = \"{{state_dir}}\"\n\n\
         [node.control]\nlisten = \"{}:{NODE_PORT}\"\nname = \"node2\"\ntls_dir = \"{}\"\nmanagers = [\"manager\"]\n\n\
         [limits]\nmax_services = 4\nmax_backends = 16\nflow_table_size = 4096\n",
        n2.eth0.v4,
        pki.display()
    ))
}

fn build() -> Result<(Lab, Fleet)> {
    let mut lab = Lab::builder().servers(3).second_node(true).build()?;
    lab.server_args = vec!["--work-us".into(), WORK_US.into()];
    lab.start_servers(SERVER, &[PORT], &[])?;
    attach_peer_pass(&mut lab)?;
    let fleet = Fleet::new(&mut lab)?;
    let n2 = lab.node2.as_ref().context("no node2")?.eth0.v4;
    fleet.issue("node2", Role::Server, &[SanEntry::Ip(IpAddr::V4(n2))])?;
    Ok((lab, fleet))
}

/// `lbctl pool --json`: the members and free servers of `web`.
fn pool(bal: &Balancer) -> Option<Value> {
    let v = bal.lbctl(&["pool"]).ok()?;
    v["pools"].as_array()?.first().cloned()
}

fn members_in(bal: &Balancer, state: &str) -> Vec<String> {
    pool(bal)
        .and_then(|p| {
            p["members"].as_array().map(|m| {
                m.iter()
                    .filter(|x| x["state"] == state)
                    .filter_map(|x| x["server"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn events(bal: &Balancer) -> Vec<Value> {
    bal.lbctl(&["events"])
        .ok()
        .and_then(|v| v["events"].as_array().cloned())
        .unwrap_or_default()
}

fn event_of<'a>(events: &'a [Value], kind: &str, server: Option<&str>) -> Option<&'a Value> {
    events
        .iter()
        .rev()
        .find(|e| e["kind"] == kind && server.is_none_or(|s| e["server"] == s))
}

/// The `[[server]]` table of `name` in a config file's text.
fn server_block<'a>(text: &'a str, name: &str) -> Result<&'a str> {
    text.split("[[server]]")
        .find(|b| b.contains(&format!("name = \"{name}\"")))
        .with_context(|| format!("no [[server]] {name} in {text}"))
}

/// The servers node2 has programmed for `web`, with their state.
fn node2_backends(bal: &Balancer) -> Vec<(String, String)> {
    let Ok(v) = bal.lbctl(&["server", "list"]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in v["servers"].as_array().into_iter().flatten() {
        for b in s["services"].as_array().into_iter().flatten() {
            if b["service"] == "web" {
                out.push((
                    s["name"].as_str().unwrap_or_default().to_owned(),
                    b["state"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn start_load(lab: &Lab, rate: u32, seconds: u32) -> Result<LabProcess> {
    let target = lab.vip4_addr(PORT).to_string();
    let (r, s) = (rate.to_string(), seconds.to_string());
    lab.client.ns.spawn(&[
        CLIENT,
        "load",
        "--target",
        &target,
        "--rate",
        &r,
        "--seconds",
        &s,
    ])
}

fn finish_load(mut p: LabProcess, seconds: u32) -> Result<LoadReport> {
    let line = p.read_line(Duration::from_secs(u64::from(seconds) + 30))?;
    serde_json::from_str(&line).with_context(|| format!("load report {line:?}"))
}

fn ready(bal: &Balancer) -> bool {
    pool(bal).is_some_and(|p| {
        let up = |list: &Value| {
            list.as_array().is_some_and(|l| {
                !l.is_empty()
                    && l.iter()
                        .all(|m| m["health"] == "up" && m["monitor"] == "monitored")
            })
        };
        up(&p["members"])
            && up(&p["free"])
            && p["free"].as_array().is_some_and(|f| f.len() == 2)
            && p["free"]
                .as_array()
                .is_some_and(|f| f.iter().all(|m| m["state"] == "free"))
    })
}

#[test]
fn hot_server_gets_help_and_idle_one_goes_back() -> Result<()> {
    if !require_root("hot_server_gets_help_and_idle_one_goes_back") {
        return Ok(());
    }
    let (lab, fleet) = build()?;
    let lab = &lab;
    let pki = fleet.pki_dir();
    let node2_host = lab.node2.as_ref().context("node2")?;
    let node2 = Balancer::start_on(lab, node2_host, &node2_config(lab, pki)?)?;
    let bal = Balancer::start(lab, &manager_config(lab, pki))?;
    let _agents: Vec<LabProcess> = (0..3)
        .map(|i| fleet.start_agent(lab, i, PORT, INTERVAL_MS))
        .collect::<Result<_>>()?;

    // The manager sends the file to both nodes at start.
    assert!(
        wait_until(Duration::from_secs(20), || {
            node2_backends(&node2) == vec![("s1".to_owned(), "active".to_owned())]
        }),
        "node2 never got the pool: {:?} / events {:?}",
        node2_backends(&node2),
        events(&bal)
    );
    assert!(
        wait_until(Duration::from_secs(30), || ready(&bal)),
        "agents not all monitored and healthy: {:?}",
        pool(&bal)
    );

    // 1. Load past s1's capacity (about 40 × 5.5 ms of CPU a second against
    // 0.2 CPU): a free server joins.
    let load = start_load(lab, LOAD_RATE, 20)?;
    let grown = wait_until(Duration::from_secs(30), || {
        members_in(&bal, "allocated").len() >= 2
    });
    assert!(grown, "no allocation: {:?} {:?}", pool(&bal), events(&bal));
    let ev = events(&bal);
    let allocated = ev
        .iter()
        .find(|e| e["kind"] == "allocated")
        .context("no allocated event")?;
    let added = allocated["server"].as_str().context("server")?.to_owned();
    assert!(
        allocated["generation"].as_u64().is_some(),
        "allocation without a generation: {allocated}"
    );
    let crossed = ev
        .iter()
        .find(|e| e["kind"] == "crossed" && e["server"] == "s1")
        .context("no crossing event")?;
    // Recorded in the file, with its settings and pinned identity.
    let text = std::fs::read_to_string(&bal.config_path)?;
    assert!(text.contains("# The manager of this lab."), "comments kept");
    let block = server_block(&text, &added)?;
    assert!(block.contains("state = \"allocated\""), "{block}");
    assert!(block.contains("mac = \""), "{block}");
    assert!(block.contains("fingerprint = \""), "{block}");
    // Both nodes have it.
    assert!(
        wait_until(Duration::from_secs(5), || node2_backends(&node2)
            .iter()
            .any(|(s, st)| s == &added && st == "active")),
        "node2: {:?}",
        node2_backends(&node2)
    );
    let report = finish_load(load, 20)?;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let first = report
        .first_seen_ms
        .get(&added)
        .copied()
        .context("the new server never answered")?;
    let crossed_at = crossed["observed_ms"].as_u64().context("observed_ms")?;
    eprintln!(
        "threshold crossing (report arrival) -> first new flow on {added}: {} ms; by server {:?}",
        first.saturating_sub(crossed_at),
        report.by_server
    );

    // 2. Idle: after the scale-in window the extra servers drain one by
    // one; held connections to a draining server keep working, and its
    // drain waits for them.
    let mut held = Some(HoldSession::start(
        &lab.client.ns,
        CLIENT,
        lab.vip4_addr(PORT),
        30,
        21000,
    )?);
    let mut waited_for_connections = false;
    let mut released = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while members_in(&bal, "allocated").len() + members_in(&bal, "draining").len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "pool never shrank: {:?} {:?}",
            pool(&bal),
            events(&bal)
        );
        let Some(draining) = members_in(&bal, "draining").first().cloned() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if let Some(h) = held.as_mut() {
            let ping = h.ping()?;
            assert_eq!(
                ping.dead, 0,
                "held connections broke at the drain: {ping:?}"
            );
            if ping.servers.iter().flatten().any(|s| s == &draining) {
                std::thread::sleep(Duration::from_secs(3));
                assert!(
                    members_in(&bal, "draining").contains(&draining),
                    "the drain of {draining} ended while its connections were open: {:?}",
                    events(&bal)
                );
                let ping = h.ping()?;
                assert_eq!(ping.dead, 0, "{ping:?}");
                waited_for_connections = true;
                // The client finishes its connections.
                if let Some(h) = held.take() {
                    h.quit()?;
                }
            }
        }
        assert!(
            wait_until(Duration::from_secs(20), || {
                event_of(&events(&bal), "deallocated", Some(&draining)).is_some()
            }),
            "{draining} not deallocated: {:?}",
            events(&bal)
        );
        let ev = events(&bal);
        let dealloc = event_of(&ev, "deallocated", Some(&draining)).context("event")?;
        assert!(
            dealloc["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no connection")),
            "{dealloc}"
        );
        let text = std::fs::read_to_string(&bal.config_path)?;
        assert!(
            server_block(&text, &draining)?.contains("state = \"free\""),
            "{text}"
        );
        released.push(draining);
    }
    assert!(
        waited_for_connections,
        "no drained server ({released:?}) had a held connection"
    );
    if let Some(h) = held.take() {
        h.quit()?;
    }
    // Let the cooldown pass before the next spike.
    std::thread::sleep(Duration::from_secs(3));

    // 3. The next spike allocates again from the free pool.
    let before = events(&bal)
        .iter()
        .filter(|e| e["kind"] == "allocated")
        .count();
    let load = start_load(lab, LOAD_RATE, 12)?;
    let grown = wait_until(Duration::from_secs(20), || {
        members_in(&bal, "allocated").len() >= 2
            && events(&bal)
                .iter()
                .filter(|e| e["kind"] == "allocated")
                .count()
                > before
    });
    assert!(grown, "no second allocation: {:?}", events(&bal));
    let report = finish_load(load, 12)?;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(
        report.by_server.len() >= 2,
        "new flows did not spread: {:?}",
        report.by_server
    );
    // Every allocation reached both nodes.
    let both = members_in(&bal, "allocated");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let n2 = node2_backends(&node2);
            both.iter()
                .all(|s| n2.iter().any(|(n, st)| n == s && st == "active"))
        }),
        "node2 {:?} vs pool {both:?}",
        node2_backends(&node2)
    );
    Ok(())
}
