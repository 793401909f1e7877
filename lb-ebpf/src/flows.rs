//! The flow table. The current build keeps it in a set-associative array
//! (`lb_common::flows`); the `legacy-flow-entry` build is the first
//! release's kernel LRU hash with `FlowEntryV0` values, kept only so the
//! upgrade test has a real older build to migrate from.

/// What a packet asks of the flow table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A packet of the flow: a hit refreshes the entry's last-seen time.
    Packet,
    /// A bare SYN: an entry counts only if its flow was seen within
    /// `SYN_KEEP_SECS`, and the SYN does not refresh it.
    Syn,
    /// An ICMP error about the flow (anyone can send one): a hit, never
    /// refreshed.
    Icmp,
}

/// What the flow table knows about a packet's flow.
pub enum Lookup {
    /// An entry: the backend and incarnation it was written with.
    Hit {
        backend: u32,
        incarnation: u32,
    },
    /// A UDP entry past its idle timeout.
    Expired,
    /// A bare SYN's entry, idle past `SYN_KEEP_SECS`.
    #[cfg_attr(
        feature = "legacy-flow-entry",
        expect(dead_code, reason = "the first release's table re-hashes every SYN")
    )]
    Stale,
    Miss,
}

#[cfg(not(feature = "legacy-flow-entry"))]
mod sets {
    use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

    use aya_ebpf::{bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
    use lb_common::{
        DEFAULT_FLOW_TABLE_SIZE, FLOW_TAG_FREE, FLOW_WAYS, FlowKey, FlowSet, PROTO_UDP,
        flow_backend, flow_set_index, flow_sets, flow_stats, flow_tag, flow_target,
        keeps_against_syn,
    };

    use super::{Lookup, Probe};
    use crate::{FLOW_SETS, FLOW_STATS, UDP_IDLE_SECS, bump, read_global};

    /// One table shared by all CPUs: a flow's packets may arrive on any CPU.
    #[map]
    static FLOWS: Array<FlowSet> =
        Array::with_max_entries(flow_sets(DEFAULT_FLOW_TABLE_SIZE), BPF_F_MMAPABLE);

    /// Where a flow is or will be written: its set and its way, or
    /// [`NO_WAY`] when it has none yet.
    pub struct Place {
        set: *mut FlowSet,
        way: usize,
    }

    /// No way (a plain sentinel, not an `Option`: the verifier rejects
    /// spills of the undefined payload an `Option` can carry).
    const NO_WAY: usize = FLOW_WAYS;

    #[inline(always)]
    pub fn lookup(key: &FlowKey, hash: u32, probe: Probe, now: u32) -> Result<(Lookup, Place), ()> {
        let index = flow_set_index(hash, read_global(&FLOW_SETS));
        // The index is masked to the table: a failed lookup is a loader bug.
        let set = FLOWS.get_ptr_mut(index).ok_or(())?;
        // SAFETY: a live map value; writers store whole aligned fields and
        // publish a slot through its tag (module docs of lb_common::flows).
        let tag = flow_tag(hash);
        let way = unsafe { (*set).find(tag, key) }.unwrap_or(NO_WAY);
        let place = Place { set, way };
        // A SYN the entry does not keep still knows its way, so that it
        // overwrites rather than duplicates the entry of a reused port.
        if way == NO_WAY {
            return Ok((Lookup::Miss, place));
        }
        let w = way & (FLOW_WAYS - 1);
        // SAFETY: as above; `w` is a way index.
        unsafe {
            let slot = addr_of!((*set).slots[w]);
            let incarnation = read_volatile(addr_of!((*slot).incarnation));
            let target = read_volatile(addr_of!((*slot).target));
            // A slot written by two CPUs at once fails its check: a miss.
            let Some(backend) = flow_backend(tag, target, incarnation) else {
                return Ok((Lookup::Miss, place));
            };
            let seen = addr_of_mut!((*set).seen[w]);
            let last = read_volatile(seen);
            if probe == Probe::Syn {
                // Only the flow's other packets keep an entry against a
                // SYN, and a SYN never makes it look recent.
                if !keeps_against_syn(last, now) {
                    return Ok((Lookup::Stale, place));
                }
                return Ok((
                    Lookup::Hit {
                        backend,
                        incarnation,
                    },
                    place,
                ));
            }
            if key.proto == PROTO_UDP && now.wrapping_sub(last) > read_global(&UDP_IDLE_SECS) {
                return Ok((Lookup::Expired, place));
            }
            if last != now && probe == Probe::Packet {
                write_volatile(seen, now);
            }
            Ok((
                Lookup::Hit {
                    backend,
                    incarnation,
                },
                place,
            ))
        }
    }

    /// Writes the flow's entry, last seen at `seen`: over its old one, else
    /// in a free way, else over the set's least recently seen flow (as of
    /// `now`).
    #[inline(always)]
    pub fn remember(
        Place { set, way }: Place,
        key: &FlowKey,
        hash: u32,
        (backend, incarnation): (u32, u32),
        seen: u32,
        now: u32,
    ) {
        // SAFETY: a live map value; the tag is cleared before the slot is
        // rewritten and set after, so readers never match a half-written slot
        // by its new tag.
        unsafe {
            let w = if way == NO_WAY {
                (*set).victim(now)
            } else {
                way
            } & (FLOW_WAYS - 1);
            if way == NO_WAY && read_volatile(addr_of!((*set).tags[w])) != FLOW_TAG_FREE {
                bump(&FLOW_STATS, flow_stats::EVICTED);
            }
            let tag = addr_of_mut!((*set).tags[w]);
            write_volatile(tag, FLOW_TAG_FREE);
            let slot = addr_of_mut!((*set).slots[w]);
            // Word stores: a volatile store of the whole slot would be
            // lowered to byte stores.
            let words = key.words();
            let out = addr_of_mut!((*slot).key).cast::<u64>();
            for (i, word) in words.iter().enumerate() {
                write_volatile(out.add(i), *word);
            }
            write_volatile(addr_of_mut!((*slot).incarnation), incarnation);
            write_volatile(
                addr_of_mut!((*slot).target),
                flow_target(flow_tag(hash), backend, incarnation),
            );
            write_volatile(addr_of_mut!((*set).seen[w]), seen);
            write_volatile(tag, flow_tag(hash));
        }
    }
}

#[cfg(not(feature = "legacy-flow-entry"))]
pub use sets::{lookup, remember};

#[cfg(feature = "legacy-flow-entry")]
mod lru {
    use aya_ebpf::{macros::map, maps::LruHashMap};
    use lb_common::{DEFAULT_FLOW_TABLE_SIZE, FlowEntryV0, FlowKey};

