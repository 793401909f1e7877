//! How `lbctl top` draws its state: a header, the selected service's
//! members (utilization bars, weights, rates), its free pool, the latest
//! events, and the keys. Fits 80×24.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Table, Wrap},
};

use super::model::{ServiceRows, Top};

/// Width of a utilization bar, in cells.
const BAR: u16 = 10;

/// Draws `top` into the whole of `frame`.
pub fn render(frame: &mut Frame, top: &Top) {
    let [header, pool, free, events, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_line(top)), header);
    match top.services.get(top.selected) {
        Some(service) => {
            render_members(frame, pool, service);
            render_free(frame, free, service);
        }
        None => frame.render_widget(
            Paragraph::new("no service on this node").block(Block::default().borders(Borders::ALL)),
            pool,
        ),
    }
    render_events(frame, events, top);
    // The daemon's last refusal, where the keys are, until a poll passes.
    let bottom = match &top.error {
        Some(e) => Line::styled(
            format!("error: {e} (polling again)"),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        None => Line::from("q quit · ←/→ or tab: service · p pause"),
    };
    frame.render_widget(Paragraph::new(bottom), keys);
}

fn header_line(top: &Top) -> Line<'static> {
    let mut spans = vec![Span::styled(
        "lbctl top",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    for (i, s) in top.services.iter().enumerate() {
        let style = if i == top.selected {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!(" {} ", s.name), style));
    }
    spans.push(Span::raw(format!(
        "  program {} · table gen {}",
        top.program_id, top.table_generation
    )));
    if let Some(g) = top.manager_generation {
        spans.push(Span::raw(format!(" · manager gen {g}")));
    }
    if top.paused {
        spans.push(Span::styled(
            "  [paused]",
            Style::default().add_modifier(Modifier::BOLD),
        ));
    }
    Line::from(spans)
}

/// `████░░░░░░ 0.41`, or `-` without a figure.
fn bar(utilization: Option<f64>) -> String {
    let Some(u) = utilization.filter(|u| u.is_finite()) else {
        return "-".to_owned();
    };
    let clamped = u.clamp(0.0, 1.0);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "0..=BAR"
    )]
    let full = (clamped * f64::from(BAR)).round() as usize;
    let empty = usize::from(BAR).saturating_sub(full);
    format!("{}{} {u:.2}", "█".repeat(full), "░".repeat(empty))
}

