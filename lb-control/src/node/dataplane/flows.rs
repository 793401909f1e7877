//! The flow table as user space sees it: the program's set-associative
//! array through its memory mapping (`lb_common::flows`), or the kernel LRU
//! hash of the legacy build.
//!
//! Walking a million-flow table through the mapping is a memory scan (tens
//! of milliseconds), not a million `bpf()` calls.

use std::os::fd::BorrowedFd;

use aya::maps::{HashMap, MapData};
use lb_common::{
    FLOW_TAG_FREE, FLOW_WAYS, FlowEntry, FlowEntryV0, FlowKey, FlowSet, FlowSlot, flow_backend,
    flow_hash, flow_set_index, flow_tag, flow_target,
};

use super::mmap::{MmapArray, MmapError};

/// The program's set-associative flow table.
pub struct FlowSets {
    sets: MmapArray<FlowSet>,
    seed: u32,
}

impl FlowSets {
    /// Maps the `FLOWS` array behind `fd` (`sets` sets; `seed` is the flow
    /// hash seed the program was loaded with).
    pub fn new(fd: BorrowedFd<'_>, sets: u32, seed: u32) -> Result<Self, MmapError> {
        Ok(Self {
            sets: MmapArray::new(lb_common::MAP_FLOWS, fd, sets)?,
            seed,
        })
    }

    fn place(&self, key: &FlowKey) -> (u32, u32) {
        let hash = flow_hash(key, self.seed);
        (flow_set_index(hash, self.sets.entries()), flow_tag(hash))
    }

    /// The entry of `key`, with the time it was last seen.
    #[must_use]
    pub fn get(&self, key: &FlowKey) -> Option<FlowEntry> {
        let (index, tag) = self.place(key);
        let set = self.sets.get(index);
        set.find(tag, key).and_then(|w| entry_of(&set, w))
    }

    /// Every entry.
    #[must_use]
    pub fn entries(&self) -> Vec<(FlowKey, FlowEntry)> {
        let mut out = Vec::new();
        for set in self.sets.slice(0, self.sets.entries()) {
            for w in 0..FLOW_WAYS {
                if let Some(entry) = entry_of(set, w) {
                    out.push((set.slots[w].key, entry));
                }
            }
        }
        out
    }

    /// Number of entries.
    #[must_use]
    pub fn count(&self) -> usize {
        self.sets
            .slice(0, self.sets.entries())
            .iter()
            .map(|set| set.tags.iter().filter(|&&t| t != FLOW_TAG_FREE).count())
            .sum()
    }

    /// Writes an entry into a free way of its set (or over its own); a full
    /// set keeps what it has. Returns whether the entry was written.
    pub fn insert(&mut self, key: &FlowKey, entry: &FlowEntry) -> bool {
        let (index, tag) = self.place(key);
        let set = &mut self.sets.slice_mut(index, 1)[0];
        let way = set
            .find(tag, key)
            .or_else(|| set.tags.iter().position(|&t| t == FLOW_TAG_FREE));
        let Some(w) = way else {
            return false;
        };
        // Same publication order as the program: tag cleared, slot, tag.
        // SAFETY: in-bounds fields of a live mapping; volatile so the
        // stores reach memory in this order.
        unsafe {
            std::ptr::write_volatile(&raw mut set.tags[w], FLOW_TAG_FREE);
            std::ptr::write_volatile(
                &raw mut set.slots[w],
                FlowSlot {
                    key: *key,
                    incarnation: entry.incarnation,
                    target: flow_target(tag, entry.backend, entry.incarnation),
                },
            );
            std::ptr::write_volatile(&raw mut set.seen[w], entry.last_seen);
            std::ptr::write_volatile(&raw mut set.tags[w], tag);
        }
        true
    }

    /// Copies every entry that is not where this table's seed places it
    /// (the table was filled under another hash seed) to its place, and with
    /// `clear` frees the old way too; returns how many entries were away
    /// from their place. A program still running with the old seed keeps
    /// finding the originals until `clear`, which runs once the program with
    /// this seed has taken over.
    pub fn rehome(&mut self, clear: bool) -> usize {
        let mut away = 0;
        for index in 0..self.sets.entries() {
            let set = self.sets.get(index);
            for w in 0..FLOW_WAYS {
                let Some(entry) = entry_of(&set, w) else {
                    continue;
                };
                let key = set.slots[w].key;
                if self.place(&key) == (index, set.tags[w]) {
                    continue;
                }
                away += 1;
                // A flow the new program already wrote at its place keeps
                // its newer entry only if it has one; `insert` writes over
                // the flow's own way, so the older (sticky) entry wins.
                self.insert(&key, &entry);
                if clear {
                    let slot = &mut self.sets.slice_mut(index, 1)[0];
                    // SAFETY: a field of a live mapping.
                    unsafe { std::ptr::write_volatile(&raw mut slot.tags[w], FLOW_TAG_FREE) };
                }
            }
        }
        away
    }

    /// Frees every way.
    pub fn clear(&mut self) {
        for set in self.sets.slice_mut(0, self.sets.entries()) {
            for tag in &mut set.tags {
                // SAFETY: a field of a live mapping.
                unsafe { std::ptr::write_volatile(tag, FLOW_TAG_FREE) };
            }
        }
    }
}

/// The entry in way `w` of `set`, unless the way is free or its backend
/// word fails its check (a slot two CPUs wrote at once).
fn entry_of(set: &FlowSet, w: usize) -> Option<FlowEntry> {
    if set.tags[w] == FLOW_TAG_FREE {
        return None;
    }
    let slot = &set.slots[w];
    let backend = flow_backend(set.tags[w], slot.target, slot.incarnation)?;
    Some(FlowEntry {
        backend,
        incarnation: slot.incarnation,
        last_seen: set.seen[w],
        flags: 0,
    })
}

/// The flow table, in whichever layout the running program uses.
pub enum FlowTable {
    Sets(FlowSets),
    /// The first release's kernel LRU hash (aya types it as a hash map).
    Legacy(HashMap<MapData, FlowKey, FlowEntryV0>),
}

impl FlowTable {
    /// Number of entries (walks the table).
    #[must_use]
    pub fn count(&self) -> usize {
        match self {
            FlowTable::Sets(t) => t.count(),
            FlowTable::Legacy(m) => m.keys().count(),
        }
    }

    /// Entries as (key, backend, incarnation).
    pub fn entries(&self) -> Vec<(FlowKey, u32, u32)> {
        match self {
            FlowTable::Sets(t) => t
                .entries()
                .into_iter()
                .map(|(k, v)| (k, v.backend, v.incarnation))
                .collect(),
            FlowTable::Legacy(m) => m
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (k, v.backend, v.incarnation))
                .collect(),
        }
    }
}
