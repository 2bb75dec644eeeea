//! Types shared by the eBPF programs and the userspace loader.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields so that
//! both sides agree on the layout byte for byte, and so that no uninitialised
//! padding ever ends up inside a hash key. Keys made only of byte arrays
//! still carry an explicit alignment (their sizes are multiples of it, so
//! no padding appears): the BPF backend may not merge unaligned accesses,
//! and without it every copy and compare of a key is done byte by byte. Addresses and ports are stored as
//! they travel on the wire (network byte order, as raw bytes); counters and
//! timestamps are host-order integers that never leave the machine.
#![no_std]

pub mod checksum;
#[cfg(feature = "user")]
pub mod model;
pub mod wire;

/// Bumped whenever any map's key or value layout, or what a map's contents
/// mean, changes (4: the VIP prefilter's hash). Pins live under a directory
/// named after it, so a loader never reads maps of another layout.
pub const LAYOUT_VERSION: u32 = 4;

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

/// The color that is not `color`.
#[inline(always)]
pub fn other_color(color: u8) -> u8 {
    (color ^ 1) & 1
}

/// Index of a service's counters for one color in the traffic map.
#[inline(always)]
pub fn traffic_index(counter_slot: u32, color: u8) -> u32 {
    counter_slot * 2 + u32::from(color & 1)
}

/// Where bit `bit` of a bitmap stored as an array of `u32` words lives:
/// the word's index and the mask within it.
#[inline(always)]
pub fn bitmap_position(bit: u32) -> (u32, u32) {
    (bit >> 5, 1 << (bit & 31))
}

/// Number of 32-bit words in the port prefilter bitmap (one bit per port).
pub const FILTER_WORDS: u32 = 65536 / 32;

/// Bits of the VIP address-and-port prefilter: 2^20, so that even 10,000
/// services leave under 1 % of other addresses to the hash lookup.
pub const VIP_FILTER_BITS: u32 = 1 << 20;
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 32;

/// Bit of the VIP address-and-port prefilter for a destination: packets to
/// a port some service uses but to another address leave after an array
/// lookup instead of a services hash lookup. Collisions only cost that
/// lookup.
///
/// Two multiply-xorshift rounds over the address folded to 64 bits: on
/// every packet to a service port, so it must be short (a four-round
/// hash with murmur3's finaliser cost about 50 instructions), yet one
/// multiply alone maps a run of neighbouring VIPs onto a lattice that the
/// addresses next to them hit dozens of times as often as chance (the
/// test below).
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16], port: [u8; 2]) -> u32 {
    let half = |at: usize| {
        u64::from_ne_bytes([
            addr[at],
            addr[at + 1],
            addr[at + 2],
            addr[at + 3],
            addr[at + 4],
            addr[at + 5],
            addr[at + 6],
            addr[at + 7],
        ])
    };
    let folded = half(0) ^ half(8).rotate_left(32) ^ u64::from(u16::from_ne_bytes(port)) << 32;
    let mixed = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mixed = (mixed ^ mixed >> 32).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (mixed >> (64 - VIP_FILTER_BITS.trailing_zeros())) as u32
}

/// Map names, as declared in the eBPF object and pinned in bpffs.
pub mod map_names {
    pub const SERVICES: &str = "BG_SERVICES";
    pub const FLOWS: &str = "BG_FLOWS";
    pub const BACKEND_VIPS: &str = "BG_BACKEND_VIPS";
    pub const TRAFFIC: &str = "BG_TRAFFIC";
    pub const PASSED: &str = "BG_PASSED";
    pub const SETTINGS: &str = "BG_SETTINGS";
    pub const VIP_PORTS: &str = "BG_VIP_PORTS";
    pub const VIP_FILTER: &str = "BG_VIP_FILTER";
    pub const GENERATIONS: &str = "BG_GENERATIONS";
    pub const PREVIEW: &str = "BG_PREVIEW";
    pub const MAGLEV: &str = "BG_MAGLEV";
    pub const BACKENDS: &str = "BG_BACKENDS";
    pub const SWITCHES: &str = "BG_SWITCHES";
    pub const BACKEND_TRAFFIC: &str = "BG_BACKEND_TRAFFIC";
    pub const LOCAL: &str = "BG_LOCAL";
    pub const LOCAL_SOCKETS: &str = "BG_LOCAL_SOCKS";
    pub const ALL: [&str; 16] = [
        SERVICES,
        FLOWS,
        BACKEND_VIPS,
        TRAFFIC,
        PASSED,
        SETTINGS,
        VIP_PORTS,
        VIP_FILTER,
        GENERATIONS,
        PREVIEW,
        MAGLEV,
        BACKENDS,
        SWITCHES,
        BACKEND_TRAFFIC,
        LOCAL,
        LOCAL_SOCKETS,
    ];
}

