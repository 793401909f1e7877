use super::*;
use crate::{
    EncodeError, Encoder, ErrorMessage, Role, SettingsKind, StreamHeader, messages::Hello, samples,
};

mod limits;
mod report;

const HEADER: &str = r#"<lb-stream version="1" role="agent" host="web-1">"#;

/// A whole stream from the encoder: header, `messages` (seq from 1), footer.
fn stream(messages: &[Message]) -> (Vec<u8>, Vec<Message>) {
    let mut encoder = Encoder::new(Vec::new(), 1);
    encoder
        .start(&StreamHeader::new(Role::Agent, "web-1"))
        .unwrap();
    let mut sent = messages.to_vec();
    for m in &mut sent {
        encoder.encode(m).unwrap();
    }
    encoder.finish().unwrap();
    (encoder.into_inner(), sent)
}

/// Feeds `chunks` in turn, draining after each; returns the messages and
/// the error that ended it.
fn drain<'a>(
    decoder: &mut Decoder,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Message>, Option<ProtoError>) {
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.next() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) if e.is_fatal() => return (out, Some(e)),
                Err(e) => panic!("unexpected non-fatal {e}"),
            }
        }
    }
    (out, None)
}

fn decode_str(text: &str) -> (Vec<Message>, Option<ProtoError>) {
    drain(&mut Decoder::new(), [text.as_bytes()])
}

/// The first error `next` returns (fatal or not) for `text` after the header.
fn first_error(text: &str) -> ProtoError {
    first_error_with(Limits::default(), &format!("{HEADER}\n{text}"))
}

fn first_error_with(limits: Limits, text: &str) -> ProtoError {
    let mut decoder = Decoder::with_limits(limits);
    decoder.feed(text.as_bytes());
    loop {
        match decoder.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error for {text:?}"),
            Err(e) => return e,
        }
    }
}

#[test]
fn every_message_round_trips() {
    let (bytes, sent) = stream(&samples::all());
    let mut decoder = Decoder::new();
    let (got, end) = drain(&mut decoder, [bytes.as_slice()]);
    assert_eq!(got, sent);
    assert_eq!(end, Some(ProtoError::Closed));
    assert_eq!(
        decoder.header(),
        Some(&StreamHeader::new(Role::Agent, "web-1"))
    );
    let seqs: Vec<u64> = got.iter().map(Message::seq).collect();
    assert_eq!(seqs, (1..=sent.len() as u64).collect::<Vec<_>>());
}

#[test]
fn one_line_per_message() {
    let (bytes, sent) = stream(&samples::all());
    let text = String::from_utf8(bytes).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), sent.len() + 2);
    assert_eq!(lines[0], HEADER);
    assert_eq!(lines[lines.len() - 1], "</lb-stream>");
    for (line, m) in lines[1..].iter().zip(&sent) {
        assert!(line.starts_with(&format!("<{} seq=", m.name())), "{line}");
    }
}

#[test]
fn split_at_every_offset() {
    let (bytes, sent) = stream(&samples::all());
    for at in 0..=bytes.len() {
        let (head, tail) = bytes.split_at(at);
        let (got, end) = drain(&mut Decoder::new(), [head, tail]);
        assert_eq!(got, sent, "split at {at}");
        assert_eq!(end, Some(ProtoError::Closed), "split at {at}");
    }
}

#[test]
fn byte_by_byte() {
    let (bytes, sent) = stream(&samples::all());
    let mut decoder = Decoder::new();
    let (got, end) = drain(&mut decoder, bytes.chunks(1));
    assert_eq!(got, sent);
    assert_eq!(end, Some(ProtoError::Closed));
}

#[test]
fn several_messages_in_one_feed_come_out_one_by_one() {
    let (bytes, sent) = stream(&[samples::report(0), samples::report(1), samples::report(2)]);
    let mut decoder = Decoder::new();
    decoder.feed(&bytes);
    for m in &sent {
        assert_eq!(decoder.next().as_ref(), Ok(&Some(m.clone())));
    }
    assert_eq!(decoder.next(), Err(ProtoError::Closed));
    assert_eq!(decoder.next(), Err(ProtoError::Closed));
}

