//! Raw `bpf()` calls the test bed needs and aya does not offer: loading a
//! hand-assembled program (the benchmarks' no-op baselines, so that nothing
//! of bluegreen nor of aya's loader is in them), running one with
//! `BPF_PROG_TEST_RUN`, pinning it, creating a plain map, batch map
//! operations, and the kernel's run-time statistics of a program.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_OBJ_PIN: libc::c_long = 6;
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_PROG_QUERY: libc::c_long = 16;
pub const BPF_ENABLE_STATS: libc::c_long = 32;

pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// Issues `bpf(command, attr)`, where `T` is the `union bpf_attr` member
/// (or a prefix of it) that `command` reads.
pub fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for `command`, and the
    // callers' pointers in it refer to memory that outlives the call.
    let status = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if status < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(status)
    }
}

/// One BPF instruction: opcode, registers, offset, immediate.
pub const fn instruction(code: u8, dst: u8, src: u8, offset: i16, immediate: i32) -> u64 {
    code as u64
        | ((dst as u64 | ((src as u64) << 4)) << 8)
        | ((offset as u16 as u64) << 16)
        | ((immediate as u32 as u64) << 32)
}

/// `union bpf_attr`, the `BPF_MAP_CREATE` member (its first fields).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Creates an anonymous map, closed with its descriptor.
pub fn create_map(
    map_type: u32,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        ..Default::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: BPF_MAP_CREATE returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

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

/// Loads a hand-assembled program (license "GPL") named `name` (at most
/// 15 bytes).
pub fn load_program(prog_type: u32, instructions: &[u64], name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    let length = name.len().min(15);
    prog_name[..length].copy_from_slice(&name.as_bytes()[..length]);
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: instructions.len() as u32,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

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
}

/// What one `BPF_PROG_TEST_RUN` returned.
pub struct TestRunOutcome {
    pub return_value: u32,
    /// The kernel's average per repeat, in nanoseconds.
    pub duration_ns: u32,
    pub output_len: usize,
}

/// Runs `program` `repeat` times on `input`, copying the resulting packet
/// into `output` if one is given.
pub fn test_run(
    program: BorrowedFd,
    input: &[u8],
    output: Option<&mut [u8]>,
    repeat: u32,
) -> io::Result<TestRunOutcome> {
    let (data_out, data_size_out) = match output {
        Some(output) => (output.as_mut_ptr() as u64, output.len() as u32),
        None => (0, 0),
    };
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: input.len() as u32,
        data_size_out,
        data_in: input.as_ptr() as u64,
        data_out,
        repeat,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRunOutcome {
        return_value: attr.retval,
        duration_ns: attr.duration,
        output_len: attr.data_size_out as usize,
    })
}

/// `union bpf_attr`, the `BPF_OBJ_*` member.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

/// Pins `object` at `path`.
pub fn object_pin(object: BorrowedFd, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: object.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `union bpf_attr`, the `BPF_ENABLE_STATS` member.
#[repr(C)]
struct EnableStatsAttr {
    stats_type: u32,
}

const BPF_STATS_RUN_TIME: u32 = 0;

/// Turns on the kernel's run-time statistics of every BPF program (time
/// spent inside it and runs, see [`run_time`]) for as long as the returned
/// descriptor is open: closing it, or the process ending, turns them off
/// again. While on, every run also pays for reading the clock twice.
pub fn enable_run_time_stats() -> io::Result<OwnedFd> {
    let mut attr = EnableStatsAttr {
        stats_type: BPF_STATS_RUN_TIME,
    };
    let fd = bpf(BPF_ENABLE_STATS, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr`, the `BPF_OBJ_GET_INFO_BY_FD` member.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_prog_info` up to `run_cnt`, as 8-byte words: `run_time_ns`
/// is at byte 192 and `run_cnt` at 200 (include/uapi/linux/bpf.h).
const PROG_INFO_WORDS: usize = 26;
const RUN_TIME_NS_WORD: usize = 192 / 8;
const RUN_CNT_WORD: usize = 200 / 8;

/// A program's run-time statistics: nanoseconds spent inside it, and runs,
/// counted while [`enable_run_time_stats`] was on.
#[derive(Clone, Copy, Debug)]
pub struct RunTime {
    pub ns: u64,
    pub runs: u64,
}

pub fn run_time(program: BorrowedFd) -> io::Result<RunTime> {
    let mut info = [0u64; PROG_INFO_WORDS];
    let mut attr = InfoAttr {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(RunTime {
        ns: info[RUN_TIME_NS_WORD],
        runs: info[RUN_CNT_WORD],
    })
}
