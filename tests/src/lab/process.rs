//! Child processes of the lab: one-shot commands with a timeout and
//! long-lived processes killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Runs `cmd` to completion, killing it after `timeout`. Fails with its
/// stderr when it exits non-zero.
pub(crate) fn run_with_timeout(mut cmd: Command, desc: &str, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {desc}"))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {desc}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            // Ignore errors: the child may have exited just now.
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} timed out after {timeout:?}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{desc} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

static DIE_WITH_PARENT: AtomicBool = AtomicBool::new(false);

/// From now on, every [`LabProcess`] is killed by the kernel when the
/// thread that started it ends (`PR_SET_PDEATHSIG`): a program that
/// starts them all from its main thread (the demo) leaves none running
/// even when it is killed itself. Off by default: a test's processes may
/// be started from threads that end before them.
pub fn die_with_parent() {
    DIE_WITH_PARENT.store(true, Ordering::Relaxed);
}

/// A long-lived process started inside a lab namespace
/// ([`super::Netns::spawn`]). On drop it is sent SIGKILL (by its own pid,
/// nothing else) and reaped.
///
/// Its stdout is read line by line on a background thread
/// ([`LabProcess::read_line`]); its stderr is kept
/// ([`LabProcess::stderr_output`]) and echoed, prefixed by the label, to the
/// test's (captured) stderr, or written to a log file
/// ([`LabProcess::spawn_logged`]).
#[derive(Debug)]
pub struct LabProcess {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The file stderr goes to instead of the pipe.
    log: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl LabProcess {
    /// Spawns `cmd` with all three standard streams piped.
    pub fn spawn(cmd: Command, label: String) -> Result<LabProcess> {
        Self::spawn_with(cmd, label, None)
    }

    /// [`LabProcess::spawn`] with stderr appended to the file `log`
    /// (created if missing) instead of echoed: a daemon's own log, kept.
    pub fn spawn_logged(cmd: Command, label: String, log: &Path) -> Result<LabProcess> {
        Self::spawn_with(cmd, label, Some(log))
    }

    fn spawn_with(mut cmd: Command, label: String, log: Option<&Path>) -> Result<LabProcess> {
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("log file {}", path.display()))?,
            ),
            None => Stdio::piped(),
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if DIE_WITH_PARENT.load(Ordering::Relaxed) {
            use std::os::unix::process::CommandExt as _;
            let parent = std::process::id();
            // SAFETY: prctl and getppid are async-signal-safe and touch no
            // memory.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent died before the signal was armed.
                    if u32::try_from(libc::getppid()).ok() != Some(parent) {
                        return Err(std::io::Error::other("the parent is gone"));
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {label}: {cmd:?}"))?;
        let stdin = child.stdin.take();
        let (tx, lines) = channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let buf = Arc::clone(&stderr);
            let label = label.clone();
            thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[{label}] {line}");
                    if let Ok(mut b) = buf.lock() {
                        b.push_str(&line);
                        b.push('\n');
                    }
                }
            });
        }
        Ok(LabProcess {
            label,
            child,
            stdin,
            lines,
            stderr,
            log: log.map(Path::to_path_buf),
            status: None,
        })
    }

    /// The process id (the command itself: `nsenter` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `program@netns`, used in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The next line of stdout (without the newline). Fails on timeout or
    /// when stdout is closed (the error then carries the stderr so far).
    pub fn read_line(&mut self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(anyhow!(
                "{}: no output line within {timeout:?}; stderr: {}",
                self.label,
                self.stderr_output().trim()
            )),
            Err(RecvTimeoutError::Disconnected) => {
                // Give the stderr thread a moment to collect the last words.
                thread::sleep(Duration::from_millis(50));
                let status = self
                    .try_wait()
                    .ok()
                    .flatten()
                    .map_or("still running".to_owned(), |s| s.to_string());
                Err(anyhow!(
                    "{}: stdout closed ({status}); stderr: {}",
                    self.label,
                    self.stderr_output().trim()
                ))
            }
        }
    }

    /// Reads stdout lines until one contains `needle` and returns it; the
    /// lines before it are discarded. `timeout` bounds the whole wait.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .read_line(left)
                .with_context(|| format!("waiting for {needle:?}"))?;
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }

    /// Writes `line` and a newline to stdin, flushed.
    pub fn write_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .with_context(|| format!("{}: stdin already closed", self.label))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: writing to stdin", self.label))
    }

    /// Closes stdin (the process sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Everything the process wrote to stderr so far (its log file's
    /// text, when it has one).
    pub fn stderr_output(&self) -> String {
        match &self.log {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => self.stderr.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().context("try_wait")?;
        }
        Ok(self.status)
    }

    /// Waits for the process to exit by itself, at most `timeout` (it is
    /// not killed when that runs out: that is left to drop or `kill`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} still running after {timeout:?}", self.label);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGKILL to this process (only) and reaps it. Idempotent.
    pub fn kill(&mut self) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        // Fails only if it already exited; `wait` tells either way.
        let _ = self.child.kill();
        self.status = Some(self.child.wait().context("waiting after kill")?);
        Ok(())
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.stdin = None;
        if let Err(e) = self.kill() {
            eprintln!("lab: killing {}: {e:#}", self.label);
        }
    }
}
