//! The flow table: a set-associative array (`FLOWS`, a `BPF_F_MMAPABLE`
//! array of [`FlowSet`]s), shared by all CPUs.
//!
//! A flow lives in the set its [`flow_hash`](crate::flow_hash) picks (the
//! same hash the Maglev lookup uses, so one hash per packet serves both), in
//! one of [`FLOW_WAYS`] ways. A new flow takes a free way, or else the way
//! whose flow was seen longest ago (least recently used within the set, at
//! one-second resolution). Compared with a kernel LRU hash this costs no
//! lock, no list move and no allocation per new flow, and a lookup is one
//! cache line of tags plus the matching slot; the price is that a set that
//! overflows evicts its oldest flow while other sets have room, so the table
//! is sized with headroom (see `docs/configuration.md`, `flow_table_size`).
//!
//! Writers publish a slot by clearing its tag, writing the key, the
//! incarnation and the checked backend word ([`flow_target`]), then setting
//! the tag. A reader that races a writer sees a tag, key or check that does
//! not match and treats the packet as a miss (re-hash), the same as an
//! evicted flow; so does a slot two writers interleaved.

use crate::maps::FlowKey;

/// Ways per set: the tags and last-seen times of one set fill one 64-byte
/// cache line.
pub const FLOW_WAYS: usize = 8;

/// A tag that marks a free way.
pub const FLOW_TAG_FREE: u32 = 0;

/// Coarse seconds ([`crate::coarse_secs`], ≈1.07 s each) within which an
/// entry's last non-SYN packet keeps it against a bare SYN of its 4-tuple:
/// the SYN follows the entry to its server (if active, same incarnation)
/// instead of re-hashing. A connection that is carrying traffic cannot be
/// moved by forged SYNs; a client port reused after its connection went
/// quiet (or a SYN retransmitted after a pool change) takes the table's
/// current choice. An entry a SYN wrote is stored as last seen just past
/// this window (its first other packet brings it to the present), so a SYN
/// alone never makes an entry one that SYNs must keep.
pub const SYN_KEEP_SECS: u32 = 4;

/// Whether an entry last seen at `seen` is recent enough, at `now`, to be
/// kept against a bare SYN ([`SYN_KEEP_SECS`]).
#[inline(always)]
#[must_use]
pub const fn keeps_against_syn(seen: u32, now: u32) -> bool {
    now.wrapping_sub(seen) <= SYN_KEEP_SECS
}

/// The last-seen time a bare SYN writes its new entry with: just past the
/// [`SYN_KEEP_SECS`] window, so only the flow's other packets make it one
/// that SYNs keep. (It also makes a set evict entries that never saw more
/// than a SYN before established ones.)
#[inline(always)]
#[must_use]
pub const fn syn_entry_seen(now: u32) -> u32 {
    now.wrapping_sub(SYN_KEEP_SECS + 1)
}

/// One way of a set: the flow's key and where it goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    /// The backend's incarnation when the entry was written.
    pub incarnation: u32,
    /// [`flow_target`]: the backend index and a check that ties it to the
    /// flow's tag and the incarnation, written with one store.
    pub target: u32,
}

/// The `target` word of a slot: backend index (backend indexes are `u16`)
/// in the low half, a 16-bit check of (tag, backend, incarnation) in the
/// high half. Two CPUs writing new flows into the same way at the same
/// instant can interleave their stores; the check makes a slot whose fields
/// come from different writers read as a miss (re-hash) instead of sending
/// one flow to the other's backend.
#[inline(always)]
#[must_use]
pub const fn flow_target(tag: u32, backend: u32, incarnation: u32) -> u32 {
    let h = (tag ^ backend.wrapping_mul(0x9e37_79b1) ^ incarnation.wrapping_mul(0x85eb_ca6b))
        .wrapping_mul(0xc2b2_ae35);
    (backend & 0xffff) | (h & 0xffff_0000)
}

/// The backend a slot names, if its `target` checks out against the tag
/// and incarnation read with it.
#[inline(always)]
#[must_use]
pub const fn flow_backend(tag: u32, target: u32, incarnation: u32) -> Option<u32> {
    let backend = target & 0xffff;
    if flow_target(tag, backend, incarnation) == target {
        Some(backend)
    } else {
        None
    }
}

/// `FLOWS` value: one set of [`FLOW_WAYS`] flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    /// Per way: [`flow_tag`] of its flow, [`FLOW_TAG_FREE`] when free.
    pub tags: [u32; FLOW_WAYS],
    /// Per way: coarse seconds ([`crate::coarse_secs`]) the flow was last
    /// seen, written at most once per such second. Picks the way a new flow
    /// takes in a full set, and expires idle UDP flows.
    pub seen: [u32; FLOW_WAYS],
    pub slots: [FlowSlot; FLOW_WAYS],
}

/// Indexes of `FLOW_STATS` (a per-CPU array of `u64`; apart from
/// `GLOBAL_STATS` so that adding one does not resize a pinned map).
pub mod flow_stats {
    /// New flows that took the way of another flow (its set was full): a
    /// steady rate means the table is too small for the flows it serves.
    pub const EVICTED: u32 = 0;
    pub const COUNT: u32 = 1;
    /// Names for display, by index.
    pub const NAMES: [&str; COUNT as usize] = ["flow_evicted"];
}

/// Number of sets for a table of at least `capacity` flows: a power of two,
/// so the set index is a mask of the hash.
#[must_use]
pub const fn flow_sets(capacity: u32) -> u32 {
    let sets = capacity.div_ceil(FLOW_WAYS as u32);
    if sets <= 1 {
        1
    } else {
        sets.next_power_of_two()
    }
}

