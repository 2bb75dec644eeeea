//! Host-local clients: the settings (`BG_LOCAL`) and the socket map
//! (`BG_LOCAL_SOCKS`) with which the cgroup programs send a local socket
//! to a VIP's backend and show it the VIP again.

/// Capacity of the local-socket map: sockets of host-local clients that
/// are (or were) connected to a backend through a VIP.
pub const LOCAL_SOCKET_CAPACITY: u32 = 65_536;

/// Value of `BG_LOCAL`, written by `up`: whose sockets the cgroup programs
/// rewrite, and which address stands for a local client when preview
/// prefixes are looked up (its source address is not chosen yet when it
/// connects).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalSettings {
    /// `SO_NETNS_COOKIE` of the network namespace `up` ran in; 0 turns
    /// local rewriting off.
    pub netns_cookie: u64,
    /// The interface's IPv4 address (first four bytes) and IPv6 address.
    pub source4: [u8; 16],
    pub source6: [u8; 16],
}

/// Key of `BG_LOCAL_SOCKS`: a socket (its `bpf_get_socket_cookie`, which
/// the kernel never reuses) and the backend it was sent to; one socket may
/// reach several backends (unconnected UDP).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalSocketKey {
    pub cookie: u64,
    pub backend: [u8; 16],
    pub backend_port: [u8; 2],
    pub reserved: [u8; 6],
}

/// Value of `BG_LOCAL_SOCKS`: the VIP the socket asked for, to show it
/// again as the peer, and the color and service it went to, so that
/// userspace can count and reset local connections per color.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalSocket {
    pub vip: [u8; 16],
    pub vip_port: [u8; 2],
    pub color: u8,
    pub proto: u8,
    pub counter_slot: u32,
}

/// The client port that stands in for a local socket's in the flow hash:
/// connect runs before the kernel picks the port, so the socket's cookie
/// (unique per socket) spreads sockets over the weighted split and the
/// pool as ports spread remote flows.
#[inline(always)]
pub fn local_client_port(cookie: u64) -> [u8; 2] {
    let folded = cookie ^ (cookie >> 16) ^ (cookie >> 32) ^ (cookie >> 48);
    (folded as u16).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<LocalSettings>(), 8 + 16 + 16);
        assert_eq!(size_of::<LocalSocketKey>(), 8 + 16 + 2 + 6);
        assert_eq!(size_of::<LocalSocket>(), 16 + 2 + 1 + 1 + 4);
    }
}
