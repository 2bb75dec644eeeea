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

use bluegreen_common::VIP_FILTER_WORDS;

use crate::sys::{
    BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP, TestRunOutcome, instruction, load_program,
    object_pin, test_run,
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
const R7: u8 = 7;
const R8: u8 = 8;
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

/// `dst = *(size *)(src + offset)` (BPF_LDX | BPF_MEM), `size` one of
/// the constants below.
fn load(size: u8, dst: u8, src: u8, offset: i16) -> u64 {
    instruction(0x61 | size, dst, src, offset, 0)
}

const WORD: u8 = 0x00;
const HALF: u8 = 0x08;
const BYTE: u8 = 0x10;

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

/// `bpf_map_lookup_elem(map, &index)` on an array, `index` in `register`,
/// then a load of the element's first word if there is one: what testing a
/// bit of a bitmap costs.
fn test_word(map: BorrowedFd, register: u8, offset: i16) -> Vec<u64> {
    let mut program = vec![instruction(0x63, R10, register, offset, 0)];
    program.extend(load_map(R1, map));
    program.extend(stack_pointer(R2, offset));
    program.push(call(BPF_FUNC_MAP_LOOKUP_ELEM));
    // if r0 == 0 skip the load (BPF_JMP | BPF_JEQ | BPF_K).
    program.push(instruction(0x15, 0, 0, 1, 0));
    program.push(load(WORD, R3, 0, 0));
    program
}

/// A jump that leaves the program (BPF_JMP `code` of `register` against
/// `value`): its offset is filled in by [`leave_with`].
fn leave_if(code: u8, register: u8, value: i32) -> u64 {
    instruction(code, register, 0, LEAVE, value)
}

/// The offset [`leave_if`] marks its jumps with; no real jump here goes
/// that far back.
const LEAVE: i16 = i16::MIN;

/// `program`, then `return verdict`, with every [`leave_if`] jump aimed at
/// that return.
fn leave_with(mut program: Vec<u64>, verdict: i32) -> Vec<u64> {
    let end = program.len();
    for (at, instruction) in program.iter_mut().enumerate() {
        if (*instruction >> 16) as u16 == LEAVE as u16 {
            let offset = (end - at - 1) as u16;
            *instruction = *instruction & !(0xffff << 16) | u64::from(offset) << 16;
        }
    }
    program.extend(exit_with(verdict));
    program
}

/// The checks an XDP program must make before it may read an IPv4 TCP or
/// UDP frame's ports at fixed offsets: 54 bytes there, IPv4 without
/// options, not a fragment, TCP or UDP; any other frame leaves. After
/// them, r6 points at the frame and r8 holds its protocol.
fn plain_ipv4_checks() -> Vec<u64> {
    // struct xdp_md: data at 0, data_end at 4.
    vec![
        load(WORD, R6, R1, 0),
        load(WORD, R7, R1, 4),
        mov_reg(R3, R6),
        instruction(0x07, R3, 0, 0, 54),
        // if r3 > r7 (BPF_JMP | BPF_JGT | BPF_X).
        instruction(0x2d, R3, R7, LEAVE, 0),
        load(HALF, R3, R6, 12),
        // The ethertype as loaded, little-endian: 0x0800 in network order.
        leave_if(0x55, R3, 0x0008),
        load(BYTE, R3, R6, 14),
        leave_if(0x55, R3, 0x45),
        load(HALF, R3, R6, 20),
        // The fragment offset and "more fragments", as loaded.
        instruction(0x57, R3, 0, 0, 0xff3f),
        leave_if(0x55, R3, 0),
        load(BYTE, R8, R6, 23),
        // TCP goes on; then anything but UDP leaves (BPF_JEQ, BPF_JNE).
        instruction(0x15, R8, 0, 1, 6),
        leave_if(0x55, R8, 17),
    ]
}

/// `*(size *)(dst + offset) = src` (BPF_STX | BPF_MEM).
fn store(size: u8, dst: u8, offset: i16, src: u8) -> u64 {
    instruction(0x63 | size, dst, src, offset, 0)
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

    /// XDP, on an untagged IPv4 frame: what a packet for no service cannot
    /// avoid in a design with many services: the frame checks (see
    /// [`plain_ipv4_checks`]), reading its destination port and testing
    /// that port's bit in `ports` (bluegreen's port bitmap); with
    /// `addresses`, also reading its destination address and testing a bit
    /// it selects there (no hash: a floor, not a filter).
    pub fn prefilter_floor(ports: BorrowedFd, addresses: Option<BorrowedFd>) -> RawProgram {
        let mut program = plain_ipv4_checks();
        program.extend([
            load(HALF, R7, R6, 36),
            load(WORD, R8, R6, 30),
            // r7 = be16 r7 (BPF_ALU | BPF_END | BPF_TO_BE), then r7 >>= 5.
            instruction(0xdc, R7, 0, 0, 16),
            instruction(0x77, R7, 0, 0, 5),
        ]);
        program.extend(test_word(ports, R7, -4));
        if let Some(addresses) = addresses {
            let mask = VIP_FILTER_WORDS as i32 - 1;
            program.push(instruction(0x57, R8, 0, 0, mask));
            program.extend(test_word(addresses, R8, -8));
        }
        let name = match addresses {
            Some(_) => "bench_floor_vip",
            None => "bench_floor_port",
        };
        Self::load(BPF_PROG_TYPE_XDP, &leave_with(program, XDP_PASS), name)
    }

    /// XDP: a whole established-flow path as an IPv4-only design could do
    /// it at the least: the frame checks (see [`plain_ipv4_checks`]), its
    /// 16-byte flow key (client and server address and port, protocol)
    /// copied from the frame, the lookup in `flows`, and the backend's
    /// address and port, read at `backend` and `backend + 16` in the value,
    /// written over the destination's. No checksum arithmetic: the floor
    /// leaves out what it can, so a path above it is above it for certain.
    pub fn established_path_floor(flows: BorrowedFd, backend: i16) -> RawProgram {
        let mut program = plain_ipv4_checks();
        // The frame's addresses and ports (bytes 26 to 38) are the key's
        // first twelve bytes, in its order; the protocol, then zeros, its
        // last four.
        for (at, from) in [(-16, 26), (-12, 30), (-8, 34)] {
            program.extend([load(WORD, R3, R6, from), store(WORD, R10, at, R3)]);
        }
        program.push(store(WORD, R10, -4, R8));
        program.extend(load_map(R1, flows));
        program.extend(stack_pointer(R2, -16));
        program.push(call(BPF_FUNC_MAP_LOOKUP_ELEM));
        program.push(leave_if(0x15, 0, 0));
        program.extend([
            load(WORD, R3, 0, backend),
            store(WORD, R6, 30, R3),
            load(HALF, R3, 0, backend + 16),
            store(HALF, R6, 36, R3),
        ]);
        Self::load(
            BPF_PROG_TYPE_XDP,
            &leave_with(program, XDP_PASS),
            "bench_floor_path",
        )
    }

    /// XDP: one lookup of `key` in `map`, what a packet of an established
    /// flow cannot avoid (its flow entry).
    pub fn lookup_floor(map: BorrowedFd, key: &[u8]) -> RawProgram {
        let mut program = lookup(map, key, -(key.len() as i16));
        program.extend(exit_with(XDP_PASS));
        Self::load(BPF_PROG_TYPE_XDP, &program, "bench_floor_get")
    }

    /// XDP: what a new flow cannot avoid: finding its service (a lookup of
    /// `service_key` in `services`: its color and pools), then recording
    /// the flow (an update of `key` with `value` in `flows`).
    pub fn new_flow_floor(
        (services, service_key): (BorrowedFd, &[u8]),
        flows: BorrowedFd,
        key: &[u8],
        value: &[u8],
    ) -> RawProgram {
        let service_at = -(service_key.len() as i16);
        let key_at = service_at - key.len() as i16;
        let value_at = key_at - value.len() as i16;
        let mut program = lookup(services, service_key, service_at);
        program.extend(store_bytes(key_at, key));
        program.extend(store_bytes(value_at, value));
        program.extend(load_map(R1, flows));
        program.extend(stack_pointer(R2, key_at));
        program.extend(stack_pointer(R3, value_at));
        program.push(mov_imm(R4, 0));
        program.push(call(BPF_FUNC_MAP_UPDATE_ELEM));
        program.extend(exit_with(XDP_PASS));
        Self::load(BPF_PROG_TYPE_XDP, &program, "bench_floor_new")
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

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs the program once on `frame`: the frame as it leaves.
    pub fn run_once(&self, frame: &[u8]) -> Vec<u8> {
        let mut output = vec![0; frame.len()];
        let outcome = self.test_run(frame, Some(&mut output), 1);
        output.truncate(outcome.output_len);
        output
    }

    /// Runs the program `repeat` times on `frame`; the kernel's average.
    pub fn bench(&self, frame: &[u8], repeat: u32) -> Duration {
        let outcome = self.test_run(frame, None, repeat);
        Duration::from_nanos(u64::from(outcome.duration_ns))
    }

    /// `BPF_PROG_TEST_RUN`, checked to have returned the program's verdict.
    fn test_run(&self, frame: &[u8], output: Option<&mut [u8]>, repeat: u32) -> TestRunOutcome {
        let outcome = test_run(self.fd.as_fd(), frame, output, repeat)
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN of {}: {error}", self.name));
        assert_eq!(
            outcome.return_value, self.expected_return,
            "{} returned something else",
            self.name
        );
        outcome
    }
}
