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

/// The lines `lb-agent --config FILE ARGS` writes to stderr until its
/// start line (at most 10 s), and whether it came.
fn start_log(args: &[&str]) -> (Vec<String>, bool) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, plaintext_config("")).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("--config")
        .arg(&config)
        .args(args)
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
    (log, started)
}

/// `lb-agent` with its log in a pipe (stderr not a terminal): plain text,
/// no colour codes.
#[test]
fn logs_without_colour_into_a_pipe() {
    let (log, started) = start_log(&[]);
    let log = log.join("\n");
    assert!(started, "no start line in the log:\n{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log pipe: {log:?}");
}

/// `--log-format json`: every line a JSON object, the event's fields
/// beside its message.
#[test]
fn logs_json_lines_when_asked() {
    let (log, started) = start_log(&["--log-format", "json"]);
    assert!(started, "no start line in the log: {log:?}");
    for line in &log {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let start: serde_json::Value = serde_json::from_str(log.last().expect("a line")).expect("json");
    assert_eq!(start["fields"]["message"], "lb-agent started");
    assert_eq!(start["fields"]["host"], "cli-test");
}

fn check(config: &str) -> std::process::Output {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("agent.toml");
    std::fs::write(&path, config).expect("write config");
    Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["check", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run lb-agent check")
}

fn cgroup_config(cgroup: &str) -> String {
    plaintext_config(&format!(
        "\n[utilization]\nkind = \"cgroup-cpu\"\ncgroup = \"{cgroup}\"\n"
    ))
}

/// A cgroup of this test's own: a v1 `cpu` cgroup where the host has the
/// hierarchy, else a directory in the cgroup2 mount. Removed when dropped
/// (also when the test fails).
enum TestCgroup {
    V1(
        #[expect(dead_code, reason = "held for its Drop, which removes the cgroup")]
        lb_agent::sources::CgroupHandle,
    ),
    V2(std::path::PathBuf),
}

impl TestCgroup {
    fn create(name: &str) -> Self {
        match lb_agent::sources::create_v1_cgroup(name, 0.5) {
            Ok(handle) => Self::V1(handle),
            Err(v1) => {
                let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                    .iter()
                    .map(std::path::Path::new)
                    .find(|m| m.join("cgroup.controllers").is_file())
                    .unwrap_or_else(|| panic!("no v1 cpu hierarchy ({v1}) and no cgroup2 mount"));
                let dir = mount.join(name);
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
                Self::V2(dir)
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Self::V2(dir) = self {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `lb-agent check` resolves `utilization.cgroup` as the agent does at
/// start: a missing cgroup fails, naming the key and the paths looked at;
/// an existing one passes.
#[test]
fn check_fails_on_a_cgroup_that_does_not_exist() {
    let name = format!("lbt-agent-check-{}", std::process::id());
    let out = check(&cgroup_config(&format!("/{name}-missing")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check passed: {stderr}");
    assert!(
        stderr.contains(&format!("utilization.cgroup = \"/{name}-missing\"")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "/sys/fs/cgroup/cpuacct/{name}-missing/cpuacct.usage"
        )),
        "does not name the paths looked at: {stderr}"
    );

    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped the existing-cgroup half: creating a cgroup needs root");
        return;
    }
    let _cgroup = TestCgroup::create(&name);
    let out = check(&cgroup_config(&format!("/{name}")));
    assert!(
        out.status.success(),
        "check refused an existing cgroup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example file in deploy/examples loads (its cgroup is an example:
/// `lb-agent check` on a server also resolves it there).
#[test]
fn the_example_file_loads() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/agent.toml");
    let config = lb_agent::config::AgentConfig::load(std::path::Path::new(example))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.host, "web-1");
}
