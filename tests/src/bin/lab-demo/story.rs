//! The story in words: the manager's events and the readings as one line
//! per step, and the summary at the end.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use lb_tests::proto::LoadReport;
use serde_json::{Value, json};

use crate::{Phase, watch::Sample};

/// One line of the story, `at` seconds into the demo.
pub fn line(at: f64, text: &str) {
    println!("{at:6.1} s  {text}");
}

/// A line of the story, now.
pub fn say(started: Instant, text: &str) {
    line(started.elapsed().as_secs_f64(), text);
}

/// A change of the pool, for the summary.
#[derive(Clone, Debug)]
pub struct Scaling {
    pub at: f64,
    pub server: String,
    /// `allocated` or `returned`.
    pub kind: &'static str,
    /// How long it took: the allocation (decision to every node's ack), or
    /// the drain (its start to the server's return).
    pub took_s: f64,
    pub reason: String,
}

/// What the story has told so far.
pub struct Story {
    /// Wall-clock milliseconds of the demo's start (events carry wall
    /// time).
    started_ms: f64,
    started: Instant,
    upper: f64,
    /// Per server, the reason of its allocation under way.
    allocating: HashMap<String, String>,
    /// Per server, when its drain began and why.
    draining: HashMap<String, (f64, String)>,
    /// Per server, its latest rise past the upper level not yet told: told
    /// with the allocation it led to (the others are the pool settling).
    rises: BTreeMap<String, (f64, String)>,
    scaling: Vec<Scaling>,
}

