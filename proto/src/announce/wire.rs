//! The datagram's text: its two elements, hex and PEM.

use quick_xml::events::Event;
use rustls::pki_types::{
    CertificateDer,
    pem::{self, PemObject as _},
};
use thiserror::Error;

use super::{MAX_DEPTH, Rejected};

/// Splits a datagram into the exact text of its `<announce>` element and of
/// its `<auth>` element; only whitespace may surround them, and nothing but
/// elements, text and character references may be inside (no declarations,
/// comments, CDATA or processing instructions).
pub(super) fn split(text: &str) -> Result<(&str, &str), Rejected> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut top = TopLevel {
        depth: 0,
        elements: Vec::with_capacity(2),
    };
    loop {
        let before = offset(reader.buffer_position())?;
        let event = reader
            .read_event()
            .map_err(|e| Rejected::Malformed(format!("XML: {e}")))?;
        let after = offset(reader.buffer_position())?;
        if top.take(event, before, after)? {
            break;
        }
    }
    top.texts(text)
}

/// The top-level elements of a datagram, as [`split`] reads its events.
struct TopLevel {
    /// How many elements are open.
    depth: usize,
    /// Each top-level element seen: its name, and where it starts and ends
    /// (0 while it is open).
    elements: Vec<(String, usize, usize)>,
}

impl TopLevel {
    /// Takes one event, which spans `before..after` of the text; `Ok(true)`
    /// at its end.
    fn take(&mut self, event: Event<'_>, before: usize, after: usize) -> Result<bool, Rejected> {
        let malformed = Rejected::Malformed;
        match event {
            Event::Start(tag) => {
                if self.depth == 0 && self.elements.len() == 2 {
                    return Err(malformed("more than two elements".into()));
                }
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(malformed(format!(
                        "elements nested deeper than {MAX_DEPTH}"
                    )));
                }
                if self.depth == 1 {
                    self.elements
                        .push((tag.name().into_inner().to_owned(), before, 0));
                }
            }
            Event::End(_) => {
                if self.depth == 0 {
                    return Err(malformed("a closing tag without its opening tag".into()));
                }
                self.depth -= 1;
                if self.depth == 0
                    && let Some(last) = self.elements.last_mut()
                {
                    last.2 = after;
                }
            }
            Event::Empty(tag) => {
                if self.depth == 0 {
                    if self.elements.len() == 2 {
                        return Err(malformed("more than two elements".into()));
                    }
                    self.elements
                        .push((tag.name().into_inner().to_owned(), before, after));
                }
            }
            Event::Text(t) => {
                if self.depth == 0 && !t.into_inner().chars().all(|c| c.is_ascii_whitespace()) {
                    return Err(malformed("text outside the elements".into()));
                }
            }
            Event::GeneralRef(_) => {
                if self.depth == 0 {
                    return Err(malformed("text outside the elements".into()));
                }
            }
            Event::Eof if self.depth == 0 => return Ok(true),
            Event::Eof => return Err(malformed("an element is not closed".into())),
            Event::CData(_)
            | Event::Comment(_)
            | Event::Decl(_)
            | Event::PI(_)
            | Event::DocType(_) => {
                return Err(malformed(
                    "declarations, comments, CDATA and processing instructions are not allowed"
                        .into(),
                ));
            }
        }
        Ok(false)
    }

    /// The exact texts of `<announce>` and `<auth>`, once the whole `text`
    /// was taken.
    fn texts(self, text: &str) -> Result<(&str, &str), Rejected> {
        let malformed = Rejected::Malformed;
        match self.elements.as_slice() {
            [(a, a_start, a_end), (b, b_start, b_end)] if a == "announce" && b == "auth" => {
                let body = text
                    .get(*a_start..*a_end)
                    .ok_or_else(|| malformed("bad element bounds".into()))?;
                let tag = text
                    .get(*b_start..*b_end)
                    .ok_or_else(|| malformed("bad element bounds".into()))?;
                Ok((body, tag))
            }
            _ => Err(malformed(format!(
                "expected <announce> then <auth>, found {:?}",
                self.elements
                    .iter()
                    .map(|(name, ..)| short(name))
                    .collect::<Vec<_>>()
            ))),
        }
    }
}

fn offset(position: u64) -> Result<usize, Rejected> {
    usize::try_from(position).map_err(|_| Rejected::Malformed("offset out of range".into()))
}

/// At most 40 characters of what a peer sent, for error texts.
pub(super) fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The one certificate in `pem`.
pub(super) fn single_cert(pem: &str) -> Result<CertificateDer<'static>, NotOneCert> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(NotOneCert::Pem)?;
    match certs.len() {
        1 => Ok(certs.swap_remove(0)),
        0 => Err(NotOneCert::None),
        n => Err(NotOneCert::Many(n)),
    }
}

/// Why [`single_cert`] found no certificate to use.
#[derive(Debug, Error)]
pub(super) enum NotOneCert {
    /// The PEM text is broken.
    #[error("{0}")]
    Pem(pem::Error),
    /// There is no certificate in it.
    #[error("no PEM certificate")]
    None,
    /// There are this many, not one.
    #[error("{0} certificates, expected one")]
    Many(usize),
}

/// The first `-----BEGIN CERTIFICATE-----` block of `pem`, with its end line.
pub(super) fn first_pem_block(pem: &str) -> Option<&str> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)?;
    let end = start + pem.get(start..)?.find(END)? + END.len();
    pem.get(start..end)
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

pub(super) fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(digits, 16).ok()
        })
        .collect()
}

pub(super) fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
