//! The manager's server database: every server that ever said hello, its
//! applications and capacity, its latest report, and whether it is still
//! monitored.
//!
//! Updated by periodic reports, by events (connect, disconnect, a report
//! that stops coming) and by announcements (a hello with `spare`, or a
//! signed discovery datagram from a server the manager was not told about:
//! [`ServerDb::announced`]). Losing
//! an agent is not losing a server: a server whose reports stop is
//! *unmonitored* — left out of decisions, never taken out of service.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_proto::{HealthState, Hello, Report};
use serde::{Deserialize, Serialize};

/// Whether the manager can currently trust a server's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Monitor {
    /// Said hello, no report yet.
    Pending,
    /// Reports arrive.
    Monitored,
    /// Reports stopped for the configured number of intervals (agent gone,
    /// network cut): the server keeps serving, decisions leave it out.
    Unmonitored,
}

/// What the manager knows of one server.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    pub host: String,
    pub hello: Hello,
    /// Peer address of the agent stream.
    pub peer: Option<SocketAddr>,
    /// SHA-256 of the certificate the agent presented.
    pub fingerprint: String,
    pub connected: bool,
    pub monitor: Monitor,
    pub last_report: Option<Report>,
    pub last_report_at: Option<Instant>,
    /// The time of the newest report accepted on the current stream.
    pub stream_last_ms: Option<u64>,
    pub reports: u64,
    /// When the first hello arrived; for a server learnt from an
    /// announcement, its first announcement until its first hello on a
    /// stream (the silence clock starts there).
    pub first_seen: Instant,
    /// The last verified discovery announcement, if the server ever made
    /// one.
    pub announced_at: Option<Instant>,
}

/// An event the database produced, for the log (and later `lbctl events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbEvent {
    Connected { host: String },
    Disconnected { host: String },
    Announced { host: String },
    Discovered { host: String },
    Unmonitored { host: String, silent_for: Duration },
    Monitored { host: String },
}

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRejected {
    #[error("report from `{host}` before its hello")]
    NoHello { host: String },
    #[error(
        "stale report from `{host}`: time {time_ms} ms is not after the last accepted {last_ms} ms"
    )]
    Stale {
        host: String,
        time_ms: u64,
        last_ms: u64,
    },
    #[error(
        "report from `{host}` dated {time_ms} ms, {ahead_ms} ms ahead of the manager's clock (more than {max} ms): is its clock set?",
        max = MAX_AHEAD_MS
    )]
    Future {
        host: String,
        time_ms: u64,
        ahead_ms: u64,
    },
}

/// How far ahead of the manager's clock a report may be dated: clocks
/// synchronised by NTP agree far better; a report dated later is refused
/// (accepted, it would make every later report look stale).
pub const MAX_AHEAD_MS: u64 = 60_000;

/// The one spelling of a host name: DNS names (and so certificate names,
/// which TLS compares without case) are matched without case, so `WEB-1`
/// and `web-1` are one host, recorded as `web-1`.
#[must_use]
pub fn canonical(host: &str) -> String {
    host.to_ascii_lowercase()
}

/// All servers, by canonical host name ([`canonical`]).
#[derive(Debug, Default)]
pub struct ServerDb {
    servers: BTreeMap<String, ServerRecord>,
}

impl ServerDb {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn get(&self, host: &str) -> Option<&ServerRecord> {
        self.servers.get(&canonical(host))
    }

