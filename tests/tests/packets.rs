//! Fixture tests of the XDP and TC programs through `BPF_PROG_TEST_RUN`: a
//! frame goes in, and the exact frame that must come out is built
//! independently with the fixture builder (never by bluegreen's own code).
//! Needs root.

use std::net::{Ipv4Addr, SocketAddr};

use bluegreen_common::{
    COLOR_BLUE, COLOR_GREEN, FlowEntry, FlowKey, PassReason, ServiceState, Settings, Timeouts,
    TrafficCounters, flow_hash, new_flow_color, other_color,
};
use bluegreen_testbed::{
    kernel::{
        RETIRED_COUNTER_SLOT, TC_ACT_OK, TestDataplane, XDP_PASS, endpoint, flow_key, hz, now,
        service_key,
    },
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, Frame, Ipv6Ext, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
        TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, Transport, arp_request, verify_checksums,
        with_outer_tag,
    },
};

/// Short enough that an expired entry needs no ancient timestamp, long
/// enough that no entry expires while a test runs.
const TIMEOUTS: Timeouts = Timeouts {
    tcp_idle_secs: 30,
    tcp_closing_secs: 5,
    udp_idle_secs: 10,
};

fn settings() -> Settings {
    Settings::new(&TIMEOUTS, hz())
}

/// `count` seconds in the dataplane's clock (jiffies).
fn seconds(count: u64) -> u64 {
    count * hz()
}

/// Older than every timeout in [`TIMEOUTS`], in seconds.
const STALE_SECS: u64 = 60;

/// TCP flags of the first packet of a connection (UDP frames have none).
const OPENING: u8 = TCP_SYN;
/// TCP flags of a packet of an established connection.
const ONGOING: u8 = TCP_ACK | TCP_PSH;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One service (VIP, a blue and a green backend) and a client, in one
/// address family and protocol.
#[derive(Clone, Copy, Debug)]
struct Setup {
    proto: Proto,
    client: SocketAddr,
    vip: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
    /// A backend the service no longer lists, for flows that outlive it.
    retired: SocketAddr,
    slot: u32,
}

impl Setup {
    fn new(family: Family, proto: Proto) -> Self {
        // Backend ports differ from the VIP's, so a missed port rewrite shows.
        let (vip_port, blue_port, green_port) = match proto {
            Proto::Tcp => (80, 8080, 8081),
            Proto::Udp => (53, 5301, 5302),
        };
        let at = |addr: &str, port| SocketAddr::new(addr.parse().unwrap(), port);
        let (client, vip, blue, green, retired) = match family {
            Family::V4 => (
                "198.51.100.7",
                "192.0.2.10",
                "10.0.1.1",
                "10.0.2.1",
                "10.0.9.9",
            ),
            Family::V6 => (
                "2001:db8:c::7",
                "2001:db8::10",
                "fd00:1::1",
                "fd00:2::1",
                "fd00:9::9",
            ),
        };
        Self {
            proto,
            client: at(client, 40000),
            vip: at(vip, vip_port),
            blue: at(blue, blue_port),
            green: at(green, green_port),
            retired: at(retired, 9999),
            slot: 7,
        }
    }