impl Story {
    pub fn new(started: Instant, upper: f64) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        Self {
            started_ms: now_ms - started.elapsed().as_secs_f64() * 1000.0,
            started,
            upper,
            allocating: HashMap::new(),
            draining: HashMap::new(),
            rises: BTreeMap::new(),
            scaling: Vec::new(),
        }
    }

    /// Servers returned to the free pool so far.
    pub fn returned(&self) -> usize {
        self.scaling.iter().filter(|s| s.kind == "returned").count()
    }

    /// Tells one of the manager's events (the steps of a change that only
    /// make it up, such as `settings` or `acked`, stay in `lbctl events`).
    pub fn event(&mut self, e: &Value) {
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        let (kind, server, reason) = (text("kind"), text("server"), text("reason"));
        let at = e["time_ms"]
            .as_f64()
            .map_or(0.0, |ms| (ms - self.started_ms) / 1000.0);
        let took_s = e["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        match kind.as_str() {
            "crossed" if reason.contains("rose") => {
                self.rises.insert(server, (at, reason));
            }
            "crossed" => {}
            "allocating" => {
                let mut rises: Vec<_> = std::mem::take(&mut self.rises).into_iter().collect();
                rises.sort_by(|a, b| a.1.0.total_cmp(&b.1.0));
                for (hot, (at, rise)) in rises {
                    let rise = rise.strip_prefix("utilization ").unwrap_or(&rise);
                    line(
                        at,
                        &format!("{hot} is running hot: {rise} {:.2}", self.upper),
                    );
                }
                self.allocating.insert(server, reason);
            }
            "allocated" => {
                let why = self.allocating.remove(&server).unwrap_or(reason);
                line(
                    at,
                    &format!(
                        "{server} allocated from the free pool in {:.0} ms ({})",
                        took_s * 1000.0,
                        short_reason(&why)
                    ),
                );
                self.scaling.push(Scaling {
                    at,
                    server,
                    kind: "allocated",
                    took_s,
                    reason: why,
                });
            }
            "draining" => {
                line(
                    at,
                    &format!("{server} draining ({})", short_reason(&reason)),
                );
                self.draining.insert(server, (at, reason));
            }
            "deallocated" => {
                let (since, why) = self
                    .draining
                    .remove(&server)
                    .unwrap_or((at, reason.clone()));
                line(
                    at,
                    &format!(
                        "{server} drained ({}) and returned to the free pool, {:.1} s after its drain began",
                        drained_words(&reason),
                        at - since
                    ),
                );
                self.scaling.push(Scaling {
                    at,
                    server,
                    kind: "returned",
                    took_s: at - since,
                    reason: why,
                });
            }
            "weights" => line(
                at,
                &format!(
                    "weights toward equal utilization: {}",
                    reason
                        .strip_prefix("weights in force (file units): ")
                        .unwrap_or(&reason)
                        .replace("web/", "")
                        .replace('=', " ")
                ),
            ),
            "settings" | "recorded" | "acked" | "synced" => {}
            _ if server.is_empty() => line(at, &format!("{kind}: {reason}")),
            _ => line(at, &format!("{kind} {server}: {reason}")),
        }
    }

    /// Where the last two seconds' new connections went, and each busy
    /// server's utilization.
    pub fn traffic(&self, samples: &[Sample], offered: f64) {
        let recent: Vec<&Sample> = samples.iter().rev().take(4).collect();
        let mut served: BTreeMap<&str, f64> = BTreeMap::new();
        for s in &recent {
            for (server, n) in &s.served {
                *served.entry(server).or_default() += n;
            }
        }
        let total: f64 = served.values().sum();
        if total <= 0.0 {
            return;
        }
        let shares: Vec<String> = served
            .iter()
            .filter(|(_, n)| **n > 0.0)
            .map(|(s, n)| format!("{s} {:.0}%", n * 100.0 / total))
            .collect();
        let busy: Vec<String> = recent
            .first()
            .map(|s| {
                s.utilization
                    .iter()
                    .filter(|(server, _)| served.get(server.as_str()).is_some_and(|n| *n > 0.0))
                    .map(|(server, u)| format!("{server} {u:.2}"))
                    .collect()
            })
            .unwrap_or_default();
        line(
            self.started.elapsed().as_secs_f64(),
            &format!(
                "  {offered:.0} requests/s offered: new connections {}; utilization {}",
                shares.join(", "),
                busy.join(", ")
            ),
        );
    }

    pub fn summary(
        &self,
        seconds: f64,
        reports: &[LoadReport],
        samples: Vec<Sample>,
        phases: Vec<Phase>,
    ) -> Summary {
        let mut by_server = BTreeMap::new();
        for r in reports {
            for (s, n) in &r.by_server {
                *by_server.entry(s.clone()).or_default() += n;
            }
        }
        Summary {
            seconds,
            ok: reports.iter().map(|r| r.ok).sum(),
            failed: reports.iter().map(|r| r.failed).sum(),
            p99_ms: reports.iter().map(|r| r.p99_ms).fold(0.0, f64::max),
            max_ms: reports.iter().map(|r| r.max_ms).fold(0.0, f64::max),
            errors: reports
                .iter()
                .flat_map(|r| r.errors.clone())
                .take(5)
                .collect(),
            by_server,
            scaling: self.scaling.clone(),
            samples,
            phases,
        }
    }
}

/// The run in figures.
pub struct Summary {
    pub seconds: f64,
    pub ok: u64,
    pub failed: u64,
    /// The worst phase's 99th percentile, and the slowest request.
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: Vec<String>,
    pub by_server: BTreeMap<String, u64>,
    pub scaling: Vec<Scaling>,
    pub samples: Vec<Sample>,
    pub phases: Vec<Phase>,
}

