//! `lbctl certs init` and `lbctl certs issue`, run as real binaries with no
//! daemon: the files they write load and make working TLS configurations.

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use lb_proto::tls::{Pki, client_config, fingerprint, server_config};

fn lbctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lbctl"))
        // A socket that does not exist: certs must never touch it.
        .args(["--socket", "/nonexistent/lbctl-test.sock"])
        .args(args)
        .output()
        .expect("run lbctl")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_and_issue_without_a_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let dir_arg = dir.to_str().expect("utf-8 path");

    // Issuing before a CA exists says how to create one.
    let out = lbctl(&["certs", "issue", "--dir", dir_arg, "--host", "node-1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lbctl certs init --dir"),
        "{}",
        text(&out)
    );

    let out = lbctl(&[
        "certs", "init", "--dir", dir_arg, "--name", "test CA", "--days", "30",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let pki = Pki::new(&dir);
    let ca_pem = std::fs::read_to_string(pki.ca_cert_path()).expect("ca.pem");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&fingerprint(ca_pem.as_bytes()).expect("fingerprint")),
        "{}",
        text(&out)
    );
    assert_eq!(mode(&pki.ca_key_path()), 0o600);

    // A second init is refused and leaves the CA alone.
    let out = lbctl(&["certs", "init", "--dir", dir_arg]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(pki.ca_cert_path()).expect("ca.pem"),
        ca_pem
    );

    let out = lbctl(&[
        "certs",
        "issue",
        "--dir",
        dir_arg,
        "--host",
        "manager.lb",
        "--ip",
        "127.0.0.1",
        "--ip",
        "::1",
        "--role",
        "server",
        "--days",
        "10",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = lbctl(&[
        "--json", "certs", "issue", "--dir", dir_arg, "--host", "agent-1", "--role", "client",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        report["fingerprint_sha256"].as_str().map(str::len),
        Some(64),
        "{report}"
    );
    assert_eq!(mode(&pki.key_path("manager.lb")), 0o600);
    assert_eq!(mode(&pki.key_path("agent-1")), 0o600);

    // What was written loads and makes TLS configurations.
    let ca = pki.load_ca_cert().expect("load ca");
    let manager = pki.load_identity("manager.lb").expect("manager");
    let agent = pki.load_identity("agent-1").expect("agent");
    server_config(&ca, &manager).expect("server config");
    client_config(&ca, &agent).expect("client config");

    // Replacing the CA needs --force, and then works.
    let out = lbctl(&["certs", "init", "--dir", dir_arg, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        std::fs::read_to_string(pki.ca_cert_path()).expect("ca.pem"),
        ca_pem
    );
}

#[test]
fn bad_arguments_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 path");
    let out = lbctl(&["certs", "init", "--dir", dir]);
    assert!(out.status.success(), "{}", text(&out));
    // clap refuses malformed arguments with 2, lbctl refuses the rest with 1;
    // none of them may panic (101).
    let cases: [(&[&str], i32); 5] = [
        (&["--host", "../escape"], 1),
        (&["--host", "n", "--days", "4000000"], 1),
        (&["--host", "n", "--role", "admin"], 2),
        (&["--host", "n", "--ip", "nope"], 2),
        (&["--host", "n", "--days", "0"], 2),
    ];
    for (args, code) in cases {
        let out = lbctl(&[&["certs", "issue", "--dir", dir][..], args].concat());
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
    }
}
