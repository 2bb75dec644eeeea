//! Clocks: the dataplane's (jiffies, read from userspace; and the
//! monotonic clock of the shadow capture) and the wall clock the state file and the daemon record switch times in.
//!
//! Flow timestamps are `bpf_jiffies64()`, the only clock read the verifier
//! inlines. Userspace has no direct view of jiffies, so it asks the kernel
//! the same way: the tiny `bluegreen-clock` XDP program stores
//! `bpf_jiffies64()` into its packet, run once with `BPF_PROG_TEST_RUN`.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use bluegreen_common::program_names;

use crate::error::{Error, Result};

/// The clock object, embedded at build time by `build.rs`.
static CLOCK_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bluegreen-clock"));

/// The loaded clock program, shared by every reading in this process.
fn program() -> Result<&'static Mutex<Ebpf>> {
    static LOADED: OnceLock<Mutex<Ebpf>> = OnceLock::new();
    if let Some(loaded) = LOADED.get() {
        return Ok(loaded);
    }
    let mut ebpf =
        Ebpf::load(CLOCK_OBJECT).map_err(Error::ebpf("cannot load the clock program"))?;
    let program: &mut Xdp = ebpf
        .program_mut(program_names::CLOCK)
        .ok_or_else(|| Error::Ebpf {
            action: "cannot load the clock program".to_owned(),
            source: format!("the clock object has no program {}", program_names::CLOCK).into(),
        })?
        .try_into()
        .map_err(Error::ebpf("the clock program is not XDP"))?;
    program
        .load()
        .map_err(Error::ebpf("the kernel refused the clock program"))?;
    Ok(LOADED.get_or_init(|| Mutex::new(ebpf)))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns()` reads,
/// so userspace can age what the shadow capture timestamped.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec it is given; CLOCK_MONOTONIC always
    // exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The dataplane's clock now, in jiffies.
pub fn now() -> Result<u64> {
    let ebpf = program()?
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let program: &Xdp = ebpf
        .program(program_names::CLOCK)
        .expect("loaded above")
        .try_into()
        .expect("checked above");
    let input = [0u8; 64];
    let mut output = [0u8; 64];
    program
        .test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut output),
            ..Default::default()
        })
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
    // The first reading loads the program: start the timer after it.
    let first = now()?;
    let started = Instant::now();
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

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is set
/// before it): when a switch happened, for the state file and the daemon.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS UTC` of a wall-clock time in Unix milliseconds: when a color
/// entered a state, or an action is due, for an operator's eye (the JSON
/// has the number).
pub fn utc_time_of_day(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
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
