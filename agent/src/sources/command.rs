//! An operator-defined figure: a command's output or a file's contents.
//!
//! Some applications know their load better than the host does (a queue
//! length, a worker pool's occupancy). The operator then points the agent at
//! a command that prints it or a file the application keeps up to date, and
//! the first number found there is the figure.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
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
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.clone(),
            source,
        })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let timed_out = || CommandError::Timeout {
        argv: argv.to_vec(),
        timeout,
    };

    // Output ends when every process holding the pipe has exited, which may
    // be after the command itself (a background child); both count against
    // the timeout.
    let Ok(output) = stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
        kill_group(&mut child);
        return Err(timed_out());
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child);
                return Err(timed_out());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                kill_group(&mut child);
                return Err(CommandError::Wait {
                    argv: argv.to_vec(),
                    source,
                });
            }
        }
    };
    if !status.success() {
        let stderr = stderr
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_default();
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

/// Reads a pipe to its end on a thread of its own, keeping the first
/// [`OUTPUT_LIMIT`] bytes; the receiver gets them at end of file.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut pipe) = pipe {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        }
        // The receiver may have given up already.
        let _ = tx.send(kept);
    });
    rx
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
