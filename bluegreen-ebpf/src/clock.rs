//! The dataplane's clock for userspace: flow timestamps are
//! `bpf_jiffies64()`, which userspace cannot read directly, so the loader
//! runs this program once with `BPF_PROG_TEST_RUN` and reads the value it
//! stored at the start of the packet. A separate object, so that reading
//! the clock never creates the dataplane's maps.
#![no_std]
#![no_main]

#[path = "runtime.rs"]
mod runtime;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bluegreen_clock(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + core::mem::size_of::<u64>() <= ctx.data_end() {
        // SAFETY: the bounds were checked just above; packet data has no
        // alignment guarantee, hence the unaligned write.
        unsafe { (start as *mut u64).write_unaligned(bpf_jiffies64()) };
    }
    xdp_action::XDP_PASS
}
