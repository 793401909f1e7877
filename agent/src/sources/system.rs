//! Load averages from `/proc/loadavg` and memory from `/proc/meminfo`.

use std::path::Path;

use super::under;

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
    let text = read(&path)?;
    parse_loadavg(&text).map_err(|reason| SystemError::Parse { path, reason })
}

/// Reads `MemTotal` and `MemAvailable` from `<root>/proc/meminfo`.
pub fn read_meminfo(root: &Path) -> Result<Memory, SystemError> {
    let path = under(root, "proc/meminfo");
    let text = read(&path)?;
    parse_meminfo(&text).map_err(|reason| SystemError::Parse { path, reason })
}

fn read(path: &Path) -> Result<String, SystemError> {
    std::fs::read_to_string(path).map_err(|source| SystemError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_loadavg(text: &str) -> Result<LoadAverage, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [one, five, fifteen, tasks, ..] = fields.as_slice() else {
        return Err(format!(
            "expected at least 4 fields, found {}",
            fields.len()
        ));
    };
    let average = |s: &str| {
        s.parse::<f64>()
            .map_err(|e| format!("load average {s:?}: {e}"))
    };
    let (runnable, total) = tasks
        .split_once('/')
        .ok_or_else(|| format!("task field {tasks:?} is not runnable/total"))?;
    let count = |s: &str| {
        s.parse::<u32>()
            .map_err(|e| format!("task count {s:?}: {e}"))
    };
    Ok(LoadAverage {
        one: average(one)?,
        five: average(five)?,
        fifteen: average(fifteen)?,
        runnable: count(runnable)?,
        tasks: count(total)?,
    })
}

fn parse_meminfo(text: &str) -> Result<Memory, String> {
    let field = |name: &str| -> Result<Option<u64>, String> {
        let Some(line) = text
            .lines()
            .find(|l| l.split_once(':').is_some_and(|(k, _)| k == name))
        else {
            return Ok(None);
        };
        let rest = line.split_once(':').map_or("", |(_, v)| v);
        let mut parts = rest.split_whitespace();
        let value = parts
            .next()
            .ok_or_else(|| format!("{name} has no value"))?
            .parse::<u64>()
            .map_err(|e| format!("{name}: {e}"))?;
        let scale = match parts.next() {
            Some("kB") => 1024,
            None => 1,
            Some(unit) => return Err(format!("{name} has unknown unit {unit:?}")),
        };
        Ok(Some(value.saturating_mul(scale)))
    };
    let total_bytes = field("MemTotal")?.ok_or_else(|| "no MemTotal line".to_owned())?;
    let available_bytes = match field("MemAvailable")? {
        Some(available) => available,
        None => {
            let free =
                field("MemFree")?.ok_or_else(|| "no MemAvailable or MemFree line".to_owned())?;
            free.saturating_add(field("Buffers")?.unwrap_or(0))
                .saturating_add(field("Cached")?.unwrap_or(0))
        }
    };
    Ok(Memory {
        total_bytes,
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
    }

    #[test]
    fn meminfo_in_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture::write(
            dir.path(),
            "proc/meminfo",
            "MemTotal:       24730032 kB\nMemFree:        14862012 kB\n\
             MemAvailable:   24240540 kB\nBuffers:           91132 kB\n\
             Cached:          9324360 kB\nHugePages_Total:       0\n",
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
            "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n",
        );
        let memory = read_meminfo(dir.path()).expect("meminfo");
        assert_eq!(memory.available_bytes, 420 * 1024);
        fixture::write(dir.path(), "proc/meminfo", "MemFree: 100 kB\n");
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
