//! The XDP program against `bluegreen_common::model::ingress`, the plain
//! Rust reference, on random frames: valid and invalid, for services and
//! not, whole, truncated and corrupted. Both start from the same services
//! and flow table and must produce the same bytes and flow-table effects.
//! Needs root.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use bluegreen::endpoint::Cidr;
use bluegreen_common::{
    Endpoint, FlowEntry, FlowKey, PassReason, PoolBackend, SERVICE_HAS_PREVIEW, ServiceKey,
    ServiceState, Settings, Timeouts, TrafficCounters,
    model::{self, Outcome},
    other_color, traffic_index,
};
use bluegreen_testbed::{
    kernel::{
        RETIRED_COUNTER_SLOT, TestDataplane, TestService, XDP_PASS, endpoint, flow_key, hz, now,
        service_key,
    },
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, Frame, Ipv6Ext, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
        TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Transport, verify_checksums, with_outer_tag,
    },
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestRunner},
};

/// Pre-existing entries are 1 s, 6 s or 60 s old: live, expired only when
/// closing (TCP), or expired. No age is near a timeout, so the jiffy or two
/// between the model's clock and the kernel's never matters.
const TIMEOUTS: Timeouts = Timeouts {
    tcp_idle_secs: 30,
    tcp_closing_secs: 5,
    udp_idle_secs: 10,
};
const AGES_SECS: [u64; 3] = [1, 6, 60];

fn settings() -> Settings {
    Settings::new(&TIMEOUTS, hz())
}

const SERVICE_PORTS: [u16; 3] = [80, 53, 443];

/// VIPs by family; the services are every VIP with TCP on 80 and 443 and
/// UDP on 53.
fn vips(ipv6: bool) -> [IpAddr; 2] {
    let parse = |text: &str| text.parse().unwrap();
    if ipv6 {
        [parse("2001:db8::10"), parse("2001:db8::11")]
    } else {
        [parse("192.0.2.10"), parse("192.0.2.11")]
    }
}

fn address(ipv6: bool, v4: &str, v6: &str) -> IpAddr {
    (if ipv6 { v6 } else { v4 }).parse().unwrap()
}

/// `base` moved on by `offset`, in the same family.
fn offset_ip(base: IpAddr, offset: u32) -> IpAddr {
    match base {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + offset).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) + u128::from(offset)).into()),
    }
}

/// The first backend of a color of the service on `vip` and `port`: each
/// service has its own (a backend serves one service), in a /24 (or /120)
/// named after the VIP's last byte.
fn first_backend(color: usize, vip: IpAddr, port: u16) -> SocketAddr {
    let (v4, v6, port_base) = if color == 0 {
        ("10.1.0.1", "fd00:1::1", 8000)
    } else {
        ("10.2.0.1", "fd00:2::1", 9000)
    };
    let last_byte = match vip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    let base = address(vip.is_ipv6(), v4, v6);
    SocketAddr::new(
        offset_ip(base, u32::from(last_byte) << 8),
        port.wrapping_add(port_base),
    )
}

fn blue(vip: IpAddr, port: u16) -> SocketAddr {
    first_backend(0, vip, port)
}

fn green(vip: IpAddr, port: u16) -> SocketAddr {
    first_backend(1, vip, port)
}

/// Replica `index` of a color's pool; replica 0 is [`blue`] or [`green`].
fn replica(color: usize, vip: IpAddr, port: u16, index: usize) -> SocketAddr {
    let first = first_backend(color, vip, port);
    SocketAddr::new(offset_ip(first.ip(), index as u32), first.port())
}

fn retired(ipv6: bool) -> SocketAddr {
    SocketAddr::new(address(ipv6, "10.0.9.9", "fd00:9::9"), 9999)
}

