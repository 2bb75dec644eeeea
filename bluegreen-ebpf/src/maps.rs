//! The maps the programs share with userspace. All are pinned by name so
//! that a new loader, or a second CLI process, finds the live ones.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use bluegreen_common::{
    BackendKey, DEFAULT_FLOW_CAPACITY, Endpoint, FILTER_WORDS, FlowEntry, FlowKey,
    LOCAL_SOCKET_CAPACITY, LocalSettings, LocalSocket, LocalSocketKey, MAGLEV_CHUNKS,
    MAX_BACKEND_COUNTERS, MAX_BACKEND_VIPS, MAX_BACKENDS, MAX_PREVIEW_PREFIXES, MAX_SERVICES,
    MaglevChunk, PREVIEW_FIXED_BITS, PassReason, Pool, PoolBackend, PreviewPrefix,
    SHADOW_FLOW_CAPACITY, SHADOW_RING_BYTES, ServiceKey, ServiceState, Settings, ShadowCount,
    ShadowFlow, ShadowSettings, SwitchCounters, TrafficCounters, VIP_FILTER_WORDS, bitmap_position,
    maglev_position, vip_filter_bit,
};

/// Not preallocated: an update then swaps in a new element under RCU, so a
/// concurrent reader keeps the whole old value instead of seeing a value
/// being rewritten under it (preallocated elements are recycled at once).
#[map(name = "BG_SERVICES")]
pub static BG_SERVICES: HashMap<ServiceKey, ServiceState> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Client -> VIP connections and the color each one is pinned to. The
/// loader resizes it from the configuration.
#[map(name = "BG_FLOWS")]
pub static BG_FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::pinned(DEFAULT_FLOW_CAPACITY, 0);

/// Each backend's VIP, written by userspace with the pools: the egress
/// program finds a reply's flow from it, so a new flow costs one flow-table
/// write, not two.
#[map(name = "BG_BACKEND_VIPS")]
pub static BG_BACKEND_VIPS: HashMap<BackendKey, Endpoint> =
    HashMap::pinned(MAX_BACKEND_VIPS, BPF_F_NO_PREALLOC);

/// Indexed by [`bluegreen_common::traffic_index`].
#[map(name = "BG_TRAFFIC")]
pub static BG_TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(MAX_SERVICES * 2, 0);

/// Indexed by [`PoolBackend::counter_slot`].
#[map(name = "BG_BACKEND_TRAFFIC")]
pub static BG_BACKEND_TRAFFIC: PerCpuArray<TrafficCounters> =
    PerCpuArray::pinned(MAX_BACKEND_COUNTERS, 0);

/// Indexed by [`PassReason`].
#[map(name = "BG_PASSED")]
pub static BG_PASSED: PerCpuArray<u64> = PerCpuArray::pinned(PassReason::COUNT, 0);

#[map(name = "BG_SETTINGS")]
pub static BG_SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// One bit per destination port that some service listens on: lets packets
/// for other ports leave after an array lookup instead of a hash lookup.
#[map(name = "BG_VIP_PORTS")]
pub static BG_VIP_PORTS: Array<u32> = Array::pinned(FILTER_WORDS, 0);

/// One bit per `vip_filter_bit` of each service's VIP and port: lets most
/// packets to other addresses on a service port leave early too.
#[map(name = "BG_VIP_FILTER")]
pub static BG_VIP_FILTER: Array<u32> = Array::pinned(VIP_FILTER_WORDS, 0);

/// Each counter slot's service generation, mirrored from the services map
/// (written after it) so that the fast path can check for a forced switch
/// with an inlined array read. Only a hint: a mismatch falls back to the
/// services map, which decides.
#[map(name = "BG_GENERATIONS")]
pub static BG_GENERATIONS: Array<u32> = Array::pinned(MAX_SERVICES, 0);

/// Client prefixes whose new flows go to a service's idle color.
#[map(name = "BG_PREVIEW")]
pub static BG_PREVIEW: LpmTrie<PreviewPrefix, u8> =
    LpmTrie::pinned(MAX_PREVIEW_PREFIXES, BPF_F_NO_PREALLOC);

/// Every pool's consistent-hash lookup table, packed (see `Pool`).
#[map(name = "BG_MAGLEV")]
pub static BG_MAGLEV: Array<MaglevChunk> = Array::pinned(MAGLEV_CHUNKS, 0);

/// Every pool's backends, each pool a run from its `first_backend`.
#[map(name = "BG_BACKENDS")]
pub static BG_BACKENDS: Array<PoolBackend> = Array::pinned(MAX_BACKENDS, 0);

/// The backend of `pool` that a flow with this hash goes to, if the pool
/// has one taking new flows.
#[inline(always)]
pub fn pool_backend(pool: &Pool, hash: u32) -> Option<PoolBackend> {
    let (chunk, at) = maglev_position(pool, hash)?;
    let index = *BG_MAGLEV.get(chunk)?.get(at)?;
    BG_BACKENDS
        .get(pool.first_backend + u32::from(index))
        .copied()
}

