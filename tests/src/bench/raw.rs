//! Hand-assembled programs, loaded and run with raw `bpf()` syscalls so that
//! nothing of bluegreen (nor aya's loader) is in them:
//!
//! - the baselines, programs that do nothing: what they cost is what
//!   `BPF_PROG_TEST_RUN` itself costs per run, the floor any program pays;
//! - the floors of bluegreen's paths, programs that do only the map and
//!   helper calls a path cannot avoid, on bluegreen's own maps, so that a
//!   target can be judged against what the kernel's building blocks cost.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
    time::Duration,
};

use crate::sys::{
    BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, instruction, load_program, object_pin, test_run,
};

const XDP_PASS: i32 = 2;
const TC_ACT_OK: i32 = 0;
// Registers: r1-r5 carry helper arguments (r1 the context on entry), r6
// survives calls, r10 is the frame pointer.
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R10: u8 = 10;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_MAP_UPDATE_ELEM: i32 = 2;
const BPF_FUNC_L4_CSUM_REPLACE: i32 = 11;
const BPF_F_PSEUDO_HDR: i32 = 1 << 4;

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
fn mov_imm(dst: u8, value: i32) -> u64 {
    instruction(0xb7, dst, 0, 0, value)
}

/// `dst = src` (BPF_ALU64 | BPF_MOV | BPF_X).
fn mov_reg(dst: u8, src: u8) -> u64 {
    instruction(0xbf, dst, src, 0, 0)
}

/// `dst = r10 + offset`: a pointer into the stack.
fn stack_pointer(dst: u8, offset: i16) -> [u64; 2] {
    [
        mov_reg(dst, R10),
        instruction(0x07, dst, 0, 0, i32::from(offset)),
    ]
}

/// `dst = map` (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_FD).
fn load_map(dst: u8, map: BorrowedFd) -> [u64; 2] {
    [instruction(0x18, dst, 1, 0, map.as_raw_fd()), 0]
}

fn call(helper: i32) -> u64 {
    instruction(0x85, 0, 0, 0, helper)
}

/// `return value`.
fn exit_with(value: i32) -> [u64; 2] {
    [mov_imm(0, value), instruction(0x95, 0, 0, 0, 0)]
}

/// Stores `bytes` (a multiple of 4 long) on the stack from `offset` on,
/// four at a time (BPF_ST | BPF_MEM | BPF_W).
fn store_bytes(offset: i16, bytes: &[u8]) -> Vec<u64> {
    assert_eq!(
        bytes.len() % 4,
        0,
        "keys and values here are 4-byte aligned"
    );
    bytes
        .chunks(4)
        .enumerate()
        .map(|(index, word)| {
            let value = i32::from_le_bytes(word.try_into().expect("four bytes"));
            instruction(0x62, R10, 0, offset + 4 * index as i16, value)
        })
        .collect()
}

/// `bpf_map_lookup_elem(map, key)`, the key stored at `offset` on the stack.
fn lookup(map: BorrowedFd, key: &[u8], offset: i16) -> Vec<u64> {
    let mut program = store_bytes(offset, key);
    program.extend(load_map(R1, map));
    program.extend(stack_pointer(R2, offset));
    program.push(call(BPF_FUNC_MAP_LOOKUP_ELEM));
    program
}

/// A loaded program, unloaded when dropped.
pub struct RawProgram {
    fd: OwnedFd,
    expected_return: u32,
    name: &'static str,
}

impl RawProgram {
    /// `return XDP_PASS`.
    pub fn noop_xdp() -> RawProgram {
        Self::load(BPF_PROG_TYPE_XDP, &exit_with(XDP_PASS), "bench_noop_xdp")
    }

    /// `return TC_ACT_OK`.
    pub fn noop_tc() -> RawProgram {
        Self::load(
            BPF_PROG_TYPE_SCHED_CLS,
            &exit_with(TC_ACT_OK),
            "bench_noop_tc",
        )
    }

    /// XDP: one lookup of `key` in `map`, what a packet of an established
    /// flow cannot avoid (its flow entry).
    pub fn lookup_floor(map: BorrowedFd, key: &[u8]) -> RawProgram {
        let mut program = lookup(map, key, -(key.len() as i16));
        program.extend(exit_with(XDP_PASS));
        Self::load(BPF_PROG_TYPE_XDP, &program, "bench_floor_get")
    }

    /// XDP: one update of `key` with `value` in `map`, what a new flow
    /// cannot avoid (recording it).
    pub fn update_floor(map: BorrowedFd, key: &[u8], value: &[u8]) -> RawProgram {
        let key_at = -(key.len() as i16);
        let value_at = key_at - value.len() as i16;
        let mut program = store_bytes(key_at, key);
        program.extend(store_bytes(value_at, value));
        program.extend(load_map(R1, map));
        program.extend(stack_pointer(R2, key_at));
        program.extend(stack_pointer(R3, value_at));
        program.push(mov_imm(R4, 0));
        program.push(call(BPF_FUNC_MAP_UPDATE_ELEM));
        program.extend(exit_with(XDP_PASS));
        Self::load(BPF_PROG_TYPE_XDP, &program, "bench_floor_put")
    }

    /// TC: what a reply cannot avoid: the two lookups that find its flow
    /// (`first_key` in `first`, then `second_key` in `second`) and the two
    /// transport checksum updates (address, then port) at `check_offset`,
    /// by helper because only the kernel knows the checksum's state.
    pub fn reply_floor(
        (first, first_key): (BorrowedFd, &[u8]),
        (second, second_key): (BorrowedFd, &[u8]),
        check_offset: i32,
    ) -> RawProgram {
        let mut program = vec![mov_reg(R6, R1)];
        program.extend(lookup(first, first_key, -(first_key.len() as i16)));
        program.extend(lookup(second, second_key, -(second_key.len() as i16)));
        for flags in [BPF_F_PSEUDO_HDR, 2] {
            program.extend([
                mov_reg(R1, R6),
                mov_imm(R2, check_offset),
                mov_imm(R3, 0),
                mov_imm(R4, 0),
                mov_imm(R5, flags),
                call(BPF_FUNC_L4_CSUM_REPLACE),
            ]);
        }
        program.extend(exit_with(TC_ACT_OK));
        Self::load(BPF_PROG_TYPE_SCHED_CLS, &program, "bench_floor_tc")
    }

    fn load(prog_type: u32, program: &[u64], name: &'static str) -> RawProgram {
        let fd = load_program(prog_type, program, name)
            .unwrap_or_else(|error| panic!("BPF_PROG_LOAD of {name}: {error}"));
        let expected_return = match prog_type {
            BPF_PROG_TYPE_XDP => XDP_PASS,
            _ => TC_ACT_OK,
        } as u32;
        RawProgram {
            fd,
            expected_return,
            name,
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
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {}: {error}", self.name));
        assert_eq!(
            outcome.return_value, self.expected_return,
            "{} returned something else",
            self.name
        );
        Duration::from_nanos(u64::from(outcome.duration_ns))
    }
}
