//! `lbctl top`: a live view of one node's services, polled from its
//! control socket — members with utilization bars, weights, new flows/s and
//! packets/s from the XDP counters, the free pool, the latest scaling
//! events. Keys: ←/→ or tab switch service, p pauses, q or Ctrl-C quits.
//! When the daemon goes away the view closes and says so (exit code 3).

mod model;
mod view;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use lb_control::api::{ClientError, ErrorKind, Request, Response, call};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::error::Error;
use model::{Poll, Top};

/// How long the view waits for a key between redraws.
const KEY_WAIT: Duration = Duration::from_millis(100);
/// How long one poll may take before the daemon counts as gone (a stopped
/// daemon accepts connections and never answers).
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the view until a quit key or the daemon goes away.
pub fn run(socket: &Path, service: Option<&str>, interval: Duration) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let mut top = Top::default();
    // The first poll before the screen changes: no daemon, no full-screen
    // view to tear down.
    top.update(
        poll_within(runtime.block_on(poll_timed(socket, 0)))?,
        Instant::now(),
    );
    if let Some(name) = service {
        top.selected = top
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| Error::Daemon(format!("no service `{name}` on this node")))?;
    }
    let mut terminal = ratatui::try_init().map_err(Error::Terminal)?;
    let result = watch(&runtime, socket, interval, &mut top, &mut terminal);
    ratatui::restore();
    result
}

fn watch(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    interval: Duration,
    top: &mut Top,
    terminal: &mut ratatui::DefaultTerminal,
) -> Result<(), Error> {
    let mut polled = Instant::now();
    loop {
        if !top.paused && polled.elapsed() >= interval {
            let after = top.last_event;
            // A refusal (say, the manager's file mid-edit) is shown and
            // polled again; a daemon gone ends the view.
            match poll_within(runtime.block_on(poll_timed(socket, after))) {
                Ok(p) => {
                    top.update(p, Instant::now());
                    top.error = None;
                }
                Err(Error::Daemon(message)) => top.error = Some(message),
                Err(e) => return Err(e),
            }
            polled = Instant::now();
        }
        terminal
            .draw(|frame| view::render(frame, top))
            .map_err(Error::Terminal)?;
        if !event::poll(KEY_WAIT).map_err(Error::Terminal)? {
            continue;
        }
        let Event::Key(key) = event::read().map_err(Error::Terminal)? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Ok(()),
            KeyCode::Right | KeyCode::Tab => top.switch(true),
            KeyCode::Left | KeyCode::BackTab => top.switch(false),
            KeyCode::Char('p' | ' ') => top.paused = !top.paused,
            _ => {}
        }
    }
}

/// [`poll`] within [`POLL_TIMEOUT`].
async fn poll_timed(
    socket: &Path,
    after: u64,
) -> Result<Result<Poll, Error>, tokio::time::error::Elapsed> {
    tokio::time::timeout(POLL_TIMEOUT, poll(socket, after)).await
}

/// A poll that timed out counts as the daemon gone.
fn poll_within(
    polled: Result<Result<Poll, Error>, tokio::time::error::Elapsed>,
) -> Result<Poll, Error> {
    polled.unwrap_or_else(|_| {
        Err(Error::Gone(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", POLL_TIMEOUT.as_secs()),
        ))))
    })
}

/// One round of requests: status, services, servers, the manager's pools
/// (none on a node without the manager) and the events after `after`.
async fn poll(socket: &Path, after: u64) -> Result<Poll, Error> {
    let ask = |request: Request| async move {
        let response = call(socket, &request).await.map_err(Error::Gone)?;
        match response {
            Response::Error { kind, message } => Err((kind, message)),
            r => Ok(r),
        }
        .or_else(|(kind, message)| match kind {
            ErrorKind::NoManager => Ok(Response::Error { kind, message }),
            _ => Err(Error::Daemon(message)),
        })
    };
    let mut poll = Poll::default();
    if let Response::Status(s) = ask(Request::Status).await? {
        poll.program_id = s.program_id;
        poll.table_generation = s.table_generation;
        poll.manager_generation = s.manager_generation;
    }
    if let Response::Services { services } = ask(Request::ServiceList).await? {
        poll.services = services;
    }
    if let Response::Servers { servers, .. } = ask(Request::ServerList).await? {
        poll.servers = servers;
    }
    if let Response::Pool { pools, .. } = ask(Request::Pool).await? {
        poll.pools = Some(pools);
    }
    if let Response::Events { events } = ask(Request::Events {
        after,
        follow: false,
    })
    .await?
    {
        poll.events = events;
    }
    Ok(poll)
}
