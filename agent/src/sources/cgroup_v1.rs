//! Creating a cgroup v1 `cpu` cgroup with a CFS quota, for lab hosts.
//!
//! The lab gives each simulated host a cgroup of its own with a small CPU
//! quota (about 0.2 cores) so that a modest load saturates it. The cgroup is
//! made in the v1 `cpu` hierarchy (`/sys/fs/cgroup/cpu,cpuacct` or
//! `/sys/fs/cgroup/cpu`, whichever exists) and, when `cpuacct` is mounted
//! separately, in `/sys/fs/cgroup/cpuacct` as well so its usage can be
//! measured. Needs root.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{CgroupCpu, HOST_ROOT, under};

/// The CFS period written with the quota, in microseconds (the kernel's
/// default).
const PERIOD_US: u64 = 100_000;

/// The smallest CFS quota the kernel accepts, in microseconds.
const MIN_QUOTA_US: u64 = 1_000;

/// How long removal waits for exiting tasks to leave the cgroup.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

/// Why a cgroup could not be created, joined or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupV1Error {
    /// The name cannot be a single cgroup directory name.
    #[error("cgroup name {0:?} must be one non-empty path component without '/'")]
    BadName(String),
    /// The quota is not a positive number of cores the kernel accepts.
    #[error("CPU quota {0} cores is not usable: give at least 0.01 cores")]
    BadQuota(f64),
    /// No v1 hierarchy with the needed controller is mounted.
    #[error(
        "no cgroup v1 {controller} hierarchy under {cgroups}: looked for {tried}; \
         mount one (mount -t cgroup -o {controller} cgroup {cgroups}/{controller})"
    )]
    NoHierarchy {
        /// `cpu` or `cpuacct`.
        controller: &'static str,
        /// The cgroup mount directory looked in.
        cgroups: PathBuf,
        /// The hierarchy directories looked for.
        tried: String,
    },
    /// A cgroup directory or file operation failed.
    #[error("cannot {action} {path}: {source}; are you root and is the hierarchy writable?")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `cgroup.procs` held something that is not a pid.
    #[error("{path} lists {line:?}, not a process id")]
    BadProcs {
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The offending line.
        line: String,
    },
    /// The cgroup still had tasks after they were moved out.
    #[error("cgroup {path} is still busy after {patience:?}; tasks left: {pids:?}")]
    StillBusy {
        /// The cgroup directory.
        path: PathBuf,
        /// How long removal waited.
        patience: Duration,
        /// The tasks still in it.
        pids: Vec<u32>,
    },
}

/// A cgroup made by [`create_v1_cgroup`]. Dropping it moves any tasks left
/// in it to the parent cgroup and removes it; [`remove`](Self::remove) does
/// the same and reports failures.
#[derive(Debug)]
pub struct CgroupHandle {
    root: PathBuf,
    cpu_dir: PathBuf,
    /// Set when `cpuacct` is a hierarchy of its own.
    separate_cpuacct_dir: Option<PathBuf>,
    removed: bool,
}

/// Creates (or takes over, if left from an earlier run) the cgroup `name` at
/// the top of the real v1 `cpu` hierarchy with a CFS quota of `quota_cores`
/// cores; see [`create_v1_cgroup_in`].
pub fn create_v1_cgroup(name: &str, quota_cores: f64) -> Result<CgroupHandle, CgroupV1Error> {
    create_v1_cgroup_in(HOST_ROOT, name, quota_cores)
}

/// Creates the cgroup `name` under `<root>/sys/fs/cgroup` with a CFS quota of
/// `quota_cores` cores (period 100 ms).
///
/// Fails if `name` is not a plain directory name, the quota is below 0.01
/// cores or not finite, no v1 `cpu` or `cpuacct` hierarchy is mounted, or the
/// kernel refuses the directory or the quota (not root, or the parent's
/// limits forbid it).
pub fn create_v1_cgroup_in(
    root: impl AsRef<Path>,
    name: &str,
    quota_cores: f64,
) -> Result<CgroupHandle, CgroupV1Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(CgroupV1Error::BadName(name.to_owned()));
    }
    let quota_us = quota_cores * PERIOD_US as f64;
    if !quota_us.is_finite() || quota_us < MIN_QUOTA_US as f64 {
        return Err(CgroupV1Error::BadQuota(quota_cores));
    }
    let root = root.as_ref();
    let cgroups = under(root, "sys/fs/cgroup");
    let cpu_hierarchy = find_hierarchy(
        &cgroups,
        "cpu",
        &["cpu,cpuacct", "cpuacct,cpu", "cpu"],
        "cpu.cfs_quota_us",
    )?;
    let cpuacct_hierarchy = if cpu_hierarchy.join("cpuacct.usage").is_file() {
        None
    } else {
        Some(find_hierarchy(
            &cgroups,
            "cpuacct",
            &["cpuacct"],
            "cpuacct.usage",
        )?)
    };

    let handle = CgroupHandle {
        root: root.to_owned(),
        cpu_dir: cpu_hierarchy.join(name),
        separate_cpuacct_dir: cpuacct_hierarchy.map(|h| h.join(name)),
        removed: false,
    };
    for dir in handle.dirs() {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::debug!(cgroup = %dir.display(), "taking over existing cgroup");
            }
            result => result.map_err(|source| CgroupV1Error::Io {
                action: "create cgroup",
                path: dir.clone(),
                source,
            })?,
        }
    }
    // Unlimited first, so a period change is never refused against an old
    // quota of a taken-over cgroup.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked finite and at least MIN_QUOTA_US above; `as` saturates"
    )]
    let quota_us = quota_us.round() as u64;
    let result = write(&handle.cpu_dir.join("cpu.cfs_quota_us"), "-1")
        .and_then(|()| {
            write(
                &handle.cpu_dir.join("cpu.cfs_period_us"),
                &PERIOD_US.to_string(),
            )
        })
        .and_then(|()| {
            write(
                &handle.cpu_dir.join("cpu.cfs_quota_us"),
                &quota_us.to_string(),
            )
        });
    // On failure, dropping the handle removes the directories again.
    result?;
    tracing::info!(cgroup = %handle.cpu_dir.display(), quota_cores, "cgroup created");
    Ok(handle)
}

