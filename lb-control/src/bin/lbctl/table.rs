//! The human-readable output: a table or a few lines per response.

use lb_control::{
    api::{Reloaded, Response, Stats, Status},
    manager::{
        controller::{PoolMember, PoolReport},
        db::MonitorView,
        events::Event,
        weights::{WEIGHT_SCALE, display_weight},
    },
    node::{BackendView, ServerView, ServiceView},
};

use crate::output::out;

/// Prints `response` for a person to read.
pub fn print_table(response: &Response) {
    match response {
        Response::Status(s) => print_status(s),
        Response::Services { services } => print_services(services),
        Response::Servers { servers, monitors } => {
            print_servers(servers);
            if !monitors.is_empty() {
                out!();
                print_monitors(monitors, servers);
            }
        }
        Response::Stats(s) => print_stats(s),
        Response::Reloaded(r) => print_reloaded(r),
        Response::Done {
            generation,
            message,
        } => print_done(*generation, message),
        Response::Pool { pools, unassigned } => print_pools(pools, unassigned),
        Response::Events { events } => {
            for e in events {
                print_event(e);
            }
        }
        Response::Error { message, .. } => eprintln!("error: {message}"),
    }
}

/// `lbctl status`.
fn print_status(s: &Status) {
    out!("program id          {}", s.program_id);
    out!("adoption            {}", s.adoption);
    out!(
        "table generation    {} (this node's tables: one more at each table flip)",
        s.generation
    );
    match s.manager_generation {
        Some(g) => out!(
            "manager generation  {g} (the manager's last change this node applied; events and config reload name it)"
        ),
        None => out!("manager generation  none (no manager change applied on this node)"),
    }
    out!("pin dir             {}", s.pin_dir);
    out!("interfaces          {}", s.interfaces.join(", "));
}

/// `lbctl service list`.
fn print_services(services: &[ServiceView]) {
    out!(
        "{:<16} {:<40} {:>5} {:<4} {:>7} {:>8} {:>12} {:>10}",
        "NAME",
        "VIP",
        "PORT",
        "PROTO",
        "SERVERS",
        "TABLE",
        "PACKETS",
        "NEW FLOWS"
    );
    for s in services {
        out!(
            "{:<16} {:<40} {:>5} {:<4} {:>7} {:>8} {:>12} {:>10}",
            s.name,
            s.vip,
            s.port,
            s.protocol,
            s.servers,
            s.table_size,
            s.packets,
            s.new_flows
        );
    }
}

/// `lbctl server list`, the node's side: a line per server and service.
fn print_servers(servers: &[ServerView]) {
    out!(
        "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
        "NAME",
        "ADDRESS",
        "STATE",
        "WEIGHT",
        "SERVICE",
        "BACKEND",
        "PACKETS",
        "IDLE"
    );
    for s in servers {
        if s.services.is_empty() {
            out!(
                "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                s.name,
                s.address,
                s.state,
                s.weight,
                "-",
                "-",
                "-",
                "-"
            );
        }
        for b in &s.services {
            let idle = b.idle_secs.map_or("never".to_string(), |i| format!("{i}s"));
            out!(
                "{:<16} {:<40} {:<10} {:>6} {:<12} {:<9} {:>12} {:>8}",
                s.name,
                s.address,
                b.state,
                backend_weight(s, b),
                b.service,
                b.backend,
                b.packets,
                idle
            );
        }
    }
}

/// The weight in force; the file's beside it when they differ.
fn backend_weight(s: &ServerView, b: &BackendView) -> String {
    if b.weight.is_empty() || b.weight == s.weight.to_string() {
        s.weight.to_string()
    } else {
        format!("{} (file {})", b.weight, s.weight)
    }
}

/// `lbctl server list`, the manager's side: every agent it hears.
fn print_monitors(monitors: &[MonitorView], servers: &[ServerView]) {
    out!(
        "{:<16} {:<12} {:>6} {:>11} {:<12} {:<8} {:<6} {:>9}",
        "AGENT",
        "MONITOR",
        "CORES",
        "UTILIZATION",
        "SOURCE",
        "HEALTH",
        "READY",
        "REPORT"
    );
    for m in monitors {
        let pool = monitor_pool(m, servers);
        out!(
            "{:<16} {:<12} {:>6.2} {:>11} {:<12} {:<8} {:<6} {:>9}  pool: {pool}",
            m.host,
            format!("{:?}", m.monitor).to_lowercase(),
            m.cores,
            m.utilization.map_or("-".into(), |u| format!("{u:.3}")),
            m.source.as_deref().unwrap_or("-"),
            m.health.as_deref().unwrap_or("-"),
            m.ready.map_or("-", |r| if r { "yes" } else { "no" }),
            m.report_age_ms.map_or("never".into(), |a| format!("{a}ms")),
        );
    }
}

