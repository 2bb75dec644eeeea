//! Test bed for bluegreen: real kernels, real packets.
//!
//! - [`packet`]: a small builder for fixture frames, and full checksum checks.
//! - [`kernel`]: the eBPF object loaded (not attached) with its maps pinned in
//!   a throwaway bpffs directory, for `BPF_PROG_TEST_RUN`.
//! - [`netns`]: throwaway network-namespace topologies with veth pairs.
//! - [`cli`]: the real `bluegreen` binary, run in a topology's switch namespace.
//! - [`http`]: a tiny HTTP backend and client that run inside namespaces.
//! - [`bench`]: the parts of `cargo xtask bench` (the `bench` binary).
//! - [`sys`]: raw `bpf()` calls for the benchmarks' baselines and batch
//!   map fills.
//! - [`fixture`]: the end-to-end tests' standard setup (topology, backends,
//!   a bluegreen instance and service "web") and its client helpers.
//! - [`metrics`]: scraping a test daemon's metrics endpoint.
//! - [`model`]: backends' model-server metrics whose figures a test sets.
//! - [`prometheus`]: a real Prometheus server scraping the test backends.
//! - [`fleet`]: a real etcd and several hosts, each a fixture with its own
//!   daemon, for the fleet's tests and benchmark.
//! - [`cgroup`]: a throwaway cgroup v2 directory and what is attached to it.
//! - [`lifecycle`]: a `[service.lifecycle]` script that starts and kills
//!   green's backend as a process of its own.
//! - [`shadow`]: backends and clients that keep every byte they were sent
//!   and sent, and `bluegreen shadow run` as a child process.

pub mod bench;
pub mod cgroup;
pub mod cli;
pub mod fixture;
pub mod fleet;
pub mod http;
pub mod kernel;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod shadow;
pub mod sys;
