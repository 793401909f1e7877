//! A cgroup's CPU use as a share of its CPU capacity.
//!
//! Usage is a cumulative counter: cgroup v1 `cpuacct.usage` (nanoseconds) or
//! cgroup v2 `cpu.stat`'s `usage_usec` (microseconds). Its growth over the
//! elapsed wall time is the number of cores the cgroup kept busy.
//!
//! Capacity is what the cgroup may use, in cores: v1 `cpu.cfs_quota_us /
//! cpu.cfs_period_us` (quota `-1` is unlimited), v2 `cpu.max` `"QUOTA
//! PERIOD"` (`"max PERIOD"` is unlimited; a cgroup without `cpu.max` — the
//! root, or one whose parent has not enabled the `cpu` controller — is
//! unlimited too). Unlimited means every online host CPU, and a quota larger
//! than the host is capped at the host's CPUs. Quotas of ancestors and cpuset
//! restrictions are not taken into account.
//!
//! Hosts may mix the versions ("hybrid"): the `cpu` controller (CFS quota) on
//! a v1 hierarchy at `/sys/fs/cgroup/cpu,cpuacct` or `/sys/fs/cgroup/cpu`, and
//! cgroup2 at `/sys/fs/cgroup/unified`. [`CgroupCpu::discover`] looks in each.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{HOST_ROOT, host_cpu_count, under};

/// Why a cgroup's CPU figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be read.
    #[error("cannot read {path}: {source}; does the cgroup exist and is its controller mounted?")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file did not have the expected format.
    #[error("unexpected format in {path}: {reason}")]
    Parse {
        /// The file that was read.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// No hierarchy holds a usage counter for the cgroup.
    #[error(
        "no CPU usage counter for cgroup {cgroup:?}: looked for {tried}; \
         check the cgroup path and that cpuacct (v1) or cgroup2 is mounted"
    )]
    NotFound {
        /// The path inside the hierarchy that was looked for.
        cgroup: String,
        /// The files that were looked for.
        tried: String,
    },
    /// The host's CPU count, needed for an unlimited quota, is unknown.
    #[error("cannot count host CPUs from {path}: {reason}")]
    HostCpus {
        /// The file that was read.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// One cgroup CPU measurement over an interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgroupCpuSample {
    /// CPU time used over the interval divided by the interval and by
    /// `capacity_cores`: 1.0 means the cgroup used all it may. It can exceed
    /// 1 slightly (the quota is enforced per period) or a lot when capacity
    /// was lowered during the interval.
    pub usage_share_of_capacity: f64,
    /// Cores the cgroup may use (quota / period, or host CPUs if unlimited).
    pub capacity_cores: f64,
}

/// Where the cumulative usage counter is.
#[derive(Debug, Clone)]
enum Usage {
    /// v1 `cpuacct.usage`, nanoseconds.
    V1Cpuacct(PathBuf),
    /// v2 `cpu.stat`, `usage_usec` line.
    V2CpuStat(PathBuf),
}

/// Where the CPU limit is.
#[derive(Debug, Clone)]
enum Quota {
    /// v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
    V1 { quota: PathBuf, period: PathBuf },
    /// v2 `cpu.max`; a missing file means unlimited.
    V2 { max: PathBuf },
    /// No controller limits the cgroup.
    Unlimited,
}

/// Samples one cgroup's CPU usage as a share of its capacity.
#[derive(Debug)]
pub struct CgroupCpu {
    usage: Usage,
    quota: Quota,
    root: PathBuf,
    previous_ns: Option<u64>,
}

impl CgroupCpu {
    /// A cgroup v1 cgroup: the quota in `cpu_dir` (`cpu.cfs_quota_us`,
    /// `cpu.cfs_period_us`), usage in `cpuacct_dir` (`cpuacct.usage`). The
    /// two are the same directory when the controllers share a hierarchy.
    pub fn v1(cpu_dir: impl AsRef<Path>, cpuacct_dir: impl AsRef<Path>) -> Self {
        let cpu_dir = cpu_dir.as_ref();
        Self::new(
            Usage::V1Cpuacct(cpuacct_dir.as_ref().join("cpuacct.usage")),
            Quota::V1 {
                quota: cpu_dir.join("cpu.cfs_quota_us"),
                period: cpu_dir.join("cpu.cfs_period_us"),
            },
        )
    }

    /// A cgroup v2 cgroup directory: usage in `cpu.stat`, quota in `cpu.max`.
    pub fn v2(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self::new(
            Usage::V2CpuStat(dir.join("cpu.stat")),
            Quota::V2 {
                max: dir.join("cpu.max"),
            },
        )
    }

    fn new(usage: Usage, quota: Quota) -> Self {
        Self {
            usage,
            quota,
            root: PathBuf::from(HOST_ROOT),
            previous_ns: None,
        }
    }

