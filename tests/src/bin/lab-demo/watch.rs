//! Driving the load and watching the manager: each phase's load client,
//! and twice a second the pool (utilization, states), the node's counters
//! (new flows per server) and the new events, told as the story.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use lb_tests::{
    Lab, LabProcess,
    balancer::{Balancer, workspace_bin},
    proto::LoadReport,
};
use serde_json::Value;

use crate::{
    Phase, pause,
    story::{Story, Summary, say},
};

/// How often the pool, the counters and the events are read.
const TICK: Duration = Duration::from_millis(500);
/// How often a line tells where the traffic goes while there is load.
const TRAFFIC_EVERY: Duration = Duration::from_secs(3);
/// Connections a load client keeps outstanding at most.
const CONCURRENCY: &str = "32";

/// One reading, `t` seconds into the demo.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t: f64,
    /// Requests a second offered.
    pub offered: f64,
    /// Per server: utilization as the manager sees it (members and free).
    pub utilization: BTreeMap<String, f64>,
    /// Per server: new flows a second the node sent it since the last
    /// reading.
    pub served: BTreeMap<String, f64>,
    /// Servers in the pool (allocated or draining).
    pub pool: usize,
}

/// Whether every agent reports and every server is healthy: s1 a member,
/// two free.
pub fn all_reporting(bal: &Balancer) -> bool {
    pool(bal).is_some_and(|p| {
        let healthy = |list: &Value, n: usize| {
            list.as_array().is_some_and(|l| {
                l.len() == n
                    && l.iter()
                        .all(|m| m["health"] == "up" && m["monitor"] == "monitored")
            })
        };
        healthy(&p["members"], 1) && healthy(&p["free"], 2)
    })
}

fn pool(bal: &Balancer) -> Option<Value> {
    bal.lbctl(&["pool"]).ok()?["pools"].get(0).cloned()
}

/// The load clients, the readings and the story so far.
pub struct Watch<'a> {
    bal: &'a Balancer,
    lab: &'a Lab,
    started: Instant,
    story: Story,
    samples: Vec<Sample>,
    /// Each server's new flows at the last reading, and when.
    flows: BTreeMap<String, u64>,
    flows_at: Instant,
    last_event: u64,
    last_traffic: Instant,
    loads: Vec<(Phase, LabProcess)>,
    reports: Vec<LoadReport>,
    played: Vec<Phase>,
}

