//! Controller of the XDP load balancer.
//!
//! The *node* role loads and attaches the XDP program, owns its maps and
//! applies configurations to them atomically (`node`, `dataplane`). The
//! *manager* role (`manager`) takes the agents' report streams into its
//! server database. The control socket (`api`) serves `lbctl`.

pub mod api;
pub mod atomic_file;
pub mod config;
pub mod dataplane;
pub mod manager;
pub mod nexthop;
pub mod node;
pub mod nodelink;
pub mod scaling;
