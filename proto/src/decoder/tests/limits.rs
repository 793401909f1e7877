//! Every limit, broken.

use std::fmt::Write as _;

use super::*;

#[test]
fn message_size_limit() {
    let limits = Limits {
        max_message_bytes: 200,
        ..Limits::default()
    };
    let fits = format!(
        r#"<ack seq="1" generation="1" status="failed" error="{}"/>"#,
        "x".repeat(140)
    );
    let over = format!(
        r#"<ack seq="2" generation="1" status="failed" error="{}"/>"#,
        "x".repeat(160)
    );
    assert!(fits.len() <= 200 && over.len() > 200);
    let mut decoder = Decoder::with_limits(limits);
    decoder.feed(format!("{HEADER}{fits}").as_bytes());
    assert!(matches!(decoder.next(), Ok(Some(_))));
    decoder.feed(over.as_bytes());
    let err = decoder.next().unwrap_err();
    assert_eq!(err, ProtoError::MessageTooLarge { limit: 200 });
    assert!(err.is_fatal());
    assert_eq!(
        err.to_string(),
        "message exceeds the limit of 200 bytes (max_message_bytes)"
    );
}

#[test]
fn message_size_is_checked_while_buffering() {
    let limits = Limits {
        max_message_bytes: 1024,
        ..Limits::default()
    };
    // A tag that never ends, a message that never closes, a comment that never ends.
    for (opening, filler) in [
        ("<report seq=\"1\" host=\"", "a"),
        ("<report seq=\"1\">", "<nic name=\"eth0\"/>"),
        ("<!--", "-"),
        ("<report seq=\"1\"><probe>", "text"),
    ] {
        let mut decoder = Decoder::with_limits(limits);
        decoder.feed(format!("{HEADER}{opening}").as_bytes());
        let mut fed = 0;
        let err = loop {
            match decoder.next() {
                Ok(None) => {}
                other => break other.unwrap_err(),
            }
            assert!(decoder.buffered() <= 1024 + 64, "{opening}");
            decoder.feed(filler.repeat(64 / filler.len()).as_bytes());
            fed += 64;
            assert!(fed < 10_000, "{opening}: never refused");
        };
        assert_eq!(
            err,
            ProtoError::MessageTooLarge { limit: 1024 },
            "{opening}"
        );
    }
}

#[test]
fn depth_limit() {
    let nested = |levels: usize| {
        let inner = (1..levels).fold(String::new(), |acc, i| format!("<x{i}>{acc}</x{i}>"));
        format!(r#"<ack seq="1" generation="1" status="ok">{inner}</ack>"#)
    };
    // Unknown children are ignored, so depth 8 decodes.
    let (got, end) = decode_str(&format!("{HEADER}{}</lb-stream>", nested(8)));
    assert_eq!((got.len(), end), (1, Some(ProtoError::Closed)));
    let err = first_error(&nested(9));
    assert_eq!(
        err,
        ProtoError::TooDeep {
            element: "x1".into(),
            limit: 8
        }
    );
    assert!(err.to_string().contains("limit of 8 (max_depth)"));
    // An empty element one level too deep counts too.
    let limits = Limits {
        max_depth: 2,
        ..Limits::default()
    };
    let text = format!(r#"{HEADER}<ack seq="1" generation="1" status="ok"><a><b/></a></ack>"#);
    assert!(matches!(
        first_error_with(limits, &text),
        ProtoError::TooDeep { limit: 2, .. }
    ));
}

#[test]
fn attribute_limit() {
    let attrs = |n: usize| {
        (0..n).fold(String::new(), |mut out, i| {
            write!(out, " a{i}=\"{i}\"").unwrap();
            out
        })
    };
    let (got, _) = decode_str(&format!(
        r#"{HEADER}<ack seq="1" generation="1" status="ok"{}/>"#,
        attrs(29)
    ));
    assert_eq!(got.len(), 1);
    let err = first_error(&format!(
        r#"<ack seq="1" generation="1" status="ok"{}/>"#,
        attrs(30)
    ));
    assert_eq!(
        err,
        ProtoError::TooManyAttributes {
            element: "ack".into(),
            limit: 32
        }
    );
    assert!(err.to_string().contains("32 attributes (max_attributes)"));
    let err = first_error(&format!(
        r#"<ack seq="1" generation="1" status="ok"><x{}/></ack>"#,
        attrs(33)
    ));
    assert!(matches!(
        err,
        ProtoError::TooManyAttributes { limit: 32, .. }
    ));
    let err = decode_str(&format!(
        r#"<lb-stream version="1" role="agent" host="h"{}>"#,
        attrs(30)
    ))
    .1;
    assert!(matches!(
        err,
        Some(ProtoError::TooManyAttributes { limit: 32, .. })
    ));
}

#[test]
fn header_limit() {
    let long = format!(
        r#"<lb-stream version="1" role="agent" host="{}">"#,
        "h".repeat(5000)
    );
    let (_, end) = decode_str(&long);
    assert_eq!(end, Some(ProtoError::HeaderTooLarge { limit: 4096 }));
    // Checked while buffering, and comments before the header count.
    let mut decoder = Decoder::new();
    decoder.feed(b"<!--");
    for _ in 0..100 {
        decoder.feed(&[b' '; 64]);
        if let Err(e) = decoder.next() {
            assert_eq!(e, ProtoError::HeaderTooLarge { limit: 4096 });
            assert!(e.to_string().contains("4096 bytes (max_header_bytes)"));
            return;
        }
    }
    panic!("never refused");
}

#[test]
fn large_message_fed_byte_by_byte_is_scanned_once() {
    // A quoted `>` and `-->`-like runs at every byte: a decoder that rescanned
    // the pending markup on every feed would do ~2 billion steps here.
    let filler = "->".repeat(30_000);
    let text = format!(
        "{HEADER}<!--{}--><ack seq=\"1\" generation=\"1\" status=\"failed\" error=\"{filler}\"/>",
        "- >".repeat(20_000)
    );
    let started = std::time::Instant::now();
    let (got, end) = drain(&mut Decoder::new(), text.as_bytes().chunks(1));
    assert_eq!((got.len(), end), (1, None));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
