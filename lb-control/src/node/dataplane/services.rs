//! `SERVICE_BUCKETS`: the program's fast service index, kept equal to
//! `SERVICES` (see `lb_common::services`).

use std::collections::BTreeMap;

use lb_common::{SERVICE_WAYS, ServiceBucket, ServiceKey, service_bucket_of};

use super::mmap::MmapArray;

/// Makes the buckets answer exactly what `services` (the content of
/// `SERVICES`: key → index) says. A key that stays keeps its way; removed
/// keys are unpublished before new ones take their ways; a bucket that
/// cannot hold its keys is marked as overflowing before, and unmarked only
/// after, the ways change, so the program always finds every service either
/// in a way or through `SERVICES`.
pub fn publish(buckets: &mut MmapArray<ServiceBucket>, services: &[(ServiceKey, u32)]) {
    let count = buckets.entries();
    let mut wanted: BTreeMap<u32, Vec<(ServiceKey, u32)>> = BTreeMap::new();
    for &(key, index) in services {
        wanted
            .entry(service_bucket_of(&key, count))
            .or_default()
            .push((key, index));
    }
    for b in 0..count {
        let mut want = wanted.remove(&b).unwrap_or_default();
        want.sort();
        let current = buckets.get(b);
        // Ways that already hold a wanted (key, index) stay as they are.
        let mut keep = [false; SERVICE_WAYS];
        for (w, kept) in keep.iter_mut().enumerate() {
            let live = current.keys[w].family != 0;
            if let Some(i) = want
                .iter()
                .position(|&(k, idx)| live && k == current.keys[w] && idx == current.index[w])
            {
                *kept = true;
                want.remove(i);
            }
        }
        let free: Vec<usize> = (0..SERVICE_WAYS).filter(|&w| !keep[w]).collect();
        let overflow = want.len() > free.len();
        let plan: Vec<(usize, Option<(ServiceKey, u32)>)> = free
            .iter()
            .enumerate()
            .map(|(i, &w)| (w, want.get(i).copied()))
            .collect();
        let unchanged = current.overflow == u32::from(overflow)
            && plan
                .iter()
                .all(|&(w, new)| new.is_none() && current.keys[w].family == 0);
        if unchanged {
            continue;
        }
        let bucket = &mut buckets.slice_mut(b, 1)[0];
        // SAFETY (every block below): in-bounds fields of a live mapping;
        // volatile so the stores reach memory in program order.
        if overflow {
            unsafe { std::ptr::write_volatile(&raw mut bucket.overflow, 1) };
        }
        for &(w, _) in &plan {
            if current.keys[w].family != 0 {
                unsafe {
                    std::ptr::write_volatile(&raw mut bucket.keys[w].family, 0);
                    std::ptr::write_volatile(&raw mut bucket.keys[w], ServiceKey::default());
                }
            }
        }
        for &(w, new) in &plan {
            if let Some((key, index)) = new {
                let mut unpublished = key;
                unpublished.family = 0;
                unsafe {
                    std::ptr::write_volatile(&raw mut bucket.index[w], index);
                    std::ptr::write_volatile(&raw mut bucket.keys[w], unpublished);
                    std::ptr::write_volatile(&raw mut bucket.keys[w].family, key.family);
                }
            }
        }
        if !overflow {
            unsafe { std::ptr::write_volatile(&raw mut bucket.overflow, 0) };
        }
    }
}

/// Where the program finds `key`: `Ok(index)` from a way, `Err(true)` when
/// its bucket sends the program on to `SERVICES`, `Err(false)` when it
/// would not find it at all.
pub fn lookup(buckets: &MmapArray<ServiceBucket>, key: &ServiceKey) -> Result<u32, bool> {
    let bucket = buckets.get(service_bucket_of(key, buckets.entries()));
    bucket.find(key).ok_or(bucket.overflow != 0)
}
