//! Every decision the manager takes, as an event with its reason: kept in
//! memory for `lbctl events`, appended to `events.jsonl` in the manager's
//! state directory (so history survives a restart), logged, and counted.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// Events kept in memory (and re-read from the file at start).
const KEEP: usize = 2000;
/// The file is rewritten with the last `KEEP` events past this size.
const ROTATE_BYTES: u64 = 8 << 20;

/// One decision or observation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Increasing number.
    pub id: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What happened: `allocating`, `allocated`, `allocation-failed`,
    /// `rolled-back`, `draining`, `deallocated`, `failed`, `restored`,
    /// `crossed`, `weights`, `notice`, `unmonitored`, `conflict`,
    /// `settings-refused`, ...
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Why, in a sentence with the numbers.
    pub reason: String,
    /// How long the action took, when it is the end of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The generation it was sent to the nodes with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// When what the event reports was observed, if before `time_ms` (a
    /// threshold crossing: the arrival of the report that crossed), in
    /// milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_ms: Option<u64>,
}

/// Builder for [`EventLog::record`].
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    pub kind: &'static str,
    pub service: Option<String>,
    pub server: Option<String>,
    pub reason: String,
    pub duration: Option<Duration>,
    pub generation: Option<u64>,
    pub observed: Option<SystemTime>,
}

impl NewEvent {
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            ..Self::default()
        }
    }
    #[must_use]
    pub fn service(mut self, s: &str) -> Self {
        self.service = Some(s.to_owned());
        self
    }
    #[must_use]
    pub fn server(mut self, s: &str) -> Self {
        self.server = Some(s.to_owned());
        self
    }
    #[must_use]
    pub fn took(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }
    #[must_use]
    pub fn generation(mut self, g: u64) -> Self {
        self.generation = Some(g);
        self
    }
    #[must_use]
    pub fn observed(mut self, at: SystemTime) -> Self {
        self.observed = Some(at);
        self
    }
}

struct Inner {
    events: VecDeque<Event>,
    next_id: u64,
    counts: BTreeMap<String, u64>,
    file: Option<PathBuf>,
}

/// The event log.
pub struct EventLog {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
}

impl EventLog {
    /// A log that also appends to `dir/events.jsonl` (re-read now).
    #[must_use]
    pub fn open(dir: Option<&Path>) -> Self {
        let file = dir.map(|d| d.join("events.jsonl"));
        let mut events = VecDeque::new();
        if let Some(path) = &file
            && let Ok(text) = std::fs::read_to_string(path)
        {
            for line in text.lines() {
                // A line torn by a crash does not parse: it is skipped.
                if let Ok(e) = serde_json::from_str::<Event>(line) {
                    if events.len() == KEEP {
                        events.pop_front();
                    }
                    events.push_back(e);
                }
            }
        }
        let next_id = events.back().map_or(1, |e: &Event| e.id + 1);
        let (tx, _) = broadcast::channel(1024);
        Self {
            inner: Mutex::new(Inner {
                events,
                next_id,
                counts: BTreeMap::new(),
                file,
            }),
            tx,
        }
    }

    /// Records, logs, counts and publishes an event.
    pub fn record(&self, new: NewEvent) -> Event {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, lb_proto::time::millis);
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let event = Event {
            id: inner.next_id,
            time_ms,
            kind: new.kind.to_owned(),
            service: new.service,
            server: new.server,
            reason: new.reason,
            duration_ms: new.duration.map(lb_proto::time::millis),
            generation: new.generation,
            observed_ms: new.observed.map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, lb_proto::time::millis)
            }),
        };
        inner.next_id += 1;
        *inner.counts.entry(event.kind.clone()).or_default() += 1;
        if inner.events.len() == KEEP {
            inner.events.pop_front();
        }
        inner.events.push_back(event.clone());
        if let Some(path) = inner.file.clone() {
            append(&path, &event, &inner.events);
        }
        drop(inner);
        info!(
            event = %event.kind,
            service = event.service.as_deref().unwrap_or("-"),
            server = event.server.as_deref().unwrap_or("-"),
            duration_ms = event.duration_ms,
            generation = event.generation,
            "{}",
            event.reason
        );
        let _ = self.tx.send(event.clone());
        event
    }

    /// Events with an id above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .events
            .iter()
            .filter(|e| e.id > after)
            .cloned()
            .collect()
    }

    /// Events recorded from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// How many events of each kind this process recorded (metrics).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counts
            .clone()
    }
}

fn append(path: &Path, event: &Event, kept: &VecDeque<Event>) {
    let Ok(mut line) = serde_json::to_vec(event) else {
        return;
    };
    line.push(b'\n');
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(&line)?;
            f.metadata()
        });
    match result {
        Ok(meta) if meta.len() > ROTATE_BYTES => {
            let mut text = Vec::new();
            for e in kept {
                if let Ok(l) = serde_json::to_vec(e) {
                    text.extend_from_slice(&l);
                    text.push(b'\n');
                }
            }
            if let Err(e) = crate::atomic_file::write(path, &text) {
                warn!(file = %path.display(), error = %e, "cannot rotate the event file");
            }
        }
        Ok(_) => {}
        Err(e) => warn!(file = %path.display(), error = %e, "cannot append to the event file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_counted_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(Some(dir.path()));
        let mut rx = log.subscribe();
        let a = log.record(
            NewEvent::new("allocated", "hot")
                .service("web")
                .server("s2"),
        );
        let b = log.record(NewEvent::new("notice", "no free server").service("web"));
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(rx.try_recv().unwrap(), a);
        assert_eq!(log.since(1), vec![b.clone()]);
        assert_eq!(log.counts()["allocated"], 1);
        // A torn last line (crash mid-append) is skipped.
        let path = dir.path().join("events.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"id\":3,\"ti");
        std::fs::write(&path, text).unwrap();
        let log = EventLog::open(Some(dir.path()));
        assert_eq!(log.since(0), vec![a, b]);
        assert_eq!(log.record(NewEvent::new("drain", "idle")).id, 3);
    }
}
