//! Types shared by the eBPF programs and the userspace loader.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields so that
//! both sides agree on the layout byte for byte, and so that no uninitialised
//! padding ever ends up inside a hash key. Addresses and ports are stored as
//! they travel on the wire (network byte order, as raw bytes); counters and
//! timestamps are host-order integers that never leave the machine.
#![no_std]

pub mod checksum;
#[cfg(feature = "user")]
pub mod model;
pub mod wire;

/// Bumped whenever any map's key or value layout changes. Pins live under a
/// directory named after it, so a loader never reads maps of another layout.
pub const LAYOUT_VERSION: u32 = 1;

/// Capacity of the services map and of the counter slots that go with it.
pub const MAX_SERVICES: u32 = 16384;

/// Default capacity of the flow table (and of its reply-direction twin).
pub const DEFAULT_FLOW_CAPACITY: u32 = 262_144;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Address family markers used in keys (not the kernel's AF_* values, which
/// differ between platforms).
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const COLOR_BLUE: u8 = 0;
pub const COLOR_GREEN: u8 = 1;

/// Number of 32-bit words in the VIP port prefilter bitmap (one bit per port).
pub const VIP_PORT_WORDS: u32 = 65536 / 32;

/// Map names, as declared in the eBPF object and pinned in bpffs.
pub mod map_names {
    pub const SERVICES: &str = "BG_SERVICES";
    pub const FLOWS: &str = "BG_FLOWS";
    pub const REPLIES: &str = "BG_REPLIES";
    pub const TRAFFIC: &str = "BG_TRAFFIC";
    pub const PASSED: &str = "BG_PASSED";
    pub const SETTINGS: &str = "BG_SETTINGS";
    pub const VIP_PORTS: &str = "BG_VIP_PORTS";
    pub const PREVIEW: &str = "BG_PREVIEW";
    pub const ALL: [&str; 8] = [
        SERVICES, FLOWS, REPLIES, TRAFFIC, PASSED, SETTINGS, VIP_PORTS, PREVIEW,
    ];
}

/// Program names, as declared in the eBPF object.
pub mod program_names {
    pub const INGRESS: &str = "bluegreen_ingress";
    pub const EGRESS: &str = "bluegreen_egress";
}

/// An address and port as they appear on the wire. IPv4 addresses occupy the
/// first four bytes of `addr`; the rest stays zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub reserved: [u8; 2],
}

/// Key of the services map: the virtual address clients connect to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// Value of the services map. Userspace always replaces it whole, so a packet
/// sees either the state before a switch or the state after it, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Indexed by color: `backends[COLOR_BLUE]`, `backends[COLOR_GREEN]`.
    pub backends: [Endpoint; 2],
    /// Bumped by a forced switch: flows recorded under an older generation
    /// follow the active color instead of the one they started on.
    pub generation: u32,
    /// Index of this service's counters in the traffic map
    /// (`slot * 2 + color`).
    pub counter_slot: u32,
    pub active: u8,
    pub previous: u8,
    /// Percentage (0..=99) of new flows sent to the idle color: a weighted
    /// shift in progress. 0 sends every new flow to the active color.
    pub weight: u8,
    /// `SERVICE_HAS_PREVIEW`: look new flows' clients up in the preview
    /// prefixes (skipped otherwise, to keep the lookup off the common path).
    pub flags: u8,
}

pub const SERVICE_HAS_PREVIEW: u8 = 1;

impl ServiceState {
    pub fn backend(&self, color: u8) -> &Endpoint {
        &self.backends[(color & 1) as usize]
    }
}

/// The color a new flow takes: the idle one for preview clients and for
/// the weighted share, the active one otherwise.
#[inline(always)]
pub fn new_flow_color(
    service: &ServiceState,
    key: &FlowKey,
    in_preview: impl FnOnce() -> bool,
) -> u8 {
    let idle = (service.active ^ 1) & 1;
    if service.flags & SERVICE_HAS_PREVIEW != 0 && in_preview() {
        return idle;
    }
    if service.weight != 0 && flow_hash(key) % 100 < u32::from(service.weight) {
        return idle;
    }
    service.active
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
    let mut at = 0;
    while at < 16 {
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

/// Capacity of the preview-prefix trie, across all services.
pub const MAX_PREVIEW_PREFIXES: u32 = 4096;

/// Data of a preview-prefix trie key. The prefix length covers the slot,
/// family and reserved bytes (`PREVIEW_FIXED_BITS`) plus the CIDR's own
/// length, so one trie serves every service and both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreviewPrefix {
    /// The service's counter slot, big-endian so it is matched bit by bit.
    pub slot: [u8; 4],
    pub family: u8,
    pub reserved: [u8; 3],
    pub addr: [u8; 16],
}

pub const PREVIEW_FIXED_BITS: u32 = 64;

/// Key of the flow table (client to VIP) and of the reply table (client to
/// backend): the connection as the client, or the backend, sees it.
#[repr(C)]
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
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet seen.
    pub last_seen_ns: u64,
    /// The backend this flow was sent to: kept even if the service's backend
    /// for that color is replaced later, so the connection is never cut.
    pub backend: Endpoint,
    pub generation: u32,
    pub color: u8,
    /// Set once a FIN or RST was seen: the entry then expires much sooner.
    pub closing: u8,
    pub reserved: [u8; 6],
}

