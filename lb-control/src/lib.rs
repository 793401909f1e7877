//! Controller of the XDP load balancer.
//!
//! The *node* role loads and attaches the XDP program, owns its maps and
//! applies configurations to them atomically (`node`, with its data plane,
//! next hops and the listener for remote managers). The
//! *manager* role (`manager`) takes the agents' report streams into its
//! server database and runs the autoscaling loop. The control socket (`api`) serves `lbctl`.

pub mod api;
pub mod atomic_file;
pub mod config;
pub mod manager;
pub mod model;
pub mod net;
pub mod node;
