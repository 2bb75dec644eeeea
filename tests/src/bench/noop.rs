//! The baselines of the in-kernel benchmark: programs that do nothing,
//! loaded and run with raw `bpf()` syscalls so that nothing of bluegreen
//! (nor aya's loader) is in them. What they cost is what
//! `BPF_PROG_TEST_RUN` itself costs per run: the floor any program pays.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K), then `exit` (BPF_JMP | BPF_EXIT).
fn return_constant(value: i32) -> [u64; 2] {
    let mov = 0xb7u64 | (u64::from(value as u32) << 32);
    let exit = 0x95u64;
    [mov, exit]
}

/// `union bpf_attr`, the `BPF_PROG_LOAD` member up to the fields we set.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr`, the `BPF_OBJ_*` member.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr`, the `test` member.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    reserved: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for `command`, and every
    // pointer in it refers to memory that outlives the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            size_of::<T>() as u32,
        )
    };
    if status < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(status)
    }
}

/// A loaded two-instruction program, unloaded when dropped.
pub struct NoopProgram {
    fd: OwnedFd,
    expected_return: u32,
}

impl NoopProgram {
    /// `return XDP_PASS`.
    pub fn xdp() -> NoopProgram {
        Self::load(BPF_PROG_TYPE_XDP, 2, b"bench_noop_xdp")
    }

    /// `return TC_ACT_OK`.
    pub fn tc() -> NoopProgram {
        Self::load(BPF_PROG_TYPE_SCHED_CLS, 0, b"bench_noop_tc")
    }

    fn load(prog_type: u32, verdict: i32, name: &[u8]) -> NoopProgram {
        let instructions = return_constant(verdict);
        let license = c"GPL";
        let mut prog_name = [0u8; 16];
        prog_name[..name.len()].copy_from_slice(name);
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: instructions.len() as u32,
            insns: instructions.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr)
            .unwrap_or_else(|error| panic!("BPF_PROG_LOAD of a no-op program: {error}"));
        NoopProgram {
            // SAFETY: BPF_PROG_LOAD returned a new descriptor we now own.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            expected_return: verdict as u32,
        }
    }

    /// Pins the program at `path` in bpffs, so that `ip link set ... xdpdrv
    /// pinned PATH` can attach it.
    pub fn pin(&self, path: &std::path::Path) -> io::Result<()> {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        let mut attr = ObjPinAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
    }

    /// Runs the program `repeat` times on `frame`; the kernel's average.
    pub fn bench(&self, frame: &[u8], repeat: u32) -> Duration {
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        bpf(BPF_PROG_TEST_RUN, &mut attr)
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of a no-op program: {error}"));
        assert_eq!(
            attr.retval, self.expected_return,
            "the no-op program returned something else"
        );
        Duration::from_nanos(u64::from(attr.duration))
    }
}
