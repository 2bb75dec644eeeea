//! bluegreen's eBPF object loaded into the running kernel but attached to
//! nothing: packets reach the programs only through `BPF_PROG_TEST_RUN`.
//!
//! Each [`TestDataplane`] pins its maps in a fresh bpffs directory of its
//! own, so tests running in parallel, or a real instance on the same host,
//! never share a map.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader, TestRun, TestRunOptions, TestRunResult,
    maps::{Array, HashMap, Map, MapData, MapError, RingBuf},
    programs::{SchedClassifier, Xdp},
};
use bluegreen::{
    config::{BackendSpec, PoolSpec},
    host::write_pool,
    pinned::{PinLayout, PinnedMaps, Put, ShadowMaps},
    pool::arena::Arenas,
};
use bluegreen_common::{
    BackendKey, Endpoint, FlowEntry, FlowKey, MaglevChunk, PassReason, Pool, PoolBackend,
    ServiceKey, ServiceState, Settings, ShadowCount, ShadowSettings, Timeouts, TrafficCounters,
    map_names, program_names,
};

pub const XDP_PASS: u32 = 2;

/// A backend counter slot for flows injected on a backend no pool has (any
/// more): the last, which no test's pools reach.
pub const RETIRED_COUNTER_SLOT: u32 = bluegreen_common::MAX_BACKEND_COUNTERS - 1;

/// A service to insert: its key, its state (pools aside) and each color's
/// backends with their weights.
pub type TestService = (ServiceKey, ServiceState, [Vec<(SocketAddr, u32)>; 2]);

/// The dataplane's clock now, in jiffies.
pub fn now() -> u64 {
    bluegreen::clock::now().expect("cannot read the kernel's jiffies (are we root?)")
}

/// Jiffies per second on this kernel.
pub fn hz() -> u64 {
    bluegreen::clock::jiffies_per_second().expect("cannot measure the kernel's HZ")
}
pub const TC_ACT_OK: u32 = 0;

/// Small, because LRU tables are preallocated and every test loads its own.
pub const TEST_FLOW_CAPACITY: u32 = 4096;

/// Enough room after any test frame for the kernel to copy the result into.
const OUTPUT_SLACK: usize = 256;

/// A bpffs directory, laid out as the product lays out an interface's pins
/// (so [`PinnedMaps`] opens it), that is gone again, pins and all, once
/// dropped.
struct PinDir {
    layout: PinLayout,
}

impl PinDir {
    fn create() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/bgtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = Self {
            layout: PinLayout::new(&root, "test"),
        };
        // Only a killed earlier process with our pid can have left it behind.
        dir.remove();
        fs::create_dir_all(dir.layout.dir()).unwrap_or_else(|error| {
            panic!("cannot create {}: {error}", dir.layout.dir().display())
        });
        dir
    }

    fn map(&self, name: &str) -> PathBuf {
        self.layout.map(name)
    }

    fn remove(&self) {
        for name in map_names::ALL {
            let _ = fs::remove_file(self.map(name));
        }
        for dir in self.layout.dir().ancestors().take(3) {
            let _ = fs::remove_dir(dir);
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        self.remove();
    }
}

pub struct TestDataplane {
    ebpf: Ebpf,
    /// The product's writer of the kernel contract, on the same maps.
    maps: PinnedMaps,
    /// Every service inserted with its live pools, for the prefilters and
    /// for writing a changed pool beside the live one as the product does.
    services: BTreeMap<ServiceKey, [Pool; 2]>,
    /// The product's shadow switch and counters, on the same maps.
    shadow: ShadowMaps,
    /// Opened once: every opening maps the whole ring again. In a cell, so
    /// that the ring can be read between runs timed through `&self`.
    shadow_ring: RefCell<RingBuf<MapData>>,
    /// Last, so the pins go after every handle on them.
    pins: PinDir,
}

impl TestDataplane {
    /// Loads the XDP and TC programs with the default timeouts in force.
    pub fn new() -> Self {
        Self::with_flow_capacity(TEST_FLOW_CAPACITY)
    }