/// The first of `candidates` under `cgroups` that holds `marker`.
fn find_hierarchy(
    cgroups: &Path,
    controller: &'static str,
    candidates: &[&str],
    marker: &str,
) -> Result<PathBuf, CgroupV1Error> {
    candidates
        .iter()
        .map(|c| cgroups.join(c))
        .find(|dir| dir.join(marker).is_file())
        .ok_or_else(|| CgroupV1Error::NoHierarchy {
            controller,
            cgroups: cgroups.to_owned(),
            tried: candidates.join(", "),
        })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupV1Error> {
    std::fs::write(path, value).map_err(|source| CgroupV1Error::Io {
        action: "write",
        path: path.to_owned(),
        source,
    })
}

impl CgroupHandle {
    /// The cgroup's directory in the `cpu` hierarchy.
    #[must_use]
    pub fn cpu_dir(&self) -> &Path {
        &self.cpu_dir
    }

    /// The cgroup's directory in the hierarchy holding `cpuacct.usage`.
    #[must_use]
    pub fn cpuacct_dir(&self) -> &Path {
        self.separate_cpuacct_dir
            .as_deref()
            .unwrap_or(&self.cpu_dir)
    }

    /// A sampler of this cgroup's CPU use against its quota.
    #[must_use]
    pub fn cpu(&self) -> CgroupCpu {
        CgroupCpu::v1(&self.cpu_dir, self.cpuacct_dir()).with_root(&self.root)
    }

    /// Moves process `pid` (all its threads) into the cgroup, in every
    /// hierarchy the cgroup was made in. Fails if the process does not exist
    /// or the kernel refuses the move.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupV1Error> {
        for dir in self.dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the cgroup (as listed in the `cpu` hierarchy).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupV1Error> {
        read_procs(&self.cpu_dir)
    }

    /// Moves every task left in the cgroup to the parent cgroup and removes
    /// the cgroup's directories. Fails if tasks remain after a short wait or
    /// the kernel refuses.
    pub fn remove(mut self) -> Result<(), CgroupV1Error> {
        self.remove_dirs()
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.cpu_dir).chain(self.separate_cpuacct_dir.as_ref())
    }

    fn remove_dirs(&mut self) -> Result<(), CgroupV1Error> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let dirs: Vec<PathBuf> = self.dirs().cloned().collect();
        let mut first_error = None;
        for dir in dirs {
            if let Err(e) = remove_cgroup_dir(&dir) {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => {
                tracing::info!(cgroup = %self.cpu_dir.display(), "cgroup removed");
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}

impl Drop for CgroupHandle {
    fn drop(&mut self) {
        if let Err(error) = self.remove_dirs() {
            tracing::warn!(%error, "cgroup left behind");
        }
    }
}

fn read_procs(dir: &Path) -> Result<Vec<u32>, CgroupV1Error> {
    let path = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupV1Error::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse::<u32>()
                .map_err(|_| CgroupV1Error::BadProcs {
                    path: path.clone(),
                    line: l.to_owned(),
                })
        })
        .collect()
}

/// Moves tasks to the parent and removes `dir`, retrying while exiting tasks
/// still hold it (`EBUSY`). A directory already gone is success.
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupV1Error> {
    if !dir.exists() {
        return Ok(());
    }
    let parent_procs = dir
        .parent()
        .map(|p| p.join("cgroup.procs"))
        .ok_or_else(|| CgroupV1Error::BadName(dir.display().to_string()))?;
    let deadline = Instant::now() + REMOVE_PATIENCE;
    loop {
        for pid in read_procs(dir)? {
            // A task that exited meanwhile (ESRCH) has left by itself.
            if let Err(error) = std::fs::write(&parent_procs, pid.to_string()) {
                tracing::debug!(pid, %error, "moving task out of cgroup");
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(CgroupV1Error::StillBusy {
                    path: dir.to_owned(),
                    patience: REMOVE_PATIENCE,
                    pids: read_procs(dir).unwrap_or_default(),
                });
            }
            Err(source) => {
                return Err(CgroupV1Error::Io {
                    action: "remove cgroup",
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