impl Summary {
    pub fn print(&self, chart: &Path, dir: &Path) {
        println!("\nsummary ({:.0} s)", self.seconds);
        println!(
            "  requests   {} served, {} failed; slowest phase's p99 {:.0} ms, slowest {:.0} ms",
            self.ok, self.failed, self.p99_ms, self.max_ms
        );
        for e in &self.errors {
            println!("             {e}");
        }
        let mut first = true;
        for (server, n) in &self.by_server {
            let share = *n as f64 * 100.0 / self.ok.max(1) as f64;
            println!(
                "  {:<10} {server:<3} {n:6} {share:5.1}%  {}",
                if first { "share" } else { "" },
                "#".repeat((share / 2.5).round() as usize)
            );
            first = false;
        }
        for (i, s) in self.scaling.iter().enumerate() {
            let took = if s.kind == "allocated" {
                format!("in {:.0} ms", s.took_s * 1000.0)
            } else {
                format!("drained in {:.1} s", s.took_s)
            };
            println!(
                "  {:<10} {:6.1} s  {} {} {took} ({})",
                if i == 0 { "scaling" } else { "" },
                s.at,
                s.server,
                s.kind,
                short_reason(&s.reason)
            );
        }
        println!(
            "  chart      {} (offered load, per-server utilization, pool size)",
            chart.display()
        );
        println!(
            "  logs       {}/logs, figures in {}/summary.json",
            dir.display(),
            dir.display()
        );
    }

    /// The story a demo must tell: requests served and none failed, a
    /// server allocated, one returned, the pool back to one server.
    pub fn check(&self) -> Result<(), String> {
        if self.ok == 0 {
            return Err("no request was served".into());
        }
        if self.failed > 0 {
            return Err(format!(
                "{} requests failed: {:?}",
                self.failed, self.errors
            ));
        }
        for kind in ["allocated", "returned"] {
            if !self.scaling.iter().any(|s| s.kind == kind) {
                return Err(format!("no server was {kind}"));
            }
        }
        match self.samples.last() {
            Some(s) if s.pool == 1 => Ok(()),
            Some(s) => Err(format!("the pool ended with {} servers, not 1", s.pool)),
            None => Err("nothing was read".into()),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "requests": {"served": self.ok, "failed": self.failed, "p99_ms": self.p99_ms, "max_ms": self.max_ms},
            "by_server": self.by_server,
            "scaling": self.scaling.iter().map(|s| json!({
                "at_s": s.at, "server": s.server, "kind": s.kind, "took_s": s.took_s, "reason": s.reason,
            })).collect::<Vec<_>>(),
            "phases": self.phases.iter().map(|p| json!({"rate": p.rate, "seconds": p.seconds, "words": p.words})).collect::<Vec<_>>(),
            "samples": self.samples.len(),
        })
    }
}

/// The gist of a policy's reason: `pool at 0.97 > 0.79, desired 2` for
/// the pool's utilization against a level (with its tolerance), else the
/// first clause without its figures in parentheses.
pub fn short_reason(reason: &str) -> String {
    let words: Vec<&str> = reason.split_whitespace().collect();
    let number = |i: usize| {
        words.get(i).and_then(|w| {
            w.trim_matches(|c: char| c == '(' || c == ')')
                .parse::<f64>()
                .ok()
        })
    };
    if words.starts_with(&["pool", "utilization"])
        && let (Some(u), Some(op), Some(level)) = (number(2), words.get(3), number(5))
    {
        let threshold = if words.get(6) == Some(&"×") && words.get(9) == Some(&"tolerance") {
            let tolerance = number(10).unwrap_or(0.0);
            if *op == ">" {
                level * (1.0 + tolerance)
            } else {
                level * (1.0 - tolerance)
            }
        } else {
            level
        };
        let desired = words
            .iter()
            .position(|w| *w == "desired")
            .and_then(|i| words.get(i + 1))
            .map(|n| format!(", desired {n}"))
            .unwrap_or_default();
        return format!("pool at {u:.2} {op} {threshold:.2}{desired}");
    }
    let clause = reason.split(';').next().unwrap_or(reason);
    match clause.find(" (") {
        Some(i) => clause[..i].to_owned(),
        None => clause.to_owned(),
    }
}

/// A completed drain's reason in a few words: `0 connections` when it
/// ended idle, else the reason's first clause.
fn drained_words(reason: &str) -> String {
    if reason.contains("no connection on") {
        "0 connections".to_owned()
    } else {
        short_reason(reason)
    }
}
