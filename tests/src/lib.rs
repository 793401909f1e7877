//! Lab harness for end-to-end tests: network namespaces joined by veths and
//! bridges, and small client/server programs (`lab-client`, `lab-server`)
//! run inside them.
//!
//! Everything here needs root. Namespaces are named `lbt-<role>-<pid>-<n>`
//! and deleted on drop (also when a test panics); leftovers of killed runs
//! are removed by the next [`topo::LabBuilder::build`].

pub mod apps;
pub mod balancer;
pub mod decap;
pub mod fleet;
pub mod lab;
pub mod proto;
pub mod scaling;
pub mod stream;
pub mod topo;
pub mod util;

pub use apps::{BurstOpts, HoldSession, run_burst, run_udp, start_lab_server};
pub use lab::{LabProcess, MacAddr, Netns};
pub use proto::{BurstReport, HoldConn, PingReport};
pub use topo::{Host, Iface, Lab, LabBuilder, VipRoute};
pub use util::{is_root, require_root};
