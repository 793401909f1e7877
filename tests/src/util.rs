//! Small helpers for the tests themselves.

use anyhow::Context as _;

/// Whether the process runs as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root (namespaces, veths): returns `true` when root.
/// Otherwise panics when `CI=true` (CI must run these), else prints a skip
/// message and returns `false` — the test should then return early.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (network namespaces) and CI=true: refusing to skip");
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces)");
    false
}

/// The capabilities `deploy/systemd/lb-control.service` leaves the daemon
/// (`CapabilityBoundingSet`), as a `setpriv --bounding-set` list.
pub fn unit_capabilities() -> anyhow::Result<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/lb-control.service"
    ))?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("no CapabilityBoundingSet in the unit")?;
    Ok(line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(","))
}
