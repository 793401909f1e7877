//! `lb-agent` library: the agent's measurement sources. The binary
//! (`src/main.rs`) builds reports out of these.

#![warn(missing_docs)]

pub mod sources;

pub mod agent;
pub mod backoff;
pub mod collector;
pub mod config;
pub mod discovery;
pub mod interfaces;
pub mod monitor;
pub mod probe;
pub mod readiness;
pub mod session;
pub mod settings;
