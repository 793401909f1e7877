//! The `<report>` fast path against serde: every stream gives the same
//! messages and errors with it as without it, and the reports the encoder
//! writes do take it.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::*;
use crate::{
    ApplicationStatus, Cpu, Health, HealthState, Load, Memory, Nic, Readiness, Report, Utilization,
    UtilizationSource,
};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    fn chance(&mut self) -> bool {
        self.next() & 1 == 0
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const TEXTS: &[&str] = &[
    "web-1",
    "eth0",
    "",
    "a b",
    "<&>\"'",
    "tab\there",
    "line\nbreak\r\n",
    "ünïcødé ✓",
    "  padded  ",
    "]]>",
    "&amp;",
    "connection refused (os error 111)",
];

fn text(rng: &mut Rng) -> String {
    (0..=rng.below(3)).map(|_| rng.pick(TEXTS)).collect()
}

fn float(rng: &mut Rng) -> f64 {
    match rng.below(12) {
        0 => 0.0,
        1 => -0.0,
        2 => 1.0,
        3 => 0.1 + 0.2,
        4 => 5e-324,
        5 => f64::MAX,
        6 => -1.5,
        7 => f64::NAN,
        8 => f64::INFINITY,
        9 => 1e21,
        _ => f64::from(u32::try_from(rng.next() % 10_000).unwrap()) / 1000.0,
    }
}

fn u64_value(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.next() % 1000,
        _ => rng.next(),
    }
}

fn u32_value(rng: &mut Rng) -> u32 {
    match rng.below(3) {
        0 => 0,
        1 => u32::MAX,
        _ => (rng.next() % 100) as u32,
    }
}

fn ip(rng: &mut Rng) -> IpAddr {
    match rng.below(3) {
        0 => IpAddr::V4(Ipv4Addr::from((rng.next() >> 32) as u32)),
        1 => IpAddr::V6(Ipv6Addr::from(
            u128::from(rng.next()) << 64 | u128::from(rng.next()),
        )),
        _ => "::ffff:192.0.2.1".parse().unwrap(),
    }
}

/// A report with every field drawn at random, optional ones absent or
/// present, 0..4 NICs and applications.
fn random_report(rng: &mut Rng) -> Report {
    Report {
        seq: 0,
        host: text(rng),
        time_ms: u64_value(rng),
        interval_ms: u64_value(rng),
        utilization: Utilization {
            value: float(rng),
            source: rng.pick(&[
                UtilizationSource::HostCpu,
                UtilizationSource::CgroupCpu,
                UtilizationSource::Connections,
                UtilizationSource::Command,
            ]),
        },
        cpu: Cpu {
            host: float(rng),
            cgroup: rng.chance().then(|| float(rng)),
        },
        load: Load {
            one: float(rng),
            five: float(rng),
            fifteen: float(rng),
        },
        memory: Memory {
            total_bytes: u64_value(rng),
            available_bytes: u64_value(rng),
        },
        nics: (0..rng.below(4))
            .map(|_| Nic {
                name: text(rng),
                rx_bps: u64_value(rng),
                tx_bps: u64_value(rng),
            })
            .collect(),
        applications: (0..rng.below(4))
            .map(|_| ApplicationStatus {
                name: text(rng),
                established: u64_value(rng),
                vip_established: u64_value(rng),
                health: Health {
                    state: rng.pick(&[HealthState::Up, HealthState::Down, HealthState::Unknown]),
                    rise: u32_value(rng),
                    fall: u32_value(rng),
                    ok_streak: u32_value(rng),
                    fail_streak: u32_value(rng),
                    detail: rng.chance().then(|| text(rng)),
                },
                readiness: (0..rng.below(3))
                    .map(|_| Readiness {
                        vip: ip(rng),
                        vip_on_loopback: rng.chance(),
                        arp_ignore: rng.pick(&[0, 1, 2, 255]),
                        arp_announce: rng.pick(&[0, 2, 255]),
                        local_probe: rng.chance(),
                        ready: rng.chance(),
                        decap: rng.chance().then(|| rng.chance()),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// One encoded report, as the line the encoder writes (no newline).
fn encoded(report: Report) -> String {
    let mut encoder = Encoder::new(Vec::new(), 1);
    encoder
        .start(&StreamHeader::new(Role::Agent, "web-1"))
        .unwrap();
    encoder.take();
    encoder.encode(&mut report.into()).unwrap();
    let mut line = String::from_utf8(encoder.take()).unwrap();
    assert_eq!(line.pop(), Some('\n'));
    line
}

/// Everything `next` returns for `bytes` fed in `chunk`-byte pieces, up to
/// a fatal error.
fn outcome(decoder: &mut Decoder, bytes: &[u8], chunk: usize) -> Vec<Result<Message, ProtoError>> {
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next() {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e));
                    if fatal {
                        return out;
                    }
                }
            }
        }
    }
    out
}

/// Decodes `line` (a message between a header and a trailing ack), fed in
/// `chunk`-byte pieces, with and without the fast path; both must say the
/// same. Returns how many reports the fast path read.
fn compare(line: &str, chunk: usize) -> usize {
    compare_with(Limits::default(), line, chunk)
}

fn compare_with(limits: Limits, line: &str, chunk: usize) -> usize {
    let stream = format!(
        "{HEADER}\n{line}\n<ack seq=\"99\" generation=\"1\" status=\"ok\"/>\n</lb-stream>\n"
    );
    let mut fast = Decoder::with_limits(limits);
    let mut serde = Decoder::with_limits(limits);
    serde.fast_reports = false;
    let got = outcome(&mut fast, stream.as_bytes(), chunk);
    let want = outcome(&mut serde, stream.as_bytes(), chunk);
    // NaN is not equal to itself: compare what the values print.
    assert_eq!(format!("{got:?}"), format!("{want:?}"), "{line}");
    assert_eq!(serde.fast_decoded, 0);
    fast.fast_decoded
}

#[test]
fn encoded_reports_take_the_fast_path_and_match_serde() {
    let mut rng = Rng::new(1);
    let n = 2000;
    let mut fast = 0;
    for _ in 0..n {
        let line = encoded(random_report(&mut rng));
        let chunk = rng.pick(&[1, 7, 64, usize::MAX]);
        fast += compare(&line, chunk);
    }
    assert_eq!(fast, n);
}

#[test]
fn every_sample_report_takes_the_fast_path() {
    let (bytes, sent) = stream(&[samples::report(0), samples::report(1), samples::report(2)]);
    let mut decoder = Decoder::new();
    let (got, end) = drain(&mut decoder, [bytes.as_slice()]);
    assert_eq!((got, end), (sent, Some(ProtoError::Closed)));
    assert_eq!(decoder.fast_decoded, 3);
}

/// The byte ranges of the markup in `line`, `<` to `>` (quotes respected).
fn tags(line: &str) -> Vec<std::ops::Range<usize>> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let mut quote = None;
        let mut j = i + 1;
        while j < bytes.len() {
            match (quote, bytes[j]) {
                (None, b'"' | b'\'') => quote = Some(bytes[j]),
                (Some(q), b) if b == q => quote = None,
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        if j == bytes.len() {
            break;
        }
        out.push(i..j + 1);
        i = j + 1;
    }
    out
}

/// The value ranges of the attributes of `line`.
fn values(line: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    for tag in tags(line) {
        let bytes = &line.as_bytes()[tag.clone()];
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'"' {
                let Some(len) = bytes[i + 1..].iter().position(|&b| b == b'"') else {
                    break;
                };
                let end = i + 1 + len;
                out.push(tag.start + i + 1..tag.start + end);
                i = end;
            }
            i += 1;
        }
    }
    out
}