/// Program names, as declared in the eBPF object.
pub mod program_names {
    pub const INGRESS: &str = "bluegreen_ingress";
    pub const EGRESS: &str = "bluegreen_egress";
    /// In its own object (`bluegreen-clock`): stores `bpf_jiffies64()`.
    pub const CLOCK: &str = "bluegreen_clock";
    /// The cgroup socket-address programs for host-local clients, with the
    /// attach point each is built for (one program per hook).
    pub const CONNECT4: &str = "bluegreen_connect4";
    pub const CONNECT6: &str = "bluegreen_connect6";
    pub const SENDMSG4: &str = "bluegreen_sendmsg4";
    pub const SENDMSG6: &str = "bluegreen_sendmsg6";
    pub const RECVMSG4: &str = "bluegreen_recvmsg4";
    pub const RECVMSG6: &str = "bluegreen_recvmsg6";
    pub const GETPEERNAME4: &str = "bluegreen_getpeername4";
    pub const GETPEERNAME6: &str = "bluegreen_getpeername6";
    pub const LOCAL: [&str; 8] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        RECVMSG6,
        GETPEERNAME4,
        GETPEERNAME6,
    ];
}

/// An address and port as they appear on the wire. IPv4 addresses occupy the
/// first four bytes of `addr`; the rest stays zero.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub reserved: [u8; 2],
}

/// Key of the services map: the virtual address clients connect to.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// Key of the backend-to-VIP map: a backend as its replies name it (the
/// source of a reply), for the egress program to find the VIP to restore.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// Backends the backend-to-VIP map holds: every pool's, and those that
/// left a pool but may still have flows (kept until their service goes).
pub const MAX_BACKEND_VIPS: u32 = MAX_BACKENDS;

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

/// Backends one color of a service can have.
pub const MAX_POOL_BACKENDS: u32 = 256;

/// Entries of a pool's lookup table per element of `BG_MAGLEV`: the kernel
/// rounds array elements up to 8 bytes, so one-byte entries are packed.
pub const MAGLEV_CHUNK: u32 = 64;
/// Elements of `BG_MAGLEV`: room for every service's two tables twice over
/// (a changed table is written beside the live one before the flip), even
/// at the limit of services with one backend each (two chunks a table).
pub const MAGLEV_CHUNKS: u32 = 1 << 18;
/// Entries of `BG_BACKENDS`, shared by every pool the same way.
pub const MAX_BACKENDS: u32 = 1 << 17;
/// Per-backend counter slots (`BG_BACKEND_TRAFFIC`): one per color of the
/// most services there can be, each with a one-backend pool. A slot is per
/// CPU, so this is what bounds the map's memory, not `MAX_BACKENDS`.
pub const MAX_BACKEND_COUNTERS: u32 = MAX_SERVICES * 2;

/// One element of `BG_BACKENDS`: a backend and its traffic counter slot.
/// The slot stays with the backend while it is in its pool, however often
/// the pool is rewritten, so its counters keep counting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PoolBackend {
    pub endpoint: Endpoint,
    /// Index into `BG_BACKEND_TRAFFIC`.
    pub counter_slot: u32,
}

/// One element of `BG_MAGLEV`: [`MAGLEV_CHUNK`] table entries, each the
/// index of a backend within its pool.
pub type MaglevChunk = [u8; MAGLEV_CHUNK as usize];

