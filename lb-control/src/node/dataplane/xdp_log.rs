//! The XDP program's own log records, in this process's log.
//!
//! The debug variant of the program (lb-ebpf's `debug-log` feature, loaded
//! with `[node] debug_xdp`) writes aya-log records into its ring buffer
//! `AYA_LOGS` ([`LOG_RING`], pinned with the other maps). A task on the
//! daemon's runtime reads them ([`forward`]) and
//! writes each as a `tracing` event with target [`TARGET`], so they sit in
//! the same stream, text or JSON, as the daemon's own. A record reads
//! `<event in words> key=value ...` (lb-ebpf's `debug.rs`); the known keys
//! become the event's fields, numbers as numbers.
//!
//! The ring buffer outlives this process: while no controller reads it,
//! records wait there (and new ones are lost once it is full); a restarted
//! controller that adopts the program reads on from there. Nothing here
//! needs more than the unit's capabilities (no walk of the kernel's
//! program or map ids, which takes `CAP_SYS_ADMIN`).

use std::path::Path;

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{Level, info, warn};

use super::maps::LOG_RING;

/// The `tracing` target of the program's records.
pub const TARGET: &str = "xdp";

/// Keys of a record that become fields of their own (numbers).
const NUMBERS: [&str; 4] = ["service", "backend", "client_port", "ifindex"];
/// Keys of a record that become fields of their own (text).
const WORDS: [&str; 3] = ["reason", "client", "server"];

/// Why the program's records are not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum XdpLogError {
    #[error("cannot open the XDP program's log ring: {0}")]
    Open(#[source] aya_log::Error),
    #[error("cannot poll the XDP program's log ring: {0}")]
    Poll(#[source] std::io::Error),
    #[error("no tokio runtime to read the XDP program's log ring on")]
    NoRuntime,
}

/// Whether the loaded object logs (it is a debug variant).
#[must_use]
pub fn object_logs(ebpf: &Ebpf) -> bool {
    ebpf.map(LOG_RING.name).is_some()
}

/// Starts reading the log ring of the object in `ebpf` (taking it out) on
/// the current tokio runtime; the task lives as long as the runtime. The
/// ring is pinned, so it is the running program's also when that program
/// was adopted rather than loaded now.
///
/// # Errors
/// The object has no log ring, it cannot be polled, or there is no
/// runtime.
pub fn forward(ebpf: &mut Ebpf) -> Result<(), XdpLogError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| XdpLogError::NoRuntime)?;
    let logger = EbpfLogger::init_with_logger(ebpf, ToTracing).map_err(XdpLogError::Open)?;
    let _entered = runtime.enter();
    // SAFETY: the descriptor is the ring buffer's map, which the logger
    // owns and keeps open, unchanged, until it is dropped with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| XdpLogError::Poll(e.into_parts().1))?;
    runtime.spawn(async move {
        loop {
            match ring.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(e) => {
                    warn!(error = %XdpLogError::Poll(e), "the XDP program's log is no longer read");
                    return;
                }
            }
        }
    });
    info!("forwarding the XDP program's log records (target xdp)");
    Ok(())
}

/// Removes the pinned log ring a debug program left, once a program that
/// does not log runs (it holds records no one will read).
pub fn unpin_ring(dir: &Path) {
    let path = dir.join(LOG_RING.name);
    if path.exists() {
        let _ = std::fs::remove_file(&path);
    }
}

/// One `tracing` event of a record; the level must be a constant.
macro_rules! emit {
    ($level:expr, $r:expr) => {
        tracing::event!(
            target: TARGET,
            $level,
            reason = $r.get("reason").map(tracing::field::display),
            service = $r.number("service"),
            backend = $r.number("backend"),
            server = $r.get("server").map(tracing::field::display),
            client = $r.get("client").map(tracing::field::display),
            client_port = $r.number("client_port"),
            ifindex = $r.number("ifindex"),
            other = $r.other().map(tracing::field::display),
            "{}",
            $r.event
        )
    };
}

/// What `EbpfLogger` hands each record to.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        let r = Record::parse(&text);
        match record.level() {
            log::Level::Error => emit!(Level::ERROR, r),
            log::Level::Warn => emit!(Level::WARN, r),
            log::Level::Info => emit!(Level::INFO, r),
            log::Level::Debug => emit!(Level::DEBUG, r),
            log::Level::Trace => emit!(Level::TRACE, r),
        }
    }

    fn flush(&self) {}
}

/// A record's text: the event in words, then `key=value` fields.
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    event: &'a str,
    fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Record<'a> {
    /// Words up to the first `key=value` are the event; what follows that
    /// is not `key=value` is kept in the event's text.
    fn parse(text: &'a str) -> Self {
        let mut start = text.len();
        let mut offset = 0;
        for word in text.split(' ') {
            if word.contains('=') {
                start = offset;
                break;
            }
            offset += word.len() + 1;
        }
        let (event, rest) = text.split_at(start);
        let fields = rest
            .split(' ')
            .filter_map(|w| w.split_once('='))
            .filter(|(k, _)| !k.is_empty())
            .collect();
        Self {
            event: event.trim_end(),
            fields,
        }
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// Fields no known key names (or a number field that is no number),
    /// as they were written.
    fn other(&self) -> Option<String> {
        let known = |k: &str, v: &str| {
            WORDS.contains(&k) || (NUMBERS.contains(&k) && v.parse::<u64>().is_ok())
        };
        let other: Vec<String> = self
            .fields
            .iter()
            .filter(|(k, v)| !known(k, v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        (!other.is_empty()).then(|| other.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_its_event_and_its_fields() {
        let r = Record::parse(
            "new flow from maglev client=10.0.0.1 client_port=40000 service=0 backend=3 server=10.0.0.11",
        );
        assert_eq!(r.event, "new flow from maglev");
        assert_eq!(r.get("client"), Some("10.0.0.1"));
        assert_eq!(r.number("client_port"), Some(40000));
        assert_eq!(r.number("service"), Some(0));
        assert_eq!(r.number("backend"), Some(3));
        assert_eq!(r.get("server"), Some("10.0.0.11"));
        assert_eq!(r.other(), None);
        // An IPv6 address holds colons, never `=` or a space.
        let r = Record::parse("dropped reason=no_backend client=fd00::1 service=2");
        assert_eq!(r.event, "dropped");
        assert_eq!(r.get("reason"), Some("no_backend"));
        assert_eq!(r.get("client"), Some("fd00::1"));
    }

    #[test]
    fn what_is_not_a_known_field_is_kept() {
        let r = Record::parse("dropped reason=fragment");
        assert_eq!((r.event, r.get("reason")), ("dropped", Some("fragment")));
        assert_eq!(Record::parse("plain words").event, "plain words");
        assert!(Record::parse("plain words").fields.is_empty());
        let r = Record::parse("odd backend=x colour=blue");
        assert_eq!(r.number("backend"), None);
        assert_eq!(r.other().as_deref(), Some("backend=x colour=blue"));
        assert_eq!(Record::parse("").event, "");
        assert_eq!(Record::parse("=x a=b").event, "");
    }
}
