//! An operator-defined figure: a command's output or a file's contents.
//!
//! Some applications know their load better than the host does (a queue
//! length, a worker pool's occupancy). The operator then points the agent at
//! a command that prints it or a file the application keeps up to date, and
//! the first number found there is the figure.

use std::{
    fs::File,
    io::Read,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

/// How long a command may run when no timeout is given.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How much of a command's output is kept; the rest is read and dropped so
/// the command never blocks on a full pipe.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// How much output an error message quotes.
const QUOTE_LIMIT: usize = 200;

/// Why the operator's figure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command has no program.
    #[error("the command is empty: give the program and its arguments")]
    EmptyCommand,
    /// The program could not be started.
    #[error("cannot run {program:?}: {source}; check that it exists and is executable")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("waiting for command {argv:?} failed: {source}")]
    Wait {
        /// The command.
        argv: Vec<String>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The command ran past its timeout and was killed.
    #[error(
        "command {argv:?} did not finish within {timeout:?} and was killed; \
         make it faster or give it a longer timeout"
    )]
    Timeout {
        /// The command.
        argv: Vec<String>,
        /// The timeout it had.
        timeout: Duration,
    },
    /// The command exited unsuccessfully.
    #[error("command {argv:?} failed ({status}); it printed {stderr:?} on stderr")]
    Failed {
        /// The command.
        argv: Vec<String>,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The start of what it printed on stderr.
        stderr: String,
    },
    /// The command succeeded but printed no number.
    #[error("command printed no number: {argv:?} printed {output:?}; it must print e.g. 0.42")]
    NoNumber {
        /// The command.
        argv: Vec<String>,
        /// The start of what it printed on stdout.
        output: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}; check the path the operator configured")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no number.
    #[error("file {path} holds no number: {contents:?}; it must hold e.g. 0.42")]
    FileNoNumber {
        /// The file.
        path: PathBuf,
        /// The start of its contents.
        contents: String,
    },
}

/// Where the operator's figure comes from. In configuration:
/// `{ command = ["/usr/local/bin/load", "--now"] }` or
/// `{ file = "/run/app/load" }`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandSource {
    /// Run this program with these arguments (no shell; use
    /// `["sh", "-c", "..."]` for one) and take the first number it prints on
    /// stdout. It must exit with status 0.
    Command(Vec<String>),
    /// Read the first number in this file.
    File(PathBuf),
}

impl CommandSource {
    /// Reads the figure, giving a command [`DEFAULT_COMMAND_TIMEOUT`].
    pub fn read(&self) -> Result<f64, CommandError> {
        self.read_with_timeout(DEFAULT_COMMAND_TIMEOUT)
    }

    /// Reads the figure, killing a command (and every process it started in
    /// its process group) that runs longer than `timeout`.
    ///
    /// Blocks for up to `timeout`; async callers should run it on a blocking
    /// thread. Fails when the command cannot start, times out, exits
    /// unsuccessfully or prints no number, or when the file cannot be read or
    /// holds no number.
    pub fn read_with_timeout(&self, timeout: Duration) -> Result<f64, CommandError> {
        match self {
            Self::Command(argv) => run(argv, timeout),
            Self::File(path) => {
                let contents =
                    std::fs::read_to_string(path).map_err(|source| CommandError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                first_number(&contents).ok_or_else(|| CommandError::FileNoNumber {
                    path: path.clone(),
                    contents: quote(contents.as_bytes()),
                })
            }
        }
    }
}

fn run(argv: &[String], timeout: Duration) -> Result<f64, CommandError> {
    use std::os::unix::process::CommandExt as _;

    let (program, arguments) = argv.split_first().ok_or(CommandError::EmptyCommand)?;
    let deadline = Instant::now() + timeout;
    let mut child = std::process::Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so what it started goes with it.
        .process_group(0)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
    let result = finish(&mut child, argv, timeout, deadline);
    // Every way out: the group is killed while its leader is not yet reaped
    // (so its id cannot be reused), then the leader is reaped.
    kill_group(&mut child);
    result
}

/// Reads the command's output and waits for it, both until `deadline`.
/// The pipes are closed when this returns: a process that left the group
/// (`setsid`) and still holds them blocks no one.
fn finish(
    child: &mut Child,
    argv: &[String],
    timeout: Duration,
    deadline: Instant,
) -> Result<f64, CommandError> {
    let timed_out = || CommandError::Timeout {
        argv: argv.to_vec(),
        timeout,
    };
    // Output ends when every process holding the pipe has exited, which may
    // be after the command itself (a background child); both count against
    // the timeout.
    let pipes = [
        child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ];
    let Some([output, stderr]) = read_pipes(pipes, deadline) else {
        return Err(timed_out());
    };
    let status = loop {
        match exited(child) {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => return Err(timed_out()),
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                return Err(CommandError::Wait {
                    argv: argv.to_vec(),
                    source,
                });
            }
        }
    };
    if !status.success() {
        return Err(CommandError::Failed {
            argv: argv.to_vec(),
            status,
            stderr: quote(&stderr),
        });
    }
    let text = String::from_utf8_lossy(&output);
    first_number(&text).ok_or_else(|| CommandError::NoNumber {
        argv: argv.to_vec(),
        output: quote(&output),
    })
}

