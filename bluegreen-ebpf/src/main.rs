//! bluegreen's kernel side: an XDP program that steers packets for a
//! service VIP to the active color's backend, and a TC egress program that
//! makes the backend's replies look as if they came from the VIP; cgroup
//! socket-address programs do the same for clients on the host itself.
#![no_std]
#![no_main]

mod egress;
mod ingress;
mod local;
mod maps;
mod packet;
mod parse;
mod rewrite;
mod runtime;
mod shadow;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use bluegreen_common::{FAMILY_IPV4, FAMILY_IPV6};

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

/// The verdict of every socket-address hook: allow. They only ever
/// rewrite an address; refusing a connect or a send is not theirs to do.
const SOCK_ADDR_ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn bluegreen_connect4(ctx: SockAddrContext) -> i32 {
    let _ = local::try_redirect(&ctx, FAMILY_IPV4);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn bluegreen_connect6(ctx: SockAddrContext) -> i32 {
    let _ = local::try_redirect(&ctx, FAMILY_IPV6);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn bluegreen_sendmsg4(ctx: SockAddrContext) -> i32 {
    let _ = local::try_redirect(&ctx, FAMILY_IPV4);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn bluegreen_sendmsg6(ctx: SockAddrContext) -> i32 {
    let _ = local::try_redirect(&ctx, FAMILY_IPV6);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn bluegreen_recvmsg4(ctx: SockAddrContext) -> i32 {
    let _ = local::try_restore(&ctx, FAMILY_IPV4);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn bluegreen_recvmsg6(ctx: SockAddrContext) -> i32 {
    let _ = local::try_restore(&ctx, FAMILY_IPV6);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn bluegreen_getpeername4(ctx: SockAddrContext) -> i32 {
    let _ = local::try_restore(&ctx, FAMILY_IPV4);
    SOCK_ADDR_ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn bluegreen_getpeername6(ctx: SockAddrContext) -> i32 {
    let _ = local::try_restore(&ctx, FAMILY_IPV6);
    SOCK_ADDR_ALLOW
}
