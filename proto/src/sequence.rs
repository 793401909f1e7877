//! Rejecting stale and replayed messages.

use thiserror::Error;

/// A message whose `seq` is not above the last one accepted from its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("stale message: seq {seq} is not above the last accepted {last}")]
pub struct Stale {
    /// The rejected sequence number.
    pub seq: u64,
    /// The last accepted one.
    pub last: u64,
}

/// Remembers the last `seq` accepted from one peer and accepts only larger
/// ones, so a duplicated, reordered or replayed message (say, a report from
/// an agent's previous connection that lingers) is ignored rather than
/// overwriting newer state.
///
/// Keep one per peer (per agent host, per node), across its reconnections:
/// senders start a new stream above their last `seq` (see
/// [`Encoder::new`](crate::Encoder::new)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceGuard {
    last: Option<u64>,
}

impl SequenceGuard {
    /// A guard that has accepted nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The last accepted `seq`.
    #[must_use]
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// Accepts `seq` (and remembers it) if it is above the last accepted one.
    ///
    /// # Errors
    ///
    /// [`Stale`] when `seq` is not above the last accepted one (a replay, or a
    /// message older than one already accepted); the guard does not move then.
    pub fn check(&mut self, seq: u64) -> Result<(), Stale> {
        match self.last {
            Some(last) if seq <= last => Err(Stale { seq, last }),
            _ => {
                self.last = Some(seq);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_increasing_with_gaps() {
        let mut guard = SequenceGuard::new();
        assert_eq!(guard.last(), None);
        for seq in [0, 1, 2, 10, 11, u64::MAX] {
            guard.check(seq).unwrap();
            assert_eq!(guard.last(), Some(seq));
        }
    }

    #[test]
    fn rejects_replay_and_stale() {
        let mut guard = SequenceGuard::new();
        guard.check(5).unwrap();
        assert_eq!(guard.check(5), Err(Stale { seq: 5, last: 5 }));
        assert_eq!(guard.check(3), Err(Stale { seq: 3, last: 5 }));
        // A rejection does not move the guard.
        assert_eq!(guard.last(), Some(5));
        guard.check(6).unwrap();
        assert_eq!(
            guard.check(5).unwrap_err().to_string(),
            "stale message: seq 5 is not above the last accepted 6"
        );
    }
}
