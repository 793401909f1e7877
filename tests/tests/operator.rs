//! End-to-end: what the operator reads from `lbctl` on a node that runs the
//! manager — every server of the file in `lbctl pool`, the live pool state
//! in `lbctl server list`, and plainly named generations.

use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_tests::{
    Lab,
    balancer::{Balancer, attach_peer_pass, wait_until},
    fleet::{self, Fleet, ScaledService},
    require_root,
};
use serde_json::Value;

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
    // A refusal by the daemon is exit code 1, with its reason.
    let out = std::process::Command::new(lb_tests::balancer::workspace_bin("lbctl")?)
        .arg("--socket")
        .arg(&bal.socket)
        .args(["server", "drain", "nosuch"])
        .output()?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no server `nosuch`"), "{stderr}");
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

/// The agent table's line of `server` in `lbctl server list`.
fn agent_line(text: &str, server: &str) -> Option<String> {
    let table = text.split("\nAGENT").nth(1)?;
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(server))
        .map(str::to_owned)
}

/// `lbctl server list` shows each server's pool state as the manager's
/// file has it now (not as it was when the manager started), and a server
/// given back to the free pool is free in the node table, not retired.
#[test]
fn server_list_shows_the_live_pool_state() -> Result<()> {
    if !require_root("server_list_shows_the_live_pool_state") {
        return Ok(());
    }
    let (lab, fleet, bal) = build()?;
    let _agent = fleet.start_agent(&lab, 1, PORT, INTERVAL_MS)?;
    let monitored = wait_until(Duration::from_secs(20), || {
        pool_rows(&bal).is_ok_and(|rows| {
            rows.iter()
                .any(|(s, _, monitor)| s == "s2" && monitor == "monitored")
        })
    });
    assert!(
        monitored,
        "s2's agent never reported: {:?}",
        pool_rows(&bal)
    );
    let pool_column = |text: &str| {
        agent_line(text, "s2")
            .and_then(|l| l.split("pool: ").nth(1).map(|p| p.trim().to_owned()))
            .unwrap_or_default()
    };
    let text = bal.lbctl_text(&["server", "list"])?;
    assert_eq!(pool_column(&text), "free", "{text}");

    bal.lbctl(&["server", "allocate", "s2"])?;
    let text = bal.lbctl_text(&["server", "list"])?;
    assert_eq!(pool_column(&text), "allocated", "{text}");
    let v = bal.lbctl(&["server", "list"])?;
    let s2 = |v: &Value, list: &str, key: &str| {
        v[list]
            .as_array()
            .and_then(|a| a.iter().find(|x| x[key] == "s2"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(s2(&v, "monitors", "host")["pool"], "allocated", "{v}");
    assert_eq!(s2(&v, "servers", "name")["state"], "allocated", "{v}");

    bal.lbctl(&["server", "deallocate", "s2"])?;
    let text = bal.lbctl_text(&["server", "list"])?;
    assert_eq!(pool_column(&text), "free", "{text}");
    let node_table = text.split("\nAGENT").next().unwrap_or_default();
    let s2_rows: Vec<&str> = node_table
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("s2"))
        .collect();
    assert!(!s2_rows.is_empty(), "{text}");
    assert!(
        s2_rows
            .iter()
            .all(|l| l.contains(" free ") && !l.contains("retired")),
        "a server back in the free pool shows as retired:\n{text}"
    );
    let v = bal.lbctl(&["server", "list"])?;
    let server = s2(&v, "servers", "name");
    assert_eq!(server["state"], "free", "{v}");
    assert!(
        server["services"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|b| b["state"] != "retired"),
        "{v}"
    );
    assert_eq!(s2(&v, "monitors", "host")["pool"], "free", "{v}");
    Ok(())
}

/// The manager generation of the newest event that has one.
fn last_event_generation(bal: &Balancer) -> Option<u64> {
    bal.lbctl(&["events"])
        .ok()?
        .get("events")?
        .as_array()?
        .iter()
        .rev()
        .find_map(|e| e["generation"].as_u64())
}

/// `lbctl status`, `lbctl config reload` and `lbctl events` give the same
/// manager generation, and status names both of its generations.
#[test]
fn status_reload_and_events_agree_on_the_generation() -> Result<()> {
    if !require_root("status_reload_and_events_agree_on_the_generation") {
        return Ok(());
    }
    let (_lab, _fleet, bal) = build()?;
    // The manager's first change: every service sent at start.
    assert!(
        wait_until(Duration::from_secs(10), || last_event_generation(&bal)
            .is_some()),
        "no synced event"
    );
    let started = last_event_generation(&bal).context("generation")?;
    let status = bal.lbctl(&["status"])?;
    assert_eq!(status["manager_generation"], started, "{status}");
    assert_eq!(status["table_generation"], status["generation"], "{status}");
    let table = status["table_generation"].as_u64().context("table")?;
    let text = bal.lbctl_text(&["status"])?;
    assert!(
        text.contains(&format!("table generation    {table} "))
            && text.contains(&format!("manager generation  {started} ")),
        "{text}"
    );

    // A reload is a manager change: one new manager generation, the same
    // in its answer, in status and in the events; no table changed.
    let reloaded = bal.lbctl(&["config", "reload"])?;
    let generation = reloaded["manager_generation"]
        .as_u64()
        .with_context(|| format!("{reloaded}"))?;
    assert!(generation > started, "{reloaded}");
    assert_eq!(reloaded["table_generation"], table, "{reloaded}");
    assert_eq!(bal.lbctl(&["status"])?["manager_generation"], generation);
    assert_eq!(last_event_generation(&bal), Some(generation));

    let text = bal.lbctl_text(&["config", "reload"])?;
    let next = generation + 1;
    assert!(
        text.contains(&format!("manager generation {next},"))
            && text.contains(&format!("table generation {table}")),
        "{text}"
    );
    let status = bal.lbctl_text(&["status"])?;
    assert!(
        status.contains(&format!("manager generation  {next} ")),
        "{status}"
    );
    let events = bal.lbctl_text(&["events"])?;
    assert!(
        events.contains(&format!("[manager generation {next}]")),
        "{events}"
    );
    Ok(())
}

/// A server whose certificate is not the one the file pins (reissued, or
/// someone else's) is refused at every hello until an operator re-pins it:
/// `lbctl server repin` writes the certificate it presented into the file,
/// and its agent's next stream is taken.
#[test]
fn a_server_is_refused_until_its_new_certificate_is_pinned() -> Result<()> {
    if !require_root("a_server_is_refused_until_its_new_certificate_is_pinned") {
        return Ok(());
    }
    let (lab, fleet, bal) = build()?;
    let text = std::fs::read_to_string(&bal.config_path)?;
    let pinned = "ab".repeat(32);
    let text = text.replacen(
        "name = \"s2\"\n",
        &format!("name = \"s2\"\nfingerprint = \"{pinned}\"\n"),
        1,
    );
    std::fs::write(&bal.config_path, &text)?;
    bal.lbctl(&["config", "reload"])?;
    // Not pinned yet: nothing to re-pin.
    let err = bal
        .lbctl(&["server", "repin", "s2"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to re-pin"), "{err}");
    let _agent = fleet.start_agent(&lab, 1, PORT, INTERVAL_MS)?;
    let refused = wait_until(Duration::from_secs(20), || {
        bal.lbctl(&["events"]).is_ok_and(|v| {
            v["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["kind"] == "identity-refused" && e["server"] == "s2")
            })
        })
    });
    assert!(refused, "s2's hello was not refused: {:?}", pool_rows(&bal));
    assert!(
        pool_rows(&bal)?
            .iter()
            .any(|(s, _, monitor)| s == "s2" && monitor == "never connected"),
        "{:?}",
        pool_rows(&bal)
    );
    let done = bal.lbctl(&["server", "repin", "s2"])?;
    let message = done["message"].as_str().unwrap_or_default().to_owned();
    let text = std::fs::read_to_string(&bal.config_path)?;
    assert!(!text.contains(&pinned), "the old pin stayed: {text}");
    assert!(message.contains("pinned to certificate"), "{done}");
    let monitored = wait_until(Duration::from_secs(30), || {
        pool_rows(&bal).is_ok_and(|rows| {
            rows.iter()
                .any(|(s, _, monitor)| s == "s2" && monitor == "monitored")
        })
    });
    assert!(
        monitored,
        "s2 not taken after the re-pin: {:?}",
        pool_rows(&bal)
    );
    Ok(())
}

/// Adding a certificate's fingerprint to `[manager] denied_fingerprints`
/// in the file cuts its agent off without a restart: the stream ends and
/// every new one is refused.
#[test]
fn a_certificate_denied_in_the_file_is_cut_off_without_a_restart() -> Result<()> {
    if !require_root("a_certificate_denied_in_the_file_is_cut_off_without_a_restart") {
        return Ok(());
    }
    let (lab, fleet, bal) = build()?;
    let _agent = fleet.start_agent(&lab, 1, PORT, INTERVAL_MS)?;
    let monitor_of = |bal: &Balancer| {
        pool_rows(bal)
            .ok()
            .and_then(|rows| rows.into_iter().find(|r| r.0 == "s2").map(|r| r.2))
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(20), || monitor_of(&bal) == "monitored"),
        "s2's agent never reported: {:?}",
        pool_rows(&bal)
    );
    let fp = lb_proto::tls::Pki::new(fleet.pki_dir())
        .load_identity("s2")?
        .fingerprint()?;
    let text = std::fs::read_to_string(&bal.config_path)?;
    let text = text.replacen(
        "[manager]\n",
        &format!("[manager]\ndenied_fingerprints = [\"{fp}\"]\n"),
        1,
    );
    std::fs::write(&bal.config_path, &text)?;
    let denied = wait_until(Duration::from_secs(20), || {
        bal.lbctl(&["events"]).is_ok_and(|v| {
            v["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["kind"] == "identity-denied" && e["server"] == "s2")
            })
        })
    });
    assert!(denied, "s2 was not cut off: {:?}", pool_rows(&bal));
    // Its agent reconnects and is refused each time: never monitored again.
    assert!(
        wait_until(Duration::from_secs(20), || monitor_of(&bal) != "monitored"),
        "s2 still monitored: {:?}",
        pool_rows(&bal)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(monitor_of(&bal), "monitored", "{:?}", pool_rows(&bal));
    Ok(())
}

/// A tmux session of its own, killed (with what runs in it) when dropped.
struct Tmux(String);

impl Tmux {
    /// Starts `command` in a detached 80×24 session.
    fn start(command: &str) -> Result<Self> {
        let name = format!("lbt-top-{}", std::process::id());
        let status = std::process::Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "80",
                "-y",
                "24",
                command,
            ])
            .status()
            .context("tmux (apt-get install tmux)")?;
        anyhow::ensure!(status.success(), "tmux new-session: {status}");
        Ok(Self(name))
    }

    fn screen(&self) -> String {
        std::process::Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn keys(&self, keys: &str) -> Result<()> {
        std::process::Command::new("tmux")
            .args(["send-keys", "-t", &self.0, keys])
            .status()?;
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// The real `lbctl top` in an 80×24 terminal: it shows the pool live,
/// switches nothing on a one-service node, pauses, quits on `q` (the shell
/// after it says exit 0), and, run again, closes saying so when the daemon
/// goes away (exit 3).
#[test]
fn lbctl_top_shows_the_pool_and_ends_cleanly() -> Result<()> {
    if !require_root("lbctl_top_shows_the_pool_and_ends_cleanly") {
        return Ok(());
    }
    let (lab, fleet, mut bal) = build()?;
    let _agent = fleet.start_agent(&lab, 0, PORT, 200)?;
    let lbctl = lb_tests::balancer::workspace_bin("lbctl")?;
    let command = format!(
        "{} --socket {} top --interval-ms 200; echo \"top exited $?\"; sleep 60",
        lbctl.display(),
        bal.socket.display()
    );
    let tmux = Tmux::start(&command)?;
    let shown = wait_until(Duration::from_secs(20), || {
        let s = tmux.screen();
        s.contains("lbctl top")
            && s.contains("s1")
            && s.contains("free pool")
            && s.contains("q quit")
    });
    assert!(shown, "lbctl top never drew the pool:\n{}", tmux.screen());
    tmux.keys("p")?;
    assert!(
        wait_until(Duration::from_secs(5), || tmux
            .screen()
            .contains("[paused]")),
        "{}",
        tmux.screen()
    );
    tmux.keys("q")?;
    assert!(
        wait_until(Duration::from_secs(5), || tmux
            .screen()
            .contains("top exited 0")),
        "q did not end it:\n{}",
        tmux.screen()
    );
    drop(tmux);

    let tmux = Tmux::start(&command)?;
    assert!(
        wait_until(Duration::from_secs(20), || tmux
            .screen()
            .contains("free pool")),
        "{}",
        tmux.screen()
    );
    bal.kill9()?;
    let said = wait_until(Duration::from_secs(10), || {
        let s = tmux.screen();
        s.contains("the daemon went away") && s.contains("top exited 3")
    });
    assert!(
        said,
        "lbctl top did not say the daemon went away:\n{}",
        tmux.screen()
    );
    Ok(())
}

/// `lbctl ARGS` (no `--json`): exit code and stderr.
fn lbctl_failure(bal: &Balancer, args: &[&str]) -> Result<(Option<i32>, String)> {
    let out = std::process::Command::new(lb_tests::balancer::workspace_bin("lbctl")?)
        .arg("--socket")
        .arg(&bal.socket)
        .args(args)
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Every verb against a real daemon, with `--json`: each answer in the
/// shape docs/cli.md documents; and the common mistakes, each with exit
/// code 1 and a message that says what to fix.
#[test]
fn every_verb_answers_in_its_documented_shape() -> Result<()> {
    if !require_root("every_verb_answers_in_its_documented_shape") {
        return Ok(());
    }
    let (lab, fleet, bal) = build()?;
    let _agents = [
        fleet.start_agent(&lab, 0, PORT, 200)?,
        fleet.start_agent(&lab, 1, PORT, 200)?,
    ];
    let monitored = wait_until(Duration::from_secs(20), || {
        pool_rows(&bal).is_ok_and(|rows| {
            rows.iter()
                .any(|(s, _, monitor)| s == "s2" && monitor == "monitored")
        })
    });
    assert!(monitored, "{:?}", pool_rows(&bal));
    // (arguments, the response's tag, fields it must have)
    let checks: [(&[&str], &str, &[&str]); 13] = [
        (
            &["status"],
            "status",
            &[
                "program_id",
                "adoption",
                "table_generation",
                "manager_generation",
                "pin_dir",
                "interfaces",
            ],
        ),
        (&["service", "list"], "services", &["services"]),
        (&["server", "list"], "servers", &["servers", "monitors"]),
        (&["pool"], "pool", &["pools", "unassigned"]),
        (&["events"], "events", &["events"]),
        (
            &["stats"],
            "stats",
            &["global", "flows", "services", "manager", "decisions"],
        ),
        (
            &["config", "reload"],
            "reloaded",
            &["table_generation", "manager_generation"],
        ),
        (
            &["server", "allocate", "s2"],
            "done",
            &["generation", "message"],
        ),
        (
            &["server", "deallocate", "s2"],
            "done",
            &["generation", "message"],
        ),
        (
            &["server", "allocate", "s2"],
            "done",
            &["generation", "message"],
        ),
        (
            &["server", "drain", "s2"],
            "done",
            &["generation", "message"],
        ),
        (
            &[
                "service",
                "add",
                "api",
                "--vip",
                "10.99.0.1",
                "--port",
                "8080",
            ],
            "done",
            &["generation", "message"],
        ),
        (
            &["service", "remove", "api"],
            "done",
            &["generation", "message"],
        ),
    ];
    for (args, tag, fields) in checks {
        let v = bal.lbctl(args)?;
        assert_eq!(v["response"], tag, "lbctl {args:?}: {v}");
        for field in fields {
            assert!(v.get(field).is_some(), "lbctl {args:?} has no {field}: {v}");
        }
    }
    let services = bal.lbctl(&["service", "list"])?;
    let web = &services["services"][0];
    for field in [
        "name",
        "vip",
        "port",
        "protocol",
        "table_size",
        "packets",
        "new_flows",
    ] {
        assert!(web.get(field).is_some(), "service list: no {field}: {web}");
    }
    let events = bal.lbctl(&["events"])?;
    let last = events["events"]
        .as_array()
        .and_then(|e| e.last())
        .context("no event")?;
    for field in ["id", "time_ms", "kind", "reason"] {
        assert!(last.get(field).is_some(), "event: no {field}: {last}");
    }

    // Mistakes: each exit code 1 with what to fix.
    for (args, says) in [
        (&["server", "drain", "nosuch"][..], "no server `nosuch`"),
        (&["server", "repin", "s1"][..], "nothing to re-pin"),
        (
            &["server", "allocate", "s1"][..],
            "already in service `web`",
        ),
        (&["service", "remove", "nosuch"][..], "nosuch"),
    ] {
        let (code, stderr) = lbctl_failure(&bal, args)?;
        assert_eq!(code, Some(1), "lbctl {args:?}: {stderr}");
        assert!(stderr.contains(says), "lbctl {args:?}: {stderr}");
    }
    // A broken file: the reload names the line, and nothing changes.
    let good = std::fs::read_to_string(&bal.config_path)?;
    std::fs::write(
        &bal.config_path,
        good.replacen("port = 80", "port = \"http\"", 1),
    )?;
    let (code, stderr) = lbctl_failure(&bal, &["config", "reload"])?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("line"), "the error names no line: {stderr}");
    std::fs::write(&bal.config_path, good)?;
    assert_eq!(bal.lbctl(&["status"])?["response"], "status");
    Ok(())
}