/// Every service of a case: each color a pool of replicas with the case's
/// weights (0 drains a replica; all 0 leaves the color without a backend).
fn services(case: &Case) -> Vec<TestService> {
    let mut services = Vec::new();
    for ipv6 in [false, true] {
        for vip in vips(ipv6) {
            for (port, proto) in [(80, PROTO_TCP), (443, PROTO_TCP), (53, PROTO_UDP)] {
                let state = ServiceState {
                    generation: case.generation,
                    counter_slot: services.len() as u32,
                    active: case.active,
                    previous: other_color(case.active),
                    weight: case.weight,
                    flags: if case.preview.is_some() {
                        SERVICE_HAS_PREVIEW
                    } else {
                        0
                    },
                    ..Default::default()
                }
                .with_forced_color(case.forced);
                let pools = [0, 1].map(|color| {
                    case.pools[color]
                        .iter()
                        .enumerate()
                        .map(|(index, &weight)| (replica(color, vip, port, index), weight))
                        .collect()
                });
                services.push((service_key(SocketAddr::new(vip, port), proto), state, pools));
            }
        }
    }
    services
}

/// A flow entry present before the packet, keyed by the frame's own
/// (uncorrupted) addresses.
#[derive(Clone, Debug)]
struct Existing {
    color: u8,
    generation: u32,
    closing: bool,
    age_secs: u64,
    retired_backend: bool,
}

/// A preview prefix given to every service: the client's own address cut to
/// `len` bits (so it matches), or a prefix elsewhere (so it does not).
#[derive(Clone, Debug)]
struct Preview {
    len: u8,
    matching: bool,
}

impl Preview {
    fn prefix(&self, client: IpAddr) -> Cidr {
        let (addr, max) = match (client, self.matching) {
            (IpAddr::V4(_), true) => (client, 32),
            (IpAddr::V6(_), true) => (client, 128),
            (IpAddr::V4(_), false) => ("192.0.2.0".parse().expect("literal"), 32),
            (IpAddr::V6(_), false) => ("2001:db8::".parse().expect("literal"), 128),
        };
        let len = if self.matching {
            self.len.min(max)
        } else {
            self.len.clamp(24, max)
        };
        let unmasked = Cidr { addr, len };
        Cidr {
            addr: unmasked.network(),
            len,
        }
    }

    fn contains(&self, prefix: &Cidr, client: &[u8; 16], family: u8) -> bool {
        if prefix.wire_family() != family {
            return false;
        }
        let network = prefix.wire_addr();
        let bits = usize::from(prefix.len);
        (0..bits).all(|bit| {
            let mask = 0x80 >> (bit % 8);
            network[bit / 8] & mask == client[bit / 8] & mask
        })
    }
}

/// The maps as the model sees them: the pools as the product wrote them.
struct ModelTables<'a> {
    dataplane: &'a TestDataplane,
    services: &'a [(ServiceKey, ServiceState)],
    existing: Option<(FlowKey, FlowEntry)>,
    preview: Option<(&'a Preview, Cidr)>,
}

impl model::Tables for ModelTables<'_> {
    fn service(&self, key: &ServiceKey) -> Option<ServiceState> {
        self.services
            .iter()
            .find(|(known, _)| known == key)
            .map(|(_, state)| *state)
    }

    fn flow(&self, key: &FlowKey) -> Option<FlowEntry> {
        self.existing
            .filter(|(known, _)| known == key)
            .map(|(_, entry)| entry)
    }

    fn maglev_entry(&self, chunk: u32, at: usize) -> Option<u8> {
        self.dataplane.maglev_entry(chunk, at)
    }

    fn backend(&self, index: u32) -> Option<PoolBackend> {
        self.dataplane.backend(index)
    }

    fn in_preview(&self, _counter_slot: u32, family: u8, client: &[u8; 16]) -> bool {
        self.preview
            .as_ref()
            .is_some_and(|(preview, prefix)| preview.contains(prefix, client, family))
    }
}

