//! Times as the wire and the logs carry them: whole milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `d` in whole milliseconds, `u64::MAX` past about 584 million years.
#[must_use]
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds from the Unix epoch to `t` (0 before 1970).
#[must_use]
pub fn unix_ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// Unix time now, in milliseconds (0 before 1970).
#[must_use]
pub fn unix_ms() -> u64 {
    unix_ms_of(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_milliseconds_saturating() {
        assert_eq!(millis(Duration::from_micros(2_999)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(unix_ms_of(UNIX_EPOCH + Duration::from_secs(3)), 3_000);
        assert_eq!(unix_ms_of(UNIX_EPOCH - Duration::from_secs(3)), 0);
        assert!(unix_ms() > 1_700_000_000_000);
    }
}
