//! Part 1: what the programs cost per packet, in the kernel, with
//! `BPF_PROG_TEST_RUN`, against no-op programs timed the same way.
//!
//! The kernel hands all repeats of one test run the same buffer, so a frame
//! the program rewrites would take another path from the second repeat on.
//! Every rewriting case is therefore set up so that the rewrite maps the
//! frame onto itself (XDP: a service whose backend is its own VIP) or back
//! and forth between two frames that both rewrite (TC: two mirrored flows),
//! and every run is checked, by counters or by replaying both frames, to
//! have taken the path it is named after.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use aya::maps::MapData;
use bluegreen_common::{
    COLOR_BLUE, FlowEntry, FlowKey, PassReason, SHADOW_HEADER_LEN, SHADOW_RING_BYTES,
    SHADOW_SAMPLE_SCALE, ServiceState, ShadowCount, ShadowSettings, TrafficCounters, flow_hash,
    map_names, other_color, shadow_sample_point,
};
use serde::Serialize;

use super::{Interrupted, check, raw::RawProgram, stats::median};
use crate::{
    kernel::{TC_ACT_OK, TestDataplane, TestService, batch, endpoint, flow_key, now, service_key},
    netns::addr,
    packet::{Frame, PROTO_TCP, TCP_ACK, TCP_SYN},
    sys::{BPF_MAP_TYPE_LRU_HASH, create_map, enable_run_time_stats, run_time},
};

pub struct KernelPlan {
    pub repeat: u32,
    pub rounds: usize,
    pub flow_capacity: u32,
    pub fill_percents: Vec<u32>,
    pub service_counts: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// The VIP's address, another port: rejected by the port prefilter.
    OtherPort,
    /// The VIP's port, another address: rejected by the services lookup.
    OtherAddress,
    /// A SYN to the VIP: a new flow recorded in the flow table.
    NewFlow,
    /// An ACK of a flow in the table: the common case.
    Established,
    /// An ACK with [`SHADOW_PAYLOAD`] bytes of a flow in the table, its
    /// service shadowing a share of new flows that left this one out.
    ShadowUnsampled,
    /// The same, of a flow the share took: every run copies the payload
    /// into the shadow ring.
    ShadowSampled,
    /// A backend's reply through TC egress, rewritten back to the VIP.
    Reply,
}

impl Case {
    pub const ALL: [Case; 7] = [
        Case::OtherPort,
        Case::OtherAddress,
        Case::NewFlow,
        Case::Established,
        Case::ShadowUnsampled,
        Case::ShadowSampled,
        Case::Reply,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::OtherPort => "non-VIP, other port",
            Case::OtherAddress => "non-VIP, other address",
            Case::NewFlow => "VIP SYN (new flow)",
            Case::Established => "VIP ACK (established)",
            Case::ShadowUnsampled => "VIP ACK, shadowing, flow unsampled",
            Case::ShadowSampled => "VIP ACK, shadowing, flow sampled",
            Case::Reply => "TC reply (reverse NAT)",
        }
    }

    pub fn is_tc(self) -> bool {
        self == Case::Reply
    }

    /// Whether the case's flow is in the service's shadow sample, for the
    /// cases whose service shadows.
    fn sampled(self) -> Option<bool> {
        match self {
            Case::ShadowUnsampled => Some(false),
            Case::ShadowSampled => Some(true),
            _ => None,
        }
    }

    /// The service's shadowing while the case runs.
    fn shadow(self) -> ShadowSettings {
        match self.sampled() {
            Some(_) => SHADOWING,
            None => ShadowSettings::default(),
        }
    }

    fn is_established(self) -> bool {
        self == Case::Established || self.sampled().is_some()
    }

    /// Rounds per round of the plan: the non-VIP cases take ~40 ms a run,
    /// so a few more rounds cost little and steady the medians of the
    /// figures with the tightest targets.
    fn round_weight(self) -> usize {
        match self {
            Case::OtherPort | Case::OtherAddress => CHEAP_CASE_ROUNDS,
            _ => 1,
        }
    }
}