/// Reads both pipes to their end on this thread (`poll`), keeping the
/// first [`OUTPUT_LIMIT`] bytes of each; `None` if `deadline` comes first.
/// The pipes are dropped (closed) either way.
fn read_pipes(pipes: [Option<File>; 2], deadline: Instant) -> Option<[Vec<u8>; 2]> {
    let mut pipes = pipes;
    let mut kept = [Vec::new(), Vec::new()];
    for pipe in pipes.iter().flatten() {
        // SAFETY: fcntl on a descriptor this pipe owns.
        unsafe {
            let fd = pipe.as_raw_fd();
            libc::fcntl(
                fd,
                libc::F_SETFL,
                libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
            );
        }
    }
    while pipes.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|p| libc::pollfd {
                fd: p.as_ref().map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of its length; negative fds are
        // ignored by poll.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            if let Some(pipe) = pipes[i].as_mut()
                && drained(pipe, &mut kept[i])
            {
                pipes[i] = None;
            }
        }
    }
    Some(kept)
}

/// Reads what `pipe` has now into `kept` (up to [`OUTPUT_LIMIT`], the rest
/// dropped); true at its end.
fn drained(pipe: &mut impl Read, kept: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The command's exit status once it has exited, without reaping it (so
/// its process group id stays its own until [`kill_group`]).
fn exited(child: &Child) -> std::io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt as _;
    let pid = libc::id_t::from(child.id());
    // SAFETY: zeroed is a valid siginfo_t; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer; WNOWAIT leaves the child waitable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &raw mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fields waitid filled for a child that changed state.
    let (found, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if found == 0 {
        return Ok(None);
    }
    let raw = if code == libc::CLD_EXITED {
        (status & 0xff) << 8
    } else {
        status & 0x7f
    };
    Ok(Some(std::process::ExitStatus::from_raw(raw)))
}

/// Kills the command's process group and reaps the command.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the group id is
        // the command's own pid (process_group(0)), and the command is not
        // yet reaped, so the id cannot have been reused.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The first decimal number in `text`: an optional sign, digits with an
/// optional fraction, and an optional exponent (`0.42`, `-3`, `.5`, `1e3`).
/// Whatever surrounds it is ignored, so `load=73%` gives 73.
#[must_use]
pub fn first_number(text: &str) -> Option<f64> {
    let bytes = text.as_bytes();
    let digits_from = |mut i: usize| {
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut start = 0;
    while start < bytes.len() {
        let mut i = start;
        if matches!(bytes[i], b'+' | b'-') {
            i += 1;
        }
        let int_end = digits_from(i);
        let mut end = int_end;
        if bytes.get(end) == Some(&b'.') {
            let frac_end = digits_from(end + 1);
            if frac_end > end + 1 || int_end > i {
                end = frac_end;
            }
        }
        let has_digits = int_end > i || end > int_end + 1;
        if has_digits {
            if matches!(bytes.get(end), Some(b'e' | b'E')) {
                let mut e = end + 1;
                if matches!(bytes.get(e), Some(b'+' | b'-')) {
                    e += 1;
                }
                let exp_end = digits_from(e);
                if exp_end > e {
                    end = exp_end;
                }
            }
            return text
                .get(start..end)?
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite());
        }
        start += 1;
    }
    None
}

/// The start of some output, for an error message.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    match trimmed.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> CommandSource {
        CommandSource::Command(vec!["sh".into(), "-c".into(), script.into()])
    }

    /// The pipe a process writes its stdout to (`pipe:[inode]`).
    fn stdout_pipe(pid: &str) -> String {
        std::fs::read_link(format!("/proc/{pid}/fd/1"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    fn read_pid(path: &std::path::Path) -> String {
        let start = Instant::now();
        loop {
            if let Ok(pid) = std::fs::read_to_string(path)
                && !pid.trim().is_empty()
            {
                return pid.trim().to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no pid in {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A grandchild that left the command's group (`setsid`) and holds
    /// its stdout: the read gives up at the timeout and this process keeps
    /// no end of that pipe (before, a reader thread blocked on it until the
    /// grandchild exited).
    #[test]
    fn a_child_that_left_the_group_holds_nothing_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!(
            "setsid sleep 30 & echo $! > {}; echo 0.5",
            pidfile.display()
        );
        let start = Instant::now();
        let err = sh(&script)
            .read_with_timeout(Duration::from_millis(300))
            .expect_err("the pipe never ends");
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        let pid = read_pid(&pidfile);
        let pipe = stdout_pipe(&pid);
        assert!(pipe.starts_with("pipe:"), "{pipe}");
        let ours: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .expect("fds")
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        // The escaped sleeper is this test's to end, by its id.
        let _ = std::process::Command::new("kill").arg(&pid).status();
        assert!(!ours.contains(&pipe), "this process still holds {pipe}");
    }

    /// A command that succeeds takes its background processes with it.
    #[test]
    fn a_command_that_succeeds_leaves_nothing_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 30 >/dev/null 2>&1 & echo $! > {}; echo 0.5",
            pidfile.display()
        );
        assert_eq!(sh(&script).read().expect("read"), 0.5);
        let pid = read_pid(&pidfile);
        let start = Instant::now();
        let gone = loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init to reap it.
            if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
                break true;
            }
            if start.elapsed() > Duration::from_secs(3) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !gone {
            let _ = std::process::Command::new("kill").arg(&pid).status();
        }
        assert!(gone, "the command's background sleep {pid} outlived it");
    }

    #[test]
    fn command_prints_a_number() {
        assert_eq!(sh("echo 0.42").read().expect("read"), 0.42);
        assert_eq!(sh("echo 'load: 73%'; echo 5").read().expect("read"), 73.0);
    }

    #[test]
    fn command_printing_nothing_is_a_clear_error() {
        let err = sh("true").read().expect_err("no output");
        assert!(
            err.to_string().starts_with("command printed no number: "),
            "{err}"
        );
        let err = sh("echo busy").read().expect_err("no number");
        assert!(err.to_string().contains("busy"), "{err}");
    }

    #[test]
    fn command_past_its_timeout_is_killed() {
        let start = Instant::now();
        let err = sh("sleep 5")
            .read_with_timeout(Duration::from_millis(200))
            .expect_err("timeout");
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );

        // A background process holding stdout does not outlive the timeout.
        let start = Instant::now();
        let err = sh("echo 1; sleep 5 & wait")
            .read_with_timeout(Duration::from_millis(200))
            .expect_err("timeout");
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn failing_and_missing_commands_are_errors() {
        let err = sh("echo 1; echo oops >&2; exit 3")
            .read()
            .expect_err("fails");
        assert!(err.to_string().contains("oops"), "{err}");
        let err = CommandSource::Command(vec!["/nonexistent/load".into()])
            .read()
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/load"), "{err}");
        let err = CommandSource::Command(vec![]).read().expect_err("empty");
        assert!(matches!(err, CommandError::EmptyCommand), "{err}");
    }

    #[test]
    fn file_holds_a_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("load");
        std::fs::write(&path, "0.7\n").expect("write");
        assert_eq!(CommandSource::File(path.clone()).read().expect("read"), 0.7);
        std::fs::write(&path, "idle\n").expect("write");
        let err = CommandSource::File(path.clone())
            .read()
            .expect_err("no number");
        assert!(err.to_string().contains("holds no number"), "{err}");
        let err = CommandSource::File(dir.path().join("missing"))
            .read()
            .expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn first_number_forms() {
        for (text, want) in [
            ("0.42", Some(0.42)),
            ("  -3 apples", Some(-3.0)),
            ("x=.5;", Some(0.5)),
            ("1e3", Some(1000.0)),
            ("2.5E-1\n", Some(0.25)),
            ("7e", Some(7.0)),
            ("cpu-load 9.", Some(9.0)),
            ("- . e", None),
            ("", None),
        ] {
            assert_eq!(first_number(text), want, "{text:?}");
        }
    }

    #[test]
    fn configuration_form() {
        #[derive(serde::Deserialize)]
        struct Config {
            source: CommandSource,
        }
        let json = r#"{"source": {"command": ["sh", "-c", "echo 1"]}}"#;
        let config: Config = serde_json::from_str(json).expect("parse");
        assert_eq!(config.source, sh("echo 1"));
    }
}