    /// Reads the host CPU count (for unlimited quotas) from
    /// `<root>/proc/stat` instead of `/proc/stat`.
    #[must_use]
    pub fn with_root(mut self, root: impl AsRef<Path>) -> Self {
        root.as_ref().clone_into(&mut self.root);
        self
    }

    /// Finds the cgroup at `path_in_hierarchy` (such as `/` or `/lab/h1`)
    /// under the real `/sys/fs/cgroup`; see [`discover_under`](Self::discover_under).
    pub fn discover(path_in_hierarchy: &str) -> Result<Self, CgroupError> {
        Self::discover_under(HOST_ROOT, path_in_hierarchy)
    }

    /// Finds the cgroup at `path_in_hierarchy` under `<root>/sys/fs/cgroup`.
    ///
    /// The quota comes from the first v1 `cpu` hierarchy holding the cgroup
    /// (`cpu,cpuacct`, `cpuacct,cpu`, then `cpu`), else from cgroup2
    /// (`unified` on hybrid hosts, the top directory on pure v2 hosts), else
    /// there is none. Usage comes from the first v1 hierarchy with
    /// `cpuacct.usage` for the cgroup, else from cgroup2's `cpu.stat`. Fails
    /// when no usage counter is found.
    pub fn discover_under(
        root: impl AsRef<Path>,
        path_in_hierarchy: &str,
    ) -> Result<Self, CgroupError> {
        let root = root.as_ref();
        let cgroups = under(root, "sys/fs/cgroup");
        let relative = path_in_hierarchy.trim_start_matches('/');
        let in_hierarchy = |hierarchy: &str| cgroups.join(hierarchy).join(relative);

        let v1_cpu = ["cpu,cpuacct", "cpuacct,cpu", "cpu"]
            .iter()
            .map(|h| in_hierarchy(h))
            .find(|dir| dir.join("cpu.cfs_quota_us").is_file());
        let v1_cpuacct_usage: Vec<PathBuf> = ["cpu,cpuacct", "cpuacct,cpu", "cpuacct", "cpu"]
            .iter()
            .map(|h| in_hierarchy(h).join("cpuacct.usage"))
            .collect();
        let v1_cpuacct = v1_cpuacct_usage
            .iter()
            .find(|file| file.is_file())
            .and_then(|file| file.parent())
            .map(Path::to_owned);
        // cgroup2 is recognised by its `cgroup.controllers` file at the top.
        let v2_mount = ["unified", ""]
            .iter()
            .find(|h| cgroups.join(h).join("cgroup.controllers").is_file());
        let v2 = v2_mount
            .map(|h| in_hierarchy(h))
            .filter(|dir| dir.join("cpu.stat").is_file());

        let usage = match (&v1_cpuacct, &v2) {
            (Some(dir), _) => Usage::V1Cpuacct(dir.join("cpuacct.usage")),
            (None, Some(dir)) => Usage::V2CpuStat(dir.join("cpu.stat")),
            (None, None) => {
                let mut tried: Vec<String> = v1_cpuacct_usage
                    .iter()
                    .map(|file| file.display().to_string())
                    .collect();
                tried.push(match v2_mount {
                    Some(h) => in_hierarchy(h).join("cpu.stat").display().to_string(),
                    None => format!(
                        "no cgroup2 mount (no cgroup.controllers in {c}/unified or {c})",
                        c = cgroups.display()
                    ),
                });
                return Err(CgroupError::NotFound {
                    cgroup: path_in_hierarchy.to_owned(),
                    tried: tried.join(", "),
                });
            }
        };
        let quota = match (v1_cpu, v2) {
            (Some(dir), _) => Quota::V1 {
                quota: dir.join("cpu.cfs_quota_us"),
                period: dir.join("cpu.cfs_period_us"),
            },
            (None, Some(dir)) => Quota::V2 {
                max: dir.join("cpu.max"),
            },
            (None, None) => Quota::Unlimited,
        };
        tracing::debug!(
            ?usage,
            ?quota,
            cgroup = path_in_hierarchy,
            "cgroup cpu discovered"
        );
        Ok(Self::new(usage, quota).with_root(root))
    }

