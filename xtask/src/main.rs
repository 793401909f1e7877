//! `cargo xtask`: toolchain bootstrap, eBPF build, tests, demo, benchmarks.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (rust-src, bpf-linker), then build
    /// the XDP object.
    BuildEbpf,
    /// Build everything and run every test (needs root for the kernel tests).
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The autoscaling story in a network-namespace lab: load rises past a
    /// server's capacity, a free server joins, the load falls, one is
    /// drained and returned (a chart and the logs in the demo's directory).
    /// Its options (`--short`, `--keep`, `--dir`) go to the demo: `cargo
    /// xtask demo --help` lists them.
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks: ns/packet, Maglev build, table write + verify, a
    /// generation applied on a node, the manager's report ingestion (10,000
    /// agents over mutual TLS), and threshold crossing to the first new
    /// flow on an allocated server (a netns lab, root).
    Bench {
        /// Only the manager's report ingestion (`examples/manager_bench.rs`).
        #[arg(long)]
        manager: bool,
    },
    /// Man pages for `lbctl` and `lb-control` (every subcommand), from
    /// their clap definitions, into `target/man`.
    Man,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::BuildEbpf => build_ebpf(),
        Task::Test { args } => test(&args),
        Task::Demo { args } => demo(&args),
        Task::Man => man(),
        Task::Bench { manager } => {
            build_ebpf()?;
            let examples: &[&str] = if manager {
                &["manager_bench"]
            } else {
                &["bench", "manager_bench"]
            };
            // Timings of user-space code mean something only optimized.
            for example in examples {
                cargo(&[
                    "run",
                    "--release",
                    "--quiet",
                    "--package",
                    "lb-control",
                    "--example",
                    example,
                ])?;
            }
            if !manager {
                println!("== Threshold crossing -> new server receiving new flows (netns lab)");
                cargo(&["build", "--workspace", "--bins"])?;
                cargo(&[
                    "test",
                    "--quiet",
                    "--package",
                    "lb-tests",
                    "--test",
                    "autoscale",
                    "hot_server_gets_help_and_idle_one_goes_back",
                    "--",
                    "--nocapture",
                ])?;
            }
            Ok(())
        }
    }
}

/// `cargo xtask demo`: builds what it needs, then becomes the demo (an
/// `exec`: Ctrl-C reaches it alone, and the shell waits for its clean-up).
fn demo(args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let bin = root()?.join("target/debug/lab-demo");
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    if !(help && bin.exists()) {
        build_ebpf()?;
        cargo(&["build", "--workspace", "--bins"])?;
    }
    let err = Command::new(&bin).args(args).exec();
    Err(err).with_context(|| format!("starting {}", bin.display()))
}

/// `cargo xtask man`: each binary writes its own pages.
fn man() -> Result<()> {
    build_ebpf()?;
    cargo(&["build", "--package", "lb-control", "--bins"])?;
    let root = root()?;
    let dir = root.join("target/man");
    for bin in ["lbctl", "lb-control"] {
        run(Command::new(root.join("target/debug").join(bin))
            .arg("man")
            .arg("--dir")
            .arg(&dir))?;
    }
    eprintln!(
        "xtask: man pages in {} (man -l {}/lbctl.1)",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// The workspace root.
pub fn root() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(dir.parent().context("xtask has a parent")?.to_path_buf())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(root()?),
    )
}

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Where bpf-linker finds nightly's LLVM. bpf-linker keeps an rpath to this
/// directory, so it must outlive the build: a stable place, not /tmp.
fn llvm_dir() -> Result<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(home.join("xdplb-llvm"))
}

fn bootstrap() -> Result<()> {
    if !have("rustup", &["run", "nightly", "rustc", "--version"]) {
        bail!(
            "the nightly toolchain is missing; install it with `rustup toolchain install nightly`"
        );
    }
    let sysroot = String::from_utf8(
        Command::new("rustup")
            .args(["run", "nightly", "rustc", "--print", "sysroot"])
            .output()?
            .stdout,
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    if !sysroot.join("lib/rustlib/src/rust/library").exists() {
        eprintln!("xtask: installing rust-src for nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // bpf-linker links nightly's own LLVM through an rpath to this
    // directory; keep both the generic and the versioned name there.
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("nightly ships no libLLVM.so.*; cannot build bpf-linker")?;
    let dir = llvm_dir()?;
    std::fs::create_dir_all(dir.join("lib"))?;
    for name in [
        std::ffi::OsString::from("libLLVM.so"),
        lib.file_name().context("file name")?.to_owned(),
    ] {
        let link = dir.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    if !have("bpf-linker", &["--version"]) {
        eprintln!(
            "xtask: installing bpf-linker 0.13.0 against {}",
            lib.display()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker@0.13.0",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", &dir))?;
    }
    ensure_bpffs();
    Ok(())
}

/// Mounts bpffs when we can (root) and it is missing; the daemon does the
/// same, tests rely on it.
fn ensure_bpffs() {
    let mounted = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.starts_with("bpf "))
    });
    if !mounted {
        let _ = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status();
    }
}

fn build_ebpf() -> Result<()> {
    bootstrap()?;
    let root = root()?;
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "--release", "--bins"])
        .arg("--target-dir")
        .arg(root.join("target/bpf"))
        .current_dir(root.join("lb-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO"))?;
    let object = root.join("target/bpf/bpfel-unknown-none/release/lb-ebpf");
    eprintln!("xtask: XDP object at {}", object.display());
    Ok(())
}

/// lb-control's features for tests: the crash tests stop the binary at
/// failpoints, the program and upgrade tests use the test support. Both
/// cargo runs name them, so the test run does not rebuild the binary the
/// build made (without them).
const TEST_FEATURES: &str = "lb-control/failpoints,lb-control/test-support";

/// Debian packages the end-to-end tests use beyond the toolchain, each
/// with a command that succeeds once it is there.
const TEST_PACKAGES: &[(&str, &[&str])] = &[
    // The demo test runs the scrape command `--keep` prints.
    ("curl", &["curl", "--version"]),
    // The live view's test drives the real `lbctl top` in a terminal.
    ("tmux", &["tmux", "-V"]),
    (
        // The metrics test parses a scrape with the OpenMetrics parser.
        "python3-prometheus-client",
        &[
            "/usr/bin/python3",
            "-c",
            "import prometheus_client.openmetrics.parser",
        ],
    ),
];

/// Installs the missing [`TEST_PACKAGES`] (as root, with apt-get).
fn ensure_test_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(_, check)| !have(check[0], &check[1..]))
        .map(|(package, _)| *package)
        .collect();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if missing.is_empty() || !root || !have("apt-get", &["--version"]) {
        if !missing.is_empty() {
            eprintln!(
                "xtask: the tests need {} (apt-get install)",
                missing.join(" ")
            );
        }
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing))
}

fn test(extra: &[String]) -> Result<()> {
    build_ebpf()?;
    ensure_test_packages()?;
    // Every binary the end-to-end tests start (lb-control, lbctl, lab tools).
    cargo(&[
        "build",
        "--workspace",
        "--bins",
        "--features",
        TEST_FEATURES,
    ])?;
    let mut args: Vec<&str> = vec![
        "test",
        "--workspace",
        "--no-fail-fast",
        "--features",
        TEST_FEATURES,
    ];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    cargo(&args)
}
