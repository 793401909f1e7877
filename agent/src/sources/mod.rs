//! Measurement sources: what the agent reads about its host and how it turns
//! that into the one utilization figure the manager's policy acts on.
//!
//! Every source reads files under a filesystem root it is given (`/` on a real
//! host, a temporary fixture tree in tests), so each can be tested without the
//! real `/proc` or `/sys`. Sources that report rates keep the previous reading
//! and take the elapsed wall time as a parameter rather than reading a clock,
//! so tests do not sleep.
//!
//! | module | reads | gives |
//! | --- | --- | --- |
//! | [`cpu`] | `/proc/stat` | host CPU busy share between two samples |
//! | [`system`] | `/proc/loadavg`, `/proc/meminfo` | load averages, memory total/available |
//! | [`net_dev`] | `/proc/net/dev` | per-interface receive/transmit bytes per second |
//! | [`cgroup`] | cgroup v1 `cpuacct`/`cpu`, cgroup v2 `cpu.stat`/`cpu.max` | a cgroup's CPU use as a share of its quota |
//! | `cgroup_v1` | cgroup v1 `cpu` (and `cpuacct`) hierarchies | creates a cgroup with a CFS quota (lab hosts; feature `test-support` only) |
//! | [`connections`] | `/proc/net/tcp`, `/proc/net/tcp6` (or sock_diag netlink) | established connections per application port and on a VIP |
//! | [`command`] | an operator's command or file | a number the operator defines |
//! | [`utilization`] | the readings above | the policy's figure, with its definition |

use std::path::{Path, PathBuf};

pub mod cgroup;
#[cfg(feature = "test-support")]
pub mod cgroup_v1;
pub mod command;
pub mod connections;
pub mod cpu;
pub mod net_dev;
pub mod system;
pub mod utilization;

pub use cgroup::{CgroupCpu, CgroupCpuSample, CgroupError};
#[cfg(feature = "test-support")]
pub use cgroup_v1::{CgroupHandle, CgroupV1Error, create_v1_cgroup, create_v1_cgroup_in};
pub use command::{CommandError, CommandSource, DEFAULT_COMMAND_TIMEOUT};
pub use connections::{
    ConnectionCounts, ConnectionQuery, ConnectionsError, TcpSocket, TcpState, count_established,
    probe_sources,
};
pub use cpu::{CpuError, CpuSampler};
pub use net_dev::{NetDevError, NetDevSampler, NicRate};
pub use system::{LoadAverage, Memory, SystemError, read_loadavg, read_meminfo};
pub use utilization::{Readings, SourceKind, Utilization, UtilizationChoice, UtilizationError};

/// The root that real hosts use; sources built with `host()` read under it.
pub const HOST_ROOT: &str = "/";

/// `root` joined with an absolute-looking path such as `proc/stat`.
fn under(root: &Path, relative: &str) -> PathBuf {
    root.join(relative.trim_start_matches('/'))
}

/// Counts the `cpuN` lines of `<root>/proc/stat`: the CPUs the kernel has
/// online. `std::thread::available_parallelism` is not used because it
/// honours the calling process's affinity and cgroup quota, and here the
/// host's figure is wanted.
fn host_cpu_count(root: &Path) -> Result<usize, ProcFileError> {
    use procfs::FromReadSI as _;
    let path = under(root, "proc/stat");
    let bytes = read_proc_file(&path)?;
    let stats =
        procfs::KernelStats::from_read(&bytes[..], procfs::current_system_info()).map_err(|e| {
            ProcFileError::Parse {
                reason: proc_reason("the cpu, ctxt, btime and processes lines", &e),
                path,
            }
        })?;
    Ok(stats.cpu_time.len())
}

/// Reads a `/proc` file whole; procfs then parses the bytes, so the
/// sources keep reading under the root they were given.
fn read_proc_file(path: &Path) -> Result<Vec<u8>, ProcFileError> {
    std::fs::read(path).map_err(|source| ProcFileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What procfs could not parse: `wanted` says what the agent needs, since
/// procfs's own message for a missing line names no field.
fn proc_reason(wanted: &str, error: &procfs::ProcError) -> String {
    format!("{wanted} expected, as the kernel writes them ({error})")
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Builds fixture trees for the sources' tests.
    use std::path::Path;

    /// The `/proc/meminfo` fields other than `MemTotal`, `MemFree`,
    /// `MemAvailable`, `Buffers` and `Cached` that every kernel writes and
    /// procfs requires.
    pub const MEMINFO_REST: &str = "SwapCached: 0 kB\nActive: 0 kB\nInactive: 0 kB\n\
        SwapTotal: 0 kB\nSwapFree: 0 kB\nDirty: 0 kB\nWriteback: 0 kB\nMapped: 0 kB\n\
        Slab: 0 kB\nCommitted_AS: 0 kB\nVmallocTotal: 0 kB\nVmallocUsed: 0 kB\n\
        VmallocChunk: 0 kB\n";

    /// Writes `contents` at `root/relative`, creating directories.
    pub fn write(root: &Path, relative: &str, contents: &str) {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create fixture dir");
        }
        std::fs::write(&path, contents).expect("write fixture");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_numbered_cpu_lines_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture::write(
            dir.path(),
            "proc/stat",
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n\
             cpu12 1 1 1 1 1 1 1 1 0 0\nintr 1 2 3\nctxt 5\nbtime 1\nprocesses 9\n",
        );
        assert_eq!(host_cpu_count(dir.path()).expect("count"), 3);
    }
}

/// Why a `/proc` file could not be used: unreadable, or not in the format
/// the kernel writes.
#[derive(Debug, thiserror::Error)]
pub enum ProcFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}; is procfs mounted at <root>/proc?")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file did not have the expected format.
    #[error("unexpected format in {path}: {reason}")]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}
