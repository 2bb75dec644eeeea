//! A throwaway cgroup v2 directory, so that a test can attach bluegreen's
//! cgroup programs where nothing else looks and count exactly what is
//! attached there.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use crate::sys::{BPF_PROG_QUERY, bpf};

/// The attach types of the eight socket-address programs
/// (`enum bpf_attach_type`): connect, sendmsg, recvmsg, getpeername, for
/// IPv4 and IPv6.
const SOCK_ADDR_ATTACH_TYPES: [u32; 8] = [10, 11, 14, 15, 19, 20, 29, 30];

/// `union bpf_attr`, the `BPF_PROG_QUERY` member up to the count.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_count: u32,
    _padding: u32,
}

/// A cgroup directory removed on drop.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn create(name: &str) -> TestCgroup {
        let path = bluegreen::host::cgroup2_root()
            .expect("a cgroup v2 file system is mounted")
            .join(name);
        fs::create_dir(&path)
            .unwrap_or_else(|error| panic!("cannot create cgroup {}: {error}", path.display()));
        TestCgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Socket-address programs attached directly to this cgroup.
    pub fn attached_programs(&self) -> u32 {
        let dir = File::open(&self.path).expect("open the test cgroup");
        SOCK_ADDR_ATTACH_TYPES
            .iter()
            .map(|&attach_type| {
                let mut query = QueryAttr {
                    target_fd: dir.as_raw_fd() as u32,
                    attach_type,
                    ..Default::default()
                };
                bpf(BPF_PROG_QUERY, &mut query).expect("BPF_PROG_QUERY on the test cgroup");
                query.prog_count
            })
            .sum()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Programs still attached (a failed test) go with the cgroup.
        let _ = fs::remove_dir(&self.path);
    }
}