#[derive(Clone, Debug)]
struct Case {
    frame: Frame,
    active: u8,
    generation: u32,
    /// The color of the last forced switch, independent of `active`: a
    /// graceful switch may have followed it.
    forced: u8,
    /// Share of new flows for the idle color.
    weight: u8,
    /// Each color's replicas by weight.
    pools: [Vec<u32>; 2],
    preview: Option<Preview>,
    existing: Option<Existing>,
    outer_tag: Option<u16>,
    /// Where to cut the frame, anywhere from 14 bytes to its full length.
    truncate: Option<Index>,
    /// Byte positions (mostly in the headers) and what to XOR them with.
    corrupt: Vec<(Index, u8)>,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.frame.build();
        if let Some(ethertype) = self.outer_tag {
            bytes = with_outer_tag(&bytes, ethertype, 42);
        }
        if let Some(cut) = &self.truncate {
            // BPF_PROG_TEST_RUN refuses frames without an Ethernet header.
            bytes.truncate(14 + cut.index(bytes.len() - 13));
        }
        for (at, mask) in &self.corrupt {
            let at = at.index(bytes.len().min(90));
            bytes[at] ^= mask;
        }
        bytes
    }

    /// Whether the frame went out as built, with checksums a full recompute
    /// accepts (UDP over IPv6 without one is invalid).
    fn is_intact(&self) -> bool {
        let udp_without_checksum = self.frame.transport == Transport::Udp { checksum: false };
        self.truncate.is_none()
            && self.corrupt.is_empty()
            && self.outer_tag.is_none()
            && !(self.frame.dst.is_ipv6() && udp_without_checksum)
    }

    fn flow_key(&self) -> FlowKey {
        let proto = match self.frame.transport {
            Transport::Tcp { .. } => PROTO_TCP,
            Transport::Udp { .. } => PROTO_UDP,
            Transport::Other(proto) => proto,
        };
        flow_key(self.frame.src, self.frame.dst, proto)
    }

    /// `services` name the counter slot that the kernel would have recorded,
    /// and `dataplane`'s pools the backend's (a retired backend has none
    /// left: [`RETIRED_COUNTER_SLOT`]).
    fn existing_entry(
        &self,
        now: u64,
        services: &[(ServiceKey, ServiceState)],
        dataplane: &TestDataplane,
    ) -> Option<FlowEntry> {
        let existing = self.existing.as_ref()?;
        let (vip, port) = (self.frame.dst.ip(), self.frame.dst.port());
        let backend = if existing.retired_backend {
            retired(vip.is_ipv6())
        } else if existing.color == 0 {
            blue(vip, port)
        } else {
            green(vip, port)
        };
        let key = self.flow_key();
        // The dataplane records flows only for services, under their slot
        // (and invalidates them when a service goes): an entry for anything
        // else is a state it never reaches.
        let (service, state) = services.iter().find(|(service, _)| {
            service.vip == key.server
                && service.port == key.server_port
                && service.proto == key.proto
        })?;
        Some(FlowEntry {
            last_seen: now - existing.age_secs * hz(),
            backend: endpoint(backend),
            generation: existing.generation,
            color: existing.color,
            closing: existing.closing as u8,
            counter_slot: state.counter_slot as u16,
            backend_counter_slot: dataplane
                .backend_counter_slot(service, existing.color, backend)
                .unwrap_or(RETIRED_COUNTER_SLOT),
        })
    }
}

fn transport() -> impl Strategy<Value = Transport> {
    let flags = prop_oneof![
        Just(TCP_SYN),
        Just(TCP_ACK),
        Just(TCP_SYN | TCP_ACK),
        Just(TCP_FIN | TCP_ACK),
        Just(TCP_RST),
        any::<u8>(),
    ];
    prop_oneof![
        4 => flags.prop_map(|flags| Transport::Tcp { flags }),
        4 => any::<bool>().prop_map(|checksum| Transport::Udp { checksum }),
        1 => prop_oneof![Just(PROTO_ICMP), Just(PROTO_ICMPV6), any::<u8>()].prop_map(Transport::Other),
    ]
}

