//! The baselines of the in-kernel benchmark: programs that do nothing,
//! loaded and run with raw `bpf()` syscalls so that nothing of bluegreen
//! (nor aya's loader) is in them. What they cost is what
//! `BPF_PROG_TEST_RUN` itself costs per run: the floor any program pays.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    path::Path,
    time::Duration,
};

use crate::sys::{
    BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, instruction, load_program, object_pin, test_run,
};

/// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K), then `exit` (BPF_JMP | BPF_EXIT).
fn return_constant(value: i32) -> [u64; 2] {
    [
        instruction(0xb7, 0, 0, 0, value),
        instruction(0x95, 0, 0, 0, 0),
    ]
}

/// A loaded two-instruction program, unloaded when dropped.
pub struct NoopProgram {
    fd: OwnedFd,
    expected_return: u32,
}

impl NoopProgram {
    /// `return XDP_PASS`.
    pub fn xdp() -> NoopProgram {
        Self::load(BPF_PROG_TYPE_XDP, 2, "bench_noop_xdp")
    }

    /// `return TC_ACT_OK`.
    pub fn tc() -> NoopProgram {
        Self::load(BPF_PROG_TYPE_SCHED_CLS, 0, "bench_noop_tc")
    }

    fn load(prog_type: u32, verdict: i32, name: &str) -> NoopProgram {
        let fd = load_program(prog_type, &return_constant(verdict), name)
            .unwrap_or_else(|error| panic!("BPF_PROG_LOAD of a no-op program: {error}"));
        NoopProgram {
            fd,
            expected_return: verdict as u32,
        }
    }

    /// Pins the program at `path` in bpffs, so that `ip link set ... xdpdrv
    /// pinned PATH` can attach it.
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        object_pin(self.fd.as_fd(), path)
    }

    /// Runs the program `repeat` times on `frame`; the kernel's average.
    pub fn bench(&self, frame: &[u8], repeat: u32) -> Duration {
        let outcome = test_run(self.fd.as_fd(), frame, None, repeat)
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of a no-op program: {error}"));
        assert_eq!(
            outcome.return_value, self.expected_return,
            "the no-op program returned something else"
        );
        Duration::from_nanos(u64::from(outcome.duration_ns))
    }
}
