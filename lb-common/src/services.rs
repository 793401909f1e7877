//! The service index the program reads first: `SERVICE_BUCKETS`, a
//! `BPF_F_MMAPABLE` array of [`ServiceBucket`]s that user space fills from
//! `SERVICES`.
//!
//! Every TCP and UDP packet asks "is this (address, port, protocol) a
//! service?". In the kernel hash map that costs a `jhash` of the 20-byte key,
//! a bucket walk and a `memcmp` — about a quarter of an established packet's
//! cost. Here it is a multiply-mix of the key's words, one array element and
//! up to [`SERVICE_WAYS`] word compares. A bucket that cannot hold all its
//! keys sets `overflow`, and only then does the program also ask `SERVICES`
//! (which always holds every service), so the answer is exact for any
//! number of services.
//!
//! Publication: a way becomes live when its key's `family` is written
//! (after the index and the rest of the key), and stops being live when
//! `family` is cleared; a live key never moves to another way.

use crate::maps::ServiceKey;

/// Ways per bucket.
pub const SERVICE_WAYS: usize = 4;

/// `SERVICE_BUCKETS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceBucket {
    /// Keys; a way whose key has `family` 0 is free.
    pub keys: [ServiceKey; SERVICE_WAYS],
    /// Service index of each way.
    pub index: [u32; SERVICE_WAYS],
    /// Non-zero when some service of this bucket is only in `SERVICES`.
    pub overflow: u32,
    #[expect(
        clippy::pub_underscore_fields,
        reason = "explicit padding of a #[repr(C)] value, public so literals can zero it"
    )]
    pub _pad: u32,
}

/// Number of buckets for `max_services`: a power of two with room for four
/// times as many services, so overflow is rare.
#[must_use]
pub const fn service_buckets(max_services: u32) -> u32 {
    let want = if max_services == 0 {
        1
    } else {
        max_services.saturating_mul(4)
    };
    want.next_power_of_two()
}

/// Bucket of `key` among `buckets` (a power of two).
#[inline(always)]
#[must_use]
pub fn service_bucket_of(key: &ServiceKey, buckets: u32) -> u32 {
    let w = key.words();
    let mut h = w[0].wrapping_mul(0x9e37_79b1);
    // IPv6 keys mix the rest of the address; IPv4 keys have zeros there.
    if key.family != crate::maps::FAMILY_V4 {
        h = (h ^ w[1]).wrapping_mul(0x85eb_ca6b);
        h = (h ^ w[2]).wrapping_mul(0xc2b2_ae35);
        h = (h ^ w[3]).wrapping_mul(0x27d4_eb2f);
    }
    h = (h ^ w[4]).wrapping_mul(0x1656_67b1);
    // MurmurHash3's finalizer: every input bit reaches the low bits.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    (h ^ (h >> 16)) & (buckets - 1)
}

impl ServiceBucket {
    /// Index of the service with `key` in this bucket's ways.
    #[inline(always)]
    #[must_use]
    pub fn find(&self, key: &ServiceKey) -> Option<u32> {
        let mut w = 0;
        while w < SERVICE_WAYS {
            if self.keys[w].same(key) {
                return Some(self.index[w]);
            }
            w += 1;
        }
        None
    }
}

const _: () = assert!(core::mem::size_of::<ServiceBucket>() == 104);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{PROTO_TCP, PROTO_UDP};

    #[test]
    fn buckets_have_room_and_keys_spread() {
        assert_eq!(service_buckets(0), 1);
        assert_eq!(service_buckets(64), 256);
        assert_eq!(service_buckets(100), 512);
        let n = service_buckets(64);
        let mut used = std::collections::BTreeSet::new();
        for i in 0..64u8 {
            let k = ServiceKey::new(&[10, 0, 1, i], 80, PROTO_TCP);
            used.insert(service_bucket_of(&k, n));
        }
        // 64 VIPs on consecutive addresses land in many buckets.
        assert!(used.len() > 40, "{}", used.len());
        let a = ServiceKey::new(&[10, 0, 0, 1], 53, PROTO_UDP);
        let b = ServiceKey::new(&[10, 0, 0, 1], 53, PROTO_TCP);
        assert_eq!(service_bucket_of(&a, n), service_bucket_of(&a, n));
        let _ = b;
    }

    #[test]
    fn find_needs_the_whole_key() {
        let mut bucket = ServiceBucket::default();
        let k = ServiceKey::new(&[10, 0, 0, 1], 80, PROTO_TCP);
        bucket.keys[2] = k;
        bucket.index[2] = 7;
        assert_eq!(bucket.find(&k), Some(7));
        assert_eq!(
            bucket.find(&ServiceKey::new(&[10, 0, 0, 1], 81, PROTO_TCP)),
            None
        );
        assert_eq!(
            bucket.find(&ServiceKey::new(&[10, 0, 0, 1], 80, PROTO_UDP)),
            None
        );
        // A free way (family 0) never matches a parsed key (family 4 or 6).
        assert_eq!(bucket.find(&ServiceKey::new(&[0, 0, 0, 0], 0, 0)), None);
    }
}