/// One case in one configuration: medians over the rounds, in ns per run
/// as the kernel times it (whole ns, rounded down). Our own clock would
/// not do: for XDP it also counts the dispatcher update (an RCU grace
/// period, ~15 ms) that every multi-run XDP test run pays, and any time
/// another task had the CPU, which the kernel's timer leaves out.
#[derive(Clone, Debug, Serialize)]
pub struct CaseFigures {
    pub case: Case,
    pub ns: f64,
    /// The no-op program of the same type, median over every baseline run
    /// of this configuration.
    pub baseline_ns: f64,
    /// The median over the rounds of each run's ratio to the no-op run
    /// just before it (see `measure`).
    pub ratio: f64,
    /// The path's floor: a program doing only the packet reads and the map
    /// and helper calls the path cannot avoid, on the same maps, run in the
    /// same rounds (median, and its ratio to the no-op, taken as `ratio`
    /// is).
    pub floor_ns: f64,
    pub floor_ratio: f64,
    /// On a table keyed as an IPv4-only flow table would be (see
    /// `Ipv4KeyTable`): the new-flow floor again, and the established
    /// path whole at the least.
    pub ipv4_key_floor_ns: Option<f64>,
    pub ipv4_key_floor_ratio: Option<f64>,
    /// Inside the program, over the no-op (see `measure`): the path, its
    /// floor, and its floor on the IPv4-key table.
    pub over_noop_ns: f64,
    pub floor_over_noop_ns: f64,
    pub ipv4_key_floor_over_noop_ns: Option<f64>,
    /// Every subject run, for the record.
    pub samples_ns: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Configuration {
    pub services: u32,
    pub fill_percent: u32,
    /// Flows inserted to reach the fill level.
    pub flows_inserted: u64,
    /// Flows the LRU table actually held afterwards.
    pub flows_in_table: u64,
    pub cases: Vec<CaseFigures>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub repeat: u32,
    pub rounds: usize,
    pub flow_capacity: u32,
    pub frame_bytes: usize,
    pub configurations: Vec<Configuration>,
}

const VIP_PORT: u16 = 80;
/// The payload of the shadow cases' segments: a request with headers,
/// where the others carry 9 bytes.
const SHADOW_PAYLOAD: usize = 512;
/// Half of new flows: the shadow cases' clients are picked on either side.
const SHADOWING: ShadowSettings = ShadowSettings {
    sample_below: SHADOW_SAMPLE_SCALE / 2,
    session: 1,
};
/// Runs of the sampled case between two readings of the ring: as many
/// records as it holds (each padded to 8 bytes behind the ring's own
/// 8-byte header). A full ring would skip the copy the case is there for.
const SHADOW_BATCH: u32 =
    SHADOW_RING_BYTES / (8 + (SHADOW_HEADER_LEN + SHADOW_PAYLOAD).next_multiple_of(8)) as u32;
const CHEAP_CASE_ROUNDS: usize = 3;
const BACKEND_PORT: u16 = 8080;

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn vip() -> SocketAddr {
    v4(addr::VIP_V4.parse().expect("literal"), VIP_PORT)
}

fn blue() -> SocketAddr {
    v4(addr::BLUE_V4.parse().expect("literal"), BACKEND_PORT)
}

/// The benchmark's client, on a port of its own per case so that no case
/// finds another one's flow; for a shadow case, the first of its ports
/// (every `Case::ALL.len()`-th) on its side of the sample.
fn client(case: Case) -> SocketAddr {
    let first = 40001 + Case::ALL.iter().position(|c| *c == case).expect("listed") as u16;
    let at = |port| v4(addr::CLIENT_V4.parse().expect("literal"), port);
    let Some(sampled) = case.sampled() else {
        return at(first);
    };
    (first..)
        .step_by(Case::ALL.len())
        .map(at)
        .find(|&client| {
            let point = shadow_sample_point(flow_hash(&flow_key(client, vip(), PROTO_TCP)));
            (point < SHADOWING.sample_below) == sampled
        })
        .expect("half of all ports fall on either side")
}

/// The frame each case sends: TCP with a 9-byte payload, 63 bytes in all,
/// but for the shadow cases' [`SHADOW_PAYLOAD`].
fn frame(case: Case) -> Vec<u8> {
    let vip = vip();
    let other_address = v4(Ipv4Addr::new(10, 200, 100, 2), VIP_PORT);
    let other_port = SocketAddr::new(vip.ip(), VIP_PORT + 1);
    let frame = match case {
        Case::OtherPort => Frame::tcp(client(case), other_port, TCP_ACK),
        Case::OtherAddress => Frame::tcp(client(case), other_address, TCP_ACK),
        Case::NewFlow => Frame::tcp(client(case), vip, TCP_SYN),
        Case::Established => Frame::tcp(client(case), vip, TCP_ACK),
        Case::ShadowUnsampled | Case::ShadowSampled => {
            Frame::tcp(client(case), vip, TCP_ACK).payload(&[b's'; SHADOW_PAYLOAD])
        }
        Case::Reply => Frame::tcp(blue(), client(case), TCP_ACK),
    };
    frame.build()
}

/// Filler service `index` (1-based): its own VIP on the benchmark's port,
/// so the port prefilter lets all of them through to the hash lookup.
fn filler_service(index: u32) -> TestService {
    let [_, _, hi, lo] = index.to_be_bytes();
    let at = |net: u8, port| v4(Ipv4Addr::new(10, net, hi, lo), port);
    let state = ServiceState {
        counter_slot: index,
        active: COLOR_BLUE,
        previous: other_color(COLOR_BLUE),
        ..Default::default()
    };
    let pools = [202, 203].map(|net| vec![(at(net, BACKEND_PORT), 1)]);
    (service_key(at(201, VIP_PORT), PROTO_TCP), state, pools)
}

/// Flow `index` of another client of the benchmark's service. The index is
/// scrambled by an odd multiplier (a bijection on u32), so keys are unique
/// and spread over addresses and ports as real clients' would be.
fn filler_flow(index: u32, now: u64) -> (FlowKey, FlowEntry) {
    let scrambled = index.wrapping_mul(0x9e37_79b1);
    let [a, b, port_hi, port_lo] = scrambled.to_be_bytes();
    let client = v4(
        Ipv4Addr::new(100, 64, a, b),
        u16::from_be_bytes([port_hi, port_lo]),
    );
    let color = (index & 1) as u8;
    let backend = v4(Ipv4Addr::new(10, 200, 2 + color, 2), BACKEND_PORT);
    let entry = FlowEntry {
        last_seen: now,
        backend: endpoint(backend),
        color,
        ..Default::default()
    };
    (flow_key(client, vip(), PROTO_TCP), entry)
}

/// The dataplane under test, with the no-op baselines next to it.
struct Bench {
    dataplane: TestDataplane,
    noop_xdp: RawProgram,
    noop_tc: RawProgram,
    /// Each case's floor program, in [`Case::ALL`] order.
    floors: Vec<RawProgram>,
    ipv4_keys: Ipv4KeyTable,
    repeat: u32,
    flows_inserted: u32,
    services: u32,
}

impl Bench {
    fn new(plan: &KernelPlan) -> Bench {
        let mut dataplane = TestDataplane::with_flow_capacity(plan.flow_capacity);
        // The backend equal to the VIP: see the module comment.
        let state = ServiceState {
            counter_slot: 0,
            active: COLOR_BLUE,
            previous: other_color(COLOR_BLUE),
            ..Default::default()
        };
        dataplane.insert_service(service_key(vip(), PROTO_TCP), state, [vip(); 2]);
        let floors = Case::ALL
            .iter()
            .map(|&case| floor(&dataplane, case))
            .collect();
        let ipv4_keys = Ipv4KeyTable::new(plan.flow_capacity, &dataplane);
        Bench {
            dataplane,
            noop_xdp: RawProgram::noop_xdp(),
            noop_tc: RawProgram::noop_tc(),
            floors,
            ipv4_keys,
            repeat: plan.repeat,
            flows_inserted: 0,
            services: 1,
        }
    }

