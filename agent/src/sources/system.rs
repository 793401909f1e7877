//! Load averages from `/proc/loadavg` and memory from `/proc/meminfo`.

use std::path::Path;

use procfs::FromRead as _;

use super::{proc_reason, read_proc_file, under};

/// Why a `/proc` file could not be used (shared by the `/proc` sources).
pub type SystemError = super::ProcFileError;

/// The kernel's load averages: the mean number of runnable (and
/// uninterruptible) tasks over 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverage {
    /// Over the last minute.
    pub one: f64,
    /// Over the last 5 minutes.
    pub five: f64,
    /// Over the last 15 minutes.
    pub fifteen: f64,
    /// Tasks runnable right now.
    pub runnable: u32,
    /// Tasks (threads) that exist right now.
    pub tasks: u32,
}

/// Host memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `MemTotal`: usable RAM.
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping. Kernels older
    /// than 3.14 lack it; there it is estimated as `MemFree + Buffers +
    /// Cached`.
    pub available_bytes: u64,
}

/// Reads `<root>/proc/loadavg` (`0.52 0.58 0.59 2/467 12345`).
pub fn read_loadavg(root: &Path) -> Result<LoadAverage, SystemError> {
    let path = under(root, "proc/loadavg");
    let bytes = read_proc_file(&path)?;
    let load = procfs::LoadAverage::from_read(&bytes[..]).map_err(|e| SystemError::Parse {
        reason: proc_reason(
            "three load averages, runnable/total tasks and the last pid",
            &e,
        ),
        path,
    })?;
    Ok(LoadAverage {
        one: two_decimals(load.one),
        five: two_decimals(load.five),
        fifteen: two_decimals(load.fifteen),
        runnable: load.cur,
        tasks: load.max,
    })
}

/// procfs keeps load averages as `f32`; the kernel prints two decimals, so
/// rounding back to them gives the same `f64` as parsing the text would (an
/// `f32` is within 0.004 of the printed value below 65536).
fn two_decimals(average: f32) -> f64 {
    (f64::from(average) * 100.0).round() / 100.0
}

/// Reads `MemTotal` and `MemAvailable` from `<root>/proc/meminfo`.
pub fn read_meminfo(root: &Path) -> Result<Memory, SystemError> {
    let path = under(root, "proc/meminfo");
    let bytes = read_proc_file(&path)?;
    let info = procfs::Meminfo::from_read(&bytes[..]).map_err(|e| SystemError::Parse {
        reason: proc_reason(
            "MemTotal, MemFree and the other fields every kernel writes",
            &e,
        ),
        path,
    })?;
    // procfs gives bytes (`kB` lines times 1024).
    let available_bytes = info.mem_available.unwrap_or_else(|| {
        info.mem_free
            .saturating_add(info.buffers)
            .saturating_add(info.cached)
    });
    Ok(Memory {
        total_bytes: info.mem_total,
        available_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fixture;

    #[test]
    fn loadavg_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture::write(dir.path(), "proc/loadavg", "3.80 3.46 2.59 1/88 25249\n");
        let load = read_loadavg(dir.path()).expect("loadavg");
        assert_eq!(
            load,
            LoadAverage {
                one: 3.80,
                five: 3.46,
                fifteen: 2.59,
                runnable: 1,
                tasks: 88,
            }
        );
    }

    #[test]
    fn loadavg_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_loadavg(dir.path()).expect_err("missing");
        assert!(err.to_string().contains("loadavg"), "{err}");
        fixture::write(dir.path(), "proc/loadavg", "0.1 0.2\n");
        assert!(read_loadavg(dir.path()).is_err());
        fixture::write(dir.path(), "proc/loadavg", "0.1 0.2 x 1/2 3\n");
        assert!(read_loadavg(dir.path()).is_err());
        fixture::write(dir.path(), "proc/loadavg", "0.1 0.2 0.3 12 3\n");
        assert!(read_loadavg(dir.path()).is_err());
        fixture::write(dir.path(), "proc/loadavg", "0.1 0.2 0.3 1/2\n");
        assert!(read_loadavg(dir.path()).is_err());
    }

    #[test]
    fn meminfo_in_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture::write(
            dir.path(),
            "proc/meminfo",
            &format!(
                "MemTotal:       24730032 kB\nMemFree:        14862012 kB\n\
                 MemAvailable:   24240540 kB\nBuffers:           91132 kB\n\
                 Cached:          9324360 kB\nHugePages_Total:       0\n{}",
                fixture::MEMINFO_REST
            ),
        );
        let memory = read_meminfo(dir.path()).expect("meminfo");
        assert_eq!(memory.total_bytes, 24_730_032 * 1024);
        assert_eq!(memory.available_bytes, 24_240_540 * 1024);
    }

    #[test]
    fn meminfo_without_memavailable_estimates() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture::write(
            dir.path(),
            "proc/meminfo",
            &format!(
                "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n{}",
                fixture::MEMINFO_REST
            ),
        );
        let memory = read_meminfo(dir.path()).expect("meminfo");
        assert_eq!(memory.available_bytes, 420 * 1024);
        fixture::write(
            dir.path(),
            "proc/meminfo",
            &format!(
                "MemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n{}",
                fixture::MEMINFO_REST
            ),
        );
        let err = read_meminfo(dir.path()).expect_err("no total");
        assert!(err.to_string().contains("MemTotal"), "{err}");
    }

    #[test]
    fn real_host_files_parse() {
        let root = Path::new(crate::sources::HOST_ROOT);
        let load = read_loadavg(root).expect("loadavg");
        assert!(load.one >= 0.0 && load.tasks > 0);
        let memory = read_meminfo(root).expect("meminfo");
        assert!(memory.total_bytes > 0 && memory.available_bytes <= memory.total_bytes);
    }
}
