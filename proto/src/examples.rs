//! The examples in `docs/protocol.md`, generated with the real encoder and
//! read back with the real decoder, so the documentation cannot drift.
//!
//! The test fails when the document differs; regenerate with
//! `LB_PROTO_BLESS=1 cargo test -p lb-proto --lib examples`.

use std::fmt::Write as _;

use serde::Serialize as _;

use crate::{
    AckStatus, Decoder, Encoder, ErrorMessage, Message, ProtoError, Role, ServerState,
    SettingsKind, StreamHeader, samples,
};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

/// `seq` of an agent's first message: the Unix time in microseconds when it
/// connected (2026-01-01T00:00:00Z), as `Encoder::new` recommends.
const AGENT_FIRST_SEQ: u64 = 1_767_225_600_000_000;
const MANAGER_FIRST_SEQ: u64 = 1_767_225_600_120_000;
const NODE_FIRST_SEQ: u64 = 1_767_225_590_000_000;

/// One side of a conversation: its encoder, and the peer's decoder reading
/// what it writes.
struct Side {
    label: &'static str,
    encoder: Encoder<Vec<u8>>,
    peer: Decoder,
}

impl Side {
    fn new(label: &'static str, first_seq: u64) -> Self {
        Self {
            label,
            encoder: Encoder::new(Vec::new(), first_seq),
            peer: Decoder::new(),
        }
    }

    fn start(&mut self, out: &mut String, role: Role, host: &str) {
        let header = StreamHeader::new(role, host);
        self.encoder.start(&header).unwrap();
        self.flush(out, None);
        assert_eq!(self.peer.header(), Some(&header));
    }

    /// Sends `message`; the peer must read back exactly it.
    fn send(&mut self, out: &mut String, mut message: Message) {
        self.encoder.encode(&mut message).unwrap();
        self.flush(out, Some(message));
    }

    /// Sends raw bytes; returns what the peer's decoder made of them.
    fn send_raw(&mut self, out: &mut String, bytes: &[u8]) -> Result<Option<Message>, ProtoError> {
        transcribe(out, self.label, bytes);
        self.peer.feed(bytes);
        self.peer.next()
    }

    fn finish(&mut self, out: &mut String) {
        self.encoder.finish().unwrap();
        let bytes = self.encoder.take();
        transcribe(out, self.label, &bytes);
        self.peer.feed(&bytes);
        assert_eq!(self.peer.next(), Err(ProtoError::Closed));
    }

    fn flush(&mut self, out: &mut String, expect: Option<Message>) {
        let bytes = self.encoder.take();
        transcribe(out, self.label, &bytes);
        self.peer.feed(&bytes);
        assert_eq!(self.peer.next(), Ok(expect));
    }
}

/// Appends each line of `bytes` to `out`, prefixed with `label: `.
fn transcribe(out: &mut String, label: &str, bytes: &[u8]) {
    for line in std::str::from_utf8(bytes).unwrap().lines() {
        writeln!(out, "{label}: {line}").unwrap();
    }
}

fn agent_session() -> String {
    let mut out = String::new();
    let mut agent = Side::new("A", AGENT_FIRST_SEQ);
    let mut manager = Side::new("M", MANAGER_FIRST_SEQ);
    agent.start(&mut out, Role::Agent, "web-1");
    manager.start(&mut out, Role::Manager, "manager-1");
    agent.send(&mut out, samples::hello());
    manager.send(&mut out, samples::tunnel_sources());
    for n in 0..3 {
        agent.send(&mut out, samples::report(n));
    }
    manager.send(
        &mut out,
        samples::settings_request(1, SettingsKind::Connection),
    );
    agent.send(&mut out, samples::connection_settings(1));
    manager.send(&mut out, samples::settings_request(2, SettingsKind::Auth));
    agent.send(&mut out, samples::auth_settings(2));
    out
}

