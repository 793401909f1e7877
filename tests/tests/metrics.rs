//! End-to-end: the metrics endpoint of a node that runs the manager,
//! scraped over HTTP from the lab's client and parsed by a real
//! `OpenMetrics` parser (Python's `prometheus_client`, the Debian package);
//! its counters move with the traffic the test sends, the desired pool
//! size with the load of the servers, and the agent streams' rejections
//! with the bad messages a test sends them.

use std::{collections::BTreeMap, io::Read as _, net::TcpStream, time::Duration};

use anyhow::{Context as _, Result, bail};
use lb_tests::{
    Lab,
    balancer::{Balancer, burst_to_vip, wait_until},
    fleet::{self, Fleet, ScaledService},
    require_root,
    scaling::member,
    stream::send_as_agent,
};
use serde::Deserialize;

const PORT: u16 = 80;
const INTERVAL_MS: u64 = 200;
const METRICS_PORT: u16 = 9641;
const CONNECTIONS: usize = 60;
/// Idle connections the slow-loris test opens: more than one source may
/// hold.
const IDLE: usize = 20;
/// The system's Python, which the Debian package is for (not one a
/// version manager may put first on the path).
const PYTHON: &str = "/usr/bin/python3";

/// Fetches a URL and parses it with the strict `OpenMetrics` parser;
/// prints the content type and every sample as JSON, or the HTTP status
/// of an error.
const SCRAPER: &str = r#"
import json, sys, urllib.error, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        ctype = r.headers.get("Content-Type")
        text = r.read().decode()
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "content_type": "", "samples": []}))
    sys.exit(0)
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append({"family": family.name, "type": family.type,
                        "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps({"status": 200, "content_type": ctype, "samples": samples}))
"#;

#[derive(Debug, Deserialize)]
struct Scrape {
    status: u16,
    content_type: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    family: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Scrape {
    /// The value of sample `name` with exactly these labels among others.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn need(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.value(name, labels)
            .with_context(|| format!("no sample {name}{labels:?} in the scrape"))
    }

    fn kind_of(&self, family: &str) -> Option<&str> {
        self.samples
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.as_str())
    }
}

fn scrape(lab: &Lab, path: &str) -> Result<Scrape> {
    let url = format!("http://{}:{METRICS_PORT}{path}", lab.node.eth0.v4);
    let out = lab
        .client
        .ns
        .exec(&[PYTHON, "-c", SCRAPER, &url])
        .context(PYTHON)?;
    if !out.status.success() {
        bail!(
            "scraping {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("scraper output")
}

/// Scaling that cannot move the pool: s1 stays alone, s2 free.
const HELD: &str = "min_servers = 1\nmax_servers = 1";
/// Scaling up to three servers that never shrinks within a test (the
/// scale-in window is five minutes).
const GROWING: &str = "upper = 0.75\nlower = 0.25\nmin_servers = 1\nmax_servers = 3\n\
     scale_in_window = \"300s\"";

/// A lab node that runs the manager with its metrics endpoint on its
/// address; s1 allocated, s2 free, no agent started yet; `scaling` is
/// the body of `[service.scaling]`.
fn start(scaling: &str) -> Result<(Lab, Fleet, Balancer)> {
    let (lab, fleet) = Fleet::lab(&[fleet::SERVER_QUOTA; 2], PORT)?;
    let mut config = fleet::manager_config(
        &lab,
        fleet.pki_dir(),
        &ScaledService::local(PORT, INTERVAL_MS, scaling, 1),
    );
    config += &format!(
        "[metrics]\nlisten = \"{}:{METRICS_PORT}\"\n",
        lab.node.eth0.v4
    );
    let bal = Balancer::start(&lab, &config)?;
    Ok((lab, fleet, bal))
}

#[test]
fn a_scrape_parses_and_its_counters_follow_the_traffic() -> Result<()> {
    if !require_root("a_scrape_parses_and_its_counters_follow_the_traffic") {
        return Ok(());
    }
    let (lab, fleet, bal) = start(HELD)?;
    let _agents = [
        fleet.start_agent(&lab, 0, PORT, INTERVAL_MS)?,
        fleet.start_agent(&lab, 1, PORT, INTERVAL_MS)?,
    ];
    let monitored = wait_until(Duration::from_secs(20), || {
        ["s1", "s2"]
            .iter()
            .all(|s| member(&bal, s).is_some_and(|m| m["monitor"] == "monitored"))
    });
    assert!(
        monitored,
        "agents never reported: {:?}",
        bal.lbctl(&["pool"])
    );

    let before = scrape(&lab, "/metrics")?;
    assert_eq!(before.status, 200);
    assert!(
        before
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        before.content_type
    );
    for (family, kind) in [
        ("lb_service_packets", "counter"),
        ("lb_backend_new_flows", "counter"),
        ("lb_xdp_verdicts", "counter"),
        ("lb_flow_table_entries", "gauge"),
        ("lb_xdp_program", "info"),
        ("lb_xdp_mode", "gauge"),
        ("lb_server_utilization", "gauge"),
        ("lb_reconfigure_duration_seconds", "histogram"),
        ("lb_manager_events", "counter"),
    ] {
        assert_eq!(before.kind_of(family), Some(kind), "{family}");
    }
    let web = [("service", "web")];
    let s1 = [("service", "web"), ("server", "s1")];

    let burst = burst_to_vip(&lab, PORT, CONNECTIONS)?;
    assert_eq!(burst.failed, 0, "{:?}", burst.errors);
    let after = scrape(&lab, "/metrics")?;
    let moved = |name: &str, labels: &[(&str, &str)]| -> Result<f64> {
        Ok(after.need(name, labels)? - before.value(name, labels).unwrap_or(0.0))
    };
    let n = CONNECTIONS as f64;
    // Each connection: SYN, ACK, the request, FIN and ACKs from the client.
    assert!(moved("lb_service_packets_total", &web)? >= 3.0 * n);
    assert!(moved("lb_service_forwarded_bytes_total", &web)? >= 60.0 * 3.0 * n);
    assert!(moved("lb_service_new_flows_total", &web)? >= n);
    assert!(moved("lb_backend_new_flows_total", &s1)? >= n);
    assert!(moved("lb_backend_packets_total", &s1)? >= 3.0 * n);
    let forwarded = moved("lb_xdp_verdicts_total", &[("verdict", "tx")])?
        + moved("lb_xdp_verdicts_total", &[("verdict", "redirect")])?;
    assert!(forwarded >= 3.0 * n, "forwarded {forwarded}");
    assert!(after.need("lb_flow_table_entries", &[])? >= 1.0);
    // veth runs XDP natively.
    assert_eq!(
        after.need("lb_xdp_mode", &[("interface", "eth0"), ("mode", "driver")])?,
        1.0
    );
    assert_eq!(after.need("lb_backend_weight", &s1)?, 1.0);
    assert_eq!(
        after.need(
            "lb_backend_state",
            &[("service", "web"), ("server", "s1"), ("state", "active")]
        )?,
        1.0
    );

    // The manager's side.
    assert_eq!(after.need("lb_server_connected", &[("server", "s1")])?, 1.0);
    assert_eq!(
        after.need(
            "lb_server_monitor",
            &[("server", "s2"), ("state", "monitored")]
        )?,
        1.0
    );
    assert!(after.need("lb_server_reports_total", &[("server", "s1")])? >= 1.0);
    assert_eq!(
        after.need(
            "lb_pool_servers",
            &[("service", "web"), ("state", "allocated")]
        )?,
        1.0
    );
    assert_eq!(after.need("lb_pool_free_servers", &web)?, 1.0);
    // Idle, and max_servers 1.
    assert_eq!(after.need("lb_pool_desired_servers", &web)?, 1.0);
    assert_eq!(before.kind_of("lb_pool_desired_servers"), Some("gauge"));
    assert_eq!(
        after.need(
            "lb_agent_messages_rejected_total",
            &[("reason", "malformed")]
        )?,
        0.0
    );
    assert!(after.need("lb_manager_events_total", &[("kind", "synced")])? >= 1.0);
    assert!(
        after.need(
            "lb_reconfigure_duration_seconds_count",
            &[("node", "local")]
        )? >= 1.0
    );
    assert!(after.need("lb_agent_reports_total", &[])? >= 2.0);

    // Nothing else is served.
    assert_eq!(scrape(&lab, "/")?.status, 404);

    // The Grafana dashboard asks only for what a scrape has.
    for name in dashboard_metrics()? {
        assert!(
            after.samples.iter().any(|s| s.name == name),
            "the dashboard uses {name}, which no scrape has"
        );
    }
    Ok(())
}

/// Every `lb_*` metric the dashboard's queries name.
fn dashboard_metrics() -> Result<std::collections::BTreeSet<String>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/xdplb-dashboard.json"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            let mut rest = expr;
            while let Some(at) = rest.find("lb_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_owned());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    Ok(names)
}

/// Whether the server closed `stream` (end of stream or reset) within
/// `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(wait));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Idle connections to the endpoint (a slow-loris client) are capped per
/// source and closed once a request's head is overdue; a scrape works
/// after them.
#[test]
fn the_metrics_endpoint_holds_no_idle_connections() -> Result<()> {
    if !require_root("the_metrics_endpoint_holds_no_idle_connections") {
        return Ok(());
    }
    let (lab, _fleet, _bal) = start(HELD)?;
    let target = std::net::SocketAddr::from((lab.node.eth0.v4, METRICS_PORT));
    let mut idle: Vec<TcpStream> = lab.client.ns.run(|| {
        (0..IDLE)
            .map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(2)).context("connect"))
            .collect()
    })?;
    let at_once = idle
        .iter_mut()
        .filter_map(|s| closed_within(s, Duration::from_millis(500)).then_some(()))
        .count();
    let per_source = lb_control::metrics::LIMITS.per_source;
    // Those over the cap closed at once; the rest held until their head
    // is overdue.
    assert_eq!(at_once, IDLE - per_source, "closed at once");
    let head = lb_control::metrics::HEAD_TIMEOUT;
    let held_on = idle
        .iter_mut()
        .filter_map(|s| (!closed_within(s, head * 2)).then_some(()))
        .count();
    assert_eq!(held_on, 0, "idle connections outlived the head timeout");
    assert_eq!(scrape(&lab, "/metrics")?.status, 200);
    Ok(())
}

/// `lb_pool_desired_servers` in a real lab: idle, the pool as it is (1);
/// s1 at its CPU quota (a busy loop in its cgroup) with no functional
/// server free, 1.0 / upper 0.75 wants 2 while 1 serves; s2's agent
/// comes, the policy allocates it and the pool is what it wants (2);
/// the load gone, it wants 1 while both stay (the scale-in window holds
/// them). `lbctl pool` says the same figure.
#[test]
fn the_desired_pool_size_follows_the_load() -> Result<()> {
    if !require_root("the_desired_pool_size_follows_the_load") {
        return Ok(());
    }
    let (lab, fleet, bal) = start(GROWING)?;
    let web = [("service", "web")];
    let allocated = [("service", "web"), ("state", "allocated")];
    // (desired, allocated) as a scrape has them.
    let sizes = || -> Option<(f64, f64)> {
        let s = scrape(&lab, "/metrics").ok()?;
        Some((
            s.value("lb_pool_desired_servers", &web)?,
            s.value("lb_pool_servers", &allocated)?,
        ))
    };
    let wait_for = |want: (f64, f64), why: &str| {
        let mut last = None;
        let reached = wait_until(Duration::from_secs(30), || {
            last = sizes();
            last == Some(want)
        });
        assert!(
            reached,
            "{why}: (desired, allocated) {last:?}, not {want:?}; pool {:?}",
            bal.lbctl(&["pool"])
        );
    };
    let _s1 = fleet.start_agent(&lab, 0, PORT, INTERVAL_MS)?;
    assert!(
        wait_until(Duration::from_secs(20), || member(&bal, "s1").is_some_and(
            |m| m["monitor"] == "monitored" && m["utilization"].is_number()
        )),
        "s1 never reported: {:?}",
        bal.lbctl(&["pool"])
    );
    wait_for((1.0, 1.0), "idle");

    // Declared after the fleet: killed before its cgroup goes.
    let burner = lab.servers[0]
        .ns
        .spawn(&["sh", "-c", "while :; do :; done"])?;
    fleet.cgroups[0].1.add_pid(burner.pid())?;
    wait_for((2.0, 1.0), "s1 at its quota, no functional server free");
    let pool = lb_tests::scaling::pool(&bal).context("pool")?;
    assert_eq!(pool["desired_servers"], 2, "{pool}");

    let _s2 = fleet.start_agent(&lab, 1, PORT, INTERVAL_MS)?;
    wait_for((2.0, 2.0), "s2 allocated for s1's load");

    drop(burner);
    wait_for((1.0, 2.0), "idle again, within the scale-in window");
    Ok(())
}

/// A real agent-side connection (s2's own certificate, from s2's
/// namespace) that sends broken XML, then one that sends a message over
/// max_message_bytes: each gets an `<error>` whose code is the reason it
/// is counted under in `lb_agent_messages_rejected_total`, no other
/// reason moves, and `lb_agent_refused_total{reason="message"}` is their
/// sum.
#[test]
fn bad_agent_messages_are_counted_by_reason() -> Result<()> {
    if !require_root("bad_agent_messages_are_counted_by_reason") {
        return Ok(());
    }
    let (lab, fleet, _bal) = start(HELD)?;
    let manager = std::net::SocketAddr::from((lab.node.eth0.v4, fleet::MANAGER_PORT));
    let before = scrape(&lab, "/metrics")?;
    let mut oversized = b"<report seq=\"3\" host=\"s2\" time-ms=\"".to_vec();
    oversized.extend(std::iter::repeat_n(b'1', 100 * 1024));
    for (bytes, reason) in [
        (
            b"<report seq=\"2\" host=\"s2\"><unclosed></report>".to_vec(),
            "malformed",
        ),
        (oversized, "message-too-large"),
    ] {
        let answers = send_as_agent(&lab.servers[1].ns, manager, fleet.pki_dir(), "s2", &bytes)?;
        let codes: Vec<&str> = answers
            .iter()
            .filter_map(|m| match m {
                lb_proto::Message::Error(e) => Some(e.code.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(codes, [reason], "{answers:?}");
    }
    let after = scrape(&lab, "/metrics")?;
    let mut moved = BTreeMap::new();
    for s in after
        .samples
        .iter()
        .filter(|s| s.name == "lb_agent_messages_rejected_total")
    {
        let reason = s.labels.get("reason").context("reason label")?;
        let was = before.need(&s.name, &[("reason", reason)])?;
        if s.value != was {
            moved.insert(reason.clone(), s.value - was);
        }
    }
    assert_eq!(
        moved,
        BTreeMap::from([
            ("malformed".to_owned(), 1.0),
            ("message-too-large".to_owned(), 1.0),
        ])
    );
    let message = [("reason", "message")];
    assert_eq!(
        after.need("lb_agent_refused_total", &message)?
            - before.need("lb_agent_refused_total", &message)?,
        2.0
    );
    // Every reason is there from the start.
    let reasons = before
        .samples
        .iter()
        .filter(|s| s.name == "lb_agent_messages_rejected_total")
        .count();
    assert_eq!(reasons, lb_control::manager::Rejection::ALL.len());
    Ok(())
}
