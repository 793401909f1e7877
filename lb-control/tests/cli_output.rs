//! What `lbctl` and `lb-control` print, run as real binaries: no panic when
//! the reader of their output goes away, no colour codes in a log that is
//! not a terminal, each error said once.
#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "test figures are small and positive"
)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use lb_control::{api::Response, node::ServerView};

/// A control socket that answers one request with `response`, like
/// `lb-control` would, so `lbctl` has something long to print.
fn fake_daemon(dir: &std::path::Path, response: &Response) -> std::path::PathBuf {
    let path = dir.join("control.sock");
    let listener = UnixListener::bind(&path).expect("bind fake control socket");
    let mut line = serde_json::to_string(response).expect("encode response");
    line.push('\n');
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let mut request = String::new();
            let mut reader = BufReader::new(&stream);
            let _ = reader.read_line(&mut request);
            let _ = (&stream).write_all(line.as_bytes());
        }
    });
    path
}

/// Waits for `child` to exit (at most 10 s) and collects its stderr.
fn finish(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for lbctl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lbctl did not exit after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// `lbctl server list | head -5`: a few lines read, then the pipe closed
/// while lbctl still has thousands to write.
#[test]
fn lbctl_ends_quietly_when_the_reader_goes_away() {
    let servers: Vec<ServerView> = (0..3000)
        .map(|i| ServerView {
            name: format!("server-{i}"),
            address: std::net::IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8 + 1]),
            state: "allocated".into(),
            weight: 1,
            services: Vec::new(),
        })
        .collect();
    let response = Response::Servers {
        servers,
        monitors: Vec::new(),
    };
    for json in [false, true] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let socket = fake_daemon(tmp.path(), &response);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbctl"));
        cmd.arg("--socket").arg(&socket);
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .args(["server", "list"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lbctl");
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut lines = BufReader::new(stdout).lines();
        for _ in 0..5 {
            lines
                .next()
                .expect("a line from lbctl")
                .expect("read lbctl");
        }
        drop(lines);
        let (status, stderr) = finish(child);
        assert!(
            stderr.is_empty(),
            "json {json}: lbctl wrote to stderr after its reader went away ({status:?}):\n{stderr}"
        );
        assert_eq!(status.code(), Some(141), "json {json}: {status:?}");
    }
}

/// Output without a daemon (`lbctl certs init`) into a pipe nobody reads.
#[test]
fn lbctl_ends_quietly_on_a_closed_pipe_without_a_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["certs", "init", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lbctl");
    let (status, stderr) = finish(child);
    assert!(stderr.is_empty(), "{status:?}:\n{stderr}");
    assert_eq!(status.code(), Some(141), "{status:?}");
    // The work was done before the output was lost.
    assert!(dir.join("ca.pem").is_file());
}

/// `lb-control` with its log going to a file (stderr not a terminal):
/// plain text, no colour codes.
#[test]
fn lb_control_logs_without_colour_into_a_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("lb-control.log");
    let file = std::fs::File::create(&log).expect("log file");
    // A config that does not exist: `run` logs why and stops.
    let missing = tmp.path().join("missing.toml");
    let status = Command::new(env!("CARGO_BIN_EXE_lb-control"))
        .args(["run", "--config"])
        .arg(&missing)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .expect("run lb-control");
    assert!(!status.success());
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(text.contains("missing.toml"), "{text}");
    assert!(text.contains("ERROR"), "not a log line: {text}");
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log file: {text:?}"
    );
}

/// `lb-control check` on a broken file says each error once, on stderr
/// or stdout together.
#[test]
fn check_says_each_error_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[node]\ninterfaces = [\"eth0\"]\nwieght = 1\n",
            "unknown field",
        ),
        (
            "[node]\ninterfaces = []\n",
            "node.interfaces is empty: name at least one interface",
        ),
    ];
    for (i, (config, error)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, config).expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_lb-control"))
            .args(["check", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run lb-control check");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{all}");
        assert_eq!(all.matches(error).count(), 1, "said not once:\n{all}");
        assert!(all.starts_with("error: "), "{all}");
    }
}

/// `lbctl completions SHELL` and the man pages come from the clap
/// definitions: every subcommand is in them.
#[test]
fn completions_and_man_pages_name_every_subcommand() {
    let lbctl = env!("CARGO_BIN_EXE_lbctl");
    for (shell, marker) in [
        ("bash", "complete -F _lbctl"),
        ("zsh", "#compdef lbctl"),
        ("fish", "complete -c lbctl"),
    ] {
        let out = Command::new(lbctl)
            .args(["completions", shell])
            .output()
            .expect("run lbctl");
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        for verb in ["allocate", "drain", "deallocate", "repin", "reload", "pool"] {
            assert!(text.contains(verb), "{shell}: no {verb}");
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for (bin, pages) in [
        (
            lbctl,
            &["lbctl.1", "lbctl-server-drain.1", "lbctl-completions.1"][..],
        ),
        (
            env!("CARGO_BIN_EXE_lb-control"),
            &["lb-control.1", "lb-control-run.1"][..],
        ),
    ] {
        let status = Command::new(bin)
            .args(["man", "--dir"])
            .arg(tmp.path())
            .status()
            .expect("run");
        assert!(status.success(), "{bin}: {status:?}");
        for page in pages {
            let text = std::fs::read_to_string(tmp.path().join(page)).expect(page);
            assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
        }
    }
    // The hidden `man` verb has no page of its own.
    assert!(!tmp.path().join("lbctl-man.1").exists());
}

/// Exit codes: 2 for a usage error, 3 when no daemon answers at the
/// socket (the daemon's own refusals, 1, are in the lab's operator test).
#[test]
fn exit_codes_tell_usage_from_an_unreachable_daemon() {
    let lbctl = env!("CARGO_BIN_EXE_lbctl");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(lbctl)
        .args(["no-such-verb"])
        .output()
        .expect("run lbctl");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = Command::new(lbctl)
        .arg("--socket")
        .arg(tmp.path().join("none.sock"))
        .arg("status")
        .output()
        .expect("run lbctl");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is lb-control running?"), "{stderr}");
}

/// `lb-control --log-format json`: every line of its log a JSON object,
/// its last error among them (not a plain `error:` line).
#[test]
fn lb_control_logs_json_lines_when_asked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("missing.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_lb-control"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&missing)
        .env_remove("RUST_LOG")
        .output()
        .expect("run lb-control");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = lines.last().expect("a log line");
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("missing.toml")),
        "{stderr}"
    );
}

/// The example file in deploy/examples is one `lb-control check` accepts.
#[test]
fn the_example_file_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/lb.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_lb-control"))
        .args(["check", "--config", example])
        .output()
        .expect("run lb-control check");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
    let text = std::fs::read_to_string(example).expect("example");
    for table in [
        "[node]",
        "[limits]",
        "[manager]",
        "[metrics]",
        "[service.scaling]",
    ] {
        assert!(text.contains(table), "{table} missing from the example");
    }
}
