//! Types shared by the eBPF programs and the userspace loader.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields so that
//! both sides agree on the layout byte for byte, and so that no uninitialised
//! padding ever ends up inside a hash key. Keys made only of byte arrays
//! still carry an explicit alignment (their sizes are multiples of it, so
//! no padding appears): the BPF backend may not merge unaligned accesses,
//! and without it every copy and compare of a key is done byte by byte. Addresses and ports are stored as
//! they travel on the wire (network byte order, as raw bytes); counters and
//! timestamps are host-order integers that never leave the machine.
//!
//! Each map family has its own module, with its keys and values, its
//! capacity and the helpers that place things in it, so that a change to
//! one map's layout is made in one place (and bumps [`LAYOUT_VERSION`]):
//! [`services`], [`pools`], [`flows`], [`local`] (host-local sockets),
//! [`counters`], the shadow capture ([`shadow`]) and the prefilters in
//! front of them all ([`filters`]).
//! Both sides build keys from [`endpoint`]. The decisions that the kernel
//! takes from those maps and userspace must take identically are in
//! [`rules`]. Every item is re-exported at the root, where the other
//! crates name it. Modules import only from modules below them (endpoint,
//! then pools, services, flows and counters, then rules), never back.
#![no_std]

pub mod checksum;
pub mod counters;
pub mod endpoint;
pub mod filters;
pub mod flows;
pub mod local;
#[cfg(feature = "user")]
pub mod model;
pub mod names;
#[cfg(feature = "user")]
mod pod;
pub mod pools;
pub mod rules;
pub mod services;
pub mod shadow;
pub mod wire;

pub use counters::*;
pub use endpoint::*;
pub use filters::*;
pub use flows::*;
pub use local::*;
pub use names::*;
pub use pools::*;
pub use rules::*;
pub use services::*;
pub use shadow::*;

/// Bumped whenever any map's key or value layout, or what a map's contents
/// mean, changes (4: the VIP prefilter's hash). Pins live under a directory
/// named after it, so a loader never reads maps of another layout.
pub const LAYOUT_VERSION: u32 = 4;