    fn proto_number(&self) -> u8 {
        match self.proto {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    /// The service on `active` at `generation`, its last forced switch
    /// having gone to `forced`.
    fn state(&self, active: u8, generation: u32, forced: u8) -> ServiceState {
        ServiceState {
            generation,
            counter_slot: self.slot,
            active,
            previous: other_color(active),
            weight: 0,
            flags: 0,
            pools: Default::default(),
        }
        .with_forced_color(forced)
    }

    /// A dataplane with [`settings()`] and this fixture's service freshly
    /// added on `active`.
    fn dataplane(&self, active: u8) -> TestDataplane {
        let mut dataplane = TestDataplane::new();
        dataplane.set_settings(settings());
        self.switch(&mut dataplane, active, 1, active);
        dataplane
    }

    /// Replaces the service value whole, as the CLI does: a graceful switch
    /// keeps `generation` and `forced`; a forced one bumps the generation
    /// and sets `forced` to `active`.
    fn switch(&self, dataplane: &mut TestDataplane, active: u8, generation: u32, forced: u8) {
        self.install(dataplane, self.state(active, generation, forced));
    }

    fn install(&self, dataplane: &mut TestDataplane, state: ServiceState) {
        dataplane.insert_service(
            service_key(self.vip, self.proto_number()),
            state,
            [self.blue, self.green],
        );
    }

    /// The same client on another source port: another connection.
    fn other_client(&self) -> Self {
        Self {
            client: SocketAddr::new(self.client.ip(), self.client.port() + 1),
            ..*self
        }
    }

    fn frame(&self, src: SocketAddr, dst: SocketAddr, tcp_flags: u8) -> Frame {
        match self.proto {
            Proto::Tcp => Frame::tcp(src, dst, tcp_flags),
            Proto::Udp => Frame::udp(src, dst),
        }
    }

    /// Client to VIP: what reaches XDP.
    fn to_vip(self, tcp_flags: u8) -> Frame {
        self.frame(self.client, self.vip, tcp_flags)
    }

    /// Client to `backend`: what XDP must turn [`Self::to_vip`] into.
    fn to(&self, backend: SocketAddr, tcp_flags: u8) -> Frame {
        self.frame(self.client, backend, tcp_flags)
    }

    /// `backend` to client: what reaches TC egress.
    fn reply_from(&self, backend: SocketAddr) -> Frame {
        self.frame(backend, self.client, TCP_SYN | TCP_ACK)
    }

    fn flow_key(&self) -> FlowKey {
        flow_key(self.client, self.vip, self.proto_number())
    }

    fn reply_key(&self, backend: SocketAddr) -> FlowKey {
        flow_key(self.client, backend, self.proto_number())
    }

    /// The counter slot the dataplane gives `backend` in `color`'s pool;
    /// [`RETIRED_COUNTER_SLOT`] for one in no pool.
    fn backend_slot(&self, dataplane: &TestDataplane, backend: SocketAddr, color: u8) -> u32 {
        dataplane
            .backend_counter_slot(&service_key(self.vip, self.proto_number()), color, backend)
            .unwrap_or(RETIRED_COUNTER_SLOT)
    }

    fn entry(
        &self,
        dataplane: &TestDataplane,
        backend: SocketAddr,
        color: u8,
        generation: u32,
    ) -> FlowEntry {
        FlowEntry {
            last_seen: now(),
            backend: endpoint(backend),
            generation,
            color,
            closing: 0,
            counter_slot: self.slot as u16,
            backend_counter_slot: self.backend_slot(dataplane, backend, color),
        }
    }

    fn assert_flow(
        &self,
        dataplane: &TestDataplane,
        backend: SocketAddr,
        color: u8,
        generation: u32,
        closing: bool,
    ) -> FlowEntry {
        let entry = dataplane
            .flow(&self.flow_key())
            .unwrap_or_else(|| panic!("no flow entry for {} -> {}", self.client, self.vip));
        let summary = (
            entry.backend,
            entry.color,
            entry.generation,
            entry.closing,
            entry.backend_counter_slot,
        );
        let wanted = (
            endpoint(backend),
            color,
            generation,
            closing as u8,
            self.backend_slot(dataplane, backend, color),
        );
        assert_eq!(
            summary, wanted,
            "flow entry (backend, color, generation, closing, backend counter slot)"
        );
        entry
    }
}

/// `entry` as last seen `age` ago.
fn aged(entry: FlowEntry, age: u64) -> FlowEntry {
    FlowEntry {
        last_seen: entry
            .last_seen
            .checked_sub(age)
            .expect("the machine has been up longer than the age"),
        ..entry
    }
}

fn counters(packets: u64, bytes: usize, new_flows: u64) -> TrafficCounters {
    TrafficCounters {
        packets,
        bytes: bytes as u64,
        new_flows,
    }
}

/// Offsets where two frames differ, for a failure message one can act on.
fn describe_difference(actual: &[u8], expected: &[u8]) -> String {
    let mut lines: Vec<String> = actual
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (got, want))| got != want)
        .map(|(at, (got, want))| format!("  offset {at}: got {got:#04x}, want {want:#04x}"))
        .collect();
    if actual.len() != expected.len() {
        lines.push(format!(
            "  length: got {}, want {}",
            actual.len(),
            expected.len()
        ));
    }
    lines.join("\n")
}

fn assert_frame(actual: &[u8], expected: &[u8], what: &str) {
    assert!(
        actual == expected,
        "{what}: wrong output frame\n{}\n  got  {actual:02x?}\n  want {expected:02x?}",
        describe_difference(actual, expected)
    );
}

/// XDP must pass `input` on as exactly `expected`, with valid checksums.
fn assert_rewritten(dataplane: &TestDataplane, input: &[u8], expected: &[u8], what: &str) {
    let (verdict, output) = dataplane.run_xdp(input);
    assert_eq!(verdict, XDP_PASS, "{what}: XDP verdict");
    assert_frame(&output, expected, what);
    verify_checksums(&output).unwrap_or_else(|error| panic!("{what}: {error}"));
}

/// XDP must pass `to_vip` on to `backend`: the same frame with only its
/// destination rewritten, byte for byte, with valid checksums. Returns the
/// input frame, for the traffic counters.
fn assert_steered(
    dataplane: &TestDataplane,
    to_vip: Frame,
    backend: SocketAddr,
    what: &str,
) -> Vec<u8> {
    let input = to_vip.build();
    let expected = Frame {
        dst: backend,
        ..to_vip
    };
    assert_rewritten(dataplane, &input, &expected.build(), what);
    input
}

/// XDP must pass `input` on untouched, count it under `reason`, and record
/// no flow.
fn assert_passed(dataplane: &TestDataplane, input: &[u8], reason: PassReason, what: &str) {
    let before = dataplane.passed_all();
    let flows_before = dataplane.flows();
    let (verdict, output) = dataplane.run_xdp(input);
    assert_eq!(verdict, XDP_PASS, "{what}: XDP verdict");
    assert_frame(&output, input, what);
    let mut expected = before;
    expected[reason as usize] += 1;
    assert_eq!(
        dataplane.passed_all(),
        expected,
        "{what}: pass counters (indexed by PassReason), expected one more {reason:?}"
    );
    assert_eq!(
        dataplane.flows(),
        flows_before,
        "{what}: the flow table changed"
    );
}