    pub fn with_flow_capacity(capacity: u32) -> Self {
        let pins = PinDir::create();
        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            loader.map_pin_path(name, pins.map(name));
        }
        loader.map_max_entries(map_names::FLOWS, capacity);
        let mut ebpf = loader
            .load(bluegreen::EBPF_OBJECT)
            .expect("cannot load bluegreen's eBPF object (are we root?)");
        let ingress: &mut Xdp = program_mut(&mut ebpf, program_names::INGRESS)
            .try_into()
            .expect("the ingress program is not XDP");
        ingress
            .load()
            .expect("the verifier rejects the XDP program");
        let egress: &mut SchedClassifier = program_mut(&mut ebpf, program_names::EGRESS)
            .try_into()
            .expect("the egress program is not a classifier");
        egress.load().expect("the verifier rejects the TC program");
        let maps = PinnedMaps::open(&pins.layout).expect("cannot open the maps just pinned");
        let mut shadow =
            ShadowMaps::open(&pins.layout).expect("cannot open the shadow maps just pinned");
        let shadow_ring =
            RefCell::new(shadow.take_ring().expect("a fresh ShadowMaps has its ring"));
        let mut dataplane = Self {
            ebpf,
            maps,
            services: BTreeMap::new(),
            shadow,
            shadow_ring,
            pins,
        };
        dataplane.set_settings(Settings::new(&Timeouts::default(), hz()));
        dataplane
    }

    pub fn set_settings(&mut self, settings: Settings) {
        let mut map: Array<_, Settings> = typed(self.map_mut(map_names::SETTINGS));
        map.set(0, settings, 0).expect("cannot write the settings");
    }

    /// Adds or replaces (as a switch does) a service with a pool of one
    /// backend per color, and sets its bits in the prefilters, the way the
    /// product writes them. `state`'s pools are ignored; the written state
    /// is returned.
    pub fn insert_service(
        &mut self,
        key: ServiceKey,
        state: ServiceState,
        backends: [SocketAddr; 2],
    ) -> ServiceState {
        let pools = backends.map(|backend| vec![(backend, 1)]);
        self.insert_services(&[(key, state, pools)])[0]
    }

    /// Adds or replaces services with pools of backends (address, weight;
    /// 0 is drained), with one prefilter update at the end. A pool keeps
    /// its table size as in the product (see `bluegreen::pool::write`).
    pub fn insert_services(&mut self, services: &[TestService]) -> Vec<ServiceState> {
        // As each product operation does: the space the live pools use,
        // read afresh, and none released before the end.
        let live = self
            .maps
            .services()
            .unwrap_or_else(|error| panic!("cannot read the services: {error}"));
        let mut arenas = Arenas::new(live.values());
        let mut written = Vec::with_capacity(services.len());
        for (key, state, backends) in services {
            let live = self.services.get(key).copied();
            let mut pools = [Pool::default(); 2];
            for (color, pool) in pools.iter_mut().enumerate() {
                *pool = write_pool(
                    &mut self.maps,
                    &mut arenas,
                    key,
                    &pool_spec(&backends[color]),
                    live.as_ref().map(|live| &live[color]),
                )
                .unwrap_or_else(|error| panic!("cannot write a pool of {key:?}: {error}"));
            }
            let state = ServiceState { pools, ..*state };
            self.maps
                .put_service(key, &state, Put::CreateOrReplace)
                .unwrap_or_else(|error| panic!("cannot insert service {key:?}: {error}"));
            self.services.insert(*key, pools);
            written.push(state);
        }
        let keys: Vec<ServiceKey> = self.services.keys().copied().collect();
        self.maps
            .set_filters(&[], &keys)
            .unwrap_or_else(|error| panic!("cannot write the prefilters: {error}"));
        written
    }

    /// One entry of the packed lookup tables, as the kernel reads it.
    pub fn maglev_entry(&self, chunk: u32, at: usize) -> Option<u8> {
        let maglev: Array<_, MaglevChunk> = typed(self.map(map_names::MAGLEV));
        found(maglev.get(&chunk, 0), "lookup table chunk").map(|entries| entries[at])
    }

    /// One entry of the backends array, as the kernel reads it.
    pub fn backend(&self, index: u32) -> Option<PoolBackend> {
        let backends: Array<_, PoolBackend> = typed(self.map(map_names::BACKENDS));
        found(backends.get(&index, 0), "backend")
    }

    /// The counter slot of `backend` in the live pool of `service`'s
    /// `color`, if it is in that pool.
    pub fn backend_counter_slot(
        &self,
        service: &ServiceKey,
        color: u8,
        backend: SocketAddr,
    ) -> Option<u32> {
        let pool = self.services.get(service)?[usize::from(color)];
        self.maps
            .pool_backends(&pool)
            .unwrap_or_else(|error| panic!("cannot read a pool of {service:?}: {error}"))
            .into_iter()
            .find(|member| member.flow_endpoint() == endpoint(backend))
            .map(|member| member.counter_slot)
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        let flows: HashMap<_, FlowKey, FlowEntry> = typed(self.map(map_names::FLOWS));
        found(flows.get(key, 0), "flow")
    }

    pub fn insert_flow(&mut self, key: FlowKey, entry: FlowEntry) {
        let mut flows: HashMap<_, FlowKey, FlowEntry> = typed(self.map_mut(map_names::FLOWS));
        flows
            .insert(key, entry, 0)
            .unwrap_or_else(|error| panic!("cannot insert flow {key:?}: {error}"));
    }

    pub fn flows(&self) -> Vec<(FlowKey, FlowEntry)> {
        let flows: HashMap<_, FlowKey, FlowEntry> = typed(self.map(map_names::FLOWS));
        flows
            .iter()
            .map(|item| item.expect("cannot iterate the flow table"))
            .collect()
    }

    /// The VIP the egress program restores on replies from `backend`.
    pub fn backend_vip(&self, backend: &BackendKey) -> Option<Endpoint> {
        let vips: HashMap<_, BackendKey, Endpoint> = typed(self.map(map_names::BACKEND_VIPS));
        found(vips.get(backend, 0), "backend VIP")
    }

    /// Makes `vip` the address replies from `backend` get back, as writing
    /// a pool with it does.
    pub fn insert_backend_vip(&mut self, backend: BackendKey, vip: Endpoint) {
        let mut vips: HashMap<_, BackendKey, Endpoint> =
            typed(self.map_mut(map_names::BACKEND_VIPS));
        vips.insert(backend, vip, 0)
            .unwrap_or_else(|error| panic!("cannot map {backend:?} to {vip:?}: {error}"));
    }

    /// Replaces one service's preview prefixes (the trie the ingress program
    /// consults for new flows when the service has `SERVICE_HAS_PREVIEW`).
    pub fn set_preview(&mut self, counter_slot: u32, prefixes: &[bluegreen::endpoint::Cidr]) {
        self.maps
            .set_preview(counter_slot, prefixes)
            .unwrap_or_else(|error| panic!("cannot write the preview prefixes: {error}"));
    }

    /// Empties the flow table, so that the next case starts from nothing
    /// but the services.
    pub fn clear_flows(&mut self) {
        for (key, _) in self.flows() {
            let mut flows: HashMap<_, FlowKey, FlowEntry> = typed(self.map_mut(map_names::FLOWS));
            flows.remove(&key).expect("cannot remove a flow");
        }
    }

    /// Traffic counters of one service and color, summed over all CPUs.
    pub fn traffic(&self, slot: u32, color: u8) -> TrafficCounters {
        self.maps
            .traffic(slot, color)
            .unwrap_or_else(|error| panic!("cannot read traffic counters {slot}/{color}: {error}"))
    }

    /// Traffic counters of one backend's slot, summed over all CPUs.
    pub fn backend_traffic(&self, slot: u32) -> TrafficCounters {
        self.maps
            .backend_traffic(slot)
            .unwrap_or_else(|error| panic!("cannot read backend counters {slot}: {error}"))
    }

    /// Packets passed untouched for `reason`, summed over all CPUs.
    pub fn passed(&self, reason: PassReason) -> u64 {
        self.maps
            .passed(reason)
            .unwrap_or_else(|error| panic!("cannot read the {reason:?} counter: {error}"))
    }

    /// All pass counters, indexed by [`PassReason`].
    pub fn passed_all(&self) -> [u64; PassReason::COUNT as usize] {
        PassReason::ALL.map(|reason| self.passed(reason))
    }

    /// Turns a service's shadow capture on, off or to another session.
    pub fn set_shadow(&mut self, counter_slot: u32, settings: ShadowSettings) {
        self.shadow
            .set(counter_slot, &settings)
            .unwrap_or_else(|error| panic!("cannot write shadow slot {counter_slot}: {error}"));
    }

    /// The shadow capture's counters, summed over all CPUs, indexed by
    /// [`ShadowCount`].
    pub fn shadow_counts(&self) -> [u64; ShadowCount::COUNT as usize] {
        self.shadow
            .counts()
            .unwrap_or_else(|error| panic!("cannot read the shadow counters: {error}"))
    }

    /// Every record waiting in the shadow ring, oldest first, taken out of
    /// it.
    pub fn drain_shadow_ring(&self) -> Vec<Vec<u8>> {
        let mut ring = self.shadow_ring.borrow_mut();
        let mut records = Vec::new();
        while let Some(record) = ring.next() {
            records.push(record.to_vec());
        }
        records
    }

    /// Runs the XDP program once: its verdict and the frame it leaves.
    pub fn run_xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        run_once(self.xdp(), frame, "XDP")
    }

    /// Runs the TC program once: its verdict and the frame it leaves.
    pub fn run_tc(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let egress: &SchedClassifier = self
            .program(program_names::EGRESS)
            .try_into()
            .expect("the egress program is not a classifier");
        run_once(egress, frame, "TC")
    }

    /// Average time of one XDP run over `repeat` runs, as the kernel measures
    /// it.
    ///
    /// The kernel hands every run the same buffer, so from the second run on
    /// the program sees the frame as the first run left it. To time the
    /// rewrite path rather than the "not a service" path, give the service a
    /// backend equal to its VIP: the rewrite then maps the frame onto itself.
    pub fn bench_xdp(&self, frame: &[u8], repeat: u32) -> Duration {
        let result = self
            .xdp()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN (XDP, {repeat} runs): {error}"));
        result.duration
    }

    /// Average time of one TC run over `repeat` runs, as the kernel measures
    /// it. The same caveat as [`Self::bench_xdp`] applies: every run gets
    /// the buffer the previous one left.
    pub fn bench_tc(&self, frame: &[u8], repeat: u32) -> Duration {
        let result = self
            .tc()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN (TC, {repeat} runs): {error}"));
        result.duration
    }

    /// Inserts many flows with `BPF_MAP_UPDATE_BATCH`: filling a table of
    /// 262,144 entries one syscall per entry takes seconds.
    pub fn insert_flows_batch(&mut self, keys: &[FlowKey], entries: &[FlowEntry]) {
        self.update_batch(map_names::FLOWS, keys, entries);
    }

    /// Entries in the flow table, counted with `BPF_MAP_LOOKUP_BATCH` (an
    /// LRU table may hold fewer than were inserted).
    pub fn flow_count(&self) -> u64 {
        let map = self.pinned_map(map_names::FLOWS);
        batch::count::<FlowKey, FlowEntry>(map.fd().as_fd())
            .unwrap_or_else(|error| panic!("BPF_MAP_LOOKUP_BATCH on the flow table: {error}"))
    }

    fn update_batch<K: aya::Pod, V: aya::Pod>(&mut self, name: &str, keys: &[K], values: &[V]) {
        assert_eq!(keys.len(), values.len(), "one value per key");
        let map = self.pinned_map(name);
        batch::update(map.fd().as_fd(), keys, values)
            .unwrap_or_else(|error| panic!("BPF_MAP_UPDATE_BATCH on {name}: {error}"));
    }

    /// A second descriptor of one of our maps, for the raw batch syscalls
    /// aya does not wrap and for hand-assembled programs.
    pub fn pinned_map(&self, name: &str) -> MapData {
        MapData::from_pin(self.pins.map(name))
            .unwrap_or_else(|error| panic!("cannot open the pinned {name}: {error}"))
    }

    /// The egress program's descriptor if `tc`, else the ingress one's.
    pub fn program_fd(&self, tc: bool) -> BorrowedFd<'_> {
        let fd = if tc { self.tc().fd() } else { self.xdp().fd() };
        fd.expect("a loaded program has a descriptor").as_fd()
    }

    fn tc(&self) -> &SchedClassifier {
        self.program(program_names::EGRESS)
            .try_into()
            .expect("the egress program is not a classifier")
    }

    fn xdp(&self) -> &Xdp {
        self.program(program_names::INGRESS)
            .try_into()
            .expect("the ingress program is not XDP")
    }

    fn program(&self, name: &str) -> &aya::programs::Program {
        self.ebpf
            .program(name)
            .unwrap_or_else(|| panic!("the eBPF object has no program {name}"))
    }

    fn map(&self, name: &str) -> &Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("the eBPF object has no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> &mut Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("the eBPF object has no map {name}"))
    }
}

