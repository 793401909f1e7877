//! The flow hash: the same function runs in the XDP program and in user space
//! (tests, `lbctl` predictions), so every node and every tool agrees on where
//! a flow lands.
//!
//! `MurmurHash3`'s 32-bit block mix over the 5-tuple words, seeded from the
//! config. The seed must be the same on every node of a cluster.

use crate::maps::FlowKey;

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
}

/// Hash of a client → VIP 5-tuple. IPv4 keys hash only their first address
/// word (the rest is zero), which keeps the IPv4 path short.
#[inline(always)]
#[must_use]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.dst, 0));
    if key.family != crate::maps::FAMILY_V4 {
        h = mix(h, word(&key.src, 4));
        h = mix(h, word(&key.src, 8));
        h = mix(h, word(&key.src, 12));
        h = mix(h, word(&key.dst, 4));
        h = mix(h, word(&key.dst, 8));
        h = mix(h, word(&key.dst, 12));
    }
    let ports = u32::from_le_bytes([key.sport[0], key.sport[1], key.dport[0], key.dport[1]]);
    h = mix(h, ports);
    h = mix(h, u32::from(key.proto));
    finish(h, u32::from(key.family))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{PROTO_TCP, PROTO_UDP};

    fn key(sport: u16) -> FlowKey {
        FlowKey::new(&[10, 0, 0, 2], sport, &[10, 0, 0, 100], 80, PROTO_TCP)
    }

    #[test]
    fn deterministic_and_seeded() {
        assert_eq!(flow_hash(&key(1000), 7), flow_hash(&key(1000), 7));
        assert_ne!(flow_hash(&key(1000), 7), flow_hash(&key(1000), 8));
    }

    #[test]
    fn every_field_matters() {
        let base = key(1000);
        let h = flow_hash(&base, 1);
        let mut k = base;
        k.sport = 1001u16.to_be_bytes();
        assert_ne!(flow_hash(&k, 1), h);
        let mut k = base;
        k.dport = 81u16.to_be_bytes();
        assert_ne!(flow_hash(&k, 1), h);
        let mut k = base;
        k.src[3] = 3;
        assert_ne!(flow_hash(&k, 1), h);
        let mut k = base;
        k.dst[3] = 101;
        assert_ne!(flow_hash(&k, 1), h);
        let mut k = base;
        k.proto = PROTO_UDP;
        assert_ne!(flow_hash(&k, 1), h);
        let v6 = FlowKey::new(
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            1000,
            &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64],
            80,
            PROTO_TCP,
        );
        let mut v6b = v6;
        v6b.src[15] = 3;
        assert_ne!(flow_hash(&v6, 1), flow_hash(&v6b, 1));
    }

    #[test]
    fn source_ports_spread_evenly() {
        // 60,000 flows from one client into 6 buckets: each within 3% of even.
        let mut buckets = [0u32; 6];
        for port in 1024..61024u16 {
            buckets[(flow_hash(&key(port), 0x5eed) % 6) as usize] += 1;
        }
        for b in buckets {
            assert!((9700..=10300).contains(&b), "{buckets:?}");
        }
    }
}