/// One color's replicas: where its backends and its consistent-hash lookup
/// table live in the shared arrays. Userspace writes a changed pool beside
/// the live one and then replaces the service's state whole, so a packet
/// sees the old pool or the new one, never a half-written table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pool {
    /// First element of the table in `BG_MAGLEV`.
    pub table_chunk: u32,
    /// Entries of the table: a prime at least 100 times the backends, so
    /// one backend leaving moves about 1/N of the new flows (Maglev); 0 when
    /// no backend takes new flows (all drained or unhealthy).
    pub table_size: u32,
    /// First backend in `BG_BACKENDS`; the table's entries index from it.
    pub first_backend: u32,
    /// Backends in `BG_BACKENDS` from `first_backend` on, drained ones
    /// included (their flows still need them; the table skips them).
    pub backend_count: u32,
}

/// Where the table entry for a flow hash lives in `BG_MAGLEV`: the element
/// and the byte within it. `None` for an empty pool.
#[inline(always)]
pub fn maglev_position(pool: &Pool, hash: u32) -> Option<(u32, usize)> {
    if pool.table_size == 0 {
        return None;
    }
    let entry = pool.table_chunk * MAGLEV_CHUNK + hash % pool.table_size;
    Some((entry / MAGLEV_CHUNK, (entry % MAGLEV_CHUNK) as usize))
}

/// Value of the services map. Userspace always replaces it whole, so a packet
/// sees either the state before a switch or the state after it, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// Indexed by color: `pools[COLOR_BLUE]`, `pools[COLOR_GREEN]`.
    pub pools: [Pool; 2],
    /// Bumped by a forced switch: flows recorded under an older generation
    /// move to [`ServiceState::forced_color`] instead of staying on the one
    /// they started on.
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
    /// `SERVICE_FORCED_GREEN`: see [`ServiceState::forced_color`].
    pub flags: u8,
}

pub const SERVICE_HAS_PREVIEW: u8 = 1;
/// The last forced switch went to green (clear: to blue).
pub const SERVICE_FORCED_GREEN: u8 = 2;

impl ServiceState {
    pub fn pool(&self, color: u8) -> &Pool {
        &self.pools[(color & 1) as usize]
    }

    /// The color the last forced switch sent established flows to: where a
    /// flow recorded under an older generation goes on its next packet.
    ///
    /// Not `active`: flows are rebound lazily, so a graceful switch made
    /// after the force, before an idle flow sends again, would otherwise
    /// carry that flow along, breaking the promise that a graceful switch
    /// leaves established connections where they are. The force alone
    /// decides where they move.
    #[inline(always)]
    pub fn forced_color(&self) -> u8 {
        if self.flags & SERVICE_FORCED_GREEN != 0 {
            COLOR_GREEN
        } else {
            COLOR_BLUE
        }
    }

    /// This state with `color` recorded as the last forced switch's color,
    /// other flags untouched. A forced switch records its target along with
    /// the generation bump; a graceful switch or a shift keeps the recorded
    /// color. A newly added service records its active color: its fresh
    /// generation rebinds any flow left from an earlier service, and those
    /// belong on the active color.
    #[must_use]
    #[inline(always)]
    pub fn with_forced_color(self, color: u8) -> Self {
        let flags = if color & 1 == COLOR_GREEN {
            self.flags | SERVICE_FORCED_GREEN
        } else {
            self.flags & !SERVICE_FORCED_GREEN
        };
        Self { flags, ..self }
    }
}