fn ipv6_extensions() -> impl Strategy<Value = Vec<Ipv6Ext>> {
    let ext = prop_oneof![
        (0u8..3).prop_map(Ipv6Ext::HopByHop),
        (0u8..3).prop_map(Ipv6Ext::DestOptions),
        Just(Ipv6Ext::Routing),
        (0u16..3, any::<bool>()).prop_map(|(offset, more)| Ipv6Ext::Fragment { offset, more }),
    ];
    prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(ext, 1..=5),
    ]
}

#[derive(Clone, Copy, Debug)]
enum PortKind {
    /// A port some service has for the frame's protocol.
    OfTransport,
    AnyService,
    Random,
}

fn port_kind() -> impl Strategy<Value = PortKind> {
    prop_oneof![
        6 => Just(PortKind::OfTransport),
        1 => Just(PortKind::AnyService),
        1 => Just(PortKind::Random),
    ]
}

prop_compose! {
    fn frame()(
        ipv6 in any::<bool>(),
        transport in transport(),
        to_vip in prop::bool::weighted(0.85),
        vip_index in 0usize..2,
        port_kind in port_kind(),
        port_pick in any::<Index>(),
        random_port in any::<u16>(),
        client_index in 0u8..2,
        client_port in prop_oneof![Just(40000u16), Just(40001), any::<u16>()],
        vlan in prop::option::weighted(0.2, any::<u16>()),
        options in prop::collection::vec(any::<[u8; 4]>(), 0..=10),
        with_options in prop::bool::weighted(0.2),
        fragment in prop_oneof![8 => Just(0x4000u16), 1 => Just(0), 1 => any::<u16>()],
        extensions in ipv6_extensions(),
        payload in prop::collection::vec(any::<u8>(), 0..40),
    ) -> Frame {
        let client_ip = if ipv6 {
            format!("2001:db8:c::{}", client_index + 1)
        } else {
            format!("198.51.100.{}", client_index + 1)
        };
        let dst_ip = if to_vip { vips(ipv6)[vip_index] } else { blue(vips(ipv6)[0], 0).ip() };
        let port = match (port_kind, transport) {
            (PortKind::OfTransport, Transport::Tcp { .. }) => *port_pick.get(&[80, 443]),
            (PortKind::OfTransport, Transport::Udp { .. }) => 53,
            (PortKind::Random, _) => random_port,
            _ => *port_pick.get(&SERVICE_PORTS),
        };
        let mut frame = Frame::new(
            SocketAddr::new(client_ip.parse().unwrap(), client_port),
            SocketAddr::new(dst_ip, port),
            transport,
        )
        .payload(&payload);
        frame.vlan = vlan;
        if ipv6 {
            frame.ipv6_extensions = extensions;
        } else {
            if with_options {
                frame.ipv4_options = options.concat();
            }
            frame.ipv4_fragment = fragment;
        }
        frame
    }
}

prop_compose! {
    fn existing()(
        color in 0u8..2,
        generation in 0u32..4,
        closing in prop::bool::weighted(0.3),
        age_secs in prop::sample::select(AGES_SECS.to_vec()),
        retired_backend in prop::bool::weighted(0.2),
    ) -> Existing {
        Existing { color, generation, closing, age_secs, retired_backend }
    }
}

/// One color's replicas by weight: mostly one, sometimes several, now and
/// then drained ones (and, rarely, no backend taking new flows at all).
fn pool_weights() -> impl Strategy<Value = Vec<u32>> {
    let weight = prop_oneof![6 => Just(1u32), 1 => Just(0u32), 2 => 2u32..=100];
    prop_oneof![
        3 => Just(vec![1]),
        2 => prop::collection::vec(weight, 1..=8),
    ]
}

