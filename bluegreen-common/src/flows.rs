//! The flow table (`BG_FLOWS`): each connection's color and backend, the
//! hash that places a new one, and the timeouts (`BG_SETTINGS`) after which
//! an entry no longer counts.

use crate::{
    endpoint::{Endpoint, FAMILY_IPV4},
    pools::BackendKey,
    services::ServiceKey,
};

/// Default capacity of the flow table (and of its reply-direction twin).
pub const DEFAULT_FLOW_CAPACITY: u32 = 262_144;

/// Key of the flow table (client to VIP), and how the egress program reads
/// a reply (client to backend): the connection as the client, or the
/// backend, sees it.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    pub client_port: [u8; 2],
    pub server_port: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub reserved: [u8; 2],
}

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// `bpf_jiffies64()` of the last packet: the one clock the verifier
    /// inlines (any other clock read is a helper call, several times the
    /// cost of the rest of the fast path), and fine for timeouts in seconds.
    pub last_seen: u64,
    /// The backend this flow was sent to: kept even if the service's backend
    /// for that color is replaced later, so the connection is never cut.
    pub backend: Endpoint,
    pub generation: u32,
    pub color: u8,
    /// Set once a FIN or RST was seen: the entry then expires much sooner.
    pub closing: u8,
    /// The service's counter slot, which also indexes its generation in
    /// the generations array: the fast path needs no services lookup.
    pub counter_slot: u16,
    /// The backend's counter slot
    /// ([`PoolBackend::counter_slot`](crate::pools::PoolBackend::counter_slot)).
    pub backend_counter_slot: u32,
}

impl FlowKey {
    /// The backend a reply-direction key (client to backend) names.
    #[inline(always)]
    pub fn backend_key(&self) -> BackendKey {
        BackendKey {
            addr: self.server,
            port: self.server_port,
            proto: self.proto,
            family: self.family,
        }
    }

    /// The service a client-to-VIP flow belongs to.
    #[inline(always)]
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            vip: self.server,
            port: self.server_port,
            proto: self.proto,
            family: self.family,
        }
    }
}

/// A stable hash of a flow's addresses and ports, so a weighted split gives
/// each flow one color (murmur3's mixing, over the key's 32-bit words).
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut hash: u32 = 0x9747_b28c;
    let mut mix = |word: u32| {
        let mut k = word.wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        hash ^= k;
        hash = hash
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    };
    let word = |bytes: &[u8; 16], at: usize| {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    // An IPv4 key's other twelve address bytes are zero: mixing them in
    // would cost a SYN six more rounds and tell flows apart no better.
    let address_bytes = if key.family == FAMILY_IPV4 { 4 } else { 16 };
    let mut at = 0;
    while at < address_bytes {
        mix(word(&key.client, at));
        mix(word(&key.server, at));
        at += 4;
    }
    mix(u32::from_le_bytes([
        key.client_port[0],
        key.client_port[1],
        key.server_port[0],
        key.server_port[1],
    ]));
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

/// Flow lifetimes in seconds, as the operator configures them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_idle_secs: u64,
    pub tcp_closing_secs: u64,
    pub udp_idle_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_idle_secs: 3600,
            tcp_closing_secs: 10,
            udp_idle_secs: 30,
        }
    }
}

/// Flow lifetimes in jiffies, the dataplane's clock. Kept in a one-entry
/// array map so that the CLI judges expiry exactly as the dataplane does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub tcp_idle_timeout: u64,
    pub tcp_closing_timeout: u64,
    pub udp_idle_timeout: u64,
    /// The kernel's HZ, as measured by the loader, to convert back.
    pub jiffies_per_second: u64,
}

impl Settings {
    pub fn new(timeouts: &Timeouts, jiffies_per_second: u64) -> Self {
        Self {
            tcp_idle_timeout: timeouts.tcp_idle_secs * jiffies_per_second,
            tcp_closing_timeout: timeouts.tcp_closing_secs * jiffies_per_second,
            udp_idle_timeout: timeouts.udp_idle_secs * jiffies_per_second,
            jiffies_per_second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowEntry>(), 8 + 20 + 4 + 1 + 1 + 2 + 4);
        assert_eq!(size_of::<Settings>(), 32);
    }
}
