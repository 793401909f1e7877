//! The real `lb-agent` binary's own output: its log and `lb-agent check`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A valid configuration naming a manager nobody listens on.
fn plaintext_config(extra: &str) -> String {
    format!(
        "[agent]\nhost = \"cli-test\"\nmanager = \"127.0.0.1:9\"\ninsecure_plaintext = true\n{extra}"
    )
}

/// `lb-agent` with its log in a pipe (stderr not a terminal): plain text,
/// no colour codes.
#[test]
fn logs_without_colour_into_a_pipe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, plaintext_config("")).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("--config")
        .arg(&config)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lb-agent");
    let stderr = child.stderr.take().expect("stderr pipe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let started = line.contains("lb-agent started");
            if tx.send(line).is_err() || started {
                return;
            }
        }
    });
    let mut log = Vec::new();
    let started = loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let started = line.contains("lb-agent started");
                log.push(line);
                if started {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    // Only our own child, by its handle.
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    assert!(started, "no start line in the log:\n{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log pipe: {log:?}");
}
