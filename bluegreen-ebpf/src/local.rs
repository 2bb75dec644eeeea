//! cgroup socket-address hooks: a host-local client that connects (or
//! sends) to a VIP is sent to a backend chosen by the same rules as the
//! XDP path, at connect time, so no program runs per packet afterwards;
//! `getpeername` and `recvmsg` show it the VIP again.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use bluegreen_common::{
    FAMILY_IPV4, FlowKey, IPPROTO_TCP, IPPROTO_UDP, LocalSettings, LocalSocket, LocalSocketKey,
    ServiceKey, TrafficCounters, flow_hash, local_client_port, new_flow_color, traffic_index,
};

use crate::maps::{
    BG_LOCAL, BG_LOCAL_SOCKS, BG_SERVICES, count_traffic, in_preview, pool_backend,
    port_has_service, vip_may_match,
};

/// Why a hook left an address alone: the socket is not one bluegreen
/// steers (or, for the restoring hooks, was not sent anywhere by it).
pub struct NotOurs;

/// The address and port a hook sees (the destination of a connect or
/// send, the source of a received datagram, the peer of `getpeername`),
/// as wire bytes.
#[inline(always)]
fn user_endpoint(ctx: &SockAddrContext, family: u8) -> ([u8; 16], [u8; 2]) {
    // SAFETY: the kernel passes a valid context for the program's lifetime.
    let addr = unsafe { &*ctx.sock_addr };
    let mut wire = [0u8; 16];
    if family == FAMILY_IPV4 {
        wire[..4].copy_from_slice(&addr.user_ip4.to_ne_bytes());
    } else {
        for (at, word) in addr.user_ip6.iter().enumerate() {
            wire[at * 4..at * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    // The port is in network order in the low 16 bits.
    (wire, (addr.user_port as u16).to_ne_bytes())
}

#[inline(always)]
fn set_user_endpoint(ctx: &SockAddrContext, family: u8, wire: &[u8; 16], port: [u8; 2]) {
    let word = |at: usize| u32::from_ne_bytes([wire[at], wire[at + 1], wire[at + 2], wire[at + 3]]);
    // SAFETY: as above; these hooks may write the user address and port
    // (as whole 32-bit words, which is how these stores are made).
    let addr = unsafe { &mut *ctx.sock_addr };
    if family == FAMILY_IPV4 {
        addr.user_ip4 = word(0);
    } else {
        addr.user_ip6 = [word(0), word(4), word(8), word(12)];
    }
    addr.user_port = u32::from(u16::from_ne_bytes(port));
}

/// Local rewriting's settings, if it is on and `ctx`'s socket lives in the
/// network namespace `up` ran in: no socket elsewhere is ever touched.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> Result<&'static LocalSettings, NotOurs> {
    let local = BG_LOCAL.get(0).ok_or(NotOurs)?;
    // SAFETY: a helper that only reads the context.
    if local.netns_cookie == 0
        || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != local.netns_cookie
    {
        return Err(NotOurs);
    }
    Ok(local)
}

/// connect and unconnected sendmsg: a socket of the namespace `up` ran in,
/// addressed to a service's VIP and port, goes to the backend a new flow
/// from this host would get. Anything else passes untouched.
#[inline(always)]
pub fn try_redirect(ctx: &SockAddrContext, family: u8) -> Result<(), NotOurs> {
    // SAFETY: as in `user_endpoint`.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(NotOurs);
    }
    let (vip, vip_port) = user_endpoint(ctx, family);
    if !port_has_service(u16::from_be_bytes(vip_port)) || !vip_may_match(&vip, vip_port) {
        return Err(NotOurs);
    }
    let local = ours(ctx)?;
    let service_key = ServiceKey {
        vip,
        port: vip_port,
        proto,
        family,
    };
    // SAFETY: not preallocated, so the element stays whole for this RCU
    // section (see the XDP path).
    let service = unsafe { BG_SERVICES.get(service_key) }.ok_or(NotOurs)?;
    // SAFETY: a helper that only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let client = if family == FAMILY_IPV4 {
        local.source4
    } else {
        local.source6
    };
    let hash = flow_hash(&FlowKey {
        client,
        server: vip,
        client_port: local_client_port(cookie),
        server_port: vip_port,
        proto,
        family,
        reserved: [0; 2],
    });
    let color = new_flow_color(service, hash, || {
        in_preview(service.counter_slot, family, &client)
    });
    let member = pool_backend(service.pool(color), hash).ok_or(NotOurs)?;
    let backend = member.endpoint;
    let key = LocalSocketKey {
        cookie,
        backend: backend.addr,
        backend_port: backend.port,
        reserved: [0; 6],
    };
    let socket = LocalSocket {
        vip,
        vip_port,
        color,
        proto,
        counter_slot: service.counter_slot,
    };
    // Without its entry the socket would still work, but show the backend
    // as its peer and escape counting and resets: it is better refused
    // the VIP (as before bluegreen) than half-managed.
    // An unconnected UDP socket comes through here with every datagram:
    // only its first to a backend is a new flow.
    let known = BG_LOCAL_SOCKS.get_ptr(key).is_some();
    BG_LOCAL_SOCKS.insert(key, socket, 0).map_err(|_| NotOurs)?;
    set_user_endpoint(ctx, family, &backend.addr, backend.port);
    if known {
        return Ok(());
    }
    // A new flow of its color and of its backend; its packets go straight
    // to the backend and are counted nowhere.
    count_traffic(
        traffic_index(service.counter_slot, color),
        member.counter_slot,
        TrafficCounters {
            new_flows: 1,
            ..TrafficCounters::default()
        },
    );
    Ok(())
}

/// getpeername and recvmsg: a backend's address, seen by a socket that was
/// sent there through a VIP, reads as that VIP.
#[inline(always)]
pub fn try_restore(ctx: &SockAddrContext, family: u8) -> Result<(), NotOurs> {
    ours(ctx)?;
    let (backend, backend_port) = user_endpoint(ctx, family);
    // SAFETY: a helper that only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = LocalSocketKey {
        cookie,
        backend,
        backend_port,
        reserved: [0; 6],
    };
    // SAFETY: LRU values may be recycled; the two fields are copied at once.
    let socket = unsafe { BG_LOCAL_SOCKS.get(key) }.ok_or(NotOurs)?;
    let (vip, vip_port) = (socket.vip, socket.vip_port);
    set_user_endpoint(ctx, family, &vip, vip_port);
    Ok(())
}
