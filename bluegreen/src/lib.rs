//! bluegreen: blue-green traffic switching in the kernel with XDP and TC.
//!
//! The library holds everything the `bluegreen` binary does, so that tests
//! and tools drive the same code the operator runs.

mod backend_http;
pub mod clock;
pub mod config;
mod dirs;
pub mod endpoint;
pub mod error;
mod exposition;
pub mod fleet;
pub mod health;
pub mod host;
pub mod lifecycle;
pub mod load;
pub mod pinned;
pub mod pool;
pub mod shadow;
pub mod shift;
mod sockdiag;
pub mod state;
mod sys;
pub mod task;
pub mod verify;

pub use error::{Error, Result};

/// The compiled eBPF object (the XDP, TC and cgroup programs and their
/// maps), embedded at
/// build time by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bluegreen"));
