//! Small helpers for the tests themselves.

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