    /// Adds filler services until `count` are up in all.
    fn add_services(&mut self, count: u32) {
        let fillers: Vec<_> = (self.services..count).map(filler_service).collect();
        self.dataplane.insert_services(&fillers);
        self.services = self.services.max(count);
    }

    /// Inserts other clients' flows until `target` have been inserted since
    /// the start.
    fn fill_flows(&mut self, target: u32) {
        let now = now();
        let (keys, entries): (Vec<_>, Vec<_>) = (self.flows_inserted..target)
            .map(|index| filler_flow(index, now))
            .unzip();
        self.dataplane.insert_flows_batch(&keys, &entries);
        self.ipv4_keys.insert(&keys, &entries);
        self.flows_inserted = self.flows_inserted.max(target);
    }

    fn traffic(&self) -> TrafficCounters {
        self.dataplane.traffic(0, COLOR_BLUE)
    }

    /// Makes sure an established case's flow is in the table: the LRU may
    /// have evicted it to make room for other flows. Opened again, it is
    /// sampled again as it was at first.
    fn ensure_established(&mut self, case: Case) {
        let key = flow_key(client(case), vip(), PROTO_TCP);
        if self.dataplane.flow(&key).is_none() {
            let opening = Frame::tcp(client(case), vip(), TCP_SYN).build();
            self.dataplane.run_xdp(&opening);
        }
        assert!(
            self.dataplane.flow(&key).is_some(),
            "a SYN did not record the flow"
        );
    }

