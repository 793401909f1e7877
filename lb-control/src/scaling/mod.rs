//! The autoscaling loop of the manager: policy (when to grow or shrink a
//! pool), the weights that follow each server's idle share, the
//! configuration file it records its decisions in, the generations it
//! numbers them with, and the events that explain them.

pub mod config_file;
pub mod controller;
pub mod events;
pub mod failpoint;
pub mod generation;
pub mod policy;
pub mod weights;
