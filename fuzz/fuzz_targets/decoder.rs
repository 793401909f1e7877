//! Arbitrary bytes into the stream decoder: it must never panic, and while it
//! waits for more bytes it must never hold more than its limits allow.
//!
//! The first input byte picks the feed size (its low 7 bits, 1..=127) and,
//! with its high bit, small limits that the fuzzer can actually reach.

#![no_main]

use lb_proto::{Decoder, EncodeError, Encoder, Limits, Role, StreamHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let limits = if first & 0x80 == 0 {
        Limits::default()
    } else {
        Limits {
            max_message_bytes: 512,
            max_depth: 3,
            max_attributes: 4,
            max_header_bytes: 128,
        }
    };
    let bound = limits.max_message_bytes.max(limits.max_header_bytes);
    let chunk = usize::from(first & 0x7f).max(1);
    let mut decoder = Decoder::with_limits(limits);
    for piece in rest.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next() {
                Ok(Some(message)) => reencode(message, limits),
                Ok(None) => {
                    assert!(
                        decoder.buffered() <= bound,
                        "buffered {}",
                        decoder.buffered()
                    );
                    break;
                }
                Err(e) if e.is_fatal() => {
                    // Sticky: the same error again, nothing buffered.
                    assert_eq!(decoder.next(), Err(e));
                    assert_eq!(decoder.buffered(), 0);
                    return;
                }
                Err(_) => {}
            }
        }
    }
});

/// Whatever the decoder accepts must be valid, and encode to a stream that
/// decodes again.
fn reencode(mut message: lb_proto::Message, limits: Limits) {
    assert_eq!(message.validate(), Ok(()));
    let mut encoder = Encoder::with_limits(Vec::new(), 1, limits);
    encoder
        .start(&StreamHeader::new(Role::Agent, "fuzz"))
        .expect("header");
    match encoder.encode(&mut message) {
        Ok(_) => {}
        // Escaping may grow a message that just fitted.
        Err(EncodeError::MessageTooLarge { .. }) => return,
        Err(e) => panic!("cannot encode {message:?}: {e}"),
    }
    let mut decoder = Decoder::with_limits(limits);
    decoder.feed(&encoder.into_inner());
    match decoder.next() {
        Ok(Some(_)) => {}
        other => panic!("{message:?} does not decode again: {other:?}"),
    }
}
