//! Types and pure logic shared by the XDP program (`lb-ebpf`) and user space.
//!
//! Everything here is `#[repr(C)]` with no implicit padding: the same bytes are
//! read by the kernel program and written by the controller. Network fields are
//! byte arrays in network order so neither side has endianness surprises.
#![cfg_attr(not(any(test, feature = "user")), no_std)]
#![expect(
    clippy::inline_always,
    reason = "the XDP program calls these: BPF code is inlined so the verifier sees one function"
)]
#![expect(
    clippy::cast_possible_truncation,
    reason = "hashes fold to 32 and 16 bits on purpose; map sizes, indexes and table cells are bounded by the limits, checked in lb-control"
)]

pub mod decap;
pub mod encap;
pub mod flows;
pub mod hash;
pub mod maps;
pub mod parse;
pub mod services;

#[cfg(feature = "user")]
pub mod maglev;

pub use flows::*;
pub use hash::flow_hash;
pub use maps::*;
pub use services::*;