    /// Two mirrored flows, so that TC rewrites blue -> VIP and the result
    /// VIP -> blue again: every repeat then rewrites.
    fn refresh_mirror(&mut self) {
        let client = client(Case::Reply);
        let now = now();
        for (server, backend) in [(vip(), blue()), (blue(), vip())] {
            let entry = FlowEntry {
                last_seen: now,
                backend: endpoint(backend),
                color: COLOR_BLUE,
                ..Default::default()
            };
            self.dataplane
                .insert_flow(flow_key(client, server, PROTO_TCP), entry);
            self.dataplane.insert_backend_vip(
                flow_key(client, backend, PROTO_TCP).backend_key(),
                endpoint(server),
            );
        }
    }

    /// Both frames the TC benchmark alternates between are rewritten into
    /// each other. TC writes no map, so what held here held for every run.
    fn verify_mirror(&self, frame: &[u8]) {
        let (verdict, there) = self.dataplane.run_tc(frame);
        assert_eq!(verdict, TC_ACT_OK, "TC returned {verdict}");
        assert_ne!(there, frame, "TC did not rewrite the reply");
        let (_, back) = self.dataplane.run_tc(&there);
        assert_eq!(back, frame, "TC did not rewrite the mirrored reply back");
    }

    /// One run of the no-op program of `case`'s type.
    fn baseline(&self, case: Case, frame: &[u8], meter: Meter) -> f64 {
        let noop = if case.is_tc() {
            &self.noop_tc
        } else {
            &self.noop_xdp
        };
        self.run_raw(noop, frame, meter)
    }

    /// One run of `case`'s floor program.
    fn floor(&self, case: Case, frame: &[u8], meter: Meter) -> f64 {
        let index = Case::ALL.iter().position(|c| *c == case).expect("listed");
        self.run_raw(&self.floors[index], frame, meter)
    }

    /// One run of `case`'s floor on the IPv4-key table, if it has one.
    fn ipv4_key_floor(&self, case: Case, frame: &[u8], meter: Meter) -> Option<f64> {
        let program = self.ipv4_keys.floor(case)?;
        Some(self.run_raw(program, frame, meter))
    }

    fn run_raw(&self, program: &RawProgram, frame: &[u8], meter: Meter) -> f64 {
        meter.time(program.fd(), self.repeat, || {
            nanos(program.bench(frame, self.repeat))
        })
    }