fn node_session() -> String {
    let mut out = String::new();
    let mut manager = Side::new("M", MANAGER_FIRST_SEQ);
    let mut node = Side::new("N", NODE_FIRST_SEQ);
    manager.start(&mut out, Role::Manager, "manager-1");
    node.start(&mut out, Role::Node, "node-1");
    manager.send(&mut out, samples::reconfigure(7, ServerState::Allocated));
    node.send(&mut out, samples::ack(7, AckStatus::Ok));

    // A broken reconfigure: the node rejects it and keeps the stream.
    let mut broken = samples::reconfigure(8, ServerState::Draining);
    manager.encoder.encode(&mut broken).unwrap();
    let bytes = String::from_utf8(manager.encoder.take()).unwrap();
    let bytes = bytes.replace(r#"port="80""#, r#"port="http""#);
    let err = manager.send_raw(&mut out, bytes.as_bytes()).unwrap_err();
    assert!(matches!(err, ProtoError::InvalidMessage { .. }), "{err}");
    assert!(!err.is_fatal());
    node.send(&mut out, ErrorMessage::from_error(&err).into());

    manager.send(&mut out, samples::reconfigure(8, ServerState::Draining));
    node.send(&mut out, samples::ack(8, AckStatus::Ok));
    manager.send(&mut out, samples::reconfigure(9, ServerState::Down));
    node.send(&mut out, samples::ack(9, AckStatus::Failed));
    manager.send(&mut out, samples::status_request(3));
    node.send(&mut out, samples::node_status(3));
    manager.send(&mut out, samples::retire(10));
    node.send(&mut out, samples::ack(10, AckStatus::Ok));
    manager.finish(&mut out);
    node.finish(&mut out);
    out
}

fn fatal_session() -> String {
    let mut out = String::new();
    let mut manager = Side::new("M", MANAGER_FIRST_SEQ);
    let mut node = Side::new("N", NODE_FIRST_SEQ);
    manager.start(&mut out, Role::Manager, "manager-1");
    node.start(&mut out, Role::Node, "node-1");
    let laughs = "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol1 \"&lol;&lol;\">]>\n";
    let err = manager.send_raw(&mut out, laughs.as_bytes()).unwrap_err();
    assert!(err.is_fatal());
    node.send(&mut out, ErrorMessage::from_error(&err).into());
    node.encoder.finish().unwrap();
    transcribe(&mut out, node.label, &node.encoder.take());
    out
}

/// One message, indented for reading (the wire form is one line).
fn pretty(mut message: Message, seq: u64) -> String {
    message.set_seq(seq);
    let mut out = String::new();
    let mut serializer = quick_xml::se::Serializer::new(&mut out);
    serializer.indent(' ', 2);
    message.serialize(serializer).unwrap();
    out.push('\n');
    out
}

/// Every generated block, by marker name.
fn blocks() -> Vec<(&'static str, String)> {
    vec![
        ("hello", pretty(samples::hello(), 1)),
        ("report", pretty(samples::report(0), 2)),
        (
            "settings-request",
            pretty(samples::settings_request(1, SettingsKind::Connection), 9),
        ),
        (
            "connection-settings",
            pretty(samples::connection_settings(1), 6),
        ),
        ("auth-settings", pretty(samples::auth_settings(2), 7)),
        ("tunnel-sources", pretty(samples::tunnel_sources(), 8)),
        (
            "reconfigure",
            pretty(samples::reconfigure(7, ServerState::Draining), 3),
        ),
        ("ack", pretty(samples::ack(9, AckStatus::Failed), 5)),
        ("retire", pretty(samples::retire(10), 11)),
        ("status-request", pretty(samples::status_request(3), 12)),
        ("node-status", pretty(samples::node_status(3), 13)),
        ("error", pretty(samples::error(), 4)),
        ("agent-session", agent_session()),
        ("node-session", node_session()),
        ("fatal-session", fatal_session()),
    ]
}

/// Replaces the body of every `<!-- generated:NAME -->` block in `doc`;
/// returns the new document and the names of the blocks that changed.
fn regenerate(doc: &str) -> (String, Vec<&'static str>) {
    let mut doc = doc.to_owned();
    let mut changed = Vec::new();
    for (name, body) in blocks() {
        let open = format!("<!-- generated:{name} -->\n");
        let close = format!("<!-- /generated:{name} -->");
        let start = doc
            .find(&open)
            .unwrap_or_else(|| panic!("no {open:?} in {DOC}"))
            + open.len();
        let len = doc[start..]
            .find(&close)
            .unwrap_or_else(|| panic!("no {close:?} in {DOC}"));
        let want = format!("```xml\n{body}```\n");
        if doc[start..start + len] != want {
            doc.replace_range(start..start + len, &want);
            changed.push(name);
        }
    }
    (doc, changed)
}

#[test]
fn documented_examples_are_current() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let (new, changed) = regenerate(&doc);
    if std::env::var_os("LB_PROTO_BLESS").is_some() {
        std::fs::write(DOC, new).unwrap();
        return;
    }
    assert!(
        changed.is_empty(),
        "examples {changed:?} in docs/protocol.md are stale; regenerate with \
         `LB_PROTO_BLESS=1 cargo test -p lb-proto --lib examples`"
    );
}