/// The color a new flow takes: the idle one for preview clients and for
/// the weighted share, the active one otherwise. `hash` is the flow's
/// [`flow_hash`], which also picks its backend within the color.
#[inline(always)]
pub fn new_flow_color(service: &ServiceState, hash: u32, in_preview: impl FnOnce() -> bool) -> u8 {
    let idle = other_color(service.active);
    if service.flags & SERVICE_HAS_PREVIEW != 0 && in_preview() {
        return idle;
    }
    if service.weight != 0 && hash % 100 < u32::from(service.weight) {
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
    /// The backend's counter slot ([`PoolBackend::counter_slot`]).
    pub backend_counter_slot: u32,
}

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

    /// Whether a flow entry still counts at `now` (jiffies). A stale entry
    /// is treated exactly as an absent one.
    #[inline(always)]
    pub fn is_live(&self, proto: u8, entry: &FlowEntry, now: u64) -> bool {
        let timeout = if proto == IPPROTO_UDP {
            self.udp_idle_timeout
        } else if entry.closing != 0 {
            self.tcp_closing_timeout
        } else {
            self.tcp_idle_timeout
        };
        now.saturating_sub(entry.last_seen) <= timeout
    }
}

/// Traffic counters of a service's color, or of one backend (per-CPU;
/// userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Who made a change of a service's colors: the index into
/// [`SwitchCounters`]' arrays.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeCause {
    /// `bluegreen switch` or `bluegreen rollback`.
    #[default]
    Operator = 0,
    /// `bluegreen shift`: its steps, and its retreat when a check fails.
    Shift = 1,
    /// The daemon, rolling back an active color that turned unhealthy.
    AutoRollback = 2,
}

impl ChangeCause {
    pub const COUNT: usize = 3;
    pub const ALL: [ChangeCause; Self::COUNT] = [Self::Operator, Self::Shift, Self::AutoRollback];

    /// Its name as the cause of a switch.
    pub fn switch_name(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Shift => "shift",
            Self::AutoRollback => "auto_rollback",
        }
    }

    /// Its name as the cause of a rollback: the daemon's rollbacks are
    /// named for why they happen, as the metrics always called them.
    pub fn rollback_name(self) -> &'static str {
        match self {
            Self::AutoRollback => "unhealthy",
            other => other.switch_name(),
        }
    }
}

/// Value of the switch-counter map (`BG_SWITCHES`, indexed by counter
/// slot): one service's committed changes, by [`ChangeCause`]. Only
/// userspace writes it, under the interface lock, at each change it
/// commits; the programs never read it. It lives in a pinned map rather
/// than in a process so that every command counts, whoever runs it, and
/// the counts outlive restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Changes of the active color.
    pub switches: [u64; ChangeCause::COUNT],
    /// Returns to the previous color, or of a weighted shift's share to 0.
    pub rollbacks: [u64; ChangeCause::COUNT],
}

impl SwitchCounters {
    /// Counts one committed change made by `cause`.
    pub fn count(&mut self, cause: ChangeCause, switched: bool, rolled_back: bool) {
        let at = cause as usize;
        self.switches[at] += u64::from(switched);
        self.rollbacks[at] += u64::from(rolled_back);
    }
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
    /// A new flow for a color whose backends are all drained or unhealthy.
    NoBackend = 6,
}

impl PassReason {
    pub const COUNT: u32 = 7;
    pub const ALL: [PassReason; Self::COUNT as usize] = [
        Self::NotIp,
        Self::NotService,
        Self::Malformed,
        Self::Fragment,
        Self::Unsupported,
        Self::FlowTableFull,
        Self::NoBackend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::NotService => "not_service",
            Self::Malformed => "malformed",
            Self::Fragment => "fragment",
            Self::Unsupported => "unsupported_header",
            Self::FlowTableFull => "flow_table_full",
            Self::NoBackend => "no_backend",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte
    // arrays, and spell out their padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::ServiceState {}
    unsafe impl aya::Pod for super::Pool {}
    unsafe impl aya::Pod for super::PoolBackend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::PreviewPrefix {}
    unsafe impl aya::Pod for super::SwitchCounters {}
    unsafe impl aya::Pod for super::LocalSettings {}
    unsafe impl aya::Pod for super::LocalSocketKey {}
    unsafe impl aya::Pod for super::LocalSocket {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<BackendKey>(), 20);
        assert_eq!(size_of::<Pool>(), 16);
        assert_eq!(size_of::<PoolBackend>(), 20 + 4);
        assert_eq!(size_of::<ServiceState>(), 2 * 16 + 4 + 4 + 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowEntry>(), 8 + 20 + 4 + 1 + 1 + 2 + 4);
        assert_eq!(size_of::<Settings>(), 32);
        assert_eq!(size_of::<TrafficCounters>(), 24);
        assert_eq!(size_of::<SwitchCounters>(), 2 * 3 * 8);
        assert_eq!(size_of::<LocalSettings>(), 8 + 16 + 16);
        assert_eq!(size_of::<LocalSocketKey>(), 8 + 16 + 2 + 6);
        assert_eq!(size_of::<LocalSocket>(), 16 + 2 + 1 + 1 + 4);
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
                new_flow_color(&service, flow_hash(&key), || false) == COLOR_GREEN
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
        assert_eq!(new_flow_color(&all, 0, || true), COLOR_BLUE);
        let preview = ServiceState {
            flags: SERVICE_HAS_PREVIEW,
            ..all
        };
        assert_eq!(new_flow_color(&preview, 0, || true), COLOR_GREEN);
        assert_eq!(new_flow_color(&preview, 0, || false), COLOR_BLUE);
    }