    /// One subject run of `case`, checked to have taken its path.
    fn subject(&mut self, case: Case, frame: &[u8], meter: Meter) -> f64 {
        self.dataplane.set_shadow(0, case.shadow());
        if case.is_established() {
            self.ensure_established(case);
        } else if case.is_tc() {
            self.refresh_mirror();
        }
        let (traffic, not_service) = (self.traffic(), self.not_service());
        let shadow = self.dataplane.shadow_counts();
        let (repeat, dataplane) = (self.repeat, &self.dataplane);
        let time = meter.time(dataplane.program_fd(case.is_tc()), repeat, || {
            if case.is_tc() {
                nanos(dataplane.bench_tc(frame, repeat))
            } else if case.sampled() == Some(true) {
                bench_xdp_reading_the_ring(dataplane, frame, repeat)
            } else {
                nanos(dataplane.bench_xdp(frame, repeat))
            }
        });
        let traffic_after = self.traffic();
        let packets = traffic_after.packets - traffic.packets;
        let new_flows = traffic_after.new_flows - traffic.new_flows;
        let passed = self.not_service() - not_service;
        let repeat = u64::from(repeat);
        let expected = match case {
            Case::OtherPort | Case::OtherAddress => (0, 0, repeat),
            Case::NewFlow => (repeat, repeat, 0),
            Case::Established | Case::ShadowUnsampled | Case::ShadowSampled => (repeat, 0, 0),
            Case::Reply => (0, 0, 0),
        };
        assert_eq!(
            (packets, new_flows, passed),
            expected,
            "{}: (rewritten, new flows, passed as not_service) differ from the path it names",
            case.label()
        );
        let shadow_after = self.dataplane.shadow_counts();
        let shadowed = |what: ShadowCount| shadow_after[what as usize] - shadow[what as usize];
        let recorded = if case.sampled() == Some(true) {
            repeat
        } else {
            0
        };
        assert_eq!(
            (
                shadowed(ShadowCount::ClientRecords),
                shadowed(ShadowCount::RingFull)
            ),
            (recorded, 0),
            "{}: (records written, records lost to a full ring) differ from the path it names",
            case.label()
        );
        if case.is_tc() {
            self.verify_mirror(frame);
        }
        time
    }

    fn not_service(&self) -> u64 {
        self.dataplane.passed(PassReason::NotService)
    }
}

/// The time per run of `repeat` XDP runs that each write a shadow record,
/// in batches the ring holds, read out before each.
fn bench_xdp_reading_the_ring(dataplane: &TestDataplane, frame: &[u8], repeat: u32) -> f64 {
    let mut total = 0.0;
    let mut left = repeat;
    while left > 0 {
        let batch = left.min(SHADOW_BATCH);
        dataplane.drain_shadow_ring();
        total += nanos(dataplane.bench_xdp(frame, batch)) * f64::from(batch);
        left -= batch;
    }
    total / f64::from(repeat)
}

/// The bytes of a map key or value, as the kernel reads them.
fn bytes<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: a `Pod` type has no padding and no invalid bit patterns, so
    // all of its bytes are initialised and may be read as bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// `case`'s floor program on `dataplane`'s maps: the port bitmap's test
/// (and the address filter's), the established flow's lookup, the new
/// flow's service lookup and write, a reply's two lookups and two checksum helpers (the reply
/// frame is IPv4 over Ethernet: its TCP checksum is at byte 50).
fn floor(dataplane: &TestDataplane, case: Case) -> RawProgram {
    let flows = dataplane.pinned_map(map_names::FLOWS);
    let flows = flows.fd().as_fd();
    let key = |case| bytes(&flow_key(client(case), vip(), PROTO_TCP));
    let ports = dataplane.pinned_map(map_names::VIP_PORTS);
    let addresses = dataplane.pinned_map(map_names::VIP_FILTER);
    match case {
        Case::OtherPort => RawProgram::prefilter_floor(ports.fd().as_fd(), None),
        Case::OtherAddress => {
            RawProgram::prefilter_floor(ports.fd().as_fd(), Some(addresses.fd().as_fd()))
        }
        Case::Established | Case::ShadowUnsampled | Case::ShadowSampled => {
            RawProgram::lookup_floor(flows, &key(case))
        }
        Case::NewFlow => RawProgram::new_flow_floor(
            service(dataplane).as_ref(),
            flows,
            &key(case),
            &bytes(&bench_entry()),
        ),
        Case::Reply => {
            let vips = dataplane.pinned_map(map_names::BACKEND_VIPS);
            let backend = flow_key(client(case), blue(), PROTO_TCP).backend_key();
            RawProgram::reply_floor(
                (vips.fd().as_fd(), &bytes(&backend)),
                (flows, &key(case)),
                50,
            )
        }
    }
}

/// The services map and the benchmark's service key, for the new-flow
/// floors' lookup.
struct ServiceLookup {
    services: MapData,
    key: Vec<u8>,
}

impl ServiceLookup {
    fn as_ref(&self) -> (BorrowedFd<'_>, &[u8]) {
        (self.services.fd().as_fd(), &self.key)
    }
}

fn service(dataplane: &TestDataplane) -> ServiceLookup {
    ServiceLookup {
        services: dataplane.pinned_map(map_names::SERVICES),
        key: bytes(&service_key(vip(), PROTO_TCP)),
    }
}

/// The entry the new-flow floors write.
fn bench_entry() -> FlowEntry {
    FlowEntry {
        last_seen: now(),
        backend: endpoint(vip()),
        color: COLOR_BLUE,
        ..Default::default()
    }
}

/// A flow key as a table of IPv4 flows only could have it: 16 bytes, where
/// [`FlowKey`], which holds either family, has 40.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Ipv4FlowKey {
    client: [u8; 4],
    server: [u8; 4],
    client_port: [u8; 2],
    server_port: [u8; 2],
    proto: u8,
    reserved: [u8; 3],
}

