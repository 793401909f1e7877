//! Builds lb-ebpf's objects from a build script: every program of the
//! crate (`lb-ebpf`, `xdp-floor`, `xdp-decap`) with nightly for
//! `bpfel-unknown-none`, in a nested cargo that inherits none of the outer
//! build's settings. lb-control embeds the balancer's program, lb-agent the
//! decapsulation; both call this, and cargo's lock on the target directory
//! makes the second call a no-op.
//!
//! `cargo xtask build-ebpf` installs what this needs (rust-src, bpf-linker)
//! on a fresh machine.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The workspace root, from the calling crate's manifest directory (one
/// level below it).
///
/// # Panics
///
/// Outside a build script (cargo sets `CARGO_MANIFEST_DIR` for it).
#[must_use]
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    manifest.join("..")
}

/// Tells cargo to run the build script again when the eBPF sources or
/// the prebuilt-object override change.
pub fn rerun_if_changed(root: &Path) {
    for input in [
        root.join("lb-ebpf/src"),
        root.join("lb-ebpf/Cargo.toml"),
        root.join("lb-common/src"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed=LB_EBPF_PREBUILT");
}

/// The directory holding the objects: `LB_EBPF_PREBUILT` when set (built
/// elsewhere), else built now into `target/bpf` with `extra` cargo
/// arguments.
#[must_use]
pub fn objects(root: &Path) -> PathBuf {
    if let Ok(prebuilt) = env::var("LB_EBPF_PREBUILT") {
        return PathBuf::from(prebuilt);
    }
    let target_dir = root.join("target/bpf");
    build(root, &target_dir, &["--bins"]);
    target_dir.join("bpfel-unknown-none/release")
}

/// Builds lb-ebpf's programs into `target_dir` with `extra` cargo
/// arguments (which programs: `--bins`, `--bin NAME`; features).
///
/// # Panics
///
/// When the build fails, with what to run to see why: a build script's
/// way to fail.
pub fn build(root: &Path, target_dir: &Path, extra: &[&str]) {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release"])
        .arg("--target-dir")
        .arg(target_dir)
        .args(extra)
        .current_dir(root.join("lb-ebpf"));
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
        "building the eBPF programs failed; `cargo xtask build-ebpf` installs rust-src and bpf-linker and shows the error"
    );
}
