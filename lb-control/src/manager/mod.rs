//! The manager role: agents stream hello and reports to it over mutual TLS
//! (`agents`, into the server database `db`, spares found by `discovery`);
//! the autoscaling loop (`controller`, deciding with `policy`, weighing with
//! `weights`) records its decisions in the configuration file
//! (`config_file`), numbers them (`generation`), explains them (`events`)
//! and sends them to every node (`node_link`, remote ones through
//! `node_client`).

pub mod agents;
pub mod config_file;
pub mod controller;
pub mod db;
pub mod discovery;
pub mod events;
pub mod failpoint;
pub mod generation;
pub mod node_client;
pub mod node_link;
pub mod policy;
pub mod weights;

pub use agents::{
    Manager, ManagerConfig, ManagerConfigError, ManagerError, ManagerStats, Rejection,
    RemoteNodeConfig,
};
