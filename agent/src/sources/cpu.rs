//! Host CPU utilization from `/proc/stat` deltas.
//!
//! The first line of `/proc/stat` sums every CPU's time, in clock ticks,
//! spent in each state since boot:
//! `cpu user nice system idle iowait irq softirq steal guest guest_nice`.
//! Busy time is `user + nice + system + irq + softirq + steal`; idle time is
//! `idle + iowait`. `guest` and `guest_nice` are already counted in `user` and
//! `nice`, so they are left out.

use std::path::{Path, PathBuf};

use procfs::FromReadSI as _;

use super::{HOST_ROOT, under};

/// Why a `/proc` file could not be used (shared by the `/proc` sources).
pub type CpuError = super::ProcFileError;

/// Cumulative busy and idle ticks of all CPUs, as read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    idle: u64,
}

/// Samples the host's CPU busy share between consecutive calls.
///
/// Keeps the previous reading; each [`sample`](Self::sample) returns the busy
/// share of all CPUs since the one before.
#[derive(Debug)]
pub struct CpuSampler {
    path: PathBuf,
    previous: Option<CpuTimes>,
}

impl CpuSampler {
    /// A sampler reading `<root>/proc/stat`; `root` is `/` on a real host.
    pub fn new(root: impl AsRef<Path>) -> Self {
        Self {
            path: under(root.as_ref(), "proc/stat"),
            previous: None,
        }
    }

    /// A sampler reading the real `/proc/stat`.
    #[must_use]
    pub fn host() -> Self {
        Self::new(HOST_ROOT)
    }

    /// Reads `/proc/stat` and returns the busy share (0..=1) of all CPUs since
    /// the previous call.
    ///
    /// Returns `Ok(None)` when there is nothing to compare with: on the first
    /// call (which only primes the sampler), after a counter went backwards
    /// (wrap or reset; the sampler re-primes on the new reading), and when no
    /// tick passed since the previous call (the previous reading is kept).
    /// Fails when the file cannot be read or its `cpu` line is malformed; the
    /// previous reading is kept then.
    pub fn sample(&mut self) -> Result<Option<f64>, CpuError> {
        let bytes = super::read_proc_file(&self.path)?;
        let now = parse_cpu_times(&bytes, &self.path)?;
        let Some(previous) = self.previous else {
            self.previous = Some(now);
            return Ok(None);
        };
        // The sums, not each field, are compared: the kernel's per-field
        // iowait figure is known to step back a little on tickless kernels
        // while idle + iowait still moves forward.
        if now.busy < previous.busy || now.idle < previous.idle {
            tracing::debug!(path = %self.path.display(), "cpu counters went backwards; re-priming");
            self.previous = Some(now);
            return Ok(None);
        }
        let busy = now.busy - previous.busy;
        let total = busy + (now.idle - previous.idle);
        if total == 0 {
            return Ok(None);
        }
        self.previous = Some(now);
        Ok(Some(busy as f64 / total as f64))
    }
}

