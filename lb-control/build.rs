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
//! not `core` and the dependencies; each variant is embedded from an
//! artifact directory of its own (`target/bpf/production`,
//! `target/bpf/debug-log`).
//!
//! With the `test-support` feature it also builds the object with the first
//! release's flow-entry layout (`legacy-flow-entry` of lb-ebpf) and points
//! `LB_EBPF_LEGACY_OBJECT` at it, for the upgrade test.

use std::{env, path::PathBuf};

use lb_ebpf_build::build;

fn main() {
    let root = lb_ebpf_build::workspace_root();
    let target_dir = root.join("target/bpf");
    lb_ebpf_build::rerun_if_changed(&root);
    // Cargo sets this for build scripts when the feature is on.
    let test_support = env::var_os("CARGO_FEATURE_TEST_SUPPORT").is_some();
    let legacy_dir = root.join("target/bpf-legacy");

    // A prebuilt directory holds `lb-ebpf`, `xdp-floor` and
    // `debug-log/lb-ebpf`.
    let (dir, debug_dir) = if let Ok(prebuilt) = env::var("LB_EBPF_PREBUILT") {
        let dir = PathBuf::from(prebuilt);
        let debug_dir = dir.join("debug-log");
        for object in [
            dir.join("lb-ebpf"),
            dir.join("xdp-floor"),
            debug_dir.join("lb-ebpf"),
        ] {
            assert!(
                object.is_file(),
                "LB_EBPF_PREBUILT: {} is missing (the directory needs lb-ebpf, xdp-floor and debug-log/lb-ebpf, the debug one built with lb-ebpf's `debug-log` feature)",
                object.display()
            );
        }
        (dir, debug_dir)
    } else {
        // Each variant into an artifact directory of its own, written while
        // cargo holds the target lock: both builds also leave their object
        // at the same path under `release/`, which nothing embeds, so a
        // parallel build never hands one variant's object to the other.
        let debug_dir = target_dir.join("debug-log");
        let production_dir = target_dir.join("production");
        for (dir, extra) in [
            (
                &debug_dir,
                &["--bin", "lb-ebpf", "--features", "debug-log"][..],
            ),
            (&production_dir, &["--bins"][..]),
        ] {
            let artifact_dir = dir.to_string_lossy().into_owned();
            let mut args = extra.to_vec();
            args.extend(["-Zunstable-options", "--artifact-dir", &artifact_dir]);
            build(&root, &target_dir, &args);
        }
        if test_support {
            // The first release's flow-entry layout, for the upgrade test.
            build(
                &root,
                &legacy_dir,
                &["--bins", "--features", "legacy-flow-entry"],
            );
        }
        (production_dir, debug_dir)
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