/// Flow lifetimes, in nanoseconds. Kept in a one-entry array map so that the
/// CLI can judge expiry exactly as the dataplane does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub tcp_idle_timeout_ns: u64,
    pub tcp_closing_timeout_ns: u64,
    pub udp_idle_timeout_ns: u64,
}

impl Default for Settings {
    fn default() -> Self {
        const SECOND: u64 = 1_000_000_000;
        Self {
            tcp_idle_timeout_ns: 3600 * SECOND,
            tcp_closing_timeout_ns: 10 * SECOND,
            udp_idle_timeout_ns: 30 * SECOND,
        }
    }
}

impl Settings {
    /// Whether a flow entry still counts at time `now_ns`. A stale entry is
    /// treated exactly as an absent one.
    pub fn is_live(&self, proto: u8, entry: &FlowEntry, now_ns: u64) -> bool {
        let timeout = if proto == IPPROTO_UDP {
            self.udp_idle_timeout_ns
        } else if entry.closing != 0 {
            self.tcp_closing_timeout_ns
        } else {
            self.tcp_idle_timeout_ns
        };
        now_ns.saturating_sub(entry.last_seen_ns) <= timeout
    }
}

/// Per service and color traffic counters (per-CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Why a packet left the ingress program untouched. The value is the index
/// into the passed-packets counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 0,
    /// IP, but not addressed to any service VIP and port.
    NotService = 1,
    /// Truncated or inconsistent headers.
    Malformed = 2,
    /// An IP fragment: rewriting only the first one would break reassembly.
    Fragment = 3,
    /// A header we do not walk over: stacked VLAN tags, an IPv6 routing
    /// header, or more hop-by-hop/destination-options headers than we skip.
    /// (Other IPv6 next headers, such as AH, count as `NotService`.)
    Unsupported = 4,
    /// Addressed to a service but no flow state could be recorded.
    FlowTableFull = 5,
}

impl PassReason {
    pub const COUNT: u32 = 6;
    pub const ALL: [PassReason; Self::COUNT as usize] = [
        Self::NotIp,
        Self::NotService,
        Self::Malformed,
        Self::Fragment,
        Self::Unsupported,
        Self::FlowTableFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::NotService => "not_service",
            Self::Malformed => "malformed",
            Self::Fragment => "fragment",
            Self::Unsupported => "unsupported_header",
            Self::FlowTableFull => "flow_table_full",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte
    // arrays, and spell out their padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceState {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::PreviewPrefix {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceState>(), 2 * 20 + 4 + 4 + 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowEntry>(), 8 + 20 + 4 + 1 + 1 + 6);
        assert_eq!(size_of::<Settings>(), 24);
        assert_eq!(size_of::<TrafficCounters>(), 24);
        assert_eq!(
            size_of::<PreviewPrefix>() as u32 * 8,
            PREVIEW_FIXED_BITS + 128
        );
    }

    #[test]
    fn weighted_split_is_close_to_the_weight_over_varied_ports() {
        let service = ServiceState {
            weight: 10,
            ..Default::default()
        };
        let idle = (0..10_000u16)
            .filter(|port| {
                let key = FlowKey {
                    client: [10, 200, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    server: [10, 200, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    client_port: (32768 + port).to_be_bytes(),
                    server_port: 80u16.to_be_bytes(),
                    ..Default::default()
                };
                new_flow_color(&service, &key, || false) == COLOR_GREEN
            })
            .count();
        assert!(
            (900..=1100).contains(&idle),
            "{idle} of 10000 went to the idle color"
        );
        let all = ServiceState {
            weight: 0,
            ..service
        };
        assert_eq!(
            new_flow_color(&all, &FlowKey::default(), || true),
            COLOR_BLUE
        );
        let preview = ServiceState {
            flags: SERVICE_HAS_PREVIEW,
            ..all
        };
        assert_eq!(
            new_flow_color(&preview, &FlowKey::default(), || true),
            COLOR_GREEN
        );
        assert_eq!(
            new_flow_color(&preview, &FlowKey::default(), || false),
            COLOR_BLUE
        );
    }

    #[test]
    fn stale_entries_are_judged_by_protocol_and_closing_state() {
        let settings = Settings {
            tcp_idle_timeout_ns: 100,
            tcp_closing_timeout_ns: 10,
            udp_idle_timeout_ns: 30,
        };
        let mut entry = FlowEntry {
            last_seen_ns: 1000,
            ..Default::default()
        };
        assert!(settings.is_live(IPPROTO_TCP, &entry, 1100));
        assert!(!settings.is_live(IPPROTO_TCP, &entry, 1101));
        assert!(settings.is_live(IPPROTO_UDP, &entry, 1030));
        assert!(!settings.is_live(IPPROTO_UDP, &entry, 1031));
        entry.closing = 1;
        assert!(settings.is_live(IPPROTO_TCP, &entry, 1010));
        assert!(!settings.is_live(IPPROTO_TCP, &entry, 1011));
        // A clock reading older than the entry (another CPU raced ahead) is live.
        assert!(settings.is_live(IPPROTO_TCP, &entry, 900));
    }
}