/// Busy and idle ticks from the aggregate `cpu` line of `/proc/stat`
/// contents, parsed by procfs (which also wants the `ctxt`, `btime` and
/// `processes` lines every kernel writes).
fn parse_cpu_times(bytes: &[u8], path: &Path) -> Result<CpuTimes, CpuError> {
    let stats =
        procfs::KernelStats::from_read(bytes, procfs::current_system_info()).map_err(|e| {
            CpuError::Parse {
                path: path.to_owned(),
                reason: super::proc_reason(
                    "an aggregate \"cpu\" line of at least 4 counters (user nice system idle) \
                 and the ctxt, btime and processes lines",
                    &e,
                ),
            }
        })?;
    let total = stats.total;
    // Older kernels print fewer fields; missing ones count as zero.
    let optional = |field: Option<u64>| field.unwrap_or(0);
    Ok(CpuTimes {
        busy: total
            .user
            .saturating_add(total.nice)
            .saturating_add(total.system)
            .saturating_add(optional(total.irq))
            .saturating_add(optional(total.softirq))
            .saturating_add(optional(total.steal)),
        idle: total.idle.saturating_add(optional(total.iowait)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fixture;

    fn stat(user: u64, system: u64, idle: u64, iowait: u64, steal: u64) -> String {
        format!(
            "cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 7 0\n\
             cpu0 1 0 1 1 0 0 0 0 0 0\nintr 12345 0 0\nctxt 99\nbtime 1700000000\n\
             processes 4242\nprocs_running 1\nprocs_blocked 0\n"
        )
    }

    #[test]
    fn first_sample_primes_then_gives_busy_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = CpuSampler::new(dir.path());
        fixture::write(dir.path(), "proc/stat", &stat(100, 50, 800, 50, 0));
        assert_eq!(sampler.sample().expect("first"), None);

        // +30 user, +10 system, +50 idle, +10 iowait: 40 busy of 100.
        fixture::write(dir.path(), "proc/stat", &stat(130, 60, 850, 60, 0));
        let share = sampler.sample().expect("second").expect("share");
        assert!((share - 0.4).abs() < 1e-9, "{share}");

        // Steal counts as busy; guest (7, unchanged) is not added again.
        fixture::write(dir.path(), "proc/stat", &stat(130, 60, 850, 60, 20));
        let share = sampler.sample().expect("third").expect("share");
        assert!((share - 1.0).abs() < 1e-9, "{share}");
    }

    #[test]
    fn counter_going_backwards_reprimes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = CpuSampler::new(dir.path());
        fixture::write(dir.path(), "proc/stat", &stat(u64::MAX - 10, 50, 800, 0, 0));
        assert_eq!(sampler.sample().expect("prime"), None);
        // Wrapped: busy is now small.
        fixture::write(dir.path(), "proc/stat", &stat(5, 50, 900, 0, 0));
        assert_eq!(sampler.sample().expect("wrap"), None);
        // Re-primed on the wrapped reading: 10 busy of 20.
        fixture::write(dir.path(), "proc/stat", &stat(15, 50, 910, 0, 0));
        let share = sampler.sample().expect("after").expect("share");
        assert!((share - 0.5).abs() < 1e-9, "{share}");
    }

    #[test]
    fn no_tick_passed_keeps_previous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = CpuSampler::new(dir.path());
        fixture::write(dir.path(), "proc/stat", &stat(100, 0, 100, 0, 0));
        assert_eq!(sampler.sample().expect("prime"), None);
        assert_eq!(sampler.sample().expect("same"), None);
        fixture::write(dir.path(), "proc/stat", &stat(110, 0, 130, 0, 0));
        let share = sampler.sample().expect("share").expect("share");
        assert!((share - 0.25).abs() < 1e-9, "{share}");
    }

    #[test]
    fn malformed_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sampler = CpuSampler::new(dir.path());
        let err = sampler.sample().expect_err("missing");
        assert!(err.to_string().contains("proc/stat"), "{err}");
        fixture::write(dir.path(), "proc/stat", "cpu0 1 2 3 4\n");
        let err = sampler.sample().expect_err("no aggregate line");
        assert!(err.to_string().contains("aggregate"), "{err}");
        let tail = "ctxt 1\nbtime 2\nprocesses 3\n";
        fixture::write(dir.path(), "proc/stat", &format!("cpu 1 x 3 4\n{tail}"));
        assert!(sampler.sample().is_err());
        fixture::write(dir.path(), "proc/stat", &format!("cpu 1 2 3\n{tail}"));
        assert!(sampler.sample().is_err());
    }

    #[test]
    fn real_proc_stat_share_is_a_fraction() {
        let mut sampler = CpuSampler::host();
        assert_eq!(sampler.sample().expect("prime"), None);
        // Burn CPU until at least a few ticks have passed.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let share = loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            if start.elapsed() >= std::time::Duration::from_millis(100)
                && let Some(share) = sampler.sample().expect("sample")
            {
                break share;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "no tick in 5 s"
            );
        };
        assert!((0.0..=1.0).contains(&share), "{share}");
        // The loop itself kept one CPU busy most of the time.
        assert!(share > 0.0, "{share}");
    }
}