#[test]
fn truncated_input_waits_then_completes() {
    let (bytes, sent) = stream(&[samples::hello()]);
    let text = String::from_utf8(bytes).unwrap();
    let cut = text.find("<probe>").unwrap() + 3;
    let mut decoder = Decoder::new();
    decoder.feed(&text.as_bytes()[..cut]);
    assert_eq!(decoder.next(), Ok(None));
    assert_eq!(decoder.next(), Ok(None));
    assert!(decoder.header().is_some());
    decoder.feed(&text.as_bytes()[cut..]);
    assert_eq!(decoder.next(), Ok(Some(sent[0].clone())));
}

#[test]
fn nothing_yet() {
    let mut decoder = Decoder::new();
    assert_eq!(decoder.next(), Ok(None));
    decoder.feed(b"  \n<");
    assert_eq!(decoder.next(), Ok(None));
    assert_eq!(decoder.header(), None);
}

#[test]
fn whitespace_comments_and_declaration_are_skipped() {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- agent web-1 -->\n{HEADER}\n\
         <!-- a > comment -->\n  <ack seq=\"3\" generation=\"9\" status=\"ok\"><!-- x --></ack>\r\n\
         <error seq=\"4\" code=\"x\"><![CDATA[a <raw> & text]]></error>\n</lb-stream>"
    );
    let (got, end) = decode_str(&text);
    assert_eq!(end, Some(ProtoError::Closed));
    assert_eq!(got.len(), 2);
    match &got[1] {
        Message::Error(e) => assert_eq!(e.text, "a <raw> & text"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn quoted_angle_brackets_in_attributes() {
    let text = format!(
        "{HEADER}<ack seq='1' generation=\"2\" status=\"failed\" error='a > b'/></lb-stream>"
    );
    for chunk in [1, 2, 3, 7, text.len()] {
        let (got, end) = drain(&mut Decoder::new(), text.as_bytes().chunks(chunk));
        assert_eq!(end, Some(ProtoError::Closed));
        match &got[..] {
            [Message::Ack(ack)] => assert_eq!(ack.error.as_deref(), Some("a > b")),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn empty_header_opens_and_closes() {
    let (got, end) = decode_str(r#"<lb-stream version="1" role="node" host="n"/>"#);
    assert!(got.is_empty());
    assert_eq!(end, Some(ProtoError::Closed));
}

#[test]
fn unknown_message_is_skipped() {
    let mut decoder = Decoder::new();
    decoder.feed(
        format!(
            "{HEADER}<shutdown seq=\"5\" now=\"yes\"><x/></shutdown>\
             <ack seq=\"6\" generation=\"1\" status=\"ok\"/>"
        )
        .as_bytes(),
    );
    let err = decoder.next().unwrap_err();
    assert_eq!(
        err,
        ProtoError::UnknownMessage {
            name: "shutdown".into(),
            seq: Some(5)
        }
    );
    assert!(!err.is_fatal());
    assert_eq!(err.code(), "unknown-message");
    assert!(matches!(decoder.next(), Ok(Some(Message::Ack(a))) if a.seq == 6));
}

#[test]
fn invalid_messages_are_rejected_one_by_one() {
    let too_many_sources = format!(
        r#"<tunnel-sources seq="12" addresses="{}"/>"#,
        (1..=65)
            .map(|i| format!("10.0.2.{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let cases: [(&str, Option<u64>, &str); 13] = [
        (
            r#"<ack generation="1" status="ok"/>"#,
            None,
            "missing field `@seq`",
        ),
        (
            r#"<ack seq="2" generation="x" status="ok"/>"#,
            Some(2),
            "invalid",
        ),
        (
            r#"<ack seq="3" generation="1" status="maybe"/>"#,
            Some(3),
            "maybe",
        ),
        (
            r#"<ack seq="-4" generation="1" status="ok"/>"#,
            None,
            "invalid",
        ),
        (
            r#"<settings-request seq="5" id="1" kind="connection" application="&bogus;"/>"#,
            Some(5),
            "bogus",
        ),
        (
            r#"<hello seq="6" host="h" agent-version="1" cores="NaN" spare="false"/>"#,
            Some(6),
            "cores NaN",
        ),
        (
            r#"<hello seq="7" host="" agent-version="1" cores="1" spare="false"/>"#,
            Some(7),
            "empty host",
        ),
        (
            r#"<tunnel-sources seq="8" addresses="10.0.1.2 127.0.0.1"/>"#,
            Some(8),
            "127.0.0.1 is not a unicast address",
        ),
        (
            r#"<tunnel-sources seq="9" addresses="::"/>"#,
            Some(9),
            ":: is not a unicast address",
        ),
        (
            r#"<tunnel-sources seq="10" addresses="255.255.255.255"/>"#,
            Some(10),
            "not a unicast",
        ),
        (
            r#"<tunnel-sources seq="11" addresses="ff02::1"/>"#,
            Some(11),
            "not a unicast",
        ),
        (
            &too_many_sources,
            Some(12),
            "65 tunnel sources, over the limit of 64",
        ),
        (
            r#"<reconfigure seq="13" generation="1"><service name="web" vip="10.0.100.1" port="80" protocol="tcp" table-size="7"><server name="s" address="10.0.0.1" weight="1" state="allocated" forward="vxlan"/></service></reconfigure>"#,
            Some(13),
            "vxlan",
        ),
    ];
    let mut text = format!("{HEADER}\n");
    for (xml, _, _) in &cases {
        text.push_str(xml);
    }
    text.push_str(r#"<ack seq="99" generation="1" status="ok"/>"#);
    let mut decoder = Decoder::new();
    decoder.feed(text.as_bytes());
    for (xml, seq, needle) in cases {
        match decoder.next() {
            Err(e @ ProtoError::InvalidMessage { .. }) => {
                assert!(!e.is_fatal());
                assert_eq!(e.rejected_seq(), seq, "{xml}");
                assert!(e.to_string().contains(needle), "{xml}: {e}");
            }
            other => panic!("{xml}: {other:?}"),
        }
    }
    assert!(matches!(decoder.next(), Ok(Some(m)) if m.seq() == 99));
}

#[test]
fn malformed_stream_is_fatal_and_sticky() {
    for text in [
        "<ack seq=\"1\" generation=\"1\" status=\"ok\"></nack>",
        "<report seq=\"1\"><cpu></load></report>",
        "stray text",
        "<ack seq=\"1\" seq=\"2\"/>",
        "<ack seq=1/>",
        "<?php echo 1 ?>",
        "<![CDATA[x]]>",
        "<!-- a -- b -->",
        "</ack>",
        "<ack seq=\"1\" generation=\"1\" status=\"ok\"/>\u{0}",
        "<!>",
        "< ack/>",
    ] {
        let mut decoder = Decoder::new();
        decoder.feed(format!("{HEADER}{text}").as_bytes());
        let err = loop {
            match decoder.next() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("{text:?}: no error"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, ProtoError::Malformed(_)), "{text:?}: {err:?}");
        assert!(err.is_fatal());
        decoder.feed(b"<ack seq=\"9\" generation=\"1\" status=\"ok\"/>");
        assert_eq!(decoder.next(), Err(err), "{text:?}");
        assert_eq!(decoder.buffered(), 0);
    }
}

#[test]
fn invalid_utf8_is_rejected() {
    let mut bytes = format!("{HEADER}<ack seq=\"1\" generation=\"1\" status=\"").into_bytes();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b"\"/>");
    let (_, end) = drain(&mut Decoder::new(), [bytes.as_slice()]);
    assert!(matches!(end, Some(ProtoError::Malformed(_))), "{end:?}");
}

#[test]
fn bad_headers() {
    let err = |text: &str| decode_str(text).1.unwrap();
    assert_eq!(
        err(r#"<lb-stream version="2" role="agent" host="web-1">"#),
        ProtoError::VersionMismatch { ours: 1, theirs: 2 }
    );
    // The version is checked before anything else in the header.
    assert_eq!(
        err(r#"<lb-stream role="robot" version="7">"#),
        ProtoError::VersionMismatch { ours: 1, theirs: 7 }
    );
    assert_eq!(
        err(r#"<lb-stream version="2" role="agent" host="web-1">"#).code(),
        "version-mismatch"
    );
    for text in [
        r#"<lb-stream version="one" role="agent" host="h">"#,
        r#"<lb-stream role="agent" host="h">"#,
        r#"<lb-stream version="1" role="robot" host="h">"#,
        r#"<lb-stream version="1" role="agent">"#,
        r#"<lb-stream version="1" role="agent" host="">"#,
        r#"<stream version="1" role="agent" host="h">"#,
        r#"<ack seq="1" generation="1" status="ok"/>"#,
        "</lb-stream>",
        "hello",
        "<!-- fine --><![CDATA[not fine]]>",
    ] {
        assert!(matches!(err(text), ProtoError::Malformed(_)), "{text}");
    }
}

#[test]
fn declarations_are_forbidden_everywhere() {
    let laughs = "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]>";
    let placements = [
        format!("{laughs}{HEADER}"),
        format!("<?xml version=\"1.0\"?>\n{laughs}\n{HEADER}"),
        format!("{HEADER}\n{laughs}"),
        format!("{HEADER}<report seq=\"1\">{laughs}</report>"),
        format!("{HEADER}<!ENTITY lol \"lol\">"),
        format!("{HEADER}<hello seq=\"1\"><!ELEMENT x ANY></hello>"),
        format!("{HEADER}<!doctype x>"),
    ];
    for text in placements {
        for chunk in [1, text.len()] {
            let (_, end) = drain(&mut Decoder::new(), text.as_bytes().chunks(chunk));
            match end {
                Some(e @ ProtoError::DeclarationForbidden(_)) => {
                    assert!(e.is_fatal());
                    assert_eq!(e.code(), "declaration-forbidden");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}

#[test]
fn error_reply_from_a_decoding_error() {
    let err = first_error(r#"<ack seq="12" generation="x" status="ok"/>"#);
    let reply = ErrorMessage::from_error(&err);
    assert_eq!(reply.code, "invalid-message");
    assert_eq!(reply.rejected_seq, Some(12));
    assert!(reply.text.contains("<ack>"), "{}", reply.text);
    let (got, sent) = {
        let (bytes, sent) = stream(&[reply.into()]);
        (drain(&mut Decoder::new(), [bytes.as_slice()]).0, sent)
    };
    assert_eq!(got, sent);
}

#[test]
fn encoder_states_and_size() {
    let mut encoder = Encoder::new(Vec::new(), 10);
    let mut ack = samples::ack(1, crate::AckStatus::Ok);
    assert!(matches!(
        encoder.encode(&mut ack),
        Err(EncodeError::State(_))
    ));
    assert!(matches!(encoder.finish(), Err(EncodeError::State(_))));
    encoder
        .start(&StreamHeader::new(Role::Node, "n<1>"))
        .unwrap();
    assert!(matches!(
        encoder.start(&StreamHeader::new(Role::Node, "n")),
        Err(EncodeError::State(_))
    ));
    assert_eq!(encoder.encode(&mut ack).unwrap(), 10);
    assert_eq!(ack.seq(), 10);
    let mut big: Message = Hello {
        seq: 0,
        host: "h".repeat(70_000),
        agent_version: "1".into(),
        cores: 1.0,
        spare: false,
        applications: vec![],
    }
    .into();
    let before = encoder.get_ref().len();
    assert!(matches!(
        encoder.encode(&mut big),
        Err(EncodeError::MessageTooLarge { limit: 65536, .. })
    ));
    assert_eq!(encoder.get_ref().len(), before, "nothing written");
    assert_eq!(encoder.next_seq(), 11);
    let mut request = samples::settings_request(3, SettingsKind::Auth);
    assert_eq!(encoder.encode(&mut request).unwrap(), 11);
    encoder.finish().unwrap();
    assert!(matches!(
        encoder.encode(&mut ack),
        Err(EncodeError::State(_))
    ));
    let bytes = encoder.take();
    assert!(encoder.get_ref().is_empty());
    let mut decoder = Decoder::new();
    let (got, end) = drain(&mut decoder, [bytes.as_slice()]);
    assert_eq!(got.iter().map(Message::seq).collect::<Vec<_>>(), [10, 11]);
    assert_eq!(end, Some(ProtoError::Closed));
    assert_eq!(decoder.header().unwrap().host, "n<1>");
}

#[test]
fn element_text_is_kept_as_sent() {
    let (got, _) = decode_str(&format!(
        "{HEADER}<error seq=\"1\" code=\"c\">\n  two words \n</error>"
    ));
    match &got[..] {
        [Message::Error(e)] => assert_eq!(e.text, "\n  two words \n"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_message_names_are_bounded_in_errors() {
    let name = "x".repeat(100);
    let err = first_error(&format!("<{name} seq=\"3\"><y/></{name}>"));
    assert_eq!(
        err,
        ProtoError::UnknownMessage {
            name: "x".repeat(64),
            seq: Some(3)
        }
    );
}