// SAFETY: plain bytes without padding.
unsafe impl aya::Pod for Ipv4FlowKey {}

impl Ipv4FlowKey {
    fn of(key: &FlowKey) -> Ipv4FlowKey {
        let [a, b, c, d, ..] = key.client;
        let [e, f, g, h, ..] = key.server;
        Ipv4FlowKey {
            client: [a, b, c, d],
            server: [e, f, g, h],
            client_port: key.client_port,
            server_port: key.server_port,
            proto: key.proto,
            reserved: [0; 3],
        }
    }
}

/// `case`'s flow, keyed for the IPv4-key table.
fn ipv4_key(case: Case) -> Ipv4FlowKey {
    Ipv4FlowKey::of(&flow_key(client(case), vip(), PROTO_TCP))
}

/// An LRU table like the flow table, filled with the same flows, but keyed
/// by [`Ipv4FlowKey`]: the new-flow floor again on it shows what a second,
/// IPv4-only flow table would save on the flow-table call that path cannot
/// avoid; the established path's least whole form on it
/// (`RawProgram::established_path_floor`), whether any design with such a
/// table could meet that path's target.
struct Ipv4KeyTable {
    map: OwnedFd,
    /// The established case's floor and the new-flow case's.
    floors: [RawProgram; 2],
}

impl Ipv4KeyTable {
    fn new(capacity: u32, dataplane: &TestDataplane) -> Ipv4KeyTable {
        let map = create_map(
            BPF_MAP_TYPE_LRU_HASH,
            size_of::<Ipv4FlowKey>(),
            size_of::<FlowEntry>(),
            capacity,
        )
        .unwrap_or_else(|error| panic!("BPF_MAP_CREATE of the IPv4-key table: {error}"));
        let floors = [
            RawProgram::established_path_floor(
                map.as_fd(),
                std::mem::offset_of!(FlowEntry, backend) as i16,
            ),
            RawProgram::new_flow_floor(
                service(dataplane).as_ref(),
                map.as_fd(),
                &bytes(&ipv4_key(Case::NewFlow)),
                &bytes(&bench_entry()),
            ),
        ];
        Ipv4KeyTable { map, floors }
    }

    /// Inserts `flows`, then the established case's flow (again: the LRU
    /// may have evicted it), as the benchmark's flow table holds them.
    fn insert(&self, flows: &[FlowKey], entries: &[FlowEntry]) {
        let mut keys: Vec<Ipv4FlowKey> = flows.iter().map(Ipv4FlowKey::of).collect();
        let mut entries = entries.to_vec();
        keys.push(ipv4_key(Case::Established));
        entries.push(bench_entry());
        self.update(&keys, &entries);
        self.check_established_path();
    }

    /// The established path's floor finds the established flow and writes
    /// its backend over the destination. Shown with a backend other than
    /// the VIP, for once: the benchmark's entry maps the frame onto itself.
    fn check_established_path(&self) {
        let moved = FlowEntry {
            backend: endpoint(blue()),
            ..bench_entry()
        };
        self.update(&[ipv4_key(Case::Established)], &[moved]);
        let frame = frame(Case::Established);
        let left = self.floors[0].run_once(&frame);
        self.update(&[ipv4_key(Case::Established)], &[bench_entry()]);
        let blue = endpoint(blue());
        assert_eq!(
            (&left[30..34], &left[36..38]),
            (&blue.addr[..4], &blue.port[..]),
            "the established path's floor did not write the flow's backend"
        );
    }

