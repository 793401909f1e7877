//! Controller of the XDP load balancer.
//!
//! The *node* role loads and attaches the XDP program, owns its maps and
//! applies configurations to them atomically (`node`, with its data plane,
//! next hops and the listener for remote managers). The
//! *manager* role (`manager`) takes the agents' report streams into its
//! server database and runs the autoscaling loop. The control socket (`api`) serves `lbctl`.

#![expect(
    clippy::missing_errors_doc,
    reason = "every fallible function returns its module's error type, whose variants say when each happens and what to do"
)]
#![expect(
    clippy::missing_panics_doc,
    reason = "the panics left are invariants of the module (documented there), not conditions a caller meets"
)]
#![expect(
    clippy::cast_precision_loss,
    reason = "counters and durations become f64 ratios, rates and utilizations; past 2^52 only digits no decision reads are lost"
)]
#![cfg_attr(
    test,
    expect(
        clippy::float_cmp,
        clippy::cast_possible_truncation,
        clippy::many_single_char_names,
        clippy::needless_pass_by_value,
        reason = "tests compare figures computed from exact inputs, count small numbers and name points of a curve"
    )
)]

pub mod api;
pub mod atomic_file;
pub mod config;
pub mod locks;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod net;
pub mod node;