prop_compose! {
    fn case()(
        frame in frame(),
        active in 0u8..2,
        generation in 1u32..4,
        forced in 0u8..2,
        weight in prop_oneof![3 => Just(0u8), 1 => Just(10u8), 1 => Just(50u8), 1 => 1u8..100],
        blue_pool in pool_weights(),
        green_pool in pool_weights(),
        preview in prop::option::weighted(0.3, (0u8..=128, prop::bool::ANY).prop_map(|(len, matching)| Preview { len, matching })),
        existing in prop::option::weighted(0.5, existing()),
        outer_tag in prop::option::weighted(0.05, prop::sample::select(vec![ETH_P_8021Q, ETH_P_8021AD])),
        truncate in prop::option::weighted(0.15, any::<Index>()),
        corrupt in prop_oneof![
            6 => Just(Vec::new()),
            1 => prop::collection::vec((any::<Index>(), 1u8..=255), 1..=3),
        ],
    ) -> Case {
        let pools = [blue_pool, green_pool];
        Case { frame, active, generation, forced, weight, pools, preview, existing, outer_tag, truncate, corrupt }
    }
}

/// The counters of every backend in the services' pools, and of the
/// retired one, by counter slot.
fn backend_traffic_snapshot(
    dataplane: &TestDataplane,
    services: &[(ServiceKey, ServiceState)],
) -> BTreeMap<u32, TrafficCounters> {
    let pool_slots = services.iter().flat_map(|(_, state)| {
        state.pools.iter().flat_map(|pool| {
            (pool.first_backend..pool.first_backend + pool.backend_count).map(|index| {
                let member: PoolBackend = dataplane.backend(index).expect("a pool's backend");
                member.counter_slot
            })
        })
    });
    pool_slots
        .chain([RETIRED_COUNTER_SLOT])
        .map(|slot| (slot, dataplane.backend_traffic(slot)))
        .collect()
}

/// Every service's counters for both colors, in slot order.
fn traffic_snapshot(
    dataplane: &TestDataplane,
    services: &[(ServiceKey, ServiceState)],
) -> Vec<TrafficCounters> {
    (0..services.len() as u32)
        .flat_map(|slot| [0, 1].map(|color| dataplane.traffic(slot, color)))
        .collect()
}

