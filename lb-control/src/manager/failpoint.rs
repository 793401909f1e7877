//! Named failpoints between the steps of a change, for crash tests.
//!
//! `LB_FAILPOINT=NAME` (or `NAME=pause`) makes the process print
//! `failpoint NAME reached` on stdout when it gets there and stop in place
//! (the test then kills it with SIGKILL); `NAME=abort` aborts at once;
//! `NAME=sleep:MS` stops the whole process for MS milliseconds and goes on
//! (a test makes a concurrent edit meanwhile).
//!
//! Failpoints exist only in a build with the `failpoints` feature:
//! `cargo build -p lb-control --features failpoints`. `cargo xtask test`
//! builds the binaries that way (and the tests crate asks for the feature,
//! so a workspace test build has it); a production build
//! (`cargo build --release -p lb-control`) has none: [`hit`] and
//! [`hit_at`] compile to nothing and [`is_armed_at`] to `false`. A point is
//! named `ACTION.STEP` without formatting a string, so a call site costs
//! nothing when the variable is unset either.

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;

    /// The point `LB_FAILPOINT` names and what to do there.
    pub(super) fn armed() -> Option<&'static (String, String)> {
        static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let value = std::env::var("LB_FAILPOINT").ok()?;
                let (name, action) = value.split_once('=').unwrap_or((&value, "pause"));
                Some((name.to_owned(), action.to_owned()))
            })
            .as_ref()
    }

    /// Whether `armed` names `ACTION.STEP` (`step` `None`: `armed` is `action`).
    pub(super) fn names(armed: &str, action: &str, step: Option<&str>) -> bool {
        match step {
            None => armed == action,
            Some(step) => armed
                .strip_prefix(action)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| rest == step),
        }
    }

    /// Stops here if `LB_FAILPOINT` names this point.
    pub(super) fn hit(action: &str, step: Option<&str>) {
        let Some((armed, what)) = armed() else {
            return;
        };
        if !names(armed, action, step) {
            return;
        }
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "failpoint {armed} reached");
            let _ = out.flush();
        }
        tracing::warn!(failpoint = %armed, action = %what, "failpoint reached");
        if what == "abort" {
            std::process::abort();
        }
        if let Some(ms) = what.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            return;
        }
        loop {
            std::thread::park();
        }
    }
}

/// Stops here if `LB_FAILPOINT` names this point.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name, None);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Stops here if `LB_FAILPOINT` names the point `ACTION.STEP`.
#[inline]
pub fn hit_at(action: &str, step: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(action, Some(step));
    #[cfg(not(feature = "failpoints"))]
    let _ = (action, step);
}

/// Whether `LB_FAILPOINT` names the point `ACTION.STEP`.
#[inline]
#[must_use]
pub fn is_armed_at(action: &str, step: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return armed::armed().is_some_and(|(armed, _)| armed::names(armed, action, Some(step)));
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (action, step);
        false
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::armed::names;

    #[test]
    fn a_point_is_named_by_action_and_step() {
        assert!(names("allocate.file", "allocate", Some("file")));
        assert!(names("allocate.settings", "allocate.settings", None));
        assert!(!names("allocate.file", "allocate", Some("nodes")));
        assert!(!names("allocatex.file", "allocate", Some("file")));
        assert!(!names("allocate.file", "allocate.file", Some("file")));
        assert!(!names("allocate", "allocate", Some("")));
    }
}