fn assert_egress(dataplane: &TestDataplane, input: &[u8], expected: &[u8], what: &str) {
    let (verdict, output) = dataplane.run_tc(input);
    assert_eq!(verdict, TC_ACT_OK, "{what}: TC verdict");
    assert_frame(&output, expected, what);
    if output != input {
        verify_checksums(&output).unwrap_or_else(|error| panic!("{what}: {error}"));
    }
}

/// TC egress must pass `reply` on from `vip` instead of its backend: the
/// same frame with only its source rewritten, byte for byte, with valid
/// checksums.
fn assert_restored(dataplane: &TestDataplane, reply: Frame, vip: SocketAddr, what: &str) {
    let input = reply.build();
    let expected = Frame { src: vip, ..reply };
    assert_egress(dataplane, &input, &expected.build(), what);
}

/// One test per address family and protocol for each scenario function.
macro_rules! for_each_family_and_protocol {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[test]
            fn ipv4_tcp() {
                super::$scenario(Setup::new(Family::V4, Proto::Tcp));
            }
            #[test]
            fn ipv4_udp() {
                super::$scenario(Setup::new(Family::V4, Proto::Udp));
            }
            #[test]
            fn ipv6_tcp() {
                super::$scenario(Setup::new(Family::V6, Proto::Tcp));
            }
            #[test]
            fn ipv6_udp() {
                super::$scenario(Setup::new(Family::V6, Proto::Udp));
            }
        }
    )*};
}

macro_rules! for_each_family {
    ($proto:ident: $($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[test]
            fn ipv4() {
                super::$scenario(Setup::new(Family::V4, Proto::$proto));
            }
            #[test]
            fn ipv6() {
                super::$scenario(Setup::new(Family::V6, Proto::$proto));
            }
        }
    )*};
}

for_each_family_and_protocol!(
    new_flow_goes_to_the_active_color,
    established_flow_keeps_its_backend,
    graceful_switch_leaves_flows_on_the_old_color,
    forced_switch_moves_flows_to_the_forced_color,
    graceful_switch_after_a_forced_one_leaves_flows_where_it_sent_them,
    forced_switches_in_a_row_leave_flows_on_the_last_forced_color,
    forced_switch_during_a_weighted_split_moves_every_flow,
    expired_or_unknown_flow_takes_the_active_color,
    truncated_headers_pass_unchanged,
    vlan_tagged_frames,
    other_ports_and_addresses_pass_unchanged,
    egress_restores_the_vip_for_tracked_flows,
    egress_restores_the_vip_for_a_backend_that_left_its_pool,
    egress_ignores_untracked_replies,
    egress_ignores_the_old_backend_after_a_forced_switch,
    egress_ignores_expired_flows,
);

for_each_family!(Tcp:
    fin_and_rst_mark_the_flow_closing,
    a_reset_from_the_backend_marks_the_flow_closing,
    closing_flows_expire_sooner,
);

fn new_flow_goes_to_the_active_color(f: Setup) {
    let dataplane = f.dataplane(COLOR_BLUE);
    let before = now();
    let input = assert_steered(&dataplane, f.to_vip(OPENING), f.blue, "first packet");
    let entry = f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);
    assert!(
        (before..=now()).contains(&entry.last_seen),
        "last_seen {} is not the time of the run",
        entry.last_seen
    );
    assert_eq!(
        u32::from(entry.counter_slot),
        f.slot,
        "the entry names its service's slot"
    );
    assert_eq!(
        dataplane.backend_vip(&f.reply_key(f.blue).backend_key()),
        Some(endpoint(f.vip)),
        "the backend's replies get the VIP back (written with its pool)"
    );
    assert_eq!(
        dataplane.flows().len(),
        1,
        "one flow entry, the only write of a new flow"
    );
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_BLUE),
        counters(1, input.len(), 1)
    );
    assert_eq!(dataplane.traffic(f.slot, COLOR_GREEN), counters(0, 0, 0));
    assert_eq!(
        dataplane.backend_traffic(f.backend_slot(&dataplane, f.blue, COLOR_BLUE)),
        counters(1, input.len(), 1),
        "the backend's own counters"
    );
    assert_eq!(
        dataplane.backend_traffic(f.backend_slot(&dataplane, f.green, COLOR_GREEN)),
        counters(0, 0, 0),
        "the idle backend's counters"
    );
}