fn check(dataplane: &mut TestDataplane, case: &Case) -> Result<(), TestCaseError> {
    dataplane.clear_flows();
    let preview = case
        .preview
        .as_ref()
        .map(|preview| (preview, preview.prefix(case.frame.src.ip())));
    let keys: Vec<ServiceKey> = services(case).iter().map(|(key, ..)| *key).collect();
    let services: Vec<(ServiceKey, ServiceState)> = keys
        .into_iter()
        .zip(dataplane.insert_services(&services(case)))
        .collect();
    let prefixes: Vec<Cidr> = preview.iter().map(|(_, prefix)| *prefix).collect();
    for (_, state) in &services {
        dataplane.set_preview(state.counter_slot, &prefixes);
    }
    let frame = case.bytes();
    let existing_key = case.flow_key();
    let before = now();
    let existing = case.existing_entry(before, &services, dataplane);
    if let Some(entry) = existing {
        dataplane.insert_flow(existing_key, entry);
    }
    let traffic_before = traffic_snapshot(dataplane, &services);
    let backend_traffic_before = backend_traffic_snapshot(dataplane, &services);
    let passed_before = dataplane.passed_all();

    let (verdict, output) = dataplane.run_xdp(&frame);
    let after = now();

    let mut expected = frame.clone();
    let tables = ModelTables {
        dataplane,
        services: &services,
        existing: existing.map(|entry| (existing_key, entry)),
        preview,
    };
    let outcome = model::ingress(&mut expected, &tables, &settings(), before);
    prop_assert_eq!(verdict, XDP_PASS, "verdict");
    prop_assert_eq!(
        &output,
        &expected,
        "output frame; model outcome {:?}",
        outcome
    );

    let mut flows: HashMap<FlowKey, FlowEntry> = dataplane.flows().into_iter().collect();
    let mut expected_flows: HashMap<FlowKey, FlowEntry> = existing
        .map(|entry| (existing_key, entry))
        .into_iter()
        .collect();
    let mut expected_traffic = traffic_before;
    let mut expected_backend_traffic = backend_traffic_before;
    let mut expected_passed = passed_before;
    match outcome {
        Outcome::Passed(reason) => expected_passed[reason as usize] += 1,
        Outcome::Rewritten {
            key,
            entry,
            new_flow,
        } => {
            if case.is_intact() {
                verify_checksums(&output)
                    .map_err(|error| TestCaseError::fail(format!("rewritten frame: {error}")))?;
            }
            let recorded = flows.get_mut(&key).ok_or_else(|| {
                TestCaseError::fail(format!("no flow entry for rewritten {key:?}"))
            })?;
            prop_assert!(
                (before..=after).contains(&recorded.last_seen),
                "last_seen {} outside the run [{}, {}]",
                recorded.last_seen,
                before,
                after
            );
            // The model stamps its own clock; only the kernel's is real.
            recorded.last_seen = entry.last_seen;
            expected_flows.insert(key, entry);
            let service = services
                .iter()
                .find(|(service, _)| service.vip == key.server && service.port == key.server_port)
                .map(|(_, state)| state)
                .expect("a rewritten packet belongs to a service");
            let backend_counters = expected_backend_traffic
                .get_mut(&entry.backend_counter_slot)
                .ok_or_else(|| {
                    TestCaseError::fail(format!(
                        "the flow counts into slot {}, no backend's",
                        entry.backend_counter_slot
                    ))
                })?;
            for counters in [
                &mut expected_traffic[traffic_index(service.counter_slot, entry.color) as usize],
                backend_counters,
            ] {
                counters.packets += 1;
                counters.bytes += frame.len() as u64;
                counters.new_flows += new_flow as u64;
            }
            if new_flow {
                let reply_key = FlowKey {
                    server: entry.backend.addr,
                    server_port: entry.backend.port,
                    ..key
                };
                prop_assert_eq!(
                    dataplane.backend_vip(&reply_key.backend_key()),
                    Some(endpoint_of(&key)),
                    "the VIP a new flow's backend answers for"
                );
            }
        }
    }
    prop_assert_eq!(flows, expected_flows, "flow table (outcome {:?})", outcome);
    prop_assert_eq!(
        traffic_snapshot(dataplane, &services),
        expected_traffic,
        "traffic counters (slot * 2 + color; outcome {:?})",
        outcome
    );
    prop_assert_eq!(
        backend_traffic_snapshot(dataplane, &services),
        expected_backend_traffic,
        "backend counters by slot (outcome {:?})",
        outcome
    );
    prop_assert_eq!(
        dataplane.passed_all(),
        expected_passed,
        "pass counters, indexed by {:?}",
        PassReason::ALL
    );
    Ok(())
}

/// The VIP side of a flow key, as the backend-to-VIP map stores it.
fn endpoint_of(key: &FlowKey) -> Endpoint {
    Endpoint {
        addr: key.server,
        port: key.server_port,
        reserved: [0; 2],
    }
}

#[test]
fn xdp_program_matches_the_model() {
    let mut dataplane = TestDataplane::new();
    dataplane.set_settings(settings());
    let dataplane = RefCell::new(dataplane);
    let mut runner = TestRunner::new(Config {
        cases: 300,
        // The minimal failing case is in the panic message; no regression
        // files are written into the source tree.
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| check(&mut dataplane.borrow_mut(), &case));
    if let Err(failure) = result {
        panic!("the XDP program and the model disagree: {failure}");
    }
}