/// The agent's pool state: filled in by the daemon; from an older one, the
/// node's view.
fn monitor_pool<'a>(m: &'a MonitorView, servers: &'a [ServerView]) -> &'a str {
    m.pool.as_deref().unwrap_or_else(|| {
        servers
            .iter()
            .find(|s| s.name == m.host)
            .map_or(if m.spare { "spare" } else { "unknown" }, |s| {
                s.state.as_str()
            })
    })
}

/// `lbctl stats`.
fn print_stats(s: &Stats) {
    for (k, v) in &s.global {
        out!("{k:<16} {v}");
    }
    out!("{:<16} {}", "flows", s.flows);
    for (kind, n) in &s.decisions {
        out!("{:<16} {n}", format!("events.{kind}"));
    }
}

/// `lbctl config reload`.
fn print_reloaded(r: &Reloaded) {
    let table = r.table_generation;
    let r = &r.report;
    match r.manager_generation {
        // The manager sent the file to every node, this one too.
        Some(g) => out!(
            "the manager sent the configuration to every node as manager generation {g}, all acked; this node is at table generation {table}"
        ),
        None => out!(
            "applied in {} µs, table generation {table}: services +{:?} -{:?}, tables flipped {:?}, backends +{} -{}",
            r.micros,
            r.services_added,
            r.services_removed,
            r.tables_flipped,
            r.backends_added,
            r.backends_removed
        ),
    }
    if !r.unresolved.is_empty() {
        out!("unresolved servers (left out): {:?}", r.unresolved);
    }
}

/// A change the manager made, with its generation (0: none).
fn print_done(generation: u64, message: &str) {
    if generation > 0 {
        out!("{message} (manager generation {generation})");
    } else {
        out!("{message}");
    }
}

/// `lbctl pool`.
fn print_pools(pools: &[PoolReport], unassigned: &[PoolMember]) {
    for p in pools {
        let desired = p
            .desired_servers
            .map_or_else(String::new, |n| format!(", the policy wants {n}"));
        out!(
            "service {} (application {}), manager generation {}{desired}",
            p.service,
            p.application,
            p.generation
        );
        print_pool_members(p.members.iter().chain(&p.free));
    }
    if !unassigned.is_empty() {
        out!("in no pool (no service listed, no agent hosting a configured application)");
        print_pool_members(unassigned.iter());
    }
}

fn print_pool_members<'a>(members: impl Iterator<Item = &'a PoolMember>) {
    out!(
        "  {:<16} {:<22} {:<15} {:<8} {:>11} {:>6} {:>6} {:>8}",
        "SERVER",
        "STATE",
        "MONITOR",
        "HEALTH",
        "UTILIZATION",
        "CORES",
        "WEIGHT",
        "VIP CONN"
    );
    for m in members {
        out!(
            "  {:<16} {:<22} {:<15} {:<8} {:>11} {:>6.2} {:>6} {:>8}",
            m.server,
            m.state,
            m.monitor,
            m.health,
            m.utilization.map_or("-".into(), |u| format!("{u:.3}")),
            m.capacity,
            weight_column(m),
            m.vip_established.map_or("-".into(), |n| n.to_string()),
        );
    }
}

/// The weight in force in file units, and the file's when they differ.
fn weight_column(m: &PoolMember) -> String {
    let shown = |w: f64| display_weight(in_hundredths(w), WEIGHT_SCALE);
    match (m.weight, m.file_weight) {
        (Some(w), Some(f)) if (w - f64::from(f)).abs() > 1e-9 => format!("{} (file {f})", shown(w)),
        (Some(w), _) => shown(w),
        (None, _) => "-".into(),
    }
}

/// A weight in file units (the daemon's hundredths divided back) in
/// hundredths again.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the daemon sent hundredths that were a u32 as file units, so the rounded product is one again;               `as` saturates should a newer daemon send something else"
)]
fn in_hundredths(w: f64) -> u32 {
    (w * f64::from(WEIGHT_SCALE)).round() as u32
}

/// One event on one line (`lbctl events`, and `--follow` as they come).
pub fn print_event(e: &Event) {
    let secs = e.time_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let took = e
        .duration_ms
        .map_or(String::new(), |d| format!(" ({d} ms)"));
    let generation = e
        .generation
        .map_or(String::new(), |g| format!(" [manager generation {g}]"));
    out!(
        "#{:<5} {h:02}:{m:02}:{s:02}.{:03} {:<18} {:<10} {:<12} {}{took}{generation}",
        e.id,
        e.time_ms % 1000,
        e.kind,
        e.service.as_deref().unwrap_or("-"),
        e.server.as_deref().unwrap_or("-"),
        e.reason
    );
}