fn established_flow_keeps_its_backend(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    let first = assert_steered(&dataplane, f.to_vip(OPENING), f.blue, "first packet");
    let before = now();
    let second = assert_steered(
        &dataplane,
        f.to_vip(ONGOING).payload(b"more data"),
        f.blue,
        "second packet",
    );
    let entry = f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);
    assert!(
        entry.last_seen >= before,
        "last_seen is refreshed by every packet"
    );
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_BLUE),
        counters(2, first.len() + second.len(), 1)
    );

    // An entry is authoritative even against the service: this one names a
    // green backend the service has dropped since.
    let pinned = f.other_client();
    dataplane.insert_flow(
        pinned.flow_key(),
        pinned.entry(&dataplane, pinned.retired, COLOR_GREEN, 1),
    );
    let input = assert_steered(
        &dataplane,
        pinned.to_vip(ONGOING),
        pinned.retired,
        "packet of a flow pinned to a retired backend",
    );
    pinned.assert_flow(&dataplane, pinned.retired, COLOR_GREEN, 1, false);
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_GREEN),
        counters(1, input.len(), 0)
    );
    assert_eq!(
        dataplane.backend_traffic(RETIRED_COUNTER_SLOT),
        counters(1, input.len(), 0),
        "counted on the backend counter slot the entry names"
    );
}

/// Opens a flow on blue, switches the service to green with `generation`
/// (1 keeps it and the forced color, blue: a graceful switch; 2 bumps it and
/// forces green: a forced one), and sends the flow's next packet, which must
/// reach `backend`. Returns the dataplane and the two packets sent.
fn open_then_switch(
    f: &Setup,
    generation: u32,
    backend: SocketAddr,
    what: &str,
) -> (TestDataplane, Vec<u8>, Vec<u8>) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    let first = assert_steered(&dataplane, f.to_vip(OPENING), f.blue, "before the switch");
    let forced = if generation == 1 {
        COLOR_BLUE
    } else {
        COLOR_GREEN
    };
    f.switch(&mut dataplane, COLOR_GREEN, generation, forced);
    let ongoing = assert_steered(&dataplane, f.to_vip(ONGOING), backend, what);
    (dataplane, first, ongoing)
}

fn graceful_switch_leaves_flows_on_the_old_color(f: Setup) {
    let (dataplane, first, ongoing) = open_then_switch(&f, 1, f.blue, "old flow after the switch");
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);

    let newcomer = f.other_client();
    let fresh = assert_steered(
        &dataplane,
        newcomer.to_vip(OPENING),
        f.green,
        "new flow after the switch",
    );
    newcomer.assert_flow(&dataplane, f.green, COLOR_GREEN, 1, false);
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_BLUE),
        counters(2, first.len() + ongoing.len(), 1)
    );
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_GREEN),
        counters(1, fresh.len(), 1)
    );
}

fn forced_switch_moves_flows_to_the_forced_color(f: Setup) {
    let (dataplane, first, ongoing) =
        open_then_switch(&f, 2, f.green, "old flow after a forced switch");
    f.assert_flow(&dataplane, f.green, COLOR_GREEN, 2, false);
    assert_restored(
        &dataplane,
        f.reply_from(f.green),
        f.vip,
        "reply from the rebound flow's new backend",
    );
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_GREEN),
        counters(1, ongoing.len(), 0),
        "a rebound flow is not a new flow"
    );
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_BLUE),
        counters(1, first.len(), 1)
    );
    // Rebound once, the flow stays put.
    assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.green,
        "second packet after the forced switch",
    );
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_GREEN),
        counters(2, 2 * ongoing.len(), 0)
    );
}

/// The bug this guards against: flows were rebound lazily to whatever color
/// was active when they next sent, so a graceful switch back, made before
/// an idle flow's next packet, carried that flow along (and reset it).
fn graceful_switch_after_a_forced_one_leaves_flows_where_it_sent_them(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    let first = assert_steered(&dataplane, f.to_vip(OPENING), f.blue, "before the switches");
    f.switch(&mut dataplane, COLOR_GREEN, 2, COLOR_GREEN);
    // Gracefully back before the flow sends again: generation and forced
    // color stay those of the force.
    f.switch(&mut dataplane, COLOR_BLUE, 2, COLOR_GREEN);
    let ongoing = assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.green,
        "idle flow's next packet after a forced then a graceful switch",
    );
    f.assert_flow(&dataplane, f.green, COLOR_GREEN, 2, false);
    assert_restored(
        &dataplane,
        f.reply_from(f.green),
        f.vip,
        "reply from the forced color's backend",
    );
    assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.green,
        "the flow's packet after that",
    );
    f.assert_flow(&dataplane, f.green, COLOR_GREEN, 2, false);

    let newcomer = f.other_client();
    let fresh = assert_steered(
        &dataplane,
        newcomer.to_vip(OPENING),
        f.blue,
        "new flow after the graceful switch",
    );
    newcomer.assert_flow(&dataplane, f.blue, COLOR_BLUE, 2, false);
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_GREEN),
        counters(2, 2 * ongoing.len(), 0),
        "a rebound flow is not a new flow"
    );
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_BLUE),
        counters(2, first.len() + fresh.len(), 2)
    );
}

