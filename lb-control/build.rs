//! Builds the XDP object (nightly, bpfel-unknown-none, bpf-linker) and points
//! `LB_EBPF_OBJECT` at it for `include_bytes_aligned!`.
//!
//! `cargo xtask build-ebpf` installs what this needs (rust-src, bpf-linker)
//! on a fresh machine.
//!
//! It also builds the debug variant (lb-ebpf's `debug-log`: the same
//! program with a few aya-log records, which `[node] debug_xdp` selects at
//! run time) and points `LB_EBPF_DEBUG_OBJECT` at it. It shares the target
//! directory, so only the lb-ebpf crate is compiled twice (a few seconds),
//! not `core` and the dependencies.
//!
//! With the `test-support` feature it also builds the object with the first
//! release's flow-entry layout (`legacy-flow-entry` of lb-ebpf) and points
//! `LB_EBPF_LEGACY_OBJECT` at it, for the upgrade test.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest.join("../lb-ebpf");
    let root = manifest.join("..");
    let target_dir = root.join("target/bpf");
    for input in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        root.join("lb-common/src"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed=LB_EBPF_PREBUILT");
    // Cargo sets this for build scripts when the feature is on.
    let test_support = env::var_os("CARGO_FEATURE_TEST_SUPPORT").is_some();
    let legacy_dir = root.join("target/bpf-legacy");

    // A prebuilt directory holds `lb-ebpf`, `xdp-floor` and
    // `debug-log/lb-ebpf`, as a build leaves them.
    let (dir, debug_dir) = if let Ok(prebuilt) = env::var("LB_EBPF_PREBUILT") {
        let dir = PathBuf::from(prebuilt);
        let debug_dir = dir.join("debug-log");
        (dir, debug_dir)
    } else {
        // The debug variant first, into an artifact directory of its own
        // (written while cargo holds the target lock): its build also
        // leaves its object at the production object's path, which the
        // production build after it takes back.
        let debug_dir = target_dir.join("debug-log");
        let artifact_dir = debug_dir.to_string_lossy().into_owned();
        build(
            &ebpf_dir,
            &target_dir,
            &[
                "--bin",
                "lb-ebpf",
                "--features",
                "debug-log",
                "-Zunstable-options",
                "--artifact-dir",
                &artifact_dir,
            ],
        );
        build(&ebpf_dir, &target_dir, &["--bins"]);
        if test_support {
            // The first release's flow-entry layout, for the upgrade test.
            build(
                &ebpf_dir,
                &legacy_dir,
                &["--bins", "--features", "legacy-flow-entry"],
            );
        }
        (target_dir.join("bpfel-unknown-none/release"), debug_dir)
    };
    println!(
        "cargo:rustc-env=LB_EBPF_OBJECT={}",
        dir.join("lb-ebpf").display()
    );
    println!(
        "cargo:rustc-env=LB_EBPF_DEBUG_OBJECT={}",
        debug_dir.join("lb-ebpf").display()
    );
    println!(
        "cargo:rustc-env=LB_EBPF_FLOOR_OBJECT={}",
        dir.join("xdp-floor").display()
    );
    if test_support {
        let legacy = legacy_dir.join("bpfel-unknown-none/release/lb-ebpf");
        println!("cargo:rustc-env=LB_EBPF_LEGACY_OBJECT={}", legacy.display());
    }
}

fn build(ebpf_dir: &std::path::Path, target_dir: &std::path::Path, extra: &[&str]) {
    {
        // A nested cargo must not inherit this build's target settings.
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo", "build", "--release"])
            .arg("--target-dir")
            .arg(target_dir)
            .args(extra)
            .current_dir(ebpf_dir);
        for (key, _) in env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            let inherited_build_setting = (key.starts_with("CARGO") && key != "CARGO_HOME")
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS"
                || key == "RUSTDOCFLAGS"
                || key == "RUSTUP_TOOLCHAIN";
            if inherited_build_setting {
                cmd.env_remove(&key);
            }
        }
        let status = cmd.status().unwrap_or_else(|e| {
            panic!("cannot run `rustup run nightly cargo` to build lb-ebpf: {e}; run `cargo xtask build-ebpf` first")
        });
        assert!(
            status.success(),
            "building the XDP program failed; `cargo xtask build-ebpf` installs rust-src and bpf-linker and shows the error"
        );
    }
}
