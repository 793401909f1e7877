//! Named failpoints between the steps of a change, for crash tests.
//!
//! `LB_FAILPOINT=NAME` (or `NAME=pause`) makes the process print
//! `failpoint NAME reached` on stdout when it gets there and stop in place
//! (the test then kills it with SIGKILL); `NAME=abort` aborts at once;
//! `NAME=sleep:MS` stops the whole process for MS milliseconds and goes on
//! (a test makes a concurrent edit meanwhile). Without the variable a
//! failpoint costs one comparison.

use std::sync::OnceLock;

fn armed() -> Option<&'static (String, String)> {
    static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var("LB_FAILPOINT").ok()?;
            let (name, action) = value.split_once('=').unwrap_or((&value, "pause"));
            Some((name.to_owned(), action.to_owned()))
        })
        .as_ref()
}

/// Whether `LB_FAILPOINT` names this point.
pub fn is_armed(name: &str) -> bool {
    armed().is_some_and(|(armed, _)| armed == name)
}

/// Stops here if `LB_FAILPOINT` names this point.
pub fn hit(name: &str) {
    let Some((armed, action)) = armed() else {
        return;
    };
    if armed != name {
        return;
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "failpoint {name} reached");
        let _ = out.flush();
    }
    tracing::warn!(failpoint = name, action = %action, "failpoint reached");
    if action == "abort" {
        std::process::abort();
    }
    if let Some(ms) = action.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        return;
    }
    loop {
        std::thread::park();
    }
}