impl Default for TestDataplane {
    fn default() -> Self {
        Self::new()
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut aya::programs::Program {
    ebpf.program_mut(name)
        .unwrap_or_else(|| panic!("the eBPF object has no program {name}"))
}

fn typed<M, T>(map: M) -> T
where
    T: TryFrom<M, Error = MapError>,
{
    T::try_from(map).unwrap_or_else(|error| panic!("map of an unexpected type or layout: {error}"))
}

fn found<V>(result: Result<V, MapError>, what: &str) -> Option<V> {
    match result {
        Ok(value) => Some(value),
        Err(MapError::KeyNotFound) => None,
        Err(error) => panic!("cannot look up a {what} entry: {error}"),
    }
}

fn run_once<P>(program: &P, frame: &[u8], what: &str) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut output = vec![0; frame.len() + OUTPUT_SLACK];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ..Default::default()
        })
        .unwrap_or_else(|error| {
            panic!(
                "BPF_PROG_TEST_RUN ({what}, {} byte frame): {error}",
                frame.len()
            )
        });
    output.truncate(result.data_size_out as usize);
    (result.return_value, output)
}

/// An address as the maps store it: IPv4 in the first four bytes.
pub fn wire_addr(ip: IpAddr) -> [u8; 16] {
    let mut addr = [0; 16];
    match ip {
        IpAddr::V4(ip) => addr[..4].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => addr = ip.octets(),
    }
    addr
}

pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        addr: wire_addr(addr.ip()),
        port: addr.port().to_be_bytes(),
        reserved: [0; 2],
    }
}

/// The key both tables use for a connection from `client` to `server`.
pub fn flow_key(client: SocketAddr, server: SocketAddr, proto: u8) -> FlowKey {
    FlowKey {
        client: wire_addr(client.ip()),
        server: wire_addr(server.ip()),
        client_port: client.port().to_be_bytes(),
        server_port: server.port().to_be_bytes(),
        proto,
        family: if client.is_ipv4() {
            bluegreen_common::FAMILY_IPV4
        } else {
            bluegreen_common::FAMILY_IPV6
        },
        reserved: [0; 2],
    }
}

pub fn service_key(vip: SocketAddr, proto: u8) -> ServiceKey {
    flow_key(vip, vip, proto).service_key()
}

/// `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH`, which aya 0.14 does not
/// expose.
pub mod batch {
    use std::{io, os::fd::AsRawFd, os::fd::BorrowedFd};

    use crate::sys::bpf;

    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    /// Entries per syscall: bounds the buffers and each call's time in the
    /// kernel.
    const CHUNK: usize = 16384;

    /// `union bpf_attr`, the `batch` member.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    pub fn update<K: aya::Pod, V: aya::Pod>(
        map: BorrowedFd,
        keys: &[K],
        values: &[V],
    ) -> io::Result<()> {
        for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
            let mut attr = BatchAttr {
                keys: keys.as_ptr() as u64,
                values: values.as_ptr() as u64,
                count: keys.len() as u32,
                map_fd: map.as_raw_fd() as u32,
                ..Default::default()
            };
            bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
            if attr.count as usize != keys.len() {
                return Err(io::Error::other(format!(
                    "{} of {} entries written",
                    attr.count,
                    keys.len()
                )));
            }
        }
        Ok(())
    }

    pub fn count<K: aya::Pod + Default, V: aya::Pod + Default>(map: BorrowedFd) -> io::Result<u64> {
        let mut keys = vec![K::default(); CHUNK];
        let mut values = vec![V::default(); CHUNK];
        // Hash maps resume from a bucket index; 8 bytes leave room for it.
        let (mut token_in, mut token_out) = (0u64, 0u64);
        let (mut total, mut first) = (0, true);
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &token_in as *const u64 as u64
                },
                out_batch: &mut token_out as *mut u64 as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: CHUNK as u32,
                map_fd: map.as_raw_fd() as u32,
                ..Default::default()
            };
            let outcome = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            total += u64::from(attr.count);
            match outcome {
                Ok(_) => (token_in, first) = (token_out, false),
                // The end of the table, possibly with a last few entries.
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(total),
                Err(error) => return Err(error),
            }
        }
    }
}

/// A pool of (address, weight) as the product holds it: weight 0 is a
/// drained backend.
fn pool_spec(backends: &[(SocketAddr, u32)]) -> PoolSpec {
    PoolSpec::new(
        backends
            .iter()
            .map(|&(addr, weight)| BackendSpec {
                weight: weight.max(1),
                drained: weight == 0,
                ..BackendSpec::new(addr)
            })
            .collect(),
    )
}