    pub fn iter(&self) -> impl Iterator<Item = &ServerRecord> {
        self.servers.values()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// A stream said hello (first message, or again after a change).
    pub fn hello(
        &mut self,
        hello: Hello,
        peer: Option<SocketAddr>,
        fingerprint: &str,
        now: Instant,
    ) -> Vec<DbEvent> {
        let mut hello = hello;
        hello.host = canonical(&hello.host);
        let host = hello.host.clone();
        let mut events = Vec::new();
        let spare = hello.spare;
        if let Some(r) = self.servers.get_mut(&host) {
            if !r.connected {
                events.push(DbEvent::Connected { host: host.clone() });
            }
            if r.announced_at.is_some() && !r.connected && r.last_report_at.is_none() {
                // Known from announcements only: its stream starts now.
                r.first_seen = now;
            }
            r.hello = hello;
            r.peer = peer;
            r.fingerprint = fingerprint.to_string();
            r.connected = true;
            // A new stream: its reports are judged against each other.
            r.stream_last_ms = None;
        } else {
            events.push(DbEvent::Connected { host: host.clone() });
            self.servers.insert(
                host.clone(),
                ServerRecord {
                    host: host.clone(),
                    hello,
                    peer,
                    fingerprint: fingerprint.to_string(),
                    connected: true,
                    monitor: Monitor::Pending,
                    last_report: None,
                    last_report_at: None,
                    stream_last_ms: None,
                    reports: 0,
                    first_seen: now,
                    announced_at: None,
                },
            );
        }
        if spare {
            events.push(DbEvent::Announced { host });
        }
        events
    }

    /// A report arrived. Reports must move forward in time per host (across
    /// reconnects and agent restarts; within a stream the sequence guard
    /// already dropped replays).
    pub fn report(&mut self, report: Report, now: Instant) -> Result<Vec<DbEvent>, ReportRejected> {
        self.report_at(report, now, lb_proto::time::unix_ms())
    }

    /// [`ServerDb::report`] with the manager's wall clock at `wall_ms`
    /// (Unix milliseconds): a report dated more than [`MAX_AHEAD_MS`]
    /// later is refused; one not after the last accepted on the same
    /// stream is stale (a new stream starts afresh).
    pub fn report_at(
        &mut self,
        report: Report,
        now: Instant,
        wall_ms: u64,
    ) -> Result<Vec<DbEvent>, ReportRejected> {
        let mut report = report;
        report.host = canonical(&report.host);
        let Some(r) = self.servers.get_mut(&report.host) else {
            return Err(ReportRejected::NoHello { host: report.host });
        };
        let ahead_ms = report.time_ms.saturating_sub(wall_ms);
        if ahead_ms > MAX_AHEAD_MS {
            return Err(ReportRejected::Future {
                host: report.host,
                time_ms: report.time_ms,
                ahead_ms,
            });
        }
        if let Some(last_ms) = r.stream_last_ms
            && report.time_ms <= last_ms
        {
            return Err(ReportRejected::Stale {
                host: report.host,
                time_ms: report.time_ms,
                last_ms,
            });
        }
        r.stream_last_ms = Some(report.time_ms);
        let mut events = Vec::new();
        if r.monitor == Monitor::Unmonitored {
            events.push(DbEvent::Monitored {
                host: r.host.clone(),
            });
        }
        r.monitor = Monitor::Monitored;
        r.last_report = Some(report);
        r.last_report_at = Some(now);
        r.reports += 1;
        Ok(events)
    }

    /// A verified discovery announcement (`hello` made from it, see
    /// `lb_proto::announce::Announce::hello`) signed by the certificate
    /// with `fingerprint`.
    ///
    /// A new host becomes an *announced* server: not connected, monitor
    /// pending, with the announced spare flag, capacity and applications
    /// ([`DbEvent::Discovered`]). A known host whose stream is down gets the
    /// announced figures ([`DbEvent::Announced`] when it turns spare); while
    /// its stream is up, the stream is authoritative and only the
    /// announcement time is noted.
    pub fn announced(&mut self, hello: Hello, fingerprint: &str, now: Instant) -> Vec<DbEvent> {
        let mut hello = hello;
        hello.host = canonical(&hello.host);
        let host = hello.host.clone();
        match self.servers.get_mut(&host) {
            Some(r) if r.connected => {
                r.announced_at = Some(now);
                Vec::new()
            }
            Some(r) => {
                let turned_spare = hello.spare && !r.hello.spare;
                r.hello = hello;
                r.fingerprint = fingerprint.to_string();
                r.announced_at = Some(now);
                if turned_spare {
                    vec![DbEvent::Announced { host }]
                } else {
                    Vec::new()
                }
            }
            None => {
                self.servers.insert(
                    host.clone(),
                    ServerRecord {
                        host: host.clone(),
                        hello,
                        peer: None,
                        fingerprint: fingerprint.to_string(),
                        connected: false,
                        monitor: Monitor::Pending,
                        last_report: None,
                        last_report_at: None,
                        stream_last_ms: None,
                        reports: 0,
                        first_seen: now,
                        announced_at: Some(now),
                    },
                );
                vec![DbEvent::Discovered { host }]
            }
        }
    }

    /// The stream of `host` ended.
    pub fn disconnected(&mut self, host: &str) -> Vec<DbEvent> {
        match self.servers.get_mut(&canonical(host)) {
            Some(r) if r.connected => {
                r.connected = false;
                vec![DbEvent::Disconnected { host: host.into() }]
            }
            _ => Vec::new(),
        }
    }

    /// Marks servers whose last report is older than `silence` (or that said
    /// hello that long ago and never reported) unmonitored.
    pub fn sweep(&mut self, now: Instant, silence: Duration) -> Vec<DbEvent> {
        let mut events = Vec::new();
        for r in self.servers.values_mut() {
            if r.monitor == Monitor::Unmonitored {
                continue;
            }
            if r.announced_at.is_some() && !r.connected && r.last_report_at.is_none() {
                // Announced, never on a stream: no report is expected yet.
                continue;
            }
            let since = r.last_report_at.unwrap_or(r.first_seen);
            let silent_for = now.saturating_duration_since(since);
            if silent_for > silence {
                r.monitor = Monitor::Unmonitored;
                events.push(DbEvent::Unmonitored {
                    host: r.host.clone(),
                    silent_for,
                });
            }
        }
        events
    }
}

/// A server as `lbctl server list` shows the manager's side of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorView {
    pub host: String,
    pub monitor: Monitor,
    pub connected: bool,
    pub spare: bool,
    pub cores: f64,
    pub applications: Vec<String>,
    /// Latest utilization figure and its source.
    pub utilization: Option<f64>,
    pub source: Option<String>,
    /// Worst application health as the agent reports it: down, slow,
    /// unknown or up.
    pub health: Option<String>,
    /// Every VIP of every application ready for direct server return.
    pub ready: Option<bool>,
    pub report_age_ms: Option<u64>,
    pub reports: u64,
    pub fingerprint: String,
    /// The server's pool state in the manager's configuration file now
    /// (`spare` for an announced spare the file does not name), filled in
    /// by the control socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

impl ServerRecord {
    #[must_use]
    pub fn view(&self, now: Instant) -> MonitorView {
        let report = self.last_report.as_ref();
        let health = report.map(|r| {
            let states: Vec<HealthState> = r.applications.iter().map(|a| a.health.state).collect();
            if states.contains(&HealthState::Down) {
                "down"
            } else if states.contains(&HealthState::Slow) {
                "slow"
            } else if states.contains(&HealthState::Unknown) || states.is_empty() {
                "unknown"
            } else {
                "up"
            }
            .to_string()
        });
        MonitorView {
            host: self.host.clone(),
            monitor: self.monitor,
            connected: self.connected,
            spare: self.hello.spare,
            cores: self.hello.cores,
            applications: self
                .hello
                .applications
                .iter()
                .map(|a| a.name.clone())
                .collect(),
            utilization: report.map(|r| r.utilization.value),
            source: report.map(|r| {
                serde_json::to_value(r.utilization.source)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            }),
            health,
            ready: report.map(|r| {
                r.applications
                    .iter()
                    .all(|a| a.readiness.iter().all(|x| x.ready))
            }),
            report_age_ms: self
                .last_report_at
                .map(|t| lb_proto::time::millis(now.saturating_duration_since(t))),
            reports: self.reports,
            fingerprint: self.fingerprint.clone(),
            pool: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_proto::{
        Application, Cpu, Health, HealthState, Load, Memory, Protocol, Report, Utilization,
        UtilizationSource,
    };

    use super::*;

    fn hello(host: &str, spare: bool) -> Hello {
        Hello {
            seq: 1,
            host: host.into(),
            agent_version: "0.1.0".into(),
            cores: 0.2,
            spare,
            applications: vec![Application {
                name: "web".into(),
                protocol: Protocol::Tcp,
                ports: vec![80],
                probe: String::new(),
            }],
        }
    }

    fn report(host: &str, time_ms: u64, value: f64, health: HealthState) -> Report {
        Report {
            seq: 2,
            host: host.into(),
            time_ms,
            interval_ms: 200,
            utilization: Utilization {
                value,
                source: UtilizationSource::CgroupCpu,
            },
            cpu: Cpu {
                host: 0.1,
                cgroup: Some(value),
            },
            load: Load {
                one: 0.0,
                five: 0.0,
                fifteen: 0.0,
            },
            memory: Memory {
                total_bytes: 10,
                available_bytes: 5,
            },
            nics: vec![],
            applications: vec![lb_proto::ApplicationStatus {
                name: "web".into(),
                established: 3,
                vip_established: 2,
                health: Health {
                    state: health,
                    rise: 2,
                    fall: 3,
                    ok_streak: 5,
                    fail_streak: 0,
                    detail: None,
                },
                readiness: vec![],
            }],
        }
    }

    /// A report dated a day ahead would, accepted, make every later one
    /// stale until a restart: it is refused, and the next one counts. A
    /// new stream is judged afresh.
    #[test]
    fn a_report_from_the_future_locks_no_one_out() {
        let t0 = Instant::now();
        let wall = 1_700_000_000_000;
        let mut db = ServerDb::new();
        db.hello(hello("s1", false), None, "ab", t0);
        let e = db
            .report_at(
                report("s1", wall + 86_400_000, 0.9, HealthState::Up),
                t0,
                wall,
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                ReportRejected::Future {
                    ahead_ms: 86_400_000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("is its clock set?"), "{e}");
        db.report_at(report("s1", wall, 0.5, HealthState::Up), t0, wall)
            .expect("a report of now counts");
        db.report_at(
            report("s1", wall + MAX_AHEAD_MS, 0.6, HealthState::Up),
            t0,
            wall,
        )
        .expect("within the bound");
        assert!(matches!(
            db.report_at(report("s1", wall + 1, 0.7, HealthState::Up), t0, wall),
            Err(ReportRejected::Stale { .. })
        ));
        // The agent restarted: its new stream's reports are not compared
        // with the old stream's.
        db.disconnected("s1");
        db.hello(hello("s1", false), None, "ab", t0);
        db.report_at(report("s1", wall + 1, 0.7, HealthState::Up), t0, wall)
            .expect("new stream");
        assert_eq!(db.get("s1").unwrap().reports, 3);
    }

    #[test]
    fn reports_move_forward_in_time() {
        let t0 = Instant::now();
        let mut db = ServerDb::new();
        assert_eq!(
            db.report(report("s1", 1000, 0.5, HealthState::Up), t0),
            Err(ReportRejected::NoHello { host: "s1".into() })
        );
        let ev = db.hello(hello("s1", false), None, "ab", t0);
        assert_eq!(ev, vec![DbEvent::Connected { host: "s1".into() }]);
        db.report(report("s1", 1000, 0.5, HealthState::Up), t0)
            .expect("first");
        // Replayed or older: ignored, the newer figure stays.
        assert!(matches!(
            db.report(report("s1", 1000, 0.9, HealthState::Up), t0),
            Err(ReportRejected::Stale { .. })
        ));
        assert!(
            db.report(report("s1", 900, 0.9, HealthState::Up), t0)
                .is_err()
        );
        let v = db.get("s1").expect("s1").view(t0);
        assert_eq!(v.utilization, Some(0.5));
        assert_eq!(v.health.as_deref(), Some("up"));
        assert_eq!(v.source.as_deref(), Some("cgroup-cpu"));
        assert_eq!(v.monitor, Monitor::Monitored);
    }

    #[test]
    fn silence_makes_unmonitored_not_failed() {
        let t0 = Instant::now();
        let silence = Duration::from_millis(600);
        let mut db = ServerDb::new();
        db.hello(hello("s1", false), None, "ab", t0);
        db.hello(hello("s2", true), None, "cd", t0);
        db.report(report("s1", 1, 0.3, HealthState::Up), t0)
            .expect("report");
        db.report(report("s2", 1, 0.1, HealthState::Up), t0)
            .expect("report");
        assert!(
            db.sweep(t0 + Duration::from_millis(500), silence)
                .is_empty()
        );
        db.report(
            report("s2", 2, 0.1, HealthState::Up),
            t0 + Duration::from_millis(500),
        )
        .expect("report");
        let ev = db.sweep(t0 + Duration::from_millis(700), silence);
        assert_eq!(ev.len(), 1);
        assert!(matches!(&ev[0], DbEvent::Unmonitored { host, .. } if host == "s1"));
        // Said once.
        assert!(
            db.sweep(t0 + Duration::from_millis(800), silence)
                .is_empty()
        );
        let r = db.get("s1").expect("s1");
        assert_eq!(r.monitor, Monitor::Unmonitored);
        // Its last figures are kept, not zeroed: unmonitored is not idle.
        assert_eq!(r.view(t0).utilization, Some(0.3));
        let ev = db
            .report(
                report("s1", 2, 0.4, HealthState::Up),
                t0 + Duration::from_millis(900),
            )
            .expect("report");
        assert_eq!(ev, vec![DbEvent::Monitored { host: "s1".into() }]);
        assert_eq!(
            db.disconnected("s2"),
            vec![DbEvent::Disconnected { host: "s2".into() }]
        );
        assert!(db.disconnected("s2").is_empty());
        assert!(db.get("s2").expect("s2").view(t0).spare);
    }

    #[test]
    fn announced_servers_wait_for_their_stream() {
        let t0 = Instant::now();
        let silence = Duration::from_millis(600);
        let mut db = ServerDb::new();
        assert_eq!(
            db.announced(hello("s1", true), "ab", t0),
            vec![DbEvent::Discovered { host: "s1".into() }]
        );
        // Announced again: nothing new to say.
        assert!(db.announced(hello("s1", true), "ab", t0).is_empty());
        let v = db.get("s1").expect("s1").view(t0);
        assert!(!v.connected);
        assert!(v.spare);
        assert_eq!(v.monitor, Monitor::Pending);
        assert_eq!(v.applications, vec!["web".to_string()]);
        assert_eq!(v.fingerprint, "ab");
        // No stream, so no silence: it stays pending.
        assert!(db.sweep(t0 + 10 * silence, silence).is_empty());
        // Its stream upgrades the record; the silence clock starts there.
        let t1 = t0 + 20 * silence;
        let ev = db.hello(hello("s1", true), None, "ab", t1);
        assert_eq!(ev[0], DbEvent::Connected { host: "s1".into() });
        assert!(db.get("s1").expect("s1").connected);
        assert!(db.sweep(t1 + silence / 2, silence).is_empty());
        // While the stream is up it is authoritative.
        assert!(db.announced(hello("s1", false), "cd", t1).is_empty());
        assert!(db.get("s1").expect("s1").hello.spare);
        assert_eq!(db.get("s1").expect("s1").fingerprint, "ab");
        // Silent on its stream: unmonitored as usual.
        let ev = db.sweep(t1 + 2 * silence, silence);
        assert!(matches!(&ev[..], [DbEvent::Unmonitored { .. }]), "{ev:?}");
        // Stream down: announcements refresh it, and say when it turns spare.
        db.disconnected("s1");
        db.announced(hello("s1", false), "cd", t1);
        assert_eq!(
            db.announced(hello("s1", true), "cd", t1),
            vec![DbEvent::Announced { host: "s1".into() }]
        );
        assert_eq!(db.get("s1").expect("s1").fingerprint, "cd");
    }

    #[test]
    fn health_is_the_worst_application() {
        let t0 = Instant::now();
        let mut db = ServerDb::new();
        db.hello(hello("s1", false), None, "ab", t0);
        db.report(report("s1", 1, 0.3, HealthState::Down), t0)
            .expect("report");
        assert_eq!(
            db.get("s1").expect("s1").view(t0).health.as_deref(),
            Some("down")
        );
    }
}
