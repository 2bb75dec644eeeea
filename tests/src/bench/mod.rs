//! `cargo xtask bench`: per-packet cost in the kernel, throughput and
//! latency end to end, and switch time, each against a baseline measured
//! in the same run; and a timeline of who answers through a switch, a
//! rollback and a weighted shift, drawn as a chart; what pools of
//! backends cost; how long a fleet of hosts takes to converge; what
//! metric analysis costs a switch and the daemon; how long a switch
//! that first starts the idle color takes, and where its time goes; and
//! what shadowing costs the traffic it copies.

pub mod analysis;
pub mod backend;
pub mod chart;
pub mod cpu;
pub mod fleet;
pub mod kernel_cost;
pub mod lab;
pub mod lifecycle;
pub mod local;
pub mod machine;
pub mod metrics_ports;
pub mod pools;
pub mod raw;
pub mod report;
pub mod shadow;
pub mod stats;
pub mod switch_time;
pub mod targets;
pub mod throughput;
pub mod timeline;

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C only raises a flag: the benchmark then unwinds normally, so every
/// namespace, pin and link is removed by the destructors that own them.
pub fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

#[derive(Debug)]
pub struct Interrupted;

pub fn check() -> Result<(), Interrupted> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(Interrupted)
    } else {
        Ok(())
    }
}