    fn update(&self, keys: &[Ipv4FlowKey], entries: &[FlowEntry]) {
        batch::update(self.map.as_fd(), keys, entries)
            .unwrap_or_else(|error| panic!("BPF_MAP_UPDATE_BATCH on the IPv4-key table: {error}"));
    }

    fn floor(&self, case: Case) -> Option<&RawProgram> {
        match case {
            Case::Established => Some(&self.floors[0]),
            Case::NewFlow => Some(&self.floors[1]),
            _ => None,
        }
    }
}

/// Runs the whole matrix: one dataplane per service count, built from
/// nothing, then filled level by level. Neither services nor flows are ever
/// removed, so no configuration inherits state (a prefilter bit, a
/// half-emptied table) that a fresh deployment would not have.
pub fn run(plan: &KernelPlan) -> Result<KernelReport, Interrupted> {
    let frames: Vec<(Case, Vec<u8>)> = Case::ALL.iter().map(|&c| (c, frame(c))).collect();
    let mut configurations = Vec::new();
    for &services in &plan.service_counts {
        let mut bench = Bench::new(plan);
        bench.add_services(services);
        for &fill in &plan.fill_percents {
            check()?;
            let target = (u64::from(plan.flow_capacity) * u64::from(fill) / 100) as u32;
            bench.fill_flows(target);
            let configuration = Configuration {
                services,
                fill_percent: fill,
                flows_inserted: u64::from(target),
                flows_in_table: bench.dataplane.flow_count(),
                cases: measure(&mut bench, &frames, plan.rounds)?,
            };
            eprintln!("{}", progress(&configuration));
            configurations.push(configuration);
        }
    }
    // Reported by fill level, then service count.
    configurations.sort_by_key(|c| (c.fill_percent, c.services));
    Ok(KernelReport {
        repeat: plan.repeat,
        rounds: plan.rounds,
        flow_capacity: plan.flow_capacity,
        frame_bytes: frames[0].1.len(),
        configurations,
    })
}

fn nanos(duration: std::time::Duration) -> f64 {
    duration.as_nanos() as f64
}

fn progress(configuration: &Configuration) -> String {
    let cases: Vec<String> = configuration
        .cases
        .iter()
        .map(|c| format!("{:?} {:.0} ns x{:.2}", c.case, c.ns, c.ratio))
        .collect();
    format!(
        "bench: kernel {} % fill, {} services: {}",
        configuration.fill_percent,
        configuration.services,
        cases.join(", ")
    )
}

/// How a run is timed.
#[derive(Clone, Copy)]
enum Meter {
    /// `BPF_PROG_TEST_RUN`'s own timer: the whole run, in whole ns.
    KernelTimer,
    /// The kernel's run-time statistics: the time inside the program
    /// alone, to a fraction of a ns. They must be on (see
    /// `sys::enable_run_time_stats`).
    InsideProgram,
}

impl Meter {
    /// The time per run of `run`, `repeat` runs of `program` that return
    /// the kernel timer's figure.
    fn time(self, program: BorrowedFd, repeat: u32, run: impl FnOnce() -> f64) -> f64 {
        match self {
            Meter::KernelTimer => run(),
            Meter::InsideProgram => {
                let read = || {
                    run_time(program)
                        .unwrap_or_else(|error| panic!("BPF_OBJ_GET_INFO_BY_FD: {error}"))
                };
                let before = read();
                run();
                let after = read();
                assert_eq!(
                    after.runs - before.runs,
                    u64::from(repeat),
                    "the run-time statistics counted another number of runs"
                );
                (after.ns - before.ns) as f64 / f64::from(repeat)
            }
        }
    }
}