fn forced_switches_in_a_row_leave_flows_on_the_last_forced_color(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    let idle = f.other_client();
    assert_steered(
        &dataplane,
        f.to_vip(OPENING),
        f.blue,
        "busy flow, first packet",
    );
    assert_steered(
        &dataplane,
        idle.to_vip(OPENING),
        f.blue,
        "idle flow, first packet",
    );

    f.switch(&mut dataplane, COLOR_GREEN, 2, COLOR_GREEN);
    assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.green,
        "busy flow after the force to green",
    );
    f.assert_flow(&dataplane, f.green, COLOR_GREEN, 2, false);
    f.switch(&mut dataplane, COLOR_BLUE, 3, COLOR_BLUE);
    assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.blue,
        "busy flow after the force back to blue",
    );
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 3, false);

    // A graceful switch after the last force moves no established flow,
    // not even one that slept through every switch.
    f.switch(&mut dataplane, COLOR_GREEN, 3, COLOR_BLUE);
    assert_steered(
        &dataplane,
        idle.to_vip(ONGOING),
        f.blue,
        "idle flow after two forces and a graceful switch",
    );
    idle.assert_flow(&dataplane, f.blue, COLOR_BLUE, 3, false);
    assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.blue,
        "busy flow after the graceful switch",
    );
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 3, false);
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_GREEN),
        counters(1, f.to_vip(ONGOING).build().len(), 0)
    );
    assert_eq!(dataplane.traffic(f.slot, COLOR_BLUE).new_flows, 2);
}

/// A forced switch in the middle of a weighted shift sets the active color
/// and ends the shift; flows of both shares move to the forced color.
fn forced_switch_during_a_weighted_split_moves_every_flow(f: Setup) {
    let split = ServiceState {
        weight: 50,
        ..f.state(COLOR_BLUE, 1, COLOR_BLUE)
    };
    let client_on = |color: u8| {
        (0..100)
            .map(|offset| Setup {
                client: SocketAddr::new(f.client.ip(), f.client.port() + offset),
                ..f
            })
            .find(|client| new_flow_color(&split, flow_hash(&client.flow_key()), || false) == color)
            .unwrap_or_else(|| panic!("no client port of 100 gets color {color} at weight 50"))
    };
    let (on_blue, on_green) = (client_on(COLOR_BLUE), client_on(COLOR_GREEN));
    for (forced, backend) in [(COLOR_GREEN, f.green), (COLOR_BLUE, f.blue)] {
        let mut dataplane = f.dataplane(COLOR_BLUE);
        f.install(&mut dataplane, split);
        assert_steered(&dataplane, on_blue.to_vip(OPENING), f.blue, "blue share");
        assert_steered(&dataplane, on_green.to_vip(OPENING), f.green, "green share");
        f.switch(&mut dataplane, forced, 2, forced);
        for (client, share) in [(on_blue, "blue"), (on_green, "green")] {
            assert_steered(
                &dataplane,
                client.to_vip(ONGOING),
                backend,
                &format!("{share} share's flow after a forced switch to color {forced}"),
            );
            client.assert_flow(&dataplane, backend, forced, 2, false);
        }
        let newcomer = Setup {
            client: SocketAddr::new(f.client.ip(), f.client.port() + 100),
            ..f
        };
        assert_steered(
            &dataplane,
            newcomer.to_vip(OPENING),
            backend,
            &format!("new flow after a forced switch to color {forced}: no split left"),
        );
    }
}

fn expired_or_unknown_flow_takes_the_active_color(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    dataplane.insert_flow(
        f.flow_key(),
        aged(
            f.entry(&dataplane, f.green, COLOR_GREEN, 1),
            seconds(STALE_SECS),
        ),
    );
    let input = assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.blue,
        "packet of an expired flow",
    );
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_BLUE),
        counters(1, input.len(), 1),
        "an expired flow starts over as a new one"
    );

    // Mid-connection packets with no entry at all (say, after a restart)
    // join the active color and are tracked from then on.
    let unknown = f.other_client();
    assert_steered(
        &dataplane,
        unknown.to_vip(ONGOING),
        f.blue,
        "non-opening packet without a flow entry",
    );
    unknown.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);
    assert_eq!(dataplane.traffic(f.slot, COLOR_BLUE).new_flows, 2);
}

fn fin_and_rst_mark_the_flow_closing(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    assert_steered(&dataplane, f.to_vip(TCP_SYN), f.blue, "SYN");
    for flags in [TCP_FIN | TCP_ACK, TCP_ACK] {
        assert_steered(
            &dataplane,
            f.to_vip(flags),
            f.blue,
            &format!("flags {flags:#04x} after a FIN"),
        );
        f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, true);
    }
    // Closing survives a forced switch's rebinding.
    f.switch(&mut dataplane, COLOR_GREEN, 2, COLOR_GREEN);
    assert_steered(
        &dataplane,
        f.to_vip(TCP_ACK),
        f.green,
        "closing flow after a forced switch",
    );
    f.assert_flow(&dataplane, f.green, COLOR_GREEN, 2, true);

    let reset = f.other_client();
    assert_steered(&dataplane, reset.to_vip(TCP_SYN), f.green, "SYN");
    assert_steered(&dataplane, reset.to_vip(TCP_RST), f.green, "RST");
    reset.assert_flow(&dataplane, f.green, COLOR_GREEN, 2, true);
}

