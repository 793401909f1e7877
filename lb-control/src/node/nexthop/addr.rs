//! Address helpers of the next-hop resolver: prefixes and MAC addresses.

use std::net::IpAddr;

/// A MAC address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {text:?}: expected six two-digit hex bytes separated by colons, like aa:bb:cc:dd:ee:ff"
)]
pub struct MacError {
    text: String,
}

/// Whether the prefix `prefix`/`len` contains `addr`. Addresses of different
/// families are never contained; a length beyond the family's width (33 for
/// IPv4, 129 for IPv6) makes an invalid prefix that contains nothing.
#[must_use]
pub fn prefix_contains(prefix: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (prefix, addr) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            if len > 32 {
                return false;
            }
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            (p.to_bits() ^ a.to_bits()) & mask == 0
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            if len > 128 {
                return false;
            }
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            (p.to_bits() ^ a.to_bits()) & mask == 0
        }
        _ => false,
    }
}

/// Parses a MAC address written as six two-digit hex bytes separated by
/// colons, `aa:bb:cc:dd:ee:ff` (upper or lower case).
///
/// # Errors
/// Anything else, with the expected form.
pub fn parse_mac(s: &str) -> Result<[u8; 6], MacError> {
    s.parse::<lb_proto::MacAddr>()
        .map(|m| m.0)
        .map_err(|_| MacError { text: s.to_owned() })
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn format_mac(mac: &[u8; 6]) -> String {
    lb_proto::MacAddr(*mac).to_string()
}