/// Rounds of every case, each subject (and floor) run right after a run of
/// the no-op program of its type. Ratios are taken within each such pair,
/// then the median over the rounds: this machine drifts between slow and
/// fast phases that last longer than a pair but shorter than a round, so a
/// subject is compared with the baseline of its own phase.
///
/// Then the same rounds again, timed inside the programs: what each costs
/// over the no-op, to a fraction of a ns (the kernel timer's whole ns is a
/// sixth of a no-op on a machine where that costs 6 ns). The two are kept
/// apart because the statistics' clock reads add to every run the kernel
/// timer sees.
fn measure(
    bench: &mut Bench,
    frames: &[(Case, Vec<u8>)],
    rounds: usize,
) -> Result<Vec<CaseFigures>, Interrupted> {
    let (timed, xdp, tc) = paired_runs(bench, frames, rounds, Meter::KernelTimer)?;
    let inside = {
        let _stats = enable_run_time_stats()
            .unwrap_or_else(|error| panic!("BPF_ENABLE_STATS (run time): {error}"));
        paired_runs(bench, frames, rounds, Meter::InsideProgram)?.0
    };
    Ok(frames
        .iter()
        .zip(timed.into_iter().zip(inside))
        .map(|((case, _), (timed, inside))| {
            let (ns, ratio) = figures(&timed.subject).expect("every round runs the subject");
            let (floor_ns, floor_ratio) = figures(&timed.floor).expect("every case has a floor");
            let ipv4_key_floor = figures(&timed.ipv4_key_floor);
            CaseFigures {
                case: *case,
                ns,
                baseline_ns: if case.is_tc() { tc } else { xdp },
                ratio,
                floor_ns,
                floor_ratio,
                ipv4_key_floor_ns: ipv4_key_floor.map(|(ns, _)| ns),
                ipv4_key_floor_ratio: ipv4_key_floor.map(|(_, ratio)| ratio),
                over_noop_ns: over_noop(&inside.subject).expect("every round runs the subject"),
                floor_over_noop_ns: over_noop(&inside.floor).expect("every case has a floor"),
                ipv4_key_floor_over_noop_ns: over_noop(&inside.ipv4_key_floor),
                samples_ns: timed.subject.iter().map(|(ns, _)| *ns).collect(),
            }
        })
        .collect())
}

/// Every case's runs, each paired with the no-op run just before it, and
/// the medians of the XDP and TC no-op runs.
fn paired_runs(
    bench: &mut Bench,
    frames: &[(Case, Vec<u8>)],
    rounds: usize,
    meter: Meter,
) -> Result<(Vec<CaseRuns>, f64, f64), Interrupted> {
    let mut runs: Vec<CaseRuns> = frames.iter().map(|_| CaseRuns::default()).collect();
    let (mut xdp_baselines, mut tc_baselines) = (Vec::new(), Vec::new());
    for round in 0..rounds * CHEAP_CASE_ROUNDS {
        check()?;
        for ((case, frame), runs) in frames.iter().zip(runs.iter_mut()) {
            if round >= rounds * case.round_weight() {
                continue;
            }
            let baseline = bench.baseline(*case, frame, meter);
            if case.is_tc() {
                tc_baselines.push(baseline);
            } else {
                xdp_baselines.push(baseline);
            }
            runs.subject
                .push((bench.subject(*case, frame, meter), baseline));
            let floor = bench.floor(*case, frame, meter);
            runs.floor
                .push((floor, bench.baseline(*case, frame, meter)));
            if let Some(floor) = bench.ipv4_key_floor(*case, frame, meter) {
                runs.ipv4_key_floor
                    .push((floor, bench.baseline(*case, frame, meter)));
            }
        }
    }
    Ok((runs, median(&xdp_baselines), median(&tc_baselines)))
}

/// One case's runs in one configuration: (ns, the baseline run just before).
#[derive(Default)]
struct CaseRuns {
    subject: Vec<(f64, f64)>,
    floor: Vec<(f64, f64)>,
    ipv4_key_floor: Vec<(f64, f64)>,
}

/// The median over the runs of each one's ns over its paired baseline, if
/// there were runs.
fn over_noop(runs: &[(f64, f64)]) -> Option<f64> {
    let over: Vec<f64> = runs.iter().map(|(ns, baseline)| ns - baseline).collect();
    (!over.is_empty()).then(|| median(&over))
}

/// The median ns and the median ratio to the paired baseline, if there
/// were runs.
fn figures(runs: &[(f64, f64)]) -> Option<(f64, f64)> {
    if runs.is_empty() {
        return None;
    }
    let ns: Vec<f64> = runs.iter().map(|(ns, _)| *ns).collect();
    let ratios: Vec<f64> = runs.iter().map(|(ns, baseline)| ns / baseline).collect();
    Some((median(&ns), median(&ratios)))
}