/// A backend's RST ends its connection as surely as the client's: an open
/// one it resets, or a connect it refuses, must not stay live for the idle
/// timeout and hold up a drain. The reply still leaves as the VIP.
fn a_reset_from_the_backend_marks_the_flow_closing(f: Setup) {
    let dataplane = f.dataplane(COLOR_BLUE);
    assert_steered(&dataplane, f.to_vip(TCP_SYN), f.blue, "SYN");
    assert_restored(&dataplane, f.reply_from(f.blue), f.vip, "SYN-ACK");
    assert_steered(&dataplane, f.to_vip(TCP_ACK), f.blue, "ACK");
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);
    // A FIN from the backend half-closes: the client may still send.
    let fin = f.frame(f.blue, f.client, TCP_FIN | TCP_ACK);
    assert_restored(&dataplane, fin, f.vip, "the backend's FIN");
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);
    let reset = f.frame(f.blue, f.client, TCP_RST | TCP_ACK);
    assert_restored(&dataplane, reset, f.vip, "the backend's RST");
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, true);

    let refused = f.other_client();
    assert_steered(&dataplane, refused.to_vip(TCP_SYN), f.blue, "SYN");
    let answer = refused.frame(f.blue, refused.client, TCP_RST | TCP_ACK);
    assert_restored(&dataplane, answer, f.vip, "RST answering the SYN");
    refused.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, true);
}

fn closing_flows_expire_sooner(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    // Older than the closing timeout, well within the idle one.
    let age = seconds(TIMEOUTS.tcp_closing_secs + 1);
    let closing = FlowEntry {
        closing: 1,
        ..f.entry(&dataplane, f.green, COLOR_GREEN, 1)
    };
    dataplane.insert_flow(f.flow_key(), aged(closing, age));
    let open = f.other_client();
    dataplane.insert_flow(
        open.flow_key(),
        aged(open.entry(&dataplane, f.green, COLOR_GREEN, 1), age),
    );

    assert_steered(
        &dataplane,
        f.to_vip(TCP_ACK),
        f.blue,
        "packet of an expired closing flow",
    );
    f.assert_flow(&dataplane, f.blue, COLOR_BLUE, 1, false);
    assert_steered(
        &dataplane,
        open.to_vip(TCP_ACK),
        f.green,
        "packet of an open flow idle as long",
    );
    open.assert_flow(&dataplane, f.green, COLOR_GREEN, 1, false);
}

/// Every cut inside the headers of a VIP frame, in every header layout the
/// dataplane parses. (Frames under 14 bytes cannot be test-run at all: the
/// kernel requires an Ethernet header.)
fn truncated_headers_pass_unchanged(f: Setup) {
    let dataplane = f.dataplane(COLOR_BLUE);
    let mut layouts = vec![f.to_vip(OPENING), f.to_vip(OPENING).vlan(3)];
    if f.vip.is_ipv4() {
        layouts.push(f.to_vip(OPENING).ipv4_options(&[0x94, 4, 0, 0, 1, 1, 1, 0]));
    } else {
        layouts.push(
            f.to_vip(OPENING)
                .ipv6_ext(Ipv6Ext::HopByHop(0))
                .ipv6_ext(Ipv6Ext::DestOptions(1)),
        );
    }
    for layout in layouts {
        let frame = layout.build();
        for len in 14..layout.headers_len() {
            assert_passed(
                &dataplane,
                &frame[..len],
                PassReason::Malformed,
                &format!("{layout:?} cut to {len} bytes"),
            );
        }
    }
    assert!(
        dataplane.flows().is_empty(),
        "no truncated frame is tracked"
    );
    assert_eq!(dataplane.traffic(f.slot, COLOR_BLUE), counters(0, 0, 0));
}

fn vlan_tagged_frames(f: Setup) {
    let dataplane = f.dataplane(COLOR_BLUE);
    let tagged = f.to_vip(OPENING).vlan(0x2005);
    assert_steered(&dataplane, tagged.clone(), f.blue, "one 802.1Q tag");
    for outer in [ETH_P_8021Q, ETH_P_8021AD] {
        assert_passed(
            &dataplane,
            &with_outer_tag(&tagged.build(), outer, 100),
            PassReason::Unsupported,
            &format!("{outer:#06x} tag in front of an 802.1Q tag"),
        );
    }
    assert_passed(
        &dataplane,
        &with_outer_tag(&f.to_vip(OPENING).build(), ETH_P_8021AD, 100),
        PassReason::Unsupported,
        "one 802.1ad tag",
    );
}

fn other_ports_and_addresses_pass_unchanged(f: Setup) {
    let dataplane = f.dataplane(COLOR_BLUE);
    let other_port = SocketAddr::new(f.vip.ip(), f.vip.port() + 1);
    assert_passed(
        &dataplane,
        &f.frame(f.client, other_port, OPENING).build(),
        PassReason::NotService,
        "VIP, other port",
    );
    // The port is in the prefilter, so this takes the services lookup.
    let other_address = SocketAddr::new(f.green.ip(), f.vip.port());
    assert_passed(
        &dataplane,
        &f.frame(f.client, other_address, OPENING).build(),
        PassReason::NotService,
        "VIP port on another address",
    );
    let other_protocol = match f.proto {
        Proto::Tcp => Frame::udp(f.client, f.vip),
        Proto::Udp => Frame::tcp(f.client, f.vip, TCP_SYN),
    };
    assert_passed(
        &dataplane,
        &other_protocol.build(),
        PassReason::NotService,
        "VIP and port of a service of the other protocol",
    );
    assert_passed(
        &dataplane,
        &arp_request(Ipv4Addr::new(198, 51, 100, 7), Ipv4Addr::new(192, 0, 2, 10)),
        PassReason::NotIp,
        "ARP",
    );
    assert_eq!(dataplane.traffic(f.slot, COLOR_BLUE), counters(0, 0, 0));
}