/// Set of a flow with hash `hash` in a table of `sets` sets (a power of two).
#[inline(always)]
#[must_use]
pub const fn flow_set_index(hash: u32, sets: u32) -> u32 {
    hash & (sets - 1)
}

/// Tag of a flow with hash `hash`: never [`FLOW_TAG_FREE`]. The set index
/// uses the low bits, so the high bits tell the flows of one set apart; the
/// key decides.
#[inline(always)]
#[must_use]
pub const fn flow_tag(hash: u32) -> u32 {
    hash | 1
}

impl FlowSet {
    /// The way holding `key` (tag first, then the whole key).
    #[inline(always)]
    #[must_use]
    pub fn find(&self, tag: u32, key: &FlowKey) -> Option<usize> {
        let mut w = 0;
        while w < FLOW_WAYS {
            if self.tags[w] == tag && self.slots[w].key.same(key) {
                return Some(w);
            }
            w += 1;
        }
        None
    }

    /// The way a new flow takes: a free one, else the one seen longest ago
    /// (ties to the lower way).
    #[inline(always)]
    #[must_use]
    pub fn victim(&self, now: u32) -> usize {
        let mut best = 0;
        let mut best_age = 0;
        for w in 0..FLOW_WAYS {
            if self.tags[w] == FLOW_TAG_FREE {
                return w;
            }
            let age = now.wrapping_sub(self.seen[w]);
            if age > best_age {
                best = w;
                best_age = age;
            }
        }
        best
    }
}

const _: () = assert!(core::mem::size_of::<FlowSlot>() == 48);
const _: () = assert!(core::mem::size_of::<FlowSet>() == 64 + 48 * FLOW_WAYS);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::PROTO_TCP;

    fn key(sport: u16) -> FlowKey {
        FlowKey::new(&[10, 0, 0, 2], sport, &[10, 0, 0, 100], 80, PROTO_TCP)
    }

    #[test]
    fn set_counts_are_powers_of_two_with_room() {
        assert_eq!(flow_sets(0), 1);
        assert_eq!(flow_sets(8), 1);
        assert_eq!(flow_sets(9), 2);
        assert_eq!(flow_sets(1 << 20), 1 << 17);
        assert_eq!(flow_sets(1_000_000), 1 << 17);
        assert_eq!(flow_set_index(0xdead_beef, 1 << 17), 0xdead_beef & 0x1_ffff);
        assert_ne!(flow_tag(0), FLOW_TAG_FREE);
    }

    #[test]
    fn target_checks_tag_backend_and_incarnation() {
        let t = flow_target(flow_tag(0xabcd), 42, 7);
        assert_eq!(flow_backend(flow_tag(0xabcd), t, 7), Some(42));
        // Fields from another writer: another tag, incarnation or backend.
        assert_eq!(flow_backend(flow_tag(0xabce), t, 7), None);
        assert_eq!(flow_backend(flow_tag(0xabcd), t, 8), None);
        let other = flow_target(flow_tag(0xabcd), 43, 7);
        assert_eq!(
            flow_backend(flow_tag(0xabcd), (t & 0xffff_0000) | (other & 0xffff), 7),
            None
        );
        // Over many mixes, a torn slot almost never passes.
        let mut passed = 0;
        for i in 0..100_000u32 {
            let (a, b) = (flow_tag(i.wrapping_mul(2_654_435_761)), flow_tag(i));
            if a != b && flow_backend(a, flow_target(b, i % 1000, i), i).is_some() {
                passed += 1;
            }
        }
        assert!(passed < 10, "{passed} of 100000 torn slots passed");
    }

    #[test]
    fn find_matches_tag_and_whole_key() {
        let mut set = FlowSet::default();
        set.tags[3] = flow_tag(77);
        set.slots[3].key = key(1000);
        assert_eq!(set.find(flow_tag(77), &key(1000)), Some(3));
        // Same tag, other key: not a match.
        assert_eq!(set.find(flow_tag(77), &key(1001)), None);
        // Same key under a free tag: not a match.
        set.tags[3] = FLOW_TAG_FREE;
        assert_eq!(set.find(flow_tag(77), &key(1000)), None);
    }

    #[test]
    fn a_syn_keeps_only_entries_seen_within_the_window() {
        let now = 1000;
        assert!(keeps_against_syn(now, now));
        assert!(keeps_against_syn(now - SYN_KEEP_SECS, now));
        assert!(!keeps_against_syn(now - SYN_KEEP_SECS - 1, now));
        // An entry a SYN wrote is not kept by the next SYN, even at once.
        assert!(!keeps_against_syn(syn_entry_seen(now), now));
        // Clock wrap: ages are wrapping differences.
        assert!(keeps_against_syn(u32::MAX, 2));
        assert!(!keeps_against_syn(syn_entry_seen(1), 1));
    }

    #[test]
    fn victim_is_a_free_way_then_the_oldest() {
        let mut set = FlowSet::default();
        assert_eq!(set.victim(100), 0);
        for w in 0..FLOW_WAYS {
            set.tags[w] = flow_tag(w as u32 * 2);
            set.seen[w] = 90 + w as u32;
        }
        set.seen[5] = 50;
        assert_eq!(set.victim(100), 5);
        set.tags[6] = FLOW_TAG_FREE;
        assert_eq!(set.victim(100), 6);
        // Clock wrap: ages are wrapping differences.
        let mut set = FlowSet::default();
        for w in 0..FLOW_WAYS {
            set.tags[w] = 1;
            set.seen[w] = u32::MAX;
        }
        set.seen[2] = u32::MAX - 5;
        assert_eq!(set.victim(3), 2);
    }
}