    use super::{Lookup, Probe};

    #[map]
    static FLOWS: LruHashMap<FlowKey, FlowEntryV0> =
        LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

    pub struct Place;

    #[inline(always)]
    pub fn lookup(
        key: &FlowKey,
        _hash: u32,
        probe: Probe,
        _now: u32,
    ) -> Result<(Lookup, Place), ()> {
        // The first release: a SYN always re-hashes.
        if probe == Probe::Syn {
            return Ok((Lookup::Miss, Place));
        }
        // SAFETY: a live map value of plain data.
        Ok(match unsafe { FLOWS.get(key) } {
            Some(e) => (
                Lookup::Hit {
                    backend: e.backend,
                    incarnation: e.incarnation,
                },
                Place,
            ),
            None => (Lookup::Miss, Place),
        })
    }

    #[inline(always)]
    pub fn remember(
        _place: Place,
        key: &FlowKey,
        _hash: u32,
        (backend, incarnation): (u32, u32),
        _seen: u32,
        _now: u32,
    ) {
        // A full LRU evicts its oldest entry; a failed insert only costs
        // stickiness for this flow.
        let _ = FLOWS.insert(
            key,
            FlowEntryV0 {
                backend,
                incarnation,
            },
            0,
        );
    }
}

#[cfg(feature = "legacy-flow-entry")]
pub use lru::{lookup, remember};