fn egress_restores_the_vip_for_tracked_flows(f: Setup) {
    let dataplane = f.dataplane(COLOR_BLUE);
    assert_steered(&dataplane, f.to_vip(OPENING), f.blue, "first packet");
    assert_restored(
        &dataplane,
        f.reply_from(f.blue),
        f.vip,
        "reply from the flow's backend",
    );
    assert_restored(
        &dataplane,
        f.reply_from(f.blue)
            .vlan(12)
            .payload(b"a longer reply body"),
        f.vip,
        "VLAN-tagged reply",
    );
}

/// Written with a pool, a backend's VIP stays when it leaves: its
/// established flows still reach it (the entry is authoritative) and their
/// replies must still leave as the VIP.
fn egress_restores_the_vip_for_a_backend_that_left_its_pool(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    assert_steered(&dataplane, f.to_vip(OPENING), f.blue, "first packet");
    dataplane.insert_service(
        service_key(f.vip, f.proto_number()),
        f.state(COLOR_BLUE, 1, COLOR_BLUE),
        [f.retired, f.green],
    );
    assert_steered(
        &dataplane,
        f.to_vip(ONGOING),
        f.blue,
        "packet of the flow on the backend that left",
    );
    assert_restored(
        &dataplane,
        f.reply_from(f.blue),
        f.vip,
        "reply from the backend that left",
    );
}

fn egress_ignores_untracked_replies(f: Setup) {
    let dataplane = f.dataplane(COLOR_BLUE);
    let reply = f.reply_from(f.blue).build();
    assert_egress(&dataplane, &reply, &reply, "reply without a flow");
    // Tracked, but to another client port.
    assert_steered(
        &dataplane,
        f.other_client().to_vip(OPENING),
        f.blue,
        "another connection",
    );
    assert_egress(&dataplane, &reply, &reply, "reply to another connection");
}

fn egress_ignores_the_old_backend_after_a_forced_switch(f: Setup) {
    let (dataplane, _, _) = open_then_switch(&f, 2, f.green, "rebinding packet");
    let stray = f.reply_from(f.blue).build();
    assert_egress(&dataplane, &stray, &stray, "reply from the old backend");
    assert_restored(
        &dataplane,
        f.reply_from(f.green),
        f.vip,
        "reply from the new backend",
    );
}

fn egress_ignores_expired_flows(f: Setup) {
    let mut dataplane = f.dataplane(COLOR_BLUE);
    dataplane.insert_flow(
        f.flow_key(),
        aged(
            f.entry(&dataplane, f.blue, COLOR_BLUE, 1),
            seconds(STALE_SECS),
        ),
    );
    let reply = f.reply_from(f.blue).build();
    assert_egress(&dataplane, &reply, &reply, "reply of an expired flow");
}