    #[test]
    fn the_forced_color_is_its_own_flag() {
        let preview = ServiceState {
            active: COLOR_GREEN,
            flags: SERVICE_HAS_PREVIEW,
            ..Default::default()
        };
        assert_eq!(preview.forced_color(), COLOR_BLUE, "nothing forced yet");
        let forced = preview.with_forced_color(COLOR_GREEN);
        assert_eq!(forced.forced_color(), COLOR_GREEN);
        assert_eq!(forced.flags, SERVICE_HAS_PREVIEW | SERVICE_FORCED_GREEN);
        let back = forced.with_forced_color(COLOR_BLUE);
        assert_eq!(back.forced_color(), COLOR_BLUE);
        assert_eq!(back.flags, SERVICE_HAS_PREVIEW, "the preview flag stays");
        assert_eq!(
            ServiceState {
                active: COLOR_BLUE,
                ..forced
            }
            .forced_color(),
            COLOR_GREEN,
            "a graceful switch leaves the forced color alone"
        );
    }

    #[test]
    fn stale_entries_are_judged_by_protocol_and_closing_state() {
        let timeouts = Timeouts {
            tcp_idle_secs: 100,
            tcp_closing_secs: 10,
            udp_idle_secs: 30,
        };
        let settings = Settings::new(&timeouts, 1);
        let mut entry = FlowEntry {
            last_seen: 1000,
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
        assert_eq!(Settings::new(&timeouts, 250).udp_idle_timeout, 7500);
    }

    #[test]
    fn the_vip_filter_spreads_neighbouring_addresses_and_ports() {
        let mut bits = std::collections::BTreeSet::new();
        for host in 0..64u8 {
            for port in [80u16, 443, 8080, 9000] {
                let addr = [10, 0, 0, host, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                bits.insert(vip_filter_bit(&addr, port.to_be_bytes()));
            }
        }
        assert!(
            bits.len() >= 250,
            "only {} distinct bits of 256",
            bits.len()
        );
    }

    #[test]
    fn addresses_next_to_a_run_of_vips_pass_the_vip_filter_at_chance() {
        let address = |n: u32| {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&(0x0ac8_0000 + n).to_be_bytes());
            addr
        };
        let port = 80u16.to_be_bytes();
        let vips = 10_000;
        let bits: std::collections::BTreeSet<u32> = (0..vips)
            .map(|n| vip_filter_bit(&address(n), port))
            .collect();
        let chance = bits.len() as f64 / f64::from(VIP_FILTER_BITS);
        let neighbours = 50_000;
        let passed = (vips..vips + neighbours)
            .filter(|&n| bits.contains(&vip_filter_bit(&address(n), port)))
            .count();
        let rate = passed as f64 / f64::from(neighbours);
        assert!(
            rate < 2.0 * chance,
            "{passed} of {neighbours} neighbouring addresses pass ({:.2} %), chance is {:.2} %",
            rate * 100.0,
            chance * 100.0
        );
    }
}
