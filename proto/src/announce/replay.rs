//! The bounded memory of accepted `(host, nonce)` pairs that refuses
//! replays within the window.

use std::collections::{BTreeSet, HashMap};

use super::Rejected;

/// `(host, nonce)` pairs accepted and still inside the window, bounded.
#[derive(Debug)]
pub(super) struct ReplayCache {
    capacity: usize,
    /// Most entries one host may hold: its share.
    per_host: usize,
    /// Entries per host.
    held: HashMap<String, usize>,
    /// `(lowercase host, nonce)` → the Unix ms after which it may go.
    seen: HashMap<(String, String), u64>,
    /// The same entries, oldest expiry first.
    by_expiry: BTreeSet<(u64, String, String)>,
}

impl ReplayCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            per_host: super::DEFAULT_REPLAY_PER_HOST.min(capacity),
            held: HashMap::new(),
            seen: HashMap::new(),
            by_expiry: BTreeSet::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.seen.len()
    }

    /// Drops entries whose announcement is outside the window at `now_ms`:
    /// the time check refuses a replay of those anyway.
    pub(super) fn forget_before(&mut self, now_ms: u64) {
        while let Some(first) = self.by_expiry.first() {
            if first.0 >= now_ms {
                break;
            }
            if let Some((_, host, nonce)) = self.by_expiry.pop_first() {
                if let Some(n) = self.held.get_mut(&host) {
                    *n -= 1;
                    if *n == 0 {
                        self.held.remove(&host);
                    }
                }
                self.seen.remove(&(host, nonce));
            }
        }
    }

    pub(super) fn contains(&self, host: &str, nonce: &str) -> bool {
        self.seen
            .contains_key(&(host.to_ascii_lowercase(), nonce.to_owned()))
    }

    pub(super) fn insert(
        &mut self,
        host: &str,
        nonce: &str,
        expires_ms: u64,
    ) -> Result<(), Rejected> {
        if self.seen.len() >= self.capacity {
            return Err(Rejected::ReplayCacheFull {
                capacity: self.capacity,
            });
        }
        let host = host.to_ascii_lowercase();
        let held = self.held.entry(host.clone()).or_default();
        if *held >= self.per_host {
            return Err(Rejected::HostQuota {
                host,
                quota: self.per_host,
            });
        }
        *held += 1;
        self.seen
            .insert((host.clone(), nonce.to_owned()), expires_ms);
        self.by_expiry.insert((expires_ms, host, nonce.to_owned()));
        Ok(())
    }
}