fn figure(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn render_members(frame: &mut Frame, area: Rect, service: &ServiceRows) {
    let rows = service.members.iter().map(|m| {
        TableRow::new(vec![
            Cell::from(m.server.clone()),
            Cell::from(m.state.clone()),
            Cell::from(bar(m.utilization)),
            Cell::from(figure(m.weight, 2)),
            Cell::from(figure(m.flows_per_s, 1)),
            Cell::from(figure(m.packets_per_s, 0)),
        ])
    });
    let title = format!(
        " {} {} · {} flows/s · {} pkts/s ",
        service.name,
        service.endpoint,
        figure(service.flows_per_s, 1),
        figure(service.packets_per_s, 0)
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(BAR + 6),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(
        TableRow::new(["SERVER", "STATE", "UTIL", "WEIGHT", "FLOWS/s", "PKTS/s"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(title));
    frame.render_widget(table, area);
}

fn render_free(frame: &mut Frame, area: Rect, service: &ServiceRows) {
    let text = if service.free.is_empty() {
        "none".to_owned()
    } else {
        service
            .free
            .iter()
            .map(|f| match f.utilization {
                Some(u) => format!("{} ({}, {u:.2})", f.server, f.state),
                None => format!("{} ({})", f.server, f.state),
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" free pool ")),
        area,
    );
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the epoch.
fn clock(time_ms: u64) -> String {
    let secs = time_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn render_events(frame: &mut Frame, area: Rect, top: &Top) {
    let shown = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line> = top
        .events
        .iter()
        .rev()
        .take(shown)
        .rev()
        .map(|e| {
            let names: Vec<&str> = [e.service.as_deref(), e.server.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            let who = if names.is_empty() {
                String::new()
            } else {
                format!(" {}", names.join("/"))
            };
            Line::from(format!(
                "{} {}{who}: {}",
                clock(e.time_ms),
                e.kind,
                e.reason
            ))
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" events ")),
        area,
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use lb_control::{
        manager::controller::{PoolMember, PoolReport},
        manager::events::Event,
        node::{BackendView, ServerView, ServiceView},
    };
    use ratatui::{Terminal, backend::TestBackend};

    use super::{super::model::Poll, *};

    fn service(flows: u64, packets: u64) -> ServiceView {
        ServiceView {
            name: "web".into(),
            vip: "10.0.0.100".parse().expect("ip"),
            port: 80,
            protocol: "tcp".into(),
            index: 0,
            active_slot: 0,
            table_size: 13,
            generation: 3,
            servers: 2,
            packets,
            bytes: packets * 100,
            new_flows: flows,
        }
    }

    fn server(name: &str, flows: u64, packets: u64) -> ServerView {
        ServerView {
            name: name.into(),
            address: "10.0.0.11".parse().expect("ip"),
            state: "allocated".into(),
            weight: 1,
            services: vec![BackendView {
                service: "web".into(),
                weight: "1.5".into(),
                backend: 0,
                incarnation: 1,
                state: "active".into(),
                mac: String::new(),
                ifindex: 2,
                packets,
                bytes: packets * 100,
                new_flows: flows,
                idle_secs: None,
            }],
        }
    }

    fn member(name: &str, state: &str, utilization: f64) -> PoolMember {
        PoolMember {
            server: name.into(),
            state: state.into(),
            monitor: "monitored".into(),
            health: "up".into(),
            utilization: Some(utilization),
            capacity: 1.0,
            weight: Some(1.5),
            file_weight: Some(1),
            vip_established: Some(0),
        }
    }

    fn poll(flows: u64, packets: u64, events: Vec<Event>) -> Poll {
        Poll {
            program_id: 42,
            table_generation: 7,
            manager_generation: Some(9),
            services: vec![service(flows * 2, packets * 2)],
            servers: vec![server("s1", flows, packets), server("s2", flows, packets)],
            pools: Some(vec![PoolReport {
                service: "web".into(),
                application: "web".into(),
                generation: 9,
                members: vec![
                    member("s1", "allocated", 0.8),
                    member("s2", "allocated", 0.3),
                ],
                free: vec![member("s3", "free", 0.05)],
                desired_servers: Some(2),
            }]),
            events,
        }
    }

    fn text(top: &Top) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
        terminal.draw(|f| render(f, top)).expect("draw");
        let buffer = terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Two polls a second apart in 80×24: members with their bars,
    /// weights and rates, the free pool, the event, the keys.
    #[test]
    fn a_service_fits_80_by_24_with_its_rates() {
        let mut top = Top::default();
        let t0 = Instant::now();
        top.update(poll(100, 1000, Vec::new()), t0);
        let event = Event {
            id: 5,
            time_ms: 3_723_000,
            kind: "allocated".into(),
            service: Some("web".into()),
            server: Some("s2".into()),
            reason: "in the pool on every node".into(),
            duration_ms: Some(52),
            generation: Some(9),
            observed_ms: None,
        };
        top.update(poll(140, 1400, vec![event]), t0 + Duration::from_secs(1));
        let screen = text(&top);
        assert!(screen.contains("program 42"), "{screen}");
        assert!(screen.contains("manager gen 9"), "{screen}");
        assert!(screen.contains("web 10.0.0.100:80 tcp"), "{screen}");
        // s1: 0.8 → 8 of 10 cells; 40 new flows and 400 packets in 1 s.
        let s1 = screen.lines().find(|l| l.contains("s1")).expect("s1 line");
        assert!(s1.contains("████████░░ 0.80"), "{s1}");
        assert!(
            s1.contains("1.50") && s1.contains("40.0") && s1.contains("400"),
            "{s1}"
        );
        assert!(screen.contains("80.0 flows/s"), "{screen}");
        assert!(screen.contains("s3 (free, 0.05)"), "{screen}");
        assert!(
            screen.contains("01:02:03 allocated web/s2: in the pool on every node"),
            "{screen}"
        );
        assert!(screen.contains("q quit"), "{screen}");
        assert_eq!(top.last_event, 5);
        // The first poll has no rate yet.
        let mut fresh = Top::default();
        fresh.update(poll(1, 1, Vec::new()), t0);
        let first = text(&fresh);
        let s1 = first.lines().find(|l| l.contains("s1")).expect("s1 line");
        let dashes = s1.split_whitespace().filter(|t| *t == "-").count();
        assert_eq!(dashes, 2, "{s1}");
    }

    #[test]
    fn keys_switch_services_and_pause_shows() {
        let mut top = Top::default();
        let mut p = poll(1, 1, Vec::new());
        let mut other = service(1, 1);
        other.name = "api".into();
        p.services.push(other);
        top.update(p, Instant::now());
        assert_eq!(top.services[top.selected].name, "web");
        top.switch(true);
        assert_eq!(top.services[top.selected].name, "api");
        top.switch(true);
        assert_eq!(top.services[top.selected].name, "web");
        top.switch(false);
        assert_eq!(top.services[top.selected].name, "api");
        top.paused = true;
        top.error = Some("config file unreadable".into());
        let screen = text(&top);
        assert!(screen.contains("[paused]"), "{screen}");
        assert!(screen.contains("error: config file unreadable"), "{screen}");
        assert!(screen.contains("api 10.0.0.100:80"), "{screen}");
    }
}