const JUNK: &[&str] = &[
    "",
    " ",
    "x",
    " 7 ",
    "\t7\n",
    "+7",
    "-7",
    "1e3",
    "0x10",
    "NaN",
    "inf",
    "-0",
    "256",
    "4294967296",
    "18446744073709551616",
    "true",
    " true ",
    "1",
    "0",
    "yes",
    "up",
    " up",
    "UP",
    "down",
    "unknown",
    "host-cpu",
    "cgroup-cpu",
    "command",
    "::1",
    " 10.0.0.1",
    "10.0.0.1 ",
    "1.2.3",
    "&lt;",
    "&#x41;",
    "&#55;",
    "&bogus;",
    "&",
    "a&#10;b",
    "a\tb",
    "1.5",
    "0.0",
];

/// One random change to an encoded report: values, attributes, elements,
/// text, comments, order.
fn mutate(line: &str, rng: &mut Rng) -> String {
    let tags = tags(line);
    let values = values(line);
    let mut s = line.to_string();
    let leafs: Vec<_> = tags
        .iter()
        .filter(|t| line[(*t).clone()].ends_with("/>"))
        .cloned()
        .collect();
    if tags.len() < 2 || leafs.is_empty() || values.is_empty() {
        return s;
    }
    let tag = rng.pick(&tags);
    // After any tag but the last: still inside the report.
    let boundary = rng.pick(&tags[..tags.len() - 1]).end;
    match rng.below(14) {
        0..=2 => {
            let v = rng.pick(&values);
            s.replace_range(v, rng.pick(JUNK));
        }
        3 => {
            // Drop one attribute.
            let v = rng.pick(&values);
            let name_start = line[..v.start].rfind(' ').unwrap();
            s.replace_range(name_start..=v.end, "");
        }
        4 => {
            let at = tag.start + 1 + line[tag.clone()][1..].find([' ', '/', '>']).unwrap();
            let extra = rng.pick(&[" extra=\"1\"", " x:seq=\"1\"", " xmlns=\"urn:x\""]);
            s.insert_str(at, extra);
        }
        5 => {
            // Duplicate a leaf element somewhere.
            let leaf = rng.pick(&leafs);
            s.insert_str(boundary, &line[leaf]);
        }
        6 => {
            // Drop a leaf element.
            let leaf = rng.pick(&leafs);
            s.replace_range(leaf, "");
        }
        7 => {
            // Move a leaf element.
            let leaf = rng.pick(&leafs);
            let moved = line[leaf.clone()].to_string();
            if boundary <= leaf.start {
                s.replace_range(leaf, "");
                s.insert_str(boundary, &moved);
            } else {
                s.insert_str(boundary, &moved);
                s.replace_range(leaf, "");
            }
        }
        8 => {
            let insert = rng.pick(&[
                " ",
                "\n",
                "x",
                "<!-- c -->",
                "<![CDATA[y]]>",
                "&amp;",
                "<?pi x?>",
            ]);
            s.insert_str(boundary, insert);
        }
        9 => {
            let insert = rng.pick(&[
                "<extra/>",
                "<extra a=\"1\"><b/></extra>",
                "<cpu host=\"1\"/>",
            ]);
            s.insert_str(boundary, insert);
        }
        10 => {
            // An empty leaf element written as start and end tags.
            let leaf = rng.pick(&leafs);
            let text = &line[leaf.clone()];
            let name_end = text.find([' ', '/']).unwrap();
            let expanded = format!("{}></{}>", &text[..text.len() - 2], &text[1..name_end]);
            s.replace_range(leaf, &expanded);
        }
        11 => {
            // Rename a leaf element.
            let leaf = rng.pick(&leafs);
            s.insert(leaf.start + 2, 'z');
        }
        12 => {
            s = s.replacen("=\"", rng.pick(&[" = \"", "='\""]), 1 + rng.below(3));
        }
        _ => {
            // Drop the first application's health or readiness, or every
            // application's end tag but one.
            let cut = rng.pick(&["<health ", "<readiness ", "</application>"]);
            if let Some(at) = s.find(cut) {
                let end = at + s[at..].find('>').unwrap() + 1;
                s.replace_range(at..end, "");
            }
        }
    }
    s
}