impl<'a> Watch<'a> {
    pub fn new(bal: &'a Balancer, lab: &'a Lab, started: Instant, upper: f64) -> Result<Self> {
        let last_event = bal.lbctl(&["events"])?["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["id"].as_u64())
            .unwrap_or(0);
        let now = Instant::now();
        Ok(Self {
            bal,
            lab,
            started,
            story: Story::new(started, upper),
            samples: Vec::new(),
            flows: new_flows(bal),
            flows_at: now,
            last_event,
            last_traffic: now,
            loads: Vec::new(),
            reports: Vec::new(),
            played: Vec::new(),
        })
    }

    /// Each phase's load for its time, watched; then idle until the pool
    /// is back to one server (at most `idle_limit`).
    pub fn play(&mut self, phases: &[Phase], idle_limit: Duration) -> Result<()> {
        for (i, phase) in phases.iter().enumerate() {
            let cost = if i == 0 {
                format!(
                    " (each costs its server about {} ms of CPU)",
                    crate::WORK_US / 1000
                )
            } else {
                String::new()
            };
            say(
                self.started,
                &format!("{}: {} requests a second{cost}", phase.words, phase.rate),
            );
            self.loads.push((*phase, self.start_load(phase)?));
            self.played.push(*phase);
            let until = Instant::now() + Duration::from_secs(u64::from(phase.seconds));
            while Instant::now() < until {
                self.tick(f64::from(phase.rate))?;
            }
        }
        say(
            self.started,
            "the load stops: waiting for the pool to shrink back to one server",
        );
        let until = Instant::now() + idle_limit;
        while Instant::now() < until {
            self.tick(0.0)?;
            if self.story.returned() > 0 && self.samples.last().is_some_and(|s| s.pool == 1) {
                break;
            }
        }
        Ok(())
    }

    fn start_load(&self, phase: &Phase) -> Result<LabProcess> {
        let client = workspace_bin("lab-client")?;
        let target = self.lab.vip4_addr(crate::PORT).to_string();
        let (rate, seconds) = (phase.rate.to_string(), phase.seconds.to_string());
        self.lab.client.ns.spawn(&[
            client.to_str().unwrap_or("lab-client"),
            "load",
            "--http",
            "--target",
            &target,
            "--rate",
            &rate,
            "--seconds",
            &seconds,
            "--concurrency",
            CONCURRENCY,
        ])
    }

    /// One reading and the story's new lines, then the rest of the tick.
    fn tick(&mut self, offered: f64) -> Result<()> {
        let t0 = Instant::now();
        self.read_events();
        let sample = self.sample(offered);
        if offered > 0.0 && self.last_traffic.elapsed() >= TRAFFIC_EVERY {
            self.last_traffic = Instant::now();
            self.story.traffic(&self.samples, offered);
        }
        self.samples.push(sample);
        self.collect(Duration::ZERO)?;
        pause(TICK.saturating_sub(t0.elapsed()))
    }

    fn read_events(&mut self) {
        let after = self.last_event.to_string();
        let Ok(v) = self.bal.lbctl(&["events", "--after", &after]) else {
            return;
        };
        for e in v["events"].as_array().into_iter().flatten() {
            self.last_event = self.last_event.max(e["id"].as_u64().unwrap_or(0));
            self.story.event(e);
        }
    }

    fn sample(&mut self, offered: f64) -> Sample {
        let mut s = Sample {
            t: self.started.elapsed().as_secs_f64(),
            offered,
            ..Sample::default()
        };
        if let Some(p) = pool(self.bal) {
            let members = p["members"].as_array().cloned().unwrap_or_default();
            s.pool = members
                .iter()
                .filter(|m| m["state"] == "allocated" || m["state"] == "draining")
                .count();
            for m in members
                .iter()
                .chain(p["free"].as_array().into_iter().flatten())
            {
                if let (Some(name), Some(u)) = (m["server"].as_str(), m["utilization"].as_f64()) {
                    s.utilization.insert(name.to_owned(), u);
                }
            }
        }
        let flows = new_flows(self.bal);
        let dt = self.flows_at.elapsed().as_secs_f64();
        if dt < TICK.as_secs_f64() / 2.0 {
            // Too short a time for a rate (the first reading).
            return s;
        }
        for (server, &n) in &flows {
            let before = self.flows.get(server).copied().unwrap_or(n);
            s.served
                .insert(server.clone(), n.saturating_sub(before) as f64 / dt);
        }
        self.flows = flows;
        self.flows_at = Instant::now();
        s
    }

    /// Takes the reports of the load clients that have finished, waiting
    /// at most `wait` for each.
    fn collect(&mut self, wait: Duration) -> Result<()> {
        let mut i = 0;
        while i < self.loads.len() {
            let (_, p) = &mut self.loads[i];
            if p.try_wait()?.is_none() && wait.is_zero() {
                i += 1;
                continue;
            }
            let line = p.read_line(wait.max(Duration::from_millis(100)))?;
            let report: LoadReport =
                serde_json::from_str(&line).with_context(|| format!("load report {line:?}"))?;
            self.reports.push(report);
            self.loads.remove(i);
        }
        Ok(())
    }

    /// Waits for the load clients' last reports: the summary.
    pub fn finish(mut self) -> Result<Summary> {
        self.collect(Duration::from_secs(30))?;
        Ok(self.story.summary(
            self.started.elapsed().as_secs_f64(),
            &self.reports,
            self.samples,
            self.played,
        ))
    }
}

/// Each server's new flows for the service, from the node's counters.
fn new_flows(bal: &Balancer) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(v) = bal.lbctl(&["server", "list"]) else {
        return out;
    };
    for s in v["servers"].as_array().into_iter().flatten() {
        let n: u64 = s["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["new_flows"].as_u64())
            .sum();
        if let Some(name) = s["name"].as_str() {
            out.insert(name.to_owned(), n);
        }
    }
    out
}
