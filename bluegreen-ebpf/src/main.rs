//! bluegreen's kernel side: an XDP program that steers packets for a
//! service VIP to the active color's backend, and a TC egress program that
//! makes the backend's replies look as if they came from the VIP.
#![no_std]
#![no_main]

mod egress;
mod ingress;
mod maps;
mod packet;
mod parse;
mod runtime;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn bluegreen_ingress(ctx: XdpContext) -> u32 {
    match ingress::try_ingress(&ctx) {
        Ok(()) => {}
        Err(reason) => maps::count_passed(reason),
    }
    // Whatever happened, the kernel delivers or routes the packet: the
    // program only ever rewrites, it never drops.
    xdp_action::XDP_PASS
}

#[classifier]
pub fn bluegreen_egress(ctx: TcContext) -> i32 {
    // Replies that are not ours, or that cannot be parsed, go out as they are.
    let _ = egress::try_egress(&ctx);
    TC_ACT_OK
}