#[test]
fn changed_reports_give_what_serde_gives() {
    let mut rng = Rng::new(2);
    let mut fast = 0;
    let n = 4000;
    for _ in 0..n {
        let line = encoded(random_report(&mut rng));
        let mut changed = mutate(&line, &mut rng);
        if rng.below(4) == 0 {
            changed = mutate(&changed, &mut rng);
        }
        let chunk = rng.pick(&[1, 13, usize::MAX]);
        fast += compare(&changed, chunk);
    }
    // Many changes keep a valid report (an equivalent value, another
    // order); the rest went to serde.
    assert!(fast > n / 10 && fast < n, "{fast} of {n} on the fast path");
}

#[test]
fn broken_reports_are_refused_alike() {
    let line = encoded(random_report(&mut Rng::new(3)));
    let open = line.find("<utilization").unwrap();
    let (mut nested, mut closed, mut attributes) = (String::new(), String::new(), String::new());
    for i in 0..9 {
        write!(nested, "<n{i}>").unwrap();
        write!(closed, "</n{}>", 8 - i).unwrap();
    }
    for i in 0..40 {
        write!(attributes, " a{i}=\"{i}\"").unwrap();
    }
    for broken in [
        format!("{}{nested}{closed}{}", &line[..open], &line[open..]),
        line.replacen("<cpu ", &format!("<cpu{attributes} "), 1),
        line.replacen("<cpu ", "<cpu host=\"1\" ", 1),
        line.replacen("<load ", "<!DOCTYPE x><load ", 1),
        line.replacen(
            "<memory ",
            &format!("<memory x=\"{}\" ", "y".repeat(70_000)),
            1,
        ),
        line.replacen("</report>", "</reportx>", 1),
        line.replacen("<nic", "< nic", 1),
        line.replacen("/>", ">", 1),
        line[..line.len() - 3].to_string(),
    ] {
        for chunk in [1, 5, usize::MAX] {
            assert_eq!(compare(&broken, chunk), 0, "{broken}");
        }
    }
}

#[test]
fn limits_apply_on_the_fast_path() {
    let Message::Report(report) = samples::report(0) else {
        unreachable!()
    };
    let line = encoded(report);
    for (limits, fast) in [
        (Limits::default(), 1),
        // `<readiness>` has 7 attributes.
        (
            Limits {
                max_attributes: 6,
                ..Limits::default()
            },
            0,
        ),
        (
            Limits {
                max_attributes: 7,
                ..Limits::default()
            },
            1,
        ),
        (
            Limits {
                max_depth: 2,
                ..Limits::default()
            },
            0,
        ),
        (
            Limits {
                max_message_bytes: line.len() - 1,
                ..Limits::default()
            },
            0,
        ),
    ] {
        for chunk in [1, usize::MAX] {
            assert_eq!(compare_with(limits, &line, chunk), fast, "{limits:?}");
        }
    }
}