#[test]
fn ipv4_options_are_carried_through_the_rewrite() {
    let options: [&[u8]; 3] = [
        &[0x94, 4, 0, 0],
        &[0x94, 4, 0, 0, 1, 1, 1, 0],
        // Forty bytes, the most IHL allows: record route with room for nine.
        &[
            7, 39, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    ];
    for proto in [Proto::Tcp, Proto::Udp] {
        let f = Setup::new(Family::V4, proto);
        let dataplane = f.dataplane(COLOR_BLUE);
        for option in options {
            assert_steered(
                &dataplane,
                f.to_vip(OPENING).ipv4_options(option),
                f.blue,
                &format!("{proto:?} with {} option bytes", option.len()),
            );
        }
    }
}

#[test]
fn ipv4_fragments_pass_unchanged() {
    for proto in [Proto::Tcp, Proto::Udp] {
        let f = Setup::new(Family::V4, proto);
        let dataplane = f.dataplane(COLOR_BLUE);
        for (offset, more) in [(0, true), (185, true), (185, false)] {
            assert_passed(
                &dataplane,
                &f.to_vip(OPENING).ipv4_fragment(offset, more).build(),
                PassReason::Fragment,
                &format!("{proto:?} fragment at offset {offset}, more: {more}"),
            );
        }
    }
}

#[test]
fn ipv6_extension_headers() {
    for proto in [Proto::Tcp, Proto::Udp] {
        let f = Setup::new(Family::V6, proto);
        let dataplane = f.dataplane(COLOR_BLUE);
        let walked = [
            vec![Ipv6Ext::HopByHop(0)],
            vec![Ipv6Ext::DestOptions(2)],
            vec![
                Ipv6Ext::HopByHop(1),
                Ipv6Ext::DestOptions(0),
                Ipv6Ext::DestOptions(0),
                Ipv6Ext::DestOptions(0),
            ],
        ];
        for extensions in walked {
            let with = |mut frame: Frame| {
                frame.ipv6_extensions = extensions.clone();
                frame
            };
            assert_steered(
                &dataplane,
                with(f.to_vip(OPENING)),
                f.blue,
                &format!("{proto:?} behind {extensions:?}"),
            );
        }
        let passed = [
            (
                vec![Ipv6Ext::Fragment {
                    offset: 0,
                    more: true,
                }],
                PassReason::Fragment,
            ),
            (
                vec![
                    Ipv6Ext::HopByHop(0),
                    Ipv6Ext::Fragment {
                        offset: 100,
                        more: false,
                    },
                ],
                PassReason::Fragment,
            ),
            (vec![Ipv6Ext::Routing], PassReason::Unsupported),
            (vec![Ipv6Ext::DestOptions(0); 5], PassReason::Unsupported),
        ];
        for (extensions, reason) in passed {
            let mut frame = f.to_vip(OPENING);
            frame.ipv6_extensions = extensions.clone();
            assert_passed(
                &dataplane,
                &frame.build(),
                reason,
                &format!("{proto:?} behind {extensions:?}"),
            );
        }
        assert_eq!(
            dataplane.flows().len(),
            1,
            "only the first flow was tracked"
        );
    }
}

#[test]
fn other_protocols_to_the_vip_pass_unchanged() {
    for (family, icmp) in [(Family::V4, PROTO_ICMP), (Family::V6, PROTO_ICMPV6)] {
        let f = Setup::new(family, Proto::Tcp);
        let dataplane = f.dataplane(COLOR_BLUE);
        let ping = Frame::new(f.client, f.vip, Transport::Other(icmp)).payload(&[8, 0, 0, 0]);
        assert_passed(
            &dataplane,
            &ping.build(),
            PassReason::NotService,
            &format!("{family:?} ICMP to the VIP"),
        );
    }
}

#[test]
fn udp_ipv4_without_checksum_stays_without() {
    let f = Setup::new(Family::V4, Proto::Udp);
    let dataplane = f.dataplane(COLOR_BLUE);
    assert_steered(
        &dataplane,
        f.to_vip(0).without_udp_checksum(),
        f.blue,
        "ingress",
    );
    assert_restored(
        &dataplane,
        f.reply_from(f.blue).without_udp_checksum(),
        f.vip,
        "egress",
    );
}

/// `frame` with its first two payload bytes chosen so that its L4 checksum
/// computes to zero: TCP then sends 0x0000, UDP 0xffff (RFC 768).
fn summing_to_zero(frame: Frame) -> Frame {
    let from_payload = match frame.transport {
        Transport::Tcp { .. } => 4,
        _ => 2,
    };
    let mut payload = frame.payload.clone();
    payload[..2].fill(0);
    let probe = Frame {
        payload: payload.clone(),
        ..frame.clone()
    }
    .build();
    // Adding the checksum of the rest as a word brings the sum to all ones.
    let at = probe.len() - payload.len() - from_payload;
    payload[..2].copy_from_slice(&probe[at..at + 2]);
    let balanced = Frame { payload, ..frame };
    let field = &balanced.build()[at..at + 2];
    let zero = if matches!(balanced.transport, Transport::Tcp { .. }) {
        [0, 0]
    } else {
        [0xff, 0xff]
    };
    assert_eq!(
        field, zero,
        "the fixture's checksum does not compute to zero"
    );
    balanced
}

#[test]
fn checksums_that_compute_to_zero() {
    for family in [Family::V4, Family::V6] {
        for proto in [Proto::Tcp, Proto::Udp] {
            let f = Setup::new(family, proto);
            let dataplane = f.dataplane(COLOR_BLUE);
            let ingress = summing_to_zero(f.to(f.blue, OPENING));
            assert_rewritten(
                &dataplane,
                &Frame {
                    dst: f.vip,
                    ..ingress.clone()
                }
                .build(),
                &ingress.build(),
                &format!("{family:?} {proto:?} ingress"),
            );
            let egress = summing_to_zero(f.reply_from(f.vip));
            assert_egress(
                &dataplane,
                &Frame {
                    src: f.blue,
                    ..egress.clone()
                }
                .build(),
                &egress.build(),
                &format!("{family:?} {proto:?} egress"),
            );
        }
    }
}

#[test]
fn bench_xdp_times_the_rewrite_path() {
    let f = Setup::new(Family::V4, Proto::Tcp);
    let mut dataplane = f.dataplane(COLOR_BLUE);
    // Backend equal to the VIP, so that every repeated run rewrites the
    // same frame (see `bench_xdp`).
    let state = f.state(COLOR_BLUE, 1, COLOR_BLUE);
    dataplane.insert_service(service_key(f.vip, PROTO_TCP), state, [f.vip; 2]);
    let frame = f.to_vip(TCP_ACK).build();
    let per_run = dataplane.bench_xdp(&frame, 1000);
    assert!(per_run.as_nanos() > 0, "the kernel reported no time");
    assert_eq!(
        dataplane.traffic(f.slot, COLOR_BLUE),
        counters(1000, 1000 * frame.len(), 1),
        "every run took the rewrite path"
    );
}
