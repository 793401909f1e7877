//! `lb-agent` library: the agent's measurement sources. The binary
//! (`src/main.rs`) builds reports out of these.

#![warn(missing_docs)]
#![expect(
    clippy::missing_errors_doc,
    reason = "every fallible function returns its module's error type, whose variants say when each happens and what to do"
)]
#![expect(
    clippy::cast_precision_loss,
    reason = "counters become f64 ratios and rates for reports; past 2^52 only digits no report shows are lost"
)]
#![cfg_attr(
    test,
    expect(
        clippy::float_cmp,
        clippy::cast_possible_truncation,
        clippy::format_push_string,
        clippy::format_collect,
        reason = "tests compare figures computed from exact inputs and write kernel files and messages of known small sizes"
    )
)]

pub mod sources;

pub mod agent;
pub mod backoff;
pub mod collector;
pub mod config;
pub mod decap;
pub mod discovery;
pub mod interfaces;
pub mod monitor;
pub mod netlink;
pub mod probe;
pub mod readiness;
pub mod session;
pub mod settings;
