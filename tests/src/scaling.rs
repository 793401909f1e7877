//! What the end-to-end scaling tests read off a running manager: its
//! pools, events and node tables through `lbctl --json`, and the load
//! client's reports.

use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    Lab, LabProcess,
    balancer::{Balancer, workspace_bin},
    proto::LoadReport,
};

/// `lbctl pool --json`: the members and free servers of `web`.
pub fn pool(bal: &Balancer) -> Option<Value> {
    let v = bal.lbctl(&["pool"]).ok()?;
    v["pools"].as_array()?.first().cloned()
}

pub fn members_in(bal: &Balancer, state: &str) -> Vec<String> {
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

pub fn events(bal: &Balancer) -> Vec<Value> {
    bal.lbctl(&["events"])
        .ok()
        .and_then(|v| v["events"].as_array().cloned())
        .unwrap_or_default()
}

pub fn event_of<'a>(events: &'a [Value], kind: &str, server: Option<&str>) -> Option<&'a Value> {
    events
        .iter()
        .rev()
        .find(|e| e["kind"] == kind && server.is_none_or(|s| e["server"] == s))
}

/// The pool of `service` in `lbctl pool --json`.
pub fn pool_of(bal: &Balancer, service: &str) -> Option<Value> {
    let v = bal.lbctl(&["pool"]).ok()?;
    v["pools"]
        .as_array()?
        .iter()
        .find(|p| p["service"] == service)
        .cloned()
}

/// The servers a node has programmed for `service`, with their state.
pub fn backends_of(bal: &Balancer, service: &str) -> Vec<(String, String)> {
    let Ok(v) = bal.lbctl(&["server", "list"]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in v["servers"].as_array().into_iter().flatten() {
        for b in s["services"].as_array().into_iter().flatten() {
            if b["service"] == service {
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

/// Starts `lab-client load`: `rate` fresh connections a second to the
/// lab's first VIP on `port` for `seconds`.
pub fn start_load(lab: &Lab, port: u16, rate: u32, seconds: u32) -> Result<LabProcess> {
    start_load_with(lab, port, rate, seconds, 16)
}

/// [`start_load`] with `concurrency` connections outstanding at most (a
/// larger client population queues more work on a saturated server).
pub fn start_load_with(
    lab: &Lab,
    port: u16,
    rate: u32,
    seconds: u32,
    concurrency: usize,
) -> Result<LabProcess> {
    let target = lab.vip4_addr(port).to_string();
    let (r, s) = (rate.to_string(), seconds.to_string());
    let c = concurrency.to_string();
    let client = workspace_bin("lab-client")?;
    lab.client.ns.spawn(&[
        client.to_str().unwrap_or("lab-client"),
        "load",
        "--target",
        &target,
        "--rate",
        &r,
        "--seconds",
        &s,
        "--concurrency",
        &c,
    ])
}

pub fn finish_load(mut p: LabProcess, seconds: u32) -> Result<LoadReport> {
    let line = p.read_line(Duration::from_secs(u64::from(seconds) + 30))?;
    serde_json::from_str(&line).with_context(|| format!("load report {line:?}"))
}

/// The manager's view of `host`'s agent, from `lbctl server list --json`.
pub fn monitor(bal: &Balancer, host: &str) -> Option<Value> {
    let v = bal.lbctl(&["server", "list"]).ok()?;
    v["monitors"]
        .as_array()?
        .iter()
        .find(|m| m["host"] == host)
        .cloned()
}

pub fn member(bal: &Balancer, server: &str) -> Option<Value> {
    let p = pool(bal)?;
    p["members"]
        .as_array()?
        .iter()
        .chain(p["free"].as_array()?.iter())
        .find(|m| m["server"] == server)
        .cloned()
}

pub fn state_of(bal: &Balancer, server: &str) -> String {
    member(bal, server)
        .and_then(|m| m["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The id of the manager's last event, from its event file (so it works
/// while the daemon is down).
pub fn last_event_id(bal: &Balancer) -> u64 {
    std::fs::read_to_string(bal.state_dir().join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["id"].as_u64())
        .max()
        .unwrap_or(0)
}
