//! Small value types shared by several messages.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Transport protocol of an application or a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `tcp`
    Tcp,
    /// `udp`
    Udp,
}

/// A value that failed to parse from its text form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what}: {text:?} is not valid")]
pub struct ParseError {
    what: &'static str,
    text: String,
}

impl ParseError {
    fn new(what: &'static str, text: &str) -> Self {
        // Keep error texts short whatever the peer sent.
        let text = text.chars().take(80).collect();
        Self { what, text }
    }
}

/// An Ethernet address, written `02:00:5e:10:00:01` (lowercase hex, colons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [b0, b1, b2, b3, b4, b5] = self.0;
        write!(f, "{b0:02x}:{b1:02x}:{b2:02x}:{b3:02x}:{b4:02x}:{b5:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;

    /// Six two-digit hex bytes separated by `:`, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::new("MAC address", s);
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

/// The SHA-256 fingerprint of a DER certificate, written as 64 lowercase
/// hex digits; parsing also accepts uppercase and `AB:CD:...` as printed by
/// `openssl x509 -fingerprint -sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for Fingerprint {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseError::new("SHA-256 fingerprint", s);
        let digits = s.bytes().filter(|&b| b != b':');
        let mut out = [0u8; 32];
        let mut n = 0usize;
        for d in digits {
            let v = char::from(d).to_digit(16).ok_or_else(err)?;
            let byte = out.get_mut(n / 2).ok_or_else(err)?;
            // `v` is a hex digit, so below 16: the conversion cannot fail.
            let v = u8::try_from(v).map_err(|_| err())?;
            *byte = (*byte << 4) | v;
            n += 1;
        }
        if n != 64 {
            return Err(err());
        }
        Ok(Self(out))
    }
}

/// Serde through `Display` / `FromStr`, for values written as attribute text.
macro_rules! serde_via_str {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_via_str!(MacAddr, Fingerprint);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects() {
        let mac: MacAddr = "02:00:5E:10:00:01".parse().unwrap();
        assert_eq!(mac.0, [2, 0, 0x5e, 0x10, 0, 1]);
        assert_eq!(mac.to_string(), "02:00:5e:10:00:01");
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:01:02",
            "2:00:5e:10:00:01",
            "zz:00:5e:10:00:01",
            "+2:00:5e:10:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_round_trip_and_rejects() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let fp: Fingerprint = hex.parse().unwrap();
        assert_eq!(fp.to_string(), hex);
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.parse::<Fingerprint>().unwrap(), fp);
        assert!(hex[..62].parse::<Fingerprint>().is_err());
        assert!(format!("{hex}00").parse::<Fingerprint>().is_err());
        assert!(hex.replace('9', "g").parse::<Fingerprint>().is_err());
    }
}