/// Each counter slot's switches and rollbacks. Only userspace touches it;
/// it is declared here so that loading the object creates and pins it with
/// the others (and again on the next `up` if its pin was removed).
#[map(name = "BG_SWITCHES")]
pub static BG_SWITCHES: Array<SwitchCounters> = Array::pinned(MAX_SERVICES, 0);

/// Whose sockets the cgroup programs rewrite (see `LocalSettings`).
#[map(name = "BG_LOCAL")]
pub static BG_LOCAL: Array<LocalSettings> = Array::pinned(1, 0);

/// Local sockets sent to a backend, keyed by socket and backend, giving
/// the VIP to show in its place. An LRU hash keyed by the socket cookie
/// rather than socket storage: userspace must read it (to count and reset
/// local connections per color), and cookies are never reused, so an
/// entry left by a closed socket is only evicted, never misread.
#[map(name = "BG_LOCAL_SOCKS")]
pub static BG_LOCAL_SOCKS: LruHashMap<LocalSocketKey, LocalSocket> =
    LruHashMap::pinned(LOCAL_SOCKET_CAPACITY, 0);

#[inline(always)]
pub fn in_preview(counter_slot: u32, family: u8, client: &[u8; 16]) -> bool {
    let key = Key::new(
        PREVIEW_FIXED_BITS + 128,
        PreviewPrefix {
            slot: counter_slot.to_be_bytes(),
            family,
            reserved: [0; 3],
            addr: *client,
        },
    );
    BG_PREVIEW.get(key).is_some()
}

/// Adds `traffic` to a color's counters (at `color_index`, see
/// `traffic_index`) and to its backend's (at `backend_slot`): every packet
/// and new flow counts for both, so a pool's backends add up to the color.
#[inline(always)]
pub fn count_traffic(color_index: u32, backend_slot: u32, traffic: TrafficCounters) {
    add_traffic(BG_TRAFFIC.get_ptr_mut(color_index), traffic);
    add_traffic(BG_BACKEND_TRAFFIC.get_ptr_mut(backend_slot), traffic);
}

#[inline(always)]
fn add_traffic(counters: Option<*mut TrafficCounters>, traffic: TrafficCounters) {
    if let Some(counters) = counters {
        // SAFETY: a per-CPU map value, so no other writer races these
        // increments.
        unsafe {
            (*counters).packets += traffic.packets;
            (*counters).bytes += traffic.bytes;
            (*counters).new_flows += traffic.new_flows;
        }
    }
}

#[inline(always)]
pub fn count_passed(reason: PassReason) {
    if let Some(counter) = BG_PASSED.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, so no other writer races this increment.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn port_has_service(port: u16) -> bool {
    let (word, mask) = bitmap_position(u32::from(port));
    match BG_VIP_PORTS.get(word) {
        Some(bits) => bits & mask != 0,
        None => false,
    }
}

#[inline(always)]
pub fn vip_may_match(addr: &[u8; 16], port: [u8; 2]) -> bool {
    let (word, mask) = bitmap_position(vip_filter_bit(addr, port));
    match BG_VIP_FILTER.get(word) {
        Some(bits) => bits & mask != 0,
        None => false,
    }
}

#[inline(always)]
pub fn current_generation(counter_slot: u16) -> Option<u32> {
    BG_GENERATIONS.get(u32::from(counter_slot)).copied()
}

#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    BG_SETTINGS.get(0)
}

/// Each counter slot's shadowing: an array, so that a packet of a service
/// that does not shadow pays one inlined read.
#[map(name = "BG_SHADOW")]
pub static BG_SHADOW: Array<ShadowSettings> = Array::pinned(MAX_SERVICES, 0);

/// The flows chosen for shadowing when they started, keyed client to VIP.
#[map(name = "BG_SHADOW_FLOWS")]
pub static BG_SHADOW_FLOWS: LruHashMap<FlowKey, ShadowFlow> =
    LruHashMap::pinned(SHADOW_FLOW_CAPACITY, 0);

/// Records of sampled flows' packets, for the replayer.
#[map(name = "BG_SHADOW_RING")]
pub static BG_SHADOW_RING: RingBuf = RingBuf::pinned(SHADOW_RING_BYTES, 0);

/// Indexed by [`ShadowCount`].
#[map(name = "BG_SHADOW_COUNTS")]
pub static BG_SHADOW_COUNTS: PerCpuArray<u64> = PerCpuArray::pinned(ShadowCount::COUNT, 0);

#[inline(always)]
pub fn count_shadow(what: ShadowCount, amount: u64) {
    if let Some(counter) = BG_SHADOW_COUNTS.get_ptr_mut(what as u32) {
        // SAFETY: per-CPU slot, so no other writer races this increment.
        unsafe { *counter += amount };
    }
}
