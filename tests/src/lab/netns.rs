//! Named network namespaces (`ip netns add`) and running things inside them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::process::{LabProcess, run_with_timeout};

/// Directory where `ip netns add` puts its bind mounts.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Every namespace this harness creates is named `lbt-<prefix>-<pid>-<n>`.
pub const NAME_MARKER: &str = "lbt-";
/// Timeout of [`Netns::exec`].
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A process-wide counter, used for namespace names and lab subnets.
pub(crate) fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A named network namespace, deleted (`ip netns delete`) on drop, also while
/// unwinding from a panic. Deleting it removes every interface inside it
/// (and the peers of its veths). Kill the processes running inside first:
/// a namespace lives on, unnamed, while a process is still in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `lbt-<prefix>-<pid>-<n>` and sets its `lo` up.
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = format!("{NAME_MARKER}{prefix}-{}-{}", std::process::id(), next_id());
        host_cmd(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as listed by `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `nsenter --net=/var/run/netns/<name> -- cmd...`, not yet run. Unlike
    /// `ip netns exec` this keeps the caller's mount namespace (bpffs,
    /// cgroupfs stay visible).
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(cmd);
        c
    }

    /// Runs `cmd` inside the namespace and waits (at most
    /// [`DEFAULT_EXEC_TIMEOUT`]). Fails, with its stderr, on a non-zero exit.
    pub fn exec(&self, cmd: &[&str]) -> Result<Output> {
        self.exec_timeout(cmd, DEFAULT_EXEC_TIMEOUT)
    }

    /// [`Netns::exec`] with an explicit timeout; the command is killed when
    /// it runs out.
    pub fn exec_timeout(&self, cmd: &[&str], timeout: Duration) -> Result<Output> {
        let desc = format!("`{}` in netns {}", cmd.join(" "), self.name);
        run_with_timeout(self.command(cmd), &desc, timeout)
    }

    /// [`Netns::exec`], returning stdout as a string.
    pub fn exec_stdout(&self, cmd: &[&str]) -> Result<String> {
        let out = self.exec(cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-lived `cmd` inside the namespace (stdin, stdout and
    /// stderr piped). The returned process is SIGKILLed and reaped on drop.
    pub fn spawn(&self, cmd: &[&str]) -> Result<LabProcess> {
        LabProcess::spawn(self.command(cmd), self.label(cmd))
    }

    /// [`Netns::spawn`] with stderr appended to the file `log`.
    pub fn spawn_logged(&self, cmd: &[&str], log: &std::path::Path) -> Result<LabProcess> {
        LabProcess::spawn_logged(self.command(cmd), self.label(cmd), log)
    }

    /// `program@netns`, for messages.
    fn label(&self, cmd: &[&str]) -> String {
        format!(
            "{}@{}",
            cmd.first()
                .copied()
                .unwrap_or("?")
                .rsplit('/')
                .next()
                .unwrap_or("?"),
            self.name
        )
    }

    /// Runs `f` on a fresh thread that has joined this namespace (`setns`),
    /// so sockets, ioctls and `/proc/sys/net` inside `f` act on it. The
    /// calling thread is not affected.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let file =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                // SAFETY: setns on a valid namespace fd; it only changes the
                // network namespace of this (short-lived) thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns {}", path.display()));
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| bail!("thread in netns panicked"))
        })
    }

    /// Writes a sysctl inside the namespace, e.g.
    /// `sysctl("net.ipv4.conf.all.arp_ignore", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        let value = value.to_owned();
        self.run(move || {
            std::fs::write(&path, value.as_bytes())
                .with_context(|| format!("writing {value:?} to {}", path.display()))
        })
        .with_context(|| format!("sysctl {key} in netns {}", self.name))
    }

    /// Reads a sysctl inside the namespace (trimmed).
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        self.run(move || {
            let v = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(v.trim().to_owned())
        })
    }

    /// Whether a namespace with this name currently exists.
    pub fn exists(name: &str) -> bool {
        PathBuf::from(NETNS_DIR).join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = host_cmd(&["ip", "netns", "delete", &self.name]) {
            eprintln!("lab: deleting netns {}: {e:#}", self.name);
        }
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Runs a command in the caller's namespace (60 s timeout), failing with its
/// stderr on a non-zero exit.
pub fn host_cmd(cmd: &[&str]) -> Result<Output> {
    let (prog, args) = cmd.split_first().context("empty command")?;
    let mut c = Command::new(prog);
    c.args(args);
    run_with_timeout(c, &format!("`{}`", cmd.join(" ")), DEFAULT_EXEC_TIMEOUT)
}

/// Deletes namespaces left behind by harness processes that died without
/// cleaning up (killed test runs): every `lbt-*-<pid>-<n>` whose pid is not
/// alive any more. Returns the names deleted.
pub fn cleanup_stale_namespaces() -> Vec<String> {
    let mut deleted = Vec::new();
    for name in stale_names(std::path::Path::new(NETNS_DIR), NAME_MARKER, '-') {
        if host_cmd(&["ip", "netns", "delete", &name]).is_ok() {
            deleted.push(name);
        }
    }
    // What else a killed run leaves: its balancers' pins
    // (`/sys/fs/bpf/lbt<pid>-…`) and its servers' cgroups
    // (`/sys/fs/cgroup/<hierarchy>/lbt-<pid>-…`, empty once its processes
    // are gone).
    let bpffs = std::path::Path::new("/sys/fs/bpf");
    for name in stale_names(bpffs, "lbt", '-') {
        if std::fs::remove_dir_all(bpffs.join(&name)).is_ok() {
            deleted.push(name);
        }
    }
    let cgroups = std::path::Path::new("/sys/fs/cgroup");
    for hierarchy in std::fs::read_dir(cgroups).into_iter().flatten().flatten() {
        let dir = hierarchy.path();
        for name in stale_names(&dir, NAME_MARKER, '-') {
            if std::fs::remove_dir(dir.join(&name)).is_ok() {
                deleted.push(name);
            }
        }
    }
    deleted
}

/// The entries of `dir` named `<prefix><pid><sep>…` (or
/// `<prefix><role>-<pid>-<n>` for namespaces) whose pid is no live
/// process.
fn stale_names(dir: &std::path::Path, prefix: &str, sep: char) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        // The pid is the first all-digit part.
        let Some(pid) = rest
            .split(sep)
            .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        stale.push(name);
    }
    stale
}