    /// The cores this cgroup may use now: its quota, or every host CPU when it
    /// has none; never more than the host has.
    pub fn capacity_cores(&self) -> Result<f64, CgroupError> {
        let host = self.host_cpus()?;
        let quota = match &self.quota {
            Quota::V1 { quota, period } => {
                let quota_us = read_number::<i64>(quota)?;
                let period_us = read_number::<u64>(period)?;
                if quota_us < 0 {
                    None
                } else {
                    Some(cores(quota_us.unsigned_abs(), period_us, period)?)
                }
            }
            Quota::V2 { max } => match std::fs::read_to_string(max) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: max.clone(),
                        source,
                    });
                }
                Ok(text) => parse_cpu_max(&text)
                    .map_err(|e| CgroupError::Parse {
                        path: max.clone(),
                        reason: e.to_string(),
                    })?
                    .map(|(quota_us, period_us)| cores(quota_us, period_us, max))
                    .transpose()?,
            },
            Quota::Unlimited => None,
        };
        Ok(quota.map_or(host, |q| q.min(host)))
    }

    /// Reads usage and capacity and returns the usage over `elapsed` (the wall
    /// time since the previous call, measured by the caller) as a share of
    /// capacity.
    ///
    /// Returns `Ok(None)` on the first call, which only primes the sampler,
    /// after the usage counter went backwards (the cgroup was re-created; the
    /// sampler re-primes), and when `elapsed` is zero.
    pub fn sample(&mut self, elapsed: Duration) -> Result<Option<CgroupCpuSample>, CgroupError> {
        let now_ns = self.usage_ns()?;
        let capacity_cores = self.capacity_cores()?;
        let Some(previous_ns) = self.previous_ns.replace(now_ns) else {
            return Ok(None);
        };
        let Some(used_ns) = now_ns.checked_sub(previous_ns) else {
            tracing::debug!(usage = ?self.usage, "cgroup usage went backwards; re-priming");
            return Ok(None);
        };
        if elapsed.is_zero() {
            return Ok(None);
        }
        let busy_cores = used_ns as f64 / elapsed.as_nanos() as f64;
        Ok(Some(CgroupCpuSample {
            usage_share_of_capacity: busy_cores / capacity_cores,
            capacity_cores,
        }))
    }

    /// The cumulative usage counter in nanoseconds.
    fn usage_ns(&self) -> Result<u64, CgroupError> {
        match &self.usage {
            Usage::V1Cpuacct(path) => read_number::<u64>(path),
            Usage::V2CpuStat(path) => {
                let text = read(path)?;
                let usec = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .ok_or_else(|| CgroupError::Parse {
                        path: path.clone(),
                        reason: "no usage_usec line".to_owned(),
                    })?
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| CgroupError::Parse {
                        path: path.clone(),
                        reason: format!("usage_usec: {e}"),
                    })?;
                Ok(usec.saturating_mul(1000))
            }
        }
    }

    fn host_cpus(&self) -> Result<f64, CgroupError> {
        let path = under(&self.root, "proc/stat");
        match host_cpu_count(&self.root) {
            Ok(0) => Err(CgroupError::HostCpus {
                path,
                reason: "no cpuN lines".to_owned(),
            }),
            Ok(n) => Ok(n as f64),
            Err(e) => Err(CgroupError::HostCpus {
                path,
                reason: e.to_string(),
            }),
        }
    }
}

/// Quota over period in cores; a zero period is a malformed file.
fn cores(quota_us: u64, period_us: u64, path: &Path) -> Result<f64, CgroupError> {
    if period_us == 0 {
        return Err(CgroupError::Parse {
            path: path.to_owned(),
            reason: "CFS period is 0".to_owned(),
        });
    }
    Ok(quota_us as f64 / period_us as f64)
}

/// `cpu.max`: `"max 100000"` is unlimited (`None`), `"20000 100000"` is
/// quota and period in microseconds. The period may be left out (default
/// 100000).
fn parse_cpu_max(text: &str) -> Result<Option<(u64, u64)>, CpuMaxError> {
    let mut fields = text.split_whitespace();
    let quota = fields.next().ok_or(CpuMaxError::Empty)?;
    let period = match fields.next() {
        Some(p) => p.parse::<u64>().map_err(|source| CpuMaxError::Number {
            field: "period",
            text: p.to_owned(),
            source,
        })?,
        None => 100_000,
    };
    if quota == "max" {
        return Ok(None);
    }
    let quota = quota.parse::<u64>().map_err(|source| CpuMaxError::Number {
        field: "quota",
        text: quota.to_owned(),
        source,
    })?;
    Ok(Some((quota, period)))
}

/// What is wrong in a `cpu.max` file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum CpuMaxError {
    /// The file is empty.
    #[error("empty cpu.max")]
    Empty,
    /// The quota or the period is not a number.
    #[error("{field} {text:?}: {source}")]
    Number {
        field: &'static str,
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_number<T>(path: &Path) -> Result<T, CgroupError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = read(path)?;
    text.trim().parse::<T>().map_err(|e| CgroupError::Parse {
        path: path.to_owned(),
        reason: format!("{:?} is not a number: {e}", text.trim()),
    })
}

#[cfg(test)]
mod tests;
