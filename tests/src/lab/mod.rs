//! Building blocks: namespaces, processes inside them, bridges and veths.

mod ethtool;
mod link;
mod netns;
mod process;

pub use ethtool::{disable_tx_offload, set_tx_offload, tx_offload_enabled};
pub use link::{
    Bridge, IfConfig, Link, MacAddr, add_addr, add_route, link_info, veth, veth_to_bridge,
};
pub use netns::{
    DEFAULT_EXEC_TIMEOUT, NAME_MARKER, NETNS_DIR, Netns, cleanup_stale_namespaces, host_cmd,
};
pub use process::{LabProcess, die_with_parent};
