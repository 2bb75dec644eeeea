//! The dataplane's clock, read from userspace.
//!
//! Flow timestamps are `bpf_jiffies64()`, the only clock read the verifier
//! inlines. Userspace has no direct view of jiffies, so it asks the kernel
//! the same way: a four-instruction XDP program that stores
//! `bpf_jiffies64()` into its packet, run once with `BPF_PROG_TEST_RUN`.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{
    error::{Error, Result},
    sys::{BPF_PROG_TYPE_XDP, instruction, load_program, test_run},
};

const BPF_FUNC_JIFFIES64: i32 = 118;

/// r6 = ctx; r0 = jiffies64(); r2 = ctx->data; r3 = ctx->data_end;
/// if r2 + 8 <= r3 { *(u64 *)r2 = r0 }; return XDP_PASS.
const PROGRAM: [u64; 10] = [
    instruction(0xbf, 6, 1, 0, 0),
    instruction(0x85, 0, 0, 0, BPF_FUNC_JIFFIES64),
    instruction(0x61, 2, 6, 0, 0),
    instruction(0x61, 3, 6, 4, 0),
    instruction(0xbf, 4, 2, 0, 0),
    instruction(0x07, 4, 0, 0, 8),
    instruction(0x2d, 4, 3, 1, 0),
    instruction(0x7b, 2, 0, 0, 0),
    instruction(0xb7, 0, 0, 0, 2),
    instruction(0x95, 0, 0, 0, 0),
];

/// The loaded clock program, shared by every reading in this process.
fn program() -> Result<&'static OwnedFd> {
    static PROGRAM_FD: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = PROGRAM_FD.get() {
        return Ok(fd);
    }
    let fd = load_program(BPF_PROG_TYPE_XDP, &PROGRAM, "bluegreen_clock")
        .map_err(Error::ebpf("cannot load the clock program"))?;
    Ok(PROGRAM_FD.get_or_init(|| fd))
}

/// The dataplane's clock now, in jiffies.
pub fn now() -> Result<u64> {
    let input = [0u8; 64];
    let mut output = [0u8; 64];
    test_run(program()?.as_fd(), &input, Some(&mut output), 1)
        .map_err(Error::ebpf("cannot read the kernel's jiffies"))?;
    let mut jiffies = [0u8; 8];
    jiffies.copy_from_slice(&output[..8]);
    Ok(u64::from_ne_bytes(jiffies))
}

/// The kernel's HZ, measured once per process (100 ms) and snapped to the
/// values Linux is built with.
pub fn jiffies_per_second() -> Result<u64> {
    static HZ: OnceLock<u64> = OnceLock::new();
    if let Some(hz) = HZ.get() {
        return Ok(*hz);
    }
    let started = Instant::now();
    let first = now()?;
    std::thread::sleep(Duration::from_millis(100));
    let ticks = now()? - first;
    let measured = ticks as f64 / started.elapsed().as_secs_f64();
    let hz = [100u64, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| {
            let distance = |hz: &u64| (*hz as f64 - measured).abs();
            distance(a).total_cmp(&distance(b))
        })
        .expect("a non-empty list");
    Ok(*HZ.get_or_init(|| hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jiffies_advance_at_the_measured_rate() {
        let hz = jiffies_per_second().expect("calibrate (needs root)");
        let before = now().expect("read jiffies");
        std::thread::sleep(Duration::from_millis(300));
        let elapsed = now().expect("read jiffies") - before;
        let expected = hz * 3 / 10;
        assert!(
            elapsed.abs_diff(expected) <= expected / 5 + 2,
            "{elapsed} jiffies in 300 ms at HZ {hz}"
        );
    }
}
