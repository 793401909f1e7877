//! A control-socket session's bytes through the daemon's line reader, its
//! request decoder and access check, and the file edit a `service add`
//! makes. It must never panic, and:
//!
//! - lines are cut exactly at newlines; a line over the limit is refused
//!   whole and nothing of it is taken for a request of its own;
//! - a read-only peer never gets a request through that changes anything;
//! - a request that decodes encodes back to the same request;
//! - a `service add`, whatever its strings, either leaves a file the
//!   validator refuses or adds exactly that one service (no TOML injected
//!   beside it: the servers and the other services stay as they were).
//!
//! The first input byte sets the line limit (so short inputs reach it) and
//! the reader's buffer size (so lines arrive cut anywhere).

#![no_main]

use std::path::Path;

use lb_control::{
    api::{Decoded, Line, Request, access::Role, access::reads_only, decode, read_line},
    config::Config,
    manager::config_file::Edit,
};
use libfuzzer_sys::fuzz_target;

const BASE: &str = r#"
[node]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80

[[server]]
name = "s1"
address = "10.0.0.11"
services = ["web"]

[[server]]
name = "s2"
address = "10.0.0.12"
state = "free"
"#;

/// The lines `read_line` must give for `bytes` with limit `max`, worked out
/// by splitting on newlines.
fn expected_lines(bytes: &[u8], max: usize) -> Vec<Line> {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = parts.pop().unwrap_or_default();
    let judge = |part: &[u8]| {
        if part.len() > max {
            Line::TooLong
        } else {
            Line::Request(part.to_vec())
        }
    };
    out.extend(parts.into_iter().map(judge));
    if !last.is_empty() {
        out.push(judge(last));
    }
    out.push(Line::End);
    out
}

fn lines(bytes: &[u8], max: usize, capacity: usize) -> Vec<Line> {
    let mut read = tokio::io::BufReader::with_capacity(capacity, bytes);
    let mut out = Vec::new();
    loop {
        let line = futures::executor::block_on(read_line(&mut read, max)).expect("a slice reads");
        let end = line == Line::End;
        out.push(line);
        if end {
            return out;
        }
    }
}

/// `service add` on the base file: refused by the validator, or exactly
/// the one service more.
fn check_service_add(edit: &Edit, name: &str) {
    let base = Config::parse(BASE, Path::new("fuzz.toml")).expect("the base file is valid");
    let mut doc: toml_edit::DocumentMut = BASE.parse().expect("the base file parses");
    if edit.apply(&mut doc).is_err() {
        return;
    }
    let Ok(after) = Config::parse(&doc.to_string(), Path::new("fuzz.toml")) else {
        return;
    };
    assert_eq!(after.service.len(), base.service.len() + 1, "{doc}");
    assert!(after.service.iter().any(|s| s.name == name), "{doc}");
    let names = |c: &Config| -> Vec<(String, String)> {
        c.server
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    format!("{:?} {:?} {:?}", s.address, s.state, s.services),
                )
            })
            .collect()
    };
    assert_eq!(names(&after), names(&base), "servers changed: {doc}");
}

fn check_request(text: &[u8]) {
    let as_reader = decode(text, Role::Read);
    let as_admin = decode(text, Role::Admin);
    if let Decoded::Run(request) = &as_reader {
        assert!(reads_only(request), "a reader ran {request:?}");
    }
    if let Decoded::Run(request) = &as_admin {
        let once = serde_json::to_string(request).expect("encodes");
        let again: Request = serde_json::from_str(&once).expect("decodes what it encoded");
        assert_eq!(serde_json::to_string(&again).expect("encodes"), once);
        if let Request::ServiceAdd(service) = request {
            check_service_add(&Edit::AddService(service.clone()), &service.name);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, bytes)) = data.split_first() else {
        return;
    };
    let max = usize::from(head & 0x7f) * 16 + 1;
    let capacity = if head & 0x80 == 0 { 4096 } else { 1 };
    let got = lines(bytes, max, capacity);
    assert_eq!(got, expected_lines(bytes, max));
    for line in got {
        if let Line::Request(text) = line {
            check_request(&text);
        }
    }
});
